//! The spec proves "applied", and the SysctlForbidden guard: pure tables for the verdicts and the
//! guard's stages, and the exact requests of a reconcile that meets a rejected pod (tower-test).

mod fixtures;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use fixtures::*;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::client::Body;
use kube::Client;
use kubetune_crds::decision::{PodDecision, DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION};
use kubetune_crds::node::{NodeTuningStatus, RefusedSysctl};
use kubetune_crds::policy::{condition, DeliveryDecision, TuningPolicy};
use kubetune_operator::controller::{reconcile, Context, Stores};
use kubetune_operator::guard::{forbidden_condition, forbidden_pods, refused_status, Forbidden};
use kubetune_operator::metrics::Metrics;
use kubetune_operator::status::{evaluate, find_condition, reason, Environment, PodState};
use serde_json::{json, Value};
use tower_test::mock;

const SOMAXCONN: &str = "net.core.somaxconn";

fn web() -> TuningPolicy {
    policy("web", 1, "web", &[(SOMAXCONN, "8192")])
}

/// `pod` whose record says the sysctl went by tuning CNI, with `networks` as its Multus
/// selection (or none).
fn cni_pod(name: &str, networks: Option<&str>) -> Pod {
    let rec = [injected("web", 1, SOMAXCONN, "8192")];
    let mut p = pod_with_copied_record(name, "web", 100, &rec);
    let ann = p.metadata.annotations.as_mut().unwrap();
    let mut d = PodDecision::parse(&ann[DECISION_ANNOTATION]).unwrap();
    d.entries[0].delivery = Some(DeliveryDecision::TuningCni);
    ann.insert(DECISION_ANNOTATION.into(), d.to_annotation());
    if let Some(n) = networks {
        ann.insert(MULTUS_NETWORKS_ANNOTATION.into(), n.into());
    }
    p
}

