//! A minimal HTTPS/1.1 keep-alive client trusting one CA: how the tests, the benchmark and the
//! local demo talk to the real webhook server.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls::{self, pki_types::ServerName, RootCertStore};
use tokio_rustls::TlsConnector;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// I/O or TLS.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// Bad CA / name.
    #[error("tls setup: {0}")]
    Setup(String),
}

/// One kept-alive HTTPS connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// The certificate the server presented (DER), to observe reloads.
    pub peer_cert: Vec<u8>,
}

/// Connect to `addr`, verifying the server as `server_name` against `ca_pem`.
pub async fn connect(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_pem: &[u8],
) -> Result<Connection, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c?)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Setup(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection {
        sender,
        host: server_name.to_string(),
        peer_cert,
    })
}

impl Connection {
    /// POST `body` to `path`; returns status and body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes), ClientError> {
        self.request("POST", path, body).await
    }
    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), ClientError> {
        self.request("GET", path, Bytes::new()).await
    }
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), ClientError> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
