//! The on-policy learner: PPO-clip against the simulator (the paper's upper bound, and the source
//! of the round-0 behaviour policies). Each iteration rolls out a batch of whole sessions with the
//! current stochastic policy, computes GAE(λ) advantages with a value head on the state tracker,
//! and takes a few clipped-surrogate epochs over the batch, the tracker unrolled with gradients.
//!
//! PPO rather than A2C: the clipped ratio lets several epochs reuse each (costly) batch of
//! simulated sessions without the policy running away, which matters on a 2-core budget.
//!
//! Warm start: from random weights PPO needed hundreds of iterations to learn that a requested
//! value should be asked for (a random request on five other heads drowns the one right request
//! in retrieval, and "no preference everywhere" is a strong local optimum). The learner therefore
//! starts by cloning the rule-based tracker's sessions ([`Ppo::imitate`]), then improves on them
//! with PPO; the value head is fitted for a few iterations before the policy moves, and epochs stop
//! early when the policy drifts too far from the one that collected the batch (target KL).

use super::{scalar, Adam, LossRecord, Objective, OptimConfig, PerceptionWeights, Recommender, SessionDataset};
use irec_protocol::experience::ExperienceSession;
use irec_model::heads::{HeadsConfig, MultiHead};
use irec_model::kernels::seg_log_softmax;
use irec_model::acting::rollout_limited;
use irec_model::{Acting, Featurizer};
use irec_world::sim::SessionSpec;
use irec_world::rng::Rng;
use irec_world::sim::Environment;
use candle_core::{Result, Tensor, D};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PpoConfig {
    pub optim: OptimConfig,
    /// The reward PPO maximises (the simulator's turns are relabelled with it).
    pub objective: Objective,
    /// Sessions rolled out per iteration.
    pub sessions_per_iteration: usize,
    /// Gradient epochs over each iteration's batch.
    pub epochs: usize,
    /// Ratio clip ε.
    pub clip: f64,
    /// GAE λ.
    pub gae_lambda: f64,
    /// Weight of the value loss.
    pub value_coef: f64,
    /// Weight of the entropy bonus (nats).
    pub entropy_coef: f64,
    /// Sessions per gradient step (an iteration's sessions are split into minibatches).
    pub minibatch_sessions: usize,
    /// Rewards are multiplied by this for the critic and advantages (returns reach −100 otherwise).
    pub reward_scale: f64,
    /// Training sessions are cut after this many turns and bootstrap from the value head
    /// (0: the simulator's cap). Long failing sessions teach little and cost most.
    pub train_turn_limit: usize,
    /// Stop an iteration's epochs once the approximate KL from the rollout policy exceeds 1.5×
    /// this (0: never).
    pub target_kl: f64,
    /// First iterations fit only the value head (the policy keeps still).
    pub value_warmup_iterations: usize,
    /// Behaviour-cloning steps on the rule-based tracker's sessions before PPO (see docs/results.md).
    pub warm_start_steps: usize,
    /// Tracker sessions collected for the warm start.
    pub warm_start_sessions: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            optim: OptimConfig::default(),
            objective: Objective::default(),
            sessions_per_iteration: 128,
            epochs: 4,
            clip: 0.2,
            gae_lambda: 0.9,
            value_coef: 0.5,
            entropy_coef: 0.001,
            minibatch_sessions: 32,
            reward_scale: 0.1,
            train_turn_limit: 20,
            target_kl: 0.02,
            value_warmup_iterations: 5,
            warm_start_steps: 1_000,
            warm_start_sessions: 2_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PpoLosses {
    pub policy: f32,
    pub value: f32,
    pub entropy: f32,
    pub approx_kl: f32,
    /// Mean undiscounted return of the rollout sessions.
    pub mean_return: f32,
    /// Success rate of the rollout sessions.
    pub success_rate: f32,
    /// Mean turns per rollout session.
    pub mean_turns: f32,
    /// Wall time of the rollout and of the update, in seconds.
    pub rollout_s: f32,
    pub update_s: f32,
}

impl LossRecord for PpoLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        vec![
            ("policy", self.policy),
            ("value", self.value),
            ("entropy", self.entropy),
            ("approx_kl", self.approx_kl),
            ("mean_return", self.mean_return),
            ("success_rate", self.success_rate),
            ("mean_turns", self.mean_turns),
            ("rollout_s", self.rollout_s),
            ("update_s", self.update_s),
        ]
    }
}

