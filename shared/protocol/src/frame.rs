//! Frames: how messages become bytes and back.
//!
//! ```text
//! +----------------+------+---------------------------+
//! | length: u32 BE | kind | body: bincode 2 (standard) |
//! +----------------+------+---------------------------+
//!   length = 1 + body length (the kind byte and the body)
//! ```
//!
//! Each [`Kind`] has a size cap ([`FrameLimits`]). The [`FrameDecoder`] checks the 5-byte header —
//! known kind, sent by the other side, body within its cap — as soon as those 5 bytes are in, so a
//! hostile length never makes anyone allocate or wait for a body it will refuse. Nothing here does
//! IO: the shells push whatever bytes arrive and pull whole messages out.

use super::message::{Kind, Message, Side};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bytes before the body: the length prefix and the kind tag.
pub const HEADER_LEN: usize = 5;

/// Per-kind caps on the body of a frame, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameLimits {
    /// Cap on an upload batch body, in bytes (default 4 MiB).
    pub upload_bytes: u32,
    /// Cap on a policy blob body, in bytes (default 64 MiB; checkpoints are a few MB).
    pub policy_bytes: u32,
    /// Cap on every other kind, in bytes (default 16 KiB: hellos, acks, errors are tiny).
    pub small_bytes: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { upload_bytes: 4 << 20, policy_bytes: 64 << 20, small_bytes: 16 << 10 }
    }
}

impl FrameLimits {
    /// The largest body accepted for `kind`, in bytes.
    pub fn cap(&self, kind: Kind) -> usize {
        match kind {
            Kind::UploadBatch => self.upload_bytes as usize,
            Kind::PolicyBlob => self.policy_bytes as usize,
            _ => self.small_bytes as usize,
        }
    }
}

