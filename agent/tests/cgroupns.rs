//! Root-only: attribution from inside a private cgroup namespace, as an unprivileged agent
//! container on a cgroup v2 node runs. The test builds a fake kubepods hierarchy under this
//! machine's cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts),
//! puts "pod" processes into it (each in its own network namespace), then starts `cat` and the
//! real `kubetune-agent scan` in a process that first moves into a fake agent pod's cgroup and
//! then unshares its cgroup namespace — so every path it reads is `..`-relative — and checks both
//! still name the right pod. On hybrid hosts one pod is placed only in a v1 hierarchy, with the
//! cgroupfs layout. Everything created is removed on drop.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubetune_agent::attribution::parse_pod_cgroup;
use kubetune_test_support::netns::NamedNetns;

const AGENT_UID: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const SYSTEMD_UID: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const CGROUPFS_UID: &str = "cccccccc-0000-4000-8000-000000000003";
const V1_UID: &str = "dddddddd-0000-4000-8000-000000000004";

fn cid(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn systemd_pod(qos: &str, uid: &str, id: &str) -> String {
    let u = uid.replace('-', "_");
    format!(
        "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/cri-containerd-{id}.scope"
    )
}

/// Cgroup directories this test created, removed deepest first on drop.
#[derive(Default)]
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    /// Creates `root/rel` (and the missing parents) and returns it.
    fn make(&mut self, root: &Path, rel: &str) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in rel.split('/') {
            p.push(c);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                self.0.push(p.clone());
            }
        }
        p
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn move_into(cgroup: &Path, pid: u32) {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", cgroup.display()));
}

/// The cgroup v2 mount: `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified` (hybrid).
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.join("cgroup.controllers").exists())
}

/// A "pod": `sleep` in its own netns, moved into `cgroup`; killed on drop.
struct PodProc {
    child: Child,
    netns: NamedNetns,
}

impl PodProc {
    fn start(tag: &str, cgroups: &[PathBuf]) -> Self {
        let netns = NamedNetns::create(&NamedNetns::unique_name(tag)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        for cg in cgroups {
            move_into(cg, child.id());
        }
        // `ip netns exec` execs sleep in place once it has entered the netns.
        let want = std::fs::metadata(netns.path()).map(|m| m.ino()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(format!("/proc/{}/ns/net", child.id()))
            .map(|m| m.ino())
            .ok()
            != Some(want)
        {
            assert!(Instant::now() < deadline, "{tag} never entered its netns");
            std::thread::sleep(Duration::from_millis(10));
        }
        PodProc { child, netns }
    }
}

impl Drop for PodProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` after moving it into `agent_cgroups` and unsharing its cgroup namespace.
fn run_in_private_cgroupns(mut cmd: Command, agent_cgroups: &[PathBuf]) -> String {
    let procs: Vec<CString> = agent_cgroups
        .iter()
        .map(|c| {
            CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap()
        })
        .collect();
    // SAFETY: between fork and exec only raw syscalls on pre-built buffers.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("spawn in private cgroupns");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn attributes_from_inside_a_private_cgroup_namespace() {
    if !kubetune_test_support::test_env::require_root("cgroup and network namespaces") {
        return;
    }
    let v2 = v2_root();
    if !kubetune_test_support::test_env::require("a cgroup v2 mount", v2.is_some()) {
        return;
    }
    let v2 = v2.unwrap();
    // A v1 hierarchy exists next to the v2 mount on hybrid hosts.
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let v1 = (v2 != Path::new("/sys/fs/cgroup") && v1.join("tasks").exists()).then_some(v1);

    let base = format!("kt-test-{}-cgns", std::process::id());
    let mut cg = Cgroups::default();
    let mut agent = vec![cg.make(
        &v2,
        &format!("{base}/{}", systemd_pod("besteffort", AGENT_UID, &cid('a'))),
    )];
    let sysd = cg.make(
        &v2,
        &format!(
            "{base}/{}",
            systemd_pod("burstable", SYSTEMD_UID, &cid('b'))
        ),
    );
    let cgfs = cg.make(
        &v2,
        &format!("{base}/kubepods/pod{CGROUPFS_UID}/{}", cid('c')),
    );
    let mut pods = vec![
        (
            PodProc::start("cg-sysd", &[sysd]),
            SYSTEMD_UID,
            "burstable",
            Some("cri-containerd"),
        ),
        (
            PodProc::start("cg-cgfs", &[cgfs]),
            CGROUPFS_UID,
            "guaranteed",
            None,
        ),
    ];
    if let Some(v1) = v1 {
        agent.push(cg.make(
            v1,
            &format!("{base}/kubepods/besteffort/pod{AGENT_UID}/{}", cid('a')),
        ));
        let only_v1 = cg.make(
            v1,
            &format!("{base}/kubepods/burstable/pod{V1_UID}/{}", cid('d')),
        );
        pods.push((
            PodProc::start("cg-v1", &[only_v1]),
            V1_UID,
            "burstable",
            None,
        ));
    }

    // What a process in the agent's private cgroup namespace reads, and what the parser makes of it.
    for (p, uid, qos, runtime) in &pods {
        let mut cat = Command::new("cat");
        cat.arg(format!("/proc/{}/cgroup", p.child.id()));
        let seen = run_in_private_cgroupns(cat, &agent);
        eprintln!("{uid} seen from the private namespace:\n{seen}");
        assert!(!seen.contains(&base), "not relative: {seen}");
        assert!(seen.contains("0::/.."), "no ..-relative v2 line: {seen}");
        let got = parse_pod_cgroup(&seen).unwrap_or_else(|| panic!("no pod in {seen}"));
        assert_eq!(
            (got.pod_uid.as_str(), got.qos.as_str()),
            (*uid, *qos),
            "{seen}"
        );
        assert_eq!(got.runtime.as_deref(), *runtime, "{seen}");
        assert!(got.container_id.is_some(), "{seen}");
    }

    // The real agent, started the same way, attributes each pod's netns.
    let mut scan = Command::new(env!("CARGO_BIN_EXE_kubetune-agent"));
    scan.args(["scan", "--once", "-o", "json", "--all", "--no-ebpf"]);
    let snap: serde_json::Value =
        serde_json::from_str(&run_in_private_cgroupns(scan, &agent)).unwrap();
    for (p, uid, qos, _) in &pods {
        let ino = p.netns.inode().unwrap();
        let ns = snap["netns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"]["inode"] == ino)
            .unwrap_or_else(|| panic!("netns {} not scanned", p.netns.name()));
        assert_eq!(ns["pod"]["pod_uid"], *uid, "{ns:#}");
        assert_eq!(ns["pod"]["qos"], *qos, "{ns:#}");
    }
    drop(pods);
}
