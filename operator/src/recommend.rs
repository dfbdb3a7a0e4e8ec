//! Recommendations for pods that overflow because of `net.core.somaxconn` and that no
//! TuningPolicy selects. Pure: `(pod, report, selecting policies) -> Option<Recommendation>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::report::{Diagnosis, LimitedBy, ListenerReport};
use serde_json::json;

/// The smallest somaxconn kubetune recommends (a fresh netns default on kernels >= 5.4).
pub const MIN_RECOMMENDED_SOMAXCONN: i64 = 4096;
/// Upper bound of a recommendation (well inside the kernel's `int` range).
pub const MAX_RECOMMENDED_SOMAXCONN: i64 = 1 << 30;

/// Pod labels that differ between replicas or rollouts; never used in a recommended selector.
pub const UNSTABLE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
];

/// A recommended TuningPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// Recommended policy name.
    pub policy_name: String,
    /// Recommended `net.core.somaxconn`.
    pub somaxconn: i64,
    /// Largest backlog a somaxconn-bound listener asked for (if known).
    pub requested_backlog: Option<i64>,
    /// Selector labels (from the pod's stable labels).
    pub match_labels: BTreeMap<String, String>,
    /// The TuningPolicy as YAML (with explanatory comments), for `status.recommendation`.
    pub yaml: String,
    /// One-line event message.
    pub message: String,
}

/// Next power of two >= `n`, at least [`MIN_RECOMMENDED_SOMAXCONN`], at most
/// [`MAX_RECOMMENDED_SOMAXCONN`].
pub fn recommended_somaxconn(requested: i64) -> i64 {
    let n = requested.clamp(1, MAX_RECOMMENDED_SOMAXCONN) as u64;
    (n.next_power_of_two() as i64).clamp(MIN_RECOMMENDED_SOMAXCONN, MAX_RECOMMENDED_SOMAXCONN)
}

fn dns_label(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(52);
    out.trim_matches('-').to_string()
}

/// A recommendation for `pod` when its report shows somaxconn-bound overflows and
/// `selecting_policies` is empty; `None` otherwise.
pub fn recommend(
    pod: &Pod,
    report: &ListenerReport,
    selecting_policies: &[String],
) -> Option<Recommendation> {
    if !selecting_policies.is_empty()
        || report.spec.diagnosis != Diagnosis::SomaxconnBound
        || report.spec.overflows_recent <= 0
    {
        return None;
    }
    let bound: Vec<_> = report
        .spec
        .listeners
        .iter()
        .filter(|l| {
            l.limited_by == LimitedBy::Somaxconn || l.diagnosis == Diagnosis::SomaxconnBound
        })
        .collect();
    let requested = bound.iter().filter_map(|l| l.requested_backlog).max();
    let current = report.spec.somaxconn.unwrap_or(0);
    // Unknown requested backlog (socket predates the agent): at least double the current limit.
    let somaxconn = recommended_somaxconn(requested.unwrap_or(current.saturating_mul(2)));
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let match_labels: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !UNSTABLE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let base = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| {
            pod.metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| o.name.clone())
        })
        .unwrap_or_else(|| pod_name.clone());
    let policy_name = format!("{}-somaxconn", dns_label(&base));
    let ports: Vec<String> = bound
        .iter()
        .map(|l| match l.requested_backlog {
            Some(b) => format!(":{} listen({b})", l.port),
            None => format!(":{}", l.port),
        })
        .collect();
    let why = format!(
        "pod {pod_name} overflows its accept queue ({} in the last {}s) because net.core.somaxconn={} caps the \
         backlog its listeners ask for ({}); no TuningPolicy selects it",
        report.spec.overflows_recent,
        report.spec.window_seconds,
        current,
        ports.join(", ")
    );
    let policy = json!({
        "apiVersion": kubetune_crds::API_VERSION,
        "kind": "TuningPolicy",
        "metadata": {"name": policy_name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": match_labels},
            "sysctls": [{"name": "net.core.somaxconn", "value": somaxconn.to_string()}],
        }
    });
    let mut yaml = String::new();
    yaml.push_str(&format!("# {why}.\n"));
    yaml.push_str(
        "# net.core.somaxconn is an unsafe sysctl: the nodes' kubelets must allow it \
         (allowedUnsafeSysctls) or tuning-CNI delivery must be enabled.\n",
    );
    yaml.push_str(
        "# Sysctls apply at pod creation: recreate the pods after applying this policy.\n",
    );
    if match_labels.is_empty() {
        yaml.push_str(
            "# WARNING: the pod has no stable labels; this empty selector selects every pod in the namespace.\n",
        );
    }
    yaml.push_str(&serde_yaml::to_string(&policy).unwrap_or_default());
    let message = format!(
        "{why}: apply TuningPolicy {policy_name} with net.core.somaxconn={somaxconn} (see ListenerReport \
         {pod_name} status.recommendation) and recreate the pod"
    );
    Some(Recommendation {
        policy_name,
        somaxconn,
        requested_backlog: requested,
        match_labels,
        yaml,
        message,
    })
}
