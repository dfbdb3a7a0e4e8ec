//! The TuningPolicy and ListenerReport reconcilers (kube-runtime, controller-rs shape).
//!
//! * One reflector per kind (TuningPolicies, Pods, ListenerReports, Namespaces, the facts
//!   ConfigMap) fills the in-memory stores the pure functions read. A router task per kind maps
//!   each change to the objects to reconcile: a pod or report change to the policies of its
//!   namespace that select the pod (or named it in its admission record) and to its report; a
//!   policy change to itself and the reports of its namespace; a namespace change to its
//!   policies; a facts change to every policy.
//! * [`reconcile`] computes `TuningPolicy.status` with [`crate::status::evaluate`] and writes it
//!   with server-side apply (field manager `kubetune-operator`, status subresource) when it
//!   changed, publishes transition events, and keeps the namespace's tuning-CNI
//!   NetworkAttachmentDefinition.
//! * [`reconcile_report`] writes `ListenerReport.status` (recommendation, selecting policies).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use kubetune_crds::facts::{ClusterFacts, PodContext, FACTS_CONFIGMAP, FACTS_KEY};
use kubetune_crds::policy::{TuningPolicy, OPERATOR_FIELD_MANAGER};
use kubetune_crds::report::{ListenerReport, ListenerReportStatus};
use kubetune_crds::selector;
use kubetune_crds::sysctl::{KubeVersion, PodSecurityLevel};
use serde_json::json;
use tracing::{info, instrument, warn, Span};

use crate::events::{transition_events, Severity};
use crate::metrics::Metrics;
use crate::nad;
use crate::recommend::recommend;
use crate::status::{evaluate, phase, pod_decision, Environment};

/// PodSecurity admission label.
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// PodSecurity enforce version label.
pub const PSA_ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";
/// Resync period: every policy is recomputed at least this often.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long a NAD-CRD discovery result is trusted.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60);

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

/// Shared state of the reconcilers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (events.k8s.io/v1).
    pub recorder: Recorder,
    /// TuningPolicies.
    pub policies: Store<TuningPolicy>,
    /// Pods.
    pub pods: Store<Pod>,
    /// ListenerReports.
    pub reports: Store<ListenerReport>,
    /// Namespaces (PodSecurity labels).
    pub namespaces: Store<Namespace>,
    /// Current cluster facts.
    pub facts: Arc<RwLock<ClusterFacts>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub now: Clock,
    /// Cached NAD CRD discovery: (when, served).
    nad_crd: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// Last NAD config applied per namespace (skip identical applies).
    nad_applied: Mutex<HashMap<String, serde_json::Value>>,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// The reflector stores the reconcilers read.
#[derive(Clone)]
pub struct Stores {
    /// TuningPolicies.
    pub policies: Store<TuningPolicy>,
    /// Pods.
    pub pods: Store<Pod>,
    /// ListenerReports.
    pub reports: Store<ListenerReport>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
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
        let Stores {
            policies,
            pods,
            reports,
            namespaces,
        } = stores;
        let reporter = Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            policies,
            pods,
            reports,
            namespaces,
            facts,
            metrics,
            now,
            nad_crd: tokio::sync::Mutex::new(None),
            nad_applied: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True once every store has completed its initial list. Statuses computed earlier would
    /// be wrong (e.g. pods seen, reports not yet) and would flap conditions and events.
    async fn stores_ready(&self) -> bool {
        synced(&self.policies).await
            && synced(&self.pods).await
            && synced(&self.reports).await
            && synced(&self.namespaces).await
    }

    fn facts(&self) -> ClusterFacts {
        self.facts.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Is the NetworkAttachmentDefinition CRD served? (cached for [`DISCOVERY_TTL`])
    async fn nad_crd_served(&self) -> bool {
        let mut guard = self.nad_crd.lock().await;
        if let Some((at, served)) = *guard {
            if at.elapsed() < DISCOVERY_TTL {
                return served;
            }
        }
        let served = match kube::discovery::pinned_kind(&self.client, &nad::nad_gvk()).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) not served");
                false
            }
        };
        *guard = Some((Instant::now(), served));
        served
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        backoff_for(*n)
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Has `store` completed its initial list? (never blocks for more than 10 ms)
async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
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
    let labels = ns.and_then(|n| n.metadata.labels.as_ref());
    let pod_security = labels.and_then(|l| {
        let level = l.get(PSA_ENFORCE)?;
        let level = PodSecurityLevel::parse(level).unwrap_or(PodSecurityLevel::Restricted);
        let version = l
            .get(PSA_ENFORCE_VERSION)
            .filter(|v| v.as_str() != "latest")
            .and_then(|v| KubeVersion::parse(v).ok())
            .unwrap_or(KubeVersion::LATEST);
        Some((level, version))
    });
    PodContext {
        pod_security,
        ..Default::default()
    }
}

