//! The agent trusts exactly one certificate: the server's own `cert.der`, loaded from a file (the
//! pin). No system roots, TLS 1.3 only, ALPN `irec/2`.

use irec_protocol::ALPN;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the pinned certificate {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto setup: {0}")]
    Quic(String),
}

/// QUIC client settings that accept only the certificate at `cert_path`.
pub fn client_config(cert_path: &Path, keep_alive: Duration, idle_timeout: Duration) -> Result<quinn::ClientConfig, TlsError> {
    let der = std::fs::read(cert_path).map_err(|source| TlsError::Read { path: cert_path.into(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    let idle = quinn::IdleTimeout::try_from(idle_timeout).map_err(|e| TlsError::Quic(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    // The server opens no streams towards the agent: announcements ride the control stream.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}
