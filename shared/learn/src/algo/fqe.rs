//! Fitted Q evaluation: an off-policy estimate of a policy's value from logged sessions alone, the
//! evidence behind the server's deployment gate. A fresh state tracker and factorized Q-function
//! learn Q^π by regressing on r + γ(1 − done)·Q′(s′, π(s′)), where π is the evaluated policy acting
//! greedily on its own state tracker's view of the same turns; the estimate is Q(s₀, π(s₀)) at the
//! (shared, empty) initial state.

use super::{scalar, Adam, Batch, OptimConfig, SessionDataset};
use irec_model::heads::MultiHead;
use irec_model::params::ParamStore;
use irec_model::tracker::StateTracker;
use irec_model::{ModelConfig, PolicyModel};
use irec_world::catalog::NUM_ATTRS;
use irec_world::rng::Rng;
use candle_core::{Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FqeConfig {
    pub optim: OptimConfig,
    /// Gradient steps.
    pub steps: usize,
    /// Target-network soft-update rate per step. 0.05, not the critics' 0.005–0.01: with 300 steps
    /// a slower target carried so little of a session's cost back that a policy finishing in 22
    /// turns and one finishing in 8 got the same estimate (`fleet-sim gate-check`, docs/results.md).
    pub tau: f64,
    /// λ of the Retrace-style target: the logged continuation is followed while its action is
    /// the one the evaluated (greedy) policy would take, cut where it is not (0: one-step). A
    /// one-step target carries value back one turn per 1/τ steps, far too few for the gate's
    /// budget.
    pub trace_lambda: f64,
    /// Q-functions in the bootstrap ensemble (1: a single fit, no standard error).
    pub ensemble: usize,
    /// Hidden widths of each member's MLP: the same for every policy evaluated, so the candidate
    /// and the deployed policy are estimated by equal means whatever their own critics were.
    pub q_hidden: Vec<usize>,
    /// Fit the candidate's estimate also when no policy is deployed. The gate then has nothing to
    /// compare it with and publishes whatever it says, so by default the round skips it (its value
    /// on the next round's D appears there as the deployed policy's estimate).
    pub when_nothing_deployed: bool,
}

impl Default for FqeConfig {
    fn default() -> Self {
        FqeConfig { optim: OptimConfig::default(), steps: 600, tau: 0.05, trace_lambda: 0.9, ensemble: 5, q_hidden: vec![64, 64], when_nothing_deployed: false }
    }
}

impl FqeConfig {
    /// Refuses settings that cannot estimate; `at` is this table's TOML path.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        if self.q_hidden.is_empty() || self.q_hidden.contains(&0) {
            return Err(format!("{at}.q_hidden must list one or more widths > 0"));
        }
        if self.ensemble == 0 {
            return Err(format!("{at}.ensemble must be at least 1"));
        }
        if !(self.trace_lambda.is_finite() && (0.0..=1.0).contains(&self.trace_lambda)) {
            return Err(format!("{at}.trace_lambda must be in [0, 1]"));
        }
        if !(self.tau.is_finite() && self.tau > 0.0 && self.tau <= 1.0) {
            return Err(format!("{at}.tau must be in (0, 1]"));
        }
        Ok(())
    }
}

/// An off-policy value estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FqeEstimate {
    /// Estimated expected discounted return of a session under the policy (the ensemble's mean).
    pub value: f64,
    /// Its standard error: the spread of the bootstrap ensemble's estimates (0 for one member).
    #[serde(default)]
    pub se: f64,
    /// Mean squared TD error over the last tenth of training.
    pub td: f64,
}

/// Each row's greedy slot per head.
fn argmax_slots(logits: &Tensor, heads: &[usize]) -> Result<Vec<[u8; NUM_ATTRS]>> {
    if heads.len() != NUM_ATTRS {
        candle_core::bail!("a policy with {} heads, not one per attribute ({NUM_ATTRS})", heads.len());
    }
    Ok(logits
        .to_vec2::<f32>()?
        .iter()
        .map(|row| {
            let mut slots = [0u8; NUM_ATTRS];
            let mut off = 0;
            for (d, &n) in heads.iter().enumerate() {
                slots[d] = row[off..off + n].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0) as u8;
                off += n;
            }
            slots
        })
        .collect())
}

/// (rows, Σ heads) one-hot of `slots`; `None` rows stay zero.
fn onehot_rows(slots: &[Option<[u8; NUM_ATTRS]>], heads: &[usize], device: &Device) -> Result<Tensor> {
    let w: usize = heads.iter().sum();
    let mut out = vec![0f32; slots.len() * w];
    for (r, s) in slots.iter().enumerate() {
        let Some(s) = s else { continue };
        let mut off = 0;
        for (d, &n) in heads.iter().enumerate() {
            out[r * w + off + s[d] as usize] = 1.0;
            off += n;
        }
    }
    Tensor::from_vec(out, (slots.len(), w), device)
}

