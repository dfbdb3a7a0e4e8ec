//! The local demo and the netns end-to-end scenario: observe → decide → mutate → verify, with
//! the real parts and no cluster.
//!
//! 1. A node whose pod network namespaces start with `somaxconn` 128 (an old kernel or a
//!    hardened node image) runs two pods: `web` (nginx-like, `listen(511)`) and `api`
//!    (uwsgi-like, `listen(100)`). Neither accepts; a burst of connections overflows both.
//! 2. The agent's scanner (eBPF probes when the kernel allows them, sock_diag otherwise)
//!    reports each pod's listeners and diagnosis; `ss`/`nstat` give the ground truth.
//! 3. Two TuningPolicies ask for `net.core.somaxconn=4096`. The replacement pods are admitted
//!    through the real webhook over HTTPS, which injects the sysctl.
//! 4. The fake kubelet recreates the pods with the patched specs; the burst is replayed.
//! 5. The operator's status function turns `Verified` for `web` (somaxconn was the limit) and
//!    not for `api` (its own backlog is the limit: the sysctl is applied but is not the fix).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kubetune_agent::scanner::{EbpfMode, Scanner, ScannerConfig, Snapshot as ScanSnapshot};
use kubetune_crds::decision::PodDecision;
use kubetune_crds::facts::{ClusterFacts, NodeGroup};
use kubetune_crds::report::{ListenerReport, ListenerReportSpec};
use kubetune_crds::sysctl::KubeVersion;
use kubetune_crds::{TuningPolicy, TuningPolicyStatus};
use kubetune_webhook::admission::Snapshot;
use kubetune_webhook::plan::NamespaceFacts;
use serde_json::json;

use crate::kubelet::{Container, FakeKubelet, KubeletError, NodeConfig, RunningPod, SsListener};
use crate::webhook_local::{LocalWebhook, LocalWebhookError};

/// Demo errors.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The fake kubelet failed.
    #[error("kubelet: {0}")]
    Kubelet(#[from] KubeletError),
    /// The webhook failed.
    #[error("webhook: {0}")]
    Webhook(#[from] LocalWebhookError),
    /// Not root.
    #[error("the demo needs root (network namespaces, eBPF)")]
    NotRoot,
    /// Output.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// Something the scenario expected did not happen.
    #[error("{0}")]
    Unexpected(String),
}

/// Scenario settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Connections per burst (bounded).
    pub burst: u32,
    /// eBPF or fallback.
    pub ebpf: EbpfMode,
    /// Prefix of the netns names (unique per run).
    pub prefix: String,
    /// Path of `kt-listener`.
    pub listener_exe: PathBuf,
    /// Node-default somaxconn of new pod netns.
    pub node_somaxconn: u32,
}

/// One pod of the scenario.
#[derive(Clone, Debug)]
pub struct DemoPod {
    /// Pod name (namespace `shop`).
    pub name: &'static str,
    /// `app` label.
    pub app: &'static str,
    /// Container name.
    pub container: &'static str,
    /// Listen port.
    pub port: u16,
    /// Backlog the app passes to listen().
    pub backlog: u32,
}

/// The two pods.
pub const PODS: [DemoPod; 2] = [
    DemoPod {
        name: "web",
        app: "web",
        container: "nginx",
        port: 8080,
        backlog: 511,
    },
    DemoPod {
        name: "api",
        app: "api",
        container: "uwsgi",
        port: 9090,
        backlog: 100,
    },
];

/// What one phase observed for one pod.
#[derive(Clone, Debug)]
pub struct PodObservation {
    /// The agent's report spec for the pod.
    pub report: ListenerReportSpec,
    /// `ss -lnt` for the pod's port.
    pub ss: Option<SsListener>,
    /// `nstat` TcpExtListenOverflows in the pod netns.
    pub nstat_overflows: u64,
    /// Connections established by the burst / attempted.
    pub connected: u64,
}

