//! Cluster end-to-end tests. They run only when `KUBECONFIG` names a cluster (otherwise each test
//! prints why it is skipped and passes). Prerequisites: the kubetune image is loadable by the
//! cluster (`KUBETUNE_IMAGE`, default `kubetune:dev`, e.g. `kind load docker-image kubetune:dev`).
//!
//! - Installs `config/default` once (server-side apply) and waits for the webhook.
//! - One namespace per test, deleted when the test ends (passed or failed) unless
//!   `KUBETUNE_E2E_KEEP=1`, which keeps every test's namespace; on failure the namespace's pods,
//!   policies, reports and events are dumped first.
//! - Unsafe sysctls (somaxconn): what the tests expect is derived from node truth — the
//!   `NodeTuning` objects and `sysctl.kubetune.dev/` labels the agents published — so they hold on
//!   a cluster whose kubelets allow them, refuse them, or differ.
//! - Node truth: every node's `NodeTuning` and `sysctl.kubetune.dev/` labels are checked against
//!   the kubelet's own effective configuration (`/api/v1/nodes/<n>/proxy/configz`), and the
//!   agent's admission policy by impersonating the agent; both need cluster-admin credentials.
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
    let mut p = json!({"apiVersion": kubetune_crds::API_VERSION, "kind": "TuningPolicy",
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

/// The rows of a `kubectl get` table as (column name → cell), cut at the header's column
/// starts — cells may contain spaces (`net.ipv4.tcp_keepalive_intvl=60 (+2)`).
fn table(out: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = out.lines();
    let Some(header) = lines.next() else {
        return vec![];
    };
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut prev_space = true;
    for (i, c) in header.char_indices() {
        if !c.is_whitespace() && prev_space {
            let name = header[i..].split_whitespace().next().unwrap_or_default();
            starts.push((i, name));
        }
        prev_space = c.is_whitespace();
    }
    lines
        .map(|l| {
            starts
                .iter()
                .enumerate()
                .map(|(k, (at, name))| {
                    let end = starts.get(k + 1).map_or(l.len(), |n| n.0.min(l.len()));
                    let cell = l.get((*at).min(l.len())..end).unwrap_or_default();
                    (name.to_string(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

#[test]
fn table_cells_may_contain_spaces() {
    let out = "NAME   SYSCTLS                                MATCHED   APPLIED\n\
               ka     net.ipv4.tcp_keepalive_intvl=60 (+2)   1         1\n";
    let rows = table(out);
    assert_eq!(rows[0]["SYSCTLS"], "net.ipv4.tcp_keepalive_intvl=60 (+2)");
    assert_eq!(
        (rows[0]["MATCHED"].as_str(), rows[0]["APPLIED"].as_str()),
        ("1", "1")
    );
}

/// How node truth says `net.core.somaxconn` reaches a pod that may run anywhere: every
/// schedulable node accepts it, some do, or none (per the NodeTunings and node labels).
#[derive(Debug, PartialEq)]
enum Somaxconn {
    Everywhere,
    SomeNodes(Vec<String>),
    Nowhere,
}

fn somaxconn_truth() -> Somaxconn {
    const LABEL: &str = "sysctl.kubetune.dev/net.core.somaxconn";
    let nodes = get_json(&["get", "nodes", "-o", "json"]);
    let tunings = get_json(&["get", "nodetunings", "-o", "json"]);
    let tuning = |name: &str| {
        tunings["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["metadata"]["name"] == name)
            .cloned()
    };
    let mut accepting = Vec::new();
    let mut all = true;
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let t = tuning(name);
        let ok = n["metadata"]["labels"][LABEL] == "allowed"
            && t.as_ref().is_some_and(|t| {
                t["spec"]["kubelet"]["error"].is_null()
                    && strings(&t["spec"]["acceptedUnsafeSysctls"])
                        .contains(&"net.core.somaxconn".into())
                    && !t["status"]["refusedSysctls"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|r| r["name"] == "net.core.somaxconn"))
            });
        if !reachable(n) {
            continue; // a plain pod cannot run there: not part of its decision
        }
        let schedulable = n["spec"]["unschedulable"] != true;
        if ok && schedulable {
            accepting.push(name.to_string());
        }
        all &= ok;
    }
    match (accepting.is_empty(), all) {
        (true, _) => Somaxconn::Nowhere,
        (false, true) => Somaxconn::Everywhere,
        (false, false) => Somaxconn::SomeNodes(accepting),
    }
}

/// Can a pod without tolerations of its own be scheduled to node `n` (as far as taints go)? It
/// carries only the tolerations every pod gets (not-ready and unreachable, `NoExecute`); the
/// cordon taint is `spec.unschedulable`'s.
fn reachable(n: &Value) -> bool {
    let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
    taints.iter().all(|t| {
        let (key, effect) = (t["key"].as_str().unwrap_or(""), &t["effect"]);
        let default_tolerated = effect == "NoExecute"
            && [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ]
            .contains(&key);
        effect == "PreferNoSchedule"
            || key == "node.kubernetes.io/unschedulable"
            || default_tolerated
    })
}

/// Taints node `.0` with key `.1` (`NoSchedule`) for as long as it lives.
struct Tainted(String, String);

impl Tainted {
    fn new(node: &str, key: &str) -> Self {
        let taint = format!("{key}=e2e:NoSchedule");
        kubectl(&["taint", "node", node, &taint, "--overwrite"], None).expect("taint the node");
        Tainted(node.into(), key.into())
    }
}

impl Drop for Tainted {
    fn drop(&mut self) {
        let _ = kubectl(&["taint", "node", &self.0, &format!("{}-", self.1)], None);
    }
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
        let row = table(&out).into_iter().next()?;
        (row.get("MATCHED")? == "1" && row.get("APPLIED")? == "1").then_some(out)
    });
    let row = &table(&cols)[0];
    assert!(
        row["SYSCTLS"].starts_with("net.ipv4.tcp_keepalive_"),
        "{row:?}"
    );
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

/// The shipped install (no cluster-facts ConfigMap) decides somaxconn from node truth: injected
/// where every node accepts it, injected with a required node affinity to the accepting nodes
/// where only some do, refused with the nodes named where none does — and the pod starts.
#[test]
fn unsafe_sysctl_follows_node_truth_with_the_shipped_install() {
    let Some((_g, ns)) = setup("unsafe", &[]) else {
        return;
    };
    let override_present = kubectl(
        &[
            "-n",
            "kubetune-system",
            "get",
            "configmap",
            "kubetune-cluster-facts",
        ],
        None,
    )
    .is_ok();
    assert!(
        !override_present,
        "the shipped install has no cluster-facts override; delete it to run this test"
    );
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
    let somaxconn = d
        .entries
        .iter()
        .find(|e| e.sysctl == "net.core.somaxconn")
        .expect("entry");
    let injected = sysctls(&p).iter().any(|(n, _)| n == "net.core.somaxconn");
    let truth = somaxconn_truth();
    eprintln!("node truth for net.core.somaxconn: {truth:?}");
    match &truth {
        Somaxconn::Everywhere => {
            assert!(injected && somaxconn.outcome == Outcome::Injected, "{d:?}");
            assert!(d.node_affinity.is_empty(), "{d:?}");
        }
        Somaxconn::SomeNodes(_) => {
            assert!(injected, "{d:?}");
            assert_eq!(d.node_affinity.len(), 1, "{d:?}");
            let terms = &p["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
            assert!(
                terms
                    .to_string()
                    .contains("sysctl.kubetune.dev/net.core.somaxconn"),
                "{terms}"
            );
        }
        Somaxconn::Nowhere => {
            assert!(
                !injected,
                "unsafe sysctl injected though no node accepts it"
            );
            assert_eq!(
                (somaxconn.outcome, somaxconn.reason.as_str()),
                (Outcome::Refused, "RefusedUnsafeSysctl"),
                "{d:?}"
            );
        }
    }
    // Whatever the truth, the pod starts (never SysctlForbidden), on an accepting node when
    // somaxconn was injected.
    let node = wait_for("pod web-u running", Duration::from_secs(120), || {
        let p = ns.get("pod", "web-u");
        assert_ne!(p["status"]["reason"], "SysctlForbidden", "{p}");
        (p["status"]["phase"] == "Running").then(|| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    });
    if let Somaxconn::SomeNodes(accepting) = truth {
        assert!(
            accepting.contains(&node),
            "scheduled to {node}, accepting: {accepting:?}"
        );
    }
}

/// A pod pinned (nodeSelector by hostname) to each node in turn: on a node that accepts
/// somaxconn it is injected (no affinity needed), on one that refuses it is refused naming the
/// node; every pod starts. With nodes that differ, this is the "second node refuses" case.
#[test]
fn pods_pinned_to_each_node_get_what_that_node_accepts() {
    let Some((_g, ns)) = setup("pinned", &[]) else {
        return;
    };
    ns.apply(policy(
        "backlog",
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "8192"}]}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let nodes = get_json(&["get", "nodes", "-o", "json"]);
    for (i, n) in nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(5)
    {
        if n["spec"]["unschedulable"] == true
            || n["spec"]["taints"]
                .as_array()
                .is_some_and(|t| !t.is_empty())
        {
            continue;
        }
        let name = n["metadata"]["name"].as_str().unwrap();
        let accepts =
            n["metadata"]["labels"]["sysctl.kubetune.dev/net.core.somaxconn"] == "allowed";
        let pod_name = format!("web-pin-{i}");
        ns.apply(pod(
            &pod_name,
            "web",
            json!({"nodeSelector": {"kubernetes.io/hostname": name}}),
        ))
        .unwrap();
        decided_by_its_node(&ns, &pod_name, name, accepts);
    }
}

/// Pod `pod_name`, pinned to node `name`, was decided as that node decides (somaxconn injected
/// without a node affinity where it `accepts` it, refused naming the node where not), and
/// starts there (never SysctlForbidden).
fn decided_by_its_node(ns: &TestNs, pod_name: &str, name: &str, accepts: bool) {
    let d = decision(&ns.get("pod", pod_name));
    let e = &d.entries[0];
    if accepts {
        assert_eq!(e.outcome, Outcome::Injected, "{name}: {d:?}");
        assert!(d.node_affinity.is_empty(), "{name}: {d:?}");
    } else {
        assert_eq!(e.outcome, Outcome::Refused, "{name}: {d:?}");
        assert!(e.message.contains(name), "{name}: {}", e.message);
    }
    wait_for(
        &format!("{pod_name} running on {name}"),
        Duration::from_secs(120),
        || {
            let p = ns.get("pod", pod_name);
            assert_ne!(p["status"]["reason"], "SysctlForbidden", "{p}");
            (p["status"]["phase"] == "Running").then(String::new)
        },
    );
}

/// A node tainted for the test (`NoSchedule`, removed when the test ends): a pod pinned to it
/// that does not tolerate the taint is decided without it (refused: no node it may run on),
/// the same pod tolerating it is decided by what that node accepts, and starts.
#[test]
fn a_taint_the_pod_does_not_tolerate_keeps_its_node_out_of_the_decision() {
    let Some((_g, ns)) = setup("taints", &[]) else {
        return;
    };
    let nodes = get_json(&["get", "nodes", "-o", "json"]);
    let Some(node) = nodes["items"].as_array().unwrap().iter().find(|n| {
        n["spec"]["unschedulable"] != true
            && n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty())
    }) else {
        eprintln!("no untainted schedulable node to taint; nothing to test");
        return;
    };
    let name = node["metadata"]["name"].as_str().unwrap().to_string();
    let accepts = node["metadata"]["labels"]["sysctl.kubetune.dev/net.core.somaxconn"] == "allowed";
    ns.apply(policy(
        "backlog",
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "8192"}]}),
    ))
    .unwrap();
    let key = format!("kubetune.dev/{}", ns.name);
    let _tainted = Tainted::new(&name, &key);
    let pinned = json!({"nodeSelector": {"kubernetes.io/hostname": name}});
    // The webhook sees the taint through its node cache within seconds: until then a pinned
    // pod is still decided with the node. Intolerant pods stay Pending (the scheduler agrees).
    let mut tries = 0;
    wait_for(
        "the webhook to see the taint",
        Duration::from_secs(60),
        || {
            tries += 1;
            let pod_name = format!("web-intolerant-{tries}");
            ns.apply(pod(&pod_name, "web", pinned.clone())).unwrap();
            let d = decision(&ns.get("pod", &pod_name));
            let e = &d.entries[0];
            let refused = e.outcome == Outcome::Refused && e.message.contains("tolerations");
            refused.then(String::new)
        },
    );
    let mut spec = pinned.clone();
    spec["tolerations"] = json!([{"key": key, "operator": "Exists", "effect": "NoSchedule"}]);
    ns.apply(pod("web-tolerant", "web", spec)).unwrap();
    decided_by_its_node(&ns, "web-tolerant", &name, accepts);
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

fn get_json(args: &[&str]) -> Value {
    let out = kubectl(args, None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
    serde_json::from_str(&out).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    s.sort();
    s
}

#[test]
fn every_node_publishes_what_its_kubelet_allows_and_its_labels_match() {
    let Some((_g, _ns)) = setup("nodetruth", &[]) else {
        return;
    };
    let nodes = get_json(&["get", "nodes", "-o", "json"]);
    for node in nodes["items"].as_array().unwrap() {
        let name = node["metadata"]["name"].as_str().unwrap();
        // Ground truth: the kubelet's effective configuration, from the kubelet itself.
        let configz = get_json(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{name}/proxy/configz"),
        ]);
        let truth = strings(&configz["kubeletconfig"]["allowedUnsafeSysctls"]);
        let nt = wait_for(
            &format!("NodeTuning {name} with the kubelet's allowlist {truth:?}"),
            Duration::from_secs(120),
            || {
                let out = kubectl(&["get", "nodetuning", name, "-o", "json"], None).ok()?;
                let v: Value = serde_json::from_str(&out).ok()?;
                (strings(&v["spec"]["kubelet"]["allowedUnsafeSysctls"]) == truth
                    && v["spec"]["kubelet"]["error"].is_null())
                .then_some(out)
            },
        );
        let nt: Value = serde_json::from_str(&nt).unwrap();
        let mut want: Vec<String> = kubetune_crds::node::accepted_table_sysctls(&truth)
            .into_iter()
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(
            strings(&nt["spec"]["acceptedUnsafeSysctls"]),
            want,
            "{name}"
        );
        assert_eq!(
            nt["spec"]["kubeletVersion"], node["status"]["nodeInfo"]["kubeletVersion"],
            "{name}"
        );
        assert_eq!(nt["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(
            nt["metadata"]["ownerReferences"][0]["uid"],
            node["metadata"]["uid"]
        );
        assert!(
            nt["spec"]["netnsDefaultSomaxconn"].as_i64().is_some(),
            "{nt}"
        );
        // The node's kubetune labels are exactly the accepted sysctls.
        let labels = wait_for(
            &format!("labels of {name}"),
            Duration::from_secs(60),
            || {
                let n = get_json(&["get", "node", name, "-o", "json"]);
                let mut keys: Vec<String> = n["metadata"]["labels"]
                    .as_object()?
                    .iter()
                    .filter(|(k, v)| k.starts_with("sysctl.kubetune.dev/") && *v == "allowed")
                    .map(|(k, _)| k["sysctl.kubetune.dev/".len()..].to_string())
                    .collect();
                keys.sort();
                (keys == want).then(|| keys.join(","))
            },
        );
        eprintln!("{name}: kubelet allows {truth:?}; labels {labels}");
    }
    let table = kubectl(&["get", "nodetunings"], None).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "KUBELET",
            "UNSAFE-ALLOWED",
            "NETNS-SOMAXCONN",
            "TUNING-CNI",
            "AGE"
        ]
    );
}

#[test]
fn the_agent_may_change_only_kubetune_labels_on_its_own_node() {
    let Some((_g, _ns)) = setup("nodelabels", &[]) else {
        return;
    };
    let nodes = get_json(&["get", "nodes", "-o", "json"]);
    let name = nodes["items"][0]["metadata"]["name"].as_str().unwrap();
    let as_agent = |node_extra: &str, label: &str| {
        kubectl(
            &[
                "label",
                "node",
                name,
                label,
                "--overwrite",
                "--dry-run=server",
                "--as=system:serviceaccount:kubetune-system:kubetune-agent",
                "--as-group=system:serviceaccounts",
                &format!("--as-user-extra=authentication.kubernetes.io/node-name={node_extra}"),
            ],
            None,
        )
    };
    as_agent(name, "sysctl.kubetune.dev/net.core.somaxconn=allowed")
        .expect("the agent may set a kubetune label on its own node");
    let e = as_agent(name, "kt-e2e-other=1").expect_err("another label");
    assert!(e.contains("sysctl.kubetune.dev/ labels"), "{e}");
    let e = as_agent(
        "some-other-node",
        "sysctl.kubetune.dev/net.core.somaxconn=allowed",
    )
    .expect_err("another node");
    assert!(e.contains("own node"), "{e}");
}

/// A namespace editor (a user bound to the built-in `edit` ClusterRole in the test namespace,
/// impersonated) manages TuningPolicies there through the aggregated role, a viewer reads
/// policies and reports, nobody but the agent writes a ListenerReport: the editor is refused
/// by RBAC, and even this suite's (admin) user by the ValidatingAdmissionPolicy.
#[test]
fn namespace_editor_manages_policies_and_cannot_write_reports() {
    let Some((_g, ns)) = setup("rbac", &[]) else {
        return;
    };
    for (user, role) in [("kt-e2e-editor", "edit"), ("kt-e2e-viewer", "view")] {
        ns.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))
        .unwrap();
    }
    let can = |user: &str, verb: &str, res: &str| {
        kubectl(
            &["auth", "can-i", verb, res, "-n", &ns.name, "--as", user],
            None,
        )
        .is_ok_and(|o| o.trim() == "yes")
    };
    // The aggregation controller folds kubetune's roles into edit/view within seconds.
    wait_for("aggregated roles", Duration::from_secs(60), || {
        can("kt-e2e-editor", "create", "tuningpolicies.kubetune.dev").then_some(String::new())
    });
    let as_editor = |args: &[&str], stdin: &str| {
        let mut a = vec!["--as", "kt-e2e-editor", "-n", &ns.name];
        a.extend_from_slice(args);
        kubectl(&a, Some(stdin))
    };
    let p = policy("keepalive", "web", json!({"preset": "IpvsIdleKeepalive"}));
    as_editor(&["apply", "-f", "-"], &p.to_string()).expect("the editor creates a policy");
    as_editor(&["delete", "tuningpolicy", "keepalive"], "").expect("and deletes it");
    for verb in ["get", "list", "watch"] {
        assert!(can("kt-e2e-viewer", verb, "tuningpolicies.kubetune.dev"));
        assert!(can("kt-e2e-viewer", verb, "listenerreports.kubetune.dev"));
    }
    assert!(!can(
        "kt-e2e-viewer",
        "create",
        "tuningpolicies.kubetune.dev"
    ));

    let report = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "ListenerReport",
        "metadata": {"name": "forged"},
        "spec": {"podUid": "forged", "nodeName": "nowhere", "listenerCount": 0, "overflowsTotal": 0,
                 "overflowsRecent": 0, "listeners": [], "diagnosis": "Healthy", "windowSeconds": 60,
                 "source": "sock-diag", "observedAt": "2026-01-01T00:00:00Z"}});
    assert!(!can(
        "kt-e2e-editor",
        "create",
        "listenerreports.kubetune.dev"
    ));
    let e = as_editor(&["create", "-f", "-"], &report.to_string()).unwrap_err();
    assert!(e.contains("forbidden"), "{e}");
    // RBAC lets this suite's user write anything; the admission policy still refuses.
    let e = ns.apply(report).unwrap_err();
    assert!(
        e.contains("ListenerReports are written only by the kubetune agent"),
        "{e}"
    );
}

