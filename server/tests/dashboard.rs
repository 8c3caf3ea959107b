//! The live dashboard end to end in headless Chromium: the page loads, shows the rounds of a
//! short run, and updates when a round closes, without a reload. The page names the decided
//! rounds in its title, which Chromium's DevTools endpoint lists (`/json/list`) — plain HTTP, so
//! the test reads the live page without a WebSocket client. The rounds table itself is checked
//! in the DOM Chromium dumps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use irec_learn::algo::fqe::FqeEstimate;
use irec_learn::round::{Evaluated, RoundMetrics, RoundTrainer, TrainError, TrainJob, TrainOutcome};
use irec_world::metrics::{MeanSe, Metrics};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Candidates whose simulator figures climb with the round, always published.
struct Climbing;

impl RoundTrainer for Climbing {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError> {
        let eval = |sr30: f64| Evaluated { metrics: Metrics { sessions: 10, sr10: sr30 / 2.0, sr20: sr30 * 0.8, sr30, ni: MeanSe { mean: 10.0, se: 1.0 }, nv: MeanSe::default() }, fqe: Some(FqeEstimate::default()) };
        Ok(TrainOutcome {
            candidate: format!("round {}", job.round).into_bytes(),
            metrics: RoundMetrics { candidate: Some(eval(0.5 + 0.1 * f64::from(job.round))), steps: 10, sessions_in_d: job.sessions.len(), ..RoundMetrics::default() },
            candidate_estimate: Some(1.0),
            deployed_estimate: job.deployed.as_ref().map(|_| 0.0),
            estimate_se: 0.0,
        })
    }
}

/// Debian's `chromium` (`.ci/run` installs it), or `IREC_CHROMIUM`. `None` outside CI when there
/// is none; in CI that is a failure, not a skip.
fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var("IREC_CHROMIUM").map(|c| vec![c]).unwrap_or_else(|_| vec!["chromium".into(), "chromium-browser".into(), "google-chrome".into()]);
    let found = candidates.into_iter().map(PathBuf::from).find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() && std::env::var("CI").is_ok() {
        panic!("CI needs Chromium for the dashboard test (.ci/run installs Debian's chromium)");
    }
    found
}

const FLAGS: [&str; 6] = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"];

/// A headless browser showing `url`, with its DevTools endpoint on a port it picks.
struct Browser {
    child: Child,
    devtools: std::net::SocketAddr,
}

impl Browser {
    fn open(chromium: &Path, profile: &Path, url: &str) -> Browser {
        let child = Command::new(chromium)
            .args(FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes the port it bound into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let started = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next().and_then(|l| l.parse::<u16>().ok())) {
                break p;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "chromium did not start its DevTools endpoint");
            std::thread::sleep(Duration::from_millis(100));
        };
        Browser { child, devtools: std::net::SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// The page's title now.
    fn title(&self) -> Option<String> {
        let body = irec_server::http::get(self.devtools, "/json/list", Duration::from_secs(5)).ok()?;
        let pages: Vec<serde_json::Value> = serde_json::from_slice(&body).ok()?;
        pages.iter().find(|p| p["type"] == "page").and_then(|p| p["title"].as_str().map(str::to_string))
    }

    /// Waits until the title is `want`; the last title seen otherwise.
    fn wait_title(&self, want: &str, within: Duration) -> Result<(), Option<String>> {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < within {
            last = self.title();
            if last.as_deref() == Some(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_decided(server: &Running, n: usize) {
    let mut h = server.handle.clone();
    let decided = tokio::time::timeout(Duration::from_secs(30), h.wait_for(|s| s.rounds.iter().filter(|r| r.status.is_finished()).count() >= n)).await;
    assert!(decided.is_ok_and(|s| s.is_some()), "round {n} was not decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_rounds_and_updates_when_one_closes() {
    let Some(chromium) = chromium() else {
        eprintln!("no chromium here: the dashboard test did not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("server"));
    cfg.round_quota = 4;
    cfg.http.enabled = true;
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(cfg, Arc::new(Climbing)).await;
    let http = server.handle.status().http.unwrap();
    let c = client(server.addr(), &server.cert()).await;
    let upload = |id: u128| batch(id, (0..4).map(|i| session(10 + i, 1.0)).collect());
    assert_eq!(expect_ack(&c.request(&upload(1)).await).stored, 4);
    wait_decided(&server, 1).await;

    let url = format!("http://{http}/");
    let profile = dir.path().join("profile");
    let (chrome, u, p) = (chromium.clone(), url.clone(), profile.clone());
    let browser = tokio::task::spawn_blocking(move || Browser::open(&chrome, &p, &u)).await.unwrap();
    let browser = Arc::new(browser);
    let b = browser.clone();
    let first = tokio::task::spawn_blocking(move || b.wait_title("irec · 1 rounds decided · D 4", Duration::from_secs(60))).await.unwrap();
    assert_eq!(first, Ok(()), "the page did not show round 0");

    // A round closes while the page is open: it shows it without a reload.
    assert_eq!(expect_ack(&c.request(&upload(2)).await).stored, 4);
    wait_decided(&server, 2).await;
    let b = browser.clone();
    let second = tokio::task::spawn_blocking(move || b.wait_title("irec · 2 rounds decided · D 8", Duration::from_secs(30))).await.unwrap();
    assert_eq!(second, Ok(()), "the open page did not update when round 1 closed");
    drop(browser);

    // The rounds table as rendered: a row per round with its status and the candidate's SR@30.
    let dom_profile = dir.path().join("profile-dom");
    let dom = tokio::task::spawn_blocking(move || {
        Command::new(&chromium).args(FLAGS).arg(format!("--user-data-dir={}", dom_profile.display())).args(["--virtual-time-budget=5000", "--dump-dom"]).arg(&url).output().unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains(r#"<tr data-round="0" data-status="published">"#), "{dom}");
    assert!(dom.contains(r#"<tr data-round="1" data-status="published">"#), "{dom}");
    assert!(dom.contains("<td>60.0%</td>"), "round 1's candidate SR@30 in the table: {dom}");
    // The acks' latency, from the server's per-second samples, drawn as points.
    let latency = dom.split(r#"id="c-lat""#).nth(1).and_then(|rest| rest.split("</svg>").next()).unwrap_or_default();
    assert!(latency.contains("<circle"), "no ack latency drawn: {latency}");
    c.conn.close(0u32.into(), b"done");
    server.stop().await.unwrap();
}
