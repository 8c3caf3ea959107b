//! The state tracker (paper): a GRU over per-turn features (text embedding ⊕ visual feature of the
//! shown item ⊕ its attribute probabilities). The state before turn 1 is zero.

use super::gru_sequence::gru_sequence;
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

    /// Unrolls over whole sessions. `features`: (T, B, F), time-major, plain data (no gradient
    /// flows into it). Returns the states before every turn and after the last, (T + 1, B, H):
    /// row 0 is the zero state.
    ///
    /// On the CPU the input projection of all turns is one matmul and the recurrence one fused op
    /// (see `gru_sequence`). Elsewhere the projection is taken per turn rather than as one matmul
    /// sliced per step: the gradient of a slice is materialised at full size in candle, which would
    /// make the backward pass quadratic in T.
    pub fn unroll(&self, features: &Tensor) -> Result<Tensor> {
        let (t, b, f) = features.dims3()?;
        if matches!(features.device(), candle_core::Device::Cpu) {
            let gi = self.w_ih.forward(&features.reshape((t * b, f))?)?.reshape((t, b, 3 * self.cfg.hidden))?;
            let bias = match self.w_hh.bias() {
                Some(bias) => bias.clone(),
                None => Tensor::zeros(3 * self.cfg.hidden, features.dtype(), features.device())?,
            };
            return gru_sequence(&gi, self.w_hh.weight(), &bias);
        }
        self.unroll_stepwise(features)
    }

    /// [`StateTracker::unroll`] as composed per-step ops (any device).
    pub fn unroll_stepwise(&self, features: &Tensor) -> Result<Tensor> {
        let (t, b, _) = features.dims3()?;
        let mut h = self.initial(b, features.device())?;
        let mut states = Vec::with_capacity(t + 1);
        states.push(h.clone());
        for step in 0..t {
            let gi = self.w_ih.forward(&features.get(step)?)?;
            h = gru_cell(&gi, &self.w_hh.forward(&h)?, &h)?;
            states.push(h.clone());
        }
        Tensor::stack(&states, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn fused_unroll_matches_stepwise_in_value_and_gradient() {
        let store = ParamStore::new(3, &Device::Cpu);
        let tracker = StateTracker::new(&TrackerConfig { input: 6, hidden: 5 }, store.builder().pp("t")).unwrap();
        let x: Vec<f32> = (0..4 * 3 * 6).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
        let x = Tensor::from_vec(x, (4, 3, 6), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..5 * 3 * 5).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
        let w = Tensor::from_vec(w, (5, 3, 5), &Device::Cpu).unwrap();
        let a = tracker.unroll(&x).unwrap();
        let b = tracker.unroll_stepwise(&x).unwrap();
        let diff = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "values differ by {diff}");
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in store.vars("t.") {
            let (x, y) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            let d = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }
}
