//! The pure status computation: `TuningPolicy.status = f(policy, pods, reports, facts, now)`.
//!
//! No I/O. The reconciler feeds it the reflector stores; tests, the benchmark and the local demo
//! feed it in-memory objects. Everything a user sees in `kubectl get tuningpolicies` comes from
//! here.
//!
//! # Rules
//!
//! * **Matched** pods: in the policy's namespace, phase `Running` or `Pending` (or no phase yet),
//!   not terminating, not opted out with `kubetune.dev/skip: "true"` (annotation or label, `crds::pod::opted_out`), selected by
//!   `spec.podSelector`.
//! * A pod's **admission record** is its `kubetune.dev/decision` annotation. It is *at current
//!   values* when it has an entry of this policy for every desired sysctl with the desired value
//!   (`sysctl::values_equal`). A matched pod without such a record was created before the policy
//!   (or before its current values), or admitted while the webhook was unavailable: it
//!   **needs restart** — sysctls are applied when the pod sandbox is created, never to a running pod.
//! * **The spec proves, the annotation explains**: an `Injected` entry counts only when the pod's
//!   spec carries the value — in `spec.securityContext.sysctls`, or (tuning-CNI delivery) in the
//!   `cni-args.sysctl` of its Multus network selection (`k8s.v1.cni.cncf.io/networks`). A pod
//!   whose record says injected but whose spec lacks a value (an annotation copied from another
//!   pod, e.g. while the webhook was down) is `DecisionWithoutSysctls` and **needs restart**.
//! * **Forbidden**: pods of the policy (their record names it with an injected sysctl) that a
//!   kubelet rejected with `SysctlForbidden` ([`crate::guard`]): `status.forbiddenPods`,
//!   `Applied=False SysctlForbidden` naming nodes and pods, phase `SysctlForbidden`.
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
//!   started. A pod without a start time relies on the report window alone. "No newer report"
//!   only means "no newer overflow" while an agent watches: the pod's node (`spec.nodeName`, else
//!   the report's `nodeName`) must have a fresh agent heartbeat that has watched since the clean
//!   interval began ([`crate::coverage::watched`]); otherwise the pod is **not observed**
//!   (`Verified=False NotObserved`, naming the node and why).
//! * **Overflowing**: matched pods whose report shows `overflowsRecent > 0`.
//!
//! See `README.md` for the table of conditions, reasons and phases.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::SelectorExt;
use kubetune_crds::decision::{DecisionEntry, Outcome};
use kubetune_crds::facts::{decide, ClusterFacts, PodContext};
use kubetune_crds::policy::{
    condition, desired_sysctls, validate_spec, DeliveryDecision, Mode, SpecError,
    SysctlDeliveryStatus, TuningPolicy, TuningPolicyStatus,
};
use kubetune_crds::report::{Diagnosis, ListenerReport};
use kubetune_crds::{limits, matching, sysctl};

use crate::coverage::{self, Gap, Heartbeats, Watched};

/// Values of `status.phase` (the STATUS column).
pub use kubetune_crds::phase;
/// The pod's parsed admission record, if any (a malformed one counts as none).
pub use kubetune_crds::pod::decision as pod_decision;
/// Condition reasons (one set for the webhook and the operator, in `kubetune-crds`).
pub use kubetune_crds::reason;

pub use crate::guard::{forbidden_condition, forbidden_pods, Forbidden};

/// Facts about the policy's environment that are not in the policy, pods or reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    /// Delivery context of the namespace (its PodSecurity enforcement); pod-level fields stay
    /// default — per-pod refusals are read from the pods' admission records.
    pub namespace: PodContext,
    /// Whether the NetworkAttachmentDefinition CRD (`k8s.cni.cncf.io/v1`) is served. Only
    /// consulted when a sysctl's delivery resolves to tuning CNI.
    pub tuning_cni_crd: bool,
    /// Why the namespace's tuning-CNI NetworkAttachmentDefinition could not be written (the API
    /// error), if the last attempt failed. Only consulted when a sysctl's delivery resolves to
    /// tuning CNI.
    pub nad_write_error: Option<String>,
    /// The node agents' heartbeats by node (no entry: no agent watches that node).
    pub agents: Heartbeats,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            namespace: PodContext::default(),
            tuning_cni_crd: true,
            nad_write_error: None,
            agents: Heartbeats::new(),
        }
    }
}

