//! A sampled study (`fleet-sim run --population N`): N devices, of which each round draws K to
//! take part, as Flower simulates millions of clients with a few live ones at a time.
//!
//! An idle device is a record, not an agent: after it took part and everything it ran is acked,
//! its durable state (its session count, so session seeds never repeat, and its profile with the
//! learned bias) goes into one population database and its own sled store is deleted. A device
//! that never took part has no record at all: its settings derive from the fleet seed and its
//! number ([`bootstrap::device_config`]). A drawn device becomes a full in-process agent again —
//! its record restored into a fresh store, the same QUIC upload path, the same exactly-once
//! machinery — for its share of the round's sessions.
//!
//! Each round: wait until the previous round is trained and gated (so the cohort runs the policy
//! it left deployed), draw the cohort without replacement (seeded by the round), let the
//! `--dropout` share of it fail to respond (drawn as well; as many more devices are drawn, so K
//! take part), run the cohort to completion, and put its devices back to records. Non-IID
//! households and stragglers (`--slow-agents`) apply to the cohort as to a fixed fleet.

use super::bootstrap::{self, Bootstrap};
use super::launch::{agent_address, AgentReport, InProcess};
use crate::progress::Bars;
use anyhow::{bail, Context};
use irec_edge_agent::alloc::pin_mmap_threshold;
use irec_edge_agent::store::{db_dir, AgentStore, DeviceRecord};
use irec_edge_agent::AgentConfig;
use irec_learn::experiment::{ExperimentConfig, Progress};
use irec_server::status::read_file as read_status;
use irec_store::codec::{bin, unbin};
use irec_store::{Db, Options, Tree};
use irec_world::rng;
use rand::seq::index::sample;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Blocks from this size up are mapped on their own while a cohort runs: without it the study's
/// RSS grew by 1–6 MiB per participation and stayed (11.8 GB after three cohorts of 1,000; see
/// `irec_edge_agent::alloc`).
const COHORT_MMAP_THRESHOLD: i32 = 64 << 10;
/// And between cohorts, while the trainer runs: glibc's own ceiling for its dynamic threshold
/// (32 MiB on 64-bit), so training's tensors come from the heap as they would by default
/// (mapping each costs page faults on every step).
const TRAINING_MMAP_THRESHOLD: i32 = 32 << 20;

/// The study's shape.
#[derive(Clone, Debug)]
pub struct Study {
    /// Devices in the population.
    pub devices: usize,
    /// Devices that take part in each round.
    pub per_round: usize,
    /// Sessions each taking-part device runs per round.
    pub share: u64,
    /// Share of each round's drawn devices that fail to respond.
    pub dropout: f64,
    pub seed: u64,
    pub rounds: u32,
    /// Share of the cohort that are stragglers, and how much slower.
    pub slow_share: f64,
    pub session_interval_ms: u64,
    pub slow_factor: u64,
}

/// One round's cohort.
#[derive(Clone, Debug, Serialize)]
pub struct CohortRow {
    pub round: u32,
    pub drawn: usize,
    pub failed: usize,
    pub took_part: usize,
    /// Of those, devices taking part for the first time.
    pub first_time: usize,
    pub sessions_run: u64,
    /// From the cohort's first start to its last device put back, in seconds.
    pub seconds: f64,
    /// This process's resident set size before the cohort started, the largest seen while it
    /// ran, and after it was back to records, in MiB (the server and its trainer live here too).
    pub rss_before_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    /// (peak − before) / devices taking part: what an active device costs, in KiB.
    pub kib_per_active_device: Option<f64>,
}

/// What the study left behind.
#[derive(Clone, Debug, Serialize)]
pub struct StudyOutcome {
    pub devices: usize,
    pub per_round: usize,
    pub dropout: f64,
    pub cohorts: Vec<CohortRow>,
    /// Devices that took part at least once (and so have a record).
    pub devices_with_records: usize,
    /// Stores kept because something in them was still pending (0 after a clean study).
    pub stores_kept: usize,
    /// The population database on disk, in bytes.
    pub records_bytes: u64,
    /// This process's peak RSS, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Every participation's report, for the fleet table.
    #[serde(skip)]
    pub reports: Vec<AgentReport>,
}

