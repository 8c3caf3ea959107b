//! Ingest over real QUIC on loopback: exactly-once storage, refusals of bad input with clear
//! errors while other agents keep being served, restart with nothing lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use irec_learn::round::NoTrainer;
use irec_protocol::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn uploads_are_acked_and_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let c = client(server.addr(), &server.cert()).await;
    assert_eq!(c.welcome.protocol_version, PROTOCOL_VERSION);
    assert_eq!(c.welcome.deployed, None);
    let a = vec![session(1, 1.0), session(2, 0.5)];
    let ack = expect_ack(&c.request(&batch(10, a.clone())).await);
    assert_eq!(ack, Ack { batch_id: BatchId(10), stored: 2, duplicate: false });
    // A replay (the agent never saw the ack) stores nothing and says so.
    let ack = expect_ack(&c.request(&batch(10, a.clone())).await);
    assert_eq!(ack, Ack { batch_id: BatchId(10), stored: 0, duplicate: true });
    let b = vec![session(7, 1.0)];
    assert_eq!(expect_ack(&c.request(&batch(11, b.clone())).await).stored, 1);
    assert_eq!(server.handle.status().counters.sessions_total, 3);
    server.stop().await.unwrap();
    let all = stored(dir.path());
    assert_eq!(all, [a, b].concat(), "D holds exactly the uploaded sessions, in order, once");
}

#[tokio::test]
async fn bad_input_is_refused_clearly_nothing_is_stored_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    let good = client(addr, &cert).await;
    let mut next_id = 100u128;
    let mut good_sessions = Vec::new();
    let mut check_good_still_served = async |good: &Client| {
        next_id += 1;
        let s = vec![session(next_id as u32 % 200, 1.0)];
        assert_eq!(expect_ack(&good.request(&batch(next_id, s.clone())).await).stored, 1);
        good_sessions.extend(s);
    };

    // Hellos that must close the connection with a clear code.
    let bad_hellos: Vec<(Vec<u8>, ErrorCode)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), ErrorCode::MalformedFrame),
        ((64u32 << 20).to_be_bytes().iter().copied().chain([Kind::Hello.tag()]).collect(), ErrorCode::FrameTooLarge),
        (frame(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION + 1, fleet_token: TOKEN.into(), world: None })), ErrorCode::UnsupportedVersion),
        (hello("not-the-token"), ErrorCode::Unauthorized),
        (hello(""), ErrorCode::Unauthorized),
        (frame(&batch(1, vec![session(1, 1.0)])), ErrorCode::HelloRequired),
    ];
    for (bytes, code) in bad_hellos {
        let conn = connect(addr, &cert).await.unwrap();
        let reply = send_raw(&conn, &bytes).await;
        assert_eq!(reply.error_code(), Some(code), "{reply:?}");
        if let Answer::Message(Message::Error(e)) = &reply {
            assert!(!e.message.is_empty());
        }
        // The connection is closed with the same code.
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
        match closed {
            quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(ErrorCode::from_code(c.error_code.into_inner()), Some(code)),
            other => panic!("expected an application close, got {other}"),
        }
        check_good_still_served(&good).await;
    }

    // Bad requests from an authenticated agent: the stream is refused, the connection lives on.
    let mut nan = session(3, 1.0);
    nan.turns[0].reward = f32::NAN;
    let mut inf = session(3, 1.0);
    inf.turns[1].reward = f32::INFINITY;
    let mut unknown = session(3, 1.0);
    unknown.turns[1].shown = ITEMS as u32;
    let mut long = session(3, 1.0);
    long.turns[0].utterance = "x".repeat(100_000);
    let mut too_many_turns = session(3, 1.0);
    too_many_turns.turns = (0..51).map(|i| {
        let mut t = session(3, 1.0).turns[0].clone();
        t.done = i == 50;
        t
    }).collect();
    // An utterance whose length prefix claims a terabyte (the rest of the frame is well formed).
    let terabyte = {
        let f = frame(&batch(907, vec![session(1, 1.0)]));
        let text = b"I want boots";
        let at = f.windows(text.len()).position(|w| w == text).unwrap();
        assert_eq!(f[at - 1] as usize, text.len());
        let mut out = f[..at - 1].to_vec();
        out.extend_from_slice(&[253, 0, 0, 0, 0, 0, 1, 0, 0]);
        out.extend_from_slice(&f[at..]);
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    };
    let bad_requests: Vec<(Vec<u8>, ErrorCode)> = vec![
        (terabyte, ErrorCode::MalformedFrame),
        (frame(&batch(900, vec![session(1, 1.0), nan])), ErrorCode::InvalidBatch),
        (frame(&batch(901, vec![inf])), ErrorCode::InvalidBatch),
        (frame(&batch(902, vec![unknown])), ErrorCode::InvalidBatch),
        (frame(&batch(903, vec![long])), ErrorCode::InvalidBatch),
        (frame(&batch(904, vec![too_many_turns])), ErrorCode::InvalidBatch),
        (frame(&batch(905, vec![])), ErrorCode::InvalidBatch),
        (vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01], ErrorCode::MalformedFrame),
        ((u32::MAX).to_be_bytes().iter().copied().chain([Kind::UploadBatch.tag()]).collect(), ErrorCode::FrameTooLarge),
        (frame(&Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: TOKEN.into(), world: None })), ErrorCode::UnexpectedMessage),
        (frame(&batch(906, vec![session(1, 1.0)]))[..20].to_vec(), ErrorCode::MalformedFrame),
    ];
    let agent = client(addr, &cert).await;
    for (bytes, code) in bad_requests {
        let reply = send_raw(&agent.conn, &bytes).await;
        assert_eq!(reply.error_code(), Some(code), "{reply:?}");
        check_good_still_served(&good).await;
    }
    // The refused agent's connection still works.
    assert_eq!(expect_ack(&agent.request(&batch(5000, vec![session(9, 1.0)])).await).stored, 1);
    good_sessions.push(session(9, 1.0));

    server.stop().await.unwrap();
    let mut all = stored(dir.path());
    let mut want = good_sessions.clone();
    let key = |s: &irec_protocol::experience::ExperienceSession| s.turns[0].shown;
    all.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(all, want, "only the good sessions were stored");
}

