//! The paper's metrics: SR@10/20/30 (success within K turns), NI (turns until success, the cap on
//! failure) and NV (shown items violating a wish the user had already voiced, summed per session),
//! each as a mean with its standard error, and a Markdown table.

use crate::sim::Transcript;
use serde::{Deserialize, Serialize};

/// A mean and its standard error (sample standard deviation / √n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanSe {
    pub mean: f64,
    pub se: f64,
}

impl MeanSe {
    pub fn of(xs: &[f64]) -> MeanSe {
        let n = xs.len();
        if n == 0 {
            return MeanSe::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return MeanSe { mean, se: 0.0 };
        }
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        MeanSe { mean, se: (var / n as f64).sqrt() }
    }
}

/// What the metrics need from one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOutcome {
    /// 1-based turn of success.
    pub success_turn: Option<u32>,
    /// Turns taken.
    pub turns: u32,
    /// Shown items that violated a wish voiced earlier in the session.
    pub violations: u32,
}

impl SessionOutcome {
    pub fn of(t: &Transcript) -> SessionOutcome {
        SessionOutcome {
            success_turn: t.success_turn().map(|x| x as u32),
            turns: t.turns.len() as u32,
            violations: t.turns.iter().filter(|x| x.violates_earlier_request).count() as u32,
        }
    }
}

/// Metrics over a set of sessions. Rates are fractions in 0..1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub sessions: usize,
    pub sr10: f64,
    pub sr20: f64,
    pub sr30: f64,
    pub ni: MeanSe,
    pub nv: MeanSe,
}

impl Metrics {
    /// The simulator's verdict on a policy against another on the same sessions: worse when its
    /// NI is higher by more than two standard errors of the difference.
    pub fn confidently_worse_than(&self, other: &Metrics) -> bool {
        let se = (self.ni.se.powi(2) + other.ni.se.powi(2)).sqrt();
        self.ni.mean - other.ni.mean > 2.0 * se
    }

    /// `max_turns` is what NI counts for a failed session (paper: 50).
    pub fn of(outcomes: &[SessionOutcome], max_turns: u32) -> Metrics {
        let n = outcomes.len();
        let sr = |k: u32| {
            if n == 0 {
                0.0
            } else {
                outcomes.iter().filter(|o| o.success_turn.is_some_and(|t| t <= k)).count() as f64 / n as f64
            }
        };
        let ni: Vec<f64> = outcomes.iter().map(|o| o.success_turn.unwrap_or(max_turns) as f64).collect();
        let nv: Vec<f64> = outcomes.iter().map(|o| o.violations as f64).collect();
        Metrics { sessions: n, sr10: sr(10), sr20: sr(20), sr30: sr(30), ni: MeanSe::of(&ni), nv: MeanSe::of(&nv) }
    }

    pub fn of_transcripts(ts: &[Transcript], max_turns: u32) -> Metrics {
        Metrics::of(&ts.iter().map(SessionOutcome::of).collect::<Vec<_>>(), max_turns)
    }
}

/// The paper's Table 2 layout: one row per method.
pub fn render_table(rows: &[(String, Metrics)]) -> String {
    let mut out = String::from("| Method | SR@10 ↑ | SR@20 ↑ | SR@30 ↑ | NI ↓ | NV ↓ | sessions |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (name, m) in rows {
        out.push_str(&format!(
            "| {} | {:.0}% | {:.0}% | {:.0}% | {:.2} ± {:.2} | {:.2} ± {:.2} | {} |\n",
            name,
            100.0 * m.sr10,
            100.0 * m.sr20,
            100.0 * m.sr30,
            m.ni.mean,
            m.ni.se,
            m.nv.mean,
            m.nv.se,
            m.sessions
        ));
    }
    out
}

/// The `p`-th percentile (0..=100) of `values`, nearest rank; `None` when there are none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v.get(i.min(v.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_metrics() {
        let o = |s: Option<u32>, turns, v| SessionOutcome { success_turn: s, turns, violations: v };
        let m = Metrics::of(&[o(Some(1), 1, 0), o(Some(15), 15, 2), o(None, 50, 4), o(Some(25), 25, 2)], 50);
        assert_eq!((m.sr10, m.sr20, m.sr30), (0.25, 0.5, 0.75));
        assert!((m.ni.mean - 22.75).abs() < 1e-12);
        assert!((m.nv.mean - 2.0).abs() < 1e-12);
        // nv: deviations -2, 0, 2, 0 -> var 8/3, se sqrt(8/3/4)
        assert!((m.nv.se - (8.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
        assert!(render_table(&[("x".into(), m)]).contains("| x | 25% | 50% | 75% | 22.75 ± "));
    }
}
