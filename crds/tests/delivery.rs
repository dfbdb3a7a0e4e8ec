//! Table-driven tests of the per-sysctl delivery decision.

use std::collections::BTreeMap;

use kubetune_crds::facts::{decide, ClusterFacts, NodeGroup, PodContext, TuningCni};
use kubetune_crds::policy::{Delivery, DeliveryDecision};
use kubetune_crds::sysctl::{KubeVersion, PodSecurityLevel};

fn facts(allow: &[&str], cni: bool) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 30),
        node_groups: vec![
            NodeGroup {
                name: "ingress".into(),
                node_selector: [("pool".to_string(), "ingress".to_string())].into(),
                allowed_unsafe_sysctls: allow.iter().map(|s| s.to_string()).collect(),
            },
            NodeGroup {
                name: "general".into(),
                node_selector: [("pool".to_string(), "general".to_string())].into(),
                allowed_unsafe_sysctls: vec![],
            },
        ],
        tuning_cni: cni.then(|| TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
        ..Default::default()
    }
}

fn on(pool: &str) -> PodContext {
    PodContext {
        placement: kubetune_crds::placement::Placement {
            node_selector: [("pool".to_string(), pool.to_string())].into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

type Case<'a> = (
    &'a str,
    &'a str,
    Delivery,
    ClusterFacts,
    &'a PodContext,
    Result<DeliveryDecision, &'a str>,
);

#[test]
fn delivery_table() {
    use DeliveryDecision::*;
    let anywhere = PodContext::default();
    let (ingress, general, gpu) = (on("ingress"), on("general"), on("gpu"));
    let host_net = PodContext {
        host_network: true,
        ..on("ingress")
    };
    let host_ipc = PodContext {
        host_ipc: true,
        ..Default::default()
    };
    let baseline = PodContext {
        pod_security: Some((PodSecurityLevel::Baseline, KubeVersion::new(1, 30))),
        ..on("ingress")
    };
    let restricted_old = PodContext {
        pod_security: Some((PodSecurityLevel::Restricted, KubeVersion::new(1, 28))),
        ..Default::default()
    };
    let privileged = PodContext {
        pod_security: Some((PodSecurityLevel::Privileged, KubeVersion::new(1, 30))),
        ..on("ingress")
    };
    // (sysctl, value, preference, facts, pod, Ok(delivery) | Err(reason))
    let cases: Vec<Case> = vec![
        // safe sysctls go to securityContext
        (
            "net.ipv4.tcp_keepalive_time",
            "600",
            Delivery::Auto,
            facts(&[], false),
            &anywhere,
            Ok(PodSecurityContext),
        ),
        (
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            Delivery::PodSecurityContext,
            facts(&[], false),
            &anywhere,
            Ok(PodSecurityContext),
        ),
        // unsafe: allowed only where every possible node allows it
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], false),
            &ingress,
            Ok(PodSecurityContext),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.*"], false),
            &ingress,
            Ok(PodSecurityContext),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], false),
            &anywhere,
            Err("RefusedUnsafeSysctl"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], false),
            &general,
            Err("RefusedUnsafeSysctl"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], false),
            &gpu,
            Err("RefusedUnsafeSysctl"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            ClusterFacts::default(),
            &anywhere,
            Err("RefusedUnsafeSysctl"),
        ),
        // ... else tuning CNI when enabled (Auto), never for PodSecurityContext preference
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&[], true),
            &anywhere,
            Ok(TuningCni),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::PodSecurityContext,
            facts(&[], true),
            &anywhere,
            Err("RefusedUnsafeSysctl"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::TuningCni,
            facts(&["net.core.somaxconn"], true),
            &ingress,
            Ok(TuningCni),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::TuningCni,
            facts(&[], false),
            &anywhere,
            Err("TuningCNIUnavailable"),
        ),
        (
            "kernel.shmmax",
            "1000000",
            Delivery::TuningCni,
            facts(&[], true),
            &anywhere,
            Err("TuningCNIUnavailable"),
        ),
        (
            "kernel.shmmax",
            "1000000",
            Delivery::Auto,
            facts(&[], true),
            &anywhere,
            Err("RefusedUnsafeSysctl"),
        ),
        // host namespaces
        (
            "net.ipv4.tcp_keepalive_time",
            "600",
            Delivery::Auto,
            facts(&[], true),
            &host_net,
            Err("RefusedHostNamespace"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], true),
            &host_net,
            Err("RefusedHostNamespace"),
        ),
        (
            "kernel.shm_rmid_forced",
            "1",
            Delivery::Auto,
            facts(&[], false),
            &host_ipc,
            Err("RefusedHostNamespace"),
        ),
        (
            "net.ipv4.tcp_keepalive_time",
            "600",
            Delivery::Auto,
            facts(&[], false),
            &host_ipc,
            Ok(PodSecurityContext),
        ),
        // PodSecurity: non-safe refused whatever the delivery; safe allowed per PSS version
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], true),
            &baseline,
            Err("RefusedByPodSecurity"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::TuningCni,
            facts(&[], true),
            &baseline,
            Err("RefusedByPodSecurity"),
        ),
        (
            "net.ipv4.tcp_keepalive_time",
            "600",
            Delivery::Auto,
            facts(&[], false),
            &baseline,
            Ok(PodSecurityContext),
        ),
        (
            "net.ipv4.tcp_keepalive_time",
            "600",
            Delivery::Auto,
            facts(&[], false),
            &restricted_old,
            Err("RefusedByPodSecurity"),
        ),
        (
            "net.core.somaxconn",
            "4096",
            Delivery::Auto,
            facts(&["net.core.somaxconn"], false),
            &privileged,
            Ok(PodSecurityContext),
        ),
        // node-level / unknown / invalid
        (
            "net.core.rmem_max",
            "1048576",
            Delivery::Auto,
            facts(&["net.core.*"], true),
            &ingress,
            Err("RefusedNodeLevel"),
        ),
        (
            "vm.swappiness",
            "1",
            Delivery::Auto,
            facts(&["vm.*"], true),
            &anywhere,
            Err("RefusedNodeLevel"),
        ),
        (
            "net.ipv4.nope",
            "1",
            Delivery::Auto,
            facts(&[], true),
            &anywhere,
            Err("UnknownSysctl"),
        ),
        (
            "net.core.somaxconn",
            "lots",
            Delivery::Auto,
            facts(&[], true),
            &anywhere,
            Err("InvalidValue"),
        ),
    ];
    for (i, (name, value, pref, f, pod, want)) in cases.into_iter().enumerate() {
        let got = decide(name, value, pref, &f, pod)
            .map(|d| d.how)
            .map_err(|r| r.reason());
        assert_eq!(got, want, "case {i}: {name}={value} {pref:?} {pod:?}");
    }
}