/// The evaluated policy's greedy slots on every state of D. The policy is fixed while FQE fits,
/// so its tracker runs over each session once rather than on every batch of every step.
struct GreedyActions {
    /// At the (shared, empty) initial state.
    first: [u8; NUM_ATTRS],
    /// Per session, per turn t: at the state after turn t.
    after: Vec<Vec<[u8; NUM_ATTRS]>>,
}

impl GreedyActions {
    fn of(policy: &PolicyModel, data: &SessionDataset, device: &Device) -> Result<GreedyActions> {
        let mut after = vec![Vec::new(); data.len()];
        let mut first = [0u8; NUM_ATTRS];
        // Sessions of like length together: little padding in each unroll.
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.sort_by_key(|&i| data.sessions[i].len());
        for chunk in order.chunks(256) {
            let batch = data.batch(chunk, device)?;
            let states = policy.tracker.unroll(&batch.features)?;
            let rows = (batch.steps + 1) * batch.sessions;
            let slots = argmax_slots(&policy.policy.forward(&states.reshape((rows, policy.tracker.hidden()))?)?, policy.heads())?;
            first = slots[0];
            for (col, &i) in chunk.iter().enumerate() {
                after[i] = (1..=data.sessions[i].len()).map(|t| slots[t * batch.sessions + col]).collect();
            }
        }
        Ok(GreedyActions { first, after })
    }

    /// For a batch of sessions `idx`: the one-hot greedy action at every row's next state (zero
    /// on padding), and whether the logged action of the row's next turn is that one (then the
    /// logged continuation is the policy's own, and its outcome may be followed).
    fn next_of(&self, data: &SessionDataset, idx: &[usize], batch: &Batch, heads: &[usize], device: &Device) -> Result<(Tensor, Vec<bool>)> {
        let b = batch.sessions;
        let mut slots = vec![None; batch.steps * b];
        let mut follows = vec![false; batch.steps * b];
        for (col, &i) in idx.iter().enumerate() {
            let logged = &data.sessions[i].actions;
            for (t, greedy) in self.after[i].iter().enumerate() {
                slots[t * b + col] = Some(*greedy);
                follows[t * b + col] = logged.get(t + 1) == Some(greedy);
            }
        }
        Ok((onehot_rows(&slots, heads, device)?, follows))
    }
}

/// How often logged actions are the ones `policy` takes greedily on the same turns: the share
/// of (turn, head) pairs and of whole turns that agree, over `sessions` (indices into `data`).
/// For sessions a device collected with `policy`, one minus these is how much its noise and bias
/// explored.
pub fn greedy_agreement(policy: &PolicyModel, data: &SessionDataset, sessions: &[usize], device: &Device) -> Result<(f64, f64)> {
    let heads = policy.heads().len();
    let (mut head_hits, mut turn_hits, mut turns) = (0usize, 0usize, 0usize);
    for chunk in sessions.chunks(256) {
        let batch = data.batch(chunk, device)?;
        let states = policy.tracker.unroll(&batch.features)?;
        let s = states.narrow(0, 0, batch.steps)?.reshape((batch.steps * batch.sessions, policy.tracker.hidden()))?;
        let greedy = argmax_slots(&policy.policy.forward(&s)?, policy.heads())?;
        let mask = batch.mask.to_vec1::<f32>()?;
        for ((g, l), m) in greedy.iter().zip(&batch.actions).zip(&mask) {
            if *m == 0.0 {
                continue;
            }
            let agree = g.iter().zip(l).filter(|(x, y)| x == y).count();
            head_hits += agree;
            turn_hits += usize::from(agree == heads);
            turns += 1;
        }
    }
    let t = turns.max(1) as f64;
    Ok((head_hits as f64 / (t * heads as f64), turn_hits as f64 / t))
}

/// Targets y_t = r_t + γ(1 − done)·[V(s′) or, where the data follows π, (1 − λ)·V(s′) + λ·y_{t+1}],
/// computed backwards over each session (rows time-major).
fn trace_target(v_next: &Tensor, batch: &Batch, follows: &[bool], gamma: f32, lambda: f32) -> Result<Tensor> {
    let (v, r, nd) = (v_next.to_vec1::<f32>()?, batch.rewards.to_vec1::<f32>()?, batch.not_done.to_vec1::<f32>()?);
    let y = super::dataset::lambda_targets(&v, &r, &nd, batch.sessions, gamma, lambda, 1.0, Some(follows));
    Tensor::from_vec(y, v.len(), v_next.device())
}

