//! `fleet-sim bench-sim`: simulated turns per second with the neural policy.

use super::{print_json, world_config};
use crate::cli::BenchSimArgs;
use crate::progress::Bars;
use anyhow::Context;
use irec_learn::algo::Recommender;
use irec_learn::experiment::throughput::{self, ThroughputConfig};
use irec_learn::experiment::{ExperimentConfig, Lab};
use irec_model::{Checkpoint, PolicyModel};

pub fn run(a: BenchSimArgs) -> anyhow::Result<()> {
    let dev = candle_core::Device::Cpu;
    // The quick preset's pretraining, so the perception comes from the same cache `compare` fills.
    let lab = Lab::build(&world_config(&a.world), &ExperimentConfig::quick().pretrain, &dev, Some(&a.cache), &Bars::default())?;
    let ck = match &a.policy {
        Some(p) => Checkpoint::from_bytes(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?, &dev)?,
        None => Recommender::new(&lab.perception, 7, None)?.export("fresh recommender", 0),
    };
    let policy = PolicyModel::from_checkpoint(&ck, &dev)?;
    let cfg = ThroughputConfig { sessions: a.sessions, session_batch: a.session_batch, threads: a.threads, noise_sigma: a.noise_sigma, seed: 1 };
    let r = throughput::run(&lab, &policy, &cfg)?;
    println!(
        "{} sessions ({:.1} turns each, {:.0}% found) in {:.2} s: {:.0} turns/s, {:.0} per thread ({} thread(s), candle on {}, {} sessions per batch)",
        r.sessions,
        r.mean_turns_per_session,
        100.0 * r.success_rate,
        r.seconds,
        r.turns_per_s,
        r.turns_per_s_per_thread,
        r.threads,
        r.rayon_threads,
        r.session_batch
    );
    print_json(a.json, &serde_json::to_value(&r)?);
    Ok(())
}
