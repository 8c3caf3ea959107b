//! Report folders: Markdown tables, JSON, CSV and figures.

use crate::chart::{self, Panel, Series};
use anyhow::Context;
use irec_learn::experiment::compare::{CompareReport, CurvePoint};
use irec_world::metrics::{render_table, Metrics};
use std::fmt::Write as _;
use std::path::Path;

/// The comparison in the paper's Table 2 layout.
pub fn compare_table(r: &CompareReport) -> String {
    let rows: Vec<(String, Metrics)> = r.rows.iter().map(|x| (x.method.title().to_string(), x.metrics)).collect();
    render_table(&rows)
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// One CSV row per metrics object: `prefix columns…, sessions, sr10, sr20, sr30, ni, ni_se, nv, nv_se`.
pub fn metrics_csv_cells(m: &Metrics) -> String {
    format!("{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}", m.sessions, m.sr10, m.sr20, m.sr30, m.ni.mean, m.ni.se, m.nv.mean, m.nv.se)
}

pub const METRICS_HEADER: &str = "sessions,sr10,sr20,sr30,ni,ni_se,nv,nv_se";

/// Writes table.md, report.json, table.csv, curves.csv, curves.svg/png and training logs.
pub fn write_compare(dir: &Path, r: &CompareReport, elapsed_s: f64) -> anyhow::Result<()> {
    let mut md = format!("# irec compare — preset `{}`, seed {}\n\n", r.preset, r.seed);
    md.push_str("Evaluated on test-split targets with AttrNet-predicted attributes; the Behaviour (collected) row averages the collected sessions, the next row runs the same devices on the test sessions.\n\n");
    let _ = writeln!(md, "RL learners' objective: {}.\n", r.config.offline.objective.describe());
    md.push_str(&compare_table(r));
    md.push_str("\n| Method | note |\n|---|---|\n");
    for row in &r.rows {
        let _ = writeln!(md, "| {} | {} |", row.method.title(), row.note);
    }
    let p = &r.pretrain;
    let _ = writeln!(
        md,
        "\nPretraining: text encoder {:.1}% on held-out sentences, {:.1}% on held-out templates ({} training sentences); AttrNet test accuracy per attribute (Category, SubCategory, HeelHeight, Closure, Gender, ToeStyle): {}.",
        100.0 * p.text_heldout_accuracy,
        100.0 * p.text_heldout_template_accuracy,
        p.text_train_sentences,
        p.attr_test_accuracy.iter().map(|a| format!("{:.1}%", 100.0 * a)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(md, "\nD holds {} transitions after behaviour collection.\n\n## Time per stage\n\n| stage | seconds |\n|---|---:|", r.transitions_in_d);
    for (stage, s) in &r.timings {
        let _ = writeln!(md, "| {stage} | {s:.1} |");
    }
    let _ = writeln!(md, "| **total** | {elapsed_s:.1} |");
    md.push_str("\n![training curves](curves.png)\n");
    write(dir, "table.md", md)?;
    write(dir, "report.json", serde_json::to_vec_pretty(r)?)?;

    let mut csv = format!("method,{METRICS_HEADER}\n");
    for row in &r.rows {
        let _ = writeln!(csv, "{},{}", row.method.key(), metrics_csv_cells(&row.metrics));
    }
    write(dir, "table.csv", csv)?;
    let mut csv = format!("series,step,round,sessions_in_d,{METRICS_HEADER}\n");
    for c in &r.curves {
        let _ = writeln!(csv, "{},{},{},{},{}", c.series, c.step, c.round, c.sessions_in_d, metrics_csv_cells(&c.metrics));
    }
    write(dir, "curves.csv", csv)?;
    write(dir, "training-logs.json", serde_json::to_vec_pretty(&r.logs)?)?;
    chart::write(dir, "curves", &curve_panels(&r.curves))?;
    Ok(())
}

/// Figure 4 of the paper, extended: test SR@K and NI of the offline learner over its gradient
/// steps, continued by the iterative rounds.
pub fn curve_panels(curves: &[CurvePoint]) -> Vec<Panel> {
    let offline: Vec<&CurvePoint> = curves.iter().filter(|c| c.series == "offline" || c.series == "iterative_offline").collect();
    let pts = |f: &dyn Fn(&Metrics) -> f64| -> Vec<(f64, f64)> { offline.iter().map(|c| (c.step as f64, f(&c.metrics))).collect() };
    vec![
        Panel {
            title: "Offline → iterative offline: success".into(),
            x_label: "gradient steps".into(),
            y_label: "success rate (test)".into(),
            series: vec![
                Series { name: "SR@10".into(), points: pts(&|m| m.sr10) },
                Series { name: "SR@20".into(), points: pts(&|m| m.sr20) },
                Series { name: "SR@30".into(), points: pts(&|m| m.sr30) },
            ],
        },
        Panel {
            title: "Offline → iterative offline: turns and violations".into(),
            x_label: "gradient steps".into(),
            y_label: "per session (test)".into(),
            series: vec![Series { name: "NI".into(), points: pts(&|m| m.ni.mean) }, Series { name: "NV".into(), points: pts(&|m| m.nv.mean) }],
        },
    ]
}
