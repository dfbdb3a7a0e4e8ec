//! `TuningPolicy`: which sysctls the pods it selects should start with, and how to deliver them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reason;
use crate::sysctl::Preset;

/// Field manager the operator uses for server-side apply of `TuningPolicy.status`.
pub const OPERATOR_FIELD_MANAGER: &str = "kubetune-operator";

/// Default `spec.verificationWindowSeconds`.
pub const DEFAULT_WINDOW_SECONDS: i32 = 300;

/// One sysctl to set in the selected pods' network (or IPC) namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SysctlSetting {
    /// Sysctl name with dots, e.g. `net.core.somaxconn` (slashes are accepted and normalised).
    /// Only namespaced sysctls (`net.*`, `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`)
    /// can be set per pod.
    #[schemars(
        length(min = 3, max = 253),
        regex(pattern = r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])+[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Value as written to /proc/sys: an integer, or several separated by spaces (e.g. `"1024 65535"`).
    #[schemars(length(min = 1, max = 256))]
    pub value: String,
}

/// How the selected sysctls reach the pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Delivery {
    /// Per sysctl: `PodSecurityContext` when the kubelet allows it (safe sysctls always; unsafe ones
    /// only where the cluster facts say the nodes list them in `allowedUnsafeSysctls`), else
    /// `TuningCNI` when tuning-CNI delivery is enabled for the cluster, else refused.
    #[default]
    Auto,
    /// Only through `spec.securityContext.sysctls`; refuse what the kubelet would forbid.
    PodSecurityContext,
    /// Only through the chained `tuning` CNI plugin (Multus network selection); `net.*` only.
    #[serde(rename = "TuningCNI")]
    TuningCni,
}

/// Whether the webhook changes pods or only records what it would do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Mode {
    /// Inject the sysctls into new pods.
    #[default]
    Enforce,
    /// Only annotate new pods with what would be injected; change nothing else.
    DryRun,
}

/// Whether the operator restarts the workloads of running pods that predate the policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum RestartPods {
    /// Never restart anything: running pods that predate the policy (or its current generation)
    /// are only reported as needing a restart.
    #[default]
    Never,
    /// Restart the Deployments, StatefulSets and DaemonSets owning matched pods that need a
    /// restart, the way `kubectl rollout restart` does (a pod-template annotation), so each
    /// workload's own strategy, maxUnavailable/maxSurge and PodDisruptionBudgets pace it. At most
    /// once per workload and policy generation, a cluster-wide number of rollouts at a time
    /// (operator flag `--max-concurrent-rollouts`), never for DryRun or not accepted policies or
    /// refused sysctls; a stalled rollout stops further restarts for the policy. Bare pods and
    /// pods of Jobs or unknown owners are never deleted: they are named as needing a manual
    /// restart.
    Rollout,
}

/// Desired sysctls for the pods selected by `podSelector` in the policy's namespace.
///
/// Sysctls are applied when a pod's sandbox is created: pods that already run when a policy is
/// created or changed keep their old values and are reported as needing a restart.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubetune.dev",
    version = "v1alpha1",
    kind = "TuningPolicy",
    plural = "tuningpolicies",
    shortname = "tp",
    namespaced,
    status = "TuningPolicyStatus",
    printcolumn = r#"{"name":"Sysctls","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedPods"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.appliedPods"}"#,
    printcolumn = r#"{"name":"Verified","type":"integer","jsonPath":".status.verifiedPods"}"#,
    printcolumn = r#"{"name":"Overflowing","type":"integer","jsonPath":".status.overflowingPods"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.sysctls) != has(self.preset)").message("exactly one of spec.sysctls and spec.preset must be set"))]
