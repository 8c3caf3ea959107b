//! Conservative Q-learning, CQL(H), on top of discrete SAC (the paper's offline row, eq. 6–7).
//!
//! The critic loss gains α·(log Σ_a exp Q(s, a) − Q(s, a_data)): it pushes down the soft maximum of
//! Q over all actions and up on the logged ones, so actions the data never shows cannot look better
//! than they are. With the factorized Q the joint log-sum-exp is exact and cheap:
//! log Σ_a exp Σ_d Q_d(s, a_d) = Σ_d logsumexp Q_d(s, ·). The penalty is the `cql` term of
//! `irec_model::head_losses::critic_terms`, fused with the TD error on the CPU.

use super::sac::{DiscreteSac, SacConfig};
use super::PerceptionWeights;
use irec_model::Checkpoint;
use candle_core::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CqlConfig {
    /// α: weight of the conservative penalty against the Bellman error (dimensionless).
    pub alpha: f64,
}

impl Default for CqlConfig {
    fn default() -> Self {
        CqlConfig { alpha: 1.0 }
    }
}

impl CqlConfig {
    /// Refuses a weight that is not a finite number ≥ 0; `at` is this table's TOML path.
    pub fn validate(&self, at: &str) -> std::result::Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!("{at}.alpha must be a finite number ≥ 0 (got {})", self.alpha));
        }
        Ok(())
    }
}

/// CQL(H) + discrete SAC.
pub fn cql_sac(perception: &PerceptionWeights, seed: u64, sac: &SacConfig, cql: &CqlConfig, init: Option<&Checkpoint>) -> Result<DiscreteSac> {
    DiscreteSac::new(perception, seed, sac, Some(cql.clone()), init)
}

/// Discrete SAC without correction (the paper's off-policy row).
pub fn off_policy_sac(perception: &PerceptionWeights, seed: u64, sac: &SacConfig, init: Option<&Checkpoint>) -> Result<DiscreteSac> {
    DiscreteSac::new(perception, seed, sac, None, init)
}