#[test]
fn the_spec_proves_applied_the_annotation_only_explains() {
    let rec = [injected("web", 1, SOMAXCONN, "8192")];
    let wrong_value = {
        let mut p = pod("wrong", "web", 100, Some(&rec));
        let sc = p.spec.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.sysctls.as_mut().unwrap()[0].value = "4096".into();
        p
    };
    let slashed = {
        let mut p = pod("slashed", "web", 100, Some(&rec));
        let sc = p.spec.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.sysctls.as_mut().unwrap()[0].name = "net/core/somaxconn".into();
        p
    };
    let ours = r#"[{"name":"kubetune-tuning","namespace":"shop","cni-args":{"sysctl":{"net.core.somaxconn":"8192"}}}]"#;
    let copied = PodState::DecisionWithoutSysctls {
        sysctl: SOMAXCONN.into(),
    };
    // (pod, state is Applied, expected non-applied state)
    let cases: Vec<(Pod, Option<PodState>)> = vec![
        (pod("in-spec", "web", 100, Some(&rec)), None),
        (slashed, None),
        (
            pod_with_copied_record("copied", "web", 100, &rec),
            Some(copied.clone()),
        ),
        (wrong_value, Some(copied.clone())),
        (cni_pod("cni-ok", Some(ours)), None),
        (cni_pod("cni-none", None), Some(copied.clone())),
        (
            cni_pod("cni-short-form", Some("kubetune-tuning")),
            Some(copied.clone()),
        ),
        (
            cni_pod("cni-other", Some(r#"[{"name":"macvlan"}]"#)),
            Some(copied),
        ),
    ];
    for (p, want) in cases {
        let name = p.metadata.name.clone().unwrap();
        let e = evaluate(
            &web(),
            [&p],
            [],
            &facts_allowing_somaxconn(),
            &Environment::default(),
            t(500),
        );
        let got = &e.pods[0].state;
        match &want {
            None => assert!(matches!(got, PodState::Applied(_)), "{name}: {got:?}"),
            Some(w) => {
                assert_eq!(got, w, "{name}");
                assert!(got.needs_restart());
                assert_eq!(e.status.needs_restart_pods, 1, "{name}");
                assert_eq!(e.status.applied_pods, 0, "{name}");
                let applied = find_condition(&e.status, condition::APPLIED).unwrap();
                assert_eq!(applied.status, "False", "{name}");
                assert_eq!(applied.reason, reason::PODS_NEED_RESTART, "{name}");
                assert!(
                    applied.message.contains(reason::DECISION_WITHOUT_SYSCTLS),
                    "{}",
                    applied.message
                );
            }
        }
    }
}

fn rejected(name: &str, node: &str) -> Pod {
    forbidden_pod(
        name,
        "web",
        node,
        SOMAXCONN,
        &[injected("web", 1, SOMAXCONN, "8192")],
    )
}

fn f(node: &str, pod: &str) -> Forbidden {
    Forbidden {
        node: node.into(),
        sysctl: SOMAXCONN.into(),
        namespace: NS.into(),
        pod: pod.into(),
    }
}

#[test]
fn forbidden_pods_are_the_policys_rejected_pods() {
    let other_policy = forbidden_pod(
        "x",
        "web",
        "node-b",
        SOMAXCONN,
        &[injected("api", 1, SOMAXCONN, "8192")],
    );
    let other_sysctl = forbidden_pod(
        "y",
        "web",
        "node-b",
        "net.ipv4.tcp_fin_timeout",
        &[injected("web", 1, SOMAXCONN, "8192")],
    );
    let other_ns = {
        let mut p = rejected("z", "node-b");
        p.metadata.namespace = Some("elsewhere".into());
        p
    };
    let no_record = {
        let mut p = rejected("n", "node-b");
        p.metadata.annotations = None;
        p
    };
    let running = pod(
        "web-ok",
        "web",
        100,
        Some(&[injected("web", 1, SOMAXCONN, "8192")]),
    );
    let old_generation = forbidden_pod(
        "g",
        "web",
        "node-c",
        SOMAXCONN,
        &[injected("web", 0, SOMAXCONN, "1024")],
    );
    let pods = [
        rejected("web-2", "node-b"),
        rejected("web-1", "node-b"),
        other_policy,
        other_sysctl,
        other_ns,
        no_record,
        running,
        old_generation,
    ];
    assert_eq!(
        forbidden_pods(&web(), &pods),
        vec![f("node-b", "web-1"), f("node-b", "web-2"), f("node-c", "g")]
    );
}

#[test]
fn forbidden_condition_names_nodes_sysctls_and_pods() {
    assert_eq!(forbidden_condition(true, &[]), None);
    assert_eq!(forbidden_condition(false, &[f("node-b", "web-1")]), None);
    let (ok, r, m) = forbidden_condition(
        true,
        &[f("node-b", "web-1"), f("node-b", "web-2"), f("node-c", "g")],
    )
    .unwrap();
    assert!(!ok);
    assert_eq!(r, reason::SYSCTL_FORBIDDEN);
    assert!(m.starts_with("3 pods of this policy were rejected by the kubelet with SysctlForbidden: node node-b refuses net.core.somaxconn (pods web-1, web-2); node node-c refuses net.core.somaxconn (pods g)."), "{m}");
}

#[test]
fn refusals_merge_into_the_node_status_once() {
    let now = t(500);
    let first = refused_status(None, &[&f("node-b", "web-1"), &f("node-b", "web-2")], now).unwrap();
    let entry = RefusedSysctl {
        name: SOMAXCONN.into(),
        pod: "shop/web-1".into(),
        observed_at: "2025-01-01T00:08:20Z".into(),
    };
    assert_eq!(
        first,
        NodeTuningStatus {
            refused_sysctls: vec![entry.clone()]
        }
    );
    assert_eq!(
        refused_status(Some(&first), &[&f("node-b", "web-3")], now),
        None
    );
    let mut other = f("node-b", "web-4");
    other.sysctl = "kernel.msgmax".into();
    let both = refused_status(Some(&first), &[&other], now).unwrap();
    let names: Vec<&str> = both
        .refused_sysctls
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, vec!["kernel.msgmax", SOMAXCONN]);
    let mut unnamed = f("node-b", "web-5");
    unnamed.sysctl.clear();
    assert_eq!(refused_status(None, &[&unnamed], now), None);
}

#[test]
fn no_all_pods_applied_while_pods_fail_to_start() {
    // The ReplicaSet's new pod is admitted with the sysctl (Pending); its predecessors failed.
    let pending = pod(
        "web-3",
        "web",
        100,
        Some(&[injected("web", 1, SOMAXCONN, "8192")]),
    );
    let pods = [
        rejected("web-1", "node-b"),
        rejected("web-2", "node-b"),
        pending,
    ];
    let e = evaluate(
        &web(),
        &pods,
        [],
        &facts_allowing_somaxconn(),
        &Environment::default(),
        t(500),
    );
    assert_eq!(e.status.forbidden_pods, 2);
    assert_eq!(e.status.matched_pods, 1);
    assert_eq!(e.status.phase.as_deref(), Some("SysctlForbidden"));
    let applied = find_condition(&e.status, condition::APPLIED).unwrap();
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", "SysctlForbidden")
    );
    assert!(
        applied
            .message
            .contains("node node-b refuses net.core.somaxconn (pods web-1, web-2)"),
        "{}",
        applied.message
    );
    // Without them: the usual verdict, and forbiddenPods omitted.
    let e = evaluate(
        &web(),
        &pods[2..],
        [],
        &facts_allowing_somaxconn(),
        &Environment::default(),
        t(500),
    );
    assert_eq!(e.status.forbidden_pods, 0);
    assert!(serde_json::to_value(&e.status)
        .unwrap()
        .get("forbiddenPods")
        .is_none());
    assert_eq!(
        find_condition(&e.status, condition::APPLIED)
            .unwrap()
            .reason,
        "AllPodsApplied"
    );
}

