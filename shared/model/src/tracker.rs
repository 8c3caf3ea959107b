//! The state tracker (paper): a GRU over per-turn features (text embedding ⊕ visual feature of the
//! shown item ⊕ its attribute probabilities). The state before turn 1 is zero.

use super::gru_sequence::gru_sequence;
use super::kernels::gru_cell;
use candle_core::{Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackerConfig {
    /// Width of a turn feature.
    pub input: usize,
    /// GRU hidden width.
    pub hidden: usize,
    /// A request memory beside the GRU (none: the GRU state alone, the paper's tracker).
    pub memory: Option<RequestMemory>,
}

/// The columns of a turn feature that hold the text classifier's probabilities, kept as a
/// running maximum over the session's turns: what the user has asked for so far, exactly, however
/// long ago. A user's wishes do not change within a session, so once asked for, a value stays
/// wanted; a GRU has to learn to keep that for up to 50 turns, and forgets rare values first
/// (docs/results.md, "What the learned policies got wrong").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestMemory {
    /// First column of the probabilities in a turn feature.
    pub offset: usize,
    /// Their number (every (attribute, value) in head order, then "Good").
    pub classes: usize,
    /// How many askings of one value count. 1 (the default): a running maximum, asked or not.
    /// k > 1: a running sum of the probabilities, capped at k, so a value asked for again weighs
    /// more. A user repeats a wish when the item shown lacks it, which is the turn a learned
    /// policy that let its own preference override the memory needs the memory to win. Measured
    /// worse than the maximum (docs/results.md, "Two new switches, both opt-in"), so off.
    #[serde(default = "RequestMemory::once", skip_serializing_if = "RequestMemory::is_once")]
    pub repeats: f32,
}

impl RequestMemory {
    fn once() -> f32 {
        1.0
    }

    fn is_once(k: &f32) -> bool {
        *k <= 1.0
    }

    /// The memory after a turn whose probabilities are `now`, from `seen` before it.
    fn update(&self, seen: f32, now: f32) -> f32 {
        if Self::is_once(&self.repeats) {
            seen.max(now)
        } else {
            (seen + now).min(self.repeats)
        }
    }

