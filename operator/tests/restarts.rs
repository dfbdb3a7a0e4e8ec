//! The reconciler side of `restartPods: Rollout` against a mocked Kubernetes API (tower-test):
//! the exact requests (ReplicaSet GET, the restart PATCH, events), and that nothing is patched a
//! second time — in the same process, or after an operator restart.

mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::*;
use http::{Request, Response};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use kubetune_crds::policy::{rollout_reason, RestartPods, TuningPolicy, WorkloadRolloutState};
use kubetune_operator::restarts::{reconcile_rollout, RolloutInput, Rollouts};
use kubetune_operator::status::{evaluate, Environment};
use serde_json::{json, Value};
use tower_test::mock;

async fn no_request(handle: &mut ApiHandle) {
    let none = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(matches!(none, Err(_) | Ok(None)), "no request expected");
}

fn rollout_policy(name: &str, generation: i64) -> TuningPolicy {
    let mut p = policy(
        name,
        generation,
        "web",
        &[("net.ipv4.tcp_keepalive_time", "600")],
    );
    p.spec.restart_pods = RestartPods::Rollout;
    p
}

fn owned_pod(name: &str, rs: &str) -> Pod {
    let mut p = pod(name, "web", 100, None);
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.into(),
        uid: format!("uid-{rs}"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    p
}

fn replicaset(name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "Deployment", "name": deployment, "uid": format!("uid-{deployment}"), "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}},
    })
}

fn deployment(generation: i64, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "uid": "uid-web", "generation": generation},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
    }))
    .unwrap()
}

fn rollouts(d: Vec<Deployment>) -> Rollouts {
    Rollouts::new(
        store(d),
        store(Vec::<StatefulSet>::new()),
        store(Vec::<DaemonSet>::new()),
        1,
    )
}

fn mock_client() -> (Client, Recorder, ApiHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let reporter = Reporter {
        controller: "kubetune-operator".into(),
        instance: None,
    };
    (client.clone(), Recorder::new(client, reporter), handle)
}

#[tokio::test]
async fn a_rollout_policy_restarts_the_deployment_once_with_the_exact_patch() {
    let p = rollout_policy("web-tuning", 3);
    let pods: Vec<Arc<Pod>> = vec![
        Arc::new(owned_pod("web-1", "web-5d4f8")),
        Arc::new(owned_pod("web-2", "web-5d4f8")),
    ];
    let facts = facts_strict();
    let env = Environment::default();
    let now = t(500);
    let eval = evaluate(&p, pods.iter().map(|p| p.as_ref()), [], &facts, &env, now);
    assert_eq!(eval.status.needs_restart_pods, 2);
    let input = RolloutInput {
        pods: &pods,
        others: &[],
        facts: &facts,
        env: &env,
        now,
    };
    let r = rollouts(vec![deployment(3, json!({}))]);
    let (client, recorder, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let rs = answer(&mut handle, |_| replicaset("web-5d4f8", "web")).await;
        let patch = answer(&mut handle, |_| {
            serde_json::to_value(deployment(
                4,
                json!({"kubetune.dev/restarted-for": "web-tuning@3"}),
            ))
            .unwrap()
        })
        .await;
        let ev1 = answer(&mut handle, |b| b.clone()).await;
        let ev2 = answer(&mut handle, |b| b.clone()).await;
        (rs, patch, ev1, ev2, handle)
    });
    let plan = reconcile_rollout(&client, &recorder, &r, &p, &eval, &input)
        .await
        .unwrap()
        .unwrap();
    let (rs, patch, ev1, ev2, mut handle) = server.await.unwrap();

    assert_eq!(
        (rs.method.as_str(), rs.path.as_str()),
        ("GET", "/apis/apps/v1/namespaces/shop/replicasets/web-5d4f8")
    );
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.path, "/apis/apps/v1/namespaces/shop/deployments/web");
    let q: Vec<&str> = patch.query.split('&').filter(|s| !s.is_empty()).collect();
    assert_eq!(q, ["fieldManager=kubetune-operator"]);
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    assert_eq!(
        patch.body,
        json!({"spec": {"template": {"metadata": {"annotations": {
            "kubetune.dev/restarted-for": "web-tuning@3",
            "kubetune.dev/restartedAt": "2025-01-01T00:08:20Z",
        }}}}})
    );
    assert_eq!(ev1.body["reason"], "Restarted");
    assert_eq!(ev1.body["regarding"]["kind"], "Deployment");
    assert_eq!(ev1.body["regarding"]["name"], "web");
    assert_eq!(ev1.body["related"]["kind"], "TuningPolicy");
    assert_eq!(ev2.body["reason"], "RestartedWorkload");
    assert_eq!(ev2.body["regarding"]["kind"], "TuningPolicy");
    assert_eq!(ev2.body["related"]["name"], "web");
    assert_eq!(plan.restart.len(), 1);
    assert_eq!(plan.entries[0].state, WorkloadRolloutState::Restarted);

    // Second reconcile, same process, the store not updated yet: nothing is sent (the ReplicaSet
    // is cached, the restart remembered).
    let again = reconcile_rollout(&client, &recorder, &r, &p, &eval, &input)
        .await
        .unwrap()
        .unwrap();
    assert!(again.restart.is_empty());
    assert_eq!(again.entries[0].reason, rollout_reason::ROLLING_OUT);
    no_request(&mut handle).await;

    // A new operator process: only the annotation on the Deployment remembers the restart.
    let r = rollouts(vec![deployment(
        4,
        json!({"kubetune.dev/restarted-for": "web-tuning@3"}),
    )]);
    let (client, recorder, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let rs = answer(&mut handle, |_| replicaset("web-5d4f8", "web")).await;
        no_request(&mut handle).await;
        rs
    });
    let after = reconcile_rollout(&client, &recorder, &r, &p, &eval, &input)
        .await
        .unwrap()
        .unwrap();
    let rs = server.await.unwrap();
    assert_eq!(rs.method, "GET");
    assert!(after.restart.is_empty());
    assert_eq!(after.entries[0].reason, rollout_reason::ROLLING_OUT);
}

