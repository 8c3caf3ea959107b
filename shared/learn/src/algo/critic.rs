//! The factorized critic the value-based learners ([`super::bcq`], [`super::iql`]) share: one
//! Q-function Q_d(s, a_d) per head on the state tracker's states, each head regressed to the
//! whole return on its own (action branching, as `CriticBackup::PerHead` in SAC), a soft-updated
//! target copy of critic and tracker, and the TD(λ) target over whole sessions.
//!
//! Unlike [`super::sac`] there is one critic, not twins: both papers' discrete versions train a
//! single Q (BCQ takes the double-DQN target instead; IQL never maximises over actions).

use super::{Adam, Batch, Recommender};
use irec_model::heads::MultiHead;
use irec_model::tracker::StateTracker;
use irec_model::Checkpoint;
use candle_core::{Result, Tensor, D};

/// Critic, target critic and target tracker, in the recommender's parameter store under
/// `q1.`, `target.q1.`, `target.tracker.`.
#[derive(Debug)]
pub struct QCritic {
    pub q: MultiHead,
    pub target_q: MultiHead,
    pub target_tracker: StateTracker,
}

/// The states one step works on.
pub struct States {
    /// (N, hidden) online states of turns 0..T (gradients flow into the tracker).
    pub s: Tensor,
    /// (N, hidden) online states after each turn, detached.
    pub s_next: Tensor,
    /// (N, hidden) target-tracker states after each turn.
    pub s_next_target: Tensor,
    /// (N, hidden) target-tracker states of turns 0..T (where the target critic values the
    /// logged actions).
    pub s_target: Tensor,
}

impl QCritic {
    /// Builds the critic in `rec`'s store, continuing `init`'s critic and targets when it has them.
    pub fn new(rec: &mut Recommender, q_hidden: Option<&[usize]>, init: Option<&Checkpoint>) -> Result<QCritic> {
        if let Some(h) = q_hidden {
            rec.config.q.hidden = h.to_vec();
        }
        let continued = init.is_some_and(|ck| ck.tensors.keys().any(|k| k.starts_with("target.")));
        if let Some(ck) = init {
            rec.store.load_from(&ck.only(&["q1.", "target."]).tensors)?;
        }
        let vb = rec.store.builder();
        let q = MultiHead::new(&rec.config.q, vb.pp("q1"))?;
        let target_q = MultiHead::new(&rec.config.q, vb.pp("target").pp("q1"))?;
        let target_tracker = StateTracker::new(&rec.config.tracker, vb.pp("target").pp("tracker"))?;
        if !continued {
            rec.store.soft_update("tracker.", "target.tracker.", 1.0)?;
            rec.store.soft_update("q1.", "target.q1.", 1.0)?;
        }
        Ok(QCritic { q, target_q, target_tracker })
    }

    pub fn states(&self, rec: &Recommender, batch: &Batch) -> Result<States> {
        let flat = |states: &Tensor, from: usize| states.narrow(0, from, batch.steps)?.reshape((batch.steps * batch.sessions, rec.tracker.hidden()));
        let (online, target) = super::concurrent::side_by_side(batch.features.device(), || rec.tracker.unroll(&batch.features), || self.target_tracker.unroll(&batch.features));
        let (online, target) = (online?, target?.detach());
        Ok(States { s: flat(&online, 0)?, s_next: flat(&online, 1)?.detach(), s_next_target: flat(&target, 1)?, s_target: flat(&target, 0)? })
    }

    /// y = r + γ(1 − done)·V(s′) as TD(λ) over each session (`v_next`: (N) values of the next
    /// states, no gradient).
    pub fn lambda_target(v_next: &Tensor, batch: &Batch, gamma: f64, lambda: f64) -> Result<Tensor> {
        let (v, r, nd) = (v_next.to_vec1::<f32>()?, batch.rewards.to_vec1::<f32>()?, batch.not_done.to_vec1::<f32>()?);
        let y = super::dataset::lambda_targets(&v, &r, &nd, batch.sessions, gamma as f32, lambda as f32, 1.0, None);
        Tensor::from_vec(y, v.len(), v_next.device())
    }

    /// Per row: Σ_d ½(Q_d(s, a_d) − y)² over the logged slots, and Q(s, a) (the heads' mean,
    /// each head being an estimate of the whole return).
    pub fn td(&self, s: &Tensor, y: &Tensor, batch: &Batch, heads: usize) -> Result<(Tensor, Tensor)> {
        let q = self.q.forward(s)?;
        let td = (q.broadcast_sub(&y.unsqueeze(1)?)?.sqr()? * &batch.onehot)?.sum(D::Minus1)?.affine(0.5, 0.0)?;
        let q_sa = ((q * &batch.onehot)?.sum(D::Minus1)? / heads.max(1) as f64)?;
        Ok((td, q_sa))
    }

    pub fn soft_update(rec: &Recommender, tau: f64) -> Result<()> {
        rec.store.soft_update("tracker.", "target.tracker.", tau)?;
        rec.store.soft_update("q1.", "target.q1.", tau)
    }
}

/// Restores the optimisers' moments a learner's training state saved (`opts`: name, optimiser,
/// the critic's first) and returns the steps that learner had taken: 0 when `init` carries no
/// critic moments (a deployed policy, not a learner's state).
pub(crate) fn continue_optimizers(init: Option<&Checkpoint>, opts: &mut [(&str, &mut Adam)]) -> Result<u64> {
    let Some(ck) = init else { return Ok(0) };
    let mut steps = 0;
    for (i, (name, opt)) in opts.iter_mut().enumerate() {
        if opt.load_state(name, &ck.tensors)? && i == 0 {
            steps = ck.meta.steps;
        }
    }
    Ok(steps)
}

/// A learner's training state: the recommender's export, the parameters under `prefixes` and
/// the optimisers' moments, by name.
pub(crate) fn training_state(rec: &Recommender, label: &str, steps: u64, prefixes: &[&str], opts: &[(&str, &Adam)]) -> Result<Checkpoint> {
    let mut ck = rec.export(label, steps);
    for p in prefixes {
        ck.tensors.extend(rec.store.tensors(p));
    }
    for (name, opt) in opts {
        ck.tensors.extend(opt.state(name)?);
    }
    Ok(ck)
}

/// Refuses the settings every critic-based learner shares (target update rate, TD(λ), optimiser),
/// naming the field under `at`.
pub fn validate_training(at: &str, tau: f64, td_lambda: f64, o: &super::OptimConfig) -> std::result::Result<(), String> {
    if !(tau.is_finite() && tau > 0.0 && tau <= 1.0) {
        return Err(format!("{at}.tau must be in (0, 1] (got {tau})"));
    }
    if !(td_lambda.is_finite() && (0.0..=1.0).contains(&td_lambda)) {
        return Err(format!("{at}.td_lambda must be in [0, 1] (got {td_lambda})"));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(format!("{at}.optim.lr must be a finite number > 0 (got {})", o.lr));
    }
    if !(o.gamma.is_finite() && o.gamma > 0.0 && o.gamma <= 1.0) {
        return Err(format!("{at}.optim.gamma must be in (0, 1] (got {})", o.gamma));
    }
    if o.batch_sessions == 0 {
        return Err(format!("{at}.optim.batch_sessions must be at least 1"));
    }
    Ok(())
}

/// Rows of a host matrix, per head: `f(row, offset, width)` for every head of every row.
pub(crate) fn per_head(heads: &[usize], rows: usize, mut f: impl FnMut(usize, usize, usize)) {
    for row in 0..rows {
        let mut off = 0;
        for &n in heads {
            f(row, off, n);
            off += n;
        }
    }
}
