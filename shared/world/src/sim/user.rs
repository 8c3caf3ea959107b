//! The simulated user: wants its target's attribute values and says, in words, one that the shown
//! item lacks.
//!
//! A target cell may hold several values ("Round Toe;Closed Toe"); the user wants one of them (drawn
//! at session start), because the recommender asks for one value per attribute. An empty cell means
//! no wish for that attribute. Users differ by seed in which violated attribute they bring up
//! (a personal priority over attributes) and in wording (favourite templates, casing, full stops).

use super::language::{Lexicon, TEMPLATES};
use crate::catalog::{Attribute, ItemAttrs, ItemId, NUM_ATTRS};
use crate::rng::{self, weighted_index, Rng};
use rand::Rng as _;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

/// The value the user wants for each attribute (`None`: no wish).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Desires(pub [Option<u8>; NUM_ATTRS]);

impl Desires {
    /// Draws one wanted value from each non-empty cell of the target.
    pub fn from_target(target: &ItemAttrs, rng: &mut Rng) -> Desires {
        let mut d = Desires::default();
        for a in Attribute::ALL {
            let values: Vec<u8> = target.values(a).collect();
            if !values.is_empty() {
                d.0[a.index()] = Some(values[rng.random_range(0..values.len())]);
            }
        }
        d
    }

    pub fn get(&self, attr: Attribute) -> Option<u8> {
        self.0[attr.index()]
    }

    /// Whether `attr` is satisfied by an item (always, when there is no wish).
    pub fn satisfied(&self, attr: Attribute, item: &ItemAttrs) -> bool {
        self.get(attr).is_none_or(|v| item.has(attr, v))
    }

    pub fn satisfied_by(&self, item: &ItemAttrs) -> bool {
        Attribute::ALL.iter().all(|a| self.satisfied(*a, item))
    }

    /// Attributes whose wish the item violates.
    pub fn violated<'a>(&'a self, item: &'a ItemAttrs) -> impl Iterator<Item = Attribute> + 'a {
        Attribute::ALL.into_iter().filter(move |a| !self.satisfied(*a, item))
    }
}

/// What the user says about a shown item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Feedback {
    /// The item satisfies every wish: the session succeeds.
    Good,
    /// The item lacks `value` of `attribute`, which the user names in words.
    Missing { attribute: Attribute, value: u8, template: u8 },
}

/// A user's habits, fixed for the user's lifetime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserHabits {
    /// Propensity to bring up each attribute when several are violated.
    pub attribute_weights: [f64; NUM_ATTRS],
    /// Propensity to use each template of the bank.
    pub template_weights: Vec<f64>,
    /// Speaks values in lower case ("boots") rather than as catalogued ("Boots").
    pub lowercase: bool,
    /// Ends sentences with a full stop.
    pub full_stop: bool,
}

impl UserHabits {
    pub fn draw(rng: &mut Rng) -> UserHabits {
        // Gamma(0.5) weights give each user a few strong favourites and many rare choices.
        let habit = Gamma::new(0.5, 1.0).ok();
        let draw = |rng: &mut Rng| habit.map_or(1.0, |g| g.sample(rng) + 1e-3);
        let mut attribute_weights = [0.0; NUM_ATTRS];
        for w in attribute_weights.iter_mut() {
            *w = draw(rng);
        }
        let template_weights = TEMPLATES.iter().map(|_| draw(rng)).collect();
        UserHabits { attribute_weights, template_weights, lowercase: rng.random_bool(0.5), full_stop: rng.random_bool(0.4) }
    }
}

/// One simulated user looking for one target.
#[derive(Clone, Debug)]
pub struct SimulatedUser {
    pub target: ItemId,
    pub desires: Desires,
    pub habits: UserHabits,
    rng: Rng,
}

impl SimulatedUser {
    pub fn new(target: ItemId, target_attrs: &ItemAttrs, seed: u64) -> SimulatedUser {
        let mut r = rng::rng(seed);
        let desires = Desires::from_target(target_attrs, &mut r);
        let habits = UserHabits::draw(&mut r);
        SimulatedUser { target, desires, habits, rng: r }
    }

    /// The user's reaction to a shown item (judged on ground truth), with the sentence said.
    pub fn respond(&mut self, shown: &ItemAttrs, lexicon: &Lexicon) -> (Feedback, String) {
        let violated: Vec<Attribute> = self.desires.violated(shown).collect();
        let weights: Vec<f64> = violated.iter().map(|a| self.habits.attribute_weights[a.index()]).collect();
        let Some(i) = weighted_index(&weights, &mut self.rng) else {
            return (Feedback::Good, super::language::GOOD.to_string());
        };
        let attribute = violated[i];
        let value = self.desires.get(attribute).unwrap_or_default();
        let fits: Vec<f64> = TEMPLATES
            .iter()
            .zip(&self.habits.template_weights)
            .map(|(t, w)| if t.fits(attribute) { *w } else { 0.0 })
            .collect();
        let template = weighted_index(&fits, &mut self.rng).unwrap_or(0);
        let surface = lexicon.surface(attribute, value);
        let surface = if self.habits.lowercase { surface.to_lowercase() } else { surface.to_string() };
        let mut text = TEMPLATES[template].text.replace("{v}", &surface);
        if self.habits.full_stop {
            text.push('.');
        }
        (Feedback::Missing { attribute, value, template: template as u8 }, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Schema;

    #[test]
    fn good_when_every_wish_holds_and_otherwise_a_violated_value_is_named() {
        let mut target = ItemAttrs::default();
        target.insert(Attribute::Category, 1);
        target.insert(Attribute::Gender, 1);
        let lex = Lexicon::new(&Schema::reference());
        let mut user = SimulatedUser::new(7, &target, 3);
        assert_eq!(user.respond(&target, &lex).0, Feedback::Good);
        let mut other = target;
        other.0[Attribute::Gender.index()] = 1; // Men instead of Women
        match user.respond(&other, &lex).0 {
            Feedback::Missing { attribute, value, .. } => {
                assert_eq!((attribute, value), (Attribute::Gender, 1));
            }
            Feedback::Good => panic!("a violated wish must be named"),
        }
    }
}
