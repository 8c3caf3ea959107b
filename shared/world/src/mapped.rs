//! Read-only tables that are either owned or a slice of a memory-mapped file.
//!
//! The big arrays of the world (visual features, AttrNet probabilities, attribute tables) are the
//! same in every device process of a fleet. Built once into a world file ([`crate::world_file`])
//! and mapped read-only, they live once in the page cache and count as shared, not private,
//! memory in each agent. Code reads a [`Table`] as a slice either way.

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// A read-only file mapping shared by the tables cut from it.
#[derive(Clone)]
pub struct Mapping(Arc<memmap2::Mmap>);

impl Mapping {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Mapping> {
        let file = File::open(path)?;
        map_read_only(&file).map(|m| Mapping(Arc::new(m)))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} bytes)", self.0.len())
    }
}

// The only unsafe code of the world crate. Mapping a file is unsafe because another process could
// change it under us; world files are written once to a temporary name, renamed into place and
// never written again (a rebuilt world gets a new file), so a mapped one does not change.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: see above: the file is immutable once it has its final name.
    unsafe { memmap2::Mmap::map(file) }
}

/// Why bytes of a mapping cannot be read as a table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("bytes {offset}..{end} are outside the file ({len} bytes)")]
    OutOfBounds { offset: usize, end: usize, len: usize },
    #[error("bytes at {offset} are not aligned to {align} for their element type")]
    Misaligned { offset: usize, align: usize },
}

/// A read-only array of `T`: owned, or `len` elements at `offset` in a [`Mapping`].
pub struct Table<T: Pod> {
    repr: Repr<T>,
}

enum Repr<T> {
    // Behind an `Arc` so that cloning a table (a featurizer keeping the world's features) never
    // copies it.
    Owned(Arc<Vec<T>>),
    Mapped { mapping: Mapping, offset: usize, len: usize, _t: PhantomData<T> },
}

impl<T: Pod> Table<T> {
    /// `len` elements at byte `offset` of `mapping`, checked for bounds and alignment once here
    /// so that reading never fails.
    pub fn mapped(mapping: &Mapping, offset: usize, len: usize) -> Result<Table<T>, TableError> {
        let size = std::mem::size_of::<T>();
        let file_len = mapping.bytes().len();
        let end = len.checked_mul(size).and_then(|b| b.checked_add(offset)).unwrap_or(usize::MAX);
        let bytes = mapping.bytes().get(offset..end).ok_or(TableError::OutOfBounds { offset, end, len: file_len })?;
        bytemuck::try_cast_slice::<u8, T>(bytes).map_err(|_| TableError::Misaligned { offset, align: std::mem::align_of::<T>() })?;
        Ok(Table { repr: Repr::Mapped { mapping: mapping.clone(), offset, len, _t: PhantomData } })
    }

    /// Whether the elements live in a mapped file (shared) rather than this process's heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.repr {
            Repr::Owned(v) => v.as_slice(),
            Repr::Mapped { mapping, offset, len, .. } => {
                let bytes = &mapping.bytes()[*offset..*offset + *len * std::mem::size_of::<T>()];
                // Checked in `mapped`; an empty slice cannot be reached.
                bytemuck::try_cast_slice(bytes).unwrap_or(&[])
            }
        }
    }

    /// The elements as an owned vector (copies a mapped table).
    pub fn into_vec(self) -> Vec<T> {
        match self.repr {
            Repr::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|shared| shared.as_ref().clone()),
            Repr::Mapped { .. } => self.as_slice().to_vec(),
        }
    }
}

impl<T: Pod> Deref for Table<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<'a, T: Pod> IntoIterator for &'a Table<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<T: Pod> From<Vec<T>> for Table<T> {
    fn from(v: Vec<T>) -> Table<T> {
        Table { repr: Repr::Owned(Arc::new(v)) }
    }
}

impl<T: Pod> FromIterator<T> for Table<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Table<T> {
        Table::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<T: Pod> Default for Table<T> {
    fn default() -> Table<T> {
        Table::from(Vec::new())
    }
}

impl<T: Pod> Clone for Table<T> {
    fn clone(&self) -> Table<T> {
        let repr = match &self.repr {
            Repr::Owned(v) => Repr::Owned(v.clone()),
            Repr::Mapped { mapping, offset, len, .. } => Repr::Mapped { mapping: mapping.clone(), offset: *offset, len: *len, _t: PhantomData },
        };
        Table { repr }
    }
}

impl<T: Pod + PartialEq> PartialEq for Table<T> {
    fn eq(&self, other: &Table<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Pod + Eq> Eq for Table<T> {}

impl<T: Pod> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({} × {}, {})", self.len(), std::any::type_name::<T>(), if self.is_mapped() { "mapped" } else { "owned" })
    }
}

impl<T: Pod + Serialize> Serialize for Table<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de, T: Pod + Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Table<T>, D::Error> {
        Vec::<T>::deserialize(d).map(Table::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_table_reads_like_the_owned_one_and_bad_ranges_are_refused() {
        let dir = std::env::temp_dir().join(format!("irec-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.bin");
        let values: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
        std::fs::write(&path, &bytes).unwrap();
        let m = Mapping::open(&path).unwrap();
        let t = Table::<f32>::mapped(&m, 8, 100).unwrap();
        assert!(t.is_mapped());
        assert_eq!(t, Table::from(values.clone()));
        assert_eq!(t.clone()[99], 49.5);
        assert!(matches!(Table::<f32>::mapped(&m, 8, 101), Err(TableError::OutOfBounds { .. })));
        assert!(matches!(Table::<f32>::mapped(&m, 6, 10), Err(TableError::Misaligned { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
