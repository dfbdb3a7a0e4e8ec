//! Opt-in rolling restart (`spec.restartPods: Rollout`): the pure planner that decides which
//! workloads to restart so their running pods get a policy's sysctls, and the status it reports.
//!
//! No I/O. The reconciler resolves each matched pod's owner ([`resolve_owner`]), reads the
//! workloads ([`Workload::from_deployment`], ...), and feeds [`plan`]; it then sends
//! [`restart_patch`] for every [`Plan::restart`] entry and writes [`apply_to_status`]'s result.
//!
//! # Rules
//!
//! * A **target** is the owner of a matched pod: a Deployment (through its ReplicaSet), a
//!   StatefulSet or a DaemonSet — or, for a bare pod, a Job's pod, a pod of another controller
//!   or of an owner that was not found, a *manual* target: never deleted, named as needing a
//!   manual restart when one of its pods needs a restart.
//! * A workload's **restart record** is its pod-template annotation `kubetune.dev/restarted-for`
//!   (`policy@generation,...`). A workload whose record holds this policy at its current
//!   generation is never restarted again for it (idempotent across operator restarts); its
//!   rollout is reported as `RollingOut`, `RolledOut`, or — still pods needing a restart after it
//!   completed — `AlreadyRestarted` (manual).
//! * A rollout made for this generation that **stalls** (Deployment `ProgressDeadlineExceeded`,
//!   StatefulSet/DaemonSet not complete [`STALL_AFTER`] after the restart, or failing pods
//!   while in progress) stops every further restart for the policy.
//! * Nothing is restarted for DryRun or not-accepted policies, policies with a refused sysctl,
//!   or policies whose pods a kubelet rejected with `SysctlForbidden`.
//! * Not restarted either: paused Deployments, `updateStrategy: OnDelete` (a template change
//!   does not replace their pods), workloads whose own rollout stalled (skipped), workloads
//!   whose rollout is in progress (pending until it completes).
//! * **Shared workloads**: when other eligible policies also need a workload restarted, the one
//!   first by name restarts it and records every such `policy@generation`; the others wait for
//!   it (`RestartByOtherPolicy`) and then find themselves in the record — one restart, not two.
//! * **Cap**: at most `max_concurrent` rollouts made by the operator run cluster-wide (workloads
//!   with a restart record whose rollout is in progress, see [`in_flight`]); the rest wait
//!   (`ConcurrencyCap`). Order: Deployments, then StatefulSets, then DaemonSets, by name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubetune_crds::policy::{
    condition, rollout_reason as reason, DeliveryDecision, Mode, RestartPods, RolloutStatus,
    SysctlDeliveryStatus, TuningPolicy, TuningPolicyStatus, WorkloadRollout, WorkloadRolloutState,
    RESTARTED_AT_ANNOTATION, RESTARTED_FOR_ANNOTATION,
};
use serde_json::{json, Value};

use crate::status::{find_condition, make_condition};

/// A StatefulSet or DaemonSet rollout (which have no progress deadline of their own) still not
/// complete this long after the operator restarted it counts as stalled (the Deployment default
/// `progressDeadlineSeconds`).
pub const STALL_AFTER: SignedDuration = SignedDuration::from_secs(600);
/// At most this many workloads are listed in `status.rollout.workloads`.
pub const MAX_LISTED: usize = 50;

