//! The Kubernetes manifests, checked without a cluster: every overlay renders with
//! `kubectl kustomize`, and every flag, environment variable and config key the rendered pods
//! hand to `irec-server` and `edge-agent` is one their own parsers accept; the paths they use
//! are mounted; the agents reach the Service the server exposes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables the binaries read (besides their flags).
const KNOWN_ENV: &[&str] = &["IREC_FLEET_TOKEN", "RUST_LOG", "RAYON_NUM_THREADS"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Renders an overlay; `Err` with kustomize's own message when it does not render.
fn render(overlay: &Path) -> Result<Vec<Value>, String> {
    let out = Command::new("kubectl").arg("kustomize").arg(overlay).output().map_err(|e| {
        format!("running kubectl ({e}): the manifests test needs kubectl with kustomize (.ci/run installs it)")
    })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn str_of(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

/// What one rendered overlay holds, as the checks need it.
struct Rendered {
    docs: Vec<Value>,
    config: BTreeMap<String, String>,
}

impl Rendered {
    fn of(docs: Vec<Value>) -> Rendered {
        let config = docs
            .iter()
            .filter(|d| str_of(&d["kind"]) == "ConfigMap")
            .flat_map(|d| d["data"].as_mapping().cloned().unwrap_or_default())
            .map(|(k, v)| (str_of(&k), str_of(&v)))
            .collect();
        Rendered { docs, config }
    }

    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter(|d| ["Deployment", "StatefulSet"].contains(&str_of(&d["kind"]).as_str()))
    }
}

/// The container's args with `$(VAR)` references to its own env filled with a sample value, as
/// the kubelet would (an undefined reference is a manifest bug).
fn expanded_args(c: &Value) -> Vec<String> {
    let env: Vec<String> = c["env"].as_sequence().into_iter().flatten().map(|e| str_of(&e["name"])).collect();
    for name in &env {
        assert!(KNOWN_ENV.contains(&name.as_str()) || c["args"].as_sequence().unwrap().iter().any(|a| str_of(a).contains(&format!("$({name})"))), "env {name} is read by neither binary nor the args");
    }
    c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            let mut a = str_of(a);
            while let Some(start) = a.find("$(") {
                let end = a[start..].find(')').unwrap() + start;
                let name = &a[start + 2..end];
                assert!(env.iter().any(|e| e == name), "args use $({name}), which the container does not define");
                a.replace_range(start..=end, "7");
            }
            a
        })
        .collect()
}

fn mounts(c: &Value) -> Vec<String> {
    c["volumeMounts"].as_sequence().into_iter().flatten().map(|m| str_of(&m["mountPath"])).collect()
}

fn mounted(mounts: &[String], path: &Path) -> bool {
    mounts.iter().any(|m| path.starts_with(m))
}

