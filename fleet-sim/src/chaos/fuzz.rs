//! R3: the protocol under random and hostile input. A seeded loop (reproducible: input `i` of a
//! run depends only on the seed and `i`) feeds the frame decoder on both sides, in random chunks,
//! and every message that decodes to the handler that would get it: the server's connection
//! machine (hello, requests, upload validation), the agent's policy sync (hash checks) and its
//! upload queue. It checks that nothing panics, that the decoder never holds more than one
//! capped frame plus one chunk, that accepted uploads really are valid, that a policy is only
//! handed over when its bytes match its hash, and that what decodes re-encodes to itself.
//!
//! Inputs: random bytes; well-formed frames of random (often hostile) messages; those frames
//! mutated (bit flips, cut, spliced, length prefix rewritten, an inner length claiming up to
//! 2^64 bytes). [`crate::chaos::fuzz_live`] sends a sample of the same inputs to a live server.

use super::{ChaosError, Outcome};
use irec_world::catalog::{Action, Schema, NUM_ATTRS};
use irec_protocol::experience::{ExperienceSession, ExperienceTurn};
use irec_protocol::frame::HEADER_LEN;
use irec_protocol::*;
use irec_world::rng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token the fuzzed server machine accepts (some generated hellos carry it).
pub const FUZZ_TOKEN: &str = "fuzz-token";
/// Catalog size the fuzzed upload rules check item ids against.
pub const FUZZ_ITEMS: usize = 2_000;

/// Settings of the campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FuzzConfig {
    /// Inputs to run.
    pub inputs: u64,
    /// Worker threads (the inputs do not depend on it).
    pub threads: usize,
    pub seed: u64,
    /// Longest random input, in bytes.
    pub max_len: usize,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig { inputs: 10_000_000, threads: 2, seed: 1, max_len: 2_048 }
    }
}

/// One fuzz input: bytes for one reader, fed in chunks of these sizes.
#[derive(Clone, Debug)]
pub struct Input {
    /// The side that reads the bytes.
    pub reader: Side,
    pub bytes: Vec<u8>,
    pub chunks: Vec<usize>,
    /// Caps the decoder runs with (sometimes tiny, so that caps are reached).
    pub limits: FrameLimits,
    /// The server machine already welcomed the peer (the bytes are a request, not a hello).
    pub welcomed: bool,
}

/// Small caps: every cap is reachable by a fuzz input.
const TINY: FrameLimits = FrameLimits { upload_bytes: 1_024, policy_bytes: 2_048, small_bytes: 256 };

fn pick<T: Copy>(r: &mut rng::Rng, xs: &[T]) -> T {
    xs[r.random_range(0..xs.len())]
}

fn string(r: &mut rng::Rng, max: usize) -> String {
    match r.random_range(0..4) {
        0 => String::new(),
        1 => pick(r, &["Good", "I want boots", "not red", "ok"]).to_string(),
        2 => (0..r.random_range(0..max.max(1))).map(|_| r.random_range(' '..='~')).collect(),
        _ => (0..r.random_range(0..64)).map(|_| r.random::<char>()).collect(),
    }
}

fn reward(r: &mut rng::Rng, hostile: bool) -> f32 {
    match r.random_range(0..8) {
        0 if hostile => pick(r, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE / 2.0, -0.0, 11.0, -10.0]),
        1 if hostile => f32::from_bits(r.random()),
        _ => r.random_range(-6.0..1.0),
    }
}

/// A session; `hostile` ones break a rule now and then in every field the server checks.
fn session(r: &mut rng::Rng, heads: &[usize; NUM_ATTRS], hostile: bool) -> ExperienceSession {
    let turns = if !hostile || r.random_bool(0.9) { r.random_range(1..8) } else { r.random_range(0..60) };
    let proper_done = !hostile || r.random_bool(0.8);
    let odd = |r: &mut rng::Rng, p: f64| hostile && r.random_bool(p);
    let turns = (0..turns)
        .map(|i| {
            let mut action = [0u8; NUM_ATTRS];
            for (a, n) in action.iter_mut().zip(heads) {
                *a = if odd(r, 0.05) { r.random() } else { r.random_range(0..*n as u8) };
            }
            ExperienceTurn {
                action: Action(action),
                shown: if odd(r, 0.05) { r.random() } else { r.random_range(0..FUZZ_ITEMS as u32) },
                utterance: if odd(r, 0.03) { string(r, 4_000) } else { string(r, 100) },
                reward: reward(r, hostile),
                done: if proper_done { i + 1 == turns } else { r.random() },
            }
        })
        .collect();
    ExperienceSession { round: r.random_range(0..4), turns }
}

