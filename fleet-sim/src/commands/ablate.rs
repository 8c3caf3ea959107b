//! `fleet-sim ablate`: offline-learner variants trained on one D, side by side.

use super::{merge, metrics_json, print_json};
use crate::cli::AblateArgs;
use crate::progress::Bars;
use anyhow::Context;
use irec_learn::experiment::ablation::{self, Variant};
use irec_learn::experiment::compare::OfflineConfig;
use serde_json::json;

pub fn run(a: AblateArgs) -> anyhow::Result<()> {
    let (cfg, dev) = super::experiment(&a.exp)?;
    let text = std::fs::read_to_string(&a.variants).with_context(|| format!("reading {}", a.variants.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", a.variants.display()))?;
    let list = table.get("variant").and_then(|v| v.as_array()).context("the variants file has no [[variant]] table")?;
    let base: toml::Table = toml::from_str(&toml::to_string(&cfg.offline)?)?;
    let mut variants = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let name = v.get("name").and_then(|n| n.as_str()).with_context(|| format!("variant {i} has no name"))?;
        let mut merged = base.clone();
        if let Some(toml::Value::Table(o)) = v.get("offline") {
            merge(&mut merged, o.clone());
        }
        let offline: OfflineConfig = toml::from_str(&toml::to_string(&merged)?).with_context(|| format!("variant {name}"))?;
        variants.push(Variant { name: name.to_string(), offline });
    }
    let report = ablation::run(&cfg, &variants, a.iterate, &dev, Some(&a.exp.cache), &Bars::default())?;
    if let Some(dir) = &a.failures {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for r in &report.rows {
            let p = dir.join(format!("{}.txt", r.name));
            std::fs::write(&p, r.failures.join("\n")).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let lr = &report.logged_reward;
    println!("logged (paper) reward in D: success turn {:+.3}, turn before a success {:+.3}, other turns {:+.3} (failed sessions' last turns excluded)", lr.success_turn, lr.before_success, lr.other);
    println!("behaviour (devices, test): {}", line(&report.behaviour_on_test));
    println!("imitation:                 {}", line(&report.imitation));
    for b in &report.baselines {
        println!("{:<26} {} | {}", format!("{}:", b.name), line(&b.metrics), b.misses.line());
    }
    for r in &report.rows {
        println!("{:<26} {} | critic greedy {}{}", r.name, line(&r.offline), line(&r.critic_greedy), r.rounds.iter().map(|m| format!(" → {}", line(m))).collect::<String>());
        println!("{:<26} {}", "", r.misses.line());
        for (i, m) in r.round_misses.iter().enumerate() {
            println!("{:<26} after round {}: {}", "", i + 1, m.line());
        }
    }
    let rows: Vec<_> = report
        .rows
        .iter()
        .map(|r| json!({"name": r.name, "offline": metrics_json(&r.offline), "misses": r.misses, "critic_greedy": metrics_json(&r.critic_greedy), "rounds": r.rounds.iter().map(metrics_json).collect::<Vec<_>>(), "round_misses": r.round_misses, "seconds": r.seconds}))
        .collect();
    print_json(a.exp.json, &json!({"seed": a.exp.seed, "behaviour_test": metrics_json(&report.behaviour_on_test), "imitation": metrics_json(&report.imitation), "baselines": report.baselines.iter().map(|b| json!({"name": b.name, "metrics": metrics_json(&b.metrics), "misses": b.misses})).collect::<Vec<_>>(), "rows": rows}));
    Ok(())
}

fn line(m: &irec_world::metrics::Metrics) -> String {
    format!("SR@10 {:5.1}% SR@30 {:5.1}% NI {:5.2}±{:.2}", 100.0 * m.sr10, 100.0 * m.sr30, m.ni.mean, m.ni.se)
}