/// Kinds of workload the operator restarts, in restart order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// A workload by kind, namespace and name (ordered in restart order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// Kind.
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl WorkloadRef {
    /// A reference.
    pub fn new(kind: WorkloadKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// Who restarts a matched pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A workload the operator can restart.
    Workload(WorkloadRef),
    /// Only a person can: the pod (or its owner) is named with why.
    Manual {
        /// `Pod`, `Job`, `ReplicaSet` or the owner's kind.
        kind: String,
        /// Its name.
        name: String,
        /// [`reason::BARE_POD`], [`reason::JOB_POD`], [`reason::UNKNOWN_OWNER`] or
        /// [`reason::OWNER_NOT_FOUND`].
        reason: &'static str,
    },
}

/// The controller reference of an object (`ownerReferences[].controller: true`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Resolve a pod's owner: its controller, and for a ReplicaSet the ReplicaSet's controller.
/// `replicaset_owner(name)` is `None` when the ReplicaSet was not found, `Some(None)` when it
/// has no controller.
pub fn resolve_owner(
    pod: &Pod,
    replicaset_owner: impl Fn(&str) -> Option<Option<OwnerReference>>,
) -> Owner {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let manual = |kind: &str, name: &str, reason| Owner::Manual {
        kind: kind.to_string(),
        name: name.to_string(),
        reason,
    };
    let Some(c) = controller_of(&pod.metadata) else {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        return manual("Pod", name, reason::BARE_POD);
    };
    let apps = c.api_version == "apps/v1";
    match c.kind.as_str() {
        "ReplicaSet" if apps => match replicaset_owner(&c.name) {
            None => manual("ReplicaSet", &c.name, reason::OWNER_NOT_FOUND),
            Some(Some(d)) if d.kind == "Deployment" && d.api_version == "apps/v1" => {
                Owner::Workload(WorkloadRef::new(WorkloadKind::Deployment, ns, &d.name))
            }
            Some(Some(o)) => manual(&o.kind, &o.name, reason::UNKNOWN_OWNER),
            Some(None) => manual("ReplicaSet", &c.name, reason::UNKNOWN_OWNER),
        },
        "StatefulSet" if apps => {
            Owner::Workload(WorkloadRef::new(WorkloadKind::StatefulSet, ns, &c.name))
        }
        "DaemonSet" if apps => {
            Owner::Workload(WorkloadRef::new(WorkloadKind::DaemonSet, ns, &c.name))
        }
        "Job" if c.api_version.starts_with("batch/") => manual("Job", &c.name, reason::JOB_POD),
        kind => manual(kind, &c.name, reason::UNKNOWN_OWNER),
    }
}

/// The policies (and generations) a workload was restarted for: its
/// `kubetune.dev/restarted-for` pod-template annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartRecord(pub BTreeMap<String, i64>);

impl RestartRecord {
    /// Parse `a@3,b@1` (malformed entries are ignored).
    pub fn parse(s: &str) -> Self {
        let entries = s.split(',').filter_map(|e| {
            let (name, generation) = e.trim().rsplit_once('@')?;
            Some((name.to_string(), generation.parse().ok()?))
        });
        Self(
            entries
                .filter(|(n, _): &(String, i64)| !n.is_empty())
                .collect(),
        )
    }

    /// The record on a pod template.
    pub fn of_template(t: Option<&PodTemplateSpec>) -> Self {
        t.and_then(|t| t.metadata.as_ref()?.annotations.as_ref())
            .and_then(|a| a.get(RESTARTED_FOR_ANNOTATION))
            .map(|s| Self::parse(s))
            .unwrap_or_default()
    }

    /// Does the record hold `policy` at `generation`?
    pub fn has(&self, policy: &str, generation: i64) -> bool {
        self.0.get(policy) == Some(&generation)
    }

    /// `a@3,b@1` in name order.
    pub fn render(&self) -> String {
        let entries: Vec<String> = self.0.iter().map(|(n, g)| format!("{n}@{g}")).collect();
        entries.join(",")
    }
}

/// Where a workload's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every replica runs the current template and is available.
    Complete,
    /// Replicas are being replaced.
    InProgress,
    /// Not progressing; why.
    Stalled(String),
}

/// What the planner needs to know about one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Which.
    pub id: WorkloadRef,
    /// `spec.paused` (Deployments).
    pub paused: bool,
    /// `updateStrategy: OnDelete` (StatefulSets, DaemonSets).
    pub on_delete: bool,
    /// Its rollout.
    pub progress: Progress,
    /// Its restart record.
    pub record: RestartRecord,
}

/// Failing pods turn an in-progress rollout into a stalled one.
fn with_failing(progress: Progress, failing_pods: usize) -> Progress {
    match progress {
        Progress::InProgress if failing_pods > 0 => {
            Progress::Stalled(format!("{failing_pods} pod(s) failing while rolling out"))
        }
        p => p,
    }
}

