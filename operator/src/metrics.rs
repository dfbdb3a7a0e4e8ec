//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use warp::Filter;

/// `error` label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind (see `Error::metric_label`).
    pub error: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// `kubetune_operator_reconciles_total`.
    pub reconciles: Counter,
    /// `kubetune_operator_reconcile_failures_total{error}`.
    pub failures: Family<ErrorLabels, Counter>,
    /// `kubetune_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubetune_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "reconciles",
            "TuningPolicy and ListenerReport reconciliations",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciliations by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
    /// Count one reconciliation and its duration.
    pub fn observe(&self, seconds: f64) {
        self.reconciles.inc();
        self.duration.observe(seconds);
    }
    /// Count one failure.
    pub fn failure(&self, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.to_string(),
            })
            .inc();
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    let m = metrics.clone();
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            m.encode(),
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    });
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| String::from("ok"));
    warp::serve(metrics_route.or(health))
        .incoming(listener)
        .run()
        .await;
    Ok(())
}
