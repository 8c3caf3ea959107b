//! irec-testkit: the scaffolding every system test and fault campaign shares, written once.
//! Not published; the product never links it (server and agent tests take it as a
//! dev-dependency, fleet-sim's campaigns as a dependency).
//!
//! - [`quic`]: a hand-driven QUIC client that sends anything, well-formed or not, and reports
//!   exactly what came back ([`quic::Answer`], [`quic::Session`]).
//! - [`model_check`]: exactly-once checked over every interleaving of sends, losses,
//!   duplications, reorderings and crashes up to a bound.
//! - [`procs`]: the real binaries as child processes: where to find them, output in files,
//!   orderly and hard stops, waiting for readiness.
//! - [`server`]: a server in this process on the test's runtime, started and stopped in order.
//! - [`tally`]: what a server holds against what the devices produced (exactly once?).
//! - [`stored_sessions`]: every session in a stopped server's D; [`files_under`]: every file of
//!   a data dir.
//!
//! What a device produced is replayed with the agent's own loop
//! (`irec_edge_agent::sessions::replay`), and process memory is read with
//! `irec_edge_agent::procfs`: both are product code, so they are not copied here.

pub mod model_check;
pub mod procs;
pub mod quic;
pub mod server;
pub mod tally;

use irec_protocol::experience::ExperienceSession;
use std::path::{Path, PathBuf};

/// Why a piece of scaffolding could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("starting {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("binary not found: {0}")]
    Binary(String),
    #[error("quic: {0}")]
    Quic(String),
    /// The connection failed or was refused (tests look at how).
    #[error("connecting: {0}")]
    Connection(quinn::ConnectionError),
    #[error("server storage: {0}")]
    Store(#[from] irec_server::store::StoreError),
}

/// Every session in the D of a stopped server whose data dir is `data_dir`, in ingest order.
pub fn stored_sessions(data_dir: &Path) -> Result<Vec<ExperienceSession>, KitError> {
    let store = irec_server::store::Store::open(&irec_server::store::db_dir(data_dir))?;
    Ok(store.all_sessions()?.into_iter().map(|(_, s)| s).collect())
}

/// Every file under `dir`, at any depth (none if it cannot be read).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
