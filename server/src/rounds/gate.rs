//! The deployment gate: publish a candidate unless off-policy evaluation says it is worse than
//! the deployed policy. A pure function, so the rule is tested on its own.

use serde::{Deserialize, Serialize};

/// The gate's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Published,
    Refused,
}

/// A decision with its reason, recorded with the round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    pub decision: Decision,
    pub reason: String,
}

/// Decides on a candidate from the two value estimates (expected return per session).
///
/// - A non-finite candidate estimate is refused: a broken evaluation must not ship a policy.
/// - With no deployed policy, or no usable estimate for it, the candidate is published.
/// - Otherwise it is published iff `candidate ≥ deployed − tolerance`.
pub fn decide(candidate: f64, deployed: Option<f64>, tolerance: f64) -> GateVerdict {
    let verdict = |decision, reason: String| GateVerdict { decision, reason };
    if !candidate.is_finite() {
        return verdict(Decision::Refused, format!("candidate estimate {candidate} is not finite"));
    }
    match deployed {
        None => verdict(Decision::Published, "no deployed policy to compare with".to_string()),
        Some(d) if !d.is_finite() => {
            verdict(Decision::Published, format!("deployed estimate {d} is not finite; nothing to compare with"))
        }
        Some(d) if candidate >= d - tolerance => verdict(
            Decision::Published,
            format!("candidate {candidate:.4} ≥ deployed {d:.4} − tolerance {tolerance}"),
        ),
        Some(d) => verdict(
            Decision::Refused,
            format!("candidate {candidate:.4} < deployed {d:.4} − tolerance {tolerance}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_unless_estimated_worse_beyond_the_tolerance() {
        assert_eq!(decide(1.0, None, 0.0).decision, Decision::Published);
        assert_eq!(decide(1.0, Some(0.5), 0.0).decision, Decision::Published);
        assert_eq!(decide(1.0, Some(1.0), 0.0).decision, Decision::Published);
        assert_eq!(decide(0.9, Some(1.0), 0.0).decision, Decision::Refused);
        assert_eq!(decide(0.9, Some(1.0), 0.1).decision, Decision::Published);
        assert_eq!(decide(0.89, Some(1.0), 0.1).decision, Decision::Refused);
        assert_eq!(decide(f64::NAN, None, 0.0).decision, Decision::Refused);
        assert_eq!(decide(f64::INFINITY, Some(0.0), 0.0).decision, Decision::Refused);
        assert_eq!(decide(-5.0, Some(f64::NAN), 0.0).decision, Decision::Published);
        assert!(decide(0.9, Some(1.0), 0.0).reason.contains("0.9000 < deployed 1.0000"));
    }
}
