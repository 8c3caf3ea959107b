//! System test: edge agents and a server on loopback, in process: exactly-once upload, policy
//! push with hash checks, restart with pending sessions, refusal of a wrong token, a mapped
//! world file, and refusal of another world.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use irec_edge_agent::sessions::{self, first_profile};
use irec_edge_agent::store::{db_dir, AgentStore};
use irec_edge_agent::{AgentConfig, AgentError};
use irec_model::loader::BaselineLoader;
use irec_learn::round::{RoundMetrics, RoundTrainer, TrainError, TrainJob, TrainOutcome};
use irec_server::{ServerConfig, ServerHandle};
use irec_testkit::server::Running;
use irec_testkit::files_under;
use irec_testkit::tally::tally;
use irec_world::catalog::GeneratorConfig;
use irec_protocol::experience::ExperienceSession;
use irec_protocol::*;
use irec_world::sim::{Environment, Pool, World, WorldConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const TOKEN: &str = "fleet-secret";

fn world_config() -> WorldConfig {
    let mut w = WorldConfig { catalog: GeneratorConfig { items: 400, seed: 11 }, ..WorldConfig::default() };
    w.features.dim = 16;
    w
}

struct Trainer;

impl RoundTrainer for Trainer {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError> {
        Ok(TrainOutcome {
            candidate: format!("round {} on {} sessions", job.round, job.sessions.len()).into_bytes(),
            metrics: RoundMetrics::default(),
            candidate_estimate: Some(1.0),
            deployed_estimate: Some(0.0),
            estimate_se: 0.0,
        })
    }
}

async fn start_server(dir: &Path, quota: u64) -> Running {
    let blob = dir.join("initial.bin");
    std::fs::write(&blob, b"behaviour").unwrap();
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("server"),
        fleet_token: TOKEN.into(),
        round_quota: quota,
        initial_policy: Some(blob),
        ..ServerConfig::default()
    };
    c.world = world_config();
    irec_testkit::server::start(c, Arc::new(Trainer)).await.unwrap()
}

fn agent_config(dir: &Path, server: &ServerHandle, seed: u64, sessions: u64) -> AgentConfig {
    let mut c = AgentConfig {
        server: server.local_addr.to_string(),
        server_cert: server.cert_path.clone(),
        fleet_token: TOKEN.into(),
        data_dir: dir.join(format!("agent-{seed}")),
        sessions: Some(sessions),
        batch_size: 2,
        batch_linger_ms: 50,
        world: world_config(),
        ..AgentConfig::default()
    };
    c.device.seed = seed;
    c.reconnect = Backoff { base_ms: 20, max_ms: 200 };
    c
}

fn env() -> Environment {
    Environment::with_truth(Arc::new(World::build(&world_config()).unwrap()), Pool::Train)
}

fn tracker(fallback: bool) -> Arc<irec_model::loader::FallbackLoader> {
    let world = Arc::new(World::build(&world_config()).unwrap());
    let env = Environment::with_truth(world.clone(), Pool::Train);
    Arc::new(BaselineLoader::Tracker { lexicon: Arc::new(world.lexicon.clone()), index: Arc::new(env.index.clone()) }.with_fallback(fallback))
}

/// What the device of `config` produces for sessions `0..n` with the tracker (the round tag
/// aside), run by the agent's own session loop.
fn expected_sessions(config: &AgentConfig, n: u64) -> Vec<ExperienceSession> {
    let world = Arc::new(World::build(&config.world).unwrap());
    let env = Environment::with_truth(world.clone(), Pool::Train);
    let loaded = BaselineLoader::Tracker { lexicon: Arc::new(world.lexicon.clone()), index: Arc::new(env.index.clone()) };
    sessions::replay(&env, &config.device, &loaded, n).0.into_iter().map(|s| s.session).collect()
}

fn stored_sessions(dir: &Path) -> Vec<ExperienceSession> {
    irec_testkit::stored_sessions(&dir.join("server")).unwrap()
}

