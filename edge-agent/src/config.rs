//! Agent settings: a plain struct with serde defaults, loadable from TOML, overridable by flags.

use irec_protocol::{Backoff, FrameLimits, UploadConfig};
use irec_world::sim::WorldConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The device's private settings (never uploaded). On first start they become the device's
/// `irec_world::policy::DeviceProfile` (see `sessions::first_profile`), which is then kept in the
/// local store: the population and the learned bias persist across restarts; `noise_sigma` is
/// taken from here at every start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// Seed of this device: its household (target population), users, and policy noise. With
    /// `seed = derive(derive(fleet_seed, DEVICES), i)` the profile equals
    /// `DeviceProfile::draw(fleet_seed, i, (σ, σ), …)`.
    pub seed: u64,
    /// Standard deviation of the Gaussian noise on the policy's logits (logit units).
    pub noise_sigma: f32,
    /// How many times likelier a target is per favourite value (category, gender) it carries
    /// (dimensionless; 1 = no household preference).
    pub population_boost: f64,
    /// Largest learned logit bias of a slot (logit units).
    pub bias_strength: f32,
    /// Per-session decay of the bias counts (0..1; closer to 1 = longer memory).
    pub bias_decay: f32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig { seed: 1, noise_sigma: 0.3, population_boost: 4.0, bias_strength: 0.5, bias_decay: 0.98 }
    }
}

/// Everything `edge-agent` needs to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Server address, `host:port` (UDP).
    pub server: String,
    /// The name in the server's certificate to verify (the server's `cert_names`).
    pub server_name: String,
    /// The server's certificate (`cert.der` from its data dir): the only one this agent trusts.
    pub server_cert: PathBuf,
    /// The fleet's shared secret.
    pub fleet_token: String,
    /// Directory of this device's sled store. One agent per directory.
    pub data_dir: PathBuf,
    pub device: DeviceConfig,
    /// Sessions this device runs over its lifetime, across restarts (unset: run until stopped).
    pub sessions: Option<u64>,
    /// Pause between sessions, in milliseconds.
    pub session_interval_ms: u64,
    /// Sessions run with each policy (the fallback counts as one) before waiting for a newer
    /// version (unset: no limit). A simulated fleet sets it to its share of a round's quota, so
    /// that each round's D′ comes from the policy deployed for that round. Counted per process.
    pub sessions_per_policy: Option<u64>,
    /// A checkpoint to run before the server has published any (a behaviour policy for round 0);
    /// unset: wait for the server's.
    pub initial_policy: Option<PathBuf>,
    /// Sessions per upload batch (fewer when the server's caps require, or when flushing).
    pub batch_size: usize,
    /// A partial batch is formed once no new session arrived for this long, in milliseconds.
    pub batch_linger_ms: u64,
    /// With `sessions` set: exit once all of them ran and every batch was acked.
    pub exit_when_done: bool,
    /// Upload concurrency, ack timeout and retry backoff.
    pub upload: UploadConfig,
    /// Backoff between connection attempts.
    pub reconnect: Backoff,
    /// Keep-alive interval on an idle connection, in milliseconds (below the server's idle timeout).
    pub keep_alive_ms: u64,
    /// Give up a connection attempt (handshake + hello) after this, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Frame caps this agent accepts (policy blobs) and sends (uploads), in bytes.
    pub frames: FrameLimits,
    /// The simulated world (catalog, features). Must match the server's.
    pub world: WorldConfig,
    /// A world file built from `world` (`fleet-sim world`): mapped read-only instead of building
    /// the world in this process, so every agent on a machine shares one copy. Refused if it was
    /// built from other `world` settings.
    pub world_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server: "127.0.0.1:4433".to_string(),
            server_name: "irec-server".to_string(),
            server_cert: PathBuf::from("cert.der"),
            fleet_token: String::new(),
            data_dir: PathBuf::from("edge-agent-data"),
            device: DeviceConfig::default(),
            sessions: None,
            session_interval_ms: 0,
            sessions_per_policy: None,
            initial_policy: None,
            batch_size: 32,
            batch_linger_ms: 2_000,
            exit_when_done: true,
            upload: UploadConfig::default(),
            reconnect: Backoff::default(),
            keep_alive_ms: 5_000,
            connect_timeout_ms: 10_000,
            frames: FrameLimits::default(),
            world: WorldConfig::default(),
            world_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.fleet_token.is_empty() {
            return bad("fleet_token must be set");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if !self.device.noise_sigma.is_finite() || self.device.noise_sigma < 0.0 {
            return bad("device.noise_sigma must be a finite number ≥ 0");
        }
        if self.keep_alive_ms == 0 || self.connect_timeout_ms == 0 {
            return bad("keep_alive_ms and connect_timeout_ms must be positive");
        }
        Ok(())
    }
}
