//! Experience: the sessions devices upload and the server learns from.
//!
//! Behaviour-agnostic by construction: a session carries what the device showed, the action it
//! chose, what the user said, the reward and the done flag, and the round it was collected in.
//! It never carries the target, the user, the device, the noise or bias that shaped the action,
//! action probabilities, or wall-clock times.

use irec_world::catalog::{Action, ItemId, NUM_ATTRS};
use irec_world::sim::Transcript;
use serde::{Deserialize, Serialize};

/// One turn as uploaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperienceTurn {
    /// The action the device chose (one slot per attribute, 0 = no preference).
    pub action: Action,
    /// The item that action retrieved and showed.
    pub shown: ItemId,
    /// What the user said about it ("Good" on success).
    pub utterance: String,
    pub reward: f32,
    /// Last turn of the session (success, or the turn cap).
    pub done: bool,
}

/// One finished session as uploaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperienceSession {
    /// The round of the federated loop whose policy collected it (0 = behaviour policies).
    pub round: u32,
    pub turns: Vec<ExperienceTurn>,
}

impl ExperienceSession {
    /// Strips a simulator transcript down to what may leave a device.
    pub fn from_transcript(t: &Transcript, round: u32) -> ExperienceSession {
        let n = t.turns.len();
        ExperienceSession {
            round,
            turns: t
                .turns
                .iter()
                .enumerate()
                .map(|(i, x)| ExperienceTurn {
                    action: x.action,
                    shown: x.observation.shown,
                    utterance: x.observation.utterance.clone(),
                    reward: x.reward,
                    done: i + 1 == n,
                })
                .collect(),
        }
    }

    /// Number of transitions.
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Whether the session ended in success (its last utterance is the user's "Good").
    pub fn succeeded(&self) -> bool {
        self.turns.last().is_some_and(|t| t.utterance == irec_world::sim::language::GOOD)
    }

    /// Checks a session against what the server accepts.
    pub fn validate(&self, limits: &ExperienceLimits) -> Result<(), ExperienceError> {
        if self.turns.is_empty() {
            return Err(ExperienceError::Empty);
        }
        if self.turns.len() > limits.max_turns {
            return Err(ExperienceError::TooLong { turns: self.turns.len(), max: limits.max_turns });
        }
        for (i, t) in self.turns.iter().enumerate() {
            if !t.reward.is_finite() || t.reward.abs() > limits.max_abs_reward {
                return Err(ExperienceError::BadReward { turn: i, reward: t.reward });
            }
            if t.shown as usize >= limits.catalog_items {
                return Err(ExperienceError::UnknownItem { turn: i, item: t.shown });
            }
            for (d, (slot, n)) in t.action.0.iter().zip(limits.head_sizes).enumerate() {
                if *slot as usize >= n {
                    return Err(ExperienceError::BadAction { turn: i, attribute: d, slot: *slot });
                }
            }
            if t.utterance.len() > limits.max_utterance_bytes {
                return Err(ExperienceError::UtteranceTooLong { turn: i, bytes: t.utterance.len() });
            }
            if t.done != (i + 1 == self.turns.len()) {
                return Err(ExperienceError::BadDone { turn: i });
            }
        }
        Ok(())
    }
}

/// What a server accepts in an uploaded session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperienceLimits {
    /// Turn cap of a session (the simulator's: 50).
    pub max_turns: usize,
    /// Items in the catalog: ids at or above it are unknown.
    pub catalog_items: usize,
    /// Action head sizes (vocabulary + "no preference").
    pub head_sizes: [usize; NUM_ATTRS],
    /// Longest utterance accepted, in bytes.
    pub max_utterance_bytes: usize,
    /// Largest |reward| accepted (the reward lies in [−6, 1]).
    pub max_abs_reward: f32,
}

/// Why an uploaded session is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ExperienceError {
    #[error("empty session")]
    Empty,
    #[error("session of {turns} turns exceeds the cap of {max}")]
    TooLong { turns: usize, max: usize },
    #[error("turn {turn}: reward {reward} is not a finite number in range")]
    BadReward { turn: usize, reward: f32 },
    #[error("turn {turn}: unknown item id {item}")]
    UnknownItem { turn: usize, item: ItemId },
    #[error("turn {turn}: action slot {slot} out of range for attribute {attribute}")]
    BadAction { turn: usize, attribute: usize, slot: u8 },
    #[error("turn {turn}: utterance of {bytes} bytes is too long")]
    UtteranceTooLong { turn: usize, bytes: usize },
    #[error("turn {turn}: done must be set on the last turn only")]
    BadDone { turn: usize },
}
