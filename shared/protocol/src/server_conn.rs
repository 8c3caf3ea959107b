//! The server's view of one connection, as a state machine with no IO.
//!
//! ```text
//!   AwaitingHello --hello ok--> Ready --(requests, one per stream)--> Ready
//!        |                        |
//!        +--anything else--> Closed <--fatal error--+
//! ```
//!
//! The first bidirectional stream carries the hello; the shell answers with the [`Welcome`] this
//! returns and keeps that stream as the control stream (announcements go down it). Every later
//! stream carries one request, which [`ServerConnection::on_request`] turns into a [`Request`] for
//! the shell to execute, or a [`Rejection`] to send back.

use super::frame::FrameError;
use super::message::*;
use super::validate::UploadRules;
use super::PROTOCOL_VERSION;
use std::sync::Arc;

/// Server-wide rules every connection applies.
#[derive(Debug)]
pub struct ServerRules {
    /// SHA-256 of the fleet token (comparing digests keeps the comparison time independent of
    /// where a wrong token differs, and the token itself out of memory dumps of this struct).
    token_digest: Sha256Digest,
    pub upload: UploadRules,
    /// Advertised in the welcome so agents size their batches to fit.
    pub max_upload_bytes: u32,
    /// The server's world: a hello naming another one is refused.
    pub world: Option<WorldFingerprint>,
}

impl ServerRules {
    pub fn new(fleet_token: &str, upload: UploadRules, max_upload_bytes: u32) -> ServerRules {
        ServerRules { token_digest: sha256(fleet_token.as_bytes()), upload, max_upload_bytes, world: None }
    }

    /// Refuses agents whose hello names a world other than `world`.
    pub fn with_world(mut self, world: WorldFingerprint) -> ServerRules {
        self.world = Some(world);
        self
    }

    fn token_ok(&self, token: &str) -> bool {
        let d = sha256(token.as_bytes());
        d.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    AwaitingHello,
    Ready,
    Closed,
}

/// A refused request: what to tell the peer, and whether to close the whole connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub error: ErrorMessage,
    /// Close the connection (not just the stream) after sending `error`.
    pub close_connection: bool,
}

impl Rejection {
    fn stream(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection { error: ErrorMessage::new(code, message), close_connection: false }
    }

    fn connection(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection { error: ErrorMessage::new(code, message), close_connection: true }
    }
}

/// A valid request for the shell to execute.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Store the batch exactly once, flush, then answer with an [`Ack`].
    Upload(UploadBatch),
    /// Answer with the deployed [`PolicyBlob`], or [`NoPolicy`] when `have` is current.
    Policy { have: Option<PolicyVersion> },
}

/// One connection's state.
#[derive(Clone, Debug)]
pub struct ServerConnection {
    rules: Arc<ServerRules>,
    state: ConnState,
}

impl ServerConnection {
    pub fn new(rules: Arc<ServerRules>) -> ServerConnection {
        ServerConnection { rules, state: ConnState::AwaitingHello }
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The first frame of the first stream (or why it could not be read). Any failure closes
    /// the connection: nothing else is served to a peer that has not said hello properly.
    pub fn on_hello(
        &mut self,
        input: Result<Message, FrameError>,
        deployed: Option<PolicyAnnouncement>,
    ) -> Result<Welcome, Rejection> {
        let outcome = self.check_hello(input, deployed);
        self.state = if outcome.is_ok() { ConnState::Ready } else { ConnState::Closed };
        outcome
    }

    fn check_hello(
        &self,
        input: Result<Message, FrameError>,
        deployed: Option<PolicyAnnouncement>,
    ) -> Result<Welcome, Rejection> {
        if self.state != ConnState::AwaitingHello {
            return Err(Rejection::connection(ErrorCode::UnexpectedMessage, "hello already received"));
        }
        let hello = match input {
            Ok(Message::Hello(h)) => h,
            Ok(other) => {
                return Err(Rejection::connection(
                    ErrorCode::HelloRequired,
                    format!("expected hello first, got {:?}", other.kind()),
                ))
            }
            Err(e) => return Err(Rejection::connection(e.code(), e.to_string())),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Rejection::connection(
                ErrorCode::UnsupportedVersion,
                format!("server speaks protocol {PROTOCOL_VERSION}, hello says {}", hello.protocol_version),
            ));
        }
        if !self.rules.token_ok(&hello.fleet_token) {
            let what = if hello.fleet_token.is_empty() { "missing" } else { "wrong" };
            return Err(Rejection::connection(ErrorCode::Unauthorized, format!("{what} fleet token")));
        }
        if let (Some(ours), Some(theirs)) = (self.rules.world, hello.world) {
            if ours != theirs {
                return Err(Rejection::connection(
                    ErrorCode::WrongWorld,
                    format!("the server runs world {ours}, this agent world {theirs}: give the agent the server's [world] settings, or a world file built from them"),
                ));
            }
        }
        Ok(Welcome {
            protocol_version: PROTOCOL_VERSION,
            deployed,
            max_upload_bytes: self.rules.max_upload_bytes,
            max_batch_sessions: self.rules.upload.max_batch_sessions as u32,
        })
    }

