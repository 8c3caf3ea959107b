//! The endpoint: binds, accepts connections (up to the cap), runs the round driver, and shuts all
//! of it down in order. [`Shared`] is what every connection task sees.

use irec_world::world_file::WorldFingerprint;
use crate::config::ServerConfig;
use crate::rounds::driver::{self, DriverConfig};
use irec_learn::round::RoundTrainer;
use crate::status::{self, ServerStatus};
use crate::store::{Store, StoreError};
use crate::metrics::Metrics;
use crate::{conn, http, tls, ServerError};
use irec_world::catalog::{self, Catalog};
use irec_protocol::*;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How long shutdown waits for connections to finish before abandoning them.
const DRAIN: Duration = Duration::from_secs(5);

/// State shared by all connection tasks and the round driver.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub rules: Arc<ServerRules>,
    pub limits: FrameLimits,
    pub quota: u64,
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    /// Request bytes all connections may hold at once (see `ServerConfig::max_request_bytes_in_flight`).
    pub request_budget: crate::io::Budget,
    /// Request bytes one connection may hold at once.
    pub connection_request_bytes: usize,
    pub data_dir: PathBuf,
    /// The deployed policy; connections forward changes to their agents.
    announce_tx: watch::Sender<Option<PolicyAnnouncement>>,
    pub announce: watch::Receiver<Option<PolicyAnnouncement>>,
    status: watch::Sender<ServerStatus>,
    /// Wakes the round driver when an ingest closes a round.
    pub round_wake: Notify,
    pub connections: AtomicUsize,
    /// Where the endpoint listens (reported in the status).
    pub local_addr: Option<SocketAddr>,
    /// Where the HTTP endpoint listens, when it is on (reported in the status).
    pub http_addr: Option<SocketAddr>,
    pub metrics: crate::metrics::Metrics,
    /// The deployed policy's encoded `PolicyBlob` frame, built once per version and shared by
    /// every request for it (a thousand agents pulling a 5 MB policy share one copy).
    blob_frame: Mutex<Option<(PolicyVersion, Arc<Vec<u8>>)>>,
}

impl Shared {
    /// The live status, as last published.
    pub fn status(&self) -> ServerStatus {
        self.status.borrow().clone()
    }

    /// When the newest round was decided (wall clock ms), from the published status; `None`
    /// while some round is still queued or training. `Some(None)`: no round closed yet.
    pub fn last_decision(&self) -> Option<Option<u64>> {
        let status = self.status.borrow();
        if status.rounds.iter().any(|r| !r.status.is_finished()) {
            return None;
        }
        Some(status.rounds.last().and_then(|r| r.decided_ms))
    }

    /// Stores a validated batch exactly once and returns the ack frame, after the flush.
    pub async fn ingest(&self, batch: UploadBatch) -> Result<Arc<Vec<u8>>, ErrorMessage> {
        let internal = |e: String| ErrorMessage::new(ErrorCode::Internal, e);
        let batch_id = batch.batch_id;
        let turns: u64 = batch.sessions.iter().map(|s| s.len() as u64).sum();
        let store = self.store.clone();
        let quota = self.quota;
        let outcome = tokio::task::spawn_blocking(move || store.ingest(&batch, quota, crate::rounds::deadline::now_ms()))
            .await
            .map_err(|e| internal(format!("ingest task failed: {e}")))?
            .map_err(|e| internal(format!("storing the batch: {e}")))?;
        // Flushing for a duplicate too: its first copy may have been acked by nobody yet.
        self.store.flush().await.map_err(|e| internal(format!("flushing: {e}")))?;
        if let Some(r) = outcome.closed_round {
            info!(round = r, "round closed");
            self.round_wake.notify_one();
            self.publish_status().await;
            // Before the ack: a tool that saw its last upload acked finds every round it closed
            // in status.json (queued), and can wait for them to finish.
            self.write_status_file();
        } else if let Ok(c) = self.store.counters() {
            self.status.send_modify(|s| s.counters = c);
        }
        tracing::debug!(batch = %batch_id, stored = outcome.stored, duplicate = outcome.duplicate, "ingested");
        let m = &self.metrics;
        if outcome.duplicate {
            Metrics::add(&m.uploads_duplicate, 1);
        } else {
            Metrics::add(&m.uploads_stored, 1);
            Metrics::add(&m.sessions_ingested, u64::from(outcome.stored));
            Metrics::add(&m.turns_ingested, turns);
        }
        let ack = Ack { batch_id, stored: outcome.stored, duplicate: outcome.duplicate };
        encode(&Message::Ack(ack), &self.limits).map(Arc::new).map_err(|e| internal(e.to_string()))
    }