fn announcement(r: &mut rng::Rng) -> PolicyAnnouncement {
    PolicyAnnouncement { version: r.random_range(0..6), round: r.random_range(0..6), sha256: if r.random() { sha256(b"x") } else { r.random() } }
}

/// A random message, often hostile in its values (never in its shape: that is what mutation is for).
pub fn message(r: &mut rng::Rng, heads: &[usize; NUM_ATTRS]) -> Message {
    match r.random_range(0..9) {
        0 => Message::Hello(Hello {
            protocol_version: pick(r, &[PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 1, u32::MAX]),
            fleet_token: if r.random_bool(0.5) { FUZZ_TOKEN.to_string() } else { string(r, 300) },
            world: if r.random_bool(0.5) { None } else { Some(WorldFingerprint(r.random())) },
        }),
        1 | 2 => {
            let hostile = r.random_bool(0.5);
            Message::UploadBatch(UploadBatch {
                batch_id: BatchId(r.random()),
                sessions: (0..r.random_range(0..6)).map(|_| session(r, heads, hostile)).collect(),
            })
        }
        3 => Message::PolicyRequest(PolicyRequest { have: r.random_bool(0.5).then(|| r.random_range(0..6)) }),
        4 => Message::Welcome(Welcome {
            protocol_version: pick(r, &[1, 2]),
            deployed: r.random_bool(0.7).then(|| announcement(r)),
            max_upload_bytes: r.random(),
            max_batch_sessions: r.random(),
        }),
        5 => Message::Ack(Ack { batch_id: BatchId(r.random_range(0..4)), stored: r.random(), duplicate: r.random() }),
        6 => {
            let bytes: Vec<u8> = (0..r.random_range(0..200)).map(|_| r.random()).collect();
            let a = announcement(r);
            let sha = if r.random_bool(0.6) { sha256(&bytes) } else { a.sha256 };
            Message::PolicyBlob(PolicyBlob { version: a.version, round: a.round, sha256: sha, bytes })
        }
        7 => Message::PolicyAnnouncement(announcement(r)),
        _ => {
            if r.random() {
                Message::NoPolicy(NoPolicy { deployed: r.random_bool(0.5).then(|| r.random_range(0..6)) })
            } else {
                let code = ErrorCode::from_code(r.random_range(1..12)).unwrap_or(ErrorCode::Internal);
                Message::Error(ErrorMessage::new(code, string(r, 2_000)))
            }
        }
    }
}

const UNBOUNDED: FrameLimits = FrameLimits { upload_bytes: u32::MAX, policy_bytes: u32::MAX, small_bytes: u32::MAX };

fn frame_of(m: &Message) -> Vec<u8> {
    // Unbounded: an oversized frame is an input like any other (the decoder must refuse it).
    encode(m, &UNBOUNDED).unwrap_or_default()
}

