//! Pretraining the perception: the text encoder learns to name the (attribute, value) an utterance
//! asks for from template sentences (the paper's recipe: cross-entropy, ≥ 20,000 sentences, Adam
//! 1e-3), and AttrNet learns item attributes from visual features on the train split. Both are then
//! frozen.
//!
//! Held-out evaluation: a share of the generated sentences is kept out of training, and so are two
//! whole templates, whose sentences measure how the encoder copes with wordings it never saw.

use super::PerceptionWeights;
use irec_world::catalog::{Attribute, ItemAttrs};
use irec_model::attrnet::{AttrNet, AttrNetConfig};
use irec_model::params::ParamStore;
use irec_model::text_encoder::{pack, TextEncoder, TextEncoderConfig};
use irec_model::tokenizer::Vocabulary;
use irec_model::{ModelConfig, Perception};
use irec_world::rng::{self, Rng};
use irec_world::sim::language::{GOOD, TEMPLATES};
use irec_world::sim::World;
use candle_core::{Device, Result, Tensor, D};
use candle_nn::{linear, AdamW, Module, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// Template sentences generated for the text encoder (paper: 20,000).
    pub sentences: usize,
    /// Share of generated sentences held out for evaluation.
    pub heldout_share: f64,
    /// Templates (indices into the bank) never used in training, only for evaluation.
    pub heldout_templates: Vec<usize>,
    /// Sentences drawn from the held-out templates for evaluation.
    pub heldout_template_sentences: usize,
    /// Passes over the training sentences.
    pub text_epochs: usize,
    pub text_batch: usize,
    /// Adam learning rate of the text encoder (paper: 1e-3).
    pub text_lr: f64,
    /// Keep the text classifier with the encoder and feed its class probabilities to the state
    /// tracker beside the embedding (false: the embedding alone, the paper's turn feature).
    pub text_classes_in_features: bool,
    /// Give the state tracker a request memory (a running maximum of those probabilities) and
    /// the heads a copy path from it (needs `text_classes_in_features`).
    pub request_memory: bool,
    /// With the request memory: how many askings of one value count (`model::tracker::
    /// RequestMemory::repeats`; a count, ≥ 1). 1: asked or not (a running maximum); k > 1: a
    /// value asked for again weighs more, up to k askings.
    #[serde(skip_serializing_if = "PretrainConfig::asks_once")]
    pub request_repeats: f64,
    /// With the request memory: start the policy's output layer at zero, so a fresh recommender
    /// is exactly its copy path and "no preference" prior (a soft rule-based tracker) whatever
    /// its seed (docs/results.md, "Learning from D adds little to the recommender's own prior").
    /// On by default since it was measured on three seeds of both presets; false: a random output
    /// layer, as the paper's recommender starts. Behaviour sources (no copy path) are unaffected.
    pub policy_starts_as_prior: bool,
    /// Passes over the train split for AttrNet.
    pub attr_epochs: usize,
    pub attr_batch: usize,
    pub attr_lr: f64,
    pub seed: u64,
}

impl PretrainConfig {
    // The default is left out of the JSON that keys the pretraining cache, so caches filled
    // before the field existed still match.
    fn asks_once(k: &f64) -> bool {
        *k == 1.0
    }

    /// Refuses settings that cannot build a recommender, naming the field under `at`.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        if !(self.request_repeats.is_finite() && self.request_repeats >= 1.0) {
            return Err(format!("{at}.request_repeats must be a finite count ≥ 1 (got {})", self.request_repeats));
        }
        Ok(())
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            sentences: 20_000,
            heldout_share: 0.1,
            heldout_templates: vec![12, 14],
            heldout_template_sentences: 2_000,
            text_epochs: 4,
            text_batch: 128,
            text_lr: 1e-3,
            text_classes_in_features: true,
            request_memory: true,
            request_repeats: 1.0,
            policy_starts_as_prior: true,
            attr_epochs: 12,
            attr_batch: 256,
            attr_lr: 1e-3,
            seed: 7,
        }
    }
}

/// What pretraining measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    pub text_train_sentences: usize,
    pub text_heldout_sentences: usize,
    /// Accuracy of the (attribute, value) prediction on held-out sentences of seen templates.
    pub text_heldout_accuracy: f64,
    /// Same on sentences of templates never seen in training.
    pub text_heldout_template_accuracy: f64,
    pub text_final_loss: f64,
    /// Exact-cell accuracy of AttrNet per attribute on the test split, in attribute order.
    pub attr_test_accuracy: Vec<f64>,
    /// Same on the train split.
    pub attr_train_accuracy: Vec<f64>,
}

