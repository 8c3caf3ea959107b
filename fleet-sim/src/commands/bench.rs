//! `fleet-sim bench-train`: one CQL(H) + discrete SAC gradient step, timed.

use super::{device, print_json};
use crate::cli::{BenchArgs, BenchModeArg};
use irec_learn::bench::{run as bench, BenchConfig, BenchMode};

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mode = match a.mode {
        BenchModeArg::Flat => BenchMode::Flat,
        BenchModeArg::Gru => BenchMode::Gru,
    };
    let cfg = BenchConfig { spinning_workers: !a.sleeping_workers, ..BenchConfig::new(mode, a.steps) };
    let r = bench(&cfg, &device(&a.device)?)?;
    println!(
        "{:?}: {:.2} ms/step ({:.1} steps/s, {:.0} transitions/s) on {} thread(s){}; phases: sample {:.2} ms, forward {:.2} ms, backward {:.2} ms, optimizer {:.2} ms; other processes used {:?} of the CPU",
        r.mode, r.ms_per_step, r.steps_per_s, r.transitions_per_s, r.threads, if r.spinning_workers || r.threads < 2 { "" } else { " (idle workers sleeping)" }, r.phases.sample_ms, r.phases.forward_ms, r.phases.backward_ms, r.phases.optimizer_ms, r.other_procs_cpu_frac
    );
    print_json(a.json, &serde_json::to_value(&r)?);
    Ok(())
}
