//! Pure parts besides the status: events, recommendations, NAD rendering, certificates.

mod fixtures;

use std::collections::BTreeMap;

use fixtures::*;
use k8s_openapi::ByteString;
use kubetune_crds::matching;
use kubetune_crds::policy::{condition, desired_sysctls, validate_spec, TuningPolicy};
use kubetune_crds::report::Diagnosis;
use kubetune_operator::certs::{
    generate, merge_ca_bundle, needs_rotation, parse_pem_bundle, secret_needs_rotation,
    service_dns_names,
};
use kubetune_operator::events::{transition_events, Severity};
use kubetune_operator::nad::{cni_config, render_nad};
use kubetune_operator::recommend::{recommend, recommended_somaxconn};
use kubetune_operator::status::evaluate;
use kubetune_operator::Environment;

// ---------- events ----------

fn reasons(evs: &[kubetune_operator::events::PolicyEvent]) -> Vec<(Severity, String)> {
    evs.iter().map(|e| (e.severity, e.reason.clone())).collect()
}

#[test]
fn events_on_transitions_only() {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let pods = vec![pod("web-1", "web", 100, Some(&rec))];
    let facts = facts_allowing_somaxconn();
    let env = Environment {
        agents: agents_watching(),
        ..Environment::default()
    };
    let healthy = vec![report(
        "web-1",
        R {
            observed_at: 110,
            ..R::default()
        },
    )];

    // First status: applied, not yet verified.
    let s1 = evaluate(&p, &pods, &healthy, &facts, &env, t(200)).status;
    let e1 = transition_events(None, &s1);
    assert_eq!(reasons(&e1), vec![(Severity::Normal, "Applied".into())]);

    // Same again: nothing.
    assert!(transition_events(Some(&s1), &s1).is_empty());

    // Verified.
    let mut p2 = p.clone();
    p2.status = Some(s1.clone());
    let s2 = evaluate(&p2, &pods, &healthy, &facts, &env, t(401)).status;
    assert_eq!(
        reasons(&transition_events(Some(&s1), &s2)),
        vec![(Severity::Normal, "Verified".into())]
    );

    // Overflowing again.
    let bad = vec![report(
        "web-1",
        R {
            diagnosis: Diagnosis::SomaxconnBound,
            recent: 9,
            total: 9,
            requested_backlog: Some(65535),
            observed_at: 450,
            ..R::default()
        },
    )];
    let mut p3 = p.clone();
    p3.status = Some(s2.clone());
    let s3 = evaluate(&p3, &pods, &bad, &facts, &env, t(460)).status;
    assert_eq!(
        reasons(&transition_events(Some(&s2), &s3)),
        vec![(Severity::Warning, "StillOverflowing".into())]
    );

    // App-bound.
    let app = vec![report(
        "web-1",
        R {
            diagnosis: Diagnosis::ApplicationBacklogBound,
            recent: 9,
            total: 9,
            requested_backlog: Some(100),
            observed_at: 450,
            ..R::default()
        },
    )];
    let s4 = evaluate(&p3, &pods, &app, &facts, &env, t(460)).status;
    assert_eq!(
        reasons(&transition_events(Some(&s3), &s4)),
        vec![(Severity::Warning, "ApplicationBacklogBound".into())]
    );
}

#[test]
fn refusal_events() {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let s = evaluate(
        &p,
        std::iter::empty(),
        std::iter::empty(),
        &facts_strict(),
        &Environment::default(),
        t(0),
    )
    .status;
    let evs = transition_events(None, &s);
    let rs = reasons(&evs);
    assert!(
        rs.contains(&(Severity::Warning, "NotAccepted".into())),
        "{rs:?}"
    );
    assert!(
        rs.contains(&(Severity::Warning, "Refused".into())),
        "{rs:?}"
    );
    let refused = evs.iter().find(|e| e.reason == "Refused").unwrap();
    assert!(
        refused.note.contains("RefusedUnsafeSysctl"),
        "{}",
        refused.note
    );
    // Unchanged refusal: no new event.
    assert!(transition_events(Some(&s), &s).is_empty());
    assert_eq!(
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::ACCEPTED)
            .unwrap()
            .reason,
        "RefusedUnsafeSysctl"
    );
}

// ---------- recommendations ----------

#[test]
fn recommended_value_is_next_power_of_two_at_least_4096() {
    for (req, want) in [
        (1, 4096),
        (100, 4096),
        (511, 4096),
        (4096, 4096),
        (4097, 8192),
        (5000, 8192),
        (65535, 65536),
        (1 << 40, 1 << 30),
    ] {
        assert_eq!(recommended_somaxconn(req), want, "requested {req}");
    }
}

