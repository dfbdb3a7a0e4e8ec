//! Node discovery, the I/O around [`crate::kubelet`]: find the kubelet process (hostPID: every
//! `/proc/<pid>/cmdline`), read its `--config` file and `--config-dir` drop-ins as the kubelet
//! sees them (absolute paths inside `/proc/<pid>/root`, symlinks resolved in that root; relative
//! ones against its cwd `/proc/<pid>/cwd`), the kernel release, the `net.core.somaxconn` of a
//! freshly created network namespace (measured in a throw-away netns, never assumed), and whether
//! the `tuning` CNI plugin is in the node's CNI binary directories (containerd's `bin_dir`(s), or
//! `/opt/cni/bin`). [`Fingerprint`] tells when the kubelet restarted or its files changed.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kubetune_crds::node::{TuningCniPlugin, TuningCniState};
use kubetune_crds::sysctl::KubeVersion;

use crate::kubelet::{self, Allowlist, ConfigFile, KubeletError};

/// A process whose command line is a kubelet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletProcess {
    /// Pid (in the agent's pid namespace: the host's with hostPID).
    pub pid: u32,
    /// `/proc/<pid>/cmdline`.
    pub argv: Vec<String>,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): a restart changes it.
    pub start_time: u64,
}

fn cmdline(proc_root: &Path, pid: &str) -> Option<Vec<String>> {
    let raw = std::fs::read(proc_root.join(pid).join("cmdline")).ok()?;
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let n = argv.iter().rposition(|a| !a.is_empty())? + 1;
    Some(argv[..n].to_vec())
}

fn start_time(proc_root: &Path, pid: &str) -> u64 {
    let stat = std::fs::read_to_string(proc_root.join(pid).join("stat")).unwrap_or_default();
    // Field 22; fields after the comm's closing parenthesis start at field 3.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Processes named by `want` (argv[0] basename) in `proc_root`, by pid.
fn processes(proc_root: &Path, want: impl Fn(&[String]) -> bool) -> Vec<KubeletProcess> {
    let mut out: Vec<KubeletProcess> = std::fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name.parse().ok()?;
            let argv = cmdline(proc_root, &name)?;
            want(&argv).then(|| KubeletProcess {
                pid,
                start_time: start_time(proc_root, &name),
                argv,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Every kubelet process visible in `proc_root` (`/proc`), by pid.
pub fn find_kubelets(proc_root: &Path) -> Vec<KubeletProcess> {
    processes(proc_root, |a| kubelet::launcher(a).is_some())
}

/// Opens `path` as process `pid` would: absolute paths inside its root (symlinks resolved there,
/// `openat2(RESOLVE_IN_ROOT)`, or plainly under `/proc/<pid>/root` where the kernel lacks it),
/// relative ones against its cwd.
pub fn open_as(proc_root: &Path, pid: u32, path: &str) -> std::io::Result<File> {
    let base = proc_root.join(pid.to_string());
    let Some(rel) = path.strip_prefix('/') else {
        return File::open(base.join("cwd").join(path));
    };
    let root = File::open(base.join("root"))?;
    let c = std::ffi::CString::new(if rel.is_empty() { "." } else { rel })
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2(2) with a valid dirfd, a NUL-terminated path and a sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&root),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        // No openat2 (kernel < 5.6) or a seccomp profile that refuses it.
        if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
            return File::open(base.join("root").join(rel));
        }
        return Err(e);
    }
    // SAFETY: openat2 returned a new, owned descriptor.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// A file's contents and mtime, read as process `pid` sees it.
fn read_as(
    proc_root: &Path,
    pid: u32,
    path: &str,
) -> Result<(String, Option<SystemTime>), KubeletError> {
    let err = |e: std::io::Error| KubeletError::Read {
        path: path.into(),
        detail: e.to_string(),
    };
    let mut f = open_as(proc_root, pid, path).map_err(err)?;
    let mtime = f.metadata().and_then(|m| m.modified()).ok();
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(err)?;
    Ok((text, mtime))
}

/// Names in a directory as process `pid` sees it, with the directory's mtime.
fn list_as(
    proc_root: &Path,
    pid: u32,
    dir: &str,
) -> Result<(Vec<String>, Option<SystemTime>), KubeletError> {
    let err = |e: std::io::Error| KubeletError::Read {
        path: dir.into(),
        detail: e.to_string(),
    };
    let f = open_as(proc_root, pid, dir).map_err(err)?;
    let mtime = f.metadata().and_then(|m| m.modified()).ok();
    let fd = f.into_raw_fd();
    let names = std::fs::read_dir(format!("/proc/self/fd/{fd}"))
        .map_err(err)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        });
    // SAFETY: fd came from into_raw_fd above and is closed exactly once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok((names?, mtime))
}

