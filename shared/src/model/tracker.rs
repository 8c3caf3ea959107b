//! The state tracker (paper): a GRU over per-turn features (text embedding ⊕ visual feature of the
//! shown item ⊕ its attribute probabilities). The state before turn 1 is zero.

use super::kernels::gru_cell;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackerConfig {
    /// Width of a turn feature.
    pub input: usize,
    /// GRU hidden width (the state).
    pub hidden: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { input: 0, hidden: 128 }
    }
}

#[derive(Clone, Debug)]
pub struct StateTracker {
    cfg: TrackerConfig,
    w_ih: Linear,
    w_hh: Linear,
}

impl StateTracker {
    pub fn new(cfg: &TrackerConfig, vb: VarBuilder) -> Result<StateTracker> {
        Ok(StateTracker {
            cfg: cfg.clone(),
            w_ih: linear(cfg.input, 3 * cfg.hidden, vb.pp("ih"))?,
            w_hh: linear(cfg.hidden, 3 * cfg.hidden, vb.pp("hh"))?,
        })
    }

    pub fn hidden(&self) -> usize {
        self.cfg.hidden
    }

    pub fn initial(&self, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        Tensor::zeros((batch, self.cfg.hidden), candle_core::DType::F32, device)
    }

    /// One turn for a batch: features (B, F), state (B, H) → next state (B, H).
    pub fn step(&self, features: &Tensor, h: &Tensor) -> Result<Tensor> {
        gru_cell(&self.w_ih.forward(features)?, &self.w_hh.forward(h)?, h)
    }

    /// Unrolls over whole sessions. `features`: (T, B, F), time-major. Returns the states before
    /// every turn and after the last, (T + 1, B, H): row 0 is the zero state.
    pub fn unroll(&self, features: &Tensor) -> Result<Tensor> {
        let (t, b, f) = features.dims3()?;
        // Input projections of all turns in one matmul, outside the recurrence.
        let gi = self.w_ih.forward(&features.reshape((t * b, f))?)?.reshape((t, b, 3 * self.cfg.hidden))?;
        let mut h = self.initial(b, features.device())?;
        let mut states = Vec::with_capacity(t + 1);
        states.push(h.clone());
        for step in 0..t {
            h = gru_cell(&gi.get(step)?, &self.w_hh.forward(&h)?, &h)?;
            states.push(h.clone());
        }
        Tensor::stack(&states, 0)
    }
}
