//! Group commit: callers that each need "everything I wrote so far is durable" share flushes
//! instead of queueing one fsync apiece.
//!
//! Found by R4 (a thousand agents): every ack waited for its own flush, one after another under
//! the storage lock, so under load the ack latency was the fsync time times the queue length
//! (p99 of seconds). A flush makes durable every write that completed before it started, so a
//! caller whose write finished before some flush began need not flush again.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shares flushes between concurrent callers.
#[derive(Debug, Default)]
pub struct GroupCommit {
    /// Handed out in order; a caller draws one after its writes completed.
    tickets: AtomicU64,
    /// The highest ticket known durable; held while a flush runs, so one flush runs at a time.
    durable: tokio::sync::Mutex<u64>,
    /// Flushes actually run (for tests and figures).
    flushes: AtomicU64,
}

impl GroupCommit {
    /// Returns once every write the caller completed before calling is durable, running `flush`
    /// only if no flush that started after those writes has finished.
    pub async fn commit<F, Fut, E>(&self, flush: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = self.durable.lock().await;
        if *durable >= ticket {
            return Ok(());
        }
        // Every ticket drawn by now belongs to writes that completed before this flush starts.
        let covers = self.tickets.load(Ordering::SeqCst);
        flush().await?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        *durable = covers;
        Ok(())
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_callers_share_a_flush_and_none_returns_early() {
        let g = Arc::new(GroupCommit::default());
        // The "disk": the highest write made durable, and the writes made so far.
        let written = Arc::new(AtomicU64::new(0));
        let on_disk = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (g, written, on_disk) = (g.clone(), written.clone(), on_disk.clone());
            tasks.push(tokio::spawn(async move {
                let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                g.commit(|| async {
                    let upto = written.load(Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    on_disk.fetch_max(upto, Ordering::SeqCst);
                    Ok::<_, ()>(())
                })
                .await
                .unwrap();
                assert!(on_disk.load(Ordering::SeqCst) >= mine, "returned before its write was durable");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(g.flushes() < 64, "{} flushes for 64 callers: none shared", g.flushes());
    }

    #[tokio::test]
    async fn a_failed_flush_is_retried_by_the_next_caller() {
        let g = GroupCommit::default();
        assert_eq!(g.commit(|| async { Err::<(), _>("disk full") }).await, Err("disk full"));
        assert_eq!(g.commit(|| async { Ok::<_, &str>(()) }).await, Ok(()));
        assert_eq!(g.flushes(), 1);
    }
}
