//! Durable server state in sled: D, the dedupe set, the policy registry, rounds and counters.
//!
//! Trees and keys:
//! - `sessions`: `round (u32 BE) ++ sequence (u64 BE)` → bincode [`ExperienceSession`]. Key order
//!   is ingest order, so "D up to round r" is one range scan.
//! - `batches`: batch id (16 bytes BE) → bincode [`BatchRecord`]; the dedupe set.
//! - `policies`: version (u64 BE) → bincode [`PolicyRecord`]; the registry.
//! - `rounds`: round (u32 BE) → JSON [`RoundRecord`].
//! - `meta`: counters — `current_round`, `round_sessions`, `round_late` (of those, collected by an
//!   older round's policy), `round_opened_ms` (wall clock, ms since the epoch), `next_seq`
//!   (= sessions in D), `deployed` (the latest version), `world` (JSON `WorldConfig` the server
//!   first ran with, so tools reading D later build the same world).
//!
//! Every multi-key change is one sled transaction over the trees it touches, so a crash leaves
//! either all of it or none. Nothing here is durable until [`Store::flush`] returns: the server
//! flushes before it acks an upload or announces a policy.

use crate::rounds::record::{CloseReason, RoundRecord, RoundStatus};
use irec_protocol::experience::ExperienceSession;
use irec_protocol::{sha256, BatchId, PolicyAnnouncement, PolicyVersion, Sha256Digest, UploadBatch};
use irec_store::codec::{be_u64, bin, json, unbin, unjson};
use irec_world::sim::WorldConfig;
use irec_store::{ConflictableTransactionError as Conflict, Db, IVec, Options, Tree};
use serde::{Deserialize, Serialize};
use std::path::Path;

const CURRENT_ROUND: &[u8] = b"current_round";
const ROUND_SESSIONS: &[u8] = b"round_sessions";
const NEXT_SEQ: &[u8] = b"next_seq";
const DEPLOYED: &[u8] = b"deployed";
const ROUND_LATE: &[u8] = b"round_late";
const ROUND_OPENED: &[u8] = b"round_opened_ms";
const WORLD: &[u8] = b"world";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] irec_store::StoreError),
    #[error("round {0} has no record")]
    NoSuchRound(u32),
}

/// Where a stored batch went (the dedupe record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub round: u32,
    pub first_seq: u64,
    pub sessions: u32,
}

/// One published policy.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub version: PolicyVersion,
    /// The round whose sessions this policy collects (0 for the bootstrap policy).
    pub round: u32,
    pub sha256: Sha256Digest,
    /// The round that trained it (`None`: published from outside, e.g. the bootstrap).
    pub trained_in_round: Option<u32>,
    pub blob: Vec<u8>,
}

impl PolicyRecord {
    pub fn announcement(&self) -> PolicyAnnouncement {
        PolicyAnnouncement { version: self.version, round: self.round, sha256: self.sha256 }
    }
}

impl std::fmt::Debug for PolicyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRecord")
            .field("version", &self.version)
            .field("round", &self.round)
            .field("trained_in_round", &self.trained_in_round)
            .field("bytes", &self.blob.len())
            .finish()
    }
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u32,
    pub duplicate: bool,
    /// The round the sessions went into (for a duplicate: where they went the first time).
    pub round: u32,
    /// This upload filled the round's quota and closed it.
    pub closed_round: Option<u32>,
}

/// Round counters at a glance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The round now collecting.
    pub current_round: u32,
    /// Sessions ingested in it so far.
    pub round_sessions: u64,
    /// Sessions in D, all rounds.
    pub sessions_total: u64,
    pub deployed: Option<PolicyVersion>,
}

fn be_u32(bytes: Option<IVec>) -> u32 {
    bytes.and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok()).map_or(0, u32::from_be_bytes)
}

