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
        } else if rule["resources"] == json!(["nodes"]) {
            // Its own Node's kubetune labels (the admission policy below limits it further).
            assert_eq!(rule["verbs"], json!(["get", "patch"]), "{rule}");
        } else if rule["resources"] == json!(["nodetunings"]) {
            assert_eq!(rule["verbs"], json!(["create", "patch"]), "{rule}");
        } else {
            assert_eq!(
                rule["resources"],
                json!(["listenerreports"]),
                "unexpected agent permission {rule}"
            );
        }
    }
    // The agent's writes to Nodes and NodeTunings are limited to its own node, and on the Node
    // to kubetune's label keys.
    let vap = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "kubetune-agent-node-truth",
    );
    let rules = vap["spec"]["matchConstraints"]["resourceRules"].to_string();
    assert!(
        rules.contains("\"nodes\"") && rules.contains("\"nodetunings\""),
        "{rules}"
    );
    let checks = vap["spec"]["validations"].to_string();
    for must in [
        "authentication.kubernetes.io/node-name",
        "sysctl.kubetune.dev/",
        "object.spec == oldObject.spec",
    ] {
        assert!(
            checks.contains(must) || vap["spec"]["variables"].to_string().contains(must),
            "the node-truth policy does not check {must}"
        );
    }
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "kubetune-agent-node-truth",
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The heartbeat: a namespaced Role (create/patch of Leases), each agent limited to the Lease
    // of its own node by admission.
    let hb = find(&objs, "Role", "kubetune-agent-heartbeat");
    assert_eq!(hb["metadata"]["namespace"], OWN_NAMESPACE);
    assert_eq!(
        hb["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "patch"]}])
    );
    let vap = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "kubetune-agent-own-lease",
    );
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    let rule = &vap["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["resources"], json!(["leases"]));
    assert!(
        rule["operations"].to_string().contains("CREATE")
            && rule["operations"].to_string().contains("UPDATE")
    );
    let check = vap["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        check.contains("request.name == 'kubetune-agent-' + request.userInfo.extra['authentication.kubernetes.io/node-name'][0]"),
        "{check}"
    );
    assert_eq!(
        kubetune_crds::heartbeat::lease_name("n"),
        "kubetune-agent-n",
        "the admission policy spells the lease name rule of kubetune_crds::heartbeat"
    );
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "kubetune-agent-own-lease",
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The webhook writes nothing and reads through its reflectors only (webhook/src/cache.rs:
    // list + watch).
    for name in ["kubetune-webhook"] {
        for kind in ["ClusterRole", "Role"] {
            let r = find(&objs, kind, name);
            for rule in r["rules"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(
                        ["list", "watch"].contains(&verb.as_str().unwrap()),
                        "{kind} {name} has {verb}"
                    );
                }
            }
        }
    }
}

/// `restartPods: Rollout`: the operator may watch and patch Deployments, StatefulSets and
/// DaemonSets and get ReplicaSets, nothing more on apps/* (never delete, never pods).
#[test]
fn operator_may_restart_workloads_but_not_delete_anything_of_them() {
    let objs = rendered();
    let role = find(&objs, "ClusterRole", "kubetune-operator");
    let mut apps: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let strings = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        if strings("apiGroups").contains(&"apps".to_string()) {
            apps.push((strings("resources"), strings("verbs")));
        }
        if strings("resources").iter().any(|r| r == "pods") {
            assert!(
                strings("verbs").iter().all(|v| v == "list" || v == "watch"),
                "operator may only list/watch pods: {rule}"
            );
        }
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        apps,
        vec![
            (
                s(&["deployments", "statefulsets", "daemonsets"]),
                s(&["list", "watch", "patch"])
            ),
            (s(&["replicasets"]), s(&["get"])),
        ]
    );
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

/// `GET path` over plain HTTP/1.0 on loopback: the status code.
fn http_get(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            return out
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A container port given by name or number, as its number.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("port is a name or a number");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"]))
        as u16
}