/// StatefulSets and DaemonSets: still rolling out [`STALL_AFTER`] after the operator's restart.
fn past_deadline(
    progress: Progress,
    template: Option<&PodTemplateSpec>,
    now: Timestamp,
) -> Progress {
    let restarted_at = template
        .and_then(|t| t.metadata.as_ref()?.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
        .and_then(|s| s.parse::<Timestamp>().ok());
    match (progress, restarted_at) {
        (Progress::InProgress, Some(at)) if at + STALL_AFTER <= now => Progress::Stalled(format!(
            "not complete {}s after the restart at {at}",
            STALL_AFTER.as_secs()
        )),
        (p, _) => p,
    }
}

impl Workload {
    /// A Deployment (progress as `kubectl rollout status` judges it). `failing_pods`: pods of it
    /// that crash or cannot start ([`pod_is_failing`]).
    pub fn from_deployment(d: &Deployment, failing_pods: usize) -> Self {
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let spec = d.spec.as_ref();
        let st = d.status.clone().unwrap_or_default();
        let deadline_exceeded = st.conditions.iter().flatten().find(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        let want = spec.and_then(|s| s.replicas).unwrap_or(1);
        let updated = st.updated_replicas.unwrap_or(0);
        let progress = if d.metadata.generation > st.observed_generation {
            Progress::InProgress
        } else if let Some(c) = deadline_exceeded {
            Progress::Stalled(
                c.message
                    .clone()
                    .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
            )
        } else if updated < want
            || st.replicas.unwrap_or(0) > updated
            || st.available_replicas.unwrap_or(0) < updated
        {
            Progress::InProgress
        } else {
            Progress::Complete
        };
        Self {
            id: WorkloadRef::new(WorkloadKind::Deployment, ns, name),
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
            on_delete: false,
            progress: with_failing(progress, failing_pods),
            record: RestartRecord::of_template(spec.map(|s| &s.template)),
        }
    }

    /// A StatefulSet (progress as `kubectl rollout status` judges it).
    pub fn from_stateful_set(s: &StatefulSet, failing_pods: usize, now: Timestamp) -> Self {
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let spec = s.spec.as_ref();
        let st = s.status.clone().unwrap_or_default();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        let on_delete = strategy.and_then(|u| u.type_.as_deref()) == Some("OnDelete");
        let partition = strategy
            .and_then(|u| u.rolling_update.as_ref()?.partition)
            .unwrap_or(0);
        let want = spec.and_then(|s| s.replicas).unwrap_or(1);
        let in_progress = st.observed_generation.unwrap_or(0) == 0
            || s.metadata.generation > st.observed_generation
            || st.ready_replicas.unwrap_or(0) < want
            || (partition > 0 && st.updated_replicas.unwrap_or(0) < want - partition)
            || (partition == 0 && st.update_revision != st.current_revision);
        let id = WorkloadRef::new(WorkloadKind::StatefulSet, ns, name);
        Self::unpausable(
            id,
            in_progress,
            on_delete,
            spec.map(|s| &s.template),
            failing_pods,
            now,
        )
    }

    /// A DaemonSet (progress as `kubectl rollout status` judges it).
    pub fn from_daemon_set(d: &DaemonSet, failing_pods: usize, now: Timestamp) -> Self {
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let spec = d.spec.as_ref();
        let st = d.status.clone().unwrap_or_default();
        let on_delete =
            spec.and_then(|s| s.update_strategy.as_ref()?.type_.as_deref()) == Some("OnDelete");
        let in_progress = d.metadata.generation > st.observed_generation
            || st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled
            || st.number_available.unwrap_or(0) < st.desired_number_scheduled;
        let id = WorkloadRef::new(WorkloadKind::DaemonSet, ns, name);
        Self::unpausable(
            id,
            in_progress,
            on_delete,
            spec.map(|s| &s.template),
            failing_pods,
            now,
        )
    }

    /// A StatefulSet or DaemonSet (they cannot be paused; a rollout past the template's
    /// progress deadline, or with failing pods, counts as stalled).
    fn unpausable(
        id: WorkloadRef,
        in_progress: bool,
        on_delete: bool,
        template: Option<&PodTemplateSpec>,
        failing_pods: usize,
        now: Timestamp,
    ) -> Self {
        let progress = if in_progress {
            Progress::InProgress
        } else {
            Progress::Complete
        };
        Self {
            id,
            paused: false,
            on_delete,
            progress: with_failing(past_deadline(progress, template, now), failing_pods),
            record: RestartRecord::of_template(template),
        }
    }
}

/// Container waiting reasons of a pod that will not become ready by itself.
const FAILING_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Does the pod fail (phase `Failed`, or a container crash-looping or unable to start)?
pub fn pod_is_failing(pod: &Pod) -> bool {
    let Some(st) = pod.status.as_ref() else {
        return false;
    };
    let waiting_bad = st
        .container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|r| FAILING_WAITING_REASONS.contains(&r));
    st.phase.as_deref() == Some("Failed") || waiting_bad
}

/// Did a kubelet reject the pod with `SysctlForbidden` (an unsafe sysctl it does not allow)?
pub fn pod_sysctl_forbidden(pod: &Pod) -> bool {
    kubetune_crds::pod::sysctl_forbidden(pod).is_some()
}

/// Workloads restarted by the operator (any policy) whose rollout is in progress: what counts
/// against the cluster-wide cap. Stalled rollouts do not (they stop their own policy instead).
pub fn in_flight<'a>(workloads: impl IntoIterator<Item = &'a Workload>) -> BTreeSet<WorkloadRef> {
    workloads
        .into_iter()
        .filter(|w| !w.record.0.is_empty() && w.progress == Progress::InProgress)
        .map(|w| w.id.clone())
        .collect()
}

