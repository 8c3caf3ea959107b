//! The multi-discrete heads on top of the state: the policy (one softmax per attribute, MLP 128)
//! and the factorized Q-function Q(s, a) = Σ_d Q_d(s, a_d) (two-layer MLP of width 32), whose
//! per-head outputs make the log-sum-exp over the joint action space exact:
//! log Σ_a exp Q(s, a) = Σ_d logsumexp_a Q_d(s, a).
//! Both output one (N, Σ heads) matrix, all heads side by side.

use candle_core::{Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadsConfig {
    /// State width.
    pub input: usize,
    /// Hidden widths of the MLP trunk.
    pub hidden: Vec<usize>,
    /// Slots per action head (vocabulary + "no preference").
    pub heads: Vec<usize>,
    /// A copy path from the tracker's request memory to the matching action slots (none: the
    /// MLP alone).
    pub copy: Option<CopyPath>,
    /// Start the output layer at zero (weights and bias), so a fresh head outputs its copy path
    /// alone whatever the seed; false: random like every other layer. Not written when false, so
    /// older configs and cache keys read and hash as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_output: bool,
}

/// Adds `scale_d · memory(d, v)` to the output of slot v + 1 of head d, the request memory being
/// the state's columns from `from` on (see `tracker::RequestMemory`). One learned scale per head,
/// shared by all its values: what the policy learns from common values ("ask for what was asked
/// for") holds for a value it has seen a handful of times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyPath {
    /// First state column of the request memory.
    pub from: usize,
    /// Starting scale (output units per unit of memory).
    pub init: f64,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        HeadsConfig { input: 128, hidden: vec![128], heads: Vec::new(), copy: None, zero_output: false }
    }
}

impl HeadsConfig {
    /// The paper's policy network: MLP 128.
    pub fn policy(input: usize, heads: &[usize]) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![128], heads: heads.to_vec(), copy: None, zero_output: false }
    }

    /// The paper's reward-correction (Q) network: two layers of width 32.
    pub fn q(input: usize, heads: &[usize]) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![32, 32], heads: heads.to_vec(), copy: None, zero_output: false }
    }

    /// A state-value head (one output) for the on-policy learner.
    pub fn value(input: usize) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![64], heads: vec![1], copy: None, zero_output: false }
    }

    pub fn width(&self) -> usize {
        self.heads.iter().sum()
    }
}

/// An MLP from the state to all heads' outputs.
#[derive(Clone, Debug)]
pub struct MultiHead {
    trunk: Vec<Linear>,
    out: Linear,
    copy: Option<Copy>,
}

#[derive(Clone, Debug)]
struct Copy {
    from: usize,
    /// Memory classes in the state.
    classes: usize,
    /// (Σ heads) u32: the memory class each action slot copies, or `classes` (a zero column)
    /// for a head's "no preference" slot. A gather, not a 0/1 matmul: the same sums, without
    /// the (classes × Σ heads) multiply per row that cost as much as the trunk's first layer.
    slot_class: Tensor,
    /// (heads) learned scales, and (heads, Σ heads) spreading them over each head's slots.
    scale: Tensor,
    spread: Tensor,
}

impl MultiHead {
    pub fn new(cfg: &HeadsConfig, vb: VarBuilder) -> Result<MultiHead> {
        let mut trunk = Vec::new();
        let mut d = cfg.input;
        for (i, h) in cfg.hidden.iter().enumerate() {
            trunk.push(linear(d, *h, vb.pp(format!("l{i}")))?);
            d = *h;
        }
        let copy = match &cfg.copy {
            None => None,
            Some(c) => {
                let w = cfg.width();
                let classes: usize = cfg.heads.iter().map(|n| n.saturating_sub(1)).sum::<usize>() + 1;
                let (mut slot_class, mut spread) = (vec![classes as u32; w], vec![0f32; cfg.heads.len() * w]);
                let (mut class, mut slot) = (0, 0);
                for (d, &n) in cfg.heads.iter().enumerate() {
                    spread[d * w + slot..d * w + slot + n].iter_mut().for_each(|x| *x = 1.0);
                    for v in 0..n.saturating_sub(1) {
                        slot_class[slot + 1 + v] = (class + v) as u32;
                    }
                    class += n.saturating_sub(1);
                    slot += n;
                }
                let dev = vb.device().clone();
                Some(Copy {
                    from: c.from,
                    classes,
                    slot_class: Tensor::from_vec(slot_class, w, &dev)?,
                    scale: vb.get_with_hints(cfg.heads.len(), "copy_scale", candle_nn::Init::Const(c.init))?,
                    spread: Tensor::from_vec(spread, (cfg.heads.len(), w), &dev)?,
                })
            }
        };
        let out = if cfg.zero_output {
            let vb = vb.pp("out");
            let weight = vb.get_with_hints((cfg.width(), d), "weight", candle_nn::Init::Const(0.0))?;
            Linear::new(weight, Some(vb.get_with_hints(cfg.width(), "bias", candle_nn::Init::Const(0.0))?))
        } else {
            linear(d, cfg.width(), vb.pp("out"))?
        };
        Ok(MultiHead { trunk, out, copy })
    }

