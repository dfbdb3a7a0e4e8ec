//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use kubetune_crds::policy::TuningPolicyStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use warp::Filter;

/// `error` label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind (see `Error::metric_label`).
    pub error: String,
}

/// Labels of the per-policy pod counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyPodsLabels {
    /// Policy namespace.
    pub namespace: String,
    /// Policy name.
    pub policy: String,
    /// `matched`, `applied`, `verified`, `overflowing`, `needs_restart` (the status counts).
    pub state: String,
}

/// Labels of the per-policy phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyPhaseLabels {
    /// Policy namespace.
    pub namespace: String,
    /// Policy name.
    pub policy: String,
    /// `status.phase` (the STATUS column), e.g. `Verified`, `StillOverflowing`.
    pub phase: String,
}

/// Pod-count states exported per policy, with the status field each one mirrors.
pub const POLICY_POD_STATES: [&str; 5] = [
    "matched",
    "applied",
    "verified",
    "overflowing",
    "needs_restart",
];

/// Every metric name the operator exports (as they appear in the exposition, counters with
/// `_total`); tests check that alert rules only use these.
pub const METRIC_NAMES: &[&str] = &[
    "kubetune_operator_reconciles_total",
    "kubetune_operator_reconcile_failures_total",
    "kubetune_operator_reconcile_duration_seconds",
    "kubetune_operator_policy_pods",
    "kubetune_operator_policy_phase",
];

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// `kubetune_operator_reconciles_total`.
    pub reconciles: Counter,
    /// `kubetune_operator_reconcile_failures_total{error}`.
    pub failures: Family<ErrorLabels, Counter>,
    /// `kubetune_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `kubetune_operator_policy_pods{namespace,policy,state}`: the status counts of every
    /// TuningPolicy (what `kubectl get tuningpolicies` shows, for dashboards and alerts).
    pub policy_pods: Family<PolicyPodsLabels, Gauge>,
    /// `kubetune_operator_policy_phase{namespace,policy,phase}`: 1 for each policy's current
    /// phase (only the current phase has a series).
    pub policy_phase: Family<PolicyPhaseLabels, Gauge>,
    /// Current phase per (namespace, policy), to drop the previous phase's series.
    phases: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
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
        let policy_pods = Family::<PolicyPodsLabels, Gauge>::default();
        let policy_phase = Family::<PolicyPhaseLabels, Gauge>::default();
        registry.register(
            "policy_pods",
            "Pods per TuningPolicy by state (the status counts)",
            policy_pods.clone(),
        );
        registry.register(
            "policy_phase",
            "Current phase of each TuningPolicy (1)",
            policy_phase.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            policy_pods,
            policy_phase,
            phases: Default::default(),
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
    /// Export one policy's status (counts and phase), replacing what was exported before.
    pub fn record_policy(&self, namespace: &str, policy: &str, status: &TuningPolicyStatus) {
        let counts = [
            status.matched_pods,
            status.applied_pods,
            status.verified_pods,
            status.overflowing_pods,
            status.needs_restart_pods,
        ];
        for (state, n) in POLICY_POD_STATES.iter().zip(counts) {
            self.policy_pods
                .get_or_create(&PolicyPodsLabels {
                    namespace: namespace.into(),
                    policy: policy.into(),
                    state: (*state).into(),
                })
                .set(n.into());
        }
        let phase = status.phase.clone().unwrap_or_default();
        let key = (namespace.to_string(), policy.to_string());
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = phases.get(&key).filter(|old| **old != phase) {
            self.policy_phase.remove(&PolicyPhaseLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                phase: old.clone(),
            });
        }
        self.policy_phase
            .get_or_create(&PolicyPhaseLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                phase: phase.clone(),
            })
            .set(1);
        phases.insert(key, phase);
    }

    /// Drop the series of policies that no longer exist (`live`: (namespace, name) of every
    /// TuningPolicy in the cache).
    pub fn retain_policies(&self, live: &std::collections::HashSet<(String, String)>) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<(String, String)> = phases
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (namespace, policy) in gone {
            if let Some(phase) = phases.remove(&(namespace.clone(), policy.clone())) {
                self.policy_phase.remove(&PolicyPhaseLabels {
                    namespace: namespace.clone(),
                    policy: policy.clone(),
                    phase,
                });
            }
            for state in POLICY_POD_STATES {
                self.policy_pods.remove(&PolicyPodsLabels {
                    namespace: namespace.clone(),
                    policy: policy.clone(),
                    state: state.into(),
                });
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: &str, matched: i32, verified: i32, overflowing: i32) -> TuningPolicyStatus {
        TuningPolicyStatus {
            phase: Some(phase.into()),
            matched_pods: matched,
            applied_pods: matched,
            verified_pods: verified,
            overflowing_pods: overflowing,
            ..Default::default()
        }
    }

    #[test]
    fn policy_status_is_exported_and_follows_changes() {
        let m = Metrics::default();
        m.record_policy("shop", "web", &status("StillOverflowing", 3, 0, 2));
        let t = m.encode();
        for line in [
            r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="matched"} 3"#,
            r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="overflowing"} 2"#,
            r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="needs_restart"} 0"#,
            r#"kubetune_operator_policy_phase{namespace="shop",policy="web",phase="StillOverflowing"} 1"#,
        ] {
            assert!(t.contains(line), "{line} missing in\n{t}");
        }
        // The phase moves on: only the current phase has a series.
        m.record_policy("shop", "web", &status("Verified", 3, 3, 0));
        let t = m.encode();
        assert!(t.contains(
            r#"kubetune_operator_policy_phase{namespace="shop",policy="web",phase="Verified"} 1"#
        ));
        assert!(!t.contains("StillOverflowing"), "{t}");
        assert!(t.contains(
            r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="verified"} 3"#
        ));
        // Another policy; then "web" is deleted.
        m.record_policy("shop", "api", &status("NotSysctlBound", 1, 0, 1));
        m.retain_policies(&[("shop".to_string(), "api".to_string())].into());
        let t = m.encode();
        assert!(!t.contains(r#"policy="web""#), "{t}");
        assert!(t.contains(
            r#"kubetune_operator_policy_phase{namespace="shop",policy="api",phase="NotSysctlBound"} 1"#
        ));
    }

    #[test]
    fn every_listed_metric_name_is_exported() {
        let m = Metrics::default();
        m.observe(0.01);
        m.failure("kube");
        m.record_policy("shop", "web", &status("Verified", 1, 1, 0));
        let t = m.encode();
        for name in METRIC_NAMES {
            assert!(
                t.lines().any(|l| l.starts_with(name)),
                "{name} not exported:\n{t}"
            );
        }
    }
}
