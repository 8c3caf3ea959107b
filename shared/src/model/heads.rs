//! The multi-discrete heads on top of the state: the policy (one softmax per attribute, MLP 128)
//! and the factorized Q-function Q(s, a) = Σ_d Q_d(s, a_d) (two-layer MLP of width 32), whose
//! per-head outputs make the log-sum-exp over the joint action space exact:
//! log Σ_a exp Q(s, a) = Σ_d logsumexp_a Q_d(s, a).
//! Both output one (N, Σ heads) matrix, all heads side by side.

use candle_core::{Module, Result, Tensor};
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
}

impl Default for HeadsConfig {
    fn default() -> Self {
        HeadsConfig { input: 128, hidden: vec![128], heads: Vec::new() }
    }
}

impl HeadsConfig {
    /// The paper's policy network: MLP 128.
    pub fn policy(input: usize, heads: &[usize]) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![128], heads: heads.to_vec() }
    }

    /// The paper's reward-correction (Q) network: two layers of width 32.
    pub fn q(input: usize, heads: &[usize]) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![32, 32], heads: heads.to_vec() }
    }

    /// A state-value head (one output) for the on-policy learner.
    pub fn value(input: usize) -> HeadsConfig {
        HeadsConfig { input, hidden: vec![64], heads: vec![1] }
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
}

impl MultiHead {
    pub fn new(cfg: &HeadsConfig, vb: VarBuilder) -> Result<MultiHead> {
        let mut trunk = Vec::new();
        let mut d = cfg.input;
        for (i, h) in cfg.hidden.iter().enumerate() {
            trunk.push(linear(d, *h, vb.pp(format!("l{i}")))?);
            d = *h;
        }
        Ok(MultiHead { trunk, out: linear(d, cfg.width(), vb.pp("out"))? })
    }

    pub fn forward(&self, state: &Tensor) -> Result<Tensor> {
        let mut x = state.clone();
        for l in &self.trunk {
            x = l.forward(&x)?.relu()?;
        }
        self.out.forward(&x)
    }
}