fn key_of<K: Resource>(o: &K) -> String
where
    K::DynamicType: Default,
{
    format!(
        "{}/{}/{}",
        K::kind(&Default::default()),
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

/// Reconcile one TuningPolicy: status (SSA), events, tuning-CNI NAD.
#[instrument(skip(policy, ctx), fields(namespace, policy))]
pub async fn reconcile(policy: Arc<TuningPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingKey("namespace"))?;
    let name = policy
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingKey("name"))?;
    Span::current().record("namespace", ns.as_str());
    Span::current().record("policy", name.as_str());
    if !ctx.stores_ready().await {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let now = (ctx.now)();
    let facts = ctx.facts();
    let ns_obj = ctx.namespaces.get(&ObjectRef::new(&ns));
    let mut env = Environment {
        namespace: namespace_context(ns_obj.as_deref()),
        tuning_cni_crd: true,
    };
    if facts.tuning_cni.is_some() {
        env.tuning_cni_crd = ctx.nad_crd_served().await;
    }
    let pods = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
    let reports = ctx
        .reports
        .state_filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()));
    let eval = evaluate(
        &policy,
        pods.iter().map(|p| p.as_ref()),
        reports.iter().map(|r| r.as_ref()),
        &facts,
        &env,
        now,
    );

    ctx.metrics.record_policy(&ns, &name, &eval.status);
    ctx.metrics.retain_policies(
        &ctx.policies
            .state()
            .iter()
            .filter_map(|p| Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?)))
            .collect(),
    );
    if policy.status.as_ref() != Some(&eval.status) {
        let api: Api<TuningPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TuningPolicy",
            "status": eval.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        info!(
            phase = eval.status.phase.as_deref().unwrap_or_default(),
            matched = eval.status.matched_pods,
            applied = eval.status.applied_pods,
            verified = eval.status.verified_pods,
            "status updated"
        );
        let reference = policy.object_ref(&());
        for ev in transition_events(policy.status.as_ref(), &eval.status) {
            let event = Event {
                type_: match ev.severity {
                    Severity::Normal => EventType::Normal,
                    Severity::Warning => EventType::Warning,
                },
                reason: ev.reason,
                note: Some(truncate_note(ev.note)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                warn!(error = %e, "publishing event failed");
            }
        }
    }

    if facts.tuning_cni.is_some() && env.tuning_cni_crd {
        ensure_nad(&ctx, &ns, &facts, &env).await?;
    }

    ctx.reset_backoff(&key_of(policy.as_ref()));
    ctx.metrics.observe(started.elapsed().as_secs_f64());
    if eval.status.phase.as_deref() == Some(phase::INVALID) {
        return Ok(Action::await_change());
    }
    let requeue = eval
        .next_check
        .map(|t| {
            let secs = t.duration_since(now).as_secs_f64().max(1.0);
            Duration::from_secs_f64(secs + 1.0).min(RESYNC)
        })
        .unwrap_or(RESYNC);
    Ok(Action::requeue(requeue))
}

