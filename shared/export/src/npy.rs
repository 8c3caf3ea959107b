//! NumPy's `.npy` arrays inside a `.npz` archive, written by hand: `numpy.load` reads an npz as
//! a zip of `.npy` members, and an uncompressed ("stored") zip is a few fixed headers around the
//! raw bytes. Members are streamed (their CRC and size are patched into the local header when
//! they end), so an observation matrix of hundreds of megabytes is never held in memory.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Element types the export writes, with numpy's little-endian type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I32,
    I64,
}

impl Dtype {
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("member {name}: {bytes} bytes is beyond what a zip without zip64 holds (4 GiB); export fewer rounds")]
    TooLarge { name: String, bytes: u64 },
    #[error("member {name}: wrote {written} elements, its shape says {expected}")]
    ShapeMismatch { name: String, written: u64, expected: u64 },
}

/// The `.npy` header (format 1.0) for an array of `shape`, padded so the data starts on a
/// 64-byte boundary as numpy writes it.
pub fn npy_header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", dtype.descr(), shape_text);
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

struct Entry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// An `.npz` being written: one member at a time, then [`Npz::finish`].
pub struct Npz {
    path: PathBuf,
    out: BufWriter<File>,
    entries: Vec<Entry>,
}

/// The member being written.
pub struct Member<'a> {
    npz: &'a mut Npz,
    name: String,
    offset: u64,
    hasher: crc32fast::Hasher,
    bytes: u64,
    dtype: Dtype,
    expected: u64,
    written: u64,
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL: u32 = 0x0605_4b50;
/// 1980-01-01, the zip epoch (MS-DOS date): members carry no wall-clock time, so an export of
/// the same D is the same bytes.
const DOS_DATE: u16 = 0x21;

fn u16le(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn u32le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

impl Npz {
    pub fn create(path: &Path) -> Result<Npz, NpzError> {
        let file = File::create(path).map_err(|e| NpzError::Io(path.to_path_buf(), e))?;
        Ok(Npz { path: path.to_path_buf(), out: BufWriter::new(file), entries: Vec::new() })
    }

    fn io(&self) -> impl Fn(std::io::Error) -> NpzError + '_ {
        move |e| NpzError::Io(self.path.clone(), e)
    }

    fn local_header(name: &str, crc: u32, size: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&u32le(LOCAL_HEADER));
        h.extend_from_slice(&u16le(20)); // version needed: 2.0
        h.extend_from_slice(&u16le(0)); // flags
        h.extend_from_slice(&u16le(0)); // method: stored
        h.extend_from_slice(&u16le(0)); // time
        h.extend_from_slice(&u16le(DOS_DATE));
        h.extend_from_slice(&u32le(crc));
        h.extend_from_slice(&u32le(size)); // compressed
        h.extend_from_slice(&u32le(size)); // uncompressed
        h.extend_from_slice(&u16le(name.len() as u16));
        h.extend_from_slice(&u16le(0)); // extra
        h.extend_from_slice(name.as_bytes());
        h
    }

    /// Starts member `name.npy` holding an array of `dtype` and `shape`.
    pub fn member(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<Member<'_>, NpzError> {
        let file_name = format!("{name}.npy");
        let offset = self.out.stream_position().map_err(self.io())?;
        let header = Self::local_header(&file_name, 0, 0);
        self.out.write_all(&header).map_err(self.io())?;
        let mut m = Member {
            npz: self,
            name: file_name,
            offset,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
            dtype,
            expected: shape.iter().map(|d| *d as u64).product(),
            written: 0,
        };
        let npy = npy_header(dtype, shape);
        m.raw(&npy)?;
        Ok(m)
    }

    /// Writes a whole array at once.
    pub fn f32s(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<(), NpzError> {
        let mut m = self.member(name, Dtype::F32, shape)?;
        m.f32s(values)?;
        m.finish()
    }

    pub fn i32s(&mut self, name: &str, shape: &[usize], values: &[i32]) -> Result<(), NpzError> {
        let mut m = self.member(name, Dtype::I32, shape)?;
        m.i32s(values)?;
        m.finish()
    }

    pub fn i64s(&mut self, name: &str, shape: &[usize], values: &[i64]) -> Result<(), NpzError> {
        let mut m = self.member(name, Dtype::I64, shape)?;
        m.i64s(values)?;
        m.finish()
    }

    /// Writes the central directory and closes the archive.
    pub fn finish(mut self) -> Result<(), NpzError> {
        let start = self.out.stream_position().map_err(self.io())?;
        let mut cd = Vec::new();
        for e in &self.entries {
            cd.extend_from_slice(&u32le(CENTRAL_HEADER));
            cd.extend_from_slice(&u16le(20)); // made by
            cd.extend_from_slice(&u16le(20)); // needed
            cd.extend_from_slice(&u16le(0));
            cd.extend_from_slice(&u16le(0));
            cd.extend_from_slice(&u16le(0));
            cd.extend_from_slice(&u16le(DOS_DATE));
            cd.extend_from_slice(&u32le(e.crc));
            cd.extend_from_slice(&u32le(e.size));
            cd.extend_from_slice(&u32le(e.size));
            cd.extend_from_slice(&u16le(e.name.len() as u16));
            cd.extend_from_slice(&[0; 12]); // extra, comment, disk, internal, external (4)
            cd.extend_from_slice(&u32le(e.offset));
            cd.extend_from_slice(e.name.as_bytes());
        }
        let too_large = |bytes: u64| NpzError::TooLarge { name: "central directory".into(), bytes };
        let start32 = u32::try_from(start).map_err(|_| too_large(start))?;
        let n = self.entries.len() as u16;
        let cd_size = cd.len() as u32;
        cd.extend_from_slice(&u32le(END_OF_CENTRAL));
        cd.extend_from_slice(&[0; 4]); // this disk, disk with the directory
        cd.extend_from_slice(&u16le(n));
        cd.extend_from_slice(&u16le(n));
        cd.extend_from_slice(&u32le(cd_size));
        cd.extend_from_slice(&u32le(start32));
        cd.extend_from_slice(&u16le(0));
        self.out.write_all(&cd).map_err(self.io())?;
        self.out.flush().map_err(self.io())?;
        self.out.get_ref().sync_all().map_err(self.io())
    }
}

