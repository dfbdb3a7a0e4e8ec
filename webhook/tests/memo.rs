//! The per-snapshot plan memos: a repeated pod object, or a pod whose plan input was planned
//! before, is answered from them, byte for byte as it would be planned afresh; anything that
//! could change the answer misses; they stay bounded.

mod common;

use common::*;
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use kubetune_webhook::memo::{MEMO_CAPACITY, MEMO_MAX_BYTES};
use kubetune_webhook::plan::NamespaceFacts;
use kubetune_webhook::review::Answer;
use proptest::prelude::*;
use serde_json::{json, Value};

fn snapshot(policies: Vec<kubetune_crds::TuningPolicy>) -> Snapshot {
    kubetune_test_support::webhook::snapshot(policies, facts(false))
}

fn policies() -> Vec<kubetune_crds::TuningPolicy> {
    vec![
        policy("keepalive", json!({"preset": "IpvsIdleKeepalive"})),
        policy(
            "backlog",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}], "priority": 5}),
        ),
    ]
}

/// A ReplicaSet's pod as the apiserver sends it to admission: generateName, no name.
fn replica(extra: Value) -> Value {
    let mut p =
        serde_json::to_value(pod(json!({"spec": {"nodeSelector": {"pool": "ingress"}}}))).unwrap();
    p["metadata"].as_object_mut().unwrap().remove("name");
    p["metadata"]["generateName"] = json!("web-5d8f9-");
    merge(&mut p, extra);
    p
}

fn send(snap: &Snapshot, cfg: &Config, object: &Value, uid: &str) -> Answer {
    let r = review_of("Pod", &object["metadata"]["namespace"], object, uid);
    mutate(r.to_string().as_bytes(), snap, cfg).unwrap()
}

/// The answer with its uid blanked, to compare answers to different requests.
fn without_uid(a: &Answer) -> Value {
    let mut v = a.json();
    v["response"]["uid"] = json!("");
    v
}

/// A replica's review as the apiserver writes it, with `uid` put in verbatim.
fn apiserver_review(object: &Value, uid: &str) -> String {
    let ns = object["metadata"]["namespace"].as_str().unwrap();
    kubetune_test_support::admission::apiserver_review(ns, object, uid)
}

#[test]
fn an_apiserver_review_of_a_replica_is_remembered_whole() {
    let snap = snapshot(policies());
    let cfg = Config::new("kubetune-system", &[]);
    let obj = replica(json!({}));
    let first = mutate(apiserver_review(&obj, "7c1e-01").as_bytes(), &snap, &cfg).unwrap();
    assert!(!first.memo_hit && first.patch().is_some());
    let next = apiserver_review(&obj, "7c1e-02");
    let (hit, uid) = snap
        .memo
        .get(next.as_bytes())
        .expect("the review memo answers the next replica");
    assert_eq!((uid, hit.namespace.as_str()), ("7c1e-02", "shop"));
    let second = mutate(next.as_bytes(), &snap, &cfg).unwrap();
    assert!(second.memo_hit);
    assert_eq!(second.json()["response"]["uid"], json!("7c1e-02"));
    assert_eq!(without_uid(&first), without_uid(&second));
}

#[test]
fn replicas_are_answered_from_the_memo_as_if_planned_afresh() {
    let snap = snapshot(policies());
    let cfg = Config::new("kubetune-system", &[]);
    let obj = replica(json!({}));
    let first = send(&snap, &cfg, &obj, "a");
    assert!(!first.memo_hit);
    assert!(first.patch().is_some(), "the replica is patched");
    assert_eq!(snap.memo.len(), 1);
    let second = send(&snap, &cfg, &obj, "b");
    assert!(second.memo_hit);
    assert_eq!(
        second.json()["response"]["uid"],
        json!("b"),
        "the hit carries its own uid"
    );
    assert_eq!(without_uid(&first), without_uid(&second));
    assert_eq!(second.outcome, first.outcome);
    assert_eq!(second.delivered, first.delivered);
    // The same answer as a fresh snapshot (a clone starts with an empty memo) computes.
    let fresh = snap.clone();
    assert!(fresh.memo.is_empty());
    let third = send(&fresh, &cfg, &obj, "c");
    assert!(!third.memo_hit);
    assert_eq!(without_uid(&third), without_uid(&second));
}

