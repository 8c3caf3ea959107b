//! Checkpoints: safetensors weights plus the serde config, vocabulary and a format version, in one
//! byte blob that alone rebuilds a working policy (what the server publishes to devices).
//!
//! Layout: `IRECCKPT` · u32 LE format version · u32 LE metadata length · metadata JSON ·
//! safetensors bytes.

use super::ModelConfig;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

const MAGIC: &[u8; 8] = b"IRECCKPT";
/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Errors reading or writing checkpoints and running models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not an irec checkpoint")]
    BadMagic,
    #[error("checkpoint format {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    #[error("truncated checkpoint")]
    Truncated,
    #[error("checkpoint metadata: {0}")]
    Metadata(#[from] serde_json::Error),
    #[error("tensor library: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    pub config: ModelConfig,
    /// The text encoder's vocabulary, by token id.
    pub vocab: Vec<String>,
    /// What produced it ("ppo", "cql", …) and anything else worth knowing.
    pub label: String,
    /// Gradient steps behind these weights.
    pub steps: u64,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let meta = serde_json::to_vec(&self.meta)?;
        let st = safetensors::serialize(self.tensors.iter().map(|(k, v)| (k.clone(), v)), None)?;
        let mut out = Vec::with_capacity(16 + meta.len() + st.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&st);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Checkpoint, ModelError> {
        if bytes.len() < 16 {
            return Err(ModelError::Truncated);
        }
        if &bytes[..8] != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if format != FORMAT_VERSION {
            return Err(ModelError::UnsupportedFormat(format));
        }
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let meta_bytes = bytes.get(16..16 + len).ok_or(ModelError::Truncated)?;
        let meta: CheckpointMeta = serde_json::from_slice(meta_bytes)?;
        let map: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes[16 + len..], device)?;
        Ok(Checkpoint { meta, tensors: map.into_iter().collect() })
    }

    /// The tensors whose names start with one of `prefixes`.
    pub fn only(&self, prefixes: &[&str]) -> Checkpoint {
        Checkpoint {
            meta: self.meta.clone(),
            tensors: self
                .tensors
                .iter()
                .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}
