//! The words of the simulated user: surface forms of attribute values, the template bank, the
//! tokenizer, and a rule-based reader of utterances (used by the tracker baseline).
//!
//! Surface forms are unique across attributes, so an utterance always carries the attribute and
//! value it is about. Four SubCategory names collide with other values ("Flat" is also a heel height,
//! "Boot" reads like the Boots category) and are spoken with their category ("flat sandals",
//! "slipper boots"). The word "shoes" is also template filler ("shoes with zipper"), so the reader
//! takes the longest value phrase in an utterance and, on a tie, anything over the Shoes category.

use crate::catalog::{Attribute, Schema, NUM_ATTRS};
use serde::{Deserialize, Serialize};

/// Which attributes a template can speak about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    All,
    Only(&'static [Attribute]),
}

/// A feedback sentence with one `{v}` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    pub text: &'static str,
    pub applies: Applies,
    /// "I do not need the shoes without {v}": a double negation that still asks for `{v}`.
    pub negated: bool,
}

impl Template {
    pub fn fits(&self, attr: Attribute) -> bool {
        match self.applies {
            Applies::All => true,
            Applies::Only(attrs) => attrs.contains(&attr),
        }
    }

    /// The text before and after the slot.
    pub fn parts(&self) -> (&'static str, &'static str) {
        self.text.split_once("{v}").unwrap_or((self.text, ""))
    }
}

const KIND: &[Attribute] = &[Attribute::Category, Attribute::SubCategory];
const GENDER: &[Attribute] = &[Attribute::Gender];

const fn t(text: &'static str, applies: Applies, negated: bool) -> Template {
    Template { text, applies, negated }
}

/// The template bank: the paper's wordings (Table 1, Figure 3) and a few more.
pub const TEMPLATES: &[Template] = &[
    t("I want {v}", Applies::All, false),
    t("I prefer {v}", Applies::All, false),
    t("I like {v}", Applies::All, false),
    t("Do you have {v}", Applies::All, false),
    t("Show me more {v}", Applies::All, false),
    t("I need the shoes with {v}", Applies::All, false),
    t("The shoes I want has {v}", Applies::All, false),
    t("Please provide some shoes with {v}", Applies::All, false),
    t("I am looking for shoes with {v}", Applies::All, false),
    t("Do you have shoes with {v}", Applies::All, false),
    t("Show me more shoes with {v}", Applies::All, false),
    t("I prefer shoes with {v}", Applies::All, false),
    t("Not this one, I want something with {v}", Applies::All, false),
    t("I do not need the shoes without {v}", Applies::All, true),
    t("I don't want shoes that lack {v}", Applies::All, true),
    t("Please provide some shoes for {v}", Applies::Only(GENDER), false),
    t("I am looking for shoes for {v}", Applies::Only(GENDER), false),
    t("I prefer shoes for {v}", Applies::Only(GENDER), false),
    t("I am looking for {v}", Applies::Only(KIND), false),
    t("Can I see some {v} instead", Applies::Only(KIND), false),
];

/// The user's word for success.
pub const GOOD: &str = "Good";

/// Lower-cased word tokens, trailing punctuation stripped.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_end_matches(['.', ',', '!', '?']).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Surface forms of every attribute value, and their reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lexicon {
    /// Surface form of each value, per attribute, as written (casing is the speaker's habit).
    pub surface: [Vec<String>; NUM_ATTRS],
    /// Tokens of each surface form, for the reader.
    phrases: Vec<(Vec<String>, Attribute, u8)>,
}

