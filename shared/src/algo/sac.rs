//! Discrete soft actor-critic over the factorized Q-function (the paper's off-policy row when run
//! without a conservative penalty; [`super::cql`] adds it).
//!
//! Critic: twin Q-functions Q_i(s, a) = Σ_d Q_{i,d}(s, a_d) on the state tracker's states, trained
//! with the soft Bellman target y = r + γ(1 − done)·(min_i Σ_d E_{π_d}[Q'_{i,d}(s′)] − T·Σ_d E_{π_d}[log π_d(s′)]),
//! the state tracker trained through the critic loss (unrolled over whole sessions), and soft-updated
//! target copies of tracker and critics. Actor: per head, min_π E_{π_d}[T·log π_d − min_i Q_{i,d}] on
//! detached states. Because policy and Q factorize, every expectation over the joint action is a
//! sum of per-head expectations, computed exactly.

use super::cql::CqlConfig;
use super::{scalar, Adam, Batch, LossRecord, OfflineAlgorithm, OptimConfig, PerceptionWeights, Recommender};
use crate::model::heads::MultiHead;
use crate::model::kernels::{seg_log_softmax, seg_logsumexp};
use crate::model::tracker::StateTracker;
use crate::model::Checkpoint;
use candle_core::{Result, Tensor, D};
use candle_nn::Optimizer;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SacConfig {
    pub optim: OptimConfig,
    /// Entropy temperature T (scaled reward units per nat); the starting value when tuned.
    pub temperature: f64,
    /// Tune T so the policy's entropy (summed over heads) tracks this share of the uniform
    /// policy's entropy Σ_d log n_d (none: T stays fixed). A fixed small T let the actor collapse
    /// onto whatever an early critic preferred, where a saturated softmax has no gradient left.
    pub target_entropy_ratio: Option<f64>,
    /// Target-network soft-update rate per step.
    pub tau: f64,
    /// How the actor is pulled towards the soft-greedy policy softmax(Q/T) of the critic.
    pub actor: ActorLoss,
    /// Rewards are multiplied by this before the Bellman backup (scales Q against the CQL term
    /// and the temperature; 0.1 made the CQL term dominate and the critic fit values worse).
    pub reward_scale: f64,
}

impl Default for SacConfig {
    fn default() -> Self {
        SacConfig {
            // 1e-3 rather than the paper's 5e-4: the critic learns its action ranking about twice
            // as fast, and its TD error stays flat (docs/results.md, "Tuning").
            optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
            temperature: 0.05,
            target_entropy_ratio: Some(0.2),
            tau: 0.005,
            actor: ActorLoss::ForwardKl,
            reward_scale: 1.0,
        }
    }
}

/// The actor's loss. Both have the soft-greedy policy π* ∝ exp(Q/T) (per head) as minimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorLoss {
    /// SAC's E_π[T·log π − Q] = T·KL(π ‖ π*) + const. Mode-seeking; once π is nearly
    /// deterministic its softmax saturates and the gradient towards a better slot vanishes, so an
    /// actor that settled on an early critic's choice stays there (measured: the actor agreed with
    /// its critic's best slot on only 62–78% of heads, and the critic's own greedy policy did 4×
    /// better than the actor).
    ReverseKl,
    /// Cross-entropy of π against π* (KL(π* ‖ π) + const): the same minimiser, but the gradient
    /// stays π − π* however certain π already is.
    ForwardKl,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SacLosses {
    pub critic: f32,
    pub policy: f32,
    /// Mean squared TD error (per critic).
    pub td: f32,
    /// Conservative penalty Σ_d logsumexp Q_d − Q(s, a_data) (0 without CQL).
    pub cql: f32,
    /// Mean Q(s, a) of logged actions.
    pub q_data: f32,
    /// Mean policy entropy per turn, summed over heads (nats).
    pub entropy: f32,
    pub critic_grad_norm: f32,
    /// Entropy temperature used in this step.
    pub temperature: f32,
}

impl LossRecord for SacLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        vec![
            ("critic", self.critic),
            ("policy", self.policy),
            ("td", self.td),
            ("cql", self.cql),
            ("q_data", self.q_data),
            ("entropy", self.entropy),
            ("critic_grad_norm", self.critic_grad_norm),
            ("temperature", self.temperature),
        ]
    }
}

