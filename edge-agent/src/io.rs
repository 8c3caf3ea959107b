//! Frames over quinn streams on the agent side, and how transport failures read as protocol
//! errors (a server that refuses us closes the connection with an error code and reason).

use irec_protocol::{encode, ErrorCode, ErrorMessage, FrameDecoder, FrameLimits, Message, Reply, Side};

const READ_CHUNK: usize = 64 * 1024;

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The server answered with an error (a frame, or the code it closed the connection with).
    #[error("refused: {0}")]
    Refused(ErrorMessage),
    /// The connection or stream failed, or the reply was not a frame: try again later.
    #[error("transport: {0}")]
    Transport(String),
}

impl RequestError {
    /// As the protocol machines read it.
    pub fn into_reply(self) -> Reply {
        match self {
            RequestError::Refused(e) => Reply::Refused(e),
            RequestError::Transport(why) => Reply::Transport(why),
        }
    }
}

/// A request's outcome as the protocol machines read it.
pub fn reply(result: Result<Message, RequestError>) -> Reply {
    result.map_or_else(RequestError::into_reply, Reply::Message)
}

fn from_connection(e: &quinn::ConnectionError) -> RequestError {
    if let quinn::ConnectionError::ApplicationClosed(close) = e {
        if let Some(code) = ErrorCode::from_code(close.error_code.into_inner()) {
            return RequestError::Refused(ErrorMessage::new(code, String::from_utf8_lossy(&close.reason).into_owned()));
        }
    }
    RequestError::Transport(e.to_string())
}

impl From<quinn::ConnectionError> for RequestError {
    fn from(e: quinn::ConnectionError) -> Self {
        from_connection(&e)
    }
}

impl From<quinn::ReadError> for RequestError {
    fn from(e: quinn::ReadError) -> Self {
        match &e {
            quinn::ReadError::ConnectionLost(c) => from_connection(c),
            _ => RequestError::Transport(e.to_string()),
        }
    }
}

/// Reads the next whole message into `decoder` from `recv`; `Ok(None)` when the stream ended
/// cleanly between frames.
pub async fn next_message(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Result<Option<Message>, RequestError> {
    loop {
        if let Some(m) = decoder.next_message().map_err(|e| RequestError::Transport(e.to_string()))? {
            return Ok(Some(m));
        }
        let want = decoder.wanted().map_err(|e| RequestError::Transport(e.to_string()))?.clamp(1, READ_CHUNK);
        match recv.read_chunk(want, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes).map_err(|e| RequestError::Transport(e.to_string()))?,
            None => {
                decoder.finish().map_err(|e| RequestError::Transport(e.to_string()))?;
                return Ok(None);
            }
        }
    }
}

/// One request on its own stream: send `request`, finish, read the one reply. A server `Error`
/// frame comes back as [`RequestError::Refused`].
pub async fn request(conn: &quinn::Connection, request: &Message, limits: FrameLimits) -> Result<Message, RequestError> {
    let frame = encode(request, &limits).map_err(|e| RequestError::Refused(ErrorMessage::new(e.code(), e.to_string())))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    // A server that refuses the request stops our send side but still answers with an error
    // frame, so a failed write is not the end: the reply says why.
    let wrote = send.write_all(&frame).await;
    let _ = send.finish();
    let mut decoder = FrameDecoder::new(Side::Agent, limits);
    let reply = next_message(&mut recv, &mut decoder).await;
    match (reply, wrote) {
        (Ok(Some(Message::Error(e))), _) => Err(RequestError::Refused(e)),
        (Ok(Some(m)), Ok(())) => Ok(m),
        (Ok(Some(_)), Err(e)) | (Ok(None), Err(e)) => Err(RequestError::Transport(e.to_string())),
        (Ok(None), Ok(())) => Err(RequestError::Transport("stream ended without a reply".to_string())),
        (Err(e), _) => Err(e),
    }
}