/// What the status computation concluded about one matched pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// No admission record at the policy's current values: recreate the pod.
    NeedsRestart,
    /// The record at current values says injected, but the pod's spec does not carry the value
    /// (`reason::DECISION_WITHOUT_SYSCTLS`): recreate the pod.
    DecisionWithoutSysctls {
        /// The first sysctl the spec lacks.
        sysctl: String,
    },
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

impl PodState {
    /// Must the pod be recreated to get the sysctls ([`PodState::NeedsRestart`] or
    /// [`PodState::DecisionWithoutSysctls`])?
    pub fn needs_restart(&self) -> bool {
        matches!(
            self,
            PodState::NeedsRestart | PodState::DecisionWithoutSysctls { .. }
        )
    }
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
    /// Values observed, no overflows, but the node's agent does not watch the pod now or did not
    /// watch it through the clean interval ([`crate::coverage`]).
    NotObserved {
        /// The pod's node (empty when unknown).
        node: String,
        /// Why.
        gap: Gap,
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
    /// Pods of the policy a kubelet rejected with `SysctlForbidden`, sorted.
    pub forbidden: Vec<Forbidden>,
}

/// Compute a policy's status (namespace without PodSecurity enforcement, NAD CRD assumed
/// served, no agent heartbeats — so no pod is verified; give [`evaluate`] an [`Environment`]
/// with `agents` for that). Pure: the same inputs give the same status. `pods` and `reports` may contain objects
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
///
/// The stages, each a pure function: [`delivery`] (per sysctl, for the namespace) →
/// [`accepted_condition`] → [`pod_verdicts`] (per matched pod) → [`Tally::of`] →
/// [`applied_condition`] (or [`forbidden_condition`] when [`forbidden_pods`] found any),
/// [`verified_condition`] → [`status_phase`].
pub fn evaluate<'a>(
    policy: &TuningPolicy,
    pods: impl IntoIterator<Item = &'a Pod>,
    reports: impl IntoIterator<Item = &'a ListenerReport>,
    facts: &ClusterFacts,
    env: &Environment,
    now: Timestamp,
) -> Evaluation {
    let generation = policy.metadata.generation;
    let prev = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let pods: Vec<&Pod> = pods.into_iter().collect();
    let d = delivery(policy, facts, env);
    let accepted = accepted_condition(&d, env);
    let is_accepted = accepted.0;
    let verdicts = pod_verdicts(policy, &d, pods.iter().copied(), reports, &env.agents, now);
    let forbidden = forbidden_pods(policy, pods.iter().copied());
    let mut tally = Tally::of(&verdicts.pods);
    tally.forbidden = forbidden.len() as i32;
    let applied = forbidden_condition(is_accepted, &forbidden)
        .unwrap_or_else(|| applied_condition(policy, is_accepted, &verdicts.pods, &tally));
    let verified = verified_condition(policy, is_accepted, &verdicts.pods, &tally);
    let phase = status_phase(
        &d,
        is_accepted,
        policy.spec.mode == Mode::DryRun,
        &tally,
        verified.0,
    );
    let mut sysctls = d.sysctls;
    for s in &mut sysctls {
        s.refused_pods = verdicts.refused_pods.get(&s.name).copied().unwrap_or(0);
    }
    let status = TuningPolicyStatus {
        observed_generation: generation,
        phase: Some(phase.to_string()),
        summary: summary(&d.desired),
        matched_pods: tally.matched,
        applied_pods: tally.applied,
        verified_pods: tally.verified,
        overflowing_pods: tally.overflowing,
        needs_restart_pods: tally.needs_restart,
        forbidden_pods: tally.forbidden,
        sysctls,
        rollout: None,
        conditions: vec![
            make_condition(prev, condition::ACCEPTED, accepted, generation, now),
            make_condition(prev, condition::APPLIED, applied, generation, now),
            make_condition(prev, condition::VERIFIED, verified, generation, now),
        ],
    };
    Evaluation {
        status,
        next_check: verdicts.next_check,
        pods: verdicts.pods,
        uses_tuning_cni: d.uses_tuning_cni,
        forbidden,
    }
}