    pub fn forward(&self, state: &Tensor) -> Result<Tensor> {
        let mut x = state.clone();
        for l in &self.trunk {
            x = crate::dense::linear(&x, l)?.relu()?;
        }
        let out = crate::dense::linear(&x, &self.out)?;
        match &self.copy {
            None => Ok(out),
            Some(c) => {
                let memory = state.narrow(1, c.from, c.classes)?;
                let none = Tensor::zeros((memory.dim(0)?, 1), memory.dtype(), memory.device())?;
                let copied = Tensor::cat(&[&memory, &none], 1)?.index_select(&c.slot_class, 1)?;
                let per_slot = c.scale.unsqueeze(0)?.matmul(&c.spread)?;
                out + copied.broadcast_mul(&per_slot)?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn the_copy_path_adds_each_heads_scale_times_the_remembered_request_to_its_slot() {
        // Two heads of 3 and 2 slots: memory classes 0,1 → head 0 slots 1,2; class 2 → head 1 slot 1.
        let store = ParamStore::new(5, &Device::Cpu);
        let cfg = HeadsConfig { input: 4 + 4, hidden: vec![3], heads: vec![3, 2], copy: Some(CopyPath { from: 4, init: 2.0 }), zero_output: false };
        let heads = MultiHead::new(&cfg, store.builder().pp("h")).unwrap();
        let plain = MultiHead { copy: None, ..heads.clone() };
        let state: Vec<f32> = vec![0.1, -0.2, 0.3, 0.4, 0.5, 0.25, 1.0, 9.0, -0.3, 0.2, 0.0, 0.6, 0.0, 0.75, 0.5, 9.0];
        let state = Tensor::from_vec(state, (2, 8), &Device::Cpu).unwrap();
        let added = (heads.forward(&state).unwrap() - plain.forward(&state).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        // The memory's last column (class 3) has no slot: its 9.0 must go nowhere.
        let want = [[0.0, 1.0, 0.5, 0.0, 2.0], [0.0, 0.0, 1.5, 0.0, 1.0]];
        for (got, want) in added.iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{added:?} vs {want:?}");
            }
        }
        // The scales learn: d(sum of outputs)/d(scale_d) is head d's remembered mass.
        let grads = heads.forward(&state).unwrap().sum_all().unwrap().backward().unwrap();
        let scale = store.named_vars("h.").into_iter().find(|(k, _)| k.ends_with("copy_scale")).unwrap().1;
        let g = grads.get(scale.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 1.5).abs() < 1e-6 && (g[1] - 1.5).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn a_zero_output_head_starts_as_its_copy_path_alone_and_still_learns() {
        let cfg = HeadsConfig { input: 4 + 4, hidden: vec![16], heads: vec![3, 2], copy: Some(CopyPath { from: 4, init: 2.0 }), zero_output: true };
        let state: Vec<f32> = vec![0.1, -0.2, 0.3, 0.4, 0.5, 0.25, 1.0, 9.0];
        let state = Tensor::from_vec(state, (1, 8), &Device::Cpu).unwrap();
        // Any seed: the memory (0.5, 0.25 | 1.0) times the scale 2, nothing else.
        for seed in [1, 2] {
            let store = ParamStore::new(seed, &Device::Cpu);
            let heads = MultiHead::new(&cfg, store.builder().pp("h")).unwrap();
            let out = heads.forward(&state).unwrap();
            assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![0.0, 1.0, 0.5, 0.0, 2.0]]);
            // The output layer gets gradients (bias: one per slot; weights: the trunk's
            // activations), so training moves the head off its prior.
            let grads = out.sum_all().unwrap().backward().unwrap();
            let var = |name: &str| store.named_vars("h.out.").into_iter().find(|(k, _)| k.ends_with(name)).unwrap().1;
            let gb = grads.get(var("bias").as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(gb, vec![1.0; 5]);
            let gw = grads.get(var("weight").as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            assert!(gw.iter().flatten().any(|x| *x != 0.0), "{gw:?}");
        }
    }
}