/// Everything the scenario produced.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// Observation tier (`ebpf-tracepoint`, `ebpf-fentry`, `sock-diag`).
    pub tier: String,
    /// Before the policies.
    pub before: BTreeMap<String, PodObservation>,
    /// Webhook decisions for the replacement pods.
    pub decisions: BTreeMap<String, PodDecision>,
    /// The replacement pods as stored (patched).
    pub admitted: BTreeMap<String, Pod>,
    /// After recreation and the replayed burst.
    pub after: BTreeMap<String, PodObservation>,
    /// Operator status per policy.
    pub statuses: BTreeMap<String, TuningPolicyStatus>,
}

/// The pod object as its ReplicaSet would create it.
pub fn pod_object(p: &DemoPod, generation: u32) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-{generation}", p.name), "namespace": "shop", "labels": {"app": p.app}},
        "spec": {"nodeName": "demo-node", "containers": [{"name": p.container, "image": format!("example/{}", p.container),
            "ports": [{"containerPort": p.port}]}]}}))
    .expect("static pod")
}

/// The two policies of the demo.
pub fn policies() -> Vec<TuningPolicy> {
    ["web", "api"]
        .iter()
        .map(|app| {
            serde_json::from_value(json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy",
                "metadata": {"name": format!("{app}-backlog"), "namespace": "shop", "generation": 1, "uid": format!("uid-{app}-backlog"),
                    "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()},
                "spec": {"podSelector": {"matchLabels": {"app": app}}, "sysctls": [{"name": "net.core.somaxconn", "value": "4096"}],
                    "verificationWindowSeconds": 30}}))
            .expect("static policy")
        })
        .collect()
}

/// Cluster facts of the demo node: its kubelet allows `net.core.somaxconn`.
pub fn facts() -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: vec![NodeGroup {
            name: "demo-node".into(),
            node_selector: BTreeMap::new(),
            allowed_unsafe_sysctls: vec!["net.core.somaxconn".into()],
        }],
        tuning_cni: None,
        ..Default::default()
    }
}

fn container(p: &DemoPod) -> Container {
    Container {
        name: p.container.into(),
        args: [
            "listen",
            "--addr",
            &format!("127.0.0.1:{}", p.port),
            "--backlog",
            &p.backlog.to_string(),
            "--max-secs",
            "300",
        ]
        .map(String::from)
        .to_vec(),
    }
}

fn observe(
    cfg: &DemoConfig,
    scanner: &mut Scanner,
    running: &[RunningPod],
    bursts: &HashMap<String, u64>,
) -> Result<(ScanSnapshot, BTreeMap<String, PodObservation>), DemoError> {
    let snap = scanner.scan();
    let mut out = BTreeMap::new();
    for (p, rp) in PODS.iter().zip(running) {
        let ns = snap
            .netns
            .iter()
            .find(|n| n.name.as_deref() == Some(rp.netns.as_str()))
            .ok_or_else(|| {
                DemoError::Unexpected(format!("the agent did not see netns {}", rp.netns))
            })?;
        let uid = rp.pod.metadata.uid.clone().unwrap_or_default();
        let report = ns.to_report_spec(&uid, "demo-node", &snap, &HashMap::new());
        let ss = rp.ss_listeners()?.into_iter().find(|l| l.port == p.port);
        out.insert(
            p.name.to_string(),
            PodObservation {
                report,
                ss,
                nstat_overflows: rp.listen_overflows()?,
                connected: bursts.get(p.name).copied().unwrap_or(0),
            },
        );
    }
    let _ = cfg;
    Ok((snap, out))
}