/// The policy, as far as restarts are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRollout {
    /// Policy name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `spec.restartPods`.
    pub restart: RestartPods,
    /// `spec.mode`.
    pub mode: Mode,
    /// `Accepted=True`.
    pub accepted: bool,
    /// Per-sysctl delivery decisions (`status.sysctls`).
    pub sysctls: Vec<SysctlDeliveryStatus>,
    /// A kubelet rejected a pod of this policy with `SysctlForbidden` ([`pod_sysctl_forbidden`]).
    pub sysctl_forbidden: bool,
}

impl PolicyRollout {
    /// From the policy and the status just computed for it.
    pub fn new(policy: &TuningPolicy, status: &TuningPolicyStatus, sysctl_forbidden: bool) -> Self {
        Self {
            name: policy.metadata.name.clone().unwrap_or_default(),
            generation: policy.metadata.generation.unwrap_or(0),
            restart: policy.spec.restart_pods,
            mode: policy.spec.mode,
            accepted: find_condition(status, condition::ACCEPTED)
                .is_some_and(|c| c.status == "True"),
            sysctls: status.sysctls.clone(),
            sysctl_forbidden,
        }
    }

    /// Why nothing may be restarted for this policy, if so: (reason, message).
    pub fn blocked(&self) -> Option<(&'static str, String)> {
        let refused: Vec<&str> = self
            .sysctls
            .iter()
            .filter(|s| s.delivery == DeliveryDecision::Refused)
            .map(|s| s.name.as_str())
            .collect();
        if self.mode == Mode::DryRun {
            Some((
                reason::DRY_RUN,
                "DryRun policy: nothing is restarted".into(),
            ))
        } else if !self.accepted {
            Some((
                reason::NOT_ACCEPTED,
                "the policy is not accepted (see the Accepted condition)".into(),
            ))
        } else if !refused.is_empty() {
            Some((
                reason::SYSCTLS_REFUSED,
                format!("refused sysctls ({}): nothing is restarted for a policy the new pods would not fully get", refused.join(", ")),
            ))
        } else if self.sysctl_forbidden {
            Some((
                reason::SYSCTL_FORBIDDEN,
                "a kubelet rejected pods of this policy with SysctlForbidden: restarting would replace running pods with rejected ones".into(),
            ))
        } else {
            None
        }
    }

