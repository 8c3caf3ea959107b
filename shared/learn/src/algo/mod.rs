//! Learning algorithms, d3rlpy-style: each algorithm is a config plus `compute_target` /
//! `compute_loss`, its losses a typed struct that becomes the logged metrics, all driven by one
//! trainer loop ([`fit`]) over batches of whole sessions.
//!
//! - [`pretrain`]: the text encoder (utterance → attribute/value) and AttrNet.
//! - [`dataset`]: experience → bucketed, time-major batches of whole sessions.
//! - [`bc`]: behaviour cloning (the paper's imitation learning).
//! - [`sac`]: discrete soft actor-critic over factorized Q (the paper's off-policy row).
//! - [`cql`]: CQL(H) + discrete SAC (the paper's offline row, eq. 6–7).
//! - [`bcq`]: discrete batch-constrained Q-learning; [`iql`]: implicit Q-learning; both on
//!   [`critic`], the single factorized critic they share.
//! - [`learner`]: which offline learner trains ([`Algo`], `--algo`), behind one type.
//! - [`ppo`]: the on-policy learner against the simulator (upper bound; behaviour policies).
//! - [`objective`]: the reward the learners optimise (the paper's as logged, or a per-turn cost).
//! - [`concurrent`]: the independent halves of a training step side by side on two threads.
//! - [`fqe`]: fitted Q evaluation, the off-policy value estimate behind the deployment gate.

pub mod bc;
pub mod bcq;
pub mod concurrent;
pub mod critic;
pub mod cql;
pub mod dataset;
pub mod fqe;
pub mod iql;
pub mod learner;
pub mod objective;
pub mod ppo;
pub mod pretrain;
pub mod sac;

pub use dataset::{Batch, SessionDataset};
pub use learner::{Algo, Learner, LearnerSettings};
pub use objective::Objective;

use irec_model::checkpoint::{Checkpoint, CheckpointMeta, FORMAT_VERSION};
use irec_model::heads::MultiHead;
use irec_model::params::ParamStore;
use irec_model::tracker::StateTracker;
use irec_model::{ModelConfig, Perception};
use irec_world::rng::Rng;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The pretrained, frozen front of every recommender: modules, weights and config.
#[derive(Clone, Debug)]
pub struct PerceptionWeights {
    pub perception: Arc<Perception>,
    /// `text.*` and `attrnet.*` tensors.
    pub tensors: BTreeMap<String, Tensor>,
    pub config: ModelConfig,
}

impl PerceptionWeights {
    /// The perception alone, as a checkpoint (for caching pretraining).
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            meta: CheckpointMeta {
                format: FORMAT_VERSION,
                config: self.config.clone(),
                vocab: self.perception.vocab.words.clone(),
                label: "perception".into(),
                steps: 0,
            },
            tensors: self.tensors.clone(),
        }
    }

    /// The same perception for a recommender without the request memory (the paper's state
    /// tracker, a GRU alone, and heads without a copy path).
    pub fn without_memory(&self) -> PerceptionWeights {
        let mut out = self.clone();
        let c = &mut out.config;
        c.tracker.memory = None;
        c.policy.copy = None;
        c.q.copy = None;
        // A zero output layer only makes sense beside a copy path to carry the policy.
        c.policy.zero_output = false;
        c.policy.input = c.tracker.hidden;
        c.q.input = c.tracker.hidden;
        out
    }

    /// Whether recommenders built on it have the request memory.
    pub fn has_memory(&self) -> bool {
        self.config.tracker.memory.is_some()
    }

    /// Rebuilds the perception from any checkpoint that carries it.
    pub fn from_checkpoint(ck: &Checkpoint, device: &candle_core::Device) -> Result<PerceptionWeights> {
        use irec_model::{text_encoder::TextEncoder, tokenizer::Vocabulary};
        let tensors: BTreeMap<String, Tensor> = ck.only(&["text.", "attrnet."]).tensors;
        let map: std::collections::HashMap<String, Tensor> =
            tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(device)?))).collect::<Result<_>>()?;
        let vb = candle_nn::VarBuilder::from_tensors(map, candle_core::DType::F32, device);
        let cfg = &ck.meta.config;
        let perception = Perception {
            vocab: Vocabulary::from_words(ck.meta.vocab.clone()),
            text: TextEncoder::new(&cfg.text, vb.pp("text"))?,
            attrnet: irec_model::attrnet::AttrNet::new(&cfg.attrnet, vb.pp("attrnet"))?,
            device: device.clone(),
        };
        Ok(PerceptionWeights { perception: Arc::new(perception), tensors, config: cfg.clone() })
    }
}