fn print_reports(
    w: &mut dyn Write,
    obs: &BTreeMap<String, PodObservation>,
    pods: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    writeln!(w, "  $ kubectl get listenerreports -n shop")?;
    writeln!(
        w,
        "  {:<10} {:>9} {:>9} {:>9}  {:<24}",
        "NAME", "SOMAXCONN", "LISTENERS", "OVERFLOWS", "DIAGNOSIS"
    )?;
    for (name, o) in obs {
        let r = &o.report;
        let pod = pods.get(name).cloned().unwrap_or_else(|| name.clone());
        writeln!(
            w,
            "  {:<10} {:>9} {:>9} {:>9}  {:<24}",
            pod,
            r.somaxconn.map(|s| s.to_string()).unwrap_or("-".into()),
            r.listener_count,
            r.overflows_total,
            format!("{:?}", r.diagnosis)
        )?;
    }
    writeln!(w)?;
    writeln!(w, "  {:<10} {:<16} {:>9} {:>9} {:>6} {:>6}  {:<18}  ground truth (ss Recv-Q/Send-Q, nstat ListenOverflows)", "POD", "LISTENER", "REQUESTED", "EFFECTIVE", "QUEUE", "QMAX", "LIMITED BY")?;
    for (name, o) in obs {
        for l in &o.report.listeners {
            let truth = match &o.ss {
                Some(s) => format!("{}/{}, {}", s.recv_q, s.send_q, o.nstat_overflows),
                None => "-".into(),
            };
            writeln!(
                w,
                "  {:<10} {:<16} {:>9} {:>9} {:>6} {:>6}  {:<18}  {truth}",
                pods.get(name).cloned().unwrap_or_else(|| name.clone()),
                format!("{}:{}", l.address, l.port),
                l.requested_backlog
                    .map(|b| b.to_string())
                    .unwrap_or("unknown".into()),
                l.effective_backlog,
                l.queue_now,
                l.queue_max,
                format!("{:?}", l.limited_by)
            )?;
        }
    }
    Ok(())
}

/// Turn report specs into ListenerReport objects (name = pod name), as the agent writes them.
pub fn report_objects(
    obs: &BTreeMap<String, PodObservation>,
    pods: &BTreeMap<String, Pod>,
) -> Vec<ListenerReport> {
    obs.iter()
        .filter_map(|(name, o)| {
            let pod = pods.get(name)?;
            let mut r = ListenerReport::new(pod.metadata.name.as_deref()?, o.report.clone());
            r.metadata.namespace = Some("shop".into());
            Some(r)
        })
        .collect()
}

/// Run the scenario, narrating to `w`.
pub async fn run(cfg: &DemoConfig, w: &mut dyn Write) -> Result<DemoOutcome, DemoError> {
    if !crate::kubelet::is_root() {
        return Err(DemoError::NotRoot);
    }
    writeln!(w, "== 1. kubetune-agent starts on the node ==")?;
    let (mut scanner, tier) = start_agent(cfg, w)?;
    // The agent watches this node from now on, without a gap (the demo is its heartbeat).
    let agent_started = k8s_openapi::jiff::Timestamp::now();
    let kubelet = FakeKubelet::new(
        node_config(cfg),
        cfg.prefix.clone(),
        cfg.listener_exe.clone(),
    );

    writeln!(
        w,
        "\n== 2. Two pods start; new pod netns on this node get net.core.somaxconn={} ==",
        cfg.node_somaxconn
    )?;
    let (mut running, names) = start_pods(&kubelet, w)?;
    writeln!(
        w,
        "\n== 3. A burst of {} connections hits each pod ==",
        cfg.burst
    )?;
    let bursts = burst_all(cfg, &running, Some(&mut *w))?;
    let (_, before) = observe(cfg, &mut scanner, &running, &bursts)?;
    writeln!(w, "\n== 4. What the agent reports ==")?;
    print_reports(w, &before, &names)?;
    print_advice(w, &before)?;

    writeln!(
        w,
        "\n== 5. TuningPolicies web-backlog and api-backlog ask for net.core.somaxconn=4096 =="
    )?;
    let policies = policies();
    let (decisions, admitted) = admit_replacements(&policies, w).await?;

    writeln!(
        w,
        "\n== 6. The kubelet recreates the pods with the patched spec and the burst is replayed =="
    )?;
    for rp in &mut running {
        rp.stop();
    }
    let (mut running, admitted, names) = restart_pods(&kubelet, admitted, w)?;
    let bursts = burst_all(cfg, &running, None)?;
    let (_, after) = observe(cfg, &mut scanner, &running, &bursts)?;
    print_reports(w, &after, &names)?;

    writeln!(
        w,
        "\n== 7. The operator's verdict, right after the restart =="
    )?;
    let reports = report_objects(&after, &admitted);
    let first = crate::demo_status::statuses(
        &policies,
        &admitted,
        &reports,
        &facts(),
        agent_started,
        k8s_openapi::jiff::Timestamp::now(),
    );
    crate::demo_status::print(w, &first)?;
    let window = policies[0].spec.window_seconds();
    writeln!(w, "\n  Verified needs {window}s (the policy's verificationWindowSeconds) of observed clean running.")?;
    writeln!(w, "  Waiting {window}s while the agent keeps watching ...")?;
    tokio::time::sleep(std::time::Duration::from_secs(
        u64::try_from(window).unwrap_or(30) + 1,
    ))
    .await;
    let (_, after) = observe(cfg, &mut scanner, &running, &bursts)?;
    let reports = report_objects(&after, &admitted);
    writeln!(w, "\n== 8. The operator's verdict after the window ==")?;
    let statuses = crate::demo_status::statuses(
        &policies,
        &admitted,
        &reports,
        &facts(),
        agent_started,
        k8s_openapi::jiff::Timestamp::now(),
    );
    crate::demo_status::print(w, &statuses)?;
    writeln!(w)?;
    print_verdicts(w, &statuses)?;
    for rp in &mut running {
        rp.stop();
    }
    writeln!(
        w,
        "\n== cleaned up: pods stopped, network namespaces deleted =="
    )?;
    Ok(DemoOutcome {
        tier,
        before,
        decisions,
        admitted,
        after,
        statuses,
    })
}

