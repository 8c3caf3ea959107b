//! Fault injection, fuzzing, load and audits: the reliability campaigns (docs/reliability.md).
//!
//! Each campaign is a function from a config struct (with defaults sized for a long run; the CI
//! tests shrink them) to an [`Outcome`]: the figures it measured and every invariant it saw
//! broken. A campaign only returns `Err` when it could not run at all (a binary missing, a port
//! taken); a broken promise is a violation in the outcome, so the report always shows it.
//!
//! - [`agents_killed`] (R1): SIGKILL edge-agent processes at random points; D must hold every
//!   session exactly once.
//! - [`server_killed`] (R2): SIGKILL the server mid-ingest, mid-training, mid-publish.
//! - [`fuzz`] (R3): seeded random and mutated input to the frame decoder and every handler.
//! - [`load`] (R4): a thousand in-process agents against one server process.
//! - [`privacy`] (R6): every byte the server stores or receives, searched for private values.
//! - [`reconnect`] (R9): the server killed under a thousand agents and restarted; how they come
//!   back.
//! - [`network`] (R7): agents on three hosts (network namespaces) behind bad links with
//!   partitions; exactly once, rounds finish, every agent on the newest policy.
//!
//! R5 (attacks on a live server) lives with the server's own tests (`server/tests/ingest.rs`,
//! `server/tests/attack.rs`).
//!
//! Building blocks: [`hosts`] (network namespaces joined by veth pairs), [`link`] (an impairing
//! UDP relay), [`fleet`] (configs of a small world, starting server and agents, what is left
//! in their stores), [`relay`] (a recording QUIC relay for the traffic audit), [`probe`]; and from
//! `irec-testkit`, shared with the server's and the system tests: the binaries as child processes
//! (`procs`), the hand-driven QUIC client (`quic`), exactly-once counts (`tally`).

pub mod agents_killed;
pub mod fleet;
pub mod fuzz;
pub mod fuzz_live;
pub mod hosts;
pub mod link;
pub mod load;
pub mod network;
pub mod privacy;
pub mod probe;
pub mod reconnect;
pub mod relay;
pub mod server_killed;

use serde::Serialize;
use std::path::PathBuf;

/// Why a campaign could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("building the world: {0}")]
    World(String),
    #[error("server storage: {0}")]
    Store(#[from] irec_server::store::StoreError),
    /// A store below the server's own rules (an agent's, or a database read directly).
    #[error("storage: {0}")]
    Storage(#[from] irec_store::StoreError),
    #[error("server: {0}")]
    Server(#[from] irec_server::ServerError),
    #[error("relay: {0}")]
    Relay(String),
    /// Starting, stopping or reaching the binaries (missing binary, timeout, connection).
    #[error(transparent)]
    Kit(#[from] irec_testkit::KitError),
}

/// What a campaign measured and which promises it saw broken.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub campaign: &'static str,
    /// Measured figures (counts, rates, latencies), campaign-specific.
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// Broken invariants, each in one sentence. Empty when the campaign passed.
    pub violations: Vec<String>,
}

impl Outcome {
    pub fn new(campaign: &'static str) -> Outcome {
        Outcome { campaign, ..Outcome::default() }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn figure(&mut self, name: &str, value: impl Serialize) {
        self.figures.insert(name.to_string(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
    }

    /// Takes over another part's figures and violations (a campaign in several parts).
    pub fn absorb(&mut self, other: Outcome) {
        self.figures.extend(other.figures);
        self.violations.extend(other.violations.into_iter().map(|v| format!("{}: {v}", other.campaign)));
    }

    /// Records a violation unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violations.push(what());
        }
    }
}

pub use irec_world::metrics::percentile;


