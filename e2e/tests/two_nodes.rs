//! Two "nodes" that differ in what their kubelets accept (root, real network namespaces, the real
//! webhook over HTTPS): node truth as the agents publish it (NodeTuning + node labels) goes into
//! the webhook's facts; an unsafe sysctl is injected with a required node affinity; every node a
//! scheduler could pick for the admitted pod starts it with the sysctl in its netns, and the
//! refusing node — which the affinity rules out — would have failed it with SysctlForbidden. A pod
//! pinned to the refusing node is refused and starts; a node whose kubelet refused the sysctl is
//! excluded by name.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Node, Pod};
use kubetune_crds::decision::Outcome;
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::node::{self, NodeTuning, RefusedSysctl};
use kubetune_e2e::kubelet::{FakeKubelet, KubeletError, NodeConfig};
use kubetune_e2e::webhook_local::LocalWebhook;
use kubetune_test_support::admission::{policy, NS};
use kubetune_test_support::webhook::snapshot;
use serde_json::{json, Value};

const SOMAXCONN: &str = "net.core.somaxconn";

fn kubelet(name: &str, allowed: &[&str]) -> FakeKubelet {
    let node = NodeConfig {
        allowed_unsafe_sysctls: allowed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    FakeKubelet::new(
        node,
        format!("kt-2n{}-{name}", std::process::id()),
        PathBuf::from(env!("CARGO_BIN_EXE_kt-listener")),
    )
}

/// The Node and NodeTuning an agent on `k` publishes (what `kubetune-agent` derives from the
/// kubelet's allowlist: the accepted table sysctls, one label each).
fn published(name: &str, k: &FakeKubelet) -> (Node, NodeTuning) {
    let accepted: Vec<String> = node::accepted_table_sysctls(&k.node.allowed_unsafe_sysctls)
        .into_iter()
        .map(String::from)
        .collect();
    let mut labels = node::node_labels(&accepted);
    labels.insert("kubernetes.io/hostname".into(), name.into());
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "status": {"nodeInfo": {"kubeletVersion": "v1.36.0", "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64"}}}))
    .unwrap();
    let t: NodeTuning = serde_json::from_value(json!({"apiVersion": kubetune_crds::API_VERSION, "kind": "NodeTuning",
        "metadata": {"name": name},
        "spec": {"nodeName": name, "kernelVersion": "6.1", "kubelet": {"allowedUnsafeSysctls": k.node.allowed_unsafe_sysctls},
            "acceptedUnsafeSysctls": accepted, "acceptedSummary": node::accepted_summary(&accepted, true),
            "tuningCni": {"state": "NotInstalled"}, "observedAt": "2026-12-01T00:00:00Z"}}))
    .unwrap();
    (n, t)
}

fn facts(published: &[(Node, NodeTuning)]) -> ClusterFacts {
    let nodes: Vec<&Node> = published.iter().map(|p| &p.0).collect();
    let tunings: Vec<&NodeTuning> = published.iter().map(|p| &p.1).collect();
    ClusterFacts::resolve(None, &nodes, &tunings).unwrap()
}

/// The scheduler's node-affinity filter, written independently of kubetune's: the nodes whose
/// labels and name satisfy some required term (`In`/`NotIn` on labels and `metadata.name`).
fn feasible(pod: &Pod, nodes: &[&Node]) -> Vec<String> {
    let v = serde_json::to_value(pod).unwrap();
    let terms = v["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .cloned();
    let holds = |r: &Value, value: Option<&str>| {
        let values: Vec<&str> = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        match r["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => !value.is_some_and(|v| values.contains(&v)),
            op => panic!("operator {op} not expected here"),
        }
    };
    nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let name = n.metadata.name.as_deref().unwrap();
            let selector_ok = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_selector.as_ref())
                .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
            let term_ok = |t: &Value| {
                let empty = vec![];
                let exprs = t["matchExpressions"].as_array().unwrap_or(&empty);
                let fields = t["matchFields"].as_array().unwrap_or(&empty);
                (!exprs.is_empty() || !fields.is_empty())
                    && exprs.iter().all(|r| {
                        holds(
                            r,
                            labels.get(r["key"].as_str().unwrap()).map(String::as_str),
                        )
                    })
                    && fields.iter().all(|r| holds(r, Some(name)))
            };
            selector_ok && terms.as_ref().is_none_or(|ts| ts.iter().any(term_ok))
        })
        .map(|n| n.metadata.name.clone().unwrap())
        .collect()
}

