//! Cluster end-to-end tests. They run only when `KUBECONFIG` names a cluster (otherwise each test
//! prints why it is skipped and passes). Prerequisites: the kubetune image is loadable by the
//! cluster (`KUBETUNE_IMAGE`, default `kubetune:dev`, e.g. `kind load docker-image kubetune:dev`).
//!
//! - Installs `config/default` once (server-side apply) and waits for the webhook.
//! - One namespace per test; deleted afterwards unless `KUBETUNE_E2E_KEEP=1`; on failure the
//!   namespace's pods, policies, reports and events are dumped.
//! - Unsafe sysctls (somaxconn) are expected to be refused unless the kubelets allow them and
//!   `KUBETUNE_E2E_UNSAFE_ALLOWED=1` says so.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test -p kubetune-e2e --test cluster -- --test-threads=1`

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kubetune_crds::decision::{Outcome, PodDecision, DECISION_ANNOTATION};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());
static INSTALLED: OnceLock<bool> = OnceLock::new();

fn enabled(test: &str) -> bool {
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => true,
        _ => {
            eprintln!("skipping cluster test {test}: KUBECONFIG is not set (the netns harness covers these paths without a cluster)");
            false
        }
    }
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(s.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn install() {
    let ok = *INSTALLED.get_or_init(|| {
        let root = kubetune_e2e::manifests::repo_root();
        let image = std::env::var("KUBETUNE_IMAGE").unwrap_or_else(|_| "kubetune:dev".into());
        let rendered = kubectl(
            &["kustomize", root.join("config/default").to_str().unwrap()],
            None,
        )
        .expect("render");
        let rendered = rendered.replace("image: kubetune:dev", &format!("image: {image}"));
        kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&rendered),
        )
        .expect("install config/default");
        for d in ["kubetune-operator", "kubetune-webhook"] {
            kubectl(
                &[
                    "-n",
                    "kubetune-system",
                    "rollout",
                    "status",
                    &format!("deployment/{d}"),
                    "--timeout=180s",
                ],
                None,
            )
            .unwrap_or_else(|e| panic!("{d} not ready: {e}"));
        }
        kubectl(
            &[
                "-n",
                "kubetune-system",
                "rollout",
                "status",
                "daemonset/kubetune-agent",
                "--timeout=180s",
            ],
            None,
        )
        .expect("agent not ready");
        true
    });
    assert!(ok);
}

/// A namespace for one test; deleted on drop (dumped first if the test failed).
struct TestNs {
    name: String,
}

impl TestNs {
    fn new(test: &str, labels: &[(&str, &str)]) -> Self {
        let name = format!("kt-e2e-{test}-{}", std::process::id() % 100000);
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {}}});
        for (k, v) in labels {
            ns["metadata"]["labels"][*k] = json!(v);
        }
        kubectl(&["apply", "-f", "-"], Some(&ns.to_string())).expect("create namespace");
        Self { name }
    }
    fn apply(&self, obj: Value) -> Result<String, String> {
        kubectl(
            &["-n", &self.name, "apply", "-f", "-"],
            Some(&obj.to_string()),
        )
    }
    fn get(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(
            &kubectl(&["-n", &self.name, "get", kind, name, "-o", "json"], None).expect("get"),
        )
        .unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- state of {} ---", self.name);
            for what in ["pods,tuningpolicies,listenerreports", "events"] {
                if let Ok(s) = kubectl(&["-n", &self.name, "get", what, "-o", "yaml"], None) {
                    eprintln!("{s}");
                }
            }
        }
        if std::env::var("KUBETUNE_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping namespace {}", self.name);
            return;
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

fn policy(name: &str, app: &str, spec_extra: Value) -> Value {
    let mut p = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy",
        "metadata": {"name": name}, "spec": {"podSelector": {"matchLabels": {"app": app}}}});
    for (k, v) in spec_extra.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

fn pod(name: &str, app: &str, extra_spec: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}});
    for (k, v) in extra_spec.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

