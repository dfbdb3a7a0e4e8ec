//! Detection-latency benchmark (not a timed test; run as root):
//! `cargo bench -p kubetune-agent --bench detection`
//!
//! The release agent runs in cluster-write mode (`kubetune-agent run`) against the in-memory
//! fake apiserver of `kubetune-test-support` (HTTPS, a kubeconfig points at it), which serves the
//! node's Pods and timestamps every write, e.g. each `ListenerReport` server-side apply. The pod
//! is a stand-in: a named netns with a pause process in a kubepods cgroup (so the agent
//! attributes the netns to the pod), and a `TCP_DEFER_ACCEPT` listener (backlog 16, accepting
//! one connection per 50 ms) in it. A burst fills the accept queue and then sends the
//! data-bearing final ACKs of 16 more handshakes: final-ACK-phase overflows, which the kernel
//! reports through `kfree_skb` (drop time = when the burst sends those ACKs; loopback delivers
//! them synchronously).
//!
//! 1. Latency: kernel drop → the apply carrying the new overflow count arrives (bursts at a
//!    random phase against the scan clock), over
//!    `KT_BENCH_BURSTS` bursts (default 10) per run, `KT_BENCH_RUNS` runs (default 3) with
//!    overflow events, and one run polling only (`--no-overflow-events`). Bursts start once the
//!    pod's last write is older than the minimum write interval (`--min-write-interval 3s`
//!    here, so runs stay short; scan `--interval 5s`, the default). Also: writes per burst.
//! 2. Writes under a sustained flood (`KT_BENCH_FLOOD_SECS`, default 30 s of back-to-back
//!    bursts) with the agent's defaults (`--interval 5s --min-write-interval 10s`), events vs
//!    poll only.
//!
//! 3. The operator's half: kernel drop → `ListenerReport` apply → the release operator's first
//!    `TuningPolicy` status write showing it (`status.overflowingPods` one higher), with the
//!    agent's defaults. Per run (`KT_BENCH_RUNS`, default 3): a fresh fake apiserver seeded with
//!    the namespaces, the Node, `KT_BENCH_STATUS_BURSTS` (default 5) stand-in pods as the webhook
//!    admitted them (decision annotation, injected sysctl in the spec) and the TuningPolicy
//!    selecting them; the agent and the operator (`--leader-elect=false`, `--cert-mode
//!    cert-manager`) started on it; one burst per pod at a random phase. The operator binary is
//!    `KT_OPERATOR_BIN` or the release one next to the agent (build it first: `cargo build
//!    --release -p kubetune-operator`). Also: status writes per burst.
//!
//! Set `KT_BENCH_ONLY=latency|flood|status` to run one part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubetune_test_support::apiserver::FakeApiserver;
use kubetune_test_support::netns::{self, AcceptMode, Burst, ListenerSpec, NamedNetns};

const NODE: &str = "bench-node";
const BACKLOG: usize = 16;
const PODS: &str = "/api/v1/pods";
const REPORTS: &str = "/apis/kubetune.dev/v1alpha1/listenerreports";
const POLICIES: &str = "/apis/kubetune.dev/v1alpha1/tuningpolicies";

/// One `ListenerReport` apply as the fake apiserver received it.
#[derive(Debug, Clone)]
struct Apply {
    at: Instant,
    pod: String,
    overflows_total: i64,
}

