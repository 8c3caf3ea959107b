//! What every campaign's fleet shares: a small world (agents restart often, and each start
//! builds it), configs for server and agents written as TOML, starting the processes, and what a
//! device produced with the tracker (the agent's own session loop, replayed).

use irec_testkit::procs::{wait_until, Binaries, Proc};
use super::ChaosError;
use irec_edge_agent::config::DeviceConfig;
use irec_edge_agent::sessions;
use irec_model::loader::BaselineLoader;
use irec_edge_agent::AgentConfig;
use irec_server::ServerConfig;
use irec_world::catalog::GeneratorConfig;
use irec_protocol::experience::ExperienceSession;
use irec_protocol::Backoff;
use irec_world::sim::{Environment, Pool, World, WorldConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The fleet token of every campaign.
pub const TOKEN: &str = "chaos-fleet-token";

/// The simulated world of a campaign: small, so that an agent restarted a hundred times does not
/// spend the campaign building catalogs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldSize {
    pub items: usize,
    pub seed: u64,
    pub feature_dim: usize,
}

impl Default for WorldSize {
    fn default() -> Self {
        WorldSize { items: 2_000, seed: 2022, feature_dim: 16 }
    }
}

impl WorldSize {
    pub fn config(&self) -> WorldConfig {
        let mut w = WorldConfig { catalog: GeneratorConfig { items: self.items, seed: self.seed }, ..WorldConfig::default() };
        w.features.dim = self.feature_dim;
        w.features.seed = self.seed;
        w
    }

    /// The train-pool environment agents run in.
    pub fn environment(&self) -> Result<Arc<Environment>, ChaosError> {
        let world = World::build(&self.config()).map_err(|e| ChaosError::World(e.to_string()))?;
        Ok(Arc::new(Environment::with_truth(Arc::new(world), Pool::Train)))
    }
}

/// A server config on `127.0.0.1:port` in `data_dir`, no rounds (campaigns set what they need).
pub fn server_config(data_dir: &Path, port: u16, world: &WorldSize) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: data_dir.to_path_buf(),
        fleet_token: TOKEN.to_string(),
        round_quota: 0,
        world: world.config(),
        ..ServerConfig::default()
    }
}

/// An agent config for device `seed` running `sessions` sessions against `server`, with short
/// backoffs (a campaign restarts things all the time; waiting 10 s between tries only slows it).
pub fn agent_config(data_dir: &Path, server: SocketAddr, cert: &Path, world: &WorldSize, seed: u64, sessions: u64) -> AgentConfig {
    let mut c = AgentConfig {
        server: server.to_string(),
        server_cert: cert.to_path_buf(),
        fleet_token: TOKEN.to_string(),
        data_dir: data_dir.to_path_buf(),
        sessions: Some(sessions),
        batch_size: 4,
        batch_linger_ms: 100,
        connect_timeout_ms: 2_000,
        world: world.config(),
        ..AgentConfig::default()
    };
    c.device.seed = seed;
    c.reconnect = Backoff { base_ms: 50, max_ms: 500 };
    c.upload.backoff = Backoff { base_ms: 50, max_ms: 500 };
    c.upload.ack_timeout_ms = 5_000;
    c
}

/// Writes `value` as TOML, with the tables of `extra` merged over it (e.g. a `[trainer]`
/// section the campaign's own types do not know about).
pub fn write_toml<T: Serialize>(path: &Path, value: &T, extra: Option<&toml::Table>) -> Result<(), ChaosError> {
    let mut table = match toml::Value::try_from(value).map_err(|e| ChaosError::Config(e.to_string()))? {
        toml::Value::Table(t) => t,
        other => return Err(ChaosError::Config(format!("expected a table, got {}", other.type_str()))),
    };
    if let Some(extra) = extra {
        crate::commands::merge(&mut table, extra.clone());
    }
    let text = toml::to_string_pretty(&table).map_err(|e| ChaosError::Config(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ChaosError::Io(path.to_path_buf(), e))
}

/// Reads a TOML file of extra server settings.
pub fn read_extra(path: &Path) -> Result<toml::Table, ChaosError> {
    let text = std::fs::read_to_string(path).map_err(|e| ChaosError::Io(path.to_path_buf(), e))?;
    text.parse::<toml::Table>().map_err(|e| ChaosError::Config(format!("{}: {e}", path.display())))
}

/// Starts `irec-server` on `config` (plus `extra`) and waits until it is bound: it writes
/// `status.json` right after binding, so the file is removed first and awaited.
pub fn start_server(bins: &Binaries, config: &ServerConfig, extra: Option<&toml::Table>, logs: &Path, env: &[(&str, &str)]) -> Result<Proc, ChaosError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ChaosError::Io(config.data_dir.clone(), e))?;
    let toml_path = config.data_dir.with_extension("toml");
    write_toml(&toml_path, config, extra)?;
    let status = config.data_dir.join(irec_server::status::STATUS_FILE);
    match std::fs::remove_file(&status) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ChaosError::Io(status, e)),
    }
    let args = vec!["--config".to_string(), toml_path.display().to_string()];
    let mut proc = Proc::spawn("irec-server", &bins.server, &args, env, logs)?;
    wait_until(&mut proc, Duration::from_secs(120), "listening", || status.exists())?;
    Ok(proc)
}