fn decision(pod: &Value) -> PodDecision {
    let s = pod["metadata"]["annotations"][DECISION_ANNOTATION]
        .as_str()
        .expect("decision annotation present");
    PodDecision::parse(s).expect("decision annotation parses")
}

fn sysctls(pod: &Value) -> Vec<(String, String)> {
    pod["spec"]["securityContext"]["sysctls"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_string(),
                        s["value"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn setup(
    test: &str,
    labels: &[(&str, &str)],
) -> Option<(std::sync::MutexGuard<'static, ()>, TestNs)> {
    if !enabled(test) {
        return None;
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    install();
    Some((guard, TestNs::new(test, labels)))
}

#[test]
fn safe_sysctls_are_injected_and_status_columns_show_it() {
    let Some((_g, ns)) = setup("inject", &[]) else {
        return;
    };
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3)); // reflector sync in the webhook
    ns.apply(pod("web-1", "web", json!({}))).unwrap();
    let p = ns.get("pod", "web-1");
    let got = sysctls(&p);
    assert!(
        got.contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into())),
        "{got:?}"
    );
    let d = decision(&p);
    assert!(
        d.entries
            .iter()
            .all(|e| e.outcome == Outcome::Injected && e.policy == "keepalive"),
        "{d:?}"
    );
    let cols = wait_for("Applied=1 in kubectl get", Duration::from_secs(90), || {
        let out = kubectl(&["-n", &ns.name, "get", "tuningpolicies"], None).ok()?;
        let line = out.lines().nth(1)?.to_string();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 7 && f[2] == "1" && f[3] == "1").then_some(out)
    });
    let header: Vec<&str> = cols.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SYSCTLS",
            "MATCHED",
            "APPLIED",
            "VERIFIED",
            "OVERFLOWING",
            "STATUS",
            "AGE"
        ]
    );
    let tp = ns.get("tuningpolicy", "keepalive");
    let conds = tp["status"]["conditions"].as_array().unwrap();
    let accepted = conds.iter().find(|c| c["type"] == "Accepted").unwrap();
    assert_eq!(accepted["status"], "True");
    let applied = conds.iter().find(|c| c["type"] == "Applied").unwrap();
    assert_eq!(applied["status"], "True");
}

#[test]
fn the_pods_own_value_is_kept() {
    let Some((_g, ns)) = setup("ownvalue", &[]) else {
        return;
    };
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    ns.apply(pod("web-own", "web", json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "300"}]}}))).unwrap();
    let p = ns.get("pod", "web-own");
    let got = sysctls(&p);
    assert!(
        got.contains(&("net.ipv4.tcp_keepalive_time".into(), "300".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&("net.ipv4.tcp_keepalive_intvl".into(), "60".into())),
        "{got:?}"
    );
    assert!(decision(&p)
        .entries
        .iter()
        .any(|e| e.outcome == Outcome::PodValueKept));
}

