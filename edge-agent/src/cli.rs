//! Command-line flags: each overrides the same field of the TOML config.

use crate::config::{AgentConfig, ConfigError};
use crate::AgentError;
use irec_model::loader::{BaselineLoader, NeuralLoader, PolicyLoader};
use irec_world::sim::{Environment, Pool};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::path::PathBuf;

/// edge-agent: one simulated device that runs sessions, uploads them, and installs new policies.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version)]
pub struct Cli {
    /// TOML config file (flags override its fields).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server address, host:port.
    #[arg(long)]
    pub server: Option<String>,
    /// Server name to verify in its certificate.
    #[arg(long)]
    pub server_name: Option<String>,
    /// The server's certificate (cert.der) to pin.
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    /// Fleet token (or set IREC_FLEET_TOKEN).
    #[arg(long)]
    pub fleet_token: Option<String>,
    /// Data directory of this device.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Device seed.
    #[arg(long)]
    pub device_seed: Option<u64>,
    /// Logit noise σ of this device.
    #[arg(long)]
    pub noise_sigma: Option<f32>,
    /// How strongly the device's household favours its favourite category and gender.
    #[arg(long)]
    pub population_boost: Option<f64>,
    /// Lifetime sessions to run (then exit once all are uploaded).
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Pause between sessions, in milliseconds.
    #[arg(long)]
    pub session_interval_ms: Option<u64>,
    /// Sessions per upload batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Catalog size of the simulated world (must match the server's).
    #[arg(long)]
    pub items: Option<usize>,
    /// Seed of the simulated world (must match the server's).
    #[arg(long)]
    pub world_seed: Option<u64>,
    /// A checkpoint to run until the server publishes one (a round-0 behaviour policy).
    #[arg(long)]
    pub initial_policy: Option<PathBuf>,
    /// Sessions to run with each policy version before waiting for the next.
    #[arg(long)]
    pub sessions_per_policy: Option<u64>,
    /// What to run: the learned checkpoints (default), or the rule-based tracker whatever
    /// checkpoint arrives (networking tests without the learning core).
    #[arg(long, value_enum, default_value_t = PolicyKind::Learned)]
    pub policy: PolicyKind,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Which policies the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    Learned,
    Tracker,
}

