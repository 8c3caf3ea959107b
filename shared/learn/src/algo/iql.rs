//! Implicit Q-learning (Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit
//! Q-Learning", 2021), per action head.
//!
//! IQL never evaluates an action the data does not show. A state value V(s) is fitted by
//! expectile regression to the target critic at the logged actions, L_V = E[|κ − 1(u < 0)|·u²],
//! u = Q′_d(s, a_d) − V(s), an upper expectile (κ > 0.5) approximating the best in-support
//! action's value; the critic is regressed to y = r + γ(1 − done)·V(s′); and the policy is
//! extracted by advantage-weighted regression: each head's logged slot is imitated with weight
//! min(exp(β·(Q′_d(s, a_d) − V(s))), w_max). κ = 0.5 is SARSA (the data's own value), β = 0
//! behaviour cloning.

use super::concurrent::backward_apart;
use super::critic::{self, QCritic};
use super::{scalar, Adam, Batch, LossRecord, OfflineAlgorithm, OptimConfig, PerceptionWeights, Recommender};
use irec_model::heads::{HeadsConfig, MultiHead};
use irec_model::kernels::seg_log_softmax;
use irec_model::params::ParamStore;
use irec_model::Checkpoint;
use std::collections::BTreeMap;
use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Settings of IQL (`[trainer.iql]`, `[offline.iql]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IqlConfig {
    pub optim: OptimConfig,
    /// κ of the value's expectile regression, in [0.5, 1) (the paper's 0.7–0.9).
    pub expectile: f64,
    /// β: inverse temperature of the advantage weights (per reward unit; the paper's 3–10).
    pub beta: f64,
    /// Largest advantage weight (the paper's 100).
    pub max_weight: f64,
    /// How an advantage becomes a logged slot's weight: `exp` (IQL as published,
    /// min(exp(β·A), max_weight)) or `binary` (1 where A > 0, else 0: CRR's filter, Wang et al.
    /// 2020, which clones the slots that beat V(s) alone, whatever the advantage's scale).
    #[serde(skip_serializing_if = "AdvantageWeighting::is_exp")]
    pub weighting: AdvantageWeighting,
    /// Target-network soft-update rate per step.
    pub tau: f64,
    /// λ of the critic's TD(λ) target over whole sessions (0: one step), as in SAC.
    pub td_lambda: f64,
    /// Hidden widths of the critic (unset: the model config's).
    pub q_hidden: Option<Vec<usize>>,
    /// Weight of KL(π_ref ‖ π) per turn (summed over heads) in the actor's loss, π_ref chosen by
    /// `reference`. A trust region around a policy of the learner's own instead of around the
    /// data. Default 1 (docs/results.md, "A trust region around the learner's own policy"); 0: off
    /// (IQL as published).
    pub reference_kl: f64,
    /// Which policy π_ref is: `first` (default: the policy the first round started from, carried
    /// in the training state) or `round` (the policy each round starts from, the deployed one).
    /// docs/results.md, "The trust region's anchor".
    #[serde(skip_serializing_if = "ReferencePolicy::is_first")]
    pub reference: ReferencePolicy,
    /// What the actor's advantage weights measure: `critic` (IQL as published) or `return`.
    #[serde(skip_serializing_if = "AdvantageSource::is_critic")]
    pub advantage: AdvantageSource,
}

/// Where the actor's advantage A(s, a) comes from (`[offline.iql] advantage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageSource {
    /// Q′_d(s, a_d) − V(s) per head, from the factorized target critic; V is an expectile of
    /// the critic at the logged slots (IQL as published).
    #[default]
    Critic,
    /// y − V(s), the session's logged TD(λ) return from this turn minus V(s), one figure for the
    /// whole logged action (every head's slot shares it); V is an expectile of that return.
    /// The critic is not consulted: the factorized critic leaves each head's share of the credit
    /// unidentified (docs/results.md), while the logged return credits the action the device
    /// actually took. This is advantage-weighted regression (Peng et al., 2019) with IQL's
    /// expectile baseline.
    Return,
}

/// How the actor's advantages weigh its logged slots (`[offline.iql] weighting`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageWeighting {
    /// min(exp(β·A), max_weight).
    #[default]
    Exp,
    /// 1[A > 0].
    Binary,
}