/// A condition before it becomes a [`Condition`]: (status, reason, message).
pub type Judgement = (bool, String, String);

/// Stage 1, delivery: what the policy asks for and how each sysctl reaches the pods of its
/// namespace (no pods needed; the NAD owner check uses only this).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDelivery {
    /// The desired sysctls (`desired_sysctls`).
    pub desired: BTreeMap<String, String>,
    /// Why the spec is invalid (`validate_spec`; empty = valid).
    pub spec_errors: Vec<SpecError>,
    /// The policy-level decision per desired sysctl (`refusedPods` not counted yet).
    pub sysctls: Vec<SysctlDeliveryStatus>,
    /// A valid Enforce policy delivers at least one sysctl through tuning CNI: the namespace
    /// needs the NetworkAttachmentDefinition (DryRun policies never create one).
    pub uses_tuning_cni: bool,
}

impl PolicyDelivery {
    /// The sysctls that are not refused for the namespace (name -> value).
    pub fn deliverable(&self) -> BTreeMap<&str, &str> {
        self.sysctls
            .iter()
            .filter(|s| s.delivery != DeliveryDecision::Refused)
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect()
    }
}

/// Stage 1: [`PolicyDelivery`] of `policy` in a namespace described by `env`.
pub fn delivery(policy: &TuningPolicy, facts: &ClusterFacts, env: &Environment) -> PolicyDelivery {
    let spec = &policy.spec;
    let dry_run = spec.mode == Mode::DryRun;
    let desired = desired_sysctls(spec);
    let spec_errors = validate_spec(spec);
    let mut uses_tuning_cni = false;
    let sysctls = desired
        .iter()
        .map(|(n, v)| {
            let (delivery, reason, message) =
                match decide(n, v, spec.delivery, facts, &env.namespace) {
                    Ok(d) => {
                        uses_tuning_cni |= d.how == DeliveryDecision::TuningCni;
                        if dry_run {
                            let m = format!("DryRun, would deliver via {:?}: {}", d.how, d.message);
                            (DeliveryDecision::DryRun, d.reason, m)
                        } else {
                            (d.how, d.reason, d.message)
                        }
                    }
                    Err(r) => (DeliveryDecision::Refused, r.reason(), r.to_string()),
                };
            SysctlDeliveryStatus {
                name: n.clone(),
                value: v.clone(),
                delivery,
                reason: reason.to_string(),
                message,
                refused_pods: 0,
            }
        })
        .collect();
    let uses_tuning_cni = uses_tuning_cni && !dry_run && spec_errors.is_empty();
    PolicyDelivery {
        desired,
        spec_errors,
        sysctls,
        uses_tuning_cni,
    }
}

