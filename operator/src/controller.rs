//! The TuningPolicy and ListenerReport controllers, wired in kube-runtime's idiom.
//!
//! * One watch per kind (TuningPolicies, Pods, ListenerReports, Namespaces, the facts
//!   ConfigMap) fills the in-memory stores the pure functions read. Each controller is
//!   `Controller::for_shared_stream(..)` over its own kind plus `watches_stream` /
//!   `watches_shared_stream` with mapper functions for the kinds its status depends on: a pod
//!   or report change maps to the policies that select the pod (or that its admission record
//!   names, [`policies_for_pod`]) and to its report; a policy change to the reports of its
//!   namespace; a namespace change to its policies; a facts change reconciles every policy.
//!   The agents' heartbeat Leases fill a store read at each reconcile (which nodes are watched,
//!   [`crate::coverage`]); a coverage change of a node reconciles the policies of its pods.
//!   Deletions reach the controller that needs them through the root (non-shared) streams.
//! * [`reconcile`] applies the namespace's tuning-CNI NetworkAttachmentDefinition first
//!   ([`crate::nad::NadState`]; a failed write becomes `Accepted=False TuningCNIUnavailable`
//!   with the API error, hence an event, and the reconcile fails into the error backoff), then
//!   computes `TuningPolicy.status` with [`crate::status::evaluate`], writes it
//!   with server-side apply (field manager `kubetune-operator`, status subresource) when it
//!   changed, publishes transition events, records kubelet `SysctlForbidden` refusals of the
//!   policy's pods on their nodes' NodeTuning ([`crate::guard`]).
//! * [`reconcile_report`] writes `ListenerReport.status` (recommendation, selecting policies).
//! * Both reconcile only once every store has synced; failures back off exponentially per
//!   object ([`backoff_for`]).

use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{
    Action, Config as ControllerConfig, Controller, Error as ControllerError,
};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::{TuningPolicy, OPERATOR_FIELD_MANAGER};
use kubetune_crds::report::{ListenerReport, ListenerReportStatus};
use kubetune_crds::{heartbeat, limits, matching, reason};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{debug, info, instrument, warn, Span};

pub use crate::context::{backoff_for, namespace_context, Clock, Context, Error, Stores};
use crate::metrics::Metrics;
use crate::nad::nad_owners;
use crate::recommend::recommend;
use crate::restarts::{
    self, slim_daemon_set, slim_deployment, slim_stateful_set, Rollouts, Writers,
};
use crate::status::{evaluate, phase, Evaluation};
use crate::triggers::{facts_updates, heartbeat_changes, policies_for_report, refs_in, report_of};
pub use crate::triggers::{policies_for_pod, selecting_policies, slim_pod};

/// Resync period: every policy is recomputed at least this often.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Events buffered per subscriber of a shared watch.
const SHARED_BUFFER: usize = 1024;

/// `Kind/namespace/name` of an object, and its namespace and name (both required).
fn keys<K: Resource<DynamicType = ()>>(o: &K) -> Result<(String, String, String), Error> {
    let ns = o.namespace().ok_or(Error::MissingKey("namespace"))?;
    let name = o.meta().name.clone().ok_or(Error::MissingKey("name"))?;
    Span::current().record("namespace", ns.as_str());
    Span::current().record("object", name.as_str());
    Ok((format!("{}/{ns}/{name}", K::kind(&())), ns, name))
}

