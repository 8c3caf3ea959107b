//! R4: a thousand agents at once. The server runs as its own process (its memory is measured
//! alone); the agents run as tasks in this process, sharing one simulated world, each with its
//! own sled store, QUIC endpoint and connection, on loopback. Every session must be ingested
//! exactly once; the figures are throughput (sessions, turns and upload bytes per second, over
//! the time from the first agent's start to the last ack), send-to-ack latency percentiles over
//! every batch, and the server's peak resident memory.

use irec_testkit::procs::Binaries;
use super::fleet::{self, WorldSize};
use super::{percentile, ChaosError, Outcome};
use irec_edge_agent::procfs;
use irec_edge_agent::Stats;
use irec_model::loader::BaselineLoader;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadConfig {
    pub agents: usize,
    /// Sessions per agent.
    pub sessions: u64,
    /// Sessions per upload batch.
    pub batch_size: usize,
    /// Pause between an agent's sessions, in milliseconds.
    pub session_interval_ms: u64,
    /// Agents are started evenly over this many milliseconds (0: all at once).
    pub ramp_ms: u64,
    pub world: WorldSize,
    pub dir: Option<PathBuf>,
    /// Give up on the fleet after this long.
    pub timeout_s: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            agents: 1_000,
            sessions: 20,
            batch_size: 5,
            // Long enough that every agent is still running when the last one starts.
            session_interval_ms: 1_000,
            ramp_ms: 5_000,
            world: WorldSize::default(),
            dir: None,
            timeout_s: 600,
        }
    }
}

