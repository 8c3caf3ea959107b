//! Fitted Q evaluation: an off-policy estimate of a policy's value from logged sessions alone, the
//! evidence behind the server's deployment gate. A fresh state tracker and factorized Q-function
//! learn Q^π by regressing on r + γ(1 − done)·Q′(s′, π(s′)), where π is the evaluated policy acting
//! greedily on its own state tracker's view of the same turns; the estimate is Q(s₀, π(s₀)) at the
//! (shared, empty) initial state.

use super::{scalar, Adam, Batch, OptimConfig, SessionDataset};
use crate::model::heads::MultiHead;
use crate::model::params::ParamStore;
use crate::model::tracker::StateTracker;
use crate::model::{ModelConfig, PolicyModel};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FqeConfig {
    pub optim: OptimConfig,
    /// Gradient steps.
    pub steps: usize,
    /// Target-network soft-update rate per step.
    pub tau: f64,
}

impl Default for FqeConfig {
    fn default() -> Self {
        FqeConfig { optim: OptimConfig::default(), steps: 600, tau: 0.01 }
    }
}

/// An off-policy value estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FqeEstimate {
    /// Estimated expected discounted return of a session under the policy.
    pub value: f64,
    /// Mean squared TD error over the last tenth of training.
    pub td: f64,
}

/// Greedy one-hot actions of `policy` on every row of a batch's states, after each turn (s′) and
/// before the first (s₀).
fn greedy_onehots(policy: &PolicyModel, batch: &Batch) -> Result<(Tensor, Tensor)> {
    let heads = policy.heads();
    let states = policy.tracker.unroll(&batch.features)?;
    let h = policy.tracker.hidden();
    let next = states.narrow(0, 1, batch.steps)?.reshape((batch.steps * batch.sessions, h))?;
    let first = states.get(0)?;
    Ok((onehot_argmax(&policy.policy.forward(&next)?, heads)?, onehot_argmax(&policy.policy.forward(&first)?, heads)?))
}

fn onehot_argmax(logits: &Tensor, heads: &[usize]) -> Result<Tensor> {
    let l = logits.to_vec2::<f32>()?;
    let w: usize = heads.iter().sum();
    let mut out = vec![0f32; l.len() * w];
    for (r, row) in l.iter().enumerate() {
        let mut off = 0;
        for &n in heads {
            let best = row[off..off + n].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0);
            out[r * w + off + best] = 1.0;
            off += n;
        }
    }
    Tensor::from_vec(out, (l.len(), w), logits.device())
}

/// Estimates `policy`'s value on `data`.
pub fn evaluate(policy: &PolicyModel, data: &SessionDataset, cfg: &FqeConfig, seed: u64, rng: &mut Rng, device: &Device) -> Result<FqeEstimate> {
    let model: &ModelConfig = &policy.meta.config;
    let store = ParamStore::new(seed, device);
    let vb = store.builder();
    let tracker = StateTracker::new(&model.tracker, vb.pp("fqe").pp("tracker"))?;
    let q = MultiHead::new(&model.q, vb.pp("fqe").pp("q"))?;
    let t_tracker = StateTracker::new(&model.tracker, vb.pp("target").pp("tracker"))?;
    let t_q = MultiHead::new(&model.q, vb.pp("target").pp("q"))?;
    store.soft_update("fqe.", "target.", 1.0)?;
    let mut opt = Adam::new(store.vars("fqe."), &cfg.optim)?;
    let h = model.tracker.hidden;
    let mut tds = Vec::new();
    for _ in 0..cfg.steps {
        let idx = data.sample(cfg.optim.batch_sessions, rng);
        if idx.is_empty() {
            break;
        }
        let batch = data.batch(&idx, device)?;
        let n = batch.steps * batch.sessions;
        let (pi_next, _) = greedy_onehots(policy, &batch)?;
        let t_states = t_tracker.unroll(&batch.features)?.narrow(0, 1, batch.steps)?.reshape((n, h))?;
        let v_next = (t_q.forward(&t_states)? * pi_next)?.sum(D::Minus1)?.detach();
        let y = (&batch.rewards + (v_next * &batch.not_done)?.affine(cfg.optim.gamma, 0.0)?)?;
        let states = tracker.unroll(&batch.features)?.narrow(0, 0, batch.steps)?.reshape((n, h))?;
        let q_sa = (q.forward(&states)? * &batch.onehot)?.sum(D::Minus1)?;
        let loss = batch.masked_mean(&((q_sa - y)?.sqr()? * 0.5)?)?;
        let mut grads = loss.backward()?;
        opt.step(&mut grads)?;
        store.soft_update("fqe.", "target.", cfg.tau)?;
        tds.push(2.0 * scalar(&loss)? as f64);
    }
    // Every session starts from the same empty state: its value under π is the estimate.
    let idx: Vec<usize> = (0..data.len().min(1)).collect();
    let value = if idx.is_empty() {
        0.0
    } else {
        let batch = data.batch(&idx, device)?;
        let (_, pi_first) = greedy_onehots(policy, &batch)?;
        let s0 = tracker.initial(1, device)?;
        scalar(&(q.forward(&s0)? * pi_first)?.sum_all()?)? as f64
    };
    let tail = &tds[tds.len() - tds.len() / 10..];
    let td = if tail.is_empty() { 0.0 } else { tail.iter().sum::<f64>() / tail.len() as f64 };
    Ok(FqeEstimate { value, td })
}
