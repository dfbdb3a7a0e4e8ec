//! Node truth through the planner and the patch: an unsafe sysctl with nodes that differ in what
//! they accept gets a required node affinity merged into every term of the pod's own, recorded
//! in the decision, idempotent on re-invocation; a pod pinned to refusing nodes is refused with
//! their names; a cluster whose nodes all accept gets no affinity.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{Outcome, PodDecision, DECISION_ANNOTATION};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::TuningPolicy;
use kubetune_webhook::patch::build_patch;
use kubetune_webhook::plan::{plan, NamespaceFacts, Plan};
use serde_json::{json, Value};

const LABEL: &str = "sysctl.kubetune.dev/net.core.somaxconn";

fn somaxconn() -> Vec<TuningPolicy> {
    vec![policy(
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "8192"}]}),
    )]
}

fn planned(p: &Pod, f: &ClusterFacts) -> Plan {
    let ns = NamespaceFacts {
        name: NS.into(),
        ..Default::default()
    };
    plan(p, &ns, &somaxconn(), f)
}

/// Plan, patch, apply; then again on the result, which must patch nothing.
fn admit(p: &Pod, f: &ClusterFacts) -> Value {
    let mut doc = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut doc, &build_patch(p, &planned(p, f)).to_json_patch())
        .expect("patch applies");
    let again: Pod = serde_json::from_value(doc.clone()).unwrap();
    let second = build_patch(&again, &planned(&again, f));
    assert!(
        second.0.is_empty(),
        "re-invocation patches again: {second:?}"
    );
    doc
}

fn decision(doc: &Value) -> PodDecision {
    PodDecision::parse(
        doc["metadata"]["annotations"][DECISION_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn terms(doc: &Value) -> &Value {
    &doc["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
}

fn ours() -> Value {
    json!({"key": LABEL, "operator": "In", "values": ["allowed"]})
}

fn with_affinity(terms: Value) -> Value {
    json!({"spec": {"affinity": {
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]},
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}})
}

#[test]
fn all_nodes_accept_no_affinity() {
    let f = node_truth(vec![node("a", "ingress", &["net.core.somaxconn"])]);
    let doc = admit(&pod(json!({})), &f);
    assert_eq!(
        doc["spec"]["securityContext"]["sysctls"][0]["value"],
        json!("8192")
    );
    assert!(doc["spec"].get("affinity").is_none(), "{doc}");
    assert!(decision(&doc).node_affinity.is_empty());
}

#[test]
fn some_nodes_accept_affinity_added_and_recorded() {
    let doc = admit(&pod(json!({})), &mixed_nodes());
    assert_eq!(*terms(&doc), json!([{"matchExpressions": [ours()]}]));
    let d = decision(&doc);
    assert_eq!(d.node_affinity.len(), 1);
    assert_eq!(d.node_affinity[0].label_key.as_deref(), Some(LABEL));
    let e = &d.entries[0];
    assert_eq!(
        (e.outcome, e.reason.as_str()),
        (Outcome::Injected, "AllowedUnsafeSysctl")
    );
    assert!(e.message.contains(LABEL), "{}", e.message);
}

#[test]
fn requirement_goes_into_every_existing_term_and_keeps_the_rest() {
    let terms_in = json!([
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ingress", "general"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["general-1"]}]},
        {}
    ]);
    let doc = admit(&pod(with_affinity(terms_in)), &mixed_nodes());
    assert_eq!(
        *terms(&doc),
        json!([
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ingress", "general"]}, ours()]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["general-1"]}],
             "matchExpressions": [ours()]},
            {}
        ]),
        "the empty term matches no node and stays empty"
    );
    assert!(
        doc["spec"]["affinity"]["podAntiAffinity"].is_object(),
        "other affinity kept"
    );
}

#[test]
fn affinity_without_node_affinity_or_required_gets_it_added() {
    let cases = [
        json!({"spec": {"affinity": {"podAffinity": {}}}}),
        json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}}),
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}}}),
    ];
    for c in cases {
        let doc = admit(&pod(c.clone()), &mixed_nodes());
        assert_eq!(*terms(&doc), json!([{"matchExpressions": [ours()]}]), "{c}");
    }
}

#[test]
fn a_refusing_node_still_labelled_is_excluded_by_name() {
    let mut f = mixed_nodes();
    let mut stale = node("ingress-2", "ingress", &["net.core.somaxconn"]);
    stale.refused = vec!["net.core.somaxconn".into()];
    f.nodes.push(stale);
    let doc = admit(&pod(json!({})), &f);
    assert_eq!(
        *terms(&doc),
        json!([{"matchExpressions": [ours()],
                "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["ingress-2"]}]}])
    );
    assert_eq!(
        decision(&doc).node_affinity[0].excluded_nodes,
        ["ingress-2"]
    );
}

#[test]
fn pods_pinned_to_refusing_nodes_are_refused_with_the_nodes_named() {
    let pinned = [
        json!({"spec": {"nodeName": "general-1"}}),
        json!({"spec": {"nodeSelector": {"pool": "general"}}}),
        // How the DaemonSet controller pins its pods.
        with_affinity(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["general-1"]}]}]),
        ),
    ];
    for spec in pinned {
        let doc = admit(&pod(spec.clone()), &mixed_nodes());
        let e = &decision(&doc).entries[0];
        assert_eq!(
            (e.outcome, e.reason.as_str()),
            (Outcome::Refused, "RefusedUnsafeSysctl"),
            "{spec}"
        );
        assert!(
            e.message
                .contains("general-1 (not in its kubelet's allowedUnsafeSysctls)"),
            "{}",
            e.message
        );
        assert!(
            doc["spec"]["securityContext"].get("sysctls").is_none(),
            "{doc}"
        );
        assert!(decision(&doc).node_affinity.is_empty());
    }
    // Pinned to the accepting node: injected, no affinity needed.
    let doc = admit(
        &pod(json!({"spec": {"nodeSelector": {"pool": "ingress"}}})),
        &mixed_nodes(),
    );
    assert_eq!(decision(&doc).entries[0].outcome, Outcome::Injected);
    assert!(doc["spec"].get("affinity").is_none());
}

