//! Text encoder (paper): word embedding 32 → LSTM 128 → linear 32. Pretrained to classify the
//! (attribute, value) an utterance asks for, then frozen; its output is cached per utterance.

use super::kernels::lstm_cell;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextEncoderConfig {
    /// Vocabulary size (words + padding + unknown).
    pub vocab: usize,
    /// Word embedding width.
    pub embed: usize,
    /// LSTM hidden width.
    pub hidden: usize,
    /// Output embedding width.
    pub out: usize,
    /// Longest utterance, in tokens.
    pub max_len: usize,
    /// Classes of the pretraining head (every (attribute, value) and "Good"), kept with the
    /// encoder so its probabilities join the embedding in the output (0: the embedding alone,
    /// as checkpoints made before the head was kept).
    pub classes: usize,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        TextEncoderConfig { vocab: 0, embed: 32, hidden: 128, out: 32, max_len: 16, classes: 0 }
    }
}

#[derive(Clone, Debug)]
pub struct TextEncoder {
    cfg: TextEncoderConfig,
    embed: Embedding,
    w_ih: Linear,
    w_hh: Linear,
    proj: Linear,
    head: Option<Linear>,
}

impl TextEncoderConfig {
    /// Width of [`TextEncoder::forward`]'s output: the embedding, then the class probabilities.
    pub fn output_width(&self) -> usize {
        self.out + self.classes
    }
}

impl TextEncoder {
    pub fn new(cfg: &TextEncoderConfig, vb: VarBuilder) -> Result<TextEncoder> {
        Ok(TextEncoder {
            cfg: cfg.clone(),
            embed: embedding(cfg.vocab, cfg.embed, vb.pp("embed"))?,
            w_ih: linear(cfg.embed, 4 * cfg.hidden, vb.pp("lstm.ih"))?,
            w_hh: linear(cfg.hidden, 4 * cfg.hidden, vb.pp("lstm.hh"))?,
            proj: linear(cfg.hidden, cfg.out, vb.pp("proj"))?,
            head: if cfg.classes > 0 { Some(linear(cfg.out, cfg.classes, vb.pp("head"))?) } else { None },
        })
    }

    pub fn config(&self) -> &TextEncoderConfig {
        &self.cfg
    }

    /// What the recommender sees of an utterance: the embedding and, with a head, the softmax of
    /// its classification (B, out + classes). The probabilities name the requested (attribute,
    /// value) in a slot of its own, so a policy can map "I want Heel Sandals" to the matching
    /// action slot without learning to decode the embedding from the few sessions where a rare
    /// value comes up.
    pub fn forward(&self, tokens: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let emb = self.embed_tokens(tokens, mask)?;
        match &self.head {
            Some(head) => Tensor::cat(&[&emb, &candle_nn::ops::softmax_last_dim(&head.forward(&emb)?)?], 1),
            None => Ok(emb),
        }
    }

    /// The classification head's logits on embeddings (pretraining); `None` without a head.
    pub fn class_logits(&self, embedding: &Tensor) -> Option<Result<Tensor>> {
        self.head.as_ref().map(|h| h.forward(embedding))
    }

    /// `tokens`: (B, T) u32, right-padded; `mask`: (B, T) f32, 1 on real tokens. Returns (B, out).
    pub fn embed_tokens(&self, tokens: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let h_dim = self.cfg.hidden;
        // Embedded per step from the (untracked) token ids: slicing a tracked (T, B, E) embedding
        // per step would make the backward pass quadratic in T.
        let tokens_tm = tokens.t()?.contiguous()?; // (T, B)
        let mask = mask.t()?.contiguous()?; // (T, B)
        let mut h = Tensor::zeros((b, h_dim), candle_core::DType::F32, tokens.device())?;
        let mut c = h.clone();
        for step in 0..t {
            let x = self.embed.forward(&tokens_tm.get(step)?)?;
            let gates = (self.w_ih.forward(&x)? + self.w_hh.forward(&h)?)?;
            let (hn, cn) = lstm_cell(&gates, &c)?;
            let m = mask.get(step)?.unsqueeze(D::Minus1)?;
            // Past the end of an utterance the state is carried unchanged.
            h = (&h + (hn - &h)?.broadcast_mul(&m)?)?;
            c = (&c + (cn - &c)?.broadcast_mul(&m)?)?;
        }
        self.proj.forward(&h)
    }
}

/// Packs token id lists into right-padded (B, T) ids and a (B, T) mask.
pub fn pack(batch: &[Vec<u32>], device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let t = batch.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; batch.len() * t];
    let mut mask = vec![0f32; batch.len() * t];
    for (i, seq) in batch.iter().enumerate() {
        for (j, id) in seq.iter().enumerate() {
            ids[i * t + j] = *id;
            mask[i * t + j] = 1.0;
        }
    }
    Ok((Tensor::from_vec(ids, (batch.len(), t), device)?, Tensor::from_vec(mask, (batch.len(), t), device)?))
}
