//! Command-line flags: each overrides the same field of the TOML config.

use crate::config::{ConfigError, ServerConfig};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// irec-server: ingest experience from edge agents over QUIC, train rounds, push policies.
#[derive(Debug, Parser)]
#[command(name = "irec-server", version)]
pub struct Cli {
    /// TOML config file (flags override its fields).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (database, certificate, status.json).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Fleet token agents must present (or set IREC_FLEET_TOKEN).
    #[arg(long)]
    pub fleet_token: Option<String>,
    /// Most concurrent agent connections.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Idle connection timeout, in milliseconds.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// New sessions per round (0: never train).
    #[arg(long)]
    pub round_quota: Option<u64>,
    /// Deployment gate tolerance (expected return per session).
    #[arg(long)]
    pub gate_tolerance: Option<f64>,
    /// Policy checkpoint to publish as version 1 on first start.
    #[arg(long)]
    pub initial_policy: Option<PathBuf>,
    /// Training device: cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Catalog size of the simulated world (must match the agents').
    #[arg(long)]
    pub items: Option<usize>,
    /// Seed of the simulated world (must match the agents').
    #[arg(long)]
    pub world_seed: Option<u64>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// The config file (or defaults) with every given flag applied.
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::load(p)?,
            None => ServerConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.fleet_token.or_else(|| std::env::var("IREC_FLEET_TOKEN").ok()) {
            c.fleet_token = v;
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = self.idle_timeout_ms {
            c.idle_timeout_ms = v;
        }
        if let Some(v) = self.round_quota {
            c.round_quota = v;
        }
        if let Some(v) = self.gate_tolerance {
            c.gate_tolerance = v;
        }
        if let Some(v) = self.initial_policy {
            c.initial_policy = Some(v);
        }
        if let Some(v) = self.device {
            c.device = v;
        }
        if let Some(v) = self.items {
            c.world.catalog.items = v;
        }
        if let Some(v) = self.world_seed {
            c.world.catalog.seed = v;
            c.world.features.seed = v;
        }
        Ok(c)
    }
}
