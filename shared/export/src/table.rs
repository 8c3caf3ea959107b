//! The per-turn table as Parquet, one file per round in a Hive-style folder
//! (`parquet/round=N/part-0.parquet`), the layout `pyarrow.dataset` and pandas read as one table
//! partitioned by round. As in any Hive layout the partition column lives in the path only
//! (`round=N`; pyarrow refuses a dataset whose files repeat it), and each file's footer says
//! its round again (`irec.round`). Minari's Arrow format keeps an episode per row with list columns; a flat
//! row per turn is what SQL and pandas users filter and group, and an episode is one `episode_id`.

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One turn of one episode (its round is the file's).
#[derive(Clone, Debug, PartialEq)]
pub struct TurnRow {
    pub episode_id: i64,
    /// 0-based turn within the episode.
    pub turn: i32,
    pub shown_item: i32,
    /// One slot per attribute (0 = no preference).
    pub action: Vec<i32>,
    pub utterance: String,
    /// Under the export's objective.
    pub reward: f32,
    /// As the device logged it (the paper's formula).
    pub logged_reward: f32,
    /// The episode found its item on this turn.
    pub termination: bool,
    /// The episode hit the turn cap on this turn without finding it.
    pub truncation: bool,
}

/// Why a Parquet file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parquet(PathBuf, parquet::errors::ParquetError),
}

/// The message type: fixed columns around one `action_<attribute>` column per attribute.
pub fn schema(action_columns: &[String]) -> String {
    let mut s = String::from("message irec_turn {\n  required int64 episode_id;\n  required int32 turn;\n  required int32 shown_item;\n");
    for c in action_columns {
        s.push_str(&format!("  required int32 {c};\n"));
    }
    s.push_str("  required binary utterance (STRING);\n  required float reward;\n  required float logged_reward;\n  required boolean termination;\n  required boolean truncation;\n}\n");
    s
}

/// Writes `rows` (one round's) as one row group, with `metadata` as the file's key-value metadata.
pub fn write(path: &Path, action_columns: &[String], rows: &[TurnRow], metadata: &[(String, String)]) -> Result<(), TableError> {
    let pq = |e| TableError::Parquet(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TableError::Io(dir.to_path_buf(), e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| TableError::Io(path.to_path_buf(), e))?;
    let schema = Arc::new(parse_message_type(&schema(action_columns)).map_err(pq)?);
    let kv = metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).set_key_value_metadata(Some(kv)).build());
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(pq)?;
    let mut group = writer.next_row_group().map_err(pq)?;
    let ints = |f: &dyn Fn(&TurnRow) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
    let mut column = 0usize;
    let attrs = action_columns.len();
    while let Some(mut col) = group.next_column().map_err(pq)? {
        match column {
            0 => {
                let v: Vec<i64> = rows.iter().map(|r| r.episode_id).collect();
                col.typed::<Int64Type>().write_batch(&v, None, None).map_err(pq)?;
            }
            1 => col.typed::<Int32Type>().write_batch(&ints(&|r| r.turn), None, None).map(drop).map_err(pq)?,
            2 => col.typed::<Int32Type>().write_batch(&ints(&|r| r.shown_item), None, None).map(drop).map_err(pq)?,
            c if c < 3 + attrs => {
                let d = c - 3;
                col.typed::<Int32Type>().write_batch(&ints(&|r| r.action[d]), None, None).map_err(pq)?;
            }
            c if c == 3 + attrs => {
                let v: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.utterance.as_str())).collect();
                col.typed::<ByteArrayType>().write_batch(&v, None, None).map_err(pq)?;
            }
            c if c == 4 + attrs || c == 5 + attrs => {
                let v: Vec<f32> = rows.iter().map(|r| if c == 4 + attrs { r.reward } else { r.logged_reward }).collect();
                col.typed::<FloatType>().write_batch(&v, None, None).map_err(pq)?;
            }
            c => {
                let v: Vec<bool> = rows.iter().map(|r| if c == 6 + attrs { r.termination } else { r.truncation }).collect();
                col.typed::<BoolType>().write_batch(&v, None, None).map_err(pq)?;
            }
        }
        col.close().map_err(pq)?;
        column += 1;
    }
    group.close().map_err(pq)?;
    writer.close().map_err(pq)?;
    Ok(())
}

/// Reads a file [`write`] wrote back into rows (audits and tests read the decoded values: the
/// file's pages are compressed, so its raw bytes do not show them).
pub fn read(path: &Path, attributes: usize) -> Result<Vec<TurnRow>, TableError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let pq = |e| TableError::Parquet(path.to_path_buf(), e);
    let file = std::fs::File::open(path).map_err(|e| TableError::Io(path.to_path_buf(), e))?;
    let reader = SerializedFileReader::new(file).map_err(pq)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).map_err(pq)? {
        let r = row.map_err(pq)?;
        let a = attributes;
        rows.push(TurnRow {
            episode_id: r.get_long(0).map_err(pq)?,
            turn: r.get_int(1).map_err(pq)?,
            shown_item: r.get_int(2).map_err(pq)?,
            action: (0..a).map(|d| r.get_int(3 + d)).collect::<Result<_, _>>().map_err(pq)?,
            utterance: r.get_string(3 + a).map_err(pq)?.clone(),
            reward: r.get_float(4 + a).map_err(pq)?,
            logged_reward: r.get_float(5 + a).map_err(pq)?,
            termination: r.get_bool(6 + a).map_err(pq)?,
            truncation: r.get_bool(7 + a).map_err(pq)?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    #[test]
    fn a_written_round_reads_back_row_for_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round=3").join("part-0.parquet");
        let cols = vec!["action_a".to_string(), "action_b".to_string()];
        let rows: Vec<TurnRow> = (0..3)
            .map(|t| TurnRow {
                episode_id: 40,
                turn: t,
                shown_item: 100 + t,
                action: vec![t, 2 * t],
                utterance: format!("I want boots {t}"),
                reward: -0.1,
                logged_reward: 0.25 * t as f32,
                termination: t == 2,
                truncation: false,
            })
            .collect();
        write(&path, &cols, &rows, &[("world_seed".into(), "7".into())]).unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata().file_metadata();
        assert_eq!(meta.num_rows(), 3);
        assert!(meta.key_value_metadata().unwrap().iter().any(|kv| kv.key == "world_seed" && kv.value.as_deref() == Some("7")));
        assert_eq!(read(&path, 2).unwrap(), rows, "rows read back as written");
        let back: Vec<_> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(back[2].get_int(2).unwrap(), 102);
        assert_eq!(back[2].get_int(4).unwrap(), 4);
        assert_eq!(back[1].get_string(5).unwrap(), "I want boots 1");
        assert_eq!(back[2].get_float(7).unwrap(), 0.5);
        assert!(back[2].get_bool(8).unwrap() && !back[1].get_bool(8).unwrap());
    }
}