/// The agent's `ListenerReport` applies so far (not the operator's status writes).
fn applies(api: &FakeApiserver) -> Vec<Apply> {
    api.writes_where(|w| w.collection == REPORTS && w.subresource.is_none())
        .into_iter()
        .map(|w| Apply {
            at: w.at,
            pod: w.name,
            overflows_total: w.body["spec"]["overflowsTotal"].as_i64().unwrap_or(-1),
        })
        .collect()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A stand-in pod: a named netns held by a pause process in a kubepods cgroup (systemd driver,
/// BestEffort), as a kubelet + runtime would set it up.
struct StandInPod {
    uid: String,
    ns: NamedNetns,
    pause: Child,
    cgroups: Vec<PathBuf>,
}

impl StandInPod {
    fn create() -> StandInPod {
        let (a, b) = (rand_u64(), rand_u64());
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            a & 0xffff,
            (a >> 16) & 0xfff,
            b & 0xfff,
            b >> 16
        );
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup v2 hierarchy");
        let slice = root.join("kubepods.slice/kubepods-besteffort.slice");
        let pod = slice.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let scope = pod.join(format!("cri-containerd-{:016x}{:048x}.scope", a, b));
        std::fs::create_dir_all(&scope).expect("create the pod cgroup");
        let ns = NamedNetns::create(&NamedNetns::unique_name("det")).expect("netns");
        let pause = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "3600"])
            .spawn()
            .expect("pause process");
        std::fs::write(scope.join("cgroup.procs"), pause.id().to_string())
            .expect("move the pause process into the pod cgroup");
        StandInPod {
            uid,
            ns,
            pause,
            cgroups: vec![
                scope,
                pod,
                slice.clone(),
                slice.parent().unwrap().to_path_buf(),
            ],
        }
    }

    /// The pod object `name` in namespace `bench`, on [`NODE`], Running.
    fn object(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "uid": self.uid},
            "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "bench"}]},
            "status": {"phase": "Running"},
        })
    }
}

impl Drop for StandInPod {
    fn drop(&mut self) {
        let _ = self.pause.kill();
        let _ = self.pause.wait();
        for c in &self.cgroups {
            // Shared parents stay when another run still uses them (rmdir fails on non-empty).
            let _ = std::fs::remove_dir(c);
        }
    }
}

/// The release agent in cluster mode; killed on drop.
struct Agent(Child);

