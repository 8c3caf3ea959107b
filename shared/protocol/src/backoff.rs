//! Exponential backoff with deterministic jitter, shared by reconnects and upload retries, and
//! the agent's reconnect machine.

use irec_world::rng;
use serde::{Deserialize, Serialize};
use super::message::ErrorMessage;
use super::reply::Reply;
use std::time::{Duration, Instant};

/// Delay after the `n`-th consecutive failure: `base · 2^(n−1)`, capped at `max`, then scaled by a
/// jitter factor in [0.5, 1) drawn from a caller-given key — so a thousand agents that failed
/// together do not all come back in the same millisecond, yet a test replays exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// Delay after the first failure, in milliseconds.
    pub base_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base_ms: 200, max_ms: 10_000 }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (0 failures: no delay).
    pub fn delay(&self, failures: u32, jitter_key: u64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = failures.saturating_sub(1).min(32);
        let raw = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        // 53 random bits → a fraction in [0, 1).
        let u = (rng::derive(jitter_key, failures as u64) >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_micros((raw as f64 * 1000.0 * (0.5 + 0.5 * u)) as u64)
    }
}

/// When the agent connects again. A lost connection waits one backoff step (so a thousand agents
/// whose server restarted come back spread over the jitter, not at once); each failed attempt
/// in a row doubles the wait; a fatal refusal (wrong token or version) stops retrying for good.
#[derive(Clone, Debug)]
pub struct Reconnect {
    backoff: Backoff,
    /// The device's jitter key: different devices draw different delays, a replay the same.
    key: u64,
    failures: u32,
}

impl Reconnect {
    pub fn new(backoff: Backoff, key: u64) -> Reconnect {
        Reconnect { backoff, key, failures: 0 }
    }

    /// A welcome arrived.
    pub fn on_connected(&mut self) {
        self.failures = 0;
    }

    /// An established connection ended: when to try again.
    pub fn on_lost(&mut self, now: Instant) -> Instant {
        self.failures = 1;
        now + self.backoff.delay(self.failures, self.key)
    }

    /// An attempt failed with `reply`: when to try again, or the error that ends the agent.
    pub fn on_failed(&mut self, reply: &Reply, now: Instant) -> Result<Instant, ErrorMessage> {
        if let Some(e) = reply.fatal() {
            return Err(e.clone());
        }
        self.failures = self.failures.saturating_add(1);
        Ok(now + self.backoff.delay(self.failures, self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_caps_and_jitters_within_half() {
        let b = Backoff { base_ms: 100, max_ms: 1000 };
        assert_eq!(b.delay(0, 1), Duration::ZERO);
        for (n, raw) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let d = b.delay(n, 9).as_secs_f64() * 1000.0;
            assert!(d >= raw as f64 * 0.5 && d < raw as f64, "failure {n}: {d} ms");
        }
        assert_eq!(b.delay(3, 9), b.delay(3, 9));
        assert_ne!(b.delay(3, 9), b.delay(3, 10));
    }
}
