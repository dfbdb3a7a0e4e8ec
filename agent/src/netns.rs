//! Network namespaces: enumeration (`/proc/*/ns/net`, `/run/netns/*`) and running code inside
//! one (`setns` on a dedicated thread, never the caller's).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors around network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The netns file could not be opened (usually: the netns or its last process is gone).
    #[error("open {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The file now names a different netns than enumerated (inode reused / process gone).
    #[error("{path}: netns changed (inode {found}, expected {expected})")]
    Changed {
        /// Path.
        path: String,
        /// Inode enumerated.
        expected: u64,
        /// Inode found.
        found: u64,
    },
    /// setns(2) failed.
    #[error("setns {path}: {source}")]
    Setns {
        /// Path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The worker thread panicked.
    #[error("netns worker thread panicked")]
    Panicked,
    /// Socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

/// Identity of a network namespace that survives inode reuse: the inode number (what
/// `/proc/<pid>/ns/net` shows, reused quickly after a netns dies) plus the netns cookie
/// (`SO_NETNS_COOKIE`, unique per boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NetnsId {
    /// nsfs inode number.
    pub inode: u64,
    /// Netns cookie.
    pub cookie: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.inode, self.cookie)
    }
}

/// A network namespace found by enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    /// nsfs inode number.
    pub inode: u64,
    /// A path to `setns` into: `/run/netns/<name>` when named, else `/proc/<pid>/ns/net`.
    pub path: PathBuf,
    /// `ip netns` name, when the netns is bind-mounted under `/run/netns`.
    pub name: Option<String>,
    /// Processes in it (ascending).
    pub pids: Vec<u32>,
}

/// Every network namespace reachable through `/proc/*/ns/net` and `/run/netns/*`, sorted by inode.
pub fn enumerate() -> Vec<NetnsRef> {
    let mut by_ino: BTreeMap<u64, NetnsRef> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let path = e.path();
            if let Ok(md) = std::fs::metadata(&path) {
                // An unmounted placeholder file has a tmpfs inode, not an nsfs one; skip those.
                if md.dev()
                    == std::fs::metadata("/proc/self/ns/net")
                        .map(|m| m.dev())
                        .unwrap_or(0)
                {
                    by_ino.entry(md.ino()).or_insert(NetnsRef {
                        inode: md.ino(),
                        path: path.clone(),
                        name: Some(e.file_name().to_string_lossy().into_owned()),
                        pids: Vec::new(),
                    });
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            by_ino
                .entry(md.ino())
                .or_insert_with(|| NetnsRef {
                    inode: md.ino(),
                    path: path.clone(),
                    name: None,
                    pids: Vec::new(),
                })
                .pids
                .push(pid);
        }
    }
    let mut v: Vec<NetnsRef> = by_ino.into_values().collect();
    for r in &mut v {
        r.pids.sort_unstable();
        if r.name.is_none() {
            if let Some(p) = r.pids.first() {
                r.path = PathBuf::from(format!("/proc/{p}/ns/net"));
            }
        }
    }
    v
}

/// Opens a netns file and checks it still is the netns with `expect_inode`.
pub fn open_netns(path: &Path, expect_inode: Option<u64>) -> Result<OwnedFd, NetnsError> {
    let f = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let ino = f
        .metadata()
        .map_err(|source| NetnsError::Open {
            path: path.display().to_string(),
            source,
        })?
        .ino();
    if let Some(expected) = expect_inode {
        if ino != expected {
            return Err(NetnsError::Changed {
                path: path.display().to_string(),
                expected,
                found: ino,
            });
        }
    }
    Ok(f.into())
}

/// Moves the *calling thread* into the netns `fd`. Only call this on a thread you own.
pub fn setns_current_thread(fd: &OwnedFd, path: &Path) -> Result<(), NetnsError> {
    // SAFETY: setns(2) on a valid fd; affects only the calling thread's net namespace.
    let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(NetnsError::Setns {
            path: path.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread that first `setns`es into the netns at `path`.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let fd = open_netns(path, None)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("kt-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            setns_current_thread(&fd, &path)?;
            Ok(f())
        })
        .map_err(|source| NetnsError::Io {
            op: "spawn",
            source,
        })?
        .join()
        .map_err(|_| NetnsError::Panicked)?
}
