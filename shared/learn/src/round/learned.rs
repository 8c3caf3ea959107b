//! The learned round trainer: [`LearnedTrainer`] trains the chosen offline learner (CQL(H) +
//! discrete SAC by default; discrete BCQ or IQL with `algo`) on
//! D ∪ D′, estimates the candidate and the deployed policy by fitted Q evaluation on the same
//! logged sessions (the gate's evidence), and evaluates both on the simulator's test split.
//!
//! State it keeps between rounds, in its own directory (never the server's sled store):
//! - `perception.ckpt`: the frozen text encoder + AttrNet every round featurizes with. Chosen
//!   once — from `trainer.perception`, else the deployed policy, else pretrained on the world —
//!   and kept, so a restarted server featurizes D exactly as before.
//! - `curves/round-NNNNNN/`: the round's training curves in d3rlpy's layout (`params.json`,
//!   one `<loss>.csv` each), for `d3rlpy plot`.
//! - `learner-rNNNNNN.ckpt`: the learner's whole training state after round N (tracker, policy,
//!   critics, target networks, SAC's temperature or IQL's value network, and the optimisers'
//!   moments and step count). Round N+1 continues from it, so D ∪ D′ refines one learner as the
//!   paper's iterative offline loop does; a round trained again after a crash starts from the
//!   same file and repeats exactly (CPU).

use super::metrics::{Evaluated, RoundMetrics, Seconds};
use super::trainer::{RoundTrainer, TrainError, TrainJob, TrainOutcome};
use crate::algo::bcq::BcqConfig;
use crate::algo::cql::CqlConfig;
use crate::algo::iql::IqlConfig;
use crate::algo::{Algo, Learner, LearnerSettings};
use crate::algo::fqe::{self, FqeConfig};
use crate::algo::pretrain::{PretrainConfig, PretrainReport};
use crate::algo::sac::SacConfig;
use crate::algo::{fit, Objective, OfflineAlgorithm, PerceptionWeights, SessionDataset, TrainLog};
use crate::experiment::{Lab, Silent};
use crate::files::write_atomic;
use irec_model::{device, Checkpoint, Featurizer, PolicyModel};
use irec_world::rng;
use irec_world::sim::{World, WorldConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::info;

/// Which trainer the server runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainerKind {
    /// The offline learner of `algo` (IQL by default) with an FQE gate ([`LearnedTrainer`]).
    #[default]
    Learned,
    /// No learning: every round is recorded as failed and its data kept (networking only).
    None,
}

/// Settings of the round trainer (`[trainer]` in the server's TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    pub kind: TrainerKind,
    /// A checkpoint carrying the pretrained perception (`text.*`, `attrnet.*`; any irec policy
    /// checkpoint does). Unset: the deployed policy's, else pretrained on the world at the first
    /// round (tens of seconds on a CPU).
    pub perception: Option<PathBuf>,
    /// Where the trainer keeps its perception and learner between rounds. Unset:
    /// `<data_dir>/trainer`.
    pub state_dir: Option<PathBuf>,
    /// Pretraining, when no perception is given.
    pub pretrain: PretrainConfig,
    /// The reward the learner and the gate's estimates optimise (`[trainer.objective]`, `kind` =
    /// `turn_cost` or `paper`).
    pub objective: Objective,
    /// The offline learner: `iql` (the default, by measurement), `cql_sac` (the paper's) or `bcq`.
    pub algo: Algo,
    pub sac: SacConfig,
    pub cql: CqlConfig,
    pub bcq: BcqConfig,
    pub iql: IqlConfig,
    /// Gradient steps of a learner that starts from scratch (the first trained round).
    pub first_round_steps: usize,
    /// Gradient steps of each later round, continuing the previous round's learner.
    pub round_steps: usize,
    /// Steps between training-log lines (kept in the round's metrics).
    pub log_every: usize,
    /// Fitted Q evaluation of the candidate and the deployed policy.
    pub fqe: FqeConfig,
    /// Test-split sessions each policy is evaluated on in the simulator (greedy, no noise).
    pub eval_sessions: usize,
    /// Seed of those sessions: the same every round, so rounds compare with each other (and with
    /// whatever else a researcher evaluates on that seed).
    pub eval_seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            kind: TrainerKind::Learned,
            perception: None,
            state_dir: None,
            pretrain: PretrainConfig::default(),
            objective: Objective::default(),
            // IQL, not the paper's CQL(H) + SAC: on the main job it beat the behaviour devices
            // by 7.6–9.8 points SR@30 on three seeds where CQL(H) + SAC reached 3.6–4.6
            // (docs/results.md, "The federated loop"). CQL(H) + SAC stays one `algo` away.
            algo: Algo::Iql,
            sac: SacConfig::default(),
            cql: CqlConfig::default(),
            bcq: BcqConfig::default(),
            iql: IqlConfig::default(),
            first_round_steps: 1_000,
            round_steps: 400,
            log_every: 50,
            fqe: FqeConfig { steps: 300, ..FqeConfig::default() },
            eval_sessions: 500,
            eval_seed: 1,
        }
    }
}