/// D holds exactly `want`, each once (the round tag aside).
fn assert_exactly(d: &[ExperienceSession], want: &[ExperienceSession]) {
    let t = tally(want, d);
    assert!(t.exact(), "D must hold exactly what the devices produced: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_upload_exactly_once_and_install_published_policies() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), 4).await;
    let mut configs = Vec::new();
    let mut runs = Vec::new();
    for seed in [1u64, 2] {
        let mut c = agent_config(dir.path(), &server.handle, seed, 12);
        c.session_interval_ms = 40;
        configs.push(c.clone());
        runs.push(tokio::spawn(irec_edge_agent::run(c, tracker(false), std::future::pending())));
    }
    let mut stats = Vec::new();
    for r in runs {
        stats.push(r.await.unwrap().unwrap());
    }
    server.stop().await.unwrap();

    for s in &stats {
        assert_eq!((s.sessions_run, s.pending_batches, s.unbatched_sessions, s.quarantined_batches), (12, 0, 0, 0));
        assert_eq!(s.sessions_acked, 12, "every session acked once: {s:?}");
        assert!(s.policy_version.unwrap_or(0) >= 2, "a published policy was installed: {s:?}");
        assert!(s.policies_installed >= 2);
    }
    let d = stored_sessions(dir.path());
    assert_eq!(d.len(), 24);
    let want: Vec<ExperienceSession> = configs.iter().flat_map(|c| expected_sessions(c, 12)).collect();
    assert_exactly(&d, &want);
    assert!(d.iter().any(|s| s.round >= 1), "sessions run after an install carry the new policy's round");
    // The installed policy on each device is byte-for-byte the server's.
    let st = irec_server::store::Store::open(&irec_server::store::db_dir(&dir.path().join("server"))).unwrap();
    // 24 sessions in batches of ≤ 2 at a quota of 4: rounds of 4 or 5 sessions.
    assert!(st.rounds().unwrap().len() >= 5);
    for c in &configs {
        let local = AgentStore::open(&db_dir(&c.data_dir)).unwrap().policy().unwrap().unwrap();
        let remote = st.policy(local.version).unwrap().unwrap();
        assert_eq!((local.sha256, &local.blob), (remote.sha256, &remote.blob));
        assert_eq!(sha256(&local.blob), local.sha256);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_with_pending_sessions_uploads_them_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), 0).await;
    let mut config = agent_config(dir.path(), &server.handle, 7, 5);
    // First life: the server is unreachable (nothing listens there), sessions pile up locally.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut offline = config.clone();
    offline.server = dead.to_string();
    offline.connect_timeout_ms = 200;
    // Only full batches, and the last partial one once all sessions ran: [2, 2, 1].
    offline.batch_linger_ms = 60_000;
    for _ in 0..20 {
        let (stop, stopped) = oneshot::channel::<()>();
        let life = tokio::spawn(irec_edge_agent::run(offline.clone(), tracker(true), async {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop.send(());
        let s = life.await.unwrap().unwrap();
        assert_eq!(s.sessions_acked, 0);
        if (s.pending_batches, s.unbatched_sessions) == (3, 0) {
            break;
        }
    }
    {
        let st = AgentStore::open(&db_dir(&config.data_dir)).unwrap();
        assert_eq!(st.next_session().unwrap(), 5);
        assert_eq!((st.pending_batches().unwrap().len(), st.unbatched()), (3, 0), "batches formed and persisted offline");
    }

    // The first batch did reach the server, but its ack was lost (crash between ack and delete).
    let replayed = {
        let st = AgentStore::open(&db_dir(&config.data_dir)).unwrap();
        let id = st.pending_batches().unwrap()[0];
        st.batch(id).unwrap().unwrap()
    };
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = irec_edge_agent::tls::client_config(&server.handle.cert_path, Duration::from_secs(1), Duration::from_secs(10)).unwrap();
    let conn = endpoint.connect_with(client, server.handle.local_addr, "irec-server").unwrap().await.unwrap();
    let (mut send, mut control) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: TOKEN.into(), world: None }), &FrameLimits::default()).unwrap()).await.unwrap();
    let mut dec = FrameDecoder::new(Side::Agent, FrameLimits::default());
    assert!(matches!(irec_edge_agent::io::next_message(&mut control, &mut dec).await, Ok(Some(Message::Welcome(_)))));
    let ack = irec_edge_agent::io::request(&conn, &Message::UploadBatch(replayed.upload()), FrameLimits::default()).await.unwrap();
    assert!(matches!(ack, Message::Ack(Ack { stored: 2, duplicate: false, .. })), "{ack:?}");
    conn.close(0u8.into(), b"");

    // Second life: everything pending goes up; the replayed batch is acked as a duplicate.
    config.connect_timeout_ms = 2000;
    let s = irec_edge_agent::run(config.clone(), tracker(true), std::future::pending()).await.unwrap();
    assert_eq!((s.sessions_run, s.batches_acked, s.duplicate_acks, s.sessions_acked), (0, 3, 1, 3));
    assert_eq!((s.pending_batches, s.unbatched_sessions), (0, 0));
    server.stop().await.unwrap();
    let d = stored_sessions(dir.path());
    assert_exactly(&d, &expected_sessions(&config, 5));
}

