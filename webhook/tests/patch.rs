//! Patch tests: apply the patch to the pod JSON, check the result, and check idempotency.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    PodDecision, DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::TuningPolicy;
use kubetune_webhook::networks::parse_networks;
use kubetune_webhook::patch::build_patch;
use kubetune_webhook::plan::{plan, NamespaceFacts};
use serde_json::{json, Value};

fn run(p: &Pod, policies: &[TuningPolicy], f: &ClusterFacts) -> (Value, usize) {
    let pl = plan(
        p,
        &NamespaceFacts {
            name: "shop".into(),
            ..Default::default()
        },
        policies,
        f,
    );
    let patch = build_patch(p, &pl);
    let mut doc = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut doc, &patch.to_json_patch()).expect("patch applies");
    (doc, patch.0.len())
}

/// Apply, then run again on the result: the second patch must be empty.
fn apply_idempotent(p: &Pod, policies: &[TuningPolicy], f: &ClusterFacts) -> Value {
    let (doc, n) = run(p, policies, f);
    assert!(n > 0, "first patch is not empty");
    let again: Pod = serde_json::from_value(doc.clone()).unwrap();
    let (doc2, n2) = run(&again, policies, f);
    assert_eq!(n2, 0, "re-invocation must yield an empty patch");
    assert_eq!(doc, doc2);
    doc
}

