//! Property tests (bounded; part of `cargo test`): decode -> plan -> patch never panics, always
//! allows, the patch applies to the pod and re-invocation yields an empty patch.

mod common;

use common::*;
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAMES: &[&str] = &[
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.ip_local_port_range",
    "net.core.rmem_max",
    "vm.swappiness",
    "kernel.shm_rmid_forced",
    "kernel.sem",
    "net/ipv4/tcp_syncookies",
    "net.bogus.x",
];
const VALUES: &[&str] = &[
    "1",
    "0",
    "600",
    "4096",
    "1024 65535",
    "65535 1024",
    "",
    "x",
    "250 32000 100 128",
    "-1",
    "99999999999999999999",
];

fn arb_sysctls() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..4)
}

fn arb_policy() -> impl Strategy<Value = Value> {
    (
        "[a-c]{1,2}",
        prop::option::of(0..3usize),
        arb_sysctls(),
        0..3usize,
        0..2usize,
        -2..3i32,
        prop::option::of(prop::sample::select(vec!["web", "db"])),
    )
        .prop_map(|(name, preset, sysctls, delivery, mode, priority, app)| {
            let presets = ["HighConnectionServer", "IpvsIdleKeepalive", "WideEphemeralPorts"];
            let deliveries = ["Auto", "PodSecurityContext", "TuningCNI"];
            let modes = ["Enforce", "DryRun"];
            let mut spec = json!({"delivery": deliveries[delivery], "mode": modes[mode], "priority": priority});
            if let Some(p) = preset {
                spec["preset"] = json!(presets[p]);
            }
            if !sysctls.is_empty() || preset.is_none() {
                spec["sysctls"] = json!(sysctls.iter().map(|(n, v)| json!({"name": NAMES[*n], "value": VALUES[*v]})).collect::<Vec<_>>());
            }
            if let Some(a) = app {
                spec["podSelector"] = json!({"matchLabels": {"app": a}});
            }
            spec["__name"] = json!(name);
            spec
        })
}

fn arb_pod() -> impl Strategy<Value = Value> {
    (arb_sysctls(), any::<bool>(), any::<bool>(), prop::option::of(prop::sample::select(vec!["ingress", "general", "gpu"])), any::<bool>(), prop::option::of("[a-z/@, ]{0,12}"))
        .prop_map(|(sysctls, host_net, with_sc, pool, with_ann, networks)| {
            let mut spec = json!({"hostNetwork": host_net});
            if with_sc {
                spec["securityContext"] = json!({"sysctls": sysctls.iter().map(|(n, v)| json!({"name": NAMES[*n], "value": VALUES[*v]})).collect::<Vec<_>>()});
            }
            if let Some(p) = pool {
                spec["nodeSelector"] = json!({"pool": p});
            }
            let mut meta = json!({});
            if with_ann {
                meta["annotations"] = json!({"x/y": "z"});
                if let Some(n) = networks {
                    meta["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(n);
                }
            }
            json!({"metadata": meta, "spec": spec})
        })
}

fn snapshot(policies: Vec<Value>, cni: bool) -> Snapshot {
    let policies = policies
        .into_iter()
        .map(|mut spec| {
            let name = spec["__name"].as_str().unwrap().to_string();
            spec.as_object_mut().unwrap().remove("__name");
            policy(&name, spec)
        })
        .collect();
    Snapshot {
        policies,
        namespaces: Default::default(),
        facts: facts(cni),
    }
}

fn patch_of(resp: &Value) -> Option<json_patch::Patch> {
    use base64::Engine;
    let b64 = resp["response"]["patch"].as_str()?;
    Some(
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn plan_patch_apply_is_total_and_idempotent(policies in prop::collection::vec(arb_policy(), 0..4), p in arb_pod(), cni in any::<bool>()) {
        let snap = snapshot(policies, cni);
        let cfg = Config::new("kubetune-system", &[]);
        let pod0 = pod(p);
        let r = mutate(review(&pod0, "p").to_string().as_bytes(), &snap, &cfg).unwrap();
        let wire = &r.review;
        prop_assert_eq!(&wire["response"]["allowed"], &json!(true));
        if let Some(patch) = patch_of(wire) {
            let mut doc = serde_json::to_value(&pod0).unwrap();
            json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
            let pod1: k8s_openapi::api::core::v1::Pod = serde_json::from_value(doc).unwrap();
            let r2 = mutate(review(&pod1, "p2").to_string().as_bytes(), &snap, &cfg).unwrap();
            let wire2 = r2.review;
            prop_assert!(wire2["response"]["patch"].is_null(), "second invocation patched again: {}", wire2);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let snap = Snapshot::default();
        let cfg = Config::new("kubetune-system", &[]);
        if let Ok(r) = mutate(&body, &snap, &cfg) {
            prop_assert_eq!(&r.review["response"]["allowed"], &json!(true));
        }
    }

    #[test]
    fn mangled_reviews_are_allowed(path in prop::sample::select(vec!["/request/object/spec", "/request/object/metadata", "/request/kind", "/request/uid", "/request/operation", "/request/object/spec/securityContext", "/request/object/metadata/labels"]),
                                   replacement in prop::sample::select(vec![json!(null), json!(1), json!("s"), json!([]), json!({"a": [1]})])) {
        let mut v = review(&pod(json!({"spec": {"securityContext": {"sysctls": []}}})), "m");
        if let Some(slot) = v.pointer_mut(path) {
            *slot = replacement;
        }
        let snap = snapshot(vec![json!({"__name": "a", "preset": "IpvsIdleKeepalive"})], false);
        let r = mutate(v.to_string().as_bytes(), &snap, &Config::new("kt", &[])).unwrap();
        prop_assert_eq!(&r.review["response"]["allowed"], &json!(true));
    }
}