/// The perception the trainer keeps in its state dir (see the module docs).
pub const PERCEPTION_FILE: &str = "perception.ckpt";

impl TrainerConfig {
    /// The trainer's state dir for a server whose data dir is `data_dir`.
    pub fn state_dir_in(&self, data_dir: &Path) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| data_dir.join("trainer"))
    }
}

/// The world and perception, built at the first round and reused.
struct Ready {
    lab: Lab,
}

/// CQL(H) + discrete SAC rounds with an FQE gate and simulator evaluation.
pub struct LearnedTrainer {
    cfg: TrainerConfig,
    world: WorldConfig,
    state_dir: PathBuf,
    ready: Mutex<Option<Arc<Ready>>>,
}

fn failed<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> TrainError + '_ {
    move |e| TrainError::Failed(format!("{what}: {e}"))
}

impl LearnedTrainer {
    fn settings(&self) -> LearnerSettings<'_> {
        LearnerSettings { sac: &self.cfg.sac, cql: &self.cfg.cql, bcq: &self.cfg.bcq, iql: &self.cfg.iql }
    }

    /// `data_dir`: the server's, under which the default state dir lives.
    pub fn new(cfg: TrainerConfig, world: WorldConfig, data_dir: &Path) -> LearnedTrainer {
        let state_dir = cfg.state_dir_in(data_dir);
        LearnedTrainer { cfg, world, state_dir, ready: Mutex::new(None) }
    }

    /// Where round `round`'s training curves go (d3rlpy's layout).
    pub fn curves_dir(&self, round: u32) -> PathBuf {
        self.state_dir.join("curves").join(format!("round-{round:06}"))
    }

    fn learner_path(&self, round: u32) -> PathBuf {
        self.state_dir.join(format!("learner-r{round:06}.ckpt"))
    }

    fn ready(&self, job: &TrainJob, dev: &candle_core::Device) -> Result<Arc<Ready>, TrainError> {
        let mut slot = self.ready.lock().map_err(|_| TrainError::Failed("trainer state poisoned".into()))?;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        std::fs::create_dir_all(&self.state_dir).map_err(failed("creating the state dir"))?;
        let kept = self.state_dir.join(PERCEPTION_FILE);
        let from_file = |p: &Path| -> Result<PerceptionWeights, TrainError> {
            let bytes = std::fs::read(p).map_err(|e| failed(&format!("reading {}", p.display()))(e.to_string()))?;
            let ck = Checkpoint::from_bytes(&bytes, dev).map_err(|e| failed(&format!("loading {}", p.display()))(e.to_string()))?;
            PerceptionWeights::from_checkpoint(&ck, dev).map_err(failed("perception"))
        };
        let world = || World::build(&self.world).map(Arc::new).map_err(failed("building the world"));
        let lab = if kept.exists() {
            Lab::from_perception(world()?, from_file(&kept)?, PretrainReport::default(), dev)
        } else if let Some(p) = &self.cfg.perception {
            Lab::from_perception(world()?, from_file(p)?, PretrainReport::default(), dev)
        } else if let Some(d) = &job.deployed {
            let ck = Checkpoint::from_bytes(&d.blob, dev).map_err(failed("the deployed policy"))?;
            let pw = PerceptionWeights::from_checkpoint(&ck, dev).map_err(failed("the deployed policy's perception"))?;
            Lab::from_perception(world()?, pw, PretrainReport::default(), dev)
        } else {
            info!("no perception given: pretraining the text encoder and AttrNet");
            Lab::build(&self.world, &self.cfg.pretrain, dev, Some(&self.state_dir.join("cache")), &Silent)
        }
        .map_err(failed("preparing the world and perception"))?;
        if lab.heads() != lab.world.catalog.schema.head_sizes().as_slice() {
            return Err(TrainError::Failed("the perception's action heads do not match the catalog".into()));
        }
        if !kept.exists() {
            let bytes = lab.perception.to_checkpoint().to_bytes().map_err(failed("encoding the perception"))?;
            write_atomic(&kept, &bytes).map_err(failed("saving the perception"))?;
        }
        let r = Arc::new(Ready { lab });
        *slot = Some(r.clone());
        Ok(r)
    }

    /// The newest learner saved by a round before `round`.
    fn previous_learner(&self, round: u32, dev: &candle_core::Device) -> Result<Option<(u32, Checkpoint)>, TrainError> {
        for r in (0..round).rev() {
            let p = self.learner_path(r);
            if let Ok(bytes) = std::fs::read(&p) {
                let ck = Checkpoint::from_bytes(&bytes, dev).map_err(|e| failed(&format!("loading {}", p.display()))(e.to_string()))?;
                return Ok(Some((r, ck)));
            }
        }
        Ok(None)
    }

    /// Trains the round's candidate from `learner`, saves the learner's state and curves, and
    /// gathers the candidate's gate evidence and simulator verdict.
    #[allow(clippy::too_many_arguments)]
    fn train_candidate(
        &self,
        job: &TrainJob,
        lab: &Lab,
        data: &SessionDataset,
        mut learner: Learner,
        steps: usize,
        seed: u64,
        dev: &candle_core::Device,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Trained, TrainError> {
        let mut r = rng::rng(rng::derive(seed, 2));
        // Training in slices, so a server stopping mid-round is not held up for long.
        let train_started = Instant::now();
        let mut logs: Vec<TrainLog> = Vec::new();
        let slice = self.cfg.log_every.max(1);
        let mut done = 0;
        // A round trains for a minute or more: say where it is, every ten seconds, in the log.
        let mut last_line = Instant::now();
        info!(round = job.round, steps, algo = self.cfg.algo.name(), sessions = job.sessions.len(), "training");
        while done < steps {
            if job.cancel.is_cancelled() {
                return Err(TrainError::Cancelled);
            }
            let k = slice.min(steps - done);
            let batch_sessions = learner.batch_sessions();
            logs.extend(fit(&mut learner, data, k, batch_sessions, self.cfg.log_every, &mut r, |_| {}).map_err(failed("training"))?);
            done += k;
            if last_line.elapsed().as_secs() >= 10 && done < steps {
                last_line = Instant::now();
                info!(round = job.round, "training: step {done} of {steps} after {:.0} s", train_started.elapsed().as_secs_f64());
            }
        }
        let train_s = train_started.elapsed().as_secs_f64();
        let label = format!("irec round {} ({}, {} sessions)", job.round, self.cfg.algo.title(), job.sessions.len());
        let candidate_ck = learner.recommender().export(&label, learner.steps());
        let candidate = candidate_ck.to_bytes().map_err(failed("encoding the candidate"))?;
        let state = learner.training_state(&label).map_err(failed("the learner state"))?.to_bytes().map_err(failed("encoding the learner"))?;
        write_atomic(&self.learner_path(job.round), &state).map_err(failed("saving the learner"))?;
        // The round's curves for d3rlpy's tools; a failure to write them costs no round.
        let params = serde_json::json!({
            "algo": self.cfg.algo.name(), "round": job.round, "steps": steps, "sessions": job.sessions.len(),
            "objective": self.cfg.objective, "sac": self.cfg.sac, "cql": self.cfg.cql, "bcq": self.cfg.bcq, "iql": self.cfg.iql,
        });
        if let Err(e) = crate::curves::write_d3rlpy(&self.curves_dir(job.round), &params, &logs) {
            tracing::warn!(round = job.round, "training curves not written: {e}");
        }

        let eval_started = Instant::now();
        // With nothing deployed the gate publishes whatever the estimate says: fit it only if asked.
        let fit = job.deployed.is_some() || self.cfg.fqe.when_nothing_deployed;
        info!(
            round = job.round,
            "trained in {train_s:.0} s; {}{} test sessions for the candidate",
            if fit { "fitted Q evaluation and " } else { "" },
            self.cfg.eval_sessions
        );
        let model = PolicyModel::from_checkpoint(&candidate_ck, dev).map_err(failed("reloading the candidate"))?;
        let (evaluated, timing) =
            self.evaluate_policy(lab, &model, &candidate_ck, data, rng::derive(seed, 3), dev, fit, keep_going, "the candidate")?.ok_or(TrainError::Cancelled)?;
        Ok(Trained { candidate, evaluated, logs, train_s, evaluate_s: eval_started.elapsed().as_secs_f64(), timing })
    }

    /// The deployed policy's gate evidence and simulator verdict on this round's D; `None` when
    /// there is none, or its blob cannot be read (the gate then publishes).
    fn evaluate_deployed(
        &self,
        job: &TrainJob,
        lab: &Lab,
        data: &SessionDataset,
        fqe_seed: u64,
        dev: &candle_core::Device,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Option<(Evaluated, EvalTiming)>, TrainError> {
        let Some(d) = &job.deployed else { return Ok(None) };
        let (model, ck) = match Checkpoint::from_bytes(&d.blob, dev).and_then(|ck| Ok((PolicyModel::from_checkpoint(&ck, dev)?, ck))) {
            Ok(x) => x,
            Err(e) => {
                info!(version = d.version, "deployed policy not evaluated: {e}");
                return Ok(None);
            }
        };
        let own;
        let data_for = if same_perception(&lab.perception, &ck) {
            data
        } else {
            let f = Featurizer::new(model.perception.clone(), &lab.world.features).map_err(failed("the deployed policy's featurizer"))?;
            own = SessionDataset::new(&job.sessions, &f, model.heads()).map_err(failed("featurizing D for the deployed policy"))?.with_objective(&self.cfg.objective);
            &own
        };
        info!(round = job.round, version = d.version, "fitted Q evaluation and {} test sessions for the deployed policy", self.cfg.eval_sessions);
        self.evaluate_policy(lab, &model, &ck, data_for, fqe_seed, dev, true, keep_going, "the deployed policy")
    }

    /// FQE on `data` (if `fit`) and the simulated test sessions, for one policy; `None` when stopped.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_policy(
        &self,
        lab: &Lab,
        model: &PolicyModel,
        ck: &Checkpoint,
        data: &SessionDataset,
        fqe_seed: u64,
        dev: &candle_core::Device,
        fit: bool,
        keep_going: &dyn Fn() -> bool,
        what: &str,
    ) -> Result<Option<(Evaluated, EvalTiming)>, TrainError> {
        let mut timing = EvalTiming::default();
        let fqe = if fit {
            let mut fr = rng::rng(fqe_seed);
            let fqe = timed(&mut timing.fqe, || fqe::evaluate(model, data, &self.cfg.fqe, fqe_seed, &mut fr, dev, keep_going))
                .map_err(failed(&format!("FQE of {what}")))?;
            let Some(fqe) = fqe else { return Ok(None) };
            Some(fqe)
        } else {
            None
        };
        let metrics = timed(&mut timing.simulate, || lab.evaluate_checkpoint(ck, self.cfg.eval_sessions, self.cfg.eval_seed))
            .map_err(failed(&format!("evaluating {what}")))?;
        Ok(Some((Evaluated { metrics, fqe }, timing)))
    }
}

