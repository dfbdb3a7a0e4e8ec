//! Webhook benchmark: the real HTTPS server on loopback, N concurrent keep-alive clients, a
//! bounded number of AdmissionReviews of a realistic pod (Deployment pod, 2 containers, 3
//! matching policies), side by side with a no-op handler on the same TLS stack in the same run.
//!
//! `cargo bench -p kubetune-webhook --bench admission`
//! (env: KT_BENCH_CLIENTS=16, KT_BENCH_REQUESTS=40000 for the saturation run, KT_BENCH_RATE=5000
//! and KT_BENCH_SECONDS=4 for the fixed-load run, KT_BENCH_WORKERS=2 runtime threads).

use std::sync::Arc;

// The same allocator as the kubetune-webhook binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubetune_test_support::admission::{apiserver_review, facts_with, ingress_nodes, policy};
use kubetune_test_support::client;
use kubetune_test_support::webhook::snapshot_labelled;
use kubetune_webhook::admission::{Config, Snapshot};
use kubetune_webhook::metrics::Metrics;
use kubetune_webhook::server::{noop_routes, routes, serve_tls, State, StaticSource};
use kubetune_webhook::tls;
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn review_body() -> Bytes {
    review_body_of("web", "7d9f8c6b5", "2026-11-01T10:00:00Z", 0)
}

/// The Deployment pod of the first pod of another rollout: a new `pod-template-hash` (so a new
/// generateName) and `restartedAt` — a different object, the same plan input.
fn rollout_body(hash: &str, uid: usize) -> Bytes {
    review_body_of("web", hash, &format!("2026-11-02T10:00:00Z/{hash}"), uid)
}

/// A pod of a Deployment never seen before: another `app` label, which a policy selector in the
/// namespace names (`batch`) without selecting it — the same selecting policies, so the same
/// plan input — and a template of its own (another container port).
fn new_deployment_body(app: &str, uid: usize) -> Bytes {
    let port = 8000 + (uid % 1000) as u16;
    review_body_in(app, "7d9f8c6b5", "2026-11-01T10:00:00Z", None, port, uid)
}

/// A pod nothing remembered applies to: another `topology.kubernetes.io/zone` in its
/// nodeSelector (what the planner reads to place it), so a new plan input — planned and patched
/// from scratch, as the first pod of each kind is after any policy change.
fn unplanned_body(zone: &str, uid: usize) -> Bytes {
    review_body_in(
        "web",
        "7d9f8c6b5",
        "2026-11-01T10:00:00Z",
        Some(zone),
        8080,
        uid,
    )
}

/// The review as the apiserver writes it: `request.uid` first (the `uid`-th request's), the
/// ReplicaSet controller as the requester, CreateOptions.
fn review_body_of(app: &str, hash: &str, restarted_at: &str, uid: usize) -> Bytes {
    review_body_in(app, hash, restarted_at, None, 8080, uid)
}

