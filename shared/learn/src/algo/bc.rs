//! Behaviour cloning (the paper's imitation learning): maximise the likelihood of the logged
//! actions under the policy, the state tracker trained through the same loss.

use super::{scalar, Adam, Batch, LossRecord, OfflineAlgorithm, OptimConfig, PerceptionWeights, Recommender};
use irec_model::kernels::seg_log_softmax;
use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BcConfig {
    pub optim: OptimConfig,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BcLosses {
    /// Negative log-likelihood of the logged action (summed over heads), per turn.
    pub nll: f32,
    /// Share of heads whose most likely slot is the logged one.
    pub accuracy: f32,
    pub grad_norm: f32,
}

impl LossRecord for BcLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        vec![("nll", self.nll), ("accuracy", self.accuracy), ("grad_norm", self.grad_norm)]
    }
}

#[derive(Debug)]
pub struct BehaviourCloning {
    rec: Recommender,
    opt: Adam,
    steps: u64,
}

impl BehaviourCloning {
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &BcConfig) -> Result<BehaviourCloning> {
        let rec = Recommender::new(perception, seed, None)?;
        let mut vars = rec.store.vars("tracker.");
        vars.extend(rec.store.vars("policy."));
        Ok(BehaviourCloning { opt: Adam::new(vars, &cfg.optim)?, rec, steps: 0 })
    }

    /// Per-row NLL of the logged actions and the policy logits.
    pub fn compute_loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let states = self.rec.tracker.unroll(&batch.features)?;
        let s = states.narrow(0, 0, batch.steps)?.reshape((batch.steps * batch.sessions, self.rec.tracker.hidden()))?;
        let logits = self.rec.policy.forward(&s)?;
        let logp = seg_log_softmax(&logits, self.rec.heads())?;
        let nll = (logp * &batch.onehot)?.sum(D::Minus1)?.neg()?;
        Ok((nll, logits))
    }
}

/// Share of (row, head) pairs whose argmax is the logged slot, over real rows.
pub(crate) fn head_accuracy(logits: &Tensor, batch: &Batch, heads: &[usize]) -> Result<f32> {
    let l = logits.to_vec2::<f32>()?;
    let mask = batch.mask.to_vec1::<f32>()?;
    let (mut hit, mut total) = (0usize, 0usize);
    for (row, m) in mask.iter().enumerate() {
        if *m == 0.0 {
            continue;
        }
        let mut off = 0;
        for (d, &n) in heads.iter().enumerate() {
            let best = l[row][off..off + n].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0);
            hit += usize::from(best == batch.actions[row][d] as usize);
            total += 1;
            off += n;
        }
    }
    Ok(hit as f32 / total.max(1) as f32)
}

impl OfflineAlgorithm for BehaviourCloning {
    type Losses = BcLosses;

    fn update(&mut self, batch: &Batch) -> Result<BcLosses> {
        let (nll, logits) = self.compute_loss(batch)?;
        let loss = batch.masked_mean(&nll)?;
        let mut grads = loss.backward()?;
        let grad_norm = self.opt.step(&mut grads)?;
        self.steps += 1;
        Ok(BcLosses { nll: scalar(&loss)?, accuracy: head_accuracy(&logits, batch, self.rec.heads())?, grad_norm })
    }

    fn recommender(&self) -> &Recommender {
        &self.rec
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