/// The idle devices' records: device number (u32 BE) → [`DeviceRecord`].
struct Records {
    db: Db,
    tree: Tree,
}

impl Records {
    fn open(dir: &Path) -> anyhow::Result<Records> {
        let db = Db::open(dir, Options { cache_bytes: Some(16 << 20) })?;
        Ok(Records { tree: db.tree("devices")?, db })
    }

    fn get(&self, id: u32) -> anyhow::Result<Option<DeviceRecord>> {
        Ok(self.tree.get(id.to_be_bytes())?.map(|v| unbin("devices", &v)).transpose()?)
    }

    fn put(&self, id: u32, r: &DeviceRecord) -> anyhow::Result<()> {
        Ok(self.tree.insert(id.to_be_bytes(), bin(r)?)?)
    }

    fn flush(&self) -> anyhow::Result<()> {
        Ok(self.db.flush()?)
    }
}

impl Study {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.devices >= 1 && self.devices <= u32::MAX as usize, "--population must be between 1 and 2^32 - 1");
        anyhow::ensure!(self.per_round >= 1, "--agents (devices per round) must be at least 1");
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "--dropout is a share of the drawn devices, from 0 to below 1");
        let drawn = self.drawn();
        anyhow::ensure!(drawn <= self.devices, "a round draws {drawn} devices (--agents with --dropout), more than the --population of {}", self.devices);
        Ok(())
    }

    /// Devices drawn per round: enough that `per_round` remain after dropout.
    fn drawn(&self) -> usize {
        (self.per_round as f64 / (1.0 - self.dropout)).round() as usize
    }

    /// Runs the rounds' cohorts against the server `fleet` holds, which listens at `addr`.
    #[allow(clippy::too_many_arguments)]
    /// The caller has [`Study::validate`]d it (before starting the server).
    pub fn run(&self, fleet: &mut InProcess, addr: SocketAddr, exp: &ExperimentConfig, boot: &Bootstrap, token: &str, fleet_dir: &Path, timeout: Duration, bars: &Bars) -> anyhow::Result<StudyOutcome> {
        let server_dir = fleet_dir.join("server");
        let stores = fleet_dir.join("devices");
        let records = Records::open(&fleet_dir.join("population"))?;
        let deadline = Instant::now() + timeout;
        let mut cohorts = Vec::new();
        let mut reports = Vec::new();
        bars.start(&format!("{} rounds of {} devices drawn from {}", self.rounds, self.per_round, self.devices), self.rounds as u64);
        for round in 0..self.rounds {
            wait_finished(fleet, &server_dir, round, deadline)?;
            let started = Instant::now();
            // The draw's own stream ("pop"), so it does not move the devices' or training's draws.
            let mut r = rng::rng(rng::derive(rng::derive(self.seed, 0x0070_6f70), round as u64));
            let drawn = sample(&mut r, self.devices, self.drawn()).into_vec();
            let failed = drawn.len() - self.per_round;
            let cohort = &drawn[failed..];
            let slow_from = cohort.len() - (cohort.len() as f64 * self.slow_share).round() as usize;
            let mut configs = Vec::with_capacity(cohort.len());
            let mut first_time = 0;
            for (k, &id) in cohort.iter().enumerate() {
                let id = id as u32;
                let data_dir = stores.join(id.to_string());
                let store = AgentStore::open(&db_dir(&data_dir))?;
                // A store kept from an earlier round (something was pending) goes on as it is;
                // otherwise the device's record, if it has one, is restored into a fresh store.
                let next = match (store.next_session()?, records.get(id)?) {
                    (0, Some(rec)) => {
                        store.restore(&rec)?;
                        rec.next_session
                    }
                    (0, None) => {
                        first_time += 1;
                        0
                    }
                    (kept, _) => kept,
                };
                drop(store);
                let slow = k >= slow_from;
                configs.push(AgentConfig {
                    server: agent_address(addr),
                    server_cert: server_dir.join(irec_server::tls::CERT_FILE),
                    fleet_token: token.to_string(),
                    data_dir,
                    device: bootstrap::device_config(exp, id as u64),
                    sessions_per_policy: Some(self.share),
                    sessions: Some(next + self.share),
                    exit_when_done: true,
                    // Round 0 runs the behaviour policies; later cohorts run what is deployed
                    // (a device's stored policy, or the one it pulls on connecting).
                    initial_policy: (round == 0).then(|| boot.behaviour[id as usize % boot.behaviour.len()].clone()),
                    batch_linger_ms: 300,
                    session_interval_ms: if slow { self.session_interval_ms.max(1) * self.slow_factor } else { self.session_interval_ms },
                    world: exp.world.clone(),
                    ..AgentConfig::default()
                });
            }
            let before = rss_kib();
            let pinned = pin_mmap_threshold(COHORT_MMAP_THRESHOLD);
            let (ran, peak) = fleet.run_cohort(configs.clone(), deadline)?;
            if pinned {
                pin_mmap_threshold(TRAINING_MMAP_THRESHOLD);
            } else if round == 0 {
                tracing::warn!("could not pin the allocator's mmap threshold: memory freed by finished cohorts may stay resident");
            }
            let mut sessions_run = 0;
            for (cfg, report) in configs.iter().zip(ran) {
                sessions_run += report.stats.as_ref().map_or(0, |s| s.sessions_run);
                let id: u32 = cfg.data_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).context("a device store's name")?;
                let store = AgentStore::open(&db_dir(&cfg.data_dir))?;
                if let Some(rec) = store.idle_record()? {
                    records.put(id, &rec)?;
                    drop(store);
                    std::fs::remove_dir_all(&cfg.data_dir).with_context(|| format!("removing {}", cfg.data_dir.display()))?;
                }
                reports.push(report);
            }
            // The cohort's devices are records again before the next round draws.
            records.flush()?;
            let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
            let kib_per_active_device = before.zip(peak).map(|(b, p)| p.saturating_sub(b) as f64 / cohort.len() as f64);
            cohorts.push(CohortRow {
                round,
                drawn: drawn.len(),
                failed,
                took_part: cohort.len(),
                first_time,
                sessions_run,
                seconds: started.elapsed().as_secs_f64(),
                rss_before_mib: mib(before),
                rss_peak_mib: mib(peak),
                rss_after_mib: mib(rss_kib()),
                kib_per_active_device,
            });
            bars.advance(1);
            bars.message(&format!("round {round}: {} devices took part ({first_time} for the first time, {failed} failed to respond), {sessions_run} sessions", cohort.len()));
        }
        wait_finished(fleet, &server_dir, self.rounds, deadline)?;
        bars.finish();
        let stores_kept = std::fs::read_dir(&stores).map(|d| d.count()).unwrap_or(0);
        Ok(StudyOutcome {
            devices: self.devices,
            per_round: self.per_round,
            dropout: self.dropout,
            cohorts,
            devices_with_records: records.tree.len(),
            stores_kept,
            records_bytes: dir_bytes(&fleet_dir.join("population")),
            peak_rss_mib: irec_edge_agent::procfs::memory(None).map(|m| m.peak_kib as f64 / 1024.0),
            reports,
        })
    }
}

fn rss_kib() -> Option<u64> {
    irec_edge_agent::procfs::memory(None).map(|m| m.current_kib)
}

/// Waits until rounds `0..n` are finished (trained and gated, or failed).
fn wait_finished(fleet: &mut InProcess, server_dir: &Path, n: u32, deadline: Instant) -> anyhow::Result<()> {
    loop {
        fleet.check()?;
        let done = read_status(server_dir).map_or(0, |s| s.rounds.iter().filter(|r| r.status.is_finished()).count());
        if done >= n as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("round {} did not finish within the timeout (--timeout-min)", done);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    irec_testkit::files_under(dir).iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
}