/// Every workload's flags and config parse with the binaries' own parsers; paths are mounted.
fn check(r: &Rendered, dir: &Path) -> Result<(), String> {
    let mut server_port = None;
    let mut agent_targets = Vec::new();
    for w in r.workloads() {
        for c in s(w, &["spec", "template", "spec", "containers"]).as_sequence().unwrap() {
            let program = str_of(&c["command"][0]);
            let args = expanded_args(c);
            let mounts = mounts(c);
            let config_path = args.iter().position(|a| a == "--config").map(|i| PathBuf::from(&args[i + 1])).ok_or("no --config")?;
            let file = config_path.file_name().unwrap().to_string_lossy().into_owned();
            let text = r.config.get(&file).ok_or(format!("{program}: no ConfigMap key {file}"))?;
            assert!(mounted(&mounts, &config_path), "{program}: {} is not mounted", config_path.display());
            let local = dir.join(&file);
            std::fs::write(&local, text).unwrap();
            let mut argv = vec![program.clone()];
            argv.extend(args.iter().map(|a| if *a == config_path.display().to_string() { local.display().to_string() } else { a.clone() }));
            match program.as_str() {
                "irec-server" => {
                    let cli = <irec_server::cli::Cli as clap::Parser>::try_parse_from(&argv).map_err(|e| format!("irec-server flags: {e}"))?;
                    let cfg = cli.into_config().map_err(|e| format!("server.toml: {e}"))?;
                    assert!(mounted(&mounts, cfg.tls_dir()), "the server's tls_dir {} is not mounted", cfg.tls_dir().display());
                    assert!(mounted(&mounts, &cfg.data_dir), "the server's data dir {} is not on a volume", cfg.data_dir.display());
                    server_port = Some(cfg.listen.port());
                }
                "edge-agent" => {
                    let cli = <irec_edge_agent::cli::Cli as clap::Parser>::try_parse_from(&argv).map_err(|e| format!("edge-agent flags: {e}"))?;
                    let cfg = cli.into_config().map_err(|e| format!("agent.toml: {e}"))?;
                    assert_eq!(cfg.device.seed, 7, "the pod ordinal must become the device seed");
                    assert!(mounted(&mounts, &cfg.server_cert), "the pinned certificate {} is not mounted", cfg.server_cert.display());
                    assert!(mounted(&mounts, &cfg.data_dir), "the agent's store {} is not on a volume", cfg.data_dir.display());
                    agent_targets.push(cfg.server.clone());
                }
                other => return Err(format!("a container runs {other:?}, not one of the binaries")),
            }
        }
    }
    let port = server_port.ok_or("no server")?;
    let service = r.docs.iter().find(|d| str_of(&d["kind"]) == "Service").ok_or("no Service")?;
    let name = str_of(&service["metadata"]["name"]);
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert!(ports.iter().any(|p| p["port"].as_u64() == Some(port as u64) && str_of(&p["protocol"]) == "UDP"), "the Service must expose UDP {port} (QUIC)");
    for t in agent_targets {
        assert_eq!(t, format!("{name}:{port}"), "agents must reach the server's Service");
    }
    Ok(())
}

#[test]
fn every_overlay_renders_and_hands_the_binaries_only_what_they_accept() {
    let overlays = deploy_dir().join("overlays");
    let mut checked = 0;
    for entry in std::fs::read_dir(&overlays).unwrap() {
        let overlay = entry.unwrap().path();
        let docs = render(&overlay).unwrap_or_else(|e| panic!("{}: {e}", overlay.display()));
        let dir = tempfile::tempdir().unwrap();
        let r = Rendered::of(docs);
        check(&r, dir.path()).unwrap_or_else(|e| panic!("{}: {e}", overlay.display()));
        // Agents keep their store across reschedules; the server runs alone on its volume.
        let agents = r.workloads().find(|w| str_of(&w["kind"]) == "StatefulSet").unwrap();
        assert!(agents["spec"]["volumeClaimTemplates"].as_sequence().is_some_and(|v| !v.is_empty()));
        let server = r.workloads().find(|w| str_of(&w["kind"]) == "Deployment").unwrap();
        assert_eq!(str_of(&server["spec"]["strategy"]["type"]), "Recreate", "two servers must never share the database");
        checked += 1;
    }
    assert!(checked >= 2, "overlays small and study");
}

#[test]
fn an_overlay_naming_an_unknown_key_is_refused_with_the_key_named() {
    // kustomize takes resources by relative path only: a copy of the base beside the overlay.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in std::fs::read_dir(deploy_dir().join("base")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, base.join(f.file_name().unwrap())).unwrap();
    }
    let overlay = dir.path().join("typo");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources:\n  - ../base\nconfigMapGenerator:\n  - name: irec-config\n    behavior: merge\n    files:\n      - server.toml\n",
    )
    .unwrap();
    std::fs::write(overlay.join("server.toml"), "listen = \"0.0.0.0:4433\"\nround_qouta = 300\n").unwrap();
    let r = Rendered::of(render(&overlay).unwrap());
    let err = check(&r, dir.path()).unwrap_err();
    assert!(err.contains("round_qouta"), "{err}");

    // A kustomization kustomize itself does not know is its error, not ours.
    std::fs::write(overlay.join("kustomization.yaml"), "resourcez:\n  - x\n").unwrap();
    assert!(render(&overlay).is_err());
}
