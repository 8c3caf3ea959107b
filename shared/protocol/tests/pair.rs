//! The agent's machines ([`Batching`], [`Uploader`], [`PolicySync`], [`Reconnect`]) against the
//! server's ([`ServerConnection`] and an exactly-once store), in memory, on a virtual clock, in
//! the manner of quinn-proto's `Pair` tests: every frame goes through the real encoder and
//! decoder, the link delivers, loses or cuts, and each test states the exact virtual times the
//! rules imply. Nothing sleeps and nothing is random, so a rule that breaks fails here at once.

use irec_protocol::experience::{ExperienceSession, ExperienceTurn};
use irec_protocol::*;
use irec_world::catalog::{Action, Schema};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-secret";
const LATENCY: Duration = Duration::from_millis(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn session(i: u32) -> ExperienceSession {
    let turn = ExperienceTurn { action: Action::default(), shown: i, utterance: "Good".into(), reward: 1.0, done: true };
    ExperienceSession { round: 0, turns: vec![turn] }
}

/// What the server holds: D and the dedupe set, as the real store keeps them.
#[derive(Default)]
struct ServerStore {
    batches: HashMap<BatchId, u32>,
    d: Vec<ExperienceSession>,
}

impl ServerStore {
    fn ingest(&mut self, b: UploadBatch) -> Ack {
        if self.batches.contains_key(&b.batch_id) {
            return Ack { batch_id: b.batch_id, stored: 0, duplicate: true };
        }
        let n = b.sessions.len() as u32;
        self.batches.insert(b.batch_id, n);
        self.d.extend(b.sessions);
        Ack { batch_id: b.batch_id, stored: n, duplicate: false }
    }
}

/// What the link does to the next upload of a batch, or to its reply.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// The server stores it but its ack never arrives.
    LoseAck,
    /// The server answers with this error instead of storing it.
    Refuse(ErrorCode),
    /// The connection dies while the upload is on its way back (stored, no ack).
    CutConnection,
}

#[derive(Debug)]
enum Packet {
    Upload { id: BatchId, frame: Vec<u8> },
    Reply { id: BatchId, frame: Vec<u8> },
}

/// One agent and one server joined by a link, on a virtual clock.
struct Pair {
    t0: Instant,
    now: Instant,
    limits: FrameLimits,
    rules: Arc<ServerRules>,
    server: ServerStore,
    conn: Option<ServerConnection>,
    deployed: Option<PolicyBlob>,
    /// Faults for the next uploads of a batch (by its cut order: 0 = first batch cut).
    faults: HashMap<usize, VecDeque<Fault>>,
    link: VecDeque<(Instant, Packet)>,
    // The agent.
    token: String,
    uploader: Uploader,
    batching: Batching,
    reconnect: Reconnect,
    sync: PolicySync,
    arrivals: VecDeque<Instant>,
    generator_done_when_empty: bool,
    next_session: u32,
    unbatched: Vec<ExperienceSession>,
    batches: BTreeMap<BatchId, Vec<ExperienceSession>>,
    cut_order: Vec<BatchId>,
    quarantined: Vec<BatchId>,
    installed: Option<PolicyId>,
    reconnect_at: Option<Instant>,
    fatal: Option<ErrorMessage>,
    /// What happened, as (virtual ms, event), for the assertions.
    log: Vec<(u64, String)>,
}

fn upload_config() -> UploadConfig {
    UploadConfig { max_in_flight: 1, ack_timeout_ms: 1000, backoff: Backoff { base_ms: 200, max_ms: 10_000 } }
}

impl Pair {
    /// An agent whose sessions finish every 100 ms, `sessions` of them; batches of 4, linger
    /// 500 ms; a server capping batches at `server_cap` sessions.
    fn new(sessions: u64, server_cap: usize) -> Pair {
        let t0 = Instant::now();
        let mut upload = UploadRules::new(validate::experience_limits(&Schema::reference(), 100, 50));
        upload.max_batch_sessions = server_cap;
        Pair {
            t0,
            now: t0,
            limits: FrameLimits::default(),
            rules: Arc::new(ServerRules::new(TOKEN, upload, 1 << 20)),
            server: ServerStore::default(),
            conn: None,
            deployed: None,
            faults: HashMap::new(),
            link: VecDeque::new(),
            token: TOKEN.into(),
            uploader: Uploader::new(upload_config()),
            batching: Batching::new(4, 1 << 20, ms(500), t0),
            reconnect: Reconnect::new(Backoff { base_ms: 300, max_ms: 5_000 }, 42),
            sync: PolicySync::new(None),
            arrivals: (1..=sessions).map(|i| t0 + ms(100 * i)).collect(),
            generator_done_when_empty: false,
            next_session: 0,
            unbatched: Vec::new(),
            batches: BTreeMap::new(),
            cut_order: Vec::new(),
            quarantined: Vec::new(),
            installed: None,
            reconnect_at: Some(t0),
            fatal: None,
            log: Vec::new(),
        }
    }

