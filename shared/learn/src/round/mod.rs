//! The round trainer the server is handed: the seam between the federated loop and learning.
//!
//! - [`trainer`]: the [`RoundTrainer`] trait, its job and outcome, [`NoTrainer`].
//! - [`metrics`]: [`RoundMetrics`], what a trained round reports (stored with the round record,
//!   read back by fleet-sim).
//! - [`learned`]: [`LearnedTrainer`], the chosen offline learner with an FQE gate and simulator
//!   evaluation, and its `[trainer]` settings.

pub mod learned;
pub mod metrics;
pub mod trainer;

pub use learned::{LearnedTrainer, TrainerConfig, TrainerKind};
pub use metrics::{Evaluated, RoundMetrics, Seconds};
pub use trainer::{CancelFlag, DeployedPolicy, NoTrainer, RoundTrainer, TrainError, TrainJob, TrainOutcome};