/// Rewrites a few bytes of a well-formed frame.
fn mutate(r: &mut rng::Rng, mut bytes: Vec<u8>, other: &[u8]) -> Vec<u8> {
    for _ in 0..r.random_range(1..4) {
        if bytes.is_empty() {
            break;
        }
        let at = r.random_range(0..bytes.len());
        match r.random_range(0..7) {
            0 => bytes[at] ^= 1 << r.random_range(0..8),
            1 => bytes[at] = r.random(),
            2 => bytes.truncate(at),
            3 => {
                bytes.insert(at, r.random());
            }
            4 => {
                bytes.remove(at);
            }
            5 => {
                // Splice in a piece of another frame.
                let from = r.random_range(0..other.len().max(1));
                let piece = &other[from.min(other.len())..other.len().min(from + 32)];
                bytes.splice(at..at, piece.iter().copied());
            }
            _ => {
                // An inner length claiming far more than there is (bincode varint markers
                // 251..=254 announce a u16, u32, u64 or u128).
                let marker = pick(r, &[251u8, 252, 253, 254]);
                let width = match marker {
                    251 => 2,
                    252 => 4,
                    253 => 8,
                    _ => 16,
                };
                let mut claim = vec![marker];
                claim.extend((0..width).map(|i| if i + 1 == width { r.random_range(1..=255) } else { r.random() }));
                let at = at.max(HEADER_LEN.min(bytes.len()));
                let end = (at + 1).min(bytes.len());
                bytes.splice(at..end, claim);
            }
        }
    }
    // Usually keep the length prefix truthful, so the mutation reaches the body decoder.
    if bytes.len() >= HEADER_LEN && r.random_bool(0.7) {
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
    }
    bytes
}

/// Input `i` of a run with `seed`.
pub fn input(seed: u64, i: u64, max_len: usize, heads: &[usize; NUM_ATTRS]) -> Input {
    let mut r = rng::rng(rng::derive(seed, i));
    let bytes = match r.random_range(0..10) {
        0 | 1 => (0..r.random_range(0..max_len.max(1))).map(|_| r.random()).collect(),
        2 => {
            // A plausible header (known kind, length near a cap) over random bytes.
            let kind = pick(&mut r, &Kind::ALL);
            let len: u32 = pick(&mut r, &[0, 1, 2, 256, 257, 1_025, 2_049, 16 << 10, (16 << 10) + 1, 4 << 20, u32::MAX]);
            let mut b = len.to_be_bytes().to_vec();
            b.push(kind.tag());
            b.extend((0..r.random_range(0..64)).map(|_| r.random::<u8>()));
            b
        }
        3..=5 => (0..r.random_range(1..4)).flat_map(|_| frame_of(&message(&mut r, heads))).collect(),
        _ => {
            let a = frame_of(&message(&mut r, heads));
            let b = frame_of(&message(&mut r, heads));
            mutate(&mut r, a, &b)
        }
    };
    let reader = if bytes.get(4).and_then(|t| Kind::from_tag(*t)).is_some_and(|k| k.sender() == Side::Agent) || r.random_bool(0.1) {
        Side::Server
    } else {
        Side::Agent
    };
    let mut chunks = Vec::new();
    let mut left = bytes.len();
    while left > 0 {
        let c = if r.random_bool(0.5) { left } else { r.random_range(1..=left) };
        chunks.push(c);
        left -= c;
    }
    let limits = if r.random_bool(0.3) { TINY } else { FrameLimits::default() };
    // Hellos are most interesting as the first frame, everything else after a good hello.
    let welcomed = bytes.get(4) != Some(&Kind::Hello.tag()) && r.random_bool(0.8);
    Input { reader, bytes, chunks, limits, welcomed }
}

/// What feeding one input found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    pub messages: u64,
    pub frame_errors: u64,
    /// Uploads the server machine accepted (they passed validation).
    pub accepted_uploads: u64,
    pub hellos_welcomed: u64,
    pub blobs_verified: u64,
    /// Most bytes the decoder held, and the most it may hold (largest cap + header + chunk).
    pub peak_buffered: usize,
    pub violations: Vec<String>,
}

/// The handlers' fixed context.
pub struct Handlers {
    pub rules: Arc<ServerRules>,
    pub heads: [usize; NUM_ATTRS],
}

impl Handlers {
    pub fn new() -> Handlers {
        let schema = Schema::reference();
        let upload = UploadRules::new(experience_limits(&schema, FUZZ_ITEMS, 50));
        Handlers { rules: Arc::new(ServerRules::new(FUZZ_TOKEN, upload, FrameLimits::default().upload_bytes)), heads: schema.head_sizes() }
    }
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers::new()
    }
}

