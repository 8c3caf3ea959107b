//! `fleet-sim model-check`: the exactly-once protocol searched over every interleaving within a
//! bound larger than CI's (`irec_testkit::model_check`).

use super::print_json;
use crate::cli::ModelCheckArgs;
use irec_testkit::model_check::{check, Bound};
use serde_json::json;
use std::time::Instant;

pub fn run(a: ModelCheckArgs) -> anyhow::Result<()> {
    let bound = Bound {
        sessions: a.sessions,
        batch_size: a.batch_size,
        max_in_flight: a.max_in_flight,
        losses: a.losses,
        duplications: a.duplications,
        timeouts: a.timeouts,
        agent_crashes: a.agent_crashes,
        server_crashes: a.server_crashes,
    };
    anyhow::ensure!(bound.sessions > 0 && bound.batch_size > 0 && bound.max_in_flight > 0, "--sessions, --batch-size and --max-in-flight must be at least 1");
    let started = Instant::now();
    let r = check(bound);
    let seconds = started.elapsed().as_secs_f64();
    println!("{bound:?}: {} states, {} transitions, {seconds:.1} s", r.states, r.transitions);
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    print_json(a.json, &json!({ "bound": format!("{bound:?}"), "states": r.states, "transitions": r.transitions, "seconds": seconds, "violations": r.violations }));
    anyhow::ensure!(r.violations.is_empty(), "{} violation(s)", r.violations.len());
    Ok(())
}
