//! `fleet-sim run`: the federated loop on loopback.
//!
//! 1. [`bootstrap`]: pretrained perception, behaviour policies, device settings, reference figures.
//! 2. Configs for an `irec-server` (learned trainer, quota K per round) and N `edge-agent`s (each
//!    starts with a behaviour policy and runs K/N sessions per policy round), in `<out>/fleet/`.
//! 3. [`launch`]: the processes (or in-process tasks); we watch the server's `status.json` until
//!    R rounds are trained, gated and published or refused. Each agent runs one more share of
//!    sessions with the policy the last round left deployed, uploads them and exits; then the
//!    server is stopped (the round those sessions opened is not trained).
//! 4. [`outcome`]: the per-round table, JSON, CSV, curves and fleet figures.

mod bootstrap;
mod launch;
mod outcome;
mod population;

use super::{device, print_json, world_config};
use crate::cli::{PresetArg, RunArgs};
use crate::progress::Bars;
use anyhow::{bail, Context};
use irec_edge_agent::AgentConfig;
use irec_learn::round::{TrainerConfig, TrainerKind};
use irec_server::ServerConfig;
use irec_learn::experiment::{Preset, Progress};
use irec_world::rng;
use irec_server::status::read_file as read_status;
use launch::{agent_address, Fleet, InProcess, Processes};
use std::path::Path;
use std::time::{Duration, Instant};

/// A preset's sizes for the loop.
struct LoopSizes {
    sessions_per_round: u64,
    first_round_steps: usize,
    round_steps: usize,
    eval_sessions: usize,
    fqe_steps: usize,
}

fn sizes(preset: Preset) -> LoopSizes {
    match preset {
        Preset::Quick => LoopSizes { sessions_per_round: 900, first_round_steps: 1_000, round_steps: 400, eval_sessions: 500, fqe_steps: 300 },
        Preset::Paper => LoopSizes { sessions_per_round: 8_000, first_round_steps: 6_000, round_steps: 2_000, eval_sessions: 1_000, fqe_steps: 1_000 },
    }
}

