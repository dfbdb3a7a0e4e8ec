//! The pure planner: which sysctls a new pod gets, from which policy, delivered how, and what is
//! refused and why. No I/O; every rule is a table-driven test in `tests/plan.rs`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DecisionEntry, Outcome, PodDecision, PolicyRef, DECISION_ANNOTATION, DECISION_VERSION,
    MULTUS_NETWORKS_ANNOTATION,
};
use kubetune_crds::facts::{decide, ClusterFacts, PodContext};
use kubetune_crds::policy::{
    desired_sysctls, validate_spec, DeliveryDecision, Mode, SpecError, TuningPolicy,
};
use kubetune_crds::selector;
use kubetune_crds::sysctl::{self, KubeVersion, PodSecurityLevel};

/// PodSecurity admission labels.
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// PodSecurity enforce version label.
pub const PSA_ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";

/// What the planner needs to know about the pod's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceFacts {
    /// Namespace name.
    pub name: String,
    /// Namespace labels.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceFacts {
    /// The enforced PodSecurity level and version, if any. An unparsable level is treated as
    /// `restricted` (fail safe: never inject something the apiserver may reject).
    pub fn pod_security(&self) -> Option<(PodSecurityLevel, KubeVersion)> {
        let level = self.labels.get(PSA_ENFORCE)?;
        let level = PodSecurityLevel::parse(level).unwrap_or(PodSecurityLevel::Restricted);
        let version = self
            .labels
            .get(PSA_ENFORCE_VERSION)
            .filter(|v| v.as_str() != "latest")
            .and_then(|v| KubeVersion::parse(v).ok())
            .unwrap_or(KubeVersion::LATEST);
        Some((level, version))
    }
}

/// The plan for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The admission record (goes into the `kubetune.dev/decision` annotation).
    pub decision: PodDecision,
    /// Sysctls kubetune puts into `spec.securityContext.sysctls` (name -> value).
    pub security_context: BTreeMap<String, String>,
    /// Sysctls delivered by the tuning CNI plugin (name -> value).
    pub tuning_cni: BTreeMap<String, String>,
    /// The NetworkAttachmentDefinition selected for tuning-CNI delivery (from the cluster facts);
    /// `Some` exactly when `tuning_cni` is not empty.
    pub tuning_network: Option<String>,
}

impl Plan {
    /// True when no policy matched: the pod is left untouched (no annotation either).
    pub fn is_empty(&self) -> bool {
        self.decision.policies.is_empty() && self.decision.entries.is_empty()
    }
}

