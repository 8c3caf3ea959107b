//! What the server counts while it runs, and its Prometheus text exposition (`/metrics`).
//!
//! Counters are process-local atomics since this start (Prometheus handles restarts); what the
//! store already knows (D's size, rounds, gate decisions) is read from the live status instead of
//! being counted twice.

use crate::rounds::record::RoundStatus;
use crate::status::ServerStatus;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the ack-latency histogram, in seconds (from a request's last byte read to
/// its durable ack sent, flush included).
pub const ACK_BUCKETS_S: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Live counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    pub uploads_stored: AtomicU64,
    pub uploads_duplicate: AtomicU64,
    /// Requests refused (bad frame, bad batch, wrong round trip) or failed.
    pub requests_refused: AtomicU64,
    pub sessions_ingested: AtomicU64,
    pub turns_ingested: AtomicU64,
    pub policy_requests: AtomicU64,
    pub policy_blobs_sent: AtomicU64,
    ack_buckets: [AtomicU64; ACK_BUCKETS_S.len()],
    acks: AtomicU64,
    ack_micros_sum: AtomicU64,
}

/// A copy of the counters at one moment (what the dashboard polls).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub uploads_stored: u64,
    pub uploads_duplicate: u64,
    pub requests_refused: u64,
    pub sessions_ingested: u64,
    pub turns_ingested: u64,
    pub policy_requests: u64,
    pub policy_blobs_sent: u64,
    pub acks: u64,
    pub ack_seconds_sum: f64,
    /// Cumulative counts per bucket of [`ACK_BUCKETS_S`].
    pub ack_buckets: Vec<u64>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One durable ack sent, `latency` after its request was read.
    pub fn ack(&self, latency: Duration) {
        let s = latency.as_secs_f64();
        if let Some(i) = ACK_BUCKETS_S.iter().position(|b| s <= *b) {
            self.ack_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.acks.fetch_add(1, Ordering::Relaxed);
        self.ack_micros_sum.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut cumulative = 0;
        let ack_buckets = self
            .ack_buckets
            .iter()
            .map(|b| {
                cumulative += get(b);
                cumulative
            })
            .collect();
        MetricsSnapshot {
            uploads_stored: get(&self.uploads_stored),
            uploads_duplicate: get(&self.uploads_duplicate),
            requests_refused: get(&self.requests_refused),
            sessions_ingested: get(&self.sessions_ingested),
            turns_ingested: get(&self.turns_ingested),
            policy_requests: get(&self.policy_requests),
            policy_blobs_sent: get(&self.policy_blobs_sent),
            acks: get(&self.acks),
            ack_seconds_sum: get(&self.ack_micros_sum) as f64 / 1e6,
            ack_buckets,
        }
    }
}

impl MetricsSnapshot {
    /// The ack latency below which `q` (0–1) of the acks fell, as a bucket bound (seconds);
    /// `None` without acks.
    pub fn ack_quantile(&self, q: f64) -> Option<f64> {
        if self.acks == 0 {
            return None;
        }
        let want = (q * self.acks as f64).ceil() as u64;
        let i = self.ack_buckets.iter().position(|c| *c >= want);
        Some(i.map_or(f64::INFINITY, |i| ACK_BUCKETS_S[i]))
    }

    /// The same over the acks since `earlier` (a snapshot of the same counters, taken before).
    pub fn ack_quantile_since(&self, earlier: &MetricsSnapshot, q: f64) -> Option<f64> {
        let interval = MetricsSnapshot {
            acks: self.acks.saturating_sub(earlier.acks),
            ack_buckets: self.ack_buckets.iter().zip(earlier.ack_buckets.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a.saturating_sub(*b)).collect(),
            ..MetricsSnapshot::default()
        };
        interval.ack_quantile(q)
    }
}

struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let value = if value.is_finite() { value.to_string() } else if value > 0.0 { "+Inf".into() } else { "NaN".into() };
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// The Prometheus text format (version 0.0.4) of the counters and the status.
pub fn render(m: &MetricsSnapshot, status: &ServerStatus) -> String {
    let mut e = Exposition(String::new());
    let c = &status.counters;
    e.one("irec_d_sessions", "gauge", "Sessions in D, all rounds.", c.sessions_total as f64);
    e.one("irec_current_round", "gauge", "The round now collecting sessions.", f64::from(c.current_round));
    e.one("irec_round_sessions", "gauge", "Sessions ingested in the round now collecting.", c.round_sessions as f64);
    e.one("irec_deployed_version", "gauge", "Version of the deployed policy (0: none).", c.deployed.unwrap_or(0) as f64);
    e.one("irec_connected_agents", "gauge", "Agent connections open now.", status.connections as f64);

    e.family("irec_rounds", "gauge", "Closed rounds by status.");
    for (label, s) in [("queued", RoundStatus::Queued), ("training", RoundStatus::Training), ("published", RoundStatus::Published), ("refused", RoundStatus::Refused), ("failed", RoundStatus::Failed)] {
        let n = status.rounds.iter().filter(|r| r.status == s).count();
        e.sample("irec_rounds", &format!("status=\"{label}\""), n as f64);
    }
    e.family("irec_gate_decisions_total", "counter", "Deployment gate decisions over all rounds.");
    for (label, s) in [("published", RoundStatus::Published), ("refused", RoundStatus::Refused)] {
        let n = status.rounds.iter().filter(|r| r.status == s && r.gate.is_some()).count();
        e.sample("irec_gate_decisions_total", &format!("decision=\"{label}\""), n as f64);
    }
    let trained: Vec<_> = status.rounds.iter().filter_map(|r| r.metrics.as_ref()).collect();
    e.one("irec_training_steps_total", "counter", "Gradient steps over all trained rounds.", trained.iter().map(|m| m.steps as f64).sum());
    let rate = trained.iter().rev().find(|m| m.seconds.train > 0.0).map_or(0.0, |m| m.steps as f64 / m.seconds.train);
    e.one("irec_training_steps_per_second", "gauge", "Gradient steps per second of the latest trained round.", rate);

    e.family("irec_uploads_total", "counter", "Upload batches since this start, by outcome.");
    e.sample("irec_uploads_total", "outcome=\"stored\"", m.uploads_stored as f64);
    e.sample("irec_uploads_total", "outcome=\"duplicate\"", m.uploads_duplicate as f64);
    e.one("irec_requests_refused_total", "counter", "Requests refused or failed since this start.", m.requests_refused as f64);
    e.one("irec_sessions_ingested_total", "counter", "Sessions stored since this start.", m.sessions_ingested as f64);
    e.one("irec_turns_ingested_total", "counter", "Turns stored since this start.", m.turns_ingested as f64);
    e.one("irec_acks_total", "counter", "Durable acks sent since this start.", m.acks as f64);
    e.one("irec_policy_requests_total", "counter", "Policy requests since this start.", m.policy_requests as f64);
    e.one("irec_policy_blobs_sent_total", "counter", "Policy blobs sent since this start.", m.policy_blobs_sent as f64);

    e.family("irec_ack_latency_seconds", "histogram", "From an upload's last byte read to its durable ack sent.");
    for (b, n) in ACK_BUCKETS_S.iter().zip(&m.ack_buckets) {
        e.sample("irec_ack_latency_seconds_bucket", &format!("le=\"{b}\""), *n as f64);
    }
    e.sample("irec_ack_latency_seconds_bucket", "le=\"+Inf\"", m.acks as f64);
    e.sample("irec_ack_latency_seconds_sum", "", m.ack_seconds_sum);
    e.sample("irec_ack_latency_seconds_count", "", m.acks as f64);
    e.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn acks_land_in_cumulative_buckets_and_the_exposition_parses_line_by_line() {
        let m = Metrics::default();
        m.ack(Duration::from_micros(800));
        m.ack(Duration::from_millis(20));
        m.ack(Duration::from_secs(9));
        Metrics::add(&m.uploads_stored, 3);
        let s = m.snapshot();
        assert_eq!(s.ack_buckets[0], 1);
        assert_eq!(s.ack_buckets[4], 2);
        assert_eq!(*s.ack_buckets.last().unwrap(), 2, "9 s is beyond the last bound: only +Inf counts it");
        assert_eq!(s.ack_quantile(0.5), Some(0.025));
        assert_eq!(s.ack_quantile(1.0), Some(f64::INFINITY));
        // Over an interval: only the acks after the earlier snapshot count.
        m.ack(Duration::from_millis(90));
        let later = m.snapshot();
        assert_eq!(later.ack_quantile_since(&s, 0.99), Some(0.1));
        assert_eq!(later.ack_quantile_since(&later, 0.99), None);
        let text = render(&s, &ServerStatus::default());
        assert!(text.contains("irec_uploads_total{outcome=\"stored\"} 3\n"), "{text}");
        assert!(text.contains("irec_ack_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("irec_ack_latency_seconds_count 3\n"));
        // Every line is a comment or `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
    }
}
