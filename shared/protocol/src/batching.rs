//! When the agent cuts its finished sessions into upload batches, with no IO.
//!
//! A batch is cut as soon as `max_sessions` sessions wait; a partial batch only once the device
//! has been quiet for `linger` (no new session) or its generator is done, so a busy device sends
//! full batches and an idle one does not sit on its last sessions. While connected, batches are
//! cut within the caps the server's welcome advertises as well as the agent's own; offline, with
//! the agent's own (so a device that cannot reach the server still persists its batches).

use super::message::Welcome;
use std::time::{Duration, Instant};

/// The batching rule of one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    max_sessions: usize,
    max_bytes: usize,
    linger: Duration,
    /// When the last session was recorded.
    last_session: Instant,
    /// The caps of the current connection's welcome; `None` while disconnected.
    caps: Option<(usize, usize)>,
}

/// Cut the waiting sessions into batches of at most these sizes; `all`: the last partial batch
/// too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    pub max_sessions: usize,
    pub max_bytes: usize,
    pub all: bool,
}

impl Batching {
    /// The agent's own caps (`max_bytes`: of upload frame body). `now`: when the agent started
    /// (it counts as the last session, so sessions left from an earlier life wait one linger).
    pub fn new(max_sessions: usize, max_bytes: usize, linger: Duration, now: Instant) -> Batching {
        Batching { max_sessions: max_sessions.max(1), max_bytes, linger, last_session: now, caps: None }
    }

    /// A connection is up: cut within both our caps and the welcome's.
    pub fn connected(&mut self, welcome: &Welcome) {
        let sessions = self.max_sessions.min(welcome.max_batch_sessions.max(1) as usize);
        self.caps = Some((sessions, self.max_bytes.min(welcome.max_upload_bytes as usize)));
    }

    pub fn disconnected(&mut self) {
        self.caps = None;
    }

    pub fn on_session(&mut self, now: Instant) {
        self.last_session = now;
    }

    /// Whether to cut batches now, with `waiting` sessions not yet in one.
    pub fn poll(&self, waiting: usize, generator_done: bool, now: Instant) -> Option<Cut> {
        let (max_sessions, max_bytes) = self.caps.unwrap_or((self.max_sessions, self.max_bytes));
        if waiting == 0 {
            return None;
        }
        let all = generator_done || now >= self.last_session + self.linger;
        (waiting >= max_sessions || all).then_some(Cut { max_sessions, max_bytes, all })
    }

    /// When a partial batch becomes due, if sessions wait.
    pub fn next_wakeup(&self, waiting: usize) -> Option<Instant> {
        (waiting > 0).then_some(self.last_session + self.linger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(max_upload_bytes: u32, max_batch_sessions: u32) -> Welcome {
        Welcome { protocol_version: 1, deployed: None, max_upload_bytes, max_batch_sessions }
    }

    #[test]
    fn full_batches_at_once_partial_ones_after_the_linger_or_at_the_end() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Batching::new(4, 1 << 20, s(2), t0);
        assert_eq!(b.poll(9, false, t0), Some(Cut { max_sessions: 4, max_bytes: 1 << 20, all: false }), "offline: the agent's own caps");
        b.connected(&welcome(1 << 30, 100));
        assert_eq!(b.poll(0, false, t0), None);
        assert_eq!(b.poll(3, false, t0 + s(1)), None, "partial, still lingering");
        assert_eq!(b.poll(4, false, t0).map(|c| c.all), Some(false), "a full batch is cut at once, partial ones kept");
        b.on_session(t0 + s(1));
        assert_eq!(b.next_wakeup(3), Some(t0 + s(3)));
        assert_eq!(b.poll(3, false, t0 + Duration::from_millis(2999)), None);
        assert_eq!(b.poll(3, false, t0 + s(3)).map(|c| c.all), Some(true));
        assert_eq!(b.poll(1, true, t0).map(|c| c.all), Some(true), "a finished device sends what it has");
        b.connected(&welcome(1000, 2));
        assert_eq!(b.poll(2, false, t0), Some(Cut { max_sessions: 2, max_bytes: 1000, all: false }), "the server's caps rule");
        b.disconnected();
        assert_eq!(b.poll(9, false, t0).map(|c| c.max_sessions), Some(4), "back to its own caps");
    }
}