/// Stage 2, the `Accepted` condition: valid, something deliverable, tuning CNI usable when
/// chosen.
pub fn accepted_condition(d: &PolicyDelivery, env: &Environment) -> Judgement {
    let deliverable = d.deliverable();
    let all = &d.sysctls;
    if !d.spec_errors.is_empty() {
        let msg = d
            .spec_errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        (false, reason::INVALID_SPEC.into(), msg)
    } else if deliverable.is_empty() {
        (
            false,
            all.first()
                .map(|s| s.reason.clone())
                .unwrap_or_else(|| reason::INVALID_SPEC.into()),
            all.iter()
                .map(|s| s.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else if d.uses_tuning_cni && !env.tuning_cni_crd {
        (
            false,
            reason::TUNING_CNI_UNAVAILABLE.into(),
            "tuning-CNI delivery is enabled in the cluster facts and chosen for this policy, but the \
             NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) is not served: install Multus and the \
             tuning CNI plugin on every node, or remove tuningCni from the kubetune-cluster-facts ConfigMap"
                .into(),
        )
    } else if let Some(e) = env.nad_write_error.as_ref().filter(|_| d.uses_tuning_cni) {
        (
            false,
            reason::TUNING_CNI_UNAVAILABLE.into(),
            format!(
                "tuning-CNI delivery is chosen for this policy, but the operator cannot write the \
                 namespace's NetworkAttachmentDefinition: {e}"
            ),
        )
    } else if deliverable.len() < all.len() {
        let refused: Vec<String> = all
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
                all.len(),
                refused.join("; ")
            ),
        )
    } else {
        let how: Vec<String> = all
            .iter()
            .map(|s| format!("{}={} via {:?}", s.name, s.value, s.delivery))
            .collect();
        (true, reason::ACCEPTED.into(), how.join(", "))
    }
}

/// Stage 3 result: the matched pods' verdicts and what they add to the status.
#[derive(Clone, Debug, PartialEq)]
pub struct PodVerdicts {
    /// Matched pods, sorted by name.
    pub pods: Vec<PodVerdict>,
    /// Per sysctl: matched pods whose record at current values shows it `Refused` or
    /// `PodValueKept`.
    pub refused_pods: BTreeMap<String, i32>,
    /// Earliest time at which a waiting pod becomes verified if nothing changes.
    pub next_check: Option<Timestamp>,
}

/// Stage 3, per-pod verdicts: which pods the policy matches and, for each, its [`PodState`]
/// from its admission record and its ListenerReport.
pub fn pod_verdicts<'a>(
    policy: &TuningPolicy,
    d: &PolicyDelivery,
    pods: impl IntoIterator<Item = &'a Pod>,
    reports: impl IntoIterator<Item = &'a ListenerReport>,
    agents: &Heartbeats,
    now: Timestamp,
) -> PodVerdicts {
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let reports: HashMap<&str, &ListenerReport> = reports
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref().unwrap_or_default() == ns)
        .filter_map(|r| r.metadata.name.as_deref().map(|n| (n, r)))
        .collect();
    let selector = matching::compile(&policy.spec.pod_selector);
    let judge = PodJudge {
        deliverable: d.deliverable(),
        spec_invalid: !d.spec_errors.is_empty(),
        dry_run: policy.spec.mode == Mode::DryRun,
        window: SignedDuration::from_secs(i64::from(policy.spec.window_seconds().max(0))),
        agents,
        now,
    };
    let mut out = PodVerdicts {
        pods: Vec::new(),
        refused_pods: BTreeMap::new(),
        next_check: None,
    };
    for pod in pods {
        let selected = selector
            .as_ref()
            .is_some_and(|s| s.matches(matching::pod_labels(pod)));
        if !pod_is_candidate(pod, ns) || !selected {
            continue;
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let report = reports
            .get(pod_name.as_str())
            .copied()
            .filter(|r| report_is_for(r, pod));
        let entries = current_entries(pod, name, &d.desired);
        for e in entries.iter().flatten() {
            if matches!(e.outcome, Outcome::Refused | Outcome::PodValueKept) {
                *out.refused_pods.entry(e.sysctl.clone()).or_default() += 1;
            }
        }
        let state = match entries {
            None => PodState::NeedsRestart,
            Some(entries) => judge.state(pod, report, &entries),
        };
        let wake = match &state {
            PodState::Applied(Observation::Waiting { until }) => Some(*until),
            PodState::Applied(Observation::NotObserved {
                gap: Gap::Restarted { until, .. },
                ..
            }) => Some(*until),
            _ => None,
        };
        if let Some(until) = wake {
            out.next_check = Some(out.next_check.map_or(until, |t| t.min(until)));
        }
        out.pods.push(PodVerdict {
            name: pod_name,
            state,
            overflowing: report.is_some_and(|r| r.spec.overflows_recent > 0),
        });
    }
    out.pods.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What a pod's state depends on besides the pod.
struct PodJudge<'a> {
    deliverable: BTreeMap<&'a str, &'a str>,
    spec_invalid: bool,
    dry_run: bool,
    window: SignedDuration,
    agents: &'a Heartbeats,
    now: Timestamp,
}