/// The path of the `kubectl-kubetune` binary of this checkout (built if needed).
fn kubectl_kubetune() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "kubectl-kubetune",
            "--message-format=json",
        ])
        .current_dir(kubetune_e2e::manifests::repo_root())
        .output()
        .expect("cargo build -p kubectl-kubetune");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| {
            (m["target"]["name"] == "kubectl-kubetune")
                .then(|| m["executable"].as_str().map(Into::into))
                .flatten()
        })
        .expect("kubectl-kubetune executable")
}

/// `kubectl kubetune why` on a pod of this suite (the built plugin, the suite's kubeconfig):
/// it names the policy that selects the pod, each injected sysctl with the value the agent read
/// in the pod's netns, and the policy's conditions; `top -o json` answers too.
#[test]
fn kubectl_kubetune_why_explains_a_pod() {
    let Some((_g, ns)) = setup("why", &[]) else {
        return;
    };
    let bin = kubectl_kubetune();
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3)); // reflector sync in the webhook
    ns.apply(pod("web-1", "web", json!({}))).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let why = wait_for(
        "the agent's observation in why",
        Duration::from_secs(120),
        || {
            let s = run(&["why", "web-1", "-n", &ns.name, "-o", "json"]);
            let v: Value = serde_json::from_str(&s).unwrap();
            (v["observed"].is_object() && v["policies"][0]["phase"].is_string()).then_some(s)
        },
    );
    let v: Value = serde_json::from_str(&why).unwrap();
    assert_eq!(v["policies"][0]["name"], "keepalive", "{v}");
    assert_eq!(v["decision"]["state"], "present", "{v}");
    let keepalive = v["decision"]["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sysctl"] == "net.ipv4.tcp_keepalive_time")
        .expect("tcp_keepalive_time decided");
    assert_eq!(keepalive["outcome"], "Injected");
    assert_eq!(keepalive["observed"], "600", "{v}");
    assert!(v["verdict"].is_string() && v["nextStep"].is_string());
    let text = run(&["why", "web-1", "-n", &ns.name]);
    assert!(
        text.contains("Policies selecting it (1):\n  keepalive"),
        "{text}"
    );
    assert!(
        text.contains("Verdict:") && text.contains("Next step:"),
        "{text}"
    );
    let top: Value = serde_json::from_str(&run(&["top", "-o", "json"])).unwrap();
    assert!(top.is_array());
}