/// Runs R4.
pub fn run(bins: &Binaries, config: &LoadConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome, ChaosError> {
    let progress_line = |n: usize| progress(&format!("R4: {n} agents running"));
    let mut out = Outcome::new("load");
    let dir = fleet::workdir(config.dir.as_deref(), "load")?;
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.max_connections = config.agents + 64;
    let mut server = fleet::start_server(bins, &server_config, None, &dir.join("server-0"), &[("NO_COLOR", "1"), ("RUST_LOG", "info")])?;
    let server_pid = server.pid();
    let env = config.world.environment()?;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);
    let loader = Arc::new(
        BaselineLoader::Tracker { lexicon: Arc::new(env.world.lexicon.clone()), index: Arc::new(env.index.clone()) }.with_fallback(true),
    );
    let configs: Vec<_> = (0..config.agents)
        .map(|i| {
            let mut c = fleet::agent_config(&dir.join(format!("agents/a{i}")), server_config.listen, &cert, &config.world, 10_000 + i as u64, config.sessions);
            c.batch_size = config.batch_size;
            // Batches fill up rather than leave one session at a time.
            c.batch_linger_ms = config.session_interval_ms * config.batch_size as u64 + 1_000;
            c.session_interval_ms = config.session_interval_ms;
            // A thousand handshakes at once on a small machine can take seconds.
            c.connect_timeout_ms = 20_000;
            c.upload.ack_timeout_ms = 30_000;
            c
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| ChaosError::Io(dir.clone(), e))?;
    let running = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(config.timeout_s);
    let (results, peak_running, peak_rss_during) = runtime.block_on(async {
        // Concurrency and the server's memory are sampled from the first start to the last exit.
        let sampler = {
            let running = running.clone();
            async move {
                let (mut peak_running, mut peak_rss) = (0, 0);
                let mut last = Instant::now();
                loop {
                    let now = running.load(Ordering::SeqCst);
                    peak_running = peak_running.max(now);
                    if let Some(hwm) = procfs::memory(Some(server_pid)).map(|m| m.peak_kib) {
                        peak_rss = peak_rss.max(hwm);
                    }
                    if last.elapsed() > Duration::from_secs(10) {
                        last = Instant::now();
                        progress_line(now);
                    }
                    if (now == 0 && peak_running > 0) || Instant::now() > deadline {
                        return (peak_running, peak_rss);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let fleet = async {
            let mut tasks = Vec::new();
            let gap = Duration::from_micros(config.ramp_ms * 1000 / config.agents.max(1) as u64);
            let ramp_start = tokio::time::Instant::now();
            for (i, c) in configs.iter().cloned().enumerate() {
                let (env, loader, running) = (env.clone(), loader.clone(), running.clone());
                running.fetch_add(1, Ordering::SeqCst);
                tasks.push(tokio::spawn(async move {
                    let r = irec_edge_agent::run_in(c, env, loader, std::future::pending()).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    r
                }));
                // On a schedule, not gap after gap: a busy runtime must not stretch the ramp.
                tokio::time::sleep_until(ramp_start + gap * (i as u32 + 1)).await;
            }
            let mut results = Vec::new();
            for t in tasks {
                match tokio::time::timeout_at(deadline.into(), t).await {
                    Ok(Ok(r)) => results.push(r.map_err(|e| e.to_string())),
                    Ok(Err(e)) => results.push(Err(e.to_string())),
                    Err(_) => results.push(Err("timed out".to_string())),
                }
            }
            results
        };
        let ((peak_running, peak_rss), results) = tokio::join!(sampler, fleet);
        (results, peak_running, peak_rss)
    });
    let wall = started.elapsed().as_secs_f64();
    let peak_rss = procfs::memory(Some(server_pid)).map_or(peak_rss_during, |m| m.peak_kib.max(peak_rss_during));
    let server_cpu = procfs::cpu_seconds(Some(server_pid));
    let fleet_cpu = procfs::cpu_seconds(None);
    runtime.shutdown_timeout(Duration::from_secs(5));
    let stopped = server.interrupt(Duration::from_secs(30));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {stopped:?}"));

    let mut stats: Vec<Stats> = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(s) => stats.push(s),
            Err(e) => out.check(false, || format!("agent {i}: {e}")),
        }
    }
    let found = irec_testkit::stored_sessions(&server_dir)?;
    let turns: usize = found.iter().map(|s| s.turns.len()).sum();
    let mut expected = Vec::new();
    for c in &configs {
        expected.extend(fleet::replay(&env, &c.device, config.sessions));
    }
    let t = irec_testkit::tally::tally(&expected, &found);
    out.check(t.exact(), || format!("D does not hold every session exactly once: {t:?}"));
    let latencies: Vec<f64> = stats.iter().flat_map(|s| s.ack_latencies_ms.iter().copied()).collect();
    let bytes: u64 = stats.iter().map(|s| s.bytes_uploaded).sum();
    out.figure("agents", config.agents);
    out.figure("peak_agents_running", peak_running);
    out.figure("sessions", t);
    out.figure("turns", turns);
    out.figure("wall_s", wall);
    out.figure("sessions_per_s", found.len() as f64 / wall);
    out.figure("turns_per_s", turns as f64 / wall);
    out.figure("upload_bytes_per_s", bytes as f64 / wall);
    out.figure("upload_bytes", bytes);
    out.figure("batches_acked", latencies.len());
    // Acks share flushes (group commit); the server says how many it ran when it stops.
    let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
    let flushes = log.lines().rev().find(|l| l.contains("stopped")).and_then(|l| l.split("flushes=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok());
    out.figure("server_flushes", flushes);
    out.figure("ack_ms_p50", percentile(&latencies, 50.0));
    out.figure("ack_ms_p99", percentile(&latencies, 99.0));
    out.figure("ack_ms_max", percentile(&latencies, 100.0));
    out.figure("connects", stats.iter().map(|s| s.connects).sum::<u64>());
    out.figure("connect_failures", stats.iter().map(|s| s.connect_failures).sum::<u64>());
    out.figure("server_peak_rss_mib", peak_rss as f64 / 1024.0);
    // Where the machine's time went: the server alone, and this process (all agents, plus the
    // replay of their sessions when it runs, which is after this reading).
    out.figure("server_cpu_s", server_cpu);
    out.figure("agents_process_cpu_s", fleet_cpu);
    out.figure("dir", dir.display().to_string());
    Ok(out)
}
