//! Exporting D for Python, and the HTTP endpoint: a server ingests real sessions; its
//! `/metrics` counts them; an export while it runs (through its HTTP endpoint) and one after it
//! stopped (from a copy of its store) are the same bytes and leave the store as it was; numpy and
//! pyarrow open both files and find the store's values (tests/python/check_export.py); bad input
//! names what to fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use irec_learn::algo::pretrain::{pretrain, PretrainConfig};
use irec_learn::algo::Objective;
use irec_learn::round::NoTrainer;
use irec_protocol::experience::ExperienceSession;
use irec_server::export::{self, SourceError};
use irec_server::ServerConfig;
use irec_world::policy::{evaluate, TrackerPolicy};
use irec_world::sim::{Environment, Pool, World};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Sessions a fleet running the rule-based tracker would upload.
fn sessions(config: &ServerConfig, n: usize) -> Vec<ExperienceSession> {
    let w = Arc::new(World::build(&config.world).unwrap());
    let env = Environment::with_truth(w.clone(), Pool::Train);
    let (lexicon, index) = (Arc::new(w.lexicon.clone()), Arc::new(env.index.clone()));
    evaluate(&env, || TrackerPolicy::new(lexicon.clone(), index.clone()), n, 3, 1).iter().map(|t| ExperienceSession::from_transcript(t, 0)).collect()
}