/// Optimisation settings shared by the algorithms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimConfig {
    /// Adam learning rate (paper: 5e-4).
    pub lr: f64,
    /// Discount factor (paper: 0.99).
    pub gamma: f64,
    /// Whole sessions per gradient step.
    pub batch_sessions: usize,
    /// Global gradient-norm clip (none when ≤ 0).
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { lr: 5e-4, gamma: 0.99, batch_sessions: 64, max_grad_norm: 10.0 }
    }
}

/// Adam (no weight decay) over a set of variables, with optional global-norm clipping, whose
/// moments can be saved and restored, so a learner continued in a later round (or after a
/// restart) carries on exactly where it stopped rather than with fresh moments.
pub struct Adam {
    vars: Vec<(String, Var)>,
    /// First and second moments, one pair per variable.
    moments: Vec<(Tensor, Tensor)>,
    t: u64,
    lr: f64,
    max_grad_norm: f64,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam").field("vars", &self.vars.len()).field("t", &self.t).finish()
    }
}

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl Adam {
    /// Over unnamed variables (their state is saved by position).
    pub fn new(vars: Vec<Var>, cfg: &OptimConfig) -> Result<Adam> {
        Adam::named(vars.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(), cfg)
    }

    /// Over named variables (their state is saved by name).
    pub fn named(vars: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Adam> {
        let moments = vars.iter().map(|(_, v)| Ok((v.zeros_like()?, v.zeros_like()?))).collect::<Result<_>>()?;
        Ok(Adam { vars, moments, t: 0, lr: cfg.lr, max_grad_norm: cfg.max_grad_norm })
    }

    /// The variables this optimizer updates.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.vars.iter().map(|(_, v)| v)
    }

    /// Applies the gradients of this optimizer's variables; returns their global norm before clipping.
    pub fn step(&mut self, grads: &mut GradStore) -> Result<f32> {
        let mut sq = 0f32;
        for (_, v) in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let norm = sq.sqrt();
        let scale = if self.max_grad_norm > 0.0 && norm as f64 > self.max_grad_norm { self.max_grad_norm / norm as f64 } else { 1.0 };
        self.t += 1;
        let c1 = 1.0 - ADAM_BETA1.powi(self.t as i32);
        let c2 = 1.0 - ADAM_BETA2.powi(self.t as i32);
        for ((_, v), (m, s)) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            if matches!(v.device(), candle_core::Device::Cpu) {
                Self::update_on_host(self.lr, v, m, s, g, scale, c1, c2)?;
                continue;
            }
            let g = if scale < 1.0 { (g * scale)? } else { g.clone() };
            *m = ((&*m * ADAM_BETA1)? + (&g * (1.0 - ADAM_BETA1))?)?;
            *s = ((&*s * ADAM_BETA2)? + (g.sqr()? * (1.0 - ADAM_BETA2))?)?;
            let update = ((&*m / c1)? / ((&*s / c2)?.sqrt()? + ADAM_EPS)?)?;
            v.set(&(v.as_tensor() - (update * self.lr)?)?)?;
        }
        Ok(norm)
    }

    /// The tensor update above in one pass per variable, for the CPU, where each of its dozen
    /// tensor ops is an allocation and a sweep. Each line repeats candle's arithmetic exactly
    /// (`t * c` is `t·c + 0` in f32, `t / c` is `t·(1/c) + 0`, `t + c` is `t·1 + c`), so the
    /// parameters come out the same to the bit.
    #[allow(clippy::too_many_arguments)]
    fn update_on_host(lr: f64, v: &Var, m: &mut Tensor, s: &mut Tensor, g: &Tensor, scale: f64, c1: f64, c2: f64) -> Result<()> {
        use irec_model::kernels::host;
        let (g, mut mv, mut sv, mut p) = (host(g)?, host(m)?, host(s)?, host(v.as_tensor())?);
        let (b1, nb1, b2, nb2) = (ADAM_BETA1 as f32, (1.0 - ADAM_BETA1) as f32, ADAM_BETA2 as f32, (1.0 - ADAM_BETA2) as f32);
        let (ic1, ic2, eps, lr, sc) = ((1.0 / c1) as f32, (1.0 / c2) as f32, ADAM_EPS as f32, lr as f32, scale as f32);
        for (((gi, mi), si), pi) in g.iter().zip(mv.iter_mut()).zip(sv.iter_mut()).zip(p.iter_mut()) {
            let gi = if scale < 1.0 { *gi * sc + 0.0 } else { *gi };
            *mi = (*mi * b1 + 0.0) + (gi * nb1 + 0.0);
            *si = (*si * b2 + 0.0) + ((gi * gi) * nb2 + 0.0);
            let update = (*mi * ic1 + 0.0) / ((*si * ic2 + 0.0).sqrt() * 1.0 + eps);
            *pi -= update * lr + 0.0;
        }
        let (shape, dev) = (v.shape().clone(), v.device().clone());
        *m = Tensor::from_vec(mv, &shape, &dev)?;
        *s = Tensor::from_vec(sv, &shape, &dev)?;
        v.set(&Tensor::from_vec(p, &shape, &dev)?)
    }

    /// The moments and step count, as tensors named `<prefix>.m.<var>`, `<prefix>.v.<var>` and
    /// `<prefix>.t`.
    pub fn state(&self, prefix: &str) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for ((name, _), (m, s)) in self.vars.iter().zip(&self.moments) {
            out.insert(format!("{prefix}.m.{name}"), m.copy()?);
            out.insert(format!("{prefix}.v.{name}"), s.copy()?);
        }
        let dev = self.moments.first().map_or(candle_core::Device::Cpu, |(m, _)| m.device().clone());
        out.insert(format!("{prefix}.t"), Tensor::new(&[self.t as f32], &dev)?);
        Ok(out)
    }

    /// Restores what [`Adam::state`] saved under `prefix`; variables it does not name keep fresh
    /// moments. Returns whether a saved state was found.
    pub fn load_state(&mut self, prefix: &str, tensors: &BTreeMap<String, Tensor>) -> Result<bool> {
        let Some(t) = tensors.get(&format!("{prefix}.t")) else { return Ok(false) };
        self.t = t.flatten_all()?.to_vec1::<f32>()?.first().map_or(0, |x| *x as u64);
        for ((name, v), (m, s)) in self.vars.iter().zip(self.moments.iter_mut()) {
            if let (Some(mm), Some(ss)) = (tensors.get(&format!("{prefix}.m.{name}")), tensors.get(&format!("{prefix}.v.{name}"))) {
                if mm.shape() == v.shape() && ss.shape() == v.shape() {
                    *m = mm.to_device(v.device())?;
                    *s = ss.to_device(v.device())?;
                }
            }
        }
        Ok(true)
    }
}

