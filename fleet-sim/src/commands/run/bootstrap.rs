//! Round 0's ingredients, made before the fleet starts: the pretrained perception, the behaviour
//! policies (snapshots of the on-policy learner), every device's private settings, and the
//! reference figures the rounds are judged against (the behaviour devices and the rule-based
//! tracker on the same test sessions the server evaluates each round on).

use crate::progress::Bars;
use anyhow::Context;
use irec_edge_agent::sessions::first_profile;
use irec_edge_agent::DeviceConfig;
use irec_world::rng;
use irec_world::world_file::{self, WorldFingerprint};
use rand::Rng as _;
use irec_learn::experiment::behaviour::{train_on_policy, BehaviourDevice, Learner};
use irec_learn::experiment::compare::behaviour_on_test;
use irec_learn::experiment::{cache_key, ExperimentConfig, Lab, Progress};
use irec_learn::files::write_atomic;
use irec_world::metrics::Metrics;
use irec_model::{Checkpoint, PolicyModel};
use irec_world::policy::{evaluate_metrics, DeviceProfile, TrackerPolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The world file's name in the bootstrap folder.
pub const WORLD_FILE: &str = "world.irecw";

pub struct Bootstrap {
    /// The frozen text encoder + AttrNet, for the server's trainer.
    pub perception: PathBuf,
    /// The world with this perception's AttrNet probabilities, for the agents to map.
    pub world_file: PathBuf,
    /// Behaviour policy checkpoints; device i starts with `behaviour[i % len]`.
    pub behaviour: Vec<PathBuf>,
    /// Device i's private settings (its seed and noise σ); the reference figures use the profile
    /// the agent itself derives from them, so they describe the real fleet.
    pub devices: Vec<DeviceConfig>,
    /// The devices running their behaviour policies, with their noise and bias, on the test split.
    pub behaviour_metrics: Metrics,
    pub tracker_metrics: Metrics,
    pub seconds: f64,
}

/// Device `i`'s private settings: its seed and noise σ, derived from the fleet seed alone, so a
/// sampled study needs no record of a device that never took part.
pub fn device_config(cfg: &ExperimentConfig, i: u64) -> DeviceConfig {
    // Seeds stay below 2^63: the agents read them from TOML, whose integers are signed.
    let seed = rng::derive(rng::derive(cfg.seed, rng::stream::DEVICES), i) & (i64::MAX as u64);
    let (lo, hi) = cfg.behaviour.noise_sigma;
    let noise_sigma = if hi > lo { rng::rng(seed).random_range(lo..hi) } else { lo };
    DeviceConfig { seed, noise_sigma, ..DeviceConfig::default() }
}

/// The on-policy learner's snapshots that become the behaviour policies, or the ones a previous
/// run with the same world, perception, on-policy settings and seed left in `cache` (the same
/// checkpoints: the learner is deterministic for its seed).
fn behaviour_policies(cfg: &ExperimentConfig, lab: &Lab, device: &candle_core::Device, cache: Option<&Path>, bars: &Bars) -> anyhow::Result<Vec<Checkpoint>> {
    let key = cache_key(&(&cfg.world, &cfg.pretrain, &cfg.on_policy, cfg.seed, irec_model::checkpoint::FORMAT_VERSION));
    let file = |dir: &Path, k: usize| dir.join(format!("behaviour-{key:016x}-{k}.ckpt"));
    let list = cache.map(|dir| dir.join(format!("behaviour-{key:016x}.json")));
    let cached = list.as_ref().zip(cache).and_then(|(list, dir)| {
        let n: usize = serde_json::from_slice(&std::fs::read(list).ok()?).ok()?;
        (0..n).map(|k| Checkpoint::from_bytes(&std::fs::read(file(dir, k)).ok()?, device).ok()).collect::<Option<Vec<_>>>()
    });
    if let Some(snapshots) = cached.filter(|s| !s.is_empty()) {
        bars.message("behaviour policies loaded from cache");
        return Ok(snapshots);
    }
    let onp = train_on_policy(lab, &cfg.on_policy, cfg.seed, Learner::Behaviour, bars)?;
    let snapshots: Vec<Checkpoint> = onp.snapshots.into_iter().map(|(_, ck)| ck).collect();
    if let (Some(list), Some(dir)) = (&list, cache) {
        // A cache that cannot be written costs the next run time, not this one its result. Each
        // file whole or not at all, the list last: runs sharing the cache never read half of one.
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            for (k, ck) in snapshots.iter().enumerate() {
                write_atomic(&file(dir, k), &ck.to_bytes().map_err(std::io::Error::other)?)?;
            }
            write_atomic(list, &serde_json::to_vec(&snapshots.len()).unwrap_or_default())
        });
        if let Err(e) = written {
            bars.message(&format!("behaviour policies not cached in {}: {e}", dir.display()));
        }
    }
    Ok(snapshots)
}

#[allow(clippy::too_many_arguments)]
pub fn bootstrap(
    cfg: &ExperimentConfig,
    agents: usize,
    dir: &Path,
    device: &candle_core::Device,
    cache: Option<&Path>,
    eval_sessions: usize,
    eval_seed: u64,
    bars: &Bars,
) -> anyhow::Result<Bootstrap> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lab = Lab::build(&cfg.world, &cfg.pretrain, device, cache, bars)?;
    let snapshots = behaviour_policies(cfg, &lab, device, cache, bars)?;
    let perception = dir.join("perception.ckpt");
    std::fs::write(&perception, lab.perception.to_checkpoint().to_bytes()?).with_context(|| format!("writing {}", perception.display()))?;
    let world_file = dir.join(WORLD_FILE);
    let fingerprint = WorldFingerprint::of(&cfg.world).context("reading the world's files")?;
    world_file::write(&world_file, &lab.world, fingerprint, &[lab.featurizer.world_file_section()])?;
    let mut behaviour = Vec::new();
    let mut models = Vec::new();
    for (k, ck) in snapshots.iter().enumerate() {
        let path = dir.join(format!("behaviour-{k}.ckpt"));
        std::fs::write(&path, ck.to_bytes()?).with_context(|| format!("writing {}", path.display()))?;
        behaviour.push(path);
        models.push(Arc::new(PolicyModel::from_checkpoint(ck, device)?));
    }
    anyhow::ensure!(!models.is_empty(), "the on-policy learner left no snapshot to behave with");

    let devices: Vec<DeviceConfig> = (0..agents as u64).map(|i| device_config(cfg, i)).collect();
    // The very profile each agent will start from (household, noise, empty bias).
    let profiles: Vec<DeviceProfile> = devices.iter().map(|d| first_profile(d, &lab.collect_env)).collect();

    bars.start("reference figures (behaviour devices, tracker)", 2);
    let fleet: Vec<BehaviourDevice> =
        profiles.into_iter().enumerate().map(|(i, profile)| BehaviourDevice { profile, policy: models[i % models.len()].clone(), sample: false }).collect();
    let behaviour_metrics = behaviour_on_test(&lab, &fleet, eval_sessions, eval_seed)?;
    bars.advance(1);
    let lexicon = Arc::new(lab.world.lexicon.clone());
    let index = Arc::new(lab.eval_env.index.clone());
    let tracker_metrics = evaluate_metrics(&lab.eval_env, || TrackerPolicy::new(lexicon.clone(), index.clone()), eval_sessions, eval_seed, 2);
    bars.advance(1);
    bars.finish();
    Ok(Bootstrap { perception, world_file, behaviour, devices, behaviour_metrics, tracker_metrics, seconds: started.elapsed().as_secs_f64() })
}
