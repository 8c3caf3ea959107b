//! Discrete batch-constrained Q-learning (Fujimoto et al., "Benchmarking Batch Deep
//! Reinforcement Learning Algorithms", 2019), per action head.
//!
//! An imitation network G(a|s) learns the data's action distribution; the Q-learning target
//! maximises only over slots G finds plausible: a′_d = argmax { Q_d(s′, a) : G_d(a|s′) ≥
//! τ·max_b G_d(b|s′) }, evaluated by the target critic (double DQN). τ = 0 is plain Q-learning,
//! τ = 1 keeps only the data's most likely slot (behaviour cloning's choice, valued by Q). The
//! deployed policy is that constrained greedy choice, distilled into the policy head (a cross-
//! entropy against softmax(Q_d/T) over the allowed slots, T small) because the device acts on the
//! policy head alone. G is trained through the state tracker, so the tracker also gets a
//! supervised signal, not only the TD error.

use super::concurrent::backward_apart;
use super::critic::{self, per_head, QCritic};
use super::{scalar, Adam, Batch, LossRecord, OfflineAlgorithm, OptimConfig, PerceptionWeights, Recommender};
use irec_model::heads::MultiHead;
use irec_model::kernels::seg_log_softmax;
use irec_model::Checkpoint;
use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Settings of discrete BCQ (`[trainer.bcq]`, `[offline.bcq]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BcqConfig {
    pub optim: OptimConfig,
    /// τ: a slot is allowed when G gives it at least this share of the head's most likely
    /// slot's probability (0–1; the paper's 0.3).
    pub threshold: f64,
    /// Target-network soft-update rate per step.
    pub tau: f64,
    /// T of the distilled policy softmax(Q_d/T) over the allowed slots (scaled reward units).
    pub policy_temperature: f64,
    /// λ of the TD(λ) target over whole sessions (0: one step), as in SAC.
    pub td_lambda: f64,
    /// Hidden widths of the critic (unset: the model config's).
    pub q_hidden: Option<Vec<usize>>,
}

impl Default for BcqConfig {
    fn default() -> Self {
        BcqConfig {
            optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
            threshold: 0.3,
            tau: 0.005,
            policy_temperature: 0.05,
            td_lambda: 0.9,
            q_hidden: Some(vec![128, 128]),
        }
    }
}

impl BcqConfig {
    /// Refuses settings that cannot train, naming the field under `at`.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(format!("{at}.threshold must be in [0, 1] (got {})", self.threshold));
        }
        if !(self.policy_temperature.is_finite() && self.policy_temperature > 0.0) {
            return Err(format!("{at}.policy_temperature must be a finite number > 0 (got {})", self.policy_temperature));
        }
        super::critic::validate_training(at, self.tau, self.td_lambda, &self.optim)
    }
}

/// One step's losses (the logged metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct BcqLosses {
    /// Critic TD loss + imitation NLL (what the critic optimiser minimised).
    pub critic: f32,
    /// Mean ½ Σ_d (Q_d(s, a_d) − y)² per turn.
    pub td: f32,
    /// Negative log-likelihood of the logged slots under G, per turn (summed over heads).
    pub imitation: f32,
    /// Cross-entropy of the policy head against the constrained soft-greedy policy.
    pub policy: f32,
    /// Mean Q(s, a) of logged actions.
    pub q_data: f32,
    /// Share of slots the filter allows at the next states.
    pub allowed: f32,
    pub critic_grad_norm: f32,
}

impl LossRecord for BcqLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        vec![
            ("critic", self.critic),
            ("td", self.td),
            ("imitation", self.imitation),
            ("policy", self.policy),
            ("q_data", self.q_data),
            ("allowed", self.allowed),
            ("critic_grad_norm", self.critic_grad_norm),
        ]
    }
}

/// Per row and head: which slots G allows (`G ≥ τ·max G`), from log-probabilities.
pub fn allowed_slots(log_g: &[Vec<f32>], heads: &[usize], threshold: f64) -> Vec<Vec<bool>> {
    let mut out: Vec<Vec<bool>> = log_g.iter().map(|r| vec![false; r.len()]).collect();
    let log_t = (threshold.max(1e-30)).ln() as f32;
    per_head(heads, log_g.len(), |row, off, n| {
        let g = &log_g[row][off..off + n];
        let best = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (k, v) in g.iter().enumerate() {
            out[row][off + k] = threshold <= 0.0 || *v - best >= log_t;
        }
    });
    out
}

/// Per row and head: the allowed slot with the highest `q` (the data's most likely one if the
/// filter somehow allows none).
pub fn constrained_argmax(q: &[Vec<f32>], allowed: &[Vec<bool>], heads: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::with_capacity(heads.len()); q.len()];
    per_head(heads, q.len(), |row, off, n| {
        let best = (0..n).filter(|k| allowed[row][off + k]).max_by(|a, b| q[row][off + a].total_cmp(&q[row][off + b]));
        out[row].push(off + best.unwrap_or(0));
    });
    out
}

/// Discrete BCQ on the recurrent recommender.
#[derive(Debug)]
pub struct Bcq {
    pub cfg: BcqConfig,
    rec: Recommender,
    critic: QCritic,
    imitation: MultiHead,
    critic_opt: Adam,
    policy_opt: Adam,
    steps: u64,
}

impl Bcq {
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &BcqConfig, init: Option<&Checkpoint>) -> Result<Bcq> {
        let mut rec = Recommender::new(perception, seed, init)?;
        let critic = QCritic::new(&mut rec, cfg.q_hidden.as_deref(), init)?;
        if let Some(ck) = init {
            rec.store.load_from(&ck.only(&["bcq."]).tensors)?;
        }
        let imitation = MultiHead::new(&rec.config.policy, rec.store.builder().pp("bcq").pp("imitation"))?;
        let mut critic_vars = rec.store.named_vars("tracker.");
        critic_vars.extend(rec.store.named_vars("q1."));
        critic_vars.extend(rec.store.named_vars("bcq."));
        let mut critic_opt = Adam::named(critic_vars, &cfg.optim)?;
        let mut policy_opt = Adam::named(rec.store.named_vars("policy."), &cfg.optim)?;
        let steps = critic::continue_optimizers(init, &mut [("opt.critic", &mut critic_opt), ("opt.policy", &mut policy_opt)])?;
        Ok(Bcq { cfg: cfg.clone(), rec, critic, imitation, critic_opt, policy_opt, steps })
    }

    /// y = r + γ(1 − done)·mean_d Q′_d(s′, a′_d), a′ the constrained argmax of the online critic,
    /// and the share of slots allowed. No gradient.
    pub fn compute_target(&self, s_next: &Tensor, s_next_target: &Tensor, batch: &Batch) -> Result<(Tensor, f32)> {
        let heads = self.rec.heads();
        let log_g = seg_log_softmax(&self.imitation.forward(s_next)?, heads)?.to_vec2::<f32>()?;
        let allowed = allowed_slots(&log_g, heads, self.cfg.threshold);
        let q_online = self.critic.q.forward(s_next)?.to_vec2::<f32>()?;
        let q_target = self.critic.target_q.forward(s_next_target)?.to_vec2::<f32>()?;
        let picks = constrained_argmax(&q_online, &allowed, heads);
        let v: Vec<f32> = picks.iter().zip(&q_target).map(|(p, q)| p.iter().map(|i| q[*i]).sum::<f32>() / heads.len().max(1) as f32).collect();
        let share = allowed.iter().flatten().filter(|a| **a).count() as f32 / allowed.iter().map(Vec::len).sum::<usize>().max(1) as f32;
        let v = Tensor::from_vec(v, q_target.len(), s_next.device())?;
        Ok((QCritic::lambda_target(&v, batch, self.cfg.optim.gamma, self.cfg.td_lambda)?.detach(), share))
    }

    /// Critic (TD + imitation NLL) and policy (distillation) losses with their diagnostics.
    pub fn compute_loss(&self, batch: &Batch) -> Result<(Tensor, Tensor, BcqLosses)> {
        let heads = self.rec.heads();
        let st = self.critic.states(&self.rec, batch)?;
        let (y, allowed_share) = self.compute_target(&st.s_next, &st.s_next_target, batch)?;
        let (td, q_sa) = self.critic.td(&st.s, &y, batch, heads.len())?;
        let log_g = seg_log_softmax(&self.imitation.forward(&st.s)?, heads)?;
        let nll = (&log_g * &batch.onehot)?.sum(D::Minus1)?.neg()?;
        let critic = batch.masked_mean(&(&td + &nll)?)?;

        // The constrained soft-greedy target on the same (detached) states.
        let s = st.s.detach();
        let allowed = allowed_slots(&log_g.detach().to_vec2::<f32>()?, heads, self.cfg.threshold);
        let q = self.critic.q.forward(&s)?.detach().to_vec2::<f32>()?;
        let t = self.cfg.policy_temperature as f32;
        let mut target = vec![0f32; q.len() * q.first().map_or(0, Vec::len)];
        let width = q.first().map_or(0, Vec::len);
        per_head(heads, q.len(), |row, off, n| {
            let best = (0..n).filter(|k| allowed[row][off + k]).map(|k| q[row][off + k]).fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = (0..n).map(|k| if allowed[row][off + k] { ((q[row][off + k] - best) / t).exp() } else { 0.0 }).collect();
            let z: f32 = w.iter().sum::<f32>().max(1e-30);
            for k in 0..n {
                target[row * width + off + k] = w[k] / z;
            }
        });
        let target = Tensor::from_vec(target, (q.len(), width), s.device())?;
        let logp = seg_log_softmax(&self.rec.policy.forward(&s)?, heads)?;
        let policy = batch.masked_mean(&(target * logp)?.sum(D::Minus1)?.neg()?)?;
        let losses = BcqLosses {
            critic: scalar(&critic)?,
            td: scalar(&batch.masked_mean(&td)?)?,
            imitation: scalar(&batch.masked_mean(&nll)?)?,
            policy: scalar(&policy)?,
            q_data: scalar(&batch.masked_mean(&q_sa)?)?,
            allowed: allowed_share,
            critic_grad_norm: 0.0,
        };
        Ok((critic, policy, losses))
    }

    /// Everything needed to continue training later: networks, targets, G, optimiser moments.
    pub fn training_state(&self, label: &str) -> Result<Checkpoint> {
        critic::training_state(&self.rec, label, self.steps, &["q1.", "target.", "bcq."], &[("opt.critic", &self.critic_opt), ("opt.policy", &self.policy_opt)])
    }

    /// The critic (the ablation evaluates its greedy policy).
    pub fn critic(&self) -> &QCritic {
        &self.critic
    }

    /// The critic's per-head outputs on given states (diagnostics and tests).
    pub fn q_values(&self, states: &Tensor) -> Result<Tensor> {
        self.critic.q.forward(states)
    }
}

impl OfflineAlgorithm for Bcq {
    type Losses = BcqLosses;

    fn update(&mut self, batch: &Batch) -> Result<BcqLosses> {
        let (critic, policy, mut losses) = self.compute_loss(batch)?;
        let mut grads = backward_apart(&critic, &policy, self.critic_opt.vars().chain(self.policy_opt.vars()))?;
        losses.critic_grad_norm = self.critic_opt.step(&mut grads)?;
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
