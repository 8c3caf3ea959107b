//! The device-side loader: turning a policy checkpoint into a runnable, personalised [`Policy`].
//! The agent holds a [`PolicyLoader`]; this module has the learned one ([`NeuralLoader`]) and the
//! baselines ([`BaselineLoader`]) for tests and for running the networking without a model.
//!
//! Two steps, because they happen at different rates:
//! 1. [`PolicyLoader::load`] — once per published version, when its (hash-verified) bytes arrive:
//!    parse the checkpoint, build the networks (e.g. `PolicyModel::from_bytes`). A refusal here
//!    keeps the current policy running.
//! 2. [`LoadedPolicy::instantiate`] — once per session: a cheap, runnable policy with this
//!    device's noise σ and current private bias (e.g. a `NeuralPolicy` with
//!    `Acting { noise_sigma, bias: device.bias.values(), .. }`). Weights are shared (`Arc`).
//!
//! The device's personalization is `irec_world::policy::DeviceProfile`; the agent learns its bias
//! after every session (`LogitBias::learn` on the user's words) and keeps it in the local store. It
//! never leaves the device: only `ExperienceSession`s are uploaded.
//!
//! A checkpoint is parsed and its turn featurizer built (AttrNet over every item, a few tens of
//! milliseconds) once per version; [`NeuralLoader`] shares loaded versions by content hash, so a
//! thousand in-process agents hold one copy each.

use crate::{Acting, Featurizer, NeuralPolicy, PolicyModel};
use irec_world::catalog::Schema;
use irec_world::policy::{DeviceProfile, Policy, RandomPolicy, TrackerPolicy};
use irec_world::retrieval::RetrievalIndex;
use irec_world::mapped::Table;
use irec_world::sim::{Lexicon, World};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a checkpoint cannot be run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("invalid policy checkpoint: {0}")]
    Invalid(String),
    #[error("policy checkpoint is incompatible: {0}")]
    Incompatible(String),
}

/// A parsed checkpoint, ready to be personalised per session.
pub trait LoadedPolicy: Send + Sync {
    /// A runnable policy for the next session, with the device's noise and bias applied. Called
    /// once per session on the agent's session thread; should be cheap.
    fn instantiate(&self, device: &DeviceProfile) -> Box<dyn Policy + Send>;
}

/// Builds [`LoadedPolicy`]s from checkpoint bytes.
pub trait PolicyLoader: Send + Sync + 'static {
    /// Parses a checkpoint whose SHA-256 has already been verified. Called off the async runtime
    /// (on a blocking thread), once per version.
    fn load(&self, blob: &[u8]) -> Result<Arc<dyn LoadedPolicy>, LoadError>;

    /// What to run before any checkpoint was ever received (`None`: wait for one). Sessions run
    /// with it are tagged round 0.
    fn fallback(&self) -> Option<Arc<dyn LoadedPolicy>> {
        None
    }
}

/// A non-learned policy for tests and for running the networking without the learning core:
/// ignores the checkpoint bytes (any bytes load) and runs a baseline.
#[derive(Clone, Debug)]
pub enum BaselineLoader {
    /// The rule-based feedback tracker.
    Tracker { lexicon: Arc<Lexicon>, index: Arc<RetrievalIndex> },
    /// Uniformly random actions.
    Random { schema: Schema },
}

impl BaselineLoader {
    /// `fallback`: whether to run the baseline before any checkpoint arrives.
    pub fn with_fallback(self, fallback: bool) -> FallbackLoader {
        FallbackLoader { inner: self, fallback }
    }
}

impl LoadedPolicy for BaselineLoader {
    fn instantiate(&self, _: &DeviceProfile) -> Box<dyn Policy + Send> {
        match self {
            BaselineLoader::Tracker { lexicon, index } => Box::new(TrackerPolicy::new(lexicon.clone(), index.clone())),
            BaselineLoader::Random { schema } => Box::new(RandomPolicy::new(schema)),
        }
    }
}

/// A [`BaselineLoader`] as a [`PolicyLoader`].
#[derive(Clone, Debug)]
pub struct FallbackLoader {
    inner: BaselineLoader,
    fallback: bool,
}

