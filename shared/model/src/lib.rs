//! irec-model: the learned recommender, in candle. One network per module, each with a serde config,
//! `new(cfg, vb)` and `forward`; `vb.pp(..)` names the saved weights.
//!
//! - [`tokenizer`], [`text_encoder`]: utterance → 32-d embedding (LSTM, pretrained, frozen).
//! - [`attrnet`]: visual feature → attribute probabilities (pretrained on the train split).
//! - [`perception`]: those two plus caches; builds turn features.
//! - [`tracker`]: the GRU state tracker over turn features.
//! - [`heads`]: the policy (softmax per attribute) and the factorized Q-function.
//! - [`kernels`], [`gru_sequence`]: fused CPU kernels (GRU/LSTM cells, a whole GRU unroll,
//!   per-head softmax); [`simd`] compiles their loops for the CPU's widest vector unit.
//! - [`params`]: seeded parameter store.
//! - [`checkpoint`]: safetensors + config + version in one blob.
//! - [`device`]: `cpu` / `cuda:N` by name.
//! - [`acting`]: from a session to an action, with device noise and bias; batched rollouts.
//! - [`loader`]: the device side: checkpoint bytes → a personalised runnable policy (learned or
//!   baseline), shared across in-process agents by content hash.

pub mod acting;
pub mod attrnet;
pub mod checkpoint;
pub mod dense;
pub mod device;
pub mod gru_sequence;
pub mod head_losses;
pub mod heads;
pub mod kernels;
pub mod loader;
pub mod params;
pub mod perception;
mod simd;
pub mod text_encoder;
pub mod tokenizer;
pub mod tracker;

pub use acting::{rollout, Acting, NeuralPolicy, PolicyModel};
pub use checkpoint::{Checkpoint, CheckpointMeta, ModelError};
pub use perception::{Featurizer, Perception};

use attrnet::AttrNetConfig;
use heads::HeadsConfig;
use serde::{Deserialize, Serialize};
use text_encoder::TextEncoderConfig;
use tracker::TrackerConfig;

/// Every network's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub text: TextEncoderConfig,
    pub attrnet: AttrNetConfig,
    pub tracker: TrackerConfig,
    pub policy: HeadsConfig,
    pub q: HeadsConfig,
    /// Slots per action head (vocabulary + "no preference").
    pub heads: Vec<usize>,
}

impl ModelConfig {
    /// The paper's sizes for a world's schema, vocabulary and feature width.
    pub fn paper(text: TextEncoderConfig, attrnet: AttrNetConfig, heads: &[usize]) -> ModelConfig {
        ModelConfig::with_memory(text, attrnet, heads, false)
    }

    /// The paper's sizes, and with `memory` (and a text encoder that keeps its classes) the
    /// request memory beside the GRU with a copy path into the policy and the critics.
    pub fn with_memory(text: TextEncoderConfig, attrnet: AttrNetConfig, heads: &[usize], memory: bool) -> ModelConfig {
        let turn = text.output_width() + attrnet.input + attrnet.outputs();
        let memory = (memory && text.classes > 0).then(|| tracker::RequestMemory { offset: text.out, classes: text.classes, repeats: 1.0 });
        let hidden = 128;
        let with_memory = memory.is_some();
        let copy = |init| with_memory.then_some(heads::CopyPath { from: hidden, init });
        let tracker = TrackerConfig { input: turn, hidden, memory };
        let state = tracker.state_width();
        ModelConfig {
            // The policy starts out asking for what was asked for (beyond the +3 "no preference"
            // prior of a fresh recommender); the critics learn their scale from zero.
            policy: HeadsConfig { copy: copy(4.0), ..HeadsConfig::policy(state, heads) },
            q: HeadsConfig { copy: copy(0.0), ..HeadsConfig::q(state, heads) },
            text,
            attrnet,
            tracker,
            heads: heads.to_vec(),
        }
    }
}
