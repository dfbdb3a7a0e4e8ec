//! The kubelet-playing harness on real network namespaces (root). These check the harness itself
//! against `ss`/`nstat`/`sysctl` ground truth; `loop.rs` drives the whole observe → decide →
//! mutate → verify loop through it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kubetune_e2e::kubelet::{Container, FakeKubelet, KubeletError, NodeConfig};
use serde_json::json;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kt-listener"))
}

fn kubelet(tag: &str, node: NodeConfig) -> FakeKubelet {
    FakeKubelet::new(node, format!("kt-h{}-{tag}", std::process::id()), exe())
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn listen(port: u16, backlog: u32) -> Container {
    Container {
        name: "app".into(),
        args: [
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--backlog",
            &backlog.to_string(),
            "--max-secs",
            "60",
        ]
        .map(String::from)
        .to_vec(),
    }
}

macro_rules! require_root {
    () => {
        if !kubetune_test_support::test_env::require_root("network namespaces") {
            return;
        }
    };
}

#[test]
fn reproduces_the_nginx_incident_somaxconn_128_backlog_511() {
    require_root!();
    let node = NodeConfig {
        default_sysctls: BTreeMap::from([("net.core.somaxconn".into(), "128".into())]),
        ..Default::default()
    };
    let k = kubelet("inc", node);
    let p = k
        .run_pod(
            pod(json!({"metadata": {"name": "nginx"}, "spec": {"containers": []}})),
            &[listen(8080, 511)],
        )
        .unwrap();
    assert_eq!(p.sysctl("net.core.somaxconn").unwrap(), "128");
    let b = p.burst(&exe(), "127.0.0.1:8080", 300).unwrap();
    assert_eq!(b.attempted, 300);
    assert!(b.connected < 300, "{b:?}");
    let ss = p.ss_listeners().unwrap();
    let l = ss.iter().find(|l| l.port == 8080).unwrap();
    assert_eq!(l.send_q, 128, "effective backlog = min(511, somaxconn 128)");
    assert_eq!(l.recv_q, 129, "accept queue holds backlog + 1");
    assert!(p.listen_overflows().unwrap() > 0);
}

#[test]
fn pod_sysctls_are_applied_at_sandbox_creation_and_unsafe_ones_need_the_node() {
    require_root!();
    let spec = json!({"metadata": {"name": "web"}, "spec": {"containers": [], "securityContext": {"sysctls": [
        {"name": "net.core.somaxconn", "value": "1024"}, {"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]}}});
    // The kubelet refuses the unsafe sysctl unless allowed, like the real one (SysctlForbidden).
    let strict = kubelet("strict", NodeConfig::default());
    match strict.run_pod(pod(spec.clone()), &[]) {
        Err(KubeletError::SysctlForbidden { sysctl, .. }) => {
            assert_eq!(sysctl, "net.core.somaxconn")
        }
        other => panic!("expected SysctlForbidden, got {other:?}"),
    }
    let allowing = kubelet(
        "allow",
        NodeConfig {
            allowed_unsafe_sysctls: vec!["net.core.somaxconn".into()],
            ..Default::default()
        },
    );
    let p = allowing.run_pod(pod(spec), &[listen(8081, 2048)]).unwrap();
    assert_eq!(p.sysctl("net.core.somaxconn").unwrap(), "1024");
    assert_eq!(p.sysctl("net.ipv4.tcp_keepalive_time").unwrap(), "600");
    let l = p
        .ss_listeners()
        .unwrap()
        .into_iter()
        .find(|l| l.port == 8081)
        .unwrap();
    assert_eq!(
        l.send_q, 1024,
        "listen(2048) is capped by the pod's somaxconn"
    );
}

#[test]
fn tuning_cni_args_from_the_multus_annotation_are_applied() {
    require_root!();
    let node = NodeConfig {
        tuning_network: Some("kubetune-tuning".into()),
        ..Default::default()
    };
    let k = kubelet("cni", node);
    let nets = json!([{"name": "kubetune-tuning", "namespace": "default", "cni-args": {"sysctl": {"net.core.somaxconn": "2048"}}}]);
    let p = k
        .run_pod(pod(json!({"metadata": {"name": "cni", "annotations": {"k8s.v1.cni.cncf.io/networks": nets.to_string()}}, "spec": {"containers": []}})), &[])
        .unwrap();
    assert_eq!(p.sysctl("net.core.somaxconn").unwrap(), "2048");
    let bad = json!([{"name": "kubetune-tuning", "cni-args": {"sysctl": {"kernel.shmmax": "1"}}}]);
    let e = k
        .run_pod(pod(json!({"metadata": {"name": "cni-bad", "annotations": {"k8s.v1.cni.cncf.io/networks": bad.to_string()}}, "spec": {"containers": []}})), &[])
        .unwrap_err();
    assert!(e.to_string().contains("not under /proc/sys/net"), "{e}");
}

#[test]
fn dropping_a_pod_deletes_its_namespace() {
    require_root!();
    let k = kubelet("drop", NodeConfig::default());
    let p = k
        .run_pod(
            pod(json!({"metadata": {"name": "gone"}, "spec": {"containers": []}})),
            &[listen(8082, 16)],
        )
        .unwrap();
    let ns = p.netns.clone();
    assert!(std::path::Path::new("/run/netns").join(&ns).exists());
    drop(p);
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists());
}