fn node_tuning(node: &str) -> Value {
    json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "NodeTuning",
           "metadata": {"name": node, "resourceVersion": "7"},
           "spec": {"nodeName": node, "kernelVersion": "6.8.0", "kubelet": {"allowedUnsafeSysctls": [SOMAXCONN]},
                    "acceptedUnsafeSysctls": [SOMAXCONN], "acceptedSummary": SOMAXCONN,
                    "tuningCni": {"state": "NotInstalled"}, "observedAt": "2025-01-01T00:00:00Z"}})
}

/// Run `reconcile` of `p` over `pods`, answering every request (GET NodeTuning: `node_tuning`,
/// others: the body back) until none comes for 300 ms.
async fn reconcile_seeing(p: TuningPolicy, pods: Vec<Pod>) -> Vec<Seen> {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(svc, "default"),
        Stores {
            policies: store(vec![p.clone()]),
            pods: store(pods),
            reports: store(vec![]),
            namespaces: store(Vec::<Namespace>::new()),
            leases: store(vec![agent_lease(NODE, 100_000, -100_000)]),
        },
        Arc::new(RwLock::new(facts_allowing_somaxconn())),
        Arc::new(Metrics::default()),
        Arc::new(|| t(500)),
    ));
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some((req, send))) =
            tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
        {
            let seen_now = Seen::of(req).await;
            let (path, body) = (&seen_now.path, &seen_now.body);
            let reply = if path.contains("/nodetunings/") {
                let mut nt = node_tuning(path.split('/').nth(5).unwrap());
                nt["status"] = body["status"].clone();
                nt
            } else if path.ends_with("/tuningpolicies/web/status") {
                let mut o = serde_json::to_value(web()).unwrap();
                o["status"] = body["status"].clone();
                o
            } else {
                body.clone()
            };
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
            seen.push(seen_now);
        }
        seen
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    server.await.unwrap()
}

#[tokio::test]
async fn guard_records_the_refusal_on_the_node_and_says_so_on_policy_and_pods() {
    let pending = pod(
        "web-3",
        "web",
        100,
        Some(&[injected("web", 1, SOMAXCONN, "8192")]),
    );
    let pods = vec![
        rejected("web-1", "node-b"),
        rejected("web-2", "node-b"),
        pending,
    ];
    let seen = reconcile_seeing(web(), pods).await;
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("GET", "/apis/kubetune.dev/v1alpha1/nodetunings/node-b"),
            (
                "PATCH",
                "/apis/kubetune.dev/v1alpha1/nodetunings/node-b/status"
            ),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            (
                "PATCH",
                "/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web/status"
            ),
        ]
    );
    // The exact server-side apply of the node's status, with the guard's own field manager.
    let mut q: Vec<&str> = seen[1].query.split('&').filter(|s| !s.is_empty()).collect();
    q.sort();
    assert_eq!(
        q,
        vec!["fieldManager=kubetune-operator-guard", "force=true"]
    );
    assert_eq!(
        seen[1].body,
        json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "NodeTuning",
               "status": {"refusedSysctls": [{"name": SOMAXCONN, "pod": "shop/web-1",
                                              "observedAt": "2025-01-01T00:08:20Z"}]}})
    );
    // Events: on each rejected pod and on the policy, Warning SysctlForbidden.
    let regarding: Vec<(String, String)> = seen[2..6]
        .iter()
        .map(|s| {
            assert_eq!(s.body["reason"], "SysctlForbidden");
            assert_eq!(s.body["type"], "Warning");
            assert!(
                s.body["note"].as_str().unwrap().contains("node-b"),
                "{}",
                s.body
            );
            (
                s.body["regarding"]["kind"].as_str().unwrap().into(),
                s.body["regarding"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    let r = |k: &str, n: &str| (k.to_string(), n.to_string());
    assert_eq!(
        regarding,
        vec![
            r("Pod", "web-1"),
            r("TuningPolicy", "web"),
            r("Pod", "web-2"),
            r("TuningPolicy", "web")
        ]
    );
    // The policy's status.
    let s = &seen[6].body["status"];
    assert_eq!(s["forbiddenPods"], 2);
    assert_eq!(s["phase"], "SysctlForbidden");
    let applied = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Applied")
        .unwrap();
    assert_eq!(
        (&applied["status"], &applied["reason"]),
        (&json!("False"), &json!("SysctlForbidden"))
    );
    assert!(
        applied["message"].as_str().unwrap().contains("node node-b"),
        "{applied}"
    );
}
