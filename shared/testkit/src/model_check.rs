//! Exactly-once, checked for every interleaving up to a bound: an exhaustive search over the
//! upload / ack / dedupe / delete-after-ack protocol.
//!
//! The agent's [`Uploader`] and the server's [`ServerConnection`] are the real IO-free machines;
//! the two stores are modelled by their contracts (what survives a crash is exactly what their
//! sled transactions and flushes make durable: the agent's unbatched sessions and batches, the
//! server's D and dedupe set), and the network is a bag of messages on the current connection.
//! From the initial state the search takes every enabled step: a session recorded, a batch cut
//! (at any moment: the linger is a timing choice), a send, a delivery of any message in flight
//! (so any order), a timeout, a message lost or duplicated, either side crashing, a reconnect.
//! Faults draw from budgets ([`Bound`]), which keeps the space finite. Visited states are
//! deduplicated (the clock is not part of a state: every time-gated step may move it forward).
//!
//! In every state: no session is stored twice, and no recorded session is missing from both the
//! agent's store and D (so an acked session is in D). From every state, the network healed and
//! the faults stopped, a fair run ends with every session in D exactly once and the agent's
//! store empty.

use irec_protocol::experience::{ExperienceSession, ExperienceTurn};
use irec_protocol::*;
use irec_world::catalog::{Action, Schema};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far the search goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Sessions the agent records.
    pub sessions: u32,
    /// Most sessions per batch.
    pub batch_size: usize,
    /// Batches in flight at once (more than one lets replies overtake each other).
    pub max_in_flight: usize,
    /// Messages the network may lose.
    pub losses: u8,
    /// Messages the network may deliver twice.
    pub duplications: u8,
    /// Ack timeouts that may fire (spurious or not).
    pub timeouts: u8,
    pub agent_crashes: u8,
    pub server_crashes: u8,
}

impl Bound {
    /// Small enough for CI (a few seconds on one core).
    pub const CI: Bound = Bound { sessions: 3, batch_size: 2, max_in_flight: 2, losses: 1, duplications: 1, timeouts: 1, agent_crashes: 1, server_crashes: 1 };
}

/// What the search found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct states reached.
    pub states: usize,
    /// Steps taken (edges, including those into states seen before).
    pub transitions: usize,
    /// Broken promises, each with the steps that lead to it (empty: none).
    pub violations: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    /// A batch and its sessions, as the upload frame carries them.
    Upload(BatchId, Vec<u32>),
    /// An ack: batch id, sessions stored, duplicate.
    Ack(BatchId, u32, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Budgets {
    losses: u8,
    duplications: u8,
    timeouts: u8,
    agent_crashes: u8,
    server_crashes: u8,
}

#[derive(Clone)]
struct State {
    now: Instant,
    // The agent: durable.
    recorded: u32,
    unbatched: BTreeSet<u32>,
    batches: BTreeMap<BatchId, Vec<u32>>,
    next_batch: u128,
    // The agent: volatile.
    uploader: Uploader,
    // The server: durable.
    d: BTreeMap<u32, u8>,
    seen: BTreeSet<BatchId>,
    // The connection (volatile on both sides) and what is in flight on it.
    conn: Option<ServerConnection>,
    net: Vec<Msg>,
    budgets: Budgets,
    /// The kind of the step that led here (the healing run picks steps by kind).
    last: Option<Step>,
    trace: Vec<String>,
}

/// What a step was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Record,
    Cut,
    Connect,
    Send,
    Deliver,
    Fault,
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    recorded: u32,
    unbatched: BTreeSet<u32>,
    batches: BTreeMap<BatchId, Vec<u32>>,
    next_batch: u128,
    uploader: UploaderView,
    d: BTreeMap<u32, u8>,
    seen: BTreeSet<BatchId>,
    connected: bool,
    net: Vec<Msg>,
    budgets: Budgets,
}

struct Checker {
    bound: Bound,
    rules: Arc<ServerRules>,
    config: UploadConfig,
}

const TOKEN: &str = "model-check";

