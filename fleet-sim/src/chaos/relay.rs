//! A recording QUIC relay for the traffic audit: agents connect to it (pinning its certificate),
//! it connects to the server (pinning the server's) and copies every stream both ways, keeping
//! a copy of every plaintext byte — what the server receives, exactly as it receives it, and
//! what it sends back. Connection closes are passed on with their code and reason, so agents
//! behave as they would without it.

use super::ChaosError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToAgent,
}

/// The bytes of one stream in one direction.
#[derive(Clone, Debug)]
pub struct StreamLog {
    pub direction: Direction,
    pub bytes: Vec<u8>,
}

/// Everything the relay saw.
#[derive(Clone, Debug, Default)]
pub struct Traffic(Arc<Mutex<Vec<Arc<Mutex<StreamLog>>>>>);

impl Traffic {
    fn stream(&self, direction: Direction) -> Arc<Mutex<StreamLog>> {
        let log = Arc::new(Mutex::new(StreamLog { direction, bytes: Vec::new() }));
        if let Ok(mut all) = self.0.lock() {
            all.push(log.clone());
        }
        log
    }

    /// A snapshot of every stream's bytes so far.
    pub fn streams(&self) -> Vec<StreamLog> {
        self.0.lock().map(|all| all.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect()).unwrap_or_default()
    }
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    /// The certificate agents pin to reach the relay.
    pub cert: PathBuf,
    pub traffic: Traffic,
    endpoint: quinn::Endpoint,
}

impl Relay {
    /// Listens on an ephemeral loopback port and relays to `server` (trusting `server_cert`).
    /// Must be called within a tokio runtime.
    pub fn start(dir: &Path, server: SocketAddr, server_cert: &Path) -> Result<Relay, ChaosError> {
        std::fs::create_dir_all(dir).map_err(|e| ChaosError::Io(dir.into(), e))?;
        let names = vec![irec_server::tls::DEFAULT_SERVER_NAME.to_string()];
        let (cert, key) = irec_server::tls::load_or_create(dir, &names).map_err(|e| ChaosError::Relay(e.to_string()))?;
        let config = irec_server::tls::server_config(cert, key, Duration::from_secs(30), 1 << 20).map_err(|e| ChaosError::Relay(e.to_string()))?;
        let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| ChaosError::Io(dir.into(), e))?;
        let addr = endpoint.local_addr().map_err(|e| ChaosError::Io(dir.into(), e))?;
        let traffic = Traffic::default();
        let upstream = irec_testkit::quic::endpoint()?;
        let (ep, t, cert_path) = (endpoint.clone(), traffic.clone(), server_cert.to_path_buf());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (t, up, cert_path) = (t.clone(), upstream.clone(), cert_path.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay_connection(incoming, up, server, &cert_path, t).await {
                        tracing::debug!("relay: {e}");
                    }
                });
            }
        });
        Ok(Relay { addr, cert: dir.join(irec_server::tls::CERT_FILE), traffic, endpoint })
    }

    pub fn close(&self) {
        self.endpoint.close(0u8.into(), b"relay closing");
    }
}

async fn relay_connection(incoming: quinn::Incoming, up: quinn::Endpoint, server: SocketAddr, cert: &Path, t: Traffic) -> Result<(), ChaosError> {
    let agent = incoming.await.map_err(|e| ChaosError::Relay(e.to_string()))?;
    let server = irec_testkit::quic::connect(&up, server, cert).await?;
    // Closes travel both ways with their code and reason.
    let (a, s) = (agent.clone(), server.clone());
    tokio::spawn(async move {
        if let quinn::ConnectionError::ApplicationClosed(c) = s.closed().await {
            a.close(c.error_code, &c.reason);
        } else {
            a.close(0u8.into(), b"upstream lost");
        }
    });
    let (a, s) = (agent.clone(), server.clone());
    tokio::spawn(async move {
        if let quinn::ConnectionError::ApplicationClosed(c) = a.closed().await {
            s.close(c.error_code, &c.reason);
        } else {
            s.close(0u8.into(), b"agent lost");
        }
    });
    // Streams are opened upstream in the order the agent opened them, so the server sees the
    // hello on the first one, as it would directly.
    while let Ok((a_send, a_recv)) = agent.accept_bi().await {
        let (s_send, s_recv) = match server.open_bi().await {
            Ok(s) => s,
            Err(_) => break,
        };
        tokio::spawn(pipe(a_recv, s_send, t.stream(Direction::ToServer)));
        tokio::spawn(pipe(s_recv, a_send, t.stream(Direction::ToAgent)));
    }
    Ok(())
}

async fn pipe(mut from: quinn::RecvStream, mut to: quinn::SendStream, log: Arc<Mutex<StreamLog>>) {
    loop {
        match from.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => {
                if let Ok(mut l) = log.lock() {
                    l.bytes.extend_from_slice(&c.bytes);
                }
                if to.write_all(&c.bytes).await.is_err() {
                    let _ = from.stop(0u8.into());
                    return;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(quinn::ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return;
            }
            Err(_) => return,
        }
    }
}
