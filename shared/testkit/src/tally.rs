//! Exactly once, counted: the sessions a server holds against those its devices produced.

use irec_protocol::experience::ExperienceSession;
use serde::Serialize;
use std::collections::HashMap;

/// How what the server holds compares with what the devices produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub expected: usize,
    pub found: usize,
    /// Produced but not in D.
    pub missing: usize,
    /// Extra copies of produced sessions.
    pub duplicates: usize,
    /// In D but produced by nobody.
    pub unexpected: usize,
}

impl Tally {
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unexpected == 0 && self.expected == self.found
    }
}

/// Compares multisets of sessions, ignoring the round tag (it depends on which policy version a
/// device ran, not on what happened in the session).
pub fn tally(expected: &[ExperienceSession], found: &[ExperienceSession]) -> Tally {
    let key = |s: &ExperienceSession| {
        let mut s = s.clone();
        s.round = 0;
        bincode::serde::encode_to_vec(&s, bincode::config::standard()).unwrap_or_default()
    };
    let mut counts: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
    for s in expected {
        counts.entry(key(s)).or_default().0 += 1;
    }
    for s in found {
        counts.entry(key(s)).or_default().1 += 1;
    }
    let mut t = Tally { expected: expected.len(), found: found.len(), ..Tally::default() };
    for (e, f) in counts.values() {
        match (e, f) {
            (0, f) => t.unexpected += f,
            (e, f) if f < e => t.missing += e - f,
            (e, f) => t.duplicates += f - e,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_protocol::experience::ExperienceTurn;
    use irec_world::catalog::Action;

    fn s(shown: u32, round: u32) -> ExperienceSession {
        let turn = ExperienceTurn { action: Action::default(), shown, utterance: "Good".into(), reward: 1.0, done: true };
        ExperienceSession { round, turns: vec![turn] }
    }

    #[test]
    fn counts_missing_duplicate_and_unexpected_sessions_ignoring_the_round() {
        assert!(tally(&[s(1, 0), s(2, 0)], &[s(2, 3), s(1, 1)]).exact());
        let t = tally(&[s(1, 0), s(2, 0), s(3, 0)], &[s(1, 0), s(1, 0), s(4, 0)]);
        assert_eq!((t.missing, t.duplicates, t.unexpected, t.exact()), (2, 1, 1, false));
    }
}