/// A labelled sentence: class = flat (attribute, value) index, or the last class for "Good".
#[derive(Clone, Debug)]
struct Sentence {
    text: String,
    class: u32,
}

fn sentences(world: &World, n: usize, templates: &[usize], rng: &mut Rng) -> Vec<Sentence> {
    let schema = &world.catalog.schema;
    let offsets = schema.value_offsets();
    let good = schema.total_values() as u32;
    (0..n)
        .map(|_| {
            let lower = rng.random_bool(0.5);
            let stop = if rng.random_bool(0.4) { "." } else { "" };
            if rng.random_bool(0.05) {
                return Sentence { text: format!("{GOOD}{stop}"), class: good };
            }
            loop {
                let a = Attribute::ALL[rng.random_range(0..Attribute::ALL.len())];
                let fitting: Vec<usize> = templates.iter().copied().filter(|t| TEMPLATES[*t].fits(a)).collect();
                if schema.num_values(a) == 0 || fitting.is_empty() {
                    continue;
                }
                let v = rng.random_range(0..schema.num_values(a)) as u8;
                let t = fitting[rng.random_range(0..fitting.len())];
                let surface = world.lexicon.surface(a, v);
                let surface = if lower { surface.to_lowercase() } else { surface.to_string() };
                return Sentence {
                    text: format!("{}{stop}", TEMPLATES[t].text.replace("{v}", &surface)),
                    class: (offsets[a.index()] + v as usize) as u32,
                };
            }
        })
        .collect()
}

