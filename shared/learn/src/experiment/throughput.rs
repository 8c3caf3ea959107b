//! Simulation throughput: simulated turns per second with the neural policy, the figure that
//! decides how many devices and rounds a study can afford on one box. Sessions run as an
//! in-process fleet's would: batched inference across many sessions at once ([`rollout`]), each
//! thread its own share, the policy acting greedily with a device's Gaussian logit noise.

use super::{Lab, Result};
use irec_model::{rollout, Acting, PolicyModel};
use irec_world::sim::SessionSpec;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Settings of one measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputConfig {
    /// Sessions in all.
    pub sessions: usize,
    /// Sessions stepped together in one batched rollout.
    pub session_batch: usize,
    /// Threads the sessions are split across.
    pub threads: usize,
    /// Gaussian logit noise σ of the acting policy (a behaviour device's).
    pub noise_sigma: f32,
    pub seed: u64,
}

/// What one measurement found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputReport {
    pub threads: usize,
    /// Threads candle's CPU kernels may use (rayon's pool; `RAYON_NUM_THREADS`).
    pub rayon_threads: usize,
    pub session_batch: usize,
    pub sessions: usize,
    pub turns: usize,
    pub mean_turns_per_session: f64,
    pub seconds: f64,
    pub turns_per_s: f64,
    pub turns_per_s_per_thread: f64,
    pub success_rate: f64,
}

/// Runs `cfg.sessions` sessions of `policy` on the lab's collection world (train split, true
/// attributes, as devices collect) and times them.
pub fn run(lab: &Lab, policy: &PolicyModel, cfg: &ThroughputConfig) -> Result<ThroughputReport> {
    let env = &lab.collect_env;
    let specs: Vec<SessionSpec> = (0..cfg.sessions as u64).map(|i| SessionSpec::numbered(env, cfg.seed, i)).collect();
    let acting = Acting { noise_sigma: cfg.noise_sigma, ..Acting::default() };
    let threads = cfg.threads.max(1);
    let per_thread = specs.len().div_ceil(threads).max(1);
    let started = Instant::now();
    let results: Vec<Result<(usize, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .chunks(per_thread)
            .map(|share| {
                let acting = &acting;
                scope.spawn(move || -> Result<(usize, usize)> {
                    let (mut turns, mut found) = (0, 0);
                    for batch in share.chunks(cfg.session_batch.max(1)) {
                        let ts = rollout(env, &policy.tracker, &policy.policy, &lab.featurizer, policy.heads(), batch, acting)?;
                        turns += ts.iter().map(|t| t.turns.len()).sum::<usize>();
                        found += ts.iter().filter(|t| t.success).count();
                    }
                    Ok((turns, found))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let (mut turns, mut found) = (0, 0);
    for r in results {
        let (t, f) = r?;
        turns += t;
        found += f;
    }
    Ok(ThroughputReport {
        threads,
        rayon_threads: rayon_threads(),
        session_batch: cfg.session_batch,
        sessions: specs.len(),
        turns,
        mean_turns_per_session: turns as f64 / specs.len().max(1) as f64,
        seconds,
        turns_per_s: turns as f64 / seconds,
        turns_per_s_per_thread: turns as f64 / seconds / threads as f64,
        success_rate: found as f64 / specs.len().max(1) as f64,
    })
}

/// `RAYON_NUM_THREADS`, else the machine's parallelism (rayon's own default).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
