//! R7: a fleet across hosts and a bad network. The server runs in one network namespace, agents
//! in three others ([`super::hosts`]); each agent host reaches the server only through its own
//! [`Link`] (delay, jitter, loss, duplication, reordering), and every round one host is cut off
//! for a while and healed. The promises are those of one machine: every session stored exactly
//! once (none lost, none twice), rounds finish, every agent ends on the newest policy.

use super::fleet::{self, WorldSize};
use super::hosts::Hosts;
use super::link::{Impairment, Link};
use super::{ChaosError, Outcome};
use irec_testkit::procs::{Binaries, Proc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of R7.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub world: WorldSize,
    /// Hosts with agents (the server has one of its own).
    pub hosts: usize,
    pub agents_per_host: usize,
    /// New sessions that close a round.
    pub round_quota: u64,
    /// Rounds to finish; every agent runs its share of each, then one session with the newest
    /// policy.
    pub rounds: u32,
    /// Each agent host's link.
    pub impairment: Impairment,
    /// How long one host is cut off every round, in seconds.
    pub partition_s: f64,
    /// Namespace prefix (`{prefix}-0` is the server's host).
    pub prefix: String,
    pub seed: u64,
    /// Give up after this many seconds.
    pub timeout_s: u64,
    pub dir: Option<PathBuf>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            world: WorldSize::default(),
            hosts: 3,
            agents_per_host: 2,
            round_quota: 120,
            rounds: 3,
            impairment: Impairment::default(),
            partition_s: 10.0,
            prefix: "irecnet".to_string(),
            seed: 1,
            timeout_s: 900,
            dir: None,
        }
    }
}

const SERVER_PORT: u16 = 4433;
const LINK_PORT: u16 = 4434;

