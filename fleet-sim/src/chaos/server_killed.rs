//! R2: the server killed with SIGKILL mid-ingest, mid-training and mid-publish, and restarted on
//! the same data dir and port, while agent processes keep uploading and pulling policies.
//!
//! Each server life is aimed at one phase, drawn at random: a random moment of ingest; a random
//! moment after a round started training; or the moment the gate decided (publishing is the next
//! few milliseconds: registry transaction, flush, announcement). Where the kill really landed is
//! read from the life's log afterwards. Then the agents stop producing, upload what they hold,
//! the server finishes its rounds, and the campaign checks:
//! - D holds every session every device ran exactly once (every acked batch, once);
//! - every closed round finished (none lost, none stuck), several trained more than once;
//! - the policy registry is whole (versions 1..=V, each blob matching its hash), and every
//!   policy any agent ever installed is byte for byte the registry's version of that number;
//! - no agent rejected a policy (a corrupt or partial blob would fail its hash check).

use irec_testkit::procs::{wait_until, Binaries, Proc};
use irec_edge_agent::cli::Summary;
use super::fleet::{self, WorldSize};
use super::{ChaosError, Outcome};
use irec_server::rounds::RoundStatus;
use irec_protocol::{hex, sha256};
use irec_world::rng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of the campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerKilledConfig {
    pub kills: usize,
    pub agents: usize,
    /// Pause between an agent's sessions, in milliseconds.
    pub session_interval_ms: u64,
    /// New sessions that close a round.
    pub round_quota: u64,
    /// The server's deployment gate tolerance. High by default, so that candidates publish and
    /// kills can land mid-publish (a refusal is recorded and announced too, and is aimed at the
    /// same way, but agents then install nothing new).
    pub gate_tolerance: f64,
    /// Extra server settings merged into its TOML; the trainer is chosen here (`[trainer]`).
    /// Default: the learned trainer, sized small, on a perception pretrained at the start.
    pub server_extra: Option<toml::Table>,
    pub seed: u64,
    pub world: WorldSize,
    pub dir: Option<PathBuf>,
    /// How long the rounds may take to finish after the agents are done.
    pub drain_timeout_s: u64,
}

impl Default for ServerKilledConfig {
    fn default() -> Self {
        ServerKilledConfig {
            kills: 24,
            agents: 4,
            session_interval_ms: 100,
            round_quota: 100,
            gate_tolerance: 1_000.0,
            server_extra: None,
            seed: 1,
            world: WorldSize::default(),
            dir: None,
            drain_timeout_s: 600,
        }
    }
}

/// What a server life was aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aim {
    Ingest,
    Training,
    Publish,
    /// Just after a publication, while agents pull the new policy.
    Pull,
}

/// Where a kill landed, read from the life's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKillPoint {
    /// The gate had decided; recording the decision (registry and round record in one
    /// transaction, flush) or announcing it had not finished.
    MidPublish,
    /// A policy was published and announced (agents pulling it); no new round training yet.
    AfterPublish,
    /// A round was training.
    MidTraining,
    /// Neither: ingest only (or idle).
    Ingest,
    /// Nothing ingested in this life yet.
    Startup,
}

/// Seconds since the Unix epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-11-29T06:05:10.221675Z ...`), if it starts with one.
pub fn line_time(line: &str) -> Option<f64> {
    let t = line.get(..27)?;
    let num = |a: usize, b: usize| t.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm) = (num(11, 13)?, num(14, 16)?);
    let ss: f64 = t.get(17..26)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3_600 + mm * 60) as f64 + ss)
}

