//! What a trained round reports: the type the server stores with each round record and
//! fleet-sim reads back from `status.json`, so both ends agree on the fields at compile time.

use crate::algo::fqe::FqeEstimate;
use crate::algo::TrainLog;
use irec_world::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A policy's simulator figures on the test split and its off-policy estimate on D.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    pub metrics: Metrics,
    /// `None`: not fitted (a round-0 candidate with nothing deployed, see `FqeConfig`).
    #[serde(default)]
    pub fqe: Option<FqeEstimate>,
}

/// Wall time of a round's phases, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Seconds {
    pub featurize: f64,
    pub train: f64,
    /// From the end of training to the candidate's evidence (the deployed policy's is fitted
    /// beside training, so it adds to this only where it takes longer).
    pub evaluate: f64,
    /// Fitting the off-policy estimates, summed over the candidate and the deployed policy.
    pub fqe: f64,
    /// Simulating the test sessions, summed over the candidate and the deployed policy.
    pub simulate: f64,
    pub total: f64,
}

/// A round trainer's results. Every field defaults, so a trainer that knows less (a test double,
/// a future algorithm) fills what it has, and records written by older servers still parse.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundMetrics {
    /// The candidate trained this round.
    pub candidate: Option<Evaluated>,
    /// The policy deployed when the round closed; `None` before any was published or when the
    /// trainer could not read it.
    pub deployed: Option<Evaluated>,
    /// Test-split sessions each policy was evaluated on.
    pub eval_sessions: usize,
    /// Sessions trained on (D ∪ D′ up to this round).
    pub sessions_in_d: usize,
    /// Of those, sessions ingested during this round.
    pub new_sessions: usize,
    /// Turns (transitions) in the sessions trained on.
    pub transitions: usize,
    /// Gradient steps this round.
    pub steps: usize,
    /// The round whose learner this round continued; `None`: trained from scratch.
    pub continued_from_round: Option<u32>,
    /// The last logged value of each loss.
    pub losses: BTreeMap<String, f32>,
    /// The training log, every `log_every` steps.
    pub log: Vec<TrainLog>,
    pub seconds: Seconds,
}