/// Two operator replicas: deleting the leader's pod hands the Lease to the other replica, and
/// a new policy's status is still written within the lease duration plus a few seconds.
#[test]
fn status_keeps_updating_after_the_leader_pod_is_deleted() {
    let Some((_g, ns)) = setup("leader", &[]) else {
        return;
    };
    let sys = ["-n", "kubetune-system"];
    let holder = || {
        let out = kubectl(
            &[
                sys[0],
                sys[1],
                "get",
                "lease",
                "kubetune-operator",
                "-o",
                "json",
            ],
            None,
        )
        .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let leader = wait_for("a leader", Duration::from_secs(60), holder);
    kubectl(
        &[sys[0], sys[1], "delete", "pod", &leader, "--wait=false"],
        None,
    )
    .unwrap();
    let deleted = Instant::now();
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"preset": "IpvsIdleKeepalive"}),
    ))
    .unwrap();
    // Default --lease-duration-seconds (15) + a few seconds for the reconcile.
    wait_for(
        "status from the new leader",
        Duration::from_secs(15 + 10),
        || {
            let p = ns.get("tuningpolicy", "keepalive");
            (p["status"]["observedGeneration"] == 1).then_some(String::new())
        },
    );
    let new_leader = holder().expect("a leader");
    assert_ne!(new_leader, leader, "the deleted pod still holds the Lease");
    eprintln!(
        "status written {:?} after deleting {leader}; leader now {new_leader}",
        deleted.elapsed()
    );
    kubectl(
        &[
            sys[0],
            sys[1],
            "rollout",
            "status",
            "deployment/kubetune-operator",
            "--timeout=180s",
        ],
        None,
    )
    .expect("operator replaced");
}

