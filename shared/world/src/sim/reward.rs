//! The paper's reward: r = 1 − (1 − λ)·‖v(a) − v(a*)‖₂ − λ·‖attr(a) − attr(a*)‖₀, and −3 more on the
//! last turn of a session that never found its item.

use serde::{Deserialize, Serialize};

/// Reward and session-length settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardConfig {
    /// λ: weight of the attribute term against the visual term (dimensionless, paper: 0.5).
    pub lambda: f32,
    /// Added to the last turn's reward of a failed session (paper: −3).
    pub failure_penalty: f32,
    /// Turns before a session is cut off as failed (paper: 50).
    pub max_turns: usize,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig { lambda: 0.5, failure_penalty: -3.0, max_turns: 50 }
    }
}

impl RewardConfig {
    /// One turn's reward from the visual distance and the attribute L0 distance of shown vs target.
    pub fn turn_reward(&self, visual_distance: f32, attribute_l0: u32) -> f32 {
        1.0 - (1.0 - self.lambda) * visual_distance - self.lambda * attribute_l0 as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_rewards() {
        let c = RewardConfig::default();
        assert_eq!(c.turn_reward(0.0, 0), 1.0);
        // 1 − 0.5·0.8 − 0.5·2 = −0.4
        assert!((c.turn_reward(0.8, 2) - (-0.4)).abs() < 1e-6);
        // 1 − 0.5·2 − 0.5·6 = −3
        assert!((c.turn_reward(2.0, 6) - (-3.0)).abs() < 1e-6);
    }
}
