//! The commands behind the CLI.

use crate::cli::{Baseline, CatalogArgs, Cli, Command, PoolArg, SimulateArgs, WorldArgs};
use anyhow::Context;
use irec_shared::catalog::{Attribute, GeneratorConfig};
use irec_shared::metrics::{render_table, Metrics};
use irec_shared::policy::{evaluate, OraclePolicy, RandomPolicy, TrackerPolicy};
use irec_shared::sim::{Environment, Pool, World, WorldConfig};
use serde_json::json;
use std::sync::Arc;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(a) => simulate(a),
        Command::Catalog(a) => catalog(a),
    }
}

/// Builds the world the arguments describe.
pub fn world(args: &WorldArgs) -> anyhow::Result<World> {
    let mut cfg = WorldConfig {
        catalog: GeneratorConfig { items: args.items, seed: args.world_seed },
        catalog_path: args.catalog.clone(),
        features_path: args.features.clone(),
        ..WorldConfig::default()
    };
    cfg.features.seed = args.world_seed;
    World::build(&cfg).context("building the catalog")
}

/// The metrics object every JSON report uses.
pub fn metrics_json(m: &Metrics) -> serde_json::Value {
    json!({
        "sr10": m.sr10, "sr20": m.sr20, "sr30": m.sr30,
        "ni": {"mean": m.ni.mean, "se": m.ni.se},
        "nv": {"mean": m.nv.mean, "se": m.nv.se},
    })
}

fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
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
    if a.json {
        let mut v = json!({"policy": name, "sessions": a.sessions, "seed": a.seed});
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), metrics_json(&m)) {
            obj.extend(more);
        }
        println!("{v}");
    }
    Ok(())
}

fn catalog(a: CatalogArgs) -> anyhow::Result<()> {
    let world = world(&a.world)?;
    let cat = &world.catalog;
    let m = cat.marginals();
    if let Some(path) = &a.write {
        std::fs::write(path, irec_shared::catalog::csv::write(cat)).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{} items: {} train, {} test", cat.len(), cat.split.train.len(), cat.split.test.len());
    if a.stats {
        println!("{}", m.render(&cat.schema));
    }
    if a.json {
        let mut attrs = serde_json::Map::new();
        for at in Attribute::ALL {
            let values: serde_json::Map<String, serde_json::Value> = cat.schema.values[at.index()]
                .iter()
                .zip(&m.values[at.index()])
                .map(|(n, c)| (n.clone(), json!(c)))
                .collect();
            attrs.insert(
                at.column().to_string(),
                json!({"values": values, "empty": m.empty[at.index()], "multi_valued": m.multi[at.index()]}),
            );
        }
        println!(
            "{}",
            json!({"items": cat.len(), "train": cat.split.train.len(), "test": cat.split.test.len(), "attributes": attrs})
        );
    }
    Ok(())
}
