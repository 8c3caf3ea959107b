//! AttrNet (paper): from an item's visual feature to its attributes. An MLP with one sigmoid output
//! per (attribute, value), trained on the well-labelled train split. For test items ("newly
//! added") the recommender sees only its predictions.

use irec_world::catalog::{AttrTable, Attribute, ItemAttrs, Schema, NUM_ATTRS};
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttrNetConfig {
    /// Visual feature width.
    pub input: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Values per attribute (outputs are their concatenation).
    pub values: [usize; NUM_ATTRS],
    /// Attributes whose cells are always exactly one value in the train split: predicted by argmax
    /// rather than by thresholding each value at 0.5.
    pub exclusive: [bool; NUM_ATTRS],
}

impl Default for AttrNetConfig {
    fn default() -> Self {
        AttrNetConfig { input: 64, hidden: 128, values: [0; NUM_ATTRS], exclusive: [false; NUM_ATTRS] }
    }
}

impl AttrNetConfig {
    pub fn for_schema(schema: &Schema, input: usize, train_cells: &[ItemAttrs]) -> AttrNetConfig {
        let mut values = [0; NUM_ATTRS];
        let mut exclusive = [true; NUM_ATTRS];
        for a in Attribute::ALL {
            values[a.index()] = schema.num_values(a);
            exclusive[a.index()] = train_cells.iter().all(|c| c.set(a).count_ones() == 1);
        }
        AttrNetConfig { input, values, exclusive, ..AttrNetConfig::default() }
    }

    pub fn outputs(&self) -> usize {
        self.values.iter().sum()
    }
}

#[derive(Clone, Debug)]
pub struct AttrNet {
    cfg: AttrNetConfig,
    l1: Linear,
    l2: Linear,
}

impl AttrNet {
    pub fn new(cfg: &AttrNetConfig, vb: VarBuilder) -> Result<AttrNet> {
        Ok(AttrNet {
            cfg: cfg.clone(),
            l1: linear(cfg.input, cfg.hidden, vb.pp("l1"))?,
            l2: linear(cfg.hidden, cfg.outputs(), vb.pp("l2"))?,
        })
    }

    pub fn config(&self) -> &AttrNetConfig {
        &self.cfg
    }

    /// Logits, (N, Σ values).
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.l2.forward(&self.l1.forward(features)?.relu()?)
    }

    /// Probabilities, (N, Σ values).
    pub fn probabilities(&self, features: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward(features)?)
    }

    /// Predicted cells from one row of probabilities.
    pub fn cells(&self, probs: &[f32]) -> ItemAttrs {
        let mut out = ItemAttrs::default();
        let mut off = 0;
        for a in Attribute::ALL {
            let n = self.cfg.values[a.index()];
            let seg = &probs[off..off + n];
            if self.cfg.exclusive[a.index()] {
                if let Some((v, _)) = seg.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)) {
                    out.insert(a, v as u8);
                }
            } else {
                for (v, p) in seg.iter().enumerate() {
                    if *p > 0.5 {
                        out.insert(a, v as u8);
                    }
                }
            }
            off += n;
        }
        out
    }

    /// Predicted cells of every row of a probability matrix.
    pub fn predict_table(&self, probs: &[f32]) -> AttrTable {
        probs.chunks_exact(self.cfg.outputs().max(1)).map(|row| self.cells(row)).collect()
    }
}
