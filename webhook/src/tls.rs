//! TLS termination with tokio-rustls and a certificate resolver that reloads the certificate and
//! key when their files change (the operator or cert-manager rotates the Secret; the kubelet
//! updates the mounted files). No restart needed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls::{
    self, server::ClientHello, server::ResolvesServerCert, sign::CertifiedKey,
};

/// Errors loading a certificate/key pair.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// File unreadable.
    #[error("reading {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No certificate / key in the PEM.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the key or config.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Load a PEM certificate chain and private key into a rustls `CertifiedKey`.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    certified_key_from_pem(&cert_pem, &key_pem)
}

/// Build a `CertifiedKey` from PEM bytes.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Pem(format!("key PEM: {e}")))?
        .ok_or_else(|| TlsError::Pem("no private key in PEM".into()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(certs, signing))
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// Serves the certificate in `cert`/`key`, reloading it when either file's mtime changes
/// (checked at most every `interval`). A reload that fails keeps the previous certificate.
#[derive(Debug)]
pub struct ReloadingResolver {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    state: Mutex<Loaded>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ReloadingResolver {
    /// Load now (fails if the files are unusable) and watch the files afterwards.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let loaded = Loaded {
            key: Arc::new(load_certified_key(&cert, &key)?),
            stamp: (mtime(&cert), mtime(&key)),
            checked: Instant::now(),
        };
        Ok(Self {
            cert,
            key,
            interval,
            state: Mutex::new(loaded),
        })
    }

    /// The current key, reloading first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.interval {
            st.checked = Instant::now();
            let stamp = (mtime(&self.cert), mtime(&self.key));
            if stamp != st.stamp {
                match load_certified_key(&self.cert, &self.key) {
                    Ok(k) => {
                        st.key = Arc::new(k);
                        st.stamp = stamp;
                        tracing::info!(cert = %self.cert.display(), "reloaded serving certificate");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate files changed but do not load; keeping the previous one")
                    }
                }
            }
        }
        st.key.clone()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server config (ring provider, TLS 1.2/1.3, HTTP/1.1 ALPN) using `resolver`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
