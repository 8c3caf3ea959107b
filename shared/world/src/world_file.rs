//! The world file: a fleet's world (catalog, visual features, split, and tables others add, such
//! as AttrNet's probabilities) built once into one file that every agent process maps read-only,
//! so the page cache holds it once instead of each process building its own copy.
//!
//! Layout, little-endian: `IRECWRLD` · format `u32` · header length `u32` · the header (JSON:
//! fingerprint, schema, sizes, section table) · from the next 64-byte boundary, the sections,
//! each at a 64-byte boundary (so any element type can be read in place). The header's [`WorldFingerprint`] names the world the file
//! was built from; an agent refuses a file whose fingerprint is not its server's.

use crate::catalog::{Catalog, Item, ItemAttrs, Schema, Split, VisualFeatures};
use crate::mapped::{Mapping, Table, TableError};
use crate::sim::{World, WorldConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"IRECWRLD";
const FORMAT: u32 = 1;
const ALIGN: usize = 64;

/// What identifies a world: SHA-256 of its configuration and of the files it loads. Two
/// processes with the same fingerprint build the same catalog and features (the generators are
/// seeded and deterministic).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorldFingerprint(pub [u8; 32]);

impl WorldFingerprint {
    /// The fingerprint of the world `config` describes (reads the catalog and feature files it
    /// names).
    pub fn of(config: &WorldConfig) -> std::io::Result<WorldFingerprint> {
        let mut h = Sha256::new();
        let mut generated = config.clone();
        generated.catalog_path = None;
        generated.features_path = None;
        h.update(serde_json::to_vec(&generated).map_err(std::io::Error::other)?);
        for path in [&config.catalog_path, &config.features_path] {
            match path {
                Some(p) => {
                    h.update(b"file");
                    h.update(std::fs::read(p)?);
                }
                None => h.update(b"none"),
            }
        }
        Ok(WorldFingerprint(h.finalize().into()))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<WorldFingerprint> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return None;
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(WorldFingerprint(out))
    }
}

impl fmt::Debug for WorldFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorldFingerprint({})", &self.hex()[..16])
    }
}

impl fmt::Display for WorldFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex()[..16])
    }
}

impl Serialize for WorldFingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for WorldFingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WorldFingerprint, D::Error> {
        let s = String::deserialize(d)?;
        WorldFingerprint::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("not a 64-digit hex fingerprint: {s:?}")))
    }
}

/// Why a world file cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum WorldFileError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not an irec world file (bad magic or truncated header)")]
    NotAWorldFile(PathBuf),
    #[error("{path}: world file format {found}, this build reads format {FORMAT}; rebuild it (`fleet-sim world`)")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: section {section}: {source}")]
    Section { path: PathBuf, section: String, source: TableError },
    #[error("{path}: section {section} is missing")]
    Missing { path: PathBuf, section: String },
    #[error("{path} was built for world {file}, but this world is {expected}: rebuild it from the same [world] settings (`fleet-sim world`)")]
    Mismatch { path: PathBuf, file: WorldFingerprint, expected: WorldFingerprint },
}

/// One named byte range of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    pub name: String,
    /// From the start of the sections (the first 64-byte boundary after the header), in bytes
    /// (a multiple of 64).
    pub offset: u64,
    pub bytes: u64,
}

/// The file's header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldFileHeader {
    pub fingerprint: WorldFingerprint,
    pub schema: Schema,
    /// Catalog items.
    pub items: usize,
    /// Visual feature width (floats per item).
    pub feature_dim: usize,
    pub sections: Vec<SectionEntry>,
}

/// A section other crates add (e.g. the AttrNet probabilities of a fleet's perception).
#[derive(Clone, Copy, Debug)]
pub struct ExtraSection<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

