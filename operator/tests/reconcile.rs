//! Reconciler tests against a mocked Kubernetes API (tower-test): the exact requests the
//! reconcilers send.

mod fixtures;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use fixtures::*;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::Client;
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::{condition, TuningPolicy};
use kubetune_crds::report::{Diagnosis, ListenerReport};
use kubetune_operator::controller::{
    error_policy, reconcile, reconcile_report, Context, Error, Stores, RESYNC,
};
use kubetune_operator::metrics::Metrics;
use kubetune_operator::status::{evaluate, Environment};
use serde_json::{json, Value};
use tower_test::mock;

struct Setup {
    ctx: Arc<Context>,
    handle: ApiHandle,
}

fn setup(
    policies: Vec<TuningPolicy>,
    pods: Vec<Pod>,
    reports: Vec<ListenerReport>,
    facts: ClusterFacts,
    now: i64,
) -> Setup {
    let healthy = vec![agent_lease(NODE, 100_000, -100_000)];
    setup_with_leases(policies, pods, reports, facts, healthy, now)
}

fn setup_with_leases(
    policies: Vec<TuningPolicy>,
    pods: Vec<Pod>,
    reports: Vec<ListenerReport>,
    facts: ClusterFacts,
    leases: Vec<k8s_openapi::api::coordination::v1::Lease>,
    now: i64,
) -> Setup {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let ctx = Context::new(
        client,
        Stores {
            policies: store(policies),
            pods: store(pods),
            reports: store(reports),
            namespaces: store(Vec::<Namespace>::new()),
            leases: store(leases),
        },
        Arc::new(RwLock::new(facts)),
        Arc::new(Metrics::default()),
        Arc::new(move || t(now)),
    );
    Setup {
        ctx: Arc::new(ctx),
        handle,
    }
}

fn as_object(p: &TuningPolicy, status: &Value) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    v["status"] = status.clone();
    v
}

/// The status the reconciler computes at `now` (somaxconn allowed, the agent of the reports'
/// node watching, as the lease store of [`setup`] says).
fn status_at(
    p: &TuningPolicy,
    pods: &[Pod],
    reports: &[ListenerReport],
    now: i64,
) -> kubetune_crds::TuningPolicyStatus {
    let env = Environment {
        agents: agents_watching(),
        ..Environment::default()
    };
    evaluate(p, pods, reports, &facts_allowing_somaxconn(), &env, t(now)).status
}

fn verified_world() -> (TuningPolicy, Vec<Pod>, Vec<ListenerReport>) {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let pods = vec![pod("web-1", "web", 100, Some(&rec))];
    let reports = vec![report(
        "web-1",
        R {
            observed_at: 110,
            ..R::default()
        },
    )];
    (p, pods, reports)
}

#[tokio::test]
async fn status_is_server_side_applied_to_the_status_subresource_and_events_follow() {
    let (p, pods, reports) = verified_world();
    let Setup { ctx, mut handle } = setup(
        vec![p.clone()],
        pods.clone(),
        reports.clone(),
        facts_allowing_somaxconn(),
        500,
    );
    let expected_status = status_at(&p, &pods, &reports, 500);
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let patch = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        let ev1 = answer(&mut handle, |b| b.clone()).await;
        let ev2 = answer(&mut handle, |b| b.clone()).await;
        (patch, ev1, ev2)
    });
    let action = reconcile(Arc::new(p.clone()), ctx.clone()).await.unwrap();
    let (patch, ev1, ev2) = server.await.unwrap();

    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.path,
        "/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web/status"
    );
    let mut q: Vec<&str> = patch.query.split('&').filter(|s| !s.is_empty()).collect();
    q.sort();
    assert_eq!(q, vec!["fieldManager=kubetune-operator", "force=true"]);
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        patch.body,
        json!({
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TuningPolicy",
            "status": serde_json::to_value(&expected_status).unwrap(),
        })
    );
    // The literal values a user sees in `kubectl get tuningpolicies`.
    let s = &patch.body["status"];
    assert_eq!(s["phase"], "Verified");
    assert_eq!(s["summary"], "net.core.somaxconn=8192");
    assert_eq!(
        (
            &s["matchedPods"],
            &s["appliedPods"],
            &s["verifiedPods"],
            &s["overflowingPods"],
            &s["needsRestartPods"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(0), &json!(0))
    );
    assert_eq!(s["observedGeneration"], 1);
    let conds = s["conditions"].as_array().unwrap();
    let types: Vec<&str> = conds.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        vec![condition::ACCEPTED, condition::APPLIED, condition::VERIFIED]
    );
    for c in conds {
        assert_eq!(c["status"], "True");
        assert_eq!(c["observedGeneration"], 1);
        assert_eq!(c["lastTransitionTime"], "2025-01-01T00:08:20Z");
    }
    assert_eq!(s["sysctls"][0]["delivery"], "PodSecurityContext");
    assert_eq!(s["sysctls"][0]["reason"], "AllowedUnsafeSysctl");

    for (ev, reason) in [(&ev1, "Applied"), (&ev2, "Verified")] {
        assert_eq!(ev.method, "POST");
        assert_eq!(ev.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert_eq!(ev.body["reason"], reason);
        assert_eq!(ev.body["type"], "Normal");
        assert_eq!(ev.body["regarding"]["kind"], "TuningPolicy");
        assert_eq!(ev.body["regarding"]["name"], "web");
        assert_eq!(ev.body["reportingController"], "kubetune-operator");
    }
    assert_eq!(action, Action::requeue(RESYNC));
}

