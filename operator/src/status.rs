//! The pure status computation: `TuningPolicy.status = f(policy, pods, reports, facts, now)`.
//!
//! No I/O. The reconciler feeds it the reflector stores; tests, the benchmark and the local demo
//! feed it in-memory objects. Everything a user sees in `kubectl get tuningpolicies` comes from
//! here.
//!
//! # Rules
//!
//! * **Matched** pods: in the policy's namespace, phase `Running` or `Pending` (or no phase yet),
//!   not terminating, not opted out with `kubetune.dev/skip: "true"`, selected by
//!   `spec.podSelector`.
//! * A pod's **admission record** is its `kubetune.dev/decision` annotation. It is *at current
//!   values* when it has an entry of this policy for every desired sysctl with the desired value
//!   (`sysctl::values_equal`). A matched pod without such a record was created before the policy
//!   (or before its current values), or admitted while the webhook was unavailable: it
//!   **needs restart** — sysctls are applied when the pod sandbox is created, never to a running pod.
//! * **Applied**: the record at current values shows every sysctl the policy can deliver
//!   (policy-level decision not `Refused`) as `Injected` (`WouldInject` for DryRun policies),
//!   and at least one of them.
//! * **Verified** (never for DryRun): an applied pod whose ListenerReport (same name, same pod
//!   UID) shows every injected sysctl with the desired value in the pod's netns
//!   (`spec.somaxconn` / `spec.sysctls`), a diagnosis that is neither `ApplicationBacklogBound`
//!   nor `SlowAccept`, no recent overflows, and a clean interval of at least the policy's
//!   `verificationWindowSeconds` since the pod started. The clean interval starts at the pod's
//!   start when the report has never counted an overflow (`overflowsTotal == 0`: none before and
//!   none after), else at `observedAt - windowSeconds` (the report's window, which the agent
//!   rewrites on every change, so no newer report means no newer overflow) — never before the pod
//!   started. A pod without a start time relies on the report window alone.
//! * **Overflowing**: matched pods whose report shows `overflowsRecent > 0`.
//!
//! See `README.md` for the table of conditions, reasons and phases.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubetune_crds::decision::{
    DecisionEntry, Outcome, PodDecision, DECISION_ANNOTATION, SKIP_ANNOTATION,
};
use kubetune_crds::facts::{decide, ClusterFacts, PodContext};
use kubetune_crds::policy::{
    condition, desired_sysctls, validate_spec, DeliveryDecision, Mode, SysctlDeliveryStatus,
    TuningPolicy, TuningPolicyStatus,
};
use kubetune_crds::report::{Diagnosis, ListenerReport};
use kubetune_crds::{selector, sysctl};

/// Condition reasons the operator writes (besides refusal reasons taken from `kubetune-crds`).
pub mod reason {
    /// Accepted: valid and every sysctl deliverable.
    pub const ACCEPTED: &str = "Accepted";
    /// Accepted: valid, some sysctls refused for the namespace.
    pub const PARTIALLY_ACCEPTED: &str = "SomeSysctlsRefused";
    /// The spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Tuning-CNI delivery chosen but the NetworkAttachmentDefinition CRD is not served.
    pub const TUNING_CNI_UNAVAILABLE: &str = "TuningCNIUnavailable";
    /// Applied/Verified: the policy is not accepted.
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
    /// Verified: waiting for the agent's observation or for the window to elapse.
    pub const NOT_OBSERVED_YET: &str = "NotObservedYet";
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
}

/// Values of `status.phase` (the STATUS column).
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
    /// Matched pods must be recreated.
    pub const PODS_NEED_RESTART: &str = "PodsNeedRestart";
    /// Waiting for the agent's observation or the verification window.
    pub const NOT_OBSERVED_YET: &str = "NotObservedYet";
    /// Matched pods were admitted without the sysctls (per-pod refusals).
    pub const PENDING: &str = "Pending";
    /// Verified.
    pub const VERIFIED: &str = "Verified";
}