/// A trained candidate with its evidence.
struct Trained {
    candidate: Vec<u8>,
    evaluated: Evaluated,
    logs: Vec<TrainLog>,
    train_s: f64,
    /// Wall time from the end of training to the candidate's evidence.
    evaluate_s: f64,
    timing: EvalTiming,
}

/// Seconds spent in each part of the evaluation, summed over policies.
#[derive(Clone, Copy, Debug, Default)]
struct EvalTiming {
    fqe: f64,
    simulate: f64,
}

impl EvalTiming {
    fn add(&mut self, other: EvalTiming) {
        self.fqe += other.fqe;
        self.simulate += other.simulate;
    }
}

/// Runs `f`, adding its wall time to `acc`.
fn timed<T>(acc: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *acc += t.elapsed().as_secs_f64();
    out
}

/// Whether `ck` carries exactly this perception (then D's features apply to it as they are).
fn same_perception(ours: &PerceptionWeights, ck: &Checkpoint) -> bool {
    let theirs = ck.only(&["text.", "attrnet."]).tensors;
    ck.meta.vocab == ours.perception.vocab.words
        && theirs.len() == ours.tensors.len()
        && ours.tensors.iter().all(|(k, a)| {
            theirs.get(k).is_some_and(|b| {
                let flat = |t: &candle_core::Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).ok();
                a.dims() == b.dims() && flat(a).is_some_and(|x| Some(x) == flat(b))
            })
        })
}

