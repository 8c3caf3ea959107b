//! A hand-driven QUIC client that can send anything, well-formed or not, and report exactly what
//! came back: a message, the code the server closed the connection with, or nothing.

use crate::KitError;
use irec_protocol::{encode, Ack, ErrorCode, FrameDecoder, FrameLimits, Hello, Message, PolicyAnnouncement, Side, Welcome, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What came back on a stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Message(Message),
    /// The connection was closed with this application code.
    Closed(u64),
    /// The stream ended, failed or timed out without a reply.
    Nothing(String),
}

impl Answer {
    /// The ack it carries, if it is one.
    pub fn ack(&self) -> Option<Ack> {
        match self {
            Answer::Message(Message::Ack(a)) => Some(*a),
            _ => None,
        }
    }

    /// The protocol error the reply carries, if any.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Answer::Message(Message::Error(e)) => Some(e.code),
            Answer::Closed(c) => ErrorCode::from_code(*c),
            _ => None,
        }
    }
}

/// A client endpoint on an ephemeral loopback port.
pub fn endpoint() -> Result<quinn::Endpoint, KitError> {
    quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| KitError::Io(PathBuf::from("client endpoint"), e))
}

/// Connects to `addr`, trusting only `cert`.
pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr, cert: &Path) -> Result<quinn::Connection, KitError> {
    let config = irec_edge_agent::tls::client_config(cert, Duration::from_secs(2), Duration::from_secs(30))
        .map_err(|e| KitError::Quic(e.to_string()))?;
    let connecting = ep.connect_with(config, addr, irec_server::tls::DEFAULT_SERVER_NAME).map_err(|e| KitError::Quic(e.to_string()))?;
    connecting.await.map_err(KitError::Connection)
}

/// Reads one reply from `recv` (a frame the server sends), within `within`.
pub async fn read_answer(recv: &mut quinn::RecvStream, within: Duration) -> Answer {
    let read = async {
        let mut d = FrameDecoder::new(Side::Agent, FrameLimits::default());
        loop {
            match d.next_message() {
                Ok(Some(m)) => return Answer::Message(m),
                Ok(None) => {}
                Err(e) => return Answer::Nothing(format!("bad reply: {e}")),
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => {
                    if let Err(e) = d.push(&c.bytes) {
                        return Answer::Nothing(format!("bad reply: {e}"));
                    }
                }
                Ok(None) => return Answer::Nothing("finished".into()),
                Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c))) => {
                    return Answer::Closed(c.error_code.into_inner())
                }
                Err(e) => return Answer::Nothing(e.to_string()),
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or_else(|_| Answer::Nothing(format!("no reply within {within:?}")))
}

/// Sends `bytes` on a new stream, finishes it, and reads the reply.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8], within: Duration) -> Answer {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(quinn::ConnectionError::ApplicationClosed(c)) => return Answer::Closed(c.error_code.into_inner()),
        Err(e) => return Answer::Nothing(e.to_string()),
    };
    // A refusing server stops our side early; the reply still says why.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_answer(&mut recv, within).await
}

/// A message as frame bytes (with the default limits).
pub fn frame(m: &Message) -> Vec<u8> {
    // Default limits fit every message a test builds on purpose; an oversized one is a test bug.
    encode(m, &FrameLimits::default()).unwrap_or_else(|e| panic!("encoding {:?}: {e}", m.kind()))
}

/// A hello frame carrying `token`.
pub fn hello_frame(token: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: token.into(), world: None }))
}

/// How long a request waits for its reply unless told otherwise.
pub const REPLY_WITHIN: Duration = Duration::from_secs(30);

/// A connection that said hello with `token` and got welcomed; the control stream is kept open.
pub struct Session {
    pub conn: quinn::Connection,
    pub welcome: Welcome,
    pub control: quinn::RecvStream,
    _send: quinn::SendStream,
}

impl Session {
    pub async fn hello(ep: &quinn::Endpoint, addr: SocketAddr, cert: &Path, token: &str) -> Result<Session, KitError> {
        let conn = connect(ep, addr, cert).await?;
        let (mut send, mut control) = conn.open_bi().await.map_err(|e| KitError::Quic(e.to_string()))?;
        send.write_all(&hello_frame(token)).await.map_err(|e| KitError::Quic(e.to_string()))?;
        match read_answer(&mut control, Duration::from_secs(10)).await {
            Answer::Message(Message::Welcome(welcome)) => Ok(Session { conn, welcome, control, _send: send }),
            other => Err(KitError::Quic(format!("expected a welcome, got {other:?}"))),
        }
    }

    /// One request on a new stream, and what came back.
    pub async fn request(&self, m: &Message) -> Answer {
        exchange(&self.conn, &frame(m), REPLY_WITHIN).await
    }

    /// The next announcement on the control stream, if one comes within `within`.
    pub async fn announcement(&mut self, within: Duration) -> Option<PolicyAnnouncement> {
        match read_answer(&mut self.control, within).await {
            Answer::Message(Message::PolicyAnnouncement(a)) => Some(a),
            _ => None,
        }
    }
}
