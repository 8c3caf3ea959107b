//! fleet-sim: the researcher's entry point.
//!
//! - `simulate`: run a baseline policy against simulated users and print the metrics table.
//! - `catalog`: print the catalog's marginals.
//! - `compare`: the paper's Table 2 in-process.
//! - `bench-train`: one CQL + SAC gradient step, timed.
//! - `bench-ingest`: the server's durable ingest capacity over QUIC ([`bench_ingest`]).
//! - `export`: D for Python (NPZ, Parquet).
//! - `ablate`: offline-learner variants trained side by side on one D.
//! - `chaos`: the reliability campaigns ([`chaos`]).
//! - `run`: the federated loop — an irec-server and edge agents on loopback, round by round.
//!
//! Every command takes `--json`, which makes the last line of stdout one JSON object.
//!
//! Modules: [`cli`] (flags), [`commands`] (one per subcommand), [`chaos`] (campaigns),
//! [`bench_ingest`] (the ingest load generator),
//! [`report`] and [`chart`] (tables and figures), [`progress`] (bars on a terminal, lines
//! otherwise).

pub mod bench_ingest;
pub mod chaos;
pub mod chart;
pub mod cli;
pub mod commands;
pub mod progress;
pub mod report;

use clap::Parser;
use std::process::ExitCode;

/// Parses the command line, runs the command, and maps errors to a non-zero exit.
pub fn main() -> ExitCode {
    irec_learn::host::keep_candle_elementwise_inline();
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Compare(_) | cli::Command::Ablate(_) | cli::Command::GateCheck(_) | cli::Command::BenchTrain(_) | cli::Command::Server(_)) {
        irec_learn::host::keep_freed_memory();
    }
    // Chaos campaigns run an in-process server against hostile peers: its per-refusal warnings
    // would bury the report. The server and agents that `run` starts log what they do (into the
    // run's log files).
    let filter = match cli.command {
        cli::Command::Chaos(_) => "warn,irec_server=error,irec_edge_agent=error",
        cli::Command::Server(_) | cli::Command::Agent(_) => "info",
        _ => "warn",
    };
    init_tracing(filter);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