/// Facts about the policy's environment that are not in the policy, pods or reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Delivery context of the namespace (its PodSecurity enforcement); pod-level fields stay
    /// default — per-pod refusals are read from the pods' admission records.
    pub namespace: PodContext,
    /// Whether the NetworkAttachmentDefinition CRD (`k8s.cni.cncf.io/v1`) is served. Only
    /// consulted when a sysctl's delivery resolves to tuning CNI.
    pub tuning_cni_crd: bool,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            namespace: PodContext::default(),
            tuning_cni_crd: true,
        }
    }
}

/// What the status computation concluded about one matched pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// No admission record at the policy's current values: recreate the pod.
    NeedsRestart,
    /// Admitted at current values, but not every deliverable sysctl was injected.
    NotApplied {
        /// Reason of the first non-injected entry (e.g. `RefusedHostNamespace`, `PodValueKept`).
        reason: String,
        /// Its message.
        message: String,
    },
    /// DryRun: the record shows what would be injected.
    WouldInject,
    /// Injected; what the node agent observed.
    Applied(Observation),
}

/// Observation of an applied pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// No ListenerReport for this pod (UID) yet.
    NoReport,
    /// The report does not (yet) include this sysctl.
    ValueNotReported {
        /// The sysctl.
        sysctl: String,
    },
    /// The netns shows another value.
    ValueMismatch {
        /// The sysctl.
        sysctl: String,
        /// Desired value.
        want: String,
        /// Observed value.
        got: String,
    },
    /// The application's own backlog binds.
    ApplicationBacklogBound,
    /// The application accepts too slowly.
    SlowAccept,
    /// Accept-queue overflows in the report window.
    Overflowing {
        /// `overflowsRecent`.
        recent: i64,
    },
    /// Values observed, no overflows, but the clean interval is shorter than the window.
    Waiting {
        /// When the pod becomes verified if nothing changes.
        until: Timestamp,
    },
    /// Verified.
    Verified,
}

/// One matched pod and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodVerdict {
    /// Pod name.
    pub name: String,
    /// State.
    pub state: PodState,
    /// Report shows `overflowsRecent > 0`.
    pub overflowing: bool,
}

/// Full result: the status plus the per-pod detail the reconciler uses for events and requeues.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The status to write.
    pub status: TuningPolicyStatus,
    /// Matched pods, sorted by name.
    pub pods: Vec<PodVerdict>,
    /// Earliest time at which a waiting pod becomes verified if nothing changes.
    pub next_check: Option<Timestamp>,
    /// True when at least one sysctl is delivered through tuning CNI (the namespace needs the
    /// NetworkAttachmentDefinition).
    pub uses_tuning_cni: bool,
}

/// Compute a policy's status (namespace without PodSecurity enforcement, NAD CRD assumed
/// served). Pure: the same inputs give the same status. `pods` and `reports` may contain objects
/// of other namespaces; they are ignored.
///
/// ```no_run
/// # use kubetune_operator::status::compute_status;
/// # fn demo(policy: &kubetune_crds::TuningPolicy, pods: &[k8s_openapi::api::core::v1::Pod],
/// #         reports: &[kubetune_crds::ListenerReport], facts: &kubetune_crds::facts::ClusterFacts) {
/// let status = compute_status(policy, pods, reports, facts, k8s_openapi::jiff::Timestamp::now());
/// println!("{:?} {}/{}", status.phase, status.verified_pods, status.matched_pods);
/// # }
/// ```
pub fn compute_status<'a>(
    policy: &TuningPolicy,
    pods: impl IntoIterator<Item = &'a Pod>,
    reports: impl IntoIterator<Item = &'a ListenerReport>,
    facts: &ClusterFacts,
    now: Timestamp,
) -> TuningPolicyStatus {
    evaluate(policy, pods, reports, facts, &Environment::default(), now).status
}

