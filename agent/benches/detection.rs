//! Detection-latency benchmark (not a timed test; run as root):
//! `cargo bench -p kubetune-agent --bench detection`
//!
//! The release agent runs in cluster-write mode (`kubetune-agent run`) against a local HTTPS
//! mock apiserver (a kubeconfig points at it) that serves one Pod for the node and timestamps
//! every `ListenerReport` server-side apply. The pod is a stand-in: a named netns with a pause
//! process in a kubepods cgroup (so the agent attributes the netns to the pod), and a
//! `TCP_DEFER_ACCEPT` listener (backlog 16, accepting one connection per 50 ms) in it. A burst
//! fills the accept queue and then sends the data-bearing final ACKs of 16 more handshakes:
//! final-ACK-phase overflows, which the kernel reports through `kfree_skb` (drop time = when
//! the burst sends those ACKs; loopback delivers them synchronously).
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
//! Set `KT_BENCH_ONLY=latency|flood` to run one part.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use kubetune_test_support::netns::{self, AcceptMode, Burst, ListenerSpec, NamedNetns};
use tokio_rustls::rustls;

const NODE: &str = "bench-node";
const BACKLOG: usize = 16;

/// One `ListenerReport` apply as the mock apiserver received it.
#[derive(Debug, Clone)]
struct Apply {
    at: Instant,
    overflows_total: i64,
}

/// The mock apiserver's state.
struct Mock {
    pod: serde_json::Value,
    applies: Mutex<Vec<Apply>>,
}

impl Mock {
    fn applies(&self) -> Vec<Apply> {
        self.applies.lock().unwrap().clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json(status: u16, v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

async fn handle(m: Arc<Mock>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let watch = req.uri().query().unwrap_or("").contains("watch=true");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let at = Instant::now();
    if method == hyper::Method::GET && path == "/api/v1/pods" {
        if watch {
            // A watch that never sends an event (the pod does not change).
            let pending = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            return Ok(Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(pending).boxed())
                .unwrap());
        }
        return Ok(json(
            200,
            &serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": "1"}, "items": [m.pod]}),
        ));
    }
    if matches!(
        method,
        hyper::Method::PATCH | hyper::Method::PUT | hyper::Method::POST
    ) {
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if path.contains("/listenerreports/") {
            m.applies.lock().unwrap().push(Apply {
                at,
                overflows_total: v["spec"]["overflowsTotal"].as_i64().unwrap_or(-1),
            });
        }
        // Any other write (e.g. a heartbeat Lease) is accepted and echoed too.
        v["metadata"]["resourceVersion"] = "2".into();
        v["metadata"]["uid"] = "00000000-0000-4000-8000-000000000001".into();
        return Ok(json(200, &v));
    }
    Ok(json(
        404,
        &serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not served by the mock"}),
    ))
}

/// Starts the mock apiserver on 127.0.0.1 (HTTPS, self-signed) on its own runtime; returns the
/// state, the address and the certificate (PEM) for the kubeconfig.
fn start_mock(pod: serde_json::Value) -> (Arc<Mock>, SocketAddr, String, tokio::runtime::Runtime) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = Arc::new(Mock {
        pod,
        applies: Mutex::new(Vec::new()),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let m = mock.clone();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, m) = (acceptor.clone(), m.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| handle(m.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (mock, addr, cert.pem(), rt)
}

fn write_kubeconfig(dir: &Path, addr: SocketAddr, ca_pem: &str) -> PathBuf {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\nusers:\n- name: bench\n  user:\n    token: bench\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\n"
        ),
    )
    .unwrap();
    path
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

    fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bench-web", "namespace": "bench", "uid": self.uid,
                "resourceVersion": "1"},
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
    mock: Arc<Mock>,
    kubeconfig: PathBuf,
    dir: PathBuf,
    pod: StandInPod,
    port: u16,
    _listener: netns::TestListener,
    _rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("kt-bench-detection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pod = StandInPod::create();
    let (mock, addr, ca, rt) = start_mock(pod.object());
    let kubeconfig = write_kubeconfig(&dir, addr, &ca);
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
        mock,
        kubeconfig,
        dir,
        port: listener.port(),
        pod,
        _listener: listener,
        _rt: rt,
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
        wait_until(Duration::from_secs(30), || s.mock.applies().len() > since),
        "the agent wrote no ListenerReport within 30 s (log in {})",
        s.dir.display()
    );
}

/// Waits until the pod's last write is `quiet` old.
fn wait_quiet(s: &Setup, quiet: Duration) {
    wait_until(Duration::from_secs(60), || {
        s.mock
            .applies()
            .last()
            .is_none_or(|a| a.at.elapsed() >= quiet)
    });
}

/// One run of bursts: (latencies in seconds, writes per burst).
fn latency_run(s: &Setup, events: bool, bursts: u64, run: u64) -> (Vec<f64>, Vec<usize>) {
    let min_write = Duration::from_secs(3);
    let log = s.dir.join(format!("agent-latency-{run}-{events}.log"));
    let before = s.mock.applies().len();
    let _agent = Agent::start(&s.kubeconfig, &log, events, "5s", "3s");
    wait_first_write(s, before);
    let (mut lat, mut writes) = (Vec::new(), Vec::new());
    for _ in 0..bursts {
        wait_quiet(s, min_write + Duration::from_secs(1));
        // A random phase against the agent's 5 s scan clock (else poll-only latency would be
        // the same fraction of the interval every time).
        std::thread::sleep(Duration::from_millis(rand_u64() % 5000));
        let prev = s.mock.applies().iter().map(|a| a.overflows_total).max();
        let (t0, fill, over) = overflow_burst(&s.pod.ns, s.port);
        let got = wait_until(Duration::from_secs(20), || {
            s.mock
                .applies()
                .iter()
                .any(|a| a.at >= t0 && Some(a.overflows_total) > prev)
        });
        drop((fill, over));
        if !got {
            eprintln!("  burst: no report with a higher overflow count within 20 s");
            continue;
        }
        let first = s
            .mock
            .applies()
            .into_iter()
            .find(|a| a.at >= t0 && Some(a.overflows_total) > prev)
            .unwrap();
        lat.push(first.at.duration_since(t0).as_secs_f64());
        // Writes caused by this burst: up to the quiet point before the next one.
        wait_quiet(s, min_write + Duration::from_secs(1));
        writes.push(s.mock.applies().iter().filter(|a| a.at >= t0).count());
    }
    (lat, writes)
}

fn latency() {
    let s = setup();
    let (runs, bursts) = (env_num("KT_BENCH_RUNS", 3), env_num("KT_BENCH_BURSTS", 10));
    println!(
        "detection latency (kernel drop -> ListenerReport apply at the mock apiserver; final-ACK-phase overflows; {bursts} bursts per run; agent --interval 5s --min-write-interval 3s):"
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
    let before = s.mock.applies().len();
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
    let n = s.mock.applies().iter().filter(|a| a.at >= t0).count();
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
}
