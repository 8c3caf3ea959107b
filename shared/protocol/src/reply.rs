//! What came back for an agent's request, and what kind of failure it is. Every agent-side
//! machine ([`crate::upload`], [`crate::policy_sync`], [`crate::backoff::Reconnect`]) classifies
//! failures here, so the shell only reports what happened and the rules are tested without IO.

use super::message::{ErrorCode, ErrorMessage, Message};

/// The outcome of one request as the shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A well-formed response (not necessarily the one asked for).
    Message(Message),
    /// The server answered with an error, or closed the connection with an error code.
    Refused(ErrorMessage),
    /// No answer: connection trouble, a timeout, a stream reset, an undecodable response.
    Transport(String),
}

/// How bad a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The whole agent is misconfigured (version or token): no request on any connection can
    /// work, so the agent stops.
    Fatal,
    /// Resending this request unchanged can never succeed.
    Permanent,
    /// The same request may succeed later (after a backoff, or on another connection).
    Transient,
}

impl ErrorCode {
    pub fn disposition(self) -> Disposition {
        if self.is_fatal() {
            Disposition::Fatal
        } else if self.is_permanent() {
            Disposition::Permanent
        } else {
            Disposition::Transient
        }
    }
}

impl Reply {
    /// The disposition of a reply that is not the expected answer: a refusal by its code,
    /// anything else (no answer, a wrong message) transient.
    pub fn failure(&self) -> Disposition {
        match self {
            Reply::Refused(e) => e.code.disposition(),
            Reply::Message(_) | Reply::Transport(_) => Disposition::Transient,
        }
    }

    /// The error that must stop the agent, if this is one.
    pub fn fatal(&self) -> Option<&ErrorMessage> {
        match self {
            Reply::Refused(e) if e.code.disposition() == Disposition::Fatal => Some(e),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Message(m) => write!(f, "{:?}", m.kind()),
            Reply::Refused(e) => write!(f, "{e}"),
            Reply::Transport(why) => write!(f, "{why}"),
        }
    }
}
