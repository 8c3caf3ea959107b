//! Closes the collecting round at its deadline, with the sessions that arrived, so a slow
//! device, a partitioned one or one that left never holds the fleet up. What it sends later is
//! kept: it goes into the round collecting then.
//!
//! The deadline counts `round_deadline_ms` from when devices could first collect for the round:
//! the later of its opening and the decision on the round before (publishing the policy it
//! collects with). While an earlier round is still training, only the quota closes a round, so
//! rounds never close faster than the server can train them.

use crate::serve::Shared;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::info;

/// How often a round whose deadline passed without enough new sessions is looked at again.
const RECHECK: Duration = Duration::from_millis(250);

/// The wall clock in milliseconds since the epoch (what the store records round openings in,
/// so a restarted server keeps counting from the same opening).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Closes rounds at their deadlines until `stop` is raised.
pub async fn run(shared: Arc<Shared>, after: Duration, min_sessions: u64, mut stop: watch::Receiver<bool>) -> Result<(), StoreError> {
    let after_ms = after.as_millis() as u64;
    loop {
        let store = shared.store.clone();
        let (round, opened) = irec_store::blocking(move || -> Result<_, StoreError> { Ok((store.counters()?.current_round, store.round_opened_ms(now_ms())?)) }).await?;
        // The rounds come from the status the server keeps in memory: reading and parsing every
        // round record from the store four times a second while a round trains is waste.
        let Some(start) = shared.last_decision().map(|d| d.map_or(opened, |d| d.max(opened))) else {
            tokio::select! {
                _ = tokio::time::sleep(RECHECK) => continue,
                _ = stop.changed() => return Ok(()),
            }
        };
        let wait = Duration::from_millis((start + after_ms).saturating_sub(now_ms()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return Ok(()),
        }
        let store = shared.store.clone();
        let closed = irec_store::blocking(move || store.close_at_deadline(round, min_sessions, now_ms())).await?;
        match closed {
            Some(r) => {
                shared.store.flush().await?;
                info!(round = r, "round closed at its deadline");
                shared.round_wake.notify_one();
                shared.publish_status().await;
                shared.write_status_file();
            }
            // Closed by its quota meanwhile (the loop reads the new round), or too few sessions.
            None => tokio::select! {
                _ = tokio::time::sleep(RECHECK) => {}
                _ = stop.changed() => return Ok(()),
            },
        }
    }
}
