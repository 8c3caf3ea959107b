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
    /// The paper's Table 2 in-process: behaviour, on-policy, off-policy, imitation, offline,
    /// iterative offline, and the rule-based tracker.
    Compare(CompareArgs),
    /// Offline-learner variants trained on one D (same behaviour data, same test sessions).
    Ablate(AblateArgs),
    /// The deployment gate checked against the simulator: a pool of policies of differing
    /// strength estimated by FQE on one D, every ordered pair decided by the server's gate rule.
    GateCheck(GateCheckArgs),
    /// Time one CQL(H) + discrete SAC gradient step with the reference workload's shapes.
    BenchTrain(BenchArgs),
    /// Simulated turns per second with the neural policy (batched inference across sessions).
    BenchSim(BenchSimArgs),
    /// The server's durable ingest capacity: pre-built batches over QUIC from 1 to N
    /// connections, acked after the flush; turns/s and ack latency per connection count.
    BenchIngest(BenchIngestArgs),
    /// The federated loop: an irec-server and N edge agents on loopback, bootstrapped with
    /// behaviour policies, through R rounds of offline training, gating and redeployment.
    Run(RunArgs),
    /// Runs the irec-server binary's code in this process (how `run` starts the server when no
    /// `irec-server` executable sits next to fleet-sim). Takes irec-server's flags.
    #[command(name = "irec-server", hide = true, disable_help_flag = true)]
    Server(Passthrough),
    /// Same for the edge-agent binary.
    #[command(name = "edge-agent", hide = true, disable_help_flag = true)]
    Agent(Passthrough),
    /// Reliability campaigns: kill -9 agents or the server, fuzz the protocol, load with a
    /// thousand agents, audit privacy (docs/reliability.md).
    Chaos(crate::commands::chaos::ChaosArgs),
    /// Exactly-once, checked over every interleaving of sends, losses, duplications,
    /// reorderings and crashes up to a bound (the CI test runs a smaller one).
    ModelCheck(ModelCheckArgs),
    /// Export a server's D ∪ D′ for Python: a d3rlpy-loadable NPZ and round-partitioned Parquet
    /// (read-only; a running server's data dir is read through its HTTP endpoint).
    Export(ExportArgs),
    /// Build a world file that agents map read-only instead of building the world each
    /// (`world_file` in their TOML): catalog, features, ground truth and, with `--perception`,
    /// that perception's AttrNet probabilities. `run` makes one per fleet itself.
    World(WorldFileArgs),
}