/// The facts override ConfigMap replaced for one test; the saved one is applied back on drop, or
/// ours deleted when there was none (also when the test fails).
struct FactsOverride(Option<String>);

impl FactsOverride {
    fn apply(facts_yaml: &str) -> Self {
        // The shipped install has no override ConfigMap (None: delete ours on drop).
        let saved = kubectl(
            &[
                "-n",
                "kubetune-system",
                "get",
                "configmap",
                "kubetune-cluster-facts",
                "-o",
                "json",
                "--ignore-not-found",
            ],
            None,
        )
        .expect("facts ConfigMap")
        .trim()
        .to_string();
        let saved = (!saved.is_empty()).then_some(saved);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubetune-cluster-facts", "namespace": "kubetune-system"},
            "data": {"facts.yaml": facts_yaml}});
        kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&cm.to_string()),
        )
        .expect("facts");
        std::thread::sleep(Duration::from_secs(5)); // the webhook's and operator's facts watches
        FactsOverride(saved)
    }
}

impl Drop for FactsOverride {
    fn drop(&mut self) {
        let Some(saved) = &self.0 else {
            let _ = kubectl(
                &[
                    "-n",
                    "kubetune-system",
                    "delete",
                    "configmap",
                    "kubetune-cluster-facts",
                    "--ignore-not-found",
                ],
                None,
            );
            return;
        };
        let mut v: Value = serde_json::from_str(saved).unwrap();
        v["metadata"] = json!({"name": "kubetune-cluster-facts", "namespace": "kubetune-system"});
        let _ = kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&v.to_string()),
        );
    }
}

