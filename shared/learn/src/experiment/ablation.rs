//! Offline-learner variants on one D: the same world, behaviour policies, devices and logged
//! sessions, and the same test sessions, for every variant, so their figures differ only by the
//! learner's settings. Each variant reports its deployed policy (the actor, greedy) and, as a
//! diagnostic, its critic's own greedy policy (argmax_d Q_1,d per head).

use super::behaviour::{behaviour_data, collect, deploy, BehaviourData};
use super::compare::{behaviour_on_test, OfflineConfig};
use super::{ExperimentConfig, Lab, Progress, Result};
use crate::algo::bc::BehaviourCloning;
use crate::algo::{fit, Learner as OfflineLearner, LearnerSettings, OfflineAlgorithm, SessionDataset};
use irec_world::metrics::Metrics;
use irec_world::misses::Misses;
use irec_model::PolicyModel;
use irec_world::rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One learner setting to try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub offline: OfflineConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantRow {
    pub name: String,
    /// The deployed policy (actor, greedy) after training on D.
    pub offline: Metrics,
    /// The critic's greedy policy on the same tracker states.
    pub critic_greedy: Metrics,
    /// Why the deployed policy's test sessions were not done by turn 10.
    pub misses: Misses,
    /// After each iterative round (deploy with the devices' noise → collect → train on D ∪ D′).
    pub rounds: Vec<Metrics>,
    /// Why the test sessions were not done by turn 10, after each round.
    pub round_misses: Vec<Misses>,
    /// The offline policy's unsuccessful test sessions, rendered (for reading what goes wrong).
    #[serde(skip)]
    pub failures: Vec<String>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AblationReport {
    pub seed: u64,
    /// The paper's reward as D logged it: mean of success turns, of the turn just before a
    /// success (a near miss), and of every other turn.
    pub logged_reward: LoggedReward,
    pub behaviour_on_test: Metrics,
    pub imitation: Metrics,
    /// The non-learned baselines on the same test sessions, with their misses at turn 10: the
    /// rule-based tracker (a perfect memory) and the oracle (asks for every wish from turn 1, so
    /// its misses are retrieval's alone).
    pub baselines: Vec<Baseline>,
    pub rows: Vec<VariantRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub metrics: Metrics,
    pub misses: Misses,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LoggedReward {
    pub success_turn: f64,
    pub before_success: f64,
    pub other: f64,
}

impl LoggedReward {
    pub fn of(sessions: &[irec_protocol::experience::ExperienceSession]) -> LoggedReward {
        let (mut s, mut b, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for x in sessions {
            let n = x.turns.len();
            for (i, t) in x.turns.iter().enumerate() {
                let r = t.reward as f64;
                match (x.succeeded(), i + 1 == n, i + 2 == n) {
                    (true, true, _) => s.push(r),
                    (true, _, true) => b.push(r),
                    _ if i + 1 < n => o.push(r),
                    _ => {}
                }
            }
        }
        let mean = |v: &[f64]| irec_world::metrics::MeanSe::of(v).mean;
        LoggedReward { success_turn: mean(&s), before_success: mean(&b), other: mean(&o) }
    }
}

/// Trains every variant on the same D (and, when `iterate`, through its own iterative rounds).
pub fn run(cfg: &ExperimentConfig, variants: &[Variant], iterate: bool, device: &candle_core::Device, cache: Option<&Path>, progress: &dyn Progress) -> Result<AblationReport> {
    let lab = Lab::build(&cfg.world, &cfg.pretrain, device, cache, progress)?.collecting_in(cfg.behaviour.world);
    let eval_seed = rng::derive(cfg.seed, rng::stream::EVALUATION);
    let n_eval = cfg.eval_sessions;
    let BehaviourData { devices, sessions: d, .. } = behaviour_data(&lab, cfg, progress)?;
    let behaviour = behaviour_on_test(&lab, &devices, n_eval, eval_seed)?;
    let raw = SessionDataset::new(&d, &lab.featurizer, lab.heads())?;

    let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::TRAINING));
    let mut bc = BehaviourCloning::new(&lab.perception, rng::derive(cfg.seed, 31), &cfg.offline.bc)?;
    fit(&mut bc, &raw, cfg.offline.steps, cfg.offline.bc.optim.batch_sessions, cfg.offline.log_every, &mut r, |_| {})?;
    let imitation = lab.evaluate(bc.recommender(), n_eval, eval_seed)?;
    progress.message(&format!("behaviour on test SR@10 {:.1}%, imitation {:.1}%", 100.0 * behaviour.sr10, 100.0 * imitation.sr10));
    let baselines = baselines(&lab, n_eval, eval_seed);

    let mut rows = Vec::new();
    for v in variants {
        let started = Instant::now();
        let oc: &OfflineConfig = &v.offline;
        let data = raw.clone().with_objective(&oc.objective);
        let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::TRAINING));
        let settings = LearnerSettings { sac: &oc.sac, cql: &oc.cql, bcq: &oc.bcq, iql: &oc.iql };
        let mut learner = OfflineLearner::new(oc.algo, &lab.perception, rng::derive(cfg.seed, 33), settings, None)?;
        let bs = learner.batch_sessions();
        progress.start(&format!("variant {}", v.name), oc.steps as u64);
        fit(&mut learner, &data, oc.steps, bs, oc.log_every, &mut r, |_| {})?;
        progress.finish();
        let (offline, transcripts) = lab.evaluate_parts(&learner.recommender().tracker, &learner.recommender().policy, n_eval, eval_seed)?;
        let failures = transcripts.iter().filter(|t| !t.success || t.turns.len() > 20).map(|t| t.render()).collect();
        let misses = Misses::of_transcripts(&transcripts, MISSES_AT);
        let critic_greedy = lab.evaluate_parts(&learner.recommender().tracker, learner.critic_heads(), n_eval, eval_seed)?.0;
        let (mut rounds, mut round_misses) = (Vec::new(), Vec::new());
        if iterate {
            let mut devs = devices.clone();
            let mut all = d.clone();
            for round in 1..=oc.rounds as u32 {
                let deployed = Arc::new(PolicyModel::from_checkpoint(&learner.recommender().export(&v.name, learner.steps()), &lab.device)?);
                deploy(&mut devs, &deployed, cfg.behaviour.sample_deployed);
                let new = collect(&lab, &mut devs, oc.round_sessions, cfg.behaviour.session_batch, round, cfg.seed, progress)?.sessions;
                let fresh = SessionDataset::new(&new, &lab.featurizer, lab.heads())?;
                let all_new: Vec<usize> = (0..fresh.len()).collect();
                let (per_head, per_turn) = crate::algo::fqe::greedy_agreement(&deployed, &fresh, &all_new, &lab.device)?;
                progress.message(&format!("round {round}: D′ agrees with the deployed greedy policy on {:.1}% of heads, {:.1}% of turns", 100.0 * per_head, 100.0 * per_turn));
                all.extend(new);
                let data = SessionDataset::new(&all, &lab.featurizer, lab.heads())?.with_objective(&oc.objective).favour_newest(oc.newest_share);
                learner.start_round()?;
                fit(&mut learner, &data, oc.round_steps, bs, oc.log_every, &mut r, |_| {})?;
                let (m, ts) = lab.evaluate_parts(&learner.recommender().tracker, &learner.recommender().policy, n_eval, eval_seed)?;
                rounds.push(m);
                round_misses.push(Misses::of_transcripts(&ts, MISSES_AT));
            }
        }
        let row = VariantRow { name: v.name.clone(), offline, critic_greedy, misses, rounds, round_misses, failures, seconds: started.elapsed().as_secs_f64() };
        progress.message(&format!(
            "{}: SR@10 {:.1}% NI {:.2} (critic greedy {:.1}%, {:.2}){}",
            row.name,
            100.0 * row.offline.sr10,
            row.offline.ni.mean,
            100.0 * row.critic_greedy.sr10,
            row.critic_greedy.ni.mean,
            row.rounds.iter().map(|m| format!(" → {:.1}%/{:.2}", 100.0 * m.sr10, m.ni.mean)).collect::<String>()
        ));
        rows.push(row);
    }
    Ok(AblationReport { seed: cfg.seed, logged_reward: LoggedReward::of(&d), behaviour_on_test: behaviour, imitation, baselines, rows })
}

/// The turn whose misses are read (SR@10's).
const MISSES_AT: usize = 10;

fn baselines(lab: &Lab, sessions: usize, seed: u64) -> Vec<Baseline> {
    let max_turns = lab.eval_env.reward.max_turns as u32;
    [("tracker", lab.tracker_transcripts(sessions, seed)), ("oracle", lab.oracle_transcripts(sessions, seed))]
        .into_iter()
        .map(|(name, ts)| Baseline { name: name.into(), metrics: Metrics::of_transcripts(&ts, max_turns), misses: Misses::of_transcripts(&ts, MISSES_AT) })
        .collect()
}