#[test]
fn recommendation_for_unselected_somaxconn_bound_pod() {
    let pd = pod("web-7d9c-abcde", "web", 0, None);
    let rep = report(
        "web-7d9c-abcde",
        R {
            somaxconn: 4096,
            diagnosis: Diagnosis::SomaxconnBound,
            recent: 120,
            total: 300,
            requested_backlog: Some(5000),
            observed_at: 60,
            ..R::default()
        },
    );
    let r = recommend(&pd, &rep, &[]).expect("a recommendation");
    assert_eq!(r.somaxconn, 8192);
    assert_eq!(r.requested_backlog, Some(5000));
    assert_eq!(r.policy_name, "web-somaxconn");
    assert_eq!(
        r.match_labels,
        labels(&[("app", "web")]),
        "pod-template-hash dropped"
    );
    assert!(r.message.contains("web-7d9c-abcde"));
    // The YAML is a valid TuningPolicy that selects the pod and sets the value.
    let policy: TuningPolicy =
        serde_yaml::from_str(&r.yaml).expect("YAML parses as a TuningPolicy");
    assert!(validate_spec(&policy.spec).is_empty());
    assert_eq!(
        desired_sysctls(&policy.spec),
        BTreeMap::from([("net.core.somaxconn".to_string(), "8192".to_string())])
    );
    assert!(matching::selector_matches(
        &policy.spec.pod_selector,
        pd.metadata.labels.as_ref().unwrap()
    ));
    assert_eq!(policy.metadata.namespace.as_deref(), Some(NS));
    assert!(
        r.yaml.starts_with("# pod web-7d9c-abcde overflows"),
        "{}",
        r.yaml
    );
}

#[test]
fn no_recommendation_when_selected_healthy_or_not_somaxconn_bound() {
    let pd = pod("web-1", "web", 0, None);
    let bound = R {
        somaxconn: 4096,
        diagnosis: Diagnosis::SomaxconnBound,
        recent: 5,
        total: 5,
        requested_backlog: Some(5000),
        ..R::default()
    };
    assert!(recommend(&pd, &report("web-1", bound), &["web".to_string()]).is_none());
    for d in [
        Diagnosis::Healthy,
        Diagnosis::ApplicationBacklogBound,
        Diagnosis::SlowAccept,
    ] {
        let rep = report(
            "web-1",
            R {
                diagnosis: d,
                recent: 5,
                ..R::default()
            },
        );
        assert!(recommend(&pd, &rep, &[]).is_none(), "{d:?}");
    }
    // Somaxconn-bound but no recent overflows: nothing to fix now.
    let quiet = R {
        somaxconn: 4096,
        diagnosis: Diagnosis::SomaxconnBound,
        recent: 0,
        requested_backlog: Some(5000),
        ..R::default()
    };
    assert!(recommend(&pd, &report("web-1", quiet), &[]).is_none());
}

// ---------- NetworkAttachmentDefinition ----------

#[test]
fn nad_rendering() {
    let a = policy("b-policy", 1, "web", &[("net.core.somaxconn", "8192")]);
    let b = policy("a-policy", 1, "api", &[("net.core.somaxconn", "8192")]);
    let nad = render_nad(NS, "kubetune-tuning", &[&a, &b]);
    let v = serde_json::to_value(&nad).unwrap();
    assert_eq!(v["apiVersion"], "k8s.cni.cncf.io/v1");
    assert_eq!(v["kind"], "NetworkAttachmentDefinition");
    assert_eq!(v["metadata"]["name"], "kubetune-tuning");
    assert_eq!(v["metadata"]["namespace"], NS);
    assert_eq!(
        v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubetune-operator"
    );
    let owners = v["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 2);
    assert_eq!(owners[0]["name"], "a-policy", "sorted by name");
    assert_eq!(owners[0]["uid"], "uid-a-policy");
    assert_eq!(owners[0]["kind"], "TuningPolicy");
    assert_eq!(owners[0]["apiVersion"], "kubetune.dev/v1alpha1");
    assert_eq!(owners[0]["controller"], false);
    let config: serde_json::Value =
        serde_json::from_str(v["spec"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kubetune-tuning",
            "plugins": [
                {"type": "bridge", "bridge": "kubetune0"},
                {"type": "tuning", "sysctl": {}}
            ]
        })
    );
    // tuning is chained after an interface plugin, never first.
    let plugins = config["plugins"].as_array().unwrap();
    assert_eq!(plugins.last().unwrap()["type"], "tuning");
    assert_ne!(plugins[0]["type"], "tuning");
    assert_eq!(cni_config("x"), cni_config("x"), "deterministic");
}

