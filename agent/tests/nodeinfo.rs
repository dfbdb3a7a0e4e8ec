//! Node discovery against real processes and files: a `/proc`-shaped tree whose processes have
//! their own root (symlinks resolved inside it), a real child process whose command line is a
//! kubelet's (found through the real `/proc`, its configuration read through its cwd and root),
//! and the netns default `somaxconn` measured against `ip netns exec`.

use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kubetune_agent::nodeinfo::{self, find_kubelets, read_allowlist};
use kubetune_crds::node::TuningCniState;
use kubetune_test_support::netns::NamedNetns;

const HDR: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "kt-nodeinfo-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A fake `/proc/<pid>` entry: cmdline, stat (start time 777), root and cwd links.
fn fake_process(proc: &Path, pid: u32, argv: &[&str], root: &Path, cwd: &Path) {
    let d = proc.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    let mut cmd = argv.join("\0");
    cmd.push('\0');
    std::fs::write(d.join("cmdline"), cmd).unwrap();
    let comm = Path::new(argv[0]).file_name().unwrap().to_str().unwrap();
    let stat = format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 12 0 777 1000 100"
    );
    std::fs::write(d.join("stat"), stat).unwrap();
    symlink(root, d.join("root")).unwrap();
    symlink(cwd, d.join("cwd")).unwrap();
}

