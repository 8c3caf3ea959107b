//! What the server reports about itself: live in-process (a watch channel on the handle) and as
//! `status.json` in the data dir (rewritten atomically at start, after each round, at stop) for
//! tools that run the server as a separate process.

use crate::rounds::record::RoundRecord;
use crate::store::{Counters, Store, StoreError};
use irec_protocol::PolicyAnnouncement;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the status snapshot inside the data dir.
pub const STATUS_FILE: &str = "status.json";

/// A snapshot of the server's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub counters: Counters,
    pub deployed: Option<PolicyAnnouncement>,
    /// Every closed round, oldest first.
    pub rounds: Vec<RoundRecord>,
    /// Agents connected now.
    pub connections: usize,
    /// The UDP address the endpoint is bound to (tools that started the server on port 0 read
    /// the real port here).
    #[serde(default)]
    pub listening: Option<std::net::SocketAddr>,
    /// The HTTP endpoint (dashboard, metrics, exports of a running server), when it is on.
    #[serde(default)]
    pub http: Option<std::net::SocketAddr>,
}

impl ServerStatus {
    pub fn read(store: &Store, connections: usize) -> Result<ServerStatus, StoreError> {
        Ok(ServerStatus {
            counters: store.counters()?,
            deployed: store.deployed()?.map(|p| p.announcement()),
            rounds: store.rounds()?,
            connections,
            listening: None,
            http: None,
        })
    }
}

/// The status a server last wrote into `data_dir`, if it can be read now (tools that run the
/// server as a separate process poll this).
pub fn read_file(data_dir: &Path) -> Option<ServerStatus> {
    let bytes = std::fs::read(data_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `status.json` via a temporary file and a rename, so readers never see half of it.
pub fn write_file(data_dir: &Path, status: &ServerStatus) -> std::io::Result<()> {
    let tmp = data_dir.join("status.json.tmp");
    let text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, data_dir.join(STATUS_FILE))
}
