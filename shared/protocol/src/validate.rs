//! What the server accepts in an upload: batch-level rules here, session-level rules in
//! [`ExperienceSession::validate`].

use super::message::{ErrorCode, ErrorMessage, UploadBatch};
use irec_world::catalog::Schema;
use crate::experience::{ExperienceLimits, ExperienceSession};
use serde::{Deserialize, Serialize};

/// Batch-level upload rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadRules {
    /// Session-level limits (turn cap, catalog size, head sizes, utterance length, reward range).
    pub experience: ExperienceLimits,
    /// Most sessions in one batch.
    pub max_batch_sessions: usize,
}

/// Longest utterance a server accepts, in bytes. The template bank's longest sentence is under
/// 100 bytes; 512 leaves room for real catalogs' longer value names and refuses megabyte strings.
pub const DEFAULT_MAX_UTTERANCE_BYTES: usize = 512;

/// Largest |reward| accepted. Rewards lie in [−6, 1] (−3 worst turn, −3 failure penalty);
/// 10 refuses nonsense without coupling the server to the exact reward settings.
pub const DEFAULT_MAX_ABS_REWARD: f32 = 10.0;

/// Default cap on sessions per batch.
pub const DEFAULT_MAX_BATCH_SESSIONS: usize = 1024;

/// The limits for a catalog of `catalog_items` items with `schema`, and a turn cap of `max_turns`.
pub fn experience_limits(schema: &Schema, catalog_items: usize, max_turns: usize) -> ExperienceLimits {
    ExperienceLimits {
        max_turns,
        catalog_items,
        head_sizes: schema.head_sizes(),
        max_utterance_bytes: DEFAULT_MAX_UTTERANCE_BYTES,
        max_abs_reward: DEFAULT_MAX_ABS_REWARD,
    }
}

impl UploadRules {
    pub fn new(experience: ExperienceLimits) -> UploadRules {
        UploadRules { experience, max_batch_sessions: DEFAULT_MAX_BATCH_SESSIONS }
    }

    /// Checks a whole batch; the first bad session refuses the batch (nothing of it is stored).
    pub fn check(&self, batch: &UploadBatch) -> Result<(), ErrorMessage> {
        if batch.sessions.is_empty() {
            return Err(ErrorMessage::new(ErrorCode::InvalidBatch, format!("batch {} is empty", batch.batch_id)));
        }
        if batch.sessions.len() > self.max_batch_sessions {
            return Err(ErrorMessage::new(
                ErrorCode::InvalidBatch,
                format!("batch of {} sessions exceeds the cap of {}", batch.sessions.len(), self.max_batch_sessions),
            ));
        }
        for (i, s) in batch.sessions.iter().enumerate() {
            self.check_session(s)
                .map_err(|e| ErrorMessage::new(ErrorCode::InvalidBatch, format!("session {i}: {e}")))?;
        }
        Ok(())
    }

    fn check_session(&self, s: &ExperienceSession) -> Result<(), crate::experience::ExperienceError> {
        s.validate(&self.experience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::Action;
    use crate::experience::ExperienceTurn;
    use crate::message::BatchId;

    fn rules() -> UploadRules {
        UploadRules::new(experience_limits(&Schema::reference(), 100, 50))
    }

    fn session(turns: usize) -> ExperienceSession {
        ExperienceSession {
            round: 0,
            turns: (0..turns)
                .map(|i| ExperienceTurn {
                    action: Action::default(),
                    shown: i as u32,
                    utterance: "I want boots".into(),
                    reward: -0.5,
                    done: i + 1 == turns,
                })
                .collect(),
        }
    }

    fn batch(sessions: Vec<ExperienceSession>) -> UploadBatch {
        UploadBatch { batch_id: BatchId(9), sessions }
    }

    #[test]
    fn accepts_good_batches_and_refuses_each_kind_of_bad_one() {
        let r = rules();
        assert_eq!(r.check(&batch(vec![session(3), session(50)])), Ok(()));
        let refused = |b: UploadBatch| r.check(&b).map_err(|e| e.code);
        assert_eq!(refused(batch(vec![])), Err(ErrorCode::InvalidBatch));
        assert_eq!(refused(batch(vec![session(51)])), Err(ErrorCode::InvalidBatch));
        let mut nan = session(2);
        nan.turns[0].reward = f32::NAN;
        assert_eq!(refused(batch(vec![session(1), nan])), Err(ErrorCode::InvalidBatch));
        let mut inf = session(2);
        inf.turns[1].reward = f32::INFINITY;
        assert_eq!(refused(batch(vec![inf])), Err(ErrorCode::InvalidBatch));
        let mut unknown = session(2);
        unknown.turns[1].shown = 100;
        let e = r.check(&batch(vec![unknown])).unwrap_err();
        assert!(e.message.contains("unknown item id 100"), "{e}");
        let mut long = session(1);
        long.turns[0].utterance = "x".repeat(1 << 20);
        assert_eq!(refused(batch(vec![long])), Err(ErrorCode::InvalidBatch));
        let mut slot = session(1);
        slot.turns[0].action.0[0] = 99;
        assert_eq!(refused(batch(vec![slot])), Err(ErrorCode::InvalidBatch));
        let many = UploadRules { max_batch_sessions: 2, ..rules() };
        assert!(many.check(&batch(vec![session(1); 3])).is_err());
    }
}
