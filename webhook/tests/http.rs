//! The transport: in-process warp tests of every route and malformed input, and a real HTTPS
//! round trip on loopback with a freshly generated certificate, including a reload.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kubetune_test_support::client;
use kubetune_webhook::admission::{Config, Snapshot};
use kubetune_webhook::metrics::Metrics;
use kubetune_webhook::server::{routes, serve_tls, SnapshotSource, State, StaticSource};
use kubetune_webhook::tls;
use serde_json::{json, Value};

fn state(policies: Vec<kubetune_crds::TuningPolicy>) -> Arc<State> {
    Arc::new(State {
        source: Arc::new(StaticSource(Arc::new(Snapshot {
            policies,
            namespaces: Default::default(),
            facts: facts(false),
            ..Default::default()
        }))),
        config: Config::new("kubetune-system", &[]),
        metrics: Metrics::default(),
    })
}

async fn post(st: &Arc<State>, path: &str, body: &[u8]) -> (u16, Value) {
    let r = warp::test::request()
        .method("POST")
        .path(path)
        .body(body)
        .reply(&routes(st.clone()))
        .await;
    (
        r.status().as_u16(),
        serde_json::from_slice(r.body()).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn replicas_count_as_memo_hits() {
    let st = Arc::new(State {
        source: Arc::new(StaticSource(Arc::new(Snapshot {
            policies: vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
            namespaces: [(
                "shop".to_string(),
                kubetune_webhook::plan::NamespaceFacts {
                    name: "shop".into(),
                    labels: Default::default(),
                },
            )]
            .into(),
            facts: facts(false),
            ..Default::default()
        }))),
        config: Config::new("kubetune-system", &[]),
        metrics: Metrics::default(),
    });
    let mut answers = Vec::new();
    for uid in ["r-1", "r-2", "r-3"] {
        let (code, v) = post(
            &st,
            "/mutate",
            review(&pod(json!({})), uid).to_string().as_bytes(),
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(v["response"]["uid"], uid);
        answers.push(v["response"]["patch"].clone());
    }
    assert!(answers[0].is_string());
    assert!(answers.iter().all(|a| *a == answers[0]));
    let m = st.metrics.encode();
    assert!(m.contains("kubetune_webhook_plan_memo_hits_total 2"), "{m}");
    assert!(
        m.contains("kubetune_webhook_requests_total{endpoint=\"mutate\",outcome=\"patched\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kubetune_webhook_patches_total{delivery=\"securityContext\"} 3"),
        "{m}"
    );
    // Known outcomes are exported from the start.
    assert!(
        m.contains("kubetune_webhook_requests_total{endpoint=\"validate\",outcome=\"denied\"} 0"),
        "{m}"
    );
}

#[tokio::test]
async fn mutate_patches_a_matching_pod() {
    let st = state(vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))]);
    let (code, v) = post(
        &st,
        "/mutate",
        review(&pod(json!({})), "u-1").to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "u-1");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let patch = v["response"]["patch"].as_str().unwrap();
    use base64::Engine;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    assert!(ops.to_string().contains("/spec/securityContext"), "{ops}");
    let m = st.metrics.encode();
    assert!(
        m.contains("kubetune_webhook_requests_total{endpoint=\"mutate\",outcome=\"patched\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kubetune_webhook_patches_total{delivery=\"securityContext\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn excluded_namespaces_mirror_pods_and_opt_outs_are_skipped() {
    let mut p = policy(
        "ka",
        json!({"preset": "IpvsIdleKeepalive", "podSelector": {}}),
    );
    p.metadata.namespace = Some("kube-system".into());
    let st = state(vec![
        p,
        policy(
            "ka",
            json!({"preset": "IpvsIdleKeepalive", "podSelector": {}}),
        ),
    ]);
    let sys = pod(json!({"metadata": {"namespace": "kube-system"}}));
    let mirror = pod(json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}}));
    let opted = pod(json!({"metadata": {"annotations": {"kubetune.dev/skip": "true"}}}));
    for (what, p) in [("kube-system", sys), ("mirror", mirror), ("opt-out", opted)] {
        let (code, v) = post(&st, "/mutate", review(&p, "u").to_string().as_bytes()).await;
        assert_eq!(code, 200, "{what}");
        assert_eq!(v["response"]["allowed"], true, "{what}");
        assert!(v["response"]["patch"].is_null(), "{what}: must not patch");
    }
}

