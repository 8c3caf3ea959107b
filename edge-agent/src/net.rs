//! The agent's network shell: connect, hello, then drive the IO-free machines of
//! `irec_protocol` ([`Reconnect`], [`Batching`], [`Uploader`], [`PolicySync`]) over one connection
//! until it ends, and again. The rules (when to cut a batch, how a failure is classified, when
//! to retry) live in those machines and their pair test; this file only does the IO they ask for.
//!
//! Within a connection: uploads run one stream each (as many at once as the uploader allows);
//! announcements arrive on the control stream; policy pulls run on their own stream; a verified
//! blob is loaded off the runtime, persisted, then swapped in.

use irec_world::world_file::WorldFingerprint;
use crate::config::AgentConfig;
use crate::io::{self, RequestError};
use irec_model::loader::{LoadError, LoadedPolicy, PolicyLoader};
use crate::sessions::{ActivePolicy, PolicySlot};
use crate::store::{AgentStore, StoredPolicy};
use crate::{AgentError, Stats};
use irec_protocol::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

/// What the network shell shares with the rest of the agent.
pub struct Net {
    pub config: AgentConfig,
    /// The world this agent runs, named in its hello.
    pub world: Option<WorldFingerprint>,
    pub store: AgentStore,
    pub loader: Arc<dyn PolicyLoader>,
    pub slot: Arc<PolicySlot>,
    pub stats: Arc<Mutex<Stats>>,
    pub new_session: Arc<Notify>,
    pub generator_done: Arc<AtomicBool>,
}

/// How a connection ended.
enum Ended {
    Stop,
    Done,
    Lost(String),
}

/// Results of the tasks a connection runs.
enum TaskOut {
    Upload { id: BatchId, result: Result<Message, RequestError>, started: Instant, bytes: usize, sessions: usize, round: u32 },
    Policy(Result<Message, RequestError>),
    Loaded { verified: Verified, result: Result<Arc<dyn LoadedPolicy>, LoadError> },
}

struct Connected {
    conn: quinn::Connection,
    control: quinn::RecvStream,
    decoder: FrameDecoder,
    welcome: Welcome,
}

impl Net {
    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// The agent's work is over: every session ran and every batch was acked.
    fn done(&self, uploader: &Uploader) -> bool {
        self.config.exit_when_done
            && self.config.sessions.is_some()
            && self.generator_done.load(Ordering::SeqCst)
            && self.store.unbatched() == 0
            && uploader.is_idle()
    }

    async fn form_batches(&self, uploader: &mut Uploader, batching: &Batching) -> Result<(), AgentError> {
        let generator_done = self.generator_done.load(Ordering::SeqCst);
        let Some(cut) = batching.poll(self.store.unbatched(), generator_done, Instant::now()) else { return Ok(()) };
        // Forming a batch flushes under the process-wide storage lock: on a blocking thread, or a
        // thousand in-process agents stall the runtime's workers (and every ack waiting on them)
        // behind each other's fsyncs (seen in R4).
        let store = self.store.clone();
        let formed = irec_store::blocking(move || store.form_batches(cut.max_sessions, cut.max_bytes, cut.all)).await?;
        for id in formed {
            debug!(batch = %id, "batch formed");
            uploader.add(id);
        }
        Ok(())
    }