    /// The answer to a policy request: the deployed blob, or `NoPolicy` when `have` is current.
    pub async fn policy_reply(&self, have: Option<PolicyVersion>) -> Result<Arc<Vec<u8>>, ErrorMessage> {
        let internal = |e: String| ErrorMessage::new(ErrorCode::Internal, e);
        Metrics::add(&self.metrics.policy_requests, 1);
        let deployed = *self.announce.borrow();
        let Some(ann) = deployed.filter(|a| have.is_none_or(|h| h < a.version)) else {
            let m = Message::NoPolicy(NoPolicy { deployed: deployed.map(|a| a.version) });
            return encode(&m, &self.limits).map(Arc::new).map_err(|e| internal(e.to_string()));
        };
        Metrics::add(&self.metrics.policy_blobs_sent, 1);
        if let Ok(cache) = self.blob_frame.lock() {
            if let Some((v, frame)) = cache.as_ref() {
                if *v == ann.version {
                    return Ok(frame.clone());
                }
            }
        }
        let store = self.store.clone();
        let limits = self.limits;
        let frame = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let p = store.policy(ann.version).map_err(|e| e.to_string())?.ok_or("deployed policy missing")?;
            let blob = PolicyBlob { version: p.version, round: p.round, sha256: p.sha256, bytes: p.blob };
            encode(&Message::PolicyBlob(blob), &limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| internal(format!("policy task failed: {e}")))?
        .map_err(internal)?;
        let frame = Arc::new(frame);
        if let Ok(mut cache) = self.blob_frame.lock() {
            *cache = Some((ann.version, frame.clone()));
        }
        Ok(frame)
    }

    /// Tells every connection about a newly published (and flushed) policy.
    pub fn announce(&self, ann: PolicyAnnouncement) {
        self.announce_tx.send_replace(Some(ann));
    }

    /// Refreshes the live status from the store.
    /// Reads the status from the store (on a blocking thread: it iterates the rounds) and
    /// publishes it on the handle's watch channel.
    pub async fn publish_status(&self) {
        let (store, connections) = (self.store.clone(), self.connections.load(Ordering::Relaxed));
        match irec_store::blocking(move || ServerStatus::read(&store, connections)).await {
            Ok(mut s) => {
                s.listening = self.local_addr;
                s.http = self.http_addr;
                self.status.send_replace(s);
            }
            Err(e) => warn!("reading status: {e}"),
        }
    }

    pub fn write_status_file(&self) {
        if let Err(e) = status::write_file(&self.data_dir, &self.status.borrow()) {
            warn!("writing {}: {e}", status::STATUS_FILE);
        }
    }
}

/// Counts a live connection for as long as it is held.
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The catalog that uploads are checked against.
fn catalog(config: &ServerConfig) -> Result<Catalog, ServerError> {
    match &config.world.catalog_path {
        Some(p) => catalog::csv::load(p, config.world.catalog.seed).map_err(|e| ServerError::Catalog(e.to_string())),
        None => Ok(catalog::generate(&config.world.catalog)),
    }
}

/// A bound server, not yet serving.
pub struct Server {
    config: ServerConfig,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    trainer: Arc<dyn RoundTrainer>,
    status: watch::Receiver<ServerStatus>,
    http: Option<std::net::TcpListener>,
}

/// A cheap view of a running server, for tests and in-process fleets.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    /// The certificate agents must pin.
    pub cert_path: PathBuf,
    status: watch::Receiver<ServerStatus>,
}

