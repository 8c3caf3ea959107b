//! R6: what leaves a device. Agents (in process, running the stochastic [`probe`] policy with
//! their private noise σ and learned bias) upload through a recording [`relay`] to a server
//! process. Afterwards two audits run:
//!
//! 1. **Bytes.** Every file the server keeps (database, status, certificate, trainer state) and
//!    every plaintext byte it received or sent is searched for each device's seed, noise σ and
//!    final learned bias, each session's seed and its user's seed (the "user id"), and every
//!    action probability the devices acted on — in the encodings a leak would use (little and
//!    big endian, f32 and f64, decimal text).
//! 2. **Structure.** Every frame on the wire decodes, and re-encodes to exactly the bytes sent (no
//!    hidden payload); agents send only hellos (with the fleet's token), uploads and policy
//!    requests; the uploaded sessions are exactly the sessions the devices ran (so every reward is
//!    the simulator's and nothing else rides along); and a session's target shows up only as the
//!    item shown on a successful last turn — the server never learns what a user wanted unless
//!    the recommender found it.
//!
//! The scan is first pointed at a device's own store, where it must find that device's seed:
//! proof it can see a leak.

use super::bins::Binaries;
use super::fleet::{self, WorldSize};
use super::probe::ProbeLoader;
use super::relay::{Direction, Relay};
use super::{ChaosError, Outcome};
use irec_shared::experience::ExperienceSession;
use irec_shared::protocol::*;
use irec_shared::rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PrivacyConfig {
    pub agents: usize,
    pub sessions: u64,
    pub world: WorldSize,
    pub dir: Option<PathBuf>,
    /// Extra server settings merged into its TOML (e.g. rounds and a `[trainer]`, so that the
    /// trainer's state is audited too).
    pub server_extra: Option<toml::Table>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig { agents: 4, sessions: 40, world: WorldSize::default(), dir: None, server_extra: None }
    }
}

/// Byte strings to look for, by what they would reveal.
#[derive(Default)]
struct Needles {
    by_len: HashMap<usize, HashMap<Vec<u8>, &'static str>>,
    counts: BTreeMap<&'static str, usize>,
}

impl Needles {
    fn add(&mut self, what: &'static str, bytes: Vec<u8>) {
        if self.by_len.entry(bytes.len()).or_default().insert(bytes, what).is_none() {
            *self.counts.entry(what).or_default() += 1;
        }
    }

    fn u64(&mut self, what: &'static str, v: u64) {
        self.add(what, v.to_le_bytes().to_vec());
        self.add(what, v.to_be_bytes().to_vec());
        self.add(what, v.to_string().into_bytes());
    }

    fn f32(&mut self, what: &'static str, v: f32) {
        self.add(what, v.to_le_bytes().to_vec());
        self.add(what, v.to_be_bytes().to_vec());
        self.add(what, (v as f64).to_le_bytes().to_vec());
    }