    fn at(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    fn note(&mut self, what: String) {
        self.log.push((self.at(), what));
    }

    fn events(&self, prefix: &str) -> Vec<(u64, String)> {
        self.log.iter().filter(|(_, e)| e.starts_with(prefix)).cloned().collect()
    }

    fn times(&self, prefix: &str) -> Vec<u64> {
        self.events(prefix).into_iter().map(|(t, _)| t).collect()
    }

    fn connect(&mut self) {
        let hello = Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: self.token.clone(), world: None });
        let mut conn = ServerConnection::new(self.rules.clone());
        let announced = self.deployed.as_ref().map(PolicyBlob::announcement);
        let outcome = conn.on_hello(decode(&encode(&hello, &self.limits).unwrap(), Side::Server, self.limits), announced);
        self.now += 2 * LATENCY;
        match outcome {
            Ok(welcome) => {
                self.note("connected".into());
                self.conn = Some(conn);
                self.reconnect.on_connected();
                self.uploader.connected();
                self.batching.connected(&welcome);
                if let Some(req) = self.sync.on_connected(welcome.deployed) {
                    self.serve_policy(req);
                }
            }
            Err(rejection) => match self.reconnect.on_failed(&Reply::Refused(rejection.error.clone()), self.now) {
                Ok(at) => {
                    self.note(format!("refused {:?}", rejection.error.code));
                    self.reconnect_at = Some(at);
                }
                Err(fatal) => {
                    self.note(format!("fatal {:?}", fatal.code));
                    self.fatal = Some(fatal);
                }
            },
        }
    }

    fn disconnect(&mut self) {
        self.conn = None;
        self.link.clear();
        self.uploader.disconnected();
        self.batching.disconnected();
        self.reconnect_at = Some(self.reconnect.on_lost(self.now));
        self.note("lost".into());
    }

    /// A policy pull, answered at once over a fresh stream.
    fn serve_policy(&mut self, req: PolicyRequest) {
        let conn = self.conn.as_ref().expect("connected");
        let frame = encode(&Message::PolicyRequest(req), &self.limits).unwrap();
        let answer = match conn.on_request(decode(&frame, Side::Server, self.limits)) {
            Ok(Request::Policy { have }) => match &self.deployed {
                Some(b) if have != Some(b.version) => Message::PolicyBlob(b.clone()),
                _ => Message::NoPolicy(NoPolicy { deployed: self.deployed.as_ref().map(|b| b.version) }),
            },
            other => panic!("{other:?}"),
        };
        let reply = decode(&encode(&answer, &self.limits).unwrap(), Side::Agent, self.limits).map_or_else(|e| Reply::Transport(e.to_string()), Reply::Message);
        match self.sync.on_reply(reply) {
            PolicyStep::Load(v) => {
                self.installed = Some(v.id);
                self.note(format!("installed {}", v.id.version));
                let _ = self.sync.on_installed(v.id);
            }
            PolicyStep::Rejected(e) => self.note(format!("rejected {e}")),
            PolicyStep::Wait => self.note("no policy".into()),
            PolicyStep::Fatal(e) => self.fatal = Some(e),
        }
    }

    fn agent_acts(&mut self) {
        while self.arrivals.front().is_some_and(|t| *t <= self.now) {
            self.arrivals.pop_front();
            self.unbatched.push(session(self.next_session));
            self.next_session += 1;
            self.batching.on_session(self.now);
        }
        let done = self.generator_done_when_empty && self.arrivals.is_empty();
        while let Some(cut) = self.batching.poll(self.unbatched.len(), done, self.now) {
            if self.unbatched.len() < cut.max_sessions && !cut.all {
                break;
            }
            let take = cut.max_sessions.min(self.unbatched.len());
            let id = BatchId(self.cut_order.len() as u128 + 1);
            let sessions: Vec<_> = self.unbatched.drain(..take).collect();
            self.note(format!("cut {} of {}", id.0, sessions.len()));
            self.batches.insert(id, sessions);
            self.cut_order.push(id);
            self.uploader.add(id);
        }
        for id in self.uploader.poll_timeouts(self.now) {
            self.note(format!("timeout {}", id.0));
        }
        while let Some(id) = self.uploader.poll_send(self.now) {
            let batch = UploadBatch { batch_id: id, sessions: self.batches[&id].clone() };
            let frame = encode(&Message::UploadBatch(batch), &self.limits).unwrap();
            self.note(format!("send {}", id.0));
            self.link.push_back((self.now + LATENCY, Packet::Upload { id, frame }));
        }
    }

    fn deliver(&mut self, packet: Packet) {
        match packet {
            Packet::Upload { id, frame } => {
                let Some(conn) = &self.conn else { return };
                let order = self.cut_order.iter().position(|b| *b == id).unwrap();
                let fault = self.faults.get_mut(&order).and_then(VecDeque::pop_front);
                let answer = match (conn.on_request(decode(&frame, Side::Server, self.limits)), &fault) {
                    (Ok(Request::Upload(_)), Some(Fault::Refuse(code))) => Message::Error(ErrorMessage::new(*code, "refused by the test")),
                    (Ok(Request::Upload(batch)), _) => Message::Ack(self.server.ingest(batch)),
                    (Err(r), _) => Message::Error(r.error),
                    (other, _) => panic!("{other:?}"),
                };
                match fault {
                    Some(Fault::LoseAck) => self.note(format!("ack lost {}", id.0)),
                    Some(Fault::CutConnection) => self.disconnect(),
                    _ => {
                        let frame = encode(&answer, &self.limits).unwrap();
                        self.link.push_back((self.now + LATENCY, Packet::Reply { id, frame }));
                    }
                }
            }
            Packet::Reply { id, frame } => {
                let reply = match decode(&frame, Side::Agent, self.limits) {
                    Ok(Message::Error(e)) => Reply::Refused(e),
                    Ok(m) => Reply::Message(m),
                    Err(e) => Reply::Transport(e.to_string()),
                };
                match self.uploader.on_reply(id, reply, self.now) {
                    UploadStep::Acked(ack) => {
                        self.batches.remove(&id);
                        self.uploader.on_ack(id);
                        self.note(format!("ack {} stored {} duplicate {}", id.0, ack.stored, ack.duplicate));
                    }
                    UploadStep::RetryAt(at) => self.note(format!("retry {} at {}", id.0, (at - self.t0).as_millis())),
                    UploadStep::Quarantine => {
                        self.batches.remove(&id);
                        self.quarantined.push(id);
                        self.note(format!("quarantine {}", id.0));
                    }
                    UploadStep::Fatal(e) => {
                        self.note(format!("fatal {:?}", e.code));
                        self.fatal = Some(e);
                    }
                    UploadStep::Ignored => self.note(format!("ignored {}", id.0)),
                }
            }
        }
    }

    /// Runs until nothing is left to happen or the virtual clock passes `limit`.
    fn run(&mut self, limit: Duration) {
        for _ in 0..100_000 {
            if self.fatal.is_some() {
                return;
            }
            if self.conn.is_none() && self.reconnect_at.is_some_and(|t| t <= self.now) {
                self.reconnect_at = None;
                self.connect();
                continue;
            }
            self.agent_acts();
            if let Some(pos) = self.link.iter().position(|(t, _)| *t <= self.now) {
                let (_, p) = self.link.remove(pos).unwrap();
                self.deliver(p);
                continue;
            }
            let next = [
                self.link.iter().map(|(t, _)| *t).min(),
                self.uploader.next_wakeup(),
                self.batching.next_wakeup(self.unbatched.len()),
                self.arrivals.front().copied(),
                self.reconnect_at.filter(|_| self.conn.is_none()),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= self.t0 + limit => self.now = self.now.max(t),
                _ => return,
            }
        }
        panic!("the pair did not settle: {:?}", self.log);
    }

    fn assert_exactly_once(&self, sessions: u32) {
        let mut shown: Vec<u32> = self.server.d.iter().map(|s| s.turns[0].shown).collect();
        shown.sort_unstable();
        assert_eq!(shown, (0..sessions).collect::<Vec<_>>(), "D holds every session exactly once");
        assert!(self.batches.is_empty() && self.unbatched.is_empty() && self.uploader.is_idle(), "{:?}", self.log);
    }
}

