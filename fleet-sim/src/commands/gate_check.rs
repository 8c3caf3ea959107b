//! `fleet-sim gate-check`: the server's deployment gate against the simulator, over every ordered
//! pair (candidate, deployed) of a pool of policies of differing strength (docs/results.md, "The
//! gate against the simulator").

use super::{metrics_json, print_json};
use crate::cli::GateCheckArgs;
use crate::progress::Bars;
use irec_learn::experiment::gate_check::{self, GateCheckConfig, PooledPolicy};
use irec_learn::round::TrainerConfig;
use irec_server::rounds::gate::{decide, Decision, GateRule};
use irec_server::ServerConfig;
use serde_json::json;

/// What the gate and the simulator said about one ordered pair.
struct PairVerdict {
    published: bool,
    simulator_worse: bool,
    /// The simulator calls one of the two confidently better, and FQE orders them the same way.
    ranked_alike: Option<bool>,
}

fn judge(candidate: &PooledPolicy, deployed: &PooledPolicy, rule: GateRule) -> PairVerdict {
    let se = (candidate.fqe.se.powi(2) + deployed.fqe.se.powi(2)).sqrt();
    let published = decide(Some(candidate.fqe.value), Some(deployed.fqe.value), se, rule).decision == Decision::Published;
    let simulator_worse = candidate.metrics.confidently_worse_than(&deployed.metrics);
    let simulator_better = deployed.metrics.confidently_worse_than(&candidate.metrics);
    let ranked_alike = (simulator_worse || simulator_better).then_some((candidate.fqe.value < deployed.fqe.value) == simulator_worse);
    PairVerdict { published, simulator_worse, ranked_alike }
}

pub fn run(a: GateCheckArgs) -> anyhow::Result<()> {
    let (mut cfg, dev) = super::experiment(&a.exp)?;
    cfg.offline.algo = a.algo;
    let mut fqe = TrainerConfig::default().fqe;
    fqe.steps = a.fqe_steps.unwrap_or(fqe.steps);
    fqe.tau = a.fqe_tau.unwrap_or(fqe.tau);
    let check = GateCheckConfig::for_budget(cfg.offline.steps, fqe);
    let server = ServerConfig::default();
    let rule = GateRule { tolerance: server.gate_tolerance, z: server.gate_confidence_z };
    let report = gate_check::run(&cfg, &check, &dev, Some(&a.exp.cache), &Bars::default())?;

    println!("{:<34} {:>6} {:>6} {:>12} {:>18}", "policy (D: behaviour sessions)", "SR@10", "SR@30", "NI", "FQE");
    for p in &report.policies {
        println!("{:<34} {:>5.1}% {:>5.1}% {:>6.2}±{:<5.2} {:>9.4}±{:<8.4}", p.name, 100.0 * p.metrics.sr10, 100.0 * p.metrics.sr30, p.metrics.ni.mean, p.metrics.ni.se, p.fqe.value, p.fqe.se);
    }
    let pool = &report.policies;
    let verdicts: Vec<PairVerdict> =
        pool.iter().enumerate().flat_map(|(i, c)| pool.iter().enumerate().filter(move |(j, _)| *j != i).map(move |(_, d)| judge(c, d, rule))).collect();
    let count = |f: &dyn Fn(&PairVerdict) -> bool| verdicts.iter().filter(|v| f(v)).count();
    let worse = count(&|v| v.simulator_worse);
    let worse_refused = count(&|v| v.simulator_worse && !v.published);
    let not_worse = verdicts.len() - worse;
    let not_worse_published = count(&|v| !v.simulator_worse && v.published);
    let decided = count(&|v| v.ranked_alike.is_some());
    let alike = count(&|v| v.ranked_alike == Some(true));
    let agree = worse_refused + not_worse_published;
    let share = |k: usize, n: usize| if n == 0 { f64::NAN } else { k as f64 / n as f64 };
    println!(
        "{} ordered pairs: the gate agreed with the simulator on {agree} ({:.0}%); refused {worse_refused} of the {worse} candidates the simulator calls worse, published {not_worse_published} of the {not_worse} it does not",
        verdicts.len(),
        100.0 * share(agree, verdicts.len())
    );
    println!("where the simulator tells the two apart ({decided} pairs), FQE orders them the same way in {alike} ({:.0}%)", 100.0 * share(alike, decided));
    let policies: Vec<_> = pool.iter().map(|p| json!({"name": p.name, "metrics": metrics_json(&p.metrics), "fqe": p.fqe})).collect();
    print_json(
        a.exp.json,
        &json!({
            "seed": report.seed, "sessions_in_d": report.sessions_in_d, "fqe": report.fqe, "gate": {"tolerance": rule.tolerance, "z": rule.z},
            "policies": policies, "pairs": verdicts.len(), "agreement": share(agree, verdicts.len()),
            "simulator_worse": worse, "worse_refused": worse_refused, "not_worse": not_worse, "not_worse_published": not_worse_published,
            "simulator_decided": decided, "fqe_ranked_alike": alike,
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_learn::algo::fqe::FqeEstimate;
    use irec_world::metrics::{MeanSe, Metrics};

    fn policy(ni: f64, fqe: f64) -> PooledPolicy {
        PooledPolicy {
            name: format!("ni {ni}"),
            metrics: Metrics { ni: MeanSe { mean: ni, se: 0.5 }, ..Metrics::default() },
            fqe: FqeEstimate { value: fqe, se: 0.01, td: 0.0 },
        }
    }

    #[test]
    fn a_pair_is_judged_by_the_servers_rule_and_the_simulators_ni() {
        let rule = GateRule { tolerance: 0.0, z: 2.0 };
        let (good, bad) = (policy(6.0, -0.5), policy(12.0, -0.9));
        // The simulator calls the 12-turn policy worse (6 turns apart, s.e. 0.71), FQE agrees.
        let v = judge(&bad, &good, rule);
        assert!(v.simulator_worse && !v.published && v.ranked_alike == Some(true));
        let v = judge(&good, &bad, rule);
        assert!(!v.simulator_worse && v.published && v.ranked_alike == Some(true));
        // Within the simulator's noise (0.5 turns apart): no ranking to agree with.
        let v = judge(&policy(6.5, -0.5), &good, rule);
        assert!(!v.simulator_worse && v.ranked_alike.is_none());
        // FQE the wrong way round: published although worse.
        let v = judge(&policy(12.0, -0.4), &good, rule);
        assert!(v.simulator_worse && v.published && v.ranked_alike == Some(false));
    }
}