impl Member<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), NpzError> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        let path = self.npz.path.clone();
        self.npz.out.write_all(bytes).map_err(|e| NpzError::Io(path, e))
    }

    fn elements(&mut self, bytes: &[u8], n: usize) -> Result<(), NpzError> {
        self.written += n as u64;
        self.raw(bytes)
    }

    pub fn f32s(&mut self, values: &[f32]) -> Result<(), NpzError> {
        debug_assert_eq!(self.dtype, Dtype::F32);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.elements(&bytes, values.len())
    }

    pub fn i32s(&mut self, values: &[i32]) -> Result<(), NpzError> {
        debug_assert_eq!(self.dtype, Dtype::I32);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.elements(&bytes, values.len())
    }

    pub fn i64s(&mut self, values: &[i64]) -> Result<(), NpzError> {
        debug_assert_eq!(self.dtype, Dtype::I64);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.elements(&bytes, values.len())
    }

    /// Ends the member: checks its length and patches the real CRC and size into its header.
    pub fn finish(self) -> Result<(), NpzError> {
        if self.written != self.expected {
            return Err(NpzError::ShapeMismatch { name: self.name, written: self.written, expected: self.expected });
        }
        let too_large = NpzError::TooLarge { name: self.name.clone(), bytes: self.bytes };
        let (Ok(size), Ok(offset)) = (u32::try_from(self.bytes), u32::try_from(self.offset)) else {
            return Err(too_large);
        };
        let crc = self.hasher.finalize();
        let npz = self.npz;
        let path = npz.path.clone();
        let io = |e| NpzError::Io(path.clone(), e);
        let end = npz.out.stream_position().map_err(io)?;
        npz.out.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        npz.out.write_all(&Npz::local_header(&self.name, crc, size)).map_err(io)?;
        npz.out.seek(SeekFrom::Start(end)).map_err(io)?;
        npz.entries.push(Entry { name: self.name, crc, size, offset });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn npy_headers_are_numpys_own() {
        // What `np.save` writes for np.zeros((2, 3), '<f4') and np.zeros(5, '<i8').
        let h = npy_header(Dtype::F32, &[2, 3]);
        assert_eq!(h.len() % 64, 0);
        assert!(h.starts_with(b"\x93NUMPY\x01\x00"));
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert_eq!(text.trim_end(), "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        assert!(text.ends_with('\n'));
        let h1 = npy_header(Dtype::I64, &[5]);
        assert!(std::str::from_utf8(&h1[10..]).unwrap().contains("'shape': (5,)"));
    }

    #[test]
    fn an_archive_has_every_member_with_its_crc_and_a_directory_that_points_at_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let mut z = Npz::create(&path).unwrap();
        z.f32s("x", &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        z.i32s("y", &[3], &[7, 8, 9]).unwrap();
        assert!(matches!(z.i64s("bad", &[2], &[1]), Err(NpzError::ShapeMismatch { .. })));
        z.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The end record names the central directory; each entry's local header carries the
        // same CRC as the bytes that follow it.
        let eocd = bytes.len() - 22;
        assert_eq!(&bytes[eocd..eocd + 4], &END_OF_CENTRAL.to_le_bytes());
        let cd_at = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        assert_eq!(&bytes[cd_at..cd_at + 4], &CENTRAL_HEADER.to_le_bytes());
        let local = |at: usize| {
            let crc = u32::from_le_bytes(bytes[at + 14..at + 18].try_into().unwrap());
            let size = u32::from_le_bytes(bytes[at + 18..at + 22].try_into().unwrap()) as usize;
            let name_len = u16::from_le_bytes(bytes[at + 26..at + 28].try_into().unwrap()) as usize;
            let data = &bytes[at + 30 + name_len..at + 30 + name_len + size];
            (String::from_utf8(bytes[at + 30..at + 30 + name_len].to_vec()).unwrap(), crc, data.to_vec())
        };
        let (name, crc, data) = local(0);
        assert_eq!(name, "x.npy");
        assert_eq!(crc, crc32fast::hash(&data));
        assert_eq!(&data[data.len() - 16..], [1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>().as_slice());
    }
}
