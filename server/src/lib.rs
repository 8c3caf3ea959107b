//! irec-server: ingests anonymized experience from edge agents over QUIC, trains a new policy
//! offline every round, and pushes it back.
//!
//! Layers, bottom up:
//! - [`tls`]: the self-signed certificate kept in the data dir, QUIC/TLS settings (ALPN `irec/2`).
//! - [`io`]: frames over quinn streams (the decoding itself is `irec_protocol`).
//! - [`store`]: D, dedupe set, policy registry, rounds, counters (through `irec_store`);
//!   [`commit`]: group commit, so concurrent acks share flushes.
//! - [`conn`]: one connection: hello, then one request per stream, announcements on the control
//!   stream; the logic is the IO-free `ServerConnection` state machine.
//! - [`rounds`]: quota → train on D ∪ D′ (an `irec_learn::round::RoundTrainer`) → deployment
//!   gate → publish → announce.
//! - [`serve`]: the endpoint, the connection cap, orderly shutdown; [`run`] is the entry point.
//! - [`config`], [`cli`]: settings from TOML and flags; [`status`]: what the server reports;
//!   [`metrics`]: what it counts; [`http`]: the dashboard, `/metrics` and a running server's
//!   exports; [`export`]: D out for Python (`irec-server export`).

pub mod cli;
pub mod commit;
pub mod config;
pub mod conn;
pub mod export;
pub mod http;
pub mod io;
pub mod metrics;
pub mod rounds;
pub mod serve;
pub mod status;
pub mod store;
pub mod tls;

pub use config::ServerConfig;
pub use serve::{run, Server, ServerHandle};
pub use status::ServerStatus;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificate: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("http.listen {0}: {1} (set another address in [http] listen, or --http-listen)")]
    HttpBind(SocketAddr, std::io::Error),
    #[error("loading the catalog: {0}")]
    Catalog(String),
    #[error("internal task failed: {0}")]
    Task(String),
}