impl PodJudge<'_> {
    /// The state of a matched pod whose record is at current values (`entries`).
    fn state(
        &self,
        pod: &Pod,
        report: Option<&ListenerReport>,
        entries: &[DecisionEntry],
    ) -> PodState {
        let want = if self.dry_run {
            Outcome::WouldInject
        } else {
            Outcome::Injected
        };
        let blocking = entries
            .iter()
            .find(|e| self.deliverable.contains_key(e.sysctl.as_str()) && e.outcome != want);
        let any = entries.iter().any(|e| e.outcome == want);
        // Admitted while the policy was in the other mode (same values).
        let other_mode =
            blocking.is_some_and(|e| matches!(e.outcome, Outcome::Injected | Outcome::WouldInject));
        match (blocking, any) {
            _ if self.spec_invalid => PodState::NotApplied {
                reason: reason::INVALID_SPEC.into(),
                message: "the policy is invalid".into(),
            },
            (Some(_), _) if other_mode && !self.dry_run => PodState::NeedsRestart,
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
            (None, true) if self.dry_run => PodState::WouldInject,
            (None, true) if unproved(pod, entries).is_some() => PodState::DecisionWithoutSysctls {
                sysctl: unproved(pod, entries).unwrap_or_default(),
            },
            (None, true) => {
                let injected: Vec<(&str, &str)> = entries
                    .iter()
                    .filter(|e| e.outcome == Outcome::Injected)
                    .map(|e| (e.sysctl.as_str(), e.value.as_str()))
                    .collect();
                PodState::Applied(observe(
                    pod,
                    report,
                    &injected,
                    self.window,
                    self.agents,
                    self.now,
                ))
            }
        }
    }
}

/// The first `Injected` entry whose value the pod's spec does not carry: not in
/// `securityContext.sysctls` (or, for tuning-CNI delivery, not in the Multus selection's
/// `cni-args.sysctl`). `None` when the spec proves every injected value.
fn unproved(pod: &Pod, entries: &[DecisionEntry]) -> Option<String> {
    let in_spec = kubetune_crds::pod::sysctls(pod);
    let in_cni = kubetune_crds::pod::tuning_cni_sysctls(pod);
    let carries = |list: &[(String, String)], e: &DecisionEntry| {
        list.iter().any(|(n, v)| {
            sysctl::normalize_name(n) == sysctl::normalize_name(&e.sysctl)
                && sysctl::values_equal(v, &e.value)
        })
    };
    entries
        .iter()
        .filter(|e| e.outcome == Outcome::Injected)
        .find(|e| match e.delivery {
            Some(DeliveryDecision::TuningCni) => !carries(&in_cni, e),
            _ => !carries(&in_spec, e),
        })
        .map(|e| e.sysctl.clone())
}

/// Stage 4, the counts and the pods per observation the conditions and the phase read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally<'a> {
    /// Matched pods.
    pub matched: i32,
    /// Applied (or, DryRun, annotated with what would be injected).
    pub applied: i32,
    /// Verified.
    pub verified: i32,
    /// Overflowing (report shows `overflowsRecent > 0`).
    pub overflowing: i32,
    /// Need restart (including `DecisionWithoutSysctls`).
    pub needs_restart: i32,
    /// Pods of the policy rejected with `SysctlForbidden` (set by [`evaluate`]).
    pub forbidden: i32,
    /// Applied pods bound by their own backlog.
    pub app_bound: Vec<&'a str>,
    /// Applied pods that accept too slowly.
    pub slow: Vec<&'a str>,
    /// Applied pods that still overflow.
    pub still: Vec<&'a str>,
    /// Applied pods whose netns shows another value.
    pub mismatch: Vec<&'a str>,
    /// Applied pods not observed (long enough) yet.
    pub waiting: Vec<&'a str>,
    /// Applied, clean pods no agent watched through their window ([`Observation::NotObserved`]).
    pub unobserved: Vec<&'a str>,
}

impl<'a> Tally<'a> {
    /// Stage 4: count `verdicts`.
    pub fn of(verdicts: &'a [PodVerdict]) -> Self {
        let count =
            |f: &dyn Fn(&PodVerdict) -> bool| verdicts.iter().filter(|v| f(v)).count() as i32;
        let obs = |f: &dyn Fn(&Observation) -> bool| {
            verdicts
                .iter()
                .filter(|v| matches!(&v.state, PodState::Applied(o) if f(o)))
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
        };
        Tally {
            matched: verdicts.len() as i32,
            applied: count(&|v| matches!(v.state, PodState::Applied(_) | PodState::WouldInject)),
            verified: count(&|v| v.state == PodState::Applied(Observation::Verified)),
            overflowing: count(&|v| v.overflowing),
            needs_restart: count(&|v| v.state.needs_restart()),
            forbidden: 0,
            app_bound: obs(&|o| *o == Observation::ApplicationBacklogBound),
            slow: obs(&|o| *o == Observation::SlowAccept),
            still: obs(&|o| matches!(o, Observation::Overflowing { .. })),
            mismatch: obs(&|o| matches!(o, Observation::ValueMismatch { .. })),
            waiting: obs(&|o| {
                matches!(
                    o,
                    Observation::NoReport
                        | Observation::ValueNotReported { .. }
                        | Observation::Waiting { .. }
                )
            }),
            unobserved: obs(&|o| matches!(o, Observation::NotObserved { .. })),
        }
    }
}