/// Every kubetune container as deployed: the binary is one the image installs, its arguments
/// parse with that binary's real command line (every `$(VAR)` defined), and every port and
/// path the cluster will use — probes, the Service, both webhook configurations, the TLS
/// Secret mount — is served by that binary on that port. Catches the manifest/binary drift that
/// would otherwise first show up as a CrashLoopBackOff or a webhook timing out.
#[tokio::test]
async fn deployments_are_wired_to_what_the_binaries_serve() {
    use clap::Parser;
    let objs = rendered();
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY --from=build /out/ /usr/local/bin/"));
    let webhook = kubetune_e2e::webhook_local::LocalWebhook::start(
        kubetune_webhook::admission::Snapshot::default(),
    )
    .await
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for w in objs
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
    {
        let pod = &w["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().unwrap() {
            let command: Vec<&str> = c["command"]
                .as_array()
                .expect("command set")
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let bin = command[0]
                .strip_prefix("/usr/local/bin/")
                .unwrap_or_else(|| panic!("{} is not in /usr/local/bin", command[0]));
            assert!(
                dockerfile.contains(&format!("target/release/{bin}")),
                "the image does not install {bin}"
            );
            let env: Vec<&str> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap())
                .collect();
            let mut argv = vec![bin.to_string()];
            for a in command[1..].iter().copied().chain(
                c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().unwrap()),
            ) {
                let mut a = a.to_string();
                while let Some(start) = a.find("$(") {
                    let end = start + a[start..].find(')').expect("closed $(");
                    let var = &a[start + 2..end];
                    assert!(
                        env.contains(&var),
                        "{bin}: $({var}) is not defined in the container env (the kubelet would pass it literally)"
                    );
                    a.replace_range(start..=end, "kubetune-system");
                }
                argv.push(a);
            }
            // Parse with the binary's own CLI; the port it will listen on.
            let listen_port = match bin {
                "kubetune-agent" => {
                    let cli = kubetune_agent::cli::Cli::try_parse_from(&argv)
                        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                    match cli.cmd {
                        kubetune_agent::cli::Cmd::Run { metrics, .. } => metrics.port(),
                        _ => panic!("the DaemonSet must run `kubetune-agent run`"),
                    }
                }
                "kubetune-operator" => kubetune_operator::cli::Args::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
                    .metrics
                    .port(),
                "kubetune-webhook" => {
                    let a = kubetune_webhook::cli::Args::try_parse_from(&argv)
                        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                    // The serving certificate comes from the Secret the operator maintains,
                    // under the file names it writes.
                    let mount = c["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|m| {
                            std::path::Path::new(m["mountPath"].as_str().unwrap())
                                == a.tls_cert.parent().unwrap()
                        })
                        .expect("the certificate directory is mounted");
                    let vol = pod["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|v| v["name"] == mount["name"])
                        .unwrap();
                    assert_eq!(
                        vol["secret"]["secretName"],
                        kubetune_operator::certs::SECRET_NAME
                    );
                    assert_eq!(a.tls_cert.file_name().unwrap(), "tls.crt");
                    assert_eq!(a.tls_key.parent(), a.tls_cert.parent());
                    assert_eq!(a.tls_key.file_name().unwrap(), "tls.key");
                    assert_eq!(a.namespace, "kubetune-system");
                    a.listen.port()
                }
                other => panic!("unknown binary {other}"),
            };
            assert!(
                c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["containerPort"].as_u64() == Some(listen_port as u64)),
                "{bin} listens on {listen_port}, which the container does not declare"
            );
            // Start the binary's real endpoint on loopback and ask it for every probe path.
            let local_port = match bin {
                "kubetune-agent" => {
                    let port = free_port();
                    kubetune_agent::metrics::serve(
                        ([127, 0, 0, 1], port).into(),
                        Default::default(),
                    )
                    .unwrap();
                    Some(port)
                }
                "kubetune-operator" => {
                    let port = free_port();
                    let m = std::sync::Arc::new(kubetune_operator::metrics::Metrics::default());
                    tokio::spawn(kubetune_operator::metrics::serve(
                        ([127, 0, 0, 1], port).into(),
                        m,
                    ));
                    Some(port)
                }
                _ => None, // the webhook: over HTTPS, below
            };
            for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe = &c[kind]["httpGet"];
                if probe.is_null() {
                    continue;
                }
                assert_eq!(
                    resolve_port(c, &probe["port"]),
                    listen_port,
                    "{bin} {kind} port"
                );
                let path = probe["path"].as_str().unwrap();
                let code = match local_port {
                    Some(port) => {
                        assert_ne!(probe["scheme"], "HTTPS", "{bin} serves plain HTTP");
                        let owned = path.to_string();
                        tokio::task::spawn_blocking(move || http_get(port, &owned))
                            .await
                            .unwrap()
                    }
                    None => {
                        assert_eq!(probe["scheme"], "HTTPS", "the webhook serves HTTPS only");
                        webhook.request(path, None).await.unwrap().0
                    }
                };
                assert_eq!(code, 200, "{bin} {kind} GET {path}");
                seen.insert(format!("{bin} {kind}"));
            }
            if bin == "kubetune-webhook" {
                // Service -> container port -> webhook configurations -> served paths.
                let svc = find(&objs, "Service", kubetune_operator::certs::SERVICE_NAME);
                assert_eq!(
                    svc["spec"]["selector"],
                    w["spec"]["selector"]["matchLabels"]
                );
                let sp = &svc["spec"]["ports"][0];
                assert_eq!(resolve_port(c, &sp["targetPort"]), listen_port);
                for (kind, name) in [
                    (
                        "MutatingWebhookConfiguration",
                        kubetune_operator::certs::MUTATING_NAME,
                    ),
                    (
                        "ValidatingWebhookConfiguration",
                        kubetune_operator::certs::VALIDATING_NAME,
                    ),
                ] {
                    for hook in find(&objs, kind, name)["webhooks"].as_array().unwrap() {
                        let cc = &hook["clientConfig"]["service"];
                        assert_eq!(cc["name"], svc["metadata"]["name"]);
                        assert_eq!(cc["namespace"], svc["metadata"]["namespace"]);
                        assert_eq!(cc["port"], sp["port"]);
                        let path = cc["path"].as_str().unwrap();
                        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "request": {"uid": "wiring", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                "resource": {"group": "", "version": "v1", "resource": "pods"},
                                "namespace": "default", "operation": "CREATE", "userInfo": {"username": "t"},
                                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}}});
                        let (code, body) = webhook
                            .request(path, Some(review.to_string().into_bytes()))
                            .await
                            .unwrap();
                        assert_eq!(code, 200, "POST {path}");
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(v["response"]["uid"], "wiring", "{path}: {v}");
                        seen.insert(format!("{kind} {path}"));
                    }
                }
            }
            seen.insert(bin.to_string());
        }
    }
    for must in [
        "kubetune-agent",
        "kubetune-operator",
        "kubetune-webhook",
        "kubetune-webhook readinessProbe",
        "kubetune-webhook livenessProbe",
        "kubetune-operator livenessProbe",
        "MutatingWebhookConfiguration /mutate",
        "ValidatingWebhookConfiguration /validate",
    ] {
        assert!(
            seen.contains(must),
            "not checked: {must} (checked: {seen:?})"
        );
    }
}

