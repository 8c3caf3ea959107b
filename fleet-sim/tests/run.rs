//! `fleet-sim run` end to end: an irec-server and three edge-agent processes on loopback, two
//! rounds, at toy sizes. Afterwards the server's D holds exactly what the agents produced — as
//! many sessions, none twice, and round 0's sessions byte for byte as the devices' behaviour
//! policies regenerate them — and every agent runs the newest policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use irec_edge_agent::sessions;
use irec_edge_agent::store::{db_dir, AgentStore};
use irec_edge_agent::AgentConfig;
use irec_protocol::experience::ExperienceSession;
use irec_testkit::tally::tally;
use irec_world::sim::{Environment, Pool, World};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const AGENTS: u64 = 3;
const QUOTA: u64 = 45;

/// A 600-item world, pretraining and on-policy learning cut to seconds.
const TINY: &str = r#"
[world.catalog]
items = 600
seed = 5

[pretrain]
sentences = 3000
heldout_template_sentences = 300
text_epochs = 3
attr_epochs = 6

[on_policy]
iterations = 2
warm_start_snapshots = [0.5]
snapshot_stages = [1.0]

[on_policy.ppo]
warm_start_steps = 60
warm_start_sessions = 100
sessions_per_iteration = 16
epochs = 1

[behaviour]
noise_sigma = [0.3, 1.0]
"#;

/// Agent `i`'s first `n` sessions as its behaviour policy runs them, with the agent's own loop.
/// `fleet-sim run <args> --config <TINY> --no-cache --json` in a fresh folder: the folder (kept
/// alive by the caller), the run's report folder, and the JSON line it printed last. A failed run
/// fails the test with its stderr and the tail of the server's log.
fn run_tiny(args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, serde_json::Value) {
    let (dir, out, last, _) = run_tiny_cached(args, None);
    (dir, out, last)
}

