//! The pure planner: which sysctls a new pod gets, from which policy, delivered how, and what is
//! refused and why. No I/O; every rule is a table-driven test in `tests/plan.rs`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DecisionEntry, Outcome, PodDecision, PolicyRef, DECISION_VERSION, MULTUS_NETWORKS_ANNOTATION,
};
use kubetune_crds::facts::{check, decide_checked, ClusterFacts, PodContext, Refusal};
pub use kubetune_crds::matching::matching_policies;
use kubetune_crds::placement::{NodeRequirement, Placement};
pub use kubetune_crds::podsec::{PSA_ENFORCE, PSA_ENFORCE_VERSION};
use kubetune_crds::policy::{
    desired_sysctls, validate_spec, DeliveryDecision, Mode, SpecError, TuningPolicy,
};
use kubetune_crds::sysctl::{self, KubeVersion, PodSecurityLevel, SysctlError, SysctlInfo};
use kubetune_crds::{podsec, reason};

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
        podsec::enforced(&self.labels)
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
    /// Required node-affinity requirements the pod gets (also in the decision record).
    pub node_affinity: Vec<NodeRequirement>,
}

impl Plan {
    /// True when no policy matched: the pod is left untouched (no annotation either).
    pub fn is_empty(&self) -> bool {
        self.decision.policies.is_empty() && self.decision.entries.is_empty()
    }
}

/// The delivery context of a pod in a namespace; `ours` are the node-affinity requirements an
/// earlier admission added (they do not narrow where the pod may run for this decision).
pub fn pod_context(pod: &Pod, ns: &NamespaceFacts, ours: &[NodeRequirement]) -> PodContext {
    let spec = pod.spec.as_ref();
    PodContext {
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        host_ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
        pod_security: ns.pod_security(),
        placement: Placement::of(pod, ours),
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
                .map_or(reason::INVALID_SPEC, SpecError::reason),
            format!("the policy is invalid, none of its sysctls is applied: {all}"),
        ),
    }
}

/// What planning reads of a policy apart from the pod, the same for every pod: the problems of
/// its spec ([`validate_spec`]) and its desired sysctls ([`desired_sysctls`], values canonical).
/// The webhook prepares each policy once per snapshot, not once per pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedPolicy {
    /// [`validate_spec`] of the policy's spec.
    pub errors: Vec<SpecError>,
    /// [`desired_sysctls`] of the policy's spec, each with what [`check`] says of it.
    pub desired: Vec<Desired>,
}

/// One desired sysctl of a prepared policy: canonical name and value, and the sysctl's
/// [`check`] (the part of [`kubetune_crds::facts::decide`] that does not depend on the pod).
pub type Desired = (String, String, Result<&'static SysctlInfo, SysctlError>);

impl PreparedPolicy {
    /// Prepare `policy`.
    pub fn of(policy: &TuningPolicy) -> Self {
        let desired = desired_sysctls(&policy.spec)
            .into_iter()
            .map(|(n, v)| {
                let checked = check(&n, &v);
                (n, v, checked)
            })
            .collect();
        Self {
            errors: validate_spec(&policy.spec),
            desired,
        }
    }
}

/// Plan the sysctls of one pod. Pure and deterministic.
///
/// Rules, in order, per (matching policy in precedence order, desired sysctl):
/// 1. an invalid policy (any [`validate_spec`] error) contributes only `Refused` entries;
/// 2. a sysctl already set by a higher-precedence policy is `Overridden`;
/// 3. a sysctl the pod sets itself is `PodValueKept` (never overwritten);
/// 4. [`kubetune_crds::facts::decide`] picks the delivery or refuses (node-level, host
///    namespaces, PodSecurity, what the nodes the pod may run on accept — with a required node
///    affinity when only some do — or the node groups of an override, tuning-CNI fallback);
///    tuning CNI is also refused when the pod's own Multus selection annotation is unreadable
///    (kubetune will not rewrite it);
/// 5. `DryRun` policies record `WouldInject` and claim nothing.
pub fn plan(
    pod: &Pod,
    ns: &NamespaceFacts,
    policies: &[TuningPolicy],
    facts: &ClusterFacts,
) -> Plan {
    let matching = matching_policies(pod, policies);
    let prepared: Vec<PreparedPolicy> = matching.iter().map(|p| PreparedPolicy::of(p)).collect();
    let matching: Vec<_> = matching.into_iter().zip(&prepared).collect();
    plan_matched(pod, ns, &matching, facts)
}

/// [`plan`] with the policies that select the pod already found ([`matching_policies`], in
/// precedence order) and prepared. The pod's labels are not read again: two pods selected by the
/// same policies that agree in everything else get the same plan.
pub fn plan_matched(
    pod: &Pod,
    ns: &NamespaceFacts,
    matching: &[(&TuningPolicy, &PreparedPolicy)],
    facts: &ClusterFacts,
) -> Plan {
    if matching.is_empty() {
        return Plan {
            decision: PodDecision {
                version: DECISION_VERSION,
                ..Default::default()
            },
            ..Default::default()
        };
    }
    // What a previous invocation injected into securityContext and added to the node affinity
    // (per the decision annotation) is ours on re-invocation, not the pod's own: needed for
    // idempotency.
    let earlier = kubetune_crds::pod::decision(pod).unwrap_or_default();
    let ours = earlier.injected_into_security_context();
    let ctx = pod_context(pod, ns, &earlier.node_affinity);
    let is_ours = |n: &String, v: &String| ours.get(n).is_some_and(|o| sysctl::values_equal(o, v));
    let carried: Vec<(String, String)> = kubetune_crds::pod::sysctls(pod)
        .into_iter()
        .map(|(n, v)| (sysctl::normalize_name(&n), v))
        .collect();
    let mut own: BTreeMap<String, String> = carried
        .iter()
        .filter(|(n, v)| !is_ours(n, v))
        .cloned()
        .collect();
    let first = plan_with_own(pod, &ctx, matching, facts, &own);
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
    plan_with_own(pod, &ctx, matching, facts, &own)
}

fn plan_with_own(
    pod: &Pod,
    pod_ctx: &PodContext,
    matching: &[(&TuningPolicy, &PreparedPolicy)],
    facts: &ClusterFacts,
    own: &BTreeMap<String, String>,
) -> Plan {
    let mut out = Plan::default();
    out.decision.version = DECISION_VERSION;
    let ctx = PlanContext {
        pod: pod_ctx,
        facts,
        own,
        networks_problem: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MULTUS_NETWORKS_ANNOTATION))
            .and_then(|raw| crate::networks::parse_networks(raw).err())
            .map(|e| e.to_string()),
    };
    // sysctl -> the policy that set it
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    let mut refs = BTreeSet::new();
    for &(p, prepared) in matching {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let generation = p.metadata.generation.unwrap_or(0);
        refs.insert(PolicyRef {
            name: name.to_string(),
            generation,
        });
        let spec_errors = &prepared.errors;
        for (sysctl, value, checked) in &prepared.desired {
            let (outcome, delivery, reason, message, node_affinity) = if spec_errors.is_empty() {
                ctx.step(p, sysctl, checked, &claimed)
            } else {
                let (reason, message) = invalid_spec_refusal(sysctl, spec_errors);
                (Outcome::Refused, None, reason, message, None)
            };
            if let (Outcome::Injected, Some(req)) = (outcome, node_affinity) {
                out.node_affinity.push(req);
            }
            if outcome == Outcome::Injected {
                // `value` is canonical (desired_sysctls): injected and recorded alike.
                match delivery {
                    Some(DeliveryDecision::TuningCni) => &mut out.tuning_cni,
                    _ => &mut out.security_context,
                }
                .insert(sysctl.clone(), value.clone());
                claimed.insert(sysctl, name);
            }
            out.decision.entries.push(DecisionEntry {
                policy: name.to_string(),
                generation,
                sysctl: sysctl.clone(),
                value: value.clone(),
                outcome,
                delivery,
                reason: reason.to_string(),
                message,
            });
        }
    }
    out.decision.policies = refs.into_iter().collect();
    out.node_affinity.sort();
    out.decision.node_affinity.clone_from(&out.node_affinity);
    if !out.tuning_cni.is_empty() {
        out.tuning_network = facts.tuning_cni.as_ref().map(|t| t.network_name.clone());
    }
    out
}