/// Where a component calls the API, and on what. The verbs are not in this table: they are read
/// from the code at each call site (see [`verbs_at`]).
struct Uses {
    component: &'static str,
    /// Source file, from the repository root.
    file: &'static str,
    /// A line that must exist and that names the resource (the `Api` it is built from).
    anchor: &'static str,
    /// The call sites: for each, the first line at or after the anchor containing it (else the
    /// first in the file, for wrappers defined earlier).
    sites: &'static [&'static str],
    group: &'static str,
    /// Resource, with `/status` for the subresource.
    resource: &'static str,
    /// Cluster-wide (`Api::all`) or in the component's own namespace.
    cluster: bool,
    /// The object's name when the code fixes it (resourceNames may restrict to it).
    name: Option<&'static str>,
}

const OWN_NAMESPACE: &str = "kubetune-system";

/// Every kube API call site of the agent, operator and webhook. [`api_calls_are_all_in_the_table`]
/// fails when the code has a call this table does not list.
const USES: &[Uses] = &[
    // restartPods: Rollout (operator/src/restarts.rs)
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "pub fn events<K>(",
        sites: &["watcher(api, watcher::Config::default())"],
        group: "apps",
        resource: "deployments",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<Deployment> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "deployments",
        cluster: true,
        name: None,
    },
    // restartPods: Rollout (operator/src/restarts.rs)
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "pub fn events<K>(",
        sites: &["watcher(api, watcher::Config::default())"],
        group: "apps",
        resource: "statefulsets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<StatefulSet> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "statefulsets",
        cluster: true,
        name: None,
    },
    // restartPods: Rollout (operator/src/restarts.rs)
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "pub fn events<K>(",
        sites: &["watcher(api, watcher::Config::default())"],
        group: "apps",
        resource: "daemonsets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<DaemonSet> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "daemonsets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);",
        sites: &[".get_opt(name)"],
        group: "apps",
        resource: "replicasets",
        cluster: true,
        name: None,
    },
    // agent
    Uses {
        component: "agent",
        file: "agent/src/cluster.rs",
        anchor: "let pods: Api<Pod> = Api::all(client.clone());",
        sites: &["watcher(pods, wc)"],
        group: "",
        resource: "pods",
        cluster: true,
        name: None,
    },
    Uses {
        component: "agent",
        file: "agent/src/cluster.rs",
        anchor: "let api: Api<ListenerReport> = Api::namespaced(",
        sites: &[".patch("],
        group: "kubetune.dev",
        resource: "listenerreports",
        cluster: true,
        name: None,
    },
    Uses {
        component: "agent",
        file: "agent/src/heartbeat.rs",
        anchor: "let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);",
        sites: &["api.patch(&name, &pp, &Patch::Apply(&body))"],
        group: "coordination.k8s.io",
        resource: "leases",
        cluster: false,
        name: None,
    },
    Uses {
        component: "agent",
        file: "agent/src/nodepublish.rs",
        anchor: "let nodes: Api<Node> = Api::all(client.clone());",
        sites: &[".patch(name, &pp, &Patch::Apply(&labels_apply_body(name, spec)))"],
        group: "",
        resource: "nodes",
        cluster: true,
        name: None,
    },
    Uses {
        component: "agent",
        file: "agent/src/nodepublish.rs",
        anchor: "let node = Api::<Node>::all(client.clone()).get(node_name)",
        sites: &[".get(node_name)"],
        group: "",
        resource: "nodes",
        cluster: true,
        name: None,
    },
    Uses {
        component: "agent",
        file: "agent/src/nodepublish.rs",
        anchor: "let nts: Api<NodeTuning> = Api::all(client.clone());",
        sites: &["nts.patch("],
        group: "kubetune.dev",
        resource: "nodetunings",
        cluster: true,
        name: None,
    },
    // operator
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "watcher(Api::<TuningPolicy>::all(client.clone()), wc.clone())",
        sites: &["watcher(Api::<TuningPolicy>::all("],
        group: "kubetune.dev",
        resource: "tuningpolicies",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "apply_status::<TuningPolicy>(",
        sites: &[".patch_status("],
        group: "kubetune.dev",
        resource: "tuningpolicies/status",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "watcher(Api::<Pod>::all(client.clone()), wc.clone())",
        sites: &["watcher(Api::<Pod>::all("],
        group: "",
        resource: "pods",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "watcher(Api::<ListenerReport>::all(client.clone()), wc.clone())",
        sites: &["watcher(Api::<ListenerReport>::all("],
        group: "kubetune.dev",
        resource: "listenerreports",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "apply_status::<ListenerReport>(",
        sites: &[".patch_status("],
        group: "kubetune.dev",
        resource: "listenerreports/status",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "watcher(Api::<Namespace>::all(client.clone()), wc)",
        sites: &["watcher(Api::<Namespace>::all("],
        group: "",
        resource: "namespaces",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/triggers.rs",
        anchor: "let cm_api = Api::<ConfigMap>::namespaced(client.clone(), namespace);",
        sites: &["watcher(cm_api"],
        group: "",
        resource: "configmaps",
        cluster: false,
        name: Some("kubetune-cluster-facts"),
    },
    // Node truth for the cluster facts.
    Uses {
        component: "operator",
        file: "operator/src/triggers.rs",
        anchor: "let node_api = Api::<Node>::all(client.clone());",
        sites: &["watcher(node_api"],
        group: "",
        resource: "nodes",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/triggers.rs",
        anchor: "let tuning_api = Api::<NodeTuning>::all(client);",
        sites: &["watcher(tuning_api"],
        group: "kubetune.dev",
        resource: "nodetunings",
        cluster: true,
        name: None,
    },
    // SysctlForbidden guard: read the node's NodeTuning, apply its status.
    Uses {
        component: "operator",
        file: "operator/src/guard.rs",
        anchor: "let api: Api<NodeTuning> = Api::all(ctx.client.clone());",
        sites: &["api.get_opt("],
        group: "kubetune.dev",
        resource: "nodetunings",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/guard.rs",
        anchor: "let api: Api<NodeTuning> = Api::all(ctx.client.clone());",
        sites: &["api.patch_status("],
        group: "kubetune.dev",
        resource: "nodetunings/status",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/nad.rs",
        anchor: "Api::namespaced_with(client.clone(), namespace, &nad_api_resource())",
        sites: &["api.get_opt(", "api.delete(", "api.patch("],
        group: "k8s.cni.cncf.io",
        resource: "network-attachment-definitions",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/context.rs",
        anchor: "Recorder::new(client.clone(), reporter)",
        sites: &["Recorder::new("],
        group: "events.k8s.io",
        resource: "events",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/certs.rs",
        anchor: "let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);",
        sites: &[
            "secrets.get_opt(SECRET_NAME)",
            ".patch(SECRET_NAME",
            "secrets.create(",
        ],
        group: "",
        resource: "secrets",
        cluster: false,
        name: Some("kubetune-webhook-tls"),
    },
    Uses {
        component: "operator",
        file: "operator/src/certs.rs",
        anchor: "let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());",
        sites: &["api.get_opt(name)", "api.patch("],
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        cluster: true,
        name: Some("kubetune-webhook"),
    },
    Uses {
        component: "operator",
        file: "operator/src/certs.rs",
        anchor: "let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());",
        sites: &["api.get_opt(name)", "api.patch("],
        group: "admissionregistration.k8s.io",
        resource: "validatingwebhookconfigurations",
        cluster: true,
        name: Some("kubetune-validate"),
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);",
        sites: &[".get_opt(name)"],
        group: "apps",
        resource: "replicasets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<Deployment> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "deployments",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<StatefulSet> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "statefulsets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/restarts.rs",
        anchor: "let api: Api<DaemonSet> = Api::namespaced(client.clone(), &id.namespace);",
        sites: &["api.patch(&id.name, &pp, &patch)"],
        group: "apps",
        resource: "daemonsets",
        cluster: true,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/controller.rs",
        anchor: "let lease_api: Api<Lease> = Api::namespaced(client.clone(), &namespace);",
        sites: &["watcher(lease_api, lease_cfg)"],
        group: "coordination.k8s.io",
        resource: "leases",
        cluster: false,
        name: None,
    },
    Uses {
        component: "operator",
        file: "operator/src/leader.rs",
        anchor: "let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)",
        sites: &["LeaseManagerBuilder::new("],
        group: "coordination.k8s.io",
        resource: "leases",
        cluster: false,
        name: Some("kubetune-operator"),
    },
    // webhook (reflectors through spawn_reflector)
    Uses {
        component: "webhook",
        file: "webhook/src/cache.rs",
        anchor: "Api::<TuningPolicy>::all(client.clone()),",
        sites: &["watcher(api, cfg)"],
        group: "kubetune.dev",
        resource: "tuningpolicies",
        cluster: true,
        name: None,
    },
    Uses {
        component: "webhook",
        file: "webhook/src/cache.rs",
        anchor: "Api::<Namespace>::all(client.clone()),",
        sites: &["watcher(api, cfg)"],
        group: "",
        resource: "namespaces",
        cluster: true,
        name: None,
    },
    Uses {
        component: "webhook",
        file: "webhook/src/cache.rs",
        anchor: "Api::<ConfigMap>::namespaced(client.clone(), own_namespace),",
        sites: &["watcher(api, cfg)"],
        group: "",
        resource: "configmaps",
        cluster: false,
        name: Some("kubetune-cluster-facts"),
    },
    // Node truth: the Nodes (labels, cordons, kubelet versions) and their NodeTunings.
    Uses {
        component: "webhook",
        file: "webhook/src/cache.rs",
        anchor: "Api::<Node>::all(client.clone()),",
        sites: &["watcher(api, cfg)"],
        group: "",
        resource: "nodes",
        cluster: true,
        name: None,
    },
    Uses {
        component: "webhook",
        file: "webhook/src/cache.rs",
        anchor: "Api::<NodeTuning>::all(client),",
        sites: &["watcher(api, cfg)"],
        group: "kubetune.dev",
        resource: "nodetunings",
        cluster: true,
        name: None,
    },
];