/// [`review_body_of`] with the pod also required in `zone`, its container listening on `port`.
fn review_body_in(
    app: &str,
    hash: &str,
    restarted_at: &str,
    zone: Option<&str>,
    port: u16,
    uid: usize,
) -> Bytes {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "generateName": format!("{app}-{hash}-"), "namespace": "shop",
            "labels": {"app": app, "pod-template-hash": hash, "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": restarted_at},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"), "uid": "4b0c5a8e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"serviceAccountName": app, "nodeSelector": {"pool": "ingress"},
            "containers": [
                {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": port, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}}, "env": [{"name": "MODE", "value": "prod"}]},
                {"name": "envoy", "image": "envoyproxy/envoy:v1.31", "args": ["-c", "/etc/envoy/envoy.yaml"],
                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/envoy"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "envoy"}}],
            // What the apiserver's DefaultTolerationSeconds plugin adds before webhooks run.
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
    if let Some(zone) = zone {
        pod["spec"]["nodeSelector"]["topology.kubernetes.io/zone"] = json!(zone);
    }
    let review = apiserver_review("shop", &pod, &format!("6f1d2c3a-0000-4000-8000-{uid:012x}"));
    Bytes::from(review)
}

/// Three policies selecting the pod, one selecting `app=batch` beside them, 200 elsewhere in the
/// cluster; nodes in pool=ingress allow somaxconn.
fn snapshot() -> Snapshot {
    // The three select the namespace's frontend pods (`tier=frontend`), whatever their app.
    let mk = |name: &str, spec: serde_json::Value| {
        let mut p = policy(name, spec);
        p.metadata.generation = Some(3);
        p.spec.pod_selector.match_labels =
            Some([("tier".to_string(), "frontend".to_string())].into());
        p
    };
    let mut policies = vec![
        mk(
            "backlog",
            json!({"preset": "HighConnectionServer", "priority": 10}),
        ),
        mk("keepalive", json!({"preset": "IpvsIdleKeepalive"})),
        mk(
            "ports",
            json!({"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        ),
    ];
    // A fourth policy in the namespace, for another Deployment: its selector names `app`, so
    // `app` is part of every pod's plan input here.
    let mut batch = mk("batch", json!({"preset": "WideEphemeralPorts"}));
    batch.spec.pod_selector.match_labels = Some([("app".to_string(), "batch".to_string())].into());
    policies.push(batch);
    // 200 policies elsewhere in the cluster, as the cache would hold them.
    for i in 0..200 {
        let mut p = mk(
            &format!("other-{i}"),
            json!({"preset": "WideEphemeralPorts"}),
        );
        p.metadata.namespace = Some(format!("ns-{i}"));
        policies.push(p);
    }
    snapshot_labelled(
        policies,
        facts_with(vec![ingress_nodes()], false),
        &[("kubernetes.io/metadata.name", "shop")],
    )
}

/// The reviews a run sends, in turn.
type Bodies = Arc<Vec<Bytes>>;

/// What every review of a run is.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// The same pod object every time (replicas of one ReplicaSet).
    Replica,
    /// The first pod of another rollout every time (same plan input, new object).
    Rollout,
    /// A pod of a never-seen Deployment every time (same selecting policies, same plan input).
    NewDeployment,
    /// A pod with a never-seen nodeSelector every time (new plan input).
    Unplanned,
    /// Replicas of one pod, and every [`MIXED_EVERY`]th review a pod never planned (as
    /// `Unplanned`): what the first pod of a new kind sees amid a busy cluster's reviews.
    Mixed,
}

/// In [`Shape::Mixed`], one review in this many is never planned.
const MIXED_EVERY: usize = 20;

/// `n` reviews of `shape`, none seen before in this process (`tag` keeps runs apart).
fn bodies(shape: Shape, tag: &str, n: usize) -> Bodies {
    Arc::new(match shape {
        // Replicas: one pod object, each review with its own uid (as many as the bench cycles
        // through, up to 1,024).
        Shape::Replica => (0..n.clamp(1, 1024))
            .map(|i| review_body_of("web", "7d9f8c6b5", "2026-11-01T10:00:00Z", i))
            .collect(),
        Shape::Rollout => (0..n)
            .map(|i| rollout_body(&format!("{tag}{i:x}"), i))
            .collect(),
        Shape::NewDeployment => (0..n)
            .map(|i| new_deployment_body(&format!("svc-{tag}{i:x}"), i))
            .collect(),
        Shape::Unplanned => (0..n)
            .map(|i| unplanned_body(&format!("zone-{tag}{i:x}"), i))
            .collect(),
        Shape::Mixed => (0..n)
            .map(|i| match i % MIXED_EVERY {
                0 => unplanned_body(&format!("zone-{tag}{i:x}"), i),
                _ => review_body_of("web", "7d9f8c6b5", "2026-11-01T10:00:00Z", i),
            })
            .collect(),
    })
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// Process CPU time (user + system, server and clients together) per review.
    cpu_per_review: Duration,
}

/// User + system CPU time of this process so far (from /proc/self/stat, clock ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// Latencies and time of one measured run.
struct Run {
    lat: Vec<Duration>,
    /// The index into the run's bodies of the review each latency is of.
    idx: Vec<usize>,
    wall: Duration,
    cpu: Duration,
}

fn figures(runs: Vec<Run>) -> Figures {
    let wall: Duration = runs.iter().map(|r| r.wall).sum();
    let cpu: Duration = runs.iter().map(|r| r.cpu).sum();
    let mut all: Vec<Duration> = runs.into_iter().flat_map(|r| r.lat).collect();
    all.sort();
    let pct = |p: f64| percentile(&all, p);
    Figures {
        rps: all.len() as f64 / wall.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_review: cpu / all.len() as u32,
    }
}

async fn connect_all(
    addr: std::net::SocketAddr,
    ca: &[u8],
    clients: usize,
) -> Vec<client::Connection> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(
            client::connect(addr, "kubetune-webhook.kubetune-system.svc", ca)
                .await
                .expect("connect"),
        );
    }
    conns
}

/// Closed loop: every client sends its next review as soon as the previous answer arrived.
async fn saturate(
    addr: std::net::SocketAddr,
    ca: &[u8],
    clients: usize,
    per_client: usize,
    bodies: Bodies,
) -> Run {
    let conns = connect_all(addr, ca, clients).await;
    let start = Instant::now();
    let cpu0 = process_cpu();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for k in 0..per_client {
                let at = (i * per_client + k) % bodies.len();
                let t = Instant::now();
                let (code, resp) = c
                    .post("/mutate", bodies[at].clone())
                    .await
                    .expect("request");
                assert_eq!(code, 200);
                assert!(resp.len() > 20);
                lat.push((t.elapsed(), at));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let (lat, idx) = all.into_iter().unzip();
    Run {
        lat,
        idx,
        wall: start.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

/// Open loop at a fixed offered rate: request k of client c is due at a fixed time. When the
/// previous answer came late the latency counts from the due time (no coordinated omission);
/// otherwise from the send.
async fn fixed_rate(
    addr: std::net::SocketAddr,
    ca: &[u8],
    clients: usize,
    rate: f64,
    seconds: f64,
    bodies: Bodies,
) -> Run {
    let conns = connect_all(addr, ca, clients).await;
    let cpu0 = process_cpu();
    let per_client = ((rate * seconds) as usize / clients).max(1);
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let bodies = bodies.clone();
        let offset = interval.mul_f64(i as f64 / clients as f64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for k in 0..per_client {
                let due = start + offset + interval * k as u32;
                // Connection idle at the due time: tokio's timer wakes up to ~1 ms late, which is
                // not the server's doing, so count from the actual send. Connection still busy
                // with the previous review at the due time: send at once and count from the due
                // time (a timer whose deadline has passed would still wait for the timer wheel's
                // next tick, up to ~1 ms, and that wait would be counted).
                let backlogged = Instant::now() > due;
                if !backlogged {
                    tokio::time::sleep_until(due.into()).await;
                }
                let from = if backlogged { due } else { Instant::now() };
                let at = (i * per_client + k) % bodies.len();
                let (code, _) = c
                    .post("/mutate", bodies[at].clone())
                    .await
                    .expect("request");
                assert_eq!(code, 200);
                lat.push((from.elapsed(), at));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let (lat, idx) = all.into_iter().unzip();
    Run {
        lat,
        idx,
        wall: start.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

fn header() {
    println!(
        "  {:<24} {:>10} {:>10} {:>10} {:>14}",
        "handler", "reviews/s", "p50", "p99", "CPU/review"
    );
}

fn row(name: &str, f: &Figures) {
    println!(
        "  {:<24} {:>10.0} {:>8.0}µs {:>8.0}µs {:>12.0}µs",
        name,
        f.rps,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6,
        f.cpu_per_review.as_secs_f64() * 1e6
    );
}

fn ratio(real: &Figures, noop: &Figures) {
    println!(
        "  ratio kubetune/no-op: throughput {:.2}, p50 {:.2}, p99 {:.2}, CPU/review {:.2}",
        real.rps / noop.rps,
        real.p50.as_secs_f64() / noop.p50.as_secs_f64(),
        real.p99.as_secs_f64() / noop.p99.as_secs_f64(),
        real.cpu_per_review.as_secs_f64() / noop.cpu_per_review.as_secs_f64()
    );
}

/// The `p` quantile of `sorted` latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The latencies of `run`'s never-planned reviews ([`Shape::Mixed`]).
fn never_planned(run: &Run) -> Vec<Duration> {
    let of = run.idx.iter().map(|i| i % MIXED_EVERY == 0);
    run.lat
        .iter()
        .zip(of)
        .filter(|(_, n)| *n)
        .map(|(l, _)| *l)
        .collect()
}

/// The 99th percentile of one round's latencies, in seconds.
fn p99(lat: &[Duration]) -> f64 {
    let mut l = lat.to_vec();
    l.sort();
    percentile(&l, 0.99).as_secs_f64()
}

/// The p99 ratio of each pair of adjacent rounds (kubetune / no-op, same load, same seconds):
/// their median, and from 6 pairs on the distribution-free 95% interval of that median (the
/// order statistics k and n+1-k, with k the largest for which P(Binomial(n, 1/2) < k) <= 2.5%).
/// A burst of load from elsewhere on the machine moves one pair, not the median.
fn paired_ratio(mut ratios: Vec<f64>) {
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    print!("  p99 ratio per round pair: median {median:.2} over {n} pairs");
    if n >= 6 {
        // P(X < k) for X ~ Binomial(n, 1/2), growing k while it stays <= 2.5%.
        let below = |k: usize| (0..k).map(|j| binomial(n, j)).sum::<f64>() / 2f64.powi(n as i32);
        let k = (1..n)
            .take_while(|&k| below(k) <= 0.025)
            .last()
            .unwrap_or(1);
        print!(", 95% interval {:.2}-{:.2}", ratios[k - 1], ratios[n - k]);
    }
    println!(" (min {:.2}, max {:.2})", ratios[0], ratios[n - 1]);
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |c, j| c * (n - j) as f64 / (j + 1) as f64)
}

/// The profiled case, `KT_BENCH_SHAPE=deployment|rollout|replica|mixed` for case c, b, a or e; d by
/// default.
fn profile_shape() -> Shape {
    match std::env::var("KT_BENCH_SHAPE").as_deref() {
        Ok("deployment") => Shape::NewDeployment,
        Ok("rollout") => Shape::Rollout,
        Ok("replica") => Shape::Replica,
        Ok("mixed") => Shape::Mixed,
        _ => Shape::Unplanned,
    }
}

fn main() {
    let clients = env("KT_BENCH_CLIENTS", 16);
    let requests = env("KT_BENCH_REQUESTS", 40_000);
    let rate = env("KT_BENCH_RATE", 5_000) as f64;
    let seconds = env("KT_BENCH_SECONDS", 4) as f64;
    let workers = env("KT_BENCH_WORKERS", 2);
    // `KT_BENCH_RATE_ROUNDS=20`: the fixed-load phase in 20 alternating rounds (each
    // KT_BENCH_SECONDS / 20 long), for the per-round p99 ratios' median and its interval.
    let rate_rounds = env("KT_BENCH_RATE_ROUNDS", 4).max(1);
    // `KT_BENCH_CASES=bd` runs only those cases, `KT_BENCH_LOADS=rate` (or `saturation`) only
    // that load: to repeat one figure many times in the time of a whole run.
    let cases_wanted = std::env::var("KT_BENCH_CASES").unwrap_or_else(|_| "abcde".into());
    let loads = std::env::var("KT_BENCH_LOADS").unwrap_or_else(|_| "saturation,rate".into());
    let per_client = requests / clients;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    rt.block_on(async move {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["kubetune-webhook.kubetune-system.svc".to_string()]).unwrap().self_signed(&key).unwrap();
        let ck = Arc::new(tls::certified_key_from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap());
        #[derive(Debug)]
        struct Fixed(Arc<tokio_rustls::rustls::sign::CertifiedKey>);
        impl tokio_rustls::rustls::server::ResolvesServerCert for Fixed {
            fn resolve(&self, _: tokio_rustls::rustls::server::ClientHello<'_>) -> Option<Arc<tokio_rustls::rustls::sign::CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let cfg = tls::server_config(Arc::new(Fixed(ck))).unwrap();
        let ca = cert.pem().into_bytes();
        let body = review_body();
        if let Ok(path) = std::env::var("KT_BENCH_DUMP") {
            std::fs::write(&path, &body).expect("write the review");
            let answer = kubetune_webhook::admission::mutate(&body, &snapshot(), &Config::new("kubetune-system", &[])).expect("answer");
            let patch = serde_json::to_string_pretty(&answer.patch()).expect("patch");
            std::fs::write(format!("{path}.patch"), patch).expect("write the patch");
            println!("review written to {path}, its patch to {path}.patch");
            return;
        }

        // `KT_BENCH_PROFILE=N`: only the handler on N new pod shapes, then exit — a short,
        // deterministic run to count instructions in (valgrind --tool=callgrind).
        if let Some(n) = std::env::var("KT_BENCH_PROFILE").ok().and_then(|v| v.parse::<usize>().ok()) {
            let shape = profile_shape();
            let (snap, cfg, distinct) = (snapshot(), Config::new("kubetune-system", &[]), bodies(shape, "p", n));
            for b in distinct.iter().cycle().take(n) {
                std::hint::black_box(kubetune_webhook::admission::mutate(b, &snap, &cfg).unwrap().body);
            }
            println!("{n} pods ({shape:?}) through the handler");
            return;
        }

        let state = Arc::new(State { source: Arc::new(StaticSource(Arc::new(snapshot()))), config: Config::new("kubetune-system", &[]), metrics: Metrics::default() });
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a1 = l1.local_addr().unwrap();
        tokio::spawn(serve_tls(l1, cfg.clone(), routes(state.clone()), std::future::pending::<()>()));
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = l2.local_addr().unwrap();
        tokio::spawn(serve_tls(l2, cfg, noop_routes(), std::future::pending::<()>()));

        // `KT_BENCH_SERVER_PROFILE=N`: N reviews of `KT_BENCH_SHAPE` (as above) through the
        // whole HTTPS stack, server and clients, against kubetune or (`KT_BENCH_HANDLER=noop`)
        // the no-op handler, then exit: under callgrind, two runs at N and 2N give the whole
        // process's instructions per review (setup cancels out; kernel work is not counted),
        // which the handler-only profile cannot show — what answering costs around the handler.
        if let Some(n) = std::env::var("KT_BENCH_SERVER_PROFILE").ok().and_then(|v| v.parse::<usize>().ok()) {
            let shape = profile_shape();
            let noop = std::env::var("KT_BENCH_HANDLER").as_deref() == Ok("noop");
            // A fixed set of distinct bodies (built at every N alike, so building them cancels
            // out of the difference), each sent once when N <= 4,096.
            let distinct = bodies(shape, "s", 4096);
            let _ = saturate(if noop { a2 } else { a1 }, &ca, clients, n / clients, distinct).await;
            println!("{n} reviews ({shape:?}) through the {} server", if noop { "no-op" } else { "kubetune" });
            return;
        }

        // Sanity: the real handler patches this pod (3 policies -> 7 sysctls).
        let mut c = client::connect(a1, "kubetune-webhook.kubetune-system.svc", &ca).await.unwrap();
        let (_, r) = c.post("/mutate", body.clone()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert!(v["response"]["patch"].is_string(), "the benchmark pod must be patched");

        // The handler alone (no TLS/HTTP), to see where time goes.
        {
            let cfg = Config::new("kubetune-system", &[]);
            let n = 20_000;
            let snap = snapshot();
            let t = Instant::now();
            for _ in 0..n {
                let r = kubetune_webhook::admission::mutate(&body, &snap, &cfg).unwrap();
                std::hint::black_box(r.body);
            }
            let hit = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            let per_review = |shape: Shape, tag: &str| {
                let (distinct, snap) = (bodies(shape, tag, n), snapshot());
                let t = Instant::now();
                for b in distinct.iter() {
                    let r = kubetune_webhook::admission::mutate(b, &snap, &cfg).unwrap();
                    std::hint::black_box(r.body);
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            };
            let (rollout, deployment, miss) = (per_review(Shape::Rollout, "h"), per_review(Shape::NewDeployment, "h"), per_review(Shape::Unplanned, "h"));
            println!("handler only (1 thread, no TLS/HTTP), µs per review: {hit:.1} replica (review memo hit), {rollout:.1} first pod of a rollout (skeleton memo hit), {deployment:.1} never-seen Deployment (skeleton memo hit), {miss:.1} never planned (decode+plan+patch+encode)");
        }
        println!("real HTTPS server on 127.0.0.1 (tokio-rustls + hyper + warp), {workers} runtime workers shared with the clients, {clients} keep-alive clients, AdmissionReview of {} bytes", body.len());
        let replicas = bodies(Shape::Replica, "", 1024);
        // Warm-up, then alternate so both handlers see the same machine state.
        let _ = saturate(a2, &ca, clients, 200, replicas.clone()).await;
        let _ = saturate(a1, &ca, clients, 200, replicas.clone()).await;

        // Each measurement is split into ROUNDS alternating no-op / kubetune (and which goes
        // first), so load from other processes on the machine hits both alike.
        const ROUNDS: usize = 4;
        let cases = [
            ("a", Shape::Replica, "replicas of one Deployment pod (each review its own uid): after the first, answered from the review memo"),
            ("b", Shape::Rollout, "every review the first pod of another rollout (new pod-template-hash and restartedAt): answered by its skeleton (skeleton memo), not decoded"),
            ("c", Shape::NewDeployment, "every review a pod of a never-seen Deployment (new app label, named by a selector that does not select it, and another container port): answered by its skeleton (no selector names its app value, the decode skips containers), not decoded"),
            ("d", Shape::Unplanned, "every review a pod never planned (new nodeSelector zone): planned and patched from scratch"),
            ("e", Shape::Mixed, "replicas, and one review in 20 a pod never planned (as in d): the first pod of a new kind amid a busy cluster's reviews"),
        ];
        let cases: Vec<_> = cases.into_iter().filter(|(l, ..)| cases_wanted.contains(l)).collect();
        let per_round = per_client / ROUNDS;
        for &(letter, shape, title) in cases.iter().filter(|_| loads.contains("saturation")) {
            println!("\n1{letter}) saturation, {title} (closed loop, {} reviews per client in {ROUNDS} alternating rounds):", per_round * ROUNDS);
            header();
            let (mut n, mut r) = (Vec::new(), Vec::new());
            for i in 0..ROUNDS {
                let bodies = bodies(shape, &format!("r{i}-"), clients * per_round);
                if i % 2 == 0 {
                    n.push(saturate(a2, &ca, clients, per_round, bodies.clone()).await);
                    r.push(saturate(a1, &ca, clients, per_round, bodies).await);
                } else {
                    r.push(saturate(a1, &ca, clients, per_round, bodies.clone()).await);
                    n.push(saturate(a2, &ca, clients, per_round, bodies).await);
                }
            }
            let (noop, real) = (figures(n), figures(r));
            row("kubetune /mutate", &real);
            row("no-op (same TLS stack)", &noop);
            ratio(&real, &noop);
        }

        let part = seconds / rate_rounds as f64;
        for &(letter, shape, title) in cases.iter().filter(|_| loads.contains("rate")) {
            println!("\n2{letter}) {title}, at a fixed offered load {rate:.0} reviews/s, {seconds:.0} s each (open loop in {rate_rounds} alternating rounds; latency from the send, or from the scheduled time when the connection was still busy):");
            header();
            let (mut n, mut r) = (Vec::new(), Vec::new());
            for i in 0..rate_rounds {
                let bodies = bodies(shape, &format!("f{i}-"), (rate * part) as usize + clients);
                if i % 2 == 0 {
                    n.push(fixed_rate(a2, &ca, clients, rate, part, bodies.clone()).await);
                    r.push(fixed_rate(a1, &ca, clients, rate, part, bodies).await);
                } else {
                    r.push(fixed_rate(a1, &ca, clients, rate, part, bodies.clone()).await);
                    n.push(fixed_rate(a2, &ca, clients, rate, part, bodies).await);
                }
            }
            let paired: Vec<f64> = n.iter().zip(&r).map(|(n, r)| p99(&r.lat) / p99(&n.lat)).collect();
            // Case e: the never-planned reviews' own p99 against the no-op's p99 in the same pair.
            let unplanned: Vec<f64> = n.iter().zip(&r).map(|(n, r)| p99(&never_planned(r)) / p99(&n.lat)).collect();
            let (noop, real) = (figures(n), figures(r));
            row("kubetune /mutate", &real);
            row("no-op (same TLS stack)", &noop);
            ratio(&real, &noop);
            paired_ratio(paired);
            if matches!(shape, Shape::Mixed) {
                print!("  the never-planned reviews alone (1 in {MIXED_EVERY}):");
                paired_ratio(unplanned);
            }
        }
        println!("\ntargets: >= 5000 reviews/s on 2 cores; p99 <= 1.5x no-op");
    });
    println!("total bench time {:.1}s", began.elapsed().as_secs_f64());
}
