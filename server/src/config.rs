//! Server settings: a plain struct with serde defaults, loadable from TOML, overridable by flags.

use irec_protocol::validate::DEFAULT_MAX_BATCH_SESSIONS;
use irec_learn::round::TrainerConfig;
use irec_protocol::FrameLimits;
use irec_world::sim::WorldConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `irec-server` needs to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Directory for the sled database (`db/`), the certificate (`cert.der`, `key.der`) and
    /// `status.json`. Created on first start.
    pub data_dir: PathBuf,
    /// Shared secret every agent presents in its hello. Must not be empty.
    pub fleet_token: String,
    /// Most concurrent agent connections; further ones are closed with `TooManyConnections`.
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed, in milliseconds (agents send
    /// keep-alives well within it).
    pub idle_timeout_ms: u64,
    /// A new connection must complete its hello within this, in milliseconds.
    pub hello_timeout_ms: u64,
    /// A request stream must deliver its whole frame within this, in milliseconds.
    pub request_timeout_ms: u64,
    /// New sessions that close a round and start training on D ∪ D′ (0: no quota; rounds then
    /// close at their deadline, or never without one).
    pub round_quota: u64,
    /// A round also closes this long after it opened, in milliseconds, with whatever arrived
    /// (at least `round_min_sessions`), so stragglers and vanished devices never hold it up.
    /// 0: no deadline (rounds close on the quota only).
    pub round_deadline_ms: u64,
    /// New sessions a round needs before its deadline may close it.
    pub round_min_sessions: u64,
    /// The deployment gate publishes a candidate unless its off-policy value estimate is below the
    /// deployed policy's by more than this (in the estimate's units: expected return per session).
    pub gate_tolerance: f64,
    /// Standard errors of the estimates' difference by which a candidate must fall below the
    /// deployed policy, beyond `gate_tolerance`, to be refused (0: point estimates decide).
    pub gate_confidence_z: f64,
    /// Per-kind frame caps, in bytes (uploads and policy blobs).
    pub frames: FrameLimits,
    /// Request bytes all connections together may hold at once, in bytes: a request's frame is
    /// read only once its size fits (else it waits, within `request_timeout_ms`). With
    /// `connection_receive_window_bytes`, what bounds the server's memory under slow or
    /// hostile uploads.
    pub max_request_bytes_in_flight: u64,
    /// The same for one connection (at most this of the server's budget is one agent's).
    pub max_request_bytes_per_connection: u64,
    /// QUIC flow-control window of one connection, in bytes: what an agent may send that the
    /// server has not read yet.
    pub connection_receive_window_bytes: u64,
    /// Most sessions accepted in one upload batch.
    pub max_batch_sessions: usize,
    /// Turn cap of a session (uploads with more turns are refused).
    pub max_turns: usize,
    /// A policy checkpoint to publish as version 1 on first start (ignored once any exists).
    pub initial_policy: Option<PathBuf>,
    /// The simulated world; only its catalog matters here (item ids and action head sizes that
    /// uploads are checked against). Must match the agents'.
    pub world: WorldConfig,
    /// Names in the self-signed certificate; agents connect using one of them.
    pub cert_names: Vec<String>,
    /// Directory holding the certificate (`cert.der`) and its key (`key.der`), e.g. a mounted
    /// Kubernetes Secret made with `irec-server --write-cert`. Unset: the data dir, where both
    /// are made on first start.
    pub tls_dir: Option<PathBuf>,
    /// Compute device handed to the trainer: `cpu` or `cuda:N`.
    pub device: String,
    /// Base seed of training jobs (round r trains with a seed derived from it and r).
    pub seed: u64,
    /// The round trainer (`[trainer]`).
    pub trainer: TrainerConfig,
    /// The HTTP endpoint: dashboard, Prometheus `/metrics`, exports while running (`[http]`).
    pub http: crate::http::HttpConfig,
}

