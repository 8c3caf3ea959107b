//! The seam between the federated loop and learning: [`RoundTrainer`].
//!
//! The server calls `train` once per closed round, on a dedicated thread, while ingest keeps
//! running. The learned implementation is [`super::learned::LearnedTrainer`]; the server knows
//! only this trait, so its tests run with doubles and no training.

use super::metrics::RoundMetrics;
use irec_protocol::experience::ExperienceSession;
use irec_protocol::PolicyVersion;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The deployed policy while a round trains.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployedPolicy {
    pub version: PolicyVersion,
    /// The checkpoint bytes exactly as published.
    pub blob: Vec<u8>,
}

/// Set when the server shuts down mid-training; a trainer may poll it between epochs and return
/// [`TrainError::Cancelled`]. The round is trained again after restart either way.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One round's training job.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// The round that just closed (0 = the data collected by the bootstrap/behaviour policies).
    pub round: u32,
    /// D ∪ D′: every session ingested in rounds `0..=round`, by round, then in a canonical order
    /// (the stored bytes), so the order does not depend on which upload arrived first.
    /// A snapshot: sessions arriving during training belong to later rounds and are not here.
    /// `session.round` is what the uploading agent says its policy collected it for.
    pub sessions: Vec<ExperienceSession>,
    /// How many of `sessions` were ingested during `round` itself (the tail of the vector).
    pub new_sessions: usize,
    /// The policy deployed when the round closed; `None` before any was published.
    pub deployed: Option<DeployedPolicy>,
    /// Seed for everything random in training and evaluation (derived from the server seed and
    /// the round, so a retrained round repeats exactly on CPU).
    pub seed: u64,
    /// The server's `--device` (`cpu` or `cuda:N`).
    pub device: String,
    pub cancel: CancelFlag,
}

/// What training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// The candidate policy checkpoint (the blob agents will load).
    pub candidate: Vec<u8>,
    /// Evaluation results to record with the round (simulator SR@K/NI/NV, losses).
    pub metrics: RoundMetrics,
    /// Off-policy value estimate of the candidate on the logged data (e.g. fitted Q evaluation),
    /// in expected return per session; `None` when not fitted (nothing deployed to compare with).
    pub candidate_estimate: Option<f64>,
    /// The same estimate for the deployed policy; `None` when none is deployed (or it cannot be
    /// evaluated), in which case the gate publishes.
    pub deployed_estimate: Option<f64>,
    /// Standard error of `candidate_estimate − deployed_estimate` (0: unknown, the gate then
    /// compares the point estimates).
    pub estimate_se: f64,
}

/// Why a round produced no candidate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    /// The job's [`CancelFlag`] was raised.
    #[error("training cancelled")]
    Cancelled,
    /// Anything else; recorded with the round, which is marked failed (its data stays in D).
    #[error("training failed: {0}")]
    Failed(String),
}

/// Trains a candidate policy for a closed round.
///
/// Called on a dedicated OS thread, one round at a time, never concurrently. It must not touch
/// the server's storage: everything it needs is in the job. Panics are caught and recorded as a
/// failed round.
pub trait RoundTrainer: Send + Sync + 'static {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError>;
}

/// The trainer of a server started without one: every round is recorded as failed (the data is
/// kept). Lets the networking run before the learning core is wired in.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrainer;

impl RoundTrainer for NoTrainer {
    fn train(&self, _: TrainJob) -> Result<TrainOutcome, TrainError> {
        Err(TrainError::Failed("no trainer configured".to_string()))
    }
}
