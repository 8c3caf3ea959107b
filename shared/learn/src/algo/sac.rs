//! Discrete soft actor-critic over the factorized Q-function (the paper's off-policy row when run
//! without a conservative penalty; [`super::cql`] adds it).
//!
//! Critic: twin Q-functions Q_i(s, a) = Σ_d Q_{i,d}(s, a_d) on the state tracker's states, trained
//! with the soft Bellman target y = r + γ(1 − done)·(min_i Σ_d E_{π_d}[Q'_{i,d}(s′)] − T·Σ_d E_{π_d}[log π_d(s′)]),
//! the state tracker trained through the critic loss (unrolled over whole sessions), and soft-updated
//! target copies of tracker and critics. Actor: per head, min_π E_{π_d}[T·log π_d − min_i Q_{i,d}] on
//! detached states. Because policy and Q factorize, every expectation over the joint action is a
//! sum of per-head expectations, computed exactly.

use super::concurrent::{backward_apart, side_by_side};
use super::cql::CqlConfig;
use super::{scalar, Adam, Batch, LossRecord, OfflineAlgorithm, OptimConfig, PerceptionWeights, Recommender};
use irec_model::heads::MultiHead;
use irec_model::head_losses::{critic_terms, policy_terms, policy_value, CriticRows, PolicyForm, PolicyRows, TdForm, ValueRows};
use irec_model::kernels::{seg_log_softmax, seg_logsumexp};
use irec_model::tracker::StateTracker;
use irec_model::Checkpoint;
use candle_core::{Result, Tensor, D};
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
    /// What each critic head is regressed to (see [`CriticBackup`]).
    pub backup: CriticBackup,
    /// Add the policy's entropy bonus T·H(π(s′)) to the backup (soft Q-learning, as SAC does).
    /// Off: the critic evaluates the return alone. With a per-turn cost, a bonus of T·H per turn
    /// (≈ 0.15 at the tuned temperature) outweighs the cost and makes prolonging pay.
    pub entropy_in_backup: bool,
    /// Hidden widths of the critics' MLP (unset: the model config's, the paper's [32, 32]).
    pub q_hidden: Option<Vec<usize>>,
    /// Weight of the logged actions' negative log-likelihood under the policy head, trained
    /// through the state tracker (0: the tracker learns from the critic loss alone).
    pub tracker_bc: f64,
    /// λ of the critic's TD(λ) target over each whole session: y_t = r_t + γ[(1 − λ)·V(s_{t+1}) +
    /// λ·y_{t+1}] (0: the one-step target). A one-step target moves value back one turn per
    /// target-network time constant (1/τ = 200 steps), too slow for sessions of 10–50 turns
    /// within a round's step budget; λ > 0 carries the logged outcome back at once.
    pub td_lambda: f64,
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
            // Measured on one D (`fleet-sim ablate`, docs/results.md "Choices made by measurement"):
            // per-head targets, a wider critic and TD(λ) each lifted the offline learner past its
            // data; the entropy bonus in the backup pulled it below.
            backup: CriticBackup::PerHead,
            entropy_in_backup: false,
            q_hidden: Some(vec![128, 128]),
            tracker_bc: 0.0,
            td_lambda: 0.9,
        }
    }
}

impl SacConfig {
    /// Refuses settings that cannot train; `at` is the TOML path of this table (e.g.
    /// `trainer.sac`), named in the error.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        let o = &self.optim;
        let bad = |field: &str, why: &str| Err(format!("{at}.{field} {why}"));
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", "must be a finite number > 0");
        }
        if self.target_entropy_ratio.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1.0)) {
            return bad("target_entropy_ratio", "must be in (0, 1]");
        }
        if !(self.tau.is_finite() && self.tau > 0.0 && self.tau <= 1.0) {
            return bad("tau", "must be in (0, 1]");
        }
        if !(self.reward_scale.is_finite() && self.reward_scale > 0.0) {
            return bad("reward_scale", "must be a finite number > 0");
        }
        if !(self.td_lambda.is_finite() && (0.0..=1.0).contains(&self.td_lambda)) {
            return bad("td_lambda", "must be in [0, 1]");
        }
        if !(self.tracker_bc.is_finite() && self.tracker_bc >= 0.0) {
            return bad("tracker_bc", "must be a finite number ≥ 0");
        }
        if self.q_hidden.as_ref().is_some_and(|h| h.is_empty() || h.contains(&0)) {
            return bad("q_hidden", "must list one or more widths > 0");
        }
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optim.lr", "must be a finite number > 0");
        }
        if !(o.gamma.is_finite() && o.gamma > 0.0 && o.gamma <= 1.0) {
            return bad("optim.gamma", "must be in (0, 1]");
        }
        if o.batch_sessions == 0 {
            return bad("optim.batch_sessions", "must be at least 1");
        }
        Ok(())
    }
}