    /// The frame of a request stream (or why it could not be read). A bad request closes only its
    /// stream: the peer proved it holds the token, so one bad request does not cost it the others.
    pub fn on_request(&self, input: Result<Message, FrameError>) -> Result<Request, Rejection> {
        match self.state {
            ConnState::Ready => {}
            ConnState::AwaitingHello => {
                return Err(Rejection::connection(ErrorCode::HelloRequired, "request before hello"))
            }
            ConnState::Closed => return Err(Rejection::connection(ErrorCode::HelloRequired, "connection is closed")),
        }
        match input {
            Ok(Message::UploadBatch(batch)) => {
                self.rules.upload.check(&batch).map_err(|error| Rejection { error, close_connection: false })?;
                Ok(Request::Upload(batch))
            }
            Ok(Message::PolicyRequest(r)) => Ok(Request::Policy { have: r.have }),
            Ok(other) => Err(Rejection::stream(
                ErrorCode::UnexpectedMessage,
                format!("{:?} is not a request", other.kind()),
            )),
            Err(e) => Err(Rejection::stream(e.code(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::{Action, Schema};
    use crate::experience::{ExperienceSession, ExperienceTurn};
    use crate::validate::experience_limits;

    fn rules() -> Arc<ServerRules> {
        Arc::new(ServerRules::new("secret", UploadRules::new(experience_limits(&Schema::reference(), 10, 50)), 1000))
    }

    fn hello(version: u32, token: &str) -> Result<Message, FrameError> {
        Ok(Message::Hello(Hello { protocol_version: version, fleet_token: token.into(), world: None }))
    }

    fn upload(reward: f32) -> Result<Message, FrameError> {
        let turn = ExperienceTurn { action: Action::default(), shown: 3, utterance: "Good".into(), reward, done: true };
        Ok(Message::UploadBatch(UploadBatch { batch_id: BatchId(5), sessions: vec![ExperienceSession { round: 0, turns: vec![turn] }] }))
    }

    #[test]
    fn a_good_hello_opens_the_connection_and_carries_the_deployed_policy() {
        let mut c = ServerConnection::new(rules());
        let ann = PolicyAnnouncement { version: 2, round: 1, sha256: [7; 32] };
        let w = c.on_hello(hello(PROTOCOL_VERSION, "secret"), Some(ann)).unwrap();
        assert_eq!(w.deployed, Some(ann));
        assert_eq!(w.max_upload_bytes, 1000);
        assert_eq!(c.state(), ConnState::Ready);
        assert_eq!(c.on_request(upload(0.5)).map(|_| ()), Ok(()));
        assert_eq!(c.on_request(Ok(Message::PolicyRequest(PolicyRequest { have: Some(1) }))), Ok(Request::Policy { have: Some(1) }));
        // A second hello on a request stream is refused, but only that stream.
        let r = c.on_request(hello(PROTOCOL_VERSION, "secret")).unwrap_err();
        assert_eq!((r.error.code, r.close_connection), (ErrorCode::UnexpectedMessage, false));
    }

    #[test]
    fn bad_hellos_close_the_connection_with_a_clear_code() {
        let cases: Vec<(Result<Message, FrameError>, ErrorCode)> = vec![
            (hello(PROTOCOL_VERSION + 1, "secret"), ErrorCode::UnsupportedVersion),
            (hello(PROTOCOL_VERSION, "wrong"), ErrorCode::Unauthorized),
            (hello(PROTOCOL_VERSION, ""), ErrorCode::Unauthorized),
            (upload(0.0), ErrorCode::HelloRequired),
            (Err(FrameError::UnknownKind(77)), ErrorCode::MalformedFrame),
            (Err(FrameError::TooLarge { kind: Kind::Hello, len: 1 << 20, cap: 10 }), ErrorCode::FrameTooLarge),
        ];
        for (input, code) in cases {
            let mut c = ServerConnection::new(rules());
            let r = c.on_hello(input, None).unwrap_err();
            assert_eq!((r.error.code, r.close_connection), (code, true), "{}", r.error);
            assert_eq!(c.state(), ConnState::Closed);
            assert!(c.on_request(upload(0.0)).unwrap_err().close_connection);
        }
        let r = ServerConnection::new(rules()).on_hello(hello(PROTOCOL_VERSION, ""), None).unwrap_err();
        assert!(r.error.message.contains("missing"));
    }

    #[test]
    fn an_agent_of_another_world_is_refused_for_good_and_one_that_does_not_say_is_not() {
        let (ours, theirs) = (WorldFingerprint([1; 32]), WorldFingerprint([2; 32]));
        let rules = Arc::new(ServerRules::new("secret", UploadRules::new(experience_limits(&Schema::reference(), 10, 50)), 1000).with_world(ours));
        let said = |world| Ok(Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: "secret".into(), world }));
        let r = ServerConnection::new(rules.clone()).on_hello(said(Some(theirs)), None).unwrap_err();
        assert_eq!((r.error.code, r.close_connection), (ErrorCode::WrongWorld, true));
        assert!(r.error.code.is_fatal());
        assert!(r.error.message.contains(&ours.to_string()) && r.error.message.contains(&theirs.to_string()), "{}", r.error);
        assert!(ServerConnection::new(rules.clone()).on_hello(said(Some(ours)), None).is_ok());
        assert!(ServerConnection::new(rules).on_hello(said(None), None).is_ok());
    }

    #[test]
    fn requests_before_hello_are_refused_and_invalid_uploads_refuse_only_their_stream() {
        let c = ServerConnection::new(rules());
        assert_eq!(c.on_request(upload(0.0)).unwrap_err().error.code, ErrorCode::HelloRequired);
        let mut c = ServerConnection::new(rules());
        c.on_hello(hello(PROTOCOL_VERSION, "secret"), None).unwrap();
        let r = c.on_request(upload(f32::NAN)).unwrap_err();
        assert_eq!((r.error.code, r.close_connection), (ErrorCode::InvalidBatch, false));
        let r = c.on_request(Err(FrameError::Truncated { buffered: 3 })).unwrap_err();
        assert_eq!((r.error.code, r.close_connection), (ErrorCode::MalformedFrame, false));
        assert_eq!(c.state(), ConnState::Ready);
    }
}