#[derive(Debug)]
pub struct Ppo {
    pub cfg: PpoConfig,
    rec: Recommender,
    value: MultiHead,
    opt: Adam,
    iterations: u64,
}

impl Ppo {
    pub fn new(perception: &PerceptionWeights, seed: u64, cfg: &PpoConfig) -> Result<Ppo> {
        let rec = Recommender::new(perception, seed, None)?;
        let value = MultiHead::new(&HeadsConfig::value(rec.tracker.hidden()), rec.store.builder().pp("value"))?;
        let mut vars = rec.store.vars("tracker.");
        vars.extend(rec.store.vars("policy."));
        vars.extend(rec.store.vars("value."));
        Ok(Ppo { opt: Adam::new(vars, &cfg.optim)?, cfg: cfg.clone(), rec, value, iterations: 0 })
    }

    pub fn recommender(&self) -> &Recommender {
        &self.rec
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Behaviour cloning on demonstrations (the warm start): `steps` gradient steps of the logged
    /// actions' negative log-likelihood, through tracker and policy. Returns the last loss.
    pub fn imitate(&mut self, demos: &SessionDataset, steps: usize, rng: &mut Rng) -> Result<f32> {
        let device = self.rec.perception.perception.device.clone();
        let mut last = 0.0;
        for _ in 0..steps {
            let idx = demos.sample(self.cfg.optim.batch_sessions, rng);
            if idx.is_empty() {
                break;
            }
            let batch = demos.batch(&idx, &device)?;
            let (logp_a, _, _) = self.evaluate(&batch)?;
            let loss = batch.masked_mean(&logp_a.neg()?)?;
            let mut grads = loss.backward()?;
            self.opt.step(&mut grads)?;
            last = scalar(&loss)?;
        }
        Ok(last)
    }

    /// Per-row log-probability of the taken action and entropy on a batch's states (T·B rows), and
    /// the value of every state including the one after the last turn ((T + 1)·B rows).
    fn evaluate(&self, batch: &super::Batch) -> Result<(Tensor, Tensor, Tensor)> {
        let h = self.rec.tracker.hidden();
        let states = self.rec.tracker.unroll(&batch.features)?;
        let s = states.narrow(0, 0, batch.steps)?.reshape((batch.steps * batch.sessions, h))?;
        let logp = seg_log_softmax(&self.rec.policy.forward(&s)?, self.rec.heads())?;
        let logp_a = (&logp * &batch.onehot)?.sum(D::Minus1)?;
        let entropy = (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?;
        let v = self.value.forward(&states.reshape(((batch.steps + 1) * batch.sessions, h))?)?.squeeze(D::Minus1)?;
        Ok((logp_a, entropy, v))
    }

    /// One iteration: roll out, estimate advantages, update.
    pub fn iteration(&mut self, env: &Environment, featurizer: &Featurizer, rng: &mut Rng) -> Result<PpoLosses> {
        let specs: Vec<SessionSpec> =
            (0..self.cfg.sessions_per_iteration).map(|_| SessionSpec { target: env.sample_target(rng), seed: rng.random() }).collect();
        let acting = Acting { sample: true, ..Acting::default() };
        let started = std::time::Instant::now();
        let limit = if self.cfg.train_turn_limit == 0 { usize::MAX } else { self.cfg.train_turn_limit };
        let transcripts = rollout_limited(env, &self.rec.tracker, &self.rec.policy, featurizer, self.rec.heads(), &specs, &acting, limit)?;
        let rollout_s = started.elapsed().as_secs_f32();
        // A session cut at the training limit is not over: its last turn bootstraps from V.
        let sessions: Vec<ExperienceSession> = transcripts
            .iter()
            .map(|t| {
                let mut s = ExperienceSession::from_transcript(t, 0);
                let truncated = !t.success && t.turns.len() >= limit && limit < env.reward.max_turns;
                if let (true, Some(last)) = (truncated, s.turns.last_mut()) {
                    last.done = false;
                }
                s
            })
            .collect();
        let data = SessionDataset::new(&sessions, featurizer, self.rec.heads())?.with_objective(&self.cfg.objective);
        let device = featurizer.perception().device.clone();

        // GAE(λ) on the host, per session, from the pre-update values; rewards scaled for the critic.
        let all: Vec<usize> = (0..data.len()).collect();
        let full = data.batch(&all, &device)?;
        let (old_logp, _, values) = self.evaluate(&full)?;
        let old = old_logp.to_vec1::<f32>()?;
        let v = values.to_vec1::<f32>()?;
        let (gamma, lambda, scale) = (self.cfg.optim.gamma as f32, self.cfg.gae_lambda as f32, self.cfg.reward_scale as f32);
        let b = full.sessions;
        let mut per_session: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = Vec::with_capacity(b);
        let mut all_adv = Vec::new();
        for (col, s) in data.sessions.iter().enumerate() {
            let n = s.len();
            let (mut adv, mut ret, mut lp) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            let (mut next_adv, mut next_v) = (0f32, v[n * b + col]);
            for t in (0..n).rev() {
                let row = t * b + col;
                let nd = if s.dones[t] { 0.0 } else { 1.0 };
                let delta = scale * s.rewards[t] + gamma * next_v * nd - v[row];
                next_adv = delta + gamma * lambda * nd * next_adv;
                adv[t] = next_adv;
                ret[t] = next_adv + v[row];
                lp[t] = old[row];
                next_v = v[row];
            }
            all_adv.extend_from_slice(&adv);
            per_session.push((adv, ret, lp));
        }
        let n = all_adv.len().max(1) as f32;
        let mean = all_adv.iter().sum::<f32>() / n;
        let std = (all_adv.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / n).sqrt() + 1e-6;

        let mut out = PpoLosses::default();
        let clip = self.cfg.clip;
        let mb = self.cfg.minibatch_sessions.clamp(1, data.len().max(1));
        let mut order = all;
        // A fresh value head gives meaningless advantages: fit it before the policy moves.
        let policy_weight = if self.iterations < self.cfg.value_warmup_iterations as u64 { 0.0 } else { 1.0 };
        'epochs: for _ in 0..self.cfg.epochs.max(1) {
            order.shuffle(rng);
            for chunk in order.chunks(mb) {
                let batch = data.batch(chunk, &device)?;
                let rows = batch.steps * batch.sessions;
                let (mut adv, mut ret, mut lp) = (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows]);
                for (c, &i) in chunk.iter().enumerate() {
                    let (a, r, l) = &per_session[i];
                    for t in 0..a.len() {
                        let row = t * batch.sessions + c;
                        adv[row] = (a[t] - mean) / std;
                        ret[row] = r[t];
                        lp[row] = l[t];
                    }
                }
                let adv_t = Tensor::from_vec(adv, rows, &device)?;
                let (logp, entropy, value) = self.evaluate(&batch)?;
                let value = value.narrow(0, 0, rows)?;
                let ret_t = Tensor::from_vec(ret, rows, &device)?;
                let old_t = Tensor::from_vec(lp, rows, &device)?;
                let log_ratio = (&logp - &old_t)?;
                let ratio = log_ratio.exp()?;
                let surr1 = (&ratio * &adv_t)?;
                let surr2 = (ratio.clamp(1.0 - clip, 1.0 + clip)? * &adv_t)?;
                let policy = batch.masked_mean(&surr1.minimum(&surr2)?.neg()?)?;
                let value_loss = batch.masked_mean(&(&value - &ret_t)?.sqr()?)?;
                let ent = batch.masked_mean(&entropy)?;
                let loss = (((&policy * policy_weight)? + (&value_loss * self.cfg.value_coef)?)? - (&ent * (self.cfg.entropy_coef * policy_weight))?)?;
                let mut grads = loss.backward()?;
                self.opt.step(&mut grads)?;
                out.policy = scalar(&policy)?;
                out.value = scalar(&value_loss)?;
                out.entropy = scalar(&ent)?;
                // KL(old‖new) ≈ E[(r − 1) − log r]
                out.approx_kl = scalar(&batch.masked_mean(&((ratio - 1.0)? - log_ratio)?)?)?;
                if self.cfg.target_kl > 0.0 && out.approx_kl as f64 > 1.5 * self.cfg.target_kl {
                    break 'epochs;
                }
            }
        }
        out.rollout_s = rollout_s;
        out.update_s = started.elapsed().as_secs_f32() - rollout_s;
        self.iterations += 1;
        out.mean_return = sessions.iter().map(|s| s.turns.iter().map(|t| t.reward).sum::<f32>()).sum::<f32>() / sessions.len().max(1) as f32;
        out.success_rate = transcripts.iter().filter(|t| t.success).count() as f32 / transcripts.len().max(1) as f32;
        out.mean_turns = transcripts.iter().map(|t| t.turns.len()).sum::<usize>() as f32 / transcripts.len().max(1) as f32;
        Ok(out)
    }
}
