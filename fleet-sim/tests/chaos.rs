//! The reliability campaigns (docs/reliability.md) at CI size. The long runs are
//! `fleet-sim chaos <campaign>`; these run the same code with fewer kills, inputs and agents.
//! R5 (attacks) is `server/tests/attack.rs` with `server/tests/ingest.rs`.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo test -p irec-fleet-sim --test chaos`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use irec_testkit::procs::Binaries;
use irec_fleet_sim::chaos::{self, Outcome};
use std::path::Path;

/// The server and agents as `fleet-sim irec-server|edge-agent` child processes (never stale).
fn bins() -> Binaries {
    Binaries::via_fleet_sim(Path::new(env!("CARGO_BIN_EXE_fleet-sim")))
}

fn assert_passed(o: &Outcome) {
    assert!(o.passed(), "{} failed: {:#?}\nfigures: {}", o.campaign, o.violations, serde_json::to_string_pretty(&o.figures).unwrap());
}

fn figure(o: &Outcome, name: &str) -> serde_json::Value {
    o.figures.get(name).cloned().unwrap_or(serde_json::Value::Null)
}

#[test]
fn r1_agents_killed_at_random_points_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::agents_killed::AgentsKilledConfig {
        agents: 3,
        sessions: 40,
        kills: 15,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let o = chaos::agents_killed::run(&bins(), &c, &mut |_| {}).unwrap();
    assert_passed(&o);
    assert_eq!(figure(&o, "kills"), 15);
}

#[test]
fn r2_server_killed_mid_ingest_training_and_publish_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::server_killed::ServerKilledConfig {
        kills: 4,
        agents: 2,
        session_interval_ms: 50,
        round_quota: 40,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let o = chaos::server_killed::run(&bins(), &c, &mut |_| {}).unwrap();
    assert_passed(&o);
    assert!(figure(&o, "training_attempts").as_u64().unwrap() >= 1, "a round trained");
}

#[test]
fn r3_fuzzed_frames_and_handlers_never_panic_and_a_live_server_agrees() {
    let c = chaos::fuzz::FuzzConfig { inputs: 200_000, threads: 2, seed: 7, ..Default::default() };
    let o = chaos::fuzz::run(&c, &|_| {}).unwrap();
    assert_passed(&o);
    assert_eq!(figure(&o, "panics"), 0);
    assert!(figure(&o, "uploads_accepted").as_u64().unwrap() > 0, "valid uploads are generated too");
    let dir = tempfile::tempdir().unwrap();
    let live = chaos::fuzz_live::run(1_000, 7, dir.path(), &|_| {}).unwrap();
    assert_passed(&live);
}

#[test]
fn r4_a_hundred_concurrent_agents_are_all_ingested_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::load::LoadConfig {
        agents: 100,
        sessions: 5,
        session_interval_ms: 100,
        ramp_ms: 500,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let o = chaos::load::run(&bins(), &c, &|_| {}).unwrap();
    assert_passed(&o);
    assert!(figure(&o, "server_peak_rss_mib").as_f64().unwrap() > 0.0);
}

#[test]
fn r6_nothing_private_reaches_server_storage_or_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::privacy::PrivacyConfig { agents: 3, sessions: 15, dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let o = chaos::privacy::run(&bins(), &c).unwrap();
    assert_passed(&o);
    assert_eq!(figure(&o, "private_values_found"), 0);
    assert!(figure(&o, "device_seed_hits_in_own_store").as_u64().unwrap() > 0, "the scan can see a leak");
    // D exported for Python is audited too: all 45 sessions, nothing private.
    assert_eq!(figure(&o, "export_episodes"), 45);
    assert_eq!(figure(&o, "private_values_found_in_export"), 0);
    assert!(figure(&o, "export_bytes_scanned").as_u64().unwrap() > 0);
}

/// R7 at CI size: two agent hosts, two rounds, a 100 ms round trip with 5% loss, a 2 s partition
/// every round. Needs root and iproute2, as .ci/run provides.
#[test]
fn r7_a_fleet_across_hosts_and_a_bad_network_stores_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::network::NetworkConfig {
        hosts: 2,
        agents_per_host: 1,
        round_quota: 40,
        rounds: 2,
        partition_s: 2.0,
        prefix: "irecci".into(),
        timeout_s: 600,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let o = chaos::network::run(&bins(), &c, &mut |_| {}).unwrap();
    assert_passed(&o);
    assert!(figure(&o, "datagrams_lost").as_u64().unwrap() > 0, "the link did lose datagrams");
    assert!(figure(&o, "partitions").as_u64().unwrap() >= 2);
    assert!(chaos::hosts::existing().unwrap().iter().all(|n| !n.starts_with("irecci-")), "no namespace left behind");
}

#[test]
fn r7_refuses_a_namespace_in_use_and_leaves_it_alone() {
    let taken = "irecbusy-0";
    let made = std::process::Command::new("ip").args(["netns", "add", taken]).status().unwrap();
    assert!(made.success(), "ip netns add (root needed)");
    let err = chaos::hosts::Hosts::create("irecbusy", 2).unwrap_err().to_string();
    let still_there = chaos::hosts::existing().unwrap().iter().any(|n| n == taken);
    let _ = std::process::Command::new("ip").args(["netns", "del", taken]).status();
    assert!(err.contains("irecbusy-0") && err.contains("already exists"), "{err}");
    assert!(still_there, "a namespace the campaign did not make is never deleted");
    assert!(chaos::hosts::existing().unwrap().iter().all(|n| !n.starts_with("irecbusy-1")), "nothing half-made is left");
}

#[test]
fn r9_a_fleet_comes_back_after_the_server_was_away_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = chaos::reconnect::ReconnectConfig {
        agents: 40,
        sessions: 3,
        session_interval_ms: 2_000,
        ramp_ms: 1_000,
        kill_after_s: 3.0,
        away_s: 2.0,
        // A rolling restart: the long run measures crashes too.
        graceful: true,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let o = chaos::reconnect::run(&bins(), &c, &|_| {}).unwrap();
    assert_passed(&o);
    // Every agent came back (the spread itself is a figure of the long run, not a timed test).
    assert_eq!(figure(&o, "agents_connected_before_the_kill"), 40);
}

/// The ingest benchmark at a tiny size, so it cannot rot: every batch acked durably, D holding
/// exactly what was acked (its figures belong in docs/benchmarks.md, never in a test).
#[test]
fn bench_ingest_runs_at_a_tiny_size_and_stores_exactly_what_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = irec_fleet_sim::bench_ingest::IngestBenchConfig {
        connections: vec![1, 3],
        seconds: 0.5,
        batch_sessions: 8,
        pool_sessions: 32,
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let r = irec_fleet_sim::bench_ingest::run(&bins(), &cfg, &|_| {}).unwrap();
    assert_eq!(r.points.iter().map(|p| p.connections).collect::<Vec<_>>(), vec![1, 3]);
    for p in &r.points {
        assert!(p.batches_acked > 0 && p.turns_acked > 0, "{p:?}");
        assert_eq!(p.failed, 0, "{p:?}");
        assert!(p.stored_exactly, "D must hold exactly the sessions acked: {p:?}");
    }
}