#[tokio::test]
async fn a_slow_or_silent_peer_does_not_block_others_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.request_timeout_ms = 300;
    cfg.hello_timeout_ms = 300;
    let server = start(cfg, Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    // Half a frame, then silence.
    let slow = client(addr, &cert).await;
    let (mut send, mut recv) = slow.conn.open_bi().await.unwrap();
    let f = frame(&batch(1, vec![session(1, 1.0)]));
    send.write_all(&f[..f.len() / 2]).await.unwrap();
    // Meanwhile another agent is served at once.
    let good = client(addr, &cert).await;
    assert_eq!(expect_ack(&good.request(&batch(2, vec![session(2, 1.0)])).await).stored, 1);
    assert_eq!(read_reply(&mut recv).await.error_code(), Some(ErrorCode::Timeout));
    // A peer that never says hello is dropped.
    let silent = connect(addr, &cert).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.closed()).await.unwrap();
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == ErrorCode::Timeout.code() as u64));
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()).len(), 1);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_connections = 1;
    let server = start(cfg, Arc::new(NoTrainer)).await;
    let first = client(server.addr(), &server.cert()).await;
    let second = connect(server.addr(), &server.cert()).await;
    let code = match second {
        Ok(conn) => match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap() {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("unexpected close {other}"),
        },
        Err(irec_testkit::KitError::Connection(quinn::ConnectionError::ApplicationClosed(c))) => c.error_code.into_inner(),
        Err(other) => panic!("unexpected error {other}"),
    };
    assert_eq!(ErrorCode::from_code(code), Some(ErrorCode::TooManyConnections));
    assert_eq!(expect_ack(&first.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_pinning_another_certificate_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    // A second server's certificate: right format, wrong key.
    let (cert, _) = irec_server::tls::load_or_create(other.path(), &["irec-server".to_string()]).unwrap();
    assert_ne!(std::fs::read(server.cert()).unwrap(), cert.as_ref());
    let err = connect(server.addr(), &other.path().join("cert.der")).await.unwrap_err();
    assert!(matches!(err, irec_testkit::KitError::Connection(quinn::ConnectionError::TransportError(_))), "{err}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_between_uploads_loses_nothing_and_still_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let first = vec![session(1, 1.0), session(2, 1.0)];
    let cert_before;
    {
        let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
        cert_before = std::fs::read(server.cert()).unwrap();
        let c = client(server.addr(), &server.cert()).await;
        assert_eq!(expect_ack(&c.request(&batch(1, first.clone())).await).stored, 2);
        server.stop().await.unwrap();
    }
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    assert_eq!(std::fs::read(server.cert()).unwrap(), cert_before, "the certificate is kept");
    assert_eq!(server.handle.status().counters.sessions_total, 2);
    let c = client(server.addr(), &server.cert()).await;
    assert!(expect_ack(&c.request(&batch(1, first.clone())).await).duplicate, "dedupe survives restarts");
    assert_eq!(expect_ack(&c.request(&batch(2, vec![session(5, 1.0)])).await).stored, 1);
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()), [first, vec![session(5, 1.0)]].concat());
}