#[test]
fn no_node_accepts_refused_and_dry_run_adds_no_affinity() {
    let none = node_truth(vec![node("general-1", "general", &[])]);
    let doc = admit(&pod(json!({})), &none);
    assert_eq!(decision(&doc).entries[0].outcome, Outcome::Refused);
    assert!(doc["spec"].get("affinity").is_none());
    let dry = vec![policy(
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "8192"}], "mode": "DryRun"}),
    )];
    let p = pod(json!({}));
    let ns = NamespaceFacts {
        name: NS.into(),
        ..Default::default()
    };
    let pl = plan(&p, &ns, &dry, &mixed_nodes());
    assert_eq!(pl.decision.entries[0].outcome, Outcome::WouldInject);
    assert!(pl.node_affinity.is_empty() && pl.decision.node_affinity.is_empty());
}

#[test]
fn re_invocation_after_another_webhook_changed_the_affinity_stays_idempotent() {
    // A later webhook adds a term of its own after kubetune's; kubetune's re-invocation adds its
    // requirement to that term and nothing else.
    let f = mixed_nodes();
    let mut doc = admit(&pod(json!({})), &f);
    doc["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array_mut()
        .unwrap()
        .push(json!({"matchExpressions": [{"key": "pool", "operator": "Exists"}]}));
    let p: Pod = serde_json::from_value(doc.clone()).unwrap();
    let again = admit(&p, &f);
    assert_eq!(
        terms(&again)[1],
        json!({"matchExpressions": [{"key": "pool", "operator": "Exists"}, ours()]})
    );
    assert_eq!(decision(&again), decision(&doc));
}

#[test]
fn override_groups_with_a_refusing_node_exclude_it_by_name_only() {
    let mut f = facts(false);
    let mut refused = node("ingress-2", "ingress", &[]);
    refused.refused = vec!["net.core.somaxconn".into()];
    f.nodes = vec![node("ingress-1", "ingress", &[]), refused];
    let doc = admit(
        &pod(json!({"spec": {"nodeSelector": {"pool": "ingress"}}})),
        &f,
    );
    assert_eq!(
        *terms(&doc),
        json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["ingress-2"]}]}])
    );
    assert_eq!(decision(&doc).entries[0].outcome, Outcome::Injected);
}

#[test]
fn taints_the_pod_does_not_tolerate_leave_their_nodes_out_through_the_whole_review() {
    // Only the tainted pool accepts somaxconn. Through /mutate (the review decoded as the
    // webhook decodes it, plan-input memo included): a pod that does not tolerate the taint
    // could never run there and is refused; the same pod tolerating it gets somaxconn with the
    // node affinity, never the other's memoised answer.
    use kubetune_webhook::admission::{mutate, Config};
    let mut dedicated = node("d", "ingress", &["net.core.somaxconn"]);
    dedicated.taints = vec![serde_json::from_value(
        json!({"key": "dedicated", "value": "ingress", "effect": "NoSchedule"}),
    )
    .unwrap()];
    let f = node_truth(vec![dedicated, node("g", "general", &[])]);
    let snap = kubetune_test_support::webhook::snapshot(somaxconn(), f);
    let cfg = Config::new("kubetune-system", &[]);
    let answer = |spec: Value, uid: &str| {
        let p = serde_json::to_value(pod(json!({ "spec": spec }))).unwrap();
        let r = review_of("Pod", &p["metadata"]["namespace"], &p, uid);
        let a = mutate(r.to_string().as_bytes(), &snap, &cfg).unwrap();
        let mut doc = p.clone();
        json_patch::patch(&mut doc, &a.patch().expect("a patch (the record at least)")).unwrap();
        doc
    };
    for round in 0..2 {
        let intolerant = answer(json!({}), &format!("u-{round}-a"));
        let d = decision(&intolerant);
        assert_eq!(d.entries[0].outcome, Outcome::Refused, "{d:?}");
        assert!(d.entries[0].message.contains("g ("), "{d:?}");
        assert!(
            intolerant["spec"]["securityContext"].is_null(),
            "{intolerant}"
        );
        let tolerating = answer(
            json!({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
            &format!("u-{round}-b"),
        );
        let d = decision(&tolerating);
        assert_eq!(d.entries[0].outcome, Outcome::Injected, "{d:?}");
        assert_eq!(
            tolerating["spec"]["securityContext"]["sysctls"][0]["name"],
            json!("net.core.somaxconn")
        );
        assert_eq!(terms(&tolerating)[0]["matchExpressions"][0], ours());
    }
}