/// The networks one SAC/CQL step needs, whatever produced the states (the recurrent learner, or
/// the flat benchmark).
pub struct SacNets<'a> {
    pub q1: &'a MultiHead,
    /// The twin critic (`None`: a single critic, as in the reference benchmark).
    pub q2: Option<&'a MultiHead>,
    pub target_q1: &'a MultiHead,
    pub target_q2: Option<&'a MultiHead>,
    pub policy: &'a MultiHead,
    pub heads: &'a [usize],
    pub temperature: f64,
    pub gamma: f64,
    /// Multiplier of the rewards in the target.
    pub reward_scale: f64,
    /// CQL(H) weight α; `None` for plain SAC.
    pub cql_alpha: Option<f64>,
    pub actor: ActorLoss,
}

/// Per-row data of a batch: (N, W) one-hot actions, (N) rewards, not-done flags and mask.
pub struct Rows<'a> {
    pub onehot: &'a Tensor,
    pub rewards: &'a Tensor,
    pub not_done: &'a Tensor,
    pub mask: &'a Tensor,
}

impl Rows<'_> {
    fn mean(&self, per_row: &Tensor) -> Result<Tensor> {
        let total = self.mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        (per_row * self.mask)?.sum_all()? / total as f64
    }
}

impl SacNets<'_> {
    /// Soft Bellman targets y = r + γ(1 − done)·V(s′), no gradient. `s_next` feeds the policy,
    /// `s_next_target` the target critics.
    pub fn compute_target(&self, s_next: &Tensor, s_next_target: &Tensor, rows: &Rows) -> Result<Tensor> {
        let logp = seg_log_softmax(&self.policy.forward(s_next)?, self.heads)?.detach();
        let p = logp.exp()?;
        let mut e = (&p * self.target_q1.forward(s_next_target)?)?.sum(D::Minus1)?;
        if let Some(q) = self.target_q2 {
            e = e.minimum(&(&p * q.forward(s_next_target)?)?.sum(D::Minus1)?)?;
        }
        let neg_entropy = (&p * &logp)?.sum(D::Minus1)?;
        let v = (e - (neg_entropy * self.temperature)?)?;
        let y = ((rows.rewards * self.reward_scale)? + (v * rows.not_done)?.affine(self.gamma, 0.0)?)?;
        Ok(y.detach())
    }

    /// Critic and policy losses (scalars) with diagnostics. `s` carries gradients into whatever
    /// produced it (the state tracker); the actor sees it detached.
    pub fn losses(&self, s: &Tensor, s_next: &Tensor, s_next_target: &Tensor, rows: &Rows) -> Result<(Tensor, Tensor, SacLosses)> {
        let y = self.compute_target(s_next, s_next_target, rows)?;
        let critics: Vec<Tensor> = std::iter::once(self.q1).chain(self.q2).map(|q| q.forward(s)).collect::<Result<_>>()?;
        let k = critics.len() as f64;
        let mut td_sum: Option<Tensor> = None;
        let mut pen_sum: Option<Tensor> = None;
        let mut q1_sa = None;
        for q in &critics {
            let q_sa = (q * rows.onehot)?.sum(D::Minus1)?;
            let td = (&q_sa - &y)?.sqr()?;
            td_sum = Some(match td_sum { Some(t) => (t + td)?, None => td });
            if self.cql_alpha.is_some() {
                let pen = super::cql::cql_penalty(q, &q_sa, self.heads)?;
                pen_sum = Some(match pen_sum { Some(p) => (p + pen)?, None => pen });
            }
            q1_sa.get_or_insert(q_sa);
        }
        let (Some(td), Some(q1_sa)) = (td_sum, q1_sa) else { candle_core::bail!("no critic") };
        let mut critic_rows = (&td * 0.5)?;
        let mut cql_mean = 0.0;
        if let (Some(alpha), Some(pen)) = (self.cql_alpha, pen_sum) {
            cql_mean = scalar(&rows.mean(&pen)?)? / k as f32;
            critic_rows = (critic_rows + (pen * alpha)?)?;
        }
        let critic = rows.mean(&critic_rows)?;
        // Actor on detached states against the detached pessimistic per-head critic.
        let logp = seg_log_softmax(&self.policy.forward(&s.detach())?, self.heads)?;
        let p = logp.exp()?;
        let qmin = match critics.get(1) {
            Some(q2) => critics[0].minimum(q2)?.detach(),
            None => critics[0].detach(),
        };
        let actor_rows = match self.actor {
            ActorLoss::ReverseKl => (&p * ((&logp * self.temperature)? - qmin)?)?.sum(D::Minus1)?,
            ActorLoss::ForwardKl => {
                let target = seg_log_softmax(&(qmin / self.temperature)?, self.heads)?.exp()?.detach();
                (target * &logp)?.sum(D::Minus1)?.neg()?
            }
        };
        let policy = rows.mean(&actor_rows)?;
        let entropy = rows.mean(&(&p * &logp)?.sum(D::Minus1)?.neg()?)?;
        let losses = SacLosses {
            critic: scalar(&critic)?,
            policy: scalar(&policy)?,
            td: scalar(&rows.mean(&td)?)? / k as f32,
            cql: cql_mean,
            q_data: scalar(&rows.mean(&q1_sa)?)?,
            entropy: scalar(&entropy)?,
            critic_grad_norm: 0.0,
            temperature: self.temperature as f32,
        };
        Ok((critic, policy, losses))
    }
}

