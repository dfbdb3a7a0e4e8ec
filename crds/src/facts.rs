//! Cluster facts (what the kubelets allow, whether tuning-CNI delivery is set up) and the pure
//! per-sysctl delivery decision every component uses.
//!
//! By default the facts are node truth: every Node with what its kubetune agent discovered
//! (`NodeTuning`, see [`crate::placement`]), the oldest kubelet's version, no tuning CNI. The
//! optional ConfigMap `kubetune-cluster-facts` (key `facts.yaml`) in kubetune's namespace
//! overrides parts of it — every key is optional:
//!
//! ```yaml
//! kubernetesVersion: "1.31"         # instead of the oldest kubelet's version
//! nodeGroups:                       # instead of node truth; must cover every schedulable node
//! - name: ingress
//!   nodeSelector: {node-role.example.com/ingress: "true"}
//!   allowedUnsafeSysctls: ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]
//! - name: general
//!   nodeSelector: {}
//!   allowedUnsafeSysctls: []
//! tuningCni:                        # absent = tuning-CNI delivery disabled
//!   networkName: kubetune-tuning    # NetworkAttachmentDefinition the operator owns per namespace
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use k8s_openapi::api::core::v1::Node;

use crate::node::{NodeTuning, TuningCniState};
use crate::placement::{self, NodeFacts, NodeRequirement, Placement};
use crate::policy::{Delivery, DeliveryDecision};
use crate::reason;
use crate::sysctl::{self, KubeVersion, PodSecurityLevel, Scope, SysctlError, SysctlInfo};

/// Name of the ConfigMap holding the facts.
pub const FACTS_CONFIGMAP: &str = "kubetune-cluster-facts";
/// Key of the facts document in that ConfigMap.
pub const FACTS_KEY: &str = "facts.yaml";

/// A pool of nodes sharing one kubelet `allowedUnsafeSysctls` setting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroup {
    /// Name for messages.
    pub name: String,
    /// Node labels that identify the group; empty = every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The kubelet's `allowedUnsafeSysctls` on these nodes (exact names or `prefix.*` globs).
    #[serde(default)]
    pub allowed_unsafe_sysctls: Vec<String>,
}

impl NodeGroup {
    /// Does this group's kubelet allow `name`?
    pub fn allows(&self, name: &str) -> bool {
        self.allowed_unsafe_sysctls
            .iter()
            .any(|p| crate::node::pattern_matches(p, name))
    }
    /// Could a pod with `node_selector` be scheduled onto this group? (No label contradicts.)
    pub fn may_host(&self, pod_node_selector: &BTreeMap<String, String>) -> bool {
        pod_node_selector
            .iter()
            .all(|(k, v)| self.node_selector.get(k).is_none_or(|g| g == v))
    }
}

/// Tuning-CNI delivery settings (present = enabled).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TuningCni {
    /// Name of the NetworkAttachmentDefinition (one per namespace, owned by the operator).
    pub network_name: String,
}

/// What kubetune knows about the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// Kubernetes version of the kubelets (the oldest, if mixed). Decides the safe set.
    #[serde(default = "latest")]
    pub kubernetes_version: KubeVersion,
    /// Node pools and their `allowedUnsafeSysctls` (an override: when not empty they decide
    /// instead of `nodes`). Must cover every schedulable node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_groups: Vec<NodeGroup>,
    /// Tuning-CNI delivery; absent = disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning_cni: Option<TuningCni>,
    /// Node truth: every node with what it accepts, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeFacts>,
}

fn latest() -> KubeVersion {
    KubeVersion::LATEST
}

impl Default for ClusterFacts {
    fn default() -> Self {
        Self {
            kubernetes_version: KubeVersion::LATEST,
            node_groups: Vec::new(),
            tuning_cni: None,
            nodes: Vec::new(),
        }
    }
}

/// The optional override document: every key may be absent.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Override {
    #[serde(default)]
    kubernetes_version: Option<String>,
    #[serde(default)]
    node_groups: Vec<NodeGroup>,
    #[serde(default)]
    tuning_cni: Option<TuningCni>,
}

/// Errors reading the facts document.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// Not YAML of the expected shape.
    #[error("{FACTS_CONFIGMAP}/{FACTS_KEY} is invalid: {0}")]
    Invalid(#[from] serde_yaml::Error),
    /// `kubernetesVersion` does not parse.
    #[error("{FACTS_CONFIGMAP}/{FACTS_KEY} is invalid: {0}")]
    Version(String),
}