fn not_accepted() -> Judgement {
    (
        false,
        reason::NOT_ACCEPTED.into(),
        "the policy is not accepted (see the Accepted condition)".into(),
    )
}

/// Stage 5, the `Applied` condition: does every matched pod carry the sysctls?
pub fn applied_condition(
    policy: &TuningPolicy,
    is_accepted: bool,
    verdicts: &[PodVerdict],
    t: &Tally,
) -> Judgement {
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let dry_run = policy.spec.mode == Mode::DryRun;
    let matched = t.matched;
    let gen_txt = policy
        .metadata
        .generation
        .map_or_else(String::new, |g| format!(" {g}"));
    if !is_accepted {
        not_accepted()
    } else if matched == 0 {
        (
            false,
            reason::NO_MATCHING_PODS.into(),
            format!("no running or pending pod in namespace {ns} matches spec.podSelector"),
        )
    } else if t.applied == matched && dry_run {
        (
            true,
            reason::ALL_PODS_WOULD_INJECT.into(),
            format!(
                "all {matched} matched pods are annotated with what would be injected (DryRun)"
            ),
        )
    } else if t.applied == matched {
        (
            true,
            reason::ALL_PODS_APPLIED.into(),
            format!("all {matched} matched pods were admitted with the sysctls"),
        )
    } else if t.needs_restart > 0 {
        let names: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.state.needs_restart())
            .map(|v| v.name.as_str())
            .collect();
        let copied: Vec<&str> = verdicts
            .iter()
            .filter(|v| matches!(v.state, PodState::DecisionWithoutSysctls { .. }))
            .map(|v| v.name.as_str())
            .collect();
        let copied = if copied.is_empty() {
            String::new()
        } else {
            format!(
                "; {} ({}: the decision annotation says injected, the spec lacks the values)",
                list(&copied),
                reason::DECISION_WITHOUT_SYSCTLS
            )
        };
        (
            false,
            reason::PODS_NEED_RESTART.into(),
            format!(
                "{} of {matched} matched pods were created before generation{gen_txt} of this \
                 policy (or while the webhook was unavailable) and do not carry its sysctls; sysctls are \
                 applied only when a pod is created: recreate them (e.g. kubectl rollout restart): {}{copied}",
                t.needs_restart,
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
                matched - t.applied
            ),
        )
    }
}

/// Stage 5, the `Verified` condition: observed in the pods' netns, overflows stopped.
pub fn verified_condition(
    policy: &TuningPolicy,
    is_accepted: bool,
    verdicts: &[PodVerdict],
    t: &Tally,
) -> Judgement {
    if !is_accepted {
        not_accepted()
    } else if policy.spec.mode == Mode::DryRun {
        (
            false,
            reason::DRY_RUN.into(),
            "DryRun policy: pods are only annotated with what would be injected; nothing to verify"
                .into(),
        )
    } else if t.matched == 0 {
        (
            false,
            reason::NO_MATCHING_PODS.into(),
            "no matched pods to observe".into(),
        )
    } else if t.applied == 0 && t.needs_restart > 0 {
        (
            false,
            reason::PODS_NEED_RESTART.into(),
            "no matched pod carries the sysctls yet: recreate the pods".into(),
        )
    } else if t.applied == 0 {
        (
            false,
            reason::NOT_APPLIED.into(),
            "no matched pod carries the sysctls (see the Applied condition)".into(),
        )
    } else {
        observed(verdicts, t, policy.spec.window_seconds())
    }
}