/// How the factorized critic's heads share the Bellman target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticBackup {
    /// Q(s, a) = Σ_d Q_d(s, a_d) is regressed to y: one TD error for all heads, each head's share
    /// of the credit left to the fit.
    Joint,
    /// Every head is regressed to y on its own (action branching): Q_d(s, a_d) estimates the
    /// whole return of slot a_d with the other heads as the data chose them, and V(s′) is the
    /// heads' mean E_{π_d}[Q_d(s′)]. Each head's ranking is then identified by its own slot alone.
    PerHead,
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

/// Name of the saved log-temperature in a learner's training state.
const TEMPERATURE: &str = "sac.log_temperature";

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
    pub backup: CriticBackup,
    pub entropy_in_backup: bool,
    /// Weight of the logged actions' NLL under the policy on the (non-detached) states.
    pub tracker_bc: f64,
    /// λ of the TD(λ) target (needs [`Rows::sessions`]: rows laid out time-major).
    pub td_lambda: f64,
}

/// Per-row data of a batch: (N, W) one-hot actions, (N) rewards, not-done flags and mask.
pub struct Rows<'a> {
    pub onehot: &'a Tensor,
    pub rewards: &'a Tensor,
    pub not_done: &'a Tensor,
    pub mask: &'a Tensor,
    /// Sessions per time step when rows are whole sessions laid out time-major (row t·B + b is
    /// turn t of session b); 0 when rows are independent transitions.
    pub sessions: usize,
}

impl Rows<'_> {
    fn mean(&self, per_row: &Tensor) -> Result<Tensor> {
        let total = self.mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        (per_row * self.mask)?.sum_all()? / total as f64
    }
}

/// The critic's logged figures for one batch.
struct CriticStats {
    critic: f32,
    td: f32,
    cql: f32,
    q_data: f32,
}

/// The actor's logged figures for one batch.
struct ActorStats {
    policy: f32,
    entropy: f32,
}