#[test]
fn any_change_kubetune_reads_misses_both_memos() {
    let snap = snapshot(policies());
    let cfg = Config::new("kubetune-system", &[]);
    let base = replica(json!({}));
    let a = send(&snap, &cfg, &base, "a");
    for change in [
        json!({"metadata": {"annotations": {"kubetune.dev/skip": "true"}}}),
        json!({"spec": {"hostNetwork": true}}),
        json!({"spec": {"nodeSelector": {"pool": "general"}}}),
        json!({"spec": {"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}}}),
        json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "not json ["}}}),
    ] {
        let obj = {
            let mut o = base.clone();
            merge(&mut o, change.clone());
            o
        };
        let r = send(&snap, &cfg, &obj, "x");
        assert!(!r.memo_hit, "{change}");
        assert_ne!(
            without_uid(&r),
            without_uid(&a),
            "{change} changes the answer"
        );
    }
    // The original is still remembered.
    assert!(send(&snap, &cfg, &base, "y").memo_hit);
}

/// The first pod of each rollout of one Deployment: a new `pod-template-hash`, generateName and
/// `restartedAt`, maybe a new image — nothing the planner reads. The first is planned, the others
/// are answered by their skeleton without being decoded, exactly as a fresh snapshot plans them;
/// when a selector reads `pod-template-hash`, its value stays in the skeleton, and the plan-input
/// memo answers.
#[test]
fn first_pods_of_rollouts_share_one_plan() {
    let cfg = Config::new("kubetune-system", &[]);
    let rollout = |i: usize| {
        replica(json!({"metadata": {
            "generateName": format!("web-{i:x}-"),
            "labels": {"app": "web", "pod-template-hash": format!("{i:x}")},
            "annotations": {"kubectl.kubernetes.io/restartedAt": format!("2026-12-0{}T10:00:00Z", i + 1)}},
            "spec": {"containers": [{"name": "nginx", "image": format!("nginx:1.2{i}")}]}}))
    };
    let snap = snapshot(policies());
    let first = send(&snap, &cfg, &rollout(0), "a");
    assert!(!first.memo_hit && first.patch().is_some());
    assert_eq!(snap.inputs.len(), 1);
    for i in 1..5 {
        let obj = rollout(i);
        let r = send(&snap, &cfg, &obj, "b");
        assert!(r.memo_hit, "rollout {i}");
        assert_eq!(without_uid(&r), without_uid(&first), "rollout {i}");
        let fresh = send(&snap.clone(), &cfg, &obj, "b");
        assert!(!fresh.memo_hit);
        assert_eq!(without_uid(&r), without_uid(&fresh), "rollout {i}");
    }
    assert_eq!(snap.inputs.len(), 1, "one plan input");
    // The first pod of the workload is decoded and its skeleton remembered; it answers the
    // others.
    assert_eq!(snap.skeletons.len(), 1, "one skeleton for rollouts 0 to 4");
    assert_eq!(snap.memo.len(), 1, "the decoded review, by its bytes");

    // Labels are read only to find the selecting policies: a label a selector reads that
    // selects alike (`pod-template-hash` Exists, which every rollout carries; its value is not
    // read) is answered from the memo, one that selects other policies is planned again.
    let mut tiered = policies();
    tiered[0].spec.pod_selector.match_expressions = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "pod-template-hash".into(),
            operator: "Exists".into(),
            values: None,
        },
    ]);
    let snap = snapshot(tiered);
    let a = send(&snap, &cfg, &rollout(0), "a");
    let b = send(&snap, &cfg, &rollout(1), "b");
    assert!(a.patch().is_some() && !a.memo_hit && b.memo_hit);
    assert_eq!(without_uid(&a), without_uid(&b));
    let b2 = send(&snap, &cfg, &rollout(3), "b2");
    assert!(b2.memo_hit);
    assert_eq!(
        snap.skeletons.len(),
        1,
        "whether the hash exists is all that is read"
    );
    assert_eq!(snap.inputs.len(), 1);
    let mut unhashed = rollout(2);
    unhashed["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    let c = send(&snap, &cfg, &unhashed, "c");
    let fresh = send(&snap.clone(), &cfg, &unhashed, "c");
    assert!(!c.memo_hit, "selected by other policies");
    assert_ne!(without_uid(&c), without_uid(&a));
    assert_eq!(without_uid(&c), without_uid(&fresh));
}

