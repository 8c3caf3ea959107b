//! R9: the server goes away under a fleet and comes back. A thousand agents (tasks of this
//! process) are connected to a server process; it is SIGKILLed (a crash) or sent SIGTERM (a
//! rolling restart, as Kubernetes does it), stays away for a while, and is restarted on the same
//! data dir and port. Agents retry with exponential backoff and a
//! per-device jitter (`protocol::backoff::Reconnect`); the campaign measures how they come back:
//! the spread of their reconnect times after the restart and the largest burst of reconnects in
//! any 100 ms (a stampede would put most of the fleet in one burst). Every session must still be
//! stored exactly once.

use super::fleet::{self, WorldSize};
use super::{ChaosError, Outcome};
use irec_model::loader::BaselineLoader;
use irec_testkit::procs::Binaries;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settings of R9.
#[derive(Clone, Debug)]
pub struct ReconnectConfig {
    pub agents: usize,
    /// Sessions per agent, spread over the run so every agent outlives the outage.
    pub sessions: u64,
    pub session_interval_ms: u64,
    /// Agents start evenly over this long, in milliseconds.
    pub ramp_ms: u64,
    /// When the server is killed, in seconds after the first agent started.
    pub kill_after_s: f64,
    /// How long the server stays away, in seconds.
    pub away_s: f64,
    /// Stop the server with SIGTERM (orderly: connections closed with `ShuttingDown`) instead of
    /// SIGKILL.
    pub graceful: bool,
    pub world: WorldSize,
    pub dir: Option<PathBuf>,
    pub timeout_s: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig { agents: 1_000, sessions: 4, session_interval_ms: 8_000, ramp_ms: 5_000, kill_after_s: 12.0, away_s: 5.0, graceful: false, world: WorldSize::default(), dir: None, timeout_s: 600 }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs R9.
pub fn run(bins: &Binaries, config: &ReconnectConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("reconnect");
    let dir = fleet::workdir(config.dir.as_deref(), "reconnect")?;
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.max_connections = config.agents + 64;
    let env_vars = [("NO_COLOR", "1")];
    let mut server = fleet::start_server(bins, &server_config, None, &dir.join("server-0"), &env_vars)?;
    let env = config.world.environment()?;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);
    let loader = Arc::new(BaselineLoader::Tracker { lexicon: Arc::new(env.world.lexicon.clone()), index: Arc::new(env.index.clone()) }.with_fallback(true));
    let configs: Vec<_> = (0..config.agents)
        .map(|i| {
            let mut c = fleet::agent_config(&dir.join(format!("agents/a{i}")), server_config.listen, &cert, &config.world, 20_000 + i as u64, config.sessions);
            c.session_interval_ms = config.session_interval_ms;
            c.batch_size = 1;
            c.connect_timeout_ms = 20_000;
            c.upload.ack_timeout_ms = 30_000;
            // The defaults an operator would run with (200 ms doubling to 10 s, jittered).
            c.reconnect = irec_protocol::Backoff::default();
            c
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| ChaosError::Io(dir.clone(), e))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(config.timeout_s);
    let mut tasks = Vec::new();
    runtime.block_on(async {
        let gap = Duration::from_micros(config.ramp_ms * 1000 / config.agents.max(1) as u64);
        let ramp_start = tokio::time::Instant::now();
        for (i, c) in configs.iter().cloned().enumerate() {
            let (env, loader) = (env.clone(), loader.clone());
            tasks.push(tokio::spawn(irec_edge_agent::run_in(c, env, loader, std::future::pending())));
            tokio::time::sleep_until(ramp_start + gap * (i as u32 + 1)).await;
        }
    });
    progress(&format!("R9: {} agents started; stopping the server in {:.0} s", config.agents, config.kill_after_s - started.elapsed().as_secs_f64()));
    std::thread::sleep(Duration::from_secs_f64(config.kill_after_s).saturating_sub(started.elapsed()));
    let killed_ms = now_ms();
    if config.graceful {
        server.signal("TERM");
        let stopped = server.wait(Duration::from_secs(60));
        out.check(stopped.is_some_and(|s| s.success()), || format!("SIGTERM: the server ended with {stopped:?}"));
    } else {
        server.kill();
    }
    std::thread::sleep(Duration::from_secs_f64(config.away_s));
    let restarted_ms = now_ms();
    let mut server = fleet::start_server(bins, &server_config, None, &dir.join("server-1"), &env_vars)?;
    progress("R9: server restarted; waiting for the fleet to finish");
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        for t in tasks {
            results.push(match tokio::time::timeout_at(deadline.into(), t).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            });
        }
        results
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let stopped = server.interrupt(Duration::from_secs(30));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {stopped:?}"));

    // Each agent's first welcome after the restart, relative to it.
    let mut back: Vec<f64> = Vec::new();
    let mut lost = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(s) => {
                if s.connected_at_ms.iter().any(|t| *t < killed_ms) {
                    match s.connected_at_ms.iter().find(|t| **t >= restarted_ms) {
                        Some(t) => back.push((*t - restarted_ms) as f64 / 1000.0),
                        None => lost += 1,
                    }
                }
            }
            Err(e) => out.check(false, || format!("agent {i}: {e}")),
        }
    }
    out.check(lost == 0, || format!("{lost} agents connected before the kill never came back"));
    back.sort_by(f64::total_cmp);
    // The largest number of reconnects within any 100 ms.
    let mut burst = 0;
    let mut j = 0;
    for i in 0..back.len() {
        while back[i] - back[j] > 0.1 {
            j += 1;
        }
        burst = burst.max(i - j + 1);
    }
    out.figure("agents_connected_before_the_kill", back.len() + lost);
    out.figure("reconnect_s_p50", super::percentile(&back, 50.0));
    out.figure("reconnect_s_p90", super::percentile(&back, 90.0));
    out.figure("reconnect_s_max", back.last().copied());
    out.figure("largest_burst_per_100ms", burst);
    out.figure("away_s", config.away_s);
    out.figure("stopped_by", if config.graceful { "SIGTERM" } else { "SIGKILL" });
    let found = irec_testkit::stored_sessions(&server_dir)?;
    let expected: Vec<_> = configs.iter().flat_map(|c| fleet::replay(&env, &c.device, config.sessions)).collect();
    let t = irec_testkit::tally::tally(&expected, &found);
    out.figure("sessions", t);
    out.check(t.exact(), || format!("D does not hold every session exactly once: {t:?}"));
    Ok(out)
}