/// Feeds one input to the decoder and every handler; never panics unless a bug does.
pub fn feed(h: &Handlers, input: &Input) -> Fed {
    let mut fed = Fed::default();
    let mut d = FrameDecoder::new(input.reader, input.limits);
    let max_cap = input.limits.upload_bytes.max(input.limits.policy_bytes).max(input.limits.small_bytes) as usize;
    let mut server = ServerConnection::new(h.rules.clone());
    if input.welcomed {
        let hello = Hello { protocol_version: PROTOCOL_VERSION, fleet_token: FUZZ_TOKEN.to_string(), world: None };
        let _ = server.on_hello(Ok(Message::Hello(hello)), None);
    }
    let mut sync = PolicySync::new(None);
    let mut uploader = Uploader::new(UploadConfig::default());
    let now = Instant::now();
    uploader.add(BatchId(1));
    uploader.connected();
    let _ = uploader.poll_send(now);
    let mut at = 0;
    'feed: for &c in &input.chunks {
        let chunk = &input.bytes[at..at + c];
        at += c;
        if let Err(e) = d.push(chunk) {
            fed.frame_errors += 1;
            on_frame_error(&mut server, e);
            break;
        }
        fed.peak_buffered = fed.peak_buffered.max(d.buffered());
        if d.buffered() > HEADER_LEN + max_cap + c {
            fed.violations.push(format!("decoder holds {} bytes, over one capped frame plus a chunk", d.buffered()));
        }
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    fed.messages += 1;
                    round_trip(&m, &mut fed);
                    handle(h, m, &mut server, &mut sync, &mut uploader, now, &mut fed);
                }
                Ok(None) => break,
                Err(e) => {
                    fed.frame_errors += 1;
                    on_frame_error(&mut server, e);
                    break 'feed;
                }
            }
        }
    }
    let _ = d.finish();
    fed
}

fn on_frame_error(server: &mut ServerConnection, e: FrameError) {
    // The server shell hands frame errors to the machine too (as the hello or a request).
    if server.state() == ConnState::AwaitingHello {
        let _ = server.on_hello(Err(e), None);
    } else {
        let _ = server.on_request(Err(e));
    }
}

/// Whatever decodes must encode back to a frame that decodes to the same thing.
fn round_trip(m: &Message, fed: &mut Fed) {
    let bytes = frame_of(m);
    let reader = if m.kind().sender() == Side::Agent { Side::Server } else { Side::Agent };
    let mut d = FrameDecoder::new(reader, UNBOUNDED);
    let again = d.push(&bytes).ok().and_then(|()| d.next_message().ok().flatten());
    if again.as_ref().map(frame_of) != Some(bytes) {
        fed.violations.push(format!("a decoded {:?} does not survive re-encoding", m.kind()));
    }
}

fn handle(h: &Handlers, m: Message, server: &mut ServerConnection, sync: &mut PolicySync, uploader: &mut Uploader, now: Instant, fed: &mut Fed) {
    match m.kind().sender() {
        Side::Agent => {
            if server.state() == ConnState::AwaitingHello {
                let hello_ok = matches!(&m, Message::Hello(x) if x.protocol_version == PROTOCOL_VERSION && x.fleet_token == FUZZ_TOKEN);
                let welcomed = server.on_hello(Ok(m), None).is_ok();
                fed.hellos_welcomed += welcomed as u64;
                if welcomed != hello_ok {
                    fed.violations.push(format!("hello welcomed = {welcomed}, but its version and token say {hello_ok}"));
                }
                return;
            }
            if let Ok(Request::Upload(batch)) = server.on_request(Ok(m)) {
                fed.accepted_uploads += 1;
                let ok = !batch.sessions.is_empty()
                    && batch.sessions.len() <= h.rules.upload.max_batch_sessions
                    && batch.sessions.iter().all(|s| s.validate(&h.rules.upload.experience).is_ok());
                if !ok {
                    fed.violations.push(format!("the server machine accepted an invalid upload: {batch:?}"));
                }
            }
        }
        Side::Server => match m {
            Message::Welcome(w) => {
                let _ = sync.on_connected(w.deployed);
            }
            Message::PolicyAnnouncement(a) => {
                let _ = sync.on_announcement(a);
            }
            Message::PolicyBlob(b) => {
                // Make the blob wanted, so that the hash check is what decides.
                let _ = sync.on_announcement(b.announcement());
                let claimed = b.sha256;
                if let Ok(v) = sync.on_blob(b) {
                    fed.blobs_verified += 1;
                    if sha256(&v.bytes) != claimed || v.id.sha256 != claimed {
                        fed.violations.push("policy sync handed over bytes that do not match their hash".to_string());
                    }
                }
            }
            Message::NoPolicy(_) => sync.on_no_policy(),
            Message::Ack(a) => uploader.on_ack(a.batch_id),
            Message::Error(e) => {
                let failure = if e.code.is_permanent() { Failure::Permanent } else { Failure::Transient };
                let _ = uploader.on_failure(BatchId(1), failure, now);
            }
            _ => {}
        },
    }
}

