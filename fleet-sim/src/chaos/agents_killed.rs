//! R1: edge-agent processes killed with SIGKILL at random points, and restarted on the same data
//! dir. Afterwards the server's D must hold every session every device ran, exactly once.
//!
//! Where a kill landed is read from the life's debug log (the agent logs each step of a session's
//! way: recording, recorded, batch formed, upload sent, ack received, batch deleted), so the
//! report shows how often each dangerous window was hit — notably the one between the server's
//! ack and the local delete, whose resend the server must recognise as a duplicate.

use irec_testkit::procs::{Binaries, Proc};
use irec_edge_agent::cli::Summary;
use super::fleet::{self, WorldSize};
use super::{ChaosError, Outcome};
use irec_world::rng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of the campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentsKilledConfig {
    /// Agent processes running at once. A device that finishes while kills remain is replaced
    /// by a new one, so the campaign lasts until every kill landed.
    pub agents: usize,
    /// Sessions each device runs over all its lives.
    pub sessions: u64,
    /// SIGKILLs to deliver (then the fleet runs to completion undisturbed).
    pub kills: usize,
    /// Pause between sessions, in milliseconds.
    pub session_interval_ms: u64,
    /// A life is killed after a uniformly drawn time in this range, in milliseconds.
    pub life_ms: (u64, u64),
    /// Seed of the kill schedule and of the device seeds.
    pub seed: u64,
    pub world: WorldSize,
    /// Working directory (default: a temporary one).
    pub dir: Option<PathBuf>,
    /// How long the fleet may take to finish after the last kill.
    pub drain_timeout_s: u64,
}

impl Default for AgentsKilledConfig {
    fn default() -> Self {
        AgentsKilledConfig {
            agents: 6,
            sessions: 200,
            kills: 120,
            session_interval_ms: 10,
            life_ms: (20, 1_000),
            seed: 1,
            world: WorldSize::default(),
            dir: None,
            drain_timeout_s: 300,
        }
    }
}

/// Where a kill landed, most telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillPoint {
    /// The server acked a batch; the agent had not yet deleted it durably.
    BetweenAckAndDelete,
    /// Inside `record_session` (sled transaction + flush).
    MidSledWrite,
    /// An upload was on the wire, not yet acked.
    MidUpload,
    /// A batch was formed and persisted but not yet sent.
    BatchFormedUnsent,
    /// Running a session, or pausing between sessions.
    MidSession,
    /// Before the first session of the life (building the world, opening the store, connecting).
    Startup,
}