fn decode(frame: &[u8], side: Side, limits: FrameLimits) -> Result<Message, FrameError> {
    let mut d = FrameDecoder::new(side, limits);
    d.push(frame)?;
    Ok(d.next_message()?.expect("one whole frame"))
}

#[test]
fn full_batches_go_at_once_the_last_after_the_linger_and_every_session_is_stored_once() {
    let mut p = Pair::new(10, 100);
    p.deployed = Some(PolicyBlob { version: 1, round: 0, sha256: sha256(b"weights"), bytes: b"weights".to_vec() });
    p.run(ms(10_000));
    assert_eq!(p.times("connected"), vec![10]);
    assert_eq!(p.installed.map(|i| i.version), Some(1), "the welcome's policy is pulled and verified");
    // Sessions finish at 100..1000 ms: full batches at the 4th and 8th, the last two 500 ms
    // after the 10th (the device is quiet, not finished).
    assert_eq!(p.events("cut"), vec![(400, "cut 1 of 4".into()), (800, "cut 2 of 4".into()), (1500, "cut 3 of 2".into())]);
    assert_eq!(p.times("send"), vec![400, 800, 1500]);
    assert_eq!(p.times("ack"), vec![410, 810, 1510], "one round trip each");
    assert!(p.events("ack").iter().all(|(_, e)| e.ends_with("duplicate false")));
    p.assert_exactly_once(10);
}