fn sysctls(doc: &Value) -> Vec<(String, String)> {
    doc["spec"]["securityContext"]["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn adds_security_context_and_annotations_when_absent() {
    let doc = apply_idempotent(
        &pod(json!({})),
        &[policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
        &facts(false),
    );
    assert_eq!(
        sysctls(&doc),
        [
            ("net.ipv4.tcp_keepalive_intvl".into(), "60".into()),
            ("net.ipv4.tcp_keepalive_probes".into(), "5".into()),
            ("net.ipv4.tcp_keepalive_time".into(), "600".into())
        ]
    );
    let d = PodDecision::parse(
        doc["metadata"]["annotations"][DECISION_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(d.entries.len(), 3);
    assert!(doc["metadata"]["annotations"][SUMMARY_ANNOTATION]
        .as_str()
        .unwrap()
        .starts_with("injected net.ipv4.tcp_keepalive_intvl=60"));
    assert_eq!(
        doc["spec"]["containers"].as_array().unwrap().len(),
        2,
        "containers untouched"
    );
}

#[test]
fn adds_sysctls_to_an_existing_security_context() {
    let p = pod(
        json!({"metadata": {"annotations": {"team": "a/b"}}, "spec": {"securityContext": {"runAsNonRoot": true}}}),
    );
    let doc = apply_idempotent(
        &p,
        &[policy("p", json!({"preset": "WideEphemeralPorts"}))],
        &facts(false),
    );
    assert_eq!(doc["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sysctls(&doc),
        [("net.ipv4.ip_local_port_range".into(), "1024 65535".into())]
    );
    assert_eq!(
        doc["metadata"]["annotations"]["team"], "a/b",
        "existing annotations kept"
    );
}

#[test]
fn merges_into_the_pods_sysctls_keeping_its_own_first() {
    let p = pod(
        json!({"spec": {"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"name": "net.ipv4.tcp_keepalive_time", "value": "300"}]}}}),
    );
    let doc = apply_idempotent(
        &p,
        &[policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
        &facts(false),
    );
    assert_eq!(
        sysctls(&doc),
        [
            ("kernel.shm_rmid_forced".into(), "1".into()),
            ("net.ipv4.tcp_keepalive_time".into(), "300".into()),
            ("net.ipv4.tcp_keepalive_intvl".into(), "60".into()),
            ("net.ipv4.tcp_keepalive_probes".into(), "5".into()),
        ]
    );
}

#[test]
fn tuning_cni_selection_merges_existing_networks() {
    let p = pod(
        json!({"metadata": {"annotations": {MULTUS_NETWORKS_ANNOTATION: "storage/san@net1, macvlan"}}}),
    );
    let doc = apply_idempotent(
        &p,
        &[policy(
            "s",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
        )],
        &facts(true),
    );
    assert!(
        doc["spec"]["securityContext"].is_null(),
        "nothing in securityContext for CNI delivery"
    );
    let nets: Value = serde_json::from_str(
        doc["metadata"]["annotations"][MULTUS_NETWORKS_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        nets,
        json!([
            {"name": "san", "namespace": "storage", "interface": "net1"},
            {"name": "macvlan"},
            {"name": "kubetune-tuning", "namespace": "shop", "cni-args": {"sysctl": {"net.core.somaxconn": "4096"}}}
        ])
    );
}

#[test]
fn nothing_matches_nothing_changes() {
    let p = pod(json!({"metadata": {"labels": {"app": "db"}}}));
    let (doc, n) = run(
        &p,
        &[policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
        &facts(false),
    );
    assert_eq!(n, 0);
    assert!(
        doc["metadata"]["annotations"].is_null(),
        "no annotation when no policy matches"
    );
}

#[test]
fn refused_only_still_annotates_but_leaves_the_spec() {
    let doc = apply_idempotent(
        &pod(json!({})),
        &[policy(
            "s",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
        )],
        &facts(false),
    );
    assert!(doc["spec"]["securityContext"].is_null());
    let d = PodDecision::parse(
        doc["metadata"]["annotations"][DECISION_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(d.entries[0].reason, "RefusedUnsafeSysctl");
}

#[test]
fn network_selection_parsing() {
    assert_eq!(
        parse_networks("a, ns/b@eth1").unwrap(),
        vec![
            json!({"name": "a"}),
            json!({"name": "b", "namespace": "ns", "interface": "eth1"})
        ]
    );
    assert_eq!(
        parse_networks(r#"[{"name":"x"}]"#).unwrap(),
        vec![json!({"name": "x"})]
    );
    assert!(parse_networks("  ").unwrap().is_empty());
    for bad in [
        "[{\"name\": ",
        "[1, 2]",
        "{\"name\": \"x\"}",
        "a b",
        "ns/",
        "UPPER",
        "x@",
        "[{\"nom\": \"x\"}]",
    ] {
        assert!(parse_networks(bad).is_err(), "{bad:?} must not parse");
    }
}

#[test]
fn tuning_network_entry_is_replaced_in_place_not_duplicated() {
    let p = pod(
        json!({"metadata": {"annotations": {MULTUS_NETWORKS_ANNOTATION:
        r#"[{"name":"kubetune-tuning","namespace":"shop","cni-args":{"sysctl":{"net.core.somaxconn":"128"}}},{"name":"macvlan"}]"#}}}),
    );
    let doc = apply_idempotent(
        &p,
        &[policy(
            "s",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
        )],
        &facts(true),
    );
    let nets: Value = serde_json::from_str(
        doc["metadata"]["annotations"][MULTUS_NETWORKS_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        nets,
        json!([
            {"name": "kubetune-tuning", "namespace": "shop", "cni-args": {"sysctl": {"net.core.somaxconn": "4096"}}},
            {"name": "macvlan"}
        ])
    );
}

#[test]
fn unreadable_network_annotation_is_left_alone() {
    let raw = "[{\"name\": ";
    let p = pod(json!({"metadata": {"annotations": {MULTUS_NETWORKS_ANNOTATION: raw}}}));
    let doc = apply_idempotent(
        &p,
        &[policy(
            "s",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
        )],
        &facts(true),
    );
    assert_eq!(
        doc["metadata"]["annotations"][MULTUS_NETWORKS_ANNOTATION],
        raw
    );
    let d = PodDecision::parse(
        doc["metadata"]["annotations"][DECISION_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(d.entries[0].reason, "TuningCNIUnavailable");
}

#[test]
fn annotation_keys_are_escaped_in_paths() {
    let p = pod(json!({"metadata": {"annotations": {"other": "x"}}}));
    let pl = plan(
        &p,
        &NamespaceFacts::default(),
        &[policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
        &facts(false),
    );
    let ops: Value = serde_json::from_str(&build_patch(&p, &pl).to_json()).unwrap();
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/securityContext",
            "/metadata/annotations/kubetune.dev~1decision",
            "/metadata/annotations/kubetune.dev~1summary"
        ]
    );
}

#[test]
fn patch_applies_with_sysctls_present_but_empty_or_null() {
    for sc in [
        json!({"sysctls": []}),
        json!({"sysctls": null}),
        json!({}),
        json!(null),
    ] {
        let doc = apply_idempotent(
            &pod(json!({"spec": {"securityContext": sc.clone()}})),
            &[policy("p", json!({"preset": "WideEphemeralPorts"}))],
            &facts(false),
        );
        assert_eq!(
            sysctls(&doc),
            [("net.ipv4.ip_local_port_range".into(), "1024 65535".into())],
            "securityContext {sc}"
        );
    }
}

#[test]
fn a_sysctl_injected_earlier_is_updated_in_place_and_never_removed() {
    // A pod that went through the webhook when the policy said 100 (e.g. re-invocation after
    // a policy update): kubetune's entry is updated in place, the pod's own entries stay.
    let old = plan(
        &pod(json!({})),
        &NamespaceFacts::default(),
        &[policy(
            "ka",
            json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "100"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        )],
        &facts(false),
    );
    let p = pod(json!({
        "metadata": {"annotations": {DECISION_ANNOTATION: old.decision.to_annotation()}},
        "spec": {"securityContext": {"sysctls": [
            {"name": "net.ipv4.tcp_keepalive_time", "value": "100"},
            {"name": "kernel.shm_rmid_forced", "value": "1"},
            {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}
    }));
    let doc = apply_idempotent(
        &p,
        &[policy(
            "ka",
            json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "700"}]}),
        )],
        &facts(false),
    );
    assert_eq!(
        sysctls(&doc),
        [
            ("net.ipv4.tcp_keepalive_time".into(), "700".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
            ("net.ipv4.tcp_syncookies".into(), "1".into()),
        ]
    );
}

#[test]
fn pod_without_spec_gets_one() {
    let mut p = pod(json!({}));
    p.spec = None;
    let (doc, n) = run(
        &p,
        &[policy("p", json!({"preset": "WideEphemeralPorts"}))],
        &facts(false),
    );
    assert!(n > 0);
    assert_eq!(
        sysctls(&doc),
        [("net.ipv4.ip_local_port_range".into(), "1024 65535".into())]
    );
}

/// Found by the `validate` fuzz target: a policy value the kernel reads as another spelling of
/// the same number (`059`, `+59`) or a port list with spaces is injected in canonical form; the
/// decision records that form too, so a re-invocation sees kubetune's own value, not the pod's.
#[test]
fn non_canonical_policy_values_are_injected_and_recorded_canonically() {
    for (name, written, canonical) in [
        ("net.ipv4.tcp_keepalive_time", "059", "59"),
        ("net.ipv4.tcp_keepalive_time", "+59", "59"),
        ("net.ipv4.ip_local_port_range", "01024  65535", "1024 65535"),
    ] {
        let doc = apply_idempotent(
            &pod(json!({})),
            &[policy(
                "p",
                json!({"sysctls": [{"name": name, "value": written}]}),
            )],
            &facts(false),
        );
        assert_eq!(sysctls(&doc), [(name.to_string(), canonical.to_string())]);
        let d = PodDecision::parse(
            doc["metadata"]["annotations"][DECISION_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(d.entries.len(), 1, "{d:?}");
        assert_eq!(d.entries[0].value, canonical, "{d:?}");
    }
}