/// Substrings that mark a kube API call (lines outside `#[cfg(test)]` modules). `Api::get` is
/// spelt `get_opt` in this code base; a bare `.get(` is too common to mark.
const CALL_MARKERS: &[&str] = &[
    "watcher(",
    "LeaseManagerBuilder::new(",
    ".patch(",
    ".patch_status(",
    ".create(",
    ".delete(",
    ".get_opt(",
    "Recorder::new(",
    ".replace(&",
    ".list(&",
    ".watch(&",
    ".get_status(",
    ".delete_collection(",
    ".evict(",
];

/// The non-test lines of a source file.
fn code_lines(file: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().map(str::to_string).collect()
}

/// Line index of each of `u`'s call sites (panics when the anchor or a site is missing).
fn site_lines(u: &Uses, lines: &[String]) -> Vec<usize> {
    let anchor = lines
        .iter()
        .position(|l| l.contains(u.anchor))
        .unwrap_or_else(|| panic!("{}: anchor not found: {}", u.file, u.anchor));
    u.sites
        .iter()
        .map(|s| {
            let after = lines[anchor..]
                .iter()
                .position(|l| l.contains(s))
                .map(|i| i + anchor);
            after
                .or_else(|| lines.iter().position(|l| l.contains(s)))
                .unwrap_or_else(|| panic!("{}: call site not found: {s}", u.file))
        })
        .collect()
}

