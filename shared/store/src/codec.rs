//! How records are laid out in a tree: bincode for bulk records, JSON where an operator reads
//! them with any sled dump (round records), big-endian `u64` counters (so keys sort by number).

use crate::{IVec, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn bin<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| StoreError::Encode(e.to_string()))
}

pub fn unbin<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt { tree, reason: e.to_string() })
}

pub fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode(e.to_string()))
}

pub fn unjson<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { tree, reason: e.to_string() })
}

/// A stored big-endian counter; absent (or not 8 bytes) reads as 0.
pub fn be_u64(bytes: Option<IVec>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map_or(0, u64::from_be_bytes)
}