#[x_kube(validation = Rule::new("!has(self.sysctls) || self.delivery != 'TuningCNI' || self.sysctls.all(s, s.name.startsWith('net.') || s.name.startsWith('net/'))").message("TuningCNI delivery can only set net.* sysctls"))]
#[serde(rename_all = "camelCase")]
pub struct TuningPolicySpec {
    /// Pods in this namespace the policy applies to (like NetworkPolicy). An empty selector
    /// selects every pod in the namespace.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Explicit sysctls. Exactly one of `sysctls` and `preset` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(s, s.name.startsWith('net.') || s.name.startsWith('net/') || s.name.startsWith('kernel.shm') || s.name.startsWith('kernel.msg') || s.name == 'kernel.sem' || s.name.startsWith('fs.mqueue.'))").message("only namespaced sysctls (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) can be set per pod; node-level sysctls are refused"))]
    pub sysctls: Option<Vec<SysctlSetting>>,
    /// A named set of sysctls (see the README for what each expands to). Exactly one of
    /// `sysctls` and `preset` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// How the sysctls reach the pod. Default `Auto`.
    #[serde(default)]
    pub delivery: Delivery,
    /// `Enforce` (default) injects; `DryRun` only annotates pods with what would be injected.
    #[serde(default)]
    pub mode: Mode,
    /// What to do about running pods that predate the policy (or its current generation) and so
    /// lack its sysctls. `Never` (default): only report them (Applied=False, PodsNeedRestart).
    /// `Rollout`: restart the Deployments, StatefulSets and DaemonSets that own them the way
    /// `kubectl rollout restart` does (a pod-template annotation), paced by each workload's own
    /// strategy and PodDisruptionBudgets; at most once per workload and policy generation,
    /// a cluster-wide number of rollouts at a time, never for DryRun or not accepted policies or
    /// refused sysctls; a stalled rollout stops further restarts for the policy. Bare pods and
    /// pods of Jobs or other owners are never deleted, only named in `status.rollout`.
    #[serde(default)]
    pub restart_pods: RestartPods,
    /// When several policies set the same sysctl on a pod, the highest priority wins; equal
    /// priorities are broken by policy name (alphabetically first wins). Default 0.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Window over which a pod must show the desired value and no accept-queue overflows to
    /// count as verified. Default 300.
    #[serde(default = "default_window", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub verification_window_seconds: Option<i32>,
}

fn default_window() -> Option<i32> {
    Some(DEFAULT_WINDOW_SECONDS)
}

impl TuningPolicySpec {
    /// The verification window in seconds.
    pub fn window_seconds(&self) -> i32 {
        self.verification_window_seconds
            .unwrap_or(DEFAULT_WINDOW_SECONDS)
    }
}

/// Where one sysctl of the policy goes, as decided for the policy as a whole.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeliveryDecision {
    /// Into `spec.securityContext.sysctls`.
    PodSecurityContext,
    /// Through the tuning CNI plugin.
    #[serde(rename = "TuningCNI")]
    TuningCni,
    /// Not delivered; see `reason`.
    Refused,
    /// DryRun policy: recorded on pods, not injected.
    DryRun,
}

impl DeliveryDecision {
    /// The name serde writes for this decision.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryDecision::PodSecurityContext => "PodSecurityContext",
            DeliveryDecision::TuningCni => "TuningCNI",
            DeliveryDecision::Refused => "Refused",
            DeliveryDecision::DryRun => "DryRun",
        }
    }
}

/// Per-sysctl decision of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SysctlDeliveryStatus {
    /// Sysctl name.
    pub name: String,
    /// Desired value.
    pub value: String,
    /// How it is delivered (or that it is refused).
    pub delivery: DeliveryDecision,
    /// Machine-readable reason (CamelCase), e.g. `SafeSysctl`, `AllowedUnsafeSysctl`,
    /// `RefusedUnsafeSysctl`, `RefusedNodeLevel`, `RefusedByPodSecurity`, `InvalidValue`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// Pods this sysctl was refused for (refusals can be per pod: hostNetwork, the pod's own value).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_pods: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// Pod-template annotation of a workload the operator restarted: the policies the restart was