/// The verified world, but the node's agent Lease was last renewed at t(400) (30 s): at t(500)
/// the status PATCH says Verified=False NotObserved naming node-1, and nothing is verified.
/// Without any Lease the message says the agent is gone.
#[tokio::test]
async fn a_stale_heartbeat_in_the_lease_store_is_not_observed() {
    for (leases, says) in [
        (
            vec![agent_lease(NODE, 400, -100_000)],
            "node node-1: agent heartbeat stale since 2025-01-01T00:07:10Z",
        ),
        (
            vec![],
            "node node-1: agent gone (no heartbeat Lease kubetune-agent-node-1)",
        ),
    ] {
        let (p, pods, reports) = verified_world();
        let Setup { ctx, mut handle } = setup_with_leases(
            vec![p.clone()],
            pods,
            reports,
            facts_allowing_somaxconn(),
            leases,
            500,
        );
        let pp = p.clone();
        let server = tokio::spawn(async move {
            let patch = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
            // The Applied event follows; answer whatever comes.
            while let Ok(Some((_req, send))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                send.send_response(
                    Response::builder()
                        .body(Body::from(b"{}".to_vec()))
                        .unwrap(),
                );
            }
            patch
        });
        reconcile(Arc::new(p), ctx).await.unwrap();
        let patch = server.await.unwrap();
        let s = &patch.body["status"];
        assert_eq!(s["verifiedPods"], 0, "{s}");
        assert_eq!(s["appliedPods"], 1, "{s}");
        assert_eq!(s["phase"], "NotObservedYet", "{s}");
        let v = &s["conditions"][2];
        assert_eq!(v["type"], condition::VERIFIED);
        assert_eq!(v["status"], "False");
        assert_eq!(v["reason"], "NotObserved");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
}

#[tokio::test]
async fn unchanged_status_sends_nothing_and_waiting_pod_requeues_at_window_end() {
    let (mut p, pods, reports) = verified_world();
    // At t=200 the pod (started at 100) is not verified yet; window ends at 400.
    p.status = Some(status_at(&p, &pods, &reports, 150));
    let Setup { ctx, mut handle } = setup(
        vec![p.clone()],
        pods,
        reports,
        facts_allowing_somaxconn(),
        200,
    );
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(p), ctx))
        .await
        .expect("no API call expected, so no wait")
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(201)));
    // No request was made.
    let none = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
    // Ok(None): the client was dropped without ever sending; Err: nothing arrived in time.
    assert!(
        matches!(none, Err(_) | Ok(None)),
        "no request expected, got one"
    );
}

#[tokio::test]
async fn needs_restart_status_and_event() {
    let p = policy("web", 2, "web", &[("net.core.somaxconn", "16384")]);
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let pods = vec![pod("web-1", "web", 100, Some(&rec))];
    let Setup { ctx, mut handle } = setup(
        vec![p.clone()],
        pods,
        vec![],
        facts_allowing_somaxconn(),
        500,
    );
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let patch = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        let ev = answer(&mut handle, |b| b.clone()).await;
        (patch, ev)
    });
    reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    let (patch, ev) = server.await.unwrap();
    assert_eq!(patch.body["status"]["phase"], "PodsNeedRestart");
    assert_eq!(patch.body["status"]["needsRestartPods"], 1);
    // The same status, exported for dashboards and alerts.
    let text = ctx.metrics.encode();
    for line in [
        r#"kubetune_operator_policy_phase{namespace="shop",policy="web",phase="PodsNeedRestart"} 1"#,
        r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="needs_restart"} 1"#,
        r#"kubetune_operator_policy_pods{namespace="shop",policy="web",state="matched"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    assert_eq!(patch.body["status"]["summary"], "net.core.somaxconn=16384");
    assert_eq!(ev.body["reason"], "PodsNeedRestart");
}