/// Writes `world` (built from a config with `fingerprint`) and `extra` sections to `path`,
/// through a temporary file renamed into place, so a mapped file never changes under a reader.
pub fn write(path: &Path, world: &World, fingerprint: WorldFingerprint, extra: &[ExtraSection<'_>]) -> Result<(), WorldFileError> {
    let io = |e| WorldFileError::Io(path.to_path_buf(), e);
    let cat = &world.catalog;
    let attrs: Vec<ItemAttrs> = cat.items.iter().map(|i| i.attrs).collect();
    let mut cids = Vec::new();
    let mut cid_ends = Vec::with_capacity(cat.len());
    for item in &cat.items {
        cids.extend_from_slice(item.cid.as_bytes());
        cid_ends.push(cids.len() as u64);
    }
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("attrs", bytemuck::cast_slice(&attrs)),
        ("features", bytemuck::cast_slice(&world.features.data)),
        ("train", bytemuck::cast_slice(&cat.split.train)),
        ("test", bytemuck::cast_slice(&cat.split.test)),
        ("cids", &cids),
        ("cid_ends", bytemuck::cast_slice(&cid_ends)),
    ];
    parts.extend(extra.iter().map(|e| (e.name, e.bytes)));

    let mut header = WorldFileHeader { fingerprint, schema: cat.schema.clone(), items: cat.len(), feature_dim: world.features.dim, sections: Vec::new() };
    let mut offset = 0u64;
    for (name, bytes) in &parts {
        header.sections.push(SectionEntry { name: name.to_string(), offset, bytes: bytes.len() as u64 });
        offset = align(offset + bytes.len() as u64);
    }
    let json = serde_json::to_vec(&header).map_err(|e| io(std::io::Error::other(e)))?;
    let start = sections_start(json.len());

    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&FORMAT.to_le_bytes()).map_err(io)?;
    f.write_all(&(json.len() as u32).to_le_bytes()).map_err(io)?;
    f.write_all(&json).map_err(io)?;
    let mut at = 16 + json.len() as u64;
    for ((_, bytes), entry) in parts.iter().zip(&header.sections) {
        f.write_all(&vec![0u8; (start + entry.offset - at) as usize]).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        at = start + entry.offset + bytes.len() as u64;
    }
    let file = f.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Where the sections begin in a file whose header is `header_len` bytes of JSON.
fn sections_start(header_len: usize) -> u64 {
    align(16 + header_len as u64)
}

/// A mapped world file.
#[derive(Clone, Debug)]
pub struct WorldFile {
    pub path: PathBuf,
    pub header: WorldFileHeader,
    mapping: Mapping,
    /// Where the sections begin, in bytes from the start of the file.
    start: u64,
}

