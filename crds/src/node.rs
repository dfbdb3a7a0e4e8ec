//! Node truth: what one node's kubelet accepts, as its kubetune agent discovered it.
//!
//! * `NodeTuning` (cluster-scoped, name = node name, ownerReference = the Node): the agent's
//!   discovery — the kubelet's `allowedUnsafeSysctls` as configured and where it came from, the
//!   table sysctls that list accepts, kubelet and kernel versions, the default `somaxconn` of a
//!   fresh network namespace, whether the `tuning` CNI plugin is installed.
//! * Node labels `sysctl.kubetune.dev/<sysctl>: "allowed"` for every table sysctl the node's
//!   kubelet allowlist accepts (so a node affinity can select such nodes); absent = not accepted
//!   or not known.
//! * [`pattern_matches`]: the kubelet's own allowlist rule (exact name, or a prefix ending in `*`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sysctl::{self, Scope};

/// Prefix of the node labels the agent owns (`sysctl.kubetune.dev/net.core.somaxconn`).
pub const NODE_LABEL_PREFIX: &str = "sysctl.kubetune.dev/";
/// Value of such a label.
pub const LABEL_ALLOWED: &str = "allowed";
/// Field manager the operator uses for server-side apply of a NodeTuning's
/// `status.refusedSysctls` (status subresource; the agent applies the spec).
pub const GUARD_FIELD_MANAGER: &str = "kubetune-operator-guard";
/// Field manager the agent uses for server-side apply of its Node's labels and its NodeTuning.
pub const NODE_FIELD_MANAGER: &str = "kubetune-agent";

/// Whether the `tuning` CNI plugin binary was found on the node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum TuningCniState {
    /// An executable `tuning` is in one of the CNI binary directories.
    Installed,
    /// None of the CNI binary directories has it.
    NotInstalled,
    /// The node's filesystem could not be inspected (see `tuningCni.detail`).
    #[default]
    Unknown,
}

/// The kubelet's `allowedUnsafeSysctls`, as its own configuration sets it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubeletAllowlist {
    /// The entries as configured (exact names or patterns ending in `*`); empty when nothing is
    /// allowed or when the configuration could not be read (then `error` says why).
    #[serde(default)]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Where the effective value came from: `flag --allowed-unsafe-sysctls`, a config file or
    /// drop-in path, or `kubelet default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Why the allowlist is unknown (no kubelet process found, unreadable or malformed
    /// configuration). When set, the node is treated as accepting no unsafe sysctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The tuning CNI plugin on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TuningCniPlugin {
    /// `Installed`, `NotInstalled` or `Unknown`.
    pub state: TuningCniState,
    /// Path of the plugin binary (as the node sees it) when installed; otherwise the directories
    /// searched, or why they could not be.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What the node agent discovered about its node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "kubetune.dev",
    version = "v1alpha1",
    kind = "NodeTuning",
    plural = "nodetunings",
    shortname = "nt",
    status = "NodeTuningStatus",
    printcolumn = r#"{"name":"Kubelet","type":"string","jsonPath":".spec.kubeletVersion"}"#,
    printcolumn = r#"{"name":"Unsafe-Allowed","type":"string","jsonPath":".spec.acceptedSummary"}"#,
    printcolumn = r#"{"name":"Netns-Somaxconn","type":"integer","jsonPath":".spec.netnsDefaultSomaxconn"}"#,
    printcolumn = r#"{"name":"Tuning-CNI","type":"string","jsonPath":".spec.tuningCni.state"}"#,
    printcolumn = r#"{"name":"Kernel","type":"string","priority":1,"jsonPath":".spec.kernelVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeTuningSpec {
    /// The node (also this object's name).
    pub node_name: String,
    /// `status.nodeInfo.kubeletVersion` of the Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<String>,
    /// Kernel release (`uname -r`).
    pub kernel_version: String,
    /// The kubelet's allowlist and where it came from.
    pub kubelet: KubeletAllowlist,
    /// Sysctls of kubetune's table (namespaced ones) that the allowlist accepts, sorted; the
    /// node carries the label `sysctl.kubetune.dev/<name>: allowed` for each.
    #[serde(default)]
    pub accepted_unsafe_sysctls: Vec<String>,
    /// `acceptedUnsafeSysctls` comma-separated, `none`, or `unknown` (allowlist not readable).
    pub accepted_summary: String,
    /// `net.core.somaxconn` of a freshly created network namespace on this node (what a pod
    /// starts with when nothing sets it), measured by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_default_somaxconn: Option<i64>,
    /// Why `netnsDefaultSomaxconn` could not be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_default_somaxconn_error: Option<String>,
    /// The tuning CNI plugin.
    pub tuning_cni: TuningCniPlugin,
    /// When the agent discovered this (RFC 3339).
    pub observed_at: String,
}

/// What the operator learned about the node from its pods: written by the operator (field
/// manager `kubetune-operator-guard`, status subresource), never by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeTuningStatus {
    /// Sysctls this node's kubelet refused to start a pod with (`SysctlForbidden`), one entry
    /// per sysctl (the first pod seen), sorted by name. Whatever `spec` says, the webhook's
    /// facts must treat a sysctl listed here as **not accepted** on this node: the kubelet's
    /// refusal is the proof, discovery may be stale or wrong.
    #[serde(default)]
    pub refused_sysctls: Vec<RefusedSysctl>,
}