/// Sets `RAYON_NUM_THREADS` (candle's CPU threads), unless the caller did, to half the cores for
/// this process and the server and agents it starts. A fleet's work runs side by side (agents,
/// and the trainer's two fits: the candidate and the deployed policy's off-policy estimate), and
/// candle's kernels at these sizes gain nothing from a second thread: on a 2-core machine the
/// quick run took 143 s with one thread per process against 186 s with candle's default of two,
/// and the 100,000-device study 182 s against 232 s (docs/benchmarks.md). Called before any
/// kernel has run.
fn pin_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let half = (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1);
        std::env::set_var("RAYON_NUM_THREADS", half.to_string());
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents >= 1, "--agents must be at least 1");
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(a.sessions_per_round != Some(0), "--sessions-per-round must be at least 1");
    anyhow::ensure!((0.0..=1.0).contains(&a.slow_agents), "--slow-agents is a share of the agents, from 0 to 1");
    anyhow::ensure!(a.round_deadline_s.is_none_or(|s| s > 0.0), "--round-deadline-s must be positive");
    pin_candle_threads();
    let started = Instant::now();
    let (preset, name) = match a.preset {
        PresetArg::Quick => (Preset::Quick, "quick"),
        PresetArg::Paper => (Preset::Paper, "paper"),
    };
    let mut exp = super::experiment_config(preset, a.config.as_deref())?;
    if a.config.is_none() {
        exp.world = world_config(&a.world);
    }
    exp.seed = a.seed;
    let s = sizes(preset);
    let quota = a.sessions_per_round.unwrap_or(s.sessions_per_round).max(a.agents as u64);
    // A sampled study's rounds close when every device of the cohort ran its share.
    let quota = if a.population.is_some() { quota.div_ceil(a.agents as u64) * a.agents as u64 } else { quota };
    let (first_steps, later_steps) = match a.steps.as_deref() {
        Some([f, l]) => (*f, *l),
        _ => (s.first_round_steps, s.round_steps),
    };
    let eval_sessions = a.eval_sessions.unwrap_or(s.eval_sessions);
    let eval_seed = rng::derive(a.seed, rng::stream::EVALUATION) & (i64::MAX as u64);

    if a.out.exists() {
        // A run's data dirs are its own: a second run in the same folder would resume the first.
        std::fs::remove_dir_all(&a.out).with_context(|| format!("clearing {}", a.out.display()))?;
    }
    let fleet_dir = a.out.join("fleet");
    let logs = a.out.join("logs");
    for d in [&fleet_dir, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let bars = Bars::default();
    let dev = device(&a.device)?;
    let cache = (!a.no_cache).then_some(a.cache.as_path());
    let boot = bootstrap::bootstrap(&exp, a.agents, &fleet_dir.join("bootstrap"), &dev, cache, eval_sessions, eval_seed, &bars)?;

    // The server: learned trainer on the bootstrap's perception, no initial policy (every device
    // starts with its own behaviour policy; version 1 is round 0's candidate).
    let server_dir = fleet_dir.join("server");
    let token = format!("fleet-sim-{:016x}", rng::derive(a.seed, 0x70_6b));
    let server_cfg = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: server_dir.clone(),
        fleet_token: token.clone(),
        round_quota: quota,
        round_deadline_ms: a.round_deadline_s.map_or(0, |s| (s * 1000.0) as u64),
        world: exp.world.clone(),
        device: a.device.clone(),
        seed: a.seed,
        trainer: TrainerConfig {
            kind: TrainerKind::Learned,
            perception: Some(boot.perception.clone()),
            objective: exp.offline.objective,
            algo: a.algo,
            sac: exp.offline.sac.clone(),
            cql: exp.offline.cql.clone(),
            bcq: exp.offline.bcq.clone(),
            iql: exp.offline.iql.clone(),
            first_round_steps: first_steps,
            round_steps: later_steps,
            eval_sessions,
            eval_seed,
            fqe: irec_learn::algo::fqe::FqeConfig { steps: a.fqe_steps.unwrap_or(s.fqe_steps), ..Default::default() },
            ..TrainerConfig::default()
        },
        http: irec_server::http::HttpConfig { enabled: a.dashboard.is_some(), listen: a.dashboard.unwrap_or(irec_server::http::HttpConfig::default().listen) },
        ..ServerConfig::default()
    };
    let server_toml = fleet_dir.join("server.toml");
    std::fs::write(&server_toml, toml::to_string_pretty(&server_cfg)?)?;

    if let Some(devices) = a.population {
        let study = population::Study {
            devices,
            per_round: a.agents,
            share: quota / a.agents as u64,
            dropout: a.dropout,
            seed: a.seed,
            rounds: a.rounds,
            slow_share: a.slow_agents,
            session_interval_ms: a.session_interval_ms,
            slow_factor: a.slow_factor,
        };
        study.validate()?;
        bars.message(&format!("starting the server; {} rounds of {} devices drawn from {devices} (in-process)", a.rounds, a.agents));
        let (mut fleet, addr) = InProcess::start(server_cfg.clone())?;
        let studied = study.run(&mut fleet, addr, &exp, &boot, &token, &fleet_dir, Duration::from_secs(a.timeout_min * 60), &bars);
        let stopped = Fleet::InProcess(fleet).stop();
        let mut studied = studied?;
        stopped?;
        let reports = std::mem::take(&mut studied.reports);
        let launcher = format!("a sampled study: {devices} devices, {} per round, in-process", a.agents);
        return finish(name, &a, quota, &boot, &server_dir, &reports, &launcher, started, Vec::new(), Some(studied));
    }

    bars.message(&format!("starting the server and {} agents ({} mode)", a.agents, if a.in_process { "in-process" } else { "process" }));
    let (mut fleet, addr, launcher) = if a.in_process {
        let (f, addr) = InProcess::start(server_cfg.clone())?;
        (Fleet::InProcess(f), addr, "in-process tasks".to_string())
    } else {
        let (p, addr) = Processes::start(&server_toml, &server_dir, &logs, a.bin_dir.as_deref())?;
        let l = p.launcher.clone();
        (Fleet::Processes(p), addr, l)
    };
    if a.dashboard.is_some() {
        match read_status(&server_dir).and_then(|s| s.http) {
            Some(h) => bars.message(&format!("dashboard: http://{h}/  (metrics: http://{h}/metrics)")),
            None => bars.message("the server did not report its dashboard address"),
        }
    }
    let per_agent = quota.div_ceil(a.agents as u64);
    let slow_from = a.agents - (a.agents as f64 * a.slow_agents).round() as usize;
    for (i, device_cfg) in boot.devices.iter().enumerate() {
        let session_interval_ms = if i >= slow_from { a.session_interval_ms.max(1) * a.slow_factor } else { a.session_interval_ms };
        let cfg = AgentConfig {
            server: agent_address(addr),
            server_cert: server_dir.join(irec_server::tls::CERT_FILE),
            fleet_token: token.clone(),
            data_dir: fleet_dir.join(format!("agent-{i}")),
            device: device_cfg.clone(),
            // One share of every round's quota, and a last share with the newest policy: an agent
            // that ran them all has installed what the last round deployed, and then exits.
            sessions_per_policy: Some(per_agent),
            sessions: Some(per_agent * (a.rounds as u64 + 1)),
            exit_when_done: true,
            initial_policy: Some(boot.behaviour[i % boot.behaviour.len()].clone()),
            batch_linger_ms: 300,
            session_interval_ms,
            world: exp.world.clone(),
            // Process agents map the fleet's world; in-process ones share the fleet's built one.
            world_file: (!a.in_process).then(|| boot.world_file.clone()),
            ..AgentConfig::default()
        };
        match &mut fleet {
            Fleet::Processes(p) => {
                let path = fleet_dir.join(format!("agent-{i}.toml"));
                std::fs::write(&path, toml::to_string_pretty(&cfg)?)?;
                p.spawn_agent(i, &path, &logs)?;
            }
            Fleet::InProcess(p) => p.spawn_agent(cfg)?,
        }
    }

    let mut finished_at = Vec::new();
    let mut watched = watch_rounds(&mut fleet, &server_dir, a.rounds, quota, Duration::from_secs(a.timeout_min * 60), &bars, &mut finished_at);
    if watched.is_ok() {
        // Their last sessions run with the newest policy; those still running after this (a
        // failed last round announces nothing new) are stopped.
        watched = fleet.wait_agents(Duration::from_secs(120));
    }
    let agents = fleet.stop();
    watched?;
    let agents = agents?;
    finish(name, &a, quota, &boot, &server_dir, &agents, &launcher, started, finished_at, None)
}

