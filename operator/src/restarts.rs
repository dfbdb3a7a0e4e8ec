//! The I/O side of `restartPods: Rollout`: reads the workloads from reflector stores and the
//! pods' ReplicaSets from the API, runs the pure [`crate::rollout::plan`], sends its restart
//! patches and publishes an event on the policy and on each workload restarted.
//!
//! * Restarts of all policies are serialized by one lock, and a restart this process made counts
//!   as in flight (with its record) until the workload store shows it, so concurrent reconciles
//!   and a lagging store never exceed `--max-concurrent-rollouts` or restart a workload twice.
//! * A ReplicaSet's controller is read once (`GET`, cached; a pod's ReplicaSet is immutable in
//!   practice) — the operator does not watch ReplicaSets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::{condition, RestartPods, TuningPolicy, OPERATOR_FIELD_MANAGER};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::rollout::{
    self, controller_of, in_flight, pod_is_failing, pod_sysctl_forbidden, resolve_owner, Cluster,
    MatchedPod, Owner, Plan, PolicyRollout, Progress, Restart, RestartRecord, Workload,
    WorkloadKind, WorkloadRef,
};
use crate::status::{evaluate, find_condition, pod_decision, Environment, Evaluation};

/// The ReplicaSet cache is dropped when it grows past this many entries.
const MAX_CACHED_REPLICASETS: usize = 10_000;

/// Workload stores and restart bookkeeping shared by every policy's reconcile.
pub struct Rollouts {
    /// Deployments.
    pub deployments: Store<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Store<StatefulSet>,
    /// DaemonSets.
    pub daemon_sets: Store<DaemonSet>,
    /// `--max-concurrent-rollouts`.
    pub max_concurrent: usize,
    /// `namespace/name` of a ReplicaSet → its controller.
    replicasets: Mutex<HashMap<String, Option<OwnerReference>>>,
    /// Restarts made by this process whose record the store does not show yet.
    started: Mutex<BTreeMap<WorkloadRef, RestartRecord>>,
    /// One policy plans and restarts at a time.
    lock: tokio::sync::Mutex<()>,
}

/// What one policy reconcile needs besides the policy and its evaluation.
pub struct RolloutInput<'a> {
    /// Every pod of the policy's namespace (owners, failing and `SysctlForbidden` pods).
    pub pods: &'a [Arc<Pod>],
    /// The other policies of the namespace (their claims on shared workloads).
    pub others: &'a [Arc<TuningPolicy>],
    /// Cluster facts and namespace environment (to evaluate the other policies).
    pub facts: &'a ClusterFacts,
    /// See [`Environment`].
    pub env: &'a Environment,
    /// Now.
    pub now: Timestamp,
}