/// Compute a policy's status with an explicit [`Environment`]; also returns per-pod detail.
pub fn evaluate<'a>(
    policy: &TuningPolicy,
    pods: impl IntoIterator<Item = &'a Pod>,
    reports: impl IntoIterator<Item = &'a ListenerReport>,
    facts: &ClusterFacts,
    env: &Environment,
    now: Timestamp,
) -> Evaluation {
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let generation = policy.metadata.generation;
    let spec = &policy.spec;
    let dry_run = spec.mode == Mode::DryRun;
    let desired = desired_sysctls(spec);
    let window = SignedDuration::from_secs(i64::from(spec.window_seconds().max(0)));
    let prev = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    // Policy-level (namespace) delivery per sysctl.
    let spec_errors = validate_spec(spec);
    let mut per_sysctl: Vec<SysctlDeliveryStatus> = Vec::new();
    let mut uses_tuning_cni = false;
    for (n, v) in &desired {
        let s = match decide(n, v, spec.delivery, facts, &env.namespace) {
            Ok(d) => {
                uses_tuning_cni |= d.how == DeliveryDecision::TuningCni;
                let (delivery, message) = if dry_run {
                    (
                        DeliveryDecision::DryRun,
                        format!("DryRun, would deliver via {:?}: {}", d.how, d.message),
                    )
                } else {
                    (d.how, d.message)
                };
                SysctlDeliveryStatus {
                    name: n.clone(),
                    value: v.clone(),
                    delivery,
                    reason: d.reason.to_string(),
                    message,
                    refused_pods: 0,
                }
            }
            Err(r) => SysctlDeliveryStatus {
                name: n.clone(),
                value: v.clone(),
                delivery: DeliveryDecision::Refused,
                reason: r.reason().to_string(),
                message: r.to_string(),
                refused_pods: 0,
            },
        };
        per_sysctl.push(s);
    }
    // Dry-run policies never create NADs.
    let uses_tuning_cni = uses_tuning_cni && !dry_run && spec_errors.is_empty();
    let deliverable: BTreeMap<&str, &str> = per_sysctl
        .iter()
        .filter(|s| s.delivery != DeliveryDecision::Refused)
        .map(|s| (s.name.as_str(), s.value.as_str()))
        .collect();

    // Accepted.
    let accepted: (bool, String, String) = if !spec_errors.is_empty() {
        let msg = spec_errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        (false, reason::INVALID_SPEC.into(), msg)
    } else if deliverable.is_empty() {
        let first = per_sysctl.first();
        (
            false,
            first
                .map(|s| s.reason.clone())
                .unwrap_or_else(|| reason::INVALID_SPEC.into()),
            per_sysctl
                .iter()
                .map(|s| s.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else if uses_tuning_cni && !env.tuning_cni_crd {
        (
            false,
            reason::TUNING_CNI_UNAVAILABLE.into(),
            "tuning-CNI delivery is enabled in the cluster facts and chosen for this policy, but the \
             NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) is not served: install Multus and the \
             tuning CNI plugin on every node, or remove tuningCni from the kubetune-cluster-facts ConfigMap"
                .into(),
        )
    } else if deliverable.len() < per_sysctl.len() {
        let refused: Vec<String> = per_sysctl
            .iter()
            .filter(|s| s.delivery == DeliveryDecision::Refused)
            .map(|s| format!("{} ({}): {}", s.name, s.reason, s.message))
            .collect();
        (
            true,
            reason::PARTIALLY_ACCEPTED.into(),
            format!(
                "{} of {} sysctls deliverable; refused: {}",
                deliverable.len(),
                per_sysctl.len(),
                refused.join("; ")
            ),
        )
    } else {
        let how: Vec<String> = per_sysctl
            .iter()
            .map(|s| format!("{}={} via {:?}", s.name, s.value, s.delivery))
            .collect();
        (true, reason::ACCEPTED.into(), how.join(", "))
    };
    let is_accepted = accepted.0;

    // Reports of this namespace by name.
    let reports: HashMap<&str, &ListenerReport> = reports
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref().unwrap_or_default() == ns)
        .filter_map(|r| r.metadata.name.as_deref().map(|n| (n, r)))
        .collect();

    // Matched pods.
    let mut verdicts: Vec<PodVerdict> = Vec::new();
    let mut refused_pods: BTreeMap<String, i32> = BTreeMap::new();
    let mut next_check: Option<Timestamp> = None;
    for pod in pods {
        if !pod_is_candidate(pod, ns) {
            continue;
        }
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        if !selector::matches(&spec.pod_selector, labels) {
            continue;
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let report = reports
            .get(pod_name.as_str())
            .copied()
            .filter(|r| report_is_for(r, pod));
        let overflowing = report.is_some_and(|r| r.spec.overflows_recent > 0);
        let entries = current_entries(pod, name, &desired);
        let state = match entries {
            None => PodState::NeedsRestart,
            Some(entries) => {
                for e in &entries {
                    if matches!(e.outcome, Outcome::Refused | Outcome::PodValueKept) {
                        *refused_pods.entry(e.sysctl.clone()).or_default() += 1;
                    }
                }
                let want = if dry_run {
                    Outcome::WouldInject
                } else {
                    Outcome::Injected
                };
                let blocking = entries
                    .iter()
                    .find(|e| deliverable.contains_key(e.sysctl.as_str()) && e.outcome != want);
                let any = entries.iter().any(|e| e.outcome == want);
                // Admitted while the policy was in the other mode (same values).
                let other_mode = blocking
                    .is_some_and(|e| matches!(e.outcome, Outcome::Injected | Outcome::WouldInject));
                match (blocking, any) {
                    _ if !spec_errors.is_empty() => PodState::NotApplied {
                        reason: reason::INVALID_SPEC.into(),
                        message: "the policy is invalid".into(),
                    },
                    (Some(_), _) if other_mode && !dry_run => PodState::NeedsRestart,
                    (Some(_), _) if other_mode => PodState::NotApplied {
                        reason: reason::NOT_APPLIED.into(),
                        message: "admitted while the policy was in Enforce mode; DryRun counts \
                                  pods annotated with WouldInject"
                            .into(),
                    },
                    (Some(e), _) => PodState::NotApplied {
                        reason: e.reason.clone(),
                        message: e.message.clone(),
                    },
                    (None, false) => PodState::NotApplied {
                        reason: reason::NOT_APPLIED.into(),
                        message: "no sysctl of this policy was injected".into(),
                    },
                    (None, true) if dry_run => PodState::WouldInject,
                    (None, true) => {
                        let injected: Vec<(&str, &str)> = entries
                            .iter()
                            .filter(|e| e.outcome == Outcome::Injected)
                            .map(|e| (e.sysctl.as_str(), e.value.as_str()))
                            .collect();
                        let obs = observe(pod, report, &injected, window, now);
                        if let Observation::Waiting { until } = obs {
                            next_check = Some(next_check.map_or(until, |t| t.min(until)));
                        }
                        PodState::Applied(obs)
                    }
                }
            }
        };
        verdicts.push(PodVerdict {
            name: pod_name,
            state,
            overflowing,
        });
    }
    verdicts.sort_by(|a, b| a.name.cmp(&b.name));
    for s in &mut per_sysctl {
        s.refused_pods = refused_pods.get(&s.name).copied().unwrap_or(0);
    }

    // Counts.
    let matched = verdicts.len() as i32;
    let count = |f: &dyn Fn(&PodVerdict) -> bool| verdicts.iter().filter(|v| f(v)).count() as i32;
    let applied = count(&|v| matches!(v.state, PodState::Applied(_) | PodState::WouldInject));
    let verified = count(&|v| v.state == PodState::Applied(Observation::Verified));
    let overflowing = count(&|v| v.overflowing);
    let needs_restart = count(&|v| v.state == PodState::NeedsRestart);
    let obs = |f: &dyn Fn(&Observation) -> bool| {
        verdicts
            .iter()
            .filter(|v| matches!(&v.state, PodState::Applied(o) if f(o)))
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
    };
    let app_bound = obs(&|o| *o == Observation::ApplicationBacklogBound);
    let slow = obs(&|o| *o == Observation::SlowAccept);
    let still = obs(&|o| matches!(o, Observation::Overflowing { .. }));
    let mismatch = obs(&|o| matches!(o, Observation::ValueMismatch { .. }));
    let waiting = obs(&|o| {
        matches!(
            o,
            Observation::NoReport
                | Observation::ValueNotReported { .. }
                | Observation::Waiting { .. }
        )
    });

    // Applied condition.
    let gen_txt = generation.map_or_else(String::new, |g| format!(" {g}"));
    let applied_c: (bool, String, String) = if !is_accepted {
        (
            false,
            reason::NOT_ACCEPTED.into(),
            "the policy is not accepted (see the Accepted condition)".into(),
        )
    } else if matched == 0 {
        (
            false,
            reason::NO_MATCHING_PODS.into(),
            format!("no running or pending pod in namespace {ns} matches spec.podSelector"),
        )
    } else if applied == matched {
        if dry_run {
            (
                true,
                reason::ALL_PODS_WOULD_INJECT.into(),
                format!(
                    "all {matched} matched pods are annotated with what would be injected (DryRun)"
                ),
            )
        } else {
            (
                true,
                reason::ALL_PODS_APPLIED.into(),
                format!("all {matched} matched pods were admitted with the sysctls"),
            )
        }
    } else if needs_restart > 0 {
        let names: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.state == PodState::NeedsRestart)
            .map(|v| v.name.as_str())
            .collect();
        (
            false,
            reason::PODS_NEED_RESTART.into(),
            format!(
                "{needs_restart} of {matched} matched pods were created before generation{gen_txt} of this \
                 policy (or while the webhook was unavailable) and do not carry its sysctls; sysctls are \
                 applied only when a pod is created: recreate them (e.g. kubectl rollout restart): {}",
                list(&names)
            ),
        )
    } else {
        let first = verdicts.iter().find_map(|v| match &v.state {
            PodState::NotApplied { reason, message } => Some((v.name.as_str(), reason, message)),
            _ => None,
        });
        let (r, m) = first
            .map(|(pod, r, m)| (r.clone(), format!("pod {pod}: {m}")))
            .unwrap_or_else(|| (reason::NOT_APPLIED.into(), String::new()));
        (
            false,
            r,
            format!(
                "{} of {matched} matched pods were admitted without (some of) the sysctls; {m}",
                matched - applied
            ),
        )
    };

    // Verified condition.
    let window_s = spec.window_seconds();
    let verified_c: (bool, String, String) = if !is_accepted {
        (
            false,
            reason::NOT_ACCEPTED.into(),
            "the policy is not accepted (see the Accepted condition)".into(),
        )
    } else if dry_run {
        (
            false,
            reason::DRY_RUN.into(),
            "DryRun policy: pods are only annotated with what would be injected; nothing to verify"
                .into(),
        )
    } else if matched == 0 {
        (
            false,
            reason::NO_MATCHING_PODS.into(),
            "no matched pods to observe".into(),
        )
    } else if applied == 0 {
        if needs_restart > 0 {
            (
                false,
                reason::PODS_NEED_RESTART.into(),
                "no matched pod carries the sysctls yet: recreate the pods".into(),
            )
        } else {
            (
                false,
                reason::NOT_APPLIED.into(),
                "no matched pod carries the sysctls (see the Applied condition)".into(),
            )
        }
    } else if !app_bound.is_empty() {
        (
            false,
            reason::APPLICATION_BACKLOG_BOUND.into(),
            format!(
                "the sysctls are applied but the application's own listen() backlog is the limit in {}: \
                 raise the application's backlog (e.g. nginx `listen ... backlog=`, uwsgi --listen, \
                 Java ServerSocket backlog); the sysctl is not the fix",
                list(&app_bound)
            ),
        )
    } else if !slow.is_empty() {
        (
            false,
            reason::SLOW_ACCEPT.into(),
            format!(
                "the sysctls are applied but the application accepts connections too slowly in {} \
                 (accept queue sits full): add workers or fix blocking I/O; no sysctl fixes this",
                list(&slow)
            ),
        )
    } else if !still.is_empty() {
        (
            false,
            reason::STILL_OVERFLOWING.into(),
            format!(
                "accept queues still overflow in {} although the desired values are in the pods' netns",
                list(&still)
            ),
        )
    } else if !mismatch.is_empty() {
        let detail: Vec<String> = verdicts
            .iter()
            .filter_map(|v| match &v.state {
                PodState::Applied(Observation::ValueMismatch { sysctl, want, got }) => {
                    Some(format!("{}: {sysctl}={got} (want {want})", v.name))
                }
                _ => None,
            })
            .take(5)
            .collect();
        (
            false,
            reason::VALUE_MISMATCH.into(),
            format!(
                "the pods' netns shows other values than injected: {}",
                detail.join(", ")
            ),
        )
    } else if !waiting.is_empty() {
        (
            false,
            reason::NOT_OBSERVED_YET.into(),
            format!(
                "{} of {applied} applied pods not yet observed for {window_s}s without overflows by the \
                 node agent: {}",
                waiting.len(),
                list(&waiting)
            ),
        )
    } else {
        (
            true,
            reason::VERIFIED.into(),
            format!(
                "{verified} of {applied} applied pods show the desired values in their netns and no \
                 accept-queue overflows over {window_s}s"
            ),
        )
    };

    let phase = if !spec_errors.is_empty() {
        phase::INVALID
    } else if !is_accepted {
        phase::REFUSED
    } else if dry_run {
        phase::DRY_RUN
    } else if matched == 0 {
        phase::NO_MATCHING_PODS
    } else if !app_bound.is_empty() || !slow.is_empty() {
        phase::NOT_SYSCTL_BOUND
    } else if !still.is_empty() {
        phase::STILL_OVERFLOWING
    } else if needs_restart > 0 {
        phase::PODS_NEED_RESTART
    } else if !mismatch.is_empty() || !waiting.is_empty() {
        phase::NOT_OBSERVED_YET
    } else if verified_c.0 {
        phase::VERIFIED
    } else {
        phase::PENDING
    };

    let conditions = vec![
        make_condition(prev, condition::ACCEPTED, accepted, generation, now),
        make_condition(prev, condition::APPLIED, applied_c, generation, now),
        make_condition(prev, condition::VERIFIED, verified_c, generation, now),
    ];

    let status = TuningPolicyStatus {
        observed_generation: generation,
        phase: Some(phase.to_string()),
        summary: summary(&desired),
        matched_pods: matched,
        applied_pods: applied,
        verified_pods: verified,
        overflowing_pods: overflowing,
        needs_restart_pods: needs_restart,
        sysctls: per_sysctl,
        conditions,
    };
    Evaluation {
        status,
        pods: verdicts,
        next_check,
        uses_tuning_cni,
    }
}

/// `name=value (+N)` for the first desired sysctl (alphabetical) and the number of others.
pub fn summary(desired: &BTreeMap<String, String>) -> Option<String> {
    let (n, v) = desired.iter().next()?;
    Some(if desired.len() > 1 {
        format!("{n}={v} (+{})", desired.len() - 1)
    } else {
        format!("{n}={v}")
    })
}

/// Is `pod` a candidate for policies of namespace `ns`: same namespace, Running/Pending, not
/// terminating, not opted out?
pub fn pod_is_candidate(pod: &Pod, ns: &str) -> bool {
    if pod.metadata.namespace.as_deref().unwrap_or_default() != ns {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let skip = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_ANNOTATION))
        .is_some_and(|v| v == "true");
    if skip {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, None | Some("Running") | Some("Pending"))
}

/// Does `report` describe this incarnation of `pod` (same UID when both are known)?
pub fn report_is_for(report: &ListenerReport, pod: &Pod) -> bool {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !report.spec.pod_uid.is_empty() => report.spec.pod_uid == uid,
        _ => true,
    }
}

