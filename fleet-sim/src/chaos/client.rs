//! A hand-driven QUIC client that can send anything, well-formed or not, and report exactly what
//! came back: a message, the code the server closed the connection with, or nothing.

use super::ChaosError;
use irec_protocol::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What came back on a stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Message(Message),
    /// The connection was closed with this application code.
    Closed(u64),
    /// The stream ended, failed or timed out without a reply.
    Nothing(String),
}

impl Reply {
    /// The protocol error the reply carries, if any.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Message(Message::Error(e)) => Some(e.code),
            Reply::Closed(c) => ErrorCode::from_code(*c),
            _ => None,
        }
    }
}

/// A client endpoint on an ephemeral loopback port.
pub fn endpoint() -> Result<quinn::Endpoint, ChaosError> {
    quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| ChaosError::Io(PathBuf::from("client endpoint"), e))
}

/// Connects to `addr`, trusting only `cert`.
pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr, cert: &Path) -> Result<quinn::Connection, ChaosError> {
    let config = irec_edge_agent::tls::client_config(cert, Duration::from_secs(2), Duration::from_secs(30))
        .map_err(|e| ChaosError::Relay(e.to_string()))?;
    let connecting = ep.connect_with(config, addr, irec_server::tls::DEFAULT_SERVER_NAME).map_err(|e| ChaosError::Relay(e.to_string()))?;
    connecting.await.map_err(|e| ChaosError::Relay(format!("connecting to {addr}: {e}")))
}

/// Reads one reply from `recv` (a frame the server sends), within `within`.
pub async fn read_reply(recv: &mut quinn::RecvStream, within: Duration) -> Reply {
    let read = async {
        let mut d = FrameDecoder::new(Side::Agent, FrameLimits::default());
        loop {
            match d.next_message() {
                Ok(Some(m)) => return Reply::Message(m),
                Ok(None) => {}
                Err(e) => return Reply::Nothing(format!("bad reply: {e}")),
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => {
                    if let Err(e) = d.push(&c.bytes) {
                        return Reply::Nothing(format!("bad reply: {e}"));
                    }
                }
                Ok(None) => return Reply::Nothing("finished".into()),
                Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c))) => {
                    return Reply::Closed(c.error_code.into_inner())
                }
                Err(e) => return Reply::Nothing(e.to_string()),
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or_else(|_| Reply::Nothing(format!("no reply within {within:?}")))
}

/// Sends `bytes` on a new stream, finishes it, and reads the reply.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8], within: Duration) -> Reply {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(quinn::ConnectionError::ApplicationClosed(c)) => return Reply::Closed(c.error_code.into_inner()),
        Err(e) => return Reply::Nothing(e.to_string()),
    };
    // A refusing server stops our side early; the reply still says why.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_reply(&mut recv, within).await
}

/// A connection that said hello with `token` and got welcomed; the control stream is kept open.
pub struct Session {
    pub conn: quinn::Connection,
    pub welcome: Welcome,
    pub control: quinn::RecvStream,
    _send: quinn::SendStream,
}

pub async fn hello(ep: &quinn::Endpoint, addr: SocketAddr, cert: &Path, token: &str) -> Result<Session, ChaosError> {
    let conn = connect(ep, addr, cert).await?;
    let (mut send, mut control) = conn.open_bi().await.map_err(|e| ChaosError::Relay(e.to_string()))?;
    let frame = encode(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: token.into() }), &FrameLimits::default())
        .map_err(|e| ChaosError::Relay(e.to_string()))?;
    send.write_all(&frame).await.map_err(|e| ChaosError::Relay(e.to_string()))?;
    match read_reply(&mut control, Duration::from_secs(10)).await {
        Reply::Message(Message::Welcome(welcome)) => Ok(Session { conn, welcome, control, _send: send }),
        other => Err(ChaosError::Relay(format!("expected a welcome, got {other:?}"))),
    }
}