impl SacNets<'_> {
    /// Soft Bellman targets y = r + γ(1 − done)·V(s′), no gradient. `s_next` feeds the policy,
    /// `s_next_target` the target critics.
    pub fn compute_target(&self, s_next: &Tensor, s_next_target: &Tensor, rows: &Rows) -> Result<Tensor> {
        let logits = self.policy.forward(s_next)?;
        let ValueRows { expected_q: mut e, neg_entropy } = policy_value(&logits, &self.target_q1.forward(s_next_target)?, self.heads)?;
        if let Some(q) = self.target_q2 {
            e = e.minimum(&policy_value(&logits, &q.forward(s_next_target)?, self.heads)?.expected_q)?;
        }
        if self.backup == CriticBackup::PerHead {
            e = (e / self.heads.len().max(1) as f64)?;
        }
        let v = if self.entropy_in_backup {
            (e - (neg_entropy * self.temperature)?)?
        } else {
            e
        };
        if self.td_lambda > 0.0 && rows.sessions > 0 {
            return self.lambda_target(&v.detach(), rows);
        }
        let y = ((rows.rewards * self.reward_scale)? + (v * rows.not_done)?.affine(self.gamma, 0.0)?)?;
        Ok(y.detach())
    }

    /// TD(λ) targets, on the host: a few thousand rows, and a recursion across rows that tensor
    /// ops would need T steps for anyway.
    fn lambda_target(&self, v_next: &Tensor, rows: &Rows) -> Result<Tensor> {
        let (v, r, nd) = (v_next.to_vec1::<f32>()?, rows.rewards.to_vec1::<f32>()?, rows.not_done.to_vec1::<f32>()?);
        let y = super::dataset::lambda_targets(&v, &r, &nd, rows.sessions, self.gamma as f32, self.td_lambda as f32, self.reward_scale as f32, None);
        Tensor::from_vec(y, v.len(), v_next.device())
    }

    /// Critic and policy losses (scalars) with diagnostics. `s` carries gradients into whatever
    /// produced it (the state tracker); the actor sees it detached.
    pub fn losses(&self, s: &Tensor, s_next: &Tensor, s_next_target: &Tensor, rows: &Rows) -> Result<(Tensor, Tensor, SacLosses)> {
        // The backup target and the online forward passes share nothing: side by side.
        let (y, online) = side_by_side(
            s.device(),
            || self.compute_target(s_next, s_next_target, rows),
            || -> Result<(Vec<Tensor>, Tensor)> {
                let critics = std::iter::once(self.q1).chain(self.q2).map(|q| q.forward(s)).collect::<Result<_>>()?;
                // The actor on detached states.
                let logits = self.policy.forward(&s.detach())?;
                Ok((critics, logits))
            },
        );
        let (y, (critics, logits)) = (y?, online?);
        // The critic's and the actor's losses read the same forward passes and nothing of each
        // other: side by side too.
        let (critic, actor) = side_by_side(s.device(), || self.critic_loss(&critics, &y, rows), || self.actor_loss(&critics, &logits, s, rows));
        let ((critic, c), (policy, a)) = (critic?, actor?);
        let losses = SacLosses {
            critic: c.critic,
            policy: a.policy,
            td: c.td,
            cql: c.cql,
            q_data: c.q_data,
            entropy: a.entropy,
            critic_grad_norm: 0.0,
            temperature: self.temperature as f32,
        };
        Ok((critic, policy, losses))
    }

    /// The critics' loss: TD (and CQL's penalty) against the backup targets `y`.
    fn critic_loss(&self, critics: &[Tensor], y: &Tensor, rows: &Rows) -> Result<(Tensor, CriticStats)> {
        let td_form = match self.backup {
            CriticBackup::Joint => TdForm::Joint,
            CriticBackup::PerHead => TdForm::PerHead,
        };
        let k = critics.len() as f64;
        let mut td_sum: Option<Tensor> = None;
        let mut pen_sum: Option<Tensor> = None;
        let mut q1_sa = None;
        let heads = self.heads.len().max(1) as f64;
        for q in critics {
            let CriticRows { td, cql, q_sa } = critic_terms(q, rows.onehot, y, self.heads, td_form)?;
            td_sum = Some(match td_sum { Some(t) => (t + td)?, None => td });
            if self.cql_alpha.is_some() {
                pen_sum = Some(match pen_sum { Some(p) => (p + cql)?, None => cql });
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
        let stats = CriticStats {
            critic: scalar(&critic)?,
            td: scalar(&rows.mean(&td)?)? / (k * if self.backup == CriticBackup::PerHead { heads } else { 1.0 }) as f32,
            cql: cql_mean,
            q_data: scalar(&rows.mean(&q1_sa)?)?,
        };
        Ok((critic, stats))
    }

    /// The actor's loss against the detached pessimistic per-head critic, from its `logits` on
    /// the detached states (and, with `tracker_bc`, its cloning loss on `s` itself).
    fn actor_loss(&self, critics: &[Tensor], logits: &Tensor, s: &Tensor, rows: &Rows) -> Result<(Tensor, ActorStats)> {
        let Some(q1) = critics.first() else { candle_core::bail!("no critic") };
        let qmin = match critics.get(1) {
            Some(q2) => q1.minimum(q2)?.detach(),
            None => q1.detach(),
        };
        let form = match self.actor {
            ActorLoss::ReverseKl => PolicyForm::ReverseKl,
            ActorLoss::ForwardKl => PolicyForm::ForwardKl,
        };
        let PolicyRows { loss: actor_rows, neg_entropy } = policy_terms(logits, &qmin, self.temperature, self.heads, form)?;
        let actor_rows = if self.tracker_bc > 0.0 {
            let logp_s = seg_log_softmax(&self.policy.forward(s)?, self.heads)?;
            let nll = (logp_s * rows.onehot)?.sum(D::Minus1)?.neg()?;
            (actor_rows + (nll * self.tracker_bc)?)?
        } else {
            actor_rows
        };
        let policy = rows.mean(&actor_rows)?;
        let stats = ActorStats { policy: scalar(&policy)?, entropy: scalar(&rows.mean(&neg_entropy.neg()?)?)? };
        Ok((policy, stats))
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
    temperature_opt: Option<Adam>,
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
    /// `init`: continue from a checkpoint's tracker and policy, and from whatever else of a
    /// learner's [`DiscreteSac::training_state`] it carries (critics, target networks, the
    /// temperature, the optimisers' moments), so a continued learner carries on where it stopped.
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &SacConfig, cql: Option<CqlConfig>, init: Option<&Checkpoint>) -> Result<DiscreteSac> {
        let mut rec = Recommender::new(perception, seed, init)?;
        if let Some(h) = &cfg.q_hidden {
            rec.config.q.hidden = h.clone();
        }
        let continued_targets = init.is_some_and(|ck| ck.tensors.keys().any(|k| k.starts_with("target.")));
        if let Some(ck) = init {
            rec.store.load_from(&ck.only(&["q1.", "q2.", "target."]).tensors)?;
        }
        let vb = rec.store.builder();
        let qcfg = &rec.config.q;
        let q1 = MultiHead::new(qcfg, vb.pp("q1"))?;
        let q2 = MultiHead::new(qcfg, vb.pp("q2"))?;
        let target_tracker = StateTracker::new(&rec.config.tracker, vb.pp("target").pp("tracker"))?;
        let target_q1 = MultiHead::new(qcfg, vb.pp("target").pp("q1"))?;
        let target_q2 = MultiHead::new(qcfg, vb.pp("target").pp("q2"))?;
        if !continued_targets {
            for p in ["tracker.", "q1.", "q2."] {
                rec.store.soft_update(p, &format!("target.{p}"), 1.0)?;
            }
        }
        let mut critic_vars = rec.store.named_vars("tracker.");
        critic_vars.extend(rec.store.named_vars("q1."));
        critic_vars.extend(rec.store.named_vars("q2."));
        let mut critic_opt = Adam::named(critic_vars, &cfg.optim)?;
        let mut policy_opt = Adam::named(rec.store.named_vars("policy."), &cfg.optim)?;
        let saved_temperature = init.and_then(|ck| ck.tensors.get(TEMPERATURE)).and_then(|t| t.flatten_all().ok()?.to_vec1::<f32>().ok()?.first().copied());
        let log_t0 = saved_temperature.unwrap_or(cfg.temperature.max(1e-6).ln() as f32);
        let log_temperature = candle_core::Var::new(log_t0, rec.store.device())?;
        let mut temperature_opt = match cfg.target_entropy_ratio {
            Some(_) => Some(Adam::named(vec![("log_temperature".into(), log_temperature.clone())], &OptimConfig { max_grad_norm: 0.0, ..cfg.optim.clone() })?),
            None => None,
        };
        let mut steps = 0;
        if let Some(ck) = init {
            if critic_opt.load_state("opt.critic", &ck.tensors)? {
                steps = ck.meta.steps;
            }
            policy_opt.load_state("opt.policy", &ck.tensors)?;
            if let Some(o) = temperature_opt.as_mut() {
                o.load_state("opt.temperature", &ck.tensors)?;
            }
        }
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
            steps,
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

    /// Everything needed to continue training later exactly as if it had not stopped: tracker,
    /// policy, critics, target networks, the temperature and the optimisers' moments.
    pub fn training_state(&self, label: &str) -> Result<Checkpoint> {
        let mut ck = self.rec.export(label, self.steps);
        for p in ["q1.", "q2.", "target."] {
            ck.tensors.extend(self.rec.store.tensors(p));
        }
        ck.tensors.insert(TEMPERATURE.into(), self.log_temperature.as_tensor().reshape(1)?.copy()?);
        ck.tensors.extend(self.critic_opt.state("opt.critic")?);
        ck.tensors.extend(self.policy_opt.state("opt.policy")?);
        if let Some(o) = &self.temperature_opt {
            ck.tensors.extend(o.state("opt.temperature")?);
        }
        Ok(ck)
    }

    fn flat(&self, states: &Tensor, from: usize, batch: &Batch) -> Result<Tensor> {
        states.narrow(0, from, batch.steps)?.reshape((batch.steps * batch.sessions, self.rec.tracker.hidden()))
    }

    /// Critic and policy losses (scalars) with their diagnostics.
    pub fn compute_loss(&self, batch: &Batch) -> Result<(Tensor, Tensor, SacLosses)> {
        let (states, target_states) = side_by_side(batch.features.device(), || self.rec.tracker.unroll(&batch.features), || self.target_tracker.unroll(&batch.features));
        let (states, target_states) = (states?, target_states?.detach());
        let s = self.flat(&states, 0, batch)?;
        let s_next = self.flat(&states, 1, batch)?.detach();
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
            backup: self.cfg.backup,
            entropy_in_backup: self.cfg.entropy_in_backup,
            tracker_bc: self.cfg.tracker_bc,
            td_lambda: self.cfg.td_lambda,
        };
        let rows = Rows { onehot: &batch.onehot, rewards: &batch.rewards, not_done: &batch.not_done, mask: &batch.mask, sessions: batch.sessions };
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
        // Critic and actor parameters are disjoint: their backward passes run side by side.
        let mut grads = backward_apart(&critic, &policy, self.critic_opt.vars().chain(self.policy_opt.vars()))?;
        losses.critic_grad_norm = self.critic_opt.step(&mut grads)?;
        self.policy_opt.step(&mut grads)?;
        losses.temperature = self.temperature()? as f32;
        if let (Some(opt), Some(ratio)) = (self.temperature_opt.as_mut(), self.cfg.target_entropy_ratio) {
            // d/d log T of T·(H − H_target): raise T while the policy is more certain than wanted.
            let target: f64 = ratio * self.rec.heads().iter().map(|n| (*n as f64).ln()).sum::<f64>();
            let t_loss = (self.log_temperature.as_tensor().exp()? * (losses.entropy as f64 - target))?;
            let mut grads = t_loss.backward()?;
            opt.step(&mut grads)?;
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