    /// May this policy restart workloads (Rollout and not blocked)? Other policies' claims on a
    /// shared workload count only for eligible policies.
    pub fn eligible(&self) -> bool {
        self.restart == RestartPods::Rollout && self.blocked().is_none()
    }
}

/// One matched pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedPod {
    /// Pod name.
    pub name: String,
    /// No admission record at the policy's current values ([`crate::status::PodState::NeedsRestart`]).
    pub needs_restart: bool,
    /// Its owner.
    pub owner: Owner,
}

/// The cluster around the policy.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Workloads by reference (at least those owning the matched pods).
    pub workloads: BTreeMap<WorkloadRef, Workload>,
    /// Cluster-wide rollouts made by the operator in progress ([`in_flight`]).
    pub in_flight: BTreeSet<WorkloadRef>,
    /// `--max-concurrent-rollouts`.
    pub max_concurrent: usize,
    /// Per workload, the other eligible policies (name → generation) whose matched pods on it
    /// need a restart.
    pub claims: BTreeMap<WorkloadRef, BTreeMap<String, i64>>,
}

/// A restart to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its new restart record: the old one plus this policy and every claiming policy.
    pub record: RestartRecord,
    /// Matched pods of it that need a restart.
    pub pods: usize,
}

/// One target's line in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Kind (`Deployment`, ..., `Pod`, `Job`, ...).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Restarted, pending or skipped.
    pub state: WorkloadRolloutState,
    /// Why ([`reason`]).
    pub reason: &'static str,
    /// Matched pods of it needing a restart.
    pub pods: usize,
    /// Detail for the condition message (a stall's cause, the other policy's name).
    pub detail: Option<String>,
}

/// What to do for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Policy generation planned for.
    pub generation: i64,
    /// Restarts to make now, in order.
    pub restart: Vec<Restart>,
    /// Every target (workload or manual), in restart order; restarts made now are `Restarted`.
    pub entries: Vec<Entry>,
    /// Policy-level reason why nothing is restarted: (reason, message).
    pub blocked: Option<(&'static str, String)>,
}

/// Plan the restarts of one policy. `None` for `restartPods: Never`.
pub fn plan(policy: &PolicyRollout, pods: &[MatchedPod], cluster: &Cluster) -> Option<Plan> {
    if policy.restart != RestartPods::Rollout {
        return None;
    }
    // Matched pods needing a restart, per owner (owners without such pods still count when they
    // hold this generation's record).
    let mut targets: BTreeMap<&Owner, usize> = BTreeMap::new();
    for p in pods {
        *targets.entry(&p.owner).or_default() += usize::from(p.needs_restart);
    }
    let ours = |w: &Workload| w.record.has(&policy.name, policy.generation);
    let stalled = targets.keys().find_map(|o| match o {
        Owner::Workload(id) => cluster
            .workloads
            .get(id)
            .filter(|w| ours(w))
            .and_then(|w| match &w.progress {
                Progress::Stalled(why) => Some((w.id.clone(), why.clone())),
                _ => None,
            }),
        Owner::Manual { .. } => None,
    });
    let blocked = policy.blocked().or_else(|| {
        stalled.map(|(id, why)| {
            let msg = format!(
                "the rollout of {id} made for generation {} stalled ({why}): no further restarts for \
                 this policy until it completes (fix it or roll it back)",
                policy.generation
            );
            (reason::ROLLOUT_STALLED, msg)
        })
    });
    let mut out = Plan {
        generation: policy.generation,
        blocked: blocked.clone(),
        ..Default::default()
    };
    let mut slots = cluster
        .max_concurrent
        .saturating_sub(cluster.in_flight.len());
    for (owner, needing) in targets {
        let entry = |kind: &str, name: &str, state, reason, detail| Entry {
            kind: kind.to_string(),
            name: name.to_string(),
            state,
            reason,
            pods: needing,
            detail,
        };
        let id = match owner {
            Owner::Manual { kind, name, reason } => {
                if needing > 0 {
                    out.entries.push(entry(
                        kind,
                        name,
                        WorkloadRolloutState::Skipped,
                        reason,
                        None,
                    ));
                }
                continue;
            }
            Owner::Workload(id) => id,
        };
        let kind = id.kind.as_str();
        let Some(w) = cluster.workloads.get(id) else {
            if needing > 0 {
                let e = entry(
                    kind,
                    &id.name,
                    WorkloadRolloutState::Skipped,
                    reason::OWNER_NOT_FOUND,
                    None,
                );
                out.entries.push(e);
            }
            continue;
        };
        let (state, why, detail) = match decide(policy, w, needing, blocked.as_ref(), cluster) {
            Decision::Nothing => continue,
            Decision::Report(state, why, detail) => (state, why, detail),
            Decision::RestartNow if slots == 0 => {
                (WorkloadRolloutState::Pending, reason::CONCURRENCY_CAP, None)
            }
            Decision::RestartNow => {
                slots -= 1;
                let mut record = w.record.clone();
                record.0.insert(policy.name.clone(), policy.generation);
                record.0.extend(claimants(policy, w, cluster));
                out.restart.push(Restart {
                    workload: id.clone(),
                    record,
                    pods: needing,
                });
                (WorkloadRolloutState::Restarted, reason::ROLLING_OUT, None)
            }
        };
        out.entries.push(entry(kind, &id.name, state, why, detail));
    }
    Some(out)
}

