//! Frames over quinn streams: the only place the server touches stream bytes.

use irec_protocol::frame::HEADER_LEN;
use irec_protocol::{FrameDecoder, FrameError, FrameLimits, Message, Side};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A budget of request bytes (a connection's, or the server's).
pub type Budget = Arc<Semaphore>;
/// A request's share of its budgets, released when dropped.
pub type Held = Vec<OwnedSemaphorePermit>;

/// Reads exactly one message sent by the agent, taking its frame's size from each of `budgets`
/// in order from the moment the header announced it: the body is read only within them, and
/// the returned permits keep the bytes taken until the caller is done with the message.
pub async fn read_message(recv: &mut quinn::RecvStream, limits: FrameLimits, within: Duration, budgets: &[Budget]) -> Result<(Message, Held), ReadError> {
    match tokio::time::timeout(within, read_inner(recv, limits, budgets)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout(within)),
    }
}

async fn read_inner(recv: &mut quinn::RecvStream, limits: FrameLimits, budgets: &[Budget]) -> Result<(Message, Held), ReadError> {
    let mut decoder = FrameDecoder::new(Side::Server, limits);
    let mut held: Held = Vec::new();
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok((m, held));
        }
        let want = decoder.wanted()?;
        if held.len() < budgets.len() && decoder.buffered() >= HEADER_LEN {
            // The header passed its checks (kind, direction, cap): take the frame's size.
            let size = u32::try_from(decoder.buffered() + want).unwrap_or(u32::MAX);
            for b in budgets {
                held.push(b.clone().acquire_many_owned(size).await.map_err(|_| ReadError::Finished)?);
            }
        }
        match recv.read_chunk(want.clamp(1, READ_CHUNK), true).await? {
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