/// [`run_tiny`] with the bootstrap's cache in `cache` (`None`: `--no-cache`); also its stderr.
fn run_tiny_cached(args: &[&str], cache: Option<&Path>) -> (tempfile::TempDir, std::path::PathBuf, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = dir.path().join("run");
    let cache_args = match cache {
        Some(c) => vec!["--cache".to_string(), c.display().to_string()],
        None => vec!["--no-cache".to_string()],
    };
    let output = Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .arg("run")
        .args(args)
        .args(&cache_args)
        .args(["--json", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs = std::fs::read_to_string(out.join("logs/server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "fleet-sim run failed:\n{}\n{stdout}\nserver log tail:\n{}",
        String::from_utf8_lossy(&output.stderr),
        &logs[logs.len().saturating_sub(3000)..]
    );
    let last = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (dir, out, last, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn regenerate(config: &AgentConfig, env: &Environment, n: u64) -> Vec<ExperienceSession> {
    let blob = std::fs::read(config.initial_policy.as_ref().unwrap()).unwrap();
    let loaded = irec_model::loader::LoadedNeural::from_bytes(&blob, &env.world).unwrap();
    sessions::replay(env, &config.device, &loaded, n).0.into_iter().map(|s| s.session).collect()
}

fn pending(dir: &Path) -> usize {
    let store = AgentStore::open(&db_dir(dir)).unwrap();
    let batched: usize = store.pending_batches().unwrap().into_iter().map(|id| store.batch(id).unwrap().unwrap().sessions.len()).sum();
    batched + store.unbatched()
}

#[test]
fn three_agent_processes_two_rounds() {
    let (agents, quota) = (AGENTS.to_string(), QUOTA.to_string());
    let (dir, out, last) = run_tiny(&["--agents", &agents, "--rounds", "2", "--sessions-per-round", &quota, "--steps", "20", "10", "--eval-sessions", "20", "--fqe-steps", "10"]);

    // The JSON line: two rounds, each gated, with figures.
    let rounds = last["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for (r, row) in rounds.iter().enumerate() {
        assert_eq!(row["round"], r as u64);
        assert!(["published", "refused"].contains(&row["gate"].as_str().unwrap()), "{row}");
        assert!((0.0..=1.0).contains(&row["sr30"].as_f64().unwrap()));
        assert!(row["ni"]["mean"].as_f64().unwrap() >= 1.0);
    }
    assert_eq!(rounds[0]["gate"], "published", "round 0 has nothing deployed to lose against");
    assert_eq!(rounds[0]["sessions_in_d"], QUOTA);
    assert_eq!(rounds[1]["sessions_in_d"], 2 * QUOTA);
    for f in ["table.md", "report.json", "rounds.csv", "fleet.csv", "curves.svg", "curves.png", "fleet.svg", "fleet.png"] {
        assert!(out.join(f).is_file(), "{f} missing from the report");
    }

    // Every agent ends on the newest version.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let newest = rounds.iter().filter_map(|r| r["policy_version"].as_u64()).max().unwrap();
    for v in report["agents_final_versions"].as_array().unwrap() {
        assert_eq!(v.as_u64(), Some(newest), "agents: {}", report["agents_final_versions"]);
    }

    // D: no duplicates, and with what the agents still hold, everything they ran.
    let fleet = out.join("fleet");
    let d = irec_testkit::stored_sessions(&fleet.join("server")).unwrap();
    let distinct: BTreeSet<String> = d.iter().map(|s| format!("{s:?}")).collect();
    assert_eq!(distinct.len(), d.len(), "a session is in D twice");
    let ran: u64 = report["agents_sessions_run"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    let held: usize = (0..AGENTS).map(|i| pending(&fleet.join(format!("agent-{i}")))).sum();
    assert_eq!(d.len() + held, ran as usize, "D ({}) + pending on devices ({held}) must be every session run ({ran})", d.len());

    // Round 0 content: the devices' behaviour sessions, regenerated, are exactly D's round-0 part.
    let configs: Vec<AgentConfig> = (0..AGENTS).map(|i| AgentConfig::load(&fleet.join(format!("agent-{i}.toml"))).unwrap()).collect();
    let world = Arc::new(World::build(&configs[0].world).unwrap());
    let env = Environment::with_truth(world, Pool::Train);
    let per_agent = QUOTA / AGENTS;
    let expected: Vec<ExperienceSession> = configs.iter().flat_map(|c| regenerate(c, &env, per_agent)).collect();
    let round0: Vec<ExperienceSession> = d.iter().filter(|s| s.round == 0).cloned().collect();
    assert_eq!(round0.len(), QUOTA as usize);
    let t = tally(&expected, &round0);
    assert!(t.exact(), "D's round-0 sessions differ from what the devices' behaviour policies produce: {t:?}");

    // The agents mapped the fleet's world file, and said what memory was theirs alone.
    let world_file = fleet.join("bootstrap/world.irecw");
    assert!(configs.iter().all(|c| c.world_file.as_deref() == Some(world_file.as_path())));
    for key in ["agents_private_mib", "agents_uss_mib", "agents_peak_rss_mib"] {
        let v = last[key].as_array().unwrap_or_else(|| panic!("{key} missing: {last}"));
        assert_eq!(v.len(), AGENTS as usize, "{key}");
        assert!(v.iter().all(|m| m.as_f64().is_some_and(|m| m > 0.0)), "{key}: {v:?}");
    }
    // `fleet-sim world` rebuilds the very same file from the server's config and the perception.
    let again = dir.path().join("again.irecw");
    let built = Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(["world", "--config"])
        .arg(fleet.join("server.toml"))
        .arg("--perception")
        .arg(fleet.join("bootstrap/perception.ckpt"))
        .arg("--out")
        .arg(&again)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&world_file).unwrap(), "fleet-sim world built another file");
}

/// Twenty agents as tasks of one process, beside the server: every session ingested, every agent
/// on the published policy. Regression: before `irec_store`, sled's global lock
/// deadlocked this within seconds (a transaction waiting on flushes and iterations that waited on
/// it), and the run hung.
#[test]
fn twenty_in_process_agents_one_round() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(["run", "--in-process", "--agents", "20", "--rounds", "1", "--sessions-per-round", "40"])
        .args(["--steps", "10", "10", "--eval-sessions", "10", "--fqe-steps", "5", "--no-cache", "--json"])
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A hang is the failure this guards against: give it generous time, then fail instead of
    // blocking CI.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("an in-process fleet of 20 agents did not finish one round in 10 minutes (deadlock?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["rounds"][0]["sessions_in_d"], 40);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["agents_final_versions"].as_array().unwrap().len(), 20);
    assert!(report["agent_problems"].as_array().unwrap().is_empty(), "{}", report["agent_problems"]);
}

/// A sampled study: 15 devices, 10 drawn to take part in each of two rounds (3 more drawn and
/// failing to respond), so most take part twice and must go on from their records. D holds
/// every session the cohorts ran, once; the records account for every session; no store is left.
#[test]
fn a_sampled_population_ingests_exactly_once_and_devices_resume_from_their_records() {
    let (_dir, out, last) = run_tiny(&[
        "--population", "15", "--agents", "10", "--dropout", "0.2", "--rounds", "2", "--sessions-per-round", "20", "--steps", "10", "10", "--eval-sessions", "10",
        "--fqe-steps", "5",
    ]);
    assert_eq!(last["rounds"][0]["sessions_in_d"], 20);
    assert_eq!(last["rounds"][1]["sessions_in_d"], 40);
    let study = &last["study"];
    let cohorts = study["cohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 2);
    for c in cohorts {
        assert_eq!(c["took_part"], 10, "{c}");
        assert_eq!(c["drawn"].as_u64().unwrap() - c["failed"].as_u64().unwrap(), 10, "{c}");
        assert!(c["failed"].as_u64().unwrap() >= 2, "{c}");
        assert_eq!(c["sessions_run"], 20, "{c}");
    }
    assert_eq!(study["stores_kept"], 0);

    let fleet = out.join("fleet");
    let d = irec_testkit::stored_sessions(&fleet.join("server")).unwrap();
    let distinct: BTreeSet<String> = d.iter().map(|s| format!("{s:?}")).collect();
    assert_eq!((d.len(), distinct.len()), (40, 40), "D must hold the 40 sessions run, each once");
    assert_eq!(d.iter().filter(|s| s.round == 1).count(), 20, "round 1's cohort ran the policy round 0 published");

    // Every device that took part is a record again, and the records count every session: a
    // device that took part twice went on from its first record (2 + 2 sessions).
    let db = irec_store::Db::open(&fleet.join("population"), irec_store::Options::default()).unwrap();
    let records: Vec<irec_edge_agent::store::DeviceRecord> =
        db.tree("devices").unwrap().values().unwrap().iter().map(|v| irec_store::codec::unbin("devices", v).unwrap()).collect();
    assert_eq!(records.len() as u64, study["devices_with_records"].as_u64().unwrap());
    assert!(records.len() < 20, "15 devices cannot have 20 first participations");
    assert_eq!(records.iter().map(|r| r.next_session).sum::<u64>(), 40);
    assert!(records.iter().all(|r| r.next_session % 2 == 0 && r.next_session > 0));
    assert!(records.iter().any(|r| r.next_session == 4), "some device took part twice");
}

#[test]
fn a_second_run_takes_the_bootstrap_from_the_cache_and_gives_the_same_rounds() {
    let cache = tempfile::tempdir().unwrap();
    let args = ["--agents", "2", "--rounds", "1", "--sessions-per-round", "10", "--steps", "5", "5", "--eval-sessions", "10", "--fqe-steps", "5"];
    let (_a, first, first_json, first_err) = run_tiny_cached(&args, Some(cache.path()));
    let (_b, second, second_json, second_err) = run_tiny_cached(&args, Some(cache.path()));
    assert!(!first_err.contains("behaviour policies loaded from cache"), "{first_err}");
    assert!(second_err.contains("pretrained perception loaded from cache"), "{second_err}");
    assert!(second_err.contains("behaviour policies loaded from cache"), "{second_err}");
    // The very checkpoints the learner made, and so the same round.
    let policies = |out: &Path| irec_testkit::files_under(&out.join("fleet/bootstrap")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "ckpt")).count();
    assert!(policies(&first) >= 2, "perception and at least one behaviour policy");
    assert_eq!(policies(&first), policies(&second));
    for k in 0.. {
        let name = format!("fleet/bootstrap/behaviour-{k}.ckpt");
        let Ok(a) = std::fs::read(first.join(&name)) else { break };
        assert_eq!(a, std::fs::read(second.join(&name)).unwrap(), "{name} differs");
    }
    let figures = |v: &serde_json::Value| v["rounds"].as_array().unwrap().iter().map(|r| (r["gate"].clone(), r["sr30"].clone(), r["ni"].clone())).collect::<Vec<_>>();
    assert_eq!(figures(&first_json), figures(&second_json));
    assert_eq!(first_json["behaviour"], second_json["behaviour"]);
}
