//! The paper's Table 2, in-process: Behaviour, On-policy, Off-policy, Imitation Learning, Offline
//! Learning, Iterative Offline, and the rule-based tracker, all evaluated on the same test-split
//! sessions with AttrNet's attributes.

use super::behaviour::{behaviour_devices, collect, deploy, train_on_policy, BehaviourDevice, Learner};
use super::{ExperimentConfig, Lab, Progress, Result};
use crate::algo::bc::{BcConfig, BehaviourCloning};
use crate::algo::cql::{off_policy_sac, CqlConfig};
use crate::algo::pretrain::PretrainReport;
use crate::algo::bcq::BcqConfig;
use crate::algo::iql::IqlConfig;
use crate::algo::sac::SacConfig;
use crate::algo::{fit, Algo, LearnerSettings, Objective, OfflineAlgorithm, SessionDataset, TrainLog};
use crate::algo::Learner as OfflineLearner;
use irec_protocol::experience::ExperienceSession;
use irec_world::metrics::Metrics;
use irec_model::PolicyModel;
use irec_world::rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OfflineConfig {
    /// The reward the RL learners optimise (imitation ignores rewards).
    pub objective: Objective,
    /// The learner of the Offline and Iterative Offline rows: `cql_sac` (the paper's), `bcq`, `iql`.
    pub algo: Algo,
    /// Further learners trained on the same D, a row each ("Offline Learning (IQL)").
    pub also: Vec<Algo>,
    pub bc: BcConfig,
    pub sac: SacConfig,
    pub cql: CqlConfig,
    pub bcq: BcqConfig,
    pub iql: IqlConfig,
    /// Gradient steps of each offline learner on D.
    pub steps: usize,
    /// Steps between training-log lines.
    pub log_every: usize,
    /// Steps between test evaluations for the training curves.
    pub curve_every: usize,
    /// Test sessions per curve point.
    pub curve_sessions: usize,
    /// Iterative offline: rounds of deploy → collect D′ → train on D ∪ D′.
    pub rounds: usize,
    /// Sessions collected per round (D′).
    pub round_sessions: usize,
    /// Gradient steps per round.
    pub round_steps: usize,
    /// Share (0–1) of each batch drawn from the newest round's sessions in iterative rounds.
    pub newest_share: f64,
}

impl OfflineConfig {
    /// Refuses settings that cannot train, naming the TOML field (under `[offline]`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.objective.validate_at("offline.objective")?;
        self.sac.validate("offline.sac")?;
        self.cql.validate("offline.cql")?;
        self.bcq.validate("offline.bcq")?;
        self.iql.validate("offline.iql")?;
        if self.rounds > 0 && self.round_sessions == 0 {
            return Err("offline.round_sessions must be at least 1 when offline.rounds > 0".into());
        }
        if self.steps == 0 {
            return Err("offline.steps must be at least 1".into());
        }
        Ok(())
    }

    pub fn quick() -> OfflineConfig {
        OfflineConfig {
            objective: Objective::default(),
            algo: Algo::default(),
            also: Vec::new(),
            bc: BcConfig::default(),
            sac: SacConfig::default(),
            cql: CqlConfig::default(),
            bcq: BcqConfig::default(),
            iql: IqlConfig::default(),
            steps: 1_500,
            log_every: 50,
            curve_every: 300,
            curve_sessions: 200,
            rounds: 3,
            round_sessions: 1_000,
            round_steps: 500,
            newest_share: 0.0,
        }
    }

    pub fn paper() -> OfflineConfig {
        OfflineConfig { steps: 6_000, log_every: 100, curve_every: 1_000, curve_sessions: 300, rounds: 5, round_sessions: 8_000, round_steps: 2_000, ..OfflineConfig::quick() }
    }
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig::quick()
    }
}

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Behaviour,
    BehaviourTest,
    OnPolicy,
    OnPolicyScratch,
    OffPolicy,
    Imitation,
    Offline,
    /// Another offline learner on the same D (`offline.also`, `compare --algo a,b`).
    OfflineWith(Algo),
    IterativeOffline,
    Tracker,
    /// Asks for exactly the user's wishes from the first turn: what the evaluation world's
    /// retrieval (AttrNet-predicted attributes) allows any policy at best.
    Oracle,
}

