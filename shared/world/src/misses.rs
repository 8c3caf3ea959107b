//! Why sessions were not done by turn K: what the recommender was asking for at turn K, against
//! what the user wanted and had said. It splits a policy's misses into its memory's, its guesses'
//! and retrieval's, the last being what no recommender can fix by asking differently.

use crate::catalog::Attribute;
use crate::sim::{Feedback, Transcript};
use serde::{Deserialize, Serialize};

/// The sessions not done within `k` turns, each counted once, by its first failing reason in
/// this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misses {
    /// The turn looked at.
    pub k: usize,
    /// Sessions looked at.
    pub sessions: usize,
    /// Sessions not done within `k` turns (the complement of SR@k).
    pub not_done: usize,
    /// At turn `k`, a wish the user had already voiced is not asked for (another value, or no
    /// preference): the recommender forgot what it was told.
    pub forgot: usize,
    /// Every voiced wish asked for, but a head asks for a value the user does not want (a wrong
    /// guess at a wish not yet voiced, or a value on an attribute the user has no wish for).
    pub guessed_wrong: usize,
    /// Every voiced wish asked for, no wrong value, some unvoiced wish left at no preference.
    pub left_open: usize,
    /// Every head asks for exactly the user's wishes, and retrieval (AttrNet's predicted
    /// attributes) still showed items that lack one.
    pub retrieval_missed: usize,
}

impl Misses {
    pub fn of_transcripts(ts: &[Transcript], k: usize) -> Misses {
        let mut m = Misses { k, sessions: ts.len(), ..Misses::default() };
        for t in ts.iter().filter(|t| t.success_turn().is_none_or(|n| n > k)) {
            m.not_done += 1;
            let Some(turn) = t.turns.get(k.saturating_sub(1)).or(t.turns.last()) else {
                m.left_open += 1;
                continue;
            };
            let voiced = |a: Attribute| {
                t.turns[..k.min(t.turns.len()).saturating_sub(1)]
                    .iter()
                    .any(|u| matches!(u.feedback, Feedback::Missing { attribute, .. } if attribute == a))
            };
            let asked = |a: Attribute| turn.action.value(a);
            let wish = |a: Attribute| t.desires.get(a);
            if Attribute::ALL.iter().any(|a| voiced(*a) && asked(*a) != wish(*a)) {
                m.forgot += 1;
            } else if Attribute::ALL.iter().any(|a| asked(*a).is_some() && asked(*a) != wish(*a)) {
                m.guessed_wrong += 1;
            } else if Attribute::ALL.iter().any(|a| wish(*a).is_some() && asked(*a).is_none()) {
                m.left_open += 1;
            } else {
                m.retrieval_missed += 1;
            }
        }
        m
    }

    /// One line: "not done by turn 10: 44 of 500 (forgot 12, guessed wrong 9, left open 6,
    /// retrieval missed 17)".
    pub fn line(&self) -> String {
        format!(
            "not done by turn {}: {} of {} (forgot {}, guessed wrong {}, left open {}, retrieval missed {})",
            self.k, self.not_done, self.sessions, self.forgot, self.guessed_wrong, self.left_open, self.retrieval_missed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Action;
    use crate::sim::{Desires, Observation, Turn};

    fn turn(action: [u8; 6], said: Option<Attribute>) -> Turn {
        Turn {
            action: Action(action),
            observation: Observation { shown: 0, utterance: String::new() },
            feedback: said.map_or(Feedback::Good, |attribute| Feedback::Missing { attribute, value: 0, template: 0 }),
            reward: 0.0,
            violates_earlier_request: false,
        }
    }

    fn session(turns: Vec<Turn>, success: bool) -> Transcript {
        // Wishes: category 0, heel height 2; no wish on the other attributes.
        let mut desires = Desires::default();
        desires.0[Attribute::Category.index()] = Some(0);
        desires.0[Attribute::HeelHeight.index()] = Some(2);
        Transcript { target: 0, desires, turns, success }
    }

    #[test]
    fn each_session_not_done_by_turn_k_is_counted_once_by_its_first_reason() {
        let said_heel = Some(Attribute::HeelHeight);
        let right = [1, 0, 3, 0, 0, 0];
        let ts = vec![
            // Done at turn 2: not counted.
            session(vec![turn([0; 6], said_heel), turn(right, None)], true),
            // The heel was voiced at turn 1 and is not asked for at turn 2.
            session(vec![turn([1, 0, 0, 0, 0, 0], said_heel), turn([1, 0, 0, 0, 0, 0], said_heel)], false),
            // Voiced heel kept, but a value on an attribute without a wish.
            session(vec![turn([1, 0, 0, 0, 0, 0], said_heel), turn([1, 0, 3, 0, 5, 0], Some(Attribute::Gender))], false),
            // Voiced heel kept, the category (not voiced) left open.
            session(vec![turn([0; 6], said_heel), turn([0, 0, 3, 0, 0, 0], Some(Attribute::Category))], false),
            // Every wish asked for exactly: retrieval's miss.
            session(vec![turn(right, said_heel), turn(right, said_heel)], false),
        ];
        let m = Misses::of_transcripts(&ts, 2);
        assert_eq!(m, Misses { k: 2, sessions: 5, not_done: 4, forgot: 1, guessed_wrong: 1, left_open: 1, retrieval_missed: 1 });
        // By turn 1 nothing was voiced yet, so the same sessions read as guesses and open heads.
        let m1 = Misses::of_transcripts(&ts, 1);
        assert_eq!((m1.not_done, m1.forgot), (5, 0));
    }
}