/// Runs R7.
pub fn run(bins: &Binaries, config: &NetworkConfig, progress: &mut dyn FnMut(&str)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("network");
    let dir = fleet::workdir(config.dir.as_deref(), "network")?;
    let hosts = Hosts::create(&config.prefix, config.hosts + 1)?;
    let agents = config.hosts * config.agents_per_host;
    let per_agent = config.round_quota.div_ceil(agents as u64);

    let server_dir = dir.join("server");
    let mut server_config = fleet::server_config(&server_dir, SERVER_PORT, &config.world);
    server_config.listen = SocketAddr::from((hosts.addr(0), SERVER_PORT));
    server_config.round_quota = config.round_quota;
    // Every candidate is published, so agents must follow version after version.
    server_config.gate_tolerance = 1_000.0;
    let extra = fleet::small_learned_trainer(&dir, &config.world, progress)?;
    let in_host = |i: usize| Binaries { server: hosts.launcher(i, &bins.server), agent: hosts.launcher(i, &bins.agent) };
    progress("starting the server in its own host");
    let mut server = fleet::start_server(&in_host(0), &server_config, Some(&extra), &dir.join("server-0"), &[("NO_COLOR", "1")])?;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| ChaosError::Io(dir.clone(), e))?;
    let links = runtime.block_on(async {
        let mut links = Vec::new();
        for h in 1..=config.hosts {
            let listen = SocketAddr::from((hosts.gateway(h), LINK_PORT));
            let link = Link::start(listen, hosts.gateway(0).into(), server_config.listen, config.impairment, irec_world::rng::derive(config.seed, h as u64))
                .await
                .map_err(|e| ChaosError::Io(PathBuf::from(format!("link of host {h}")), e))?;
            links.push(Arc::new(link));
        }
        Ok::<_, ChaosError>(links)
    })?;

    progress(&format!("starting {agents} agents on {} hosts", config.hosts));
    let mut procs: Vec<(irec_edge_agent::AgentConfig, Proc)> = Vec::new();
    for h in 1..=config.hosts {
        for k in 0..config.agents_per_host {
            let name = format!("agent-{h}-{k}");
            // TOML integers are i64: a small, distinct seed per device.
            let seed = config.seed * 1_000_000 + (h * 1_000 + k) as u64;
            // A share of each round's quota, then one session more, which only runs once the
            // newest policy is installed (sessions_per_policy) and closes no round.
            let total = per_agent * config.rounds as u64 + 1;
            let mut c = fleet::agent_config(&dir.join(&name), links[h - 1].listen, &cert, &config.world, seed, total);
            c.sessions_per_policy = Some(per_agent);
            c.exit_when_done = true;
            c.session_interval_ms = 20;
            // Through a 100 ms link with losses a handshake takes longer than on loopback.
            c.connect_timeout_ms = 5_000;
            let p = fleet::start_agent(&in_host(h), &name, &c, &dir.join(&name), &[("NO_COLOR", "1")])?;
            procs.push((c, p));
        }
    }

    // Every round, cut one host off for a while, in turn.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = runtime.spawn({
        let (links, stop, server_dir, partition) = (links.clone(), stop.clone(), server_dir.clone(), Duration::from_secs_f64(config.partition_s));
        async move {
            let mut cut_for = None;
            let mut cuts = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let round = irec_server::status::read_file(&server_dir).map_or(0, |s| s.counters.current_round);
                if cut_for != Some(round) {
                    cut_for = Some(round);
                    let link = &links[round as usize % links.len()];
                    link.partition(true);
                    tokio::time::sleep(partition).await;
                    link.partition(false);
                    cuts += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            cuts
        }
    });

    let deadline = started + Duration::from_secs(config.timeout_s);
    for (_, p) in &mut procs {
        let status = p.wait(deadline.saturating_duration_since(Instant::now()));
        out.check(status.is_some_and(|s| s.success()), || format!("{} ended with {status:?} (log {})", p.name, p.stderr.display()));
    }
    let rounds_done = irec_testkit::procs::wait_until(&mut server, deadline.saturating_duration_since(Instant::now()), "done with its rounds", || {
        irec_server::status::read_file(&server_dir).is_some_and(|s| s.rounds.iter().filter(|r| r.status.is_finished()).count() >= config.rounds as usize && s.rounds.iter().all(|r| r.status.is_finished()))
    });
    out.check(rounds_done.is_ok(), || format!("rounds did not finish: {rounds_done:?}"));
    stop.store(true, Ordering::Relaxed);
    let partitions = runtime.block_on(cuts).unwrap_or(0);
    let status = irec_server::status::read_file(&server_dir);
    let stopped = server.interrupt(Duration::from_secs(30));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {stopped:?}"));
    let total = |f: fn(&super::link::LinkStats) -> &std::sync::atomic::AtomicU64| links.iter().map(|l| f(&l.stats).load(Ordering::Relaxed)).sum::<u64>();
    out.figure("datagrams_forwarded", total(|s| &s.forwarded));
    out.figure("datagrams_lost", total(|s| &s.dropped));
    out.figure("datagrams_duplicated", total(|s| &s.duplicated));
    out.figure("datagrams_cut_by_partitions", total(|s| &s.partitioned));
    drop(links);
    runtime.shutdown_timeout(Duration::from_secs(5));
    out.figure("partitions", partitions);
    out.figure("seconds", started.elapsed().as_secs_f64());

    // Every agent on the newest version; D exactly what the devices ran.
    let newest = status.as_ref().and_then(|s| s.deployed.map(|d| d.version));
    let mut reconnects = 0;
    for (_, p) in &procs {
        let summary = irec_edge_agent::cli::Summary::from_stdout(&p.stdout_text());
        reconnects += summary.as_ref().map_or(0, |s| s.stats.connects.saturating_sub(1));
        let version = summary.and_then(|s| s.stats.policy_version);
        out.check(version.is_some() && version == newest, || format!("{} ends on version {version:?}, the newest is {newest:?}", p.name));
    }
    out.figure("agent_reconnects", reconnects);
    out.figure("rounds_finished", status.as_ref().map_or(0, |s| s.rounds.iter().filter(|r| r.status.is_finished()).count()));
    let env = config.world.environment()?;
    let expected: Vec<_> = procs
        .iter()
        .flat_map(|(c, _)| fleet::replay(&env, &c.device, c.sessions.unwrap_or(0)))
        .collect();
    let found = irec_testkit::stored_sessions(&server_dir)?;
    let t = irec_testkit::tally::tally(&expected, &found);
    out.figure("sessions", t);
    out.check(t.exact(), || format!("D does not hold every session exactly once: {t:?} (logs in {})", dir.display()));
    drop(hosts);
    Ok(out)
}
