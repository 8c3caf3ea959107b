//! irec-store: sled behind a type. The agent's and the server's stores open a [`Db`] and its
//! [`Tree`]s here and never touch sled directly, so the rules below hold by construction rather
//! than by convention at each call site.
//!
//! - [`Db`]: open (retrying a lock a just-closed database still holds), named trees, multi-tree
//!   transactions, flushes (blocking, or on a blocking thread for async callers); [`blocking`]
//!   for any other store work an async caller needs.
//! - [`Tree`]: single-key reads and writes, and iteration that returns a snapshot (`Vec`) instead
//!   of a live iterator.
//! - [`codec`]: bincode / JSON records and big-endian counters, with the tree named in errors.
//! - [`StoreError`]: what can go wrong, once for every store.
//!
//! Why one process-wide lock: sled 0.34 guards every tree of every database in a process with a
//! single global reader-writer lock: a transaction takes it exclusively, a plain get/insert/remove
//! takes it shared once, and an iterator holds a shared guard for its whole life *and* takes it
//! shared again on each step. The lock queues new readers behind a waiting writer, so an iteration
//! that overlaps a transaction on another thread deadlocks: the writer waits for the iterator's
//! first guard, the iterator's next step waits behind the writer (spacejam/sled#1301 is this bug).
//! Seen here with a server and twenty agents in one process: every thread stuck within seconds.
//! Flushes are the other half: a flush takes the lock shared and then waits for earlier log
//! buffers to become stable, which another flush may have to finish, and that flush's shared
//! request queues behind a waiting transaction (seen with 20 agents: seven flushes and a
//! transaction waiting on each other).
//!
//! So every transaction, every iteration and every flush here runs under one mutex (and sled's
//! background flusher is off): no transaction can be queued inside sled while an iterator or a
//! flush holds sled's lock shared. Single-key operations take sled's lock once, briefly, and need
//! no guard. The mutex is never held across an `.await`: async callers go through
//! [`Db::flush_async`], which takes it on a blocking thread. It is not re-entrant, which is why a
//! transaction's closure only sees [`TransactionalTree`]s (no flush or iteration inside).

pub mod codec;

pub use sled::transaction::{ConflictableTransactionError, TransactionalTree};
pub use sled::IVec;

use sled::transaction::{TransactionError, Transactional};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SLED: Mutex<()> = Mutex::new(());

fn guard() -> MutexGuard<'static, ()> {
    // A panic while holding it leaves nothing half-done on our side: sled's own state is intact.
    SLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Another process has the database open.
    #[error("{0}: the database is in use by another process")]
    Locked(PathBuf),
    #[error("corrupt record in tree {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("encoding a record: {0}")]
    Encode(String),
    /// The blocking task that ran store work panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

/// How to open a database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// sled's page cache, in bytes; `None`: sled's default (1 GiB). A device's store is small,
    /// and a small cache keeps a thousand in-process agents cheap.
    pub cache_bytes: Option<u64>,
}

/// An open sled database.
#[derive(Clone, Debug)]
pub struct Db {
    db: sled::Db,
}

/// One named tree of a [`Db`].
#[derive(Clone, Debug)]
pub struct Tree {
    tree: sled::Tree,
}

impl Db {
    /// Opens (or creates) the database in `dir`. A database closed a moment ago may still be held
    /// by sled's I/O threads finishing a write (seen reopening a store right after dropping it,
    /// under load); its file lock is released when they finish, so a held lock is retried for up
    /// to two seconds before it is reported as [`StoreError::Locked`].
    pub fn open(dir: &Path, options: Options) -> Result<Db, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut config = sled::Config::new().path(dir).flush_every_ms(None);
            if let Some(bytes) = options.cache_bytes {
                config = config.cache_capacity(bytes);
            }
            match config.open() {
                Ok(db) => return Ok(Db { db }),
                // sled 0.34 reports a held file lock only as an `io::Error` of kind `Other` with
                // this text; matching it here is the one place that depends on the wording.
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Locked(dir.to_path_buf()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn tree(&self, name: &'static str) -> Result<Tree, StoreError> {
        Ok(Tree { tree: self.db.open_tree(name)? })
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _sled = guard();
        self.db.flush()?;
        Ok(())
    }

    /// [`Db::flush`] without blocking the async runtime: sled's synchronous flush on a blocking
    /// thread under the lock. Not sled's `flush_async`, which deadlocks when called concurrently
    /// (spacejam/sled#1308), and sled's state is shared by every store in a process.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.flush()).await.map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Every tree (sled's default tree included) with all its entries, for audits that must see
    /// everything stored, whatever the store's owner put there.
    pub fn dump(&self) -> Result<Vec<(String, Vec<(IVec, IVec)>)>, StoreError> {
        let _sled = guard();
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            out.push((String::from_utf8_lossy(&name).into_owned(), tree.iter().collect::<Result<Vec<_>, _>>()?));
        }
        Ok(out)
    }

    /// Runs `f` as one atomic transaction over `trees` (a tuple of 2–4 [`Tree`]s, or one), under
    /// the lock. sled may run `f` more than once on a conflict, so it must not have side effects
    /// outside the views. An abort with `e` returns `Err(e)`.
    pub fn transaction<'a, T, R, E, F>(&self, trees: T, f: F) -> Result<R, E>
    where
        T: Trees<'a>,
        T::Raw: Transactional<E>,
        F: Fn(&<T::Raw as Transactional<E>>::View) -> Result<R, ConflictableTransactionError<E>>,
        E: From<StoreError>,
    {
        let raw = trees.raw();
        let _sled = guard();
        raw.transaction(f).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => E::from(StoreError::Sled(e)),
        })
    }
}

