//! Every machine-readable reason kubetune writes: in decision entries (`kubetune.dev/decision`),
//! in `TuningPolicy.status.sysctls[].reason`, in condition reasons and in Event reasons. The
//! webhook, the operator and the tests name them through these constants only.

// --- How a sysctl is delivered (decision entries, status.sysctls).
/// In the safe set of the cluster's Kubernetes version: into `securityContext.sysctls`.
pub const SAFE_SYSCTL: &str = "SafeSysctl";
/// Unsafe, but every node the pod may run on lists it in `allowedUnsafeSysctls`.
pub const ALLOWED_UNSAFE_SYSCTL: &str = "AllowedUnsafeSysctl";
/// Set by the tuning CNI plugin.
pub const TUNING_CNI: &str = "TuningCNI";

// --- Why a sysctl is not delivered (decision entries, status.sysctls, Accepted=False).
/// A node-level sysctl: never settable per pod.
pub const REFUSED_NODE_LEVEL: &str = "RefusedNodeLevel";
/// A name kubetune's sysctl table does not know.
pub const UNKNOWN_SYSCTL: &str = "UnknownSysctl";
/// A value that does not validate.
pub const INVALID_VALUE: &str = "InvalidValue";
/// An unparsable Kubernetes version.
pub const BAD_VERSION: &str = "BadVersion";
/// An unknown PodSecurity level.
pub const BAD_POD_SECURITY_LEVEL: &str = "BadPodSecurityLevel";
/// The pod uses the host's network (or IPC) namespace.
pub const REFUSED_HOST_NAMESPACE: &str = "RefusedHostNamespace";
/// The namespace's PodSecurity level would reject the pod.
pub const REFUSED_BY_POD_SECURITY: &str = "RefusedByPodSecurity";
/// Unsafe, not allowed by the kubelets, and tuning CNI is no option.
pub const REFUSED_UNSAFE_SYSCTL: &str = "RefusedUnsafeSysctl";
/// Tuning-CNI delivery chosen or asked for but not possible (not enabled, not a `net.*`
/// sysctl, the pod's Multus annotation unreadable, or the NetworkAttachmentDefinition CRD not
/// served).
pub const TUNING_CNI_UNAVAILABLE: &str = "TuningCNIUnavailable";
/// The spec is invalid (both or neither of sysctls/preset, empty list, or another sysctl of
/// the policy is invalid).
pub const INVALID_SPEC: &str = "InvalidSpec";
/// TuningCNI delivery of a non-`net.*` sysctl.
pub const NOT_CNI_DELIVERABLE: &str = "NotCniDeliverable";
/// `spec.podSelector` is invalid.
pub const INVALID_SELECTOR: &str = "InvalidSelector";

// --- Per-pod planner outcomes (decision entries).
/// A policy with higher precedence sets the sysctl.
pub const OVERRIDDEN_BY_POLICY: &str = "OverriddenByPolicy";
/// The pod sets the sysctl itself; kubetune never overwrites it.
pub const POD_VALUE_KEPT: &str = "PodValueKept";