/// The pods of different Deployments that the same policies select (another `app` label, which
/// no selector names, or one a selector names without selecting them) share one plan.
#[test]
fn deployments_selected_by_the_same_policies_share_one_plan() {
    let cfg = Config::new("kubetune-system", &[]);
    let tier = |mut p: kubetune_crds::TuningPolicy, key: &str, value: &str| {
        p.spec.pod_selector.match_labels = Some([(key.to_string(), value.to_string())].into());
        p
    };
    let mut all: Vec<_> = policies()
        .into_iter()
        .map(|p| tier(p, "tier", "frontend"))
        .collect();
    all.push(tier(
        policy(
            "batch",
            json!({"sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "15"}]}),
        ),
        "app",
        "batch",
    ));
    let snap = snapshot(all);
    let deployment = |app: &str| {
        replica(json!({"metadata": {"generateName": format!("{app}-5d8f9-"),
            "labels": {"app": app, "tier": "frontend"}}}))
    };
    let first = send(&snap, &cfg, &deployment("web"), "a");
    assert!(!first.memo_hit && first.patch().is_some());
    for app in ["api", "shop", "cart"] {
        let r = send(&snap, &cfg, &deployment(app), app);
        let fresh = send(&snap.clone(), &cfg, &deployment(app), app);
        assert!(r.memo_hit && !fresh.memo_hit, "{app}");
        assert_eq!(without_uid(&r), without_uid(&fresh), "{app}");
    }
    // Their `app` values are no value a selector names: one skeleton answers them all, also
    // when their templates differ in what the pod's decode skips (containers, spec fields and
    // labels kubetune does not read, there or not).
    assert_eq!((snap.skeletons.len(), snap.memo.len()), (1, 1));
    let mut other = deployment("cart");
    other["spec"]["containers"] = json!([{"name": "cart", "image": "cart:2", "ports": [{"containerPort": 9090}]},
        {"name": "sidecar", "image": "envoy:1", "args": ["-c", "/etc/envoy.yaml"]}]);
    other["spec"]["terminationGracePeriodSeconds"] = json!(5);
    other["spec"]["serviceAccountName"] = json!("cart");
    other["metadata"]["labels"]["version"] = json!("v2");
    let r = send(&snap, &cfg, &other, "other");
    let fresh = send(&snap.clone(), &cfg, &other, "other");
    assert!(r.memo_hit && !fresh.memo_hit);
    assert_eq!(without_uid(&r), without_uid(&fresh));
    assert_eq!((snap.skeletons.len(), snap.memo.len()), (1, 1));
    let batch = send(&snap, &cfg, &deployment("batch"), "b");
    assert!(!batch.memo_hit, "selected by one more policy");
    assert_ne!(without_uid(&batch), without_uid(&first));
    assert_eq!(snap.inputs.len(), 2, "two sets of selecting policies");
    assert_eq!(
        snap.skeletons.len(),
        2,
        "the value a selector names is kept"
    );
}

/// A new snapshot in which only namespaces changed (one created, another relabelled) takes over
/// the answers for pods of the unchanged namespaces, and nothing when policies or facts changed.
#[test]
fn a_snapshot_that_changed_only_namespaces_keeps_what_still_holds() {
    let cfg = Config::new("kubetune-system", &[]);
    let mut all = policies();
    all.extend(policies().into_iter().map(|mut p| {
        p.metadata.namespace = Some("other".into());
        p
    }));
    let mut old = snapshot(all);
    let ns = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (
            name.to_string(),
            NamespaceFacts {
                name: name.into(),
                labels,
            },
        )
    };
    old.namespaces.extend([ns("other", &[])]);
    let shop = replica(json!({}));
    let mut other = shop.clone();
    other["metadata"]["namespace"] = json!("other");
    for obj in [&shop, &other] {
        assert!(!send(&old, &cfg, obj, "a").memo_hit);
        assert!(send(&old, &cfg, obj, "b").memo_hit);
    }
    let mut new = old.clone();
    new.namespaces.extend([
        ns("created", &[]),
        ns(
            "other",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        ),
    ]);
    assert!(!new.same_inputs(&old));
    assert_eq!(old.namespace_policies.len(), 2, "shop and other indexed");
    new.carry_over(&old);
    assert_eq!(new.namespace_policies.len(), 2, "both still exist");
    let mut without_other = new.clone();
    without_other.namespaces.remove("other");
    without_other.carry_over(&new);
    assert_eq!(
        without_other.namespace_policies.len(),
        1,
        "a deleted namespace is dropped"
    );
    let fresh = new.clone();
    let (s, o) = (send(&new, &cfg, &shop, "c"), send(&new, &cfg, &other, "c"));
    assert!(s.memo_hit, "shop did not change");
    assert!(!o.memo_hit, "other was relabelled");
    assert_eq!(
        without_uid(&s),
        without_uid(&send(&fresh, &cfg, &shop, "c"))
    );
    assert_eq!(
        without_uid(&o),
        without_uid(&send(&fresh.clone(), &cfg, &other, "c"))
    );
    assert_ne!(without_uid(&o), without_uid(&send(&old, &cfg, &other, "c")));

    // Policies or facts changed: nothing is taken over.
    let mut changed_policy = old.clone();
    changed_policy.policies[0].metadata.resource_version = Some("2".into());
    let mut changed_facts = old.clone();
    changed_facts.facts = facts(true);
    for mut snap in [changed_policy, changed_facts] {
        snap.carry_over(&old);
        assert!(snap.memo.is_empty() && snap.inputs.is_empty());
        assert!(!send(&snap, &cfg, &shop, "d").memo_hit);
    }
}

#[test]
fn another_snapshot_does_not_see_old_answers() {
    // The policies changed: the cache builds a new snapshot, which plans again.
    let cfg = Config::new("kubetune-system", &[]);
    let obj = replica(json!({}));
    let old = snapshot(policies());
    let before = send(&old, &cfg, &obj, "a");
    let mut changed = policies();
    changed[1] = policy(
        "backlog",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "8192"}], "priority": 5}),
    );
    let new = snapshot(changed);
    let after = send(&new, &cfg, &obj, "b");
    assert!(!after.memo_hit);
    let sysctls = |a: &Answer| {
        let mut doc = obj.clone();
        json_patch::patch(&mut doc, &a.patch().unwrap()).unwrap();
        doc["spec"]["securityContext"]["sysctls"].clone()
    };
    assert!(sysctls(&before)
        .as_array()
        .unwrap()
        .contains(&json!({"name": "net.core.somaxconn", "value": "4096"})));
    assert!(sysctls(&after)
        .as_array()
        .unwrap()
        .contains(&json!({"name": "net.core.somaxconn", "value": "8192"})));
}