#[tokio::test]
async fn never_policies_send_nothing_and_a_busy_cap_waits() {
    let mut p = rollout_policy("web-tuning", 3);
    p.spec.restart_pods = RestartPods::Never;
    let pods: Vec<Arc<Pod>> = vec![Arc::new(owned_pod("web-1", "web-5d4f8"))];
    let (facts, env, now) = (facts_strict(), Environment::default(), t(500));
    let eval = evaluate(&p, pods.iter().map(|p| p.as_ref()), [], &facts, &env, now);
    let input = RolloutInput {
        pods: &pods,
        others: &[],
        facts: &facts,
        env: &env,
        now,
    };
    let (client, recorder, mut handle) = mock_client();
    let r = rollouts(vec![deployment(3, json!({}))]);
    assert!(reconcile_rollout(&client, &recorder, &r, &p, &eval, &input)
        .await
        .unwrap()
        .is_none());
    no_request(&mut handle).await;

    // Another Deployment restarted by the operator is still rolling out: the cap (1) is full.
    p.spec.restart_pods = RestartPods::Rollout;
    let mut busy = deployment(7, json!({"kubetune.dev/restarted-for": "other@1"}));
    busy.metadata.name = Some("api".into());
    let r = rollouts(vec![deployment(3, json!({})), busy]);
    let (client, recorder, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        answer(&mut handle, |_| replicaset("web-5d4f8", "web")).await;
        no_request(&mut handle).await;
    });
    let plan = reconcile_rollout(&client, &recorder, &r, &p, &eval, &input)
        .await
        .unwrap()
        .unwrap();
    server.await.unwrap();
    assert!(plan.restart.is_empty());
    assert_eq!(plan.entries[0].reason, rollout_reason::CONCURRENCY_CAP);
}

/// Through the policy reconciler: the restart, then the status with `rollout` and `RolledOut`.
#[tokio::test]
async fn the_policy_reconciler_restarts_and_reports_it_in_the_status() {
    use k8s_openapi::api::core::v1::Namespace;
    use kubetune_operator::controller::{reconcile, Context, Stores};
    use std::sync::RwLock;
    let p = rollout_policy("web-tuning", 3);
    let pods = vec![owned_pod("web-1", "web-5d4f8")];
    let (client, _recorder, mut handle) = mock_client();
    let mut ctx = Context::new(
        client,
        Stores {
            policies: store(vec![p.clone()]),
            pods: store(pods),
            reports: store(vec![]),
            namespaces: store(Vec::<Namespace>::new()),
            leases: store(vec![agent_lease(NODE, 100_000, -100_000)]),
        },
        Arc::new(RwLock::new(facts_strict())),
        Arc::new(kubetune_operator::metrics::Metrics::default()),
        Arc::new(|| t(500)),
    );
    ctx.rollouts = Some(Arc::new(rollouts(vec![deployment(3, json!({}))])));
    let pp = p.clone();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let pp = pp.clone();
            let s = answer(&mut handle, move |b| {
                if b.get("kind") == Some(&json!("TuningPolicy")) {
                    let mut v = serde_json::to_value(&pp).unwrap();
                    v["status"] = b["status"].clone();
                    v
                } else if b.get("spec").is_some() {
                    serde_json::to_value(deployment(4, json!({}))).unwrap()
                } else if b.is_null() {
                    replicaset("web-5d4f8", "web")
                } else {
                    b.clone()
                }
            })
            .await;
            let done = s.path.ends_with("/tuningpolicies/web-tuning/status");
            seen.push(s);
            if done {
                return seen;
            }
        }
    });
    let action = reconcile(Arc::new(p), Arc::new(ctx)).await.unwrap();
    let seen = server.await.unwrap();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("GET", "/apis/apps/v1/namespaces/shop/replicasets/web-5d4f8"),
            ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            (
                "PATCH",
                "/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web-tuning/status"
            ),
        ]
    );
    let status = &seen[4].body["status"];
    assert_eq!(
        status["phase"], "PodsNeedRestart",
        "Verified only once new pods are observed"
    );
    assert_eq!(
        status["rollout"],
        json!({"restarted": 1, "pending": 0, "skipped": 0, "workloads": [
            {"kind": "Deployment", "name": "web", "state": "Restarted", "reason": "RollingOut", "podsNeedingRestart": 1}]})
    );
    let rolled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RolledOut")
        .unwrap();
    assert_eq!(
        (rolled["status"].as_str(), rolled["reason"].as_str()),
        (Some("False"), Some("RestartingWorkloads"))
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(15))
    );
}
