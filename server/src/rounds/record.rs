//! What the server remembers about each round (stored as JSON in the `rounds` tree, so an
//! operator can read it with any sled dump, and in `status.json`).

use super::gate::GateVerdict;
use irec_learn::round::RoundMetrics;
use irec_protocol::PolicyVersion;
use serde::{Deserialize, Serialize};

/// Where a round stands. `Queued` and `Training` are unfinished: after a restart those rounds
/// are trained (again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundStatus {
    /// The quota was reached; waiting for the trainer.
    Queued,
    Training,
    /// The candidate passed the gate and was published.
    Published,
    /// The candidate was refused by the gate; the deployed policy stays.
    Refused,
    /// Training failed; the round's data stays in D for the next round.
    Failed,
}

impl RoundStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, RoundStatus::Published | RoundStatus::Refused | RoundStatus::Failed)
    }
}

/// What closed a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseReason {
    /// Its quota of new sessions arrived.
    Quorum,
    /// Its deadline passed (with at least the minimum of new sessions).
    Deadline,
}

/// One closed round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub status: RoundStatus,
    /// Sessions ingested during this round (≥ the quota; a batch is never split).
    pub new_sessions: u64,
    /// Of those, sessions collected by an older round's policy (stragglers, devices back after
    /// rounds away): kept, and trained on with the rest.
    #[serde(default)]
    pub late_sessions: u64,
    /// Quorum or deadline (absent in records of older servers).
    #[serde(default)]
    pub closed_by: Option<CloseReason>,
    /// Sessions trained on (D ∪ D′ up to this round); set when training starts.
    pub sessions_in_d: u64,
    /// Times training was started (more than 1 after a restart mid-training).
    pub attempts: u32,
    /// The policy deployed when training started.
    pub deployed_version: Option<PolicyVersion>,
    pub candidate_estimate: Option<f64>,
    pub deployed_estimate: Option<f64>,
    /// Standard error of candidate − deployed estimate the gate used (absent before this field).
    #[serde(default)]
    pub estimate_se: Option<f64>,
    pub gate: Option<GateVerdict>,
    /// The version published by this round, if the gate let it through.
    pub published_version: Option<PolicyVersion>,
    /// The trainer's evaluation results; `None` until a training attempt finished.
    pub metrics: Option<RoundMetrics>,
    pub error: Option<String>,
    /// When the round was decided (published, refused or failed), wall clock in ms since the
    /// epoch: the next round's deadline counts from here, since devices only collect with the
    /// new policy from then on.
    #[serde(default)]
    pub decided_ms: Option<u64>,
    /// Wall time of the last training attempt, in milliseconds.
    pub train_ms: Option<u64>,
}

impl RoundRecord {
    pub fn queued(round: u32, new_sessions: u64) -> RoundRecord {
        RoundRecord {
            round,
            status: RoundStatus::Queued,
            new_sessions,
            late_sessions: 0,
            closed_by: None,
            sessions_in_d: 0,
            attempts: 0,
            deployed_version: None,
            candidate_estimate: None,
            deployed_estimate: None,
            estimate_se: None,
            gate: None,
            published_version: None,
            metrics: None,
            error: None,
            decided_ms: None,
            train_ms: None,
        }
    }
}