#[test]
fn uncached_namespaces_excluded_namespaces_and_skipped_pods_are_not_memoised() {
    let snap = snapshot(policies());
    // A namespace the cache has not seen: the answer carries a warning every time.
    let mut unknown = replica(json!({}));
    unknown["metadata"]["namespace"] = json!("new-ns");
    let mut p = policies();
    for x in &mut p {
        x.metadata.namespace = Some("new-ns".into());
    }
    let snap2 = snapshot(p);
    let cfg = Config::new("kubetune-system", &[]);
    for uid in ["a", "b"] {
        let r = send(&snap2, &cfg, &unknown, uid);
        assert!(!r.memo_hit);
        assert!(r.json()["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not in kubetune's cache"));
    }
    assert!(snap2.memo.is_empty());
    // Excluded by one configuration, planned by another, with the same snapshot.
    let obj = replica(json!({}));
    let excluding = Config::new("kubetune-system", &["shop".to_string()]);
    for _ in 0..2 {
        let r = send(&snap, &excluding, &obj, "e");
        assert!(r.patch().is_none() && !r.memo_hit);
    }
    assert!(snap.memo.is_empty());
    assert!(send(&snap, &cfg, &obj, "f").patch().is_some());
    assert!(
        send(&snap, &excluding, &obj, "g").patch().is_none(),
        "the exclusion is checked before the memo"
    );
    // Opted-out pods are skipped before planning and never remembered.
    let opted = replica(json!({"metadata": {"labels": {"kubetune.dev/skip": "true"}}}));
    for _ in 0..2 {
        assert!(send(&snap, &cfg, &opted, "s").patch().is_none());
    }
    assert_eq!(snap.memo.len(), 1, "only the planned replica is remembered");
}

