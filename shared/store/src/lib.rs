//! One process-wide lock around sled transactions and iterations.
//!
//! sled 0.34 guards every tree of every database in a process with a single global reader-writer
//! lock: a transaction takes it exclusively, a plain get/insert/remove takes it shared once, and
//! an iterator holds a shared guard for its whole life *and* takes it shared again on each step.
//! The lock queues new readers behind a waiting writer, so an iteration that overlaps a
//! transaction on another thread deadlocks: the writer waits for the iterator's first guard, the
//! iterator's next step waits behind the writer (spacejam/sled#1301 is this bug). Seen here with
//! a server and twenty agents in one process: every thread stuck within seconds.
//!
//! Flushes are the other half: a flush takes the lock shared and then waits for earlier log
//! buffers to become stable, which another flush may have to finish — and that flush's shared
//! request queues behind a waiting transaction (seen with 20 agents: seven flushes and a
//! transaction waiting on each other).
//!
//! Holding this mutex around every transaction, every iteration and every flush (with sled's
//! background flusher off) means no transaction can be queued inside sled while an iterator or a
//! flush holds the lock shared. Single-key operations need no guard: they take it once, briefly. Never hold
//! it across an `.await` (the guard is not `Send`, so the compiler refuses) or while calling
//! another guarded function (it is not re-entrant).

use std::sync::{Mutex, MutexGuard};

static SLED: Mutex<()> = Mutex::new(());

/// Serialises sled transactions and iterations in this process.
pub fn guard() -> MutexGuard<'static, ()> {
    // A panic while holding it leaves nothing half-done on our side: sled's own state is intact.
    SLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `open` until it stops failing with "could not acquire lock", for up to two seconds.
///
/// A sled database closed a moment ago may still be held by sled's I/O threads finishing a write
/// (seen reopening a store right after dropping it, under load); its file lock is released when
/// they finish. Any other error, or a lock still held after two seconds (another process owns
/// it), is returned as is.
pub fn retry_locked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