/// Replays a server life's log: where it stood, and whether it ingested an upload within
/// `window_s` seconds before `killed_at` (seconds since the epoch).
pub fn classify(log: &str, killed_at: f64, window_s: f64) -> (ServerKillPoint, bool) {
    let (mut training, mut publishing, mut ingested, mut ingesting) = (false, false, false, false);
    let mut pulling = false;
    for line in log.lines() {
        if line.contains("training round") {
            training = true;
            publishing = false;
            pulling = false;
        } else if line.contains("gate round=") {
            training = false;
            // Published: until the "published" line. Refused: the record is written and the
            // carried-on policy announced without a line of its own; the next round's training
            // (or the end of the log) tells.
            publishing = true;
        } else if line.contains("published round=") {
            publishing = false;
            pulling = true;
        } else if line.contains("round=") && line.contains("WARN") {
            training = false;
        } else if line.contains("ingested") {
            ingested = true;
            ingesting = line_time(line).is_some_and(|t| killed_at - t <= window_s);
        }
    }
    let point = if publishing {
        ServerKillPoint::MidPublish
    } else if pulling {
        ServerKillPoint::AfterPublish
    } else if training {
        ServerKillPoint::MidTraining
    } else if ingested {
        ServerKillPoint::Ingest
    } else {
        ServerKillPoint::Startup
    };
    (point, ingesting)
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

struct Agent {
    config: irec_edge_agent::AgentConfig,
    proc: Proc,
    summaries: Vec<Summary>,
    logs: Vec<PathBuf>,
}

/// Runs R2.
pub fn run(bins: &Binaries, config: &ServerKilledConfig, progress: &mut dyn FnMut(&str)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("server_killed");
    let dir = fleet::workdir(config.dir.as_deref(), "server-killed")?;
    let mut r = rng::rng(config.seed);
    let extra = match &config.server_extra {
        Some(t) => t.clone(),
        None => fleet::small_learned_trainer(&dir, &config.world, progress)?,
    };
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.round_quota = config.round_quota;
    server_config.gate_tolerance = config.gate_tolerance;
    let server_env = [("RUST_LOG", "info,irec_server=debug,quinn=warn,rustls=warn"), ("NO_COLOR", "1")];
    let mut lives = 0usize;
    let start_server = |lives: &mut usize| -> Result<Proc, ChaosError> {
        let p = fleet::start_server(bins, &server_config, Some(&extra), &dir.join(format!("server-life{lives}")), &server_env);
        *lives += 1;
        p
    };
    let mut server = start_server(&mut lives)?;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);
    let agent_env = [("RUST_LOG", "warn,irec_edge_agent=info"), ("NO_COLOR", "1")];
    let mut agents = Vec::new();
    for i in 0..config.agents {
        let mut c = fleet::agent_config(&dir.join(format!("agent-{i}")), server_config.listen, &cert, &config.world, 500 + i as u64, 1_000_000);
        c.session_interval_ms = config.session_interval_ms;
        let log = dir.join(format!("agent-{i}-life0"));
        let proc = fleet::start_agent(bins, &format!("agent-{i}"), &c, &log, &agent_env)?;
        agents.push(Agent { config: c, proc, summaries: Vec::new(), logs: vec![log.with_extension("log")] });
    }

    let began = Instant::now();
    let mut points: BTreeMap<ServerKillPoint, usize> = BTreeMap::new();
    let mut aims: BTreeMap<String, usize> = BTreeMap::new();
    let mut downtime_ms: Vec<f64> = Vec::new();
    let mut mid_ingest = 0usize;
    // Kills that landed after a gate decision: (the life that was killed next, the round).
    let mut gated: Vec<(usize, Option<u32>)> = Vec::new();
    for kill in 0..config.kills {
        let aim = match r.random_range(0..100) {
            0..30 => Aim::Ingest,
            30..55 => Aim::Training,
            55..80 => Aim::Publish,
            _ => Aim::Pull,
        };
        *aims.entry(format!("{aim:?}").to_lowercase()).or_default() += 1;
        let log_path = server.stderr.clone();
        let seen = |needle: &str| std::fs::read_to_string(&log_path).map(|l| l.contains(needle)).unwrap_or(false);
        // Decisions take a few milliseconds to record: those are polled every millisecond.
        let poll_for = |needle: &str, server: &mut Proc| {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !seen(needle) && Instant::now() < deadline && server.exited().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        match aim {
            Aim::Ingest => std::thread::sleep(Duration::from_millis(r.random_range(200..1_500))),
            Aim::Training => {
                poll_for("training round", &mut server);
                // Up to about a round's training time, so that some rounds finish.
                std::thread::sleep(Duration::from_millis(r.random_range(0..4_000)));
            }
            Aim::Publish => {
                poll_for("gate round=", &mut server);
                std::thread::sleep(Duration::from_micros(r.random_range(0..6_000)));
            }
            Aim::Pull => {
                poll_for("published round=", &mut server);
                std::thread::sleep(Duration::from_micros(r.random_range(0..30_000)));
            }
        }
        out.check(server.exited().is_none(), || format!("server life {lives} died on its own: {}", server.stderr_tail(10)));
        server.kill();
        let killed_at = now_s();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let (point, ingesting) = classify(&log, killed_at, 0.2);
        *points.entry(point).or_default() += 1;
        mid_ingest += usize::from(ingesting);
        if point == ServerKillPoint::MidPublish {
            gated.push((lives, gated_round(&log)));
        }
        let down = Instant::now();
        server = start_server(&mut lives)?;
        downtime_ms.push(down.elapsed().as_secs_f64() * 1000.0);
        progress(&format!("R2: {}/{} kills", kill + 1, config.kills));
    }

    // The agents stop producing and upload what they hold: each restarts with its lifetime
    // session count set to what it ran, and exits once everything is acked.
    let mut produced = BTreeMap::new();
    for (i, a) in agents.iter_mut().enumerate() {
        let status = a.proc.interrupt(Duration::from_secs(30));
        out.check(status.is_some_and(|s| s.success()), || format!("agent {i} did not stop cleanly: {status:?}: {}", a.proc.stderr_tail(5)));
        a.summaries.extend(a.proc.last_stdout_line().and_then(|l| Summary::from_stdout(&l)));
        let left = fleet::agent_left(&a.config.data_dir)?;
        produced.insert(i, left.next_session);
        a.config.sessions = Some(left.next_session);
        let toml_path = a.config.data_dir.with_extension("toml");
        fleet::write_toml(&toml_path, &a.config, None)?;
        let log = dir.join(format!("agent-{i}-life1"));
        a.proc = fleet::start_agent(bins, &format!("agent-{i}"), &a.config, &log, &agent_env)?;
        a.logs.push(log.with_extension("log"));
    }
    for (i, a) in agents.iter_mut().enumerate() {
        let status = a.proc.wait(Duration::from_secs(300));
        out.check(status.is_some_and(|s| s.success()), || format!("agent {i} did not finish its uploads: {status:?}: {}", a.proc.stderr_tail(5)));
        a.summaries.extend(a.proc.last_stdout_line().and_then(|l| Summary::from_stdout(&l)));
    }
    // The rounds those sessions closed finish too.
    let drained = wait_until(&mut server, Duration::from_secs(config.drain_timeout_s), "done with its rounds", || {
        irec_server::status::read_file(&server_dir).is_some_and(|s| s.rounds.iter().all(|r| r.status.is_finished()))
    });
    out.check(drained.is_ok(), || format!("rounds did not finish: {drained:?}"));
    let stopped = server.interrupt(Duration::from_secs(60));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the last server life did not stop cleanly: {stopped:?}"));
    let wall = began.elapsed().as_secs_f64();

    // A decision killed before it was durable is trained and decided again by the next life.
    let redone = gated
        .iter()
        .filter(|(next, round)| {
            let log = std::fs::read_to_string(dir.join(format!("server-life{next}.log"))).unwrap_or_default();
            let first = log.lines().find(|l| l.contains("training round")).and_then(|l| field(l, "round"));
            round.is_some() && first == *round
        })
        .count();
    verify(&mut out, config, &agents, &produced, &server_dir)?;
    out.figure("kills_mid_ingest", mid_ingest);
    out.figure("mid_publish_kills_redone_after_restart", redone);
    out.figure("kills", config.kills);
    out.figure("aims", &aims);
    out.figure("kill_points", &points);
    out.figure("server_lives", lives);
    out.figure("restart_to_listening_ms_p50", super::percentile(&downtime_ms, 50.0));
    out.figure("restart_to_listening_ms_max", super::percentile(&downtime_ms, 100.0));
    out.figure("wall_s", wall);
    out.figure("dir", dir.display().to_string());
    Ok(out)
}

fn field(line: &str, key: &str) -> Option<u32> {
    line.split(&format!("{key}=")).nth(1)?.split_whitespace().next()?.parse().ok()
}

/// The round of the last gate decision in a life's log.
fn gated_round(log: &str) -> Option<u32> {
    log.lines().rev().find(|l| l.contains("gate round=")).and_then(|l| field(l, "round"))
}

fn verify(out: &mut Outcome, config: &ServerKilledConfig, agents: &[Agent], produced: &BTreeMap<usize, u64>, server_dir: &Path) -> Result<(), ChaosError> {
    let env = config.world.environment()?;
    let mut expected = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        expected.extend(fleet::replay(&env, &a.config.device, produced.get(&i).copied().unwrap_or(0)));
        let left = fleet::agent_left(&a.config.data_dir)?;
        out.check(left.pending_batches == 0 && left.unbatched == 0 && left.quarantined == 0, || format!("agent {i} ended with {left:?}"));
    }
    let found = irec_testkit::stored_sessions(server_dir)?;
    let t = irec_testkit::tally::tally(&expected, &found);
    out.figure("sessions", t);
    out.check(t.exact(), || format!("D does not hold every session exactly once: {t:?}"));

    let store = irec_server::store::Store::open(&server_dir.join("db"))?;
    // Rounds: contiguous, all finished.
    let rounds = store.rounds()?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (k, rec) in rounds.iter().enumerate() {
        out.check(rec.round as usize == k, || format!("round records skip from {} to {}", k, rec.round));
        out.check(rec.status.is_finished(), || format!("round {} ended {:?}", rec.round, rec.status));
        out.check(rec.status != RoundStatus::Failed, || format!("round {} failed: {:?}", rec.round, rec.error));
        *by_status.entry(format!("{:?}", rec.status).to_lowercase()).or_default() += 1;
    }
    out.figure("rounds", &by_status);
    out.figure("rounds_trained_more_than_once", rounds.iter().filter(|r| r.attempts > 1).count());
    out.figure("training_attempts", rounds.iter().map(|r| r.attempts as u64).sum::<u64>());
    // Registry: versions 1..=V, each blob matching its hash.
    let versions = store.policy_versions()?;
    out.check(versions.iter().copied().eq(1..=versions.len() as u64), || format!("policy versions are not 1..=V: {versions:?}"));
    let mut registry = BTreeMap::new();
    for v in &versions {
        if let Some(p) = store.policy(*v)? {
            out.check(sha256(&p.blob) == p.sha256, || format!("policy {v}'s blob does not match its hash"));
            registry.insert(*v, hex(&p.sha256));
        }
    }
    out.figure("policy_versions", versions.len());
    // Every install any agent logged is the registry's policy of that version.
    let (mut installs, mut rejected) = (0usize, 0u64);
    for (i, a) in agents.iter().enumerate() {
        for log in &a.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("policy installed")) {
                installs += 1;
                let field = |k: &str| line.split(&format!("{k}=")).nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
                let v = field("version").and_then(|v| v.parse::<u64>().ok());
                let h = field("sha256");
                let ok = v.is_some_and(|v| registry.contains_key(&v) && registry.get(&v) == h.as_ref());
                out.check(ok, || format!("agent {i} installed version {v:?} with hash {h:?}, which the registry does not hold"));
            }
        }
        rejected += a.summaries.iter().map(|s| s.stats.policies_rejected).sum::<u64>();
        if let Some(local) = irec_edge_agent::store::AgentStore::open(&a.config.data_dir.join("db"))?.policy()? {
            let remote = store.policy(local.version)?;
            out.check(remote.is_some_and(|p| p.blob == local.blob && p.sha256 == local.sha256), || {
                format!("agent {i}'s installed policy {} differs from the registry's", local.version)
            });
        }
    }
    out.figure("policy_installs", installs);
    out.figure("policies_rejected_by_agents", rejected);
    out.check(rejected == 0, || format!("agents rejected {rejected} policies (hash or load failures)"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tells_where_a_server_kill_landed() {
        let t = "2026-11-29T06:05:10.221675Z";
        let at = line_time(t).unwrap();
        assert!((at - 1_795_932_310.221_675).abs() < 1e-3, "{at}");
        assert_eq!(classify("", at, 0.2), (ServerKillPoint::Startup, false));
        let ingest = format!("{t} DEBUG irec_server::serve: ingested batch=ab stored=4 duplicate=false\n");
        assert_eq!(classify(&ingest, at + 0.1, 0.2), (ServerKillPoint::Ingest, true));
        assert_eq!(classify(&ingest, at + 5.0, 0.2), (ServerKillPoint::Ingest, false));
        let training = format!("{ingest}{t} INFO irec_server::rounds::driver: training round round=0 sessions=100\n");
        assert_eq!(classify(&training, at, 0.2).0, ServerKillPoint::MidTraining);
        let gated = format!("{training}{t} INFO irec_server::rounds::driver: gate round=0 decision=Published reason=x\n");
        assert_eq!(classify(&gated, at, 0.2).0, ServerKillPoint::MidPublish);
        assert_eq!(gated_round(&gated), Some(0));
        let published = format!("{gated}{t} INFO irec_server::rounds::driver: published round=0 version=2\n");
        assert_eq!(classify(&published, at, 0.2).0, ServerKillPoint::AfterPublish);
        let next = format!("{published}{t} INFO irec_server::rounds::driver: training round round=1 sessions=200\n");
        assert_eq!(classify(&next, at, 0.2).0, ServerKillPoint::MidTraining);
    }
}