/// Queues round `round` for training and opens the next one, inside a transaction.
fn close(
    r: &irec_store::TransactionalTree,
    m: &irec_store::TransactionalTree,
    round: u32,
    count: u64,
    late: u64,
    reason: CloseReason,
    now_ms: u64,
) -> Result<(), Conflict<irec_store::StoreError>> {
    let mut queued = RoundRecord::queued(round, count);
    queued.late_sessions = late;
    queued.closed_by = Some(reason);
    r.insert(&round.to_be_bytes()[..], json(&queued).map_err(Conflict::Abort)?)?;
    m.insert(CURRENT_ROUND, &(round + 1).to_be_bytes()[..])?;
    m.insert(ROUND_SESSIONS, &0u64.to_be_bytes()[..])?;
    m.insert(ROUND_LATE, &0u64.to_be_bytes()[..])?;
    m.insert(ROUND_OPENED, &now_ms.to_be_bytes()[..])?;
    Ok(())
}

/// Where the database lives inside a server's data dir.
pub fn db_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("db")
}

/// Key of a session in D.
pub fn session_key(round: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&round.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The round and sequence number a [`session_key`] holds (0 for a key too short to hold them).
fn parse_session_key(k: &[u8]) -> (u32, u64) {
    let round = k.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_be_bytes);
    let seq = k.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
    (round, seq)
}

/// The server's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// Concurrent acks share flushes.
    commit: std::sync::Arc<crate::commit::GroupCommit>,
    sessions: Tree,
    batches: Tree,
    policies: Tree,
    rounds: Tree,
    meta: Tree,
}

