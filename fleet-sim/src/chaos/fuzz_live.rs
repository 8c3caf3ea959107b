//! R3 against a live server: the same generated inputs, each sent on its own QUIC stream (or as
//! the first stream of a new connection when it is meant as a hello). The in-memory machines
//! predict what the server must do with each; afterwards D must hold exactly the uploads they
//! accepted, once each, and the server must still serve a well-behaved agent.

use irec_testkit::quic::{self as client, Answer, Session};
use super::fuzz::{self, Handlers, FUZZ_ITEMS, FUZZ_TOKEN};
use super::{fleet, ChaosError, Outcome};
use irec_learn::round::NoTrainer;
use irec_server::store::Store;
use irec_world::catalog::{Action, GeneratorConfig};
use irec_protocol::experience::{ExperienceSession, ExperienceTurn};
use irec_protocol::*;
use irec_world::rng;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

/// What the server must do with `bytes` sent as a request by a welcomed agent: `Some(batch)`
/// when it must store it (the first frame decodes to a valid upload), `None` otherwise.
fn predicted_upload(h: &Handlers, bytes: &[u8]) -> Option<UploadBatch> {
    let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
    d.push(bytes).ok()?;
    let m = d.next_message().ok()??;
    let mut machine = ServerConnection::new(h.rules.clone());
    let hello = Hello { protocol_version: PROTOCOL_VERSION, fleet_token: FUZZ_TOKEN.to_string(), world: None };
    machine.on_hello(Ok(Message::Hello(hello)), None).ok()?;
    match machine.on_request(Ok(m)) {
        Ok(Request::Upload(b)) => Some(b),
        _ => None,
    }
}

fn probe(i: u32) -> UploadBatch {
    let turn = |done| ExperienceTurn { action: Action::default(), shown: i % FUZZ_ITEMS as u32, utterance: "Good".into(), reward: 1.0, done };
    UploadBatch { batch_id: BatchId(u128::MAX - i as u128), sessions: vec![ExperienceSession { round: 0, turns: vec![turn(true)] }] }
}

/// Sends `inputs` fuzz inputs (seeded by `seed`) to an in-process server in `dir`.
pub fn run(inputs: u64, seed: u64, dir: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome, ChaosError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| ChaosError::Io(dir.into(), e))?;
    runtime.block_on(run_async(inputs, seed, dir, progress))
}

async fn run_async(inputs: u64, seed: u64, dir: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("fuzz_live");
    let world = fleet::WorldSize { items: FUZZ_ITEMS, ..fleet::WorldSize::default() };
    let mut config = fleet::server_config(&dir.join("server"), 0, &world);
    config.fleet_token = FUZZ_TOKEN.to_string();
    config.world.catalog = GeneratorConfig { items: FUZZ_ITEMS, seed: world.seed };
    config.hello_timeout_ms = 2_000;
    config.request_timeout_ms = 2_000;
    let server = irec_server::Server::bind(config.clone(), Arc::new(NoTrainer)).await?;
    let handle = server.handle()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));
    let (addr, cert) = (handle.local_addr, handle.cert_path.clone());
    let ep = client::endpoint()?;
    let mut agent = Session::hello(&ep, addr, &cert, FUZZ_TOKEN).await?;
    let h = Handlers::new();
    let mut expected: BTreeMap<BatchId, usize> = BTreeMap::new();
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut reconnects = 0u64;
    let mut probes = 0u32;
    let live_seed = rng::derive(seed, 0x11fe);
    let started = Instant::now();
    for i in 0..inputs {
        let input = fuzz::input(live_seed, i, 2_048, &h.heads);
        let reply = if input.welcomed || input.reader == Side::Agent {
            if let Some(b) = predicted_upload(&h, &input.bytes) {
                expected.entry(b.batch_id).or_insert(b.sessions.len());
            }
            client::exchange(&agent.conn, &input.bytes, WITHIN).await
        } else {
            // Meant as a hello: the first stream of a fresh connection.
            match client::connect(&ep, addr, &cert).await {
                Ok(conn) => {
                    let r = client::exchange(&conn, &input.bytes, WITHIN).await;
                    conn.close(0u8.into(), b"");
                    r
                }
                Err(e) => Answer::Nothing(e.to_string()),
            }
        };
        let key = match &reply {
            Answer::Message(Message::Error(e)) => format!("error {:?}", e.code),
            Answer::Message(m) => format!("{:?}", m.kind()),
            Answer::Closed(c) => match ErrorCode::from_code(*c) {
                Some(code) => format!("closed {code:?}"),
                None => {
                    out.check(false, || format!("input {i}: connection closed with unknown code {c}"));
                    format!("closed {c}")
                }
            },
            Answer::Nothing(why) => {
                out.check(false, || format!("input {i}: no reply ({why})"));
                "nothing".to_string()
            }
        };
        *replies.entry(key).or_default() += 1;
        // A bad request costs only its stream; if the good connection died, that is a finding.
        if agent.conn.close_reason().is_some() {
            out.check(false, || format!("input {i} closed a welcomed connection: {:?}", agent.conn.close_reason()));
            agent = Session::hello(&ep, addr, &cert, FUZZ_TOKEN).await?;
            reconnects += 1;
        }
        if i % 500 == 499 || i + 1 == inputs {
            // The server still serves a well-behaved agent.
            let b = probe(probes);
            probes += 1;
            expected.insert(b.batch_id, b.sessions.len());
            let frame = encode(&Message::UploadBatch(b), &FrameLimits::default()).map_err(|e| ChaosError::Relay(e.to_string()))?;
            let r = client::exchange(&agent.conn, &frame, WITHIN).await;
            out.check(matches!(r, Answer::Message(Message::Ack(_))), || format!("after input {i} a good upload got {r:?}"));
        }
        if i % 2_000 == 1_999 {
            progress(&format!("R3 live: {} inputs, {:.0}/s", i + 1, (i + 1) as f64 / started.elapsed().as_secs_f64()));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    agent.conn.close(0u8.into(), b"");
    let _ = stop_tx.send(());
    task.await.map_err(|e| ChaosError::Relay(e.to_string()))??;

    let store = Store::open(&config.data_dir.join("db"))?;
    let stored = store.all_sessions()?.len();
    let want: usize = expected.values().sum();
    let mut missing = 0;
    for id in expected.keys() {
        if !store.has_batch(*id)? {
            missing += 1;
        }
    }
    out.check(stored == want && missing == 0, || format!("D holds {stored} sessions, the machines accepted {want} ({missing} accepted batches missing)"));
    let distinct: HashSet<_> = expected.keys().collect();
    out.figure("live_inputs", inputs);
    out.figure("live_inputs_per_s", (inputs as f64 / elapsed).round());
    out.figure("live_replies", &replies);
    out.figure("live_uploads_accepted", distinct.len() as u32 - probes);
    out.figure("live_sessions_stored", stored);
    out.figure("live_reconnects", reconnects);
    Ok(out)
}
