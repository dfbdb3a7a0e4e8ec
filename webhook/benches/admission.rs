//! Webhook benchmark: the real HTTPS server on loopback, N concurrent keep-alive clients, a
//! bounded number of AdmissionReviews of a realistic pod (Deployment pod, 2 containers, 3
//! matching policies), side by side with a no-op handler on the same TLS stack in the same run.
//!
//! `cargo bench -p kubetune-webhook --bench admission` (env: KT_BENCH_CLIENTS, KT_BENCH_REQUESTS)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubetune_crds::facts::{ClusterFacts, NodeGroup};
use kubetune_crds::sysctl::KubeVersion;
use kubetune_webhook::admission::{Config, Snapshot};
use kubetune_webhook::metrics::Metrics;
use kubetune_webhook::server::{noop_routes, routes, serve_tls, State, StaticSource};
use kubetune_webhook::{client, tls};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn review_body() -> Bytes {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "generateName": "web-7d9f8c6b5-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "uid": "4b0c5a8e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"serviceAccountName": "web", "nodeSelector": {"pool": "ingress"},
            "containers": [
                {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}, "env": [{"name": "MODE", "value": "prod"}]},
                {"name": "envoy", "image": "envoyproxy/envoy:v1.31", "args": ["-c", "/etc/envoy/envoy.yaml"],
                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/envoy"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "envoy"}}]}});
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "00000000-0000-4000-8000-000000000000", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "shop", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
        "object": pod, "dryRun": false, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}});
    Bytes::from(review.to_string())
}

fn snapshot() -> Snapshot {
    let mk = |name: &str, spec: serde_json::Value| -> kubetune_crds::TuningPolicy {
        let mut v = json!({"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningPolicy", "metadata": {"name": name, "namespace": "shop", "generation": 3},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
        for (k, val) in spec.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
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
    // 200 policies elsewhere in the cluster, as the cache would hold them.
    for i in 0..200 {
        let mut p = mk(
            &format!("other-{i}"),
            json!({"preset": "WideEphemeralPorts"}),
        );
        p.metadata.namespace = Some(format!("ns-{i}"));
        policies.push(p);
    }
    Snapshot {
        policies,
        namespaces: Default::default(),
        facts: ClusterFacts {
            kubernetes_version: KubeVersion::new(1, 31),
            node_groups: vec![NodeGroup {
                name: "ingress".into(),
                node_selector: [("pool".into(), "ingress".into())].into(),
                allowed_unsafe_sysctls: vec![
                    "net.core.somaxconn".into(),
                    "net.ipv4.tcp_max_syn_backlog".into(),
                ],
            }],
            tuning_cni: None,
        },
    }
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(
    addr: std::net::SocketAddr,
    ca: &[u8],
    path: &'static str,
    clients: usize,
    per_client: usize,
    body: Bytes,
) -> Figures {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(
            client::connect(addr, "kubetune-webhook.kubetune-system.svc", ca)
                .await
                .expect("connect"),
        );
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut c in conns {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let (code, resp) = c.post(path, body.clone()).await.expect("request");
                assert_eq!(code, 200);
                assert!(resp.len() > 20);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / wall.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let clients = env("KT_BENCH_CLIENTS", 16);
    let requests = env("KT_BENCH_REQUESTS", 40_000);
    let per_client = requests / clients;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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

        let state = Arc::new(State { source: Arc::new(StaticSource(Arc::new(snapshot()))), config: Config::new("kubetune-system", &[]), metrics: Metrics::default() });
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a1 = l1.local_addr().unwrap();
        tokio::spawn(serve_tls(l1, cfg.clone(), routes(state.clone()), std::future::pending::<()>()));
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = l2.local_addr().unwrap();
        tokio::spawn(serve_tls(l2, cfg, noop_routes(), std::future::pending::<()>()));

        // Sanity: the real handler patches this pod (3 policies -> 7 sysctls).
        let mut c = client::connect(a1, "kubetune-webhook.kubetune-system.svc", &ca).await.unwrap();
        let (_, r) = c.post("/mutate", body.clone()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert!(v["response"]["patch"].is_string(), "the benchmark pod must be patched");

        // The handler alone (no TLS/HTTP), to see where time goes.
        {
            let snap = snapshot();
            let cfg = Config::new("kubetune-system", &[]);
            let n = 20_000;
            let t = Instant::now();
            for _ in 0..n {
                let r = kubetune_webhook::admission::mutate(&body, &snap, &cfg).unwrap();
                std::hint::black_box(r.review);
            }
            println!("handler only (decode+plan+patch+encode): {:.1}µs per review", t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        // Warm-up, then interleave runs so both see the same machine state.
        let _ = drive(a2, &ca, "/mutate", clients, 200, body.clone()).await;
        let _ = drive(a1, &ca, "/mutate", clients, 200, body.clone()).await;
        let noop = drive(a2, &ca, "/mutate", clients, per_client, body.clone()).await;
        let real = drive(a1, &ca, "/mutate", clients, per_client, body.clone()).await;
        println!("webhook benchmark: {clients} keep-alive HTTPS clients x {per_client} AdmissionReviews ({} bytes each), 2 runtime workers, loopback", body.len());
        println!("{:<22} {:>12} {:>10} {:>10}", "handler", "reviews/s", "p50", "p99");
        for (name, f) in [("kubetune /mutate", &real), ("no-op (same TLS stack)", &noop)] {
            println!("{:<22} {:>12.0} {:>8.0}µs {:>8.0}µs", name, f.rps, f.p50.as_secs_f64() * 1e6, f.p99.as_secs_f64() * 1e6);
        }
        println!("ratio kubetune/no-op: throughput {:.2}, p99 {:.2}", real.rps / noop.rps, real.p99.as_secs_f64() / noop.p99.as_secs_f64());
        println!("targets: >= 5000 reviews/s; p99 <= 1.5x no-op");
    });
}