/// made for, `name@generation` comma-separated in name order (one restart serves every policy
/// that selects the workload). Read back, it makes restarts idempotent across operator restarts.
pub const RESTARTED_FOR_ANNOTATION: &str = "kubetune.dev/restarted-for";
/// Pod-template annotation of a workload the operator restarted: when (RFC 3339), like
/// `kubectl.kubernetes.io/restartedAt` of `kubectl rollout restart`.
pub const RESTARTED_AT_ANNOTATION: &str = "kubetune.dev/restartedAt";

/// What `spec.restartPods: Rollout` did for the policy's current generation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Workloads whose pod template records a restart for this generation (rolling out or done).
    #[serde(default)]
    pub restarted: i32,
    /// Workloads waiting to be restarted: for the cluster-wide rollout cap, for a rollout already
    /// in progress, or for the restart another policy selecting them makes.
    #[serde(default)]
    pub pending: i32,
    /// Workloads and bare pods not restarted (see `workloads` for why).
    #[serde(default)]
    pub skipped: i32,
    /// Per workload (up to 50: stalled and skipped first, then pending, then restarted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRollout>,
}

/// One workload (or bare pod / Job) of a `restartPods: Rollout` policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRollout {
    /// `Deployment`, `StatefulSet`, `DaemonSet`; for what needs a manual restart `Pod` (no
    /// owner), `Job`, or the owner's kind.
    pub kind: String,
    /// Name (same namespace as the policy).
    pub name: String,
    /// `Restarted`, `Pending` or `Skipped`.
    pub state: WorkloadRolloutState,
    /// Machine-readable reason (CamelCase), e.g. `RollingOut`, `ConcurrencyCap`, `BarePod`.
    pub reason: String,
    /// Matched pods of this workload that still need a restart.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_needing_restart: i32,
}

/// State of one workload of a `restartPods: Rollout` policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadRolloutState {
    /// Its pod template records a restart for the policy's current generation.
    Restarted,
    /// Waiting for its turn.
    Pending,
    /// Not restarted by the operator.
    Skipped,
}

/// Reasons of the `RolledOut` condition and of [`WorkloadRollout::reason`].
pub mod rollout_reason {
    /// RolledOut=False: workloads are being (or waiting to be) restarted.
    pub const RESTARTING_WORKLOADS: &str = "RestartingWorkloads";
    /// RolledOut=False: a rollout made for this generation stalled; no further restarts.
    pub const ROLLOUT_STALLED: &str = "RolloutStalled";
    /// RolledOut=False: matched pods need a restart the operator does not make.
    pub const MANUAL_RESTART_NEEDED: &str = "ManualRestartNeeded";
    /// RolledOut=True: no matched pod needs a restart the operator could make.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// RolledOut=False: DryRun policies restart nothing.
    pub const DRY_RUN: &str = "DryRun";
    /// RolledOut=False: the policy is not accepted.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// RolledOut=False: some of the policy's sysctls are refused; nothing is restarted for it.
    pub const SYSCTLS_REFUSED: &str = "SysctlsRefused";
    /// RolledOut=False: pods of the policy were rejected by a kubelet with `SysctlForbidden`.
    pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";
    /// Workload: restarted for this generation, rollout in progress.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Workload: restarted for this generation, rollout complete.
    pub const ROLLED_OUT: &str = "RolledOut";
    /// Workload: waiting for the cluster-wide cap on concurrent rollouts.
    pub const CONCURRENCY_CAP: &str = "ConcurrencyCap";
    /// Workload: another rollout of it is in progress; restarted after it completes if needed.
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// Workload: another policy selecting it (first by name) makes the one restart for both.
    pub const RESTART_BY_OTHER_POLICY: &str = "RestartByOtherPolicy";
    /// Skipped: a pod without a controller; never deleted.
    pub const BARE_POD: &str = "BarePod";
    /// Skipped: a pod of a Job (or CronJob); never deleted.
    pub const JOB_POD: &str = "JobPod";
    /// Skipped: a pod whose controller is not a Deployment, StatefulSet or DaemonSet.
    pub const UNKNOWN_OWNER: &str = "UnknownOwner";
    /// Skipped: the pod's owner (ReplicaSet, or its Deployment) was not found.
    pub const OWNER_NOT_FOUND: &str = "OwnerNotFound";
    /// Skipped: the Deployment is paused (`kubectl rollout resume` first).
    pub const DEPLOYMENT_PAUSED: &str = "DeploymentPaused";
    /// Skipped: `updateStrategy: OnDelete` does not replace pods on a template change.
    pub const ON_DELETE_STRATEGY: &str = "OnDeleteStrategy";
    /// Skipped: already restarted for this generation, yet pods still lack the sysctls.
    pub const ALREADY_RESTARTED: &str = "AlreadyRestarted";
    /// Skipped: the workload's own rollout stalled (not one the operator made).
    pub const WORKLOAD_STALLED: &str = "WorkloadStalled";
}

