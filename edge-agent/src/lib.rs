//! edge-agent: one simulated personal-assistant device. It runs its users' sessions with a
//! personalised copy of the fleet's policy, keeps every finished session in a local sled store,
//! uploads them in acked batches over QUIC, and installs new policies as the server publishes them.
//!
//! Layers:
//! - [`config`], [`cli`]: settings from TOML and flags.
//! - [`sessions`]: the device's profile (household, noise, learned bias: `DeviceProfile`), its
//!   session loop (`Device`, which replays use too), sessions on a dedicated thread, the
//!   atomically swapped active policy.
//! - [`store`]: the local sled store (sessions → batches → acked).
//! - [`world`]: the world the device runs in, built here or mapped from the fleet's world file.
//! - [`procfs`]: this process's memory and CPU, for the summary it prints (Linux); [`alloc`]: the
//!   allocator setting that keeps it flat.
//! - [`tls`], [`io`], [`net`]: QUIC with a pinned certificate; the shell that drives the
//!   IO-free machines of `irec_protocol` (`Reconnect`, `Batching`, `Uploader`, `PolicySync`).
//!
//! The policy it runs comes through an `irec_model::loader::PolicyLoader` (learned checkpoints or a
//! baseline); the agent links inference only, never training code.
//!
//! Privacy: nothing but `ExperienceSession`s (and the hello's fleet token) ever leaves the device —
//! not the seed, σ, bias, population, targets, or any id.

pub mod alloc;
pub mod cli;
pub mod config;
pub mod io;
pub mod net;
pub mod procfs;
pub mod sessions;
pub mod store;
pub mod tls;
pub mod world;

pub use config::{AgentConfig, DeviceConfig};
pub use irec_world::policy::DeviceProfile;

use irec_model::loader::PolicyLoader;
use irec_protocol::ErrorMessage;
use irec_world::sim::{Environment, Pool};
use serde::{Deserialize, Serialize};
use sessions::{ActivePolicy, Generator, PolicySlot};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::warn;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("building the world: {0}")]
    World(String),
    #[error(transparent)]
    WorldFile(#[from] irec_world::world_file::WorldFileError),
    /// The server refused this agent as such (wrong token or protocol version): retrying with
    /// the same settings cannot help.
    #[error("server refused this agent: {0}")]
    Refused(ErrorMessage),
    #[error("session thread: {0}")]
    Sessions(String),
}

/// Counters of one run, for the caller and the final JSON line of the binary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Sessions run (and stored) by this process.
    pub sessions_run: u64,
    pub batches_acked: u64,
    /// Sessions the server stored for the first time on our uploads.
    pub sessions_acked: u64,
    /// Acks saying the batch was already stored (a retry after a lost ack).
    pub duplicate_acks: u64,
    /// Upload frame bodies acked, in bytes.
    pub bytes_uploaded: u64,
    /// Send-to-ack time of each acked batch, in milliseconds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ack_latencies_ms: Vec<f64>,
    pub connects: u64,
    /// When each connection was welcomed, wall clock in ms since the epoch (how a fleet comes
    /// back after the server was away).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connected_at_ms: Vec<u64>,
    pub connect_failures: u64,
    pub quarantined_batches: u64,
    pub policies_installed: u64,
    pub policies_rejected: u64,
    /// The policy version running at the end.
    pub policy_version: Option<u64>,
    /// Left in the store at the end (0 and 0 after a complete run).
    pub pending_batches: usize,
    pub unbatched_sessions: usize,
    /// Acked uploads by the round of the policy that collected them.
    pub per_round: std::collections::BTreeMap<u32, RoundUploads>,
}

/// Acked uploads of one round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundUploads {
    pub batches: u64,
    /// Sessions newly stored by the server (duplicates excluded).
    pub sessions: u64,
    /// Upload frame bodies, in bytes.
    pub bytes: u64,
    /// Send-to-ack time of each batch, in milliseconds.
    pub ack_latencies_ms: Vec<f64>,
}

impl Stats {
    /// A percentile (0..=100) of the ack latencies, in milliseconds.
    pub fn ack_latency_percentile(&self, p: f64) -> Option<f64> {
        irec_world::metrics::percentile(&self.ack_latencies_ms, p)
    }
}

