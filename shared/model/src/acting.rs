//! Acting: from a session so far to an action. A [`PolicyModel`] is rebuilt from a checkpoint alone;
//! [`Acting`] adds what a device keeps private (Gaussian logit noise σ and a logit bias); the
//! [`NeuralPolicy`] runs one session at a time (a device), [`rollout`] many at once (evaluation,
//! on-policy training, behaviour collection).

use super::checkpoint::{Checkpoint, CheckpointMeta, ModelError};
use super::heads::MultiHead;
use super::perception::{Featurizer, Perception};
use super::tracker::StateTracker;
use super::{attrnet::AttrNet, text_encoder::TextEncoder, tokenizer::Vocabulary};
use irec_world::catalog::{Action, NUM_ATTRS};
use irec_world::policy::{Policy, SessionHint};
use irec_world::rng::{self, Rng};
use irec_world::sim::{Environment, Observation, SessionSpec, Transcript};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// How logits become actions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Acting {
    /// Standard deviation of Gaussian noise added to every logit (logit units).
    pub noise_sigma: f32,
    /// Added to the logits (length Σ heads, or empty for none): a device's personalization.
    pub bias: Vec<f32>,
    /// Sample from the softmax of the (noisy, biased) logits instead of taking the argmax.
    pub sample: bool,
}

impl Default for Acting {
    fn default() -> Self {
        Acting { noise_sigma: 0.0, bias: Vec::new(), sample: false }
    }
}

impl Acting {
    pub fn greedy() -> Acting {
        Acting::default()
    }

    /// Chooses one slot per head from one row of logits.
    pub fn choose(&self, logits: &[f32], heads: &[usize], rng: &mut Rng) -> Action {
        let mut action = Action::default();
        let mut off = 0;
        for (d, &n) in heads.iter().enumerate().take(NUM_ATTRS) {
            let mut z: Vec<f32> = logits[off..off + n].to_vec();
            if let Some(b) = self.bias.get(off..off + n) {
                z.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
            if self.noise_sigma > 0.0 {
                for x in z.iter_mut() {
                    let e: f32 = StandardNormal.sample(rng);
                    *x += self.noise_sigma * e;
                }
            }
            let slot = if self.sample {
                let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f64> = z.iter().map(|x| ((x - m) as f64).exp()).collect();
                rng::weighted_index(&w, rng).unwrap_or(0)
            } else {
                z.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
            };
            action.0[d] = slot as u8;
            off += n;
        }
        action
    }
}

/// A recommender rebuilt from a checkpoint: perception, state tracker and policy head.
#[derive(Clone, Debug)]
pub struct PolicyModel {
    pub meta: CheckpointMeta,
    pub perception: Arc<Perception>,
    pub tracker: StateTracker,
    pub policy: MultiHead,
}

impl PolicyModel {
    pub fn from_checkpoint(ck: &Checkpoint, device: &Device) -> Result<PolicyModel, ModelError> {
        let map: HashMap<String, Tensor> =
            ck.tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(device)?))).collect::<Result<_, candle_core::Error>>()?;
        let vb = VarBuilder::from_tensors(map, candle_core::DType::F32, device);
        let cfg = &ck.meta.config;
        let perception = Perception {
            vocab: Vocabulary::from_words(ck.meta.vocab.clone()),
            text: TextEncoder::new(&cfg.text, vb.pp("text"))?,
            attrnet: AttrNet::new(&cfg.attrnet, vb.pp("attrnet"))?,
            device: device.clone(),
        };
        Ok(PolicyModel {
            meta: ck.meta.clone(),
            perception: Arc::new(perception),
            tracker: StateTracker::new(&cfg.tracker, vb.pp("tracker"))?,
            policy: MultiHead::new(&cfg.policy, vb.pp("policy"))?,
        })
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<PolicyModel, ModelError> {
        PolicyModel::from_checkpoint(&Checkpoint::from_bytes(bytes, device)?, device)
    }

    pub fn heads(&self) -> &[usize] {
        &self.meta.config.heads
    }
}

/// One session at a time, as a device runs it.
#[derive(Debug)]
pub struct NeuralPolicy {
    model: Arc<PolicyModel>,
    featurizer: Arc<Featurizer>,
    acting: Acting,
    state: Option<Tensor>,
    buf: Vec<f32>,
}