/// Step 1: the agent's scanner, and its observation tier as printed.
fn start_agent(cfg: &DemoConfig, w: &mut dyn Write) -> Result<(Scanner, String), DemoError> {
    let scanner = Scanner::new(ScannerConfig {
        ebpf: cfg.ebpf,
        ..Default::default()
    });
    let tier = scanner.tier().as_str().to_string();
    match scanner.fallback_reason() {
        None => writeln!(
            w,
            "  observation tier: {tier} (eBPF programs loaded into this kernel)"
        )?,
        Some(why) => writeln!(w, "  observation tier: {tier} (fallback: {why})")?,
    }
    Ok((scanner, tier))
}

/// The demo node: pod netns get `cfg.node_somaxconn`; the kubelet allows net.core.somaxconn.
fn node_config(cfg: &DemoConfig) -> NodeConfig {
    NodeConfig {
        kubernetes_version: KubeVersion::new(1, 31),
        default_sysctls: BTreeMap::from([(
            "net.core.somaxconn".to_string(),
            cfg.node_somaxconn.to_string(),
        )]),
        allowed_unsafe_sysctls: vec!["net.core.somaxconn".into()],
        tuning_network: None,
    }
}

/// Step 2: the first generation of both pods (not accepting), and their names by demo pod.
fn start_pods(
    kubelet: &FakeKubelet,
    w: &mut dyn Write,
) -> Result<(Vec<RunningPod>, BTreeMap<String, String>), DemoError> {
    let mut running = Vec::new();
    let mut names = BTreeMap::new();
    for p in &PODS {
        let rp = kubelet.run_pod(pod_object(p, 1), &[container(p)])?;
        writeln!(
            w,
            "  pod shop/{}: {} calls listen(127.0.0.1:{}, backlog {}) and is too busy to accept",
            rp.name(),
            p.container,
            p.port,
            p.backlog
        )?;
        names.insert(p.name.to_string(), rp.name().to_string());
        running.push(rp);
    }
    Ok((running, names))
}

/// A burst against every running pod: connections established per demo pod (printed when `w`).
fn burst_all(
    cfg: &DemoConfig,
    running: &[RunningPod],
    mut w: Option<&mut dyn Write>,
) -> Result<HashMap<String, u64>, DemoError> {
    let mut bursts = HashMap::new();
    for (p, rp) in PODS.iter().zip(running) {
        let b = rp.burst(
            &cfg.listener_exe,
            &format!("127.0.0.1:{}", p.port),
            cfg.burst,
        )?;
        if let Some(w) = w.as_deref_mut() {
            writeln!(
                w,
                "  {}: {}/{} connections established, the rest wait in SYN retransmits",
                rp.name(),
                b.connected,
                b.attempted
            )?;
        }
        bursts.insert(p.name.to_string(), b.connected);
    }
    Ok(bursts)
}