#[tokio::test]
async fn malformed_input_never_blocks_a_pod() {
    let st = state(vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))]);
    let good = review(&pod(json!({})), "u-9");
    let mut no_object = good.clone();
    no_object["request"]["object"] = Value::Null;
    let mut wrong_kind = good.clone();
    wrong_kind["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut bad_pod = good.clone();
    bad_pod["request"]["object"]["spec"]["securityContext"] = json!({"sysctls": "not a list"});
    let mut v1beta1 = good.clone();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = good.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut dry = good.clone();
    dry["request"]["dryRun"] = json!(true);
    for (what, body) in [
        ("no object", no_object),
        ("wrong kind", wrong_kind),
        ("bad pod", bad_pod),
        ("v1beta1", v1beta1),
        ("no request", no_request),
        ("json array", json!([1, 2])),
        ("empty object", json!({})),
    ] {
        let (code, v) = post(&st, "/mutate", body.to_string().as_bytes()).await;
        assert_eq!(code, 200, "{what}");
        assert_eq!(v["kind"], "AdmissionReview", "{what}: well-formed");
        assert_eq!(v["response"]["allowed"], true, "{what}: allowed");
        assert!(
            v["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .starts_with("kubetune:"),
            "{what}: warns"
        );
    }
    let (code, v) = post(&st, "/mutate", dry.to_string().as_bytes()).await;
    assert_eq!(
        (code, &v["response"]["allowed"]),
        (200, &json!(true)),
        "dryRun handled like a normal request"
    );
    for body in [&b"not json"[..], b"", b"{\"apiVersion\":"] {
        let (code, _) = post(&st, "/mutate", body).await;
        assert_eq!(code, 400, "non-JSON is a 400");
    }
    assert!(st.metrics.encode().contains("outcome=\"malformed\""));
}

#[tokio::test]
async fn validate_denies_invalid_policies_with_reasons() {
    let st = state(vec![]);
    let mk = |spec: Value| {
        let mut p = serde_json::to_value(policy("p", spec)).unwrap();
        p["spec"]
            .as_object_mut()
            .unwrap()
            .remove("verificationWindowSeconds");
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "v", "kind": {"group": "kubetune.dev", "version": "v1alpha1", "kind": "TuningPolicy"},
            "resource": {"group": "kubetune.dev", "version": "v1alpha1", "resource": "tuningpolicies"}, "namespace": "shop", "operation": "CREATE", "userInfo": {}, "object": p}})
    };
    let (_, ok) = post(
        &st,
        "/validate",
        mk(json!({"preset": "HighConnectionServer"}))
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(ok["response"]["allowed"], true);
    let (_, bad) = post(&st, "/validate", mk(json!({"sysctls": [{"name": "net.core.rmem_max", "value": "1"}, {"name": "net.core.somaxconn", "value": "x"}]})).to_string().as_bytes()).await;
    assert_eq!(bad["response"]["allowed"], false);
    let msg = bad["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("node-level") && msg.contains("invalid value \"x\""),
        "{msg}"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_routes() {
    struct NotReady;
    impl SnapshotSource for NotReady {
        fn snapshot(&self) -> Arc<Snapshot> {
            Arc::new(Snapshot::default())
        }
        fn ready(&self) -> bool {
            false
        }
    }
    let st = Arc::new(State {
        source: Arc::new(NotReady),
        config: Config::new("kt", &[]),
        metrics: Metrics::default(),
    });
    let r = warp::test::request()
        .path("/readyz")
        .reply(&routes(st.clone()))
        .await;
    assert_eq!(r.status(), 503);
    let r = warp::test::request()
        .path("/healthz")
        .reply(&routes(st.clone()))
        .await;
    assert_eq!(r.status(), 200);
    let r = warp::test::request()
        .path("/readyz")
        .reply(&routes(state(vec![])))
        .await;
    assert_eq!(r.status(), 200);
    let r = warp::test::request()
        .path("/metrics")
        .reply(&routes(st.clone()))
        .await;
    assert!(String::from_utf8_lossy(r.body()).contains("kubetune_webhook_request_duration_seconds"));
    let r = warp::test::request().path("/nope").reply(&routes(st)).await;
    assert_eq!(r.status(), 404);
}

fn write_cert(dir: &std::path::Path, ca: &rcgen::Issuer<'_, rcgen::KeyPair>, cn: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["kubetune-webhook.kubetune-system.svc".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join("tls.crt.tmp"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
}

#[tokio::test]
async fn https_round_trip_and_certificate_reload() {
    let dir = std::env::temp_dir().join(format!("kt-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubetune test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    write_cert(&dir, &issuer, "first");

    let resolver = Arc::new(
        tls::ReloadingResolver::new(
            dir.join("tls.crt"),
            dir.join("tls.key"),
            Duration::from_millis(0),
        )
        .unwrap(),
    );
    let cfg = tls::server_config(resolver).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state(vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(listener, cfg, routes(st), async {
        let _ = stop_rx.await;
    }));

    let mut c = client::connect(
        addr,
        "kubetune-webhook.kubetune-system.svc",
        ca_pem.as_bytes(),
    )
    .await
    .unwrap();
    let first_cert = c.peer_cert.clone();
    let (code, body) = c
        .post(
            "/mutate",
            review(&pod(json!({})), "tls-1").to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], "tls-1");
    assert!(v["response"]["patch"].is_string());
    // keep-alive: a second request on the same connection
    let (code, _) = c.get("/healthz").await.unwrap();
    assert_eq!(code, 200);

    // Rotate the certificate files; the next handshake presents the new certificate.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_cert(&dir, &issuer, "second");
    let mut c2 = client::connect(
        addr,
        "kubetune-webhook.kubetune-system.svc",
        ca_pem.as_bytes(),
    )
    .await
    .unwrap();
    assert_ne!(
        c2.peer_cert, first_cert,
        "reloaded certificate served without restart"
    );
    let (code, _) = c2.get("/readyz").await.unwrap();
    assert_eq!(code, 200);
    // A wrong name is rejected by the client (the server really is TLS).
    assert!(client::connect(addr, "wrong.example", ca_pem.as_bytes())
        .await
        .is_err());

    let _ = stop_tx.send(());
    server.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_namespace_is_treated_as_restricted_with_a_warning() {
    // "shop" is not in the snapshot (cache not caught up): unsafe sysctls are refused as if the
    // namespace enforced PodSecurity restricted, safe ones still go in, and the answer says so.
    let st = state(vec![policy(
        "p",
        json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "net.core.somaxconn", "value": "4096"}]}),
    )]);
    let p = pod(json!({"spec": {"nodeSelector": {"pool": "ingress"}}}));
    let (code, v) = post(&st, "/mutate", review(&p, "ns-1").to_string().as_bytes()).await;
    assert_eq!(code, 200);
    assert!(v["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("assumed PodSecurity"));
    use base64::Engine;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let text = ops.to_string();
    assert!(text.contains("net.ipv4.tcp_syncookies"), "{text}");
    assert!(text.contains("RefusedByPodSecurity"), "{text}");
    // Known namespace without PodSecurity labels: somaxconn allowed on the ingress pool.
    let mut snap = (*st.source.snapshot()).clone();
    snap.namespaces.insert(
        "shop".into(),
        kubetune_webhook::plan::NamespaceFacts {
            name: "shop".into(),
            labels: Default::default(),
        },
    );
    let st2 = Arc::new(State {
        source: Arc::new(StaticSource(Arc::new(snap))),
        config: Config::new("kubetune-system", &[]),
        metrics: Metrics::default(),
    });
    let (_, v) = post(&st2, "/mutate", review(&p, "ns-2").to_string().as_bytes()).await;
    assert!(v["response"]["warnings"].is_null());
    let ops = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(ops.contains("AllowedUnsafeSysctl"), "{ops}");
}

#[tokio::test]
async fn reinvocation_over_http_returns_no_patch_and_counts_unchanged() {
    let st = state(vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))]);
    let p = pod(json!({}));
    let (_, v) = post(&st, "/mutate", review(&p, "r-1").to_string().as_bytes()).await;
    use base64::Engine;
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut doc = serde_json::to_value(&p).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let mut again = review(&p, "r-2");
    again["request"]["object"] = doc;
    let (code, v) = post(&st, "/mutate", again.to_string().as_bytes()).await;
    assert_eq!((code, &v["response"]["allowed"]), (200, &json!(true)));
    assert!(v["response"]["patch"].is_null(), "{v}");
    let m = st.metrics.encode();
    assert!(
        m.contains("kubetune_webhook_requests_total{endpoint=\"mutate\",outcome=\"unchanged\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn validate_is_robust_too() {
    let st = state(vec![]);
    let (code, _) = post(&st, "/validate", b"garbage").await;
    assert_eq!(code, 400);
    let (code, v) = post(
        &st,
        "/validate",
        json!({"kind": "AdmissionReview"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["response"]["allowed"], true);
    // A Pod sent to /validate is not ours to judge: allowed.
    let (code, v) = post(
        &st,
        "/validate",
        review(&pod(json!({})), "x").to_string().as_bytes(),
    )
    .await;
    assert_eq!((code, &v["response"]["allowed"]), (200, &json!(true)));
    assert_eq!(v["response"]["uid"], "x");
    // GET on /mutate is not a review.
    let r = warp::test::request()
        .method("GET")
        .path("/mutate")
        .reply(&routes(st))
        .await;
    assert_eq!(r.status(), 405);
}