impl Method {
    /// The paper's name for the row.
    pub fn title(self) -> &'static str {
        match self {
            Method::Behaviour => "Behaviour (collected)",
            Method::BehaviourTest => "Behaviour (same devices, test sessions)",
            Method::OnPolicy => "On-policy",
            Method::OnPolicyScratch => "On-policy (no warm start)",
            Method::OffPolicy => "Off-policy",
            Method::Imitation => "Imitation Learning",
            Method::Offline => "Offline Learning",
            Method::OfflineWith(Algo::CqlSac) => "Offline Learning (CQL(H) + SAC)",
            Method::OfflineWith(Algo::Bcq) => "Offline Learning (discrete BCQ)",
            Method::OfflineWith(Algo::Iql) => "Offline Learning (IQL)",
            Method::IterativeOffline => "Iterative Offline",
            Method::Tracker => "Rule-based tracker",
            Method::Oracle => "Oracle (knows the wishes; retrieval's ceiling)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Method::Behaviour => "behaviour",
            Method::BehaviourTest => "behaviour_test",
            Method::OnPolicy => "on_policy",
            Method::OnPolicyScratch => "on_policy_scratch",
            Method::OffPolicy => "off_policy",
            Method::Imitation => "imitation",
            Method::Offline => "offline",
            Method::OfflineWith(Algo::CqlSac) => "offline_cql_sac",
            Method::OfflineWith(Algo::Bcq) => "offline_bcq",
            Method::OfflineWith(Algo::Iql) => "offline_iql",
            Method::IterativeOffline => "iterative_offline",
            Method::Tracker => "tracker",
            Method::Oracle => "oracle",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodRow {
    pub method: Method,
    pub metrics: Metrics,
    pub note: String,
}

/// A test evaluation during training, for the curves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurvePoint {
    /// "offline", "iterative_offline", "on_policy", …
    pub series: String,
    /// Cumulative gradient steps (PPO: iterations) of that learner.
    pub step: u64,
    pub round: u32,
    pub sessions_in_d: usize,
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareReport {
    pub preset: String,
    pub seed: u64,
    pub config: ExperimentConfig,
    pub rows: Vec<MethodRow>,
    pub pretrain: PretrainReport,
    /// The behaviour devices' policies run on the test sessions with their noise (the collected
    /// sessions behind the Behaviour row are on train-split targets with ground-truth retrieval).
    pub behaviour_on_test: Metrics,
    pub curves: Vec<CurvePoint>,
    pub logs: BTreeMap<String, Vec<TrainLog>>,
    /// Seconds per stage, in order.
    pub timings: Vec<(String, f64)>,
    pub transitions_in_d: usize,
}

impl CompareReport {
    pub fn row(&self, m: Method) -> Option<&Metrics> {
        self.rows.iter().find(|r| r.method == m).map(|r| &r.metrics)
    }
}

struct Clock {
    start: Instant,
    timings: Vec<(String, f64)>,
}

impl Clock {
    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        self.timings.push((stage.to_string(), (now - self.start).as_secs_f64()));
        self.start = now;
    }
}

/// Trains an offline learner for `steps`, evaluating every `curve_every` steps into `curves`.
#[allow(clippy::too_many_arguments)]
fn train_with_curve<A: OfflineAlgorithm + Send>(
    lab: &Lab,
    algo: &mut A,
    data: &SessionDataset,
    steps: usize,
    cfg: &OfflineConfig,
    batch_sessions: usize,
    series: &str,
    curve: Option<(&mut Vec<CurvePoint>, u32, usize, u64)>,
    r: &mut rng::Rng,
    progress: &dyn Progress,
) -> Result<Vec<TrainLog>> {
    let mut logs = Vec::new();
    let chunk = if curve.is_some() { cfg.curve_every.max(1) } else { steps.max(1) };
    let mut done = 0;
    let mut curve = curve;
    progress.start(&format!("training {series}"), steps as u64);
    while done < steps {
        let k = chunk.min(steps - done);
        logs.extend(fit(algo, data, k, batch_sessions, cfg.log_every, r, |_| {})?);
        done += k;
        progress.advance(k as u64);
        if let Some((points, round, in_d, eval_seed)) = curve.as_mut() {
            let m = lab.evaluate(algo.recommender(), cfg.curve_sessions, *eval_seed)?;
            points.push(CurvePoint { series: series.to_string(), step: algo.steps(), round: *round, sessions_in_d: *in_d, metrics: m });
        }
    }
    progress.finish();
    Ok(logs)
}

/// Runs the whole comparison.
pub fn run(cfg: &ExperimentConfig, preset: &str, device: &candle_core::Device, cache: Option<&Path>, progress: &dyn Progress) -> Result<CompareReport> {
    let mut clock = Clock { start: Instant::now(), timings: Vec::new() };
    let lab = Lab::build(&cfg.world, &cfg.pretrain, device, cache, progress)?.collecting_in(cfg.behaviour.world);
    clock.lap("world and pretraining");
    let eval_seed = rng::derive(cfg.seed, rng::stream::EVALUATION);
    let n_eval = cfg.eval_sessions;
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut logs = BTreeMap::new();

    // The on-policy learner whose snapshots are the behaviour policies (the paper's tracker
    // unless configured otherwise), and the on-policy rows: the recommender the offline learners
    // train, with the tracker warm start and from scratch.
    let source = train_on_policy(&lab, &cfg.on_policy, cfg.seed, Learner::Behaviour, progress)?;
    clock.lap("behaviour source training");
    let same_learner = cfg.on_policy.behaviour_request_memory || !lab.perception.has_memory();
    let onp = if same_learner { source.clone() } else { train_on_policy(&lab, &cfg.on_policy, cfg.seed, Learner::Comparison, progress)? };
    clock.lap("on-policy training");
    for (it, ck) in &onp.snapshots {
        let m = lab.evaluate_checkpoint(ck, cfg.offline.curve_sessions, eval_seed)?;
        curves.push(CurvePoint { series: "on_policy".into(), step: *it, round: 0, sessions_in_d: 0, metrics: m });
    }
    let m = lab.evaluate_checkpoint(&onp.final_checkpoint, n_eval, eval_seed)?;
    rows.push(MethodRow {
        method: Method::OnPolicy,
        metrics: m,
        note: format!("{} cloning steps on tracker sessions, then {} PPO iterations", cfg.on_policy.ppo.warm_start_steps, cfg.on_policy.iterations),
    });
    logs.insert("on_policy".to_string(), onp.log.clone());
    let scratch_cfg = super::OnPolicyConfig { ppo: crate::algo::ppo::PpoConfig { warm_start_steps: 0, ..cfg.on_policy.ppo.clone() }, ..cfg.on_policy.clone() };
    let scratch = train_on_policy(&lab, &scratch_cfg, cfg.seed, Learner::Comparison, progress)?;
    rows.push(MethodRow {
        method: Method::OnPolicyScratch,
        metrics: lab.evaluate_checkpoint(&scratch.final_checkpoint, n_eval, eval_seed)?,
        note: format!("{} PPO iterations from random weights, no warm start", cfg.on_policy.iterations),
    });
    logs.insert("on_policy_scratch".to_string(), scratch.log.clone());
    clock.lap("on-policy evaluation");

    // Behaviour data D from M devices running the snapshots with their own noise and bias.
    let snapshots: Vec<_> = source.snapshots.iter().map(|(_, ck)| ck.clone()).collect();
    let mut devices = behaviour_devices(&lab, &snapshots, &cfg.behaviour, cfg.seed)?;
    let collected = collect(&lab, &mut devices, cfg.behaviour.sessions, cfg.behaviour.session_batch, 0, cfg.seed, progress)?;
    let behaviour = Metrics::of_transcripts(&collected.transcripts, lab.collect_env.reward.max_turns as u32);
    rows.push(MethodRow {
        method: Method::Behaviour,
        metrics: behaviour,
        note: format!("{} collected sessions, {} devices, train-split targets", collected.sessions.len(), devices.len()),
    });
    let behaviour_on_test = behaviour_on_test(&lab, &devices, n_eval, eval_seed)?;
    rows.push(MethodRow {
        method: Method::BehaviourTest,
        metrics: behaviour_on_test,
        note: "the same devices, noise and bias, on the test sessions every other row uses".into(),
    });
    let mut d: Vec<ExperienceSession> = collected.sessions;
    clock.lap("behaviour collection");
    let data = SessionDataset::new(&d, &lab.featurizer, lab.heads())?.with_objective(&cfg.offline.objective);
    let transitions_in_d = data.transitions();
    let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::TRAINING));
    let bs = cfg.offline.sac.optim.batch_sessions;

    // Imitation learning.
    let mut bc = BehaviourCloning::new(&lab.perception, rng::derive(cfg.seed, 31), &cfg.offline.bc)?;
    logs.insert("imitation".into(), train_with_curve(&lab, &mut bc, &data, cfg.offline.steps, &cfg.offline, cfg.offline.bc.optim.batch_sessions, "imitation", None, &mut r, progress)?);
    rows.push(MethodRow { method: Method::Imitation, metrics: lab.evaluate(bc.recommender(), n_eval, eval_seed)?, note: format!("{} steps", cfg.offline.steps) });
    clock.lap("imitation learning");

    // Off-policy SAC without correction.
    let mut sac = off_policy_sac(&lab.perception, rng::derive(cfg.seed, 32), &cfg.offline.sac, None)?;
    logs.insert("off_policy".into(), train_with_curve(&lab, &mut sac, &data, cfg.offline.steps, &cfg.offline, bs, "off_policy", None, &mut r, progress)?);
    rows.push(MethodRow { method: Method::OffPolicy, metrics: lab.evaluate(sac.recommender(), n_eval, eval_seed)?, note: format!("{} steps", cfg.offline.steps) });
    clock.lap("off-policy learning");

    // Offline learning (CQL(H) + SAC unless another learner was chosen), with its test curve.
    let oc = &cfg.offline;
    let settings = LearnerSettings { sac: &oc.sac, cql: &oc.cql, bcq: &oc.bcq, iql: &oc.iql };
    let mut main = OfflineLearner::new(oc.algo, &lab.perception, rng::derive(cfg.seed, 33), settings, None)?;
    let in_d = d.len();
    let main_bs = main.batch_sessions();
    logs.insert(
        "offline".into(),
        train_with_curve(&lab, &mut main, &data, oc.steps, oc, main_bs, "offline", Some((&mut curves, 0, in_d, eval_seed)), &mut r, progress)?,
    );
    rows.push(MethodRow { method: Method::Offline, metrics: lab.evaluate(main.recommender(), n_eval, eval_seed)?, note: learner_note(oc.algo, oc) });
    clock.lap("offline learning");
    for (k, algo) in oc.also.iter().copied().filter(|a| *a != oc.algo).enumerate() {
        let mut other = OfflineLearner::new(algo, &lab.perception, rng::derive(cfg.seed, 34 + k as u64), settings, None)?;
        let key = Method::OfflineWith(algo).key();
        let bs = other.batch_sessions();
        // Its own batch stream: adding a row must not change the rows after it.
        let mut own = rng::rng(rng::derive(cfg.seed, 0xA150 + k as u64));
        logs.insert(key.into(), train_with_curve(&lab, &mut other, &data, oc.steps, oc, bs, key, None, &mut own, progress)?);
        rows.push(MethodRow { method: Method::OfflineWith(algo), metrics: lab.evaluate(other.recommender(), n_eval, eval_seed)?, note: learner_note(algo, oc) });
        clock.lap(key);
    }

    // Iterative offline: deploy with each device's noise, collect D′, train on D ∪ D′.
    let (metrics, note) = iterative(&lab, cfg, &mut main, &mut devices, &mut d, &mut curves, &mut logs, &mut r, eval_seed, progress)?;
    rows.push(MethodRow { method: Method::IterativeOffline, metrics, note });
    clock.lap("iterative offline");

    // The rule-based tracker and the oracle on the same sessions.
    let max_turns = lab.eval_env.reward.max_turns as u32;
    let m = Metrics::of_transcripts(&lab.tracker_transcripts(n_eval, eval_seed), max_turns);
    rows.push(MethodRow { method: Method::Tracker, metrics: m, note: "rule-based reader + conditional mode fill".into() });
    clock.lap("tracker");
    let m = Metrics::of_transcripts(&lab.oracle_transcripts(n_eval, eval_seed), max_turns);
    rows.push(MethodRow { method: Method::Oracle, metrics: m, note: "asks for the user's wishes every turn".into() });
    clock.lap("oracle");

    rows.sort_by_key(|r| r.method);
    Ok(CompareReport {
        preset: preset.to_string(),
        seed: cfg.seed,
        config: cfg.clone(),
        rows,
        pretrain: lab.pretrain_report.clone(),
        behaviour_on_test,
        curves,
        logs,
        timings: clock.timings,
        transitions_in_d,
    })
}

