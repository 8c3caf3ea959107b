//! Experiments on the simulated world: the pieces fleet-sim and the server assemble.
//!
//! - [`ExperimentConfig`]: every knob, with the `quick` and `paper` presets.
//! - [`Lab`]: the world with its pretrained perception, featurizer and the two environments
//!   (collection on the train split, evaluation on the test split with AttrNet's attributes).
//! - [`behaviour`]: on-policy training, behaviour devices, experience collection.
//! - [`compare`]: the paper's Table 2, in-process.
//! - [`ablation`]: offline-learner variants trained on one D.
//! - [`gate_check`]: the deployment gate's evidence (FQE) against the simulator, over a pool of
//!   policies of differing strength.
//! - [`throughput`]: simulated turns per second with the neural policy (`fleet-sim bench-sim`).
//! - [`Progress`]: how long steps report; [`LogLines`] writes it as periodic log lines.

pub mod ablation;
pub mod behaviour;
pub mod compare;
pub mod gate_check;
pub mod throughput;
mod log_lines;

pub use log_lines::LogLines;

use crate::algo::pretrain::{pretrain, PretrainConfig, PretrainReport};
use crate::algo::{PerceptionWeights, Recommender};
use irec_world::catalog::AttrTable;
use irec_world::metrics::Metrics;
use irec_model::heads::MultiHead;
use irec_model::tracker::StateTracker;
use irec_model::{rollout, Acting, Checkpoint, Featurizer, PolicyModel};
use irec_world::sim::SessionSpec;
use irec_world::sim::{Environment, Pool, RewardConfig, Transcript, World, WorldConfig};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use behaviour::{BehaviourConfig, OnPolicyConfig};
pub use compare::{CompareReport, Method, OfflineConfig};

/// Errors of the experiment layer.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("catalog: {0}")]
    Catalog(#[from] irec_world::catalog::csv::CatalogError),
    #[error("model: {0}")]
    Model(#[from] irec_model::ModelError),
    #[error("tensor library: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cache {path}: {source}")]
    Cache { path: String, source: std::io::Error },
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, ExperimentError>;

/// Reports progress of long steps (fleet-sim draws progress bars; tests stay silent).
pub trait Progress: Sync {
    /// A step with `total` units of work begins.
    fn start(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    /// The current step is over.
    fn finish(&self) {}
    fn message(&self, _msg: &str) {}
}

/// No progress output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;
impl Progress for Silent {}

/// Every knob of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExperimentConfig {
    pub world: WorldConfig,
    pub pretrain: PretrainConfig,
    pub on_policy: OnPolicyConfig,
    pub behaviour: BehaviourConfig,
    pub offline: OfflineConfig,
    /// Evaluation sessions per method, on test-split targets.
    pub eval_sessions: usize,
    /// Seed of training and evaluation (the world has its own seeds).
    pub seed: u64,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig::quick()
    }
}

/// Named presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Minutes on a 2-core machine.
    Quick,
    /// The paper's scale (40,000 behaviour sessions, 1,000 evaluation sessions).
    Paper,
}

impl ExperimentConfig {
    pub fn quick() -> ExperimentConfig {
        ExperimentConfig {
            world: WorldConfig::default(),
            pretrain: PretrainConfig::default(),
            on_policy: OnPolicyConfig::quick(),
            behaviour: BehaviourConfig::quick(),
            offline: OfflineConfig::quick(),
            eval_sessions: 500,
            seed: 1,
        }
    }

    pub fn paper() -> ExperimentConfig {
        ExperimentConfig {
            world: WorldConfig::default(),
            pretrain: PretrainConfig::default(),
            on_policy: OnPolicyConfig::paper(),
            behaviour: BehaviourConfig::paper(),
            offline: OfflineConfig::paper(),
            eval_sessions: 1_000,
            seed: 1,
        }
    }

    pub fn preset(p: Preset) -> ExperimentConfig {
        match p {
            Preset::Quick => ExperimentConfig::quick(),
            Preset::Paper => ExperimentConfig::paper(),
        }
    }