/// Sysctls (name -> value) that a previous invocation of this webhook injected into the pod's
/// securityContext, read back from its decision annotation. Needed for idempotency: on
/// re-invocation they are ours, not "the pod's own".
pub fn previously_injected(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DECISION_ANNOTATION))
        .and_then(|s| PodDecision::parse(s).ok())
        .map(|d| {
            d.entries
                .into_iter()
                .filter(|e| {
                    e.outcome == Outcome::Injected
                        && e.delivery == Some(DeliveryDecision::PodSecurityContext)
                })
                .map(|e| (e.sysctl, e.value))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod's sysctls minus what kubetune injected earlier (per the decision annotation). The
/// planner additionally treats as the pod's own what kubetune injected earlier but does not
/// inject again (see [`plan`]).
pub fn own_sysctls(pod: &Pod) -> BTreeMap<String, String> {
    let ours = previously_injected(pod);
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (sysctl::normalize_name(&s.name), s.value.clone()))
                .filter(|(n, v)| ours.get(n).is_none_or(|ov| !sysctl::values_equal(ov, v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The policies (of the pod's namespace) whose selector matches the pod, in precedence order:
/// higher `priority` first, then name.
pub fn matching_policies<'a>(pod: &Pod, policies: &'a [TuningPolicy]) -> Vec<&'a TuningPolicy> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut out: Vec<&TuningPolicy> = policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == ns)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| selector::matches(&p.spec.pod_selector, labels))
        .collect();
    out.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    out
}

/// The delivery context of a pod in a namespace.
pub fn pod_context(pod: &Pod, ns: &NamespaceFacts) -> PodContext {
    let spec = pod.spec.as_ref();
    PodContext {
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        host_ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
        pod_security: ns.pod_security(),
        node_selector: spec
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default(),
    }
}

/// Why a policy's sysctl is refused because the policy itself is invalid: the sysctl's own
/// problem if it has one, else `InvalidSpec` with every problem of the spec.
fn invalid_spec_refusal(sysctl: &str, errors: &[SpecError]) -> (&'static str, String) {
    let own = errors.iter().find(|e| match e {
        SpecError::Sysctl { name, .. } => sysctl::normalize_name(name) == sysctl,
        SpecError::NotCniDeliverable(name) => sysctl::normalize_name(name) == sysctl,
        _ => false,
    });
    let all = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    match own {
        Some(e) => (
            e.reason(),
            format!("{e} (the whole policy is ignored: {all})"),
        ),
        None => (
            errors
                .iter()
                .find(|e| {
                    !matches!(
                        e,
                        SpecError::Sysctl { .. } | SpecError::NotCniDeliverable(_)
                    )
                })
                .map_or("InvalidSpec", SpecError::reason),
            format!("the policy is invalid, none of its sysctls is applied: {all}"),
        ),
    }
}

/// Plan the sysctls of one pod. Pure and deterministic.
///
/// Rules, in order, per (matching policy in precedence order, desired sysctl):
/// 1. an invalid policy (any [`validate_spec`] error) contributes only `Refused` entries;
/// 2. a sysctl already set by a higher-precedence policy is `Overridden`;
/// 3. a sysctl the pod sets itself is `PodValueKept` (never overwritten);
/// 4. [`decide`] picks the delivery or refuses (node-level, host namespaces, PodSecurity,
///    allowedUnsafeSysctls per node group, tuning-CNI fallback); tuning CNI is also refused when
///    the pod's own Multus selection annotation is unreadable (kubetune will not rewrite it);
/// 5. `DryRun` policies record `WouldInject` and claim nothing.
pub fn plan(
    pod: &Pod,
    ns: &NamespaceFacts,
    policies: &[TuningPolicy],
    facts: &ClusterFacts,
) -> Plan {
    let matching = matching_policies(pod, policies);
    if matching.is_empty() {
        return Plan {
            decision: PodDecision {
                version: DECISION_VERSION,
                ..Default::default()
            },
            ..Default::default()
        };
    }
    let ours = previously_injected(pod);
    let is_ours = |n: &String, v: &String| ours.get(n).is_some_and(|o| sysctl::values_equal(o, v));
    let carried: Vec<(String, String)> = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (sysctl::normalize_name(&s.name), s.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut own: BTreeMap<String, String> = carried
        .iter()
        .filter(|(n, v)| !is_ours(n, v))
        .cloned()
        .collect();
    let first = plan_with_own(pod, ns, &matching, facts, &own);
    // Sysctls the pod carries from an earlier admission (its decision record says kubetune put
    // them there) that this admission does not inject again: they stay on the pod — kubetune
    // never removes a sysctl — so from now on they are the pod's own. Without this the next
    // invocation would see them as the pod's own and record a different decision.
    let leftover: Vec<(String, String)> = carried
        .into_iter()
        .filter(|(n, v)| is_ours(n, v) && !first.security_context.contains_key(n))
        .collect();
    if leftover.is_empty() {
        return first;
    }
    own.extend(leftover);
    plan_with_own(pod, ns, &matching, facts, &own)
}

fn plan_with_own(
    pod: &Pod,
    ns: &NamespaceFacts,
    matching: &[&TuningPolicy],
    facts: &ClusterFacts,
    own: &BTreeMap<String, String>,
) -> Plan {
    let mut out = Plan::default();
    out.decision.version = DECISION_VERSION;
    let ctx = pod_context(pod, ns);
    let networks_problem: Option<String> = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MULTUS_NETWORKS_ANNOTATION))
        .and_then(|raw| crate::patch::parse_networks(raw).err())
        .map(|e| e.to_string());
    let mut claimed: BTreeMap<String, String> = BTreeMap::new(); // sysctl -> policy that set it
    let mut refs = BTreeSet::new();
    for p in matching.iter().copied() {
        let name = p.metadata.name.clone().unwrap_or_default();
        let generation = p.metadata.generation.unwrap_or(0);
        refs.insert(PolicyRef {
            name: name.clone(),
            generation,
        });
        let spec_errors = validate_spec(&p.spec);
        for (sysctl, value) in desired_sysctls(&p.spec) {
            let entry = |outcome, delivery, reason: &str, message: String| DecisionEntry {
                policy: name.clone(),
                generation,
                sysctl: sysctl.clone(),
                value: value.clone(),
                outcome,
                delivery,
                reason: reason.to_string(),
                message,
            };
            if !spec_errors.is_empty() {
                let (reason, message) = invalid_spec_refusal(&sysctl, &spec_errors);
                out.decision
                    .entries
                    .push(entry(Outcome::Refused, None, reason, message));
                continue;
            }
            if let Some(winner) = claimed.get(&sysctl) {
                out.decision.entries.push(entry(
                    Outcome::Overridden,
                    None,
                    "OverriddenByPolicy",
                    format!("policy {winner} sets {sysctl} with higher precedence"),
                ));
                continue;
            }
            if let Some(v) = own.get(&sysctl) {
                out.decision.entries.push(entry(
                    Outcome::PodValueKept,
                    None,
                    "PodValueKept",
                    format!("the pod sets {sysctl}={v} itself; kubetune never overwrites it"),
                ));
                continue;
            }
            let decided = decide(&sysctl, &value, p.spec.delivery, facts, &ctx);
            let decided = match (decided, &networks_problem) {
                (Ok(d), Some(problem)) if d.how == DeliveryDecision::TuningCni => {
                    out.decision.entries.push(entry(
                        Outcome::Refused,
                        None,
                        "TuningCNIUnavailable",
                        format!(
                            "{sysctl} would go through tuning CNI, but the pod's \
                             {MULTUS_NETWORKS_ANNOTATION} annotation is unreadable ({problem}); \
                             kubetune does not rewrite it"
                        ),
                    ));
                    continue;
                }
                (d, _) => d,
            };
            match decided {
                Ok(d) if p.spec.mode == Mode::DryRun => {
                    out.decision.entries.push(entry(
                        Outcome::WouldInject,
                        Some(d.how),
                        d.reason,
                        format!("DryRun: {}", d.message),
                    ));
                }
                Ok(d) => {
                    // `value` is canonical (desired_sysctls): injected and recorded alike.
                    match d.how {
                        DeliveryDecision::TuningCni => {
                            out.tuning_cni.insert(sysctl.clone(), value.clone())
                        }
                        _ => out.security_context.insert(sysctl.clone(), value.clone()),
                    };
                    claimed.insert(sysctl.clone(), name.clone());
                    out.decision.entries.push(entry(
                        Outcome::Injected,
                        Some(d.how),
                        d.reason,
                        d.message,
                    ));
                }
                Err(r) => out.decision.entries.push(entry(
                    Outcome::Refused,
                    None,
                    r.reason(),
                    r.to_string(),
                )),
            }
        }
    }
    out.decision.policies = refs.into_iter().collect();
    if !out.tuning_cni.is_empty() {
        out.tuning_network = facts.tuning_cni.as_ref().map(|t| t.network_name.clone());
    }
    out
}
