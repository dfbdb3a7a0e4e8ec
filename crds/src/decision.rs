//! The admission record: the webhook writes one annotation on every pod it decides about, the
//! operator reads it to compute TuningPolicy status, and a user reads it with
//! `kubectl get pod -o yaml` to understand what was injected, what was refused and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json;
use crate::placement::NodeRequirement;
use crate::policy::DeliveryDecision;

/// Annotation holding the JSON [`PodDecision`].
pub const DECISION_ANNOTATION: &str = "kubetune.dev/decision";
/// Annotation with a one-line human summary of the decision.
pub const SUMMARY_ANNOTATION: &str = "kubetune.dev/summary";
/// Multus network selection annotation (tuning-CNI delivery).
pub const MULTUS_NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Label/annotation a user can set on a pod to opt out of kubetune entirely (`"true"`).
pub const SKIP_ANNOTATION: &str = "kubetune.dev/skip";
/// Version of the [`PodDecision`] format.
pub const DECISION_VERSION: u32 = 1;

/// What happened to one desired sysctl of one policy on one pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Injected (securityContext or tuning CNI, see `delivery`).
    Injected,
    /// DryRun policy: would have been injected with `delivery`.
    WouldInject,
    /// Not injected; `reason`/`message` say why.
    Refused,
    /// Another policy with higher priority (or same priority, earlier name) set this sysctl.
    Overridden,
    /// The pod sets this sysctl itself; kubetune never overwrites the pod's own value.
    PodValueKept,
}

/// One line of the decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionEntry {
    /// Policy name (same namespace as the pod).
    pub policy: String,
    /// Policy `metadata.generation` the decision used.
    pub generation: i64,
    /// Sysctl name (canonical, dotted).
    pub sysctl: String,
    /// Value the policy wants.
    pub value: String,
    /// What happened.
    pub outcome: Outcome,
    /// How it is (or would be) delivered; absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryDecision>,
    /// Machine-readable reason (one of [`crate::reason`]), e.g. `SafeSysctl`,
    /// `AllowedUnsafeSysctl`, `RefusedUnsafeSysctl`, `RefusedHostNamespace`,
    /// `RefusedByPodSecurity`, `RefusedNodeLevel`, `InvalidValue`, `PodValueKept`,
    /// `OverriddenByPolicy`.
    pub reason: String,
    /// Human explanation.
    pub message: String,
}

impl DecisionEntry {
    /// This entry as serde_json writes it (see [`PodDecision::to_annotation`]).
    fn encode(&self, o: &mut json::Out) {
        let DecisionEntry {
            policy,
            generation,
            sysctl,
            value,
            outcome,
            delivery,
            reason,
            message,
        } = self;
        o.lit("{\"policy\":", "{\\\"policy\\\":");
        o.string(policy);
        o.lit(",\"generation\":", ",\\\"generation\\\":");
        o.int(*generation);
        o.lit(",\"sysctl\":", ",\\\"sysctl\\\":");
        o.string(sysctl);
        o.lit(",\"value\":", ",\\\"value\\\":");
        o.string(value);
        o.lit(",\"outcome\":", ",\\\"outcome\\\":");
        o.string(outcome.as_str());
        if let Some(d) = delivery {
            o.lit(",\"delivery\":", ",\\\"delivery\\\":");
            o.string(d.as_str());
        }
        o.lit(",\"reason\":", ",\\\"reason\\\":");
        o.string(reason);
        o.lit(",\"message\":", ",\\\"message\\\":");
        o.string(message);
        o.lit("}", "}");
    }
}

impl Outcome {
    /// The name serde writes for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "Injected",
            Outcome::WouldInject => "WouldInject",
            Outcome::Refused => "Refused",
            Outcome::Overridden => "Overridden",
            Outcome::PodValueKept => "PodValueKept",
        }
    }
}

/// The whole admission record of a pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodDecision {
    /// Format version ([`DECISION_VERSION`]).
    pub version: u32,
    /// Matching policies and the generation used, sorted by name.
    pub policies: Vec<PolicyRef>,
    /// One entry per (policy, sysctl).
    pub entries: Vec<DecisionEntry>,
    /// Required node-affinity requirements kubetune added to the pod (one per unsafe sysctl
    /// that not every candidate node accepts), sorted by sysctl.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<NodeRequirement>,
}

/// A policy that matched the pod at admission.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// Policy name.
    pub name: String,
    /// Its `metadata.generation`.
    pub generation: i64,
}