impl RoundTrainer for LearnedTrainer {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError> {
        let started = Instant::now();
        let dev = device::open(&job.device).map_err(|e| TrainError::Failed(e.to_string()))?;
        let ready = self.ready(&job, &dev)?;
        let lab = &ready.lab;
        let prepared = Instant::now();
        let data = SessionDataset::new(&job.sessions, &lab.featurizer, lab.heads()).map_err(failed("featurizing D"))?.with_objective(&self.cfg.objective);
        if data.is_empty() {
            return Err(TrainError::Failed("D holds no usable session".into()));
        }
        let previous = self.previous_learner(job.round, &dev)?;
        let steps = if previous.is_some() { self.cfg.round_steps } else { self.cfg.first_round_steps };
        let seed = job.seed;
        let learner = Learner::new(self.cfg.algo, &lab.perception, rng::derive(seed, 1), self.settings(), previous.as_ref().map(|p| &p.1)).map_err(failed("building the learner"))?;
        let featurize_s = prepared.elapsed().as_secs_f64();

        let fqe_seed = rng::derive(seed, 3);

        // The deployed policy's evidence needs D and that policy only: it is fitted beside the
        // candidate's training (on another core), not after it. Each fit has its own seeds, so
        // running them side by side changes no figure.
        let abandon = AtomicBool::new(false);
        let keep_going = || !job.cancel.is_cancelled() && !abandon.load(Ordering::Relaxed);
        let (trained, deployed) = std::thread::scope(|scope| {
            let deployed = std::thread::Builder::new()
                .name(format!("irec-gate-r{}", job.round))
                .spawn_scoped(scope, || self.evaluate_deployed(&job, lab, &data, fqe_seed, &dev, &keep_going))
                .map_err(failed("starting the deployed policy's evaluation"))?;
            let trained = self.train_candidate(&job, lab, &data, learner, steps, seed, &dev, &keep_going);
            if trained.is_err() {
                abandon.store(true, Ordering::Relaxed);
            }
            let deployed = deployed.join().map_err(|_| TrainError::Failed("the deployed policy's evaluation panicked".into()))?;
            Ok::<_, TrainError>((trained?, deployed?))
        })?;
        if job.cancel.is_cancelled() {
            return Err(TrainError::Cancelled);
        }
        let Trained { candidate, evaluated: cand, logs, train_s, evaluate_s, mut timing } = trained;
        let deployed = deployed.map(|(d, t)| {
            timing.add(t);
            d
        });
        let last_losses: BTreeMap<String, f32> = logs.last().map(|l| l.losses.clone()).unwrap_or_default();
        let metrics = RoundMetrics {
            candidate: Some(cand),
            deployed,
            eval_sessions: self.cfg.eval_sessions,
            sessions_in_d: job.sessions.len(),
            new_sessions: job.new_sessions,
            transitions: data.transitions(),
            steps,
            continued_from_round: previous.as_ref().map(|p| p.0),
            losses: last_losses,
            log: logs,
            seconds: Seconds {
                featurize: featurize_s,
                train: train_s,
                evaluate: evaluate_s,
                fqe: timing.fqe,
                simulate: timing.simulate,
                total: started.elapsed().as_secs_f64(),
            },
        };
        info!(round = job.round, steps, sr30 = cand.metrics.sr30, ni = cand.metrics.ni.mean, fqe = ?cand.fqe.map(|f| f.value), "round trained");
        Ok(TrainOutcome {
            candidate,
            metrics,
            candidate_estimate: cand.fqe.map(|f| f.value),
            deployed_estimate: deployed.as_ref().and_then(|d| d.fqe).map(|f| f.value),
            // The two ensembles are fitted independently: their variances add.
            estimate_se: match (cand.fqe, deployed.as_ref().and_then(|d| d.fqe)) {
                (Some(c), Some(d)) => (c.se.powi(2) + d.se.powi(2)).sqrt(),
                _ => 0.0,
            },
        })
    }
}