/// Observed state of a TuningPolicy, computed by the operator from pods, their admission
/// annotations and the node agents' ListenerReports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TuningPolicyStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word state for `kubectl get`: `Invalid`, `Refused`, `DryRun`,
    /// `NoMatchingPods`, `NotSysctlBound`, `StillOverflowing`, `PodsNeedRestart`,
    /// `NotObservedYet`, `Pending`, `Verified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Short rendering of the desired sysctls, e.g. `net.core.somaxconn=8192 (+1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Running or pending pods (not terminating, not opted out with `kubetune.dev/skip`) the
    /// selector matches.
    #[serde(default)]
    pub matched_pods: i32,
    /// Matched pods whose admission annotation shows this policy's sysctls injected (at the
    /// current generation's values).
    #[serde(default)]
    pub applied_pods: i32,
    /// Applied pods whose ListenerReport shows the desired values in the pod's netns and no
    /// accept-queue overflows over the verification window.
    #[serde(default)]
    pub verified_pods: i32,
    /// Matched pods whose ListenerReport shows accept-queue overflows in the window.
    #[serde(default)]
    pub overflowing_pods: i32,
    /// Matched pods created before the policy (or its current generation) that must be
    /// recreated to get the sysctls.
    #[serde(default)]
    pub needs_restart_pods: i32,
    /// Pods of this policy that a kubelet rejected with `SysctlForbidden` (phase `Failed`, still
    /// present): their nodes' kubelets do not allow an injected unsafe sysctl. Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forbidden_pods: i32,
    /// Per-sysctl delivery decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<SysctlDeliveryStatus>,
    /// What `spec.restartPods: Rollout` did (absent for `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// `Accepted` (valid and deliverable), `Applied` (every matched pod carries the sysctls),
    /// `Verified` (observed in the pods' netns and overflows stopped or none seen), and for
    /// `restartPods: Rollout` `RolledOut` (no matched pod needs a restart the operator could make).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Condition types used in `TuningPolicy.status.conditions`.
pub mod condition {
    /// The policy is valid and at least one sysctl is deliverable.
    pub const ACCEPTED: &str = "Accepted";
    /// Every matched pod carries the policy's sysctls.
    pub const APPLIED: &str = "Applied";
    /// The sysctls were observed in the pods' netns and overflows stopped (or none were seen).
    pub const VERIFIED: &str = "Verified";
    /// `restartPods: Rollout` only: no matched pod needs a restart the operator could make.
    pub const ROLLED_OUT: &str = "RolledOut";
}

/// Values of `status.phase` (the STATUS column), in the order the operator decides them.
pub mod phase {
    /// The spec is invalid.
    pub const INVALID: &str = "Invalid";
    /// Valid, but nothing can be delivered (all sysctls refused, or tuning CNI unavailable).
    pub const REFUSED: &str = "Refused";
    /// DryRun policy.
    pub const DRY_RUN: &str = "DryRun";
    /// No matched pods.
    pub const NO_MATCHING_PODS: &str = "NoMatchingPods";
    /// Applied pods are application-backlog bound or slow to accept: a sysctl is not the fix.
    pub const NOT_SYSCTL_BOUND: &str = "NotSysctlBound";
    /// Applied pods still overflow.
    pub const STILL_OVERFLOWING: &str = "StillOverflowing";
    /// A kubelet rejected pods of the policy with `SysctlForbidden`.
    pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";
    /// Matched pods must be recreated.
    pub const PODS_NEED_RESTART: &str = "PodsNeedRestart";
    /// Waiting for the agent's observation or the verification window.
    pub const NOT_OBSERVED_YET: &str = "NotObservedYet";
    /// Matched pods were admitted without the sysctls (per-pod refusals).
    pub const PENDING: &str = "Pending";
    /// Verified.
    pub const VERIFIED: &str = "Verified";
}