impl AdvantageWeighting {
    fn is_exp(&self) -> bool {
        *self == AdvantageWeighting::Exp
    }
}

/// The policy IQL's trust region is around (`[offline.iql] reference`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferencePolicy {
    /// The policy the learner's first round started from (a fresh learner's prior), kept across
    /// rounds: every round is held near the same anchor, so steps away from it (towards the
    /// devices' noise in D′) do not add up from round to round.
    #[default]
    First,
    /// The policy the current round started from: each round may move λ-far from the last.
    Round,
}

impl ReferencePolicy {
    fn is_first(&self) -> bool {
        *self == ReferencePolicy::First
    }
}

impl AdvantageSource {
    fn is_critic(&self) -> bool {
        *self == AdvantageSource::Critic
    }
}

impl Default for IqlConfig {
    fn default() -> Self {
        IqlConfig {
            optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
            expectile: 0.7,
            beta: 3.0,
            max_weight: 100.0,
            weighting: AdvantageWeighting::Exp,
            tau: 0.005,
            td_lambda: 0.9,
            q_hidden: Some(vec![128, 128]),
            reference_kl: 1.0,
            reference: ReferencePolicy::First,
            advantage: AdvantageSource::Critic,
        }
    }
}

impl IqlConfig {
    /// Refuses settings that cannot train, naming the field under `at`.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        if !(self.expectile.is_finite() && (0.5..1.0).contains(&self.expectile)) {
            return Err(format!("{at}.expectile must be in [0.5, 1) (got {})", self.expectile));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(format!("{at}.beta must be a finite number ≥ 0 (got {})", self.beta));
        }
        if !(self.reference_kl.is_finite() && self.reference_kl >= 0.0) {
            return Err(format!("{at}.reference_kl must be a finite number ≥ 0 (got {})", self.reference_kl));
        }
        if !(self.max_weight.is_finite() && self.max_weight >= 1.0) {
            return Err(format!("{at}.max_weight must be a finite number ≥ 1 (got {})", self.max_weight));
        }
        super::critic::validate_training(at, self.tau, self.td_lambda, &self.optim)
    }
}

/// One step's losses (the logged metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct IqlLosses {
    /// Mean ½ Σ_d (Q_d(s, a_d) − y)² per turn.
    pub critic: f32,
    /// Expectile loss of V, per turn (mean over heads).
    pub value: f32,
    /// Advantage-weighted NLL of the logged slots, per turn.
    pub policy: f32,
    pub q_data: f32,
    /// Mean V(s).
    pub v: f32,
    /// Mean advantage Q′_d(s, a_d) − V(s) over heads.
    pub advantage: f32,
    /// Mean advantage weight.
    pub weight: f32,
    /// KL(π_ref ‖ π) per turn (0 when `reference_kl` is off).
    pub reference_kl: f32,
    pub critic_grad_norm: f32,
}

impl LossRecord for IqlLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        vec![
            ("critic", self.critic),
            ("value", self.value),
            ("policy", self.policy),
            ("q_data", self.q_data),
            ("v", self.v),
            ("advantage", self.advantage),
            ("weight", self.weight),
            ("reference_kl", self.reference_kl),
            ("critic_grad_norm", self.critic_grad_norm),
        ]
    }
}

/// |κ − 1(u < 0)|·u², elementwise.
pub fn expectile_loss(u: &Tensor, kappa: f64) -> Result<Tensor> {
    let below = u.lt(0.0)?.to_dtype(u.dtype())?;
    // κ where u ≥ 0, 1 − κ where u < 0.
    let weight = below.affine(1.0 - 2.0 * kappa, kappa)?;
    weight * u.sqr()?
}

/// IQL on the recurrent recommender.
#[derive(Debug)]
pub struct Iql {
    pub cfg: IqlConfig,
    rec: Recommender,
    critic: QCritic,
    value: MultiHead,
    critic_opt: Adam,
    value_opt: Adam,
    policy_opt: Adam,
    /// π_ref, frozen (with `reference_kl` > 0), and the store holding its weights.
    reference: Option<(ParamStore, MultiHead)>,
    steps: u64,
}