impl PolicyLoader for FallbackLoader {
    fn load(&self, blob: &[u8]) -> Result<Arc<dyn LoadedPolicy>, LoadError> {
        if blob.is_empty() {
            return Err(LoadError::Invalid("empty checkpoint".to_string()));
        }
        Ok(Arc::new(self.inner.clone()))
    }

    fn fallback(&self) -> Option<Arc<dyn LoadedPolicy>> {
        self.fallback.then(|| Arc::new(self.inner.clone()) as Arc<dyn LoadedPolicy>)
    }
}

/// A loaded checkpoint: the model and its featurizer.
#[derive(Debug)]
pub struct LoadedNeural {
    model: Arc<PolicyModel>,
    featurizer: Arc<Featurizer>,
}

impl LoadedNeural {
    pub fn from_bytes(blob: &[u8], world: &World) -> Result<LoadedNeural, LoadError> {
        LoadedNeural::from_bytes_sharing(blob, world, None)
    }

    /// Like [`LoadedNeural::from_bytes`], reading AttrNet's probabilities from `shared` (a world
    /// file's) when they are this checkpoint's perception's.
    pub fn from_bytes_sharing(blob: &[u8], world: &World, shared: Option<&Table<f32>>) -> Result<LoadedNeural, LoadError> {
        let device = candle_core::Device::Cpu;
        let model = PolicyModel::from_bytes(blob, &device).map_err(|e| LoadError::Invalid(e.to_string()))?;
        if model.meta.config.attrnet.input != world.features.dim || model.heads() != world.catalog.schema.head_sizes().as_slice() {
            return Err(LoadError::Incompatible("the checkpoint was trained for another catalog".to_string()));
        }
        let featurizer = match shared {
            Some(table) => Featurizer::with_shared(model.perception.clone(), &world.features, table),
            None => Featurizer::new(model.perception.clone(), &world.features),
        }
        .map_err(|e| LoadError::Invalid(e.to_string()))?;
        Ok(LoadedNeural { model: Arc::new(model), featurizer: Arc::new(featurizer) })
    }

    pub fn featurizer(&self) -> &Featurizer {
        &self.featurizer
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
    shared_probabilities: Option<Table<f32>>,
    /// The versions loaded most recently, newest last, by content hash.
    loaded: Mutex<Vec<([u8; 32], Arc<LoadedNeural>)>>,
}

/// Loaded versions a [`NeuralLoader`] keeps for agents that ask again (the deployed one and the
/// one before it). Older ones are dropped from the cache; an agent still running one keeps its
/// own `Arc`. Without a bound, every version ever published stayed in memory (≈ 2.7 MiB each in a
/// device process).
const KEPT_VERSIONS: usize = 2;

impl NeuralLoader {
    pub fn new(world: Arc<World>, initial: Option<PathBuf>) -> NeuralLoader {
        NeuralLoader { world, initial, shared_probabilities: None, loaded: Mutex::new(Vec::new()) }
    }

    /// Reads AttrNet's probabilities from `table` (a world file's) for checkpoints whose
    /// perception computed it, instead of computing them in this process.
    pub fn sharing_probabilities(mut self, table: Option<Table<f32>>) -> NeuralLoader {
        self.shared_probabilities = table;
        self
    }

    fn load_shared(&self, blob: &[u8]) -> Result<Arc<LoadedNeural>, LoadError> {
        let key: [u8; 32] = Sha256::digest(blob).into();
        // Held while loading: a thousand agents that receive one version at once wait for the
        // first to build it instead of each building its own featurizer (measured: 13 GB).
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = loaded.iter().position(|(k, _)| *k == key) {
            let hit = loaded.remove(i);
            let out = hit.1.clone();
            loaded.push(hit);
            return Ok(out);
        }
        let fresh = Arc::new(LoadedNeural::from_bytes_sharing(blob, &self.world, self.shared_probabilities.as_ref())?);
        loaded.push((key, fresh.clone()));
        if loaded.len() > KEPT_VERSIONS {
            loaded.remove(0);
        }
        Ok(fresh)
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
