//! The seam between the agent and the learning core: turning a policy checkpoint into a runnable,
//! personalised [`Policy`].
//!
//! Two steps, because they happen at different rates:
//! 1. [`PolicyLoader::load`] — once per published version, when its (hash-verified) bytes arrive:
//!    parse the checkpoint, build the networks (e.g. `PolicyModel::from_bytes`). A refusal here
//!    keeps the current policy running.
//! 2. [`LoadedPolicy::instantiate`] — once per session: a cheap, runnable policy with this
//!    device's noise σ and current private bias (e.g. a `NeuralPolicy` with
//!    `Acting { noise_sigma, bias: device.bias.values(), .. }`). Weights are shared (`Arc`).
//!
//! The device's personalization is `irec_shared::policy::DeviceProfile`; the agent learns its bias
//! after every session (`LogitBias::learn` on the user's words) and keeps it in the local store. It
//! never leaves the device: only `ExperienceSession`s are uploaded.

use irec_shared::catalog::Schema;
use irec_shared::policy::{DeviceProfile, Policy, RandomPolicy, TrackerPolicy};
use irec_shared::retrieval::RetrievalIndex;
use irec_shared::sim::Lexicon;
use std::sync::Arc;

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