#[derive(Debug, Args)]
pub struct WorldFileArgs {
    #[command(flatten)]
    pub world: WorldArgs,
    /// Take the world from this TOML's `[world]` table instead (a server's or an agent's config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A checkpoint carrying the fleet's perception (a policy, or the bootstrap's
    /// `perception.ckpt`): its AttrNet probabilities of every item go into the file.
    #[arg(long)]
    pub perception: Option<PathBuf>,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchSimArgs {
    /// Sessions in all.
    #[arg(long, default_value_t = 4_000)]
    pub sessions: usize,
    /// Sessions stepped together in one batched rollout.
    #[arg(long, default_value_t = 256)]
    pub session_batch: usize,
    /// Threads the sessions are split across (candle's own threads: RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A policy checkpoint to act with (e.g. a behaviour policy from `run`'s bootstrap folder);
    /// default: a fresh, untrained recommender on the quick preset's perception.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Gaussian logit noise σ of the acting policy.
    #[arg(long, default_value_t = 0.5)]
    pub noise_sigma: f32,
    #[arg(long, value_name = "DIR", default_value = "runs/cache")]
    pub cache: PathBuf,
    #[command(flatten)]
    pub world: WorldArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    /// Connection counts, comma-separated, one point each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100, 1000])]
    pub connections: Vec<usize>,
    /// Timed seconds per point.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Sessions per upload batch.
    #[arg(long, default_value_t = 64)]
    pub batch_sessions: usize,
    /// Offer this many turns per second in all (open loop) instead of sending as fast as acks
    /// come back.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run the irec-server executable from this folder (e.g. target/release).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Working directory (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The server's data dir (for `fleet-sim run`: `<dir>/server`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Folder to write into (created; must be new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// The server's TOML config (for its world, trainer state dir and objective), when it did
    /// not run with the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Reward the exported `rewards` carry (default: the server's trainer objective).
    #[arg(long, value_parser = ["paper", "turn_cost"])]
    pub objective: Option<String>,
    /// Print the export's metadata as JSON on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelCheckArgs {
    /// Sessions the agent records.
    #[arg(long, default_value_t = 4)]
    pub sessions: u32,
    /// Most sessions per batch.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub max_in_flight: usize,
    /// Messages the network may lose.
    #[arg(long, default_value_t = 2)]
    pub losses: u8,
    /// Messages the network may deliver twice.
    #[arg(long, default_value_t = 1)]
    pub duplications: u8,
    /// Ack timeouts that may fire.
    #[arg(long, default_value_t = 2)]
    pub timeouts: u8,
    #[arg(long, default_value_t = 1)]
    pub agent_crashes: u8,
    #[arg(long, default_value_t = 1)]
    pub server_crashes: u8,
    #[arg(long)]
    pub json: bool,
}

/// Arguments handed to another binary's parser unchanged.
#[derive(Debug, Args)]
pub struct Passthrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Edge agents in the fleet (with `--population`: the devices that take part in each round).
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// A sampled study: this many devices, idle ones kept as records (their profile and session
    /// count) and each round's `--agents` drawn at random to take part, in-process (as Flower
    /// simulates clients). Without it every agent takes part in every round.
    #[arg(long)]
    pub population: Option<usize>,
    /// With `--population`: the share of each round's drawn devices that fail to respond (they
    /// run nothing that round); as many more are drawn, so `--agents` take part.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Rounds the server trains; round 0 learns from the behaviour policies' sessions, each later
    /// one from D ∪ D′ after the fleet ran the policy deployed for it.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// New sessions that close a round (default: the preset's).
    #[arg(long)]
    pub sessions_per_round: Option<u64>,
    /// Also close a round this many seconds after it opened, with what arrived (stragglers'
    /// sessions go into the next round). Default: no deadline, rounds wait for their quota.
    #[arg(long, value_name = "SECONDS")]
    pub round_deadline_s: Option<f64>,
    /// Pause between an agent's sessions, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub session_interval_ms: u64,
    /// Share of the agents (the last ones) that are stragglers, `--slow-factor` times slower.
    #[arg(long, default_value_t = 0.0)]
    pub slow_agents: f64,
    /// How much slower a straggler runs its sessions (its pause is this many times the
    /// interval, at least 1 ms).
    #[arg(long, default_value_t = 10)]
    pub slow_factor: u64,
    /// Scale of pretraining, behaviour policies, training steps and evaluation.
    #[arg(long, value_enum, default_value_t = PresetArg::Quick)]
    pub preset: PresetArg,
    /// Report folder; also holds the server's and agents' data dirs and logs.
    #[arg(long, value_name = "DIR", default_value = "runs/run")]
    pub out: PathBuf,
    /// Agents as tasks of this process (for fleets of thousands) instead of processes.
    #[arg(long)]
    pub in_process: bool,
    /// Seed of the bootstrap, the devices and training.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where pretrained perception is cached between runs.
    #[arg(long, value_name = "DIR", default_value = "runs/cache")]
    pub cache: PathBuf,
    #[arg(long)]
    pub no_cache: bool,
    /// Training device of the server: cpu, or cuda:N with a `--features cuda` build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Gradient steps of the first trained round and of each later one (default: the preset's).
    #[arg(long, num_args = 2, value_names = ["FIRST", "LATER"])]
    pub steps: Option<Vec<usize>>,
    /// Test sessions each round's policies are evaluated on (default: the preset's).
    #[arg(long)]
    pub eval_sessions: Option<usize>,
    /// Gradient steps of each fitted Q evaluation behind the gate (default: the preset's).
    #[arg(long)]
    pub fqe_steps: Option<usize>,
    /// A TOML file overriding the preset's experiment settings (world, pretraining, on-policy
    /// learner, behaviour noise, SAC/CQL), as for `compare`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run the `irec-server` and `edge-agent` executables from this folder (e.g. target/release)
    /// instead of fleet-sim's own copies of their code.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Give up (and stop the fleet) after this many minutes.
    #[arg(long, default_value_t = 60)]
    pub timeout_min: u64,
    /// Serve the server's live dashboard and Prometheus /metrics at this address while the fleet
    /// runs (without a value: 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub dashboard: Option<std::net::SocketAddr>,
    /// Offline learner of the server's rounds: iql (the default: it beat the behaviour devices by
    /// the widest margin, docs/results.md), cql_sac (the paper's) or bcq.
    #[arg(long, default_value = "iql", value_parser = irec_learn::algo::Algo::parse)]
    pub algo: irec_learn::algo::Algo,
    #[command(flatten)]
    pub world: WorldArgs,
    #[arg(long)]
    pub json: bool,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    Quick,
    Paper,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[arg(long, value_enum, default_value_t = PresetArg::Quick)]
    pub preset: PresetArg,
    /// Seed of training and evaluation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Report folder (table, JSON, CSV, curves).
    #[arg(long, value_name = "DIR", default_value = "runs/compare")]
    pub out: PathBuf,
    /// A TOML file overriding the preset's settings (see docs/results.md for the fields).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where pretrained perception is cached between runs (none: always pretrain).
    #[arg(long, value_name = "DIR", default_value = "runs/cache")]
    pub cache: PathBuf,
    /// Do not use or fill the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// cpu, or cuda:N with a `--features cuda` build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Offline learners, comma-separated: the first trains the Offline and Iterative Offline
    /// rows, each further one adds an "Offline Learning (…)" row on the same D (cql_sac, bcq, iql).
    #[arg(long, value_delimiter = ',', value_parser = irec_learn::algo::Algo::parse)]
    pub algo: Vec<irec_learn::algo::Algo>,
    #[arg(long)]
    pub json: bool,
}