fn session(id: u32) -> ExperienceSession {
    let turn = ExperienceTurn { action: Action::default(), shown: id, utterance: "Good".into(), reward: 1.0, done: true };
    ExperienceSession { round: 0, turns: vec![turn] }
}

impl State {
    fn key(&self) -> Key {
        let mut net = self.net.clone();
        net.sort();
        Key {
            recorded: self.recorded,
            unbatched: self.unbatched.clone(),
            batches: self.batches.clone(),
            next_batch: self.next_batch,
            uploader: self.uploader.view(),
            d: self.d.clone(),
            seen: self.seen.clone(),
            connected: self.conn.is_some(),
            net,
            budgets: self.budgets,
        }
    }

    fn step(&mut self, kind: Step, what: String) {
        self.last = Some(kind);
        self.trace.push(what);
    }
}

impl Checker {
    fn initial(&self) -> State {
        let b = self.bound;
        State {
            now: Instant::now(),
            recorded: 0,
            unbatched: BTreeSet::new(),
            batches: BTreeMap::new(),
            next_batch: 1,
            uploader: Uploader::new(self.config),
            d: BTreeMap::new(),
            seen: BTreeSet::new(),
            conn: None,
            net: Vec::new(),
            budgets: Budgets { losses: b.losses, duplications: b.duplications, timeouts: b.timeouts, agent_crashes: b.agent_crashes, server_crashes: b.server_crashes },
            last: None,
            trace: Vec::new(),
        }
    }

