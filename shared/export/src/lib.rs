//! irec-export: D ∪ D′ as files a Python user opens without irec.
//!
//! - [`npy`]: `.npy` arrays in an `.npz` archive (`d.npz`): the arrays d3rlpy's `MDPDataset`
//!   takes (observations, actions, rewards, terminals, timeouts) and the episode bookkeeping.
//! - [`table`]: one row per turn as Parquet, a file per round (`parquet/round=N/part-0.parquet`).
//! - this module: [`export`] turns [`Episode`]s into both, plus `metadata.json` (world, objective,
//!   schema, counts) describing them.
//!
//! What goes out is what the server already holds (D is behaviour-agnostic by construction:
//! no target, user, device, noise or probabilities) and what it derives from it: features from
//! the trainer's perception, and rewards under an [`Objective`]. Where the episodes come from
//! (a stopped server's store, a running server) is the caller's business.
//!
//! Row order is canonical — by round, then episode id, then turn — so exporting the same D twice
//! gives the same bytes.

pub mod npy;
pub mod table;

use irec_learn::algo::{Objective, PerceptionWeights};
use irec_learn::experiment::Progress;
use irec_model::{Checkpoint, Featurizer};
use irec_protocol::experience::ExperienceSession;
use irec_world::catalog::{Attribute, NUM_ATTRS};
use irec_world::sim::{World, WorldConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the files' layout, in `metadata.json` and every Parquet footer.
pub const SCHEMA: &str = "irec-export/1";
/// The archive d3rlpy's arrays go in.
pub const NPZ_FILE: &str = "d.npz";
pub const METADATA_FILE: &str = "metadata.json";
pub const PARQUET_DIR: &str = "parquet";

/// One session of D with its place there.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// Its sequence number in D (ingest order, unique across rounds).
    pub id: u64,
    /// The round whose policy collected it (0 = the behaviour policies).
    pub round: u32,
    pub session: ExperienceSession,
}

/// Everything an export is made from.
#[derive(Clone, Debug)]
pub struct ExportSource {
    /// The world the server checks uploads against (items, features).
    pub world: WorldConfig,
    /// A checkpoint carrying the perception (`text.*`, `attrnet.*`) the learner featurizes with.
    pub perception: Vec<u8>,
    /// Where the perception came from (said in the metadata).
    pub perception_from: String,
    pub episodes: Vec<Episode>,
    /// The reward the `rewards` arrays and columns carry (the logged one is exported as well).
    pub objective: Objective,
}

/// Episodes and turns of one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundCount {
    pub episodes: u64,
    pub turns: u64,
    pub successes: u64,
}

/// What an export wrote (also `metadata.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub schema: String,
    pub episodes: u64,
    pub turns: u64,
    pub rounds: BTreeMap<u32, RoundCount>,
    /// Width of one observation (text embedding ⊕ visual feature ⊕ AttrNet probabilities).
    pub observation_width: usize,
    /// The action columns, one per attribute, and each slot's meaning (slot 0 = no preference).
    pub action_columns: Vec<String>,
    pub action_vocabulary: BTreeMap<String, Vec<String>>,
    pub objective: String,
    pub world: WorldConfig,
    pub perception_from: String,
    /// Files written, relative to the output folder.
    pub files: Vec<PathBuf>,
}

/// Why an export failed. Nothing is written outside the output folder either way.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--out {0}: exists and is not empty; give a new or empty folder (nothing was written)")]
    OutNotEmpty(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("building the world: {0}")]
    World(String),
    #[error("the perception ({from}): {error}")]
    Perception { from: String, error: String },
    #[error("episode {episode}, turn {turn}: item {item} is not in the world's catalog of {items}; is this the server's world?")]
    UnknownItem { episode: u64, turn: usize, item: u32, items: usize },
    #[error("featurizing: {0}")]
    Features(String),
    #[error(transparent)]
    Npz(#[from] npy::NpzError),
    #[error(transparent)]
    Table(#[from] table::TableError),
}

/// The action column of attribute `a`.
pub fn action_column(a: Attribute) -> String {
    format!("action_{}", a.column().to_lowercase())
}

fn check_out(out: &Path) -> Result<(), ExportError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(ExportError::OutNotEmpty(out.to_path_buf())),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(out).map_err(|e| ExportError::Io(out.to_path_buf(), e)),
        Err(e) => Err(ExportError::Io(out.to_path_buf(), e)),
    }
}