impl Agent {
    fn start(
        kubeconfig: &Path,
        log: &Path,
        events: bool,
        interval: &str,
        min_write: &str,
    ) -> Agent {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubetune-agent"));
        cmd.args([
            "run",
            "--node-name",
            NODE,
            "--metrics",
            &metrics.to_string(),
        ])
        .args(["--interval", interval, "--min-write-interval", min_write])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
        if !events {
            cmd.arg("--no-overflow-events");
        }
        Agent(cmd.spawn().expect("agent"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fills the accept queue, then sends the final ACKs (with data) of `BACKLOG` more handshakes,
/// which overflow. Returns when those were sent (the drop time) and the client sockets.
fn overflow_burst(ns: &NamedNetns, port: u16) -> (Instant, Burst, Burst) {
    let fill = ns.burst(port, BACKLOG, Duration::from_millis(100)).unwrap();
    fill.send_byte_each();
    let over = ns.burst(port, BACKLOG, Duration::from_millis(100)).unwrap();
    let t0 = Instant::now();
    over.send_byte_each();
    (t0, fill, over)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    // Dropped first: the pod (netns, pause process, cgroups), then the rest.
    api: FakeApiserver,
    kubeconfig: PathBuf,
    dir: PathBuf,
    pod: StandInPod,
    port: u16,
    _listener: netns::TestListener,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("kt-bench-detection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pod = StandInPod::create();
    let api = FakeApiserver::start().expect("fake apiserver");
    api.insert(PODS, pod.object("bench-web"));
    let kubeconfig = api.write_kubeconfig(&dir).unwrap();
    let listener = pod
        .ns
        .spawn_listener(ListenerSpec {
            backlog: BACKLOG as i32,
            port: 0,
            accept: AcceptMode::Every(Duration::from_millis(50)),
            defer_accept_secs: Some(30),
        })
        .expect("listener");
    Setup {
        api,
        kubeconfig,
        dir,
        port: listener.port(),
        pod,
        _listener: listener,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for the agent's first write of the pod's report (it needs a scan and the pod list).
fn wait_first_write(s: &Setup, since: usize) {
    assert!(
        wait_until(Duration::from_secs(30), || applies(&s.api).len() > since),
        "the agent wrote no ListenerReport within 30 s (log in {})",
        s.dir.display()
    );
}

/// Waits until the pod's last write is `quiet` old.
fn wait_quiet(s: &Setup, quiet: Duration) {
    wait_until(Duration::from_secs(60), || {
        applies(&s.api)
            .last()
            .is_none_or(|a| a.at.elapsed() >= quiet)
    });
}

/// One run of bursts: (latencies in seconds, writes per burst).
fn latency_run(s: &Setup, events: bool, bursts: u64, run: u64) -> (Vec<f64>, Vec<usize>) {
    let min_write = Duration::from_secs(3);
    let log = s.dir.join(format!("agent-latency-{run}-{events}.log"));
    let before = applies(&s.api).len();
    let _agent = Agent::start(&s.kubeconfig, &log, events, "5s", "3s");
    wait_first_write(s, before);
    let (mut lat, mut writes) = (Vec::new(), Vec::new());
    for _ in 0..bursts {
        wait_quiet(s, min_write + Duration::from_secs(1));
        // A random phase against the agent's 5 s scan clock (else poll-only latency would be
        // the same fraction of the interval every time).
        std::thread::sleep(Duration::from_millis(rand_u64() % 5000));
        let prev = applies(&s.api).iter().map(|a| a.overflows_total).max();
        let (t0, fill, over) = overflow_burst(&s.pod.ns, s.port);
        let got = wait_until(Duration::from_secs(20), || {
            applies(&s.api)
                .iter()
                .any(|a| a.at >= t0 && Some(a.overflows_total) > prev)
        });
        drop((fill, over));
        if !got {
            eprintln!("  burst: no report with a higher overflow count within 20 s");
            continue;
        }
        let first = applies(&s.api)
            .into_iter()
            .find(|a| a.at >= t0 && Some(a.overflows_total) > prev)
            .unwrap();
        lat.push(first.at.duration_since(t0).as_secs_f64());
        // Writes caused by this burst: up to the quiet point before the next one.
        wait_quiet(s, min_write + Duration::from_secs(1));
        writes.push(applies(&s.api).iter().filter(|a| a.at >= t0).count());
    }
    (lat, writes)
}

fn latency() {
    let s = setup();
    let (runs, bursts) = (env_num("KT_BENCH_RUNS", 3), env_num("KT_BENCH_BURSTS", 10));
    println!(
        "detection latency (kernel drop -> ListenerReport apply at the fake apiserver; final-ACK-phase overflows; {bursts} bursts per run; agent --interval 5s --min-write-interval 3s):"
    );
    let (mut p50s, mut p99s, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (lat, writes) = latency_run(&s, true, bursts, run);
        if lat.is_empty() {
            println!("  events run {run}: no burst detected");
            continue;
        }
        let (p50, p99) = (quantile(&lat, 0.5), quantile(&lat, 0.99));
        println!(
            "  events run {run}: p50 {:.3} s, p99 {:.3} s, min {:.3} s, max {:.3} s; writes per burst {writes:?}",
            p50,
            p99,
            quantile(&lat, 0.0),
            quantile(&lat, 1.0)
        );
        p50s.push(p50);
        p99s.push(p99);
        all.extend(lat);
    }
    if !p50s.is_empty() {
        println!(
            "  events: p50 over runs min/median/max {:.3}/{:.3}/{:.3} s; p99 min/median/max {:.3}/{:.3}/{:.3} s (targets p50 <= 1 s, p99 <= 2 s); all {} bursts: p50 {:.3} s, p99 {:.3} s",
            quantile(&p50s, 0.0),
            quantile(&p50s, 0.5),
            quantile(&p50s, 1.0),
            quantile(&p99s, 0.0),
            quantile(&p99s, 0.5),
            quantile(&p99s, 1.0),
            all.len(),
            quantile(&all, 0.5),
            quantile(&all, 0.99)
        );
    }
    let (lat, writes) = latency_run(&s, false, bursts, runs);
    if !lat.is_empty() {
        println!(
            "  poll only (--no-overflow-events), 1 run: p50 {:.3} s, p99 {:.3} s, min {:.3} s, max {:.3} s; writes per burst {writes:?}",
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            quantile(&lat, 0.0),
            quantile(&lat, 1.0)
        );
    }
}

/// Writes during a sustained flood of `secs` (and the minimum write interval after it).
fn flood_run(s: &Setup, events: bool, secs: u64) -> (usize, u64) {
    let log = s.dir.join(format!("agent-flood-{events}.log"));
    let before = applies(&s.api).len();
    let _agent = Agent::start(&s.kubeconfig, &log, events, "5s", "10s");
    wait_first_write(s, before);
    wait_quiet(s, Duration::from_secs(11));
    let t0 = Instant::now();
    let mut bursts = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let b = overflow_burst(&s.pod.ns, s.port);
        std::thread::sleep(Duration::from_millis(100));
        drop(b);
        bursts += 1;
    }
    std::thread::sleep(Duration::from_secs(11));
    let n = applies(&s.api).iter().filter(|a| a.at >= t0).count();
    (n, bursts)
}

fn flood() {
    let s = setup();
    let secs = env_num("KT_BENCH_FLOOD_SECS", 30);
    println!(
        "writes under a sustained flood ({secs} s of back-to-back overflow bursts, then 11 s; agent defaults --interval 5s --min-write-interval 10s):"
    );
    for events in [true, false] {
        let (n, bursts) = flood_run(&s, events, secs);
        println!(
            "  {}: {n} ListenerReport writes for {bursts} bursts over {} s",
            if events {
                "overflow events"
            } else {
                "poll only (--no-overflow-events)"
            },
            secs + 11
        );
    }
}

/// The release operator binary: `KT_OPERATOR_BIN`, else `kubetune-operator` in this bench's
/// profile directory (`cargo build --release -p kubetune-operator` first: a bench cannot build
/// it itself, cargo holds the target directory's lock while the bench runs).
fn operator_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KT_OPERATOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the bench's path");
    // <target>/release/deps/detection-<hash> → <target>/release/kubetune-operator
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubetune-operator"))
        .expect("the bench's profile directory");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release -p kubetune-operator` first (or set KT_OPERATOR_BIN)",
        bin.display()
    );
    bin
}

/// The release operator against the fake apiserver (one replica: no leader election;
/// cert-manager mode: no webhook-certificate loop); killed on drop.
struct Operator(Child);

impl Operator {
    fn start(bin: &Path, kubeconfig: &Path, log: &Path) -> Operator {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let child = Command::new(bin)
            .args(["--leader-elect=false", "--cert-mode", "cert-manager"])
            .args(["--metrics", &metrics.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("operator");
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const POLICY: &str = "bench-web";
const SYSCTL: (&str, &str) = ("net.ipv4.ip_local_port_range", "1024 65535");

/// What the cluster holds before the agent and the operator start: namespaces, the node, the
/// stand-in pods (admitted by the webhook: the decision annotation and the injected sysctl in
/// their spec) and the TuningPolicy selecting them.
fn seed(api: &FakeApiserver, pods: &[StandInPod]) {
    use kubetune_test_support::operator::{injected, pod_in, policy_in};
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for ns in ["bench", "kubetune-system"] {
        api.insert(
            "/api/v1/namespaces",
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    let info = [
        "architecture",
        "bootID",
        "containerRuntimeVersion",
        "kernelVersion",
    ]
    .into_iter()
    .chain([
        "kubeProxyVersion",
        "machineID",
        "operatingSystem",
        "osImage",
    ])
    .chain(["systemUUID"])
    .map(|k| (k.to_string(), serde_json::Value::from("bench")))
    .chain([("kubeletVersion".to_string(), "v1.31.0".into())])
    .collect::<serde_json::Map<_, _>>();
    api.insert(
        "/api/v1/nodes",
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "status": {"nodeInfo": info}}),
    );
    for (i, p) in pods.iter().enumerate() {
        let name = format!("{POLICY}-{i}");
        let record = [injected(POLICY, 1, SYSCTL.0, SYSCTL.1)];
        let mut obj =
            serde_json::to_value(pod_in("bench", &name, POLICY, 0, Some(&record))).unwrap();
        kubetune_test_support::json::merge(&mut obj, p.object(&name));
        obj["metadata"]["creationTimestamp"] = now.clone().into();
        obj["status"]["startTime"] = now.clone().into();
        api.insert(PODS, obj);
    }
    let mut policy =
        serde_json::to_value(policy_in("bench", POLICY, 1, POLICY, &[SYSCTL])).unwrap();
    policy["metadata"]["creationTimestamp"] = now.into();
    api.insert(POLICIES, policy);
}

/// The operator's TuningPolicy status writes: (arrival, `status.overflowingPods`).
fn status_writes(api: &FakeApiserver) -> Vec<(Instant, i64)> {
    api.writes_where(|w| w.collection == POLICIES && w.subresource.as_deref() == Some("status"))
        .into_iter()
        .map(|w| {
            (
                w.at,
                w.body["status"]["overflowingPods"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// One burst's figures: drop → report apply, drop → status write, report → status write (s).
struct Leg {
    report: f64,
    status: f64,
    report_to_status: f64,
}

/// One run: a fresh fake apiserver, `n` fresh stand-in pods, the agent and the operator; one
/// burst per pod, so that `status.overflowingPods` grows by one per burst (a pod's
/// `overflowsRecent` stays above 0 for the agent's 60 s window, longer than a run).
/// Returns the legs and the status writes in each burst's interval.
fn status_run(op: &Path, n: usize, run: u64) -> (Vec<Leg>, Vec<usize>) {
    let dir = std::env::temp_dir().join(format!("kt-bench-status-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pods: Vec<StandInPod> = (0..n).map(|_| StandInPod::create()).collect();
    let listeners: Vec<netns::TestListener> = pods
        .iter()
        .map(|p| {
            p.ns.spawn_listener(ListenerSpec {
                backlog: BACKLOG as i32,
                port: 0,
                accept: AcceptMode::Every(Duration::from_millis(50)),
                defer_accept_secs: Some(30),
            })
            .expect("listener")
        })
        .collect();
    let api = FakeApiserver::start().expect("fake apiserver");
    seed(&api, &pods);
    let kubeconfig = api.write_kubeconfig(&dir).unwrap();
    let _agent = Agent::start(&kubeconfig, &dir.join("agent.log"), true, "5s", "10s");
    let _operator = Operator::start(op, &kubeconfig, &dir.join("operator.log"));
    // Ready: every pod has a report, and the policy a status that matches every pod.
    let ready = wait_until(Duration::from_secs(60), || {
        let reported: std::collections::BTreeSet<String> =
            applies(&api).into_iter().map(|a| a.pod).collect();
        let status = api
            .get(POLICIES, "bench", POLICY)
            .map(|p| p["status"].clone())
            .unwrap_or_default();
        reported.len() == n && status["matchedPods"] == n && status["overflowingPods"] == 0
    });
    assert!(
        ready,
        "no report of every pod and status matching them within 60 s (logs in {})",
        dir.display()
    );
    // The reconcile of the last first report, if it changes the status.
    std::thread::sleep(Duration::from_secs(2));
    let (mut legs, mut t0s) = (Vec::new(), Vec::new());
    for (k, (pod, l)) in pods.iter().zip(&listeners).enumerate() {
        // A random phase against the agent's 5 s scan clock and the operator's timers.
        std::thread::sleep(Duration::from_millis(rand_u64() % 5000));
        let name = format!("{POLICY}-{k}");
        let (t0, fill, over) = overflow_burst(&pod.ns, l.port());
        t0s.push(t0);
        let mut t1 = None;
        let got = wait_until(Duration::from_secs(20), || {
            t1 = t1.or_else(|| {
                applies(&api)
                    .into_iter()
                    .find(|a| a.at >= t0 && a.pod == name && a.overflows_total > 0)
                    .map(|a| a.at)
            });
            t1.is_some()
                && status_writes(&api)
                    .iter()
                    .any(|(at, o)| *at >= t0 && *o > k as i64)
        });
        drop((fill, over));
        let Some(t1) = t1.filter(|_| got) else {
            eprintln!(
                "  run {run} burst {k}: no report or no status within 20 s (logs in {})",
                dir.display()
            );
            continue;
        };
        let t2 = status_writes(&api)
            .into_iter()
            .find(|(at, o)| *at >= t0 && *o > k as i64)
            .map(|(at, _)| at)
            .unwrap();
        legs.push(Leg {
            report: t1.duration_since(t0).as_secs_f64(),
            status: t2.duration_since(t0).as_secs_f64(),
            report_to_status: t2.saturating_duration_since(t1).as_secs_f64(),
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    let writes = status_writes(&api);
    let per_burst = t0s
        .iter()
        .enumerate()
        .map(|(i, t0)| {
            let end = t0s.get(i + 1).copied();
            writes
                .iter()
                .filter(|(at, _)| at >= t0 && end.is_none_or(|e| *at < e))
                .count()
        })
        .collect();
    drop((_operator, _agent, listeners, pods));
    if legs.len() == n {
        // Logs stay for a run with a missed burst (its path was printed).
        let _ = std::fs::remove_dir_all(&dir);
    }
    (legs, per_burst)
}

/// min/median/max of `v`.
fn spread(v: &[f64]) -> String {
    format!(
        "{:.3}/{:.3}/{:.3}",
        quantile(v, 0.0),
        quantile(v, 0.5),
        quantile(v, 1.0)
    )
}

fn status() {
    let (runs, n) = (
        env_num("KT_BENCH_RUNS", 3),
        env_num("KT_BENCH_STATUS_BURSTS", 5) as usize,
    );
    let op = operator_binary();
    println!(
        "detection latency to the TuningPolicy status (kernel drop -> ListenerReport apply -> the operator's first status write with the new status.overflowingPods, at the fake apiserver; {n} pods, one burst each, per run; agent defaults --interval 5s --min-write-interval 10s; operator {}):",
        op.display()
    );
    let mut per_run: Vec<[f64; 4]> = Vec::new();
    let mut all: Vec<Leg> = Vec::new();
    for run in 0..runs {
        let (legs, writes) = status_run(&op, n, run);
        if legs.is_empty() {
            println!("  run {run}: no burst reached the status");
            continue;
        }
        let s: Vec<f64> = legs.iter().map(|l| l.status).collect();
        let rs: Vec<f64> = legs.iter().map(|l| l.report_to_status).collect();
        let r: Vec<f64> = legs.iter().map(|l| l.report).collect();
        println!(
            "  run {run}: drop -> status p50 {:.3} s, p99 {:.3} s; report -> status p50 {:.3} s, p99 {:.3} s; drop -> report p50 {:.3} s; status writes per burst {writes:?}",
            quantile(&s, 0.5),
            quantile(&s, 0.99),
            quantile(&rs, 0.5),
            quantile(&rs, 0.99),
            quantile(&r, 0.5),
        );
        per_run.push([
            quantile(&s, 0.5),
            quantile(&s, 0.99),
            quantile(&rs, 0.5),
            quantile(&rs, 0.99),
        ]);
        all.extend(legs);
    }
    if per_run.is_empty() {
        return;
    }
    let col = |i: usize| per_run.iter().map(|r| r[i]).collect::<Vec<_>>();
    let s: Vec<f64> = all.iter().map(|l| l.status).collect();
    let rs: Vec<f64> = all.iter().map(|l| l.report_to_status).collect();
    println!(
        "  over {} runs, min/median/max: drop -> status p50 {} s, p99 {} s (target <= 5 s); report -> status p50 {} s, p99 {} s; all {} bursts: drop -> status p50 {:.3} s, p99 {:.3} s, max {:.3} s; report -> status p50 {:.3} s, max {:.3} s",
        per_run.len(),
        spread(&col(0)),
        spread(&col(1)),
        spread(&col(2)),
        spread(&col(3)),
        all.len(),
        quantile(&s, 0.5),
        quantile(&s, 0.99),
        quantile(&s, 1.0),
        quantile(&rs, 0.5),
        quantile(&rs, 1.0),
    );
}

fn main() {
    if !netns::is_root() {
        eprintln!("benchmarks need root (netns, eBPF, cgroups); skipping");
        return;
    }
    let only = std::env::var("KT_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "latency" {
        latency();
    }
    if only.is_empty() || only == "flood" {
        flood();
    }
    if only.is_empty() || only == "status" {
        status();
    }
}
