//! Table tests of node truth: where a pod may run (nodeName, nodeSelector, required node
//! affinity), which nodes accept an unsafe sysctl, the node-affinity requirement when only some
//! do, refusals naming the nodes, tuning CNI per node, and the facts resolved from Node,
//! NodeTuning and the optional override ConfigMap.

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kubetune_crds::facts::{decide, ClusterFacts, PodContext};
use kubetune_crds::node::{NodeTuning, TuningCniState};
use kubetune_crds::placement::{unsafe_on_nodes, NodeFacts, NodeRequirement, Placement};
use kubetune_crds::policy::{Delivery, DeliveryDecision};
use kubetune_crds::sysctl::KubeVersion;
use serde_json::{json, Value};

const SOMAXCONN: &str = "net.core.somaxconn";
const LABEL: &str = "sysctl.kubetune.dev/net.core.somaxconn";

/// A node in pool `pool` whose agent reported `accepts` (and labelled the node for them).
fn node(name: &str, pool: &str, accepts: &[&str]) -> NodeFacts {
    let mut labels: std::collections::BTreeMap<String, String> =
        [("pool".to_string(), pool.to_string())].into();
    for a in accepts {
        labels.insert(format!("sysctl.kubetune.dev/{a}"), "allowed".into());
    }
    NodeFacts {
        name: name.into(),
        labels,
        schedulable: true,
        taints: vec![],
        kubelet_version: Some(KubeVersion::new(1, 36)),
        accepted: Some(accepts.iter().map(|s| s.to_string()).collect()),
        refused: vec![],
        tuning_cni: TuningCniState::NotInstalled,
    }
}

fn facts(nodes: Vec<NodeFacts>) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 36),
        nodes,
        ..Default::default()
    }
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
}

fn placed(spec: Value) -> Placement {
    Placement::of(&pod(spec), &[])
}

fn affinity(terms: Value) -> Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
}

fn req(excluded: &[&str]) -> NodeRequirement {
    NodeRequirement {
        sysctl: SOMAXCONN.into(),
        label_key: Some(LABEL.into()),
        excluded_nodes: excluded.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn where_a_pod_may_run() {
    let a = node("a", "ingress", &[SOMAXCONN]);
    let b = node("b", "general", &[]);
    let pinned_fields = |op: &str, names: Value| {
        affinity(
            json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": names}]}]),
        )
    };
    let expr = |key: &str, op: &str, values: Value| {
        affinity(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]))
    };
    // (pod spec, may run on a, may run on b)
    let cases = [
        (json!({}), true, true),
        (json!({"nodeName": "a"}), true, false),
        (json!({"nodeSelector": {"pool": "general"}}), false, true),
        (json!({"nodeSelector": {"pool": "gpu"}}), false, false),
        (pinned_fields("In", json!(["b"])), false, true),
        (pinned_fields("NotIn", json!(["b"])), true, false),
        (expr("pool", "In", json!(["ingress", "gpu"])), true, false),
        (expr("pool", "NotIn", json!(["ingress"])), false, true),
        (expr("pool", "Exists", json!(null)), true, true),
        (expr("zone", "DoesNotExist", json!(null)), true, true),
        (expr("zone", "Exists", json!(null)), false, false),
        (expr(LABEL, "In", json!(["allowed"])), true, false),
        // Terms are ORed.
        (
            affinity(json!([
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
            ])),
            false,
            true,
        ),
        // An empty term matches no node.
        (affinity(json!([{}])), false, false),
        // nodeSelector and affinity must both hold.
        (
            json!({"nodeSelector": {"pool": "ingress"}, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
            false,
            false,
        ),
        // Preferred affinity does not constrain.
        (
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}}]}}}),
            true,
            true,
        ),
    ];
    for (spec, on_a, on_b) in cases {
        let p = placed(spec.clone());
        assert_eq!((p.may_run_on(&a), p.may_run_on(&b)), (on_a, on_b), "{spec}");
    }
}

/// A node tainted `taints` (`[key, value, effect]`).
fn tainted(name: &str, accepts: &[&str], taints: &[[&str; 3]]) -> NodeFacts {
    let mut n = node(name, "ingress", accepts);
    n.taints = taints
        .iter()
        .map(|[k, v, e]| {
            serde_json::from_value(json!({"key": k, "value": v, "effect": e})).unwrap()
        })
        .collect();
    n
}

