//! `cargo +nightly fuzz run mutate`: arbitrary input through `/mutate`'s decode -> plan ->
//! patch. The input is either the whole request body (first byte even) or the pod object inside
//! an otherwise valid AdmissionReview (first byte odd). Invariants: no panic; a JSON body always
//! gets an allowed AdmissionReview with its uid; a patch applies to the object as sent and a
//! second admission of the patched object patches nothing (reinvocationPolicy IfNeeded); the
//! answer (the snapshot's memos fill as the fuzzer goes) is the one a fresh snapshot gives.
#![no_main]

mod common;

use std::sync::OnceLock;

use kubetune_webhook::admission::{mutate, Config, Snapshot};
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
        let snap = common::snapshot(vec![
            policy("backlog", json!({"preset": "HighConnectionServer", "priority": 10})),
            policy("keepalive", json!({"preset": "IpvsIdleKeepalive"})),
            policy("ports", json!({"preset": "WideEphemeralPorts", "mode": "DryRun"})),
            policy("cni", json!({"sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "15"}], "delivery": "TuningCNI"})),
            policy("own", json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "net/core/somaxconn", "value": "1024"}]})),
            policy("bad", json!({"sysctls": [{"name": "net.core.rmem_max", "value": "1"}]})),
        ]);
        (snap, Config::new("kubetune-system", &[]))
    })
}

fuzz_target!(|data: &[u8]| {
    let (snap, cfg) = snapshot();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // The whole body.
        let answer = mutate(rest, snap, cfg);
        match &answer {
            Ok(a) => assert_eq!(a.json()["response"]["allowed"], json!(true), "{}", a.json()),
            Err(_) => assert!(
                serde_json::from_slice::<Value>(rest).is_err(),
                "JSON answered 400"
            ),
        }
        common::same_as_fresh(rest, answer.map(|a| a.body).ok(), snap, cfg);
        return;
    }
    // The pod object inside a valid review.
    let Ok(object) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    common::admit_twice(&object, snap, cfg);
});
