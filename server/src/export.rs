//! Exporting D for Python (`irec-server export`, `fleet-sim export`): where the episodes, the
//! world and the perception come from; `irec_export` writes the files.
//!
//! Read-only by construction, and safe while a server runs:
//! - a data dir no server holds is copied (under a shared lock on sled's database file, so no
//!   server can start writing mid-copy) and the *copy* is opened: opening sled writes to the
//!   directory it opens, and the store must come out of an export byte for byte as it went in;
//! - a data dir a running server holds (sled's exclusive lock) is asked of that server instead,
//!   over its HTTP endpoint (`/export/source`, see [`crate::http`]), whose address the server
//!   writes into `status.json`. A copy of a live sled directory is not a consistent snapshot.

use crate::store::{db_dir, Store};
use irec_export::{Episode, ExportSource};
use irec_learn::algo::Objective;
use irec_learn::round::learned::PERCEPTION_FILE;
use irec_world::sim::WorldConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why D could not be read for an export.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--data-dir {0}: no server database there (expected {0}/db); is this a server's data dir?")]
    Missing(PathBuf),
    #[error("--data-dir {0}: held by a running server that serves no HTTP endpoint; start it with `[http] enabled = true` (or --http), or stop it, then export again")]
    HeldWithoutHttp(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("reading the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("no perception to featurize with: the server has not trained a round ({0} is missing) and has no deployed policy; pass --perception <checkpoint>")]
    NoPerception(PathBuf),
    #[error("asking the server at {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("decoding the server's answer: {0}")]
    Decode(String),
}

/// What an export reads besides D.
#[derive(Clone, Debug)]
pub struct SourceSettings {
    /// The world, when the store has none recorded (stores from before it did).
    pub world: WorldConfig,
    /// The trainer's state dir, where `perception.ckpt` lives.
    pub trainer_dir: PathBuf,
    /// The checkpoint the trainer is configured to featurize with (`trainer.perception`), used
    /// when it has kept none yet: the same order the trainer chooses in.
    pub perception: Option<PathBuf>,
    pub objective: Objective,
}

/// The source as it crosses HTTP (bincode; the objective and world as JSON inside, because
/// their serde forms are self-describing).
#[derive(Serialize, Deserialize)]
struct Wire {
    world_json: String,
    objective_json: String,
    perception_from: String,
    perception: Vec<u8>,
    episodes: Vec<(u64, u32, irec_protocol::experience::ExperienceSession)>,
}

/// The export source of an open store.
pub fn from_store(store: &Store, settings: &SourceSettings) -> Result<ExportSource, SourceError> {
    let world = store.world()?.unwrap_or_else(|| settings.world.clone());
    let kept = settings.trainer_dir.join(PERCEPTION_FILE);
    let read = |p: &Path| std::fs::read(p).map_err(|e| SourceError::Io(p.to_path_buf(), e));
    let (perception, perception_from) = if kept.is_file() {
        (read(&kept)?, format!("the trainer's {PERCEPTION_FILE}"))
    } else if let Some(p) = &settings.perception {
        (read(p)?, p.display().to_string())
    } else {
        match store.deployed()? {
            Some(p) => (p.blob, format!("deployed policy v{}", p.version)),
            None => return Err(SourceError::NoPerception(kept)),
        }
    };
    let episodes = store.episodes()?.into_iter().map(|(round, id, session)| Episode { id, round, session }).collect();
    Ok(ExportSource { world, perception, perception_from, episodes, objective: settings.objective })
}

/// Encodes a source for `/export/source` (consumed: D is not copied on the way).
pub fn encode(source: ExportSource) -> Result<Vec<u8>, SourceError> {
    let wire = Wire {
        world_json: serde_json::to_string(&source.world).map_err(|e| SourceError::Decode(e.to_string()))?,
        objective_json: serde_json::to_string(&source.objective).map_err(|e| SourceError::Decode(e.to_string()))?,
        perception_from: source.perception_from,
        perception: source.perception,
        episodes: source.episodes.into_iter().map(|e| (e.id, e.round, e.session)).collect(),
    };
    bincode::serde::encode_to_vec(&wire, bincode::config::standard()).map_err(|e| SourceError::Decode(e.to_string()))
}

pub fn decode(bytes: &[u8]) -> Result<ExportSource, SourceError> {
    let bad = |e: String| SourceError::Decode(e);
    let (wire, _): (Wire, usize) = bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| bad(e.to_string()))?;
    Ok(ExportSource {
        world: serde_json::from_str(&wire.world_json).map_err(|e| bad(e.to_string()))?,
        objective: serde_json::from_str(&wire.objective_json).map_err(|e| bad(e.to_string()))?,
        perception_from: wire.perception_from,
        perception: wire.perception,
        episodes: wire.episodes.into_iter().map(|(id, round, session)| Episode { id, round, session }).collect(),
    })
}