impl ClusterFacts {
    /// Parse the `facts.yaml` document.
    pub fn from_yaml(s: &str) -> Result<Self, FactsError> {
        Ok(serde_yaml::from_str(s)?)
    }

    /// The facts every component decides from: node truth from `nodes` and their NodeTunings,
    /// overridden by the ConfigMap where it says so. The version is the override's, else the
    /// oldest kubelet's, else [`KubeVersion::LATEST`]. An invalid override is an error (callers
    /// then refuse every unsafe sysctl rather than guess).
    pub fn resolve(
        cm: Option<&ConfigMap>,
        nodes: &[&Node],
        tunings: &[&NodeTuning],
    ) -> Result<Self, FactsError> {
        let o: Override = match cm
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(FACTS_KEY))
        {
            Some(doc) if !doc.trim().is_empty() => serde_yaml::from_str(doc)?,
            _ => Override::default(),
        };
        let nodes = placement::node_facts(nodes, tunings);
        let kubernetes_version = match o.kubernetes_version {
            Some(v) => KubeVersion::parse(&v).map_err(|e| FactsError::Version(e.to_string()))?,
            None => nodes
                .iter()
                .filter_map(|n| n.kubelet_version)
                .min()
                .unwrap_or(KubeVersion::LATEST),
        };
        Ok(Self {
            kubernetes_version,
            node_groups: o.node_groups,
            tuning_cni: o.tuning_cni,
            nodes,
        })
    }

    /// Does node truth decide (no `nodeGroups` override)?
    pub fn node_truth(&self) -> bool {
        self.node_groups.is_empty()
    }

    /// Would every node a pod with `pod_node_selector` may run on allow the unsafe sysctl `name`?
    /// Returns the groups that would refuse it (empty = allowed); `None` when no group may host
    /// the pod (or none is configured), which also means "not allowed".
    pub fn unsafe_refusing_groups(
        &self,
        name: &str,
        pod_node_selector: &BTreeMap<String, String>,
    ) -> Option<Vec<&str>> {
        let candidates: Vec<&NodeGroup> = self
            .node_groups
            .iter()
            .filter(|g| g.may_host(pod_node_selector))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(
            candidates
                .into_iter()
                .filter(|g| !g.allows(name))
                .map(|g| g.name.as_str())
                .collect(),
        )
    }
}

