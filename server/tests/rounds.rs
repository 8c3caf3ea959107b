//! Rounds over real QUIC: quota → training → gate → publish → announcement; refusals recorded;
//! a round interrupted mid-training is trained again after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use irec_learn::round::{RoundTrainer, TrainError, TrainJob, TrainOutcome};
use irec_server::rounds::RoundStatus;
use irec_protocol::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn with_initial(dir: &std::path::Path, quota: u64) -> irec_server::ServerConfig {
    let blob = dir.join("behaviour.bin");
    std::fs::write(&blob, b"behaviour policy").unwrap();
    let mut c = config(&dir.join("server"));
    c.initial_policy = Some(blob);
    c.round_quota = quota;
    c
}

async fn pull(c: &Client, have: Option<u64>) -> Answer {
    c.request(&Message::PolicyRequest(PolicyRequest { have })).await
}

#[tokio::test]
async fn a_full_round_publishes_announces_and_serves_the_new_policy() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Arc::new(FixedTrainer { candidate_estimate: 2.0, deployed_estimate: 1.0 });
    let server = start(with_initial(dir.path(), 3), trainer).await;
    let mut c = client(server.addr(), &server.cert()).await;
    let v1 = c.welcome.deployed.expect("the bootstrap policy is deployed before agents connect");
    assert_eq!((v1.version, v1.round, v1.sha256), (1, 0, sha256(b"behaviour policy")));
    match pull(&c, None).await {
        Answer::Message(Message::PolicyBlob(b)) => {
            assert_eq!((b.version, b.bytes.as_slice()), (1, &b"behaviour policy"[..]));
            assert_eq!(sha256(&b.bytes), b.sha256);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(pull(&c, Some(1)).await, Answer::Message(Message::NoPolicy(NoPolicy { deployed: Some(1) }))));

    expect_ack(&c.request(&batch(1, vec![session(1, 1.0), session(2, 1.0)])).await);
    assert_eq!(server.handle.status().counters.current_round, 0);
    expect_ack(&c.request(&batch(2, vec![session(3, 1.0)])).await);
    // Round 0 closed; ingest carries on in round 1 while it trains.
    expect_ack(&c.request(&batch(3, vec![session(4, 1.0)])).await);

    let ann = c.announcement(WAIT).await.expect("announcement of the new policy");
    let expected = b"policy for round 0 from 3 sessions";
    assert_eq!((ann.version, ann.round, ann.sha256), (2, 1, sha256(expected)));
    match pull(&c, Some(1)).await {
        Answer::Message(Message::PolicyBlob(b)) => assert_eq!((b.version, b.bytes.as_slice(), b.sha256), (2, &expected[..], ann.sha256)),
        other => panic!("{other:?}"),
    }
    let mut h = server.handle.clone();
    let status = h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status == RoundStatus::Published)).await.unwrap();
    let r0 = &status.rounds[0];
    assert_eq!((r0.new_sessions, r0.sessions_in_d, r0.published_version, r0.deployed_version), (3, 3, Some(2), Some(1)));
    assert_eq!((r0.candidate_estimate, r0.deployed_estimate), (Some(2.0), Some(1.0)));
    assert_eq!(r0.metrics.as_ref().map(|m| (m.sessions_in_d, m.new_sessions)), Some((3, 3)));
    assert_eq!(status.counters.current_round, 1);
    // A late joiner learns of version 2 from its welcome.
    let late = client(server.addr(), &server.cert()).await;
    assert_eq!(late.welcome.deployed.map(|d| d.version), Some(2));
    server.stop().await.unwrap();
    let st = irec_server::store::Store::open(&irec_server::store::db_dir(&dir.path().join("server"))).unwrap();
    assert_eq!(st.policy_versions().unwrap(), vec![1, 2]);
    let status: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("server/status.json")).unwrap()).unwrap();
    assert_eq!(status["rounds"][0]["gate"]["decision"], "published");
}

#[tokio::test]
async fn the_gate_refuses_a_candidate_estimated_worse_and_records_why() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Arc::new(FixedTrainer { candidate_estimate: 0.5, deployed_estimate: 1.0 });
    let server = start(with_initial(dir.path(), 2), trainer).await;
    let mut c = client(server.addr(), &server.cert()).await;
    expect_ack(&c.request(&batch(1, vec![session(1, 1.0), session(2, 1.0)])).await);
    let mut h = server.handle.clone();
    let status = h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status.is_finished())).await.unwrap();
    let r0 = &status.rounds[0];
    assert_eq!(r0.status, RoundStatus::Refused);
    assert_eq!((r0.candidate_estimate, r0.deployed_estimate, r0.published_version), (Some(0.5), Some(1.0), None));
    assert!(r0.gate.as_ref().unwrap().reason.contains("<"), "{:?}", r0.gate);
    // The deployed policy carries on into round 1: same version and bytes, announced for round 1
    // (agents that stopped at their per-round budget hear a new round; nothing to fetch).
    let deployed = status.deployed.unwrap();
    assert_eq!((deployed.version, deployed.round), (1, 1));
    let ann = c.announcement(Duration::from_secs(5)).await.expect("the carried-on policy is announced");
    assert_eq!(ann, deployed);
    server.stop().await.unwrap();
}

/// Blocks until released or cancelled, then behaves like `FixedTrainer`.
struct GatedTrainer {
    release: Arc<AtomicBool>,
}

