//! The deployment gate's evidence, checked against the simulator. The server's rounds never give
//! the gate a candidate the simulator calls worse (every learned round is within a point of the
//! last), so their agreement says nothing about whether the gate would notice one. Here a pool of
//! policies of known, differing strength — the behaviour sources at each of their training stages,
//! imitation and the offline learner after few and many steps — is estimated by fitted Q
//! evaluation on one D, with the settings and the seed the server's trainer gives a candidate and
//! the deployed policy, and run greedily on the simulator's test sessions. fleet-sim then sets
//! every ordered pair of the pool against the server's gate rule and the simulator's verdict.

use super::behaviour::{behaviour_data, BehaviourData};
use super::{ExperimentConfig, Lab, Progress, Result};
use crate::algo::bc::BehaviourCloning;
use crate::algo::fqe::{self, FqeConfig, FqeEstimate};
use crate::algo::{fit, Learner as OfflineLearner, LearnerSettings, OfflineAlgorithm, SessionDataset};
use irec_model::{Checkpoint, PolicyModel};
use irec_world::metrics::Metrics;
use irec_world::rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the check estimates with, and which training stages make up the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateCheckConfig {
    /// The estimator, as the server's trainer runs it (`[trainer.fqe]`).
    pub fqe: FqeConfig,
    /// Imitation's gradient steps at which a policy joins the pool (cumulative, increasing).
    pub imitation_stages: Vec<usize>,
    /// The offline learner's gradient steps at which a policy joins the pool (cumulative,
    /// increasing; 0 is the untrained recommender).
    pub offline_stages: Vec<usize>,
}

impl Default for GateCheckConfig {
    /// The server trainer's estimator over the quick preset's offline budget.
    fn default() -> Self {
        GateCheckConfig::for_budget(super::OfflineConfig::quick().steps, crate::round::TrainerConfig::default().fqe)
    }
}

impl GateCheckConfig {
    /// The server's estimator, and stages spread over the experiment's offline budget.
    pub fn for_budget(steps: usize, fqe: FqeConfig) -> GateCheckConfig {
        let at = |f: f64| ((steps as f64 * f).round() as usize).max(1);
        let stages = |mut v: Vec<usize>| {
            v.dedup();
            v
        };
        GateCheckConfig { fqe, imitation_stages: stages(vec![at(0.02), at(0.1), steps]), offline_stages: stages(vec![0, at(0.1), at(0.33), steps]) }
    }

    /// Refuses a pool that cannot be built, naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.fqe.validate("gate_check.fqe")?;
        for (name, stages) in [("imitation_stages", &self.imitation_stages), ("offline_stages", &self.offline_stages)] {
            if stages.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("gate_check.{name} must be strictly increasing (got {stages:?})"));
            }
        }
        Ok(())
    }
}

/// One policy of the pool with its two kinds of evidence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PooledPolicy {
    pub name: String,
    /// Greedy, without device noise, on the test sessions.
    pub metrics: Metrics,
    /// Fitted Q evaluation on D.
    pub fqe: FqeEstimate,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateCheckReport {
    pub seed: u64,
    pub sessions_in_d: usize,
    pub fqe: FqeConfig,
    pub policies: Vec<PooledPolicy>,
}

/// Builds the world, D and the pool, and gathers each policy's evidence.
pub fn run(cfg: &ExperimentConfig, check: &GateCheckConfig, device: &candle_core::Device, cache: Option<&Path>, progress: &dyn Progress) -> Result<GateCheckReport> {
    let lab = Lab::build(&cfg.world, &cfg.pretrain, device, cache, progress)?;
    run_in(lab, cfg, check, progress)
}

/// The same in a world already built (`cfg.world` and `cfg.pretrain` are not read).
pub fn run_in(lab: Lab, cfg: &ExperimentConfig, check: &GateCheckConfig, progress: &dyn Progress) -> Result<GateCheckReport> {
    check.validate().map_err(super::ExperimentError::Config)?;
    let lab = lab.collecting_in(cfg.behaviour.world);
    let BehaviourData { source, sessions: d, .. } = behaviour_data(&lab, cfg, progress)?;
    let raw = SessionDataset::new(&d, &lab.featurizer, lab.heads())?;
    let data = raw.clone().with_objective(&cfg.offline.objective);

    let mut pool: Vec<(String, Checkpoint)> = source.snapshots.iter().map(|(stage, ck)| (format!("behaviour source, stage {stage}"), ck.clone())).collect();
    let oc = &cfg.offline;
    let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::TRAINING));
    let mut bc = BehaviourCloning::new(&lab.perception, rng::derive(cfg.seed, 31), &oc.bc)?;
    let mut done = 0;
    for &stage in &check.imitation_stages {
        fit(&mut bc, &raw, stage - done, oc.bc.optim.batch_sessions, oc.log_every, &mut r, |_| {})?;
        done = stage;
        pool.push((format!("imitation, {stage} steps"), bc.recommender().export("imitation", stage as u64)));
    }
    let settings = LearnerSettings { sac: &oc.sac, cql: &oc.cql, bcq: &oc.bcq, iql: &oc.iql };
    let mut learner = OfflineLearner::new(oc.algo, &lab.perception, rng::derive(cfg.seed, 33), settings, None)?;
    let bs = learner.batch_sessions();
    let mut done = 0;
    for &stage in &check.offline_stages {
        fit(&mut learner, &data, stage - done, bs, oc.log_every, &mut r, |_| {})?;
        done = stage;
        pool.push((format!("offline ({}), {stage} steps", oc.algo.name()), learner.recommender().export("offline", stage as u64)));
    }

    let eval_seed = rng::derive(cfg.seed, rng::stream::EVALUATION);
    // One estimator seed for every policy, as the server fits candidate and deployed alike.
    let fqe_seed = rng::derive(cfg.seed, 3);
    let mut policies = Vec::with_capacity(pool.len());
    progress.start("fitted Q evaluation and test sessions per policy", pool.len() as u64);
    for (name, ck) in pool {
        let model = PolicyModel::from_checkpoint(&ck, &lab.device)?;
        let mut fr = rng::rng(fqe_seed);
        let estimate = fqe::evaluate(&model, &data, &check.fqe, fqe_seed, &mut fr, &lab.device, &|| true)?.unwrap_or_default();
        let metrics = lab.evaluate_checkpoint(&ck, cfg.eval_sessions, eval_seed)?;
        progress.message(&format!("{name}: SR@10 {:.1}% NI {:.2}, FQE {:.4} ± {:.4}", 100.0 * metrics.sr10, metrics.ni.mean, estimate.value, estimate.se));
        policies.push(PooledPolicy { name, metrics, fqe: estimate });
        progress.advance(1);
    }
    progress.finish();
    Ok(GateCheckReport { seed: cfg.seed, sessions_in_d: d.len(), fqe: check.fqe.clone(), policies })
}
