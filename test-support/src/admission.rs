//! What the webhook is asked about: pods, policies, cluster facts and AdmissionReview v1
//! envelopes, in namespace `shop` unless a test says otherwise.

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::facts::{ClusterFacts, NodeGroup, TuningCni};
use kubetune_crds::node::{label_key, TuningCniState, LABEL_ALLOWED};
use kubetune_crds::placement::NodeFacts;
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::sysctl::KubeVersion;
use serde_json::{json, Value};

pub use crate::json::merge;

/// The namespace the fixtures live in.
pub const NS: &str = "shop";

/// Pod `web-1` in `shop` (label `app=web`, containers `nginx` and `sidecar`) with `v` merged in.
pub fn pod(v: Value) -> Pod {
    let mut base = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": NS, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]}});
    merge(&mut base, v);
    serde_json::from_value(base).unwrap()
}

/// TuningPolicy `name` in `shop` (generation 1) selecting `app=web`, with `spec` merged into its
/// spec.
pub fn policy(name: &str, spec: Value) -> TuningPolicy {
    let mut base = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
    merge(&mut base["spec"], spec);
    serde_json::from_value(base).unwrap()
}

/// Node pool `ingress` (`pool=ingress`): allows somaxconn and tcp_max_syn_backlog.
pub fn ingress_nodes() -> NodeGroup {
    NodeGroup {
        name: "ingress".into(),
        node_selector: [("pool".into(), "ingress".into())].into(),
        allowed_unsafe_sysctls: vec![
            "net.core.somaxconn".into(),
            "net.ipv4.tcp_max_syn_backlog".into(),
        ],
    }
}

/// Node pool `general` (`pool=general`): allows no unsafe sysctl.
pub fn general_nodes() -> NodeGroup {
    NodeGroup {
        name: "general".into(),
        node_selector: [("pool".into(), "general".into())].into(),
        allowed_unsafe_sysctls: vec![],
    }
}

/// Kubernetes 1.31 with the node pools `groups`; the tuning CNI network `kubetune-tuning` when
/// `cni`.
pub fn facts_with(groups: Vec<NodeGroup>, cni: bool) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: groups,
        tuning_cni: cni.then(|| TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
        ..Default::default()
    }
}

/// Nodes in pool=ingress allow somaxconn, pool=general nothing; tuning CNI optional.
pub fn facts(cni: bool) -> ClusterFacts {
    facts_with(vec![ingress_nodes(), general_nodes()], cni)
}

/// Node `name` (label `pool=<pool>`, Kubernetes 1.36) whose agent reported that its kubelet
/// accepts `accepts` and labelled the node for them.
pub fn node(name: &str, pool: &str, accepts: &[&str]) -> NodeFacts {
    let mut labels: std::collections::BTreeMap<String, String> =
        [("pool".to_string(), pool.to_string())].into();
    for a in accepts {
        labels.insert(label_key(a).expect("a label name"), LABEL_ALLOWED.into());
    }
    NodeFacts {
        name: name.into(),
        labels,
        schedulable: true,
        taints: vec![],
        kubelet_version: Some(KubeVersion::new(1, 36)),
        accepted: Some(accepts.iter().map(|s| s.to_string()).collect()),
        refused: vec![],
        tuning_cni: TuningCniState::NotInstalled,
    }
}

/// Node truth (no override): `nodes`, Kubernetes 1.36.
pub fn node_truth(nodes: Vec<NodeFacts>) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 36),
        nodes,
        ..Default::default()
    }
}

/// Two nodes: `ingress-1` accepts somaxconn and tcp_max_syn_backlog, `general-1` nothing.
pub fn mixed_nodes() -> ClusterFacts {
    node_truth(vec![
        node(
            "ingress-1",
            "ingress",
            &["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"],
        ),
        node("general-1", "general", &[]),
    ])
}

/// An AdmissionReview v1 CREATE of `object` — a `Pod`, or else a `TuningPolicy` — in
/// `namespace`, as the apiserver sends it for a ReplicaSet's pod.
pub fn review_of(kind: &str, namespace: &Value, object: &Value, uid: &str) -> Value {
    let (group, version, resource) = if kind == "Pod" {
        ("", "v1", "pods")
    } else {
        ("kubetune.dev", "v1alpha1", "tuningpolicies")
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "namespace": namespace, "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
        "object": object, "dryRun": false, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}})
}

/// A pod CREATE of a ReplicaSet's pod in the bytes the apiserver writes (serde_json sorts the keys
/// of [`review_of`]): `request.uid` first, `uid` put in verbatim, the ReplicaSet controller as the
/// requester, CreateOptions, `oldObject: null`.
pub fn apiserver_review(namespace: &str, object: &Value, uid: &str) -> String {
    format!(
        concat!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"{}","#,
            r#""kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"#,
            r#""requestKind":{{"group":"","version":"v1","kind":"Pod"}},"requestResource":{{"group":"","version":"v1","resource":"pods"}},"#,
            r#""namespace":"{}","operation":"CREATE","#,
            r#""userInfo":{{"username":"system:serviceaccount:kube-system:replicaset-controller","uid":"5e1f0a2b-0000-4000-8000-000000000002","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]}},"#,
            r#""object":{},"oldObject":null,"dryRun":false,"options":{{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}}}}"#
        ),
        uid, namespace, object
    )
}

/// [`review_of`] a pod CREATE in the pod's namespace.
pub fn review(pod: &Pod, uid: &str) -> Value {
    let object = serde_json::to_value(pod).unwrap();
    review_of("Pod", &object["metadata"]["namespace"], &object, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_parse_and_reviews_name_their_resource() {
        let p = pod(json!({"metadata": {"labels": {"tier": "a"}}}));
        assert_eq!(p.metadata.labels.as_ref().unwrap().len(), 2);
        assert_eq!(policy("x", json!({"priority": 3})).spec.priority, 3);
        let r = review(&p, "u");
        assert_eq!(r["request"]["namespace"], json!(NS));
        assert_eq!(r["request"]["resource"]["resource"], json!("pods"));
        let t = review_of("TuningPolicy", &json!(NS), &json!({}), "u");
        assert_eq!(t["request"]["kind"]["group"], json!("kubetune.dev"));
        assert_eq!(facts(true).node_groups.len(), 2);
    }
}