// --- Condition reasons (operator).
/// Accepted: valid and every sysctl deliverable.
pub const ACCEPTED: &str = "Accepted";
/// Accepted: valid, some sysctls refused for the namespace.
pub const PARTIALLY_ACCEPTED: &str = "SomeSysctlsRefused";
/// Applied/Verified: the policy is not accepted. Also the Event published when Accepted turns
/// False.
pub const NOT_ACCEPTED: &str = "NotAccepted";
/// No running/pending pod matches the selector.
pub const NO_MATCHING_PODS: &str = "NoMatchingPods";
/// Every matched pod carries the sysctls.
pub const ALL_PODS_APPLIED: &str = "AllPodsApplied";
/// DryRun: every matched pod is annotated with what would be injected.
pub const ALL_PODS_WOULD_INJECT: &str = "AllPodsWouldInject";
/// Matched pods predate the policy's current values.
pub const PODS_NEED_RESTART: &str = "PodsNeedRestart";
/// Matched pods were admitted but (some) sysctls were not injected into them.
pub const NOT_APPLIED: &str = "NotApplied";
/// Applied: a pod carries a decision annotation of this policy (e.g. copied from another pod
/// while the webhook was unavailable) but its spec does not carry the values (neither
/// `securityContext.sysctls` nor the tuning-CNI network selection). Counted as needing restart.
pub const DECISION_WITHOUT_SYSCTLS: &str = "DecisionWithoutSysctls";
/// Applied=False (and an Event on the policy and the pod): a kubelet rejected pods of this
/// policy with `SysctlForbidden`; the node is recorded in its NodeTuning's
/// `status.refusedSysctls`.
pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";
/// Verified: waiting for the agent's observation or for the window to elapse.
pub const NOT_OBSERVED_YET: &str = "NotObservedYet";
/// Verified: applied pods whose node's agent does not watch them now, or did not watch them
/// through the whole clean window (heartbeat Lease missing or stale, agent restarted mid-window).
pub const NOT_OBSERVED: &str = "NotObserved";
/// Verified: the netns shows another value than the one injected.
pub const VALUE_MISMATCH: &str = "ValueMismatch";
/// Verified: the accept queues of applied pods still overflow.
pub const STILL_OVERFLOWING: &str = "StillOverflowing";
/// Verified: the application's own listen() backlog is the limit.
pub const APPLICATION_BACKLOG_BOUND: &str = "ApplicationBacklogBound";
/// Verified: the application accepts too slowly.
pub const SLOW_ACCEPT: &str = "SlowAccept";
/// Verified: DryRun policies inject nothing.
pub const DRY_RUN: &str = "DryRun";
/// Verified: observed and no overflows over the window.
pub const VERIFIED: &str = "Verified";

// --- Event reasons besides the condition types and reasons above.
/// Event on the policy: a sysctl newly refused (for the namespace or for some pods).
pub const REFUSED: &str = "Refused";
/// Event on a pod: it overflows because of somaxconn and no policy selects it.
pub const SOMAXCONN_BOUND: &str = "SomaxconnBound";

/// Every reason above (for tests and documentation).
pub const ALL: &[&str] = &[
    SAFE_SYSCTL,
    ALLOWED_UNSAFE_SYSCTL,
    TUNING_CNI,
    REFUSED_NODE_LEVEL,
    UNKNOWN_SYSCTL,
    INVALID_VALUE,
    BAD_VERSION,
    BAD_POD_SECURITY_LEVEL,
    REFUSED_HOST_NAMESPACE,
    REFUSED_BY_POD_SECURITY,
    REFUSED_UNSAFE_SYSCTL,
    TUNING_CNI_UNAVAILABLE,
    INVALID_SPEC,
    NOT_CNI_DELIVERABLE,
    INVALID_SELECTOR,
    OVERRIDDEN_BY_POLICY,
    POD_VALUE_KEPT,
    ACCEPTED,
    PARTIALLY_ACCEPTED,
    NOT_ACCEPTED,
    NO_MATCHING_PODS,
    ALL_PODS_APPLIED,
    ALL_PODS_WOULD_INJECT,
    PODS_NEED_RESTART,
    NOT_APPLIED,
    DECISION_WITHOUT_SYSCTLS,
    SYSCTL_FORBIDDEN,
    NOT_OBSERVED_YET,
    NOT_OBSERVED,
    VALUE_MISMATCH,
    STILL_OVERFLOWING,
    APPLICATION_BACKLOG_BOUND,
    SLOW_ACCEPT,
    DRY_RUN,
    VERIFIED,
    REFUSED,
    SOMAXCONN_BOUND,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_camel_case_words() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ALL {
            assert!(seen.insert(*r), "{r} twice");
            assert!(
                r.len() <= 1024 && r.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{r}"
            );
            // Kubernetes condition reasons: ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
    }
}
