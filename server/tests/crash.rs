//! The server process killed with SIGKILL and started again on the same data dir and port:
//! connected agents must learn of it at their next packet (a QUIC stateless reset from the new
//! process), not after their idle timeout. R2 found agents deaf for 30 s after every crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start_process(config_path: &Path, data_dir: &Path) -> Child {
    let status = data_dir.join("status.json");
    let _ = std::fs::remove_file(&status);
    let child = Command::new(env!("CARGO_BIN_EXE_irec-server"))
        .arg("--config")
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status.exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_learn_of_a_crashed_server_at_their_next_packet() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = dir.path().join("server");
    let mut cfg = config(&data);
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let (addr, cert) = (cfg.listen, data.join(irec_server::tls::CERT_FILE));

    let mut first = start_process(&path, &data);
    let old = client(addr, &cert).await;
    assert_eq!(expect_ack(&old.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start_process(&path, &data);

    // The old connection's next packet reaches the new process, which resets it.
    let t = Instant::now();
    let reply = old.request(&batch(2, vec![session(2, 1.0)])).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), old.conn.closed()).await;
    assert!(matches!(closed, Ok(quinn::ConnectionError::Reset)), "no stateless reset: {closed:?} (reply {reply:?})");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A new connection is served, and what was acked before the crash is still there.
    let again = client(addr, &cert).await;
    assert!(expect_ack(&again.request(&batch(1, vec![session(1, 1.0)])).await).duplicate);
    second.kill().unwrap();
    second.wait().unwrap();
}
