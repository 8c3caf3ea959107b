//! The agent's local sled store: finished sessions, upload batches, the installed policy, and the
//! device's private profile.
//!
//! Trees and keys:
//! - `sessions`: session index (u64 BE) → bincode `ExperienceSession`, not yet in a batch.
//! - `batches`: batch id (16 bytes BE) → bincode [`StoredBatch`]: formed, not yet acked.
//! - `quarantine`: batches the server refused as invalid (kept for inspection, never resent).
//! - `meta`: `next_session` (u64 BE), `profile` (bincode `DeviceProfile`), `policy` (bincode
//!   [`StoredPolicy`]).
//!
//! A session is in exactly one place at a time: `sessions`, then one batch, then gone (after the
//! server's ack). Each move is one sled transaction and is flushed before the next step relies on
//! it, so an agent killed at any point neither loses a session nor uploads it under two batch ids.

use irec_protocol::experience::ExperienceSession;
use irec_protocol::{BatchId, PolicyId, UploadBatch};
use irec_store::codec::{be_u64, bin, unbin};
use irec_store::{ConflictableTransactionError as Conflict, Db, Options, Tree};
use irec_world::policy::DeviceProfile;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use irec_store::StoreError;

const NEXT_SESSION: &[u8] = b"next_session";
const PROFILE: &[u8] = b"profile";
const POLICY: &[u8] = b"policy";

/// sled page-cache cap per agent, in bytes.
const CACHE_BYTES: u64 = 8 << 20;

/// Bytes an upload frame body adds around its sessions: a 128-bit varint batch id (≤ 17 bytes)
/// and the sessions' length prefix (≤ 9 bytes).
pub const BATCH_OVERHEAD: usize = 26;

/// Where the database lives inside an agent's data dir.
pub fn db_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("db")
}

/// A batch as stored: its id is fixed before its first send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub id: BatchId,
    /// Index of its first session (batches upload oldest first).
    pub first_session: u64,
    pub sessions: Vec<ExperienceSession>,
}

impl StoredBatch {
    pub fn upload(&self) -> UploadBatch {
        UploadBatch { batch_id: self.id, sessions: self.sessions.clone() }
    }
}

/// The installed policy, so a restarted agent runs it without downloading it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub version: u64,
    pub round: u32,
    pub sha256: [u8; 32],
    pub blob: Vec<u8>,
}

impl StoredPolicy {
    pub fn id(&self) -> PolicyId {
        PolicyId { version: self.version, round: self.round, sha256: self.sha256 }
    }
}

/// A device's durable state when nothing is pending (see [`AgentStore::idle_record`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub next_session: u64,
    pub profile: DeviceProfile,
}

/// The agent's database.
#[derive(Clone, Debug)]
pub struct AgentStore {
    db: Db,
    sessions: Tree,
    batches: Tree,
    quarantine: Tree,
    meta: Tree,
    /// Sessions in `sessions`, kept here so the async side asks without iterating the tree.
    unbatched: Arc<AtomicUsize>,
}

impl AgentStore {
    pub fn open(dir: &Path) -> Result<AgentStore, StoreError> {
        // A device's store is small; a small page cache keeps a thousand in-process agents cheap.
        let db = Db::open(dir, Options { cache_bytes: Some(CACHE_BYTES) })?;
        let sessions = db.tree("sessions")?;
        Ok(AgentStore {
            unbatched: Arc::new(AtomicUsize::new(sessions.len())),
            sessions,
            batches: db.tree("batches")?,
            quarantine: db.tree("quarantine")?,
            meta: db.tree("meta")?,
            db,
        })
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()
    }

