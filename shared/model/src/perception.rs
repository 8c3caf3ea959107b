//! Perception: the frozen, pretrained front of the recommender (vocabulary, text encoder, AttrNet)
//! and the turn featurizer built on it, which caches what never changes: each item's visual
//! feature with its AttrNet probabilities, and each distinct utterance's text embedding.

use super::attrnet::AttrNet;
use super::text_encoder::{pack, TextEncoder};
use super::tokenizer::Vocabulary;
use irec_world::catalog::{AttrTable, ItemId, VisualFeatures};
use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Vocabulary, text encoder and AttrNet.
#[derive(Clone, Debug)]
pub struct Perception {
    pub vocab: Vocabulary,
    pub text: TextEncoder,
    pub attrnet: AttrNet,
    pub device: Device,
}

impl Perception {
    /// Text embeddings of utterances, (N, out).
    pub fn encode_texts(&self, utterances: &[&str]) -> Result<Tensor> {
        let max_len = self.text.config().max_len;
        let ids: Vec<Vec<u32>> = utterances.iter().map(|u| self.vocab.encode(u, max_len)).collect();
        let (tokens, mask) = pack(&ids, &self.device)?;
        self.text.forward(&tokens, &mask)
    }

    /// AttrNet probabilities of every item, row-major (N items × Σ values).
    pub fn item_probabilities(&self, features: &VisualFeatures) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(features.data.len() / features.dim.max(1) * self.attrnet.config().outputs());
        for chunk in features.data.chunks(4096 * features.dim.max(1)) {
            let x = Tensor::from_slice(chunk, (chunk.len() / features.dim, features.dim), &self.device)?;
            out.extend(self.attrnet.probabilities(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// Builds turn features: text embedding ⊕ visual feature ⊕ AttrNet probabilities.
#[derive(Debug)]
pub struct Featurizer {
    perception: Arc<Perception>,
    /// Per item: visual feature then attribute probabilities.
    items: Vec<f32>,
    item_width: usize,
    probs_offset: usize,
    text_width: usize,
    texts: RwLock<HashMap<String, Arc<[f32]>>>,
}

impl Featurizer {
    pub fn new(perception: Arc<Perception>, features: &VisualFeatures) -> Result<Featurizer> {
        let probs = perception.item_probabilities(features)?;
        let p = perception.attrnet.config().outputs();
        let item_width = features.dim + p;
        let n = features.data.len() / features.dim.max(1);
        let mut items = Vec::with_capacity(n * item_width);
        for i in 0..n {
            items.extend_from_slice(&features.data[i * features.dim..(i + 1) * features.dim]);
            items.extend_from_slice(&probs[i * p..(i + 1) * p]);
        }
        let text_width = perception.text.config().output_width();
        Ok(Featurizer { perception, items, item_width, probs_offset: features.dim, text_width, texts: RwLock::new(HashMap::new()) })
    }

    pub fn perception(&self) -> &Arc<Perception> {
        &self.perception
    }

    /// Width of one turn feature.
    pub fn width(&self) -> usize {
        self.text_width + self.item_width
    }

    /// AttrNet's predicted cells for every item.
    pub fn predicted_attrs(&self) -> AttrTable {
        let p = self.item_width - self.probs_offset;
        let probs: Vec<f32> = self.items.chunks_exact(self.item_width).flat_map(|row| row[self.probs_offset..].iter().copied()).collect();
        debug_assert_eq!(probs.len() % p.max(1), 0);
        self.perception.attrnet.predict_table(&probs)
    }

    /// Makes sure every utterance has a cached embedding (encodes the missing ones in batches).
    pub fn prepare_texts<'a>(&self, utterances: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let missing: Vec<&str> = {
            let cache = self.texts.read().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashSet::new();
            utterances.into_iter().filter(|u| !cache.contains_key(*u) && seen.insert(*u)).collect()
        };
        for chunk in missing.chunks(1024) {
            let emb = self.perception.encode_texts(chunk)?.to_vec2::<f32>()?;
            let mut cache = self.texts.write().unwrap_or_else(|e| e.into_inner());
            for (u, e) in chunk.iter().zip(emb) {
                cache.insert(u.to_string(), e.into());
            }
        }
        Ok(())
    }

    /// Appends the feature of one turn (the item shown and what the user said) to `out`.
    pub fn push_turn(&self, shown: ItemId, utterance: &str, out: &mut Vec<f32>) -> Result<()> {
        let cached = self.texts.read().unwrap_or_else(|e| e.into_inner()).get(utterance).cloned();
        let text = match cached {
            Some(t) => t,
            None => {
                self.prepare_texts([utterance])?;
                self.texts
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(utterance)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("text embedding missing after encoding".into()))?
            }
        };
        out.extend_from_slice(&text);
        let start = shown as usize * self.item_width;
        match self.items.get(start..start + self.item_width) {
            Some(row) => out.extend_from_slice(row),
            None => candle_core::bail!("unknown item id {shown}"),
        }
        Ok(())
    }
}
