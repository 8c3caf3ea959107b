//! The agent's upload machine, with no IO: which stored batch to send next, what to do with an
//! ack, a failure or a timeout. Time comes in as a parameter.
//!
//! A batch is only ever *named* here; the shell keeps its sessions in sled. The contract with the
//! shell:
//! 1. a batch is persisted (with its id) before [`Uploader::add`];
//! 2. [`Uploader::poll_send`] says which batch to send now (one stream per batch, at most
//!    `max_in_flight` at once, none while backing off or disconnected);
//! 3. it reports what came back with [`Uploader::on_reply`], which classifies it: on
//!    [`UploadStep::Acked`] the shell deletes the batch from its store, flushes, then calls
//!    [`Uploader::on_ack`]; transient failures retry the same batch id after an exponential
//!    backoff, permanent ones (the server refused its content) quarantine it, fatal ones (wrong
//!    token or version) stop the agent.

use super::backoff::Backoff;
use super::message::{Ack, BatchId, ErrorMessage, Message};
use super::reply::{Disposition, Reply};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Upload settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadConfig {
    /// Batches sent concurrently, one stream each.
    pub max_in_flight: usize,
    /// Time to wait for an ack before treating the upload as failed, in milliseconds.
    pub ack_timeout_ms: u64,
    /// Backoff after failed uploads.
    pub backoff: Backoff,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig { max_in_flight: 1, ack_timeout_ms: 10_000, backoff: Backoff::default() }
    }
}

/// How an upload failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Connection trouble, timeouts, server busy or failing: the same batch may succeed later.
    Transient,
    /// The server refused the batch's content: resending it unchanged can never succeed.
    Permanent,
}

/// What the shell must do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The batch stays queued; nothing is sent before `at`.
    RetryAt(Instant),
    /// Move the batch out of the upload queue (keep it locally for an operator to inspect).
    Quarantine,
    /// The batch was not in flight (a late report after a timeout or reconnect): nothing to do.
    Ignored,
}

/// What the shell must do with a reply to an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadStep {
    /// The server has the batch: delete it durably, then call [`Uploader::on_ack`].
    Acked(Ack),
    /// The batch stays queued; nothing is sent before `at`.
    RetryAt(Instant),
    /// Move the batch out of the upload queue (keep it locally for an operator to inspect).
    Quarantine,
    /// Stop the agent: no upload can succeed with this configuration.
    Fatal(ErrorMessage),
    /// The batch was not in flight (a late reply after a timeout or reconnect): nothing to do.
    Ignored,
}

/// What an uploader holds, without its clock: for tests and model checkers that compare states.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploaderView {
    pub queue: Vec<BatchId>,
    /// In id order.
    pub in_flight: Vec<BatchId>,
    pub connected: bool,
    pub failures: u32,
}

/// The upload queue of one agent.
#[derive(Clone, Debug)]
pub struct Uploader {
    config: UploadConfig,
    /// Persisted batches waiting to be sent, oldest first.
    queue: VecDeque<BatchId>,
    /// Batches sent on the current connection, with their ack deadline.
    in_flight: HashMap<BatchId, Instant>,
    connected: bool,
    /// Consecutive failures, reset by any ack.
    failures: u32,
    not_before: Option<Instant>,
}

impl Uploader {
    pub fn new(config: UploadConfig) -> Uploader {
        Uploader {
            config,
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            connected: false,
            failures: 0,
            not_before: None,
        }
    }

    pub fn view(&self) -> UploaderView {
        let mut in_flight: Vec<BatchId> = self.in_flight.keys().copied().collect();
        in_flight.sort_unstable();
        UploaderView { queue: self.queue.iter().copied().collect(), in_flight, connected: self.connected, failures: self.failures }
    }

    /// A batch is persisted and ready to send. Adding a known id again is a no-op.
    pub fn add(&mut self, id: BatchId) {
        if !self.queue.contains(&id) && !self.in_flight.contains_key(&id) {
            self.queue.push_back(id);
        }
    }

    /// Batches not yet acked (queued or in flight).
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing left to upload.
    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    pub fn connected(&mut self) {
        self.connected = true;
    }