/// The SysctlForbidden guard: facts that wrongly say every node allows `net.core.somaxconn`
/// (the override a person might leave behind), a 1-replica Deployment pinned to a node whose
/// kubelet refuses it. Within 15 s of the first `SysctlForbidden` pod the policy's Applied
/// condition says SysctlForbidden naming the node, and the node's NodeTuning lists the refusal.
#[test]
fn a_refusing_kubelet_is_recorded_and_the_policy_says_so() {
    let Some((_g, ns)) = setup("forbidden", &[]) else {
        return;
    };
    const SOMAXCONN: &str = "net.core.somaxconn";
    let nts = get_json(&["get", "nodetunings", "-o", "json"]);
    let refusing =
        nts["items"].as_array().unwrap().iter().find(|nt| {
            !strings(&nt["spec"]["acceptedUnsafeSysctls"]).contains(&SOMAXCONN.to_string())
        });
    let Some(node) = refusing.and_then(|nt| nt["metadata"]["name"].as_str()) else {
        eprintln!("skipping a_refusing_kubelet_is_recorded_and_the_policy_says_so: every kubelet allows {SOMAXCONN} (per the NodeTuning objects)");
        return;
    };
    let node = node.to_string();
    // An override that wrongly says every node allows it (restored or deleted on drop).
    let _facts = FactsOverride::apply(
        "kubernetesVersion: \"1.31\"\nnodeGroups:\n- name: all-nodes\n  nodeSelector: {}\n  allowedUnsafeSysctls: [net.core.somaxconn]\n",
    );
    ns.apply(policy(
        "guard",
        "guarded",
        json!({"sysctls": [{"name": SOMAXCONN, "value": "8192"}]}),
    ))
    .expect("policy");
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "guarded"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "guarded"}},
            "template": {"metadata": {"labels": {"app": "guarded"}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}}});
    ns.apply(deploy).expect("deployment");
    let first = Instant::now() + Duration::from_secs(90);
    let mut saw_forbidden = None;
    while Instant::now() < first {
        let pods = get_json(&[
            "-n",
            &ns.name,
            "get",
            "pods",
            "-l",
            "app=guarded",
            "-o",
            "json",
        ]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        if items
            .iter()
            .any(|p| p["status"]["reason"] == "SysctlForbidden")
        {
            saw_forbidden = Some(Instant::now());
            break;
        }
        let injected = items.iter().any(|p| !sysctls(p).is_empty());
        if !items.is_empty()
            && !injected
            && items
                .iter()
                .all(|p| p["metadata"]["annotations"][DECISION_ANNOTATION].is_string())
        {
            eprintln!("skipping a_refusing_kubelet_is_recorded_and_the_policy_says_so: the webhook did not inject {SOMAXCONN} for node {node} (it already knows the node refuses it)");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let since = saw_forbidden.expect("a SysctlForbidden pod within 90 s");
    let cond = wait_for(
        "Applied=False SysctlForbidden naming the node",
        Duration::from_secs(15),
        || {
            let p = ns.get("tuningpolicy", "guard");
            let c = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Applied")?
                .clone();
            (c["status"] == "False"
                && c["reason"] == "SysctlForbidden"
                && c["message"].as_str().is_some_and(|m| m.contains(&node)))
            .then(|| c.to_string())
        },
    );
    assert!(since.elapsed() <= Duration::from_secs(16), "{cond}");
    let p = ns.get("tuningpolicy", "guard");
    assert!(
        p["status"]["forbiddenPods"].as_i64().unwrap_or(0) >= 1,
        "{p}"
    );
    let nt = get_json(&["get", "nodetuning", &node, "-o", "json"]);
    assert!(
        nt["status"]["refusedSysctls"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["name"] == SOMAXCONN)),
        "{nt}"
    );
    let events = kubectl(
        &[
            "-n",
            &ns.name,
            "get",
            "events",
            "--field-selector",
            "reason=SysctlForbidden",
            "-o",
            "json",
        ],
        None,
    )
    .unwrap();
    assert!(
        events.contains("TuningPolicy") && events.contains("\"Pod\""),
        "{events}"
    );
    // kubetune stops injecting there: the ReplicaSet's next pod starts without the sysctl, and
    // no more than two pods ever failed.
    wait_for(
        "a guarded pod running without somaxconn",
        Duration::from_secs(90),
        || {
            let pods = get_json(&[
                "-n",
                &ns.name,
                "get",
                "pods",
                "-l",
                "app=guarded",
                "-o",
                "json",
            ]);
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            items
                .iter()
                .any(|p| p["status"]["phase"] == "Running" && sysctls(p).is_empty())
                .then(String::new)
        },
    );
    let rs = get_json(&[
        "-n",
        &ns.name,
        "get",
        "events",
        "--field-selector",
        "reason=SysctlForbidden,involvedObject.kind=Pod",
        "-o",
        "json",
    ]);
    let failed: std::collections::BTreeSet<String> = rs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["involvedObject"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        failed.len() <= 2,
        "{} pods failed SysctlForbidden: {failed:?}",
        failed.len()
    );
}

/// A pod whose own process overflows its accept queue in the final-ACK phase (a
/// `TCP_DEFER_ACCEPT` listener with backlog 8 that never accepts; the pod fills the queue with 8
/// connections, then sends the data of 8 more admitted handshakes, 7 of which overflow). The agent's ListenerReport for the pod shows the
/// overflows: on an eBPF tier the overflow event makes the agent re-sample the pod and write at
/// once, otherwise the next scan does. The time from the burst to the report is printed (not
/// asserted: a cluster test is not a benchmark; agent/benches/detection.rs measures it).
#[test]
fn listener_report_shows_a_final_ack_phase_overflow_burst() {
    let Some((_g, ns)) = setup("overflow-event", &[]) else {
        return;
    };
    let script = r#"
import socket, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
l.bind(("127.0.0.1", 8080)); l.listen(8)
time.sleep(20)
def burst(n):
    cs = []
    for _ in range(n):
        c = socket.socket(); c.connect(("127.0.0.1", 8080)); cs.append(c)
    for c in cs:
        c.send(b"x")
    return cs
keep = burst(8); time.sleep(0.2); keep += burst(8)
print("burst-done", time.time(), flush=True)
time.sleep(3600)
"#;
    ns.apply(pod(
        "overflow",
        "overflow",
        json!({"containers": [{"name": "app", "image": "python:3.12-slim",
            "command": ["python3", "-c", script]}]}),
    ))
    .unwrap();
    wait_for("the burst", Duration::from_secs(180), || {
        kubectl(&["-n", &ns.name, "logs", "overflow"], None)
            .ok()
            .filter(|l| l.contains("burst-done"))
    });
    let burst_seen = Instant::now();
    let report = wait_for(
        "overflowsTotal > 0 in the pod's ListenerReport",
        Duration::from_secs(60),
        || {
            let r: Value = serde_json::from_str(
                &kubectl(
                    &[
                        "-n",
                        &ns.name,
                        "get",
                        "listenerreport",
                        "overflow",
                        "-o",
                        "json",
                    ],
                    None,
                )
                .ok()?,
            )
            .ok()?;
            (r["spec"]["overflowsTotal"].as_i64().unwrap_or(0) > 0).then(|| r.to_string())
        },
    );
    eprintln!(
        "report with overflows {:.1} s after the burst was seen in the pod log (2 s polling)",
        burst_seen.elapsed().as_secs_f64()
    );
    let r: Value = serde_json::from_str(&report).unwrap();
    let l = r["spec"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 8080)
        .expect("the pod's listener is reported")
        .clone();
    if r["spec"]["source"] != "sock-diag" {
        assert_eq!(l["requestedBacklog"], 8, "the listen() hook saw it: {l}");
    }
    assert!(l["overflowsTotal"].as_i64().unwrap() > 0, "{l}");
}

/// `restartPods: Rollout`: a Deployment running before the policy is restarted by the operator
/// (no manual step), its new pods carry the sysctl, the status says so and Verified follows after
/// the window; the restart happens once per policy generation.
/// `kubectl rollout restart` twice: the first pod of each rollout (new `pod-template-hash` and
/// `restartedAt`, nothing kubetune reads) gets the sysctl and the same decision record as the
/// first rollout's pods — the answer a webhook replica may give from its plan-input memo.
/// A policy setting `tcp_keepalive_time=600` on `app=web` and a one-replica Deployment `web`.
fn keepalive_web_deployment(ns: &TestNs) {
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]}),
    ))
    .unwrap();
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}}});
    ns.apply(deployment).unwrap();
}

