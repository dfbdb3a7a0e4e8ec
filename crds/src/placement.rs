//! Node truth for the delivery decision: what each node accepts ([`NodeFacts`], from the Node and
//! its kubetune `NodeTuning`), where a pod may be scheduled ([`Placement`], from its nodeName,
//! nodeSelector and required node affinity), and the node-affinity requirement kubetune adds when
//! only some of those nodes accept an unsafe sysctl ([`NodeRequirement`]). Pure; the webhook and
//! the operator build the same facts from the same objects through [`node_facts`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, NodeSystemInfo, Pod,
    Taint, Toleration,
};
use serde::{Deserialize, Serialize};

use crate::node::{label_key, NodeTuning, TuningCniState, LABEL_ALLOWED};
use crate::sysctl::{self, KubeVersion};

/// What kubetune knows about one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Node labels (kubetune's `sysctl.kubetune.dev/<sysctl>` labels among them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `false` when the node is cordoned (`spec.unschedulable`).
    #[serde(default = "yes")]
    pub schedulable: bool,
    /// The node's taints that keep pods off it (effect `NoSchedule` or `NoExecute`), but the
    /// cordon taint (that is `schedulable`); a pod may run on the node only if it tolerates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<NodeTaint>,
    /// `status.nodeInfo.kubeletVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<KubeVersion>,
    /// Unsafe sysctls the node's kubelet allowlist accepts, as its agent discovered them
    /// (`NodeTuning.spec.acceptedUnsafeSysctls`); `None` when no agent has reported the node or
    /// its allowlist could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Vec<String>>,
    /// Sysctls the node's kubelet refused to start a pod with (`NodeTuning.status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// The tuning CNI plugin on the node.
    #[serde(default)]
    pub tuning_cni: TuningCniState,
}

/// A taint of a node that keeps pods which do not tolerate it off the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeTaint {
    /// Taint key.
    pub key: String,
    /// Taint value (absent: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule` or `NoExecute`.
    pub effect: String,
}

fn yes() -> bool {
    true
}

impl NodeFacts {
    /// Does this node start a pod that sets the unsafe sysctl `name` through securityContext?
    /// Only when its agent found it in the kubelet's allowlist, the kubelet never refused it,
    /// and the node carries the label a node affinity selects it by.
    pub fn accepts(&self, name: &str) -> bool {
        self.why_not(name).is_none()
    }

    /// Why the node does not accept `name` (`None`: it does).
    pub fn why_not(&self, name: &str) -> Option<&'static str> {
        let n = sysctl::normalize_name(name);
        if self.refused.contains(&n) {
            return Some("its kubelet refused it (SysctlForbidden)");
        }
        match &self.accepted {
            None => return Some("no kubetune agent has reported what its kubelet allows"),
            Some(a) if !a.iter().any(|x| sysctl::normalize_name(x) == n) => {
                return Some("not in its kubelet's allowedUnsafeSysctls")
            }
            Some(_) => {}
        }
        let labelled = label_key(&n).is_some_and(|k| self.has_allowed_label(&k));
        (!labelled).then_some("its sysctl.kubetune.dev label is not published yet")
    }

    fn has_allowed_label(&self, key: &str) -> bool {
        self.labels.get(key).map(String::as_str) == Some(LABEL_ALLOWED)
    }
}

