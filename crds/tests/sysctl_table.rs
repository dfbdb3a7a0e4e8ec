//! Table-driven tests of the sysctl knowledge and of policy validation.

use kubetune_crds::policy::{validate_spec, Delivery, SpecError, SysctlSetting, TuningPolicySpec};
use kubetune_crds::sysctl::*;

fn kv(s: &str) -> KubeVersion {
    KubeVersion::parse(s).unwrap()
}

#[test]
fn safe_set_grows_by_version() {
    // (sysctl, first version where safe or None)
    let cases: &[(&str, Option<&str>)] = &[
        ("kernel.shm_rmid_forced", Some("1.0")),
        ("net.ipv4.ip_local_port_range", Some("1.0")),
        ("net.ipv4.tcp_syncookies", Some("1.0")),
        ("net.ipv4.ping_group_range", Some("1.0")),
        ("net.ipv4.ip_unprivileged_port_start", Some("1.0")),
        ("net.ipv4.ip_local_reserved_ports", Some("1.27")),
        ("net.ipv4.tcp_keepalive_time", Some("1.29")),
        ("net.ipv4.tcp_keepalive_intvl", Some("1.29")),
        ("net.ipv4.tcp_keepalive_probes", Some("1.29")),
        ("net.ipv4.tcp_fin_timeout", Some("1.29")),
        ("net.ipv4.tcp_rmem", Some("1.32")),
        ("net.ipv4.tcp_wmem", Some("1.32")),
        ("net.core.somaxconn", None),
        ("net.ipv4.tcp_max_syn_backlog", None),
        ("net.core.rmem_max", None),
        ("vm.swappiness", None),
    ];
    for (name, since) in cases {
        for minor in 20..=36 {
            let v = KubeVersion::new(1, minor);
            let want = since.is_some_and(|s| v >= kv(s));
            assert_eq!(is_safe(name, v), want, "{name} in {v}");
            // PodSecurity baseline/restricted admit exactly the safe set; privileged admits all.
            assert_eq!(
                pod_security_allows(name, PodSecurityLevel::Baseline, v),
                want,
                "{name} baseline {v}"
            );
            assert_eq!(
                pod_security_allows(name, PodSecurityLevel::Restricted, v),
                want,
                "{name} restricted {v}"
            );
            assert!(pod_security_allows(name, PodSecurityLevel::Privileged, v));
        }
    }
    assert_eq!(safe_sysctls(kv("1.26")).len(), 5);
    assert_eq!(safe_sysctls(kv("1.27")).len(), 6);
    assert_eq!(safe_sysctls(kv("1.29")).len(), 10);
    assert_eq!(safe_sysctls(kv("1.32")).len(), 12);
}

#[test]
fn versions_parse() {
    for (s, want) in [
        ("1.29", (1, 29)),
        ("v1.30.2", (1, 30)),
        ("1.28+", (1, 28)),
        ("v1.31.0-eks-1234", (1, 31)),
    ] {
        assert_eq!(
            KubeVersion::parse(s).unwrap(),
            KubeVersion::new(want.0, want.1),
            "{s}"
        );
    }
    for s in ["", "1", "x.y", "v"] {
        assert!(KubeVersion::parse(s).is_err(), "{s}");
    }
}

#[test]
fn classify_names() {
    // (name, Ok(scope) | Err(reason))
    let cases: &[(&str, Result<Scope, &str>)] = &[
        ("net.core.somaxconn", Ok(Scope::Network)),
        ("net/core/somaxconn", Ok(Scope::Network)),
        ("net.ipv4.tcp_keepalive_time", Ok(Scope::Network)),
        ("kernel.shm_rmid_forced", Ok(Scope::Ipc)),
        ("kernel.sem", Ok(Scope::Ipc)),
        ("fs.mqueue.msg_max", Ok(Scope::Ipc)),
        ("net.core.rmem_max", Err("RefusedNodeLevel")),
        ("net.core.netdev_max_backlog", Err("RefusedNodeLevel")),
        ("net.ipv4.tcp_mem", Err("RefusedNodeLevel")),
        ("vm.max_map_count", Err("RefusedNodeLevel")),
        ("vm.swappiness", Err("RefusedNodeLevel")),
        ("fs.file-max", Err("RefusedNodeLevel")),
        ("kernel.pid_max", Err("RefusedNodeLevel")),
        ("net.ipv4.tcp_made_up", Err("UnknownSysctl")),
    ];
    for (name, want) in cases {
        let got = classify(name).map(|i| i.scope).map_err(|e| e.reason());
        assert_eq!(&got, want, "{name}");
    }
    let msg = classify("net.core.rmem_max").unwrap_err().to_string();
    assert!(
        msg.contains("node-level") && msg.contains("cannot be set per pod"),
        "{msg}"
    );
    assert!(classify("fs.file-max")
        .unwrap_err()
        .to_string()
        .contains("node-level"));
}

