//! Prometheus metrics of the webhook.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Endpoint: `mutate` or `validate`.
    pub endpoint: String,
    /// patched, unchanged, skipped, malformed, valid, denied, bad_request.
    pub outcome: String,
}

/// `delivery` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `securityContext` or `tuningCNI`.
    pub delivery: String,
}

/// The webhook's metrics.
pub struct Metrics {
    registry: Registry,
    /// `kubetune_webhook_requests_total{endpoint,outcome}`.
    pub requests: Family<OutcomeLabels, Counter>,
    /// `kubetune_webhook_request_duration_seconds` (handler time, excluding TLS and HTTP).
    pub duration: Histogram,
    /// `kubetune_webhook_patches_total{delivery}`.
    pub patches: Family<DeliveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubetune_webhook");
        let requests = Family::<OutcomeLabels, Counter>::default();
        let duration = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
        ]);
        let patches = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "requests",
            "Admission requests by endpoint and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time spent deciding one admission request",
            duration.clone(),
        );
        registry.register("patches", "Pods patched, by delivery kind", patches.clone());
        Self {
            registry,
            requests,
            duration,
            patches,
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
    /// Count one request.
    pub fn observe(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabels {
                endpoint: endpoint.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.duration.observe(seconds);
    }
}