impl Cli {
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let mut c = match &self.config {
            Some(p) => AgentConfig::load(p)?,
            None => AgentConfig::default(),
        };
        if let Some(v) = self.server {
            c.server = v;
        }
        if let Some(v) = self.server_name {
            c.server_name = v;
        }
        if let Some(v) = self.server_cert {
            c.server_cert = v;
        }
        if let Some(v) = self.fleet_token.or_else(|| std::env::var("IREC_FLEET_TOKEN").ok()) {
            c.fleet_token = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.device_seed {
            c.device.seed = v;
        }
        if let Some(v) = self.noise_sigma {
            c.device.noise_sigma = v;
        }
        if let Some(v) = self.population_boost {
            c.device.population_boost = v;
        }
        if let Some(v) = self.sessions {
            c.sessions = Some(v);
        }
        if let Some(v) = self.session_interval_ms {
            c.session_interval_ms = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.items {
            c.world.catalog.items = v;
        }
        if let Some(v) = self.initial_policy {
            c.initial_policy = Some(v);
        }
        if let Some(v) = self.sessions_per_policy {
            c.sessions_per_policy = Some(v);
        }
        if let Some(v) = self.world_seed {
            c.world.catalog.seed = v;
            c.world.features.seed = v;
        }
        Ok(c)
    }
}

/// Why the binary stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("building the world: {0}")]
    World(#[from] irec_world::catalog::csv::CatalogError),
    #[error("printing the config: {0}")]
    Print(#[from] toml::ser::Error),
    #[error("encoding the summary: {0}")]
    Summary(#[from] serde_json::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What `edge-agent` does with its flags: run sessions and uploads until done or Ctrl-C /
/// SIGINT, then print the run's counters as one JSON line. A library function so that
/// `fleet-sim` can run the same agent as a process of its own.
pub fn execute(cli: Cli) -> Result<(), CliError> {
    let print = cli.print_config;
    let cli_policy = cli.policy;
    let config = cli.into_config()?;
    if print {
        println!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    // Before the world and the first policy are loaded, so their buffers already obey it.
    if !crate::alloc::pin_mmap_threshold(crate::alloc::AGENT_MMAP_THRESHOLD) {
        tracing::debug!("the allocator's mmap threshold could not be pinned");
    }
    let loaded = crate::world::load(&config)?;
    let world = loaded.world.clone();
    let env = Arc::new(Environment::with_truth(world.clone(), Pool::Train));
    let loader: Arc<dyn PolicyLoader> = match cli_policy {
        PolicyKind::Learned => {
            Arc::new(NeuralLoader::new(world.clone(), config.initial_policy.clone()).sharing_probabilities(loaded.probabilities))
        }
        PolicyKind::Tracker => Arc::new(
            BaselineLoader::Tracker { lexicon: Arc::new(world.lexicon.clone()), index: Arc::new(env.index.clone()) }.with_fallback(true),
        ),
    };
    let world_file = config.world_file.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let stats = runtime.block_on(crate::run_in(config, env, loader, stop_requested()))?;
    println!("{}", serde_json::to_string(&Summary::new(stats, world_file.as_deref()))?);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, after which the agent stops its sessions and prints its summary.
pub async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Without a SIGTERM handler the second branch is disabled and Ctrl-C alone stops it.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = async { term.as_mut()?.recv().await } => {}
    }
}

/// What the binary prints as its last stdout line when it stops: the counters, with the whole-run
/// latency list folded into p50/p99 (per-round lists stay), and the process's peak RSS. Launchers
/// read it back as this type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub stats: crate::Stats,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Peak resident set size of the agent process, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Memory only this process held when it stopped (USS: `Private_Clean` + `Private_Dirty`),
    /// not counting the mapped world file's pages, in KiB: what each more agent costs a machine.
    pub private_kib: Option<u64>,
    /// The whole USS when it stopped, world file pages included (they are private to the last
    /// agent of a fleet still mapping them), in KiB.
    pub uss_kib: Option<u64>,
    /// Resident set size when it stopped, in KiB (beside `private_kib`).
    pub rss_kib: Option<u64>,
}

impl Summary {
    /// `world_file`: the mapped world file whose pages `private_kib` leaves out.
    pub fn new(mut stats: crate::Stats, world_file: Option<&std::path::Path>) -> Summary {
        let (ack_p50_ms, ack_p99_ms) = (stats.ack_latency_percentile(50.0), stats.ack_latency_percentile(99.0));
        stats.ack_latencies_ms.clear();
        let private = crate::procfs::private(None);
        let in_file = world_file.and_then(|p| crate::procfs::private_in_file(None, p)).unwrap_or(0);
        Summary {
            stats,
            ack_p50_ms,
            ack_p99_ms,
            peak_rss_kib: crate::procfs::memory(None).map(|m| m.peak_kib),
            private_kib: private.map(|p| p.uss_kib.saturating_sub(in_file)),
            uss_kib: private.map(|p| p.uss_kib),
            rss_kib: private.map(|p| p.rss_kib),
        }
    }

    /// The summary in a process's stdout: its last line that parses as one.
    pub fn from_stdout(text: &str) -> Option<Summary> {
        text.lines().rev().filter(|l| l.starts_with('{')).find_map(Summary::parse)
    }

    fn parse(line: &str) -> Option<Summary> {
        // Parsed as two views of one object rather than through `#[serde(flatten)]`, which
        // cannot read the per-round map's integer keys back.
        #[derive(Deserialize)]
        struct Folded {
            ack_p50_ms: Option<f64>,
            ack_p99_ms: Option<f64>,
            peak_rss_kib: Option<u64>,
            private_kib: Option<u64>,
            uss_kib: Option<u64>,
            rss_kib: Option<u64>,
        }
        let stats: crate::Stats = serde_json::from_str(line).ok()?;
        let f: Folded = serde_json::from_str(line).ok()?;
        Some(Summary {
            stats,
            ack_p50_ms: f.ack_p50_ms,
            ack_p99_ms: f.ack_p99_ms,
            peak_rss_kib: f.peak_rss_kib,
            private_kib: f.private_kib,
            uss_kib: f.uss_kib,
            rss_kib: f.rss_kib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RoundUploads, Stats};

    #[test]
    fn the_summary_line_reads_back_with_its_per_round_uploads() {
        let mut stats = Stats { sessions_run: 7, duplicate_acks: 1, policy_version: Some(3), ack_latencies_ms: vec![1.0, 3.0], ..Stats::default() };
        stats.per_round.insert(2, RoundUploads { batches: 4, sessions: 8, ..RoundUploads::default() });
        let line = serde_json::to_string(&Summary::new(stats.clone(), None)).unwrap();
        let back = Summary::from_stdout(&format!("log noise\n{line}\n")).expect("the summary line parses");
        stats.ack_latencies_ms.clear();
        assert_eq!(back.stats, stats);
        assert_eq!((back.ack_p50_ms, back.ack_p99_ms), (Some(3.0), Some(3.0)));
        assert!(back.peak_rss_kib.is_some_and(|k| k > 0));
        assert!(back.private_kib.is_some_and(|k| k > 0) && back.rss_kib >= back.uss_kib && back.uss_kib == back.private_kib);
    }
}