/// Initial extra logit of every head's "no preference" slot (see [`Recommender::prior_no_preference`]).
pub const NO_PREFERENCE_PRIOR: f32 = 3.0;

/// The trainable recommender: state tracker and policy head over a parameter store that also
/// holds the critics and target networks of whichever algorithm trains it.
#[derive(Clone, Debug)]
pub struct Recommender {
    pub store: ParamStore,
    pub tracker: StateTracker,
    pub policy: MultiHead,
    pub config: ModelConfig,
    pub perception: PerceptionWeights,
}

impl Recommender {
    /// A fresh recommender (or one continuing `init`'s `tracker.*`/`policy.*` weights).
    pub fn new(perception: &PerceptionWeights, seed: u64, init: Option<&Checkpoint>) -> Result<Recommender> {
        let store = ParamStore::new(seed, &perception.perception.device);
        if let Some(ck) = init {
            store.load_from(&ck.only(&["tracker.", "policy."]).tensors)?;
        }
        let vb = store.builder();
        let config = perception.config.clone();
        let fresh = init.is_none();
        let rec = Recommender {
            tracker: StateTracker::new(&config.tracker, vb.pp("tracker"))?,
            policy: MultiHead::new(&config.policy, vb.pp("policy"))?,
            store,
            config,
            perception: perception.clone(),
        };
        if fresh {
            rec.prior_no_preference(NO_PREFERENCE_PRIOR)?;
        }
        Ok(rec)
    }