impl WorldFile {
    /// Maps `path` and reads its header.
    pub fn open(path: &Path) -> Result<WorldFile, WorldFileError> {
        let mapping = Mapping::open(path).map_err(|e| WorldFileError::Io(path.to_path_buf(), e))?;
        let bytes = mapping.bytes();
        let bad = || WorldFileError::NotAWorldFile(path.to_path_buf());
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad());
        }
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let format = word(8);
        if format != FORMAT {
            return Err(WorldFileError::Format { path: path.to_path_buf(), found: format });
        }
        let json = bytes.get(16..16 + word(12) as usize).ok_or_else(bad)?;
        let header: WorldFileHeader =
            serde_json::from_slice(json).map_err(|e| WorldFileError::Header { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(WorldFile { path: path.to_path_buf(), header, start: sections_start(json.len()), mapping })
    }

    /// Fails unless the file was built for the world `expected` names.
    pub fn check(&self, expected: WorldFingerprint) -> Result<(), WorldFileError> {
        if self.header.fingerprint != expected {
            return Err(WorldFileError::Mismatch { path: self.path.clone(), file: self.header.fingerprint, expected });
        }
        Ok(())
    }

    /// Section `name` as a table of `T`, in place.
    pub fn table<T: bytemuck::Pod>(&self, name: &str) -> Result<Table<T>, WorldFileError> {
        let entry = self
            .header
            .sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| WorldFileError::Missing { path: self.path.clone(), section: name.to_string() })?;
        let size = std::mem::size_of::<T>() as u64;
        if entry.bytes % size != 0 {
            return Err(WorldFileError::Header { path: self.path.clone(), reason: format!("section {name} is not a whole number of elements") });
        }
        Table::mapped(&self.mapping, (self.start + entry.offset) as usize, (entry.bytes / size) as usize)
            .map_err(|source| WorldFileError::Section { path: self.path.clone(), section: name.to_string(), source })
    }

    /// The world, its big tables (features, ground truth) read in place.
    pub fn world(&self) -> Result<World, WorldFileError> {
        let h = &self.header;
        let attrs: Table<ItemAttrs> = self.table("attrs")?;
        let cids: Table<u8> = self.table("cids")?;
        let ends: Table<u64> = self.table("cid_ends")?;
        let features: Table<f32> = self.table("features")?;
        let header_error = |reason: String| WorldFileError::Header { path: self.path.clone(), reason };
        if attrs.len() != h.items || ends.len() != h.items || features.len() != h.items * h.feature_dim {
            return Err(header_error(format!("sections do not hold {} items", h.items)));
        }
        let mut items = Vec::with_capacity(h.items);
        let mut start = 0usize;
        for (a, end) in attrs.iter().zip(ends.iter()) {
            let cid = cids.get(start..*end as usize).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| header_error("bad cid table".into()))?;
            items.push(Item { cid: cid.to_string(), attrs: *a });
            start = *end as usize;
        }
        let split = Split { train: self.table::<u32>("train")?.into_vec(), test: self.table::<u32>("test")?.into_vec() };
        if split.train.iter().chain(&split.test).any(|id| *id as usize >= h.items) {
            return Err(header_error("the split names items the catalog lacks".into()));
        }
        let catalog = Catalog { schema: h.schema.clone(), items, split };
        let mut world = World::with_truth_table(catalog, VisualFeatures { dim: h.feature_dim, data: features }, attrs);
        world.fingerprint = Some(h.fingerprint);
        Ok(world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::GeneratorConfig;

    fn small() -> WorldConfig {
        WorldConfig { catalog: GeneratorConfig { items: 300, ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn a_world_round_trips_through_its_file_and_a_mismatch_is_refused() {
        let dir = std::env::temp_dir().join(format!("irec-world-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("world.irecw");
        let cfg = small();
        let world = World::build(&cfg).unwrap();
        let fp = WorldFingerprint::of(&cfg).unwrap();
        let extra: Vec<f32> = (0..300 * 3).map(|i| i as f32).collect();
        write(&path, &world, fp, &[ExtraSection { name: "extra", bytes: bytemuck::cast_slice(&extra) }]).unwrap();

        let file = WorldFile::open(&path).unwrap();
        file.check(fp).unwrap();
        let back = file.world().unwrap();
        assert_eq!(back.catalog, world.catalog);
        assert_eq!(back.features, world.features);
        assert!(back.features.data.is_mapped() && back.truth.is_mapped());
        assert_eq!(&back.truth[..], &world.truth[..]);
        assert_eq!(&file.table::<f32>("extra").unwrap()[..], &extra[..]);
        assert!(matches!(file.table::<f32>("nope"), Err(WorldFileError::Missing { .. })));

        let mut other = cfg.clone();
        other.catalog.seed += 1;
        let other_fp = WorldFingerprint::of(&other).unwrap();
        assert_ne!(other_fp, fp);
        let err = file.check(other_fp).unwrap_err();
        assert!(err.to_string().contains("was built for world"), "{err}");

        std::fs::write(dir.join("junk"), b"not a world").unwrap();
        assert!(matches!(WorldFile::open(&dir.join("junk")), Err(WorldFileError::NotAWorldFile(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