    /// Connects, serves, reconnects with backoff, until stopped or done.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut uploader = Uploader::new(self.config.upload);
        let store = self.store.clone();
        for id in irec_store::blocking(move || store.pending_batches()).await? {
            uploader.add(id);
        }
        let installed = self.slot.current().and_then(|a| a.id);
        let mut sync = PolicySync::new(installed);
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut reconnect = Reconnect::new(self.config.reconnect, self.config.device.seed);
        let (max_sessions, max_bytes) = (self.config.batch_size, self.config.frames.upload_bytes as usize);
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let mut batching = Batching::new(max_sessions, max_bytes, linger, Instant::now());
        loop {
            self.form_batches(&mut uploader, &batching).await?;
            if self.done(&uploader) {
                return Ok(());
            }
            let attempt = tokio::select! {
                r = self.connect(&mut endpoint) => r,
                _ = stop.changed() => return Ok(()),
            };
            let retry_at = match attempt {
                Ok(c) => {
                    reconnect.on_connected();
                    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    self.stat(|s| {
                        s.connects += 1;
                        s.connected_at_ms.push(at);
                    });
                    match self.serve(c, &mut uploader, &mut sync, &mut batching, &mut stop).await? {
                        Ended::Stop | Ended::Done => return Ok(()),
                        Ended::Lost(why) => info!("connection lost: {why}"),
                    }
                    reconnect.on_lost(Instant::now())
                }
                Err(e) => {
                    let reply = e.into_reply();
                    let at = reconnect.on_failed(&reply, Instant::now()).map_err(AgentError::Refused)?;
                    self.stat(|s| s.connect_failures += 1);
                    debug!("connect failed: {reply}");
                    at
                }
            };
            let wake = tokio::time::sleep_until(retry_at.into());
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = stop.changed() => return Ok(()),
                    _ = self.new_session.notified() => batching.on_session(Instant::now()),
                }
            }
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, RequestError> {
        let mut addrs = tokio::net::lookup_host(&self.config.server)
            .await
            .map_err(|e| RequestError::Transport(format!("resolving {}: {e}", self.config.server)))?;
        addrs.next().ok_or_else(|| RequestError::Transport(format!("{} resolves to nothing", self.config.server)))
    }

    /// Handshake and hello, within the connect timeout.
    async fn connect(&self, endpoint: &mut Option<quinn::Endpoint>) -> Result<Connected, RequestError> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        match tokio::time::timeout(timeout, self.connect_inner(endpoint)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Transport(format!("no welcome within {timeout:?}"))),
        }
    }

    async fn connect_inner(&self, endpoint: &mut Option<quinn::Endpoint>) -> Result<Connected, RequestError> {
        let addr = self.resolve().await?;
        let ep = match endpoint {
            Some(ep) => ep.clone(),
            None => {
                let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                    .parse()
                    .map_err(|e| RequestError::Transport(format!("{e}")))?;
                let ep = quinn::Endpoint::client(bind).map_err(|e| RequestError::Transport(format!("binding: {e}")))?;
                *endpoint = Some(ep.clone());
                ep
            }
        };
        let client = crate::tls::client_config(
            &self.config.server_cert,
            Duration::from_millis(self.config.keep_alive_ms),
            Duration::from_millis(self.config.keep_alive_ms.saturating_mul(6)),
        )
        .map_err(|e| RequestError::Transport(e.to_string()))?;
        let conn = ep
            .connect_with(client, addr, &self.config.server_name)
            .map_err(|e| RequestError::Transport(e.to_string()))?
            .await?;
        let (mut send, mut control) = conn.open_bi().await?;
        let hello = Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: self.config.fleet_token.clone(), world: self.world });
        let frame = encode(&hello, &self.config.frames).map_err(|e| RequestError::Transport(e.to_string()))?;
        let wrote = send.write_all(&frame).await;
        let _ = send.finish();
        let mut decoder = FrameDecoder::new(Side::Agent, self.config.frames);
        let reply = io::next_message(&mut control, &mut decoder).await;
        if reply.is_err() {
            // The server may have closed the connection with the reason in it.
            if let Some(reason) = conn.close_reason() {
                return Err(RequestError::from(reason));
            }
        }
        match (reply?, wrote) {
            (Some(Message::Welcome(welcome)), Ok(())) => Ok(Connected { conn, control, decoder, welcome }),
            (Some(Message::Error(e)), _) => Err(RequestError::Refused(e)),
            (Some(other), _) => Err(RequestError::Transport(format!("expected welcome, got {:?}", other.kind()))),
            (None, _) => Err(RequestError::Transport("control stream ended before welcome".to_string())),
        }
    }

    /// Serves one connection until it ends.
    async fn serve(
        &self,
        c: Connected,
        uploader: &mut Uploader,
        sync: &mut PolicySync,
        batching: &mut Batching,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, AgentError> {
        let Connected { conn, mut control, mut decoder, welcome } = c;
        info!(deployed = ?welcome.deployed.map(|d| d.version), "connected");
        let limits = self.config.frames;
        batching.connected(&welcome);
        let mut tasks: JoinSet<TaskOut> = JoinSet::new();
        let mut uploads: HashMap<BatchId, AbortHandle> = HashMap::new();
        uploader.connected();
        if let Some(id) = welcome.deployed.as_ref().and_then(|a| sync.renewed(a)) {
            self.slot.renew(id);
        }
        if let Some(req) = sync.on_connected(welcome.deployed) {
            spawn_policy_request(&mut tasks, &conn, req, limits);
        }
        let ended = loop {
            self.form_batches(uploader, batching).await?;
            let now = Instant::now();
            for id in uploader.poll_timeouts(now) {
                warn!(batch = %id, "upload timed out; will retry");
                if let Some(h) = uploads.remove(&id) {
                    h.abort();
                }
            }
            while let Some(id) = uploader.poll_send(now) {
                match self.store.batch(id)? {
                    Some(b) => {
                        let conn = conn.clone();
                        let sessions = b.sessions.len();
                        // The round of the newest policy that collected a session of this batch.
                        let round = b.sessions.iter().map(|s| s.round).max().unwrap_or(0);
                        debug!(batch = %id, sessions, "upload sent");
                        let h = tasks.spawn(async move {
                            let msg = Message::UploadBatch(b.upload());
                            let bytes = frame::body_len(&msg).unwrap_or(0);
                            let started = Instant::now();
                            let result = io::request(&conn, &msg, limits).await;
                            TaskOut::Upload { id, result, started, bytes, sessions, round }
                        });
                        uploads.insert(id, h);
                    }
                    // Acked and removed in an earlier life of this loop.
                    None => uploader.on_ack(id),
                }
            }
            if self.done(uploader) {
                conn.close(0u8.into(), b"done");
                break Ended::Done;
            }
            let wake = match (uploader.next_wakeup(), batching.next_wakeup(self.store.unbatched())) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep_until = wake.unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok(out) = joined else { continue };
                    if let Some(end) = self.on_task(out, uploader, sync, &mut tasks, &mut uploads, &conn).await? {
                        break end;
                    }
                }
                chunk = control.read_chunk(64 * 1024, true) => {
                    match chunk {
                        Ok(Some(c)) => {
                            if let Err(e) = decoder.push(&c.bytes) {
                                conn.close(ErrorCode::MalformedFrame.code().into(), b"bad control frame");
                                break Ended::Lost(format!("control stream: {e}"));
                            }
                            loop {
                                match decoder.next_message() {
                                    Ok(Some(Message::PolicyAnnouncement(a))) => {
                                        info!(version = a.version, round = a.round, "policy announced");
                                        if let Some(id) = sync.renewed(&a) {
                                            self.slot.renew(id);
                                        }
                                        if let Some(req) = sync.on_announcement(a) {
                                            spawn_policy_request(&mut tasks, &conn, req, limits);
                                        }
                                    }
                                    Ok(Some(other)) => debug!("ignoring {:?} on the control stream", other.kind()),
                                    Ok(None) => break,
                                    Err(e) => {
                                        conn.close(ErrorCode::MalformedFrame.code().into(), b"bad control frame");
                                        warn!("control stream: {e}");
                                        break;
                                    }
                                }
                            }
                        }
                        Ok(None) => break Ended::Lost("control stream finished".to_string()),
                        Err(e) => break Ended::Lost(format!("{}", RequestError::from(e))),
                    }
                }
                _ = self.new_session.notified() => batching.on_session(Instant::now()),
                _ = tokio::time::sleep_until(sleep_until.into()) => {}
                _ = stop.changed() => {
                    conn.close(0u8.into(), b"agent stopping");
                    break Ended::Stop;
                }
            }
        };
        uploader.disconnected();
        batching.disconnected();
        if sync.requesting() {
            sync.on_request_failed();
        }
        tasks.shutdown().await;
        Ok(ended)
    }

    /// Handles a finished task; `Some` ends the connection.
    async fn on_task(
        &self,
        out: TaskOut,
        uploader: &mut Uploader,
        sync: &mut PolicySync,
        tasks: &mut JoinSet<TaskOut>,
        uploads: &mut HashMap<BatchId, AbortHandle>,
        conn: &quinn::Connection,
    ) -> Result<Option<Ended>, AgentError> {
        match out {
            TaskOut::Upload { id, result, started, bytes, sessions, round } => {
                uploads.remove(&id);
                let reply = io::reply(result);
                match uploader.on_reply(id, reply.clone(), Instant::now()) {
                    UploadStep::Acked(ack) => {
                        // Durably gone here before the uploader forgets it: a crash in between
                        // resends the batch, which the server acks as a duplicate.
                        // (The debug events let fault-injection campaigns tell where a kill hit.)
                        debug!(batch = %id, duplicate = ack.duplicate, "ack received");
                        self.store.remove_acked(id).await?;
                        debug!(batch = %id, "batch deleted");
                        uploader.on_ack(id);
                        let ms = started.elapsed().as_secs_f64() * 1000.0;
                        self.stat(|s| {
                            s.batches_acked += 1;
                            s.bytes_uploaded += bytes as u64;
                            s.ack_latencies_ms.push(ms);
                            let r = s.per_round.entry(round).or_default();
                            r.batches += 1;
                            r.bytes += bytes as u64;
                            r.ack_latencies_ms.push(ms);
                            if ack.duplicate {
                                s.duplicate_acks += 1;
                            } else {
                                s.sessions_acked += sessions as u64;
                                r.sessions += sessions as u64;
                            }
                        });
                    }
                    UploadStep::Fatal(e) => return Err(AgentError::Refused(e)),
                    UploadStep::Quarantine => {
                        warn!(batch = %id, "server refused the batch: {reply}; quarantined");
                        let store = self.store.clone();
                        irec_store::blocking(move || store.quarantine(id)).await?;
                        self.stat(|s| s.quarantined_batches += 1);
                    }
                    UploadStep::RetryAt(_) | UploadStep::Ignored => {
                        match &reply {
                            Reply::Message(m) => warn!(batch = %id, "unexpected reply {:?}", m.kind()),
                            _ => debug!(batch = %id, "upload failed: {reply}"),
                        }
                        if !matches!(reply, Reply::Message(_)) && conn.close_reason().is_some() {
                            return Ok(Some(Ended::Lost(reply.to_string())));
                        }
                    }
                }
            }
            TaskOut::Policy(result) => match sync.on_reply(io::reply(result)) {
                PolicyStep::Load(verified) => {
                    let loader = self.loader.clone();
                    tasks.spawn(async move {
                        let bytes = verified.bytes.clone();
                        let result = tokio::task::spawn_blocking(move || loader.load(&bytes))
                            .await
                            .unwrap_or_else(|e| Err(LoadError::Invalid(format!("loader panicked: {e}"))));
                        TaskOut::Loaded { verified, result }
                    });
                }
                PolicyStep::Rejected(e) => {
                    warn!("policy refused: {e}");
                    self.stat(|s| s.policies_rejected += 1);
                }
                PolicyStep::Wait => {}
                PolicyStep::Fatal(e) => return Err(AgentError::Refused(e)),
            },
            TaskOut::Loaded { verified, result } => match result {
                Ok(loaded) => {
                    let id = verified.id;
                    let stored = StoredPolicy { version: id.version, round: id.round, sha256: id.sha256, blob: verified.bytes };
                    self.store.save_policy(&stored).await?;
                    self.slot.swap(ActivePolicy { id: Some(id), loaded });
                    if let Some(req) = sync.on_installed(id) {
                        spawn_policy_request(tasks, conn, req, self.config.frames);
                    }
                    info!(version = id.version, sha256 = %hex(&id.sha256), "policy installed");
                    self.stat(|s| {
                        s.policy_version = Some(id.version);
                        s.policies_installed += 1;
                    });
                }
                Err(e) => {
                    warn!(version = verified.id.version, "loader refused the policy: {e}");
                    if let Some(req) = sync.on_load_failed(verified.id) {
                        spawn_policy_request(tasks, conn, req, self.config.frames);
                    }
                    self.stat(|s| s.policies_rejected += 1);
                }
            },
        }
        Ok(None)
    }
}

fn spawn_policy_request(tasks: &mut JoinSet<TaskOut>, conn: &quinn::Connection, req: PolicyRequest, limits: FrameLimits) {
    let conn = conn.clone();
    tasks.spawn(async move {
        let request = Message::PolicyRequest(req);
        let pull = io::request(&conn, &request, limits);
        match tokio::time::timeout(policy_sync::POLICY_TIMEOUT, pull).await {
            Ok(r) => TaskOut::Policy(r),
            Err(_) => TaskOut::Policy(Err(RequestError::Transport("policy pull timed out".to_string()))),
        }
    });
}