    /// Starts every head leaning towards its "no preference" slot by `logit` logits.
    ///
    /// A fresh policy asks for random values on all six heads, and retrieval then favours items
    /// that match many of those random values over the one value the user did ask for: the right
    /// choice on one head barely changes what is shown, and policy gradients starve. Starting from
    /// "show anything" makes each requested value decisive for retrieval, so its effect on the
    /// reward is visible from the first iterations.
    pub fn prior_no_preference(&self, logit: f32) -> Result<()> {
        if let Some(bias) = self.store.vars("policy.out.bias").first() {
            let mut values = bias.as_tensor().to_vec1::<f32>()?;
            let mut off = 0;
            for n in self.heads() {
                if let Some(v) = values.get_mut(off) {
                    *v += logit;
                }
                off += n;
            }
            bias.set(&Tensor::from_vec(values, bias.shape(), bias.device())?)?;
        }
        Ok(())
    }

    pub fn heads(&self) -> &[usize] {
        &self.config.heads
    }

    /// A checkpoint that rebuilds this policy on its own (perception + tracker + policy).
    pub fn export(&self, label: &str, steps: u64) -> Checkpoint {
        let mut tensors = self.perception.tensors.clone();
        tensors.extend(self.store.tensors("tracker."));
        tensors.extend(self.store.tensors("policy."));
        Checkpoint {
            meta: CheckpointMeta {
                format: FORMAT_VERSION,
                config: self.config.clone(),
                vocab: self.perception.perception.vocab.words.clone(),
                label: label.to_string(),
                steps,
            },
            tensors,
        }
    }
}

/// Losses of one step, as named numbers for the training log.
pub trait LossRecord {
    fn fields(&self) -> Vec<(&'static str, f32)>;
}

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    pub step: u64,
    pub losses: BTreeMap<String, f32>,
}

/// An algorithm that learns from a fixed dataset of sessions.
pub trait OfflineAlgorithm {
    type Losses: LossRecord;
    /// One gradient step on a batch.
    fn update(&mut self, batch: &Batch) -> Result<Self::Losses>;
    fn recommender(&self) -> &Recommender;
    /// Gradient steps taken so far.
    fn steps(&self) -> u64;
}

/// The trainer loop: `steps` updates on batches of `batch_sessions` whole sessions, the losses
/// averaged and logged every `log_every` steps (and passed to `on_log`).
pub fn fit<A: OfflineAlgorithm + Send>(
    algo: &mut A,
    data: &SessionDataset,
    steps: usize,
    batch_sessions: usize,
    log_every: usize,
    rng: &mut Rng,
    mut on_log: impl FnMut(&TrainLog) + Send,
) -> Result<Vec<TrainLog>> {
    let device = algo.recommender().perception.perception.device.clone();
    // The pool's idle workers spin through the loop: each step joins a dozen times.
    concurrent::awake(&device, || {
        let mut logs = Vec::new();
        let mut acc: BTreeMap<&'static str, (f32, u32)> = BTreeMap::new();
        for step in 0..steps {
            let idx = data.sample(batch_sessions, rng);
            if idx.is_empty() {
                break;
            }
            let batch = data.batch(&idx, &device)?;
            let losses = algo.update(&batch)?;
            for (k, v) in losses.fields() {
                let e = acc.entry(k).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
            if (step + 1) % log_every.max(1) == 0 || step + 1 == steps {
                let log = TrainLog {
                    step: algo.steps(),
                    losses: acc.iter().map(|(k, (s, n))| (k.to_string(), s / (*n).max(1) as f32)).collect(),
                };
                on_log(&log);
                logs.push(log);
                acc.clear();
            }
        }
        Ok(logs)
    })
}

/// Scalar value of a 0-d tensor.
pub(crate) fn scalar(t: &Tensor) -> Result<f32> {
    t.to_scalar::<f32>()
}