impl NeuralPolicy {
    pub fn new(model: Arc<PolicyModel>, featurizer: Arc<Featurizer>, acting: Acting) -> NeuralPolicy {
        NeuralPolicy { model, featurizer, acting, state: None, buf: Vec::new() }
    }

    fn try_observe(&mut self, obs: &Observation) -> candle_core::Result<()> {
        self.buf.clear();
        self.featurizer.push_turn(obs.shown, &obs.utterance, &mut self.buf)?;
        let dev = &self.model.perception.device;
        let x = Tensor::from_slice(&self.buf, (1, self.buf.len()), dev)?;
        let h = match &self.state {
            Some(h) => h.clone(),
            None => self.model.tracker.initial(1, dev)?,
        };
        self.state = Some(self.model.tracker.step(&x, &h)?);
        Ok(())
    }

    fn try_act(&mut self, rng: &mut Rng) -> candle_core::Result<Action> {
        let dev = &self.model.perception.device;
        let h = match &self.state {
            Some(h) => h.clone(),
            None => self.model.tracker.initial(1, dev)?,
        };
        let logits = self.model.policy.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.acting.choose(&logits, self.model.heads(), rng))
    }
}

impl Policy for NeuralPolicy {
    fn begin(&mut self, _: &SessionHint) {
        self.state = None;
    }

    fn observe(&mut self, observation: &Observation) {
        // A failure here means a corrupt model; the state is left as it was and logged.
        if let Err(e) = self.try_observe(observation) {
            tracing::error!("state tracker failed: {e}");
        }
    }

    fn act(&mut self, rng: &mut Rng) -> Action {
        self.try_act(rng).unwrap_or_else(|e| {
            tracing::error!("policy failed: {e}");
            Action::default()
        })
    }
}

/// Runs many sessions in lock step, one batched tracker/policy forward per turn.
pub fn rollout(
    env: &Environment,
    tracker: &StateTracker,
    policy: &MultiHead,
    featurizer: &Featurizer,
    heads: &[usize],
    sessions: &[SessionSpec],
    acting: &Acting,
) -> candle_core::Result<Vec<Transcript>> {
    rollout_limited(env, tracker, policy, featurizer, heads, sessions, acting, usize::MAX)
}

/// [`rollout`], stopping every session after at most `turn_limit` turns (on-policy training).
#[allow(clippy::too_many_arguments)]
pub fn rollout_limited(
    env: &Environment,
    tracker: &StateTracker,
    policy: &MultiHead,
    featurizer: &Featurizer,
    heads: &[usize],
    sessions: &[SessionSpec],
    acting: &Acting,
    turn_limit: usize,
) -> candle_core::Result<Vec<Transcript>> {
    let dev = featurizer.perception().device.clone();
    let mut episodes: Vec<_> = sessions.iter().map(|s| env.start(s)).collect();
    let mut rngs: Vec<Rng> = sessions.iter().map(SessionSpec::acting_rng).collect();
    let width: usize = heads.iter().sum();
    let mut h = tracker.initial(sessions.len(), &dev)?;
    let mut active: Vec<usize> = (0..sessions.len()).collect();
    let mut feats = Vec::new();
    while !active.is_empty() {
        let logits = policy.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
        feats.clear();
        let mut still = Vec::with_capacity(active.len());
        let mut rows = Vec::with_capacity(active.len());
        for (row, &i) in active.iter().enumerate() {
            let action = acting.choose(&logits[row * width..(row + 1) * width], heads, &mut rngs[i]);
            let stepped = episodes[i].step(action).is_some();
            if stepped && !episodes[i].is_done() && episodes[i].turns().len() < turn_limit {
                if let Some(turn) = episodes[i].turns().last() {
                    featurizer.push_turn(turn.observation.shown, &turn.observation.utterance, &mut feats)?;
                    still.push(i);
                    rows.push(row as u32);
                }
            }
        }
        if still.is_empty() {
            break;
        }
        let idx = Tensor::from_vec(rows, still.len(), &dev)?;
        let h_prev = h.index_select(&idx, 0)?;
        let x = Tensor::from_vec(std::mem::take(&mut feats), (still.len(), featurizer.width()), &dev)?;
        h = tracker.step(&x, &h_prev)?;
        active = still;
    }
    Ok(episodes.into_iter().map(|e| e.into_transcript()).collect())
}