#[test]
fn every_rollout_of_a_deployment_gets_the_same_decision() {
    let Some((_g, ns)) = setup("rollouts", &[]) else {
        return;
    };
    keepalive_web_deployment(&ns);
    let rollout = |args: &[&str]| {
        let mut a = vec!["-n", ns.name.as_str(), "rollout"];
        a.extend_from_slice(args);
        kubectl(&a, None).unwrap_or_else(|e| panic!("rollout {args:?}: {e}"));
    };
    rollout(&["status", "deployment/web", "--timeout=180s"]);
    // The live pods of the Deployment's newest ReplicaSet as (pod-template-hash, pod).
    let newest = |seen: &[String]| -> Option<(String, Value)> {
        let list = get_json(&["-n", &ns.name, "get", "pods", "-l", "app=web", "-o", "json"]);
        list["items"].as_array()?.iter().find_map(|p| {
            let hash = p["metadata"]["labels"]["pod-template-hash"].as_str()?;
            (p["metadata"]["deletionTimestamp"].is_null() && !seen.iter().any(|s| s == hash))
                .then(|| (hash.to_string(), p.clone()))
        })
    };
    let (hash, first) = newest(&[]).expect("the first rollout's pod");
    assert!(
        sysctls(&first).contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into())),
        "{first}"
    );
    let record = first["metadata"]["annotations"][DECISION_ANNOTATION].clone();
    let mut seen = vec![hash];
    for round in 1..=2 {
        rollout(&["restart", "deployment/web"]);
        rollout(&["status", "deployment/web", "--timeout=180s"]);
        let mut pod = Value::Null;
        let hash = wait_for(
            &format!("the pod of rollout {round}"),
            Duration::from_secs(60),
            || {
                let (h, p) = newest(&seen)?;
                pod = p;
                Some(h)
            },
        );
        assert!(
            sysctls(&pod).contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into())),
            "rollout {round}: {pod}"
        );
        assert_eq!(
            pod["metadata"]["annotations"][DECISION_ANNOTATION], record,
            "rollout {round}: the same decision record"
        );
        assert_eq!(decision(&pod).policies.len(), 1);
        seen.push(hash);
    }
}

/// Replicas of one ReplicaSet reach the webhook as the same review but the uid: after the first,
/// the webhook answers them from its review memo. Every replica of a scale-up must get the sysctl
/// and the byte-identical decision record the first one got.
#[test]
fn every_replica_of_a_scaled_deployment_gets_the_same_decision() {
    let Some((_g, ns)) = setup("replicas", &[]) else {
        return;
    };
    keepalive_web_deployment(&ns);
    let kc = |args: &[&str]| {
        let mut a = vec!["-n", ns.name.as_str()];
        a.extend_from_slice(args);
        kubectl(&a, None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
    };
    kc(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    kc(&["scale", "deployment/web", "--replicas=4"]);
    kc(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    let list = get_json(&["-n", &ns.name, "get", "pods", "-l", "app=web", "-o", "json"]);
    let pods: Vec<&Value> = list["items"]
        .as_array()
        .expect("pod list")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(pods.len(), 4, "{list}");
    let record = &pods[0]["metadata"]["annotations"][DECISION_ANNOTATION];
    assert!(record.is_string(), "{}", pods[0]);
    for pod in &pods {
        assert!(
            sysctls(pod).contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into())),
            "{pod}"
        );
        assert_eq!(
            &pod["metadata"]["annotations"][DECISION_ANNOTATION], record,
            "{pod}"
        );
    }
}

/// Deployments that the same policies select get the same decision (the webhook plans their pod
/// once and answers the other from its memo — by its review skeleton, since their templates
/// differ only in what kubetune does not read: containers, and `app` values no selector names),
/// and one that a further policy selects (`app=batch`, a value a selector names) gets its own.
#[test]
fn deployments_selected_by_the_same_policies_get_the_same_decision() {
    let Some((_g, ns)) = setup("deployments", &[]) else {
        return;
    };
    let frontend = json!({"podSelector": {"matchLabels": {"tier": "frontend"}},
        "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]});
    ns.apply(policy("frontend", "", frontend)).unwrap();
    let batch = json!({"sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "15"}]});
    ns.apply(policy("batch", "batch", batch)).unwrap();
    let apps = ["web", "api", "batch"];
    for (i, app) in apps.iter().enumerate() {
        let labels = json!({"app": app, "tier": "frontend"});
        // Templates of their own (another port, env), which kubetune does not read.
        let container = json!({"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 8080 + i}], "env": [{"name": "APP", "value": app}]});
        ns.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [container]}}}}))
            .unwrap();
    }
    let record = |app: &str| -> Value {
        let status = format!("deployment/{app}");
        kubectl(
            &[
                "-n",
                &ns.name,
                "rollout",
                "status",
                &status,
                "--timeout=180s",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("rollout status {app}: {e}"));
        let list = get_json(&[
            "-n",
            &ns.name,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
        ]);
        let pod = list["items"]
            .as_array()
            .and_then(|i| {
                i.iter()
                    .find(|p| p["metadata"]["deletionTimestamp"].is_null())
            })
            .unwrap_or_else(|| panic!("a live {app} pod: {list}"))
            .clone();
        assert!(
            sysctls(&pod).contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into())),
            "{pod}"
        );
        pod["metadata"]["annotations"][DECISION_ANNOTATION].clone()
    };
    let [web, api, batch] = apps.map(record);
    assert!(web.is_string(), "{web}");
    assert_eq!(web, api, "selected by the same policy");
    assert_ne!(web, batch, "selected by one more policy");
    assert!(
        batch
            .as_str()
            .unwrap_or_default()
            .contains("tcp_fin_timeout"),
        "{batch}"
    );
}