/// One sysctl a node's kubelet refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RefusedSysctl {
    /// The sysctl (dotted form).
    pub name: String,
    /// `namespace/name` of the pod the kubelet rejected.
    pub pod: String,
    /// When the operator saw the rejection (RFC 3339).
    pub observed_at: String,
}

impl NodeTuning {
    /// Has this node's kubelet refused `sysctl` (`status.refusedSysctls`)?
    pub fn refused(&self, sysctl: &str) -> bool {
        let n = sysctl::normalize_name(sysctl);
        self.status
            .as_ref()
            .is_some_and(|s| s.refused_sysctls.iter().any(|r| r.name == n))
    }
}

/// The kubelet's allowlist rule: `pattern` is an exact sysctl name, or a prefix ending in `*`.
/// Names compare in dotted form (`net/core/somaxconn` = `net.core.somaxconn`).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let n = sysctl::normalize_name(name);
    let p = sysctl::normalize_name(pattern);
    match p.strip_suffix('*') {
        Some(prefix) => n.starts_with(prefix),
        None => p == n,
    }
}

/// The namespaced sysctls of the table that `patterns` (an `allowedUnsafeSysctls` list) accept,
/// in table order.
pub fn accepted_table_sysctls(patterns: &[String]) -> Vec<&'static str> {
    sysctl::TABLE
        .iter()
        .filter(|i| i.scope != Scope::Node)
        .filter(|i| patterns.iter().any(|p| pattern_matches(p, i.name)))
        .map(|i| i.name)
        .collect()
}

/// The node label key for a sysctl, when the name fits a label name (≤ 63 characters of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends).
pub fn label_key(sysctl: &str) -> Option<String> {
    let ok = !sysctl.is_empty()
        && sysctl.len() <= 63
        && sysctl
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && sysctl.starts_with(|c: char| c.is_ascii_alphanumeric())
        && sysctl.ends_with(|c: char| c.is_ascii_alphanumeric());
    ok.then(|| format!("{NODE_LABEL_PREFIX}{sysctl}"))
}

/// The labels the agent applies to its node for the accepted sysctls (all of kubetune's labels:
/// applying this map with the agent's field manager removes the ones no longer accepted).
pub fn node_labels(accepted: &[String]) -> BTreeMap<String, String> {
    accepted
        .iter()
        .filter_map(|s| label_key(s))
        .map(|k| (k, LABEL_ALLOWED.to_string()))
        .collect()
}

/// The `acceptedSummary` column: names comma-separated, `none`, or `unknown`.
pub fn accepted_summary(accepted: &[String], known: bool) -> String {
    match (known, accepted.is_empty()) {
        (false, _) => "unknown".into(),
        (true, true) => "none".into(),
        (true, false) => accepted.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn patterns_follow_the_kubelet() {
        let cases = [
            ("net.core.somaxconn", "net.core.somaxconn", true),
            ("net/core/somaxconn", "net.core.somaxconn", true),
            ("net.core.somaxconn", "net.core.somaxconn2", false),
            ("net.core.*", "net.core.somaxconn", true),
            ("net.*", "net.ipv4.tcp_max_syn_backlog", true),
            ("net.ipv4.*", "net.core.somaxconn", false),
            ("kernel.shm*", "kernel.shm_rmid_forced", true),
            ("net.core.somaxcon", "net.core.somaxconn", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(pattern_matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn patterns_expand_against_the_table_only() {
        let got = accepted_table_sysctls(&s(&["net.core.*", "not.a.sysctl", "kernel.sem"]));
        assert!(got.contains(&"net.core.somaxconn"), "{got:?}");
        assert!(got.contains(&"kernel.sem"), "{got:?}");
        assert!(got
            .iter()
            .all(|n| n.starts_with("net.core.") || *n == "kernel.sem"));
        assert!(!got.contains(&"not.a.sysctl"));
        // Node-level rows of the table are never "accepted" (a pod cannot set them).
        for n in accepted_table_sysctls(&s(&["*"])) {
            assert_ne!(sysctl::lookup(n).unwrap().scope, Scope::Node, "{n}");
        }
        assert!(accepted_table_sysctls(&[]).is_empty());
    }

    #[test]
    fn every_namespaced_table_sysctl_fits_a_label_name() {
        for i in sysctl::TABLE.iter().filter(|i| i.scope != Scope::Node) {
            assert_eq!(
                label_key(i.name).as_deref(),
                Some(format!("sysctl.kubetune.dev/{}", i.name).as_str())
            );
        }
        assert_eq!(label_key(&"a".repeat(64)), None);
        assert_eq!(label_key("net/core/x"), None);
        assert_eq!(label_key(".net"), None);
        assert_eq!(label_key(""), None);
    }

    #[test]
    fn labels_and_summary() {
        let acc = s(&["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]);
        let l = node_labels(&acc);
        assert_eq!(l.len(), 2);
        assert_eq!(l["sysctl.kubetune.dev/net.core.somaxconn"], "allowed");
        assert_eq!(
            accepted_summary(&acc, true),
            "net.core.somaxconn,net.ipv4.tcp_max_syn_backlog"
        );
        assert_eq!(accepted_summary(&[], true), "none");
        assert_eq!(accepted_summary(&[], false), "unknown");
        assert!(node_labels(&[]).is_empty());
    }
}
