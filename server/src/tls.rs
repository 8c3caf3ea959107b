//! The server's identity: a self-signed certificate made on first start and kept in the data dir
//! (DER files), and the QUIC endpoint settings built around it. Agents pin the certificate by
//! loading `cert.der` as their only trust root.

use irec_protocol::ALPN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The name agents use to connect unless told otherwise (it is in every certificate we make).
pub const DEFAULT_SERVER_NAME: &str = "irec-server";

/// Certificate file inside the data dir: the file agents pin.
pub const CERT_FILE: &str = "cert.der";
/// Private key file inside the data dir (PKCS#8 DER; keep it private).
pub const KEY_FILE: &str = "key.der";
/// The QUIC stateless-reset key inside the data dir (64 random bytes; keep it private).
pub const RESET_KEY_FILE: &str = "reset.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto setup: {0}")]
    Quic(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// The certificate and key in `dir`, created there if absent.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        let made = rcgen::generate_simple_self_signed(names.to_vec())?;
        // The key first: a crash in between leaves no certificate, so the next start makes both.
        write_private(&key_path, &made.signing_key.serialize_der())?;
        write_atomic(&cert_path, made.cert.der())?;
    }
    let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key = std::fs::read(&key_path).map_err(io(&key_path))?;
    Ok((CertificateDer::from(cert), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key))))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// The endpoint settings that survive a restart: the keys stateless-reset tokens and connection
/// ids derive from, made on first start and kept in the data dir.
///
/// A server that crashes and restarts has lost its connections; when an agent's next packet for
/// one arrives, the new process recognises the connection id as one of its own making and
/// answers with a QUIC stateless reset, and the agent drops the connection and reconnects at
/// once. That needs both keys to match the old process's. With quinn's defaults (fresh random
/// keys per process) the new process dropped such packets, and agents kept sending into dead
/// connections until their idle timeout, 30 s, after every server crash (found by R2).
pub fn endpoint_config(dir: &Path) -> Result<quinn::EndpointConfig, TlsError> {
    let path = dir.join(RESET_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) if b.len() == 64 => b,
        // Missing, or cut short by a crash while it was first written: make a new one (no agent
        // can hold a token from a key that never finished being written).
        Ok(_) | Err(_) => {
            let mut fresh = [0u8; 64];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                .map_err(|_| TlsError::Quic("no randomness for the reset key".to_string()))?;
            write_private(&path, &fresh)?;
            fresh.to_vec()
        }
    };
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)));
    // The connection-id key: a separate value derived from the same secret.
    let digest = ring::digest::digest(&ring::digest::SHA256, &[b"irec connection ids".as_slice(), &bytes].concat());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&digest.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

/// The ring provider, explicitly: no process-wide default is assumed (and aws-lc is not built).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC server settings: TLS 1.3, ALPN `irec/2`, the idle timeout, generous stream limits.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    idle_timeout: Duration,
    receive_window: u64,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout).map_err(|e| TlsError::Quic(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    // Agents never open unidirectional streams; bidi streams are one per request.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(64u8.into());
    // Bounded flow control: quinn buffers what a peer sent until the server reads it, and by
    // default lets a connection send without limit — sixty half-sent 4 MiB uploads on each of
    // two connections pinned half a gigabyte (found by R5). The stream window cannot exceed it.
    let window = quinn::VarInt::from_u64(receive_window).map_err(|e| TlsError::Quic(e.to_string()))?;
    transport.receive_window(window);
    transport.stream_receive_window(window);
    config.transport_config(Arc::new(transport));
    Ok(config)
}