#[tokio::test]
async fn a_wrong_token_stops_the_agent_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), 0).await;
    let mut config = agent_config(dir.path(), &server.handle, 3, 1);
    config.fleet_token = "guess".into();
    let err = irec_edge_agent::run(config, tracker(true), std::future::pending()).await.unwrap_err();
    match err {
        AgentError::Refused(e) => assert_eq!(e.code, ErrorCode::Unauthorized),
        other => panic!("expected a refusal, got {other}"),
    }
    server.stop().await.unwrap();
    assert!(stored_sessions(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_world_file_runs_the_same_sessions_and_another_world_is_refused() {
    use irec_world::world_file::{self, WorldFileError, WorldFingerprint};
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), 0).await;
    let ours = world_config();
    let file = dir.path().join("world.irecw");
    world_file::write(&file, &World::build(&ours).unwrap(), WorldFingerprint::of(&ours).unwrap(), &[]).unwrap();

    // The agent maps the fleet's world file: the same sessions as a world built in process.
    let mut config = agent_config(dir.path(), &server.handle, 5, 3);
    config.world_file = Some(file.clone());
    let stats = irec_edge_agent::run(config.clone(), tracker(true), std::future::pending()).await.unwrap();
    assert_eq!(stats.sessions_acked, 3);

    // A world file built from other [world] settings than the agent's is refused at start.
    let mut other = ours.clone();
    other.catalog.seed += 1;
    let stale = dir.path().join("stale.irecw");
    world_file::write(&stale, &World::build(&other).unwrap(), WorldFingerprint::of(&other).unwrap(), &[]).unwrap();
    let mut mismatched = agent_config(dir.path(), &server.handle, 6, 1);
    mismatched.world_file = Some(stale);
    let err = irec_edge_agent::run(mismatched, tracker(true), std::future::pending()).await.unwrap_err();
    assert!(matches!(err, AgentError::WorldFile(WorldFileError::Mismatch { .. })), "{err}");
    assert!(err.to_string().contains("rebuild it"), "{err}");

    // An agent of another world than the server's is refused for good, with both worlds named.
    let mut foreign = agent_config(dir.path(), &server.handle, 7, 1);
    foreign.world = other.clone();
    match irec_edge_agent::run(foreign, tracker(true), std::future::pending()).await.unwrap_err() {
        AgentError::Refused(e) => {
            assert_eq!(e.code, ErrorCode::WrongWorld);
            let (a, b) = (WorldFingerprint::of(&ours).unwrap(), WorldFingerprint::of(&other).unwrap());
            assert!(e.message.contains(&a.to_string()) && e.message.contains(&b.to_string()), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other}"),
    }
    server.stop().await.unwrap();
    assert_exactly(&stored_sessions(dir.path()), &expected_sessions(&config, 3));
}

/// Every byte a device's personalization could leave behind, in the encodings a leak would use.
fn fingerprints(seed: u64, sigma: f32, bias: &[f32]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("seed LE".to_string(), seed.to_le_bytes().to_vec()),
        ("seed BE".to_string(), seed.to_be_bytes().to_vec()),
        ("seed decimal".to_string(), seed.to_string().into_bytes()),
        ("sigma LE".to_string(), sigma.to_le_bytes().to_vec()),
        ("sigma BE".to_string(), sigma.to_be_bytes().to_vec()),
        ("sigma decimal".to_string(), sigma.to_string().into_bytes()),
    ];
    // Round values (0, the strength, halves of it) could occur in any float data; the learned
    // shares in between identify the device.
    for (i, b) in bias.iter().enumerate().filter(|(_, b)| (*b * 1024.0).fract() != 0.0) {
        out.push((format!("bias[{i}] LE"), b.to_le_bytes().to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_personal_reaches_the_server_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), 0).await;
    let mut config = agent_config(dir.path(), &server.handle, 0x5EED_CAFE_F00D_1234, 8);
    config.device.noise_sigma = 0.123_456_7;
    let stats = irec_edge_agent::run(config.clone(), tracker(true), std::future::pending()).await.unwrap();
    assert_eq!(stats.sessions_acked, 8);
    server.stop().await.unwrap();
    let profile = AgentStore::open(&db_dir(&config.data_dir)).unwrap().profile(first_profile(&config.device, &env())).unwrap();
    let bias = profile.bias.values();
    assert!(bias.iter().filter(|b| (*b * 1024.0).fract() != 0.0).count() > 0, "the device learned a distinctive private bias: {bias:?}");
    let prints = fingerprints(config.device.seed, config.device.noise_sigma, &bias);
    // The device's own store does hold them (the check can see a leak).
    let local: Vec<u8> = files_under(&config.data_dir).iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
    assert!(local.windows(8).any(|w| w == config.device.seed.to_le_bytes()), "the scan finds the seed where it is");
    let server_files = files_under(&dir.path().join("server"));
    assert!(!server_files.is_empty(), "the server's data dir has files to search");
    for file in server_files {
        let bytes = std::fs::read(&file).unwrap();
        for (what, needle) in &prints {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "{what} found in {}", file.display());
        }
    }
}