    /// Every needle found in `hay`, as (what, offset).
    fn find(&self, hay: &[u8]) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        for (len, set) in &self.by_len {
            for (i, w) in hay.windows(*len).enumerate() {
                if let Some(what) = set.get(w) {
                    out.push((*what, i));
                }
            }
        }
        out
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
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

/// Runs R6.
pub fn run(bins: &Binaries, config: &PrivacyConfig) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("privacy");
    let dir = fleet::workdir(config.dir.as_deref(), "privacy")?;
    let port = super::bins::free_udp_port()?;
    let server_dir = dir.join("server");
    let blob = dir.join("behaviour.bin");
    std::fs::write(&blob, b"any checkpoint: the probe ignores its bytes").map_err(|e| ChaosError::Io(blob.clone(), e))?;
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.initial_policy = Some(blob);
    let mut server = fleet::start_server(bins, &server_config, config.server_extra.as_ref(), &dir.join("server-0"), &[("NO_COLOR", "1")])?;
    let env = config.world.environment()?;
    let probe = ProbeLoader::new(env.world.catalog.schema.head_sizes());
    let devices: Vec<_> = (0..config.agents)
        .map(|i| {
            let mut d = irec_edge_agent::config::DeviceConfig { seed: 0x5EED_CAFE_0000_0000 + 7_919 * i as u64 + 1, ..Default::default() };
            // Distinctive noise levels, as a real fleet's would be.
            d.noise_sigma = 0.123_456_7 + 0.010_203 * i as f32;
            d
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| ChaosError::Io(dir.clone(), e))?;
    let traffic = runtime.block_on(async {
        let relay = Relay::start(&dir.join("relay"), server_config.listen, &server_dir.join(irec_server::tls::CERT_FILE))?;
        let mut tasks = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let mut c = fleet::agent_config(&dir.join(format!("agent-{i}")), relay.addr, &relay.cert, &config.world, d.seed, config.sessions);
            c.device = d.clone();
            let (env, probe) = (env.clone(), Arc::new(probe.clone()));
            tasks.push(tokio::spawn(irec_edge_agent::run_in(c, env, probe, std::future::pending())));
        }
        let mut failures = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(300), t).await {
                Ok(Ok(Ok(s))) if s.sessions_acked == config.sessions => {}
                other => failures.push(format!("agent {i}: {other:?}")),
            }
        }
        relay.close();
        Ok::<_, ChaosError>((relay.traffic.streams(), failures))
    });
    let (streams, failures) = traffic?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    let stopped = server.interrupt(Duration::from_secs(20));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {stopped:?}"));
    out.violations.extend(failures);

    // What the devices acted on (the replay below records the same values again).
    let probabilities = probe.recorded();
    // What each device knew: its sessions (replayed), seeds, σ, final bias.
    let mut needles = Needles::default();
    let mut replayed = Vec::new();
    for d in &devices {
        let (sessions, profile) = fleet::replay_with(&env, d, config.sessions, &probe);
        needles.u64("device seed", d.seed);
        needles.f32("noise sigma", d.noise_sigma);
        needles.add("noise sigma", d.noise_sigma.to_string().into_bytes());
        // Values a quantised bias could take by chance in any float data are left out.
        for b in profile.bias.values().into_iter().filter(|b| (*b * 1024.0).fract() != 0.0).take(16) {
            needles.add("learned bias", b.to_le_bytes().to_vec());
        }
        for s in &sessions {
            needles.u64("session seed", s.seed);
            needles.u64("user id (user seed)", rng::derive(s.seed, 1));
        }
        replayed.extend(sessions);
    }
    for p in &probabilities {
        needles.add("action probability", p.to_le_bytes().to_vec());
        needles.add("action probability", p.to_be_bytes().to_vec());
    }

    // The scan can see a leak: the first device's own store holds its seed.
    let own: Vec<u8> = files_under(&dir.join("agent-0")).iter().flat_map(|p| std::fs::read(p).unwrap_or_default()).collect();
    let seen_on_device = needles.find(&own).iter().filter(|(w, _)| *w == "device seed").count();
    out.check(seen_on_device > 0, || "the scan does not find a device's seed even in the device's own store".to_string());

    // 1. Bytes: server storage and traffic.
    let (mut storage_bytes, mut files) = (0usize, 0usize);
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    for f in files_under(&server_dir) {
        let bytes = std::fs::read(&f).map_err(|e| ChaosError::Io(f.clone(), e))?;
        storage_bytes += bytes.len();
        files += 1;
        for (what, at) in needles.find(&bytes) {
            *found.entry(format!("{what} in {} at {at}", f.display())).or_default() += 1;
        }
    }
    let traffic_bytes: usize = streams.iter().map(|s| s.bytes.len()).sum();
    for s in &streams {
        for (what, _) in needles.find(&s.bytes) {
            *found.entry(format!("{what} in traffic {:?}", s.direction)).or_default() += 1;
        }
    }
    out.check(found.is_empty(), || format!("private values found: {found:?}"));

    // 2. Structure of the traffic.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut uploads: BTreeMap<BatchId, Vec<ExperienceSession>> = BTreeMap::new();
    for s in &streams {
        let reader = if s.direction == Direction::ToServer { Side::Server } else { Side::Agent };
        let limits = FrameLimits::default();
        let mut d = FrameDecoder::new(reader, limits);
        let mut again = Vec::new();
        let decoded = d.push(&s.bytes).and_then(|()| {
            while let Some(m) = d.next_message()? {
                again.extend(encode(&m, &FrameLimits { upload_bytes: u32::MAX, policy_bytes: u32::MAX, small_bytes: u32::MAX })?);
                *kinds.entry(format!("{:?} {:?}", s.direction, m.kind())).or_default() += 1;
                match m {
                    Message::UploadBatch(b) => {
                        uploads.insert(b.batch_id, b.sessions);
                    }
                    Message::Hello(h) => out.check(h.fleet_token == fleet::TOKEN, || "a hello carried something else than the fleet token".to_string()),
                    Message::PolicyRequest(_) => {}
                    other if s.direction == Direction::ToServer => out.check(false, || format!("an agent sent {:?}", other.kind())),
                    _ => {}
                }
            }
            Ok(())
        });
        out.check(decoded.is_ok(), || format!("a {:?} stream does not decode: {decoded:?}", s.direction));
        out.check(again == s.bytes, || format!("a {:?} stream carries bytes beyond its messages", s.direction));
    }
    let expected: Vec<ExperienceSession> = replayed.iter().map(|r| r.session.clone()).collect();
    let uploaded: Vec<ExperienceSession> = uploads.into_values().flatten().collect();
    let t_wire = fleet::tally(&expected, &uploaded);
    out.check(t_wire.exact(), || format!("the uploads are not exactly the sessions the devices ran: {t_wire:?}"));
    let t_d = fleet::tally(&expected, &fleet::server_sessions(&server_dir)?);
    out.check(t_d.exact(), || format!("D is not exactly the sessions the devices ran: {t_d:?}"));
    let mut target_shown_unfound = 0;
    let mut failed = 0;
    for r in &replayed {
        let shown: Vec<_> = r.session.turns.iter().map(|t| t.shown).collect();
        let last_success = r.transcript.success && shown.last() == Some(&r.transcript.target);
        let early = shown.iter().rev().skip(usize::from(last_success)).any(|s| *s == r.transcript.target);
        failed += usize::from(!r.transcript.success);
        target_shown_unfound += usize::from(early || (!r.transcript.success && shown.contains(&r.transcript.target)));
    }
    out.check(target_shown_unfound == 0, || format!("{target_shown_unfound} sessions reveal a target they did not find"));

    let distinct_probabilities: HashSet<u32> = probabilities.iter().map(|p| p.to_bits()).collect();
    out.figure("agents", config.agents);
    out.figure("sessions", t_d);
    out.figure("failed_sessions_checked_for_target", failed);
    out.figure("server_files_scanned", files);
    out.figure("server_bytes_scanned", storage_bytes);
    out.figure("traffic_streams", streams.len());
    out.figure("traffic_bytes_scanned", traffic_bytes);
    out.figure("frames", &kinds);
    out.figure("needles", &needles.counts);
    out.figure("action_probabilities_recorded", probabilities.len());
    out.figure("action_probabilities_distinct", distinct_probabilities.len());
    out.figure("device_seed_hits_in_own_store", seen_on_device);
    out.figure("private_values_found", found.len());
    out.figure("dir", dir.display().to_string());
    Ok(out)
}