/// Other eligible policies that need `w` restarted and are not in its record yet.
fn claimants(policy: &PolicyRollout, w: &Workload, cluster: &Cluster) -> Vec<(String, i64)> {
    cluster
        .claims
        .get(&w.id)
        .into_iter()
        .flatten()
        .filter(|(n, g)| **n != policy.name && !w.record.has(n, **g))
        .map(|(n, g)| (n.clone(), *g))
        .collect()
}

/// What to do with one workload for the policy.
enum Decision {
    /// It has nothing to do with the policy (no pod needing a restart, no record).
    Nothing,
    /// Report it so.
    Report(WorkloadRolloutState, &'static str, Option<String>),
    /// Restart it now if the cap allows.
    RestartNow,
}

/// One workload's decision (see the module rules, in order).
fn decide(
    policy: &PolicyRollout,
    w: &Workload,
    needing: usize,
    blocked: Option<&(&'static str, String)>,
    cluster: &Cluster,
) -> Decision {
    use WorkloadRolloutState::{Pending, Restarted, Skipped};
    let report = |state, why, detail| Decision::Report(state, why, detail);
    if w.record.has(&policy.name, policy.generation) {
        return match (&w.progress, needing) {
            (Progress::Stalled(why), _) => {
                report(Restarted, reason::ROLLOUT_STALLED, Some(why.clone()))
            }
            (Progress::InProgress, _) => report(Restarted, reason::ROLLING_OUT, None),
            (Progress::Complete, 0) => report(Restarted, reason::ROLLED_OUT, None),
            (Progress::Complete, _) => report(Skipped, reason::ALREADY_RESTARTED, None),
        };
    }
    if needing == 0 {
        return Decision::Nothing;
    }
    if let Some((why, _)) = blocked {
        return report(Skipped, why, None);
    }
    if w.paused {
        return report(Skipped, reason::DEPLOYMENT_PAUSED, None);
    }
    if w.on_delete {
        return report(Skipped, reason::ON_DELETE_STRATEGY, None);
    }
    match &w.progress {
        Progress::Stalled(why) => {
            return report(Skipped, reason::WORKLOAD_STALLED, Some(why.clone()))
        }
        Progress::InProgress => return report(Pending, reason::ROLLOUT_IN_PROGRESS, None),
        Progress::Complete => {}
    }
    let first_claimant = claimants(policy, w, cluster)
        .into_iter()
        .map(|(n, _)| n)
        .min()
        .filter(|n| *n < policy.name);
    match first_claimant {
        Some(other) => report(Pending, reason::RESTART_BY_OTHER_POLICY, Some(other)),
        None => Decision::RestartNow,
    }
}

/// The strategic-merge patch that restarts a workload, as `kubectl rollout restart` does: new
/// pod-template annotations (the record and the time), nothing else.
pub fn restart_patch(restart: &Restart, now: Timestamp) -> Value {
    let at = Timestamp::from_second(now.as_second()).unwrap_or(now);
    json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_FOR_ANNOTATION: restart.record.render(),
            RESTARTED_AT_ANNOTATION: at.to_string(),
        }}}}
    })
}

