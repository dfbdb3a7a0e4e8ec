//! Prometheus metrics of the webhook.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric name the webhook exports (as they appear in the exposition, counters with
/// `_total`); tests check that alert rules only use these.
pub const METRIC_NAMES: &[&str] = &[
    "kubetune_webhook_requests_total",
    "kubetune_webhook_request_duration_seconds",
    "kubetune_webhook_patches_total",
    "kubetune_webhook_plan_memo_hits_total",
];

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
    /// `kubetune_webhook_plan_memo_hits_total`: `/mutate` answers reused from the snapshot's
    /// memo (a pod equal in every planner-relevant field was planned before, e.g. a replica).
    pub memo_hits: Counter,
    /// The counters of every known (endpoint, outcome), created up front: they are exported
    /// from the start (as 0) and a request does not build label strings to find its counter.
    known: Vec<(&'static str, &'static str, Counter)>,
    /// Same for the delivery kinds of `patches`.
    known_deliveries: Vec<(&'static str, Counter)>,
}

/// Delivery kinds known in advance.
const DELIVERIES: [&str; 2] = ["securityContext", "tuningCNI"];

/// Endpoints and outcomes known in advance.
const ENDPOINTS: [&str; 2] = ["mutate", "validate"];
const OUTCOMES: [&str; 7] = [
    "patched",
    "unchanged",
    "skipped",
    "malformed",
    "valid",
    "denied",
    "bad_request",
];

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
        let memo_hits = Counter::default();
        registry.register(
            "plan_memo_hits",
            "Admission answers reused for a pod equal to one planned before with the same policies",
            memo_hits.clone(),
        );
        let known = ENDPOINTS
            .iter()
            .flat_map(|e| OUTCOMES.iter().map(move |o| (*e, *o)))
            .map(|(endpoint, outcome)| {
                let c = requests
                    .get_or_create(&OutcomeLabels {
                        endpoint: endpoint.into(),
                        outcome: outcome.into(),
                    })
                    .clone();
                (endpoint, outcome, c)
            })
            .collect();
        let known_deliveries = DELIVERIES
            .iter()
            .map(|d| {
                let c = patches
                    .get_or_create(&DeliveryLabels {
                        delivery: (*d).into(),
                    })
                    .clone();
                (*d, c)
            })
            .collect();
        Self {
            known,
            known_deliveries,
            registry,
            requests,
            duration,
            patches,
            memo_hits,
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
        match self
            .known
            .iter()
            .find(|(e, o, _)| *e == endpoint && *o == outcome)
        {
            Some((_, _, c)) => {
                c.inc();
            }
            None => {
                self.requests
                    .get_or_create(&OutcomeLabels {
                        endpoint: endpoint.into(),
                        outcome: outcome.into(),
                    })
                    .inc();
            }
        }
        self.duration.observe(seconds);
    }
    /// Count one patched pod per delivery kind used.
    pub fn patched(&self, delivery: &str) {
        match self.known_deliveries.iter().find(|(d, _)| *d == delivery) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.patches
                    .get_or_create(&DeliveryLabels {
                        delivery: delivery.into(),
                    })
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_name_is_exported() {
        let m = Metrics::default();
        m.observe("mutate", "patched", 0.0001);
        m.patched("securityContext");
        m.memo_hits.inc();
        let t = m.encode();
        for name in METRIC_NAMES {
            assert!(
                t.lines().any(|l| l.starts_with(name)),
                "{name} not exported:\n{t}"
            );
        }
    }
}
