//! The run's report: per round, the policy deployed after it (its simulator figures on the test
//! split), the gate's decision with both off-policy estimates, and what the fleet uploaded.

use super::bootstrap::Bootstrap;
use super::launch::AgentReport;
use crate::chart::{self, Panel, Series};
use crate::cli::RunArgs;
use crate::commands::metrics_json;
use crate::report::{metrics_csv_cells, METRICS_HEADER};
use anyhow::Context;
use irec_edge_agent::RoundUploads;
use irec_server::rounds::RoundStatus;
use irec_server::ServerStatus;
use irec_world::metrics::{percentile, render_table, Metrics};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    pub round: u32,
    /// "published", "refused" or "failed".
    pub gate: String,
    pub reason: Option<String>,
    /// The version deployed after the round (the candidate when published, else the old one).
    pub policy_version: Option<u64>,
    pub sessions_in_d: u64,
    pub new_sessions: u64,
    /// Of those, sessions collected by an older round's policy (stragglers).
    pub late_sessions: u64,
    /// "quorum" or "deadline".
    pub closed_by: Option<String>,
    /// The deployed policy's figures after the round.
    pub metrics: Option<Metrics>,
    pub candidate: Option<Metrics>,
    pub candidate_estimate: Option<f64>,
    pub deployed_estimate: Option<f64>,
    /// Standard error of candidate − deployed estimate the gate used.
    pub estimate_se: Option<f64>,
    /// The simulator's verdict on the candidate against what was deployed (the behaviour devices
    /// before any round published): "worse" when its NI on the test sessions is higher by more
    /// than two standard errors of the difference, else "not worse".
    pub simulator: Option<String>,
    /// The gate agreed with the simulator: published what is not worse, refused what is.
    pub gate_correct: Option<bool>,
    pub train_s: Option<f64>,
}