#[tokio::test]
async fn invalid_policy_waits_for_a_change() {
    let p = policy("bad", 1, "web", &[("kernel.pid_max", "65536")]);
    let Setup { ctx, mut handle } = setup(
        vec![p.clone()],
        vec![],
        vec![],
        facts_allowing_somaxconn(),
        10,
    );
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let patch = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        let ev = answer(&mut handle, |b| b.clone()).await;
        let ev2 = answer(&mut handle, |b| b.clone()).await;
        (patch, ev, ev2)
    });
    let action = reconcile(Arc::new(p), ctx).await.unwrap();
    let (patch, ev, ev2) = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(patch.body["status"]["phase"], "Invalid");
    let accepted = &patch.body["status"]["conditions"][0];
    assert_eq!(accepted["reason"], "InvalidSpec");
    assert!(
        accepted["message"].as_str().unwrap().contains("node-level"),
        "{accepted}"
    );
    assert_eq!(ev.body["reason"], "NotAccepted");
    assert_eq!(ev.body["type"], "Warning");
    assert_eq!(ev2.body["reason"], "Refused");
}

#[tokio::test]
async fn api_error_is_counted_and_backs_off_exponentially() {
    let (p, pods, reports) = verified_world();
    let Setup { ctx, mut handle } = setup(
        vec![p.clone()],
        pods,
        reports,
        facts_allowing_somaxconn(),
        500,
    );
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (_req, send) = handle.next_request().await.unwrap();
            send.send_response(
                Response::builder()
                    .status(409)
                    .body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "conflict", "reason": "Conflict", "code": 409
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
            );
        }
    });
    let p = Arc::new(p);
    let e1 = reconcile(p.clone(), ctx.clone()).await.unwrap_err();
    assert!(matches!(e1, Error::Kube(kube::Error::Api(_))), "{e1:?}");
    assert_eq!(
        error_policy(p.clone(), &e1, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    let e2 = reconcile(p.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(
        error_policy(p.clone(), &e2, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    server.await.unwrap();
    let text = ctx.metrics.encode();
    assert!(
        text.contains("kubetune_operator_reconcile_failures_total{error=\"api\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn report_gets_recommendation_and_pod_gets_event() {
    let pd = pod("web-1", "web", 0, None);
    let rep = report(
        "web-1",
        R {
            somaxconn: 4096,
            diagnosis: Diagnosis::SomaxconnBound,
            recent: 50,
            total: 50,
            requested_backlog: Some(6000),
            observed_at: 60,
            ..R::default()
        },
    );
    let Setup { ctx, mut handle } = setup(
        vec![],
        vec![pd],
        vec![rep.clone()],
        facts_allowing_somaxconn(),
        100,
    );
    let r2 = rep.clone();
    let server = tokio::spawn(async move {
        let patch = answer(&mut handle, |b| {
            let mut v = serde_json::to_value(&r2).unwrap();
            v["status"] = b["status"].clone();
            v
        })
        .await;
        let ev = answer(&mut handle, |b| b.clone()).await;
        (patch, ev)
    });
    let action = reconcile_report(Arc::new(rep), ctx.clone()).await.unwrap();
    let (patch, ev) = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.path,
        "/apis/kubetune.dev/v1alpha1/namespaces/shop/listenerreports/web-1/status"
    );
    assert!(patch.query.contains("fieldManager=kubetune-operator"));
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(patch.body["kind"], "ListenerReport");
    let yaml = patch.body["status"]["recommendation"].as_str().unwrap();
    let recommended: TuningPolicy = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(recommended.spec.sysctls.as_ref().unwrap()[0].value, "8192");
    assert!(patch.body["status"].get("policies").is_none());
    assert_eq!(ev.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(ev.body["regarding"]["kind"], "Pod");
    assert_eq!(ev.body["regarding"]["name"], "web-1");
    assert_eq!(ev.body["reason"], "SomaxconnBound");
    assert_eq!(ev.body["type"], "Warning");
}

#[tokio::test]
async fn selected_report_lists_policies_and_no_recommendation() {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let pd = pod("web-1", "web", 0, None);
    let mut rep = report(
        "web-1",
        R {
            somaxconn: 4096,
            diagnosis: Diagnosis::SomaxconnBound,
            recent: 50,
            total: 50,
            requested_backlog: Some(6000),
            ..R::default()
        },
    );
    // A stale recommendation from before the policy existed is removed.
    rep.status = Some(kubetune_crds::report::ListenerReportStatus {
        recommendation: Some("old".into()),
        policies: vec![],
    });
    let Setup { ctx, mut handle } = setup(
        vec![p],
        vec![pd],
        vec![rep.clone()],
        facts_allowing_somaxconn(),
        100,
    );
    let r2 = rep.clone();
    let server = tokio::spawn(async move {
        answer(&mut handle, |b| {
            let mut v = serde_json::to_value(&r2).unwrap();
            v["status"] = b["status"].clone();
            v
        })
        .await
    });
    reconcile_report(Arc::new(rep), ctx).await.unwrap();
    let patch = server.await.unwrap();
    assert_eq!(patch.body["status"], json!({"policies": ["web"]}));
}

fn tuning_cni_world() -> (TuningPolicy, ClusterFacts) {
    use kubetune_crds::facts::TuningCni;
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let facts = ClusterFacts {
        tuning_cni: Some(TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
        ..facts_strict()
    };
    (p, facts)
}

#[tokio::test]
async fn tuning_cni_policy_gets_a_nad_applied() {
    let (p, facts) = tuning_cni_world();
    let Setup { ctx, mut handle } = setup(vec![p.clone()], vec![], vec![], facts, 10);
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let discovery = answer(&mut handle, |_| {
            json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "k8s.cni.cncf.io/v1",
                "resources": [{
                    "name": "network-attachment-definitions", "singularName": "network-attachment-definition",
                    "namespaced": true, "kind": "NetworkAttachmentDefinition",
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]
                }]
            })
        })
        .await;
        // The NAD first: whether it could be written is part of the status.
        let nad = answer(&mut handle, |b| b.clone()).await;
        let status = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        (discovery, status, nad)
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let (discovery, status, nad) = server.await.unwrap();
    assert_eq!(discovery.path, "/apis/k8s.cni.cncf.io/v1");
    assert_eq!(status.body["status"]["sysctls"][0]["delivery"], "TuningCNI");
    assert_eq!(status.body["status"]["conditions"][0]["status"], "True");
    assert_eq!(nad.method, "PATCH");
    assert_eq!(
        nad.path,
        "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/kubetune-tuning"
    );
    assert!(nad.query.contains("fieldManager=kubetune-operator"));
    assert_eq!(nad.content_type, "application/apply-patch+yaml");
    assert_eq!(nad.body["metadata"]["ownerReferences"][0]["name"], "web");
    assert!(nad.body["spec"]["config"]
        .as_str()
        .unwrap()
        .contains("\"type\":\"tuning\""));
}

fn nad_discovery() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "k8s.cni.cncf.io/v1",
        "resources": [{
            "name": "network-attachment-definitions", "singularName": "network-attachment-definition",
            "namespaced": true, "kind": "NetworkAttachmentDefinition",
            "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]
        }]
    })
}

/// Answer the next request with an API error `code`; returns its method and path.
async fn refuse(handle: &mut ApiHandle, code: u16, message: &str) -> (String, String) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5 s")
        .expect("service alive");
    let seen = (req.method().to_string(), req.uri().path().to_string());
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(
                serde_json::to_vec(&json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": message, "reason": "Forbidden", "code": code
                }))
                .unwrap(),
            ))
            .unwrap(),
    );
    seen
}

