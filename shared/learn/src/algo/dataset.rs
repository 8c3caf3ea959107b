//! Experience as training batches. Every session's turn features are computed once (the encoders
//! are frozen), sessions are bucketed by length so a batch of whole sessions carries little padding,
//! and a batch is laid out time-major for the state tracker's unroll.

use super::objective::Objective;
use irec_world::catalog::NUM_ATTRS;
use irec_protocol::experience::ExperienceSession;
use irec_model::Featurizer;
use candle_core::{Device, Result, Tensor};

/// One session, ready for training.
#[derive(Clone, Debug)]
pub struct PreparedSession {
    /// Turn features, row-major (turns × F): the item shown at turn t and what was said about it.
    pub features: Vec<f32>,
    /// Action slots, one row of NUM_ATTRS per turn.
    pub actions: Vec<[u8; NUM_ATTRS]>,
    /// Rewards under the dataset's objective (as logged until [`SessionDataset::relabel`]).
    pub rewards: Vec<f32>,
    pub dones: Vec<bool>,
    /// The rewards the device logged (the paper's formula).
    pub logged_rewards: Vec<f32>,
    /// The session found its item on its last turn.
    pub success: bool,
    /// The round of the policy that collected it.
    pub round: u32,
}

impl PreparedSession {
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Sessions prepared for training, bucketed by length.
#[derive(Clone, Debug)]
pub struct SessionDataset {
    pub sessions: Vec<PreparedSession>,
    pub feature_width: usize,
    pub heads: Vec<usize>,
    /// Session indices grouped by length bucket (1–2, 3–4, 5–8, 9–16, 17–32, 33+ turns).
    buckets: Vec<Vec<usize>>,
    /// The same, for the sessions of the newest round only.
    recent_buckets: Vec<Vec<usize>>,
    /// Share of each batch drawn from the newest round's sessions (see [`SessionDataset::favour_newest`]).
    recent_share: f64,
}

fn bucket_of(len: usize) -> usize {
    match len {
        0..=2 => 0,
        3..=4 => 1,
        5..=8 => 2,
        9..=16 => 3,
        17..=32 => 4,
        _ => 5,
    }
}

impl SessionDataset {
    pub fn new(experience: &[ExperienceSession], featurizer: &Featurizer, heads: &[usize]) -> Result<SessionDataset> {
        featurizer.prepare_texts(experience.iter().flat_map(|s| s.turns.iter().map(|t| t.utterance.as_str())))?;
        let mut sessions = Vec::with_capacity(experience.len());
        for s in experience.iter().filter(|s| !s.is_empty()) {
            let mut features = Vec::with_capacity(s.len() * featurizer.width());
            for t in &s.turns {
                featurizer.push_turn(t.shown, &t.utterance, &mut features)?;
            }
            let logged: Vec<f32> = s.turns.iter().map(|t| t.reward).collect();
            sessions.push(PreparedSession {
                features,
                actions: s.turns.iter().map(|t| t.action.0).collect(),
                rewards: logged.clone(),
                dones: s.turns.iter().map(|t| t.done).collect(),
                logged_rewards: logged,
                success: s.succeeded(),
                round: s.round,
            });
        }
        Ok(SessionDataset::from_prepared(sessions, featurizer.width(), heads))
    }

    pub fn from_prepared(sessions: Vec<PreparedSession>, feature_width: usize, heads: &[usize]) -> SessionDataset {
        let mut buckets = vec![Vec::new(); 6];
        let mut recent_buckets = vec![Vec::new(); 6];
        let newest = sessions.iter().map(|s| s.round).max().unwrap_or(0);
        for (i, s) in sessions.iter().enumerate() {
            buckets[bucket_of(s.len())].push(i);
            if s.round == newest {
                recent_buckets[bucket_of(s.len())].push(i);
            }
        }
        SessionDataset { sessions, feature_width, heads: heads.to_vec(), buckets, recent_buckets, recent_share: 0.0 }
    }