fn truncate_note(mut s: String) -> String {
    if s.len() > 1000 {
        let mut cut = 997;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Keep the namespace's NetworkAttachmentDefinition: applied (SSA) with every policy of the
/// namespace whose delivery resolves to tuning CNI as owner; deleted when none remains.
async fn ensure_nad(
    ctx: &Context,
    ns: &str,
    facts: &ClusterFacts,
    env: &Environment,
) -> Result<(), Error> {
    let Some(tc) = &facts.tuning_cni else {
        return Ok(());
    };
    let policies = ctx.policies.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && p.metadata.deletion_timestamp.is_none()
    });
    let owners: Vec<&TuningPolicy> = policies
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| {
            evaluate(
                p,
                std::iter::empty(),
                std::iter::empty(),
                facts,
                env,
                (ctx.now)(),
            )
            .uses_tuning_cni
        })
        .collect();
    let ar = nad::nad_api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    if owners.is_empty() {
        let had = ctx
            .nad_applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ns)
            .is_some();
        if had {
            if let Some(existing) = api.get_opt(&tc.network_name).await? {
                let ours = existing
                    .labels()
                    .get(nad::MANAGED_BY_LABEL)
                    .is_some_and(|v| v == nad::MANAGED_BY);
                if ours {
                    api.delete(&tc.network_name, &Default::default()).await?;
                    info!(namespace = ns, name = %tc.network_name, "deleted tuning-CNI NetworkAttachmentDefinition");
                }
            }
        }
        return Ok(());
    }
    let obj = nad::render_nad(ns, &tc.network_name, &owners);
    let value = serde_json::to_value(&obj).unwrap_or_default();
    let unchanged = ctx
        .nad_applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(ns)
        == Some(&value);
    if !unchanged {
        api.patch(
            &tc.network_name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?;
        info!(namespace = ns, name = %tc.network_name, owners = owners.len(), "applied tuning-CNI NetworkAttachmentDefinition");
        ctx.nad_applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string(), value);
    }
    Ok(())
}

/// Error policy: exponential backoff per object, failures counted by kind.
pub fn error_policy(policy: Arc<TuningPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, policy = %policy.name_any(), "reconcile failed");
    ctx.metrics.failure(error.metric_label());
    Action::requeue(ctx.backoff(&key_of(policy.as_ref())))
}

/// Names of the policies (same namespace, not being deleted) whose selector matches `pod`.
pub fn selecting_policies(policies: &[Arc<TuningPolicy>], pod: &Pod) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut out: Vec<String> = policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| selector::matches(&p.spec.pod_selector, labels))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// Reconcile one ListenerReport: `status.policies` and `status.recommendation` (SSA), and a
/// recommendation event on the pod when the recommendation appears or changes.
#[instrument(skip(report, ctx), fields(namespace, report))]
pub async fn reconcile_report(
    report: Arc<ListenerReport>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = report
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingKey("namespace"))?;
    let name = report
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingKey("name"))?;
    Span::current().record("namespace", ns.as_str());
    Span::current().record("report", name.as_str());
    if !ctx.stores_ready().await {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let pod = ctx.pods.get(&ObjectRef::new(&name).within(&ns));
    let Some(pod) = pod.filter(|p| crate::status::report_is_for(&report, p)) else {
        // The report outlives its pod only until garbage collection; nothing to say.
        return Ok(Action::await_change());
    };
    let policies = ctx
        .policies
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
    let selecting = selecting_policies(&policies, &pod);
    let rec = recommend(&pod, &report, &selecting);
    let new = ListenerReportStatus {
        recommendation: rec.as_ref().map(|r| r.yaml.clone()),
        policies: selecting,
    };
    let old = report.status.clone().unwrap_or_default();
    if old != new {
        let api: Api<ListenerReport> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "ListenerReport",
            "status": new,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        if let Some(r) = rec.filter(|_| old.recommendation != new.recommendation) {
            let event = Event {
                type_: EventType::Warning,
                reason: "SomaxconnBound".into(),
                note: Some(truncate_note(r.message)),
                action: "Recommend".into(),
                secondary: Some(report.object_ref(&())),
            };
            if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
                warn!(error = %e, "publishing recommendation event failed");
            }
        }
    }
    ctx.reset_backoff(&key_of(report.as_ref()));
    ctx.metrics.observe(started.elapsed().as_secs_f64());
    Ok(Action::await_change())
}

/// Error policy of the report reconciler.
pub fn error_policy_report(
    report: Arc<ListenerReport>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(error = %error, report = %report.name_any(), "report reconcile failed");
    ctx.metrics.failure(error.metric_label());
    Action::requeue(ctx.backoff(&key_of(report.as_ref())))
}

