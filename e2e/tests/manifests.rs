//! The deploy manifests render and every object is valid against its schema; the webhook
//! configuration and the agent's privileges are what the design requires.

use kubetune_e2e::manifests::{check_object, parse_multi, render, repo_root};
use serde_json::{json, Value};

fn rendered() -> Vec<Value> {
    render(&repo_root().join("config/default")).expect("kubectl kustomize config/default")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

#[test]
fn default_kustomization_objects_are_schema_valid() {
    let objs = rendered();
    assert!(objs.len() >= 20, "only {} objects", objs.len());
    let problems: Vec<String> = objs.iter().flat_map(check_object).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    for o in &objs {
        let namespaced = !matches!(
            o["kind"].as_str().unwrap(),
            "Namespace"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "MutatingWebhookConfiguration"
                | "ValidatingWebhookConfiguration"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        if namespaced {
            assert_eq!(
                o["metadata"]["namespace"], "kubetune-system",
                "{}",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn checker_rejects_misspelt_fields() {
    let bad = parse_multi(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n",
    )
    .unwrap();
    let p = check_object(&bad[0]);
    assert!(
        p.iter()
            .any(|s| s.contains(".spec.replica (unknown field)")),
        "{p:?}"
    );
    let bad = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy", "metadata": {"name": "x"},
        "spec": {"sysctls": [{"name": "net.core.rmem_max", "value": "1"}]}});
    assert!(check_object(&bad).iter().any(|s| s.contains("node-level")));
    assert!(
        !check_object(&json!({"apiVersion": "v9", "kind": "Nope", "metadata": {"name": "x"}}))
            .is_empty()
    );
}

#[test]
fn mutating_webhook_follows_the_rules() {
    let objs = rendered();
    let m = find(&objs, "MutatingWebhookConfiguration", "kubetune-webhook");
    let w = &m["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert!(w["timeoutSeconds"].as_i64().unwrap() <= 5);
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(w["clientConfig"]["service"]["namespace"], "kubetune-system");
    let expr = &w["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(expr["key"], "kubernetes.io/metadata.name");
    assert_eq!(expr["operator"], "NotIn");
    for ns in ["kube-system", "kube-node-lease", "kubetune-system"] {
        assert!(
            expr["values"].as_array().unwrap().contains(&json!(ns)),
            "{ns} not excluded"
        );
    }
    let conds = w["matchConditions"].to_string();
    assert!(
        conds.contains("kubernetes.io/config.mirror"),
        "mirror pods not skipped"
    );
    let v = find(&objs, "ValidatingWebhookConfiguration", "kubetune-validate");
    assert_eq!(
        v["webhooks"][0]["rules"][0]["resources"],
        json!(["tuningpolicies"])
    );
}

#[test]
fn webhook_is_highly_available_and_agent_least_privileged() {
    let objs = rendered();
    let d = find(&objs, "Deployment", "kubetune-webhook");
    assert!(d["spec"]["replicas"].as_i64().unwrap() >= 2);
    let pdb = find(&objs, "PodDisruptionBudget", "kubetune-webhook");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    let ds = find(&objs, "DaemonSet", "kubetune-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert!(
        spec["hostNetwork"].is_null(),
        "agent must not need hostNetwork"
    );
    let sc = &spec["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in ["BPF", "PERFMON", "SYS_ADMIN"] {
        assert!(caps.contains(&c), "agent lacks {c}");
    }
    // The agent's ClusterRole: pods read-only, reports write, nothing else.
    let role = find(&objs, "ClusterRole", "kubetune-agent");
    for rule in role["rules"].as_array().unwrap() {
        let res = rule["resources"].to_string();
        let verbs = rule["verbs"].to_string();
        if res.contains("pods") || res.contains("tuningpolicies") {
            assert!(
                !verbs.contains("create") && !verbs.contains("patch"),
                "agent may not write {res}"
            );
        } else {
            assert_eq!(
                rule["resources"],
                json!(["listenerreports"]),
                "unexpected agent permission {rule}"
            );
        }
    }
    // The webhook writes nothing.
    for name in ["kubetune-webhook"] {
        for kind in ["ClusterRole", "Role"] {
            let r = find(&objs, kind, name);
            for rule in r["rules"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(
                        ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                        "{kind} {name} has {verb}"
                    );
                }
            }
        }
    }
}

#[test]
fn samples_are_valid_and_cover_every_preset_and_delivery() {
    let dir = repo_root().join("config/samples");
    let mut presets = std::collections::BTreeSet::new();
    let mut deliveries = std::collections::BTreeSet::new();
    let mut modes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        for obj in parse_multi(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            let p = check_object(&obj);
            assert!(p.is_empty(), "{}: {p:?}", path.display());
            let tp: kubetune_crds::TuningPolicy = serde_json::from_value(obj).unwrap();
            if let Some(pr) = tp.spec.preset {
                presets.insert(format!("{pr:?}"));
            }
            deliveries.insert(format!("{:?}", tp.spec.delivery));
            modes.insert(format!("{:?}", tp.spec.mode));
        }
    }
    assert_eq!(
        presets.len(),
        kubetune_crds::sysctl::Preset::ALL.len(),
        "{presets:?}"
    );
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    assert_eq!(modes.len(), 2, "{modes:?}");
}