/// Replays a life's debug log up to now and says where the process stood.
pub fn classify(log: &str) -> KillPoint {
    let batch = |line: &str| line.split("batch=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
    let (mut writing, mut ran) = (false, false);
    let (mut formed, mut in_flight, mut acked) = (HashSet::new(), HashSet::new(), HashSet::new());
    for line in log.lines() {
        if line.contains("recording session") {
            writing = true;
        } else if line.contains("session recorded") {
            writing = false;
            ran = true;
        } else if line.contains("batch formed") {
            formed.extend(batch(line));
        } else if line.contains("upload sent") {
            if let Some(b) = batch(line) {
                formed.remove(&b);
                in_flight.insert(b);
            }
        } else if line.contains("ack received") {
            if let Some(b) = batch(line) {
                in_flight.remove(&b);
                acked.insert(b);
            }
        } else if line.contains("batch deleted") {
            if let Some(b) = batch(line) {
                acked.remove(&b);
            }
        }
    }
    if !acked.is_empty() {
        KillPoint::BetweenAckAndDelete
    } else if writing {
        KillPoint::MidSledWrite
    } else if !in_flight.is_empty() {
        KillPoint::MidUpload
    } else if !formed.is_empty() {
        KillPoint::BatchFormedUnsent
    } else if ran {
        KillPoint::MidSession
    } else {
        KillPoint::Startup
    }
}

/// The environment of every child: debug events of the agent for [`classify`], no colours.
const AGENT_LOG: &str = "warn,irec_edge_agent=debug";

/// Log events a life's kill may be armed on: the process dies the moment the event shows in its
/// log (a few milliseconds later at most), which lands kills inside windows a purely timed
/// schedule would rarely hit.
const TRIGGERS: [&str; 4] = ["recording session", "batch formed", "upload sent", "ack received"];

struct Device {
    name: String,
    config: irec_edge_agent::AgentConfig,
    proc: Option<Proc>,
    lives: usize,
    /// Killed at this time, unless the trigger fires first.
    kill_at: Instant,
    /// Killed at the n-th occurrence of this event in the life's log.
    trigger: Option<(&'static str, usize)>,
    /// How much of the life's log was already scanned for the trigger.
    log_seen: usize,
    finished: bool,
    summary: Option<Summary>,
}

impl Device {
    /// Whether the armed trigger event has shown up in the log.
    fn triggered(&mut self) -> bool {
        let (Some((event, n)), Some(p)) = (self.trigger, self.proc.as_ref()) else { return false };
        let Ok(log) = std::fs::read_to_string(&p.stderr) else { return false };
        // Only whole lines count; a line being written is looked at again next time.
        let complete = log.rfind('\n').map_or(0, |i| i + 1);
        if complete <= self.log_seen {
            return false;
        }
        let hits = log[self.log_seen..complete].matches(event).count();
        self.log_seen = complete;
        if hits >= n {
            return true;
        }
        self.trigger = Some((event, n - hits));
        false
    }
}

/// Runs R1.
pub fn run(bins: &Binaries, config: &AgentsKilledConfig, progress: &mut dyn FnMut(&str)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("agents_killed");
    let dir = fleet::workdir(config.dir.as_deref(), "agents-killed")?;
    let mut r = rng::rng(config.seed);
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let blob = dir.join("behaviour.bin");
    let bytes: Vec<u8> = (0..64 * 1024).map(|_| r.random()).collect();
    std::fs::write(&blob, bytes).map_err(|e| ChaosError::Io(blob.clone(), e))?;
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.initial_policy = Some(blob);
    let mut server = fleet::start_server(bins, &server_config, None, &dir.join("server-0"), &[("RUST_LOG", "warn,irec_server=debug"), ("NO_COLOR", "1")])?;
    let addr = server_config.listen;
    let cert = server_dir.join(irec_server::tls::CERT_FILE);
    let env = [("RUST_LOG", AGENT_LOG), ("NO_COLOR", "1")];

    let device = |i: usize| {
        let name = format!("agent-{i}");
        let mut c = fleet::agent_config(&dir.join(&name), addr, &cert, &config.world, 100 + i as u64, config.sessions);
        c.session_interval_ms = config.session_interval_ms;
        Device { name, config: c, proc: None, lives: 0, kill_at: Instant::now(), trigger: None, log_seen: 0, finished: false, summary: None }
    };
    let mut devices: Vec<Device> = (0..config.agents).map(device).collect();
    let life = |r: &mut rng::Rng| Duration::from_millis(r.random_range(config.life_ms.0..=config.life_ms.1.max(config.life_ms.0)));
    let start = |d: &mut Device, r: &mut rng::Rng| -> Result<(), ChaosError> {
        let logs = d.config.data_dir.with_file_name(format!("{}-life{}", d.name, d.lives));
        d.proc = Some(fleet::start_agent(bins, &d.name, &d.config, &logs, &env)?);
        d.lives += 1;
        d.kill_at = Instant::now() + life(r);
        d.log_seen = 0;
        // Half the lives end at a random time, half at a random occurrence of a random event.
        d.trigger = r.random_bool(0.5).then(|| (TRIGGERS[r.random_range(0..TRIGGERS.len())], r.random_range(1..=3)));
        Ok(())
    };
    for d in devices.iter_mut() {
        start(d, &mut r)?;
    }

    let began = Instant::now();
    let mut kills = 0usize;
    let mut points: BTreeMap<KillPoint, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let drain_deadline = |kills_done: Instant| kills_done + Duration::from_secs(config.drain_timeout_s);
    let mut kills_done_at: Option<Instant> = None;
    let mut joined = 0;
    loop {
        let mut running = 0;
        for d in devices.iter_mut().filter(|d| !d.finished) {
            let Some(p) = d.proc.as_mut() else { continue };
            if let Some(status) = p.exited() {
                if status.success() {
                    d.finished = true;
                    d.summary = p.last_stdout_line().and_then(|l| Summary::from_stdout(&l));
                    // Keep the fleet at full strength while kills remain: a new device joins.
                    if kills < config.kills {
                        joined += 1;
                    }
                } else {
                    // An agent that dies on its own is a finding; restart it so the run goes on.
                    failures.push(format!("{} life {} exited with {status}: {}", d.name, d.lives, p.stderr_tail(5)));
                    start(d, &mut r)?;
                }
                continue;
            }
            running += 1;
            if kills < config.kills && (d.triggered() || Instant::now() >= d.kill_at) {
                let Some(p) = d.proc.as_mut() else { continue };
                let log = std::fs::read_to_string(&p.stderr).unwrap_or_default();
                if p.kill() {
                    // Classified after the kill: the log can no longer grow, and whatever it
                    // says last is the state the process died in.
                    let log_after = std::fs::read_to_string(&p.stderr).unwrap_or(log);
                    *points.entry(classify(&log_after)).or_default() += 1;
                    kills += 1;
                    if kills.is_multiple_of(10) {
                        progress(&format!("R1: {kills}/{} kills", config.kills));
                    }
                }
                start(d, &mut r)?;
            }
        }
        for _ in 0..joined {
            let mut d = device(devices.len());
            start(&mut d, &mut r)?;
            devices.push(d);
        }
        joined = 0;
        if kills >= config.kills && kills_done_at.is_none() {
            kills_done_at = Some(Instant::now());
        }
        if running == 0 && devices.iter().all(|d| d.finished) {
            break;
        }
        if let Some(t) = kills_done_at {
            if Instant::now() > drain_deadline(t) {
                out.violations.push(format!("the fleet did not finish within {} s after the last kill", config.drain_timeout_s));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = began.elapsed();
    // The server's D is read from its store, which needs the process gone.
    let server_exit = server.interrupt(Duration::from_secs(20));
    out.check(server_exit.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {server_exit:?}"));
    drop(devices.iter_mut().map(|d| d.proc.take()).collect::<Vec<_>>());

    verify(&mut out, config, &devices, &server_dir, &dir)?;
    out.figure("kills", kills);
    out.figure("kill_points", &points);
    out.figure("lives", devices.iter().map(|d| d.lives).sum::<usize>());
    out.figure("agents_at_once", config.agents);
    out.figure("devices", devices.len());
    out.figure("sessions_per_agent", config.sessions);
    out.figure("wall_s", wall.as_secs_f64());
    out.figure("duplicate_acks_seen_by_server", count_in(&dir.join("server-0.log"), "duplicate=true"));
    out.figure("dir", dir.display().to_string());
    out.check(kills >= config.kills, || format!("only {kills} of {} kills landed", config.kills));
    out.violations.extend(failures);
    Ok(out)
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
}

/// D against the replay of every device; every agent store empty and complete.
fn verify(out: &mut Outcome, config: &AgentsKilledConfig, devices: &[Device], server_dir: &Path, dir: &Path) -> Result<(), ChaosError> {
    let env = config.world.environment()?;
    let mut expected = Vec::new();
    for d in devices {
        expected.extend(fleet::replay(&env, &d.config.device, config.sessions));
        let left = fleet::agent_left(&d.config.data_dir)?;
        out.check(
            left == fleet::AgentLeft { next_session: config.sessions, ..Default::default() },
            || format!("{} ended with {left:?}", d.name),
        );
        out.check(d.finished, || format!("{} did not finish", d.name));
    }
    let found = irec_testkit::stored_sessions(server_dir)?;
    let t = irec_testkit::tally::tally(&expected, &found);
    out.figure("sessions", t);
    out.check(t.exact(), || format!("D does not hold every device's sessions exactly once: {t:?} (logs in {})", dir.display()))
    ;
    let duplicates_on_agents: u64 = devices
        .iter()
        .filter_map(|d| Some(d.summary.as_ref()?.stats.duplicate_acks))
        .sum();
    out.figure("duplicate_acks_in_final_lives", duplicates_on_agents);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tells_where_a_kill_landed() {
        assert_eq!(classify(""), KillPoint::Startup);
        let s = "DEBUG recording session index=0\nDEBUG session recorded index=0\n";
        assert_eq!(classify(s), KillPoint::MidSession);
        assert_eq!(classify(&format!("{s}DEBUG recording session index=1\n")), KillPoint::MidSledWrite);
        let sent = format!("{s}DEBUG batch formed batch=ab\nDEBUG upload sent batch=ab sessions=1\n");
        assert_eq!(classify(&format!("{s}DEBUG batch formed batch=ab\n")), KillPoint::BatchFormedUnsent);
        assert_eq!(classify(&sent), KillPoint::MidUpload);
        let acked = format!("{sent}DEBUG ack received batch=ab duplicate=false\n");
        assert_eq!(classify(&acked), KillPoint::BetweenAckAndDelete);
        assert_eq!(classify(&format!("{acked}DEBUG batch deleted batch=ab\n")), KillPoint::MidSession);
    }
}
