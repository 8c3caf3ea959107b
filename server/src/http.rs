//! The server's HTTP endpoint (off by default; `[http]`): the live dashboard (`/`), Prometheus
//! metrics (`/metrics`), the dashboard's data (`/api/status`), and D for a running server's
//! exports (`/export/source`). GET only, one request per connection, no keep-alive: a handful
//! of scrapers and browser tabs, never the agents' traffic.

use crate::export::{self, SourceSettings};
use crate::metrics::{self, MetricsSnapshot};
use crate::serve::Shared;
use crate::status::ServerStatus;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The dashboard: one page, no build step, its chart code written here.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Longest request head accepted, in bytes.
const MAX_HEAD: usize = 16 << 10;
/// A client must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Samples of the counters kept for the dashboard's curves (one a second: an hour).
const HISTORY: usize = 3600;

/// Settings of the endpoint (`[http]` in the server's TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// TCP address to listen on; localhost unless set otherwise (port 0: any free port, written
    /// into `status.json` as `http`).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { enabled: false, listen: SocketAddr::from(([127, 0, 0, 1], 9464)) }
    }
}

/// One sample of the counters, taken every second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall clock, ms since the epoch.
    pub t_ms: u64,
    pub d_sessions: u64,
    pub connections: usize,
    pub metrics: MetricsSnapshot,
    /// p99 of the acks since the previous sample, in ms, as a histogram bucket bound (capped at
    /// the largest); `None` when none came.
    pub ack_p99_ms: Option<f64>,
}

/// What `/api/status` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    pub status: ServerStatus,
    pub metrics: MetricsSnapshot,
    pub history: Vec<Sample>,
}

/// What the endpoint serves from.
pub struct HttpState {
    pub shared: Arc<Shared>,
    pub export: SourceSettings,
    history: Mutex<VecDeque<Sample>>,
}

impl HttpState {
    pub fn new(shared: Arc<Shared>, export: SourceSettings) -> HttpState {
        HttpState { shared, export, history: Mutex::new(VecDeque::new()) }
    }

    fn status(&self) -> ServerStatus {
        let mut s = self.shared.status();
        s.connections = self.shared.connections.load(std::sync::atomic::Ordering::Relaxed);
        s
    }

    fn sample(&self) {
        let s = self.status();
        let metrics = self.shared.metrics.snapshot();
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let largest = metrics::ACK_BUCKETS_S[metrics::ACK_BUCKETS_S.len() - 1];
        let ack_p99_ms = h.back().and_then(|prev| metrics.ack_quantile_since(&prev.metrics, 0.99)).map(|q| q.min(largest) * 1e3);
        let sample = Sample { t_ms: crate::rounds::deadline::now_ms(), d_sessions: s.counters.sessions_total, connections: s.connections, metrics, ack_p99_ms };
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(sample);
    }

    fn dashboard(&self) -> Dashboard {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        Dashboard { status: self.status(), metrics: self.shared.metrics.snapshot(), history }
    }
}

/// Serves until `stop` turns true.
pub async fn run(listener: tokio::net::TcpListener, state: Arc<HttpState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => state.sample(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, &state).await {
                            debug!("http {peer}: {e}");
                        }
                    });
                }
                Err(e) => warn!("http accept: {e}"),
            },
        }
    }
}

struct Response {
    code: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { code: "200 OK", content_type, body: body.into() }
    }

    fn error(code: &'static str, text: impl Into<String>) -> Response {
        Response { code, content_type: "text/plain; charset=utf-8", body: text.into().into_bytes() }
    }
}

async fn serve(mut stream: tokio::net::TcpStream, state: &Arc<HttpState>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Err(std::io::Error::other("request head incomplete or too long"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read_head).await.map_err(|_| std::io::Error::other("request head timed out"))??;
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let response = match (method, path) {
        ("GET", "/") | ("GET", "/index.html") => Response::ok("text/html; charset=utf-8", DASHBOARD),
        ("GET", "/metrics") => {
            let text = metrics::render(&state.shared.metrics.snapshot(), &state.status());
            Response::ok("text/plain; version=0.0.4; charset=utf-8", text)
        }
        ("GET", "/api/status") => match serde_json::to_vec(&state.dashboard()) {
            Ok(b) => Response::ok("application/json", b),
            Err(e) => Response::error("500 Internal Server Error", e.to_string()),
        },
        ("GET", "/export/source") => {
            let (store, settings) = (state.shared.store.clone(), state.export.clone());
            let built = tokio::task::spawn_blocking(move || export::from_store(&store, &settings).and_then(export::encode)).await;
            match built {
                Ok(Ok(b)) => Response::ok("application/octet-stream", b),
                Ok(Err(e)) => Response::error("500 Internal Server Error", e.to_string()),
                Err(e) => Response::error("500 Internal Server Error", e.to_string()),
            }
        }
        ("GET", _) => Response::error("404 Not Found", format!("no such page: {path} (try /, /metrics, /api/status)")),
        _ => Response::error("405 Method Not Allowed", "GET only"),
    };
    let header = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.code,
        response.content_type,
        response.body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}

/// A blocking GET of `path` on `addr` (for tools and tests): the body of a 200, else the status
/// line and body as the error. Reads `Content-Length` bytes when the server says how many (some,
/// Chromium's DevTools among them, keep the connection open after answering).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let split = loop {
        if let Some(i) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before the end of the headers".into());
        }
        all.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    let mut body = all.split_off(split + 4);
    match length {
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err(format!("the body ended after {} of {len} bytes", body.len()));
                }
                body.extend_from_slice(&buf[..n]);
            }
            body.truncate(len);
        }
        None => {
            stream.read_to_end(&mut body).map_err(|e| e.to_string())?;
        }
    }
    let status = head.lines().next().unwrap_or_default().to_string();
    if !status.contains(" 200 ") {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}
