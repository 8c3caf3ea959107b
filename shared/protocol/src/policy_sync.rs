//! The agent's policy-sync machine, with no IO: when to ask for a policy, and whether a received
//! blob may be installed.
//!
//! ```text
//!  connect (welcome.deployed) ─┐
//!  announcement ───────────────┴─> newer than installed and not known-bad? ─> PolicyRequest
//!  PolicyBlob ─> sha256 matches, version newer ─> Verified ─> shell loads it ─> installed / rejected
//! ```
//!
//! At most one request is outstanding. A blob is only handed to the shell after its SHA-256 is
//! checked (against the blob's own header and, when one was announced, the announcement), so a
//! corrupt or partial policy is never loaded. The shell swaps the running policy only after the
//! loader accepted the bytes and the store persisted them, then reports [`PolicySync::installed`].

use super::message::*;
use super::reply::Reply;
use std::time::Duration;

/// How long a policy pull may take before it is abandoned (and asked again on the next
/// connect or announcement). A checkpoint is megabytes over a possibly slow link.
pub const POLICY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the shell must do with a reply to a policy request.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyStep {
    /// Verified bytes: load them off the runtime, persist, then report
    /// [`PolicySync::on_installed`] or [`PolicySync::on_load_failed`].
    Load(Verified),
    /// The blob failed verification; nothing is installed.
    Rejected(SyncError),
    /// Nothing newer (or the request failed transiently): wait for the next trigger.
    Wait,
    /// Stop the agent: no request can succeed with this configuration.
    Fatal(ErrorMessage),
}

/// The policy an agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyId {
    pub version: PolicyVersion,
    pub round: u32,
    pub sha256: Sha256Digest,
}

impl From<PolicyAnnouncement> for PolicyId {
    fn from(a: PolicyAnnouncement) -> PolicyId {
        PolicyId { version: a.version, round: a.round, sha256: a.sha256 }
    }
}

/// Why a received blob is not installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("policy {version}: SHA-256 of the bytes is {actual}, the blob says {claimed}")]
    HashMismatch { version: PolicyVersion, claimed: String, actual: String },
    #[error("policy {version} does not match the announced version {announced} / hash")]
    NotAnnounced { version: PolicyVersion, announced: PolicyVersion },
    #[error("policy {version} is not newer than the installed {installed}")]
    NotNewer { version: PolicyVersion, installed: PolicyVersion },
    #[error("received a policy that was not requested")]
    Unrequested,
}

/// A blob whose hash checked out; the shell may now load it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub id: PolicyId,
    pub bytes: Vec<u8>,
}

/// Policy-sync state of one agent.
#[derive(Debug, Default)]
pub struct PolicySync {
    installed: Option<PolicyId>,
    /// The newest policy the server told us about.
    announced: Option<PolicyId>,
    /// A request is outstanding (at most one).
    requesting: bool,
    /// The newest version the loader refused: not asked for again.
    refused: Option<PolicyId>,
}

impl PolicySync {
    /// `installed`: the policy persisted by a previous run, if any.
    pub fn new(installed: Option<PolicyId>) -> PolicySync {
        PolicySync { installed, ..PolicySync::default() }
    }

    pub fn installed(&self) -> Option<PolicyId> {
        self.installed
    }

    /// A request is outstanding.
    pub fn requesting(&self) -> bool {
        self.requesting
    }

    /// An announcement of the installed policy (same version, same hash) for a later round: the
    /// server refused that round's candidate and carries the deployed policy on. Returns the
    /// installed id with the new round, for the shell to tag sessions with; nothing to fetch.
    pub fn renewed(&mut self, a: &PolicyAnnouncement) -> Option<PolicyId> {
        let i = self.installed.as_mut()?;
        if a.version == i.version && a.sha256 == i.sha256 && a.round > i.round {
            i.round = a.round;
            return Some(*i);
        }
        None
    }

    /// The server's welcome on (re)connect; it doubles as a poll.
    pub fn on_connected(&mut self, deployed: Option<PolicyAnnouncement>) -> Option<PolicyRequest> {
        self.requesting = false;
        match deployed {
            Some(a) => self.on_announcement(a),
            None => None,
        }
    }