impl Rollouts {
    /// Over the given stores.
    pub fn new(
        deployments: Store<Deployment>,
        stateful_sets: Store<StatefulSet>,
        daemon_sets: Store<DaemonSet>,
        max_concurrent: usize,
    ) -> Self {
        Self {
            deployments,
            stateful_sets,
            daemon_sets,
            max_concurrent,
            replicasets: Mutex::new(HashMap::new()),
            started: Mutex::new(BTreeMap::new()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Fresh stores and their writers (for [`watch`]).
    pub fn with_writers(max_concurrent: usize) -> (Self, Writers) {
        let (d, dw) = reflector::store::<Deployment>();
        let (s, sw) = reflector::store::<StatefulSet>();
        let (ds, dsw) = reflector::store::<DaemonSet>();
        (Self::new(d, s, ds, max_concurrent), Writers(dw, sw, dsw))
    }

    /// Have the workload stores completed their initial list?
    pub fn ready(&self) -> bool {
        // A store is ready once it saw its first list; `state()` of an unready store is empty
        // and planning on it could exceed the cap, so the reconciler waits for this.
        futures::FutureExt::now_or_never(async {
            self.deployments.wait_until_ready().await.is_ok()
                && self.stateful_sets.wait_until_ready().await.is_ok()
                && self.daemon_sets.wait_until_ready().await.is_ok()
        })
        .unwrap_or(false)
    }

    /// A workload as the store shows it, with a restart of ours the store does not show yet.
    fn workload(&self, id: &WorkloadRef, failing: usize, now: Timestamp) -> Option<Workload> {
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        let w = match id.kind {
            WorkloadKind::Deployment => {
                let d = self.deployments.get(&ObjectRef::new(name).within(ns))?;
                Workload::from_deployment(&d, failing)
            }
            WorkloadKind::StatefulSet => {
                let s = self.stateful_sets.get(&ObjectRef::new(name).within(ns))?;
                Workload::from_stateful_set(&s, failing, now)
            }
            WorkloadKind::DaemonSet => {
                let d = self.daemon_sets.get(&ObjectRef::new(name).within(ns))?;
                Workload::from_daemon_set(&d, failing, now)
            }
        };
        Some(self.overlay(w))
    }

    fn overlay(&self, mut w: Workload) -> Workload {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match started.get(&w.id) {
            Some(r) if *r == w.record => {
                started.remove(&w.id);
            }
            Some(r) => {
                w.record = r.clone();
                w.progress = Progress::InProgress;
            }
            None => {}
        }
        w
    }

    /// Every workload of the cluster (for the cap).
    fn all_workloads(&self, now: Timestamp) -> Vec<Workload> {
        let mut out: Vec<Workload> = Vec::new();
        out.extend(
            self.deployments
                .state()
                .iter()
                .map(|d| Workload::from_deployment(d, 0)),
        );
        out.extend(
            self.stateful_sets
                .state()
                .iter()
                .map(|s| Workload::from_stateful_set(s, 0, now)),
        );
        out.extend(
            self.daemon_sets
                .state()
                .iter()
                .map(|d| Workload::from_daemon_set(d, 0, now)),
        );
        let mut out: Vec<Workload> = out.into_iter().map(|w| self.overlay(w)).collect();
        // Restarts of ours whose workload the store does not list yet still count.
        let started = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, record) in started {
            if !out.iter().any(|w| w.id == id) {
                out.push(Workload {
                    id,
                    paused: false,
                    on_delete: false,
                    progress: Progress::InProgress,
                    record,
                });
            }
        }
        out
    }

    /// The pod's owner; a ReplicaSet's controller is read with `GET` once.
    async fn owner(&self, client: &Client, pod: &Pod) -> Result<Owner, kube::Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let rs_name = controller_of(&pod.metadata)
            .filter(|c| c.kind == "ReplicaSet" && c.api_version == "apps/v1")
            .map(|c| c.name.clone());
        let mut cached: Option<Option<OwnerReference>> = None;
        if let Some(name) = &rs_name {
            let key = format!("{ns}/{name}");
            let hit = self
                .replicasets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            cached = match hit {
                Some(c) => Some(c),
                None => {
                    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
                    let found = api
                        .get_opt(name)
                        .await?
                        .map(|rs| controller_of(&rs.metadata).cloned());
                    if let Some(c) = &found {
                        let mut m = self.replicasets.lock().unwrap_or_else(|e| e.into_inner());
                        if m.len() >= MAX_CACHED_REPLICASETS {
                            m.clear();
                        }
                        m.insert(key, c.clone());
                    }
                    found
                }
            };
        }
        Ok(resolve_owner(pod, |_| cached.clone()))
    }
}

/// Plan and make the restarts of one policy (`None` for `restartPods: Never`). The caller puts
/// the plan into the status with [`rollout::apply_to_status`].
pub async fn reconcile_rollout(
    client: &Client,
    recorder: &Recorder,
    r: &Rollouts,
    policy: &TuningPolicy,
    eval: &Evaluation,
    input: &RolloutInput<'_>,
) -> Result<Option<Plan>, kube::Error> {
    if policy.spec.restart_pods != RestartPods::Rollout {
        return Ok(None);
    }
    let _one_at_a_time = r.lock.lock().await;
    let by_name: HashMap<&str, &Pod> = input
        .pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, p.as_ref())))
        .collect();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let forbidden = input.pods.iter().any(|p| {
        pod_sysctl_forbidden(p)
            && pod_decision(p).is_some_and(|d| d.for_policy(name).next().is_some())
    });
    let me = PolicyRollout::new(policy, &eval.status, forbidden);
    let matched = matched_pods(client, r, eval, &by_name).await?;
    let cluster = cluster(client, r, &matched, input).await?;
    let Some(plan) = rollout::plan(&me, &matched, &cluster) else {
        return Ok(None);
    };
    for restart in &plan.restart {
        restart_workload(client, recorder, r, policy, restart, input.now).await?;
    }
    Ok(Some(plan))
}

