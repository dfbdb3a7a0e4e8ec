//! HTTP routes (warp) and the TLS accept loop (tokio-rustls + hyper), since warp 0.4 has no TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use warp::http::StatusCode;
use warp::Filter;

use crate::admission::{self, Config, Snapshot};
use crate::metrics::Metrics;
use crate::review::{Answer, NotJson};

/// Where the handlers get their view of the cluster.
pub trait SnapshotSource: Send + Sync + 'static {
    /// The current snapshot (cheap: an `Arc` clone).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// True once the caches have synced (`/readyz`).
    fn ready(&self) -> bool;
}

/// A fixed snapshot (tests, the local demo, benchmarks).
pub struct StaticSource(pub Arc<Snapshot>);

impl SnapshotSource for StaticSource {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.0.clone()
    }
    fn ready(&self) -> bool {
        true
    }
}

/// Shared state of the routes.
pub struct State {
    /// Snapshot source.
    pub source: Arc<dyn SnapshotSource>,
    /// Handler configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
}

/// Largest AdmissionReview body accepted (the apiserver's own limit is 3 MiB of object).
pub const MAX_BODY: u64 = 6 * 1024 * 1024;

fn reply(
    state: &State,
    endpoint: &str,
    result: Result<Answer, NotJson>,
    started: Instant,
) -> warp::reply::Response {
    use warp::Reply;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            state.metrics.observe(endpoint, r.outcome.as_str(), secs);
            if r.memo_hit {
                state.metrics.memo_hits.inc();
            }
            for d in &r.delivered {
                state.metrics.patched(d);
            }
            let mut resp = warp::reply::Response::new(r.body.into());
            resp.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            state.metrics.observe(endpoint, "bad_request", secs);
            warp::reply::with_status(e.to_string(), StatusCode::BAD_REQUEST).into_response()
        }
    }
}

/// The webhook's routes: POST `/mutate`, POST `/validate`, GET `/healthz`, `/readyz`, `/metrics`.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    use warp::Reply;
    let with_state = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    let mutate = warp::path!("mutate")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .map(|body: Bytes, s: Arc<State>| {
            let t = Instant::now();
            let snap = s.source.snapshot();
            let r = admission::mutate(&body, &snap, &s.config);
            reply(&s, "mutate", r, t)
        });
    let validate = warp::path!("validate")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .map(|body: Bytes, s: Arc<State>| {
            let t = Instant::now();
            let r = admission::validate(&body);
            reply(&s, "validate", r, t)
        });
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| "ok".into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_state.clone())
        .map(|s: Arc<State>| {
            if s.source.ready() {
                "ready".into_response()
            } else {
                warp::reply::with_status("policy cache not synced", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        });
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(with_state)
        .map(|s: Arc<State>| {
            warp::reply::with_header(
                s.metrics.encode(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .into_response()
        });
    mutate
        .or(validate)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .recover(|rej: warp::Rejection| async move {
            let (code, msg) = if rej.is_not_found() {
                (StatusCode::NOT_FOUND, "not found".to_string())
            } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
                (StatusCode::PAYLOAD_TOO_LARGE, "body too large".to_string())
            } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed".to_string(),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("{rej:?}"))
            };
            Ok::<_, Infallible>(warp::reply::with_status(msg, code).into_response())
        })
        .unify()
}

/// A no-op handler on the same stack (benchmark baseline): answers every POST with a constant
/// allowed AdmissionReview without parsing the body.
pub fn noop_routes(
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    use warp::Reply;
    const ALLOWED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;
    warp::post()
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .map(|_b: Bytes| {
            warp::reply::with_header(ALLOWED, "content-type", "application/json").into_response()
        })
        .recover(|_r: warp::Rejection| async {
            Ok::<_, Infallible>(
                warp::reply::with_status("bad", StatusCode::BAD_REQUEST).into_response(),
            )
        })
        .unify()
}

/// Serve `filter` over TLS on `listener` until `shutdown` resolves. Each connection: TLS
/// handshake (10 s limit), then HTTP/1.1 with keep-alive.
pub async fn serve_tls<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    filter: F,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let service = warp::service(filter);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
}