/// Starts `edge-agent` on `config` with the rule-based tracker (its sessions can be replayed
/// exactly, whatever policy bytes arrive).
pub fn start_agent(bins: &Binaries, name: &str, config: &AgentConfig, logs: &Path, env: &[(&str, &str)]) -> Result<Proc, ChaosError> {
    let toml_path = config.data_dir.with_extension("toml");
    if !toml_path.exists() {
        write_toml(&toml_path, config, None)?;
    }
    let args = vec!["--config".to_string(), toml_path.display().to_string(), "--policy".to_string(), "tracker".to_string()];
    Ok(Proc::spawn(name, &bins.agent, &args, env, logs)?)
}

/// A `[trainer]` section: the learned trainer, sized small, on a perception pretrained here into
/// `dir` (cheaply: campaigns need real training that takes a while and leaves real state, not a
/// good policy).
pub fn small_learned_trainer(dir: &Path, world: &WorldSize, progress: &mut dyn FnMut(&str)) -> Result<toml::Table, ChaosError> {
    progress("pretraining a small perception for the learned trainer");
    let perception = small_perception(dir, world)?;
    let text = format!(
        "[trainer]\nkind = \"learned\"\nperception = {:?}\nfirst_round_steps = 150\nround_steps = 80\neval_sessions = 30\n[trainer.fqe]\nsteps = 40\n",
        perception.display().to_string()
    );
    text.parse::<toml::Table>().map_err(|e| ChaosError::Config(e.to_string()))
}

/// A small pretrained perception for `world`, written to `dir/perception.ckpt` (seconds).
pub fn small_perception(dir: &Path, world: &WorldSize) -> Result<PathBuf, ChaosError> {
    let perception = dir.join("perception.ckpt");
    let mut pretrain = irec_learn::algo::pretrain::PretrainConfig { sentences: 2_000, text_epochs: 1, attr_epochs: 1, ..Default::default() };
    pretrain.heldout_template_sentences = pretrain.heldout_template_sentences.min(200);
    let lab = irec_learn::experiment::Lab::build(&world.config(), &pretrain, &candle_core::Device::Cpu, None, &irec_learn::experiment::Silent)
        .map_err(|e| ChaosError::World(e.to_string()))?;
    let bytes = lab.perception.to_checkpoint().to_bytes().map_err(|e| ChaosError::World(e.to_string()))?;
    std::fs::write(&perception, bytes).map_err(|e| ChaosError::Io(perception.clone(), e))?;
    Ok(perception)
}

/// Sessions `0..n` of device `device` with the rule-based tracker, as the agent uploads them
/// (round tag 0). The tracker ignores the device's learned bias, so this is exact.
pub fn replay(env: &Environment, device: &DeviceConfig, n: u64) -> Vec<ExperienceSession> {
    let tracker = BaselineLoader::Tracker { lexicon: Arc::new(env.world.lexicon.clone()), index: Arc::new(env.index.clone()) };
    sessions::replay(env, device, &tracker, n).0.into_iter().map(|s| s.session).collect()
}

/// What is left in a stopped agent's store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentLeft {
    pub next_session: u64,
    pub unbatched: usize,
    pub pending_batches: usize,
    pub quarantined: usize,
}

pub fn agent_left(data_dir: &Path) -> Result<AgentLeft, ChaosError> {
    let st = irec_edge_agent::store::AgentStore::open(&irec_edge_agent::store::db_dir(data_dir))?;
    Ok(AgentLeft {
        next_session: st.next_session()?,
        unbatched: st.unbatched(),
        pending_batches: st.pending_batches()?.len(),
        quarantined: st.quarantined(),
    })
}

/// Marks a directory as a campaign's own, so that a rerun may clear it and nothing else.
const MARKER: &str = ".irec-chaos";

/// A campaign's working directory: `<given>/<campaign>`, or one under the system temp dir. An
/// earlier run's directory is cleared; any other existing non-empty directory is refused.
pub fn workdir(given: Option<&Path>, campaign: &str) -> Result<PathBuf, ChaosError> {
    let dir = match given {
        Some(d) => d.join(campaign),
        None => std::env::temp_dir().join(format!("irec-chaos-{campaign}-{}", std::process::id())),
    };
    let io = |e| ChaosError::Io(dir.clone(), e);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir).map_err(io)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(ChaosError::Config(format!("{} exists and is not a campaign directory", dir.display())));
        }
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(dir.join(MARKER), campaign).map_err(io)?;
    Ok(dir)
}
