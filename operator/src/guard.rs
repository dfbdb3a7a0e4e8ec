//! The SysctlForbidden guard: pods of a policy that a kubelet rejected with `SysctlForbidden`.
//!
//! * [`forbidden_pods`] (pure): the policy's rejected pods — namespace of the policy, phase
//!   `Failed`, reason `SysctlForbidden`, an admission record naming the policy with the refused
//!   sysctl `Injected` (any generation: the node refuses the name, whatever the value).
//! * [`forbidden_condition`] (pure): `Applied=False SysctlForbidden` naming nodes, sysctls and
//!   pods; it takes the place of the usual Applied judgement while such pods exist.
//! * [`refused_status`] (pure): a node's NodeTuning `status.refusedSysctls` with new refusals
//!   merged in (one entry per sysctl, the first pod seen, sorted by name).
//! * [`record`] (I/O): for each node/sysctl not yet recorded, reads the node's NodeTuning and
//!   applies the merged status (SSA, field manager `kubetune-operator-guard`, status subresource;
//!   the agent applies the spec with its own manager), and emits a Warning event
//!   `SysctlForbidden` on the rejected pod and on the policy. What was recorded is remembered
//!   ([`GuardState`]) so a reconcile sends nothing new for known refusals.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use kubetune_crds::decision::Outcome;
use kubetune_crds::node::{NodeTuning, NodeTuningStatus, RefusedSysctl, GUARD_FIELD_MANAGER};
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::{limits, pod, reason, sysctl};
use serde_json::json;
use tracing::{info, warn};

use crate::context::{Context, Error};
use crate::status::Judgement;

/// One pod of a policy rejected by its node's kubelet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forbidden {
    /// The node (`spec.nodeName`; empty if unknown).
    pub node: String,
    /// The refused sysctl (dotted; empty when the kubelet's message did not name it).
    pub sysctl: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
}

/// The pods of `policy` (its namespace, its record) that a kubelet rejected with
/// `SysctlForbidden`, sorted by node, sysctl, pod.
pub fn forbidden_pods<'a>(
    policy: &TuningPolicy,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<Forbidden> {
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let mut out: Vec<Forbidden> = pods
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter_map(|p| {
            let (node, refused) = pod::sysctl_forbidden(p)?;
            let record = pod::decision(p)?;
            let ours = record.for_policy(name).any(|e| {
                e.outcome == Outcome::Injected
                    && (refused.is_empty() || sysctl::normalize_name(&e.sysctl) == refused)
            });
            ours.then(|| Forbidden {
                node,
                sysctl: refused,
                namespace: ns.to_string(),
                pod: p.name_any(),
            })
        })
        .collect();
    out.sort();
    out
}

/// `Applied=False SysctlForbidden` when the (accepted) policy has rejected pods, naming each
/// node with its refused sysctls and pods.
pub fn forbidden_condition(is_accepted: bool, forbidden: &[Forbidden]) -> Option<Judgement> {
    if !is_accepted || forbidden.is_empty() {
        return None;
    }
    let mut by_node: BTreeMap<&str, (BTreeSet<&str>, Vec<&str>)> = BTreeMap::new();
    for f in forbidden {
        let e = by_node.entry(f.node.as_str()).or_default();
        if !f.sysctl.is_empty() {
            e.0.insert(f.sysctl.as_str());
        }
        e.1.push(f.pod.as_str());
    }
    let nodes: Vec<String> = by_node
        .iter()
        .map(|(node, (sysctls, pods))| {
            let node = if node.is_empty() {
                "(unknown node)"
            } else {
                node
            };
            let sysctls: Vec<&str> = sysctls.iter().copied().collect();
            let mut pods = pods.clone();
            pods.dedup();
            let shown: Vec<&str> = pods.iter().take(5).copied().collect();
            let more = pods
                .len()
                .checked_sub(5)
                .filter(|n| *n > 0)
                .map_or_else(String::new, |n| format!(" and {n} more"));
            format!(
                "node {node} refuses {} (pods {}{more})",
                sysctls.join(", "),
                shown.join(", ")
            )
        })
        .collect();
    Some((
        false,
        reason::SYSCTL_FORBIDDEN.into(),
        format!(
            "{} pods of this policy were rejected by the kubelet with SysctlForbidden: {}. The \
             refusal is recorded in the node's NodeTuning (status.refusedSysctls) and kubetune \
             stops injecting the sysctl for that node; allow it in the kubelet's \
             allowedUnsafeSysctls or keep the pods off the node, then delete the failed pods",
            forbidden.len(),
            nodes.join("; ")
        ),
    ))
}