/// The `Verified` condition of an accepted Enforce policy with applied pods: what the agents saw.
fn observed(verdicts: &[PodVerdict], t: &Tally, window_s: i32) -> Judgement {
    let applied = t.applied;
    if !t.app_bound.is_empty() {
        (
            false,
            reason::APPLICATION_BACKLOG_BOUND.into(),
            format!(
                "the sysctls are applied but the application's own listen() backlog is the limit in {}: \
                 raise the application's backlog (e.g. nginx `listen ... backlog=`, uwsgi --listen, \
                 Java ServerSocket backlog); the sysctl is not the fix",
                list(&t.app_bound)
            ),
        )
    } else if !t.slow.is_empty() {
        (
            false,
            reason::SLOW_ACCEPT.into(),
            format!(
                "the sysctls are applied but the application accepts connections too slowly in {} \
                 (accept queue sits full): add workers or fix blocking I/O; no sysctl fixes this",
                list(&t.slow)
            ),
        )
    } else if !t.still.is_empty() {
        (
            false,
            reason::STILL_OVERFLOWING.into(),
            format!(
                "accept queues still overflow in {} although the desired values are in the pods' netns",
                list(&t.still)
            ),
        )
    } else if !t.mismatch.is_empty() {
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
    } else if !t.unobserved.is_empty() {
        let mut gaps: Vec<String> = verdicts
            .iter()
            .filter_map(|v| match &v.state {
                PodState::Applied(Observation::NotObserved { node, gap }) => {
                    Some(gap.describe(node))
                }
                _ => None,
            })
            .collect();
        gaps.sort();
        gaps.dedup();
        let gaps: Vec<&str> = gaps.iter().map(String::as_str).collect();
        (
            false,
            reason::NOT_OBSERVED.into(),
            format!(
                "{} of {applied} applied pods not watched by a node agent through their {window_s}s \
                 window, so their quiet reports prove nothing: {} ({})",
                t.unobserved.len(),
                list(&gaps),
                list(&t.unobserved)
            ),
        )
    } else if !t.waiting.is_empty() {
        (
            false,
            reason::NOT_OBSERVED_YET.into(),
            format!(
                "{} of {applied} applied pods not yet observed for {window_s}s without overflows by the \
                 node agent: {}",
                t.waiting.len(),
                list(&t.waiting)
            ),
        )
    } else {
        (
            true,
            reason::VERIFIED.into(),
            format!(
                "{} of {applied} applied pods show the desired values in their netns and no \
                 accept-queue overflows over {window_s}s",
                t.verified
            ),
        )
    }
}

/// Stage 6, `status.phase`: the first that holds of Invalid, Refused, DryRun, SysctlForbidden,
/// NoMatchingPods,
/// NotSysctlBound, StillOverflowing, PodsNeedRestart, NotObservedYet, Verified, else Pending.
pub fn status_phase(
    d: &PolicyDelivery,
    is_accepted: bool,
    dry_run: bool,
    t: &Tally,
    verified: bool,
) -> &'static str {
    if !d.spec_errors.is_empty() {
        phase::INVALID
    } else if !is_accepted {
        phase::REFUSED
    } else if dry_run {
        phase::DRY_RUN
    } else if t.forbidden > 0 {
        phase::SYSCTL_FORBIDDEN
    } else if t.matched == 0 {
        phase::NO_MATCHING_PODS
    } else if !t.app_bound.is_empty() || !t.slow.is_empty() {
        phase::NOT_SYSCTL_BOUND
    } else if !t.still.is_empty() {
        phase::STILL_OVERFLOWING
    } else if t.needs_restart > 0 {
        phase::PODS_NEED_RESTART
    } else if !t.mismatch.is_empty() || !t.waiting.is_empty() || !t.unobserved.is_empty() {
        phase::NOT_OBSERVED_YET
    } else if verified {
        phase::VERIFIED
    } else {
        phase::PENDING
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
    if kubetune_crds::pod::pod_opted_out(pod) {
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
    agents: &Heartbeats,
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
    let Some(c) = clean_since else {
        return Observation::NoReport;
    };
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or(r.spec.node_name.as_str());
    match coverage::watched(Some(node), agents, c, window, now) {
        Watched::Verified => Observation::Verified,
        Watched::Waiting { until } => Observation::Waiting { until },
        Watched::NotObserved { node, gap } => Observation::NotObserved { node, gap },
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
        message: limits::condition_message(message),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Look a condition up by type.
pub fn find_condition<'a>(status: &'a TuningPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}