/// The node facts of `nodes`, each with its NodeTuning (matched by name) when there is one.
pub fn node_facts(nodes: &[&Node], tunings: &[&NodeTuning]) -> Vec<NodeFacts> {
    let by_name: BTreeMap<&str, &NodeTuning> = tunings
        .iter()
        .filter_map(|t| Some((t.metadata.name.as_deref()?, *t)))
        .collect();
    let mut out: Vec<NodeFacts> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let t = by_name.get(name.as_str()).copied();
            Some(NodeFacts {
                labels: n.metadata.labels.clone().unwrap_or_default(),
                schedulable: !n
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                taints: repelling(n.spec.as_ref().and_then(|s| s.taints.as_deref()))
                    .map(|t| NodeTaint {
                        key: t.key.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                    })
                    .collect(),
                kubelet_version: n
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .and_then(|i| KubeVersion::parse(&i.kubelet_version).ok()),
                accepted: t
                    .filter(|t| t.spec.kubelet.error.is_none())
                    .map(|t| t.spec.accepted_unsafe_sysctls.clone()),
                refused: t
                    .and_then(|t| t.status.as_ref())
                    .map(|s| s.refused_sysctls.iter().map(|r| r.name.clone()).collect())
                    .unwrap_or_default(),
                tuning_cni: t.map(|t| t.spec.tuning_cni.state).unwrap_or_default(),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The taint the node controller puts on a cordoned node (read as `spec.unschedulable`).
const CORDON_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The taints that keep an intolerant pod off a node (`NoSchedule`, `NoExecute`; not
/// `PreferNoSchedule`, and not the cordon taint).
fn repelling(taints: Option<&[Taint]>) -> impl Iterator<Item = &Taint> {
    taints
        .unwrap_or_default()
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .filter(|t| t.key != CORDON_TAINT)
}

/// Keep only what [`node_facts`] reads of a Node (name, labels, `spec.unschedulable`, the
/// taints that keep pods off it, the kubelet version): a reflector of slim Nodes costs little
/// memory in a large cluster.
pub fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    let taints: Vec<Taint> = repelling(node.spec.as_ref().and_then(|s| s.taints.as_deref()))
        .map(|t| Taint {
            time_added: None,
            ..t.clone()
        })
        .collect();
    node.spec = Some(NodeSpec {
        unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable),
        taints: (!taints.is_empty()).then_some(taints),
        ..Default::default()
    });
    let version = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone());
    node.status = version.map(|kubelet_version| NodeStatus {
        node_info: Some(NodeSystemInfo {
            kubelet_version,
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Where the scheduler may put a pod: its `nodeName`, `nodeSelector` and required node affinity
/// (the terms are ORed, each term's requirements ANDed), minus kubetune's own requirements from
/// an earlier admission (so re-invocation decides the same), on nodes whose taints it tolerates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// `requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms`; empty = no constraint.
    pub required_terms: Vec<NodeSelectorTerm>,
    /// `spec.tolerations`.
    pub tolerations: Vec<Toleration>,
}

impl Placement {
    /// The pod's placement, ignoring the node-selector requirements in `ours` (what kubetune
    /// added at an earlier admission, per the pod's decision record).
    pub fn of(pod: &Pod, ours: &[NodeRequirement]) -> Placement {
        let spec = pod.spec.as_ref();
        let (our_exprs, our_fields) = requirements(ours);
        let required_terms = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| {
                r.node_selector_terms
                    .iter()
                    .filter_map(|t| {
                        let left = NodeSelectorTerm {
                            match_expressions: strip(&t.match_expressions, &our_exprs),
                            match_fields: strip(&t.match_fields, &our_fields),
                        };
                        // A term that held only kubetune's requirements was kubetune's: gone.
                        // (A term that was empty to begin with matches no node and stays.)
                        (is_empty(t) || !is_empty(&left)).then_some(left)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Placement {
            node_name: spec.and_then(|s| s.node_name.clone()),
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            required_terms,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
        }
    }

    /// May the pod run on `node`? Its node selection must hold, and it must tolerate the node's
    /// taints unless it names its node (then the scheduler, which checks taints, is bypassed:
    /// the node stays a candidate).
    pub fn may_run_on(&self, node: &NodeFacts) -> bool {
        self.node_name.as_ref().is_none_or(|n| *n == node.name)
            && self
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            && (self.required_terms.is_empty()
                || self.required_terms.iter().any(|t| term_matches(t, node)))
            && (self.node_name.is_some()
                || node
                    .taints
                    .iter()
                    .all(|t| self.tolerations.iter().any(|o| tolerates(o, t))))
    }
}

/// The scheduler's rule for one toleration and one taint: the effect (empty: any) and the key
/// (empty: any, with `Exists`) match, and `Exists`, or `Equal` (the default) with the same value.
/// An operator kubetune does not know counts as tolerating: the node then stays among those the
/// pod may run on, so what kubetune injects is what that node accepts too.
fn tolerates(o: &Toleration, t: &NodeTaint) -> bool {
    let effect = o
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == t.effect);
    let key = o.key.as_deref().is_none_or(|k| k.is_empty() || k == t.key);
    effect
        && key
        && match o.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            "Equal" | "" => o.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
            _ => true,
        }
}

/// A term without requirements (it matches no node).
pub fn is_empty(t: &NodeSelectorTerm) -> bool {
    t.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && t.match_fields.as_ref().is_none_or(Vec::is_empty)
}

fn strip(
    list: &Option<Vec<NodeSelectorRequirement>>,
    ours: &[NodeSelectorRequirement],
) -> Option<Vec<NodeSelectorRequirement>> {
    list.as_ref()
        .map(|l| l.iter().filter(|r| !ours.contains(r)).cloned().collect())
}

/// The scheduler's rule for one term: an empty term matches no node; otherwise every
/// expression (labels) and field (`metadata.name` only) requirement must hold.
fn term_matches(t: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    if is_empty(t) {
        return false;
    }
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    exprs
        .iter()
        .all(|r| requirement_holds(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            value.is_some() && requirement_holds(r, value)
        })
}

/// One `NodeSelectorRequirement` against the value of its key (`None`: the key is absent).
/// Unknown operators match nothing (the apiserver rejects them anyway).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    let compare = |f: fn(i64, i64) -> bool| match (value.and_then(num), values.first()) {
        (Some(v), Some(bound)) => num(bound).is_some_and(|b| f(v, b)),
        _ => false,
    };
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(|v, b| v > b),
        "Lt" => compare(|v, b| v < b),
        _ => false,
    }
}

/// A required node-affinity requirement kubetune adds so that a pod with an unsafe sysctl is
/// scheduled only to nodes that accept it: the node carries `labelKey: allowed` (node truth; no
/// label under a node-groups override), and is none of `excludedNodes` (nodes whose kubelet
/// refused the sysctl, or whose label is stale). It goes into every term of the pod's required
/// node affinity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct NodeRequirement {
    /// The sysctl that needs it.
    pub sysctl: String,
    /// `sysctl.kubetune.dev/<sysctl>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_key: Option<String>,
    /// Nodes excluded by name, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_nodes: Vec<String>,
}

impl NodeRequirement {
    /// This requirement as serde_json writes it (for [`crate::decision::PodDecision::to_annotation`]).
    pub(crate) fn encode(&self, o: &mut crate::json::Out) {
        let NodeRequirement {
            sysctl,
            label_key,
            excluded_nodes,
        } = self;
        o.lit("{\"sysctl\":", "{\\\"sysctl\\\":");
        o.string(sysctl);
        if let Some(k) = label_key {
            o.lit(",\"labelKey\":", ",\\\"labelKey\\\":");
            o.string(k);
        }
        if !excluded_nodes.is_empty() {
            o.lit(",\"excludedNodes\":", ",\\\"excludedNodes\\\":");
            o.list(excluded_nodes, |o, n| o.string(n));
        }
        o.lit("}", "}");
    }

    /// The label requirement (`matchExpressions`), if any.
    pub fn expression(&self) -> Option<NodeSelectorRequirement> {
        self.label_key.as_ref().map(|k| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![LABEL_ALLOWED.into()]),
        })
    }

    /// The `metadata.name NotIn` requirement (`matchFields`) when nodes are excluded.
    pub fn field(&self) -> Option<NodeSelectorRequirement> {
        (!self.excluded_nodes.is_empty()).then(|| NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(self.excluded_nodes.clone()),
        })
    }
}

