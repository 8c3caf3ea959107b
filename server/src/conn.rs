//! One agent connection: the thin shell around [`ServerConnection`].
//!
//! Hello on the first bidirectional stream (within `hello_timeout`), then that stream stays open
//! as the control stream for policy announcements, while every further bidirectional stream is
//! one request handled in its own task. A bad frame gets an `Error` frame and a closed stream; a
//! bad hello also closes the connection. Nothing here can take the server down: every failure
//! ends this connection's tasks only.

use crate::io::{self, ReadError};
use crate::metrics::Metrics;
use crate::serve::Shared;
use irec_protocol::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// How long a rejected peer gets to receive our error frame before the connection is closed.
const LINGER: Duration = Duration::from_millis(500);

fn close_code(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.code() as u32)
}

fn error_frame(shared: &Shared, error: &ErrorMessage) -> Vec<u8> {
    // An error message is capped well below the small-frame cap, so this cannot fail; an empty
    // write would still end the stream if it did.
    encode(&Message::Error(error.clone()), &shared.limits).unwrap_or_default()
}

/// Sends `error` on a stream and ends it, telling the peer to stop sending on its side.
async fn refuse_stream(shared: &Shared, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, error: &ErrorMessage) {
    let _ = recv.stop(close_code(error.code));
    if let Err(e) = io::send_and_finish(send, &error_frame(shared, error)).await {
        debug!("could not deliver error {error}: {e}");
    }
}

/// Sends `error`, waits briefly for it to arrive, then closes the whole connection with it.
async fn refuse_connection(
    shared: &Shared,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    error: &ErrorMessage,
) {
    refuse_stream(shared, send, recv, error).await;
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    conn.close(close_code(error.code), error.message.as_bytes());
}

fn frame_input(r: Result<(Message, io::Held), ReadError>) -> Result<(Result<Message, FrameError>, io::Held), ReadError> {
    match r {
        Ok((m, held)) => Ok((Ok(m), held)),
        Err(ReadError::Frame(e)) => Ok((Err(e), Vec::new())),
        // A stream finished without a byte is not a frame either: refuse it clearly rather
        // than hang up without a word (found by the R3 live fuzzer).
        Err(ReadError::Finished) => Ok((Err(FrameError::NoFrame), Vec::new())),
        Err(other) => Err(other),
    }
}

/// Accepts a connection that is over the cap just long enough to tell it so.
pub async fn reject_over_cap(incoming: quinn::Incoming, timeout: Duration) {
    if let Ok(Ok(conn)) = tokio::time::timeout(timeout, async { incoming.accept()?.await }).await {
        conn.close(close_code(ErrorCode::TooManyConnections), b"server is at its connection cap");
    }
}

/// Serves one connection until it closes or the server stops.
pub async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let conn = match tokio::time::timeout(shared.hello_timeout, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!("handshake failed: {e}"),
        Err(_) => return debug!("handshake timed out"),
    };
    let peer = conn.remote_address();
    let mut machine = ServerConnection::new(shared.rules.clone());

    // Hello: the first stream, within the hello timeout (a silent peer is dropped).
    let (mut control, mut recv) = match tokio::time::timeout(shared.hello_timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%peer, "closed before hello: {e}"),
        Err(_) => {
            let e = ErrorMessage::new(ErrorCode::Timeout, "no hello in time");
            return conn.close(close_code(e.code), e.message.as_bytes());
        }
    };
    // A hello takes no budget: it is small, and waiting behind others' uploads would let them
    // keep new agents out.
    let input = match frame_input(io::read_message(&mut recv, shared.limits, shared.hello_timeout, &[]).await) {
        Ok((i, _held)) => i,
        Err(ReadError::Timeout(_)) => {
            let e = ErrorMessage::new(ErrorCode::Timeout, "hello not complete in time");
            return refuse_connection(&shared, &conn, &mut control, &mut recv, &e).await;
        }
        Err(e) => return debug!(%peer, "hello stream failed: {e}"),
    };
    let mut announced = shared.announce.clone();
    let deployed = *announced.borrow_and_update();
    let welcome = match machine.on_hello(input, deployed) {
        Ok(w) => w,
        Err(rejection) => {
            warn!(%peer, "refused: {}", rejection.error);
            return refuse_connection(&shared, &conn, &mut control, &mut recv, &rejection.error).await;
        }
    };
    let Ok(frame) = encode(&Message::Welcome(welcome), &shared.limits) else { return };
    if control.write_all(&frame).await.is_err() {
        return;
    }
    debug!(%peer, "agent connected");

    let machine = Arc::new(machine);
    // This connection's share of the request budget: one agent's slow or stalled uploads can
    // hold no more than this of the server's, and never all of it.
    let budgets = [Arc::new(tokio::sync::Semaphore::new(shared.connection_request_bytes)), shared.request_budget.clone()];
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    requests.spawn(serve_request(shared.clone(), machine.clone(), budgets.clone(), send, recv));
                }
                Err(e) => {
                    debug!(%peer, "connection ended: {e}");
                    break;
                }
            },
            changed = announced.changed() => {
                if changed.is_err() {
                    break;
                }
                let ann = *announced.borrow_and_update();
                if let Some(ann) = ann {
                    let sent = match encode(&Message::PolicyAnnouncement(ann), &shared.limits) {
                        Ok(f) => control.write_all(&f).await.is_ok(),
                        Err(_) => false,
                    };
                    if !sent {
                        debug!(%peer, "control stream gone; closing");
                        conn.close(close_code(ErrorCode::Internal), b"control stream failed");
                        break;
                    }
                }
            }
            _ = stop.changed() => {
                conn.close(close_code(ErrorCode::ShuttingDown), b"server shutting down");
                break;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // Requests in progress finish (their ingest may be mid-transaction) before the store is let go.
    while requests.join_next().await.is_some() {}
}

async fn serve_request(shared: Arc<Shared>, machine: Arc<ServerConnection>, budgets: [io::Budget; 2], mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    // The request's share of the byte budget is held until its reply is sent.
    let (input, _held) = match frame_input(io::read_message(&mut recv, shared.limits, shared.request_timeout, &budgets).await) {
        Ok(i) => i,
        Err(ReadError::Timeout(_)) => {
            let e = ErrorMessage::new(ErrorCode::Timeout, "request not complete in time");
            return refuse_stream(&shared, &mut send, &mut recv, &e).await;
        }
        Err(e) => return debug!("request stream failed: {e}"),
    };
    let request = match machine.on_request(input) {
        Ok(r) => r,
        Err(rejection) => {
            Metrics::add(&shared.metrics.requests_refused, 1);
            warn!("request refused: {}", rejection.error);
            return refuse_stream(&shared, &mut send, &mut recv, &rejection.error).await;
        }
    };
    let read_at = std::time::Instant::now();
    let (reply, upload) = match request {
        Request::Upload(batch) => (shared.ingest(batch).await, true),
        Request::Policy { have } => (shared.policy_reply(have).await, false),
    };
    match reply {
        Ok(frame) => match io::send_and_finish(&mut send, &frame).await {
            Ok(()) if upload => shared.metrics.ack(read_at.elapsed()),
            Ok(()) => {}
            Err(e) => debug!("reply not delivered: {e}"),
        },
        Err(error) => {
            Metrics::add(&shared.metrics.requests_refused, 1);
            warn!("request failed: {error}");
            refuse_stream(&shared, &mut send, &mut recv, &error).await;
        }
    }
}