/// Runs R3's in-memory part over `config.inputs` inputs.
pub fn run(config: &FuzzConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("fuzz");
    let handlers = Handlers::new();
    let next = AtomicU64::new(0);
    let totals = Mutex::new((Fed::default(), 0u64, Vec::<String>::new()));
    let started = Instant::now();
    // Panics are caught per input and counted; the default hook would print each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|s| {
        for _ in 0..config.threads.max(1) {
            s.spawn(|| {
                let mut local = (Fed::default(), 0u64, Vec::new());
                let mut last_report = Instant::now();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= config.inputs {
                        break;
                    }
                    let input = input(config.seed, i, config.max_len, &handlers.heads);
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| feed(&handlers, &input))) {
                        Ok(f) => merge(&mut local.0, f, Some(i)),
                        Err(_) => {
                            local.1 += 1;
                            if local.2.len() < 10 {
                                local.2.push(format!("input {i} panicked (seed {}, replay with fuzz::input)", config.seed));
                            }
                        }
                    }
                    if last_report.elapsed() > Duration::from_secs(10) {
                        last_report = Instant::now();
                        progress(&format!("R3: {i} inputs, {:.0}/s", i as f64 / started.elapsed().as_secs_f64()));
                    }
                }
                if let Ok(mut t) = totals.lock() {
                    let (fed, panics, notes) = local;
                    merge(&mut t.0, fed, None);
                    t.1 += panics;
                    t.2.extend(notes);
                }
            });
        }
    });
    std::panic::set_hook(hook);
    let elapsed = started.elapsed().as_secs_f64();
    let (fed, panics, notes) = totals.into_inner().unwrap_or_default();
    out.figure("inputs", config.inputs);
    out.figure("panics", panics);
    out.figure("inputs_per_s", (config.inputs as f64 / elapsed).round());
    out.figure("wall_s", elapsed);
    out.figure("messages_decoded", fed.messages);
    out.figure("frame_errors", fed.frame_errors);
    out.figure("hellos_welcomed", fed.hellos_welcomed);
    out.figure("uploads_accepted", fed.accepted_uploads);
    out.figure("blobs_verified", fed.blobs_verified);
    out.figure("decoder_peak_buffered_bytes", fed.peak_buffered);
    if let Some(peak) = irec_edge_agent::procfs::memory(None).map(|m| m.peak_kib) {
        out.figure("process_peak_rss_kib", peak);
    }
    out.check(panics == 0, || format!("{panics} inputs panicked: {}", notes.join("; ")));
    out.violations.extend(fed.violations);
    Ok(out)
}

fn merge(into: &mut Fed, f: Fed, input: Option<u64>) {
    into.messages += f.messages;
    into.frame_errors += f.frame_errors;
    into.accepted_uploads += f.accepted_uploads;
    into.hellos_welcomed += f.hellos_welcomed;
    into.blobs_verified += f.blobs_verified;
    into.peak_buffered = into.peak_buffered.max(f.peak_buffered);
    for v in f.violations {
        if into.violations.len() < 20 {
            into.violations.push(match input {
                Some(i) => format!("input {i}: {v}"),
                None => v,
            });
        }
    }
}