#[allow(clippy::too_many_arguments)]
fn iterative(
    lab: &Lab,
    cfg: &ExperimentConfig,
    learner: &mut OfflineLearner,
    devices: &mut [BehaviourDevice],
    d: &mut Vec<ExperienceSession>,
    curves: &mut Vec<CurvePoint>,
    logs: &mut BTreeMap<String, Vec<TrainLog>>,
    r: &mut rng::Rng,
    eval_seed: u64,
    progress: &dyn Progress,
) -> Result<(Metrics, String)> {
    let oc = &cfg.offline;
    let mut last = lab.evaluate(learner.recommender(), cfg.eval_sessions, eval_seed)?;
    let mut best = (0u32, last);
    let mut round_logs = Vec::new();
    for round in 1..=oc.rounds as u32 {
        let deployed = Arc::new(PolicyModel::from_checkpoint(&learner.recommender().export("iterative offline", learner.steps()), &lab.device)?);
        deploy(devices, &deployed, cfg.behaviour.sample_deployed);
        let c = collect(lab, devices, oc.round_sessions, cfg.behaviour.session_batch, round, cfg.seed, progress)?;
        d.extend(c.sessions);
        let data = SessionDataset::new(d, &lab.featurizer, lab.heads())?.with_objective(&oc.objective).favour_newest(oc.newest_share);
        let in_d = d.len();
        learner.start_round()?;
        let bs = learner.batch_sessions();
        round_logs.extend(train_with_curve(lab, learner, &data, oc.round_steps, oc, bs, "iterative_offline", None, r, progress)?);
        last = lab.evaluate(learner.recommender(), cfg.eval_sessions, eval_seed)?;
        curves.push(CurvePoint { series: "iterative_offline".into(), step: learner.steps(), round, sessions_in_d: in_d, metrics: last });
        if last.ni.mean < best.1.ni.mean {
            best = (round, last);
        }
    }
    logs.insert("iterative_offline".into(), round_logs);
    let note = format!(
        "last of {} rounds ({} sessions each); best round by NI: {} (NI {:.2})",
        oc.rounds, oc.round_sessions, best.0, best.1.ni.mean
    );
    Ok((last, note))
}