/// The `matchExpressions` and `matchFields` entries of `reqs`.
pub fn requirements(
    reqs: &[NodeRequirement],
) -> (Vec<NodeSelectorRequirement>, Vec<NodeSelectorRequirement>) {
    (
        reqs.iter()
            .filter_map(NodeRequirement::expression)
            .collect(),
        reqs.iter().filter_map(NodeRequirement::field).collect(),
    )
}

/// Under a node-groups override (no node truth for acceptance), the kubelet's refusals still
/// win: nodes the pod may run on that refused `name` are excluded by name, and when every one
/// of them refused, the sysctl is refused (`Err`).
pub fn refused_on_nodes(
    name: &str,
    nodes: &[NodeFacts],
    placement: &Placement,
) -> Result<Option<NodeRequirement>, String> {
    let n = sysctl::normalize_name(name);
    let candidates: Vec<&NodeFacts> = nodes.iter().filter(|x| placement.may_run_on(x)).collect();
    let refused: Vec<&NodeFacts> = candidates
        .iter()
        .copied()
        .filter(|x| x.refused.contains(&n))
        .collect();
    if refused.is_empty() {
        return Ok(None);
    }
    if refused.len() == candidates.len() {
        return Err(format!(
            "every node the pod may run on refused it: {}",
            describe(name, &refused)
        ));
    }
    Ok(Some(NodeRequirement {
        sysctl: n,
        label_key: None,
        excluded_nodes: refused.iter().map(|x| x.name.clone()).collect(),
    }))
}