    /// Reads a TOML file; missing fields keep the defaults. Unusable values are refused with
    /// the field's TOML path.
    pub fn from_toml(text: &str) -> Result<ExperimentConfig> {
        let cfg: ExperimentConfig = toml::from_str(text).map_err(|e| ExperimentError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        self.offline.validate().map_err(ExperimentError::Config)?;
        self.pretrain.validate("pretrain").map_err(ExperimentError::Config)?;
        if self.behaviour.sessions == 0 || self.behaviour.devices == 0 {
            return Err(ExperimentError::Config("behaviour.sessions and behaviour.devices must be at least 1".into()));
        }
        if self.eval_sessions == 0 {
            return Err(ExperimentError::Config("eval_sessions must be at least 1".into()));
        }
        Ok(())
    }
}

/// The world, its pretrained perception, and the environments the recommender acts in.
#[derive(Clone, Debug)]
pub struct Lab {
    pub world: Arc<World>,
    pub perception: PerceptionWeights,
    pub pretrain_report: PretrainReport,
    pub featurizer: Arc<Featurizer>,
    /// AttrNet's predicted cells of every item.
    pub predicted: Arc<AttrTable>,
    /// Train-split targets, ground-truth retrieval (train items are well labelled): where devices
    /// collect experience and the on-policy learner trains.
    pub collect_env: Environment,
    /// Test-split targets ("newly added" items), retrieval on AttrNet's predictions.
    pub eval_env: Environment,
    pub device: Device,
}

/// A stable key for files cached under a configuration (FNV-1a of its JSON).
pub fn cache_key<T: Serialize>(value: &T) -> u64 {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl Lab {
    /// Builds the world and pretrains its perception, or loads it from `cache` when a previous
    /// run with the same world and pretraining settings left it there.
    pub fn build(world_cfg: &WorldConfig, pretrain_cfg: &PretrainConfig, device: &Device, cache: Option<&Path>, progress: &dyn Progress) -> Result<Lab> {
        let world = Arc::new(World::build(world_cfg)?);
        let key = cache_key(&(world_cfg, pretrain_cfg, irec_model::checkpoint::FORMAT_VERSION));
        let files = cache.map(|dir| (dir.join(format!("perception-{key:016x}.ckpt")), dir.join(format!("perception-{key:016x}.json"))));
        let cached = files.as_ref().and_then(|(ck, rep)| {
            let bytes = std::fs::read(ck).ok()?;
            let report: PretrainReport = serde_json::from_slice(&std::fs::read(rep).ok()?).ok()?;
            let ck = Checkpoint::from_bytes(&bytes, device).ok()?;
            Some((PerceptionWeights::from_checkpoint(&ck, device).ok()?, report))
        });
        let (perception, pretrain_report) = match cached {
            Some(x) => {
                progress.message("pretrained perception loaded from cache");
                x
            }
            None => {
                progress.start("pretraining text encoder and AttrNet", 1);
                let out = pretrain(&world, pretrain_cfg, device)?;
                progress.advance(1);
                progress.finish();
                if let Some((ck, rep)) = &files {
                    let io = |source, path: &PathBuf| ExperimentError::Cache { path: path.display().to_string(), source };
                    if let Some(dir) = ck.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| io(e, ck))?;
                    }
                    std::fs::write(ck, out.0.to_checkpoint().to_bytes()?).map_err(|e| io(e, ck))?;
                    std::fs::write(rep, serde_json::to_vec_pretty(&out.1).unwrap_or_default()).map_err(|e| io(e, rep))?;
                }
                out
            }
        };
        Lab::from_perception(world, perception, pretrain_report, device)
    }