    /// Every state one step away, with the faults allowed when `faults`.
    fn successors(&self, s: &State, faults: bool) -> Vec<State> {
        let mut out = Vec::new();
        if s.recorded < self.bound.sessions {
            let mut n = s.clone();
            n.unbatched.insert(n.recorded);
            n.recorded += 1;
            n.step(Step::Record, format!("record session {}", s.recorded));
            out.push(n);
        }
        if !s.unbatched.is_empty() {
            // One transaction: the sessions leave `unbatched` and become a batch with a fresh id.
            let mut n = s.clone();
            let take: Vec<u32> = n.unbatched.iter().copied().take(self.bound.batch_size).collect();
            for t in &take {
                n.unbatched.remove(t);
            }
            let id = BatchId(n.next_batch);
            n.next_batch += 1;
            n.batches.insert(id, take.clone());
            n.uploader.add(id);
            n.step(Step::Cut, format!("cut batch {} of {take:?}", id.0));
            out.push(n);
        }
        if s.conn.is_none() {
            let mut n = s.clone();
            let mut conn = ServerConnection::new(self.rules.clone());
            let hello = Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: TOKEN.into(), world: None });
            if conn.on_hello(Ok(hello), None).is_ok() {
                n.conn = Some(conn);
                n.uploader.connected();
                n.step(Step::Connect, "connect".into());
                out.push(n);
            }
        }
        if let Some(n) = self.send(s) {
            out.push(n);
        }
        for (i, m) in s.net.iter().enumerate() {
            if s.net[..i].contains(m) {
                continue; // the same message twice in the bag: one delivery covers both
            }
            let mut n = s.clone();
            n.net.remove(i);
            self.deliver(&mut n, m.clone());
            out.push(n);
            if faults && s.budgets.losses > 0 {
                let mut n = s.clone();
                n.net.remove(i);
                n.budgets.losses -= 1;
                n.step(Step::Fault, format!("lose {m:?}"));
                out.push(n);
            }
            if faults && s.budgets.duplications > 0 {
                let mut n = s.clone();
                n.net.push(m.clone());
                n.budgets.duplications -= 1;
                n.step(Step::Fault, format!("duplicate {m:?}"));
                out.push(n);
            }
        }
        if faults && s.budgets.timeouts > 0 && s.uploader.in_flight() > 0 {
            let mut n = s.clone();
            n.now += Duration::from_millis(self.config.ack_timeout_ms);
            let expired = n.uploader.poll_timeouts(n.now);
            n.budgets.timeouts -= 1;
            n.step(Step::Fault, format!("timeout {expired:?}"));
            out.push(n);
        }
        if faults && s.budgets.agent_crashes > 0 {
            let mut n = s.clone();
            // Volatile state is gone; the agent restarts from its store, as `Net::run` does.
            n.uploader = Uploader::new(self.config);
            let mut pending: Vec<(u32, BatchId)> = n.batches.iter().map(|(id, ss)| (ss[0], *id)).collect();
            pending.sort_unstable();
            for (_, id) in pending {
                n.uploader.add(id);
            }
            n.conn = None;
            n.net.clear();
            n.budgets.agent_crashes -= 1;
            n.step(Step::Fault, "agent crashes".into());
            out.push(n);
        }
        if faults && s.budgets.server_crashes > 0 {
            let mut n = s.clone();
            n.conn = None;
            n.net.clear();
            n.uploader.disconnected();
            n.budgets.server_crashes -= 1;
            n.step(Step::Fault, "server crashes".into());
            out.push(n);
        }
        out
    }

    /// The uploader's next send, moving the clock past a backoff if that is all it waits for.
    fn send(&self, s: &State) -> Option<State> {
        let mut n = s.clone();
        let mut id = n.uploader.poll_send(n.now);
        if id.is_none() {
            let at = n.uploader.next_wakeup().filter(|t| *t > n.now)?;
            n.now = at;
            id = n.uploader.poll_send(n.now);
        }
        let id = id?;
        if let Some(sessions) = n.batches.get(&id) {
            n.net.push(Msg::Upload(id, sessions.clone()));
            n.step(Step::Send, format!("send batch {}", id.0));
        } else {
            // Acked and deleted in an earlier life: the shell tells the uploader so.
            n.uploader.on_ack(id);
            n.step(Step::Send, format!("batch {} already gone", id.0));
        }
        Some(n)
    }

    fn deliver(&self, n: &mut State, m: Msg) {
        match m {
            Msg::Upload(id, ids) => {
                let Some(conn) = &n.conn else { return };
                let sessions = ids.iter().map(|s| session(*s)).collect();
                match conn.on_request(Ok(Message::UploadBatch(UploadBatch { batch_id: id, sessions }))) {
                    Ok(Request::Upload(batch)) => {
                        // One transaction, flushed before the ack: dedupe set and D together.
                        let duplicate = !n.seen.insert(id);
                        if !duplicate {
                            for s in &batch.sessions {
                                *n.d.entry(s.turns[0].shown).or_insert(0) += 1;
                            }
                        }
                        let stored = if duplicate { 0 } else { batch.sessions.len() as u32 };
                        n.net.push(Msg::Ack(id, stored, duplicate));
                        n.step(Step::Deliver, format!("server stores batch {} (duplicate {duplicate})", id.0));
                    }
                    other => n.step(Step::Deliver, format!("server refuses batch {}: {other:?}", id.0)),
                }
            }
            Msg::Ack(id, stored, duplicate) => {
                let ack = Ack { batch_id: id, stored, duplicate };
                if let UploadStep::Acked(_) = n.uploader.on_reply(id, Reply::Message(Message::Ack(ack)), n.now) {
                    // Deleted durably first, then forgotten.
                    n.batches.remove(&id);
                    n.uploader.on_ack(id);
                }
                n.step(Step::Deliver, format!("agent gets ack of batch {}", id.0));
            }
        }
    }

    fn violation(&self, s: &State) -> Option<String> {
        for id in 0..s.recorded {
            let on_agent = s.unbatched.contains(&id) as usize + s.batches.values().filter(|b| b.contains(&id)).count();
            let in_d = s.d.get(&id).copied().unwrap_or(0);
            if in_d > 1 {
                return Some(format!("session {id} stored {in_d} times"));
            }
            if on_agent > 1 {
                return Some(format!("session {id} in {on_agent} places on the agent"));
            }
            if on_agent == 0 && in_d == 0 {
                return Some(format!("session {id} lost: neither on the agent nor in D"));
            }
        }
        None
    }

    /// The network heals and the faults stop: a fair run must store everything once.
    fn heals(&self, s: &State) -> Result<(), String> {
        let mut s = s.clone();
        for _ in 0..10_000 {
            if s.recorded == self.bound.sessions && s.unbatched.is_empty() && s.batches.is_empty() && s.net.is_empty() {
                let all = (0..self.bound.sessions).all(|id| s.d.get(&id) == Some(&1));
                return if all { Ok(()) } else { Err(format!("healed, but D is {:?}", s.d)) };
            }
            // A fixed fair order: connect, record, cut, deliver, send, and time out what waits.
            let next = self.successors(&s, false);
            let by = |kinds: &[Step]| next.iter().position(|n| n.last.is_some_and(|k| kinds.contains(&k)));
            let pick = by(&[Step::Connect]).or_else(|| by(&[Step::Deliver])).or_else(|| by(&[Step::Record, Step::Cut])).or_else(|| by(&[Step::Send]));
            match pick {
                Some(i) => s = next[i].clone(),
                None if s.uploader.in_flight() > 0 => {
                    // Its upload or ack was lost: the timeout requeues it.
                    s.now += Duration::from_millis(self.config.ack_timeout_ms);
                    s.uploader.poll_timeouts(s.now);
                }
                None => return Err(format!("stuck: {:?}, batches {:?}, uploader {:?}", s.trace.last(), s.batches, s.uploader.view())),
            }
        }
        Err("did not settle in 10,000 steps".into())
    }
}

