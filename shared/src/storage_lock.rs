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
