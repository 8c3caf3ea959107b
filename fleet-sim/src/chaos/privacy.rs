//! R6: what leaves a device. Agents (in process, running the stochastic [`probe`] policy with
//! their private noise σ and learned bias) upload through a recording [`relay`] to a server
//! process. Afterwards two audits run:
//!
//! 1. **Bytes.** Every file the server keeps (database, status, certificate, trainer state) and
//!    every plaintext byte it received or sent is searched for each device's seed, noise σ and
//!    final learned bias, each session's seed and its user's seed (the "user id"), and every
//!    action probability the devices acted on — in the encodings a leak would use (little and
//!    big endian, f32 and f64, decimal text). Needles of 8 bytes or more (u64s, f64s, adjacent
//!    pairs of f32s as a vector would hold them, text) are searched everywhere: a chance match is
//!    out of the question. A lone f32 is 4 bytes, and float32 weights (checkpoints: the trainer's
//!    state, policy blobs in the registry and on the wire) share its sign and exponent bits so
//!    often that thousands of such needles match a megabyte of weights by chance (the first
//!    audit with a trainer found 16 such hits in a perception checkpoint made before any agent
//!    ran). So lone f32s are searched where no weights live: every database tree but the policy
//!    registry (read entry by entry), the other files, and all that agents sent.
//! 2. **Structure.** Every frame on the wire decodes, and re-encodes to exactly the bytes sent (no
//!    hidden payload); agents send only hellos (with the fleet's token), uploads and policy
//!    requests; the uploaded sessions are exactly the sessions the devices ran (so every reward is
//!    the simulator's and nothing else rides along); and a session's target shows up only as the
//!    item shown on a successful last turn — the server never learns what a user wanted unless
//!    the recommender found it.
//! 3. **Exports.** D exported for Python (`export`: the d3rlpy NPZ, the Parquet table, its
//!    metadata) holds exactly D's sessions, and none of the needles: the NPZ's and the Parquet
//!    files' raw bytes with 8-byte needles (floats and compressed pages match lone f32s by chance,
//!    as weights do: the first full-size audit found one "action probability" 4-byte match in
//!    compressed Parquet bytes), the Parquet rows as decoded (compression would hide a leak from
//!    the raw bytes) and the metadata with all needles.
//!
//! The scan is first pointed at a device's own store, where it must find that device's seed:
//! proof it can see a leak.

use irec_testkit::procs::Binaries;
use super::fleet::{self, WorldSize};
use super::probe::ProbeLoader;
use super::relay::{Direction, Relay};
use super::{ChaosError, Outcome};
use irec_protocol::experience::ExperienceSession;
use irec_protocol::*;
use irec_world::rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use irec_testkit::files_under;
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
    /// Extra server settings merged into its TOML.
    pub server_extra: Option<toml::Table>,
    /// Sessions per round with the (small) learned trainer, so that its state and the trained
    /// policies are audited too; 0: no rounds.
    pub round_quota: u64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig { agents: 4, sessions: 40, world: WorldSize::default(), dir: None, server_extra: None, round_quota: 0 }
    }
}

/// Byte strings to look for, by what they would reveal.
#[derive(Default)]
struct NeedleSet {
    by_len: HashMap<usize, HashMap<Vec<u8>, &'static str>>,
    counts: BTreeMap<&'static str, usize>,
}

