//! The deployment gate: publish a candidate unless off-policy evaluation says, with confidence,
//! that it is worse than the deployed policy. A pure function, so the rule is tested on its own.
//!
//! The estimates are noisy (a fitted Q-function on logged data); a gate that refuses whenever the
//! candidate's point estimate is lower refuses near-ties half the time, and with them most real
//! improvements the estimate cannot resolve. So the gate refuses only a candidate whose estimate is
//! below the deployed policy's by more than the tolerance plus `z` standard errors of the difference.

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

/// How sure the gate must be before it refuses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateRule {
    /// Estimate units (expected return per session) the candidate may fall short by.
    pub tolerance: f64,
    /// Standard errors of the difference the candidate must fall short by, beyond the tolerance.
    pub z: f64,
}

/// Decides on a candidate from the two value estimates (expected return per session) and the
/// standard error of their difference (0 when unknown).
///
/// - A non-finite candidate estimate is refused: a broken evaluation must not ship a policy.
/// - With no deployed policy, or no usable estimate for it, the candidate is published.
/// - Otherwise it is published iff `candidate ≥ deployed − tolerance − z·se`.
pub fn decide(candidate: Option<f64>, deployed: Option<f64>, se: f64, rule: GateRule) -> GateVerdict {
    let se = if se.is_finite() && se > 0.0 { se } else { 0.0 };
    let margin = rule.tolerance + rule.z * se;
    let verdict = |decision, reason: String| GateVerdict { decision, reason };
    if let Some(c) = candidate.filter(|c| !c.is_finite()) {
        return verdict(Decision::Refused, format!("candidate estimate {c} is not finite"));
    }
    match (candidate, deployed) {
        (_, None) => verdict(Decision::Published, "no deployed policy to compare with".to_string()),
        (_, Some(d)) if !d.is_finite() => verdict(Decision::Published, format!("deployed estimate {d} is not finite; nothing to compare with")),
        (None, Some(_)) => verdict(Decision::Refused, "the candidate has no estimate to set against the deployed policy's".to_string()),
        (Some(c), Some(d)) if c >= d - margin => verdict(
            Decision::Published,
            format!("candidate {c:.4} ≥ deployed {d:.4} − {margin:.4} (tolerance {} + {} × se {se:.4})", rule.tolerance, rule.z),
        ),
        (Some(c), Some(d)) => verdict(
            Decision::Refused,
            format!("candidate {c:.4} < deployed {d:.4} − {margin:.4} (tolerance {} + {} × se {se:.4})", rule.tolerance, rule.z),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_unless_estimated_worse_beyond_the_tolerance() {
        let tol = |tolerance| GateRule { tolerance, z: 2.0 };
        assert_eq!(decide(Some(1.0), None, 0.0, tol(0.0)).decision, Decision::Published);
        assert_eq!(decide(Some(1.0), Some(0.5), 0.0, tol(0.0)).decision, Decision::Published);
        assert_eq!(decide(Some(1.0), Some(1.0), 0.0, tol(0.0)).decision, Decision::Published);
        assert_eq!(decide(Some(0.9), Some(1.0), 0.0, tol(0.0)).decision, Decision::Refused);
        assert_eq!(decide(Some(0.9), Some(1.0), 0.0, tol(0.1)).decision, Decision::Published);
        assert_eq!(decide(Some(0.89), Some(1.0), 0.0, tol(0.1)).decision, Decision::Refused);
        assert_eq!(decide(Some(f64::NAN), None, 0.0, tol(0.0)).decision, Decision::Refused);
        assert_eq!(decide(Some(f64::INFINITY), Some(0.0), 0.0, tol(0.0)).decision, Decision::Refused);
        assert_eq!(decide(Some(-5.0), Some(f64::NAN), 0.0, tol(0.0)).decision, Decision::Published);
        assert!(decide(Some(0.9), Some(1.0), 0.0, tol(0.0)).reason.contains("0.9000 < deployed 1.0000"));
        // Not estimated: fine with nothing deployed, refused against a deployed estimate.
        assert_eq!(decide(None, None, 0.0, tol(0.0)).decision, Decision::Published);
        assert_eq!(decide(None, Some(1.0), 0.0, tol(0.0)).decision, Decision::Refused);
    }

    #[test]
    fn refuses_only_what_is_confidently_worse() {
        let rule = GateRule { tolerance: 0.0, z: 2.0 };
        // 0.1 below with a standard error of 0.1: within noise, published.
        assert_eq!(decide(Some(0.9), Some(1.0), 0.1, rule).decision, Decision::Published);
        // 0.3 below, 3 standard errors: refused.
        assert_eq!(decide(Some(0.7), Some(1.0), 0.1, rule).decision, Decision::Refused);
        // An unusable standard error counts as none.
        assert_eq!(decide(Some(0.9), Some(1.0), f64::NAN, rule).decision, Decision::Refused);
    }
}