    /// [`AgentStore::flush`] without blocking the async runtime.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await
    }

    /// Index of the next session to run (= sessions finished by this device, all runs).
    pub fn next_session(&self) -> Result<u64, StoreError> {
        Ok(be_u64(self.meta.get(NEXT_SESSION)?))
    }

    /// The device profile, or `default` on first start.
    pub fn profile(&self, default: DeviceProfile) -> Result<DeviceProfile, StoreError> {
        match self.meta.get(PROFILE)? {
            Some(v) => unbin("meta", &v),
            None => Ok(default),
        }
    }

    /// Records finished session `index` with the profile it left behind, in one transaction, and
    /// flushes: from here on the session survives any crash.
    pub fn record_session(&self, index: u64, session: &ExperienceSession, profile: &DeviceProfile) -> Result<(), StoreError> {
        let s = bin(session)?;
        let p = bin(profile)?;
        let fresh = self.db.transaction((&self.sessions, &self.meta), |(sessions, meta)| {
            let fresh = sessions.insert(&index.to_be_bytes()[..], s.as_slice())?.is_none();
            meta.insert(NEXT_SESSION, &(index + 1).to_be_bytes()[..])?;
            meta.insert(PROFILE, p.as_slice())?;
            Ok::<_, Conflict<StoreError>>(fresh)
        })?;
        if fresh {
            self.unbatched.fetch_add(1, Ordering::SeqCst);
        }
        self.flush()
    }

    /// What survives a device between two times it takes part in a sampled study, once nothing
    /// is pending: how many sessions it ran and its profile (the learned bias). `None` while
    /// sessions or batches are still pending: then the whole store must be kept.
    pub fn idle_record(&self) -> Result<Option<DeviceRecord>, StoreError> {
        if self.unbatched() > 0 || !self.batches.is_empty() {
            return Ok(None);
        }
        match self.meta.get(PROFILE)? {
            Some(v) => Ok(Some(DeviceRecord { next_session: self.next_session()?, profile: unbin("meta", &v)? })),
            None => Ok(None),
        }
    }

    /// Restores a device's [`DeviceRecord`] into a fresh store (its next session index and
    /// profile), so that it goes on where it left off: session indices, and so session seeds,
    /// never repeat.
    pub fn restore(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.meta.insert(NEXT_SESSION, &record.next_session.to_be_bytes()[..])?;
        self.meta.insert(PROFILE, bin(&record.profile)?)?;
        self.flush()
    }

    /// Sessions waiting for a batch.
    pub fn unbatched(&self) -> usize {
        self.unbatched.load(Ordering::SeqCst)
    }

    /// Moves waiting sessions into new batches of at most `max_sessions` sessions and
    /// `max_bytes` of upload body each, oldest first. Only full batches unless `all`. Each batch
    /// gets a fresh random id, persisted (and flushed) with it before anyone can send it.
    pub fn form_batches(&self, max_sessions: usize, max_bytes: usize, all: bool) -> Result<Vec<BatchId>, StoreError> {
        let max_sessions = max_sessions.max(1);
        let mut groups: Vec<Vec<(irec_store::IVec, irec_store::IVec)>> = Vec::new();
        let mut current: Vec<(irec_store::IVec, irec_store::IVec)> = Vec::new();
        let mut bytes = BATCH_OVERHEAD;
        for (k, v) in self.sessions.entries()? {
            if !current.is_empty() && (current.len() >= max_sessions || bytes + v.len() > max_bytes) {
                groups.push(std::mem::take(&mut current));
                bytes = BATCH_OVERHEAD;
            }
            bytes += v.len();
            current.push((k, v));
        }
        if !current.is_empty() && (all || current.len() >= max_sessions) {
            groups.push(current);
        }
        let mut ids = Vec::with_capacity(groups.len());
        for group in groups {
            let sessions = group.iter().map(|(_, v)| unbin("sessions", v)).collect::<Result<Vec<_>, _>>()?;
            let first_session = be_u64(group.first().map(|(k, _)| k.clone()));
            let batch = StoredBatch { id: BatchId(rand::random()), first_session, sessions };
            let encoded = bin(&batch)?;
            self.db.transaction((&self.sessions, &self.batches), |(s, b)| {
                for (k, _) in &group {
                    s.remove(k)?;
                }
                b.insert(&batch.id.to_bytes()[..], encoded.as_slice())?;
                Ok::<_, Conflict<StoreError>>(())
            })?;
            self.unbatched.fetch_sub(group.len(), Ordering::SeqCst);
            ids.push(batch.id);
        }
        if !ids.is_empty() {
            self.flush()?;
        }
        Ok(ids)
    }

    /// Formed batches not yet acked, oldest first.
    pub fn pending_batches(&self) -> Result<Vec<BatchId>, StoreError> {
        let mut all: Vec<(u64, BatchId)> = Vec::new();
        for v in self.batches.values()? {
            let b: StoredBatch = unbin("batches", &v)?;
            all.push((b.first_session, b.id));
        }
        all.sort_unstable();
        Ok(all.into_iter().map(|(_, id)| id).collect())
    }

    pub fn batch(&self, id: BatchId) -> Result<Option<StoredBatch>, StoreError> {
        self.batches.get(id.to_bytes())?.map(|v| unbin("batches", &v)).transpose()
    }

    /// The server acked `id`: the batch leaves the store (durably, before the caller goes on).
    pub async fn remove_acked(&self, id: BatchId) -> Result<(), StoreError> {
        self.batches.remove(id.to_bytes())?;
        self.flush_async().await
    }

    /// The server refused `id`'s content: keep it aside, never resend it.
    pub fn quarantine(&self, id: BatchId) -> Result<(), StoreError> {
        let key = id.to_bytes();
        self.db.transaction((&self.batches, &self.quarantine), |(b, q)| {
            if let Some(v) = b.remove(&key[..])? {
                q.insert(&key[..], v)?;
            }
            Ok::<_, Conflict<StoreError>>(())
        })?;
        self.flush()
    }

    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    pub fn policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.meta.get(POLICY)?.map(|v| unbin("meta", &v)).transpose()
    }

    pub async fn save_policy(&self, policy: &StoredPolicy) -> Result<(), StoreError> {
        self.meta.insert(POLICY, bin(policy)?)?;
        self.flush_async().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_world::catalog::Action;
    use irec_protocol::experience::ExperienceTurn;

    fn session(i: u32) -> ExperienceSession {
        ExperienceSession {
            round: 0,
            turns: vec![ExperienceTurn { action: Action::default(), shown: i, utterance: "Good".into(), reward: 1.0, done: true }],
        }
    }

    fn profile() -> DeviceProfile {
        let schema = irec_world::catalog::Schema::reference();
        DeviceProfile {
            seed: 4,
            noise_sigma: 0.1,
            population: irec_world::policy::TargetPopulation::uniform(),
            bias: irec_world::policy::LogitBias::new(&schema.head_sizes(), 0.5, 0.9),
        }
    }

    #[test]
    fn sessions_move_into_batches_with_stable_ids_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let profile = profile();
        let ids = {
            let st = AgentStore::open(dir.path()).unwrap();
            for i in 0..5 {
                st.record_session(i, &session(i as u32), &profile).unwrap();
            }
            assert_eq!(st.next_session().unwrap(), 5);
            let ids = st.form_batches(2, 1 << 20, false).unwrap();
            assert_eq!(ids.len(), 2, "only full batches");
            assert_eq!(st.unbatched(), 1);
            ids
        };
        let st = AgentStore::open(dir.path()).unwrap();
        assert_eq!(st.pending_batches().unwrap(), ids, "same ids, oldest first, after a restart");
        let mut other = profile.clone();
        other.seed = 99;
        assert_eq!(st.profile(other).unwrap(), profile, "the stored profile wins");
        let first = st.batch(ids[0]).unwrap().unwrap();
        assert_eq!((first.first_session, first.sessions.len()), (0, 2));
        assert_eq!(first.sessions[1], session(1));
        let rest = st.form_batches(2, 1 << 20, true).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(st.unbatched(), 0);
        st.quarantine(rest[0]).unwrap();
        assert_eq!(st.quarantined(), 1);
        assert_eq!(st.pending_batches().unwrap(), ids);
    }

    /// Regression: sled's `flush_async` deadlocks when called concurrently, and its thread pool
    /// is shared by every store in the process (an in-process fleet). Many stores flushing at
    /// once must finish.
    #[test]
    fn many_stores_flushing_at_once_do_not_deadlock() {
        let dirs: Vec<_> = (0..16).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<_> = dirs.iter().map(|d| AgentStore::open(d.path()).unwrap()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for (i, st) in stores.iter().enumerate() {
                    for j in 0..8u64 {
                        let st = st.clone();
                        tasks.push(tokio::spawn(async move {
                            st.record_session(j, &session(i as u32), &profile()).unwrap();
                            st.flush_async().await.unwrap();
                        }));
                    }
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(), "concurrent flushes deadlocked");
    }

    #[test]
    fn batches_respect_the_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let st = AgentStore::open(dir.path()).unwrap();
        for i in 0..4 {
            st.record_session(i, &session(i as u32), &profile()).unwrap();
        }
        let one = bin(&session(0)).unwrap().len();
        let ids = st.form_batches(100, BATCH_OVERHEAD + 2 * one, true).unwrap();
        assert_eq!(ids.len(), 2);
    }
}
