//! `TuningPolicy`: which sysctls the pods it selects should start with, and how to deliver them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// Observed state of a TuningPolicy, computed by the operator from pods, their admission
/// annotations and the node agents' ListenerReports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TuningPolicyStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word state for `kubectl get`: `Invalid`, `NoMatchingPods`, `Pending`, `PodsNeedRestart`,
    /// `NotObservedYet`, `StillOverflowing`, `NotSysctlBound`, `Verified`, `DryRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Short rendering of the desired sysctls, e.g. `net.core.somaxconn=8192 (+1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Running pods the selector matches.
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
    /// Per-sysctl delivery decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<SysctlDeliveryStatus>,
    /// `Accepted` (valid and deliverable), `Applied` (every matched pod carries the sysctls),
    /// `Verified` (observed in the pods' netns and overflows stopped or none seen).
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
            SpecError::SysctlsXorPreset | SpecError::EmptySysctls => "InvalidSpec",
            SpecError::Sysctl { error, .. } => error.reason(),
            SpecError::NotCniDeliverable(_) => "NotCniDeliverable",
            SpecError::Selector(_) => "InvalidSelector",
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
    if let Some(exprs) = &spec.pod_selector.match_expressions {
        for e in exprs {
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
            match e.operator.as_str() {
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                op => errs.push(SpecError::Selector(format!(
                    "unknown operator {op:?} for key {:?}",
                    e.key
                ))),
            }
            if needs_values && !has_values {
                errs.push(SpecError::Selector(format!(
                    "operator {} for key {:?} needs values",
                    e.operator, e.key
                )));
            }
            if !needs_values
                && has_values
                && matches!(e.operator.as_str(), "Exists" | "DoesNotExist")
            {
                errs.push(SpecError::Selector(format!(
                    "operator {} for key {:?} takes no values",
                    e.operator, e.key
                )));
            }
        }
    }
    errs
}
