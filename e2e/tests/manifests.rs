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