/// Writes and prints the report of a finished run.
#[allow(clippy::too_many_arguments)]
fn finish(
    name: &str,
    a: &RunArgs,
    quota: u64,
    boot: &bootstrap::Bootstrap,
    server_dir: &Path,
    agents: &[launch::AgentReport],
    launcher: &str,
    started: Instant,
    finished_at: Vec<f64>,
    study: Option<population::StudyOutcome>,
) -> anyhow::Result<()> {
    let status = read_status(server_dir).context("reading the server's final status")?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = outcome::Report::new(name, a, quota, boot, &status, agents, launcher, elapsed);
    report.rounds_finished_s = finished_at;
    report.study = study;
    report.write(&a.out)?;
    println!("{}", report.table());
    println!("{}", report.verdict());
    println!("{:.0} s in all; report in {}", elapsed, a.out.display());
    print_json(a.json, &report.json());
    Ok(())
}

/// Waits until `rounds` rounds are finished (published, refused or failed).
/// `finished_at`: when each round was seen finished, in seconds since the fleet started.
fn watch_rounds(fleet: &mut Fleet, server_dir: &Path, rounds: u32, quota: u64, timeout: Duration, bars: &Bars, finished_at: &mut Vec<f64>) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    bars.start(&format!("{rounds} rounds of {quota} sessions"), rounds as u64);
    let mut shown = 0u64;
    loop {
        fleet.check()?;
        if let Some(st) = read_status(server_dir) {
            let done = st.rounds.iter().filter(|r| r.status.is_finished()).count() as u64;
            if done > shown {
                finished_at.extend(std::iter::repeat_n(started.elapsed().as_secs_f64(), (done - shown) as usize));
                bars.advance(done - shown);
                shown = done;
                if let Some(r) = st.rounds.iter().rev().find(|r| r.status.is_finished()) {
                    bars.message(&format!("round {} {:?}: {} sessions in D, {} s training", r.round, r.status, r.sessions_in_d, r.train_ms.unwrap_or(0) / 1000));
                }
            }
            if done >= rounds as u64 {
                bars.finish();
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bars.finish();
            bail!("{rounds} rounds did not finish within the timeout (--timeout-min)");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
