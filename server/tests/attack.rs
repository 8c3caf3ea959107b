//! R5, the attacks `ingest.rs` does not already make: empty streams, megabyte strings, a client
//! without the protocol's ALPN, the same batch raced on many streams, a reused batch id with other
//! content, a crowd of slow streams, and uploads hostile in every field the server checks.
//! Each refusal must carry a clear code, store nothing, and leave other agents served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use irec_learn::round::NoTrainer;
use irec_protocol::experience::ExperienceSession;
use irec_protocol::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Found by the live fuzzer (R3): a stream finished without a byte got no answer, and as the
/// hello stream the connection was dropped with code 0 — no reason given.
#[tokio::test]
async fn an_empty_stream_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    let conn = connect(addr, &cert).await.unwrap();
    let reply = send_raw(&conn, &[]).await;
    assert_eq!(reply.error_code(), Some(ErrorCode::MalformedFrame), "{reply:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == ErrorCode::MalformedFrame.code() as u64));
    let agent = client(addr, &cert).await;
    let reply = send_raw(&agent.conn, &[]).await;
    assert_eq!(reply.error_code(), Some(ErrorCode::MalformedFrame), "{reply:?}");
    assert_eq!(expect_ack(&agent.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1, "the connection lives on");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn megabyte_strings_are_refused_before_or_at_validation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    // A megabyte token: over the hello's 16 KiB cap, refused from the header.
    let conn = connect(addr, &cert).await.unwrap();
    let big_hello = encode(
        &Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, fleet_token: "t".repeat(1 << 20), world: None }),
        &FrameLimits { small_bytes: u32::MAX, ..FrameLimits::default() },
    )
    .unwrap();
    assert_eq!(send_raw(&conn, &big_hello).await.error_code(), Some(ErrorCode::FrameTooLarge));
    let agent = client(addr, &cert).await;
    // A megabyte utterance fits the 4 MiB upload cap and is refused by validation.
    let mut s = session(3, 1.0);
    s.turns[0].utterance = "é".repeat(1 << 19);
    let r = agent.request(&batch(1, vec![s.clone()])).await;
    assert_eq!(r.error_code(), Some(ErrorCode::InvalidBatch), "{r:?}");
    if let Answer::Message(Message::Error(e)) = &r {
        assert!(e.message.contains("utterance"), "the error says what was wrong: {}", e.message);
    }
    // Five megabytes: over the upload cap.
    s.turns[0].utterance = "x".repeat(5 << 20);
    let big = encode(&batch(2, vec![s]), &FrameLimits { upload_bytes: u32::MAX, ..FrameLimits::default() }).unwrap();
    assert_eq!(send_raw(&agent.conn, &big).await.error_code(), Some(ErrorCode::FrameTooLarge));
    assert_eq!(expect_ack(&agent.request(&batch(3, vec![session(1, 1.0)])).await).stored, 1);
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()).len(), 1);
}

#[tokio::test]
async fn hostile_uploads_are_refused_with_the_field_named_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let agent = client(server.addr(), &server.cert()).await;
    let with = |f: &dyn Fn(&mut ExperienceSession)| {
        let mut s = session(3, 1.0);
        f(&mut s);
        s
    };
    let cases: Vec<(&str, Vec<ExperienceSession>)> = vec![
        ("reward", vec![with(&|s| s.turns[0].reward = f32::NEG_INFINITY)]),
        ("reward", vec![with(&|s| s.turns[1].reward = 1e30)]),
        ("reward", vec![with(&|s| s.turns[1].reward = -10.5)]),
        ("reward", vec![with(&|s| s.turns[1].reward = f32::from_bits(0x7fc0_0001))]),
        ("item", vec![with(&|s| s.turns[0].shown = u32::MAX)]),
        ("action slot", vec![with(&|s| s.turns[0].action.0[2] = 200)]),
        ("done", vec![with(&|s| s.turns[0].done = true)]),
        ("done", vec![with(&|s| s.turns[1].done = false)]),
        ("empty session", vec![with(&|s| s.turns.clear())]),
        ("cap", vec![session(1, 1.0); 1025]),
        // One bad session among good ones refuses the whole batch.
        ("session 2", vec![session(1, 1.0), session(2, 1.0), with(&|s| s.turns[1].reward = f32::NAN)]),
    ];
    for (i, (what, sessions)) in cases.into_iter().enumerate() {
        let r = agent.request(&batch(100 + i as u128, sessions)).await;
        match &r {
            Answer::Message(Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidBatch);
                assert!(e.message.contains(what), "case {i}: {:?} should name {what}", e.message);
            }
            other => panic!("case {i} ({what}): expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(expect_ack(&agent.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()).len(), 1, "nothing of a refused batch is stored");
}

#[tokio::test]
async fn a_client_without_the_protocols_alpn_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let der = std::fs::read(server.cert()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
    // The previous version's ALPN is as foreign as another protocol's.
    for alpn in [vec![], vec![b"irec/1".to_vec()], vec![b"irec/3".to_vec()], vec![b"h3".to_vec()]] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = alpn.clone();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let result = endpoint.connect_with(quinn::ClientConfig::new(Arc::new(crypto)), server.addr(), "irec-server").unwrap().await;
        assert!(result.is_err(), "ALPN {alpn:?} must not connect");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_raced_on_many_streams_and_connections_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let sessions = vec![session(1, 1.0), session(2, 0.5), session(3, -1.0)];
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Arc::new(client(server.addr(), &server.cert()).await));
    }
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = clients[i % clients.len()].clone();
        let b = batch(42, sessions.clone());
        tasks.push(tokio::spawn(async move { expect_ack(&c.request(&b).await) }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 1, "exactly one upload stored it");
    assert_eq!(acks.iter().map(|a| a.stored).sum::<u32>(), 3);
    // The same id with other content is a replay as far as the server is concerned: nothing
    // more is stored (ids are 128 random bits; only a broken or hostile agent reuses one).
    let other = expect_ack(&clients[0].request(&batch(42, vec![session(9, 1.0)])).await);
    assert!(other.duplicate && other.stored == 0);
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()), sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_slow_streams_and_silent_connections_does_not_block_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.request_timeout_ms = 1_500;
    cfg.hello_timeout_ms = 1_500;
    let server = start(cfg, Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    // One agent holds as many half-sent uploads as the server lets it open.
    let slow = client(addr, &cert).await;
    let f = frame(&batch(7, vec![session(1, 1.0)]));
    let mut held = Vec::new();
    for _ in 0..60 {
        let (mut send, recv) = slow.conn.open_bi().await.unwrap();
        send.write_all(&f[..f.len() - 3]).await.unwrap();
        held.push((send, recv));
    }
    // Others connect and never say hello.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect(addr, &cert).await.unwrap());
    }
    // A well-behaved agent is served at once, again and again.
    let good = client(addr, &cert).await;
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(expect_ack(&good.request(&batch(100 + i, vec![session(i as u32, 1.0)])).await).stored, 1);
        assert!(t.elapsed() < Duration::from_millis(1_000), "an upload waited {:?} behind slow peers", t.elapsed());
    }
    // The slow streams are refused with Timeout, the silent peers dropped; nothing of theirs stored.
    for (_, recv) in held.iter_mut().take(5) {
        assert_eq!(read_reply(recv).await.error_code(), Some(ErrorCode::Timeout));
    }
    for c in &silent {
        let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await.unwrap();
        assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == ErrorCode::Timeout.code() as u64));
    }
    server.stop().await.unwrap();
    assert_eq!(stored(dir.path()).len(), 20);
}