/// Policies to reconcile when `pod` changed: those of its namespace that select it, plus those
/// named in its admission record (covers label changes that made a policy stop selecting it).
pub fn policies_for_pod(policies: &[Arc<TuningPolicy>], pod: &Pod) -> Vec<ObjectRef<TuningPolicy>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut names = selecting_policies(policies, pod);
    if let Some(d) = pod_decision(pod) {
        names.extend(d.policies.into_iter().map(|p| p.name));
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

type Tx<K> = mpsc::UnboundedSender<ObjectRef<K>>;

struct Triggers {
    policies: Tx<TuningPolicy>,
    reports: Tx<ListenerReport>,
}

impl Triggers {
    fn all_policies(&self, ctx: &Context, ns: Option<&str>) {
        for p in ctx.policies.state() {
            if ns.is_none() || p.metadata.namespace.as_deref() == ns {
                let _ = self
                    .policies
                    .unbounded_send(ObjectRef::from_obj(p.as_ref()));
            }
        }
    }
    fn all_reports(&self, ctx: &Context, ns: Option<&str>) {
        for r in ctx.reports.state() {
            if ns.is_none() || r.metadata.namespace.as_deref() == ns {
                let _ = self.reports.unbounded_send(ObjectRef::from_obj(r.as_ref()));
            }
        }
    }
    fn for_pod(&self, ctx: &Context, pod: &Pod) {
        for r in policies_for_pod(&ctx.policies.state(), pod) {
            let _ = self.policies.unbounded_send(r);
        }
        if let (Some(n), Some(ns)) = (&pod.metadata.name, &pod.metadata.namespace) {
            let _ = self.reports.unbounded_send(ObjectRef::new(n).within(ns));
        }
    }
}

fn changed<K>(e: &watcher::Event<K>) -> Option<&K> {
    match e {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some(o),
        _ => None,
    }
}

/// Run the operator's controllers until shutdown.
pub async fn run(client: Client, namespace: String, metrics: Arc<Metrics>) {
    let wc = watcher::Config::default();
    let (policy_reader, policy_writer) = reflector::store::<TuningPolicy>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (report_reader, report_writer) = reflector::store::<ListenerReport>();
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let facts = Arc::new(RwLock::new(ClusterFacts::default()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Stores {
            policies: policy_reader.clone(),
            pods: pod_reader.clone(),
            reports: report_reader.clone(),
            namespaces: ns_reader,
        },
        facts.clone(),
        metrics,
        Arc::new(Timestamp::now),
    ));
    let (ptx, prx) = mpsc::unbounded::<ObjectRef<TuningPolicy>>();
    let (rtx, rrx) = mpsc::unbounded::<ObjectRef<ListenerReport>>();
    let triggers = Arc::new(Triggers {
        policies: ptx,
        reports: rtx,
    });

    let policy_stream = {
        let (t, c) = (triggers.clone(), ctx.clone());
        watcher(Api::<TuningPolicy>::all(client.clone()), wc.clone())
            .default_backoff()
            .reflect(policy_writer)
            .for_each(move |e| {
                match &e {
                    Ok(watcher::Event::InitDone) => {
                        t.all_policies(&c, None);
                        t.all_reports(&c, None);
                    }
                    Ok(ev) => {
                        if let Some(p) = changed(ev) {
                            let _ = t.policies.unbounded_send(ObjectRef::from_obj(p));
                            t.all_reports(&c, p.metadata.namespace.as_deref());
                        }
                    }
                    Err(err) => warn!(error = %err, "TuningPolicy watch error"),
                }
                futures::future::ready(())
            })
    };
    let pod_stream = {
        let (t, c) = (triggers.clone(), ctx.clone());
        watcher(Api::<Pod>::all(client.clone()), wc.clone())
            .default_backoff()
            .modify(slim_pod)
            .reflect(pod_writer)
            .for_each(move |e| {
                match &e {
                    Ok(watcher::Event::InitDone) => {
                        t.all_policies(&c, None);
                        t.all_reports(&c, None);
                    }
                    Ok(ev) => {
                        if let Some(p) = changed(ev) {
                            t.for_pod(&c, p);
                        }
                    }
                    Err(err) => warn!(error = %err, "Pod watch error"),
                }
                futures::future::ready(())
            })
    };
    let report_stream = {
        let (t, c) = (triggers.clone(), ctx.clone());
        watcher(Api::<ListenerReport>::all(client.clone()), wc.clone())
            .default_backoff()
            .reflect(report_writer)
            .for_each(move |e| {
                match &e {
                    Ok(watcher::Event::InitDone) => {
                        t.all_policies(&c, None);
                        t.all_reports(&c, None);
                    }
                    Ok(ev) => {
                        if let Some(r) = changed(ev) {
                            let _ = t.reports.unbounded_send(ObjectRef::from_obj(r));
                            let pod = c.pods.get(
                                &ObjectRef::new(&r.name_any())
                                    .within(r.metadata.namespace.as_deref().unwrap_or_default()),
                            );
                            if let Some(pod) = pod {
                                for p in policies_for_pod(&c.policies.state(), &pod) {
                                    let _ = t.policies.unbounded_send(p);
                                }
                            }
                        }
                    }
                    Err(err) => warn!(error = %err, "ListenerReport watch error"),
                }
                futures::future::ready(())
            })
    };
    let ns_stream = {
        let (t, c) = (triggers.clone(), ctx.clone());
        watcher(Api::<Namespace>::all(client.clone()), wc.clone())
            .default_backoff()
            .reflect(ns_writer)
            .for_each(move |e| {
                match &e {
                    Ok(ev) => {
                        if let Some(n) = changed(ev) {
                            t.all_policies(&c, n.metadata.name.as_deref());
                        }
                    }
                    Err(err) => warn!(error = %err, "Namespace watch error"),
                }
                futures::future::ready(())
            })
    };
    let facts_stream = {
        let (t, c) = (triggers.clone(), ctx.clone());
        let cfg = watcher::Config::default().fields(&format!("metadata.name={FACTS_CONFIGMAP}"));
        watcher(Api::<ConfigMap>::namespaced(client.clone(), &namespace), cfg)
            .default_backoff()
            .for_each(move |e| {
                let update = match &e {
                    Ok(watcher::Event::Apply(cm)) | Ok(watcher::Event::InitApply(cm)) => {
                        Some(parse_facts(Some(cm)))
                    }
                    Ok(watcher::Event::Delete(_)) => Some(parse_facts(None)),
                    Ok(_) => None,
                    Err(err) => {
                        warn!(error = %err, "facts ConfigMap watch error");
                        None
                    }
                };
                if let Some(f) = update {
                    let changed = c.facts.read().map(|old| *old != f).unwrap_or(true);
                    if changed {
                        info!(tuning_cni = f.tuning_cni.is_some(), version = %f.kubernetes_version, "cluster facts updated");
                        if let Ok(mut w) = facts.write() {
                            *w = f;
                        }
                        t.all_policies(&c, None);
                    }
                }
                futures::future::ready(())
            })
    };

    let cc = ControllerConfig::default()
        .debounce(Duration::from_millis(500))
        .concurrency(4);
    let policy_controller = Controller::for_stream(futures::stream::pending(), policy_reader)
        .with_config(cc.clone())
        .reconcile_on(prx)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let report_controller = Controller::for_stream(futures::stream::pending(), report_reader)
        .with_config(cc)
        .reconcile_on(rrx)
        .shutdown_on_signal()
        .run(reconcile_report, error_policy_report, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    info!("controllers started");
    let streams = futures::future::join5(
        policy_stream,
        pod_stream,
        report_stream,
        ns_stream,
        facts_stream,
    );
    tokio::select! {
        _ = futures::future::join(policy_controller, report_controller) => {},
        _ = streams => {},
    }
    info!("controllers stopped");
}

/// Keep only what the operator reads from a pod (metadata without managed fields, phase and
/// start time): a 10,000-pod cluster costs a fraction of the full objects in memory.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.spec = None;
    if let Some(s) = pod.status.as_mut() {
        *s = k8s_openapi::api::core::v1::PodStatus {
            phase: s.phase.take(),
            start_time: s.start_time.take(),
            ..Default::default()
        };
    }
}

/// Facts from the ConfigMap (defaults when missing or invalid, logged).
pub fn parse_facts(cm: Option<&ConfigMap>) -> ClusterFacts {
    let Some(doc) = cm
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(FACTS_KEY))
    else {
        warn!("{FACTS_CONFIGMAP}/{FACTS_KEY} missing; using defaults (no unsafe sysctls, no tuning CNI)");
        return ClusterFacts::default();
    };
    ClusterFacts::from_yaml(doc).unwrap_or_else(|e| {
        warn!(error = %e, "invalid cluster facts; using defaults (no unsafe sysctls, no tuning CNI)");
        ClusterFacts::default()
    })
}
