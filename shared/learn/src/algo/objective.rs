//! The reward the learners optimise, as opposed to the reward a device logs.
//!
//! Devices log the paper's per-turn reward r = 1 − (1 − λ)·‖v(a) − v(a*)‖₂ − λ·‖attr(a) − attr(a*)‖₀
//! (−3 more on the last turn of a failed session). With unit-norm visual features that formula does
//! not make finishing pay: a near miss (one attribute off, distance ≈ 0.9) earns ≈ +0.05 every
//! turn, and a success turn earns 0–0.6 and ends the session, so from about turn 5 on, staying near
//! the target for the remaining turns is worth as much as finishing, and an entropy bonus in the
//! backup tips it towards prolonging (docs/results.md, "The objective"). What the study measures
//! is SR@K and NI, the number of turns to success. [`Objective::TurnCost`] is that measure as a
//! return: every turn that does not find the item costs the same, so a shorter session is always
//! better, whatever the items shown on the way.

use serde::{Deserialize, Serialize};

/// What a learner maximises (`objective` in the `[offline]` / `[trainer]` TOML tables).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields, try_from = "ObjectiveTable")]
pub enum Objective {
    /// The paper's reward exactly as the device logged it.
    Paper,
    /// −`cost` on every turn that does not find the item (0 on the turn that does), and
    /// `failure_penalty` more on the last turn of a session that never found it. The undiscounted
    /// return is −cost·(NI − 1) for a success after NI turns.
    TurnCost {
        /// Reward units per turn that does not end in success (> 0).
        cost: f32,
        /// Added to the last turn of a failed session, in reward units (≤ 0).
        failure_penalty: f32,
    },
}

/// The default turn cost, in reward units per turn.
const DEFAULT_COST: f32 = 0.1;

/// The TOML table an [`Objective`] is read from, so an unknown `kind` is refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectiveTable {
    kind: String,
    cost: Option<f32>,
    failure_penalty: Option<f32>,
}

impl TryFrom<ObjectiveTable> for Objective {
    type Error = String;

    fn try_from(t: ObjectiveTable) -> Result<Objective, String> {
        match t.kind.as_str() {
            "paper" if t.cost.is_none() && t.failure_penalty.is_none() => Ok(Objective::Paper),
            "paper" => Err("objective.kind = \"paper\" takes no cost or failure_penalty".into()),
            "turn_cost" => Ok(Objective::TurnCost { cost: t.cost.unwrap_or(DEFAULT_COST), failure_penalty: t.failure_penalty.unwrap_or(0.0) }),
            other => Err(format!("objective.kind: unknown objective `{other}` (known: paper, turn_cost)")),
        }
    }
}

impl Default for Objective {
    fn default() -> Self {
        Objective::turn_cost()
    }
}

/// Why an objective's settings are unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectiveError {
    #[error("cost must be a finite number > 0 (got {0})")]
    Cost(f32),
    #[error("failure_penalty must be a finite number ≤ 0 (got {0})")]
    FailurePenalty(f32),
}

impl Objective {
    /// The default learning objective: 0.1 per turn (returns within −5…0 at γ = 0.99, the scale
    /// the critics' learning rate and the CQL weight were tuned at), nothing extra for failure
    /// (a failure already costs its 50 turns, exactly as NI counts it).
    pub fn turn_cost() -> Objective {
        Objective::TurnCost { cost: DEFAULT_COST, failure_penalty: 0.0 }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Objective::Paper => "paper",
            Objective::TurnCost { .. } => "turn_cost",
        }
    }

    /// A one-line description for reports ("turn cost 0.1, failure +0").
    pub fn describe(&self) -> String {
        match self {
            Objective::Paper => "paper reward as logged".to_string(),
            Objective::TurnCost { cost, failure_penalty } => format!("turn cost {cost}, failure penalty {failure_penalty}"),
        }
    }

    /// Refuses unusable settings; `at` is this table's TOML path, named in the error.
    pub fn validate_at(&self, at: &str) -> Result<(), String> {
        self.validate().map_err(|e| format!("{at}.{e}"))
    }

    pub fn validate(&self) -> Result<(), ObjectiveError> {
        if let Objective::TurnCost { cost, failure_penalty } = *self {
            if !cost.is_finite() || cost <= 0.0 {
                return Err(ObjectiveError::Cost(cost));
            }
            if !failure_penalty.is_finite() || failure_penalty > 0.0 {
                return Err(ObjectiveError::FailurePenalty(failure_penalty));
            }
        }
        Ok(())
    }

    /// The rewards of one session's turns under this objective, from what was logged, whether
    /// the session found its item (on its last turn) and whether it ended there (a session cut
    /// short for training is not over: no failure penalty).
    pub fn rewards(&self, logged: &[f32], success: bool, ended: bool) -> Vec<f32> {
        match *self {
            Objective::Paper => logged.to_vec(),
            Objective::TurnCost { cost, failure_penalty } => {
                let n = logged.len();
                (0..n)
                    .map(|t| {
                        let last = t + 1 == n;
                        match (last, success) {
                            (true, true) => 0.0,
                            (true, false) if ended => -cost + failure_penalty,
                            _ => -cost,
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_cost_counts_turns() {
        let o = Objective::TurnCost { cost: 0.1, failure_penalty: -1.0 };
        assert_eq!(o.rewards(&[0.3, -2.0, 0.9], true, true), vec![-0.1, -0.1, 0.0]);
        assert_eq!(o.rewards(&[0.3, -2.0], false, true), vec![-0.1, -1.1]);
        assert_eq!(o.rewards(&[0.3, -2.0], false, false), vec![-0.1, -0.1], "a truncated session has not failed");
        assert_eq!(Objective::Paper.rewards(&[0.3, -2.0], false, true), vec![0.3, -2.0]);
    }

    #[test]
    fn shorter_success_is_always_better() {
        let o = Objective::turn_cost();
        let ret = |n: usize| o.rewards(&vec![0.5; n], true, true).iter().enumerate().map(|(t, r)| 0.99f32.powi(t as i32) * r).sum::<f32>();
        for n in 1..50 {
            assert!(ret(n) > ret(n + 1), "success after {n} turns must beat {}", n + 1);
        }
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        assert!(Objective::TurnCost { cost: 0.0, failure_penalty: 0.0 }.validate_at("trainer.objective").unwrap_err().contains("trainer.objective.cost"));
        assert!(Objective::TurnCost { cost: 0.1, failure_penalty: 1.0 }.validate_at("offline.objective").unwrap_err().contains("offline.objective.failure_penalty"));
        let t: toml::Table = toml::from_str("kind = \"fastest\"").unwrap();
        let e = toml::Value::Table(t).try_into::<Objective>().unwrap_err().to_string();
        assert!(e.contains("objective.kind") && e.contains("fastest"), "{e}");
        let t: toml::Table = toml::from_str("kind = \"turn_cost\"\ncost = 0.5").unwrap();
        assert_eq!(toml::Value::Table(t).try_into::<Objective>().unwrap(), Objective::TurnCost { cost: 0.5, failure_penalty: 0.0 });
    }
}
