//! Command-line flags: each overrides the same field of the TOML config.

use crate::config::{ConfigError, ServerConfig};
use irec_learn::round::{LearnedTrainer, NoTrainer, RoundTrainer, TrainerKind};
use std::sync::Arc;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// irec-server: ingest experience from edge agents over QUIC, train rounds, push policies.
#[derive(Debug, Parser)]
#[command(name = "irec-server", version)]
pub struct Cli {
    /// TOML config file (flags override its fields).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (database, certificate, status.json).
    #[arg(long, global = true)]
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
    #[arg(long, global = true)]
    pub items: Option<usize>,
    /// Seed of the simulated world (must match the agents').
    #[arg(long, global = true)]
    pub world_seed: Option<u64>,
    /// Round trainer: learned (the `--algo` learner with an FQE gate) or none.
    #[arg(long, value_parser = ["learned", "none"])]
    pub trainer: Option<String>,
    /// Offline learner of the rounds: iql (the default), cql_sac (the paper's) or bcq.
    #[arg(long, value_parser = irec_learn::algo::Algo::parse)]
    pub algo: Option<irec_learn::algo::Algo>,
    /// Checkpoint carrying the pretrained perception the trainer featurizes with.
    #[arg(long, global = true)]
    pub perception: Option<PathBuf>,
    /// Directory with the certificate and key (`cert.der`, `key.der`); default: the data dir.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Write a new certificate and key for the config's `cert_names` into this directory (for a
    /// Secret that agents pin), and exit. An existing pair there is kept.
    #[arg(long, value_name = "DIR")]
    pub write_cert: Option<PathBuf>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Serve the HTTP endpoint: live dashboard, Prometheus /metrics, exports while running.
    #[arg(long)]
    pub http: bool,
    /// Address of the HTTP endpoint (implies --http; default 127.0.0.1:9464).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Export D ∪ D′ of the data dir as a d3rlpy-loadable NPZ and round-partitioned Parquet
    /// (read-only; a running server's data dir is read through its HTTP endpoint).
    Export(ExportArgs),
}

/// `irec-server export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Folder to write into (created; must be new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Reward the exported `rewards` carry: the trainer's objective unless given (`paper`, or
    /// `turn_cost` with its default cost); the logged reward is exported beside it either way.
    #[arg(long, value_parser = ["paper", "turn_cost"])]
    pub objective: Option<String>,
}

impl ExportArgs {
    /// The objective override, if any.
    pub fn objective(&self) -> Option<irec_learn::algo::Objective> {
        self.objective.as_deref().and_then(crate::export::objective_named)
    }
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
        if let Some(v) = self.trainer.as_deref() {
            c.trainer.kind = if v == "none" { TrainerKind::None } else { TrainerKind::Learned };
        }
        if let Some(v) = self.perception {
            c.trainer.perception = Some(v);
        }
        if let Some(v) = self.algo {
            c.trainer.algo = v;
        }
        if let Some(v) = self.tls_dir {
            c.tls_dir = Some(v);
        }
        if self.http || self.http_listen.is_some() {
            c.http.enabled = true;
        }
        if let Some(v) = self.http_listen {
            c.http.listen = v;
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
    Server(#[from] crate::ServerError),
    #[error("printing the config: {0}")]
    Print(#[from] toml::ser::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (Kubernetes, systemd): the server then stops in order.
pub async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Without a SIGTERM handler the second branch is disabled and Ctrl-C alone stops it.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = async { term.as_mut()?.recv().await } => {}
    }
}

/// What `irec-server` does with its flags: serve until SIGINT or SIGTERM, then stop in order
/// (in-flight acks finish, the training round is cancelled and retrained after a restart).
/// A library function so that `fleet-sim` can run the same server as a process of its own.
pub fn execute(mut cli: Cli) -> Result<(), CliError> {
    let print = cli.print_config;
    let write_cert = cli.write_cert.clone();
    let command = cli.command.take();
    let config = cli.into_config()?;
    if let Some(Command::Export(args)) = command {
        let progress = irec_learn::experiment::LogLines::default();
        let report = crate::export::run(&config, &args.out, args.objective(), &progress)?;
        println!("{}", crate::export::summary(&report, &args.out));
        return Ok(());
    }
    if let Some(dir) = write_cert {
        std::fs::create_dir_all(&dir).map_err(|e| CliError::Runtime(std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))))?;
        crate::tls::load_or_create(&dir, &config.cert_names)?;
        println!("{}", dir.join(crate::tls::CERT_FILE).display());
        return Ok(());
    }
    if print {
        println!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    let trainer: Arc<dyn RoundTrainer> = match config.trainer.kind {
        TrainerKind::Learned => Arc::new(LearnedTrainer::new(config.trainer.clone(), config.world.clone(), &config.data_dir)),
        TrainerKind::None => Arc::new(NoTrainer),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::run(config, trainer, stop_requested()))?;
    Ok(())
}
