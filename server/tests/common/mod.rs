//! Test helpers: a server on loopback port 0 in a temp dir, test sessions and trainers; the
//! hand-driven QUIC client and process launching come from `irec-testkit`, shared with the
//! system tests and the chaos campaigns.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use irec_learn::round::{RoundMetrics, RoundTrainer, TrainError, TrainJob, TrainOutcome};
use irec_server::{Server, ServerConfig, ServerHandle};
use irec_world::catalog::{Action, GeneratorConfig};
use irec_protocol::experience::{ExperienceSession, ExperienceTurn};
use irec_protocol::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-fleet-token";
pub const ITEMS: usize = 300;

pub fn config(dir: &Path) -> ServerConfig {
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        fleet_token: TOKEN.to_string(),
        round_quota: 0,
        hello_timeout_ms: 2_000,
        request_timeout_ms: 2_000,
        ..ServerConfig::default()
    };
    c.world.catalog = GeneratorConfig { items: ITEMS, seed: 5 };
    c
}

pub use irec_testkit::server::Running;

pub async fn start(config: ServerConfig, trainer: Arc<dyn RoundTrainer>) -> Running {
    irec_testkit::server::start(config, trainer).await.expect("bind")
}

/// A trainer for tests: the candidate is derived from the data (session count + round), the
/// estimates are fixed.
pub struct FixedTrainer {
    pub candidate_estimate: f64,
    pub deployed_estimate: f64,
}

impl RoundTrainer for FixedTrainer {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError> {
        let candidate = format!("policy for round {} from {} sessions", job.round, job.sessions.len()).into_bytes();
        Ok(TrainOutcome {
            candidate,
            metrics: RoundMetrics { sessions_in_d: job.sessions.len(), new_sessions: job.new_sessions, ..RoundMetrics::default() },
            candidate_estimate: Some(self.candidate_estimate),
            deployed_estimate: job.deployed.as_ref().map(|_| self.deployed_estimate),
            estimate_se: 0.0,
        })
    }
}

pub fn session(shown: u32, reward: f32) -> ExperienceSession {
    ExperienceSession {
        round: 0,
        turns: vec![
            ExperienceTurn { action: Action([1, 0, 0, 0, 2, 0]), shown, utterance: "I want boots".into(), reward: -0.5, done: false },
            ExperienceTurn { action: Action([1, 0, 0, 0, 2, 0]), shown: shown + 1, utterance: "Good".into(), reward, done: true },
        ],
    }
}

pub fn batch(id: u128, sessions: Vec<ExperienceSession>) -> Message {
    Message::UploadBatch(UploadBatch { batch_id: BatchId(id), sessions })
}

pub use irec_testkit::quic::{frame, hello_frame as hello, Answer, Session as Client};
use irec_testkit::procs::{wait_until, Launcher, Proc};
use irec_testkit::quic;

/// A new connection to `addr`, trusting only `cert` (how it failed is in the error).
pub async fn connect(addr: SocketAddr, cert: &Path) -> Result<quinn::Connection, irec_testkit::KitError> {
    quic::connect(&quic::endpoint()?, addr, cert).await
}

/// Sends raw bytes on a new stream, finishes it, and reads the reply.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Answer {
    quic::exchange(conn, bytes, quic::REPLY_WITHIN).await
}

pub async fn read_reply(recv: &mut quinn::RecvStream) -> Answer {
    quic::read_answer(recv, quic::REPLY_WITHIN).await
}

/// A connected, welcomed client with the test token.
pub async fn client(addr: SocketAddr, cert: &Path) -> Client {
    Client::hello(&quic::endpoint().unwrap(), addr, cert, TOKEN).await.expect("a welcome")
}

pub fn expect_ack(r: &Answer) -> Ack {
    r.ack().unwrap_or_else(|| panic!("expected ack, got {r:?}"))
}

/// Starts the `irec-server` executable on a TOML config and waits until it is bound (it writes
/// `status.json` right after binding). Logs go next to the data dir.
pub fn start_process(config_path: &Path, data_dir: &Path) -> Proc {
    let status = data_dir.join(irec_server::status::STATUS_FILE);
    let _ = std::fs::remove_file(&status);
    let server = Launcher { program: PathBuf::from(env!("CARGO_BIN_EXE_irec-server")), prefix: Vec::new() };
    let args = vec!["--config".to_string(), config_path.display().to_string()];
    let mut p = Proc::spawn("irec-server", &server, &args, &[], &data_dir.with_extension("server")).unwrap();
    wait_until(&mut p, Duration::from_secs(60), "bound", || status.exists()).unwrap();
    p
}

/// A config for a server process on a fixed loopback port in `dir/server`, written to
/// `dir/server.toml`; returns (config, its path).
pub fn process_config(dir: &Path) -> (ServerConfig, PathBuf) {
    let port = irec_testkit::procs::free_udp_port().unwrap();
    let mut cfg = config(&dir.join("server"));
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = dir.join("server.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    (cfg, path)
}

/// Peak resident memory of a process, in KiB (Linux).
pub fn peak_rss_kib(pid: u32) -> u64 {
    irec_edge_agent::procfs::memory(Some(pid)).expect("/proc readable").peak_kib
}

/// Every session in the D of the stopped server whose data dir is `dir`.
pub fn stored(dir: &Path) -> Vec<ExperienceSession> {
    irec_testkit::stored_sessions(dir).unwrap()
}