    /// [`RequestMemory::update`] on tensors, for one turn of a batch.
    fn update_tensor(&self, seen: &Tensor, now: &Tensor) -> Result<Tensor> {
        if Self::is_once(&self.repeats) {
            seen.maximum(now)
        } else {
            (seen + now)?.clamp(0f32, self.repeats)
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { input: 0, hidden: 128, memory: None }
    }
}

impl TrackerConfig {
    /// Width of the state: the GRU's, then the request memory's.
    pub fn state_width(&self) -> usize {
        self.hidden + self.memory.as_ref().map_or(0, |m| m.classes)
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

    /// Width of the state (GRU hidden and request memory).
    pub fn hidden(&self) -> usize {
        self.cfg.state_width()
    }

    pub fn initial(&self, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        Tensor::zeros((batch, self.cfg.state_width()), candle_core::DType::F32, device)
    }

    /// One turn for a batch: features (B, F), state (B, H) → next state (B, H).
    pub fn step(&self, features: &Tensor, state: &Tensor) -> Result<Tensor> {
        let h = state.narrow(1, 0, self.cfg.hidden)?;
        let next = gru_cell(&crate::dense::linear(features, &self.w_ih)?, &crate::dense::linear(&h, &self.w_hh)?, &h)?;
        match &self.cfg.memory {
            None => Ok(next),
            Some(m) => {
                let seen = state.narrow(1, self.cfg.hidden, m.classes)?;
                let now = features.narrow(1, m.offset, m.classes)?;
                Tensor::cat(&[&next, &m.update_tensor(&seen, &now)?], 1)
            }
        }
    }

    /// The request memory before every turn and after the last, (T + 1, B, classes), from the
    /// turn features (T, B, F): zero before turn 1, then [`RequestMemory::update`] turn by turn.
    fn memory_unroll(&self, features: &Tensor, m: &RequestMemory) -> Result<Tensor> {
        let (t, b, _) = features.dims3()?;
        let cols = features.narrow(2, m.offset, m.classes)?.to_vec3::<f32>()?;
        let mut out = vec![0f32; (t + 1) * b * m.classes];
        for step in 0..t {
            for (col, row) in cols[step].iter().enumerate() {
                let prev = step * b * m.classes + col * m.classes;
                let next = (step + 1) * b * m.classes + col * m.classes;
                for (c, p) in row.iter().enumerate() {
                    out[next + c] = m.update(out[prev + c], *p);
                }
            }
        }
        Tensor::from_vec(out, (t + 1, b, m.classes), features.device())
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
        let gru = self.gru_unroll(features)?;
        match &self.cfg.memory {
            None => Ok(gru),
            Some(m) => Tensor::cat(&[&gru, &self.memory_unroll(features, m)?], 2),
        }
    }

    fn gru_unroll(&self, features: &Tensor) -> Result<Tensor> {
        let (t, b, f) = features.dims3()?;
        if matches!(features.device(), candle_core::Device::Cpu) {
            let gi = crate::dense::linear(&features.reshape((t * b, f))?, &self.w_ih)?.reshape((t, b, 3 * self.cfg.hidden))?;
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
            h = self.step(&features.get(step)?, &h)?;
            states.push(h.clone());
        }
        Tensor::stack(&states, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn fused_unroll_matches_stepwise_in_value_and_gradient() {
        let store = ParamStore::new(3, &Device::Cpu);
        let memory = Some(RequestMemory { offset: 2, classes: 3, repeats: 1.0 });
        let tracker = StateTracker::new(&TrackerConfig { input: 6, hidden: 5, memory }, store.builder().pp("t")).unwrap();
        let x: Vec<f32> = (0..4 * 3 * 6).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
        let x = Tensor::from_vec(x, (4, 3, 6), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..5 * 3 * 8).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
        let w = Tensor::from_vec(w, (5, 3, 8), &Device::Cpu).unwrap();
        let a = tracker.unroll(&x).unwrap();
        let b = tracker.unroll_stepwise(&x).unwrap();
        let diff = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "values differ by {diff}");
        // The memory columns are the running maximum of the feature columns 2..5, zero at first.
        let states = a.to_vec3::<f32>().unwrap();
        let xs = x.to_vec3::<f32>().unwrap();
        for b in 0..3 {
            for c in 0..3 {
                assert_eq!(states[0][b][5 + c], 0.0);
                let mut m = 0f32;
                for t in 0..4 {
                    m = m.max(xs[t][b][2 + c]);
                    assert_eq!(states[t + 1][b][5 + c], m, "turn {t}, session {b}, class {c}");
                }
            }
        }
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in store.vars("t.") {
            let (x, y) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            let d = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }

    #[test]
    fn a_counted_memory_adds_each_asking_up_to_its_cap_in_both_unrolls() {
        let store = ParamStore::new(3, &Device::Cpu);
        let memory = Some(RequestMemory { offset: 1, classes: 2, repeats: 2.0 });
        let tracker = StateTracker::new(&TrackerConfig { input: 3, hidden: 2, memory }, store.builder().pp("t")).unwrap();
        // One session, four turns: class 0 asked for at turns 1, 3 and 4 (0.9 each), class 1 once.
        let x: Vec<f32> = vec![0.5, 0.9, 0.0, -0.5, 0.0, 0.7, 0.2, 0.9, 0.0, 0.1, 0.9, 0.0];
        let x = Tensor::from_vec(x, (4, 1, 3), &Device::Cpu).unwrap();
        let expected = [[0.0, 0.0], [0.9, 0.0], [0.9, 0.7], [1.8, 0.7], [2.0, 0.7]];
        for states in [tracker.unroll(&x).unwrap(), tracker.unroll_stepwise(&x).unwrap()] {
            let s = states.to_vec3::<f32>().unwrap();
            for (t, want) in expected.iter().enumerate() {
                for c in 0..2 {
                    assert!((s[t][0][2 + c] - want[c]).abs() < 1e-6, "turn {t}, class {c}: {} vs {}", s[t][0][2 + c], want[c]);
                }
            }
        }
    }
}