#[test]
fn a_lost_ack_times_out_backs_off_and_the_resend_is_acked_as_a_duplicate() {
    let mut p = Pair::new(8, 100);
    p.faults.insert(0, VecDeque::from([Fault::LoseAck]));
    p.run(ms(10_000));
    assert_eq!(p.times("ack lost"), vec![405]);
    // Sent at 400, no ack by 400 + 1000 ms: requeued with the first backoff step, while batch 2
    // waits behind it (one in flight).
    assert_eq!(p.times("timeout"), vec![1400]);
    let retry = 1400 + Backoff { base_ms: 200, max_ms: 10_000 }.delay(1, 1).as_millis() as u64;
    assert_eq!(p.events("send").iter().map(|(t, e)| (*t, e.as_str())).collect::<Vec<_>>(), vec![(400, "send 1"), (retry, "send 1"), (retry + 10, "send 2")]);
    assert_eq!(p.events("ack 1"), vec![(retry + 10, "ack 1 stored 0 duplicate true".to_string())], "the server kept the first copy");
    p.assert_exactly_once(8);
}

#[test]
fn a_connection_cut_with_a_batch_in_flight_reconnects_after_a_backoff_and_resends_it() {
    let mut p = Pair::new(4, 100);
    p.faults.insert(0, VecDeque::from([Fault::CutConnection]));
    p.run(ms(10_000));
    assert_eq!(p.times("lost"), vec![405]);
    let back = 405 + Backoff { base_ms: 300, max_ms: 5_000 }.delay(1, 42).as_millis() as u64;
    assert_eq!(p.times("connected"), vec![10, back + 10]);
    assert_eq!(p.times("send"), vec![400, back + 10], "the in-flight batch is requeued, not forgotten");
    assert_eq!(p.events("ack"), vec![(back + 20, "ack 1 stored 0 duplicate true".to_string())]);
    p.assert_exactly_once(4);
}

#[test]
fn transient_refusals_back_off_exponentially_permanent_ones_quarantine_fatal_ones_stop() {
    let mut p = Pair::new(12, 100);
    p.faults.insert(0, VecDeque::from([Fault::Refuse(ErrorCode::ShuttingDown), Fault::Refuse(ErrorCode::Internal)]));
    p.faults.insert(1, VecDeque::from([Fault::Refuse(ErrorCode::InvalidBatch)]));
    p.faults.insert(2, VecDeque::from([Fault::Refuse(ErrorCode::Unauthorized)]));
    p.run(ms(30_000));
    let b = Backoff { base_ms: 200, max_ms: 10_000 };
    let first_at = ms(410) + b.delay(1, 1);
    let (first, second) = (first_at.as_millis() as u64, (first_at + ms(10) + b.delay(2, 1)).as_millis() as u64);
    assert_eq!(p.events("retry"), vec![(410, format!("retry 1 at {first}")), (first + 10, format!("retry 1 at {second}"))]);
    assert_eq!(p.events("ack 1"), vec![(second + 10, "ack 1 stored 4 duplicate false".to_string())], "an ack resets the backoff");
    assert_eq!(p.quarantined, vec![BatchId(2)], "a batch the server calls invalid is never resent");
    assert_eq!(p.times("send").len(), 5, "batch 1 three times, batches 2 and 3 once: {:?}", p.log);
    assert_eq!(p.fatal.map(|e| e.code), Some(ErrorCode::Unauthorized), "a wrong token stops the agent");
    assert_eq!(p.server.d.len(), 4);
}

#[test]
fn batches_fit_the_welcome_and_a_bad_token_is_fatal_at_hello() {
    let mut p = Pair::new(5, 2);
    p.generator_done_when_empty = true;
    p.run(ms(10_000));
    // The server takes at most 2 per batch: cut at the 2nd and 4th session, the last one as soon
    // as the device is done (no linger).
    assert_eq!(p.events("cut"), vec![(200, "cut 1 of 2".into()), (400, "cut 2 of 2".into()), (500, "cut 3 of 1".into())]);
    p.assert_exactly_once(5);

    let mut bad = Pair::new(1, 100);
    bad.token = "wrong".into();
    bad.run(ms(10_000));
    assert_eq!(bad.events("fatal"), vec![(10, "fatal Unauthorized".to_string())]);
    assert!(bad.server.d.is_empty() && bad.times("send").is_empty());
}