/// `status.rollout` of a plan (counts exact, the list capped at [`MAX_LISTED`]).
pub fn rollout_status(plan: &Plan) -> RolloutStatus {
    let count = |s| plan.entries.iter().filter(|e| e.state == s).count() as i32;
    let rank = |e: &Entry| match (e.state, e.reason) {
        (_, r) if r == reason::ROLLOUT_STALLED => 0,
        (WorkloadRolloutState::Skipped, _) => 1,
        (WorkloadRolloutState::Pending, _) => 2,
        (WorkloadRolloutState::Restarted, _) => 3,
    };
    let mut listed: Vec<&Entry> = plan.entries.iter().collect();
    listed.sort_by_key(|e| rank(e));
    RolloutStatus {
        restarted: count(WorkloadRolloutState::Restarted),
        pending: count(WorkloadRolloutState::Pending),
        skipped: count(WorkloadRolloutState::Skipped),
        workloads: listed
            .into_iter()
            .take(MAX_LISTED)
            .map(|e| WorkloadRollout {
                kind: e.kind.clone(),
                name: e.name.clone(),
                state: e.state,
                reason: e.reason.to_string(),
                pods_needing_restart: e.pods as i32,
            })
            .collect(),
    }
}

/// The `RolledOut` condition of a plan: (status, reason, message).
pub fn rolled_out(plan: &Plan) -> (bool, String, String) {
    let names = |f: &dyn Fn(&Entry) -> bool| {
        let v: Vec<String> = plan
            .entries
            .iter()
            .filter(|e| f(e))
            .map(|e| match &e.detail {
                Some(d) => format!("{}/{} ({}: {d})", e.kind, e.name, e.reason),
                None => format!("{}/{} ({})", e.kind, e.name, e.reason),
            })
            .collect();
        (v.len(), list(&v))
    };
    let (skipped, skipped_names) = names(&|e| e.state == WorkloadRolloutState::Skipped);
    let (busy, busy_names) =
        names(&|e| e.state == WorkloadRolloutState::Pending || e.reason == reason::ROLLING_OUT);
    let (done, _) = names(&|e| e.state == WorkloadRolloutState::Restarted);
    let generation = plan.generation;
    if let Some((why, msg)) = &plan.blocked {
        let tail = if skipped > 0 {
            format!("; not restarted: {skipped_names}")
        } else {
            String::new()
        };
        return (false, why.to_string(), format!("{msg}{tail}"));
    }
    if busy > 0 {
        let msg = format!("restarting workloads for generation {generation}: {busy_names}");
        return (false, reason::RESTARTING_WORKLOADS.into(), msg);
    }
    if skipped > 0 {
        let msg = format!(
            "{skipped} target(s) have pods that need a restart the operator does not make: {skipped_names}"
        );
        return (false, reason::MANUAL_RESTART_NEEDED.into(), msg);
    }
    let msg = format!(
        "{done} workload(s) restarted for generation {generation}; no matched pod needs a restart the operator could make"
    );
    (true, reason::ROLLOUT_COMPLETE.into(), msg)
}

/// Put a plan into a status: `status.rollout` and the `RolledOut` condition (both removed for
/// `restartPods: Never`). `prev`: the conditions of the status before (transition times).
pub fn apply_to_status(
    status: &mut TuningPolicyStatus,
    plan: Option<&Plan>,
    prev: &[Condition],
    now: Timestamp,
) {
    status
        .conditions
        .retain(|c| c.type_ != condition::ROLLED_OUT);
    status.rollout = plan.map(rollout_status);
    if let Some(p) = plan {
        let c = make_condition(
            prev,
            condition::ROLLED_OUT,
            rolled_out(p),
            Some(p.generation),
            now,
        );
        status.conditions.push(c);
    }
}

fn list(names: &[String]) -> String {
    const MAX: usize = 5;
    let mut s = names
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(" and {} more", names.len() - MAX));
    }
    s
}