#[test]
fn unsafe_sysctl_is_refused_unless_nodes_allow_it() {
    let Some((_g, ns)) = setup("unsafe", &[]) else {
        return;
    };
    ns.apply(policy(
        "backlog",
        "web",
        json!({"preset": "HighConnectionServer"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    ns.apply(pod("web-u", "web", json!({}))).unwrap();
    let p = ns.get("pod", "web-u");
    let d = decision(&p);
    if std::env::var("KUBETUNE_E2E_UNSAFE_ALLOWED").as_deref() == Ok("1") {
        assert!(sysctls(&p).iter().any(|(n, _)| n == "net.core.somaxconn"));
    } else {
        assert!(
            sysctls(&p).is_empty(),
            "unsafe sysctl injected without node allowance"
        );
        assert!(
            d.entries
                .iter()
                .all(|e| e.outcome == Outcome::Refused && e.reason == "RefusedUnsafeSysctl"),
            "{d:?}"
        );
    }
}

#[test]
fn pod_security_baseline_namespace_gets_no_unsafe_sysctl_and_pod_still_starts() {
    let Some((_g, ns)) = setup("pss", &[("pod-security.kubernetes.io/enforce", "baseline")]) else {
        return;
    };
    ns.apply(policy(
        "backlog",
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    ns.apply(pod("web-pss", "web", json!({})))
        .expect("pod admitted by PodSecurity baseline");
    let p = ns.get("pod", "web-pss");
    assert!(sysctls(&p).is_empty());
    assert_eq!(decision(&p).entries[0].reason, "RefusedByPodSecurity");
}

#[test]
fn host_network_pod_gets_no_net_sysctls() {
    let Some((_g, ns)) = setup(
        "hostnet",
        &[("pod-security.kubernetes.io/enforce", "privileged")],
    ) else {
        return;
    };
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    ns.apply(pod("web-hn", "web", json!({"hostNetwork": true})))
        .unwrap();
    let p = ns.get("pod", "web-hn");
    assert!(sysctls(&p).is_empty());
    assert!(decision(&p)
        .entries
        .iter()
        .all(|e| e.reason == "RefusedHostNamespace"));
}

#[test]
fn invalid_policies_are_rejected_by_the_apiserver() {
    let Some((_g, ns)) = setup("invalid", &[]) else {
        return;
    };
    let e = ns
        .apply(policy(
            "vm",
            "web",
            json!({"sysctls": [{"name": "vm.swappiness", "value": "1"}]}),
        ))
        .unwrap_err();
    assert!(e.contains("node-level sysctls are refused"), "{e}");
    let e = ns.apply(policy("both", "web", json!({"preset": "WideEphemeralPorts", "sysctls": [{"name": "net.core.somaxconn", "value": "1"}]}))).unwrap_err();
    assert!(
        e.contains("exactly one of spec.sysctls and spec.preset"),
        "{e}"
    );
    // net.core.rmem_max passes the CEL family rule; the validating webhook names it node-level.
    let e = ns
        .apply(policy(
            "rmem",
            "web",
            json!({"sysctls": [{"name": "net.core.rmem_max", "value": "1048576"}]}),
        ))
        .unwrap_err();
    assert!(e.contains("node-level"), "{e}");
}

#[test]
fn dry_run_only_annotates() {
    let Some((_g, ns)) = setup("dryrun", &[]) else {
        return;
    };
    ns.apply(policy(
        "dry",
        "web",
        json!({"preset": "IpvsIdleKeepalive", "mode": "DryRun"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    ns.apply(pod("web-dry", "web", json!({}))).unwrap();
    let p = ns.get("pod", "web-dry");
    assert!(sysctls(&p).is_empty());
    assert!(decision(&p)
        .entries
        .iter()
        .all(|e| e.outcome == Outcome::WouldInject));
}

#[test]
fn pods_are_created_while_the_webhook_is_down() {
    let Some((_g, ns)) = setup("down", &[]) else {
        return;
    };
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    kubectl(
        &[
            "-n",
            "kubetune-system",
            "scale",
            "deployment/kubetune-webhook",
            "--replicas=0",
        ],
        None,
    )
    .unwrap();
    let _ = kubectl(
        &[
            "-n",
            "kubetune-system",
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=kubetune-webhook",
            "--timeout=60s",
        ],
        None,
    );
    let created = ns.apply(pod("web-down", "web", json!({})));
    kubectl(
        &[
            "-n",
            "kubetune-system",
            "scale",
            "deployment/kubetune-webhook",
            "--replicas=2",
        ],
        None,
    )
    .unwrap();
    kubectl(
        &[
            "-n",
            "kubetune-system",
            "rollout",
            "status",
            "deployment/kubetune-webhook",
            "--timeout=120s",
        ],
        None,
    )
    .unwrap();
    created.expect("pod creation must not fail while the webhook is down (failurePolicy Ignore)");
    let p = ns.get("pod", "web-down");
    assert!(p["metadata"]["annotations"][DECISION_ANNOTATION].is_null());
}