impl ServerConfig {
    /// Where the certificate and key live.
    pub fn tls_dir(&self) -> &std::path::Path {
        self.tls_dir.as_deref().unwrap_or(&self.data_dir)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            data_dir: PathBuf::from("irec-server-data"),
            fleet_token: String::new(),
            max_connections: 4096,
            idle_timeout_ms: 30_000,
            hello_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            round_quota: 1000,
            round_deadline_ms: 0,
            round_min_sessions: 1,
            gate_tolerance: 0.0,
            gate_confidence_z: 2.0,
            frames: FrameLimits::default(),
            max_request_bytes_in_flight: 64 << 20,
            max_request_bytes_per_connection: 8 << 20,
            connection_receive_window_bytes: 1 << 20,
            max_batch_sessions: DEFAULT_MAX_BATCH_SESSIONS,
            max_turns: 50,
            initial_policy: None,
            world: WorldConfig::default(),
            cert_names: vec![crate::tls::DEFAULT_SERVER_NAME.to_string(), "localhost".to_string()],
            tls_dir: None,
            device: "cpu".to_string(),
            seed: 2022,
            trainer: TrainerConfig::default(),
            http: crate::http::HttpConfig::default(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Loads a TOML file; missing fields take their defaults.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.fleet_token.is_empty() {
            return bad("fleet_token must be set (agents must present it)");
        }
        if self.fleet_token.len() > 256 {
            return bad("fleet_token is longer than 256 bytes");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.idle_timeout_ms == 0 || self.hello_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return bad("timeouts must be positive");
        }
        if !self.gate_tolerance.is_finite() || self.gate_tolerance < 0.0 {
            return bad("gate_tolerance must be a finite number ≥ 0");
        }
        if !self.gate_confidence_z.is_finite() || self.gate_confidence_z < 0.0 {
            return bad("gate_confidence_z must be a finite number ≥ 0");
        }
        let largest_request = (self.frames.upload_bytes.max(self.frames.small_bytes) as u64) + 5;
        if self.max_request_bytes_per_connection < largest_request {
            return bad("max_request_bytes_per_connection must hold at least one largest upload frame");
        }
        if self.max_request_bytes_in_flight < self.max_request_bytes_per_connection {
            return bad("max_request_bytes_in_flight must be at least max_request_bytes_per_connection");
        }
        if self.connection_receive_window_bytes < 16 << 10 {
            return bad("connection_receive_window_bytes must be at least 16 KiB");
        }
        let t = &self.trainer;
        t.objective.validate_at("trainer.objective").map_err(ConfigError::Invalid)?;
        t.sac.validate("trainer.sac").map_err(ConfigError::Invalid)?;
        t.cql.validate("trainer.cql").map_err(ConfigError::Invalid)?;
        t.bcq.validate("trainer.bcq").map_err(ConfigError::Invalid)?;
        t.iql.validate("trainer.iql").map_err(ConfigError::Invalid)?;
        t.fqe.validate("trainer.fqe").map_err(ConfigError::Invalid)?;
        t.pretrain.validate("trainer.pretrain").map_err(ConfigError::Invalid)?;
        if t.eval_sessions == 0 {
            return bad("trainer.eval_sessions must be at least 1");
        }
        if self.cert_names.is_empty() {
            return bad("cert_names must name at least one host");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ServerConfig {
        ServerConfig { fleet_token: "t".into(), ..ServerConfig::default() }
    }

    fn refused(toml_text: &str) -> String {
        let mut merged: toml::Table = toml::from_str(&toml::to_string(&valid()).unwrap()).unwrap();
        let over: toml::Table = toml::from_str(toml_text).unwrap();
        for (k, v) in over {
            match (merged.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(o)) => b.extend(o),
                (_, v) => {
                    merged.insert(k, v);
                }
            }
        }
        match toml::from_str::<ServerConfig>(&toml::to_string(&merged).unwrap()) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().map_or_else(|e| e.to_string(), |()| "accepted".into()),
        }
    }

    #[test]
    fn bad_learning_settings_are_refused_naming_the_field() {
        assert_eq!(refused(""), "accepted");
        assert!(refused("[trainer.cql]\nalpha = -1.0").contains("trainer.cql.alpha"));
        assert!(refused("[trainer.sac]\ntemperature = -0.5").contains("trainer.sac.temperature"));
        assert!(refused("[trainer.sac]\ntd_lambda = 1.5").contains("trainer.sac.td_lambda"));
        assert!(refused("[trainer.objective]\nkind = \"turn_cost\"\ncost = 0.0\nfailure_penalty = 0.0").contains("trainer.objective.cost"));
        assert!(refused("[trainer.fqe]\nensemble = 0").contains("trainer.fqe.ensemble"));
        assert!(refused("[trainer.pretrain]\nrequest_repeats = -1.0").contains("trainer.pretrain.request_repeats"));
        assert!(refused("gate_tolerance = nan").contains("gate_tolerance"));
        assert!(refused("[trainer.bcq]\nthreshold = 1.5").contains("trainer.bcq.threshold"));
        assert!(refused("[trainer.iql]\nexpectile = 0.2").contains("trainer.iql.expectile"));
        assert_eq!(refused("[trainer]\nalgo = \"iql\""), "accepted");
        let unknown_algo = refused("[trainer]\nalgo = \"mopo\"");
        assert!(unknown_algo.contains("mopo") && unknown_algo.contains("bcq"), "{unknown_algo}");
        assert!(refused("gate_confidence_z = -1.0").contains("gate_confidence_z"));
        // An unknown objective is a parse error that names the variant and where it stood.
        let unknown = refused("[trainer.objective]\nkind = \"fastest\"");
        assert!(unknown.contains("fastest") && unknown.contains("objective"), "{unknown}");
    }
}
