//! The item catalog: a [`Schema`], items with set-valued attribute cells, and the train/test split.
//!
//! - [`schema`]: attributes, value sets, the multi-discrete [`Action`].
//! - [`reference`]: UT-Zappos50K vocabularies and counts.
//! - [`generator`]: a synthetic catalog with the reference marginals.
//! - [`csv`]: the real `meta-data.csv` format, read and written.
//! - [`features`]: visual features standing in for ResNet embeddings.

pub mod csv;
pub mod features;
pub mod generator;
pub mod reference;
pub mod schema;

pub use features::{FeatureConfig, VisualFeatures};
pub use generator::{generate, GeneratorConfig};
pub use schema::{Action, Attribute, ItemAttrs, Schema, ValueSet, NUM_ATTRS};

use crate::rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Index of an item in its catalog.
pub type ItemId = u32;

/// One catalog item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// "ProductID-ColorID", as in UT-Zappos50K.
    pub cid: String,
    /// Ground-truth attribute cells.
    pub attrs: ItemAttrs,
}

/// Train items are well labelled; test items are "newly added" (the recommender sees only
/// predicted attributes for them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<ItemId>,
    pub test: Vec<ItemId>,
}

impl Split {
    /// The paper's 40,020 / 10,005 proportion (one fifth for test), shuffled by `seed`.
    pub fn by_seed(n: usize, seed: u64) -> Split {
        let test_len = (n as u64 * reference::REFERENCE_TEST_ITEMS as u64
            + reference::REFERENCE_ITEMS as u64 / 2)
            / reference::REFERENCE_ITEMS as u64;
        // Both splits keep at least one item whenever there are two.
        let test_len = if n >= 2 { test_len.clamp(1, n as u64 - 1) } else { test_len };
        let mut ids: Vec<ItemId> = (0..n as ItemId).collect();
        ids.shuffle(&mut rng::rng(rng::derive(seed, rng::stream::SPLIT)));
        let mut test = ids[..test_len as usize].to_vec();
        let mut train = ids[test_len as usize..].to_vec();
        test.sort_unstable();
        train.sort_unstable();
        Split { train, test }
    }
}

/// A catalog of items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub schema: Schema,
    pub items: Vec<Item>,
    pub split: Split,
}

/// Ground-truth or predicted attribute cells of every catalog item, indexed by [`ItemId`]: the
/// pluggable attribute source behind retrieval and the reward.
pub type AttrTable = crate::mapped::Table<ItemAttrs>;

impl Catalog {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn attrs(&self, id: ItemId) -> &ItemAttrs {
        &self.items[id as usize].attrs
    }

    /// The ground-truth attribute table.
    pub fn truth(&self) -> AttrTable {
        self.items.iter().map(|i| i.attrs).collect()
    }

    /// Counts of every value, and of empty cells, per attribute.
    pub fn marginals(&self) -> Marginals {
        let mut m = Marginals {
            values: self.schema.values.clone().map(|vals| vec![0; vals.len()]),
            empty: [0; NUM_ATTRS],
            multi: [0; NUM_ATTRS],
            items: self.items.len(),
        };
        for item in &self.items {
            for a in Attribute::ALL {
                let set = item.attrs.set(a);
                if set == 0 {
                    m.empty[a.index()] += 1;
                }
                if set.count_ones() > 1 {
                    m.multi[a.index()] += 1;
                }
                for v in item.attrs.values(a) {
                    m.values[a.index()][v as usize] += 1;
                }
            }
        }
        m
    }
}

/// Per-attribute value counts (a multi-valued cell counts once for each of its values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marginals {
    pub values: [Vec<usize>; NUM_ATTRS],
    pub empty: [usize; NUM_ATTRS],
    pub multi: [usize; NUM_ATTRS],
    pub items: usize,
}

impl Marginals {
    /// A Markdown report, one table per attribute.
    pub fn render(&self, schema: &Schema) -> String {
        let mut out = format!("Catalog marginals over {} items\n", self.items);
        for a in Attribute::ALL {
            let i = a.index();
            out.push_str(&format!(
                "\n### {} (empty {} = {:.1}%, multi-valued {})\n\n| value | count | share |\n|---|---:|---:|\n",
                a.column(),
                self.empty[i],
                pct(self.empty[i], self.items),
                self.multi[i]
            ));
            let mut rows: Vec<(usize, usize)> = self.values[i].iter().copied().enumerate().collect();
            rows.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            for (v, n) in rows {
                out.push_str(&format!(
                    "| {} | {} | {:.2}% |\n",
                    schema.value_name(a, v as u8),
                    n,
                    pct(n, self.items)
                ));
            }
        }
        out
    }
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_has_the_paper_proportions() {
        let s = Split::by_seed(50_025, 9);
        assert_eq!(s.test.len(), 10_005);
        assert_eq!(s.train.len(), 40_020);
        let mut all: Vec<_> = s.train.iter().chain(s.test.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50_025).collect::<Vec<_>>());
        assert_ne!(Split::by_seed(500, 1), Split::by_seed(500, 2));
    }
}
