//! The real webhook server on loopback with a freshly generated CA and serving certificate, as
//! the apiserver would call it (AdmissionReview v1 over HTTPS).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{PodDecision, DECISION_ANNOTATION};
use kubetune_test_support::client;
use kubetune_webhook::admission::{Config, Snapshot};
use kubetune_webhook::metrics::Metrics;
use kubetune_webhook::server::{routes, serve_tls, State, StaticSource};
use kubetune_webhook::tls;
use serde_json::{json, Value};

/// Name the serving certificate is issued for (the in-cluster Service name).
pub const SERVER_NAME: &str = "kubetune-webhook.kubetune-system.svc";

/// Errors talking to the local webhook.
#[derive(Debug, thiserror::Error)]
pub enum LocalWebhookError {
    /// Certificate generation or TLS setup.
    #[error("tls: {0}")]
    Tls(String),
    /// Transport.
    #[error("request: {0}")]
    Client(#[from] client::ClientError),
    /// Bad answer.
    #[error("webhook answered {0}")]
    Answer(String),
    /// I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A running local webhook.
pub struct LocalWebhook {
    /// Listening address.
    pub addr: std::net::SocketAddr,
    ca_pem: Vec<u8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: std::path::PathBuf,
}

impl LocalWebhook {
    /// Generate a CA and a serving certificate (files in a temp dir, so reload works as in a
    /// cluster), and serve the real routes over TLS on 127.0.0.1.
    pub async fn start(snapshot: Snapshot) -> Result<Self, LocalWebhookError> {
        let tls_err = |e: rcgen::Error| LocalWebhookError::Tls(e.to_string());
        let dir = std::env::temp_dir().join(format!("kubetune-demo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubetune local CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(tls_err)?
            .signed_by(&key, &issuer)
            .map_err(tls_err)?;
        std::fs::write(dir.join("tls.crt"), cert.pem())?;
        std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
        let resolver = tls::ReloadingResolver::new(
            dir.join("tls.crt"),
            dir.join("tls.key"),
            Duration::from_secs(2),
        )
        .map_err(|e| LocalWebhookError::Tls(e.to_string()))?;
        let cfg = tls::server_config(Arc::new(resolver))
            .map_err(|e| LocalWebhookError::Tls(e.to_string()))?;
        let state = Arc::new(State {
            source: Arc::new(StaticSource(Arc::new(snapshot))),
            config: Config::new("kubetune-system", &[]),
            metrics: Metrics::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_tls(listener, cfg, routes(state), async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            ca_pem: ca_cert.pem().into_bytes(),
            stop: Some(tx),
            dir,
        })
    }

    /// One HTTPS request to the running webhook (`GET` when `body` is `None`, else `POST`):
    /// status and body.
    pub async fn request(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), LocalWebhookError> {
        let mut conn = client::connect(self.addr, SERVER_NAME, &self.ca_pem).await?;
        let (code, body) = match body {
            None => conn.get(path).await?,
            Some(b) => conn.post(path, b.into()).await?,
        };
        Ok((code, body.to_vec()))
    }

    /// Send a pod CREATE AdmissionReview; apply the returned JSONPatch like the apiserver does.
    /// Returns the stored pod and its decision (None when the webhook left it alone).
    pub async fn admit(&self, pod: &Pod) -> Result<(Pod, Option<PodDecision>), LocalWebhookError> {
        use base64::Engine;
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": format!("demo-{}", pod.metadata.name.as_deref().unwrap_or("pod")),
            "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod.metadata.namespace, "operation": "CREATE", "userInfo": {"username": "kubetune-demo"}, "object": pod, "dryRun": false}});
        let mut conn = client::connect(self.addr, SERVER_NAME, &self.ca_pem).await?;
        let (code, body) = conn.post("/mutate", review.to_string().into()).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| LocalWebhookError::Answer(format!("{code}: {e}")))?;
        if code != 200 || v["response"]["allowed"] != json!(true) {
            return Err(LocalWebhookError::Answer(format!("{code}: {v}")));
        }
        let mut doc =
            serde_json::to_value(pod).map_err(|e| LocalWebhookError::Answer(e.to_string()))?;
        if let Some(b64) = v["response"]["patch"].as_str() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| LocalWebhookError::Answer(e.to_string()))?;
            let patch: json_patch::Patch = serde_json::from_slice(&raw)
                .map_err(|e| LocalWebhookError::Answer(e.to_string()))?;
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| LocalWebhookError::Answer(e.to_string()))?;
        }
        let stored: Pod =
            serde_json::from_value(doc).map_err(|e| LocalWebhookError::Answer(e.to_string()))?;
        let decision = stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DECISION_ANNOTATION))
            .and_then(|s| PodDecision::parse(s).ok());
        Ok((stored, decision))
    }
}

impl Drop for LocalWebhook {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