/// The pod's parsed admission record, if any (a malformed one counts as none).
pub fn pod_decision(pod: &Pod) -> Option<PodDecision> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(DECISION_ANNOTATION)
        .and_then(|s| PodDecision::parse(s).ok())
}

/// The entries of policy `policy` in the pod's record, if they cover every desired sysctl at the
/// desired value (the record is "at current values"); `None` otherwise.
fn current_entries(
    pod: &Pod,
    policy: &str,
    desired: &BTreeMap<String, String>,
) -> Option<Vec<DecisionEntry>> {
    let decision = pod_decision(pod)?;
    let mut out = Vec::with_capacity(desired.len());
    for (n, v) in desired {
        let e = decision.for_policy(policy).find(|e| {
            sysctl::normalize_name(&e.sysctl) == *n && sysctl::values_equal(&e.value, v)
        })?;
        out.push(e.clone());
    }
    (!out.is_empty()).then_some(out)
}

fn pod_start(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// What the report says about an applied pod.
fn observe(
    pod: &Pod,
    report: Option<&ListenerReport>,
    injected: &[(&str, &str)],
    window: SignedDuration,
    now: Timestamp,
) -> Observation {
    let Some(r) = report else {
        return Observation::NoReport;
    };
    for (n, want) in injected {
        let got = if *n == "net.core.somaxconn" {
            r.spec
                .somaxconn
                .map(|v| v.to_string())
                .or_else(|| r.spec.sysctls.get(*n).cloned())
        } else {
            r.spec.sysctls.get(*n).cloned()
        };
        match got {
            None => {
                return Observation::ValueNotReported {
                    sysctl: n.to_string(),
                }
            }
            Some(g) if !sysctl::values_equal(&g, want) => {
                return Observation::ValueMismatch {
                    sysctl: n.to_string(),
                    want: want.to_string(),
                    got: g,
                }
            }
            Some(_) => {}
        }
    }
    match r.spec.diagnosis {
        Diagnosis::ApplicationBacklogBound => return Observation::ApplicationBacklogBound,
        Diagnosis::SlowAccept => return Observation::SlowAccept,
        _ => {}
    }
    if r.spec.overflows_recent > 0 || r.spec.diagnosis == Diagnosis::SomaxconnBound {
        return Observation::Overflowing {
            recent: r.spec.overflows_recent,
        };
    }
    let observed_at: Option<Timestamp> = r.spec.observed_at.parse().ok();
    let report_window = SignedDuration::from_secs(r.spec.window_seconds.max(0));
    let start = pod_start(pod);
    let clean_since = match (start, observed_at) {
        (Some(s), _) if r.spec.overflows_total == 0 => Some(s),
        (Some(s), Some(o)) => Some(s.max(o - report_window)),
        (None, Some(o)) => Some(o - report_window),
        (Some(_), None) | (None, None) => None,
    };
    match clean_since {
        None => Observation::NoReport,
        Some(c) => {
            let until = c + window;
            if until <= now {
                Observation::Verified
            } else {
                Observation::Waiting { until }
            }
        }
    }
}

fn list(names: &[&str]) -> String {
    const MAX: usize = 5;
    let mut s = names
        .iter()
        .take(MAX)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(" and {} more", names.len() - MAX));
    }
    s
}

/// Build a condition, keeping `lastTransitionTime` from `prev` when the status is unchanged.
pub fn make_condition(
    prev: &[Condition],
    type_: &str,
    (ok, reason, message): (bool, String, String),
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason,
        message: truncate(message, 32 * 1024),
        observed_generation: generation,
        last_transition_time,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Look a condition up by type.
pub fn find_condition<'a>(status: &'a TuningPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}