/// Pretrains the text encoder and AttrNet for `world`.
pub fn pretrain(world: &World, cfg: &PretrainConfig, device: &Device) -> Result<(PerceptionWeights, PretrainReport)> {
    let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::PRETRAIN));
    let vocab = Vocabulary::from_lexicon(&world.lexicon);
    let schema = &world.catalog.schema;
    let store = ParamStore::new(rng::derive(cfg.seed, 11), device);
    let vb = store.builder();
    let classes = schema.total_values() + 1;
    let text_cfg = TextEncoderConfig { vocab: vocab.len(), classes: if cfg.text_classes_in_features { classes } else { 0 }, ..TextEncoderConfig::default() };
    let text = TextEncoder::new(&text_cfg, vb.pp("text"))?;
    // Without a kept head, pretraining uses one of its own that is dropped afterwards.
    let own_head = if cfg.text_classes_in_features { None } else { Some(linear(text_cfg.out, classes, vb.pp("texthead"))?) };
    let logits_of = |emb: &Tensor| -> Result<Tensor> {
        match (&own_head, text.class_logits(emb)) {
            (Some(h), _) => h.forward(emb),
            (None, Some(l)) => l,
            (None, None) => candle_core::bail!("text encoder without a classification head"),
        }
    };

    // Sentences: seen templates (split into train / held out) and held-out templates.
    let seen: Vec<usize> = (0..TEMPLATES.len()).filter(|t| !cfg.heldout_templates.contains(t)).collect();
    let mut all = sentences(world, cfg.sentences, &seen, &mut r);
    let n_held = ((cfg.sentences as f64) * cfg.heldout_share).round() as usize;
    let heldout: Vec<Sentence> = all.split_off(all.len() - n_held.min(all.len()));
    let train = all;
    let unseen = if cfg.heldout_templates.is_empty() {
        Vec::new()
    } else {
        sentences(world, cfg.heldout_template_sentences, &cfg.heldout_templates, &mut r)
    };

    let mut vars = store.vars("text.");
    vars.extend(store.vars("texthead."));
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: cfg.text_lr, weight_decay: 0.0, ..Default::default() })?;
    let encode = |batch: &[Sentence]| -> Result<(Tensor, Tensor)> {
        let ids: Vec<Vec<u32>> = batch.iter().map(|s| vocab.encode(&s.text, text_cfg.max_len)).collect();
        pack(&ids, device)
    };
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut last_loss = 0.0;
    for _ in 0..cfg.text_epochs {
        order.shuffle(&mut r);
        for chunk in order.chunks(cfg.text_batch.max(1)) {
            let batch: Vec<Sentence> = chunk.iter().map(|i| train[*i].clone()).collect();
            let (tokens, mask) = encode(&batch)?;
            let labels = Tensor::from_vec(batch.iter().map(|s| s.class).collect::<Vec<_>>(), batch.len(), device)?;
            let logits = logits_of(&text.embed_tokens(&tokens, &mask)?)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            opt.backward_step(&loss)?;
            last_loss = loss.to_scalar::<f32>()? as f64;
        }
    }
    let accuracy = |set: &[Sentence]| -> Result<f64> {
        if set.is_empty() {
            return Ok(0.0);
        }
        let mut hit = 0usize;
        for chunk in set.chunks(1024) {
            let (tokens, mask) = encode(chunk)?;
            let pred = logits_of(&text.embed_tokens(&tokens, &mask)?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            hit += pred.iter().zip(chunk).filter(|(p, s)| **p == s.class).count();
        }
        Ok(hit as f64 / set.len() as f64)
    };
    let text_heldout_accuracy = accuracy(&heldout)?;
    let text_heldout_template_accuracy = accuracy(&unseen)?;

    // AttrNet on the train split (multi-label, binary cross-entropy with logits).
    let train_ids = &world.catalog.split.train;
    let train_cells: Vec<ItemAttrs> = train_ids.iter().map(|i| world.truth[*i as usize]).collect();
    let attr_cfg = AttrNetConfig::for_schema(schema, world.features.dim, &train_cells);
    let attrnet = AttrNet::new(&attr_cfg, vb.pp("attrnet"))?;
    let mut opt = AdamW::new(store.vars("attrnet."), ParamsAdamW { lr: cfg.attr_lr, weight_decay: 0.0, ..Default::default() })?;
    let dim = world.features.dim;
    let outputs = attr_cfg.outputs();
    let offsets = schema.value_offsets();
    let multi_hot = |cells: &ItemAttrs, out: &mut Vec<f32>| {
        let start = out.len();
        out.resize(start + outputs, 0.0);
        for a in Attribute::ALL {
            for v in cells.values(a) {
                out[start + offsets[a.index()] + v as usize] = 1.0;
            }
        }
    };
    let mut order: Vec<usize> = (0..train_ids.len()).collect();
    for _ in 0..cfg.attr_epochs {
        order.shuffle(&mut r);
        for chunk in order.chunks(cfg.attr_batch.max(1)) {
            let mut x = Vec::with_capacity(chunk.len() * dim);
            let mut y = Vec::with_capacity(chunk.len() * outputs);
            for &i in chunk {
                x.extend_from_slice(world.features.get(train_ids[i]));
                multi_hot(&train_cells[i], &mut y);
            }
            let x = Tensor::from_vec(x, (chunk.len(), dim), device)?;
            let y = Tensor::from_vec(y, (chunk.len(), outputs), device)?;
            let z = attrnet.forward(&x)?;
            // softplus(z) − y·z, stable: max(z, 0) + log(1 + e^−|z|) − y·z
            let loss = ((z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)? - (&y * &z)?)?.mean_all()?;
            opt.backward_step(&loss)?;
        }
    }
    let perception = Perception { vocab: vocab.clone(), text, attrnet, device: device.clone() };
    let cell_accuracy = |ids: &[u32]| -> Result<Vec<f64>> {
        let mut hits = [0usize; 6];
        for chunk in ids.chunks(4096) {
            let mut x = Vec::with_capacity(chunk.len() * dim);
            for id in chunk {
                x.extend_from_slice(world.features.get(*id));
            }
            let probs = perception.attrnet.probabilities(&Tensor::from_vec(x, (chunk.len(), dim), device)?)?.flatten_all()?.to_vec1::<f32>()?;
            for (row, id) in probs.chunks_exact(outputs).zip(chunk) {
                let pred = perception.attrnet.cells(row);
                for a in Attribute::ALL {
                    hits[a.index()] += usize::from(pred.set(a) == world.truth[*id as usize].set(a));
                }
            }
        }
        Ok(hits.iter().map(|h| *h as f64 / ids.len().max(1) as f64).collect())
    };
    let report = PretrainReport {
        text_train_sentences: train.len(),
        text_heldout_sentences: heldout.len(),
        text_heldout_accuracy,
        text_heldout_template_accuracy,
        text_final_loss: last_loss,
        attr_test_accuracy: cell_accuracy(&world.catalog.split.test)?,
        attr_train_accuracy: cell_accuracy(train_ids)?,
    };
    let mut tensors = store.tensors("text.");
    tensors.extend(store.tensors("attrnet."));
    let mut config = ModelConfig::with_memory(text_cfg, attr_cfg, &schema.head_sizes(), cfg.request_memory);
    config.policy.zero_output = cfg.policy_starts_as_prior && config.policy.copy.is_some();
    if let Some(m) = config.tracker.memory.as_mut() {
        m.repeats = cfg.request_repeats as f32;
    }
    Ok((PerceptionWeights { perception: Arc::new(perception), tensors, config }, report))
}