/// What one planning pass knows about the pod besides the policies.
struct PlanContext<'a> {
    pod: &'a PodContext,
    facts: &'a ClusterFacts,
    /// The pod's own sysctls (never overwritten).
    own: &'a BTreeMap<String, String>,
    /// Why the pod's Multus selection annotation is unreadable, if it is.
    networks_problem: Option<String>,
}

/// One decision entry's outcome, delivery, reason, message and node-affinity requirement.
type Step = (
    Outcome,
    Option<DeliveryDecision>,
    &'static str,
    String,
    Option<NodeRequirement>,
);

impl PlanContext<'_> {
    /// Rules 2-5 of [`plan`] for one desired sysctl of a valid policy; `claimed` maps the
    /// sysctls already set by higher-precedence policies to those policies.
    fn step(
        &self,
        p: &TuningPolicy,
        sysctl: &str,
        checked: &Result<&'static SysctlInfo, SysctlError>,
        claimed: &BTreeMap<&str, &str>,
    ) -> Step {
        if let Some(winner) = claimed.get(sysctl) {
            return (
                Outcome::Overridden,
                None,
                reason::OVERRIDDEN_BY_POLICY,
                format!("policy {winner} sets {sysctl} with higher precedence"),
                None,
            );
        }
        if let Some(v) = self.own.get(sysctl) {
            return (
                Outcome::PodValueKept,
                None,
                reason::POD_VALUE_KEPT,
                format!("the pod sets {sysctl}={v} itself; kubetune never overwrites it"),
                None,
            );
        }
        let decided = match checked {
            Ok(info) => decide_checked(info, p.spec.delivery, self.facts, self.pod),
            Err(e) => Err(Refusal::Sysctl(e.clone())),
        };
        match decided {
            Ok(d) if d.how == DeliveryDecision::TuningCni && self.networks_problem.is_some() => (
                Outcome::Refused,
                None,
                reason::TUNING_CNI_UNAVAILABLE,
                format!(
                    "{sysctl} would go through tuning CNI, but the pod's \
                     {MULTUS_NETWORKS_ANNOTATION} annotation is unreadable ({}); \
                     kubetune does not rewrite it",
                    self.networks_problem.as_deref().unwrap_or_default()
                ),
                None,
            ),
            Ok(d) if p.spec.mode == Mode::DryRun => (
                Outcome::WouldInject,
                Some(d.how),
                d.reason,
                format!("DryRun: {}", d.message),
                None,
            ),
            Ok(d) => (
                Outcome::Injected,
                Some(d.how),
                d.reason,
                d.message,
                d.node_affinity,
            ),
            Err(r) => (Outcome::Refused, None, r.reason(), r.to_string(), None),
        }
    }
}