impl Lexicon {
    pub fn new(schema: &Schema) -> Lexicon {
        let mut surface: [Vec<String>; NUM_ATTRS] = Default::default();
        for a in Attribute::ALL {
            surface[a.index()] = schema.values[a.index()]
                .iter()
                .map(|v| match (a, v.as_str()) {
                    (Attribute::SubCategory, "Flat") => "Flat Sandals".to_string(),
                    (Attribute::SubCategory, "Heel") => "Heel Sandals".to_string(),
                    (Attribute::SubCategory, "Athletic") => "Athletic Sandals".to_string(),
                    (Attribute::SubCategory, "Boot") => "Slipper Boots".to_string(),
                    _ => v.clone(),
                })
                .collect();
        }
        // A loaded schema may bring further collisions: speak those with their attribute's name.
        let lower = |s: &String| tokenize(s).join(" ");
        for a in Attribute::ALL {
            for v in 0..surface[a.index()].len() {
                let this = lower(&surface[a.index()][v]);
                let clash = Attribute::ALL.iter().any(|b| {
                    surface[b.index()].iter().enumerate().any(|(w, s)| (b.index(), w) != (a.index(), v) && lower(s) == this)
                });
                if clash && a != Attribute::Category {
                    surface[a.index()][v] = format!("{} {}", surface[a.index()][v], a.column());
                }
            }
        }
        let mut phrases = Vec::new();
        for a in Attribute::ALL {
            for (v, s) in surface[a.index()].iter().enumerate() {
                phrases.push((tokenize(s), a, v as u8));
            }
        }
        Lexicon { surface, phrases }
    }

    pub fn surface(&self, attr: Attribute, value: u8) -> &str {
        self.surface[attr.index()].get(value as usize).map_or("?", |s| s.as_str())
    }

    /// Reads which attribute value an utterance asks for: the longest value phrase in it, preferring
    /// anything over the Shoes category (template filler) on a tie. `None` for "Good" or no value.
    pub fn read(&self, utterance: &str) -> Option<(Attribute, u8)> {
        let tokens = tokenize(utterance);
        let mut best: Option<(usize, bool, Attribute, u8)> = None;
        for (phrase, a, v) in &self.phrases {
            if phrase.is_empty() || phrase.len() > tokens.len() {
                continue;
            }
            if tokens.windows(phrase.len()).any(|w| w == phrase.as_slice()) {
                let specific = !(*a == Attribute::Category && *v == 0);
                let key = (phrase.len(), specific);
                if best.is_none_or(|(l, s, _, _)| key > (l, s)) {
                    best = Some((phrase.len(), specific, *a, *v));
                }
            }
        }
        best.map(|(_, _, a, v)| (a, v))
    }

    /// Every word the simulator can say: template words and value words.
    pub fn vocabulary(&self) -> Vec<String> {
        let mut words: Vec<String> = TEMPLATES
            .iter()
            .flat_map(|t| tokenize(&t.text.replace("{v}", " ")))
            .chain(self.phrases.iter().flat_map(|(p, _, _)| p.iter().cloned()))
            .chain(std::iter::once(GOOD.to_lowercase()))
            .collect();
        words.sort();
        words.dedup();
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surface_forms_are_unique() {
        let lex = Lexicon::new(&Schema::reference());
        let mut all: Vec<String> = lex.surface.iter().flatten().map(|s| s.to_lowercase()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn reader_understands_the_papers_examples() {
        let s = Schema::reference();
        let lex = Lexicon::new(&s);
        let read = |u: &str| lex.read(u).map(|(a, v)| (a, s.value_name(a, v).to_string()));
        assert_eq!(read("I want boots"), Some((Attribute::Category, "Boots".into())));
        assert_eq!(read("Please provide some shoes for women"), Some((Attribute::Gender, "Women".into())));
        assert_eq!(read("I do not need the shoes without flat."), Some((Attribute::HeelHeight, "Flat".into())));
        assert_eq!(read("Do you have sneakers and athletic shoes"), Some((Attribute::SubCategory, "Sneakers and Athletic Shoes".into())));
        assert_eq!(read("I want 1in - 1 3/4in."), Some((Attribute::HeelHeight, "1in - 1 3/4in".into())));
        assert_eq!(read("Do you have shoes with zipper"), Some((Attribute::Closure, "Zipper".into())));
        assert_eq!(read("I want shoes"), Some((Attribute::Category, "Shoes".into())));
        assert_eq!(read("I like flat sandals"), Some((Attribute::SubCategory, "Flat".into())));
        assert_eq!(read("Good"), None);
    }
}
