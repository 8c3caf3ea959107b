//! Command-line flags: each overrides the same field of the TOML config.

use crate::config::{AgentConfig, ConfigError};
use clap::Parser;
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