/// Discrete SAC, optionally with the CQL(H) penalty.
#[derive(Debug)]
pub struct DiscreteSac {
    pub cfg: SacConfig,
    pub cql: Option<CqlConfig>,
    rec: Recommender,
    q1: MultiHead,
    q2: MultiHead,
    target_tracker: StateTracker,
    target_q1: MultiHead,
    target_q2: MultiHead,
    critic_opt: Adam,
    policy_opt: Adam,
    /// log T, tuned towards the target entropy when configured.
    log_temperature: candle_core::Var,
    temperature_opt: Option<candle_nn::AdamW>,
    steps: u64,
}

/// The per-step quantities the losses are made of.
pub struct SacTerms {
    /// (N, W) critic outputs on the online states.
    pub q1: Tensor,
    pub q2: Tensor,
    /// (N) soft Bellman targets (no gradient).
    pub target: Tensor,
}

impl DiscreteSac {
    /// `init`: continue from a checkpoint's tracker and policy (and critics, when it has them).
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &SacConfig, cql: Option<CqlConfig>, init: Option<&Checkpoint>) -> Result<DiscreteSac> {
        let rec = Recommender::new(perception, seed, init)?;
        if let Some(ck) = init {
            rec.store.load_from(&ck.only(&["q1.", "q2."]).tensors)?;
        }
        let vb = rec.store.builder();
        let qcfg = &rec.config.q;
        let q1 = MultiHead::new(qcfg, vb.pp("q1"))?;
        let q2 = MultiHead::new(qcfg, vb.pp("q2"))?;
        let target_tracker = StateTracker::new(&rec.config.tracker, vb.pp("target").pp("tracker"))?;
        let target_q1 = MultiHead::new(qcfg, vb.pp("target").pp("q1"))?;
        let target_q2 = MultiHead::new(qcfg, vb.pp("target").pp("q2"))?;
        for p in ["tracker.", "q1.", "q2."] {
            rec.store.soft_update(p, &format!("target.{p}"), 1.0)?;
        }
        let mut critic_vars = rec.store.vars("tracker.");
        critic_vars.extend(rec.store.vars("q1."));
        critic_vars.extend(rec.store.vars("q2."));
        let critic_opt = Adam::new(critic_vars, &cfg.optim)?;
        let policy_opt = Adam::new(rec.store.vars("policy."), &cfg.optim)?;
        let log_temperature = candle_core::Var::new(cfg.temperature.max(1e-6).ln() as f32, rec.store.device())?;
        let temperature_opt = match cfg.target_entropy_ratio {
            Some(_) => Some(candle_nn::AdamW::new(
                vec![log_temperature.clone()],
                candle_nn::ParamsAdamW { lr: cfg.optim.lr, weight_decay: 0.0, ..Default::default() },
            )?),
            None => None,
        };
        Ok(DiscreteSac {
            cfg: cfg.clone(),
            cql,
            rec,
            q1,
            q2,
            target_tracker,
            target_q1,
            target_q2,
            critic_opt,
            policy_opt,
            log_temperature,
            temperature_opt,
            steps: 0,
        })
    }

    /// Share of heads on which the actor's most likely slot is the pessimistic critic's best slot,
    /// over a batch's real turns (a diagnostic of how well the actor follows the critic).
    pub fn actor_agreement(&self, batch: &Batch) -> Result<f32> {
        let states = self.rec.tracker.unroll(&batch.features)?;
        let s = self.flat(&states, 0, batch)?;
        let logits = self.rec.policy.forward(&s)?.to_vec2::<f32>()?;
        let q = self.q1.forward(&s)?.minimum(&self.q2.forward(&s)?)?.to_vec2::<f32>()?;
        let mask = batch.mask.to_vec1::<f32>()?;
        let argmax = |x: &[f32]| x.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |p| p.0);
        let (mut hit, mut total) = (0usize, 0usize);
        for ((l, q), m) in logits.iter().zip(&q).zip(&mask) {
            if *m == 0.0 {
                continue;
            }
            let mut off = 0;
            for n in self.rec.heads() {
                hit += usize::from(argmax(&l[off..off + n]) == argmax(&q[off..off + n]));
                total += 1;
                off += n;
            }
        }
        Ok(hit as f32 / total.max(1) as f32)
    }

    /// The first critic (its per-head outputs can act as a greedy policy, for diagnostics).
    pub fn critic(&self) -> &MultiHead {
        &self.q1
    }

    /// The current entropy temperature.
    pub fn temperature(&self) -> Result<f64> {
        Ok(self.log_temperature.as_tensor().to_scalar::<f32>()?.exp() as f64)
    }

    /// Tracker, policy and critics, for continuing training later.
    pub fn training_state(&self, label: &str) -> Checkpoint {
        let mut ck = self.rec.export(label, self.steps);
        ck.tensors.extend(self.rec.store.tensors("q1."));
        ck.tensors.extend(self.rec.store.tensors("q2."));
        ck
    }

    fn flat(&self, states: &Tensor, from: usize, batch: &Batch) -> Result<Tensor> {
        states.narrow(0, from, batch.steps)?.reshape((batch.steps * batch.sessions, self.rec.tracker.hidden()))
    }

    /// Critic and policy losses (scalars) with their diagnostics.
    pub fn compute_loss(&self, batch: &Batch) -> Result<(Tensor, Tensor, SacLosses)> {
        let states = self.rec.tracker.unroll(&batch.features)?;
        let s = self.flat(&states, 0, batch)?;
        let s_next = self.flat(&states, 1, batch)?.detach();
        let target_states = self.target_tracker.unroll(&batch.features)?.detach();
        let s_next_target = self.flat(&target_states, 1, batch)?;
        let nets = SacNets {
            q1: &self.q1,
            q2: Some(&self.q2),
            target_q1: &self.target_q1,
            target_q2: Some(&self.target_q2),
            policy: &self.rec.policy,
            heads: self.rec.heads(),
            temperature: self.temperature()?,
            gamma: self.cfg.optim.gamma,
            reward_scale: self.cfg.reward_scale,
            actor: self.cfg.actor,
            cql_alpha: self.cql.as_ref().map(|c| c.alpha),
        };
        let rows = Rows { onehot: &batch.onehot, rewards: &batch.rewards, not_done: &batch.not_done, mask: &batch.mask };
        nets.losses(&s, &s_next, &s_next_target, &rows)
    }

    /// Both critics' per-head outputs Q_{i,d}(s, ·), each (N, Σ heads), on given states (N, hidden):
    /// Q_i(s, a) = Σ_d of the slots `a` picks (diagnostics; the conservatism test).
    pub fn q_values(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.q1.forward(states)?, self.q2.forward(states)?))
    }

    /// log Σ_a exp Q(s, a) over the joint action space, per row of a critic output `q` (N, Σ heads):
    /// Σ_d logsumexp Q_d(s, ·), exact because Q factorizes.
    pub fn lse(&self, q: &Tensor) -> Result<Tensor> {
        seg_logsumexp(q, self.rec.heads())?.sum(D::Minus1)
    }
}