/// How node truth answers for an unsafe sysctl on a pod with `placement`: delivered everywhere
/// it may run (`Ok(None)`), delivered with a node-affinity requirement (`Ok(Some)`), or refused
/// with the reason naming the nodes (`Err`).
pub fn unsafe_on_nodes(
    name: &str,
    nodes: &[NodeFacts],
    placement: &Placement,
) -> Result<Option<NodeRequirement>, String> {
    let candidates: Vec<&NodeFacts> = nodes.iter().filter(|n| placement.may_run_on(n)).collect();
    if nodes.is_empty() {
        return Err("kubetune sees no nodes yet".into());
    }
    if candidates.is_empty() {
        return Err(
            "no node kubetune knows matches the pod's node selection and tolerations".into(),
        );
    }
    let refusing: Vec<&NodeFacts> = candidates
        .iter()
        .copied()
        .filter(|n| !n.accepts(name))
        .collect();
    if !candidates.iter().any(|n| n.schedulable && n.accepts(name)) {
        let why = if refusing.is_empty() {
            "every node that accepts it is cordoned".to_string()
        } else {
            describe(name, &refusing)
        };
        return Err(format!(
            "no schedulable node the pod may run on accepts it: {why}"
        ));
    }
    if refusing.is_empty() {
        return Ok(None);
    }
    let Some(label_key) = label_key(name) else {
        return Err(format!("{name} cannot be selected by a node label"));
    };
    let excluded_nodes = refusing
        .iter()
        .filter(|n| n.has_allowed_label(&label_key))
        .map(|n| n.name.clone())
        .collect();
    Ok(Some(NodeRequirement {
        sysctl: sysctl::normalize_name(name),
        label_key: Some(label_key),
        excluded_nodes,
    }))
}

/// `node-a (why), node-b (why)`, at most five, then how many more.
pub fn describe(name: &str, nodes: &[&NodeFacts]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = nodes
        .iter()
        .take(SHOWN)
        .map(|n| format!("{} ({})", n.name, n.why_not(name).unwrap_or("accepts it")))
        .collect();
    if nodes.len() > SHOWN {
        parts.push(format!("and {} more", nodes.len() - SHOWN));
    }
    parts.join(", ")
}
