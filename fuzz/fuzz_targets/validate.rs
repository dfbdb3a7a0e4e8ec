//! `cargo +nightly fuzz run validate`: arbitrary input through `/validate` (TuningPolicy
//! admission). The input is either the whole request body (first byte even) or the policy
//! object inside an otherwise valid AdmissionReview (first byte odd). Invariants: no panic; a
//! JSON body always gets an AdmissionReview answer; a denial says why; and whatever `/validate`
//! admits, `/mutate` can use: a pod it selects is answered, allowed, with a patch that applies
//! and is not repeated on re-admission.
#![no_main]

use kubetune_crds::facts::{ClusterFacts, NodeGroup, TuningCni};
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::sysctl::KubeVersion;
use kubetune_webhook::admission::{mutate, to_wire, validate, Config, Snapshot};
use kubetune_webhook::plan::NamespaceFacts;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn review(kind: &str, object: &Value, uid: &str) -> Vec<u8> {
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

/// A pod the admitted policy selects (its podSelector's matchLabels, when it has any).
fn selected_pod(policy: &TuningPolicy) -> Value {
    let labels = serde_json::to_value(&policy.spec)
        .ok()
        .and_then(|s| s.pointer("/podSelector/matchLabels").cloned())
        .unwrap_or_else(|| json!({}));
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": labels},
        "spec": {"nodeSelector": {"pool": "ingress"}, "containers": [{"name": "c", "image": "nginx"}]}})
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(r) = validate(rest) {
            let v = to_wire(&r.review);
            assert!(v["response"]["allowed"].is_boolean(), "{v}");
        } else {
            assert!(
                serde_json::from_slice::<Value>(rest).is_err(),
                "JSON answered 400"
            );
        }
        return;
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let Some(o) = object.as_object_mut() else {
        // Not an object: a malformed review, answered allowed with a warning (never blocking).
        let r = validate(&review("TuningPolicy", &object, "v0")).expect("a JSON body is answered");
        let v = to_wire(&r.review);
        assert_eq!(v["response"]["allowed"], json!(true), "{v}");
        assert!(v["response"]["warnings"][0].is_string(), "no warning: {v}");
        return;
    };
    o.insert("apiVersion".into(), json!("kubetune.dev/v1alpha1"));
    o.insert("kind".into(), json!("TuningPolicy"));
    o.insert(
        "metadata".into(),
        json!({"name": "p", "namespace": "shop", "generation": 1}),
    );
    let r = validate(&review("TuningPolicy", &object, "v1")).expect("a JSON body is answered");
    let v = to_wire(&r.review);
    assert_eq!(v["response"]["uid"], json!("v1"), "{v}");
    if v["response"]["allowed"] != json!(true) {
        let why = v["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(!why.is_empty(), "a denial without a reason: {v}");
        return;
    }
    let Ok(policy) = serde_json::from_value::<TuningPolicy>(object) else {
        panic!("/validate admitted an object that is not a TuningPolicy: {v}");
    };
    let snap = Snapshot {
        policies: vec![policy.clone()],
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
    };
    let cfg = Config::new("kubetune-system", &[]);
    let pod = selected_pod(&policy);
    let a = mutate(&review("Pod", &pod, "m1"), &snap, &cfg).expect("answered");
    let m = a.json();
    assert_eq!(m["response"]["allowed"], json!(true), "{m}");
    let Some(patch) = a.patch() else { return };
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{pod}\n{m}"));
    let again = mutate(&review("Pod", &doc, "m2"), &snap, &cfg).expect("answered");
    assert!(
        again.patch().is_none(),
        "re-invocation patched again:\n{doc}\n{}",
        again.json()
    );
});
