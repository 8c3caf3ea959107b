//! Non-learned policies: random (the floor), oracle (knows the wishes; a sanity check), and the
//! rule-based feedback tracker, the honest baseline that learned policies must beat.

use super::{Policy, SessionHint};
use crate::catalog::{Action, Attribute, Schema, NUM_ATTRS};
use crate::retrieval::RetrievalIndex;
use crate::rng::Rng;
use crate::sim::{Lexicon, Observation};
use rand::Rng as _;
use std::sync::Arc;

/// Uniform over every slot of every head (including "no preference").
#[derive(Clone, Debug)]
pub struct RandomPolicy {
    heads: [usize; NUM_ATTRS],
}

impl RandomPolicy {
    pub fn new(schema: &Schema) -> RandomPolicy {
        RandomPolicy { heads: schema.head_sizes() }
    }
}

impl Policy for RandomPolicy {
    fn begin(&mut self, _: &SessionHint) {}
    fn observe(&mut self, _: &Observation) {}
    fn act(&mut self, rng: &mut Rng) -> Action {
        let mut a = Action::default();
        for (slot, n) in a.0.iter_mut().zip(self.heads) {
            *slot = rng.random_range(0..n) as u8;
        }
        a
    }
}

/// Asks for exactly the user's wishes. With ground-truth retrieval it succeeds at turn 1.
#[derive(Clone, Debug, Default)]
pub struct OraclePolicy {
    action: Action,
}

impl Policy for OraclePolicy {
    fn begin(&mut self, hint: &SessionHint) {
        self.action = Action::default();
        for a in Attribute::ALL {
            self.action = self.action.with_value(a, hint.desires.get(a));
        }
    }
    fn observe(&mut self, _: &Observation) {}
    fn act(&mut self, _: &mut Rng) -> Action {
        self.action
    }
}

/// Remembers every value the user asked for (read from the words with the rule-based reader) and
/// asks for them all; fills the other attributes with their most common value among pool items
/// that carry every remembered value (the pool's mode where that set is empty).
#[derive(Clone, Debug)]
pub struct TrackerPolicy {
    lexicon: Arc<Lexicon>,
    index: Arc<RetrievalIndex>,
    known: [Option<u8>; NUM_ATTRS],
}

impl TrackerPolicy {
    pub fn new(lexicon: Arc<Lexicon>, index: Arc<RetrievalIndex>) -> TrackerPolicy {
        TrackerPolicy { lexicon, index, known: [None; NUM_ATTRS] }
    }
}

impl Policy for TrackerPolicy {
    fn begin(&mut self, _: &SessionHint) {
        self.known = [None; NUM_ATTRS];
    }

    fn observe(&mut self, observation: &Observation) {
        if let Some((attr, value)) = self.lexicon.read(&observation.utterance) {
            self.known[attr.index()] = Some(value);
        }
    }

    fn act(&mut self, _: &mut Rng) -> Action {
        let mut action = Action::default();
        for a in Attribute::ALL {
            action = action.with_value(a, self.known[a.index()]);
        }
        let counts = self.index.conditional_counts(&action);
        for a in Attribute::ALL {
            if self.known[a.index()].is_none() {
                let mode = counts[a.index()].iter().enumerate().max_by_key(|(v, c)| (**c, std::cmp::Reverse(*v)));
                if let Some((v, c)) = mode {
                    if *c > 0 {
                        action = action.with_value(a, Some(v as u8));
                    }
                }
            }
        }
        action
    }
}
