//! From a multi-discrete action to the item shown: the not-yet-shown pool item whose attributes
//! match the most requested values, ties broken by seeded random.
//!
//! One bitset per (attribute, value) over pool positions. Scoring adds up to six bitsets with a
//! bit-sliced counter (three bit planes per 64-item word), so a whole 10,005-item pool is scored in
//! a few hundred word operations, without touching items one by one.

use crate::catalog::{Action, AttrTable, Attribute, ItemId, Schema, NUM_ATTRS};

/// Which pool positions were already shown in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownSet {
    words: Vec<u64>,
}

impl ShownSet {
    pub fn contains(&self, pos: usize) -> bool {
        self.words.get(pos / 64).is_some_and(|w| w & (1u64 << (pos % 64)) != 0)
    }

    pub fn insert(&mut self, pos: usize) {
        if let Some(w) = self.words.get_mut(pos / 64) {
            *w |= 1u64 << (pos % 64);
        }
    }
}

/// A retrieval index over a pool of items, built from an attribute table (ground truth for the
/// well-labelled train split, AttrNet predictions for the "newly added" test split).
#[derive(Clone, Debug)]
pub struct RetrievalIndex {
    pool: Vec<ItemId>,
    words: usize,
    /// Offset of each attribute's first value bitset in `bits` (in bitsets).
    offsets: [usize; NUM_ATTRS],
    /// Bitsets, `words` long each, one per (attribute, value).
    bits: Vec<u64>,
    /// Mask of valid positions in the last word.
    tail: u64,
}

impl RetrievalIndex {
    pub fn new(schema: &Schema, pool: &[ItemId], attrs: &AttrTable) -> RetrievalIndex {
        let words = pool.len().div_ceil(64).max(1);
        let offsets = schema.value_offsets();
        let mut bits = vec![0u64; schema.total_values() * words];
        for (pos, id) in pool.iter().enumerate() {
            let item = &attrs[*id as usize];
            for a in Attribute::ALL {
                for v in item.values(a) {
                    if (v as usize) < schema.num_values(a) {
                        bits[(offsets[a.index()] + v as usize) * words + pos / 64] |= 1u64 << (pos % 64);
                    }
                }
            }
        }
        let rem = pool.len() % 64;
        let tail = if rem == 0 && !pool.is_empty() { u64::MAX } else { (1u64 << rem) - 1 };
        RetrievalIndex { pool: pool.to_vec(), words, offsets, bits, tail }
    }

    pub fn pool(&self) -> &[ItemId] {
        &self.pool
    }