/// Each agent says on its `/metrics` (read through the apiserver's pod proxy) which tier it runs
/// and whether a `listen()` hook is attached: with the shipped arguments every eBPF tier sees
/// `listen()` (`fexit/inet_listen`, or the `listen()` syscall tracepoints) and the `sock-diag`
/// tier does not; `--no-syscall-tracepoints` would turn it off on a tracepoint-tier node.
#[test]
fn agents_export_their_tier_and_whether_they_see_listen() {
    let Some((_g, _ns)) = setup("agentmetrics", &[]) else {
        return;
    };
    let pods = get_json(&[
        "-n",
        "kubetune-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=kubetune-agent",
        "-o",
        "json",
    ]);
    let names: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["phase"] == "Running")
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(!names.is_empty(), "no running agent: {pods}");
    let value = |text: &str, prefix: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    for name in names {
        let path = format!("/api/v1/namespaces/kubetune-system/pods/{name}:9101/proxy/metrics");
        // The metrics render the latest scan: wait for the first one.
        let text = wait_for(
            &format!("{name}'s metrics"),
            Duration::from_secs(60),
            || {
                let text = kubectl(&["get", "--raw", &path], None).ok()?;
                value(&text, "kubetune_agent_listen_events_enabled ")?;
                Some(text)
            },
        );
        let tier = value(&text, "kubetune_agent_info{tier=\"")
            .and_then(|r| r.split('"').next().map(str::to_string))
            .unwrap_or_else(|| panic!("{name}: no kubetune_agent_info\n{text}"));
        let enabled = value(&text, "kubetune_agent_listen_events_enabled ").unwrap_or_default();
        let want = if tier == "sock-diag" { "0" } else { "1" };
        assert_eq!(enabled.trim(), want, "{name} (tier {tier})\n{text}");
    }
}

#[test]
fn rollout_policy_restarts_a_running_deployment_once() {
    let Some((_g, ns)) = setup("rollout", &[]) else {
        return;
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}}});
    ns.apply(deployment).unwrap();
    let rollout_status = || {
        kubectl(
            &[
                "-n",
                &ns.name,
                "rollout",
                "status",
                "deployment/web",
                "--timeout=180s",
            ],
            None,
        )
    };
    rollout_status().expect("deployment ready");
    let pods = |ns: &TestNs| -> Vec<Value> {
        let out = kubectl(
            &["-n", &ns.name, "get", "pods", "-l", "app=web", "-o", "json"],
            None,
        )
        .expect("list pods");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    };
    let old: Vec<String> = pods(&ns)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(old.len(), 2);
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}],
               "restartPods": "Rollout", "verificationWindowSeconds": 30}),
    ))
    .unwrap();

    // The operator restarts the Deployment (pod-template annotation, like kubectl rollout restart).
    let record = wait_for(
        "the restart record on the Deployment",
        Duration::from_secs(120),
        || {
            let d = ns.get("deployment", "web");
            let a = &d["spec"]["template"]["metadata"]["annotations"];
            a["kubetune.dev/restarted-for"]
                .as_str()
                .map(|s| s.to_string())
        },
    );
    assert_eq!(record, "keepalive@1");
    rollout_status().expect("the restart rolls out");
    let new = wait_for(
        "only new pods, all with the sysctl",
        Duration::from_secs(180),
        || {
            let ps = pods(&ns);
            let names: Vec<String> = ps
                .iter()
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            let all_new = ps.len() == 2 && names.iter().all(|n| !old.contains(n));
            let injected = ps.iter().all(|p| {
                sysctls(p).contains(&("net.ipv4.tcp_keepalive_time".into(), "600".into()))
            });
            (all_new && injected).then(|| names.join(","))
        },
    );
    eprintln!("replaced {old:?} with {new}");

    // Status: restarted 1, RolledOut=True, and Verified only after the new pods' window.
    let tp = wait_for(
        "phase Verified and RolledOut=True",
        Duration::from_secs(240),
        || {
            let tp = ns.get("tuningpolicy", "keepalive");
            let rolled = tp["status"]["conditions"].as_array()?.iter().any(|c| {
                c["type"] == "RolledOut"
                    && c["status"] == "True"
                    && c["reason"] == "RolloutComplete"
            });
            (rolled && tp["status"]["phase"] == "Verified").then(|| tp.to_string())
        },
    );
    let tp: Value = serde_json::from_str(&tp).unwrap();
    assert_eq!(tp["status"]["rollout"]["restarted"], 1, "{tp}");
    assert_eq!(tp["status"]["rollout"]["skipped"], 0, "{tp}");
    assert_eq!(tp["status"]["verifiedPods"], 2, "{tp}");
    let events = kubectl(
        &[
            "-n",
            &ns.name,
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Deployment,involvedObject.name=web,reason=Restarted",
            "-o",
            "name",
        ],
        None,
    )
    .unwrap();
    assert!(
        !events.trim().is_empty(),
        "a Restarted event on the Deployment"
    );

    // Once per generation: the template stays as restarted.
    let before = ns.get("deployment", "web");
    std::thread::sleep(Duration::from_secs(15));
    let after = ns.get("deployment", "web");
    assert_eq!(
        before["metadata"]["generation"],
        after["metadata"]["generation"]
    );
    assert_eq!(
        before["spec"]["template"]["metadata"]["annotations"],
        after["spec"]["template"]["metadata"]["annotations"]
    );
}

/// The agent DaemonSet scheduled on no node (a nodeSelector no node matches), until drop, which
/// removes the selector again and waits for the agents (also when the test fails).
struct AgentStopped;

impl AgentStopped {
    fn stop() -> Self {
        let sys = ["-n", "kubetune-system"];
        kubectl(
            &[
                sys[0],
                sys[1],
                "patch",
                "daemonset/kubetune-agent",
                "--type=merge",
                "-p",
                r#"{"spec":{"template":{"spec":{"nodeSelector":{"kubetune.dev/e2e-no-such-node":"true"}}}}}"#,
            ],
            None,
        )
        .expect("schedule the agent nowhere");
        let stopped = AgentStopped;
        kubectl(
            &[
                sys[0],
                sys[1],
                "wait",
                "--for=delete",
                "pod",
                "-l",
                "app.kubernetes.io/name=kubetune-agent",
                "--timeout=120s",
            ],
            None,
        )
        .expect("agent pods gone");
        stopped
    }
}