#[test]
fn discovers_a_kubelet_inside_its_own_root() {
    let t = TempDir::new("root");
    let (proc, rootfs) = (t.0.join("proc"), t.0.join("rootfs"));
    // The kubelet's config is an absolute symlink: it must resolve inside the kubelet's root.
    write(
        &rootfs.join("etc/kubernetes/real-config.yaml"),
        &format!("{HDR}allowedUnsafeSysctls: [net.core.somaxconn]\n"),
    );
    symlink(
        "/etc/kubernetes/real-config.yaml",
        rootfs.join("etc/kubernetes/kubelet.yaml"),
    )
    .unwrap();
    write(
        &rootfs.join("etc/kubernetes/kubelet.conf.d/20-net.conf"),
        &format!("{HDR}allowedUnsafeSysctls: [\"net.ipv4.*\", net.core.somaxconn]\n"),
    );
    write(
        &rootfs.join("etc/kubernetes/kubelet.conf.d/10-pods.conf"),
        &format!("{HDR}maxPods: 50\n"),
    );
    write(
        &rootfs.join("etc/kubernetes/kubelet.conf.d/NOTES"),
        "not a drop-in",
    );
    std::fs::create_dir_all(rootfs.join("var/lib/kubelet")).unwrap();
    fake_process(
        &proc,
        4242,
        &[
            "/usr/bin/kubelet",
            "--config=/etc/kubernetes/kubelet.yaml",
            "--config-dir",
            "/etc/kubernetes/kubelet.conf.d",
        ],
        &rootfs,
        &rootfs.join("var/lib/kubelet"),
    );
    // containerd names a non-default CNI bin dir that has an executable tuning plugin.
    write(
        &rootfs.join("etc/containerd/custom.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n",
    );
    fake_process(
        &proc,
        300,
        &[
            "/usr/bin/containerd",
            "--config",
            "/etc/containerd/custom.toml",
        ],
        &rootfs,
        &rootfs,
    );
    let tuning = rootfs.join("usr/lib/cni/tuning");
    write(&tuning, "#!/bin/sh\n");
    std::fs::set_permissions(&tuning, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (facts, fp) = nodeinfo::discover(&proc, None);
    let a = facts.allowlist.expect("allowlist");
    assert_eq!(a.entries, ["net.ipv4.*", "net.core.somaxconn"]);
    assert_eq!(a.source, "/etc/kubernetes/kubelet.conf.d/20-net.conf");
    assert_eq!(facts.tuning_cni.state, TuningCniState::Installed);
    assert_eq!(facts.tuning_cni.detail, "/usr/lib/cni/tuning");
    assert_eq!(fp.kubelet, Some((4242, 777)));
    let paths: Vec<&str> = fp.files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/etc/kubernetes/kubelet.yaml",
            "/etc/kubernetes/kubelet.conf.d",
            "/etc/kubernetes/kubelet.conf.d/10-pods.conf",
            "/etc/kubernetes/kubelet.conf.d/20-net.conf"
        ]
    );
    assert_eq!(fp.current(&proc), fp, "nothing changed");

    // A non-executable plugin does not count; a broken drop-in makes the allowlist unknown.
    std::fs::set_permissions(&tuning, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(
        &rootfs.join("etc/kubernetes/kubelet.conf.d/30-broken.conf"),
        "allowedUnsafeSysctls: [net.*]\n",
    );
    let (facts, _) = nodeinfo::discover(&proc, None);
    assert_eq!(facts.tuning_cni.state, TuningCniState::NotInstalled);
    let e = facts.allowlist.expect_err("broken drop-in").to_string();
    assert!(e.contains("30-broken.conf"), "{e}");
    // Kubelet 1.29 without the alpha environment variable ignores its drop-ins.
    std::fs::remove_file(rootfs.join("etc/kubernetes/kubelet.conf.d/30-broken.conf")).unwrap();
    let (facts, _) =
        nodeinfo::discover(&proc, Some(kubetune_crds::sysctl::KubeVersion::new(1, 29)));
    assert_eq!(facts.allowlist.unwrap().entries, ["net.core.somaxconn"]);

    // A second kubelet: ambiguous, so unknown (never a guess).
    fake_process(&proc, 5000, &["kubelet"], &rootfs, &rootfs);
    let (facts, fp) = nodeinfo::discover(&proc, None);
    let e = facts.allowlist.expect_err("two kubelets").to_string();
    assert!(e.contains("4242, 5000"), "{e}");
    assert_eq!(fp.kubelet, None);
}

#[test]
fn finds_a_real_kubelet_process_and_reads_its_configuration() {
    let t = TempDir::new("proc");
    let dir = t.0.join("conf.d");
    write(
        &t.0.join("kubelet-config.yaml"),
        &format!("{HDR}allowedUnsafeSysctls: [net.core.somaxconn]\n"),
    );
    write(
        &dir.join("50-backlog.conf"),
        &format!("{HDR}allowedUnsafeSysctls: [net.core.somaxconn, net.ipv4.tcp_max_syn_backlog]\n"),
    );
    // argv[0] = kubelet; the relative --config resolves against the process's cwd.
    let mut child = Command::new("bash")
        .arg0("/usr/bin/kubelet")
        .args(["-c", "sleep 30; exit 0", "--config", "kubelet-config.yaml"])
        .arg(format!("--config-dir={}", dir.display()))
        .current_dir(&t.0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let proc = PathBuf::from("/proc");
    // The scan may race the child's exec under load: look for up to 5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let k = loop {
        if let Some(k) = find_kubelets(&proc).into_iter().find(|k| k.pid == pid) {
            break k;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child is found as a kubelet"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(k.argv[0], "/usr/bin/kubelet");
    assert!(k.start_time > 0);
    let (a, files) = read_allowlist(&proc, &k, None);
    let a = a.expect("allowlist");
    assert_eq!(
        a.entries,
        ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]
    );
    assert!(a.source.ends_with("conf.d/50-backlog.conf"), "{}", a.source);
    assert_eq!(files[0].0, "kubelet-config.yaml");

    // Editing a file changes the fingerprint; a restart (another process) too.
    let fp = nodeinfo::Fingerprint {
        kubelet: Some((k.pid, k.start_time)),
        files,
    };
    assert_eq!(fp.current_for(&proc, Some(&k)), fp);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(
        &dir.join("50-backlog.conf"),
        &format!("{HDR}allowedUnsafeSysctls: []\n"),
    );
    assert_ne!(fp.current_for(&proc, Some(&k)), fp, "mtime change");
    let (a, _) = read_allowlist(&proc, &k, None);
    assert!(a.unwrap().entries.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(find_kubelets(&proc).iter().all(|k| k.pid != pid));
}

#[test]
fn netns_default_somaxconn_is_measured() {
    if !kubetune_test_support::test_env::require_root("CAP_SYS_ADMIN for unshare(CLONE_NEWNET)") {
        return;
    }
    let measured = nodeinfo::netns_default_somaxconn().expect("measured");
    // Ground truth from another tool: a new named netns, read with `ip netns exec`.
    let ns = NamedNetns::create(&NamedNetns::unique_name("ndef")).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "cat",
            "/proc/sys/net/core/somaxconn",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let truth: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(measured, truth);
    // And what the kernel documents: 4096 since 5.4, 128 before.
    let rel = nodeinfo::kernel_release();
    let mut it = rel.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (maj, min) = (it.next().unwrap(), it.next().unwrap());
    let want = if (maj, min) >= (5, 4) { 4096 } else { 128 };
    assert_eq!(measured, want, "kernel {rel}");
}

mod mocked_api {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use kube::Client;
    use kubetune_agent::nodepublish::Publisher;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn node_json() -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "uid": "uid-node-a",
                            "labels": {"kubernetes.io/hostname": "node-a"}},
               "status": {"nodeInfo": {"kubeletVersion": "v1.35.0", "machineID": "", "systemUUID": "",
                   "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                   "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}})
    }

    /// The next request: method, path, query parameters, body.
    async fn next(h: &mut Handle, reply: Value) -> (Method, String, BTreeSet<String>, Value) {
        let (req, send) = tokio::time::timeout(std::time::Duration::from_secs(5), h.next_request())
            .await
            .expect("a request in time")
            .expect("a request");
        let (m, path) = (req.method().clone(), req.uri().path().to_string());
        let query: BTreeSet<String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if m == Method::PATCH {
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
        }
        let body = req.into_body().collect_bytes().await.unwrap();
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let reply = if reply.is_null() { v.clone() } else { reply }; // Null: echo the applied object
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        (m, path, query, v)
    }

    fn apply_query() -> BTreeSet<String> {
        ["fieldManager=kubetune-agent", "force=true"]
            .map(String::from)
            .into()
    }

    #[tokio::test]
    async fn publishes_labels_and_node_tuning_by_server_side_apply_on_change_only() {
        let t = TempDir::new("mock");
        let (proc, rootfs) = (t.0.join("proc"), t.0.join("rootfs"));
        let dropin = rootfs.join("etc/kubelet.d/10-net.conf");
        write(
            &rootfs.join("var/lib/kubelet/config.yaml"),
            &format!("{HDR}allowedUnsafeSysctls: [\"net.core.*\"]\n"),
        );
        write(
            &dropin,
            &format!(
                "{HDR}allowedUnsafeSysctls: [net.core.somaxconn, net.ipv4.tcp_max_syn_backlog]\n"
            ),
        );
        fake_process(
            &proc,
            77,
            &[
                "/usr/bin/kubelet",
                "--config",
                "/var/lib/kubelet/config.yaml",
                "--config-dir=/etc/kubelet.d",
            ],
            &rootfs,
            &rootfs,
        );

        let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let mut p = Publisher::new(proc.clone());
        let c = client.clone();
        let round = tokio::spawn(async move {
            let wrote = p.sync_once(&c, "node-a").await.unwrap();
            (p, wrote)
        });
        let (m, path, q, _) = next(&mut h, node_json()).await;
        assert_eq!(
            (m, path.as_str(), q.len()),
            (Method::GET, "/api/v1/nodes/node-a", 0)
        );
        let (m, path, q, body) = next(&mut h, node_json()).await;
        assert_eq!((m, path.as_str()), (Method::PATCH, "/api/v1/nodes/node-a"));
        assert_eq!(q, apply_query());
        assert_eq!(
            body,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {
            "sysctl.kubetune.dev/net.core.somaxconn": "allowed",
            "sysctl.kubetune.dev/net.ipv4.tcp_max_syn_backlog": "allowed"}}})
        );
        let (m, path, q, body) = next(&mut h, Value::Null).await;
        assert_eq!(
            (m, path.as_str()),
            (
                Method::PATCH,
                "/apis/kubetune.dev/v1alpha1/nodetunings/node-a"
            )
        );
        assert_eq!(q, apply_query());
        assert_eq!(body["kind"], "NodeTuning");
        assert_eq!(body["metadata"]["name"], "node-a");
        assert_eq!(
            body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node",
            "name": "node-a", "uid": "uid-node-a", "controller": false, "blockOwnerDeletion": false}])
        );
        let spec = &body["spec"];
        assert_eq!(spec["nodeName"], "node-a");
        assert_eq!(spec["kubeletVersion"], "v1.35.0");
        assert_eq!(
            spec["kubelet"],
            json!({"allowedUnsafeSysctls": ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"],
            "source": "/etc/kubelet.d/10-net.conf"})
        );
        assert_eq!(
            spec["acceptedUnsafeSysctls"],
            json!(["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"])
        );
        assert_eq!(
            spec["acceptedSummary"],
            "net.core.somaxconn,net.ipv4.tcp_max_syn_backlog"
        );
        assert_eq!(spec["kernelVersion"], nodeinfo::kernel_release());
        assert_eq!(spec["tuningCni"]["state"], "NotInstalled");
        assert!(
            spec["netnsDefaultSomaxconn"].is_i64()
                || spec["netnsDefaultSomaxconnError"].is_string(),
            "{spec}"
        );
        let (mut p, wrote) = round.await.unwrap();
        assert!(wrote);

        // Nothing changed: only the Node is read.
        let c = client.clone();
        let round = tokio::spawn(async move {
            let w = p.sync_once(&c, "node-a").await.unwrap();
            (p, w)
        });
        let (m, _, _, _) = next(&mut h, node_json()).await;
        assert_eq!(m, Method::GET);
        let (mut p, wrote) = round.await.unwrap();
        assert!(!wrote);

        // The drop-in changes: the labels follow (tcp_max_syn_backlog's label goes away).
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            &dropin,
            &format!("{HDR}allowedUnsafeSysctls: [net.core.somaxconn]\n"),
        );
        let c = client.clone();
        let round = tokio::spawn(async move { p.sync_once(&c, "node-a").await.unwrap() });
        next(&mut h, node_json()).await;
        let (_, path, _, body) = next(&mut h, node_json()).await;
        assert_eq!(path, "/api/v1/nodes/node-a");
        assert_eq!(
            body["metadata"]["labels"],
            json!({"sysctl.kubetune.dev/net.core.somaxconn": "allowed"})
        );
        let (_, _, _, body) = next(&mut h, Value::Null).await;
        assert_eq!(body["spec"]["acceptedSummary"], "net.core.somaxconn");
        assert!(round.await.unwrap());
    }
}