#[test]
fn values_validate() {
    // (name, value, Ok(canonical) | Err(fragment of the message))
    let cases: &[(&str, &str, Result<&str, &str>)] = &[
        ("net.core.somaxconn", "4096", Ok("4096")),
        ("net.core.somaxconn", " 128 ", Ok("128")),
        ("net.core.somaxconn", "0", Err("outside 1..=")),
        ("net.core.somaxconn", "-5", Err("outside")),
        ("net.core.somaxconn", "lots", Err("not an integer")),
        ("net.core.somaxconn", "1 2", Err("expected one integer")),
        ("net.core.somaxconn", "99999999999", Err("outside")),
        ("net.ipv4.tcp_syncookies", "2", Ok("2")),
        ("net.ipv4.tcp_syncookies", "3", Err("outside 0..=2")),
        (
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            Ok("1024 65535"),
        ),
        (
            "net.ipv4.ip_local_port_range",
            "1024\t65535",
            Ok("1024 65535"),
        ),
        (
            "net.ipv4.ip_local_port_range",
            "60000 1024",
            Err("must be < high"),
        ),
        (
            "net.ipv4.ip_local_port_range",
            "2000 2000",
            Err("must be < high"),
        ),
        (
            "net.ipv4.ip_local_port_range",
            "0 100",
            Err("outside 1..=65535"),
        ),
        ("net.ipv4.ip_local_port_range", "1024 70000", Err("outside")),
        ("net.ipv4.ip_local_port_range", "1024", Err("two integers")),
        ("net.ipv4.ping_group_range", "0 0", Ok("0 0")),
        ("net.ipv4.ping_group_range", "5 1", Err("<=")),
        (
            "net.ipv4.tcp_rmem",
            "4096 131072 6291456",
            Ok("4096 131072 6291456"),
        ),
        ("net.ipv4.tcp_rmem", "4096 131072", Err("three integers")),
        (
            "net.ipv4.tcp_rmem",
            "8192 4096 6291456",
            Err("min <= default <= max"),
        ),
        ("net.ipv4.tcp_wmem", "0 1 2", Err(">= 1")),
        ("net.ipv4.tcp_keepalive_time", "600", Ok("600")),
        (
            "net.ipv4.tcp_keepalive_time",
            "40000",
            Err("outside 1..=32767"),
        ),
        (
            "net.ipv4.tcp_keepalive_probes",
            "128",
            Err("outside 1..=127"),
        ),
        (
            "net.ipv4.ip_local_reserved_ports",
            "8080, 9000-9100",
            Ok("8080,9000-9100"),
        ),
        ("net.ipv4.ip_local_reserved_ports", "", Ok("")),
        (
            "net.ipv4.ip_local_reserved_ports",
            "9100-9000",
            Err("reversed"),
        ),
        (
            "net.ipv4.ip_local_reserved_ports",
            "http",
            Err("not a port"),
        ),
        ("kernel.sem", "250 32000 100 128", Ok("250 32000 100 128")),
        ("kernel.sem", "250 32000", Err("expected 4 integers")),
        ("net.core.rmem_max", "1048576", Err("node-level")),
    ];
    for (name, value, want) in cases {
        match (validate_value(name, value), want) {
            (Ok(got), Ok(w)) => assert_eq!(&got, w, "{name}={value:?}"),
            (Err(e), Err(frag)) => assert!(
                e.to_string().contains(frag),
                "{name}={value:?}: {e} lacks {frag:?}"
            ),
            (got, want) => panic!("{name}={value:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn presets_expand_to_valid_sysctls() {
    for p in Preset::ALL {
        let items = p.expand();
        assert!(!items.is_empty());
        assert!(validate_all(items.iter().copied()).is_empty(), "{p:?}");
    }
    let hcs: Vec<&str> = Preset::HighConnectionServer
        .expand()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(hcs, ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]);
    // IpvsIdleKeepalive: first probe and dead-peer verdict no later than the IPVS idle timeout.
    let get = |n: &str| -> i64 {
        Preset::IpvsIdleKeepalive
            .expand()
            .iter()
            .find(|(k, _)| *k == n)
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let (time, intvl, probes) = (
        get("net.ipv4.tcp_keepalive_time"),
        get("net.ipv4.tcp_keepalive_intvl"),
        get("net.ipv4.tcp_keepalive_probes"),
    );
    assert!(time < IPVS_TCP_IDLE_TIMEOUT_SECONDS && intvl < IPVS_TCP_IDLE_TIMEOUT_SECONDS);
    assert!(time + intvl * probes <= IPVS_TCP_IDLE_TIMEOUT_SECONDS);
    assert_eq!(
        Preset::WideEphemeralPorts.expand(),
        &[("net.ipv4.ip_local_port_range", "1024 65535")]
    );
}

#[test]
fn multi_value_equality_ignores_whitespace() {
    assert!(values_equal("1024\t65535", "1024 65535"));
    assert!(!values_equal("1024 65535", "1024 65534"));
    assert!(!values_equal("1024 65535", "1024"));
    assert!(!values_equal("", "0"));
}

#[test]
fn equality_is_the_kernels_reading_of_integers_and_port_lists() {
    // A policy may say 059 or +59; the kernel (and the pod's netns) reads back 59.
    assert!(values_equal("059", "59"));
    assert!(values_equal("+59", "59"));
    assert!(values_equal("4096 087380 6291456", "4096\t87380\t6291456"));
    assert!(!values_equal("059", "58"));
    // ip_local_reserved_ports: the kernel prints the list without spaces.
    assert!(values_equal("8080, 9148", "8080,9148"));
    assert!(values_equal("8080-8090,9148", "8080-8090, 9148"));
    assert!(!values_equal("8080-8090", "8080-8091"));
    // Not integers: compared as written.
    assert!(!values_equal("abc", "ABC"));
}

fn spec(sysctls: Option<&[(&str, &str)]>, preset: Option<Preset>) -> TuningPolicySpec {
    serde_json::from_value(serde_json::json!({
        "sysctls": sysctls.map(|l| l.iter().map(|(n, v)| SysctlSetting { name: n.to_string(), value: v.to_string() }).collect::<Vec<_>>()),
        "preset": preset,
    }))
    .unwrap()
}

#[test]
fn invalid_policies_are_rejected_with_clear_messages() {
    let cases: Vec<(TuningPolicySpec, &str)> = vec![
        (
            spec(Some(&[("net.ipv4.tcp_made_up", "1")]), None),
            "not a sysctl kubetune knows",
        ),
        (
            spec(Some(&[("net.core.rmem_max", "1048576")]), None),
            "node-level sysctl",
        ),
        (
            spec(Some(&[("vm.swappiness", "10")]), None),
            "node-level sysctl",
        ),
        (
            spec(Some(&[("net.core.somaxconn", "many")]), None),
            "invalid value \"many\" for net.core.somaxconn",
        ),
        (
            spec(Some(&[("net.ipv4.ip_local_port_range", "5000 1000")]), None),
            "low 5000 must be < high 1000",
        ),
        (
            spec(
                Some(&[("net.core.somaxconn", "1024")]),
                Some(Preset::HighConnectionServer),
            ),
            "exactly one of spec.sysctls and spec.preset",
        ),
        (
            spec(None, None),
            "exactly one of spec.sysctls and spec.preset",
        ),
        (spec(Some(&[]), None), "must not be empty"),
        (
            spec(
                Some(&[
                    ("net.core.somaxconn", "1024"),
                    ("net/core/somaxconn", "2048"),
                ]),
                None,
            ),
            "listed more than once",
        ),
    ];
    for (s, want) in cases {
        let errs = validate_spec(&s);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains(want)),
            "{s:?}: {text:?} lacks {want:?}"
        );
    }
    let mut cni = spec(Some(&[("kernel.shm_rmid_forced", "1")]), None);
    cni.delivery = Delivery::TuningCni;
    assert!(validate_spec(&cni)
        .iter()
        .any(|e| matches!(e, SpecError::NotCniDeliverable(_))));
}

#[test]
fn valid_policies_pass() {
    for p in Preset::ALL {
        assert!(validate_spec(&spec(None, Some(p))).is_empty());
    }
    let s = spec(
        Some(&[
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_keepalive_time", "600"),
        ]),
        None,
    );
    assert!(validate_spec(&s).is_empty(), "{:?}", validate_spec(&s));
    assert_eq!(s.window_seconds(), 300, "window defaults");
}
