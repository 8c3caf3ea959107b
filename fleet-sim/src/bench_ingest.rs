//! `fleet-sim bench-ingest`: the server's own ingest capacity, with no simulation in the loop.
//!
//! The server runs as its own process (no trainer, no round quota: ingest only). Sessions are
//! simulated once, before any timing, by the rule-based tracker on the campaign world; then, for
//! each connection count, that many QUIC connections each send upload batches built from that
//! pool (a fresh batch id each) and wait for the ack — durable, since the server flushes before it
//! acks — for a fixed time. Closed loop by default (each connection sends its next batch when the
//! last one is acked: the capacity); with `--rate` the connections together offer that many turns
//! per second on a schedule (open loop: the latency at a given load). Every point ends with D's
//! size checked against the turns acked, so a lost or doubled batch cannot pass as throughput.

use crate::chaos::fleet::{self, WorldSize};
use crate::chaos::{percentile, ChaosError};
use irec_edge_agent::procfs;
use irec_protocol::experience::ExperienceSession;
use irec_protocol::*;
use irec_testkit::procs::Binaries;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestBenchConfig {
    /// Connection counts, one point each.
    pub connections: Vec<usize>,
    /// Timed seconds per point.
    pub seconds: f64,
    /// Sessions per upload batch.
    pub batch_sessions: usize,
    /// Turns per second all connections together offer (none: as fast as acks come back).
    pub rate_turns_per_s: Option<f64>,
    /// Sessions simulated once to build batches from.
    pub pool_sessions: u64,
    pub world: WorldSize,
    pub dir: Option<PathBuf>,
}

impl Default for IngestBenchConfig {
    fn default() -> Self {
        IngestBenchConfig { connections: vec![1, 10, 100, 1_000], seconds: 10.0, batch_sessions: 64, rate_turns_per_s: None, pool_sessions: 512, world: WorldSize::default(), dir: None }
    }
}

/// One connection count's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestPoint {
    pub connections: usize,
    pub offered_turns_per_s: Option<f64>,
    pub seconds: f64,
    pub batches_acked: u64,
    pub turns_acked: u64,
    pub turns_per_s: f64,
    pub sessions_per_s: f64,
    pub upload_mib_per_s: f64,
    /// Send-to-ack latency of every batch, in milliseconds.
    pub ack_p50_ms: f64,
    pub ack_p90_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    /// Requests that got anything but an ack.
    pub failed: u64,
    /// CPU seconds the server process used per timed second (2 = both cores).
    pub server_cpu: f64,
    /// D grew by exactly the sessions acked.
    pub stored_exactly: bool,
}

/// The whole curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestBenchReport {
    pub points: Vec<IngestPoint>,
    pub batch_sessions: usize,
    pub mean_turns_per_session: f64,
    /// Cores of this machine (the load generator shares them with the server).
    pub cores: usize,
    pub server_peak_rss_mib: f64,
    pub dir: String,
}

/// What one connection did during a point.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    turns: u64,
    sessions: u64,
    bytes: u64,
    failed: u64,
}

/// Runs the benchmark; `progress` gets a line per point.
pub fn run(bins: &Binaries, cfg: &IngestBenchConfig, progress: &dyn Fn(&str)) -> Result<IngestBenchReport, ChaosError> {
    let dir = fleet::workdir(cfg.dir.as_deref(), "bench-ingest")?;
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let mut server_config = fleet::server_config(&server_dir, port, &cfg.world);
    server_config.max_connections = cfg.connections.iter().copied().max().unwrap_or(1) + 64;
    server_config.max_batch_sessions = server_config.max_batch_sessions.max(cfg.batch_sessions);
    let none: toml::Table = "[trainer]\nkind = \"none\"\n".parse().map_err(|e: toml::de::Error| ChaosError::Config(e.to_string()))?;
    let mut server = fleet::start_server(bins, &server_config, Some(&none), &dir.join("server-0"), &[("NO_COLOR", "1"), ("RUST_LOG", "warn")])?;
    let pid = server.pid();

    progress(&format!("simulating a pool of {} sessions (before any timing)", cfg.pool_sessions));
    let env = cfg.world.environment()?;
    let device = irec_edge_agent::config::DeviceConfig { seed: 77, ..Default::default() };
    let pool: Arc<Vec<ExperienceSession>> = Arc::new(fleet::replay(&env, &device, cfg.pool_sessions));
    let mean_turns = pool.iter().map(|s| s.len()).sum::<usize>() as f64 / pool.len().max(1) as f64;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| ChaosError::Io(dir.clone(), e))?;
    let mut points = Vec::new();
    let mut next_id = 1u128;
    for &n in &cfg.connections {
        let cpu_before = procfs::cpu_seconds(Some(pid)).unwrap_or(0.0);
        let (tallies, elapsed) = runtime.block_on(point(n, cfg, &pool, server_config.listen, &cert, &mut next_id))?;
        let cpu = procfs::cpu_seconds(Some(pid)).unwrap_or(0.0) - cpu_before;
        let acked_sessions: u64 = tallies.iter().map(|t| t.sessions).sum();
        let turns: u64 = tallies.iter().map(|t| t.turns).sum();
        let mut lat: Vec<f64> = tallies.iter().flat_map(|t| t.latencies_ms.iter().copied()).collect();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| percentile(&lat, q).unwrap_or(0.0);
        let secs = elapsed.as_secs_f64();
        let point = IngestPoint {
            connections: n,
            offered_turns_per_s: cfg.rate_turns_per_s,
            seconds: secs,
            batches_acked: lat.len() as u64,
            turns_acked: turns,
            turns_per_s: turns as f64 / secs,
            sessions_per_s: acked_sessions as f64 / secs,
            upload_mib_per_s: tallies.iter().map(|t| t.bytes).sum::<u64>() as f64 / secs / (1 << 20) as f64,
            ack_p50_ms: p(50.0),
            ack_p90_ms: p(90.0),
            ack_p99_ms: p(99.0),
            ack_max_ms: lat.last().copied().unwrap_or(0.0),
            failed: tallies.iter().map(|t| t.failed).sum(),
            server_cpu: cpu / secs,
            stored_exactly: false,
        };
        progress(&format!(
            "{n} connections: {:.0} turns/s durable ({} batches), ack p50 {:.1} ms p99 {:.1} ms, server CPU {:.2} cores, {} failed",
            point.turns_per_s, point.batches_acked, point.ack_p50_ms, point.ack_p99_ms, point.server_cpu, point.failed
        ));
        points.push((point, acked_sessions));
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    let peak = procfs::memory(Some(pid)).map_or(0.0, |m| m.peak_kib as f64 / 1024.0);
    let stopped = server.interrupt(Duration::from_secs(30));
    if !stopped.is_some_and(|s| s.success()) {
        return Err(ChaosError::Config(format!("the server did not stop cleanly: {stopped:?}")));
    }
    // D after the stop holds exactly the sessions acked, over all points.
    let stored = irec_server::store::Store::open(&irec_server::store::db_dir(&server_dir))?.counters()?.sessions_total;
    let acked_all: u64 = points.iter().map(|p| p.1).sum();
    let exact = stored == acked_all;
    Ok(IngestBenchReport {
        points: points.into_iter().map(|(mut p, _)| {
            p.stored_exactly = exact;
            p
        }).collect(),
        batch_sessions: cfg.batch_sessions,
        mean_turns_per_session: mean_turns,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        server_peak_rss_mib: peak,
        dir: dir.display().to_string(),
    })
}

