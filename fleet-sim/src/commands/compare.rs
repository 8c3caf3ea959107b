//! `fleet-sim compare`: the paper's Table 2 in-process, and its report folder.

use super::{device, metrics_json, print_json};
use crate::cli::{CompareArgs, PresetArg};
use crate::progress::Bars;
use crate::report;
use anyhow::Context;
use irec_learn::experiment::{compare, Preset};
use serde_json::json;

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let (preset, name) = match a.preset {
        PresetArg::Quick => (Preset::Quick, "quick"),
        PresetArg::Paper => (Preset::Paper, "paper"),
    };
    let mut cfg = super::experiment_config(preset, a.config.as_deref())?;
    cfg.seed = a.seed;
    if let Some((first, rest)) = a.algo.split_first() {
        cfg.offline.algo = *first;
        cfg.offline.also = rest.to_vec();
    }
    let dev = device(&a.device)?;
    let started = std::time::Instant::now();
    let cache = (!a.no_cache).then_some(a.cache.as_path());
    let report = compare::run(&cfg, name, &dev, cache, &Bars::default())?;
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let table = report::compare_table(&report);
    report::write_compare(&a.out, &report, elapsed)?;
    println!("{table}");
    println!("{:.0} s in all; report in {}", elapsed, a.out.display());
    let rows: Vec<serde_json::Value> = report
        .rows
        .iter()
        .map(|r| {
            let mut v = json!({"method": r.method.key()});
            if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), metrics_json(&r.metrics)) {
                o.extend(m);
            }
            v
        })
        .collect();
    print_json(a.json, &json!({"preset": name, "seed": a.seed, "rows": rows}));
    Ok(())
}