impl OfflineAlgorithm for DiscreteSac {
    type Losses = SacLosses;

    fn update(&mut self, batch: &Batch) -> Result<SacLosses> {
        let (critic, policy, mut losses) = self.compute_loss(batch)?;
        // Critic and actor parameters are disjoint: one backward serves both.
        let mut grads = (critic + policy)?.backward()?;
        losses.critic_grad_norm = self.critic_opt.step(&mut grads)?;
        self.policy_opt.step(&mut grads)?;
        losses.temperature = self.temperature()? as f32;
        if let (Some(opt), Some(ratio)) = (self.temperature_opt.as_mut(), self.cfg.target_entropy_ratio) {
            // d/d log T of T·(H − H_target): raise T while the policy is more certain than wanted.
            let target: f64 = ratio * self.rec.heads().iter().map(|n| (*n as f64).ln()).sum::<f64>();
            let t_loss = (self.log_temperature.as_tensor().exp()? * (losses.entropy as f64 - target))?;
            opt.backward_step(&t_loss)?;
        }
        for p in ["tracker.", "q1.", "q2."] {
            self.rec.store.soft_update(p, &format!("target.{p}"), self.cfg.tau)?;
        }
        self.steps += 1;
        Ok(losses)
    }

    fn recommender(&self) -> &Recommender {
        &self.rec
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