/// The verbs the call at `lines[i]` needs, read from the code: a watcher lists and watches;
/// server-side apply (`PatchParams::apply` in the call) creates when the object is missing, so it
/// needs create and patch — except where it cannot create (`cannot_create`: a subresource, an
/// object that always exists); the event recorder
/// creates events and patches them when they repeat.
fn verbs_at(lines: &[String], i: usize, cannot_create: bool) -> Vec<&'static str> {
    let l = &lines[i];
    let call = lines[i..lines.len().min(i + 5)].join("\n");
    let apply = call.contains("Patch::Apply(");
    if l.contains("watcher(") {
        vec!["list", "watch"]
    } else if l.contains("Recorder::new(") {
        vec!["create", "patch"]
    } else if l.contains("LeaseManagerBuilder::new(") {
        // kube-lease-manager reads and patches its Lease; it creates it unless told to use an
        // existing one.
        match call.contains("LeaseCreateMode::UseExistent") {
            true => vec!["get", "patch"],
            false => vec!["get", "create", "patch"],
        }
    } else if l.contains(".patch(") || l.contains(".patch_status(") {
        if apply && !cannot_create {
            vec!["create", "patch"]
        } else {
            vec!["patch"]
        }
    } else if l.contains(".create(") {
        vec!["create"]
    } else if l.contains(".delete(") {
        vec!["delete"]
    } else if l.contains(".get_opt(") || l.contains(".get_status(") || l.contains(".get(") {
        vec!["get"]
    } else {
        panic!("no verb rule for: {l}")
    }
}

/// Objects a component applies that always exist, so its apply only patches: the agent's own
/// Node (and the admission policy kubetune-agent-node-truth refuses a CREATE of a Node by it).
const APPLY_NEVER_CREATES: &[(&str, &str)] = &[("agent", "nodes")];

/// One verb a call site needs, on what.
struct Need {
    call: &'static Uses,
    verb: &'static str,
}

/// What each component needs, call site by call site.
fn needed() -> Vec<Need> {
    let mut out = Vec::new();
    for u in USES {
        let lines = code_lines(u.file);
        for i in site_lines(u, &lines) {
            let cannot_create = u.resource.contains('/')
                || APPLY_NEVER_CREATES.contains(&(u.component, u.resource));
            for verb in verbs_at(&lines, i, cannot_create) {
                out.push(Need { call: u, verb });
            }
        }
    }
    out
}

/// The rules bound to `kubetune-<component>`'s service account: (cluster-wide?, rule).
fn bound_rules(objs: &[Value], component: &str) -> Vec<(bool, Value)> {
    let sa = format!("kubetune-{component}");
    let mut out = Vec::new();
    for b in objs.iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some("ClusterRoleBinding" | "RoleBinding")
        )
    }) {
        let ours = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == sa.as_str()
                && s["namespace"] == OWN_NAMESPACE
        });
        if !ours {
            continue;
        }
        let cluster_binding = b["kind"] == "ClusterRoleBinding";
        let role = find(
            objs,
            b["roleRef"]["kind"].as_str().unwrap(),
            b["roleRef"]["name"].as_str().unwrap(),
        );
        if !cluster_binding {
            assert_eq!(
                b["metadata"]["namespace"], OWN_NAMESPACE,
                "{}",
                b["metadata"]["name"]
            );
        }
        for r in role["rules"].as_array().into_iter().flatten() {
            out.push((cluster_binding, r.clone()));
        }
    }
    out
}

fn list_has(v: &Value, x: &str) -> bool {
    v.as_array()
        .into_iter()
        .flatten()
        .any(|e| e == x || e == "*")
}

/// RBAC's rule match for one request.
fn rule_allows(rule: &Value, group: &str, resource: &str, name: Option<&str>, verb: &str) -> bool {
    let names = rule["resourceNames"].as_array().map(Vec::len).unwrap_or(0);
    list_has(&rule["apiGroups"], group)
        && list_has(&rule["resources"], resource)
        && list_has(&rule["verbs"], verb)
        && (names == 0 || name.is_some_and(|n| list_has(&rule["resourceNames"], n)))
}

/// Every verb each component's calls need is granted to its service account: a cluster-wide call
/// by a ClusterRoleBinding, a call in its own namespace by either binding.
#[test]
fn rbac_grants_every_verb_the_code_needs() {
    let objs = rendered();
    let mut missing = Vec::new();
    for Need { call: u, verb } in needed() {
        let (c, group, resource, cluster, name) =
            (u.component, u.group, u.resource, u.cluster, u.name);
        let ok = bound_rules(&objs, c)
            .iter()
            .any(|(cb, r)| (*cb || !cluster) && rule_allows(r, group, resource, name, verb));
        if !ok {
            missing.push(format!(
                "{c}: {verb} {group}/{resource} {name:?} (cluster-wide: {cluster})"
            ));
        }
    }
    assert!(missing.is_empty(), "RBAC lacks: {missing:#?}");
}

/// Grants made ahead of the code that will use them: (component, group, resource, why). Each
/// must still be unused ([`rbac_grants_nothing_unused`] fails once the code calls it, so the
/// entry moves to [`USES`]).
const GRANTED_AHEAD: &[(&str, &str, &str, &str, &str)] = &[];