/// Uploads of the sessions collected for one round (by the policy deployed for it), fleet-wide.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetRow {
    pub round: u32,
    pub sessions: u64,
    pub batches: u64,
    pub bytes: u64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub preset: String,
    pub seed: u64,
    pub agents: usize,
    pub sessions_per_round: u64,
    pub launcher: String,
    pub elapsed_s: f64,
    pub bootstrap_s: f64,
    /// The devices' behaviour policies with their noise and bias, on the evaluation sessions.
    pub behaviour: Metrics,
    pub tracker: Metrics,
    pub rounds: Vec<RoundRow>,
    pub fleet: Vec<FleetRow>,
    pub sessions_in_d: u64,
    pub agent_problems: Vec<String>,
    pub agents_final_versions: Vec<Option<u64>>,
    /// Sessions each agent ran (uploaded or still pending when it stopped).
    pub agents_sessions_run: Vec<u64>,
    /// Each agent process's peak RSS in KiB (process mode).
    pub agents_peak_rss_kib: Vec<Option<u64>>,
    /// Each agent process's private memory when it stopped, the shared world file left out, in
    /// KiB (process mode).
    pub agents_private_kib: Vec<Option<u64>>,
    /// Each agent process's whole USS when it stopped, in KiB (process mode).
    pub agents_uss_kib: Vec<Option<u64>>,
    /// When each round was seen finished, in seconds since the fleet started.
    pub rounds_finished_s: Vec<f64>,
    /// A sampled study's cohorts and records (`--population`).
    pub study: Option<super::population::StudyOutcome>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(preset: &str, a: &RunArgs, quota: u64, boot: &Bootstrap, status: &ServerStatus, agents: &[AgentReport], launcher: &str, elapsed_s: f64) -> Report {
        let rounds = status
            .rounds
            .iter()
            .filter(|r| r.status.is_finished())
            .map(|r| {
                let gate = match r.status {
                    RoundStatus::Published => "published",
                    RoundStatus::Refused => "refused",
                    _ => "failed",
                };
                let candidate = r.metrics.as_ref().and_then(|m| m.candidate).map(|e| e.metrics);
                let deployed = r.metrics.as_ref().and_then(|m| m.deployed).map(|e| e.metrics);
                let (policy_version, metrics) = match r.status {
                    RoundStatus::Published => (r.published_version, candidate),
                    _ => (r.deployed_version, deployed),
                };
                let reference = deployed.unwrap_or(boot.behaviour_metrics);
                let worse = candidate.map(|c| c.confidently_worse_than(&reference));
                let gate_correct = match (r.status, worse) {
                    (RoundStatus::Published, Some(w)) => Some(!w),
                    (RoundStatus::Refused, Some(w)) => Some(w),
                    _ => None,
                };
                RoundRow {
                    round: r.round,
                    gate: gate.to_string(),
                    reason: r.gate.as_ref().map(|g| g.reason.clone()).or_else(|| r.error.clone()),
                    policy_version,
                    sessions_in_d: r.sessions_in_d,
                    new_sessions: r.new_sessions,
                    late_sessions: r.late_sessions,
                    closed_by: r.closed_by.map(|c| format!("{c:?}").to_lowercase()),
                    metrics,
                    candidate,
                    candidate_estimate: r.candidate_estimate,
                    deployed_estimate: r.deployed_estimate,
                    estimate_se: r.estimate_se,
                    simulator: worse.map(|w| if w { "worse" } else { "not worse" }.to_string()),
                    gate_correct,
                    train_s: r.train_ms.map(|ms| ms as f64 / 1000.0),
                }
            })
            .collect();
        let mut by_round: BTreeMap<u32, (RoundUploads, Vec<f64>)> = BTreeMap::new();
        for s in agents.iter().filter_map(|x| x.stats.as_ref()) {
            for (r, u) in &s.per_round {
                let e = by_round.entry(*r).or_default();
                e.0.batches += u.batches;
                e.0.sessions += u.sessions;
                e.0.bytes += u.bytes;
                e.1.extend(&u.ack_latencies_ms);
            }
        }
        let fleet = by_round
            .into_iter()
            .map(|(round, (u, lat))| FleetRow {
                round,
                sessions: u.sessions,
                batches: u.batches,
                bytes: u.bytes,
                ack_p50_ms: percentile(&lat, 50.0),
                ack_p99_ms: percentile(&lat, 99.0),
            })
            .collect();
        Report {
            preset: preset.to_string(),
            seed: a.seed,
            agents: a.agents,
            sessions_per_round: quota,
            launcher: launcher.to_string(),
            elapsed_s,
            bootstrap_s: boot.seconds,
            behaviour: boot.behaviour_metrics,
            tracker: boot.tracker_metrics,
            rounds,
            fleet,
            sessions_in_d: status.counters.sessions_total,
            agent_problems: agents.iter().filter_map(|x| x.problem.clone()).collect(),
            agents_final_versions: agents.iter().map(|x| x.stats.as_ref().and_then(|s| s.policy_version)).collect(),
            agents_sessions_run: agents.iter().map(|x| x.stats.as_ref().map_or(0, |s| s.sessions_run)).collect(),
            agents_peak_rss_kib: agents.iter().map(|x| x.peak_rss_kib).collect(),
            agents_private_kib: agents.iter().map(|x| x.private_kib).collect(),
            agents_uss_kib: agents.iter().map(|x| x.uss_kib).collect(),
            rounds_finished_s: Vec::new(),
            study: None,
        }
    }

    pub fn table(&self) -> String {
        let mut rows = vec![("Behaviour (round-0 devices, with their noise)".to_string(), self.behaviour)];
        for r in &self.rounds {
            if let Some(m) = r.metrics {
                let v = r.policy_version.map_or("none".to_string(), |v| format!("v{v}"));
                rows.push((format!("After round {} ({}; {} sessions in D) → {v}", r.round, r.gate, r.sessions_in_d), m));
            }
        }
        rows.push(("Rule-based tracker".to_string(), self.tracker));
        render_table(&rows)
    }

    /// Whether the last round's policy beats the behaviour policies on SR@30 and NI.
    pub fn verdict(&self) -> String {
        let Some((r, m)) = self.rounds.iter().rev().find_map(|r| r.metrics.map(|m| (r.round, m))) else {
            return "No round produced an evaluated policy.".to_string();
        };
        let b = &self.behaviour;
        // Standard errors of the differences: binomial for SR@30, the sessions' spread for NI.
        let se_rate = |p: f64, n: usize| (p * (1.0 - p) / n.max(1) as f64).sqrt();
        let sr_se = (se_rate(m.sr30, m.sessions).powi(2) + se_rate(b.sr30, b.sessions).powi(2)).sqrt();
        let ni_se = (m.ni.se.powi(2) + b.ni.se.powi(2)).sqrt();
        let (d_sr, d_ni) = (m.sr30 - b.sr30, b.ni.mean - m.ni.mean);
        let judge = |d: f64, se: f64| if d > 2.0 * se { "beats it beyond two standard errors" } else if d > 0.0 { "better, within two standard errors" } else { "does not beat it" };
        format!(
            "After round {r}: SR@30 {:.1}% vs behaviour {:.1}% ({:+.1} points, s.e. {:.1}: {}); NI {:.2} ± {:.2} vs {:.2} ± {:.2} ({:+.2} turns, s.e. {:.2}: {}).",
            100.0 * m.sr30,
            100.0 * b.sr30,
            100.0 * d_sr,
            100.0 * sr_se,
            judge(d_sr, sr_se),
            m.ni.mean,
            m.ni.se,
            b.ni.mean,
            b.ni.se,
            -d_ni,
            ni_se,
            judge(d_ni, ni_se)
        )
    }

    /// The last line of `--json`.
    pub fn json(&self) -> serde_json::Value {
        let rounds: Vec<serde_json::Value> = self
            .rounds
            .iter()
            .map(|r| {
                let mut v = json!({"round": r.round, "policy_version": r.policy_version, "sessions_in_d": r.sessions_in_d, "new_sessions": r.new_sessions, "late_sessions": r.late_sessions, "closed_by": r.closed_by, "gate": r.gate, "gate_correct": r.gate_correct});
                if let (Some(o), Some(serde_json::Value::Object(m))) = (v.as_object_mut(), r.metrics.as_ref().map(metrics_json)) {
                    o.extend(m);
                }
                v
            })
            .collect();
        let mut out = json!({
            "rounds": rounds,
            "behaviour": metrics_json(&self.behaviour),
            "tracker": metrics_json(&self.tracker),
            "agents": self.agents,
            "sessions_per_round": self.sessions_per_round,
            "rounds_finished_s": self.rounds_finished_s,
            "elapsed_s": self.elapsed_s,
        });
        if let Some(o) = out.as_object_mut() {
            // Agent processes report their memory; in-process agents have none of their own.
            if self.agents_peak_rss_kib.iter().any(Option::is_some) {
                o.insert("agents_peak_rss_mib".into(), json!(mib(&self.agents_peak_rss_kib)));
                o.insert("agents_private_mib".into(), json!(mib(&self.agents_private_kib)));
                o.insert("agents_uss_mib".into(), json!(mib(&self.agents_uss_kib)));
            }
            if let Some(study) = &self.study {
                o.insert("study".into(), json!(study));
            }
        }
        out
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let put = |name: &str, text: &[u8]| -> anyhow::Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        let mut md = format!(
            "# irec run — preset `{}`, seed {}, {} agents, {} sessions per round\n\n",
            self.preset, self.seed, self.agents, self.sessions_per_round
        );
        md.push_str("Every policy is evaluated on the same test-split sessions (AttrNet's attributes); the rounds' policies greedily, the behaviour devices with their own noise and bias.\n\n");
        md.push_str(&self.table());
        let _ = writeln!(md, "\n{}\n\n## Rounds\n", self.verdict());
        md.push_str("| Round | Gate | Simulator on the candidate | Gate right | Version after | Sessions in D | New | Candidate FQE | Deployed FQE | SE of difference | Training s | Reason |\n|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        let opt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
        for r in &self.rounds {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.round,
                r.gate,
                r.simulator.clone().unwrap_or_else(|| "–".into()),
                r.gate_correct.map_or("–", |c| if c { "yes" } else { "no" }),
                r.policy_version.map_or("–".into(), |v| v.to_string()),
                r.sessions_in_d,
                r.new_sessions,
                opt(r.candidate_estimate),
                opt(r.deployed_estimate),
                opt(r.estimate_se),
                r.train_s.map_or("–".into(), |s| format!("{s:.0}")),
                r.reason.clone().unwrap_or_default()
            );
        }
        md.push_str("\n## Fleet uploads by the round their sessions were collected for\n\n| Round | Sessions | Batches | Bytes | Ack p50 ms | Ack p99 ms |\n|---:|---:|---:|---:|---:|---:|\n");
        for f in &self.fleet {
            let _ = writeln!(md, "| {} | {} | {} | {} | {} | {} |", f.round, f.sessions, f.batches, f.bytes, opt(f.ack_p50_ms), opt(f.ack_p99_ms));
        }
        let _ = writeln!(md, "\nSessions in the server's D at the end: {}. Agents' final policy versions: {:?}.", self.sessions_in_d, self.agents_final_versions);
        let listed = |kib: &[Option<u64>]| -> String { kib.iter().map(|k| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))).collect::<Vec<_>>().join(", ") };
        if self.agents_peak_rss_kib.iter().any(Option::is_some) {
            let _ = writeln!(md, "Agents' peak RSS (MiB): {}.", listed(&self.agents_peak_rss_kib));
            let _ = writeln!(
                md,
                "Agents' private memory when they stopped (MiB; USS without the world file, which the page cache shares): {}; whole USS: {}.",
                listed(&self.agents_private_kib),
                listed(&self.agents_uss_kib)
            );
        }
        if let Some(st) = &self.study {
            let _ = writeln!(
                md,
                "\n## Sampled study\n\n{} devices, {} taking part per round, dropout {:.0}%; {} devices have a record ({} bytes on disk), {} stores kept with something pending; peak RSS {}.\n\n| Round | Drawn | Failed to respond | Took part | First time | Sessions | Seconds | RSS before / peak / after, MiB | KiB per active device |\n|---:|---:|---:|---:|---:|---:|---:|---|---:|",
                st.devices,
                st.per_round,
                st.dropout * 100.0,
                st.devices_with_records,
                st.records_bytes,
                st.stores_kept,
                st.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB"))
            );
            for c in &st.cohorts {
                let m = |x: Option<f64>| x.map_or("?".into(), |m| format!("{m:.0}"));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {:.1} | {} / {} / {} | {} |",
                    c.round,
                    c.drawn,
                    c.failed,
                    c.took_part,
                    c.first_time,
                    c.sessions_run,
                    c.seconds,
                    m(c.rss_before_mib),
                    m(c.rss_peak_mib),
                    m(c.rss_after_mib),
                    m(c.kib_per_active_device)
                );
            }
        }
        for p in &self.agent_problems {
            let _ = writeln!(md, "\n- problem: {p}");
        }
        let _ = writeln!(md, "\nProcesses: {}. Bootstrap {:.0} s, {:.0} s in all.", self.launcher, self.bootstrap_s, self.elapsed_s);
        put("table.md", md.as_bytes())?;
        put("report.json", &serde_json::to_vec_pretty(self)?)?;

        let mut csv = format!("round,gate,policy_version,sessions_in_d,new_sessions,candidate_estimate,deployed_estimate,train_s,{METRICS_HEADER}\n");
        let _ = writeln!(csv, "behaviour,,,,,,,,{}", metrics_csv_cells(&self.behaviour));
        for r in &self.rounds {
            let cells = r.metrics.as_ref().map_or(",,,,,,,".to_string(), metrics_csv_cells);
            let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.4}"));
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{cells}",
                r.round,
                r.gate,
                r.policy_version.map_or(String::new(), |v| v.to_string()),
                r.sessions_in_d,
                r.new_sessions,
                o(r.candidate_estimate),
                o(r.deployed_estimate),
                o(r.train_s)
            );
        }
        let _ = writeln!(csv, "tracker,,,,,,,,{}", metrics_csv_cells(&self.tracker));
        put("rounds.csv", csv.as_bytes())?;
        let mut fcsv = String::from("round,sessions,batches,bytes,ack_p50_ms,ack_p99_ms\n");
        for f in &self.fleet {
            let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.3}"));
            let _ = writeln!(fcsv, "{},{},{},{},{},{}", f.round, f.sessions, f.batches, f.bytes, o(f.ack_p50_ms), o(f.ack_p99_ms));
        }
        put("fleet.csv", fcsv.as_bytes())?;
        chart::write(dir, "curves", &self.curve_panels())?;
        chart::write(dir, "fleet", &self.fleet_panels())?;
        Ok(())
    }

    /// x = 0: the behaviour devices; x = r + 1: the policy deployed after round r.
    fn curve_panels(&self) -> Vec<Panel> {
        let pts = |f: &dyn Fn(&Metrics) -> f64| -> Vec<(f64, f64)> {
            std::iter::once((0.0, f(&self.behaviour)))
                .chain(self.rounds.iter().filter_map(|r| r.metrics.as_ref().map(|m| (r.round as f64 + 1.0, f(m)))))
                .collect()
        };
        let flat = |v: f64| -> Vec<(f64, f64)> { vec![(0.0, v), (self.rounds.len() as f64, v)] };
        vec![
            Panel {
                title: "Deployed policy by round: success".into(),
                x_label: "rounds trained (0 = behaviour)".into(),
                y_label: "success rate (test)".into(),
                series: vec![
                    Series { name: "SR@10".into(), points: pts(&|m| m.sr10) },
                    Series { name: "SR@30".into(), points: pts(&|m| m.sr30) },
                    Series { name: "tracker SR@30".into(), points: flat(self.tracker.sr30) },
                ],
            },
            Panel {
                title: "Deployed policy by round: turns and violations".into(),
                x_label: "rounds trained (0 = behaviour)".into(),
                y_label: "per session (test)".into(),
                series: vec![
                    Series { name: "NI".into(), points: pts(&|m| m.ni.mean) },
                    Series { name: "NV".into(), points: pts(&|m| m.nv.mean) },
                    Series { name: "tracker NI".into(), points: flat(self.tracker.ni.mean) },
                ],
            },
        ]
    }

    fn fleet_panels(&self) -> Vec<Panel> {
        let pts = |f: &dyn Fn(&FleetRow) -> Option<f64>| -> Vec<(f64, f64)> { self.fleet.iter().filter_map(|r| f(r).map(|v| (r.round as f64, v))).collect() };
        vec![
            Panel {
                title: "Uploads per round".into(),
                x_label: "round".into(),
                y_label: "sessions / KiB".into(),
                series: vec![
                    Series { name: "sessions".into(), points: pts(&|r| Some(r.sessions as f64)) },
                    Series { name: "KiB".into(), points: pts(&|r| Some(r.bytes as f64 / 1024.0)) },
                ],
            },
            Panel {
                title: "Upload → ack latency".into(),
                x_label: "round".into(),
                y_label: "milliseconds".into(),
                series: vec![Series { name: "p50".into(), points: pts(&|r| r.ack_p50_ms) }, Series { name: "p99".into(), points: pts(&|r| r.ack_p99_ms) }],
            },
        ]
    }
}

/// KiB figures as MiB, one decimal (`null` where a process did not report).
fn mib(kib: &[Option<u64>]) -> Vec<Option<f64>> {
    kib.iter().map(|k| k.map(|k| (k as f64 / 102.4).round() / 10.0)).collect()
}