/// One point: `n` connections sending for `cfg.seconds`.
async fn point(n: usize, cfg: &IngestBenchConfig, pool: &Arc<Vec<ExperienceSession>>, addr: std::net::SocketAddr, cert: &std::path::Path, next_id: &mut u128) -> Result<(Vec<Tally>, Duration), ChaosError> {
    let quic = |e: irec_testkit::KitError| ChaosError::Config(format!("connecting: {e}"));
    // A few endpoints (UDP sockets) share the connections, as a fleet's many hosts would.
    let endpoints: Vec<quinn::Endpoint> = (0..n.div_ceil(64)).map(|_| irec_testkit::quic::endpoint()).collect::<Result<_, _>>().map_err(quic)?;
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        sessions.push(irec_testkit::quic::Session::hello(&endpoints[i % endpoints.len()], addr, cert, fleet::TOKEN).await.map_err(quic)?);
    }
    let window = Duration::from_secs_f64(cfg.seconds);
    let per_batch_turns = cfg.batch_sessions as f64 * pool.iter().map(|s| s.len()).sum::<usize>() as f64 / pool.len().max(1) as f64;
    // Open loop: each connection sends every `gap`, the connections staggered across it.
    let gap = cfg.rate_turns_per_s.map(|r| Duration::from_secs_f64(n as f64 * per_batch_turns / r.max(1.0)));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sessions.into_iter().enumerate() {
        let pool = pool.clone();
        let first_id = *next_id + (i as u128) * 1_000_000;
        let batch = cfg.batch_sessions;
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let offset = gap.map_or(Duration::ZERO, |g| g.mul_f64(i as f64 / n as f64));
            let mut k: u128 = 0;
            loop {
                let due = started + offset + gap.map_or(Duration::ZERO, |g| g * k as u32);
                if due >= started + window || started.elapsed() >= window {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let from = ((first_id + k) as usize * batch) % pool.len().max(1);
                let chosen: Vec<ExperienceSession> = (0..batch).map(|j| pool[(from + j) % pool.len()].clone()).collect();
                let turns: u64 = chosen.iter().map(|c| c.len() as u64).sum();
                let message = Message::UploadBatch(UploadBatch { batch_id: BatchId(first_id + k), sessions: chosen });
                let bytes = irec_testkit::quic::frame(&message);
                let sent = Instant::now();
                let answer = irec_testkit::quic::exchange(&s.conn, &bytes, Duration::from_secs(30)).await;
                match answer.ack() {
                    Some(a) if !a.duplicate => {
                        t.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        t.turns += turns;
                        t.sessions += u64::from(a.stored);
                        t.bytes += bytes.len() as u64;
                    }
                    _ => t.failed += 1,
                }
                k += 1;
            }
            s.conn.close(0u32.into(), b"done");
            t
        }));
    }
    let mut tallies = Vec::with_capacity(n);
    for t in tasks {
        tallies.push(t.await.map_err(|e| ChaosError::Config(e.to_string()))?);
    }
    let elapsed = started.elapsed();
    *next_id += n as u128 * 1_000_000;
    for e in endpoints {
        e.wait_idle().await;
    }
    Ok((tallies, elapsed))
}