/// Paths as the kubelet names them, with their mtimes.
pub type FileTimes = Vec<(String, Option<SystemTime>)>;

/// Files (and directories) whose change means "read the configuration again".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// The kubelet's pid and start time (`None` = no single kubelet found).
    pub kubelet: Option<(u32, u64)>,
    /// Paths as the kubelet names them, with their mtimes.
    pub files: FileTimes,
}

impl Fingerprint {
    /// The same files stat'ed again, and the kubelet process looked up again.
    pub fn current(&self, proc_root: &Path) -> Fingerprint {
        self.current_for(proc_root, single_kubelet(proc_root).ok().as_ref())
    }

    /// The same files stat'ed again as process `k` sees them.
    pub fn current_for(&self, proc_root: &Path, k: Option<&KubeletProcess>) -> Fingerprint {
        let kubelet = k.map(|k| (k.pid, k.start_time));
        let files = match kubelet {
            Some((pid, _)) => self
                .files
                .iter()
                .map(|(p, _)| {
                    let m = open_as(proc_root, pid, p).and_then(|f| f.metadata()?.modified());
                    (p.clone(), m.ok())
                })
                .collect(),
            None => Vec::new(),
        };
        Fingerprint { kubelet, files }
    }
}

fn single_kubelet(proc_root: &Path) -> Result<KubeletProcess, KubeletError> {
    let mut all = find_kubelets(proc_root);
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(KubeletError::Process(
            "no kubelet process is visible (the agent needs hostPID)".into(),
        )),
        _ => Err(KubeletError::Process(format!(
            "several kubelet processes are visible (pids {}): cannot tell which one runs this node's pods",
            all.iter().map(|k| k.pid.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The allowlist of kubelet process `k`. Drop-ins count only where the kubelet reads them
/// (see [`kubelet::dropins_apply`]).
pub fn read_allowlist(
    proc_root: &Path,
    k: &KubeletProcess,
    kubelet_version: Option<KubeVersion>,
) -> (Result<Allowlist, KubeletError>, FileTimes) {
    let mut files = Vec::new();
    let r = (|| {
        let flags = kubelet::parse_flags(&k.argv)?;
        let main = match &flags.config {
            Some(p) => {
                let (text, m) = read_as(proc_root, k.pid, p)?;
                files.push((p.clone(), m));
                Some(ConfigFile {
                    path: p.clone(),
                    text,
                })
            }
            None => None,
        };
        let mut dropins = Vec::new();
        let env =
            std::fs::read(proc_root.join(k.pid.to_string()).join("environ")).unwrap_or_default();
        let alpha_env = env
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"KUBELET_CONFIG_DROPIN_DIR_ALPHA="));
        if let Some(dir) = flags
            .config_dir
            .as_ref()
            .filter(|_| kubelet::dropins_apply(kubelet_version, alpha_env))
        {
            let (names, m) = list_as(proc_root, k.pid, dir)?;
            files.push((dir.clone(), m));
            for name in kubelet::dropin_order(names) {
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                let (text, m) = read_as(proc_root, k.pid, &path)?;
                files.push((path.clone(), m));
                dropins.push(ConfigFile { path, text });
            }
        }
        kubelet::resolve(&flags, main.as_ref(), &dropins)
    })();
    (r, files)
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `net.core.somaxconn` of a new network namespace: a helper thread `unshare(CLONE_NEWNET)`s
/// (needs CAP_SYS_ADMIN) and reads the value there; the namespace goes with the thread.
pub fn netns_default_somaxconn() -> Result<i64, String> {
    std::thread::Builder::new()
        .name("kt-netns-default".into())
        .spawn(|| {
            // SAFETY: unshare(2) on the calling (helper) thread only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(format!(
                    "unshare(CLONE_NEWNET) failed: {e} (needs CAP_SYS_ADMIN)"
                ));
            }
            // /proc/sys/net resolves against the reading thread's network namespace.
            let s = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .map_err(|e| format!("reading net.core.somaxconn in a new netns: {e}"))?;
            s.trim()
                .parse::<i64>()
                .map_err(|e| format!("net.core.somaxconn {s:?}: {e}"))
        })
        .map_err(|e| format!("spawning the measuring thread: {e}"))?
        .join()
        .map_err(|_| "the measuring thread panicked".to_string())?
}

/// CNI binary directories a containerd configuration names (`bin_dir = "…"`, containerd 2's
/// `bin_dirs = ["…", …]`), in order. Pure.
pub fn containerd_cni_bin_dirs(config: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in config.lines().map(str::trim) {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !matches!(k.trim(), "bin_dir" | "bin_dirs") {
            continue;
        }
        let v = v.split('#').next().unwrap_or("");
        out.extend(
            v.split(['"', '\''])
                .enumerate()
                .filter(|(i, s)| i % 2 == 1 && !s.is_empty())
                .map(|(_, s)| s.to_string()),
        );
    }
    out
}

/// The CNI binary directories of the node: containerd's, when its process and configuration are
/// found, else the default `/opt/cni/bin`.
fn cni_bin_dirs(proc_root: &Path) -> Vec<String> {
    let containerd = processes(proc_root, |a| {
        a.first().and_then(|a0| a0.rsplit('/').next()) == Some("containerd")
    });
    for c in containerd {
        let cfg = c
            .argv
            .iter()
            .position(|a| a == "--config" || a == "-c")
            .and_then(|i| c.argv.get(i + 1).cloned())
            .or_else(|| {
                c.argv
                    .iter()
                    .find_map(|a| a.strip_prefix("--config=").map(String::from))
            })
            .unwrap_or_else(|| "/etc/containerd/config.toml".into());
        if let Ok((text, _)) = read_as(proc_root, c.pid, &cfg) {
            let dirs = containerd_cni_bin_dirs(&text);
            if !dirs.is_empty() {
                return dirs;
            }
        }
    }
    vec!["/opt/cni/bin".into()]
}

/// Is the `tuning` plugin an executable file in one of the node's CNI binary directories (as
/// the kubelet's root sees them; pid 1's root when no kubelet was found)?
pub fn tuning_cni(proc_root: &Path, kubelet_pid: Option<u32>) -> TuningCniPlugin {
    let pid = kubelet_pid.unwrap_or(1);
    let dirs = cni_bin_dirs(proc_root);
    let mut errors = Vec::new();
    for d in &dirs {
        let path = format!("{}/tuning", d.trim_end_matches('/'));
        match open_as(proc_root, pid, &path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                return TuningCniPlugin {
                    state: TuningCniState::Installed,
                    detail: path,
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    if errors.is_empty() {
        TuningCniPlugin {
            state: TuningCniState::NotInstalled,
            detail: format!("no executable tuning in {}", dirs.join(", ")),
        }
    } else {
        TuningCniPlugin {
            state: TuningCniState::Unknown,
            detail: errors.join("; "),
        }
    }
}

/// Everything discovered about the node in one pass.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The kubelet's allowlist, or why it is unknown.
    pub allowlist: Result<Allowlist, KubeletError>,
    /// Kernel release.
    pub kernel_version: String,
    /// Netns default somaxconn, or why it could not be measured.
    pub netns_default_somaxconn: Result<i64, String>,
    /// The tuning CNI plugin.
    pub tuning_cni: TuningCniPlugin,
}

/// Discovers the node (blocking: reads /proc, spawns the measuring thread).
pub fn discover(
    proc_root: &Path,
    kubelet_version: Option<KubeVersion>,
) -> (NodeFacts, Fingerprint) {
    let k = single_kubelet(proc_root);
    let (allowlist, files, kpid) = match &k {
        Ok(k) => {
            let (a, f) = read_allowlist(proc_root, k, kubelet_version);
            (a, f, Some((k.pid, k.start_time)))
        }
        Err(e) => (Err(e.clone()), Vec::new(), None),
    };
    let facts = NodeFacts {
        allowlist,
        kernel_version: kernel_release(),
        netns_default_somaxconn: netns_default_somaxconn(),
        tuning_cni: tuning_cni(proc_root, kpid.map(|p| p.0)),
    };
    (
        facts,
        Fingerprint {
            kubelet: kpid,
            files,
        },
    )
}

/// `/proc` as a path (the agent runs with hostPID).
pub fn proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_bin_dirs() {
        let v1 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/opt/cni/bin\"\n  conf_dir = \"/etc/cni/net.d\"\n";
        assert_eq!(containerd_cni_bin_dirs(v1), ["/opt/cni/bin"]);
        let k3s = "[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"/var/lib/rancher/k3s/data/cni\", '/opt/cni/bin']  # both\n";
        assert_eq!(
            containerd_cni_bin_dirs(k3s),
            ["/var/lib/rancher/k3s/data/cni", "/opt/cni/bin"]
        );
        assert!(
            containerd_cni_bin_dirs("root = \"/var/lib/containerd\"\n# bin_dir = \"/x\"\n")
                .is_empty()
        );
    }
}