/// What every in-process experiment on one D takes (`ablate`, `gate-check`).
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[arg(long, value_enum, default_value_t = PresetArg::Quick)]
    pub preset: PresetArg,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A TOML file overriding the preset's settings (`[world]`, `[pretrain]`, `[behaviour]`,
    /// `[offline]`, …; ablate's variants override `[offline]` on top).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "DIR", default_value = "runs/cache")]
    pub cache: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AblateArgs {
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// A TOML file of variants: `[[variant]]` tables with `name` and an `[variant.offline]`
    /// table overriding the preset's `[offline]` settings.
    #[arg(long, value_name = "FILE")]
    pub variants: PathBuf,
    /// Also run each variant's iterative rounds.
    #[arg(long)]
    pub iterate: bool,
    /// Write each variant's long (> 20 turns) or failed test sessions, rendered, into DIR.
    #[arg(long, value_name = "DIR")]
    pub failures: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GateCheckArgs {
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// The offline learner whose training stages join the pool (the server's by default).
    #[arg(long, default_value = "iql", value_parser = irec_learn::algo::Algo::parse)]
    pub algo: irec_learn::algo::Algo,
    /// FQE gradient steps per policy (unset: the server trainer's).
    #[arg(long)]
    pub fqe_steps: Option<usize>,
    /// FQE soft target-update rate per step (unset: the server trainer's).
    #[arg(long)]
    pub fqe_tau: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchModeArg {
    Flat,
    Gru,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = BenchModeArg::Flat)]
    pub mode: BenchModeArg,
    /// Timed gradient steps (after 20 warm-up steps).
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Let the thread pool's idle workers sleep between the step's joins instead of spinning
    /// (training keeps them spinning; this shows what that is worth).
    #[arg(long)]
    pub sleeping_workers: bool,
    #[arg(long)]
    pub json: bool,
}