#[tokio::test]
async fn hellos_with_every_kind_of_wrong_version_or_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(NoTrainer)).await;
    let (addr, cert) = (server.addr(), server.cert());
    let hello_of = |v: u32, t: &str| frame(&Message::Hello(Hello { protocol_version: v, fleet_token: t.into(), world: None }));
    let cases = vec![
        (hello_of(0, TOKEN), ErrorCode::UnsupportedVersion),
        (hello_of(u32::MAX, TOKEN), ErrorCode::UnsupportedVersion),
        (hello_of(PROTOCOL_VERSION, &format!("{TOKEN}x")), ErrorCode::Unauthorized),
        (hello_of(PROTOCOL_VERSION, &TOKEN.to_uppercase()), ErrorCode::Unauthorized),
        (hello_of(PROTOCOL_VERSION, &TOKEN[..TOKEN.len() - 1]), ErrorCode::Unauthorized),
        (hello_of(PROTOCOL_VERSION, &"a".repeat(300)), ErrorCode::Unauthorized),
        // Frames an agent never sends, as a first frame.
        (frame(&Message::Ack(Ack { batch_id: BatchId(1), stored: 1, duplicate: false })), ErrorCode::MalformedFrame),
        (vec![0, 0, 0, 0, 1], ErrorCode::MalformedFrame),
        (vec![0, 0, 0, 2, 99, 0], ErrorCode::MalformedFrame),
    ];
    for (bytes, code) in cases {
        let conn = connect(addr, &cert).await.unwrap();
        let reply = send_raw(&conn, &bytes).await;
        assert_eq!(reply.error_code(), Some(code), "{reply:?}");
    }
    server.stop().await.unwrap();
    assert!(stored(dir.path()).is_empty());
}

/// Found by R5: quinn let a connection send without limit and the server read every stream into
/// its decoder, so sixty half-sent 4 MiB uploads on each of two connections pinned half a
/// gigabyte. Bounded flow control and a byte budget (per connection and server-wide) keep it to
/// tens of megabytes, and the stalled uploads do not keep a well-behaved agent waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_maximal_uploads_pin_bounded_memory_and_block_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, path) = process_config(dir.path());
    // The stalled uploads stay stalled (not timed out) while the good agent uploads.
    cfg.request_timeout_ms = 30_000;
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut server = start_process(&path, &cfg.data_dir);
    let (addr, cert) = (cfg.listen, cfg.data_dir.join(irec_server::tls::CERT_FILE));
    let before = peak_rss_kib(server.pid());
    // A frame announcing the largest upload, all but its last byte sent, then silence.
    let mut f = ((cfg.frames.upload_bytes + 1).to_be_bytes()).to_vec();
    f.push(Kind::UploadBatch.tag());
    f.resize(f.len() + cfg.frames.upload_bytes as usize - 1, 7);
    let f = Arc::new(f);
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let c = client(addr, &cert).await;
        for _ in 0..60 {
            let (mut send, recv) = c.conn.open_bi().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let _ = send.write_all(&f).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop((send, recv));
            });
        }
        attackers.push(c);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let good = client(addr, &cert).await;
    let t = Instant::now();
    assert_eq!(expect_ack(&good.request(&batch(1, vec![session(1, 1.0)])).await).stored, 1);
    assert!(t.elapsed() < Duration::from_secs(2), "a good upload waited {:?}", t.elapsed());
    let grown_mib = (peak_rss_kib(server.pid()) - before) / 1024;
    server.kill();
    assert!(grown_mib < 128, "stalled uploads pinned {grown_mib} MiB of server memory");
}