/// Per-turn arrays of all episodes, in row order.
#[derive(Default)]
struct Columns<'a> {
    utterances: Vec<&'a str>,
    episode_ids: Vec<i64>,
    rounds: Vec<i32>,
    turns: Vec<i32>,
    shown: Vec<i32>,
    actions: Vec<i32>,
    rewards: Vec<f32>,
    logged: Vec<f32>,
    terminals: Vec<f32>,
    timeouts: Vec<f32>,
}

/// Writes `source` into `out` (created; must be new or empty): `d.npz`, `parquet/round=N/…`,
/// `metadata.json`.
pub fn export(source: &ExportSource, out: &Path, progress: &dyn Progress) -> Result<ExportReport, ExportError> {
    check_out(out)?;
    let world = World::build(&source.world).map_err(|e| ExportError::World(e.to_string()))?;
    let perception_error = |e: String| ExportError::Perception { from: source.perception_from.clone(), error: e };
    let device = candle_core::Device::Cpu;
    let ck = Checkpoint::from_bytes(&source.perception, &device).map_err(|e| perception_error(e.to_string()))?;
    let weights = PerceptionWeights::from_checkpoint(&ck, &device).map_err(|e| perception_error(e.to_string()))?;
    let featurizer = Featurizer::new(Arc::clone(&weights.perception), &world.features).map_err(|e| perception_error(e.to_string()))?;

    let mut episodes: Vec<&Episode> = source.episodes.iter().filter(|e| !e.session.is_empty()).collect();
    episodes.sort_by_key(|e| (e.round, e.id));
    let items = world.catalog.len();
    let mut cols = Columns::default();
    let mut rounds: BTreeMap<u32, RoundCount> = BTreeMap::new();
    for e in &episodes {
        let s = &e.session;
        let logged: Vec<f32> = s.turns.iter().map(|t| t.reward).collect();
        let success = s.succeeded();
        let rewards = source.objective.rewards(&logged, success, s.turns.last().is_some_and(|t| t.done));
        let count = rounds.entry(e.round).or_default();
        count.episodes += 1;
        count.turns += s.len() as u64;
        count.successes += u64::from(success);
        for (t, turn) in s.turns.iter().enumerate() {
            if turn.shown as usize >= items {
                return Err(ExportError::UnknownItem { episode: e.id, turn: t, item: turn.shown, items });
            }
            let last = t + 1 == s.len();
            cols.utterances.push(&turn.utterance);
            cols.episode_ids.push(e.id as i64);
            cols.rounds.push(e.round as i32);
            cols.turns.push(t as i32);
            cols.shown.push(turn.shown as i32);
            cols.actions.extend(turn.action.0.iter().map(|a| i32::from(*a)));
            cols.rewards.push(rewards[t]);
            cols.logged.push(logged[t]);
            cols.terminals.push(f32::from(u8::from(last && success)));
            cols.timeouts.push(f32::from(u8::from(last && !success)));
        }
    }
    let n = cols.rounds.len();
    let width = featurizer.width();
    let mut files = Vec::new();

    // The archive, observations streamed episode by episode.
    let npz_path = out.join(NPZ_FILE);
    let mut npz = npy::Npz::create(&npz_path)?;
    progress.start("export: observations", n as u64);
    {
        let mut obs = npz.member("observations", npy::Dtype::F32, &[n, width])?;
        let mut features = Vec::new();
        let zeros = vec![0f32; width];
        for e in &episodes {
            featurizer
                .prepare_texts(e.session.turns.iter().map(|t| t.utterance.as_str()))
                .map_err(|err| ExportError::Features(err.to_string()))?;
            features.clear();
            for t in &e.session.turns {
                featurizer.push_turn(t.shown, &t.utterance, &mut features).map_err(|err| ExportError::Features(err.to_string()))?;
            }
            // Before action t the device has seen turn t − 1; before the first, nothing.
            obs.f32s(&zeros)?;
            obs.f32s(&features[..features.len() - width])?;
            progress.advance(e.session.len() as u64);
        }
        obs.finish()?;
    }
    progress.finish();
    npz.i32s("actions", &[n, NUM_ATTRS], &cols.actions)?;
    npz.f32s("rewards", &[n], &cols.rewards)?;
    npz.f32s("logged_rewards", &[n], &cols.logged)?;
    npz.f32s("terminals", &[n], &cols.terminals)?;
    npz.f32s("timeouts", &[n], &cols.timeouts)?;
    npz.i64s("episode_ids", &[n], &cols.episode_ids)?;
    npz.i32s("rounds", &[n], &cols.rounds)?;
    npz.i32s("turns", &[n], &cols.turns)?;
    npz.i32s("shown_items", &[n], &cols.shown)?;
    let heads: Vec<i32> = world.catalog.schema.head_sizes().iter().map(|h| *h as i32).collect();
    npz.i32s("action_sizes", &[NUM_ATTRS], &heads)?;
    npz.finish()?;
    files.push(PathBuf::from(NPZ_FILE));

    let action_columns: Vec<String> = Attribute::ALL.iter().map(|a| action_column(*a)).collect();
    let action_vocabulary: BTreeMap<String, Vec<String>> = Attribute::ALL
        .iter()
        .map(|a| {
            let mut slots = vec!["(no preference)".to_string()];
            slots.extend(world.catalog.schema.values[a.index()].iter().cloned());
            (action_column(*a), slots)
        })
        .collect();
    let objective = source.objective.describe();
    let world_json = serde_json::to_string(&source.world).unwrap_or_default();

    // The table, one file per round.
    let mut at = 0usize;
    progress.start("export: parquet", rounds.len() as u64);
    for (round, count) in &rounds {
        let rows: Vec<table::TurnRow> = (at..at + count.turns as usize)
            .map(|i| table::TurnRow {
                episode_id: cols.episode_ids[i],
                turn: cols.turns[i],
                shown_item: cols.shown[i],
                action: cols.actions[i * NUM_ATTRS..(i + 1) * NUM_ATTRS].to_vec(),
                utterance: cols.utterances[i].to_string(),
                reward: cols.rewards[i],
                logged_reward: cols.logged[i],
                termination: cols.terminals[i] > 0.0,
                truncation: cols.timeouts[i] > 0.0,
            })
            .collect();
        at += count.turns as usize;
        let rel = PathBuf::from(PARQUET_DIR).join(format!("round={round}")).join("part-0.parquet");
        let meta = vec![
            ("irec.schema".to_string(), SCHEMA.to_string()),
            ("irec.round".to_string(), round.to_string()),
            ("irec.objective".to_string(), objective.clone()),
            ("irec.world".to_string(), world_json.clone()),
            ("irec.action_vocabulary".to_string(), serde_json::to_string(&action_vocabulary).unwrap_or_default()),
        ];
        table::write(&out.join(&rel), &action_columns, &rows, &meta)?;
        files.push(rel);
        progress.advance(1);
    }
    progress.finish();

    files.push(PathBuf::from(METADATA_FILE));
    let report = ExportReport {
        schema: SCHEMA.to_string(),
        episodes: episodes.len() as u64,
        turns: n as u64,
        rounds,
        observation_width: width,
        action_columns,
        action_vocabulary,
        objective,
        world: source.world.clone(),
        perception_from: source.perception_from.clone(),
        files,
    };
    let meta_path = out.join(METADATA_FILE);
    let text = serde_json::to_vec_pretty(&report).map_err(|e| ExportError::Io(meta_path.clone(), std::io::Error::other(e)))?;
    std::fs::write(&meta_path, text).map_err(|e| ExportError::Io(meta_path.clone(), e))?;
    Ok(report)
}
