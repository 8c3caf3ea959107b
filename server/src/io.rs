//! Frames over quinn streams: the only place the server touches stream bytes.

use irec_shared::protocol::{FrameDecoder, FrameError, FrameLimits, Message, Side};
use std::time::Duration;

/// Most bytes asked of the stream per read (the decoder never asks beyond the current frame).
const READ_CHUNK: usize = 64 * 1024;

/// Why no message could be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not an acceptable frame: tell the peer.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The stream ended before any byte of a frame.
    #[error("stream finished without a frame")]
    Finished,
    /// The peer did not deliver a whole frame in time: tell the peer.
    #[error("no complete frame within {0:?}")]
    Timeout(Duration),
    /// The stream or connection failed: nobody to tell.
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads exactly one message sent by the agent.
pub async fn read_message(recv: &mut quinn::RecvStream, limits: FrameLimits, within: Duration) -> Result<Message, ReadError> {
    match tokio::time::timeout(within, read_inner(recv, limits)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout(within)),
    }
}

async fn read_inner(recv: &mut quinn::RecvStream, limits: FrameLimits) -> Result<Message, ReadError> {
    let mut decoder = FrameDecoder::new(Side::Server, limits);
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(m);
        }
        let want = decoder.wanted()?.clamp(1, READ_CHUNK);
        match recv.read_chunk(want, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes)?,
            None if decoder.buffered() == 0 => return Err(ReadError::Finished),
            None => {
                decoder.finish()?;
                return Err(ReadError::Finished);
            }
        }
    }
}

/// Writes pre-encoded frame bytes and finishes the stream.
pub async fn send_and_finish(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), quinn::WriteError> {
    send.write_all(frame).await?;
    // Finishing an already-reset stream is not worth reporting.
    let _ = send.finish();
    Ok(())
}
