//! Test helpers: a server on loopback port 0 in a temp dir, and a hand-driven QUIC client that
//! can send anything, well-formed or not.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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

pub struct Running {
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), irec_server::ServerError>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    pub fn cert(&self) -> PathBuf {
        self.handle.cert_path.clone()
    }

    /// Stops the server and waits until it released its data dir.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("server task").expect("server result");
    }
}

pub async fn start(config: ServerConfig, trainer: Arc<dyn RoundTrainer>) -> Running {
    let server = Server::bind(config, trainer).await.expect("bind");
    let handle = server.handle().expect("handle");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    Running { handle, stop: Some(tx), task }
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
            candidate_estimate: self.candidate_estimate,
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

pub fn client_config(cert: &Path) -> quinn::ClientConfig {
    let der = std::fs::read(cert).expect("cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der)).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

pub async fn connect(addr: SocketAddr, cert: &Path) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.connect_with(client_config(cert), addr, "irec-server").unwrap().await
}

/// What came back on a stream: a message, or how the connection ended.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Message(Message),
    /// The connection was closed with this application code.
    Closed(u64),
    /// The stream ended without a reply.
    Nothing(String),
}

impl Reply {
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Message(Message::Error(e)) => Some(e.code),
            Reply::Closed(c) => ErrorCode::from_code(*c),
            _ => None,
        }
    }
}

pub async fn read_reply(recv: &mut quinn::RecvStream) -> Reply {
    let mut d = FrameDecoder::new(Side::Agent, FrameLimits::default());
    loop {
        match d.next_message() {
            Ok(Some(m)) => return Reply::Message(m),
            Ok(None) => {}
            Err(e) => return Reply::Nothing(e.to_string()),
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => {
                if let Err(e) = d.push(&c.bytes) {
                    return Reply::Nothing(e.to_string());
                }
            }
            Ok(None) => return Reply::Nothing("finished".into()),
            Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c))) => {
                return Reply::Closed(c.error_code.into_inner())
            }
            Err(e) => return Reply::Nothing(e.to_string()),
        }
    }
}

/// Sends raw bytes on a new stream, finishes, and reads the reply.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> (Reply, Option<(quinn::SendStream, quinn::RecvStream)>) {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(quinn::ConnectionError::ApplicationClosed(c)) => return (Reply::Closed(c.error_code.into_inner()), None),
        Err(e) => return (Reply::Nothing(e.to_string()), None),
    };
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let reply = read_reply(&mut recv).await;
    (reply, Some((send, recv)))
}

pub fn frame(m: &Message) -> Vec<u8> {
    encode(m, &FrameLimits::default()).unwrap()
}

pub fn hello(token: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: token.into() }))
}

/// A connected, welcomed client with its control stream.
pub struct Client {
    pub conn: quinn::Connection,
    pub control: quinn::RecvStream,
    pub welcome: Welcome,
    _send: quinn::SendStream,
}

impl Client {
    pub async fn request(&self, m: &Message) -> Reply {
        send_raw(&self.conn, &frame(m)).await.0
    }

    /// The next announcement on the control stream.
    pub async fn announcement(&mut self, within: Duration) -> Option<PolicyAnnouncement> {
        match tokio::time::timeout(within, read_reply(&mut self.control)).await {
            Ok(Reply::Message(Message::PolicyAnnouncement(a))) => Some(a),
            _ => None,
        }
    }
}

pub async fn client(addr: SocketAddr, cert: &Path) -> Client {
    let conn = connect(addr, cert).await.expect("connect");
    let (mut send, mut control) = conn.open_bi().await.unwrap();
    send.write_all(&hello(TOKEN)).await.unwrap();
    match read_reply(&mut control).await {
        Reply::Message(Message::Welcome(welcome)) => Client { conn, control, welcome, _send: send },
        other => panic!("expected welcome, got {other:?}"),
    }
}

pub fn expect_ack(r: &Reply) -> Ack {
    match r {
        Reply::Message(Message::Ack(a)) => *a,
        other => panic!("expected ack, got {other:?}"),
    }
}

/// Starts the `irec-server` executable on a TOML config and waits until it is bound (it writes
/// `status.json` right after binding).
pub fn start_process(config_path: &Path, data_dir: &Path) -> std::process::Child {
    let status = data_dir.join("status.json");
    let _ = std::fs::remove_file(&status);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_irec-server"))
        .arg("--config")
        .arg(config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !status.exists() {
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A config for a server process on a fixed loopback port in `dir/server`, written to
/// `dir/server.toml`; returns (config, its path).
pub fn process_config(dir: &Path) -> (ServerConfig, PathBuf) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(&dir.join("server"));
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = dir.join("server.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    (cfg, path)
}

/// Peak resident memory of a process, in KiB (Linux).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
}
