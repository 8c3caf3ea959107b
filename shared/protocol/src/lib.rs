//! irec-protocol: the wire protocol between edge agents and the server (`irec/2`), the experience it
//! carries, and the IO-free state machines that speak it. No candle, no sled, no IO: the binaries
//! drive these with thin tokio + quinn shells.
//!
//! Layers, bottom up (mini-redis style):
//! - [`experience`]: the anonymized sessions devices upload (the rows of D) and their validation.
//! - [`frame`]: bytes ⇄ frames — `u32` length prefix, one kind byte, a bincode-2 body; per-kind size
//!   caps checked from the header, before any body is buffered; an incremental decoder.
//! - [`message`]: the messages and their small types (batch ids, versions, digests, error codes).
//! - [`validate`]: what an upload must satisfy (batch rules + `ExperienceSession::validate`).
//! - state machines, time passed in, no IO:
//!   - [`server_conn`]: the server's side of a connection (hello first, then requests);
//!   - [`upload`]: the agent's upload queue (one batch per stream, ack → delete, backoff);
//!   - [`policy_sync`]: the agent's policy pulls (request on connect/announcement, verify hash);
//!   - [`batching`]: when the agent cuts finished sessions into batches (full, or after a linger);
//!   - [`backoff`]: exponential backoff with deterministic jitter, and the agent's reconnects.
//! - [`reply`]: what came back for an agent's request, and how bad a failure is (fatal,
//!   permanent, transient), the one place those rules live.
//!
//! Transport: QUIC with ALPN [`ALPN`]. The agent's first bidirectional stream carries `Hello` →
//! `Welcome` and then stays open as the control stream on which the server pushes
//! `PolicyAnnouncement`s. Every request (`UploadBatch`, `PolicyRequest`) gets its own
//! bidirectional stream: one request frame, the agent finishes its side, one response frame.
//! docs/protocol.md is the reference.

pub mod backoff;
pub mod batching;
pub mod experience;
pub mod frame;
pub mod message;
pub mod policy_sync;
pub mod reply;
pub mod server_conn;
pub mod upload;
pub mod validate;

pub use backoff::{Backoff, Reconnect};
pub use batching::{Batching, Cut};
pub use frame::{encode, FrameDecoder, FrameError, FrameLimits};
pub use message::*;
pub use policy_sync::{PolicyId, PolicyStep, PolicySync, SyncError, Verified};
pub use reply::{Disposition, Reply};
pub use server_conn::{ConnState, Rejection, Request, ServerConnection, ServerRules};
pub use upload::{AfterFailure, Failure, UploadConfig, UploadStep, Uploader, UploaderView};
pub use validate::{experience_limits, UploadRules};

/// The protocol version a hello carries. Bumped on any incompatible change (with the ALPN).
pub const PROTOCOL_VERSION: u32 = 2;

/// The TLS application protocol both ends require.
pub const ALPN: &[u8] = b"irec/2";