/// Why bytes are not an acceptable frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is too short to hold a kind tag")]
    Empty(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a {kind:?} frame is not accepted from this peer")]
    WrongDirection { kind: Kind },
    #[error("{kind:?} frame body of {len} bytes exceeds its cap of {cap} bytes")]
    TooLarge { kind: Kind, len: usize, cap: usize },
    #[error("{kind:?} frame body does not decode: {reason}")]
    Body { kind: Kind, reason: String },
    #[error("{kind:?} frame body has {extra} trailing bytes")]
    Trailing { kind: Kind, extra: usize },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("stream ended before a frame")]
    NoFrame,
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl FrameError {
    /// The error code a peer is told.
    pub fn code(&self) -> super::ErrorCode {
        match self {
            FrameError::TooLarge { .. } => super::ErrorCode::FrameTooLarge,
            _ => super::ErrorCode::MalformedFrame,
        }
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn body<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Encodes a message as one frame, refusing one over its cap (the peer would refuse it anyway).
pub fn encode(message: &Message, limits: &FrameLimits) -> Result<Vec<u8>, FrameError> {
    let kind = message.kind();
    let payload = match message {
        Message::Hello(m) => body(m)?,
        Message::Welcome(m) => body(m)?,
        Message::UploadBatch(m) => body(m)?,
        Message::Ack(m) => body(m)?,
        Message::PolicyRequest(m) => body(m)?,
        Message::PolicyBlob(m) => body(m)?,
        Message::PolicyAnnouncement(m) => body(m)?,
        Message::NoPolicy(m) => body(m)?,
        Message::Error(m) => body(m)?,
    };
    let cap = limits.cap(kind);
    if payload.len() > cap {
        return Err(FrameError::TooLarge { kind, len: payload.len(), cap });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(kind.tag());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The body size of an encoded message (what the caps apply to), without framing it.
pub fn body_len(message: &Message) -> Result<usize, FrameError> {
    // Encoding with unbounded caps measures the body; cheap next to sending it.
    let unbounded = FrameLimits { upload_bytes: u32::MAX, policy_bytes: u32::MAX, small_bytes: u32::MAX };
    Ok(encode(message, &unbounded)?.len() - HEADER_LEN)
}

/// Decodes a body with a bincode byte limit sized to it.
///
/// bincode allocates a string's buffer from its claimed length *before* reading it, so without a
/// limit a 15-byte frame claiming a terabyte-long string aborts the process. The limit counts the
/// in-memory size of what is decoded; a body of `n` bytes legitimately decodes to at most about
/// 8·n (a 1-byte varint can become a `u64`), so the smallest power-of-four bucket above
/// 8·n + 64 KiB never refuses a valid body and bounds what a hostile one can claim.
fn decode_body<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, FrameError> {
    let bound = bytes.len().saturating_mul(8).saturating_add(64 << 10);
    macro_rules! limited {
        ($($limit:expr),*) => {
            $(
                if bound <= $limit {
                    let c = config().with_limit::<{ $limit }>();
                    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, c)
                        .map_err(|e| FrameError::Body { kind, reason: e.to_string() })?;
                    if used != bytes.len() {
                        return Err(FrameError::Trailing { kind, extra: bytes.len() - used });
                    }
                    return Ok(value);
                }
            )*
        };
    }
    limited!(1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28, 1 << 30, 1 << 32);
    Err(FrameError::TooLarge { kind, len: bytes.len(), cap: (1usize << 32) / 8 })
}

fn decode_message(kind: Kind, bytes: &[u8]) -> Result<Message, FrameError> {
    Ok(match kind {
        Kind::Hello => Message::Hello(decode_body(kind, bytes)?),
        Kind::Welcome => Message::Welcome(decode_body(kind, bytes)?),
        Kind::UploadBatch => Message::UploadBatch(decode_body(kind, bytes)?),
        Kind::Ack => Message::Ack(decode_body(kind, bytes)?),
        Kind::PolicyRequest => Message::PolicyRequest(decode_body(kind, bytes)?),
        Kind::PolicyBlob => Message::PolicyBlob(decode_body(kind, bytes)?),
        Kind::PolicyAnnouncement => Message::PolicyAnnouncement(decode_body(kind, bytes)?),
        Kind::NoPolicy => Message::NoPolicy(decode_body(kind, bytes)?),
        Kind::Error => Message::Error(decode_body(kind, bytes)?),
    })
}

/// Incremental decoder for the frames one side receives.
///
/// Errors are final: after one, the stream is not a frame stream any more and the shell closes it.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The side that reads (frames must come from the other side).
    reader: Side,
    limits: FrameLimits,
    buf: Vec<u8>,
    /// Set once the header at the front of `buf` passed its checks: (kind, body length).
    header: Option<(Kind, usize)>,
}

impl FrameDecoder {
    pub fn new(reader: Side, limits: FrameLimits) -> FrameDecoder {
        FrameDecoder { reader, limits, buf: Vec::new(), header: None }
    }

    /// Bytes held that are not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes, checking the pending frame's header as soon as it is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        self.check_header().map(|_| ())
    }

    /// Bytes still needed to complete the pending frame (at least 1 while it is incomplete; 0 when a
    /// whole frame is buffered). Lets a shell read no further than the frame it is waiting for.
    pub fn wanted(&mut self) -> Result<usize, FrameError> {
        Ok(match self.check_header()? {
            None => HEADER_LEN - self.buf.len(),
            Some((_, len)) => (HEADER_LEN + len).saturating_sub(self.buf.len()),
        })
    }

    fn check_header(&mut self) -> Result<Option<(Kind, usize)>, FrameError> {
        if self.header.is_some() || self.buf.len() < HEADER_LEN {
            return Ok(self.header);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == 0 {
            return Err(FrameError::Empty(len));
        }
        let kind = Kind::from_tag(self.buf[4]).ok_or(FrameError::UnknownKind(self.buf[4]))?;
        if kind.sender() == self.reader {
            return Err(FrameError::WrongDirection { kind });
        }
        let body = len as usize - 1;
        let cap = self.limits.cap(kind);
        if body > cap {
            return Err(FrameError::TooLarge { kind, len: body, cap });
        }
        self.header = Some((kind, body));
        Ok(self.header)
    }

    /// The next whole message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let Some((kind, len)) = self.check_header()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let message = decode_message(kind, &self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        self.header = None;
        message.map(Some)
    }

    /// The peer finished its side of the stream: any partial frame left is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered: self.buf.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::Action;
    use crate::experience::{ExperienceSession, ExperienceTurn};
    use crate::message::*;

    fn session() -> ExperienceSession {
        ExperienceSession {
            round: 2,
            turns: vec![ExperienceTurn {
                action: Action([1, 0, 2, 0, 1, 0]),
                shown: 17,
                utterance: "Good".into(),
                reward: 0.75,
                done: true,
            }],
        }
    }

    fn all_messages() -> Vec<Message> {
        let ann = PolicyAnnouncement { version: 3, round: 2, sha256: sha256(b"x") };
        vec![
            Message::Hello(Hello { protocol_version: 1, fleet_token: "t".into(), world: Some(WorldFingerprint([3; 32])) }),
            Message::Welcome(Welcome { protocol_version: 1, deployed: Some(ann), max_upload_bytes: 9, max_batch_sessions: 4 }),
            Message::UploadBatch(UploadBatch { batch_id: BatchId(u128::MAX - 5), sessions: vec![session(), session()] }),
            Message::Ack(Ack { batch_id: BatchId(7), stored: 2, duplicate: false }),
            Message::PolicyRequest(PolicyRequest { have: Some(2) }),
            Message::PolicyBlob(PolicyBlob { version: 3, round: 2, sha256: sha256(b"x"), bytes: b"x".to_vec() }),
            Message::PolicyAnnouncement(ann),
            Message::NoPolicy(NoPolicy { deployed: None }),
            Message::Error(ErrorMessage::new(ErrorCode::InvalidBatch, "bad")),
        ]
    }

    fn reader_of(m: &Message) -> Side {
        match m.kind().sender() {
            Side::Agent => Side::Server,
            Side::Server => Side::Agent,
        }
    }

    #[test]
    fn every_message_round_trips_even_one_byte_at_a_time() {
        for m in all_messages() {
            let bytes = encode(&m, &FrameLimits::default()).unwrap();
            let mut d = FrameDecoder::new(reader_of(&m), FrameLimits::default());
            let mut got = None;
            for b in &bytes {
                assert!(got.is_none(), "message completed early");
                d.push(std::slice::from_ref(b)).unwrap();
                got = d.next_message().unwrap();
            }
            assert_eq!(got.as_ref(), Some(&m));
            assert_eq!(d.buffered(), 0);
            d.finish().unwrap();
        }
    }

    #[test]
    fn several_frames_in_one_push_come_out_in_order() {
        let a = Message::Ack(Ack { batch_id: BatchId(1), stored: 1, duplicate: false });
        let b = Message::NoPolicy(NoPolicy { deployed: Some(4) });
        let mut bytes = encode(&a, &FrameLimits::default()).unwrap();
        bytes.extend(encode(&b, &FrameLimits::default()).unwrap());
        let mut d = FrameDecoder::new(Side::Agent, FrameLimits::default());
        d.push(&bytes).unwrap();
        assert_eq!(d.next_message().unwrap(), Some(a));
        assert_eq!(d.next_message().unwrap(), Some(b));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn an_oversized_header_is_refused_before_any_body_arrives() {
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        let mut header = (u32::MAX).to_be_bytes().to_vec();
        header.push(Kind::UploadBatch.tag());
        let err = d.push(&header).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { kind: Kind::UploadBatch, .. }), "{err:?}");
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        // A hello gets the small cap, not the upload one.
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        let mut header = (100_000u32).to_be_bytes().to_vec();
        header.push(Kind::Hello.tag());
        assert!(matches!(d.push(&header), Err(FrameError::TooLarge { kind: Kind::Hello, .. })));
    }

    #[test]
    fn garbage_unknown_kinds_and_wrong_direction_are_malformed() {
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        assert!(matches!(d.push(&[0, 0, 0, 3, 200, 1, 2]), Err(FrameError::UnknownKind(200))));
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        assert!(matches!(d.push(&[0, 0, 0, 0, 1]), Err(FrameError::Empty(0))));
        let ack = encode(&Message::Ack(Ack { batch_id: BatchId(1), stored: 0, duplicate: true }), &FrameLimits::default());
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        let err = d.push(&ack.unwrap()).unwrap_err();
        assert_eq!(err, FrameError::WrongDirection { kind: Kind::Ack });
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
        // A plausible header over a body that is not bincode of a hello.
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        d.push(&[0, 0, 0, 4, Kind::Hello.tag(), 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(d.next_message(), Err(FrameError::Body { kind: Kind::Hello, .. })));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let m = Message::PolicyRequest(PolicyRequest { have: None });
        let mut bytes = encode(&m, &FrameLimits::default()).unwrap();
        bytes.push(0);
        bytes[3] += 1; // the length now covers the stray byte
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        d.push(&bytes).unwrap();
        assert!(matches!(d.next_message(), Err(FrameError::Trailing { extra: 1, .. })));
        let bytes = encode(&m, &FrameLimits::default()).unwrap();
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        d.push(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(d.next_message().unwrap(), None);
        assert_eq!(d.wanted().unwrap(), 1);
        assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn encoding_refuses_what_the_peer_would_refuse() {
        let limits = FrameLimits { upload_bytes: 16, ..FrameLimits::default() };
        let m = Message::UploadBatch(UploadBatch { batch_id: BatchId(1), sessions: vec![session(); 4] });
        assert!(matches!(encode(&m, &limits), Err(FrameError::TooLarge { .. })));
        assert!(body_len(&m).unwrap() > 16);
    }

    /// A length prefix inside the body (a string claiming a terabyte) must not make the decoder
    /// allocate it: bincode sizes a string's buffer from its claimed length before reading it.
    #[test]
    fn a_hostile_inner_length_is_refused_without_allocating_it() {
        // Hello { protocol_version: 1, fleet_token: <2^40 bytes claimed> } in bincode varints:
        // 253 marks a u64 that follows in little-endian.
        let body = [1u8, 253, 0, 0, 0, 0, 0, 1, 0, 0];
        let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(Kind::Hello.tag());
        frame.extend_from_slice(&body);
        let mut d = FrameDecoder::new(Side::Server, FrameLimits::default());
        d.push(&frame).unwrap();
        assert!(matches!(d.next_message(), Err(FrameError::Body { kind: Kind::Hello, .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 512, ..Default::default() })]

        /// Arbitrary bytes in arbitrary chunks: the decoder never panics, never buffers more than
        /// one capped frame plus one chunk, and stops at its first error.
        #[test]
        fn hostile_bytes_never_panic_or_overbuffer(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            chunk in 1usize..300,
            server in proptest::prelude::any::<bool>(),
        ) {
            let limits = FrameLimits { upload_bytes: 1024, policy_bytes: 2048, small_bytes: 256 };
            let side = if server { Side::Server } else { Side::Agent };
            let mut d = FrameDecoder::new(side, limits);
            'feed: for c in bytes.chunks(chunk) {
                if d.push(c).is_err() {
                    break;
                }
                loop {
                    match d.next_message() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                proptest::prop_assert!(d.buffered() <= HEADER_LEN + 2048 + chunk);
            }
        }

        /// Valid frames with random bytes flipped decode to something or fail cleanly.
        #[test]
        fn corrupted_frames_fail_cleanly(flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8)) {
            for m in all_messages() {
                let mut bytes = encode(&m, &FrameLimits::default()).unwrap();
                for (at, x) in &flips {
                    let i = at % bytes.len();
                    bytes[i] ^= x;
                }
                let mut d = FrameDecoder::new(reader_of(&m), FrameLimits::default());
                if d.push(&bytes).is_ok() {
                    let _ = d.next_message();
                }
            }
        }
    }
}
