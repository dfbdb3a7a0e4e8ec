//! Cluster facts (what the kubelets allow, whether tuning-CNI delivery is set up) and the pure
//! per-sysctl delivery decision every component uses.
//!
//! The facts come from the ConfigMap `kubetune-cluster-facts` (key `facts.yaml`) in the
//! operator's namespace, e.g.
//!
//! ```yaml
//! kubernetesVersion: "1.31"
//! nodeGroups:                       # must cover every schedulable node
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

use crate::policy::{Delivery, DeliveryDecision};
use crate::reason;
use crate::sysctl::{self, KubeVersion, PodSecurityLevel, Scope, SysctlError};

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
    #[serde(with = "version_str")]
    pub kubernetes_version: KubeVersion,
    /// Node pools and their `allowedUnsafeSysctls`. Must cover every schedulable node.
    #[serde(default)]
    pub node_groups: Vec<NodeGroup>,
    /// Tuning-CNI delivery; absent = disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning_cni: Option<TuningCni>,
}

impl Default for ClusterFacts {
    fn default() -> Self {
        Self {
            kubernetes_version: KubeVersion::LATEST,
            node_groups: Vec::new(),
            tuning_cni: None,
        }
    }
}

mod version_str {
    use super::KubeVersion;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &KubeVersion, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KubeVersion, D::Error> {
        let s = String::deserialize(d)?;
        KubeVersion::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Errors reading the facts document.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The ConfigMap or its key is missing.
    #[error("{FACTS_CONFIGMAP}/{FACTS_KEY} missing")]
    Missing,
    /// Not YAML of the expected shape.
    #[error("{FACTS_CONFIGMAP}/{FACTS_KEY} is invalid: {0}")]
    Invalid(#[from] serde_yaml::Error),
}

impl ClusterFacts {
    /// Parse the `facts.yaml` document.
    pub fn from_yaml(s: &str) -> Result<Self, FactsError> {
        Ok(serde_yaml::from_str(s)?)
    }

    /// The facts of the [`FACTS_CONFIGMAP`] ConfigMap (`None`: it does not exist). On error
    /// every component falls back to `ClusterFacts::default()` (no unsafe sysctls, no tuning
    /// CNI) — refusing rather than guessing.
    pub fn from_configmap(cm: Option<&ConfigMap>) -> Result<Self, FactsError> {
        let doc = cm
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(FACTS_KEY))
            .ok_or(FactsError::Missing)?;
        Self::from_yaml(doc)
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContext {
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.hostIPC`.
    pub host_ipc: bool,
    /// The namespace's `pod-security.kubernetes.io/enforce` level and `enforce-version`
    /// (`latest` = [`KubeVersion::LATEST`]); `None` = no enforcement.
    pub pod_security: Option<(PodSecurityLevel, KubeVersion)>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
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
    let info = sysctl::classify(name).map_err(Refusal::Sysctl)?;
    sysctl::validate_value(info.name, value).map_err(Refusal::Sysctl)?;
    let n = info.name.to_string();
    if pod.host_network && info.scope == Scope::Network {
        return Err(Refusal::HostNamespace {
            name: n,
            ns: "network",
        });
    }
    if pod.host_ipc && info.scope == Scope::Ipc {
        return Err(Refusal::HostNamespace { name: n, ns: "IPC" });
    }
    let safe = info.is_safe_in(facts.kubernetes_version);
    if let Some((level, version)) = pod.pod_security {
        if !sysctl::pod_security_allows(&n, level, version) {
            return Err(Refusal::PodSecurity {
                name: n,
                level,
                version,
            });
        }
    }
    let cni = || -> Result<Delivered, String> {
        match (&facts.tuning_cni, info.tuning_cni_capable()) {
            (Some(c), true) => Ok(Delivered {
                how: DeliveryDecision::TuningCni,
                reason: reason::TUNING_CNI,
                message: format!(
                    "set by the tuning CNI plugin through network {}",
                    c.network_name
                ),
            }),
            (None, _) => Err("tuning-CNI delivery is not enabled in the cluster facts".into()),
            (Some(_), false) => Err("the tuning plugin only writes /proc/sys/net sysctls".into()),
        }
    };
    if preference == Delivery::TuningCni {
        return cni().map_err(|detail| Refusal::TuningCniUnavailable { name: n, detail });
    }
    if safe {
        return Ok(Delivered {
            how: DeliveryDecision::PodSecurityContext,
            reason: reason::SAFE_SYSCTL,
            message: format!("safe sysctl in Kubernetes {}", facts.kubernetes_version),
        });
    }
    let refusing = facts.unsafe_refusing_groups(&n, &pod.node_selector);
    if let Some(groups) = &refusing {
        if groups.is_empty() {
            return Ok(Delivered {
                how: DeliveryDecision::PodSecurityContext,
                reason: reason::ALLOWED_UNSAFE_SYSCTL,
                message: "every node the pod may run on lists it in allowedUnsafeSysctls".into(),
            });
        }
    }
    let why_nodes = match refusing {
        None => "no configured node group may host the pod".to_string(),
        Some(g) => format!(
            "node group(s) {} do not list it in allowedUnsafeSysctls",
            g.join(", ")
        ),
    };
    if preference == Delivery::Auto {
        match cni() {
            Ok(d) => return Ok(d),
            Err(e) => {
                return Err(Refusal::UnsafeNotAllowed {
                    name: n,
                    detail: format!("{why_nodes}, and {e}"),
                })
            }
        }
    }
    Err(Refusal::UnsafeNotAllowed {
        name: n,
        detail: why_nodes,
    })
}
