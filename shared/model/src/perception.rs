//! Perception: the frozen, pretrained front of the recommender (vocabulary, text encoder, AttrNet)
//! and the turn featurizer built on it, which caches what never changes: each item's visual
//! feature with its AttrNet probabilities, and each distinct utterance's text embedding.

use super::attrnet::AttrNet;
use super::text_encoder::{pack, TextEncoder};
use super::tokenizer::Vocabulary;
use irec_world::catalog::{AttrTable, ItemId, VisualFeatures};
use irec_world::mapped::Table;
use irec_world::world_file::ExtraSection;
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
    /// The world's visual features (shared with it, never copied).
    features: Table<f32>,
    dim: usize,
    /// AttrNet probabilities of every item, row-major: computed here, or a world file's.
    probs: Table<f32>,
    probs_width: usize,
    text_width: usize,
    texts: RwLock<HashMap<String, Arc<[f32]>>>,
}

/// The world-file section holding a perception's AttrNet probabilities of every item.
pub const PROBABILITIES_SECTION: &str = "attrnet_probabilities";

/// Items whose precomputed probabilities are checked against AttrNet before a shared table is
/// trusted: a table built for another perception differs on any of them.
const SPOT_CHECKS: usize = 16;

impl Featurizer {
    pub fn new(perception: Arc<Perception>, features: &VisualFeatures) -> Result<Featurizer> {
        let probs = Table::from(perception.item_probabilities(features)?);
        Ok(Featurizer::from_tables(perception, features, probs))
    }

    /// Like [`Featurizer::new`], but reads the probabilities from `shared` (a world file's,
    /// mapped) when a spot check shows they are this perception's; computes its own otherwise.
    pub fn with_shared(perception: Arc<Perception>, features: &VisualFeatures, shared: &Table<f32>) -> Result<Featurizer> {
        if Featurizer::agrees(&perception, features, shared)? {
            return Ok(Featurizer::from_tables(perception, features, shared.clone()));
        }
        tracing::info!("the world file's AttrNet probabilities are another perception's; computing this one's");
        Featurizer::new(perception, features)
    }

    fn agrees(perception: &Perception, features: &VisualFeatures, shared: &Table<f32>) -> Result<bool> {
        let (p, dim) = (perception.attrnet.config().outputs(), features.dim.max(1));
        let n = features.data.len() / dim;
        if n == 0 || shared.len() != n * p {
            return Ok(false);
        }
        let picks: Vec<usize> = (0..SPOT_CHECKS.min(n)).map(|k| k * (n - 1) / (SPOT_CHECKS - 1).max(1)).collect();
        let rows: Vec<f32> = picks.iter().flat_map(|&i| features.data[i * dim..(i + 1) * dim].iter().copied()).collect();
        let sample = VisualFeatures { dim, data: Table::from(rows) };
        let computed = perception.item_probabilities(&sample)?;
        Ok(picks.iter().enumerate().all(|(k, &i)| {
            computed[k * p..(k + 1) * p].iter().zip(&shared[i * p..(i + 1) * p]).all(|(a, b)| (a - b).abs() <= 1e-5)
        }))
    }

    fn from_tables(perception: Arc<Perception>, features: &VisualFeatures, probs: Table<f32>) -> Featurizer {
        let probs_width = perception.attrnet.config().outputs();
        let text_width = perception.text.config().output_width();
        Featurizer {
            perception,
            features: features.data.clone(),
            dim: features.dim,
            probs,
            probs_width,
            text_width,
            texts: RwLock::new(HashMap::new()),
        }
    }

    /// Whether the probabilities are read from a shared (mapped) table.
    pub fn shares_probabilities(&self) -> bool {
        self.probs.is_mapped()
    }

    /// AttrNet probabilities of every item, row-major (what a world file stores).
    pub fn probabilities(&self) -> &[f32] {
        &self.probs
    }

    /// The probabilities as a world-file section, for agents to map instead of computing.
    pub fn world_file_section(&self) -> ExtraSection<'_> {
        ExtraSection { name: PROBABILITIES_SECTION, bytes: bytemuck::cast_slice(&self.probs) }
    }

    pub fn perception(&self) -> &Arc<Perception> {
        &self.perception
    }

    /// Width of one turn feature.
    pub fn width(&self) -> usize {
        self.text_width + self.dim + self.probs_width
    }

    /// AttrNet's predicted cells for every item.
    pub fn predicted_attrs(&self) -> AttrTable {
        self.perception.attrnet.predict_table(&self.probs)
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
        let i = shown as usize;
        match (self.features.get(i * self.dim..(i + 1) * self.dim), self.probs.get(i * self.probs_width..(i + 1) * self.probs_width)) {
            (Some(visual), Some(probs)) => {
                out.extend_from_slice(visual);
                out.extend_from_slice(probs);
            }
            _ => candle_core::bail!("unknown item id {shown}"),
        }
        Ok(())
    }
}