impl Drop for AgentStopped {
    fn drop(&mut self) {
        let sys = ["-n", "kubetune-system"];
        let _ = kubectl(
            &[
                sys[0],
                sys[1],
                "patch",
                "daemonset/kubetune-agent",
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
            ],
            None,
        );
        let _ = kubectl(
            &[
                sys[0],
                sys[1],
                "rollout",
                "status",
                "daemonset/kubetune-agent",
                "--timeout=180s",
            ],
            None,
        );
    }
}

fn condition(tp: &Value, type_: &str) -> Option<Value> {
    tp["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Verified is given only while the pod's node agent watches: every node's agent renews its
/// heartbeat Lease `kubetune-agent-<node>` (holder = the agent pod, 30 s, `watching-since`);
/// with the agents stopped, the policy that was Verified turns `Verified=False NotObserved`
/// naming the pod's node within the lease duration; with the agents back it is Verified again
/// after the restarted agent's window.
#[test]
fn a_pod_whose_agent_is_gone_is_not_verified_and_the_condition_names_its_node() {
    let Some((_g, ns)) = setup("agentgone", &[]) else {
        return;
    };
    ns.apply(policy(
        "keepalive",
        "web",
        json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}],
               "verificationWindowSeconds": 30}),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(3)); // reflector sync in the webhook
    ns.apply(pod("web-1", "web", json!({}))).unwrap();
    let node = wait_for("web-1 running", Duration::from_secs(120), || {
        let p = ns.get("pod", "web-1");
        (p["status"]["phase"] == "Running")
            .then(|| p["spec"]["nodeName"].as_str().map(str::to_string))?
    });
    let lease_name = kubetune_crds::heartbeat::lease_name(&node);
    let lease = wait_for(
        "the node's heartbeat Lease",
        Duration::from_secs(60),
        || {
            kubectl(
                &[
                    "-n",
                    "kubetune-system",
                    "get",
                    "lease",
                    &lease_name,
                    "-o",
                    "json",
                ],
                None,
            )
            .ok()
        },
    );
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| h.starts_with("kubetune-agent-")),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 30, "{lease}");
    assert!(lease["spec"]["renewTime"].is_string(), "{lease}");
    let since = lease["metadata"]["annotations"][kubetune_crds::heartbeat::WATCHING_SINCE]
        .as_str()
        .unwrap_or_default();
    assert!(
        since.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "watching-since: {lease}"
    );
    wait_for("phase Verified", Duration::from_secs(180), || {
        let tp = ns.get("tuningpolicy", "keepalive");
        (tp["status"]["phase"] == "Verified").then(String::new)
    });

    let stopped = AgentStopped::stop();
    let gone = Instant::now();
    let cond = wait_for(
        "Verified=False NotObserved naming the node",
        Duration::from_secs(120),
        || {
            let tp = ns.get("tuningpolicy", "keepalive");
            let c = condition(&tp, "Verified")?;
            (c["status"] == "False"
                && c["reason"] == kubetune_crds::reason::NOT_OBSERVED
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("node {node}"))))
            .then(|| c.to_string())
        },
    );
    eprintln!(
        "not observed {:?} after the agents were gone: {cond}",
        gone.elapsed()
    );
    let tp = ns.get("tuningpolicy", "keepalive");
    assert_eq!(tp["status"]["verifiedPods"], 0, "{tp}");
    assert_ne!(tp["status"]["phase"], "Verified", "{tp}");

    drop(stopped);
    wait_for(
        "Verified again once the agent has watched a window",
        Duration::from_secs(240),
        || {
            let tp = ns.get("tuningpolicy", "keepalive");
            (tp["status"]["phase"] == "Verified").then(String::new)
        },
    );
}

/// With tuning CNI enabled in the facts and the NetworkAttachmentDefinition CRD served, a
/// TuningCNI policy gets its namespace's NAD (owned by the policy, labelled as the operator's)
/// and stays Accepted (a NAD the operator cannot write would make it
/// `Accepted=False TuningCNIUnavailable`). Skipped when the CRD is not installed.
#[test]
fn a_tuning_cni_policy_gets_its_network_attachment_definition() {
    let Some((_g, ns)) = setup("nad", &[]) else {
        return;
    };
    if kubectl(
        &[
            "get",
            "crd",
            "network-attachment-definitions.k8s.cni.cncf.io",
        ],
        None,
    )
    .is_err()
    {
        eprintln!("skipping a_tuning_cni_policy_gets_its_network_attachment_definition: the NetworkAttachmentDefinition CRD (k8s.cni.cncf.io, Multus) is not installed");
        return;
    }
    // Tuning-CNI delivery is used only where the nodes' agents found the tuning plugin.
    let nts = get_json(&["get", "nodetunings", "-o", "json"]);
    let items = nts["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty()
        || !items
            .iter()
            .all(|nt| nt["spec"]["tuningCni"]["state"] == "Installed")
    {
        eprintln!("skipping a_tuning_cni_policy_gets_its_network_attachment_definition: not every node's NodeTuning reports the tuning CNI plugin Installed");
        return;
    }
    // The shipped override (config/cluster-facts/override.yaml): tuning CNI enabled.
    let _facts = FactsOverride::apply("tuningCni:\n  networkName: kubetune-tuning\n");
    ns.apply(policy(
        "cni",
        "web",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}], "delivery": "TuningCNI"}),
    ))
    .unwrap();
    let nad = wait_for(
        "the NetworkAttachmentDefinition kubetune-tuning",
        Duration::from_secs(90),
        || {
            kubectl(
                &[
                    "-n",
                    &ns.name,
                    "get",
                    "network-attachment-definitions.k8s.cni.cncf.io",
                    "kubetune-tuning",
                    "-o",
                    "json",
                ],
                None,
            )
            .ok()
        },
    );
    let nad: Value = serde_json::from_str(&nad).unwrap();
    assert_eq!(
        nad["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kubetune-operator",
        "{nad}"
    );
    assert_eq!(
        nad["metadata"]["ownerReferences"][0]["kind"], "TuningPolicy",
        "{nad}"
    );
    assert_eq!(
        nad["metadata"]["ownerReferences"][0]["name"], "cni",
        "{nad}"
    );
    assert!(
        nad["spec"]["config"]
            .as_str()
            .is_some_and(|c| c.contains("\"type\":\"tuning\"")),
        "{nad}"
    );
    let accepted = wait_for("Accepted=True", Duration::from_secs(60), || {
        let tp = ns.get("tuningpolicy", "cni");
        let c = condition(&tp, "Accepted")?;
        (c["status"] == "True").then(|| c.to_string())
    });
    assert!(!accepted.contains("TuningCNIUnavailable"), "{accepted}");
}