    pub fn len(&self) -> usize {
        self.pool.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    pub fn empty_shown(&self) -> ShownSet {
        ShownSet { words: vec![0; self.words] }
    }

    fn bitset(&self, attr: Attribute, value: u8) -> Option<&[u64]> {
        let start = (self.offsets[attr.index()] + value as usize) * self.words;
        let end = start + self.words;
        let next = self.offsets.get(attr.index() + 1).map_or(self.bits.len() / self.words, |o| *o);
        if self.offsets[attr.index()] + (value as usize) < next {
            self.bits.get(start..end)
        } else {
            None
        }
    }

    /// Picks the item to show for `action`: among unshown positions with the highest number of
    /// matched values, a uniformly random one. `None` when every pool item was shown.
    pub fn select(&self, action: &Action, shown: &ShownSet, rng: &mut impl rand::Rng) -> Option<(usize, ItemId)> {
        let sets: Vec<&[u64]> =
            Attribute::ALL.iter().filter_map(|a| action.value(*a).and_then(|v| self.bitset(*a, v))).collect();
        // Bit-sliced counts: planes[k] holds bit k of each position's match count (at most 6 < 8).
        let most = sets.len() as u32;
        let mut best = 0u32;
        let mut counts = vec![[0u64; 3]; self.words];
        for w in 0..self.words {
            let mut p = [0u64; 3];
            for s in &sets {
                let mut carry = s[w];
                for plane in p.iter_mut() {
                    let next = *plane & carry;
                    *plane ^= carry;
                    carry = next;
                }
            }
            let avail = !shown.words[w] & if w + 1 == self.words { self.tail } else { u64::MAX };
            // Only counts above the best so far matter, and none exceeds the values asked for: once
            // an item matches them all, later words are counted but never searched (a third of a
            // simulated turn went to searching every count from 7 down, in every word).
            if avail != 0 && best < most {
                if let Some(n) = (best + 1..=most).rev().find(|n| eq_mask(&p, *n) & avail != 0) {
                    best = n;
                }
            }
            counts[w] = p;
        }
        let mut total = 0u32;
        let masks: Vec<u64> = (0..self.words)
            .map(|w| {
                let avail = !shown.words[w] & if w + 1 == self.words { self.tail } else { u64::MAX };
                let m = eq_mask(&counts[w], best) & avail;
                total += m.count_ones();
                m
            })
            .collect();
        if total == 0 {
            return None;
        }
        let mut k = rng.random_range(0..total);
        for (w, m) in masks.iter().enumerate() {
            let c = m.count_ones();
            if k < c {
                let mut bits = *m;
                for _ in 0..k {
                    bits &= bits - 1;
                }
                let pos = w * 64 + bits.trailing_zeros() as usize;
                return Some((pos, self.pool[pos]));
            }
            k -= c;
        }
        None
    }
}

impl RetrievalIndex {
    /// For every attribute, how many pool items carry each value among the items that match all of
    /// `action`'s requested values (the whole pool if none match).
    pub fn conditional_counts(&self, action: &Action) -> [Vec<u32>; NUM_ATTRS] {
        let mut keep: Vec<u64> = (0..self.words)
            .map(|w| if w + 1 == self.words { self.tail } else { u64::MAX })
            .collect();
        let all = keep.clone();
        for a in Attribute::ALL {
            if let Some(set) = action.value(a).and_then(|v| self.bitset(a, v)) {
                keep.iter_mut().zip(set).for_each(|(k, s)| *k &= s);
            }
        }
        if keep.iter().all(|w| *w == 0) {
            keep = all;
        }
        let mut out: [Vec<u32>; NUM_ATTRS] = Default::default();
        for a in Attribute::ALL {
            let next = self.offsets.get(a.index() + 1).copied().unwrap_or(self.bits.len() / self.words);
            out[a.index()] = (0..next - self.offsets[a.index()])
                .map(|v| {
                    let set = &self.bits[(self.offsets[a.index()] + v) * self.words..][..self.words];
                    set.iter().zip(&keep).map(|(s, k)| (s & k).count_ones()).sum()
                })
                .collect();
        }
        out
    }
}

/// Positions whose 3-bit count equals `n`.
fn eq_mask(p: &[u64; 3], n: u32) -> u64 {
    let mut m = u64::MAX;
    for (k, plane) in p.iter().enumerate() {
        m &= if n & (1 << k) != 0 { *plane } else { !*plane };
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{generate, GeneratorConfig};
    use crate::rng;

    fn brute_scores(action: &Action, pool: &[ItemId], attrs: &AttrTable) -> Vec<u32> {
        pool.iter()
            .map(|id| {
                Attribute::ALL
                    .iter()
                    .filter(|a| action.value(**a).is_some_and(|v| attrs[*id as usize].has(**a, v)))
                    .count() as u32
            })
            .collect()
    }

    #[test]
    fn selects_an_unshown_item_with_the_best_score() {
        let cat = generate(&GeneratorConfig { items: 1_000, seed: 4 });
        let truth = cat.truth();
        let index = RetrievalIndex::new(&cat.schema, &cat.split.test, &truth);
        let mut r = rng::rng(1);
        for trial in 0..200 {
            let target = cat.split.test[trial % cat.split.test.len()];
            let mut action = Action::default();
            for a in Attribute::ALL {
                let v = truth[target as usize].values(a).next();
                if trial % 3 != a.index() % 3 {
                    action = action.with_value(a, v);
                }
            }
            let scores = brute_scores(&action, &cat.split.test, &truth);
            let mut shown = index.empty_shown();
            for _ in 0..5 {
                let (pos, id) = index.select(&action, &shown, &mut r).unwrap();
                assert_eq!(index.pool()[pos], id);
                assert!(!shown.contains(pos));
                let best = (0..scores.len()).filter(|p| !shown.contains(*p)).map(|p| scores[p]).max().unwrap();
                assert_eq!(scores[pos], best);
                shown.insert(pos);
            }
        }
    }

    #[test]
    fn exhausts_the_pool_and_then_says_so() {
        let cat = generate(&GeneratorConfig { items: 100, seed: 4 });
        let truth = cat.truth();
        let index = RetrievalIndex::new(&cat.schema, &cat.split.test, &truth);
        let mut shown = index.empty_shown();
        let mut r = rng::rng(2);
        let mut seen = std::collections::HashSet::new();
        while let Some((pos, id)) = index.select(&Action::default(), &shown, &mut r) {
            assert!(seen.insert(id));
            shown.insert(pos);
        }
        assert_eq!(seen.len(), index.len());
    }
}