/// A NAD apply refused with 403: the status carries Accepted=False TuningCNIUnavailable with the
/// API error, an event says so on the policy, the reconcile fails (error backoff); the next
/// reconcile that can write the NAD clears the condition.
#[tokio::test]
async fn nad_write_failure_sets_a_condition_and_an_event_and_clears_when_it_succeeds() {
    let (p, facts) = tuning_cni_world();
    let Setup { ctx, mut handle } = setup(vec![p.clone()], vec![], vec![], facts.clone(), 10);
    let pp = p.clone();
    let forbidden = "network-attachment-definitions.k8s.cni.cncf.io \"kubetune-tuning\" is forbidden: \
                     User \"system:serviceaccount:kubetune-system:kubetune-operator\" cannot patch resource";
    let server = tokio::spawn(async move {
        let discovery = answer(&mut handle, |_| nad_discovery()).await;
        let nad = refuse(&mut handle, 403, forbidden).await;
        let status = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        let event = answer(&mut handle, |b| b.clone()).await;
        (discovery, nad, status, event, handle)
    });
    let err = reconcile(Arc::new(p.clone()), ctx.clone())
        .await
        .expect_err("a NAD that cannot be written fails the reconcile");
    assert!(
        matches!(err, Error::Kube(kube::Error::Api(ref e)) if e.code == 403),
        "{err}"
    );
    let (discovery, nad, status, event, mut handle) = server.await.unwrap();
    assert_eq!(discovery.path, "/apis/k8s.cni.cncf.io/v1");
    assert_eq!(
        nad,
        (
            "PATCH".to_string(),
            "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/kubetune-tuning"
                .to_string()
        )
    );
    assert_eq!(status.method, "PATCH");
    assert_eq!(
        status.path,
        "/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web/status"
    );
    let accepted = &status.body["status"]["conditions"][0];
    assert_eq!(accepted["type"], condition::ACCEPTED);
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "TuningCNIUnavailable");
    let msg = accepted["message"].as_str().unwrap();
    assert!(
        msg.contains("NetworkAttachmentDefinition shop/kubetune-tuning")
            && msg.contains("cannot patch resource"),
        "{msg}"
    );
    assert_eq!(event.method, "POST");
    assert_eq!(event.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "NotAccepted");
    assert_eq!(event.body["regarding"]["name"], "web");
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.starts_with("TuningCNIUnavailable: ") && note.contains("cannot patch resource"),
        "{note}"
    );

    // Next reconcile (the policy now carries that status): the NAD apply succeeds, the condition
    // clears. Discovery is cached.
    let mut p2 = p.clone();
    p2.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());
    let pp = p2.clone();
    let server = tokio::spawn(async move {
        let nad = answer(&mut handle, |b| b.clone()).await;
        let status = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        (nad, status)
    });
    reconcile(Arc::new(p2), ctx).await.unwrap();
    let (nad, status) = server.await.unwrap();
    assert_eq!(nad.method, "PATCH");
    assert!(nad
        .path
        .ends_with("/network-attachment-definitions/kubetune-tuning"));
    let accepted = &status.body["status"]["conditions"][0];
    assert_eq!(accepted["status"], "True", "{accepted}");
    assert_eq!(accepted["reason"], "Accepted");
}