/// Searches every interleaving within `bound`.
pub fn check(bound: Bound) -> Report {
    search(bound, |_| {})
}

/// The search, with `tamper` applied to every new state (the checker's own test breaks a rule
/// with it and expects the search to notice).
fn search(bound: Bound, tamper: fn(&mut State)) -> Report {
    let mut upload = UploadRules::new(validate::experience_limits(&Schema::reference(), bound.sessions as usize + 1, 50));
    upload.max_batch_sessions = bound.batch_size;
    let checker = Checker {
        bound,
        rules: Arc::new(ServerRules::new(TOKEN, upload, 1 << 20)),
        config: UploadConfig { max_in_flight: bound.max_in_flight, ack_timeout_ms: 1_000, backoff: Backoff { base_ms: 100, max_ms: 1_000 } },
    };
    let mut report = Report::default();
    let start = checker.initial();
    let mut seen: HashSet<Key> = HashSet::new();
    seen.insert(start.key());
    let mut stack = vec![start];
    while let Some(s) = stack.pop() {
        report.states += 1;
        if let Some(v) = checker.violation(&s) {
            report.violations.push(format!("{v}, after: {}", s.trace.join(" → ")));
        } else if let Err(v) = checker.heals(&s) {
            report.violations.push(format!("no recovery ({v}), after: {}", s.trace.join(" → ")));
        } else {
            for mut n in checker.successors(&s, true) {
                tamper(&mut n);
                report.transitions += 1;
                if seen.insert(n.key()) {
                    stack.push(n);
                }
            }
        }
        if report.violations.len() >= 5 {
            break;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_holds_in_every_interleaving_of_the_ci_bound() {
        let r = check(Bound::CI);
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        // The bound reaches a real space, not a handful of states.
        assert!(r.states > 10_000, "{r:?}");
        println!("model check {:?}: {} states, {} transitions", Bound::CI, r.states, r.transitions);
    }

    #[test]
    fn the_checker_finds_broken_rules() {
        let bound = Bound { sessions: 1, batch_size: 1, max_in_flight: 1, losses: 1, duplications: 0, timeouts: 1, agent_crashes: 0, server_crashes: 0 };
        // A server that forgets its dedupe set stores a resent batch twice.
        let no_dedupe = search(bound, |n| n.seen.clear());
        assert!(no_dedupe.violations.iter().any(|v| v.contains("stored 2 times") || v.contains("D is {0: 2}")), "{no_dedupe:?}");
        // An agent that deletes a batch when it sends it, not when it is acked, loses it.
        let delete_on_send = search(bound, |n| {
            for id in n.uploader.view().in_flight {
                n.batches.remove(&id);
            }
        });
        assert!(delete_on_send.violations.iter().any(|v| v.contains("lost")), "{delete_on_send:?}");
    }
}