/// `current` with the refusals of `new` (for this node) merged in; `None` when nothing is new.
pub fn refused_status(
    current: Option<&NodeTuningStatus>,
    new: &[&Forbidden],
    now: Timestamp,
) -> Option<NodeTuningStatus> {
    let mut list = current
        .map(|s| s.refused_sysctls.clone())
        .unwrap_or_default();
    let before = list.len();
    for f in new {
        if f.sysctl.is_empty() || list.iter().any(|r| r.name == f.sysctl) {
            continue;
        }
        list.push(RefusedSysctl {
            name: f.sysctl.clone(),
            pod: format!("{}/{}", f.namespace, f.pod),
            observed_at: now.to_string(),
        });
    }
    if list.len() == before {
        return None;
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Some(NodeTuningStatus {
        refused_sysctls: list,
    })
}

/// What the guard has already done (so reconciles repeat nothing): node/sysctl pairs recorded
/// on a NodeTuning, pods evented.
#[derive(Default)]
pub(crate) struct GuardState {
    recorded: Mutex<HashSet<(String, String)>>,
    evented: Mutex<HashSet<(String, String)>>,
}

impl GuardState {
    fn recorded(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn evented(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.evented.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Record `forbidden` (pods of `policy`): NodeTuning status of each node with a new refusal,
/// Warning events on each newly seen pod and on the policy.
pub async fn record(
    ctx: &Context,
    policy: &TuningPolicy,
    forbidden: &[Forbidden],
) -> Result<(), Error> {
    let now = (ctx.now)();
    let api: Api<NodeTuning> = Api::all(ctx.client.clone());
    let mut by_node: BTreeMap<&str, Vec<&Forbidden>> = BTreeMap::new();
    for f in forbidden
        .iter()
        .filter(|f| !f.node.is_empty() && !f.sysctl.is_empty())
    {
        if !ctx
            .guard
            .recorded()
            .contains(&(f.node.clone(), f.sysctl.clone()))
        {
            by_node.entry(f.node.as_str()).or_default().push(f);
        }
    }
    for (node, new) in by_node {
        let Some(nt) = api.get_opt(node).await? else {
            warn!(
                node,
                "SysctlForbidden on a node without a NodeTuning (no kubetune agent?)"
            );
            continue;
        };
        if let Some(status) = refused_status(nt.status.as_ref(), &new, now) {
            let body = json!({"apiVersion": NodeTuning::api_version(&()),
                              "kind": NodeTuning::kind(&()), "status": status});
            let pp = PatchParams::apply(GUARD_FIELD_MANAGER).force();
            api.patch_status(node, &pp, &Patch::Apply(&body)).await?;
            info!(node, sysctls = ?new.iter().map(|f| &f.sysctl).collect::<Vec<_>>(), "kubelet refusal recorded");
        }
        let mut recorded = ctx.guard.recorded();
        recorded.extend(new.iter().map(|f| (f.node.clone(), f.sysctl.clone())));
    }
    events(ctx, policy, forbidden).await;
    Ok(())
}

async fn events(ctx: &Context, policy: &TuningPolicy, forbidden: &[Forbidden]) {
    let fresh: Vec<&Forbidden> = forbidden
        .iter()
        .filter(|f| {
            ctx.guard
                .evented()
                .insert((f.namespace.clone(), f.pod.clone()))
        })
        .collect();
    let policy_ref = policy.object_ref(&());
    for f in fresh {
        let node = if f.node.is_empty() {
            "its node"
        } else {
            f.node.as_str()
        };
        let note = format!(
            "the kubelet on {node} rejected pod {} with SysctlForbidden ({}), injected by \
             TuningPolicy {}; kubetune stops injecting it for that node",
            f.pod,
            if f.sysctl.is_empty() {
                "an unsafe sysctl"
            } else {
                f.sysctl.as_str()
            },
            policy.name_any()
        );
        let pod_ref = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(f.namespace.clone()),
            name: Some(f.pod.clone()),
            ..Default::default()
        };
        for (on, secondary) in [
            (&pod_ref, Some(policy_ref.clone())),
            (&policy_ref, Some(pod_ref.clone())),
        ] {
            let event = Event {
                type_: EventType::Warning,
                reason: reason::SYSCTL_FORBIDDEN.into(),
                note: Some(limits::event_note(note.clone())),
                action: "Guard".into(),
                secondary,
            };
            ctx.publish(event, on).await;
        }
    }
}