/// Errors reading a decision annotation.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The annotation is not valid JSON of the expected shape.
    #[error("annotation {DECISION_ANNOTATION} is not a valid decision record: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl PodDecision {
    /// Parse the annotation value.
    pub fn parse(s: &str) -> Result<Self, DecisionError> {
        Ok(serde_json::from_str(s)?)
    }
    /// Serialise for the annotation (compact JSON, deterministic order).
    ///
    /// Exactly the bytes serde_json writes for the record (`crds/tests/decision_encoding.rs`
    /// holds them equal for any strings, so a pod admitted by an earlier version stays unchanged
    /// on re-invocation), written by hand with literal keys: the webhook writes one per new
    /// plan (and embeds it in a JSONPatch as a string: [`PodDecision::to_annotation_and_literal`]
    /// writes both forms in one pass), and a serializer's per-key escaping was most of its
    /// cost. The struct patterns in the encoders are exhaustive, so a new field does not compile
    /// until it is written there too.
    pub fn to_annotation(&self) -> String {
        self.encode(json::Forms::Json).0.expect("asked for")
    }

    /// [`PodDecision::to_annotation`] and, in the same pass, the annotation as a JSON string
    /// literal (what a JSONPatch that writes it carries).
    pub fn to_annotation_and_literal(&self) -> (String, String) {
        match self.encode(json::Forms::Both) {
            (Some(json), Some(literal)) => (json, literal),
            _ => unreachable!("both forms asked for"),
        }
    }

    /// Only the string literal of [`PodDecision::to_annotation`] (a patch for a pod without the
    /// annotation has nothing to compare the annotation with).
    pub fn to_annotation_literal(&self) -> String {
        self.encode(json::Forms::Literal).1.expect("asked for")
    }

    fn encode(&self, forms: json::Forms) -> (Option<String>, Option<String>) {
        let PodDecision {
            version,
            policies,
            entries,
            node_affinity,
        } = self;
        let mut o = json::Out::new(64 + 64 * policies.len() + 320 * entries.len(), forms);
        o.lit("{\"version\":", "{\\\"version\\\":");
        o.int(*version);
        o.lit(",\"policies\":", ",\\\"policies\\\":");
        o.list(policies, |o, PolicyRef { name, generation }| {
            o.lit("{\"name\":", "{\\\"name\\\":");
            o.string(name);
            o.lit(",\"generation\":", ",\\\"generation\\\":");
            o.int(*generation);
            o.lit("}", "}");
        });
        o.lit(",\"entries\":", ",\\\"entries\\\":");
        o.list(entries, |o, e| e.encode(o));
        if !node_affinity.is_empty() {
            o.lit(",\"nodeAffinity\":", ",\\\"nodeAffinity\\\":");
            o.list(node_affinity, |o, r| r.encode(o));
        }
        o.lit("}", "}");
        o.finish()
    }

    /// Entries of one policy.
    pub fn for_policy<'a>(
        &'a self,
        policy: &'a str,
    ) -> impl Iterator<Item = &'a DecisionEntry> + 'a {
        self.entries.iter().filter(move |e| e.policy == policy)
    }
    /// Sysctls (name -> value) this record says kubetune injected into the pod's
    /// `securityContext.sysctls` (not those delivered by tuning CNI).
    pub fn injected_into_security_context(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter(|e| {
                e.outcome == Outcome::Injected
                    && e.delivery == Some(DeliveryDecision::PodSecurityContext)
            })
            .map(|e| (e.sysctl.clone(), e.value.clone()))
            .collect()
    }
    /// One-line human summary, e.g.
    /// `injected net.core.somaxconn=8192; not injected net.ipv4.tcp_rmem (RefusedUnsafeSysctl)`.
    pub fn summary(&self) -> String {
        let mut out = String::with_capacity(128);
        for (word, outcomes) in [
            ("injected", &[Outcome::Injected][..]),
            ("would inject (DryRun)", &[Outcome::WouldInject]),
            ("not injected", &[Outcome::Refused, Outcome::PodValueKept]),
        ] {
            let items = self
                .entries
                .iter()
                .filter(|e| outcomes.contains(&e.outcome));
            for (i, e) in items.enumerate() {
                if i > 0 {
                    out.push(',');
                } else {
                    if !out.is_empty() {
                        out.push_str("; ");
                    }
                    out.push_str(word);
                    out.push(' ');
                }
                out.push_str(&e.sysctl);
                if matches!(e.outcome, Outcome::Injected | Outcome::WouldInject) {
                    out.push('=');
                    out.push_str(&e.value);
                } else {
                    out.push_str(" (");
                    out.push_str(&e.reason);
                    out.push(')');
                }
            }
        }
        if out.is_empty() {
            out.push_str("no sysctls");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sysctl: &str, value: &str, outcome: Outcome, reason: &str) -> DecisionEntry {
        DecisionEntry {
            policy: "p".into(),
            generation: 1,
            sysctl: sysctl.into(),
            value: value.into(),
            outcome,
            delivery: None,
            reason: reason.into(),
            message: String::new(),
        }
    }

    /// The summary annotation is compared on re-invocation: its wording is part of what an
    /// admitted pod carries, so it must not drift.
    #[test]
    fn summary_lists_injected_then_dry_run_then_not_injected() {
        let d = |entries| PodDecision {
            version: DECISION_VERSION,
            entries,
            ..Default::default()
        };
        let all = d(vec![
            entry("a", "1", Outcome::Injected, "SafeSysctl"),
            entry("b", "2", Outcome::Refused, "RefusedUnsafeSysctl"),
            entry("c", "3", Outcome::WouldInject, "SafeSysctl"),
            entry("d", "4", Outcome::PodValueKept, "PodValueKept"),
            entry("e", "5", Outcome::Injected, "SafeSysctl"),
            entry("f", "6", Outcome::Overridden, "OverriddenByPolicy"),
        ]);
        assert_eq!(
            all.summary(),
            "injected a=1,e=5; would inject (DryRun) c=3; \
             not injected b (RefusedUnsafeSysctl),d (PodValueKept)"
        );
        let refused = d(vec![entry("b", "2", Outcome::Refused, "InvalidValue")]);
        assert_eq!(refused.summary(), "not injected b (InvalidValue)");
        let dry = d(vec![entry("c", "3", Outcome::WouldInject, "SafeSysctl")]);
        assert_eq!(dry.summary(), "would inject (DryRun) c=3");
        let overridden = d(vec![entry(
            "f",
            "6",
            Outcome::Overridden,
            "OverriddenByPolicy",
        )]);
        assert_eq!(overridden.summary(), "no sysctls");
        assert_eq!(d(vec![]).summary(), "no sysctls");
    }
}