impl Iql {
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &IqlConfig, init: Option<&Checkpoint>) -> Result<Iql> {
        let mut rec = Recommender::new(perception, seed, init)?;
        let critic = QCritic::new(&mut rec, cfg.q_hidden.as_deref(), init)?;
        if let Some(ck) = init {
            rec.store.load_from(&ck.only(&["iql."]).tensors)?;
        }
        let value = MultiHead::new(&HeadsConfig::value(rec.tracker.hidden()), rec.store.builder().pp("iql").pp("value"))?;
        let mut critic_vars = rec.store.named_vars("tracker.");
        critic_vars.extend(rec.store.named_vars("q1."));
        let mut critic_opt = Adam::named(critic_vars, &cfg.optim)?;
        let mut value_opt = Adam::named(rec.store.named_vars("iql."), &cfg.optim)?;
        let mut policy_opt = Adam::named(rec.store.named_vars("policy."), &cfg.optim)?;
        let steps = critic::continue_optimizers(init, &mut [("opt.critic", &mut critic_opt), ("opt.value", &mut value_opt), ("opt.policy", &mut policy_opt)])?;
        let reference = if cfg.reference_kl > 0.0 {
            let store = ParamStore::new(seed, &perception.perception.device);
            let head = MultiHead::new(&rec.config.policy, store.builder().pp("policy"))?;
            // A first-round anchor carried in the training state, else the policy this fit starts from.
            let carried = init.filter(|_| cfg.reference == ReferencePolicy::First).map(carried_reference).filter(|w| !w.is_empty());
            store.load_from(&carried.unwrap_or_else(|| rec.store.tensors("policy.")))?;
            Some((store, head))
        } else {
            None
        };
        Ok(Iql { cfg: cfg.clone(), rec, critic, value, critic_opt, value_opt, policy_opt, reference, steps })
    }

    /// The critic (tests recompute the losses from its outputs).
    pub fn critic(&self) -> &QCritic {
        &self.critic
    }

    /// V(s), (N), on (detached) states.
    pub fn state_value(&self, s: &Tensor) -> Result<Tensor> {
        self.value.forward(s)?.squeeze(D::Minus1)
    }

    /// y = r + γ(1 − done)·V(s′) (TD(λ) over the session's logged continuation). No gradient.
    pub fn compute_target(&self, s_next: &Tensor, batch: &Batch) -> Result<Tensor> {
        let v_next = self.state_value(s_next)?.detach();
        Ok(QCritic::lambda_target(&v_next, batch, self.cfg.optim.gamma, self.cfg.td_lambda)?.detach())
    }

    /// Critic, value and policy losses (scalars) with their diagnostics.
    pub fn compute_loss(&self, batch: &Batch) -> Result<(Tensor, Tensor, Tensor, IqlLosses)> {
        let heads = self.rec.heads();
        let n_heads = heads.len().max(1) as f64;
        let st = self.critic.states(&self.rec, batch)?;
        let y = self.compute_target(&st.s_next, batch)?;
        let (td, q_sa) = self.critic.td(&st.s, &y, batch, heads.len())?;
        let critic = batch.masked_mean(&td)?;

        // Expectile regression of V towards what the advantage is measured against: the target
        // critic at every head's logged slot, or the logged return of the whole action.
        let s = st.s.detach();
        let v = self.state_value(&s)?;
        let (u, value_rows) = match self.cfg.advantage {
            AdvantageSource::Critic => {
                let q_target_sa = (self.critic.target_q.forward(&st.s_target)?.detach() * &batch.onehot)?;
                let onehot_v = batch.onehot.broadcast_mul(&v.unsqueeze(1)?)?;
                let u = (&q_target_sa - &onehot_v)?;
                let rows = ((expectile_loss(&u, self.cfg.expectile)? * &batch.onehot)?.sum(D::Minus1)? / n_heads)?;
                (u, rows)
            }
            AdvantageSource::Return => {
                let u_row = (&y - &v)?;
                let rows = expectile_loss(&u_row, self.cfg.expectile)?;
                (batch.onehot.broadcast_mul(&u_row.unsqueeze(1)?)?, rows)
            }
        };
        let value = batch.masked_mean(&value_rows)?;

        // Advantage-weighted regression per head.
        let adv = u.detach();
        let weight = match self.cfg.weighting {
            AdvantageWeighting::Exp => (adv * self.cfg.beta)?.exp()?.clamp(0.0, self.cfg.max_weight)?,
            AdvantageWeighting::Binary => adv.gt(0.0)?.to_dtype(adv.dtype())?,
        };
        let weight = (weight * &batch.onehot)?;
        let logp = seg_log_softmax(&self.rec.policy.forward(&s)?, heads)?;
        let policy_rows = (&weight * &logp)?.sum(D::Minus1)?.neg()?;
        let mut policy = batch.masked_mean(&policy_rows)?;
        let mut reference_kl = 0.0;
        if let Some((_, r)) = &self.reference {
            let ref_logp = seg_log_softmax(&r.forward(&s)?, heads)?.detach();
            let kl = batch.masked_mean(&(ref_logp.exp()? * (&ref_logp - &logp)?)?.sum(D::Minus1)?)?;
            reference_kl = scalar(&kl)?;
            policy = (policy + (kl * self.cfg.reference_kl)?)?;
        }
        let losses = IqlLosses {
            critic: scalar(&critic)?,
            value: scalar(&value)?,
            policy: scalar(&policy)?,
            q_data: scalar(&batch.masked_mean(&q_sa)?)?,
            v: scalar(&batch.masked_mean(&v)?)?,
            advantage: scalar(&batch.masked_mean(&(u.detach().sum(D::Minus1)? / n_heads)?)?)?,
            weight: scalar(&batch.masked_mean(&(weight.sum(D::Minus1)? / n_heads)?)?)?,
            reference_kl,
            critic_grad_norm: 0.0,
        };
        Ok((critic, value, policy, losses))
    }

    /// Everything needed to continue training later: networks, targets, V, optimiser moments.
    pub fn training_state(&self, label: &str) -> Result<Checkpoint> {
        let opts = [("opt.critic", &self.critic_opt), ("opt.value", &self.value_opt), ("opt.policy", &self.policy_opt)];
        let mut ck = critic::training_state(&self.rec, label, self.steps, &["q1.", "target.", "iql."], &opts)?;
        if let (ReferencePolicy::First, Some((store, _))) = (self.cfg.reference, &self.reference) {
            ck.tensors.extend(store.tensors("policy.").into_iter().map(|(k, t)| (format!("{REFERENCE_PREFIX}{k}"), t)));
        }
        Ok(ck)
    }

    /// A new round begins: with `reference = "round"` π_ref becomes the current policy (what a
    /// learner rebuilt from its training state would start from), with `first` it stays.
    pub fn start_round(&mut self) -> Result<()> {
        if let (ReferencePolicy::Round, Some((store, _))) = (self.cfg.reference, &self.reference) {
            store.load_from(&self.rec.store.tensors("policy."))?;
        }
        Ok(())
    }

    /// π_ref's weights, under the policy's own names (tests compare them).
    pub fn reference_weights(&self) -> Option<BTreeMap<String, Tensor>> {
        self.reference.as_ref().map(|(store, _)| store.tensors("policy."))
    }
}

