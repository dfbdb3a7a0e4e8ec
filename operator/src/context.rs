//! What the reconcilers share: the Kubernetes client, the event recorder, the reflector
//! stores, the cluster facts, metrics, the clock, the NetworkAttachmentDefinition state and
//! the per-object failure counts behind the error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use kubetune_crds::facts::{ClusterFacts, PodContext};
use kubetune_crds::limits;
use kubetune_crds::podsec;
use kubetune_crds::policy::{TuningPolicy, TuningPolicyStatus, OPERATOR_FIELD_MANAGER};
use kubetune_crds::report::ListenerReport;
use tracing::warn;

use crate::events::{transition_events, Severity};
use crate::guard::GuardState;
use crate::metrics::Metrics;
use crate::nad::NadState;
use crate::status::Environment;

/// Reconciler errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API error.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no name or namespace.
    #[error("object has no {0}")]
    MissingKey(&'static str),
}

impl Error {
    /// Short label for `kubetune_operator_reconcile_failures_total{error}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::MissingKey(_) => "missing_key",
        }
    }
}

/// Clock used by the reconcilers (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The reflector stores the reconcilers read.
#[derive(Clone)]
pub struct Stores {
    /// TuningPolicies.
    pub policies: Store<TuningPolicy>,
    /// Pods.
    pub pods: Store<Pod>,
    /// ListenerReports.
    pub reports: Store<ListenerReport>,
    /// Namespaces (PodSecurity labels).
    pub namespaces: Store<Namespace>,
    /// The node agents' heartbeat Leases (in the operator's namespace).
    pub leases: Store<Lease>,
}

/// Shared state of the reconcilers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (events.k8s.io/v1).
    pub recorder: Recorder,
    /// The stores.
    pub stores: Stores,
    /// Current cluster facts.
    pub facts: Arc<RwLock<ClusterFacts>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub now: Clock,
    /// NetworkAttachmentDefinition discovery cache and last applies.
    pub(crate) nad: NadState,
    /// What the SysctlForbidden guard already recorded and evented.
    pub(crate) guard: GuardState,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Workload stores and restart bookkeeping of `restartPods: Rollout` (none: never restart).
    pub rollouts: Option<Arc<crate::restarts::Rollouts>>,
}

impl Context {
    /// A context over the given stores.
    pub fn new(
        client: Client,
        stores: Stores,
        facts: Arc<RwLock<ClusterFacts>>,
        metrics: Arc<Metrics>,
        now: Clock,
    ) -> Self {
        let reporter = Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            stores,
            facts,
            metrics,
            now,
            nad: NadState::default(),
            guard: GuardState::default(),
            failures: Mutex::new(HashMap::new()),
            rollouts: None,
        }
    }

    /// True once every store has completed its initial list. Statuses computed earlier would
    /// be wrong (e.g. pods seen, reports not yet) and would flap conditions and events.
    pub(crate) async fn stores_ready(&self) -> bool {
        let s = &self.stores;
        synced(&s.policies).await
            && synced(&s.pods).await
            && synced(&s.reports).await
            && synced(&s.namespaces).await
            && synced(&s.leases).await
    }

    pub(crate) fn facts(&self) -> ClusterFacts {
        self.facts.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// The namespace's PodSecurity context, when tuning CNI is enabled whether the NAD CRD is
    /// served, and the heartbeats of the agents of `nodes` (the nodes of the namespace's pods).
    /// `nad_write_error` is the caller's to fill.
    pub(crate) async fn environment<'a>(
        &self,
        ns: &str,
        facts: &ClusterFacts,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Environment {
        let ns_obj = self.stores.namespaces.get(&ObjectRef::new(ns));
        let tuning_cni_crd = facts.tuning_cni.is_none() || self.nad.crd_served(&self.client).await;
        let nodes: std::collections::BTreeSet<&str> = nodes.into_iter().collect();
        let leases = self.stores.leases.state();
        let agents =
            crate::coverage::heartbeats(leases.iter().map(AsRef::as_ref), |n| nodes.contains(n));
        Environment {
            namespace: namespace_context(ns_obj.as_deref()),
            tuning_cni_crd,
            nad_write_error: None,
            agents,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures();
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        backoff_for(*n)
    }

    pub(crate) fn done(&self, key: &str, started: Instant) {
        self.failures().remove(key);
        self.metrics.observe(started.elapsed().as_secs_f64());
    }

    /// The policy's status metrics; metrics of policies gone from the store are dropped.
    pub(crate) fn record_metrics(&self, ns: &str, name: &str, status: &TuningPolicyStatus) {
        self.metrics.record_policy(ns, name, status);
        let live = self
            .stores
            .policies
            .state()
            .iter()
            .filter_map(|p| Some((p.namespace()?, p.metadata.name.clone()?)))
            .collect();
        self.metrics.retain_policies(&live);
    }

    /// Events for the policy's condition transitions from its stored status to `new`.
    pub(crate) async fn publish_transitions(
        &self,
        policy: &TuningPolicy,
        new: &TuningPolicyStatus,
    ) {
        let reference = policy.object_ref(&());
        for ev in transition_events(policy.status.as_ref(), new) {
            let type_ = match ev.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            };
            let event = Event {
                type_,
                reason: ev.reason,
                note: Some(limits::event_note(ev.note)),
                action: "Reconcile".into(),
                secondary: None,
            };
            self.publish(event, &reference).await;
        }
    }

    pub(crate) async fn publish(&self, event: Event, on: &ObjectReference) {
        if let Err(e) = self.recorder.publish(&event, on).await {
            warn!(error = %e, reason = %event.reason, "publishing event failed");
        }
    }
}

/// Has `store` completed its initial list? (never blocks for more than 10 ms)
async fn synced<K>(store: &Store<K>) -> bool
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::time::timeout(Duration::from_millis(10), store.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Exponential backoff after `failures` consecutive failures: 5 s, 10 s, 20 s, ... capped at 5 min.
pub fn backoff_for(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(300))
}

/// The PodSecurity delivery context of a namespace (unknown level = `restricted`, fail safe).
pub fn namespace_context(ns: Option<&Namespace>) -> PodContext {
    PodContext {
        pod_security: ns
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(podsec::enforced),
        ..Default::default()
    }
}
