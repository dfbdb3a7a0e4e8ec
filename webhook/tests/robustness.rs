//! Property tests (bounded; part of `cargo test`): decode -> plan -> patch never panics, always
//! allows, the patch applies to the pod and re-invocation yields an empty patch.

mod common;

use common::*;
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use kubetune_webhook::plan::NamespaceFacts;
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

/// Valid (name, value) pairs, so that most generated policies are valid and deliverable.
const VALID: &[(&str, &str)] = &[
    ("net.core.somaxconn", "4096"),
    ("net.core.somaxconn", "1024"),
    ("net.ipv4.tcp_max_syn_backlog", "8192"),
    ("net.ipv4.tcp_keepalive_time", "600"),
    ("net.ipv4.tcp_keepalive_time", "300"),
    // Valid, but not as the kernel prints them (found by the fuzzer: injected "59", recorded
    // "059", re-invocation patched again).
    ("net.ipv4.tcp_keepalive_time", "0300"),
    ("net.core.somaxconn", "+4096"),
    ("net.ipv4.ip_local_port_range", "1024\t 65535"),
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net/ipv4/tcp_syncookies", "1"),
    ("net.ipv4.tcp_syncookies", "0"),
    ("kernel.shm_rmid_forced", "1"),
];

/// Mostly valid pairs, sometimes an arbitrary (often invalid) name/value combination.
fn arb_sysctl() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        4 => prop::sample::select(VALID).prop_map(|(n, v)| (n.to_string(), v.to_string())),
        1 => (prop::sample::select(NAMES), prop::sample::select(VALUES))
            .prop_map(|(n, v)| (n.to_string(), v.to_string())),
    ]
}

fn arb_sysctls() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(arb_sysctl(), 0..4)
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
                spec["sysctls"] = json!(sysctls.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>());
            }
            if let Some(a) = app {
                spec["podSelector"] = json!({"matchLabels": {"app": a}});
            }
            spec["__name"] = json!(name);
            spec
        })
}