/// Where a training state carries π_ref (`reference = "first"`), ahead of the policy's names.
const REFERENCE_PREFIX: &str = "iql_reference.";

/// π_ref's weights from a training state, under the policy's names (empty when it has none).
fn carried_reference(ck: &Checkpoint) -> BTreeMap<String, Tensor> {
    ck.tensors.iter().filter_map(|(k, t)| k.strip_prefix(REFERENCE_PREFIX).map(|k| (k.to_string(), t.clone()))).collect()
}

impl OfflineAlgorithm for Iql {
    type Losses = IqlLosses;

    fn update(&mut self, batch: &Batch) -> Result<IqlLosses> {
        let (critic, value, policy, mut losses) = self.compute_loss(batch)?;
        // Parameter groups are disjoint (V and the actor see detached states): the critic's
        // backward pass runs beside the other two.
        let vars = self.critic_opt.vars().chain(self.value_opt.vars()).chain(self.policy_opt.vars());
        let mut grads = backward_apart(&critic, &(value + policy)?, vars)?;
        losses.critic_grad_norm = self.critic_opt.step(&mut grads)?;
        self.value_opt.step(&mut grads)?;
        self.policy_opt.step(&mut grads)?;
        QCritic::soft_update(&self.rec, self.cfg.tau)?;
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
