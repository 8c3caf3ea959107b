//! The seam between the agent and the learning core: turning a policy checkpoint into a runnable,
//! personalised [`Policy`].
//!
//! Two steps, because they happen at different rates:
//! 1. [`PolicyLoader::load`] — once per published version, when its (hash-verified) bytes arrive:
//!    parse the checkpoint, build the networks. A refusal here keeps the current policy running.
//! 2. [`LoadedPolicy::instantiate`] — once per session: a cheap, runnable policy with this
//!    device's noise σ and private bias. Weights should be shared (`Arc`), not copied.
//!
//! After each session, [`LoadedPolicy::adapt`] may update the device's private bias from what the
//! device observed ("minor adaptation"). Personalization lives in [`DeviceProfile`] and never
//! leaves the device: only `ExperienceSession`s are uploaded.

use irec_shared::catalog::Schema;
use irec_shared::experience::ExperienceSession;
use irec_shared::policy::{Policy, RandomPolicy, TrackerPolicy};
use irec_shared::retrieval::RetrievalIndex;
use irec_shared::sim::Lexicon;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A device's private personalization. Persisted in the agent's store; never uploaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// The device's seed (users, targets, noise all derive from it).
    pub seed: u64,
    /// Standard deviation of the Gaussian noise added to the policy's logits when acting.
    pub noise_sigma: f32,
    /// The device's private logit bias. Its layout is the learning core's choice (e.g. one entry
    /// per action-head slot); empty until the first `adapt` sizes it.
    pub bias: Vec<f32>,
    /// Sessions this device has finished (all runs).
    pub sessions_done: u64,
}

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

    /// Updates the device's private state after a session it ran (default: no adaptation).
    /// Sees only what a real device observes: its actions, the items shown, the user's words and
    /// the rewards.
    fn adapt(&self, _device: &mut DeviceProfile, _session: &ExperienceSession) {}
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

    fn adapt(&self, device: &mut DeviceProfile, session: &ExperienceSession) {
        // A stand-in for learned adaptation that exercises the plumbing: a running mean reward.
        let mean = session.turns.iter().map(|t| t.reward).sum::<f32>() / session.len().max(1) as f32;
        if device.bias.is_empty() {
            device.bias.push(0.0);
        }
        device.bias[0] = 0.9 * device.bias[0] + 0.1 * mean;
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