    pub fn from_perception(world: Arc<World>, perception: PerceptionWeights, pretrain_report: PretrainReport, device: &Device) -> Result<Lab> {
        let featurizer = Arc::new(Featurizer::new(perception.perception.clone(), &world.features)?);
        let predicted = Arc::new(featurizer.predicted_attrs());
        let reward = RewardConfig::default();
        let collect_env = Environment::new(world.clone(), Pool::Train, &world.truth, predicted.clone(), reward.clone());
        let eval_env = Environment::new(world.clone(), Pool::Test, &predicted, predicted.clone(), reward);
        Ok(Lab { world, perception, pretrain_report, featurizer, predicted, collect_env, eval_env, device: device.clone() })
    }

    pub fn heads(&self) -> &[usize] {
        &self.perception.config.heads
    }

    /// This lab with experience collected (and the on-policy learner trained) in `world`.
    pub fn collecting_in(mut self, world: behaviour::CollectionWorld) -> Lab {
        if world == behaviour::CollectionWorld::Evaluation {
            self.collect_env = self.eval_env.clone();
        }
        self
    }

    /// Evaluates a tracker/policy pair greedily on evaluation sessions `0..sessions` of `seed`.
    pub fn evaluate_parts(&self, tracker: &StateTracker, policy: &MultiHead, sessions: usize, seed: u64) -> Result<(Metrics, Vec<Transcript>)> {
        let specs: Vec<SessionSpec> = (0..sessions as u64).map(|i| SessionSpec::numbered(&self.eval_env, seed, i)).collect();
        let mut transcripts = Vec::with_capacity(sessions);
        for chunk in specs.chunks(256) {
            transcripts.extend(rollout(&self.eval_env, tracker, policy, &self.featurizer, self.heads(), chunk, &Acting::greedy())?);
        }
        let m = Metrics::of_transcripts(&transcripts, self.eval_env.reward.max_turns as u32);
        Ok((m, transcripts))
    }

    /// The rule-based tracker's evaluation sessions `0..sessions` of `seed`.
    pub fn tracker_transcripts(&self, sessions: usize, seed: u64) -> Vec<Transcript> {
        let lexicon = std::sync::Arc::new(self.world.lexicon.clone());
        let index = std::sync::Arc::new(self.eval_env.index.clone());
        irec_world::policy::evaluate(&self.eval_env, || irec_world::policy::TrackerPolicy::new(lexicon.clone(), index.clone()), sessions, seed, 2)
    }

    /// The oracle's evaluation sessions `0..sessions` of `seed` (it asks for every wish).
    pub fn oracle_transcripts(&self, sessions: usize, seed: u64) -> Vec<Transcript> {
        irec_world::policy::evaluate(&self.eval_env, irec_world::policy::OraclePolicy::default, sessions, seed, 2)
    }

    pub fn evaluate(&self, rec: &Recommender, sessions: usize, seed: u64) -> Result<Metrics> {
        Ok(self.evaluate_parts(&rec.tracker, &rec.policy, sessions, seed)?.0)
    }

    pub fn evaluate_checkpoint(&self, ck: &Checkpoint, sessions: usize, seed: u64) -> Result<Metrics> {
        let model = PolicyModel::from_checkpoint(ck, &self.device)?;
        Ok(self.evaluate_parts(&model.tracker, &model.policy, sessions, seed)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        ExperimentConfig::from_toml(text).map_or_else(|e| e.to_string(), |_| "accepted".into())
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        assert_eq!(refused(""), "accepted");
        assert!(refused("[offline.cql]\nalpha = -1.0").contains("offline.cql.alpha"));
        assert!(refused("[offline.sac]\ntemperature = 0.0").contains("offline.sac.temperature"));
        assert!(refused("[offline]\nrounds = 2\nround_sessions = 0").contains("offline.round_sessions"));
        assert!(refused("[offline.objective]\nkind = \"turn_cost\"\ncost = -1.0\nfailure_penalty = 0.0").contains("offline.objective.cost"));
        assert!(refused("[offline.objective]\nkind = \"fastest\"").contains("fastest"));
        assert!(refused("[pretrain]\nrequest_repeats = 0.5").contains("pretrain.request_repeats"));
        assert_eq!(refused("[pretrain]\nrequest_repeats = 3.0"), "accepted");
    }
}
