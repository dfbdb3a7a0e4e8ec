//! What both fuzz targets share: the review envelope, the cluster they run against, and the
//! `/mutate` invariants.

use kubetune_crds::facts::{ClusterFacts, NodeGroup, TuningCni};
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::sysctl::KubeVersion;
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use kubetune_webhook::plan::NamespaceFacts;
use serde_json::{json, Value};

/// An AdmissionReview v1 CREATE of `object` (a `Pod` or a `TuningPolicy`) in namespace `shop`.
pub fn review(kind: &str, object: &Value, uid: &str) -> Vec<u8> {
    let (group, version, resource) = if kind == "Pod" {
        ("", "v1", "pods")
    } else {
        ("kubetune.dev", "v1alpha1", "tuningpolicies")
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "fuzz"},
        "object": object}})
    .to_string()
    .into_bytes()
}

/// `policies` in a cluster with namespace `shop` (no PodSecurity labels), Kubernetes 1.31, an
/// `ingress` node pool allowing somaxconn and tcp_max_syn_backlog, and tuning CNI enabled.
pub fn snapshot(policies: Vec<TuningPolicy>) -> Snapshot {
    Snapshot {
        policies,
        namespaces: [(
            "shop".to_string(),
            NamespaceFacts {
                name: "shop".into(),
                labels: Default::default(),
            },
        )]
        .into(),
        facts: ClusterFacts {
            kubernetes_version: KubeVersion::new(1, 31),
            node_groups: vec![NodeGroup {
                name: "ingress".into(),
                node_selector: [("pool".into(), "ingress".into())].into(),
                allowed_unsafe_sysctls: vec![
                    "net.core.somaxconn".into(),
                    "net.ipv4.tcp_max_syn_backlog".into(),
                ],
            }],
            tuning_cni: Some(TuningCni {
                network_name: "kubetune-tuning".into(),
            }),
        },
        ..Default::default()
    }
}

/// Admit the pod `object`: the answer is allowed and carries the request's uid; its patch
/// applies to the object as sent; admitting the patched object again patches nothing
/// (reinvocationPolicy IfNeeded).
pub fn admit_twice(object: &Value, snap: &Snapshot, cfg: &Config) {
    let a = mutate(&review("Pod", object, "f1"), snap, cfg).expect("a JSON body is answered");
    let v = a.json();
    assert_eq!(v["response"]["allowed"], json!(true), "{v}");
    assert_eq!(v["response"]["uid"], json!("f1"), "{v}");
    let Some(patch) = a.patch() else { return };
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{object}\n{v}"));
    let again = mutate(&review("Pod", &doc, "f2"), snap, cfg).expect("answered");
    assert!(
        again.patch().is_none(),
        "re-invocation patched again:\n{doc}\n{}",
        again.json()
    );
}
