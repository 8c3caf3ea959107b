//! `fleet-sim world`: a world file for agents to map (see `irec_world::world_file`).

use super::{print_json, world_config};
use crate::cli::WorldFileArgs;
use anyhow::Context;
use irec_learn::algo::PerceptionWeights;
use irec_model::{Checkpoint, Featurizer};
use irec_world::sim::{World, WorldConfig};
use irec_world::world_file::{self, WorldFingerprint};
use serde_json::json;
use std::time::Instant;

pub fn run(a: WorldFileArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = match &a.config {
        Some(path) => world_of_toml(path)?,
        None => world_config(&a.world),
    };
    let fingerprint = WorldFingerprint::of(&config).context("reading the world's files")?;
    let world = World::build(&config).context("building the world")?;
    let featurizer = match &a.perception {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let device = candle_core::Device::Cpu;
            let ck = Checkpoint::from_bytes(&bytes, &device).with_context(|| format!("{} is not a checkpoint", path.display()))?;
            let weights = PerceptionWeights::from_checkpoint(&ck, &device).with_context(|| format!("{} carries no perception", path.display()))?;
            Some(Featurizer::new(weights.perception.clone(), &world.features)?)
        }
        None => None,
    };
    let extra: Vec<_> = featurizer.iter().map(|f| f.world_file_section()).collect();
    world_file::write(&a.out, &world, fingerprint, &extra)?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: world {fingerprint}, {} items, {:.1} MB{}, in {:.1} s",
        a.out.display(),
        world.catalog.len(),
        bytes as f64 / 1e6,
        if featurizer.is_some() { " with AttrNet probabilities" } else { "" },
        started.elapsed().as_secs_f64()
    );
    print_json(a.json, &json!({"path": a.out, "fingerprint": fingerprint.hex(), "items": world.catalog.len(), "bytes": bytes, "probabilities": featurizer.is_some()}));
    Ok(())
}

/// The `[world]` table of a server's or an agent's TOML (defaults where it has none).
fn world_of_toml(path: &std::path::Path) -> anyhow::Result<WorldConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match table.get("world") {
        Some(w) => w.clone().try_into().with_context(|| format!("{}: [world]", path.display())),
        None => Ok(WorldConfig::default()),
    }
}