    /// The server announced a published policy.
    pub fn on_announcement(&mut self, a: PolicyAnnouncement) -> Option<PolicyRequest> {
        let id = PolicyId::from(a);
        if self.announced.is_none_or(|x| x.version <= id.version) {
            self.announced = Some(id);
        }
        self.maybe_request()
    }

    fn maybe_request(&mut self) -> Option<PolicyRequest> {
        let want = self.announced?;
        let newer = self.installed.is_none_or(|i| want.version > i.version);
        let refused = self.refused.is_some_and(|r| r.version >= want.version);
        if self.requesting || !newer || refused {
            return None;
        }
        self.requesting = true;
        Some(PolicyRequest { have: self.installed.map(|i| i.version) })
    }

    /// The answer to our request: a blob. `Ok` hands over verified bytes to load.
    pub fn on_blob(&mut self, blob: PolicyBlob) -> Result<Verified, SyncError> {
        if !self.requesting {
            return Err(SyncError::Unrequested);
        }
        self.requesting = false;
        let actual = sha256(&blob.bytes);
        if actual != blob.sha256 {
            return Err(SyncError::HashMismatch { version: blob.version, claimed: hex(&blob.sha256), actual: hex(&actual) });
        }
        if let Some(a) = self.announced {
            // A blob older than the latest announcement is fine (it was deployed when the server
            // answered; the newer one is fetched after it is installed), but one claiming the
            // announced version must carry the announced hash.
            if a.version == blob.version && a.sha256 != blob.sha256 {
                return Err(SyncError::NotAnnounced { version: blob.version, announced: a.version });
            }
        }
        if let Some(i) = self.installed {
            if blob.version <= i.version {
                return Err(SyncError::NotNewer { version: blob.version, installed: i.version });
            }
        }
        let id = PolicyId { version: blob.version, round: blob.round, sha256: blob.sha256 };
        if self.announced.is_none_or(|a| a.version < id.version) {
            self.announced = Some(id);
        }
        Ok(Verified { id, bytes: blob.bytes })
    }

    /// The answer to our request: nothing newer.
    /// What came back for the outstanding request. No answer, or any reply but a blob or
    /// "no policy", ends the request; it is asked again on the next connect or announcement.
    pub fn on_reply(&mut self, reply: Reply) -> PolicyStep {
        if let Some(e) = reply.fatal() {
            self.requesting = false;
            return PolicyStep::Fatal(e.clone());
        }
        match reply {
            Reply::Message(Message::PolicyBlob(blob)) => match self.on_blob(blob) {
                Ok(v) => PolicyStep::Load(v),
                Err(e) => PolicyStep::Rejected(e),
            },
            Reply::Message(Message::NoPolicy(_)) => {
                self.on_no_policy();
                PolicyStep::Wait
            }
            _ => {
                self.on_request_failed();
                PolicyStep::Wait
            }
        }
    }

    pub fn on_no_policy(&mut self) {
        self.requesting = false;
    }

    /// The request failed in transit; the next connect or announcement asks again.
    pub fn on_request_failed(&mut self) {
        self.requesting = false;
    }

    /// The shell loaded, persisted and swapped in a verified policy. Returns a request when a
    /// newer one was announced meanwhile.
    pub fn on_installed(&mut self, id: PolicyId) -> Option<PolicyRequest> {
        self.installed = Some(id);
        self.maybe_request()
    }