/// A policy's desired sysctls, resolved: explicit list or expanded preset (names normalised, valid
/// values as the kernel prints them).
pub fn desired_sysctls(spec: &TuningPolicySpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(list) = &spec.sysctls {
        for s in list {
            let name = crate::sysctl::normalize_name(&s.name);
            // The value as the kernel prints it (`059` -> `59`, tabs -> one space), so what is
            // injected, recorded and compared with the netns is one spelling; an invalid value
            // stays as written (validate_spec reports it).
            let value = crate::sysctl::validate_value(&name, &s.value)
                .unwrap_or_else(|_| s.value.trim().to_string());
            out.insert(name, value);
        }
    } else if let Some(p) = spec.preset {
        for (n, v) in p.expand() {
            out.insert(n.to_string(), v.to_string());
        }
    }
    out
}

/// Why a TuningPolicy spec is invalid. The same checks back the validating webhook and the
/// operator's `Accepted=False` condition, so a policy that slipped past admission is still reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Both or neither of `sysctls` and `preset`.
    #[error("exactly one of spec.sysctls and spec.preset must be set")]
    SysctlsXorPreset,
    /// `sysctls: []`.
    #[error("spec.sysctls must not be empty")]
    EmptySysctls,
    /// A sysctl is node-level, unknown, duplicated or has a bad value.
    #[error("spec.sysctls[{name}]: {error}")]
    Sysctl {
        /// The sysctl.
        name: String,
        /// Why.
        error: crate::sysctl::SysctlError,
    },
    /// TuningCNI delivery of a non-`net.*` sysctl.
    #[error("spec.sysctls[{0}]: TuningCNI delivery can only set net.* sysctls (the tuning plugin writes /proc/sys/net only)")]
    NotCniDeliverable(String),
    /// Bad label selector.
    #[error("spec.podSelector: {0}")]
    Selector(String),
}

impl SpecError {
    /// Machine-readable reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::SysctlsXorPreset | SpecError::EmptySysctls => reason::INVALID_SPEC,
            SpecError::Sysctl { error, .. } => error.reason(),
            SpecError::NotCniDeliverable(_) => reason::NOT_CNI_DELIVERABLE,
            SpecError::Selector(_) => reason::INVALID_SELECTOR,
        }
    }
}

/// Validate a spec beyond what the CRD schema/CEL can express. Returns every problem.
pub fn validate_spec(spec: &TuningPolicySpec) -> Vec<SpecError> {
    let mut errs = Vec::new();
    match (&spec.sysctls, &spec.preset) {
        (Some(_), Some(_)) | (None, None) => errs.push(SpecError::SysctlsXorPreset),
        (Some(l), None) if l.is_empty() => errs.push(SpecError::EmptySysctls),
        _ => {}
    }
    if let Some(list) = &spec.sysctls {
        for p in
            crate::sysctl::validate_all(list.iter().map(|s| (s.name.as_str(), s.value.as_str())))
        {
            errs.push(SpecError::Sysctl {
                name: p.name,
                error: p.error,
            });
        }
    }
    if spec.delivery == Delivery::TuningCni {
        for name in desired_sysctls(spec).keys() {
            if !name.starts_with("net.") {
                errs.push(SpecError::NotCniDeliverable(name.clone()));
            }
        }
    }
    errs.extend(
        crate::matching::selector_problems(&spec.pod_selector)
            .into_iter()
            .map(SpecError::Selector),
    );
    errs
}