fn arb_pod() -> impl Strategy<Value = Value> {
    (
        (arb_sysctls(), prop::bool::weighted(0.15), prop::bool::weighted(0.1), 0..4usize),
        prop::option::of(prop::sample::select(vec!["ingress", "general", "gpu"])),
        any::<bool>(),
        prop::option::of("[a-z/@, ]{0,12}|\\[\\{\"name\":\"[a-z]{1,3}\"\\}\\]|\\[\\{"),
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        (0..3usize, 0..5usize),
    )
        .prop_map(|((sysctls, host_net, host_ipc, sc_shape), pool, with_ann, networks, app, (decision, affinity))| {
            let mut spec = json!({"hostNetwork": host_net, "hostIPC": host_ipc});
            // A pod naming the same sysctl twice is rejected by apiserver validation whatever
            // the webhook does, so the pod side keeps the first entry per (normalised) name.
            let mut seen = std::collections::BTreeSet::new();
            let sysctls: Vec<(String, String)> = sysctls.into_iter().filter(|(n, _)| seen.insert(n.replace('/', "."))).collect();
            let list: Vec<Value> = sysctls.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
            match sc_shape {
                0 => {}
                1 => spec["securityContext"] = json!({"sysctls": list}),
                2 => spec["securityContext"] = json!({"runAsNonRoot": true}),
                _ => spec["securityContext"] = json!({"sysctls": null}),
            }
            if let Some(p) = pool {
                spec["nodeSelector"] = json!({"pool": p});
            }
            // Required node affinity of the pod's own: ORed terms, a DaemonSet-style pin, an
            // empty term (matches nothing), a kubetune-looking requirement.
            let terms = match affinity {
                1 => Some(json!([{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ingress", "general"]}]},
                                 {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["general-1"]}]}])),
                2 => Some(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ingress-1"]}]}])),
                3 => Some(json!([{}])),
                4 => Some(json!([{"matchExpressions": [{"key": "sysctl.kubetune.dev/net.core.somaxconn", "operator": "In", "values": ["allowed"]}]}])),
                _ => None,
            };
            if let Some(t) = terms {
                spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": t}}});
            }
            let mut meta = json!({"labels": {}});
            if let Some(a) = app {
                meta["labels"]["app"] = json!(a);
            }
            if with_ann {
                meta["annotations"] = json!({"x/y": "z"});
                if let Some(n) = networks {
                    meta["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(n);
                }
                // A stale or garbage decision record must not confuse the planner.
                match decision {
                    1 => meta["annotations"]["kubetune.dev/decision"] = json!("{not json"),
                    2 => meta["annotations"]["kubetune.dev/decision"] = json!({"version": 1, "policies": [], "entries": [
                        {"policy": "a", "generation": 1, "sysctl": sysctls.first().map_or("net.core.somaxconn", |s| s.0.as_str()), "value": sysctls.first().map_or("1", |s| s.1.as_str()),
                         "outcome": "Injected", "delivery": "PodSecurityContext", "reason": "SafeSysctl", "message": "m"}]}).to_string().into(),
                    _ => {}
                }
            }
            json!({"metadata": meta, "spec": spec})
        })
}

/// Cluster facts: node groups (override), node truth with nodes that differ, or node truth where
/// every node accepts somaxconn and tcp_max_syn_backlog.
fn cluster(kind: usize, cni: bool) -> kubetune_crds::facts::ClusterFacts {
    let mut f = match kind {
        0 => return facts(cni),
        1 => mixed_nodes(),
        _ => node_truth(vec![node(
            "ingress-1",
            "ingress",
            &["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"],
        )]),
    };
    f.tuning_cni = facts(cni).tuning_cni;
    f
}

fn snapshot(policies: Vec<Value>, cni: bool, psa: usize) -> Snapshot {
    snapshot_with(policies, cluster(0, cni), psa)
}

fn snapshot_with(
    policies: Vec<Value>,
    facts: kubetune_crds::facts::ClusterFacts,
    psa: usize,
) -> Snapshot {
    let policies = policies
        .into_iter()
        .map(|mut spec| {
            let name = spec["__name"].as_str().unwrap().to_string();
            spec.as_object_mut().unwrap().remove("__name");
            policy(&name, spec)
        })
        .collect();
    let labels: &[(&str, &str)] = match psa {
        0 => &[],
        1 => &[("pod-security.kubernetes.io/enforce", "baseline")],
        2 => &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "v1.27"),
        ],
        _ => &[("pod-security.kubernetes.io/enforce", "privileged")],
    };
    let shop = NamespaceFacts {
        name: "shop".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    Snapshot {
        policies,
        namespaces: [("shop".to_string(), shop)].into(),
        facts,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_shrink_iters: 500, ..ProptestConfig::default() })]

    /// decode -> plan -> patch on arbitrary pods and policies: always allowed, the patch applies
    /// to the object exactly as sent, only touches sysctls and annotations, never changes or
    /// drops the pod's own sysctls, and re-invocation on the result patches nothing.
    #[test]
    fn plan_patch_apply_is_total_and_idempotent(policies in prop::collection::vec(arb_policy(), 1..4), p in arb_pod(), cni in any::<bool>(), psa in 0..4usize, truth in 0..3usize) {
        let snap = snapshot_with(policies, cluster(truth, cni), psa);
        let cfg = Config::new("kubetune-system", &[]);
        let mut raw = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}});
        merge(&mut raw, p);
        let mut req = review(&pod(json!({})), "p");
        req["request"]["object"] = raw.clone();
        let r = mutate(req.to_string().as_bytes(), &snap, &cfg).unwrap();
        let wire = r.json();
        prop_assert_eq!(&wire["response"]["allowed"], &json!(true));
        prop_assert_eq!(&wire["response"]["uid"], &json!("p"));
        if let Some(patch) = r.patch() {
            for op in serde_json::to_value(&patch).unwrap().as_array().unwrap() {
                let path = op["path"].as_str().unwrap();
                prop_assert!(path.starts_with("/metadata/annotations") || path.starts_with("/spec"), "{}", path);
                prop_assert!(path != "/spec" || raw["spec"].is_null());
            }
            let mut doc = raw.clone();
            json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
            // Containers and everything else untouched.
            prop_assert_eq!(&doc["spec"]["containers"], &raw["spec"]["containers"]);
            prop_assert_eq!(&doc["spec"]["hostNetwork"], &raw["spec"]["hostNetwork"]);
            // The pod's sysctls are a prefix-preserving superset: nothing removed, order kept.
            let before = raw["spec"]["securityContext"]["sysctls"].as_array().cloned().unwrap_or_default();
            let after = doc["spec"]["securityContext"]["sysctls"].as_array().cloned().unwrap_or_default();
            prop_assert!(after.len() >= before.len());
            prop_assert_eq!(
                after[..before.len()].iter().map(|s| s["name"].clone()).collect::<Vec<_>>(),
                before.iter().map(|s| s["name"].clone()).collect::<Vec<_>>()
            );
            let mut req2 = review(&pod(json!({})), "p2");
            req2["request"]["object"] = doc.clone();
            let r2 = mutate(req2.to_string().as_bytes(), &snap, &cfg).unwrap();
            let wire2 = r2.json();
            prop_assert!(wire2["response"]["patch"].is_null(), "second invocation patched again: {}", wire2);
            prop_assert_eq!(&wire2["response"]["allowed"], &json!(true));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let snap = Snapshot::default();
        let cfg = Config::new("kubetune-system", &[]);
        if let Ok(r) = mutate(&body, &snap, &cfg) {
            prop_assert_eq!(&r.json()["response"]["allowed"], &json!(true));
        }
    }

    #[test]
    fn mangled_reviews_are_allowed(path in prop::sample::select(vec!["/request/object/spec", "/request/object/metadata", "/request/kind", "/request/uid", "/request/operation", "/request/object/spec/securityContext", "/request/object/metadata/labels"]),
                                   replacement in prop::sample::select(vec![json!(null), json!(1), json!("s"), json!([]), json!({"a": [1]})])) {
        let mut v = review(&pod(json!({"spec": {"securityContext": {"sysctls": []}}})), "m");
        if let Some(slot) = v.pointer_mut(path) {
            *slot = replacement;
        }
        let snap = snapshot(vec![json!({"__name": "a", "preset": "IpvsIdleKeepalive"})], false, 0);
        let r = mutate(v.to_string().as_bytes(), &snap, &Config::new("kt", &[])).unwrap();
        prop_assert_eq!(&r.json()["response"]["allowed"], &json!(true));
    }
}

