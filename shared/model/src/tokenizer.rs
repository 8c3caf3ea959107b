//! Word vocabulary for the text encoder: every word of the template bank and of the attribute
//! values' surface forms, plus padding and unknown tokens.

use irec_world::sim::language::tokenize;
use irec_world::sim::Lexicon;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// Words by id; ids 0 and 1 are padding and unknown.
    pub words: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl Vocabulary {
    pub fn from_lexicon(lexicon: &Lexicon) -> Vocabulary {
        let mut words = vec!["<pad>".to_string(), "<unk>".to_string()];
        words.extend(lexicon.vocabulary());
        Vocabulary::from_words(words)
    }

    pub fn from_words(words: Vec<String>) -> Vocabulary {
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        Vocabulary { words, index }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Token ids of an utterance, at most `max_len` (longer utterances keep their last words,
    /// where the value usually is). Unknown words map to [`UNK`]; never empty.
    pub fn encode(&self, utterance: &str, max_len: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = tokenize(utterance).iter().map(|w| self.index.get(w).copied().unwrap_or(UNK)).collect();
        if ids.len() > max_len {
            ids.drain(..ids.len() - max_len);
        }
        if ids.is_empty() {
            ids.push(UNK);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::Schema;

    #[test]
    fn known_and_unknown_words() {
        let v = Vocabulary::from_lexicon(&Lexicon::new(&Schema::reference()));
        let ids = v.encode("I want Boots, zorblax", 16);
        assert_eq!(ids.len(), 4);
        assert!(ids[..3].iter().all(|i| *i > UNK));
        assert_eq!(ids[3], UNK);
        let back = Vocabulary::from_words(v.words.clone());
        assert_eq!(back.encode("I want boots", 16), v.encode("I want boots", 16));
    }
}