#[test]
fn refusals_explain_themselves() {
    let e = decide(
        "net.core.somaxconn",
        "4096",
        Delivery::Auto,
        &facts(&["net.core.somaxconn"], false),
        &on("general"),
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("general")
            && m.contains("SysctlForbidden")
            && m.contains("tuning-CNI delivery is not enabled"),
        "{m}"
    );
    let e = decide(
        "net.core.somaxconn",
        "1",
        Delivery::Auto,
        &facts(&[], false),
        &PodContext {
            host_network: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("host's network namespace"), "{e}");
}

#[test]
fn facts_parse_from_configmap_yaml() {
    let f = ClusterFacts::from_yaml(
        "kubernetesVersion: v1.31.2\nnodeGroups:\n- name: all\n  allowedUnsafeSysctls: [net.core.somaxconn]\ntuningCni:\n  networkName: kt\n",
    )
    .unwrap();
    assert_eq!(f.kubernetes_version, KubeVersion::new(1, 31));
    assert!(f.node_groups[0].allows("net/core/somaxconn"));
    assert_eq!(
        f.unsafe_refusing_groups("net.core.somaxconn", &BTreeMap::new()),
        Some(vec![])
    );
    assert!(ClusterFacts::from_yaml("kubernetesVersion: banana").is_err());
}