/// Found by the fuzzer: objects where the API has objects may arrive as arrays (`"securityContext":
/// []`); serde's derive would read them as empty structs and the patch would not apply. They are
/// malformed: answered allowed, no patch.
#[test]
fn arrays_where_objects_belong_are_answered_without_a_patch() {
    let snap = snapshot(
        vec![json!({"__name": "a", "preset": "IpvsIdleKeepalive"})],
        false,
        0,
    );
    let cfg = Config::new("kubetune-system", &[]);
    for spec in [
        json!({"securityContext": []}),
        json!([]),
        json!({"securityContext": {"sysctls": []}}),
    ] {
        let mut req = review(&pod(json!({})), "arr");
        req["request"]["object"]["spec"] = spec.clone();
        let r = mutate(req.to_string().as_bytes(), &snap, &cfg).unwrap();
        let wire = r.json();
        prop_assert_allowed(&wire);
        if let Some(patch) = r.patch() {
            let mut doc = req["request"]["object"].clone();
            json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }
    let mut req = review(&pod(json!({})), "arr");
    req["request"]["object"]["metadata"] = json!([]);
    let r = mutate(req.to_string().as_bytes(), &snap, &cfg).unwrap();
    prop_assert_allowed(&r.json());
    assert!(r.patch().is_none());
}

fn prop_assert_allowed(wire: &Value) {
    assert_eq!(wire["response"]["allowed"], json!(true), "{wire}");
}