fn web_pod(name: &str, spec: Value) -> Pod {
    let mut s = json!({"containers": []});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}}, "spec": s}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_sysctls_reach_only_the_nodes_that_accept_them() {
    if !kubetune_test_support::test_env::require_root("network namespaces") {
        return;
    }
    let (a, b) = (kubelet("a", &[SOMAXCONN]), kubelet("b", &[]));
    let mut nodes = vec![published("node-a", &a), published("node-b", &b)];
    let policies = vec![policy(
        "web",
        json!({"sysctls": [{"name": SOMAXCONN, "value": "8192"}]}),
    )];
    let wh = LocalWebhook::start(snapshot(policies.clone(), facts(&nodes)))
        .await
        .unwrap();

    // Anywhere: injected, with an affinity the refusing node does not satisfy.
    let (stored, d) = wh.admit(&web_pod("web-1", json!({}))).await.unwrap();
    let d = d.expect("decided");
    assert_eq!(d.entries[0].outcome, Outcome::Injected, "{d:?}");
    assert_eq!(d.node_affinity.len(), 1, "{d:?}");
    let all: Vec<&Node> = nodes.iter().map(|n| &n.0).collect();
    assert_eq!(feasible(&stored, &all), ["node-a"]);
    let p = a.run_pod(stored.clone(), &[]).expect("node-a starts it");
    assert_eq!(p.sysctl(SOMAXCONN).unwrap(), "8192");
    drop(p);
    match b.run_pod(stored, &[]) {
        Err(KubeletError::SysctlForbidden { sysctl, .. }) => assert_eq!(sysctl, SOMAXCONN),
        other => panic!("node-b would have refused it: {other:?}"),
    }

    // Pinned to the refusing node: refused, naming it; the pod starts there with the default.
    let (stored, d) = wh
        .admit(&web_pod(
            "web-2",
            json!({"nodeSelector": {"kubernetes.io/hostname": "node-b"}}),
        ))
        .await
        .unwrap();
    let e = &d.expect("decided").entries[0];
    assert_eq!(e.outcome, Outcome::Refused);
    assert!(
        e.message
            .contains("node-b (not in its kubelet's allowedUnsafeSysctls)"),
        "{}",
        e.message
    );
    let p = b
        .run_pod(stored, &[])
        .expect("node-b starts the refused pod");
    assert_ne!(p.sysctl(SOMAXCONN).unwrap(), "8192");
    drop(p);
    drop(wh);

    // node-a's kubelet refused the sysctl after all (the operator recorded it); a third node
    // accepts it. The label on node-a is stale: node-a is excluded by name.
    let c = kubelet("c", &["net.core.*"]);
    nodes.push(published("node-c", &c));
    nodes[0].1.status = Some(node::NodeTuningStatus {
        refused_sysctls: vec![RefusedSysctl {
            name: SOMAXCONN.into(),
            pod: format!("{NS}/web-1"),
            observed_at: "2026-12-01T00:00:00Z".into(),
        }],
    });
    let wh = LocalWebhook::start(snapshot(policies, facts(&nodes)))
        .await
        .unwrap();
    let (stored, d) = wh.admit(&web_pod("web-3", json!({}))).await.unwrap();
    assert_eq!(
        d.expect("decided").node_affinity[0].excluded_nodes,
        ["node-a"]
    );
    let all: Vec<&Node> = nodes.iter().map(|n| &n.0).collect();
    assert_eq!(feasible(&stored, &all), ["node-c"]);
    let p = c.run_pod(stored, &[]).expect("node-c starts it");
    assert_eq!(p.sysctl(SOMAXCONN).unwrap(), "8192");
}