    /// Draws `share` (0–1) of every batch from the sessions of the newest round, the rest from all
    /// of D ∪ D′ as before. Uniform sampling lets the newest round's sessions, a fraction of a
    /// growing D, count for less each round, although they are the only ones that show what the
    /// deployed policy does and where it goes wrong.
    pub fn favour_newest(mut self, share: f64) -> SessionDataset {
        self.recent_share = share.clamp(0.0, 1.0);
        self
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Replaces every turn's reward by what `objective` makes of the logged one.
    pub fn relabel(&mut self, objective: &Objective) {
        for s in &mut self.sessions {
            s.rewards = objective.rewards(&s.logged_rewards, s.success, s.dones.last().copied().unwrap_or(true));
        }
    }

    /// This dataset with its rewards under `objective`.
    pub fn with_objective(mut self, objective: &Objective) -> SessionDataset {
        self.relabel(objective);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn transitions(&self) -> usize {
        self.sessions.iter().map(PreparedSession::len).sum()
    }

    /// `n` sessions drawn uniformly (with replacement) from one length bucket, the bucket chosen
    /// with probability proportional to its size, so sessions are drawn uniformly overall.
    pub fn sample(&self, n: usize, rng: &mut impl rand::Rng) -> Vec<usize> {
        if self.sessions.is_empty() {
            return Vec::new();
        }
        let mut k = rng.random_range(0..self.sessions.len());
        let which = self
            .buckets
            .iter()
            .position(|b| {
                if k < b.len() {
                    true
                } else {
                    k -= b.len();
                    false
                }
            })
            .unwrap_or(0);
        let b = &self.buckets[which];
        let recent = &self.recent_buckets[which];
        (0..n)
            .map(|_| {
                if self.recent_share > 0.0 && !recent.is_empty() && rng.random::<f64>() < self.recent_share {
                    recent[rng.random_range(0..recent.len())]
                } else {
                    b[rng.random_range(0..b.len())]
                }
            })
            .collect()
    }

    /// Lays the chosen sessions out as a batch on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Batch> {
        let b = idx.len();
        let t = idx.iter().map(|i| self.sessions[*i].len()).max().unwrap_or(1).max(1);
        let f = self.feature_width;
        let w: usize = self.heads.iter().sum();
        let mut offsets = Vec::with_capacity(self.heads.len());
        let mut acc = 0;
        for h in &self.heads {
            offsets.push(acc);
            acc += h;
        }
        let n = t * b;
        let mut features = vec![0f32; n * f];
        let mut onehot = vec![0f32; n * w];
        let mut rewards = vec![0f32; n];
        let mut not_done = vec![0f32; n];
        let mut mask = vec![0f32; n];
        let mut actions = vec![[0u8; NUM_ATTRS]; n];
        for (col, &i) in idx.iter().enumerate() {
            let s = &self.sessions[i];
            for step in 0..s.len() {
                let row = step * b + col;
                features[row * f..(row + 1) * f].copy_from_slice(&s.features[step * f..(step + 1) * f]);
                for (d, slot) in s.actions[step].iter().enumerate() {
                    onehot[row * w + offsets[d] + *slot as usize] = 1.0;
                }
                actions[row] = s.actions[step];
                rewards[row] = s.rewards[step];
                not_done[row] = if s.dones[step] { 0.0 } else { 1.0 };
                mask[row] = 1.0;
            }
        }
        Ok(Batch {
            steps: t,
            sessions: b,
            features: Tensor::from_vec(features, (t, b, f), device)?,
            onehot: Tensor::from_vec(onehot, (n, w), device)?,
            rewards: Tensor::from_vec(rewards, n, device)?,
            not_done: Tensor::from_vec(not_done, n, device)?,
            mask: Tensor::from_vec(mask, n, device)?,
            actions,
        })
    }
}

/// TD(λ) targets over time-major rows of whole sessions (row `t·sessions + b` is turn t of
/// session b), by one backward pass: y_t = scale·r_t + γ(1 − done_t)·[(1 − λ)·V_{t+1} + λ·y_{t+1}],
/// where the blend applies only to turns with a successor whose row `follows` (all, when `None`);
/// elsewhere the target bootstraps from V_{t+1} alone. `v_next[row]` is V of the state after the
/// row's turn.
#[allow(clippy::too_many_arguments)]
pub fn lambda_targets(v_next: &[f32], rewards: &[f32], not_done: &[f32], sessions: usize, gamma: f32, lambda: f32, scale: f32, follows: Option<&[bool]>) -> Vec<f32> {
    let n = v_next.len();
    let mut y = vec![0f32; n];
    for row in (0..n).rev() {
        let blend = lambda > 0.0 && not_done[row] > 0.0 && row + sessions < n && follows.is_none_or(|f| f[row]);
        let next = if blend { (1.0 - lambda) * v_next[row] + lambda * y[row + sessions] } else { v_next[row] };
        y[row] = scale * rewards[row] + gamma * not_done[row] * next;
    }
    y
}

/// A batch of whole sessions, time-major: row `t · sessions + b` is turn `t` of session `b`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub steps: usize,
    pub sessions: usize,
    /// (T, B, F) turn features.
    pub features: Tensor,
    /// (T·B, Σ heads) one-hot of the chosen slot of every head.
    pub onehot: Tensor,
    /// (T·B) rewards.
    pub rewards: Tensor,
    /// (T·B) 1 where the turn is not the last of its session.
    pub not_done: Tensor,
    /// (T·B) 1 on real turns, 0 on padding.
    pub mask: Tensor,
    /// Chosen slots per row (for tests and diagnostics).
    pub actions: Vec<[u8; NUM_ATTRS]>,
}

impl Batch {
    /// Mean of a per-row quantity over real turns.
    pub fn masked_mean(&self, per_row: &Tensor) -> Result<Tensor> {
        let total = self.mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        (per_row * &self.mask)?.sum_all()? / total as f64
    }
}