    /// The connection is gone: every in-flight batch goes back to the front of the queue, in id
    /// order so a replay is deterministic. Their acks may still have been sent; resending is safe
    /// because the server dedupes by batch id.
    pub fn disconnected(&mut self) {
        self.connected = false;
        let mut back: Vec<BatchId> = self.in_flight.drain().map(|(id, _)| id).collect();
        back.sort_unstable();
        for id in back.into_iter().rev() {
            self.queue.push_front(id);
        }
    }

    /// The next batch to send now, if any: marks it in flight with its ack deadline.
    pub fn poll_send(&mut self, now: Instant) -> Option<BatchId> {
        if !self.connected || self.in_flight.len() >= self.config.max_in_flight.max(1) {
            return None;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let id = self.queue.pop_front()?;
        self.in_flight.insert(id, now + Duration::from_millis(self.config.ack_timeout_ms));
        Some(id)
    }

    /// The server acked `id` (and the shell has deleted it locally). Acks for batches that timed
    /// out, or were requeued by a reconnect, count too: the server has them.
    pub fn on_ack(&mut self, id: BatchId) {
        self.in_flight.remove(&id);
        self.queue.retain(|q| *q != id);
        self.failures = 0;
        self.not_before = None;
    }

    /// What came back for the upload of `id`. Only an ack naming `id` acks it; any other
    /// message is a transient failure, as is no answer; a refusal goes by its error code.
    pub fn on_reply(&mut self, id: BatchId, reply: Reply, now: Instant) -> UploadStep {
        if let Reply::Message(Message::Ack(ack)) = &reply {
            if ack.batch_id == id {
                return UploadStep::Acked(*ack);
            }
        }
        if let Some(e) = reply.fatal() {
            return UploadStep::Fatal(e.clone());
        }
        let failure = if reply.failure() == Disposition::Permanent { Failure::Permanent } else { Failure::Transient };
        match self.on_failure(id, failure, now) {
            AfterFailure::RetryAt(at) => UploadStep::RetryAt(at),
            AfterFailure::Quarantine => UploadStep::Quarantine,
            AfterFailure::Ignored => UploadStep::Ignored,
        }
    }

    /// Sending `id` failed.
    pub fn on_failure(&mut self, id: BatchId, failure: Failure, now: Instant) -> AfterFailure {
        if self.in_flight.remove(&id).is_none() {
            return AfterFailure::Ignored;
        }
        match failure {
            Failure::Permanent => AfterFailure::Quarantine,
            Failure::Transient => {
                self.queue.push_front(id);
                self.failures = self.failures.saturating_add(1);
                let at = now + self.config.backoff.delay(self.failures, id.0 as u64);
                self.not_before = Some(at);
                AfterFailure::RetryAt(at)
            }
        }
    }

    /// In-flight batches whose ack deadline passed; each is handled as a transient failure. The
    /// shell should abandon their streams.
    pub fn poll_timeouts(&mut self, now: Instant) -> Vec<BatchId> {
        let mut expired: Vec<BatchId> =
            self.in_flight.iter().filter(|(_, deadline)| **deadline <= now).map(|(id, _)| *id).collect();
        expired.sort_unstable();
        for id in &expired {
            self.on_failure(*id, Failure::Transient, now);
        }
        expired
    }

    /// When the shell should call in next without another event: the earliest ack deadline, or
    /// the end of the backoff when a send is waiting only for it. (Called after `poll_send` has
    /// sent what it could, so a backoff end in the past never comes back here as a busy loop.)
    pub fn next_wakeup(&self) -> Option<Instant> {
        let deadline = self.in_flight.values().min().copied();
        let can_send = self.connected && !self.queue.is_empty() && self.in_flight.len() < self.config.max_in_flight.max(1);
        let retry = if can_send { self.not_before } else { None };
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_in_flight: usize) -> UploadConfig {
        UploadConfig { max_in_flight, ack_timeout_ms: 1000, backoff: Backoff { base_ms: 100, max_ms: 800 } }
    }

    #[test]
    fn sends_in_order_one_in_flight_and_forgets_on_ack() {
        let t0 = Instant::now();
        let mut u = Uploader::new(cfg(1));
        u.add(BatchId(1));
        u.add(BatchId(2));
        u.add(BatchId(1));
        assert_eq!(u.pending(), 2);
        assert_eq!(u.poll_send(t0), None, "nothing is sent while disconnected");
        u.connected();
        assert_eq!(u.poll_send(t0), Some(BatchId(1)));
        assert_eq!(u.poll_send(t0), None, "one in flight at a time");
        u.on_ack(BatchId(1));
        assert_eq!(u.poll_send(t0), Some(BatchId(2)));
        u.on_ack(BatchId(2));
        assert!(u.is_idle());
        assert_eq!(u.next_wakeup(), None);
    }

    #[test]
    fn transient_failures_retry_the_same_id_after_a_growing_backoff() {
        let t0 = Instant::now();
        let mut u = Uploader::new(cfg(1));
        u.connected();
        u.add(BatchId(7));
        let mut now = t0;
        let mut last_delay = Duration::ZERO;
        for _ in 0..3 {
            assert_eq!(u.poll_send(now), Some(BatchId(7)));
            let AfterFailure::RetryAt(at) = u.on_failure(BatchId(7), Failure::Transient, now) else {
                panic!("a transient failure must be retried")
            };
            assert_eq!(u.poll_send(at - Duration::from_millis(1)), None, "backing off");
            assert_eq!(u.next_wakeup(), Some(at));
            assert!(at - now >= last_delay / 2, "delays grow (up to jitter)");
            last_delay = at - now;
            now = at;
        }
        assert_eq!(u.poll_send(now), Some(BatchId(7)));
        u.on_ack(BatchId(7));
        u.add(BatchId(8));
        assert_eq!(u.poll_send(now), Some(BatchId(8)), "an ack resets the backoff");
    }

    #[test]
    fn timeouts_and_disconnects_requeue_and_late_acks_still_count() {
        let t0 = Instant::now();
        let mut u = Uploader::new(cfg(2));
        u.connected();
        for i in 1..=3 {
            u.add(BatchId(i));
        }
        assert_eq!(u.poll_send(t0), Some(BatchId(1)));
        assert_eq!(u.poll_send(t0), Some(BatchId(2)));
        assert_eq!(u.poll_send(t0), None);
        assert_eq!(u.next_wakeup(), Some(t0 + Duration::from_millis(1000)), "full: only the ack deadline matters");
        assert!(u.poll_timeouts(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(u.poll_timeouts(t0 + Duration::from_millis(1000)), vec![BatchId(1), BatchId(2)]);
        assert_eq!(u.pending(), 3);
        // The ack of a timed-out upload arrives after all: the batch is done.
        u.on_ack(BatchId(2));
        assert_eq!(u.pending(), 2);
        assert_eq!(u.on_failure(BatchId(2), Failure::Transient, t0), AfterFailure::Ignored);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(u.poll_send(later), Some(BatchId(1)));
        u.disconnected();
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.poll_send(later), None);
        u.connected();
        assert_eq!(u.poll_send(later), Some(BatchId(1)), "requeued at the front");
    }

    #[test]
    fn a_past_backoff_does_not_wake_a_full_uploader() {
        let t0 = Instant::now();
        let mut u = Uploader::new(cfg(1));
        u.connected();
        u.add(BatchId(1));
        u.add(BatchId(2));
        assert_eq!(u.poll_send(t0), Some(BatchId(1)));
        let AfterFailure::RetryAt(at) = u.on_failure(BatchId(1), Failure::Transient, t0) else { panic!() };
        let later = at + Duration::from_millis(1);
        assert_eq!(u.poll_send(later), Some(BatchId(1)));
        assert_eq!(u.next_wakeup(), Some(later + Duration::from_millis(1000)), "the ack deadline, not the past backoff");
    }

    #[test]
    fn permanent_failures_quarantine() {
        let t0 = Instant::now();
        let mut u = Uploader::new(cfg(1));
        u.connected();
        u.add(BatchId(3));
        assert_eq!(u.poll_send(t0), Some(BatchId(3)));
        assert_eq!(u.on_failure(BatchId(3), Failure::Permanent, t0), AfterFailure::Quarantine);
        assert!(u.is_idle());
    }
}
