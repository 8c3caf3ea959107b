//! Rounds of the federated loop: collect until the quota, train on D ∪ D′, gate, publish.
//!
//! - [`gate`]: the deployment gate (a pure function of two value estimates).
//! - [`record`]: what is stored per round.
//! - [`driver`]: the task that trains closed rounds one at a time while ingest runs.
//! - [`deadline`]: the task that closes a round at its deadline.
//!
//! What trains a round is an `irec_learn::round::RoundTrainer` the server is handed (the
//! learned one, or a test double); its results are `irec_learn::round::RoundMetrics`.
//!
//! A round closes inside the ingest transaction that fills its quota, or at its deadline
//! (`round_deadline_ms`) with at least `round_min_sessions` new sessions, whichever comes first
//! (the record is `queued`, the next round starts collecting at once). Sessions that arrive
//! after their round closed, collected by an older policy, go into the round collecting now and
//! so into its D ∪ D′; the record counts them as late. The driver marks it `training`, snapshots D up to
//! it, trains on a dedicated thread, asks the gate, and either publishes the candidate (policy
//! registry + round record in one transaction, flush, then announce) or records the refusal.
//! After a restart every round still `queued` or `training` is trained again.

pub mod deadline;
pub mod driver;
pub mod gate;
pub mod record;

pub use gate::{decide, Decision, GateVerdict};
pub use record::{CloseReason, RoundRecord, RoundStatus};