#[test]
fn the_memo_is_bounded() {
    let snap = snapshot(policies());
    let cfg = Config::new("kubetune-system", &[]);
    for i in 0..(MEMO_CAPACITY + 10) {
        let obj = replica(json!({"metadata": {"labels": {"pod-template-hash": format!("h{i}")}}}));
        send(&snap, &cfg, &obj, "x");
        assert!(snap.memo.len() <= MEMO_CAPACITY);
        assert!(snap.memo.bytes() <= MEMO_MAX_BYTES);
        // Each differs in a label a selector could read only if one named it: one plan input.
        assert_eq!(snap.inputs.len(), 1);
    }
    // Byte budget: objects near the per-object limit fill it before the count does.
    let snap = snapshot(policies());
    for i in 0..400 {
        let obj = replica(
            json!({"metadata": {"annotations": {"pad": format!("{i}{}", "x".repeat(15_000))}}}),
        );
        send(&snap, &cfg, &obj, "x");
        assert!(
            snap.memo.bytes() <= MEMO_MAX_BYTES,
            "{} bytes",
            snap.memo.bytes()
        );
    }
    assert!(snap.memo.len() < 400);
    assert!(!snap.memo.is_empty());
    assert!(!snap.memo.is_empty());
    // Huge objects are planned but not remembered.
    let big = replica(json!({"metadata": {"annotations": {"big": "x".repeat(20_000)}}}));
    let before = snap.memo.len();
    assert!(send(&snap, &cfg, &big, "b").patch().is_some());
    assert_eq!(snap.memo.len(), before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// For arbitrary pods: the second answer (from the memo) equals the first and equals what a
    /// fresh snapshot computes.
    #[test]
    fn memo_answers_equal_fresh_answers(
        labels in prop::sample::subsequence(vec![("app", "web"), ("app", "api"), ("tier", "fe"), ("kubetune.dev/skip", "true")], 0..3),
        host_network in any::<bool>(),
        pool in prop::sample::select(vec!["ingress", "general", ""]),
        own in prop::option::of(prop::sample::select(vec!["128", "4096", "8192"])),
        decided in any::<bool>(),
        unread in 0u32..1000,
    ) {
        let snap = snapshot(policies());
        let cfg = Config::new("kubetune-system", &[]);
        let mut obj = replica(json!({}));
        obj["metadata"]["labels"] = Value::Object(labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect());
        obj["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": "0"});
        obj["spec"]["hostNetwork"] = json!(host_network);
        if !pool.is_empty() {
            obj["spec"]["nodeSelector"] = json!({"pool": pool});
        }
        if let Some(v) = own {
            obj["spec"]["securityContext"] = json!({"sysctls": [{"name": "net.core.somaxconn", "value": v}]});
        }
        if decided {
            // A pod the webhook already patched (re-invocation).
            let first = send(&snap.clone(), &cfg, &obj, "pre");
            if let Some(p) = first.patch() {
                json_patch::patch(&mut obj, &p).unwrap();
            }
        }
        let a = send(&snap, &cfg, &obj, "a");
        let b = send(&snap, &cfg, &obj, "b");
        let c = send(&snap.clone(), &cfg, &obj, "c");
        prop_assert!(!a.memo_hit && !c.memo_hit);
        prop_assert_eq!(without_uid(&a), without_uid(&b));
        prop_assert_eq!(without_uid(&a), without_uid(&c));
        prop_assert_eq!(a.outcome, b.outcome);
        // Another rollout of the same template (fields the planner does not read): answered
        // from the plan-input memo when `a` was planned, and as a fresh snapshot answers it.
        let mut next = obj.clone();
        next["metadata"]["generateName"] = json!(format!("web-{unread:x}-"));
        next["metadata"]["labels"]["pod-template-hash"] = json!(format!("{unread:x}"));
        next["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = json!(unread.to_string());
        let d = send(&snap, &cfg, &next, "d");
        let e = send(&snap.clone(), &cfg, &next, "e");
        let opted_out = labels.iter().any(|(k, _)| *k == "kubetune.dev/skip");
        prop_assert_eq!(d.memo_hit, !opted_out);
        prop_assert_eq!(without_uid(&d), without_uid(&e));
    }

    /// A review that differs from a remembered one in its uid (any string, put in verbatim) and
    /// maybe in one more byte anywhere gets exactly the answer a fresh snapshot gives it —
    /// whether the review memo answers it or not.
    #[test]
    fn the_review_memo_answers_exactly(
        uid in prop_oneof![prop::sample::select(vec!["9a-02", "", "x\\\"y", "a\\u0062", "\u{1}", "é", "\"", "a\",\"b", "a\\"]).prop_map(str::to_string), ".{0,12}"],
        flip in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let snap = snapshot(policies());
        let cfg = Config::new("kubetune-system", &[]);
        let obj = replica(json!({}));
        mutate(apiserver_review(&obj, "9a-01").as_bytes(), &snap, &cfg).unwrap();
        prop_assert_eq!(snap.memo.len(), 1);
        let mut body = apiserver_review(&obj, &uid).into_bytes();
        if let Some((at, byte)) = flip {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let memoised = mutate(&body, &snap, &cfg).map(|a| a.body);
        let fresh = mutate(&body, &snap.clone(), &cfg).map(|a| a.body);
        match (memoised, fresh) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "memoised {a:?} vs fresh {b:?}"),
        }
    }
}

