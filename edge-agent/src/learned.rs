//! The learned policy on the device: checkpoints from the server (or the initial behaviour policy)
//! become [`NeuralPolicy`]s acting with the device's own noise σ and learned logit bias.
//!
//! A checkpoint is parsed and its turn featurizer built (AttrNet over every item, a few tens of
//! milliseconds) once per version; loaded versions are shared by content hash, so a thousand
//! in-process agents hold one copy each.

use crate::loader::{LoadError, LoadedPolicy, PolicyLoader};
use irec_shared::model::{Acting, Featurizer, NeuralPolicy, PolicyModel};
use irec_shared::policy::{DeviceProfile, Policy};
use irec_shared::sim::World;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A loaded checkpoint: the model and its featurizer.
#[derive(Debug)]
pub struct LoadedNeural {
    model: Arc<PolicyModel>,
    featurizer: Arc<Featurizer>,
}

impl LoadedNeural {
    pub fn from_bytes(blob: &[u8], world: &World) -> Result<LoadedNeural, LoadError> {
        let device = candle_core::Device::Cpu;
        let model = PolicyModel::from_bytes(blob, &device).map_err(|e| LoadError::Invalid(e.to_string()))?;
        if model.meta.config.attrnet.input != world.features.dim || model.heads() != world.catalog.schema.head_sizes().as_slice() {
            return Err(LoadError::Incompatible("the checkpoint was trained for another catalog".to_string()));
        }
        let featurizer = Featurizer::new(model.perception.clone(), &world.features).map_err(|e| LoadError::Invalid(e.to_string()))?;
        Ok(LoadedNeural { model: Arc::new(model), featurizer: Arc::new(featurizer) })
    }
}

impl LoadedPolicy for LoadedNeural {
    fn instantiate(&self, device: &DeviceProfile) -> Box<dyn Policy + Send> {
        let acting = Acting { noise_sigma: device.noise_sigma, bias: device.bias.values(), sample: false };
        Box::new(NeuralPolicy::new(self.model.clone(), self.featurizer.clone(), acting))
    }
}

/// Loads checkpoints as [`LoadedNeural`]s, sharing identical ones; falls back to an initial
/// checkpoint file before the server has published any.
#[derive(Debug)]
pub struct NeuralLoader {
    world: Arc<World>,
    initial: Option<PathBuf>,
    loaded: Mutex<HashMap<[u8; 32], Arc<LoadedNeural>>>,
}

impl NeuralLoader {
    pub fn new(world: Arc<World>, initial: Option<PathBuf>) -> NeuralLoader {
        NeuralLoader { world, initial, loaded: Mutex::new(HashMap::new()) }
    }

    fn load_shared(&self, blob: &[u8]) -> Result<Arc<LoadedNeural>, LoadError> {
        let key: [u8; 32] = Sha256::digest(blob).into();
        if let Some(hit) = self.loaded.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        let loaded = Arc::new(LoadedNeural::from_bytes(blob, &self.world)?);
        if let Ok(mut m) = self.loaded.lock() {
            m.insert(key, loaded.clone());
        }
        Ok(loaded)
    }
}

impl PolicyLoader for NeuralLoader {
    fn load(&self, blob: &[u8]) -> Result<Arc<dyn LoadedPolicy>, LoadError> {
        Ok(self.load_shared(blob)?)
    }

    fn fallback(&self) -> Option<Arc<dyn LoadedPolicy>> {
        let path = self.initial.as_ref()?;
        let loaded = std::fs::read(path)
            .map_err(|e| LoadError::Invalid(format!("{}: {e}", path.display())))
            .and_then(|blob| self.load_shared(&blob));
        match loaded {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!("initial policy {}: {e}", path.display());
                None
            }
        }
    }
}
