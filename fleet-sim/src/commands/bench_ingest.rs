//! `fleet-sim bench-ingest`: the curve of the server's durable ingest capacity.

use super::print_json;
use crate::bench_ingest::{run as bench, IngestBenchConfig};
use crate::cli::BenchIngestArgs;
use irec_testkit::procs::Binaries;

pub fn run(a: BenchIngestArgs) -> anyhow::Result<()> {
    let bins = match &a.bin_dir {
        Some(d) => Binaries::in_dir(d)?,
        None => Binaries::this_executable()?,
    };
    let cfg = IngestBenchConfig { connections: a.connections.clone(), seconds: a.seconds, batch_sessions: a.batch_sessions, rate_turns_per_s: a.rate, dir: a.dir.clone(), ..IngestBenchConfig::default() };
    let r = bench(&bins, &cfg, &|line| eprintln!("{line}"))?;
    println!("| connections | turns/s (durable) | batches | ack p50 ms | p90 | p99 | max | server CPU (cores) | failed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.points {
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
            p.connections, p.turns_per_s, p.batches_acked, p.ack_p50_ms, p.ack_p90_ms, p.ack_p99_ms, p.ack_max_ms, p.server_cpu, p.failed
        );
    }
    println!(
        "{} sessions per batch ({:.1} turns per session); {} cores shared by the server and this load generator; D holds exactly the sessions acked: {}; server peak RSS {:.0} MiB",
        r.batch_sessions,
        r.mean_turns_per_session,
        r.cores,
        r.points.first().is_some_and(|p| p.stored_exactly),
        r.server_peak_rss_mib
    );
    print_json(a.json, &serde_json::to_value(&r)?);
    Ok(())
}
