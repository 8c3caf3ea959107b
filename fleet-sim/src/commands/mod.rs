//! The commands behind the CLI.

use crate::cli::{Cli, Command, WorldArgs};
use anyhow::Context;
use irec_world::catalog::GeneratorConfig;
use irec_world::metrics::Metrics;
use irec_world::sim::{World, WorldConfig};
use serde_json::json;

mod ablate;
mod bench;
mod bench_ingest;
mod bench_sim;
mod catalog;
pub mod chaos;
mod compare;
mod export;
mod gate_check;
mod world_file;
mod model_check;
mod run;
mod simulate;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(a) => simulate::run(a),
        Command::Catalog(a) => catalog::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Ablate(a) => ablate::run(a),
        Command::GateCheck(a) => gate_check::run(a),
        Command::BenchTrain(a) => bench::run(a),
        Command::BenchIngest(a) => bench_ingest::run(a),
        Command::BenchSim(a) => bench_sim::run(a),
        Command::Chaos(a) => chaos::run(a),
        Command::Run(a) => run::run(a),
        Command::ModelCheck(a) => model_check::run(a),
        Command::Export(a) => export::run(a),
        Command::World(a) => world_file::run(a),
        Command::Server(a) => Ok(irec_server::cli::execute(<irec_server::cli::Cli as clap::Parser>::parse_from(
            std::iter::once("irec-server".to_string()).chain(a.args),
        ))?),
        Command::Agent(a) => Ok(irec_edge_agent::cli::execute(<irec_edge_agent::cli::Cli as clap::Parser>::parse_from(
            std::iter::once("edge-agent".to_string()).chain(a.args),
        ))?),
    }
}

/// Prints `value` as the last line of stdout when `--json` was given.
pub fn print_json(json: bool, value: &serde_json::Value) {
    if json {
        println!("{value}");
    }
}

/// The compute device named on the command line.
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    Ok(irec_model::device::open(name)?)
}

/// The world configuration the arguments describe.
pub fn world_config(args: &WorldArgs) -> WorldConfig {
    let mut cfg = WorldConfig {
        catalog: GeneratorConfig { items: args.items, seed: args.world_seed },
        catalog_path: args.catalog.clone(),
        features_path: args.features.clone(),
        ..WorldConfig::default()
    };
    cfg.features.seed = args.world_seed;
    cfg
}

/// Builds the world the arguments describe.
pub fn world(args: &WorldArgs) -> anyhow::Result<World> {
    World::build(&world_config(args)).context("building the catalog")
}

/// The metrics object every JSON report uses.
pub fn metrics_json(m: &Metrics) -> serde_json::Value {
    json!({
        "sr10": m.sr10, "sr20": m.sr20, "sr30": m.sr30,
        "ni": {"mean": m.ni.mean, "se": m.ni.se},
        "nv": {"mean": m.nv.mean, "se": m.nv.se},
    })
}


/// A preset's experiment settings, overridden field by field by a TOML file's.
pub fn experiment_config(preset: irec_learn::experiment::Preset, path: Option<&std::path::Path>) -> anyhow::Result<irec_learn::experiment::ExperimentConfig> {
    use irec_learn::experiment::ExperimentConfig;
    let Some(path) = path else { return Ok(ExperimentConfig::preset(preset)) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut merged: toml::Table = toml::from_str(&toml::to_string(&ExperimentConfig::preset(preset))?)?;
    merge(&mut merged, toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?);
    Ok(ExperimentConfig::from_toml(&toml::to_string(&merged)?)?)
}

/// The preset with the file's overrides and the seed, and the device, an experiment's arguments name.
pub fn experiment(a: &crate::cli::ExperimentArgs) -> anyhow::Result<(irec_learn::experiment::ExperimentConfig, candle_core::Device)> {
    use irec_learn::experiment::Preset;
    let preset = match a.preset {
        crate::cli::PresetArg::Quick => Preset::Quick,
        crate::cli::PresetArg::Paper => Preset::Paper,
    };
    let mut cfg = experiment_config(preset, a.config.as_deref())?;
    cfg.seed = a.seed;
    Ok((cfg, device(&a.device)?))
}

/// Overrides `base` field by field; a table naming its `kind` (a choice such as the objective)
/// replaces the whole table, since another kind's fields would not apply to it.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !o.contains_key("kind") => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
