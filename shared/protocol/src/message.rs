//! The messages of protocol `irec/2`, and the small types they carry.
//!
//! Direction is part of the contract: an agent sends [`Hello`], [`UploadBatch`] and
//! [`PolicyRequest`]; the server sends everything else. [`Kind`] is the one-byte tag in front of
//! every frame body (see `frame`), so a reader knows the kind — and its size cap — before reading
//! the body.

use crate::experience::ExperienceSession;
pub use irec_world::world_file::WorldFingerprint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A policy version in the server's registry (1, 2, …; never reused).
pub type PolicyVersion = u64;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of a digest (for logs and file names).
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names one upload batch. Chosen at random by the agent (128 bits, so collisions across a fleet
/// are negligible) and persisted with the batch before its first send, so every retry — even after
/// a crash — carries the same id and the server can drop the duplicate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchId(pub u128);

impl BatchId {
    /// The sled key form: 16 bytes, big-endian.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<BatchId> {
        Some(BatchId(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchId({self})")
    }
}

/// Agent → server, first frame of a connection (on its first bidirectional stream).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The shared secret of the fleet.
    pub fleet_token: String,
    /// The world the agent runs (catalog, features): a server refuses an agent of another world,
    /// whose item ids and attributes would mean other things. `None`: the peer does not say.
    pub world: Option<WorldFingerprint>,
}

// The token is a secret: keep it out of logs.
impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello").field("protocol_version", &self.protocol_version).field("world", &self.world).finish_non_exhaustive()
    }
}

/// Server → agent: the hello was accepted. Doubles as the agent's policy poll on (re)connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// The policy the server currently deploys, if any.
    pub deployed: Option<PolicyAnnouncement>,
    /// Largest upload frame body the server accepts, in bytes (agents size batches to fit).
    pub max_upload_bytes: u32,
    /// Most sessions the server accepts in one batch.
    pub max_batch_sessions: u32,
}

/// Agent → server: sessions to store, exactly once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    pub batch_id: BatchId,
    pub sessions: Vec<ExperienceSession>,
}

/// Server → agent: the batch is durable on the server (flushed before this was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub batch_id: BatchId,
    /// Sessions stored by this upload (0 for a duplicate).
    pub stored: u32,
    /// The batch id had been stored before; nothing was stored again.
    pub duplicate: bool,
}

/// Agent → server: send me the deployed policy unless I already have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRequest {
    pub have: Option<PolicyVersion>,
}

/// Identifies one published policy: its version, the round whose data it collects, its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAnnouncement {
    pub version: PolicyVersion,
    /// The round sessions collected with this policy belong to (0 for the bootstrap policy).
    pub round: u32,
    pub sha256: Sha256Digest,
}

/// Server → agent: a policy checkpoint. The agent checks `sha256` before it accepts the bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyBlob {
    pub version: PolicyVersion,
    pub round: u32,
    pub sha256: Sha256Digest,
    pub bytes: Vec<u8>,
}

impl PolicyBlob {
    pub fn announcement(&self) -> PolicyAnnouncement {
        PolicyAnnouncement { version: self.version, round: self.round, sha256: self.sha256 }
    }
}

impl fmt::Debug for PolicyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBlob")
            .field("version", &self.version)
            .field("round", &self.round)
            .field("sha256", &hex(&self.sha256))
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Server → agent: nothing newer than what the agent has (or no policy published yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoPolicy {
    /// The deployed version, if any (equal to the agent's `have` when it is up to date).
    pub deployed: Option<PolicyVersion>,
}

/// Why the server refused something. The numbers are stable: they double as QUIC application
/// close codes, and new codes are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    UnsupportedVersion = 1,
    /// Missing or wrong fleet token.
    Unauthorized = 2,
    /// A request arrived before a successful hello.
    HelloRequired = 3,
    /// A valid message that this side does not accept here (e.g. a second hello, an ack).
    UnexpectedMessage = 4,
    /// Bytes that are not a frame: bad length, unknown kind, undecodable body, trailing bytes.
    MalformedFrame = 5,
    /// A frame over its kind's size cap (refused from the header, before reading the body).
    FrameTooLarge = 6,
    /// An upload whose batch or sessions break the limits (NaN reward, unknown item, …).
    InvalidBatch = 7,
    /// The server is at its connection cap.
    TooManyConnections = 8,
    /// The peer was too slow to send a complete frame.
    Timeout = 9,
    /// The server failed (storage error, …); retrying later is right.
    Internal = 10,
    /// The server is shutting down; retrying later is right.
    ShuttingDown = 11,
    /// The agent runs another world than the server's.
    WrongWorld = 12,
}

impl ErrorCode {
    /// The stable numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u64) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            UnsupportedVersion,
            Unauthorized,
            HelloRequired,
            UnexpectedMessage,
            MalformedFrame,
            FrameTooLarge,
            InvalidBatch,
            TooManyConnections,
            Timeout,
            Internal,
            ShuttingDown,
            WrongWorld,
        ]
        .into_iter()
        .find(|c| c.code() as u64 == code)
    }

    /// Retrying the same request unchanged cannot succeed (the agent must not loop on it).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedVersion
                | ErrorCode::Unauthorized
                | ErrorCode::WrongWorld
                | ErrorCode::UnexpectedMessage
                | ErrorCode::MalformedFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::InvalidBatch
        )
    }

    /// The whole agent is misconfigured (token, version or world): no request on any connection
    /// can work.
    pub fn is_fatal(self) -> bool {
        matches!(self, ErrorCode::UnsupportedVersion | ErrorCode::Unauthorized | ErrorCode::WrongWorld)
    }
}

/// Longest error message sent, in bytes (longer ones are cut at a character boundary).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Server → agent: a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorMessage {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorMessage { code, message }
    }
}

impl fmt::Display for ErrorMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({}): {}", self.code, self.code.code(), self.message)
    }
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    UploadBatch(UploadBatch),
    Ack(Ack),
    PolicyRequest(PolicyRequest),
    PolicyBlob(PolicyBlob),
    PolicyAnnouncement(PolicyAnnouncement),
    NoPolicy(NoPolicy),
    Error(ErrorMessage),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::UploadBatch(_) => Kind::UploadBatch,
            Message::Ack(_) => Kind::Ack,
            Message::PolicyRequest(_) => Kind::PolicyRequest,
            Message::PolicyBlob(_) => Kind::PolicyBlob,
            Message::PolicyAnnouncement(_) => Kind::PolicyAnnouncement,
            Message::NoPolicy(_) => Kind::NoPolicy,
            Message::Error(_) => Kind::Error,
        }
    }
}

/// Which end of a connection a reader or writer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The edge agent (QUIC client).
    Agent,
    /// The server.
    Server,
}

/// The one-byte tag of a frame. Stable numbers; new kinds are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    UploadBatch = 3,
    Ack = 4,
    PolicyRequest = 5,
    PolicyBlob = 6,
    PolicyAnnouncement = 7,
    NoPolicy = 8,
    Error = 9,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::UploadBatch,
        Kind::Ack,
        Kind::PolicyRequest,
        Kind::PolicyBlob,
        Kind::PolicyAnnouncement,
        Kind::NoPolicy,
        Kind::Error,
    ];

    pub fn tag(self) -> u8 {
        self as u8
    }

    pub fn from_tag(tag: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// The side that sends this kind.
    pub fn sender(self) -> Side {
        match self {
            Kind::Hello | Kind::UploadBatch | Kind::PolicyRequest => Side::Agent,
            _ => Side::Server,
        }
    }
}