/// What a learner's row says about it.
fn learner_note(algo: Algo, oc: &OfflineConfig) -> String {
    match algo {
        Algo::CqlSac => format!("{}: {} steps, α = {}", algo.title(), oc.steps, oc.cql.alpha),
        Algo::Bcq => format!("{}: {} steps, τ = {}", algo.title(), oc.steps, oc.bcq.threshold),
        Algo::Iql => format!("{}: {} steps, κ = {}, β = {}", algo.title(), oc.steps, oc.iql.expectile, oc.iql.beta),
    }
}

/// Each behaviour device's policy, with its noise and bias, on an equal share of the test sessions.
pub fn behaviour_on_test(lab: &Lab, devices: &[BehaviourDevice], sessions: usize, seed: u64) -> Result<Metrics> {
    use irec_model::{rollout, Acting};
    use irec_world::sim::SessionSpec;
    let m = devices.len().max(1);
    let mut ts = Vec::with_capacity(sessions);
    for (k, dev) in devices.iter().enumerate() {
        let specs: Vec<SessionSpec> = (0..sessions as u64).filter(|i| *i as usize % m == k).map(|i| SessionSpec::numbered(&lab.eval_env, seed, i)).collect();
        let acting = Acting { noise_sigma: dev.profile.noise_sigma, bias: dev.profile.bias.values(), sample: false };
        ts.extend(rollout(&lab.eval_env, &dev.policy.tracker, &dev.policy.policy, &lab.featurizer, dev.policy.heads(), &specs, &acting)?);
    }
    Ok(Metrics::of_transcripts(&ts, lab.eval_env.reward.max_turns as u32))
}