impl ServerHandle {
    pub fn status(&self) -> ServerStatus {
        self.status.borrow().clone()
    }

    /// Waits until `f` holds for the status (or the server is gone).
    pub async fn wait_for(&mut self, f: impl Fn(&ServerStatus) -> bool) -> Option<ServerStatus> {
        self.status.wait_for(|s| f(s)).await.ok().map(|s| s.clone())
    }
}

impl Server {
    /// Opens the store, makes or loads the certificate, publishes the initial policy if given,
    /// and binds the UDP socket.
    pub async fn bind(config: ServerConfig, trainer: Arc<dyn RoundTrainer>) -> Result<Server, ServerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::Io(config.data_dir.clone(), e))?;
        let (cert, key) = tls::load_or_create(config.tls_dir(), &config.cert_names)?;
        let initial_blob = match &config.initial_policy {
            Some(path) => Some(std::fs::read(path).map_err(|e| ServerError::Io(path.clone(), e))?),
            None => None,
        };
        // Opening may wait for a just-released lock and publishing flushes: off the runtime.
        let db_dir = crate::store::db_dir(&config.data_dir);
        let world = config.world.clone();
        let (store, initial_policy, deployed, mut initial) = irec_store::blocking(move || -> Result<_, StoreError> {
            let store = Store::open(&db_dir)?;
            if let Some(before) = store.record_world(&world)? {
                if before != world {
                    warn!("this data dir's sessions were checked against another world than the configured one; exports use the recorded one");
                }
            }
            let published = initial_blob.map(|b| store.publish_initial(&b)).transpose()?;
            let deployed = store.deployed()?.map(|p| p.announcement());
            let status = ServerStatus::read(&store, 0)?;
            Ok((store, published, deployed, status))
        })
        .await?;
        if let Some(p) = initial_policy {
            info!(version = p.version, sha256 = %hex(&p.sha256), "initial policy");
        }
        let cat = catalog(&config)?;
        let mut upload = UploadRules::new(experience_limits(&cat.schema, cat.len(), config.max_turns));
        upload.max_batch_sessions = config.max_batch_sessions;
        let world = WorldFingerprint::of(&config.world).map_err(|e| ServerError::Catalog(format!("reading the world's files: {e}")))?;
        info!(world = %world, "world");
        let rules = Arc::new(ServerRules::new(&config.fleet_token, upload, config.frames.upload_bytes).with_world(world));
        let server_config = tls::server_config(cert, key, Duration::from_millis(config.idle_timeout_ms), config.connection_receive_window_bytes)?;
        // The reset key survives restarts, so agents learn of a crash at their next packet.
        let endpoint_config = tls::endpoint_config(&config.data_dir)?;
        let socket = std::net::UdpSocket::bind(config.listen).map_err(|e| ServerError::Bind(config.listen, e))?;
        let runtime = quinn::default_runtime().ok_or_else(|| ServerError::Task("no async runtime for the endpoint".to_string()))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime).map_err(|e| ServerError::Bind(config.listen, e))?;

        let http = match config.http.enabled {
            true => {
                let l = std::net::TcpListener::bind(config.http.listen).map_err(|e| ServerError::HttpBind(config.http.listen, e))?;
                l.set_nonblocking(true).map_err(|e| ServerError::HttpBind(config.http.listen, e))?;
                Some(l)
            }
            false => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(a) = http_addr {
            info!("dashboard and metrics on http://{a}/");
        }
        let (announce_tx, announce) = watch::channel(deployed);
        let local_addr = endpoint.local_addr().ok();
        initial.listening = local_addr;
        initial.http = http_addr;
        let (status_tx, status) = watch::channel(initial);
        let shared = Arc::new(Shared {
            store,
            rules,
            limits: config.frames,
            quota: config.round_quota,
            hello_timeout: Duration::from_millis(config.hello_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            connection_request_bytes: usize::try_from(config.max_request_bytes_per_connection).unwrap_or(usize::MAX).min(tokio::sync::Semaphore::MAX_PERMITS),
            request_budget: Arc::new(tokio::sync::Semaphore::new(usize::try_from(config.max_request_bytes_in_flight).unwrap_or(usize::MAX).min(tokio::sync::Semaphore::MAX_PERMITS))),
            data_dir: config.data_dir.clone(),
            announce_tx,
            announce,
            status: status_tx,
            round_wake: Notify::new(),
            connections: AtomicUsize::new(0),
            local_addr,
            http_addr,
            metrics: Default::default(),
            blob_frame: Mutex::new(None),
        });
        shared.write_status_file();
        Ok(Server { config, endpoint, shared, trainer, status, http })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.endpoint.local_addr().map_err(|e| ServerError::Bind(self.config.listen, e))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.config.tls_dir().join(tls::CERT_FILE)
    }

    pub fn handle(&self) -> Result<ServerHandle, ServerError> {
        Ok(ServerHandle { local_addr: self.local_addr()?, cert_path: self.cert_path(), status: self.status.clone() })
    }

    /// Serves until `shutdown` completes, then stops accepting, closes every connection, waits
    /// for in-flight requests, stops the round driver, flushes, and releases the database (so the
    /// same data dir can be opened again at once).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { config, endpoint, shared, trainer, status: _, http } = self;
        info!(addr = ?endpoint.local_addr().ok(), "serving");
        let (stop_tx, stop_rx) = watch::channel(false);
        let driver_config = DriverConfig { gate_tolerance: config.gate_tolerance, gate_confidence_z: config.gate_confidence_z, seed: config.seed, device: config.device.clone() };
        let driver_shared = shared.clone();
        let driver_stop = stop_rx.clone();
        let driver = tokio::spawn(async move {
            let r = driver::run(driver_shared, trainer, driver_config, driver_stop).await;
            if let Err(e) = &r {
                // Ingest carries on without rounds; say so now, not only at shutdown.
                tracing::error!("round driver stopped: {e}");
            }
            r
        });
        let deadline = (config.round_deadline_ms > 0).then(|| {
            let (s, stop) = (shared.clone(), stop_rx.clone());
            let (after, min) = (Duration::from_millis(config.round_deadline_ms), config.round_min_sessions);
            tokio::spawn(async move {
                if let Err(e) = crate::rounds::deadline::run(s, after, min, stop).await {
                    tracing::error!("round deadlines stopped: {e}");
                }
            })
        });
        let http = match http.map(tokio::net::TcpListener::from_std).transpose() {
            Ok(l) => l.map(|l| {
                let settings = crate::export::settings(&config, None);
                tokio::spawn(http::run(l, Arc::new(http::HttpState::new(shared.clone(), settings)), stop_rx.clone()))
            }),
            Err(e) => return Err(ServerError::HttpBind(config.http.listen, e)),
        };
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if shared.connections.load(Ordering::Relaxed) >= config.max_connections {
                        warn!("connection cap reached; refusing {}", incoming.remote_address());
                        conns.spawn(conn::reject_over_cap(incoming, shared.hello_timeout));
                        continue;
                    }
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let guard = ConnectionGuard(shared.clone());
                    let (s, stop) = (shared.clone(), stop_rx.clone());
                    conns.spawn(async move {
                        let _guard = guard;
                        conn::serve(incoming, s, stop).await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        info!("shutting down");
        let _ = stop_tx.send(true);
        endpoint.close(quinn::VarInt::from_u32(ErrorCode::ShuttingDown.code() as u32), b"server shutting down");
        let drained = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("connections still busy after {DRAIN:?}; abandoning them");
            conns.shutdown().await;
        }
        let driver_result = driver.await;
        if let Some(d) = deadline {
            let _ = d.await;
        }
        if let Some(h) = http {
            let _ = h.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        shared.store.flush().await?;
        info!(flushes = shared.store.flushes(), "stopped");
        shared.publish_status().await;
        shared.write_status_file();
        match driver_result {
            Ok(r) => r?,
            Err(e) => return Err(ServerError::Task(e.to_string())),
        }
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    trainer: Arc<dyn RoundTrainer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(config, trainer).await?.serve(shutdown).await
}
