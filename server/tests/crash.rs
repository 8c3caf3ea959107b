//! The server process stopped from outside. Killed with SIGKILL and started again on the same
//! data dir and port: connected agents must learn of it at their next packet (a QUIC stateless
//! reset from the new process), not after their idle timeout (R2 found agents deaf for 30 s after
//! every crash). Sent SIGTERM, as Kubernetes does: it stops in order and exits 0, nothing acked
//! is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_learn_of_a_crashed_server_at_their_next_packet() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = process_config(dir.path());
    let data = cfg.data_dir.clone();
    let (addr, cert) = (cfg.listen, data.join(irec_server::tls::CERT_FILE));

    let mut first = start_process(&path, &data);
    let old = client(addr, &cert).await;
    assert_eq!(expect_ack(&old.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    first.kill();
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
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_in_order_and_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = process_config(dir.path());
    let data = cfg.data_dir.clone();
    let (addr, cert) = (cfg.listen, data.join(irec_server::tls::CERT_FILE));
    let mut server = start_process(&path, &data);
    let agent = client(addr, &cert).await;
    assert_eq!(expect_ack(&agent.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    server.signal("TERM");
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(60))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM must end the server with 0, got {status:?}");
    // The rolling restart: the same data dir and port, and the acked batch is still there.
    let _again = start_process(&path, &data);
    let agent = client(addr, &cert).await;
    assert!(expect_ack(&agent.request(&batch(1, vec![session(1, 1.0)])).await).duplicate);
}