/// The agent and the operator hold nothing their code does not use.
#[test]
fn rbac_grants_nothing_unused() {
    let objs = rendered();
    let need = needed();
    for c in ["agent", "operator"] {
        for (_, r) in bound_rules(&objs, c) {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        let (g, res, v) = (
                            g.as_str().unwrap(),
                            res.as_str().unwrap(),
                            v.as_str().unwrap(),
                        );
                        let used = need.iter().any(|n| {
                            n.call.component == c
                                && n.call.group == g
                                && n.call.resource == res
                                && n.verb == v
                        });
                        let ahead = GRANTED_AHEAD.iter().any(|a| {
                            a.0 == c && a.1 == g && a.2 == res && a.3.split(' ').any(|x| x == v)
                        });
                        assert!(
                            !(used && ahead),
                            "{c} now needs {v} on {g}/{res}: remove it from GRANTED_AHEAD"
                        );
                        assert!(
                            ahead
                                || need.iter().any(|n| n.call.component == c
                                    && n.call.group == g
                                    && n.call.resource == res
                                    && n.verb == v),
                            "{c} is granted {v} on {g}/{res}, which its code never needs"
                        );
                    }
                }
            }
        }
    }
}

/// The table is the code: every API call site in the components' sources is listed in [`USES`].
#[test]
fn api_calls_are_all_in_the_table() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["agent/src", "operator/src", "webhook/src"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                files.push(format!(
                    "{dir}/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    let mut unlisted = Vec::new();
    for f in &files {
        let lines = code_lines(f);
        let listed: Vec<usize> = USES
            .iter()
            .filter(|u| u.file == f)
            .flat_map(|u| site_lines(u, &lines))
            .collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if t.starts_with("//") || !CALL_MARKERS.iter().any(|m| l.contains(m)) {
                continue;
            }
            if !listed.contains(&i) {
                unlisted.push(format!("{f}:{}: {}", i + 1, t));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "API calls missing from USES: {unlisted:#?}"
    );
}

/// The rule the verbs test stands on: apply on an object needs create and patch.
#[test]
fn apply_needs_create_and_patch() {
    let code: Vec<String> = [
        "api.patch(",
        "    &name,",
        "    &PatchParams::apply(\"m\").force(),",
        "    &Patch::Apply(&body),",
        ")",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(verbs_at(&code, 0, false), ["create", "patch"]);
    assert_eq!(verbs_at(&code, 0, true), ["patch"]);
    let merge: Vec<String> = ["api.patch(n, &PatchParams::default(), &Patch::Merge(&p))"]
        .map(String::from)
        .to_vec();
    assert_eq!(verbs_at(&merge, 0, false), ["patch"]);
}

/// `command[1..] + args` of a container, `$(VAR)`s replaced by a placeholder value.
fn container_argv(c: &Value) -> Vec<String> {
    let bin = c["command"][0].as_str().unwrap();
    let bin = bin.rsplit('/').next().unwrap().to_string();
    let rest = c["command"].as_array().unwrap()[1..]
        .iter()
        .chain(c["args"].as_array().into_iter().flatten())
        .map(|a| {
            let mut a = a.as_str().unwrap().to_string();
            while let Some(start) = a.find("$(") {
                let end = start + a[start..].find(')').unwrap();
                a.replace_range(start..=end, "kubetune-system");
            }
            a
        });
    std::iter::once(bin).chain(rest).collect()
}

/// The log format each kubetune container of `objs` runs with, parsed by the binary's CLI.
fn log_formats(objs: &[Value]) -> Vec<(String, kubetune_logging::LogFormat)> {
    use clap::Parser;
    let mut out = Vec::new();
    for w in objs
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
    {
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let argv = container_argv(c);
            let format = match argv[0].as_str() {
                "kubetune-agent" => {
                    kubetune_agent::cli::Cli::try_parse_from(&argv).map(|a| a.log.log_format)
                }
                "kubetune-operator" => {
                    kubetune_operator::cli::Args::try_parse_from(&argv).map(|a| a.log.log_format)
                }
                "kubetune-webhook" => {
                    kubetune_webhook::cli::Args::try_parse_from(&argv).map(|a| a.log.log_format)
                }
                other => panic!("unknown binary {other}"),
            }
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            out.push((argv[0].clone(), format));
        }
    }
    out
}

/// The shipped manifests make every component log JSON lines (for log collectors).
#[test]
fn every_component_logs_json_lines() {
    let formats = log_formats(&rendered());
    let bins: std::collections::BTreeSet<&str> = formats.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        bins,
        ["kubetune-agent", "kubetune-operator", "kubetune-webhook"].into()
    );
    for (bin, f) in &formats {
        assert_eq!(*f, kubetune_logging::LogFormat::Json, "{bin}");
    }
}

const WRITE_VERBS: &[&str] = &[
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "*",
];

/// Verbs the ClusterRoles aggregated into a built-in user-facing role grant on a kubetune
/// resource. `view` flows into `edit` and `edit` into `admin`, as the built-in roles do.
fn aggregated_verbs(objs: &[Value], user_role: &str, resource: &str) -> Vec<String> {
    let labels: &[&str] = match user_role {
        "view" => &["view"],
        "edit" => &["view", "edit"],
        "admin" => &["view", "edit", "admin"],
        _ => unreachable!(),
    };
    objs.iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .filter(|o| {
            labels.iter().any(|l| {
                o["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{l}")]
                    == "true"
            })
        })
        .flat_map(|o| o["rules"].as_array().unwrap())
        .filter(|r| r["apiGroups"] == json!(["kubetune.dev"]))
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == resource)
        })
        .flat_map(|r| r["verbs"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Namespace admins and editors manage TuningPolicies, viewers read policies and reports, and
/// no user-facing role may write a ListenerReport (or its status).
#[test]
fn user_facing_roles_manage_policies_and_only_read_reports() {
    let objs = rendered();
    for role in ["admin", "edit"] {
        let v = aggregated_verbs(&objs, role, "tuningpolicies");
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            assert!(
                v.iter().any(|x| x == verb),
                "{role} cannot {verb} policies: {v:?}"
            );
        }
    }
    for role in ["view", "edit", "admin"] {
        for res in ["tuningpolicies", "listenerreports", "tuningpolicies/status"] {
            let v = aggregated_verbs(&objs, role, res);
            for verb in ["get", "list", "watch"] {
                assert!(v.iter().any(|x| x == verb), "{role} cannot {verb} {res}");
            }
        }
        for res in [
            "listenerreports",
            "listenerreports/status",
            "tuningpolicies/status",
        ] {
            let v = aggregated_verbs(&objs, role, res);
            assert!(
                !v.iter().any(|x| WRITE_VERBS.contains(&x.as_str())),
                "{role} may write {res}: {v:?}"
            );
        }
    }
    let view = aggregated_verbs(&objs, "view", "tuningpolicies");
    assert!(
        !view.iter().any(|x| WRITE_VERBS.contains(&x.as_str())),
        "view may write policies: {view:?}"
    );
}

/// The ValidatingAdmissionPolicy that keeps ListenerReports the agent's: it is bound with Deny,
/// fails closed, sees every write of reports and their status, and names exactly the
/// ServiceAccounts that RBAC lets write them (agent: reports; operator: status).
#[test]
fn only_the_agent_writes_listener_reports() {
    let objs = rendered();
    let vap = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "kubetune-listenerreport-writers",
    );
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "kubetune-listenerreport-writers",
    );
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    assert!(
        vap["spec"]["matchConditions"].is_null(),
        "every writer is checked"
    );
    let rule = &vap["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["apiGroups"], json!(["kubetune.dev"]));
    assert_eq!(rule["operations"], json!(["CREATE", "UPDATE", "DELETE"]));
    assert_eq!(
        rule["resources"],
        json!(["listenerreports", "listenerreports/status"])
    );
    let expr = vap["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap();
    let sa = |name: &str| {
        let s = find(&objs, "ServiceAccount", name);
        format!(
            "'system:serviceaccount:{}:{}'",
            s["metadata"]["namespace"].as_str().unwrap(),
            name
        )
    };
    // The status branch names the operator, the other one the agent.
    let (status, rest) = expr.split_once(" ? ").unwrap();
    assert!(status.contains("request.subResource == 'status'"), "{expr}");
    let (operator_branch, agent_branch) = rest.split_once(" : ").unwrap();
    assert!(operator_branch.contains(&sa("kubetune-operator")), "{expr}");
    assert!(agent_branch.contains(&sa("kubetune-agent")), "{expr}");
    assert!(agent_branch.contains("variables.cleanup"), "{expr}");
    let cleanup = &vap["spec"]["variables"][1];
    assert_eq!(cleanup["name"], "cleanup");
    let cleanup = cleanup["expression"].as_str().unwrap();
    assert!(
        cleanup.starts_with("request.operation == 'DELETE' &&"),
        "{cleanup}"
    );
    assert!(cleanup.contains("generic-garbage-collector"));

    // RBAC agrees: of kubetune's ServiceAccounts only the agent may write reports and only
    // the operator their status.
    for role in objs.iter().filter(|o| o["kind"] == "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap();
        for r in role["rules"].as_array().unwrap() {
            let writes = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| WRITE_VERBS.contains(&v.as_str().unwrap()));
            for res in r["resources"].as_array().into_iter().flatten() {
                let allowed = match res.as_str().unwrap() {
                    "listenerreports" => "kubetune-agent",
                    "listenerreports/status" => "kubetune-operator",
                    _ => continue,
                };
                assert!(!writes || name == allowed, "{name} may write {res}");
            }
        }
    }
}

