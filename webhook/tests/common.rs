//! Fixtures shared by the webhook tests.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::facts::{ClusterFacts, NodeGroup, TuningCni};
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::sysctl::KubeVersion;
use serde_json::{json, Value};

pub fn pod(v: Value) -> Pod {
    let mut base = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]}});
    merge(&mut base, v);
    serde_json::from_value(base).unwrap()
}

pub fn policy(name: &str, spec: Value) -> TuningPolicy {
    let mut base = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
    merge(&mut base["spec"], spec);
    serde_json::from_value(base).unwrap()
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Nodes in pool=ingress allow somaxconn; tuning CNI optional.
pub fn facts(cni: bool) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: vec![
            NodeGroup {
                name: "ingress".into(),
                node_selector: [("pool".into(), "ingress".into())].into(),
                allowed_unsafe_sysctls: vec![
                    "net.core.somaxconn".into(),
                    "net.ipv4.tcp_max_syn_backlog".into(),
                ],
            },
            NodeGroup {
                name: "general".into(),
                node_selector: [("pool".into(), "general".into())].into(),
                allowed_unsafe_sysctls: vec![],
            },
        ],
        tuning_cni: cni.then(|| TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
    }
}

pub fn review(pod: &Pod, uid: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": pod.metadata.namespace, "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": pod, "dryRun": false}})
}
