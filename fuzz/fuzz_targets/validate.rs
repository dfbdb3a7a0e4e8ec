//! `cargo +nightly fuzz run validate`: arbitrary input through `/validate` (TuningPolicy
//! admission). The input is either the whole request body (first byte even) or the policy
//! object inside an otherwise valid AdmissionReview (first byte odd). Invariants: no panic; a
//! JSON body always gets an AdmissionReview answer; a denial says why; and whatever `/validate`
//! admits, `/mutate` can use: a pod it selects is answered, allowed, with a patch that applies
//! and is not repeated on re-admission.
#![no_main]

mod common;

use common::review;
use kubetune_crds::policy::TuningPolicy;
use kubetune_webhook::admission::{validate, Config};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

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
            let v = r.json();
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
        let v = r.json();
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
    let v = r.json();
    assert_eq!(v["response"]["uid"], json!("v1"), "{v}");
    if v["response"]["allowed"] != json!(true) {
        let why = v["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(!why.is_empty(), "a denial without a reason: {v}");
        return;
    }
    let Ok(policy) = serde_json::from_value::<TuningPolicy>(object) else {
        panic!("/validate admitted an object that is not a TuningPolicy: {v}");
    };
    let pod = selected_pod(&policy);
    common::admit_twice(
        &pod,
        &common::snapshot(vec![policy]),
        &Config::new("kubetune-system", &[]),
    );
});