/// Runs store work from async code on a blocking thread, so the lock and sled's I/O never stall
/// a runtime worker.
pub async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| E::from(StoreError::Task(e.to_string())))?
}

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> Result<(), StoreError> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// The entries with keys in `range`, in key order, read under the lock.
    pub fn range<K: AsRef<[u8]>, B: RangeBounds<K>>(&self, range: B) -> Result<Vec<(IVec, IVec)>, StoreError> {
        let _sled = guard();
        Ok(self.tree.range(range).collect::<Result<Vec<_>, _>>()?)
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<(IVec, IVec)>, StoreError> {
        self.range::<&[u8], _>(..)
    }

    /// Every value, in key order.
    pub fn values(&self) -> Result<Vec<IVec>, StoreError> {
        let _sled = guard();
        Ok(self.tree.iter().values().collect::<Result<Vec<_>, _>>()?)
    }

    /// Entries in the tree (sled counts them by iterating, hence the lock).
    pub fn len(&self) -> usize {
        let _sled = guard();
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        let _sled = guard();
        self.tree.is_empty()
    }
}

/// Tuples of trees one transaction may span.
pub trait Trees<'a> {
    type Raw;
    fn raw(self) -> Self::Raw;
}

impl<'a> Trees<'a> for &'a Tree {
    type Raw = &'a sled::Tree;
    fn raw(self) -> Self::Raw {
        &self.tree
    }
}

impl<'a> Trees<'a> for (&'a Tree, &'a Tree) {
    type Raw = (&'a sled::Tree, &'a sled::Tree);
    fn raw(self) -> Self::Raw {
        (&self.0.tree, &self.1.tree)
    }
}

impl<'a> Trees<'a> for (&'a Tree, &'a Tree, &'a Tree) {
    type Raw = (&'a sled::Tree, &'a sled::Tree, &'a sled::Tree);
    fn raw(self) -> Self::Raw {
        (&self.0.tree, &self.1.tree, &self.2.tree)
    }
}

impl<'a> Trees<'a> for (&'a Tree, &'a Tree, &'a Tree, &'a Tree) {
    type Raw = (&'a sled::Tree, &'a sled::Tree, &'a sled::Tree, &'a sled::Tree);
    fn raw(self) -> Self::Raw {
        (&self.0.tree, &self.1.tree, &self.2.tree, &self.3.tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_commit_or_abort_whole_and_reads_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options { cache_bytes: Some(1 << 20) }).unwrap();
        let (a, b) = (db.tree("a").unwrap(), db.tree("b").unwrap());
        db.transaction((&a, &b), |(a, b)| {
            a.insert(&[1u8][..], &[10u8][..])?;
            b.insert(&[1u8][..], &[20u8][..])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })
        .unwrap();
        let aborted: Result<(), StoreError> = db.transaction((&a, &b), |(a, _)| {
            a.insert(&[2u8][..], &[0u8][..])?;
            Err(ConflictableTransactionError::Abort(StoreError::Encode("no".into())))
        });
        assert!(matches!(aborted, Err(StoreError::Encode(_))));
        assert_eq!(a.entries().unwrap().len(), 1, "an aborted transaction writes nothing");
        assert_eq!((a.len(), b.values().unwrap()), (1, vec![IVec::from(&[20u8][..])]));
        db.flush().unwrap();
        drop((a, b, db));
        let again = Db::open(dir.path(), Options::default()).unwrap();
        assert_eq!(again.tree("a").unwrap().get([1u8]).unwrap(), Some(IVec::from(&[10u8][..])));
    }

    #[test]
    fn a_database_held_by_another_handle_is_reported_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Db::open(dir.path(), Options::default()).unwrap();
        // sled refuses a second open of the same directory within a process as well.
        match Db::open(dir.path(), Options::default()) {
            Err(StoreError::Locked(p)) => assert_eq!(p, dir.path()),
            other => panic!("{other:?}"),
        }
    }
}