/// Server-side apply `{apiVersion, kind, status}` to the status subresource.
async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(name, &pp, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// Reconcile one TuningPolicy: status (SSA), events, tuning-CNI NAD.
#[instrument(skip(policy, ctx), fields(namespace, object))]
pub async fn reconcile(policy: Arc<TuningPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let (key, ns, name) = keys(policy.as_ref())?;
    if !ctx.stores_ready().await {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let (now, facts) = ((ctx.now)(), ctx.facts());
    let in_ns = |m: &kube::core::ObjectMeta| m.namespace.as_deref() == Some(ns.as_str());
    let pods = ctx.stores.pods.state_filter(|p| in_ns(&p.metadata));
    let reports = ctx.stores.reports.state_filter(|r| in_ns(&r.metadata));
    let nodes = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .chain(reports.iter().map(|r| r.spec.node_name.as_str()));
    let mut env = ctx.environment(&ns, &facts, nodes).await;
    // The NAD first: a failed write is part of the status (Accepted=False), not only a log line.
    let mut nad_error = None;
    if let (Some(tc), true) = (&facts.tuning_cni, env.tuning_cni_crd) {
        let policies = ctx.stores.policies.state();
        let owners = nad_owners(&ns, &policies, &facts, &env);
        if let Err(e) = ctx
            .nad
            .ensure(&ctx.client, &ns, &tc.network_name, &owners)
            .await
        {
            warn!(error = %e, network = %tc.network_name, "writing the tuning-CNI NetworkAttachmentDefinition failed");
            env.nad_write_error = Some(format!(
                "NetworkAttachmentDefinition {ns}/{}: {e}",
                tc.network_name
            ));
            nad_error = Some(e);
        }
    }
    let mut eval = evaluate(
        &policy,
        pods.iter().map(AsRef::as_ref),
        reports.iter().map(AsRef::as_ref),
        &facts,
        &env,
        now,
    );
    let rollout_check = restarts::step(&ctx, &policy, &pods, &facts, &env, now, &mut eval).await?;
    ctx.record_metrics(&ns, &name, &eval.status);
    if !eval.forbidden.is_empty() {
        // First, so the webhook stops injecting for the refusing nodes as soon as possible.
        crate::guard::record(&ctx, &policy, &eval.forbidden).await?;
    }
    if policy.status.as_ref() != Some(&eval.status) {
        apply_status::<TuningPolicy>(&ctx.client, &ns, &name, &eval.status).await?;
        let s = &eval.status;
        info!(
            phase = s.phase.as_deref().unwrap_or_default(),
            matched = s.matched_pods,
            applied = s.applied_pods,
            verified = s.verified_pods,
            "status updated"
        );
        ctx.publish_transitions(&policy, s).await;
    }
    if let Some(e) = nad_error {
        // Status and event are written; retry the NAD with the error backoff.
        return Err(e.into());
    }
    ctx.done(&key, started);
    Ok(match (next_action(&eval, now), rollout_check) {
        // While restarts are pending or rolling out, look again soon (workload changes also
        // trigger a reconcile).
        (_, Some(soon)) => Action::requeue(soon),
        (action, None) => action,
    })
}

/// Invalid policies wait for a change; others come back when a waiting pod's window ends, at
/// the latest after [`RESYNC`].
fn next_action(eval: &Evaluation, now: Timestamp) -> Action {
    if eval.status.phase.as_deref() == Some(phase::INVALID) {
        return Action::await_change();
    }
    let requeue = eval.next_check.map_or(RESYNC, |t| {
        let secs = t.duration_since(now).as_secs_f64().max(1.0);
        Duration::from_secs_f64(secs + 1.0).min(RESYNC)
    });
    Action::requeue(requeue)
}

/// Error policy: exponential backoff per object, failures counted by kind.
pub fn error_policy(policy: Arc<TuningPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    failed(policy.as_ref(), error, &ctx)
}

/// Error policy of the report reconciler.
pub fn error_policy_report(
    report: Arc<ListenerReport>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    failed(report.as_ref(), error, &ctx)
}

fn failed<K: Resource<DynamicType = ()>>(o: &K, error: &Error, ctx: &Context) -> Action {
    let key = format!(
        "{}/{}/{}",
        K::kind(&()),
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.name_any()
    );
    warn!(error = %error, object = %key, "reconcile failed");
    ctx.metrics.failure(error.metric_label());
    Action::requeue(ctx.backoff(&key))
}

/// Reconcile one ListenerReport: `status.policies` and `status.recommendation` (SSA), and a
/// recommendation event on the pod when the recommendation appears or changes.
#[instrument(skip(report, ctx), fields(namespace, object))]
pub async fn reconcile_report(
    report: Arc<ListenerReport>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let (key, ns, name) = keys(report.as_ref())?;
    if !ctx.stores_ready().await {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let pod = ctx.stores.pods.get(&ObjectRef::new(&name).within(&ns));
    let Some(pod) = pod.filter(|p| crate::status::report_is_for(&report, p)) else {
        // The report outlives its pod only until garbage collection; nothing to say.
        return Ok(Action::await_change());
    };
    let selecting = matching::selecting_names(&pod, &ctx.stores.policies.state());
    let rec = recommend(&pod, &report, &selecting);
    let new = ListenerReportStatus {
        recommendation: rec.as_ref().map(|r| r.yaml.clone()),
        policies: selecting,
    };
    let old = report.status.clone().unwrap_or_default();
    if old != new {
        apply_status::<ListenerReport>(&ctx.client, &ns, &name, &new).await?;
        if let Some(r) = rec.filter(|_| old.recommendation != new.recommendation) {
            let note = Some(limits::event_note(r.message));
            let secondary = Some(report.object_ref(&()));
            let event = Event {
                type_: EventType::Warning,
                reason: reason::SOMAXCONN_BOUND.into(),
                note,
                action: "Recommend".into(),
                secondary,
            };
            ctx.publish(event, &pod.object_ref(&())).await;
        }
    }
    ctx.done(&key, started);
    Ok(Action::await_change())
}

/// Run the operator's controllers until shutdown.
pub async fn run(
    client: Client,
    namespace: String,
    metrics: Arc<Metrics>,
    max_concurrent_rollouts: usize,
) {
    let wc = watcher::Config::default();
    let (policies, policy_writer) = reflector::store_shared::<TuningPolicy>(SHARED_BUFFER);
    let (pods, pod_writer) = reflector::store_shared::<Pod>(SHARED_BUFFER);
    let (reports, report_writer) = reflector::store_shared::<ListenerReport>(SHARED_BUFFER);
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let subscribe = "stores made by store_shared can be subscribed to";
    let (policy_sub, pod_sub) = (
        policy_writer.subscribe().expect(subscribe),
        pod_writer.subscribe().expect(subscribe),
    );
    let report_sub = report_writer.subscribe().expect(subscribe);
    // The root streams (with deletions) drive the controller that needs them; the other one
    // follows through its subscription (applies only).
    let policy_events = watcher(Api::<TuningPolicy>::all(client.clone()), wc.clone())
        .default_backoff()
        .reflect_shared(policy_writer)
        .touched_objects();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(slim_pod)
        .reflect_shared(pod_writer)
        .touched_objects();
    let report_events = watcher(Api::<ListenerReport>::all(client.clone()), wc.clone())
        .default_backoff()
        .reflect_shared(report_writer)
        .touched_objects();
    let ns_events = watcher(Api::<Namespace>::all(client.clone()), wc)
        .default_backoff()
        .reflect(ns_writer)
        .touched_objects();
    // The agents' heartbeats (only the agent Leases of the operator's namespace): read at each
    // reconcile. A renewal triggers nothing (one per node every few seconds); a coverage change
    // (stale, back, restarted) reconciles the policies of the node's pods
    // ([`heartbeat_changes`]).
    let lease_cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        heartbeat::LEASE_LABEL,
        heartbeat::LEASE_LABEL_VALUE
    ));
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let lease_events = watcher(lease_api, lease_cfg)
        .default_backoff()
        .reflect(lease_writer)
        .touched_objects()
        .for_each(|r| {
            if let Err(e) = r {
                warn!(error = %e, "agent heartbeat watch");
            }
            future::ready(())
        });
    let facts = Arc::new(RwLock::new(ClusterFacts::default()));
    let facts_changed = facts_updates(client.clone(), &namespace, facts.clone());
    let stores = Stores {
        policies: policies.clone(),
        pods: pods.clone(),
        reports: reports.clone(),
        namespaces,
        leases: leases.clone(),
    };
    let (rollouts, Writers(dw, sw, dsw)) = Rollouts::with_writers(max_concurrent_rollouts);
    let deployment_events = restarts::events(Api::all(client.clone()), dw, slim_deployment);
    let stateful_set_events = restarts::events(Api::all(client.clone()), sw, slim_stateful_set);
    let daemon_set_events = restarts::events(Api::all(client.clone()), dsw, slim_daemon_set);
    let mut ctx = Context::new(client, stores, facts, metrics, Arc::new(Timestamp::now));
    ctx.rollouts = Some(Arc::new(rollouts));
    let ctx = Arc::new(ctx);

    let (leases_r, pods_h, policies_h) = (leases.clone(), pods.clone(), policies.clone());
    let cc = ControllerConfig::default()
        .debounce(Duration::from_millis(500))
        .concurrency(4);
    let (p4, p5, p6) = (policies.clone(), policies.clone(), policies.clone());
    let (p1, p2, p3, pods_r) = (
        policies.clone(),
        policies.clone(),
        policies.clone(),
        pods.clone(),
    );
    let policy_controller = Controller::for_shared_stream(policy_sub, policies)
        .with_config(cc.clone())
        .watches_stream(pod_events, move |pod: Pod| {
            policies_for_pod(&p1.state(), &pod)
        })
        .watches_stream(report_events, move |r: ListenerReport| {
            policies_for_report(&p2, &pods_r, &r)
        })
        .watches_stream(ns_events, move |n: Namespace| {
            refs_in(&p3, n.metadata.name.as_deref())
        })
        // A workload change re-plans its namespace's policies (a completed rollout frees the cap).
        .watches_stream(deployment_events, move |d: Deployment| {
            refs_in(&p4, d.metadata.namespace.as_deref())
        })
        .watches_stream(stateful_set_events, move |s: StatefulSet| {
            refs_in(&p5, s.metadata.namespace.as_deref())
        })
        .watches_stream(daemon_set_events, move |d: DaemonSet| {
            refs_in(&p6, d.metadata.namespace.as_deref())
        })
        .reconcile_all_on(facts_changed)
        .reconcile_on(heartbeat_changes(leases_r, pods_h, policies_h))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(log_outcome);
    let reports_r = reports.clone();
    let report_controller = Controller::for_shared_stream(report_sub, reports)
        .with_config(cc)
        .watches_stream(policy_events, move |p: TuningPolicy| {
            refs_in(&reports_r, p.metadata.namespace.as_deref())
        })
        .watches_shared_stream(pod_sub, |pod: Arc<Pod>| report_of(&pod))
        .shutdown_on_signal()
        .run(reconcile_report, error_policy_report, ctx)
        .for_each(log_outcome);
    info!("controllers started");
    // The heartbeat watch ends with the controllers (it never ends on its own).
    let controllers = future::join(policy_controller, report_controller);
    futures::pin_mut!(controllers, lease_events);
    future::select(controllers, lease_events).await;
    info!("controllers stopped");
}

fn log_outcome<K: Resource>(
    r: Result<(ObjectRef<K>, Action), ControllerError<Error, watcher::Error>>,
) -> future::Ready<()> {
    match r {
        Err(ControllerError::QueueError(e)) => warn!(error = %e, "watch error"),
        // Failures are logged by the error policies; a vanished object needs nothing.
        Err(e) => debug!(error = %e, "reconcile not done"),
        Ok(_) => {}
    }
    future::ready(())
}