/// Step 4's advice, per diagnosis.
fn print_advice(
    w: &mut dyn Write,
    observed: &BTreeMap<String, PodObservation>,
) -> Result<(), DemoError> {
    for (name, o) in observed {
        let advice = match o.report.diagnosis {
            kubetune_crds::Diagnosis::SomaxconnBound => "somaxconn clips the backlog the app asked for: raising net.core.somaxconn at pod creation fixes it",
            kubetune_crds::Diagnosis::ApplicationBacklogBound => "the app's own listen() backlog binds: raise it in the app; a sysctl will not help",
            kubetune_crds::Diagnosis::SlowAccept => "the queue sits full although the backlog is generous: the app is not accepting",
            kubetune_crds::Diagnosis::Healthy => "no overflows",
        };
        writeln!(w, "  -> {name}: {:?}: {advice}", o.report.diagnosis)?;
    }
    Ok(())
}

/// Step 5: the replacement pods go through the real webhook over HTTPS; their decisions and the
/// pods as stored, by demo pod.
async fn admit_replacements(
    policies: &[TuningPolicy],
    w: &mut dyn Write,
) -> Result<(BTreeMap<String, PodDecision>, BTreeMap<String, Pod>), DemoError> {
    let webhook = LocalWebhook::start(Snapshot {
        policies: policies.to_vec(),
        namespaces: BTreeMap::from([(
            "shop".to_string(),
            NamespaceFacts {
                name: "shop".into(),
                labels: BTreeMap::new(),
            },
        )]),
        facts: facts(),
        ..Default::default()
    })
    .await?;
    writeln!(
        w,
        "  webhook serving AdmissionReview v1 on https://{} (fresh CA)",
        webhook.addr
    )?;
    writeln!(w, "  sysctls only apply when a pod starts: the running pods need a restart. The ReplicaSets recreate them:")?;
    let mut decisions = BTreeMap::new();
    let mut admitted = BTreeMap::new();
    for p in &PODS {
        let (stored, decision) = webhook.admit(&pod_object(p, 2)).await?;
        let decision = decision
            .ok_or_else(|| DemoError::Unexpected(format!("no decision recorded on {}", p.name)))?;
        writeln!(
            w,
            "  admitted shop/{}: {}",
            stored.metadata.name.as_deref().unwrap_or(""),
            decision.summary()
        )?;
        decisions.insert(p.name.to_string(), decision);
        admitted.insert(p.name.to_string(), stored);
    }
    Ok((decisions, admitted))
}

/// Step 6: the kubelet runs the admitted pods; the running pods, the pods as running (with
/// their uids) and their names, by demo pod.
#[allow(clippy::type_complexity)]
fn restart_pods(
    kubelet: &FakeKubelet,
    mut admitted: BTreeMap<String, Pod>,
    w: &mut dyn Write,
) -> Result<
    (
        Vec<RunningPod>,
        BTreeMap<String, Pod>,
        BTreeMap<String, String>,
    ),
    DemoError,
> {
    let mut running = Vec::new();
    let mut names = BTreeMap::new();
    for p in &PODS {
        let mut pod = admitted[p.name].clone();
        pod.metadata.uid = None;
        let rp = kubelet.run_pod(pod, &[container(p)])?;
        writeln!(
            w,
            "  pod shop/{} started, netns somaxconn = {}",
            rp.name(),
            rp.sysctl("net.core.somaxconn")?
        )?;
        admitted.insert(p.name.to_string(), rp.pod.clone());
        names.insert(p.name.to_string(), rp.name().to_string());
        running.push(rp);
    }
    Ok((running, admitted, names))
}

/// Step 8's last lines: each policy's Verified condition in words.
fn print_verdicts(
    w: &mut dyn Write,
    statuses: &BTreeMap<String, TuningPolicyStatus>,
) -> Result<(), DemoError> {
    for (name, st) in statuses {
        let verified = kubetune_operator::status::find_condition(
            st,
            kubetune_crds::policy::condition::VERIFIED,
        );
        match verified {
            Some(c) if c.status == "True" => {
                writeln!(w, "  {name}: Verified, measured: {}", c.message)?
            }
            Some(c) => writeln!(w, "  {name}: not verified ({}): {}", c.reason, c.message)?,
            None => writeln!(w, "  {name}: no Verified condition")?,
        }
    }
    Ok(())
}