/// The evaluation's matched pods with their owners.
async fn matched_pods(
    client: &Client,
    r: &Rollouts,
    eval: &Evaluation,
    by_name: &HashMap<&str, &Pod>,
) -> Result<Vec<MatchedPod>, kube::Error> {
    let mut out = Vec::with_capacity(eval.pods.len());
    for v in &eval.pods {
        let Some(pod) = by_name.get(v.name.as_str()) else {
            continue;
        };
        out.push(MatchedPod {
            name: v.name.clone(),
            needs_restart: v.state.needs_restart(),
            owner: r.owner(client, pod).await?,
        });
    }
    Ok(out)
}

/// The workloads of the matched pods (with their failing pods), the cluster's rollouts in
/// flight and the other eligible policies' claims.
async fn cluster(
    client: &Client,
    r: &Rollouts,
    matched: &[MatchedPod],
    input: &RolloutInput<'_>,
) -> Result<Cluster, kube::Error> {
    let mut failing: BTreeMap<WorkloadRef, usize> = BTreeMap::new();
    for pod in input.pods.iter().filter(|p| pod_is_failing(p)) {
        if let Owner::Workload(id) = r.owner(client, pod).await? {
            *failing.entry(id).or_default() += 1;
        }
    }
    let mut workloads = BTreeMap::new();
    for m in matched {
        if let Owner::Workload(id) = &m.owner {
            let n = failing.get(id).copied().unwrap_or(0);
            if let Some(w) = r.workload(id, n, input.now) {
                workloads.insert(id.clone(), w);
            }
        }
    }
    let mut claims: BTreeMap<WorkloadRef, BTreeMap<String, i64>> = BTreeMap::new();
    let by_name: HashMap<&str, &Pod> = input
        .pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, p.as_ref())))
        .collect();
    for other in input
        .others
        .iter()
        .filter(|o| o.spec.restart_pods == RestartPods::Rollout)
    {
        let pods = input.pods.iter().map(|p| p.as_ref());
        let eval = evaluate(
            other,
            pods,
            std::iter::empty(),
            input.facts,
            input.env,
            input.now,
        );
        if !PolicyRollout::new(other, &eval.status, false).eligible() {
            continue;
        }
        let (name, generation) = (
            other.metadata.name.clone().unwrap_or_default(),
            other.metadata.generation.unwrap_or(0),
        );
        for v in eval.pods.iter().filter(|v| v.state.needs_restart()) {
            let Some(pod) = by_name.get(v.name.as_str()) else {
                continue;
            };
            if let Owner::Workload(id) = r.owner(client, pod).await? {
                claims
                    .entry(id)
                    .or_default()
                    .insert(name.clone(), generation);
            }
        }
    }
    Ok(Cluster {
        in_flight: in_flight(&r.all_workloads(input.now)),
        workloads,
        max_concurrent: r.max_concurrent,
        claims,
    })
}

/// Send one restart patch (strategic merge, like `kubectl rollout restart`), remember it, and
/// publish an event on the workload and on the policy.
async fn restart_workload(
    client: &Client,
    recorder: &Recorder,
    r: &Rollouts,
    policy: &TuningPolicy,
    restart: &Restart,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let id = &restart.workload;
    let patch = Patch::Strategic(rollout::restart_patch(restart, now));
    let pp = PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..Default::default()
    };
    let reference = match id.kind {
        WorkloadKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &id.namespace);
            api.patch(&id.name, &pp, &patch).await?.object_ref(&())
        }
        WorkloadKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), &id.namespace);
            api.patch(&id.name, &pp, &patch).await?.object_ref(&())
        }
        WorkloadKind::DaemonSet => {
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), &id.namespace);
            api.patch(&id.name, &pp, &patch).await?.object_ref(&())
        }
    };
    r.started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), restart.record.clone());
    let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
    let generation = policy.metadata.generation.unwrap_or(0);
    info!(workload = %id, record = %restart.record.render(), pods = restart.pods, "restarted workload");
    let on_workload = Event {
        type_: EventType::Normal,
        reason: "Restarted".into(),
        note: Some(format!(
            "restarted by TuningPolicy {policy_name} (generation {generation}): {} pod(s) lack its sysctls; \
             the {}'s own strategy paces the rollout",
            restart.pods,
            id.kind.as_str()
        )),
        action: "Restart".into(),
        secondary: Some(policy.object_ref(&())),
    };
    let on_policy = Event {
        type_: EventType::Normal,
        reason: "RestartedWorkload".into(),
        note: Some(format!(
            "restarted {id}: {} pod(s) needed a restart",
            restart.pods
        )),
        action: "Restart".into(),
        secondary: Some(reference.clone()),
    };
    for (ev, at) in [
        (on_workload, reference),
        (on_policy, policy.object_ref(&())),
    ] {
        if let Err(e) = recorder.publish(&ev, &at).await {
            warn!(error = %e, "publishing event failed");
        }
    }
    Ok(())
}