/// The byte ranges of the contents of every string literal in `json` (valid JSON).
fn string_contents(json: &[u8]) -> Vec<std::ops::Range<usize>> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i < json.len() {
        if json[i] == b'"' {
            let start = i + 1;
            i = start;
            while json[i] != b'"' {
                i += if json[i] == b'\\' { 2 } else { 1 };
            }
            out.push(start..i);
        }
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A review that differs from a remembered one in any one string literal (keys and values,
    /// read or not, with anything put in verbatim: escapes, quotes, control bytes, other values
    /// the policies select on) and its uid gets exactly the answer a fresh snapshot gives it —
    /// whether the skeleton memo answers it or not.
    #[test]
    fn the_skeleton_memo_answers_exactly(
        at in any::<prop::sample::Index>(),
        with in prop_oneof![
            prop::sample::select(vec!["", "x", "web", "api", "fe", "be", "true", "ingress", "general", "4096", "é", "\\\"", "a\\u0062", "\u{1}", "\t", "\"", "{", "a\",\"b", "kubetune.dev/skip", "tier"]).prop_map(str::to_string),
            ".{0,8}",
        ],
    ) {
        let mut all = policies();
        all.push(policy(
            "tiered",
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]},
                   "sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "20"}]}),
        ));
        let snap = snapshot(all);
        let cfg = Config::new("kubetune-system", &[]);
        let obj = replica(json!({
            "metadata": {
                "labels": {"app": "web", "tier": "fe", "pod-template-hash": "5d8f9"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "t0", "note": "n"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9", "uid": "rs-1", "controller": true}]},
            "spec": {
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
                "securityContext": {"runAsUser": 1000, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
                "containers": [{"name": "nginx", "image": "nginx:1.27", "env": [{"name": "MODE", "value": "prod"}]}]}}));
        // A review of the same workload first, so that the next one's skeleton is remembered.
        let mut earlier = obj.clone();
        earlier["metadata"]["annotations"]["note"] = json!("earlier");
        mutate(apiserver_review(&earlier, "9a-00").as_bytes(), &snap, &cfg).unwrap();
        let first = apiserver_review(&obj, "9a-01");
        mutate(first.as_bytes(), &snap, &cfg).unwrap();
        prop_assert_eq!(snap.skeletons.len(), 1);
        let strings = string_contents(first.as_bytes());
        let r = strings[at.index(strings.len())].clone();
        let body = format!("{}{with}{}", &first[..r.start], &first[r.end..]).replace("9a-01", "9a-02");
        let memoised = mutate(body.as_bytes(), &snap, &cfg).map(|a| a.body);
        let fresh = mutate(body.as_bytes(), &snap.clone(), &cfg).map(|a| a.body);
        match (memoised, fresh) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", body),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "memoised {a:?} vs fresh {b:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// A review that differs from a remembered one anywhere — up to 3 bytes replaced by JSON's
    /// tokens, broken or not (numbers, literals, brackets, escapes), in fields the decode skips
    /// and everywhere else — gets exactly the answer a fresh snapshot gives it.
    #[test]
    fn the_skeleton_memo_answers_exactly_whatever_changed(
        at in any::<prop::sample::Index>(),
        cut in 0usize..4,
        with in prop_oneof![
            prop::sample::select(vec!["", "0", "01", "-", "-1.5e+3", "1.", "1e", ".5", "true", "tru", "null", "nul", "false", ",", ":", "{", "}", "[", "]", "[]", "{}", "\"", "\"\"", "\\", "\\u00e9", "\\u00g0", "\\q", " ", "\t", "\n", "\u{1}", "\u{2}", "é", "x", "\"a\":1,"]).prop_map(|t| t.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 1..3),
        ],
    ) {
        let snap = snapshot(policies());
        let cfg = Config::new("kubetune-system", &[]);
        let obj = replica(json!({
            "metadata": {
                "labels": {"app": "web", "pod-template-hash": "5d8f9"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9", "uid": "rs-1", "controller": true}]},
            "spec": {
                "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
                "containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "MODE", "value": "prod"}], "resources": {"limits": {"cpu": "500m"}}, "stdin": false}],
                "terminationGracePeriodSeconds": 30, "dnsConfig": null},
            "status": {"phase": "Pending", "conditions": []}}));
        let mut earlier = obj.clone();
        earlier["metadata"]["labels"]["pod-template-hash"] = json!("0a1b2");
        mutate(apiserver_review(&earlier, "9a-00").as_bytes(), &snap, &cfg).unwrap();
        let first = apiserver_review(&obj, "9a-01");
        mutate(first.as_bytes(), &snap, &cfg).unwrap();
        let first = first.replace("9a-01", "9a-02").into_bytes();
        let i = at.index(first.len());
        let end = (i + cut).min(first.len());
        let body = [&first[..i], &with, &first[end..]].concat();
        let memoised = mutate(&body, &snap, &cfg).map(|a| a.body);
        let fresh = mutate(&body, &snap.clone(), &cfg).map(|a| a.body);
        match (memoised, fresh) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", String::from_utf8_lossy(&body)),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "memoised {a:?} vs fresh {b:?}"),
        }
    }
}