/// Estimates `policy`'s value on `data`: the mean of an ensemble of Q-functions on one tracker,
/// each fitted on its own online bootstrap of the sessions (Poisson(1) weights per session and
/// batch), their spread the estimate's standard error. `keep_going` is asked before every
/// step; `None` when it said no.
pub fn evaluate(
    policy: &PolicyModel,
    data: &SessionDataset,
    cfg: &FqeConfig,
    seed: u64,
    rng: &mut Rng,
    device: &Device,
    keep_going: &dyn Fn() -> bool,
) -> Result<Option<FqeEstimate>> {
    let model: &ModelConfig = &policy.meta.config;
    let store = ParamStore::new(seed, device);
    let vb = store.builder();
    let members = cfg.ensemble.max(1);
    let qcfg = irec_model::heads::HeadsConfig { hidden: cfg.q_hidden.clone(), ..model.q.clone() };
    let tracker = StateTracker::new(&model.tracker, vb.pp("fqe").pp("tracker"))?;
    let t_tracker = StateTracker::new(&model.tracker, vb.pp("target").pp("tracker"))?;
    let mut qs = Vec::with_capacity(members);
    let mut t_qs = Vec::with_capacity(members);
    for k in 0..members {
        qs.push(MultiHead::new(&qcfg, vb.pp("fqe").pp(format!("q{k}")))?);
        t_qs.push(MultiHead::new(&qcfg, vb.pp("target").pp(format!("q{k}")))?);
    }
    store.soft_update("fqe.", "target.", 1.0)?;
    let mut opt = Adam::new(store.vars("fqe."), &cfg.optim)?;
    let h = model.tracker.state_width();
    let poisson = rand_distr::Poisson::new(1.0f64).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let greedy = GreedyActions::of(policy, data, device)?;
    let mut tds = Vec::new();
    for _ in 0..cfg.steps {
        if !keep_going() {
            return Ok(None);
        }
        let idx = data.sample(cfg.optim.batch_sessions, rng);
        if idx.is_empty() {
            break;
        }
        let batch = data.batch(&idx, device)?;
        let n = batch.steps * batch.sessions;
        let (pi_next, follows) = greedy.next_of(data, &idx, &batch, policy.heads(), device)?;
        let t_states = t_tracker.unroll(&batch.features)?.narrow(0, 1, batch.steps)?.reshape((n, h))?;
        let states = tracker.unroll(&batch.features)?.narrow(0, 0, batch.steps)?.reshape((n, h))?;
        let mut loss: Option<Tensor> = None;
        let mut td_sum = 0.0;
        for (q, t_q) in qs.iter().zip(&t_qs) {
            let v_next = (t_q.forward(&t_states)? * &pi_next)?.sum(D::Minus1)?;
            let y = trace_target(&v_next, &batch, &follows, cfg.optim.gamma as f32, cfg.trace_lambda as f32)?;
            let q_sa = (q.forward(&states)? * &batch.onehot)?.sum(D::Minus1)?;
            let err = (q_sa - y)?.sqr()?;
            td_sum += scalar(&batch.masked_mean(&err)?)? as f64;
            // Row t·B + b belongs to session b: one bootstrap weight per session.
            let per_session: Vec<f32> =
                (0..batch.sessions).map(|_| if members > 1 { rand_distr::Distribution::sample(&poisson, rng) as f32 } else { 1.0 }).collect();
            let w = Tensor::from_vec((0..n).map(|row| per_session[row % batch.sessions]).collect::<Vec<f32>>(), n, device)?;
            let l = batch.masked_mean(&((err * w)? * 0.5)?)?;
            loss = Some(match loss { Some(x) => (x + l)?, None => l });
        }
        let Some(loss) = loss else { break };
        let mut grads = loss.backward()?;
        opt.step(&mut grads)?;
        store.soft_update("fqe.", "target.", cfg.tau)?;
        tds.push(td_sum / members as f64);
    }
    // Every session starts from the same empty state: its value under π is the estimate.
    let values: Vec<f64> = if data.is_empty() {
        vec![0.0]
    } else {
        let pi_first = onehot_rows(&[Some(greedy.first)], policy.heads(), device)?;
        let s0 = tracker.initial(1, device)?;
        qs.iter().map(|q| Ok(scalar(&(q.forward(&s0)? * &pi_first)?.sum_all()?)? as f64)).collect::<Result<_>>()?
    };
    let spread = irec_world::metrics::MeanSe::of(&values);
    // The members' standard deviation (not its standard error): each is one bootstrap replicate.
    let se = if values.len() > 1 { spread.se * (values.len() as f64).sqrt() } else { 0.0 };
    let tail = &tds[tds.len() - tds.len() / 10..];
    let td = if tail.is_empty() { 0.0 } else { tail.iter().sum::<f64>() / tail.len() as f64 };
    Ok(Some(FqeEstimate { value: spread.mean, se, td }))
}