#[tokio::test]
async fn missing_nad_crd_reports_tuning_cni_unavailable() {
    let (p, facts) = tuning_cni_world();
    let Setup { ctx, mut handle } = setup(vec![p.clone()], vec![], vec![], facts, 10);
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "the server could not find the requested resource",
                        "reason": "NotFound", "code": 404
                    }))
                    .unwrap(),
                ))
                .unwrap(),
        );
        let status = answer(&mut handle, |b| as_object(&pp, &b["status"])).await;
        // Events follow (NotAccepted); answer whatever comes, no NAD request may be among them.
        let mut rest = Vec::new();
        while let Ok(Some((req, send))) =
            tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
        {
            rest.push(req.uri().path().to_string());
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(b"{}".to_vec()))
                    .unwrap(),
            );
        }
        (status, rest)
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let (status, rest) = server.await.unwrap();
    let accepted = &status.body["status"]["conditions"][0];
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "TuningCNIUnavailable");
    assert!(accepted["message"].as_str().unwrap().contains("Multus"));
    assert_eq!(status.body["status"]["phase"], "Refused");
    assert!(
        rest.iter().all(|p| p.contains("/events")),
        "no NAD request: {rest:?}"
    );
}

#[tokio::test]
async fn no_status_before_the_stores_are_synced() {
    let (p, _, _) = verified_world();
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (pods, _pod_writer) = reflector::store::<Pod>(); // initial list not done yet
    let ctx = Arc::new(Context::new(
        Client::new(svc, "default"),
        Stores {
            policies: store(vec![p.clone()]),
            pods,
            reports: store(vec![]),
            namespaces: store(Vec::<Namespace>::new()),
            leases: store(vec![agent_lease(NODE, 100_000, -100_000)]),
        },
        Arc::new(RwLock::new(facts_allowing_somaxconn())),
        Arc::new(Metrics::default()),
        Arc::new(|| t(500)),
    ));
    let action = reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let none = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
    assert!(matches!(none, Err(_) | Ok(None)), "no request before sync");
}