/// Writers of the workload stores, for [`watch`].
pub struct Writers(
    pub Writer<Deployment>,
    pub Writer<StatefulSet>,
    pub Writer<DaemonSet>,
);

/// Keep what the planner reads of a Deployment: no managed fields, no pod spec in the template.
pub fn slim_deployment(o: &mut Deployment) {
    o.metadata.managed_fields = None;
    if let Some(s) = o.spec.as_mut() {
        s.template.spec = None;
    }
}

/// Keep what the planner reads of a StatefulSet (no pod spec, no volume claim templates).
pub fn slim_stateful_set(o: &mut StatefulSet) {
    o.metadata.managed_fields = None;
    if let Some(s) = o.spec.as_mut() {
        s.template.spec = None;
        s.volume_claim_templates = None;
    }
}

/// Keep what the planner reads of a DaemonSet.
pub fn slim_daemon_set(o: &mut DaemonSet) {
    o.metadata.managed_fields = None;
    if let Some(s) = o.spec.as_mut() {
        s.template.spec = None;
    }
}

/// Watch one workload kind into its store; the changed objects, for the policy controller's
/// `watches_stream` (a workload change re-plans the policies of its namespace).
pub fn events<K>(
    api: Api<K>,
    writer: Writer<K>,
    slim: fn(&mut K),
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .touched_objects()
}

/// [`reconcile_step`] for a policy reconcile over the context's stores: nothing when rollouts
/// are off (`ctx.rollouts` unset).
pub(crate) async fn step(
    ctx: &crate::context::Context,
    policy: &TuningPolicy,
    pods: &[Arc<Pod>],
    facts: &ClusterFacts,
    env: &Environment,
    now: Timestamp,
    eval: &mut Evaluation,
) -> Result<Option<Duration>, kube::Error> {
    let Some(r) = &ctx.rollouts else {
        return Ok(None);
    };
    let others = ctx.stores.policies.state_filter(|p| {
        p.metadata.namespace == policy.metadata.namespace && p.metadata.name != policy.metadata.name
    });
    let input = RolloutInput {
        pods,
        others: &others,
        facts,
        env,
        now,
    };
    reconcile_step(&ctx.client, &ctx.recorder, r, policy, eval, &input).await
}

/// The rollout part of one policy reconcile: plan, restart, and put the result into
/// `eval.status` (`status.rollout`, the `RolledOut` condition). Returns when to look again
/// while restarts are pending or rolling out. Until the workload stores are synced the previous
/// rollout status is kept.
pub async fn reconcile_step(
    client: &Client,
    recorder: &Recorder,
    r: &Rollouts,
    policy: &TuningPolicy,
    eval: &mut Evaluation,
    input: &RolloutInput<'_>,
) -> Result<Option<Duration>, kube::Error> {
    let prev = policy.status.as_ref();
    if policy.spec.restart_pods == RestartPods::Rollout && !r.ready() {
        eval.status.rollout = prev.and_then(|s| s.rollout.clone());
        let kept = prev
            .and_then(|s| find_condition(s, condition::ROLLED_OUT))
            .cloned();
        eval.status.conditions.extend(kept);
        return Ok(Some(Duration::from_secs(2)));
    }
    let plan = reconcile_rollout(client, recorder, r, policy, eval, input).await?;
    let conditions = prev.map(|s| s.conditions.as_slice()).unwrap_or_default();
    rollout::apply_to_status(&mut eval.status, plan.as_ref(), conditions, input.now);
    let busy = eval.status.rollout.as_ref().is_some_and(|s| {
        s.pending > 0
            || s.workloads
                .iter()
                .any(|w| w.reason == kubetune_crds::policy::rollout_reason::ROLLING_OUT)
    });
    Ok(busy.then_some(Duration::from_secs(15)))
}