#[test]
fn nad_needed_only_for_tuning_cni_delivery() {
    use kubetune_crds::facts::{ClusterFacts, TuningCni};
    let facts = ClusterFacts {
        tuning_cni: Some(TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
        ..facts_strict()
    };
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let e = |p: &TuningPolicy, f| {
        evaluate(
            p,
            std::iter::empty(),
            std::iter::empty(),
            f,
            &Environment::default(),
            t(0),
        )
        .uses_tuning_cni
    };
    assert!(
        e(&p, &facts),
        "unsafe + kubelets refuse + tuningCni: Auto picks tuning CNI"
    );
    let allowing = facts_allowing_somaxconn();
    assert!(!e(&p, &allowing), "kubelets allow it: securityContext");
    let safe = policy("ka", 1, "web", &[("net.ipv4.tcp_keepalive_time", "600")]);
    assert!(!e(&safe, &facts), "safe sysctls go through securityContext");
    assert!(!e(&dry_run(p), &facts), "DryRun never needs the NAD");
}

// ---------- certificates ----------

#[test]
fn certificate_rotation_with_short_lifetimes() {
    let dns = service_dns_names("kubetune-system");
    let now = t(0);
    let m = generate(&dns, now, secs(60)).unwrap();
    assert!(!needs_rotation(&m.cert_pem, now, secs(30)));
    assert!(!needs_rotation(&m.cert_pem, t(29), secs(30)));
    assert!(needs_rotation(&m.cert_pem, t(30), secs(30)));
    assert!(needs_rotation(&m.cert_pem, t(61), secs(0)), "expired");
    assert!(needs_rotation("not a certificate", now, secs(0)));
    assert!(needs_rotation("", now, secs(0)));

    let info = &parse_pem_bundle(&m.cert_pem)[0];
    assert!(info
        .dns_names
        .contains(&"kubetune-webhook.kubetune-system.svc".to_string()));
    assert_eq!(info.not_after, t(60));
    assert_eq!(parse_pem_bundle(&m.ca_pem).len(), 1);
    assert!(m.key_pem.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn issued_certificate_passes_a_tls_handshake_trusting_only_ca_crt() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::ServerName};

    let dns = service_dns_names("ns1");
    let now = k8s_openapi::jiff::Timestamp::now();
    let m = generate(&dns, now, secs(3600)).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut m.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut m.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let handshake = |name: &'static str,
                     client: rustls::ClientConfig,
                     server: rustls::ServerConfig| async move {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let srv = tokio::spawn(async move {
            if let Ok(mut s) = acceptor.accept(b).await {
                let mut buf = [0u8; 4];
                let _ = s.read_exact(&mut buf).await;
                let _ = s.write_all(&buf).await;
                let _ = s.flush().await;
            }
        });
        let r = async {
            let mut c = connector
                .connect(ServerName::try_from(name).unwrap(), a)
                .await?;
            c.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
        .await;
        srv.abort();
        r
    };
    let ok = handshake("kubetune-webhook.ns1.svc", client.clone(), server.clone()).await;
    assert_eq!(ok.unwrap(), *b"ping");
    let wrong_name = handshake("kubetune-webhook.other.svc", client, server.clone()).await;
    assert!(
        wrong_name.is_err(),
        "certificate must not be valid for another namespace"
    );

    // A client trusting another CA rejects it.
    let other = generate(&dns, now, secs(3600)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut other.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let stranger = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    assert!(handshake("kubetune-webhook.ns1.svc", stranger, server)
        .await
        .is_err());
}

#[test]
fn secret_rotation_decision() {
    let dns = service_dns_names("ns1");
    let m = generate(&dns, t(0), secs(600)).unwrap();
    let data = BTreeMap::from([
        (
            "tls.crt".to_string(),
            ByteString(m.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(m.key_pem.clone().into_bytes()),
        ),
        (
            "ca.crt".to_string(),
            ByteString(m.ca_pem.clone().into_bytes()),
        ),
    ]);
    assert!(!secret_needs_rotation(
        Some(&data),
        &dns[0],
        t(10),
        secs(60)
    ));
    assert!(
        secret_needs_rotation(Some(&data), &dns[0], t(540), secs(60)),
        "renew window"
    );
    assert!(
        secret_needs_rotation(None, &dns[0], t(10), secs(60)),
        "no secret"
    );
    assert!(
        secret_needs_rotation(Some(&data), "kubetune-webhook.other.svc", t(10), secs(60)),
        "issued for another namespace"
    );
    let mut no_key = data.clone();
    no_key.remove("tls.key");
    assert!(secret_needs_rotation(
        Some(&no_key),
        &dns[0],
        t(10),
        secs(60)
    ));
}

#[test]
fn ca_bundle_keeps_previous_valid_ca_during_rollover() {
    let dns = service_dns_names("ns1");
    let old = generate(&dns, t(0), secs(100)).unwrap();
    let new = generate(&dns, t(50), secs(100)).unwrap();
    let b = merge_ca_bundle(&new.ca_pem, Some(&old.ca_pem), t(60));
    let certs = parse_pem_bundle(&b);
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0].pem,
        parse_pem_bundle(&new.ca_pem)[0].pem,
        "new CA first"
    );
    // Old CA expired: dropped.
    let b = merge_ca_bundle(&new.ca_pem, Some(&old.ca_pem), t(101));
    assert_eq!(parse_pem_bundle(&b).len(), 1);
    // Idempotent.
    let b1 = merge_ca_bundle(&new.ca_pem, Some(&new.ca_pem), t(60));
    assert_eq!(parse_pem_bundle(&b1).len(), 1);
}