/// What the delivery decision needs to know about the pod and its namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodContext {
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.hostIPC`.
    pub host_ipc: bool,
    /// The namespace's `pod-security.kubernetes.io/enforce` level and `enforce-version`
    /// (`latest` = [`KubeVersion::LATEST`]); `None` = no enforcement.
    pub pod_security: Option<(PodSecurityLevel, KubeVersion)>,
    /// Where the pod may be scheduled (nodeName, nodeSelector, required node affinity).
    pub placement: Placement,
}

/// A delivery the decision chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// `PodSecurityContext` or `TuningCni`.
    pub how: DeliveryDecision,
    /// Machine-readable reason: `SafeSysctl`, `AllowedUnsafeSysctl`, `TuningCNI`.
    pub reason: &'static str,
    /// Human explanation.
    pub message: String,
    /// The node-affinity requirement the pod needs so it lands only on nodes that accept the
    /// sysctl (node truth, when only some of its candidate nodes do).
    pub node_affinity: Option<NodeRequirement>,
}

/// Why a sysctl is not delivered to a pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Node-level, unknown or bad value.
    #[error("{0}")]
    Sysctl(SysctlError),
    /// `net.*` on a hostNetwork pod (or IPC sysctl on a hostIPC pod) would change the node.
    #[error(
        "{name} would change the node's own namespace: the pod uses the host's {ns} namespace"
    )]
    HostNamespace {
        /// The sysctl.
        name: String,
        /// `network` or `IPC`.
        ns: &'static str,
    },
    /// PodSecurity would reject the pod (it runs after mutating webhooks).
    #[error("{name} is not a safe sysctl in Kubernetes {version}, and the namespace enforces PodSecurity {level:?}, which would reject the pod")]
    PodSecurity {
        /// The sysctl.
        name: String,
        /// Enforced level.
        level: PodSecurityLevel,
        /// Enforced policy version.
        version: KubeVersion,
    },
    /// Unsafe sysctl, kubelets do not allow it, and tuning CNI is not an option.
    #[error("{name} is an unsafe sysctl and {detail}; the pod would fail with SysctlForbidden")]
    UnsafeNotAllowed {
        /// The sysctl.
        name: String,
        /// Which nodes refuse, and whether tuning CNI was considered.
        detail: String,
    },
    /// TuningCNI delivery asked for but not possible.
    #[error("{name} cannot be delivered by tuning CNI: {detail}")]
    TuningCniUnavailable {
        /// The sysctl.
        name: String,
        /// Why.
        detail: String,
    },
}

impl Refusal {
    /// Machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Sysctl(e) => e.reason(),
            Refusal::HostNamespace { .. } => reason::REFUSED_HOST_NAMESPACE,
            Refusal::PodSecurity { .. } => reason::REFUSED_BY_POD_SECURITY,
            Refusal::UnsafeNotAllowed { .. } => reason::REFUSED_UNSAFE_SYSCTL,
            Refusal::TuningCniUnavailable { .. } => reason::TUNING_CNI_UNAVAILABLE,
        }
    }
}

/// Decide how (or whether) one sysctl reaches one pod. Pure; the rules (README, "Cluster facts"):
/// node-level/unknown/bad values refused; `net.*` refused for hostNetwork pods (IPC sysctls for
/// hostIPC); non-safe sysctls refused in PodSecurity baseline/restricted namespaces (whatever the
/// delivery — tuning CNI must not become a way around the namespace's policy); unsafe sysctls
/// through securityContext only where every node the pod may land on allows them, else tuning CNI
/// when enabled (`Auto`/`TuningCNI`), else refused.
pub fn decide(
    name: &str,
    value: &str,
    preference: Delivery,
    facts: &ClusterFacts,
    pod: &PodContext,
) -> Result<Delivered, Refusal> {
    let info = check(name, value).map_err(Refusal::Sysctl)?;
    decide_checked(info, preference, facts, pod)
}

/// What [`decide`] asks of a sysctl before looking at the pod: a namespaced sysctl of the table
/// (or family) with a valid value. The same for every pod, so a policy's sysctls are checked once
/// (the webhook's prepared policies) and decided with [`decide_checked`] per pod.
pub fn check(name: &str, value: &str) -> Result<&'static SysctlInfo, SysctlError> {
    let info = sysctl::classify(name)?;
    sysctl::validate_value(info.name, value)?;
    Ok(info)
}

/// [`decide`] for a sysctl that passed [`check`].
pub fn decide_checked(
    info: &'static SysctlInfo,
    preference: Delivery,
    facts: &ClusterFacts,
    pod: &PodContext,
) -> Result<Delivered, Refusal> {
    let n = info.name;
    if pod.host_network && info.scope == Scope::Network {
        return Err(Refusal::HostNamespace {
            name: n.to_string(),
            ns: "network",
        });
    }
    if pod.host_ipc && info.scope == Scope::Ipc {
        return Err(Refusal::HostNamespace {
            name: n.to_string(),
            ns: "IPC",
        });
    }
    let safe = info.is_safe_in(facts.kubernetes_version);
    if let Some((level, version)) = pod.pod_security {
        if !sysctl::pod_security_allows(n, level, version) {
            return Err(Refusal::PodSecurity {
                name: n.to_string(),
                level,
                version,
            });
        }
    }
    let cni = || tuning_cni(info.tuning_cni_capable(), facts, pod);
    if preference == Delivery::TuningCni {
        return cni().map_err(|detail| Refusal::TuningCniUnavailable {
            name: n.to_string(),
            detail,
        });
    }
    if safe {
        return Ok(Delivered {
            how: DeliveryDecision::PodSecurityContext,
            reason: reason::SAFE_SYSCTL,
            message: safe_message(facts.kubernetes_version),
            node_affinity: None,
        });
    }
    let why_nodes = match unsafe_by_nodes(n, facts, pod) {
        Ok(d) => return Ok(d),
        Err(why) => why,
    };
    if preference == Delivery::Auto {
        match cni() {
            Ok(d) => return Ok(d),
            Err(e) => {
                return Err(Refusal::UnsafeNotAllowed {
                    name: n.to_string(),
                    detail: format!("{why_nodes}, and {e}"),
                })
            }
        }
    }
    Err(Refusal::UnsafeNotAllowed {
        name: n.to_string(),
        detail: why_nodes,
    })
}

/// "safe sysctl in Kubernetes 1.31", written without the formatting machinery (once per safe
/// sysctl of every pod planned).
fn safe_message(v: KubeVersion) -> String {
    const HEAD: &str = "safe sysctl in Kubernetes ";
    let mut m = String::with_capacity(HEAD.len() + 8);
    m.push_str(HEAD);
    crate::json::push_int(&mut m, v.major);
    m.push('.');
    crate::json::push_int(&mut m, v.minor);
    m
}

/// An unsafe sysctl through securityContext: per node group (override) or per node (node
/// truth, possibly with a node-affinity requirement); `Err` says which nodes refuse.
fn unsafe_by_nodes(
    name: &str,
    facts: &ClusterFacts,
    pod: &PodContext,
) -> Result<Delivered, String> {
    if facts.node_truth() {
        return placement::unsafe_on_nodes(name, &facts.nodes, &pod.placement).map(|req| {
            let message = match &req {
                None => "every node the pod may run on accepts it (its kubelet's \
                         allowedUnsafeSysctls, as the node's kubetune agent reported)"
                    .to_string(),
                Some(r) => format!(
                    "not every node the pod may run on accepts it, so the pod requires a node \
                     labelled {}=allowed{}",
                    r.label_key.as_deref().unwrap_or_default(),
                    if r.excluded_nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" other than {}", r.excluded_nodes.join(", "))
                    }
                ),
            };
            Delivered {
                how: DeliveryDecision::PodSecurityContext,
                reason: reason::ALLOWED_UNSAFE_SYSCTL,
                message,
                node_affinity: req,
            }
        });
    }
    match facts.unsafe_refusing_groups(name, &pod.placement.node_selector) {
        Some(groups) if groups.is_empty() => {
            let req = placement::refused_on_nodes(name, &facts.nodes, &pod.placement)?;
            let message = match &req {
                None => "every node the pod may run on lists it in allowedUnsafeSysctls".into(),
                Some(r) => format!(
                    "every node group the pod may run on lists it in allowedUnsafeSysctls; the \
                     pod is kept off {}, whose kubelet refused it",
                    r.excluded_nodes.join(", ")
                ),
            };
            Ok(Delivered {
                how: DeliveryDecision::PodSecurityContext,
                reason: reason::ALLOWED_UNSAFE_SYSCTL,
                message,
                node_affinity: req,
            })
        }
        None => Err("no configured node group may host the pod".to_string()),
        Some(g) => Err(format!(
            "node group(s) {} do not list it in allowedUnsafeSysctls",
            g.join(", ")
        )),
    }
}

/// Tuning-CNI delivery, when the cluster facts enable it, the sysctl is a `net.*` one and (node
/// truth) every node the pod may run on has the plugin.
fn tuning_cni(capable: bool, facts: &ClusterFacts, pod: &PodContext) -> Result<Delivered, String> {
    let Some(c) = &facts.tuning_cni else {
        return Err("tuning-CNI delivery is not enabled in the cluster facts".into());
    };
    if !capable {
        return Err("the tuning plugin only writes /proc/sys/net sysctls".into());
    }
    if facts.node_truth() {
        let missing: Vec<&str> = facts
            .nodes
            .iter()
            .filter(|nd| pod.placement.may_run_on(nd) && nd.tuning_cni != TuningCniState::Installed)
            .map(|nd| nd.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the tuning CNI plugin is not known to be installed on node(s) {}",
                missing.join(", ")
            ));
        }
    }
    Ok(Delivered {
        how: DeliveryDecision::TuningCni,
        reason: reason::TUNING_CNI,
        message: format!(
            "set by the tuning CNI plugin through network {}",
            c.network_name
        ),
        node_affinity: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_message_names_the_version_as_display_does() {
        for v in [
            KubeVersion::new(1, 31),
            KubeVersion::new(1, 9),
            KubeVersion::LATEST,
        ] {
            assert_eq!(safe_message(v), format!("safe sysctl in Kubernetes {v}"));
        }
    }
}