/// sled's database file, which a running sled holds under an exclusive `flock`.
fn lock_file(data_dir: &Path) -> PathBuf {
    db_dir(data_dir).join("db")
}

/// Reads the export source of the server data dir `data_dir`, modifying nothing in it.
pub fn read(data_dir: &Path, settings: &SourceSettings) -> Result<ExportSource, SourceError> {
    let lock_path = lock_file(data_dir);
    let file = match std::fs::File::open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::Missing(data_dir.to_path_buf())),
        Err(e) => return Err(SourceError::Io(lock_path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let addr = crate::status::read_file(data_dir).and_then(|s| s.http).ok_or_else(|| SourceError::HeldWithoutHttp(data_dir.to_path_buf()))?;
            return fetch(addr);
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(SourceError::Io(lock_path, e)),
    }
    let copy = tempdir_for(data_dir)?;
    let copied = copy_dir(&db_dir(data_dir), &copy.join("db"));
    drop(file);
    let result = copied.and_then(|()| {
        let store = Store::open(&copy.join("db"))?;
        let source = from_store(&store, settings);
        drop(store);
        source
    });
    let _ = std::fs::remove_dir_all(&copy);
    result
}

fn tempdir_for(data_dir: &Path) -> Result<PathBuf, SourceError> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let p = base.join(format!("irec-export-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(SourceError::Io(p, e)),
        }
    }
    Err(SourceError::Io(data_dir.to_path_buf(), std::io::Error::other("no free temporary directory")))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), SourceError> {
    std::fs::create_dir_all(to).map_err(|e| SourceError::Io(to.to_path_buf(), e))?;
    for entry in std::fs::read_dir(from).map_err(|e| SourceError::Io(from.to_path_buf(), e))? {
        let entry = entry.map_err(|e| SourceError::Io(from.to_path_buf(), e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| SourceError::Io(src.clone(), e))?;
        }
    }
    Ok(())
}

/// Asks a running server for its export source.
pub fn fetch(addr: SocketAddr) -> Result<ExportSource, SourceError> {
    let http = |reason: String| SourceError::Http { addr, reason };
    let body = crate::http::get(addr, "/export/source", Duration::from_secs(600)).map_err(http)?;
    decode(&body)
}

/// Why `export` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing the export: {0}")]
    Write(#[from] irec_export::ExportError),
}

/// The objective named on a command line (`paper`, or `turn_cost` with its default cost).
pub fn objective_named(name: &str) -> Option<Objective> {
    match name {
        "paper" => Some(Objective::Paper),
        "turn_cost" => Some(Objective::turn_cost()),
        _ => None,
    }
}

/// The export settings of a server config.
pub fn settings(config: &crate::ServerConfig, objective: Option<Objective>) -> SourceSettings {
    SourceSettings {
        world: config.world.clone(),
        trainer_dir: config.trainer.state_dir_in(&config.data_dir),
        perception: config.trainer.perception.clone(),
        objective: objective.unwrap_or(config.trainer.objective),
    }
}

/// `export`: reads D of `config.data_dir` (read-only) and writes it into `out`.
pub fn run(config: &crate::ServerConfig, out: &Path, objective: Option<Objective>, progress: &dyn irec_learn::experiment::Progress) -> Result<irec_export::ExportReport, ExportError> {
    let mut source = read(&config.data_dir, &settings(config, objective))?;
    // A running server answers with its own objective; an explicit one still wins.
    if let Some(o) = objective {
        source.objective = o;
    }
    Ok(irec_export::export(&source, out, progress)?)
}

/// One line saying what an export wrote.
pub fn summary(r: &irec_export::ExportReport, out: &Path) -> String {
    format!(
        "exported {} episodes, {} turns, {} rounds into {} (observations {} wide, rewards: {})",
        r.episodes,
        r.turns,
        r.rounds.len(),
        out.display(),
        r.observation_width,
        r.objective
    )
}
