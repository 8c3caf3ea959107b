//! `fleet-sim simulate`: a baseline policy against simulated users.

use super::{metrics_json, print_json, world};
use crate::cli::{Baseline, PoolArg, SimulateArgs};
use irec_world::metrics::{render_table, Metrics};
use irec_world::policy::{evaluate, OraclePolicy, RandomPolicy, TrackerPolicy};
use irec_world::sim::{Environment, Pool};
use serde_json::json;
use std::sync::Arc;

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {

    let world = Arc::new(world(&a.world)?);
    let pool = match a.pool {
        PoolArg::Train => Pool::Train,
        PoolArg::Test => Pool::Test,
    };
    let env = Environment::with_truth(world.clone(), pool);
    let ts = match a.policy {
        Baseline::Random => evaluate(&env, || RandomPolicy::new(&world.catalog.schema), a.sessions, a.seed, a.threads),
        Baseline::Oracle => evaluate(&env, OraclePolicy::default, a.sessions, a.seed, a.threads),
        Baseline::Tracker => {
            let lexicon = Arc::new(world.lexicon.clone());
            let index = Arc::new(env.index.clone());
            evaluate(&env, || TrackerPolicy::new(lexicon.clone(), index.clone()), a.sessions, a.seed, a.threads)
        }
    };
    let m = Metrics::of_transcripts(&ts, env.reward.max_turns as u32);
    let name = format!("{:?}", a.policy).to_lowercase();
    println!("{}", render_table(&[(name.clone(), m)]));
    for t in ts.iter().take(a.show) {
        println!("{}", t.render());
    }
    let mut v = json!({"policy": name, "sessions": a.sessions, "seed": a.seed});
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), metrics_json(&m)) {
        obj.extend(more);
    }
    print_json(a.json, &v);
    Ok(())
}