impl RoundTrainer for GatedTrainer {
    fn train(&self, job: TrainJob) -> Result<TrainOutcome, TrainError> {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.release.load(Ordering::SeqCst) {
            if job.cancel.is_cancelled() || std::time::Instant::now() > deadline {
                return Err(TrainError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        FixedTrainer { candidate_estimate: 1.0, deployed_estimate: 1.0 }.train(job)
    }
}

#[tokio::test]
async fn a_round_interrupted_mid_training_is_trained_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let trainer = Arc::new(GatedTrainer { release: Arc::new(AtomicBool::new(false)) });
        let server = start(with_initial(dir.path(), 2), trainer).await;
        let c = client(server.addr(), &server.cert()).await;
        expect_ack(&c.request(&batch(1, vec![session(1, 1.0), session(2, 1.0)])).await);
        let mut h = server.handle.clone();
        h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status == RoundStatus::Training)).await.unwrap();
        // Ingest keeps running while the round trains.
        expect_ack(&c.request(&batch(2, vec![session(3, 1.0)])).await);
        server.stop().await.unwrap();
    }
    let server = start(with_initial(dir.path(), 2), Arc::new(GatedTrainer { release: Arc::new(AtomicBool::new(true)) })).await;
    let mut h = server.handle.clone();
    let status = h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status == RoundStatus::Published)).await.unwrap();
    let r0 = &status.rounds[0];
    assert_eq!((r0.attempts, r0.sessions_in_d, r0.published_version), (2, 2, Some(2)));
    assert_eq!((status.counters.current_round, status.counters.round_sessions, status.counters.sessions_total), (1, 1, 3));
    let c = client(server.addr(), &server.cert()).await;
    assert_eq!(c.welcome.deployed.map(|d| d.version), Some(2));
    server.stop().await.unwrap();
}

struct PanickingTrainer;

impl RoundTrainer for PanickingTrainer {
    fn train(&self, _: TrainJob) -> Result<TrainOutcome, TrainError> {
        panic!("bug in the trainer")
    }
}

#[tokio::test]
async fn a_failing_trainer_marks_the_round_failed_and_the_server_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(with_initial(dir.path(), 1), Arc::new(PanickingTrainer)).await;
    let c = client(server.addr(), &server.cert()).await;
    expect_ack(&c.request(&batch(1, vec![session(1, 1.0)])).await);
    let mut h = server.handle.clone();
    let status = h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status.is_finished())).await.unwrap();
    assert_eq!(status.rounds[0].status, RoundStatus::Failed);
    assert!(status.rounds[0].error.as_deref().unwrap_or("").contains("bug in the trainer"));
    expect_ack(&c.request(&batch(2, vec![session(2, 1.0)])).await);
    server.stop().await.unwrap();
}

/// A tool that saw its last upload acked must find the rounds that upload closed in
/// status.json (written before the ack), or it cannot wait for them to finish (the R2 and R6
/// campaigns, `fleet-sim run`).
#[tokio::test]
async fn status_json_lists_a_closed_round_by_the_time_its_upload_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let server = start(with_initial(dir.path(), 2), Arc::new(GatedTrainer { release: release.clone() })).await;
    let c = client(server.addr(), &server.cert()).await;
    expect_ack(&c.request(&batch(1, vec![session(1, 1.0), session(2, 1.0)])).await);
    let status: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("server/status.json")).unwrap()).unwrap();
    assert_eq!(status["rounds"][0]["round"], 0, "{status}");
    assert_eq!(status["counters"]["current_round"], 1);
    release.store(true, Ordering::SeqCst);
    server.stop().await.unwrap();
}

/// Rounds that do not wait for stragglers: no quota, a deadline. The round closes with what
/// arrived; a device that collected for round 0 and uploads in round 1 is kept and counted late.
#[tokio::test]
async fn a_deadline_closes_rounds_with_what_arrived_and_keeps_late_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Arc::new(FixedTrainer { candidate_estimate: 2.0, deployed_estimate: 1.0 });
    let mut cfg = with_initial(dir.path(), 0);
    cfg.round_deadline_ms = 300;
    let server = start(cfg, trainer).await;
    let c = client(server.addr(), &server.cert()).await;
    assert_eq!(expect_ack(&c.request(&batch(1, vec![session(1, 1.0), session(2, 1.0)])).await).stored, 2);
    let mut h = server.handle.clone();
    let status = tokio::time::timeout(WAIT, h.wait_for(|s| s.rounds.first().is_some_and(|r| r.status == RoundStatus::Published))).await.unwrap().unwrap();
    let r0 = &status.rounds[0];
    assert_eq!((r0.new_sessions, r0.late_sessions, r0.closed_by), (2, 0, Some(irec_server::rounds::CloseReason::Deadline)));
    // Nothing new: round 1 stays open however long it waits (no empty training rounds).
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(h.wait_for(|_| true).await.unwrap().rounds.len(), 1);
    // A straggler's session, collected under round 0's policy, arrives now.
    let mut late = session(3, 1.0);
    late.round = 0;
    assert_eq!(expect_ack(&c.request(&batch(2, vec![late])).await).stored, 1);
    let status = tokio::time::timeout(WAIT, h.wait_for(|s| s.rounds.len() == 2 && s.rounds[1].status.is_finished())).await.unwrap().unwrap();
    let r1 = &status.rounds[1];
    assert_eq!((r1.new_sessions, r1.late_sessions, r1.sessions_in_d), (1, 1, 3), "late sessions are kept and trained on");
    server.stop().await.unwrap();
}