/// Runs the agent until its sessions are done and uploaded (with `sessions` and
/// `exit_when_done`), or until `shutdown` completes. Builds the simulated world from
/// `config.world` (or maps `config.world_file`); see [`run_in`] to share one world between many
/// in-process agents.
pub async fn run(config: AgentConfig, loader: Arc<dyn PolicyLoader>, shutdown: impl Future<Output = ()>) -> Result<Stats, AgentError> {
    config.validate()?;
    let cfg = config.clone();
    let loaded = tokio::task::spawn_blocking(move || world::load(&cfg)).await.map_err(|e| AgentError::World(e.to_string()))??;
    let env = Arc::new(Environment::with_truth(loaded.world, Pool::Train));
    run_in(config, env, loader, shutdown).await
}

/// [`run`] in a given environment (the train pool of the world `config.world` describes; a
/// fleet of agents in one process shares one instead of building a world each).
pub async fn run_in(
    config: AgentConfig,
    env: Arc<Environment>,
    loader: Arc<dyn PolicyLoader>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stats, AgentError> {
    config.validate()?;
    let world = env.world.fingerprint;
    // A missing or unreadable pin is a configuration error, not something to retry.
    tls::client_config(&config.server_cert, Duration::from_secs(1), Duration::from_secs(10))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| AgentError::Io(config.data_dir.clone(), e))?;
    let store = store::AgentStore::open(&store::db_dir(&config.data_dir))?;
    let mut profile = store.profile(sessions::first_profile(&config.device, &env))?;
    profile.noise_sigma = config.device.noise_sigma;

    let slot = Arc::new(PolicySlot::default());
    if let Some(stored) = store.policy()? {
        match loader.load(&stored.blob) {
            Ok(loaded) => slot.swap(ActivePolicy { id: Some(stored.id()), loaded }),
            Err(e) => warn!(version = stored.version, "stored policy does not load ({e}); fetching again"),
        }
    }
    if slot.current().is_none() {
        if let Some(loaded) = loader.fallback() {
            slot.swap(ActivePolicy { id: None, loaded });
        }
    }

    let stop_flag = Arc::new(AtomicBool::new(false));
    let generator_done = Arc::new(AtomicBool::new(false));
    let new_session = Arc::new(Notify::new());
    let ran = Arc::new(AtomicU64::new(0));
    let generator = Generator {
        env,
        store: store.clone(),
        slot: slot.clone(),
        profile,
        target_sessions: config.sessions,
        sessions_per_policy: config.sessions_per_policy,
        interval: Duration::from_millis(config.session_interval_ms),
        stop: stop_flag.clone(),
        done: generator_done.clone(),
        new_session: new_session.clone(),
        ran: ran.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let generator_stop = stop_tx.clone();
    let thread = std::thread::Builder::new()
        .name("irec-sessions".to_string())
        .spawn(move || {
            let r = generator.run();
            if r.is_err() {
                let _ = generator_stop.send(true);
            }
            r
        })
        .map_err(|e| AgentError::Sessions(e.to_string()))?;

    let stats = Arc::new(Mutex::new(Stats::default()));
    let net = net::Net {
        config,
        world,
        store: store.clone(),
        loader,
        slot: slot.clone(),
        stats: stats.clone(),
        new_session,
        generator_done,
    };
    let served = {
        let serving = net.run(stop_rx);
        tokio::pin!(serving);
        tokio::select! {
            r = &mut serving => r,
            _ = shutdown => {
                let _ = stop_tx.send(true);
                serving.await
            }
        }
    };
    stop_flag.store(true, Ordering::SeqCst);
    let joined = tokio::task::spawn_blocking(move || thread.join()).await;
    let generated = match joined {
        Ok(Ok(r)) => r.map_err(AgentError::from),
        Ok(Err(_)) => Err(AgentError::Sessions("the session thread panicked".to_string())),
        Err(e) => Err(AgentError::Sessions(e.to_string())),
    };
    served?;
    generated?;
    let mut out = stats.lock().map(|s| s.clone()).unwrap_or_default();
    out.sessions_run = ran.load(Ordering::Relaxed);
    out.policy_version = slot.current().and_then(|a| a.id).map(|i| i.version);
    let st = store.clone();
    out.pending_batches = irec_store::blocking(move || st.pending_batches()).await?.len();
    out.unbatched_sessions = store.unbatched();
    store.flush_async().await?;
    Ok(out)
}
