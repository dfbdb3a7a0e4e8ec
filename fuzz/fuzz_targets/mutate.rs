//! `cargo +nightly fuzz run mutate`: arbitrary input through `/mutate`'s decode -> plan ->
//! patch. The input is either the whole request body (first byte even) or the pod object inside
//! an otherwise valid AdmissionReview (first byte odd). Invariants: no panic; a JSON body always
//! gets an allowed AdmissionReview with its uid; a patch applies to the object as sent and a
//! second admission of the patched object patches nothing (reinvocationPolicy IfNeeded).
#![no_main]

use std::sync::OnceLock;

use kubetune_crds::facts::{ClusterFacts, NodeGroup, TuningCni};
use kubetune_crds::sysctl::KubeVersion;
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use kubetune_webhook::plan::NamespaceFacts;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn snapshot() -> &'static (Snapshot, Config) {
    static S: OnceLock<(Snapshot, Config)> = OnceLock::new();
    S.get_or_init(|| {
        let policy = |name: &str, spec: Value| {
            let mut v = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy",
                "metadata": {"name": name, "namespace": "shop", "generation": 2},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
            for (k, val) in spec.as_object().unwrap() {
                v["spec"][k] = val.clone();
            }
            serde_json::from_value(v).unwrap()
        };
        let snap = Snapshot {
            policies: vec![
                policy("backlog", json!({"preset": "HighConnectionServer", "priority": 10})),
                policy("keepalive", json!({"preset": "IpvsIdleKeepalive"})),
                policy("ports", json!({"preset": "WideEphemeralPorts", "mode": "DryRun"})),
                policy("cni", json!({"sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "15"}], "delivery": "TuningCNI"})),
                policy("own", json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "net/core/somaxconn", "value": "1024"}]})),
                policy("bad", json!({"sysctls": [{"name": "net.core.rmem_max", "value": "1"}]})),
            ],
            namespaces: [
                ("shop".to_string(), NamespaceFacts { name: "shop".into(), labels: Default::default() }),
            ]
            .into(),
            facts: ClusterFacts {
                kubernetes_version: KubeVersion::new(1, 31),
                node_groups: vec![NodeGroup {
                    name: "ingress".into(),
                    node_selector: [("pool".into(), "ingress".into())].into(),
                    allowed_unsafe_sysctls: vec!["net.core.somaxconn".into(), "net.ipv4.tcp_max_syn_backlog".into()],
                }],
                tuning_cni: Some(TuningCni { network_name: "kubetune-tuning".into() }),
            },
            ..Default::default()
        };
        (snap, Config::new("kubetune-system", &[]))
    })
}

fn review(object: &Value, uid: &str) -> Vec<u8> {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "fuzz"},
        "object": object}})
    .to_string()
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let (snap, cfg) = snapshot();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // The whole body.
        match mutate(rest, snap, cfg) {
            Ok(a) => assert_eq!(a.json()["response"]["allowed"], json!(true), "{}", a.json()),
            Err(_) => assert!(
                serde_json::from_slice::<Value>(rest).is_err(),
                "JSON answered 400"
            ),
        }
        return;
    }
    // The pod object inside a valid review.
    let Ok(object) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let a = mutate(&review(&object, "f1"), snap, cfg).expect("a JSON body is answered");
    let v = a.json();
    assert_eq!(v["response"]["allowed"], json!(true), "{v}");
    assert_eq!(v["response"]["uid"], json!("f1"), "{v}");
    let Some(patch) = a.patch() else { return };
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{object}\n{v}"));
    let again = mutate(&review(&doc, "f2"), snap, cfg).expect("answered");
    assert!(
        again.patch().is_none(),
        "re-invocation patched again:\n{doc}\n{}",
        again.json()
    );
});
