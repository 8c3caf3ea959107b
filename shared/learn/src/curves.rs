//! Training curves in d3rlpy's file layout (its `FileAdapter`): a folder per run with
//! `params.json` (the settings) and one `<metric>.csv` per logged loss, each line
//! `epoch,step,value` without a header, so `d3rlpy plot <dir>/<metric>.csv` draws irec's curves
//! beside d3rlpy's own. irec logs every `log_every` gradient steps; each log line is one epoch.

use crate::algo::TrainLog;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Why the curves could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CurvesError {
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("encoding params.json: {0}")]
    Params(#[from] serde_json::Error),
}

/// Writes `params` and every loss in `logs` into `dir` (created; files there are replaced).
pub fn write_d3rlpy(dir: &Path, params: &impl Serialize, logs: &[TrainLog]) -> Result<(), CurvesError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| CurvesError::Io(p, e)
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let params_path = dir.join("params.json");
    std::fs::write(&params_path, serde_json::to_vec_pretty(params)?).map_err(io(&params_path))?;
    let mut metrics: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    for (epoch, line) in logs.iter().enumerate() {
        for (name, value) in &line.losses {
            let _ = writeln!(metrics.entry(name.as_str()).or_default(), "{},{},{}", epoch + 1, line.step, value);
        }
    }
    for (name, text) in metrics {
        // Loss names are identifiers (`critic`, `cql_penalty`, …); keep file names plain anyway.
        let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        let path = dir.join(format!("{file}.csv"));
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn losses_become_one_headerless_csv_each_with_epoch_step_value() {
        let dir = tempfile::tempdir().unwrap();
        let log = |step: u64, critic: f32, policy: f32| TrainLog { step, losses: BTreeMap::from([("critic".to_string(), critic), ("policy".to_string(), policy)]) };
        write_d3rlpy(dir.path(), &serde_json::json!({"algo": "cql_sac", "alpha": 1.0}), &[log(50, 2.5, -0.5), log(100, 1.25, -0.75)]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("critic.csv")).unwrap(), "1,50,2.5\n2,100,1.25\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("policy.csv")).unwrap(), "1,50,-0.5\n2,100,-0.75\n");
        let params: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("params.json")).unwrap()).unwrap();
        assert_eq!(params["algo"], "cql_sac");
    }
}