impl Store {
    /// Opens (or creates) the database at `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = Db::open(dir, Options::default())?;
        Ok(Store {
            sessions: db.tree("sessions")?,
            batches: db.tree("batches")?,
            policies: db.tree("policies")?,
            rounds: db.tree("rounds")?,
            meta: db.tree("meta")?,
            db,
            commit: Default::default(),
        })
    }

    /// Makes everything written so far durable.
    ///
    /// On a blocking thread (`irec_store::Db::flush_async`; R5's race test in
    /// `server/tests/attack.rs` froze all ingest with sled's own async flush). Concurrent callers
    /// share one flush when theirs is already covered (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.commit.commit(|| self.db.flush_async()).await?)
    }

    /// Flushes actually run by [`Store::flush`] (fewer than its callers under load).
    pub fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(self.db.flush()?)
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        let deployed = be_u64(self.meta.get(DEPLOYED)?);
        Ok(Counters {
            current_round: be_u32(self.meta.get(CURRENT_ROUND)?),
            round_sessions: be_u64(self.meta.get(ROUND_SESSIONS)?),
            sessions_total: be_u64(self.meta.get(NEXT_SEQ)?),
            deployed: (deployed > 0).then_some(deployed),
        })
    }

    /// Stores a validated batch exactly once. `quota`: sessions that close a round (0: never);
    /// `now_ms`: the wall clock, recorded as the next round's opening when this closes one.
    /// Sessions collected for an older round than the current one (a straggler's, or a device
    /// back after rounds away) are kept like any other and counted as late. The caller flushes
    /// before acking.
    pub fn ingest(&self, batch: &UploadBatch, quota: u64, now_ms: u64) -> Result<IngestOutcome, StoreError> {
        let encoded = batch.sessions.iter().map(bin).collect::<Result<Vec<_>, _>>()?;
        let id = batch.batch_id.to_bytes();
        let n = encoded.len() as u64;
        let outcome = self.db.transaction((&self.sessions, &self.batches, &self.meta, &self.rounds), |(s, b, m, r)| {
            if let Some(seen) = b.get(id)? {
                let seen: BatchRecord = unbin("batches", &seen).map_err(Conflict::Abort)?;
                return Ok(IngestOutcome { stored: 0, duplicate: true, round: seen.round, closed_round: None });
            }
            let round = be_u32(m.get(CURRENT_ROUND)?);
            let seq = be_u64(m.get(NEXT_SEQ)?);
            let count = be_u64(m.get(ROUND_SESSIONS)?) + n;
            let late = be_u64(m.get(ROUND_LATE)?) + batch.sessions.iter().filter(|s| s.round < round).count() as u64;
            for (i, e) in encoded.iter().enumerate() {
                s.insert(&session_key(round, seq + i as u64)[..], e.as_slice())?;
            }
            let record = BatchRecord { round, first_seq: seq, sessions: n as u32 };
            b.insert(&id[..], bin(&record).map_err(Conflict::Abort)?)?;
            m.insert(NEXT_SEQ, &(seq + n).to_be_bytes()[..])?;
            let closed = quota > 0 && count >= quota;
            if closed {
                close(r, m, round, count, late, CloseReason::Quorum, now_ms)?;
            } else {
                m.insert(ROUND_SESSIONS, &count.to_be_bytes()[..])?;
                m.insert(ROUND_LATE, &late.to_be_bytes()[..])?;
            }
            Ok(IngestOutcome { stored: n as u32, duplicate: false, round, closed_round: closed.then_some(round) })
        })?;
        Ok(outcome)
    }

    /// Closes the collecting round at its deadline if it holds at least `min_sessions` new
    /// sessions (a round with nothing new has nothing to train on; it stays open). Returns the
    /// round closed.
    /// `round`: the round whose deadline passed; if a quorum closed it meanwhile, nothing happens.
    pub fn close_at_deadline(&self, round: u32, min_sessions: u64, now_ms: u64) -> Result<Option<u32>, StoreError> {
        Ok(self.db.transaction((&self.meta, &self.rounds), |(m, r)| {
            let count = be_u64(m.get(ROUND_SESSIONS)?);
            if be_u32(m.get(CURRENT_ROUND)?) != round || count < min_sessions.max(1) {
                return Ok(None);
            }
            close(r, m, round, count, be_u64(m.get(ROUND_LATE)?), CloseReason::Deadline, now_ms)?;
            Ok(Some(round))
        })?)
    }

    /// When the collecting round opened (wall clock, ms since the epoch). A store that never
    /// recorded it (new, or written by an older server) counts from `now_ms`, recorded now.
    pub fn round_opened_ms(&self, now_ms: u64) -> Result<u64, StoreError> {
        match self.meta.get(ROUND_OPENED)? {
            Some(v) => Ok(be_u64(Some(v))),
            None => {
                self.meta.insert(ROUND_OPENED, &now_ms.to_be_bytes()[..])?;
                Ok(now_ms)
            }
        }
    }

    /// Whether a batch id was stored.
    pub fn has_batch(&self, id: BatchId) -> Result<bool, StoreError> {
        Ok(self.batches.get(id.to_bytes())?.is_some())
    }

    /// D up to and including `round` and how many of those came in `round`, in a canonical order:
    /// by ingest round, then by the stored bytes. Within a round, which upload arrived first is a
    /// matter of the agents' timing; training on an order that depends on it would make the same
    /// seed give different rounds.
    pub fn sessions_through(&self, round: u32) -> Result<(Vec<ExperienceSession>, usize), StoreError> {
        let end = session_key(round.saturating_add(1), 0);
        let mut rows = if round == u32::MAX { self.sessions.entries()? } else { self.sessions.range(..&end[..])? };
        let round_of = |k: &[u8]| parse_session_key(k).0;
        rows.sort_by(|a, b| round_of(&a.0).cmp(&round_of(&b.0)).then_with(|| a.1.cmp(&b.1)));
        let new = rows.iter().filter(|(k, _)| round_of(k) >= round).count();
        let out = rows.iter().map(|(_, v)| unbin("sessions", v)).collect::<Result<Vec<_>, _>>()?;
        Ok((out, new))
    }

    /// Every session in D with its ingest round, in ingest order.
    pub fn all_sessions(&self) -> Result<Vec<(u32, ExperienceSession)>, StoreError> {
        Ok(self.episodes()?.into_iter().map(|(round, _, session)| (round, session)).collect())
    }

    /// Every session in D with its round and sequence number (its id in exports), in key order.
    pub fn episodes(&self) -> Result<Vec<(u32, u64, ExperienceSession)>, StoreError> {
        self.sessions
            .entries()?
            .into_iter()
            .map(|(k, v)| {
                let (round, seq) = parse_session_key(&k);
                Ok((round, seq, unbin::<ExperienceSession>("sessions", &v)?))
            })
            .collect()
    }

    /// The world this store's sessions were checked against, if recorded.
    pub fn world(&self) -> Result<Option<WorldConfig>, StoreError> {
        Ok(self.meta.get(WORLD)?.map(|v| unjson("meta", &v)).transpose()?)
    }

    /// Records `world` unless one is recorded already; returns the one recorded before, if any.
    pub fn record_world(&self, world: &WorldConfig) -> Result<Option<WorldConfig>, StoreError> {
        match self.world()? {
            Some(w) => Ok(Some(w)),
            None => {
                self.meta.insert(WORLD, json(world)?)?;
                Ok(None)
            }
        }
    }

    pub fn policy(&self, version: PolicyVersion) -> Result<Option<PolicyRecord>, StoreError> {
        Ok(self.policies.get(version.to_be_bytes())?.map(|v| unbin("policies", &v)).transpose()?)
    }

    /// The deployed (latest published) policy.
    pub fn deployed(&self) -> Result<Option<PolicyRecord>, StoreError> {
        match self.counters()?.deployed {
            Some(v) => self.policy(v),
            None => Ok(None),
        }
    }

    /// Every published version, oldest first.
    pub fn policy_versions(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        Ok(self.policies.entries()?.into_iter().map(|(k, _)| be_u64(Some(k))).collect())
    }

    /// Publishes a policy as the next version; with `round_record`, records the round's outcome
    /// in the same transaction (so a crash cannot publish without recording, or the reverse).
    pub fn publish(
        &self,
        blob: &[u8],
        round: u32,
        trained_in_round: Option<u32>,
        round_record: Option<&RoundRecord>,
    ) -> Result<PolicyRecord, StoreError> {
        let sha = sha256(blob);
        let blob = blob.to_vec();
        let record = self.db.transaction((&self.policies, &self.meta, &self.rounds), |(p, m, r)| {
            let version = be_u64(m.get(DEPLOYED)?) + 1;
            let record = PolicyRecord { version, round, sha256: sha, trained_in_round, blob: blob.clone() };
            p.insert(&version.to_be_bytes()[..], bin(&record).map_err(Conflict::Abort)?)?;
            m.insert(DEPLOYED, &version.to_be_bytes()[..])?;
            if let Some(rr) = round_record {
                let mut rr = rr.clone();
                rr.published_version = Some(version);
                r.insert(&rr.round.to_be_bytes()[..], json(&rr).map_err(Conflict::Abort)?)?;
            }
            Ok(record)
        })?;
        Ok(record)
    }

    /// Records a refused round and carries the deployed policy into the next round: its registry
    /// entry now says it collects for `next_round`, so agents that stopped at their per-round
    /// session budget hear a new round and go on with the same bytes. Returns the deployed record.
    pub fn refuse(&self, round_record: &RoundRecord, next_round: u32) -> Result<Option<PolicyRecord>, StoreError> {
        let record = self.db.transaction((&self.policies, &self.meta, &self.rounds), |(p, m, r)| {
            r.insert(&round_record.round.to_be_bytes()[..], json(round_record).map_err(Conflict::Abort)?)?;
            let Some(v) = m.get(DEPLOYED)? else { return Ok(None) };
            let Some(bytes) = p.get(&v)? else { return Ok(None) };
            let mut rec: PolicyRecord = unbin("policies", &bytes).map_err(Conflict::Abort)?;
            rec.round = rec.round.max(next_round);
            p.insert(&v, bin(&rec).map_err(Conflict::Abort)?)?;
            Ok(Some(rec))
        })?;
        Ok(record)
    }

    /// Publishes `blob` as version 1 unless a policy exists already (then returns the deployed one
    /// unchanged): the bootstrap of round 0. Flushes.
    pub fn publish_initial(&self, blob: &[u8]) -> Result<PolicyRecord, StoreError> {
        if let Some(existing) = self.deployed()? {
            return Ok(existing);
        }
        let record = self.publish(blob, 0, None, None)?;
        self.flush_blocking()?;
        Ok(record)
    }

    pub fn round(&self, round: u32) -> Result<Option<RoundRecord>, StoreError> {
        Ok(self.rounds.get(round.to_be_bytes())?.map(|v| unjson("rounds", &v)).transpose()?)
    }

    pub fn put_round(&self, record: &RoundRecord) -> Result<(), StoreError> {
        self.rounds.insert(record.round.to_be_bytes(), json(record)?)?;
        Ok(())
    }

    /// Every round record, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>, StoreError> {
        Ok(self.rounds.values()?.iter().map(|v| unjson("rounds", v)).collect::<Result<_, _>>()?)
    }

    /// Closed rounds not yet trained to the end (queued, or interrupted mid-training), oldest first.
    pub fn unfinished_rounds(&self) -> Result<Vec<RoundRecord>, StoreError> {
        Ok(self.rounds()?.into_iter().filter(|r| !r.status.is_finished()).collect())
    }

    /// Marks a round as training (another attempt) and returns its updated record.
    pub fn start_training(&self, round: u32, sessions_in_d: u64) -> Result<RoundRecord, StoreError> {
        let mut rec = self.round(round)?.ok_or(StoreError::NoSuchRound(round))?;
        rec.status = RoundStatus::Training;
        rec.attempts += 1;
        rec.sessions_in_d = sessions_in_d;
        rec.deployed_version = self.counters()?.deployed;
        self.put_round(&rec)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::Action;
    use irec_protocol::experience::ExperienceTurn;

    fn batch(id: u128, n: usize) -> UploadBatch {
        let s = |i: usize| ExperienceSession {
            round: 0,
            turns: vec![ExperienceTurn { action: Action::default(), shown: i as u32, utterance: "Good".into(), reward: 1.0, done: true }],
        };
        UploadBatch { batch_id: BatchId(id), sessions: (0..n).map(s).collect() }
    }

    #[test]
    fn ingest_dedupes_closes_rounds_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let st = Store::open(dir.path()).unwrap();
            let a = st.ingest(&batch(1, 3), 5, 0).unwrap();
            assert_eq!(a, IngestOutcome { stored: 3, duplicate: false, round: 0, closed_round: None });
            let again = st.ingest(&batch(1, 3), 5, 0).unwrap();
            assert_eq!(again, IngestOutcome { stored: 0, duplicate: true, round: 0, closed_round: None });
            let b = st.ingest(&batch(2, 3), 5, 0).unwrap();
            assert_eq!(b.closed_round, Some(0), "6 ≥ quota 5 closes round 0, the batch is not split");
            let c = st.ingest(&batch(3, 1), 5, 0).unwrap();
            assert_eq!(c.round, 1);
            st.flush_blocking().unwrap();
        }
        let st = Store::open(dir.path()).unwrap();
        let c = st.counters().unwrap();
        assert_eq!((c.current_round, c.round_sessions, c.sessions_total), (1, 1, 7));
        let (d, new) = st.sessions_through(0).unwrap();
        assert_eq!((d.len(), new), (6, 6));
        let (d, new) = st.sessions_through(1).unwrap();
        assert_eq!((d.len(), new), (7, 1));
        assert_eq!(st.unfinished_rounds().unwrap().iter().map(|r| r.round).collect::<Vec<_>>(), vec![0]);
        assert!(st.has_batch(BatchId(2)).unwrap());
        assert_eq!(st.all_sessions().unwrap().iter().filter(|(r, _)| *r == 1).count(), 1);
    }

    /// Regression: with sled's `flush_async`, concurrent flushes deadlocked (spacejam/sled#1308)
    /// and every upload after them hung. Hundreds of ingest + flush pairs at once must finish.
    #[test]
    fn concurrent_ingests_and_flushes_do_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(dir.path()).unwrap();
        // On its own thread, so that a deadlock fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = st.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                for round in 0..5u128 {
                    let mut tasks = Vec::new();
                    for i in 0..64u128 {
                        let st = worker.clone();
                        tasks.push(tokio::spawn(async move {
                            let b = batch(round * 1000 + i % 16, 2);
                            let s = st.clone();
                            tokio::task::spawn_blocking(move || s.ingest(&b, 0, 0)).await.unwrap().unwrap();
                            st.flush().await.unwrap();
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            });
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(), "ingest + flush deadlocked");
        assert!(st.flushes() <= 5 * 64, "flushes are shared, never added");
        assert_eq!(st.counters().unwrap().sessions_total, 5 * 16 * 2, "each batch id stored once");
    }

    #[test]
    fn policies_get_increasing_versions_and_the_bootstrap_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(dir.path()).unwrap();
        assert!(st.deployed().unwrap().is_none());
        let v1 = st.publish_initial(b"behaviour").unwrap();
        assert_eq!((v1.version, v1.round, v1.sha256), (1, 0, sha256(b"behaviour")));
        assert_eq!(st.publish_initial(b"other").unwrap().version, 1);
        st.ingest(&batch(1, 2), 2, 0).unwrap();
        let mut rec = st.start_training(0, 2).unwrap();
        assert_eq!((rec.attempts, rec.deployed_version), (1, Some(1)));
        rec.status = RoundStatus::Published;
        let v2 = st.publish(b"trained", 1, Some(0), Some(&rec)).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(st.deployed().unwrap().unwrap().blob, b"trained");
        assert_eq!(st.round(0).unwrap().unwrap().published_version, Some(2));
        assert_eq!(st.policy_versions().unwrap(), vec![1, 2]);
        assert!(st.unfinished_rounds().unwrap().is_empty());
    }

    #[test]
    fn a_deadline_closes_a_round_with_what_arrived_and_late_sessions_are_kept_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(dir.path()).unwrap();
        assert_eq!(st.round_opened_ms(1_000).unwrap(), 1_000, "a new store opens its first round now");
        assert_eq!(st.close_at_deadline(0, 1, 5_000).unwrap(), None, "nothing new: the round stays open");
        st.ingest(&batch(1, 2), 100, 2_000).unwrap();
        assert_eq!(st.close_at_deadline(1, 1, 5_000).unwrap(), None, "not the collecting round");
        assert_eq!(st.close_at_deadline(0, 3, 5_000).unwrap(), None, "fewer than the minimum");
        assert_eq!(st.close_at_deadline(0, 2, 5_000).unwrap(), Some(0));
        let r0 = st.round(0).unwrap().unwrap();
        assert_eq!((r0.new_sessions, r0.late_sessions, r0.closed_by), (2, 0, Some(CloseReason::Deadline)));
        assert_eq!(st.round_opened_ms(9_999).unwrap(), 5_000, "round 1 opened when round 0 closed");
        // A straggler's sessions, collected for round 0, arrive in round 1: kept, counted late.
        let mut late = batch(2, 3);
        late.sessions[0].round = 1;
        let out = st.ingest(&late, 3, 6_000).unwrap();
        assert_eq!((out.stored, out.closed_round), (3, Some(1)));
        let r1 = st.round(1).unwrap().unwrap();
        assert_eq!((r1.new_sessions, r1.late_sessions, r1.closed_by), (3, 2, Some(CloseReason::Quorum)));
        assert_eq!(st.sessions_through(1).unwrap().0.len(), 5, "late sessions are in D ∪ D′");
    }
}