/// A small perception where the trainer keeps it (what the export featurizes with).
fn put_perception(config: &ServerConfig) {
    let world = World::build(&config.world).unwrap();
    let cfg = PretrainConfig { sentences: 400, heldout_template_sentences: 40, text_epochs: 1, attr_epochs: 1, ..PretrainConfig::default() };
    let (p, _) = pretrain(&world, &cfg, &candle_core::Device::Cpu).unwrap();
    let dir = config.data_dir.join("trainer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("perception.ckpt"), p.to_checkpoint().to_bytes().unwrap()).unwrap();
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    String::from_utf8(irec_server::http::get(addr, path, Duration::from_secs(10)).unwrap()).unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// What the Python check compares the files against, read from the store's sessions.
fn expected(d: &[(u32, u64, ExperienceSession)], objective: &Objective, head_sizes: &[usize]) -> serde_json::Value {
    let mut rounds: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for r in d.iter().map(|x| x.0).collect::<std::collections::BTreeSet<_>>() {
        let turns: usize = d.iter().filter(|x| x.0 == r).map(|x| x.2.len()).sum();
        rounds.insert(r.to_string(), serde_json::json!({ "turns": turns }));
    }
    let (_, id, first) = d.iter().min_by_key(|x| (x.0, x.1)).unwrap();
    let logged: Vec<f32> = first.turns.iter().map(|t| t.reward).collect();
    serde_json::json!({
        "episodes": d.len(),
        "turns": d.iter().map(|x| x.2.len()).sum::<usize>(),
        "successes": d.iter().filter(|x| x.2.succeeded()).count(),
        "attributes": head_sizes.len(),
        "action_sizes": head_sizes,
        "rounds": rounds,
        "first_episode": {
            "id": id,
            "utterances": first.turns.iter().map(|t| t.utterance.clone()).collect::<Vec<_>>(),
            "shown": first.turns.iter().map(|t| t.shown).collect::<Vec<_>>(),
            "actions": first.turns.iter().map(|t| t.action.0.to_vec()).collect::<Vec<_>>(),
            "logged_rewards": logged,
            "rewards": objective.rewards(&logged, first.succeeded(), true),
        },
    })
}

/// The interpreter with numpy and pyarrow: `IREC_PYTHON` (what `.ci/run` installs), else
/// `python3`. `None` when neither has them; in CI that is a failure, not a skip.
fn python() -> Option<String> {
    let candidate = std::env::var("IREC_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&candidate).args(["-c", "import numpy, pyarrow"]).output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok() {
        panic!("CI needs {candidate} with numpy and pyarrow (.ci/run installs them and sets IREC_PYTHON)");
    }
    ok.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_open_in_numpy_and_pyarrow_are_the_same_live_or_stopped_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("server"));
    config.round_quota = 24;
    config.http.enabled = true;
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let d = sessions(&config, 40);
    put_perception(&config);

    let server = start(config.clone(), Arc::new(NoTrainer)).await;
    let http = server.handle.status().http.expect("the HTTP endpoint's address in the status");
    let c = client(server.addr(), &server.cert()).await;
    for (i, chunk) in d.chunks(8).enumerate() {
        assert_eq!(expect_ack(&c.request(&batch(100 + i as u128, chunk.to_vec())).await).stored, chunk.len() as u32);
    }
    assert!(expect_ack(&c.request(&batch(100, d[..8].to_vec())).await).duplicate);

    // Metrics: what was uploaded, as Prometheus reads it.
    let m = tokio::task::spawn_blocking(move || scrape(http, "/metrics")).await.unwrap();
    assert_eq!(metric(&m, "irec_sessions_ingested_total"), 40.0);
    assert_eq!(metric(&m, "irec_turns_ingested_total"), d.iter().map(|s| s.len()).sum::<usize>() as f64);
    assert_eq!(metric(&m, "irec_acks_total"), 6.0);
    assert_eq!(metric(&m, "irec_ack_latency_seconds_count"), 6.0);
    assert!(m.contains("irec_uploads_total{outcome=\"duplicate\"} 1\n"), "{m}");
    assert_eq!(metric(&m, "irec_d_sessions"), 40.0);
    assert_eq!(metric(&m, "irec_current_round"), 1.0, "24 of 40 sessions closed round 0");
    let page = tokio::task::spawn_blocking(move || scrape(http, "/")).await.unwrap();
    assert!(page.contains("<title>") && page.contains("/api/status"));
    let missing = tokio::task::spawn_blocking(move || irec_server::http::get(http, "/nope", Duration::from_secs(5))).await.unwrap();
    assert!(missing.unwrap_err().contains("404"));

    // While it runs, the data dir is the server's: the export asks the server.
    let live_out = dir.path().join("live");
    let (cfg, out) = (config.clone(), live_out.clone());
    let live = tokio::task::spawn_blocking(move || export::run(&cfg, &out, None, &irec_learn::experiment::Silent)).await.unwrap().unwrap();
    assert_eq!((live.episodes, live.turns as usize), (40, d.iter().map(|s| s.len()).sum()));
    assert_eq!(live.rounds.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(live.rounds[&0].episodes, 24);
    c.conn.close(0u32.into(), b"done");
    server.stop().await.unwrap();

    // Stopped: read from a copy of the store; the store is byte for byte as before.
    let before = files(&config.data_dir);
    let stopped_out = dir.path().join("stopped");
    let stopped = export::run(&config, &stopped_out, None, &irec_learn::experiment::Silent).unwrap();
    assert_eq!(files(&config.data_dir), before, "an export must not modify the store");
    assert_eq!(stopped, live);
    assert_eq!(files(&stopped_out), files(&live_out), "the same D exports to the same bytes");

    // Python opens both files and finds the store's values.
    let store = irec_server::store::Store::open(&irec_server::store::db_dir(&config.data_dir)).unwrap();
    let episodes = store.episodes().unwrap();
    drop(store);
    let heads = irec_world::catalog::generate(&config.world.catalog).schema.head_sizes();
    let want = expected(&episodes, &config.trainer.objective, &heads);
    let want_path = dir.path().join("expected.json");
    std::fs::write(&want_path, serde_json::to_vec(&want).unwrap()).unwrap();
    match python() {
        Some(py) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/check_export.py");
            let out = std::process::Command::new(py).arg(&script).arg(&stopped_out).arg(&want_path).output().unwrap();
            assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprint!("python: {}", String::from_utf8_lossy(&out.stdout));
        }
        None => eprintln!("no python3 with numpy and pyarrow here: the file check ran in Rust only"),
    }

    // Bad input names what to fix, and writes nothing.
    let again = export::run(&config, &stopped_out, None, &irec_learn::experiment::Silent).unwrap_err().to_string();
    assert!(again.contains("--out") && again.contains("not empty"), "{again}");
    let mut nowhere = config.clone();
    nowhere.data_dir = dir.path().join("no-such-server");
    let e = export::run(&nowhere, &dir.path().join("x"), None, &irec_learn::experiment::Silent).unwrap_err();
    assert!(matches!(e, export::ExportError::Source(SourceError::Missing(_))), "{e}");
    assert!(e.to_string().contains("--data-dir"), "{e}");
    assert!(!dir.path().join("x").exists());
    // Held by a server without an HTTP endpoint: the export says how to get at it.
    let held = irec_server::store::Store::open(&irec_server::store::db_dir(&config.data_dir)).unwrap();
    let _ = std::fs::remove_file(config.data_dir.join(irec_server::status::STATUS_FILE));
    let e = export::run(&config, &dir.path().join("y"), None, &irec_learn::experiment::Silent).unwrap_err();
    assert!(matches!(e, export::ExportError::Source(SourceError::HeldWithoutHttp(_))), "{e}");
    assert!(e.to_string().contains("[http]"), "{e}");
    drop(held);
}