impl NeedleSet {
    fn add(&mut self, what: &'static str, bytes: Vec<u8>) {
        if self.by_len.entry(bytes.len()).or_default().insert(bytes, what).is_none() {
            *self.counts.entry(what).or_default() += 1;
        }
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

/// Needles of 8 bytes or more (`strong`: searched everywhere) and lone f32s (`weak`: searched
/// where no float32 weights live).
#[derive(Default)]
struct Needles {
    strong: NeedleSet,
    weak: NeedleSet,
}

impl Needles {
    fn u64(&mut self, what: &'static str, v: u64) {
        self.strong.add(what, v.to_le_bytes().to_vec());
        self.strong.add(what, v.to_be_bytes().to_vec());
        self.strong.add(what, v.to_string().into_bytes());
    }

    fn f32(&mut self, what: &'static str, v: f32) {
        self.weak.add(what, v.to_le_bytes().to_vec());
        self.weak.add(what, v.to_be_bytes().to_vec());
        self.strong.add(what, (v as f64).to_le_bytes().to_vec());
        self.strong.add(what, (v as f64).to_be_bytes().to_vec());
    }

    /// A vector of f32s as it would be stored: each value, and each adjacent pair.
    fn f32s(&mut self, what: &'static str, vs: &[f32]) {
        for v in vs {
            self.f32(what, *v);
        }
        for w in vs.windows(2) {
            self.strong.add(what, [w[0].to_le_bytes(), w[1].to_le_bytes()].concat());
            self.strong.add(what, [w[0].to_be_bytes(), w[1].to_be_bytes()].concat());
        }
    }

    /// (what, offset) of every needle in `hay`; lone f32s only when `weak`.
    fn find(&self, hay: &[u8], weak: bool) -> Vec<(&'static str, usize)> {
        let mut out = self.strong.find(hay);
        if weak {
            out.extend(self.weak.find(hay));
        }
        out
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.strong.counts {
            out.insert(format!("{k} (8+ bytes)"), *v);
        }
        for (k, v) in &self.weak.counts {
            out.insert(format!("{k} (lone f32)"), *v);
        }
        out
    }
}

/// Every key and value of every tree of a stopped server's database, but the policy registry's
/// values (checkpoints: float32 weights), as (tree, bytes).
fn db_entries(db_dir: &Path) -> Result<Vec<(String, Vec<u8>)>, ChaosError> {
    let db = irec_store::Db::open(db_dir, irec_store::Options::default())?;
    let mut out = Vec::new();
    for (label, entries) in db.dump()? {
        for (k, v) in entries {
            out.push((label.clone(), k.to_vec()));
            if label != "policies" {
                out.push((label.clone(), v.to_vec()));
            }
        }
    }
    Ok(out)
}

/// A Parquet file's rows as the bytes a leak would take in them: each value little-endian (and
/// the texts as UTF-8), row after row.
fn decoded_rows(path: &Path) -> Result<Vec<u8>, ChaosError> {
    let rows = irec_export::table::read(path, irec_world::catalog::NUM_ATTRS).map_err(|e| ChaosError::Config(e.to_string()))?;
    let mut out = Vec::new();
    for r in rows {
        out.extend(r.episode_id.to_le_bytes());
        out.extend(r.turn.to_le_bytes());
        out.extend(r.shown_item.to_le_bytes());
        for a in &r.action {
            out.extend(a.to_le_bytes());
        }
        out.extend(r.utterance.as_bytes());
        out.extend(r.reward.to_le_bytes());
        out.extend(r.logged_reward.to_le_bytes());
        out.extend(r.reward.to_string().as_bytes());
        out.extend(r.logged_reward.to_string().as_bytes());
    }
    Ok(out)
}


/// Runs R6.
pub fn run(bins: &Binaries, config: &PrivacyConfig) -> Result<Outcome, ChaosError> {
    let mut out = Outcome::new("privacy");
    let dir = fleet::workdir(config.dir.as_deref(), "privacy")?;
    let port = irec_testkit::procs::free_udp_port()?;
    let server_dir = dir.join("server");
    let blob = dir.join("behaviour.bin");
    std::fs::write(&blob, b"any checkpoint: the probe ignores its bytes").map_err(|e| ChaosError::Io(blob.clone(), e))?;
    let mut server_config = fleet::server_config(&server_dir, port, &config.world);
    server_config.initial_policy = Some(blob);
    let mut extra = config.server_extra.clone().unwrap_or_default();
    if config.round_quota > 0 {
        server_config.round_quota = config.round_quota;
        // Every candidate is published, so agents download trained policies too.
        server_config.gate_tolerance = 1_000.0;
        if !extra.contains_key("trainer") {
            extra.extend(fleet::small_learned_trainer(&dir, &config.world, &mut |_| {})?);
        }
    }
    let mut server = fleet::start_server(bins, &server_config, Some(&extra), &dir.join("server-0"), &[("NO_COLOR", "1")])?;
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
    // Rounds the uploads closed finish first, so the trainer's state and the registry are audited.
    let rounds_done = irec_testkit::procs::wait_until(&mut server, Duration::from_secs(600), "done with its rounds", || {
        irec_server::status::read_file(&server_dir).is_some_and(|s| s.rounds.iter().all(|r| r.status.is_finished()))
    });
    out.check(rounds_done.is_ok(), || format!("rounds did not finish: {rounds_done:?}"));
    let stopped = server.interrupt(Duration::from_secs(20));
    out.check(stopped.is_some_and(|s| s.success()), || format!("the server did not stop cleanly: {stopped:?}"));
    out.violations.extend(failures);

    // What the devices acted on (the replay below records the same values again).
    let probabilities = probe.recorded();
    // What each device knew: its sessions (replayed), seeds, σ, final bias.
    let mut needles = Needles::default();
    let mut replayed = Vec::new();
    for d in &devices {
        let (sessions, profile) = irec_edge_agent::sessions::replay(&env, d, &probe, config.sessions);
        needles.u64("device seed", d.seed);
        needles.f32("noise sigma", d.noise_sigma);
        needles.strong.add("noise sigma", d.noise_sigma.to_string().into_bytes());
        // Values a quantised bias could take by chance in any float data are left out.
        let bias: Vec<f32> = profile.bias.values().into_iter().filter(|b| (*b * 1024.0).fract() != 0.0).collect();
        needles.f32s("learned bias", &bias);
        for s in &sessions {
            needles.u64("session seed", s.spec.seed);
            needles.u64("user id (user seed)", rng::derive(s.spec.seed, irec_world::sim::SessionSpec::USER));
        }
        replayed.extend(sessions);
    }
    for turn in &probabilities {
        needles.f32s("action probability", turn);
    }

    // The scan can see a leak: the first device's own store holds its seed.
    let own: Vec<u8> = files_under(&dir.join("agent-0")).iter().flat_map(|p| std::fs::read(p).unwrap_or_default()).collect();
    let seen_on_device = needles.find(&own, false).iter().filter(|(w, _)| *w == "device seed").count();
    out.check(seen_on_device > 0, || "the scan does not find a device's seed even in the device's own store".to_string());

    // 1. Bytes: server storage and traffic.
    let mut scanned: BTreeMap<&str, usize> = BTreeMap::new();
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = 0usize;
    for f in files_under(&server_dir) {
        let bytes = std::fs::read(&f).map_err(|e| ChaosError::Io(f.clone(), e))?;
        files += 1;
        // Weights live in the trainer's state and, inside the database files, the registry.
        let weights = f.starts_with(server_dir.join("trainer")) || f.starts_with(server_dir.join("db"));
        *scanned.entry(if weights { "server_files_8_byte_needles" } else { "server_files_all_needles" }).or_default() += bytes.len();
        for (what, at) in needles.find(&bytes, !weights) {
            *found.entry(format!("{what} in {} at {at}", f.display())).or_default() += 1;
        }
    }
    for (tree, bytes) in db_entries(&server_dir.join("db"))? {
        *scanned.entry("database_entries_all_needles").or_default() += bytes.len();
        for (what, _) in needles.find(&bytes, true) {
            *found.entry(format!("{what} in database tree {tree}")).or_default() += 1;
        }
    }
    for s in &streams {
        let to_server = s.direction == Direction::ToServer;
        *scanned.entry(if to_server { "traffic_to_server_all_needles" } else { "traffic_to_agents_8_byte_needles" }).or_default() += s.bytes.len();
        for (what, _) in needles.find(&s.bytes, to_server) {
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
    let t_wire = irec_testkit::tally::tally(&expected, &uploaded);
    out.check(t_wire.exact(), || format!("the uploads are not exactly the sessions the devices ran: {t_wire:?}"));
    let t_d = irec_testkit::tally::tally(&expected, &irec_testkit::stored_sessions(&server_dir)?);
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

    // 3. Exports, as a researcher would take D out for Python.
    let export_dir = dir.join("export");
    let mut export_config = server_config.clone();
    if !server_config.trainer.state_dir_in(&server_dir).join(irec_learn::round::learned::PERCEPTION_FILE).is_file() {
        export_config.trainer.perception = Some(fleet::small_perception(&dir, &config.world)?);
    }
    let exported = irec_server::export::run(&export_config, &export_dir, None, &irec_learn::experiment::Silent).map_err(|e| ChaosError::Config(format!("exporting D: {e}")))?;
    out.check(exported.episodes as usize == expected.len(), || format!("the export holds {} episodes, D {}", exported.episodes, expected.len()));
    let mut export_found: BTreeMap<String, usize> = BTreeMap::new();
    let mut export_scanned = 0usize;
    for f in files_under(&export_dir) {
        let bytes = std::fs::read(&f).map_err(|e| ChaosError::Io(f.clone(), e))?;
        // Raw bytes that are floats (the NPZ) or compressed (Parquet pages) match lone f32s by
        // chance, as weights do: 8-byte needles there; the decoded rows get every needle.
        let parquet = f.extension().is_some_and(|e| e == "parquet");
        let dense = parquet || f.extension().is_some_and(|e| e == "npz");
        let decoded = if parquet { decoded_rows(&f)? } else { Vec::new() };
        export_scanned += bytes.len() + decoded.len();
        for (what, at) in needles.find(&bytes, !dense).into_iter().chain(needles.find(&decoded, true)) {
            *export_found.entry(format!("{what} in {} at {at}", f.display())).or_default() += 1;
        }
    }
    out.check(export_found.is_empty(), || format!("private values found in the export: {export_found:?}"));

    let distinct_probabilities: HashSet<u32> = probabilities.iter().flatten().map(|p| p.to_bits()).collect();
    out.figure("agents", config.agents);
    out.figure("sessions", t_d);
    out.figure("failed_sessions_checked_for_target", failed);
    out.figure("server_files_scanned", files);
    out.figure("rounds_trained", irec_server::store::Store::open(&server_dir.join("db"))?.rounds()?.len());
    out.figure("bytes_scanned", &scanned);
    out.figure("traffic_streams", streams.len());
    out.figure("frames", &kinds);
    out.figure("needles", needles.counts());
    out.figure("action_probabilities_recorded", probabilities.len() * irec_world::catalog::NUM_ATTRS);
    out.figure("action_probabilities_distinct", distinct_probabilities.len());
    out.figure("device_seed_hits_in_own_store", seen_on_device);
    out.figure("private_values_found", found.len());
    out.figure("export_episodes", exported.episodes);
    out.figure("export_bytes_scanned", export_scanned);
    out.figure("private_values_found_in_export", export_found.len());
    out.figure("dir", dir.display().to_string());
    Ok(out)
}