#[test]
fn a_pod_may_run_only_where_it_tolerates_the_taints() {
    let dedicated = tainted("d", &[], &[["dedicated", "ingress", "NoSchedule"]]);
    let both = tainted(
        "e",
        &[],
        &[
            ["dedicated", "ingress", "NoSchedule"],
            ["gpu", "", "NoExecute"],
        ],
    );
    let tol = |t: Value| json!({"tolerations": t});
    // (pod spec, may run on d, may run on e)
    let cases = [
        (json!({}), false, false),
        (
            tol(
                json!([{"key": "dedicated", "operator": "Equal", "value": "ingress", "effect": "NoSchedule"}]),
            ),
            true,
            false,
        ),
        // Equal is the default operator; an empty effect matches every effect.
        (
            tol(json!([{"key": "dedicated", "value": "ingress"}])),
            true,
            false,
        ),
        (
            tol(json!([{"key": "dedicated", "value": "batch"}])),
            false,
            false,
        ),
        (
            tol(json!([{"key": "dedicated", "value": "ingress", "effect": "NoExecute"}])),
            false,
            false,
        ),
        (
            tol(json!([{"key": "dedicated", "operator": "Exists"}])),
            true,
            false,
        ),
        (
            tol(
                json!([{"key": "dedicated", "operator": "Exists"}, {"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
            ),
            true,
            true,
        ),
        // An empty key with Exists tolerates every taint.
        (tol(json!([{"operator": "Exists"}])), true, true),
        (
            tol(json!([{"operator": "Exists", "effect": "NoSchedule"}])),
            true,
            false,
        ),
        // An operator kubetune does not know keeps the node a candidate.
        (
            tol(json!([{"key": "dedicated", "operator": "Gt", "value": "1"}])),
            true,
            false,
        ),
        // A pod that names its node bypasses the scheduler (and its taint check).
        (json!({"nodeName": "d"}), true, false),
    ];
    for (spec, on_d, on_e) in cases {
        let p = placed(spec.clone());
        assert_eq!(
            (p.may_run_on(&dedicated), p.may_run_on(&both)),
            (on_d, on_e),
            "{spec}"
        );
    }
}

#[test]
fn taints_the_pod_does_not_tolerate_take_their_nodes_out_of_the_decision() {
    // Only the tainted pool accepts somaxconn: a pod that does not tolerate the taint is refused
    // (it could never be scheduled there), one that does gets it without a node affinity when
    // the pool is all it may run on, and with one when it may also run on the general pool.
    let nodes = facts(vec![
        tainted("d", &[SOMAXCONN], &[["dedicated", "ingress", "NoSchedule"]]),
        node("g", "general", &[]),
    ]);
    let ctx = |spec: Value| PodContext {
        placement: placed(spec),
        ..Default::default()
    };
    let tolerating = json!([{"key": "dedicated", "operator": "Exists"}]);
    let e = decide(SOMAXCONN, "4096", Delivery::Auto, &nodes, &ctx(json!({}))).unwrap_err();
    assert_eq!(e.reason(), "RefusedUnsafeSysctl");
    let why = e.to_string();
    assert!(
        why.contains("g (not in its kubelet's") && !why.contains("d ("),
        "{why}"
    );
    let pool_only = json!({"tolerations": tolerating, "nodeSelector": {"pool": "ingress"}});
    let d = decide(SOMAXCONN, "4096", Delivery::Auto, &nodes, &ctx(pool_only)).unwrap();
    assert_eq!(d.node_affinity, None, "{d:?}");
    let anywhere = json!({"tolerations": tolerating});
    let d = decide(SOMAXCONN, "4096", Delivery::Auto, &nodes, &ctx(anywhere)).unwrap();
    assert_eq!(
        d.node_affinity.map(|r| r.label_key),
        Some(Some(LABEL.into())),
        "only the tainted pool accepts it"
    );
}

#[test]
fn numeric_operators_compare_integers() {
    let mut n = node("a", "x", &[]);
    n.labels.insert("cores".into(), "16".into());
    let cases = [
        ("Gt", "8", true),
        ("Gt", "16", false),
        ("Lt", "32", true),
        ("Lt", "x", false),
        ("Gt", "", false),
    ];
    for (op, v, want) in cases {
        let p = placed(affinity(
            json!([{"matchExpressions": [{"key": "cores", "operator": op, "values": [v]}]}]),
        ));
        assert_eq!(p.may_run_on(&n), want, "{op} {v}");
    }
}

#[test]
fn kubetunes_own_requirements_do_not_narrow_the_placement() {
    let p = pod(affinity(json!([{
        "matchExpressions": [{"key": LABEL, "operator": "In", "values": ["allowed"]}],
        "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["c"]}]
    }])));
    let b = node("b", "general", &[]);
    let c = node("c", "ingress", &[SOMAXCONN]);
    assert!(!Placement::of(&p, &[]).may_run_on(&b));
    assert!(!Placement::of(&p, &[]).may_run_on(&c));
    let ours = Placement::of(&p, &[req(&["c"])]);
    // With both of kubetune's requirements removed the (otherwise empty) term matches nothing;
    // the placement is then "no term", i.e. anywhere.
    assert!(ours.may_run_on(&b) && ours.may_run_on(&c), "{ours:?}");
}

/// (nodes, placement, Ok(requirement) | Err(substring of the reason)).
type Case<'a> = (
    Vec<NodeFacts>,
    &'a Placement,
    Result<Option<NodeRequirement>, &'a str>,
);

#[test]
fn unsafe_sysctl_per_node() {
    let a = || node("a", "ingress", &[SOMAXCONN]);
    let b = || node("b", "general", &[]);
    let mut refused = node("r", "ingress", &[SOMAXCONN]);
    refused.refused = vec![SOMAXCONN.into()];
    let mut unlabelled = node("u", "ingress", &[]);
    unlabelled.accepted = Some(vec![SOMAXCONN.into()]);
    let mut no_agent = node("n", "general", &[]);
    no_agent.accepted = None;
    let mut cordoned = a();
    cordoned.schedulable = false;
    let anywhere = Placement::default();
    let on_general = placed(json!({"nodeSelector": {"pool": "general"}}));
    let on_a = placed(json!({"nodeName": "a"}));
    // (nodes, placement, Ok(requirement) | Err(substring))
    let cases: Vec<Case> = vec![
        (vec![a()], &anywhere, Ok(None)),
        (vec![a(), b()], &anywhere, Ok(Some(req(&[])))),
        (vec![a(), b()], &on_a, Ok(None)),
        (
            vec![a(), b()],
            &on_general,
            Err("b (not in its kubelet's allowedUnsafeSysctls)"),
        ),
        (vec![b()], &anywhere, Err("no schedulable node")),
        (vec![], &anywhere, Err("sees no nodes")),
        (
            vec![a()],
            &on_general,
            Err("matches the pod's node selection"),
        ),
        // A node that refused it, still labelled, is excluded by name.
        (vec![a(), refused.clone()], &anywhere, Ok(Some(req(&["r"])))),
        (
            vec![refused],
            &anywhere,
            Err("r (its kubelet refused it (SysctlForbidden))"),
        ),
        // Discovery says yes but the label is not there yet: not counted as accepting, and the
        // label requirement keeps pods off it.
        (vec![a(), unlabelled.clone()], &anywhere, Ok(Some(req(&[])))),
        (
            vec![unlabelled],
            &anywhere,
            Err("label is not published yet"),
        ),
        (vec![a(), no_agent], &anywhere, Ok(Some(req(&[])))),
        // Cordoned nodes never make a sysctl deliverable, and they do not count as refusing
        // once they accept.
        (
            vec![cordoned.clone()],
            &anywhere,
            Err("no schedulable node"),
        ),
        (
            vec![cordoned, node("a2", "ingress", &[SOMAXCONN])],
            &anywhere,
            Ok(None),
        ),
    ];
    for (nodes, placement, want) in cases {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let got = unsafe_on_nodes(SOMAXCONN, &nodes, placement);
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{names:?} {placement:?}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{names:?}: {e:?} lacks {w:?}"),
            _ => panic!("{names:?} {placement:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn decide_with_node_truth() {
    use DeliveryDecision::*;
    let mixed = facts(vec![
        node("a", "ingress", &[SOMAXCONN]),
        node("b", "general", &[]),
    ]);
    let pod_ctx = |spec: Value| PodContext {
        placement: placed(spec),
        ..Default::default()
    };
    let d = decide(
        SOMAXCONN,
        "4096",
        Delivery::Auto,
        &mixed,
        &pod_ctx(json!({})),
    )
    .unwrap();
    assert_eq!(d.how, PodSecurityContext);
    assert_eq!(d.reason, "AllowedUnsafeSysctl");
    assert_eq!(d.node_affinity, Some(req(&[])));
    assert!(d.message.contains(LABEL), "{}", d.message);
    // Pinned to the refusing node: refused, naming it.
    let e = decide(
        SOMAXCONN,
        "4096",
        Delivery::Auto,
        &mixed,
        &pod_ctx(json!({"nodeName": "b"})),
    )
    .unwrap_err();
    assert_eq!(e.reason(), "RefusedUnsafeSysctl");
    assert!(e.to_string().contains("b (not in its kubelet's"), "{e}");
    // Safe sysctls need no node.
    let d = decide(
        "net.ipv4.tcp_keepalive_time",
        "600",
        Delivery::Auto,
        &facts(vec![]),
        &pod_ctx(json!({})),
    )
    .unwrap();
    assert_eq!((d.how, d.node_affinity), (PodSecurityContext, None));
    // Auto falls back to tuning CNI only where every candidate node has the plugin.
    let mut cni = facts(vec![node("b", "general", &[]), node("c", "general", &[])]);
    cni.tuning_cni = Some(kubetune_crds::facts::TuningCni {
        network_name: "kubetune-tuning".into(),
    });
    let e = decide(SOMAXCONN, "4096", Delivery::Auto, &cni, &pod_ctx(json!({}))).unwrap_err();
    assert!(
        e.to_string()
            .contains("not known to be installed on node(s) b, c"),
        "{e}"
    );
    for n in &mut cni.nodes {
        n.tuning_cni = TuningCniState::Installed;
    }
    let d = decide(SOMAXCONN, "4096", Delivery::Auto, &cni, &pod_ctx(json!({}))).unwrap();
    assert_eq!(d.how, TuningCni);
    cni.nodes[1].tuning_cni = TuningCniState::Unknown;
    let d = decide(
        SOMAXCONN,
        "4096",
        Delivery::TuningCni,
        &cni,
        &pod_ctx(json!({"nodeName": "b"})),
    )
    .unwrap();
    assert_eq!(d.how, TuningCni, "only node b is a candidate");
}

fn k8s_node(name: &str, version: &str, labels: Value, unschedulable: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": {"big": "x"}},
        "spec": {"unschedulable": unschedulable, "podCIDR": "10.0.0.0/24"},
        "status": {"nodeInfo": {"kubeletVersion": version, "machineID": "m", "systemUUID": "s",
            "bootID": "b", "kernelVersion": "6.1", "osImage": "o", "containerRuntimeVersion": "c",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["nginx"], "sizeBytes": 1}]}
    }))
    .unwrap()
}

