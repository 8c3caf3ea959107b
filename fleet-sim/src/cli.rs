//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "fleet-sim", version, about = "Simulated fleets for irec: baselines, experiments, federated rounds")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a baseline policy against simulated users and print the metrics table.
    Simulate(SimulateArgs),
    /// Describe the catalog.
    Catalog(CatalogArgs),
}

/// Where the world comes from.
#[derive(Debug, Args, Clone)]
pub struct WorldArgs {
    /// A real UT-Zappos50K meta-data.csv to load instead of generating a catalog.
    #[arg(long, value_name = "PATH")]
    pub catalog: Option<PathBuf>,
    /// A per-CID visual feature file (cid,f0,f1,...) to load instead of synthesising features.
    #[arg(long, value_name = "PATH")]
    pub features: Option<PathBuf>,
    /// Size of the generated catalog.
    #[arg(long, default_value_t = 50_025)]
    pub items: usize,
    /// Seed of the generated catalog, its features, and the train/test split.
    #[arg(long, default_value_t = 2022)]
    pub world_seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Baseline {
    Random,
    Tracker,
    Oracle,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PoolArg {
    Train,
    Test,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[arg(long, value_enum, default_value_t = Baseline::Tracker)]
    pub policy: Baseline,
    /// Number of evaluation sessions.
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
    /// Seed of the sessions (targets, users, tie-breaking).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Split that targets come from and retrieval draws on.
    #[arg(long, value_enum, default_value_t = PoolArg::Test)]
    pub pool: PoolArg,
    /// Worker threads (results do not depend on it).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print this many session transcripts after the table.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    #[command(flatten)]
    pub world: WorldArgs,
    /// Make the last line of stdout one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Print per-attribute value counts.
    #[arg(long)]
    pub stats: bool,
    /// Write the catalog in meta-data.csv format to this path.
    #[arg(long, value_name = "PATH")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub world: WorldArgs,
    #[arg(long)]
    pub json: bool,
}