/// `config/cert-manager` (kubectl kustomize): cert-manager's Certificate writes the Secret the
/// webhook mounts, for the webhook Service's DNS names, with a CA the injector puts into both
/// webhook configurations; the operator runs with its own certificate loop off; everything
/// else is `config/default` unchanged.
#[test]
fn cert_manager_overlay_fits_the_webhook() {
    use clap::Parser;
    let objs = render(&repo_root().join("config/cert-manager")).expect("kubectl kustomize");
    let base = rendered();
    let cert = find(&objs, "Certificate", "kubetune-webhook");
    let ns = cert["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(ns, "kubetune-system");
    assert_eq!(
        cert["spec"]["secretName"],
        kubetune_operator::certs::SECRET_NAME
    );
    let dns: Vec<String> = serde_json::from_value(cert["spec"]["dnsNames"].clone()).unwrap();
    assert_eq!(dns, kubetune_operator::certs::service_dns_names(ns));
    assert!(dns
        .iter()
        .any(|d| d == kubetune_e2e::webhook_local::SERVER_NAME));
    // The webhook mounts that Secret.
    let webhook = find(&objs, "Deployment", "kubetune-webhook");
    let vols = webhook["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(vols
        .iter()
        .any(|v| v["secret"]["secretName"] == kubetune_operator::certs::SECRET_NAME));
    // Issuer chain: the leaf's issuer is a CA Issuer whose secret a CA Certificate fills.
    let issuer = find(
        &objs,
        "Issuer",
        cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
    let ca_secret = issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca = objs
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == ca_secret)
        .expect("a Certificate fills the CA Issuer's secret");
    assert_eq!(ca["spec"]["isCA"], true);
    let root = find(
        &objs,
        "Issuer",
        ca["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(root["spec"]["selfSigned"].is_object());
    for o in objs
        .iter()
        .filter(|o| o["kind"] == "Issuer" || o["kind"] == "Certificate")
    {
        assert_eq!(o["apiVersion"], "cert-manager.io/v1");
        assert_eq!(o["metadata"]["namespace"], ns);
    }
    // The CA injector fills both webhook configurations from that Certificate.
    let from = format!("{ns}/{}", cert["metadata"]["name"].as_str().unwrap());
    for (kind, name) in [
        (
            "MutatingWebhookConfiguration",
            kubetune_operator::certs::MUTATING_NAME,
        ),
        (
            "ValidatingWebhookConfiguration",
            kubetune_operator::certs::VALIDATING_NAME,
        ),
    ] {
        let w = find(&objs, kind, name);
        assert_eq!(
            w["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            from.as_str()
        );
        assert!(check_object(w).is_empty(), "{:?}", check_object(w));
    }
    // The operator leaves the certificate and the caBundles alone.
    let op = find(&objs, "Deployment", "kubetune-operator");
    let argv = container_argv(&op["spec"]["template"]["spec"]["containers"][0]);
    let args = kubetune_operator::cli::Args::try_parse_from(&argv).unwrap();
    assert_eq!(
        args.cert_mode,
        kubetune_operator::cli::CertMode::CertManager
    );
    let base_op = find(&base, "Deployment", "kubetune-operator");
    let base_args = kubetune_operator::cli::Args::try_parse_from(container_argv(
        &base_op["spec"]["template"]["spec"]["containers"][0],
    ))
    .unwrap();
    assert_eq!(
        base_args.cert_mode,
        kubetune_operator::cli::CertMode::SelfSigned
    );
    // Nothing else changes: every other object of config/default is there as it was.
    let changed = [
        ("Deployment", "kubetune-operator"),
        (
            "MutatingWebhookConfiguration",
            kubetune_operator::certs::MUTATING_NAME,
        ),
        (
            "ValidatingWebhookConfiguration",
            kubetune_operator::certs::VALIDATING_NAME,
        ),
    ];
    for b in &base {
        let name = b["metadata"]["name"].as_str().unwrap();
        let kind = b["kind"].as_str().unwrap();
        if changed.contains(&(kind, name)) {
            continue;
        }
        assert_eq!(find(&objs, kind, name), b, "{kind}/{name} differs");
    }
}

/// Two operator replicas with a PodDisruptionBudget elect a leader on the shipped Lease; the
/// operator may get and patch that one Lease and nothing else of coordination.k8s.io.
#[test]
fn operator_is_highly_available_on_one_lease() {
    use clap::Parser;
    let objs = rendered();
    let d = find(&objs, "Deployment", "kubetune-operator");
    assert!(d["spec"]["replicas"].as_i64().unwrap() >= 2);
    let pdb = find(&objs, "PodDisruptionBudget", "kubetune-operator");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args = kubetune_operator::cli::Args::try_parse_from(container_argv(c)).unwrap();
    assert!(args.election.leader_elect);
    assert!(args.election.lease_renew_before_seconds < args.election.lease_duration_seconds);
    // Each replica campaigns under its own pod name.
    let pod_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME set");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let lease = find(&objs, "Lease", kubetune_operator::leader::LEASE_NAME);
    assert_eq!(lease["metadata"]["namespace"], args.namespace.as_str());
    // RBAC: get/patch of that Lease by name, in that namespace, bound to the operator only.
    let mut grants = Vec::new();
    for role in objs
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        for r in role["rules"].as_array().unwrap() {
            if r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "coordination.k8s.io")
            {
                grants.push((role.clone(), r.clone()));
            }
        }
    }
    // Besides the leader-election rule, only the heartbeat's: the operator reads the agents'
    // Leases (list/watch, no write), the agent writes its node's (create/patch; the admission
    // policy kubetune-agent-own-lease limits it to its own Lease).
    let (named, heartbeat): (Vec<_>, Vec<_>) = grants
        .into_iter()
        .partition(|(_, r)| r["resourceNames"].is_array());
    for (role, r) in &heartbeat {
        let want = match role["metadata"]["name"].as_str().unwrap() {
            "kubetune-operator" => json!(["list", "watch"]),
            "kubetune-agent-heartbeat" => json!(["create", "patch"]),
            other => panic!("unexpected rule on coordination.k8s.io in {other}: {r}"),
        };
        assert_eq!(role["kind"], "Role", "{role}");
        assert_eq!(r["verbs"], want, "{role}");
    }
    assert_eq!(
        named.len(),
        1,
        "one named rule on coordination.k8s.io: {named:?}"
    );
    let (role, rule) = &named[0];
    assert_eq!(role["kind"], "Role");
    assert_eq!(role["metadata"]["namespace"], args.namespace.as_str());
    assert_eq!(rule["resources"], json!(["leases"]));
    assert_eq!(
        rule["resourceNames"],
        json!([kubetune_operator::leader::LEASE_NAME])
    );
    assert_eq!(rule["verbs"], json!(["get", "patch"]));
    let binding = objs
        .iter()
        .find(|o| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == role["metadata"]["name"])
        .expect("bound");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": args.namespace}])
    );
}

/// The shipped install decides from node truth: no cluster-facts ConfigMap in config/default,
/// and the optional override in config/cluster-facts parses as the components read it.
#[test]
fn shipped_install_needs_no_cluster_facts_and_the_override_parses() {
    let objs = rendered();
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "kubetune-cluster-facts"),
        "config/default must not ship hand-written cluster facts"
    );
    let path = repo_root().join("config/cluster-facts/override.yaml");
    let docs = parse_multi(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(docs.len(), 1);
    assert!(check_object(&docs[0]).is_empty());
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(docs[0].clone()).unwrap();
    let f = kubetune_crds::facts::ClusterFacts::resolve(Some(&cm), &[], &[]).unwrap();
    assert!(f.node_truth(), "the sample overrides tuning CNI only");
    assert_eq!(f.tuning_cni.unwrap().network_name, "kubetune-tuning");
}