    /// The loader refused a verified policy: do not fetch that version again. Returns a request
    /// when a newer one was announced meanwhile.
    pub fn on_load_failed(&mut self, id: PolicyId) -> Option<PolicyRequest> {
        self.refused = Some(id);
        self.maybe_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(version: u64, bytes: &[u8]) -> PolicyBlob {
        PolicyBlob { version, round: version as u32 - 1, sha256: sha256(bytes), bytes: bytes.to_vec() }
    }

    #[test]
    fn a_refused_round_renews_the_installed_policy_without_a_fetch() {
        let b = blob(1, b"weights-1");
        let id = PolicyId::from(b.announcement());
        let mut s = PolicySync::new(Some(id));
        assert_eq!(s.renewed(&b.announcement()), None, "same round: nothing new");
        let next = PolicyAnnouncement { round: id.round + 1, ..b.announcement() };
        assert_eq!(s.renewed(&next), Some(PolicyId { round: id.round + 1, ..id }));
        assert_eq!(s.on_announcement(next), None, "same version: nothing to fetch");
        let other = PolicyAnnouncement { round: id.round + 2, sha256: sha256(b"other"), ..b.announcement() };
        assert_eq!(s.renewed(&other), None, "another hash is not the installed policy");
    }

    #[test]
    fn pulls_on_connect_verifies_and_installs() {
        let mut s = PolicySync::new(None);
        assert_eq!(s.on_connected(None), None, "nothing published yet");
        let b = blob(1, b"weights-1");
        assert_eq!(s.on_connected(Some(b.announcement())), Some(PolicyRequest { have: None }));
        assert_eq!(s.on_announcement(b.announcement()), None, "one request at a time");
        let v = s.on_blob(b.clone()).unwrap();
        assert_eq!((v.id.version, v.bytes.as_slice()), (1, &b"weights-1"[..]));
        s.on_installed(v.id);
        assert_eq!(s.on_connected(Some(b.announcement())), None, "up to date after reconnect");
        let b2 = blob(2, b"weights-2");
        assert_eq!(s.on_announcement(b2.announcement()), Some(PolicyRequest { have: Some(1) }));
        let v2 = s.on_blob(b2).unwrap();
        s.on_installed(v2.id);
        assert_eq!(s.installed().map(|i| i.version), Some(2));
    }

    #[test]
    fn a_corrupt_blob_is_refused_and_asked_for_again_later() {
        let mut s = PolicySync::new(None);
        let mut b = blob(1, b"weights");
        s.on_connected(Some(b.announcement()));
        b.bytes[0] ^= 1;
        assert!(matches!(s.on_blob(b.clone()), Err(SyncError::HashMismatch { .. })));
        assert_eq!(s.installed(), None);
        let good = blob(1, b"weights");
        assert_eq!(s.on_connected(Some(good.announcement())), Some(PolicyRequest { have: None }));
        // A blob that hashes fine but is not what was announced under its version is refused too.
        let other = blob(1, b"other weights");
        assert!(matches!(s.on_blob(other), Err(SyncError::NotAnnounced { .. })));
        assert!(matches!(s.on_blob(good), Err(SyncError::Unrequested)));
    }

    #[test]
    fn never_goes_back_and_skips_refused_versions() {
        let mut s = PolicySync::new(Some(blob(3, b"c").announcement().into()));
        assert_eq!(s.on_announcement(blob(2, b"b").announcement()), None);
        let b4 = blob(4, b"d");
        assert!(s.on_announcement(b4.announcement()).is_some());
        let v = s.on_blob(b4.clone()).unwrap();
        s.on_load_failed(v.id);
        assert_eq!(s.on_connected(Some(b4.announcement())), None, "the loader refused v4 already");
        assert!(s.on_announcement(blob(5, b"e").announcement()).is_some(), "a newer one is tried");
        s.on_no_policy();
        assert!(!s.requesting());
        let mut s = PolicySync::new(Some(blob(3, b"c").announcement().into()));
        s.on_announcement(blob(5, b"e").announcement());
        assert!(matches!(s.on_blob(blob(3, b"c")), Err(SyncError::NotNewer { .. })));
    }

    #[test]
    fn a_version_announced_during_a_pull_is_fetched_right_after_the_install() {
        let mut s = PolicySync::new(None);
        let (b1, b2) = (blob(1, b"one"), blob(2, b"two"));
        assert!(s.on_connected(Some(b1.announcement())).is_some());
        assert_eq!(s.on_announcement(b2.announcement()), None, "a pull is already running");
        // The server answered before publishing v2: an older blob than announced is fine.
        let v1 = s.on_blob(b1).unwrap();
        assert_eq!(s.on_installed(v1.id), Some(PolicyRequest { have: Some(1) }));
        let v2 = s.on_blob(b2).unwrap();
        assert_eq!(s.on_installed(v2.id), None);
    }
}