fn tuning(name: &str, accepted: &[&str], refused: &[&str], error: Option<&str>) -> NodeTuning {
    serde_json::from_value(json!({
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "NodeTuning",
        "metadata": {"name": name},
        "spec": {"nodeName": name, "kernelVersion": "6.1", "acceptedSummary": "",
            "kubelet": {"allowedUnsafeSysctls": accepted, "error": error},
            "acceptedUnsafeSysctls": accepted, "tuningCni": {"state": "Installed"},
            "observedAt": "2026-12-01T00:00:00Z"},
        "status": {"refusedSysctls": refused.iter().map(|r| json!({"name": r, "pod": "shop/p", "observedAt": "2026-12-01T00:00:00Z"})).collect::<Vec<_>>()}
    }))
    .unwrap()
}

fn override_cm(doc: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": "kubetune-cluster-facts"}, "data": {"facts.yaml": doc}}),
    )
    .unwrap()
}

#[test]
fn facts_resolve_from_nodes_tunings_and_the_optional_override() {
    let a = k8s_node("a", "v1.36.2", json!({LABEL: "allowed"}), false);
    let b = k8s_node("b", "v1.34.0-eks-1", json!({}), true);
    let ta = tuning("a", &[SOMAXCONN], &[], None);
    let tb = tuning("b", &[SOMAXCONN], &[SOMAXCONN], Some("config unreadable"));
    let f = ClusterFacts::resolve(None, &[&b, &a], &[&ta, &tb]).unwrap();
    assert!(f.node_truth());
    assert_eq!(
        f.kubernetes_version,
        KubeVersion::new(1, 34),
        "the oldest kubelet"
    );
    let names: Vec<&str> = f.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "sorted by name");
    assert!(f.nodes[0].accepts(SOMAXCONN) && f.nodes[0].schedulable);
    assert_eq!(f.nodes[0].tuning_cni, TuningCniState::Installed);
    // An unreadable kubelet configuration means "accepts nothing", whatever the list says.
    assert_eq!(f.nodes[1].accepted, None);
    assert_eq!(f.nodes[1].refused, [SOMAXCONN]);
    assert!(!f.nodes[1].schedulable);
    // A node without a NodeTuning is known, accepting nothing.
    let f = ClusterFacts::resolve(None, &[&a], &[]).unwrap();
    assert_eq!(
        f.nodes[0].why_not(SOMAXCONN),
        Some("no kubetune agent has reported what its kubelet allows")
    );
    // The override: every key optional; an empty document or `{}` changes nothing.
    for doc in ["", "{}", "\n"] {
        let f = ClusterFacts::resolve(Some(&override_cm(doc)), &[&a], &[&ta]).unwrap();
        assert_eq!(
            (f.kubernetes_version, f.node_truth()),
            (KubeVersion::new(1, 36), true),
            "{doc:?}"
        );
    }
    let f = ClusterFacts::resolve(
        Some(&override_cm(
            "kubernetesVersion: '1.30'\ntuningCni: {networkName: kt}\n",
        )),
        &[&a],
        &[&ta],
    )
    .unwrap();
    assert_eq!(f.kubernetes_version, KubeVersion::new(1, 30));
    assert_eq!(f.tuning_cni.unwrap().network_name, "kt");
    let f = ClusterFacts::resolve(
        Some(&override_cm(
            "nodeGroups: [{name: all, allowedUnsafeSysctls: ['net.*']}]",
        )),
        &[&a],
        &[],
    )
    .unwrap();
    assert!(!f.node_truth(), "node groups override node truth");
    for bad in ["kubernetesVersion: banana", "nodeGroup: []", "[1, 2]"] {
        let e = ClusterFacts::resolve(Some(&override_cm(bad)), &[&a], &[]).unwrap_err();
        assert!(
            e.to_string().contains("kubetune-cluster-facts"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn slim_nodes_keep_what_the_facts_read() {
    let mut n = k8s_node("a", "v1.36.2", json!({LABEL: "allowed"}), true);
    n.spec.as_mut().unwrap().taints = Some(serde_json::from_value(json!([
        {"key": "dedicated", "value": "ingress", "effect": "NoSchedule", "timeAdded": "2026-12-01T00:00:00Z"},
        {"key": "gpu", "effect": "NoExecute"},
        {"key": "spot", "effect": "PreferNoSchedule"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ])).unwrap());
    let before = ClusterFacts::resolve(None, &[&n], &[]).unwrap();
    // The taints that keep pods off the node, without the cordon taint (that is
    // `schedulable`).
    let keys: Vec<(&str, Option<&str>)> = before.nodes[0]
        .taints
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_deref()))
        .collect();
    assert_eq!(keys, [("dedicated", Some("ingress")), ("gpu", None)]);
    kubetune_crds::placement::slim_node(&mut n);
    let after = ClusterFacts::resolve(None, &[&n], &[]).unwrap();
    assert_eq!(before, after);
    let v = serde_json::to_value(&n).unwrap();
    assert!(
        v["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t[0].get("timeAdded").is_none()),
        "{v}"
    );
    assert!(
        v["status"].get("images").is_none() && v["metadata"].get("annotations").is_none(),
        "{v}"
    );
    assert!(v["spec"].get("podCIDR").is_none(), "{v}");
}

#[test]
fn under_a_node_groups_override_the_kubelets_refusals_still_win() {
    let mut f = facts(vec![node("a", "ingress", &[]), node("b", "ingress", &[])]);
    f.node_groups = vec![kubetune_crds::facts::NodeGroup {
        name: "all".into(),
        node_selector: Default::default(),
        allowed_unsafe_sysctls: vec![SOMAXCONN.into()],
    }];
    let anywhere = PodContext::default();
    let d = decide(SOMAXCONN, "4096", Delivery::Auto, &f, &anywhere).unwrap();
    assert_eq!(
        d.node_affinity, None,
        "no refusal yet: the override decides alone"
    );
    f.nodes[1].refused = vec![SOMAXCONN.into()];
    let d = decide(SOMAXCONN, "4096", Delivery::Auto, &f, &anywhere).unwrap();
    let want = NodeRequirement {
        sysctl: SOMAXCONN.into(),
        label_key: None,
        excluded_nodes: vec!["b".into()],
    };
    assert_eq!(d.node_affinity, Some(want));
    assert!(d.message.contains("kept off b"), "{}", d.message);
    let on_b = PodContext {
        placement: placed(json!({"nodeName": "b"})),
        ..Default::default()
    };
    let e = decide(SOMAXCONN, "4096", Delivery::PodSecurityContext, &f, &on_b).unwrap_err();
    assert_eq!(e.reason(), "RefusedUnsafeSysctl");
    assert!(e.to_string().contains("b (its kubelet refused it"), "{e}");
}
