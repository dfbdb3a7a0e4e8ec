//! Stand-in pods for root-only tests and the local demo: named network namespaces with a
//! chosen `net.core.somaxconn`, non-accepting listeners with a chosen backlog, bounded loopback
//! connection bursts, and `ss`/`nstat` run inside the namespace as ground truth.
//!
//! Shells out to `ip` and needs root (CAP_SYS_ADMIN). Re-exports the agent's netns primitives
//! (enumeration, `setns` on a dedicated thread), which these build on, so a test has one module
//! for both.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

pub use kubetune_agent::netns::*;

pub use crate::ground_truth::{parse_nstat, parse_ss, SsRow};
pub use crate::is_root;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Opening or entering a netns failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A command (`ip`, `ss`, `nstat`) failed.
    #[error("{cmd}: {msg}")]
    Command {
        /// Command line.
        cmd: String,
        /// stderr / error.
        msg: String,
    },
    /// Socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run_cmd(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| HarnessError::Command {
            cmd: args.join(" "),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            cmd: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`), with loopback up, deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
}

impl NamedNetns {
    /// A name unique to this process and call: `kt-test-<pid>-<tag>-<n>`.
    pub fn unique_name(tag: &str) -> String {
        format!(
            "kt-test-{}-{tag}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `ip netns add <name>` + `ip -n <name> link set lo up`.
    pub fn create(name: &str) -> Result<Self, HarnessError> {
        run_cmd(&["ip", "netns", "add", name])?;
        let ns = NamedNetns {
            name: name.to_string(),
            path: PathBuf::from(format!("/run/netns/{name}")),
        };
        run_cmd(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`NamedNetns::create`] then sets `net.core.somaxconn` inside it.
    pub fn create_with_somaxconn(name: &str, somaxconn: u32) -> Result<Self, HarnessError> {
        let ns = Self::create(name)?;
        ns.set_sysctl("net/core/somaxconn", &somaxconn.to_string())?;
        Ok(ns)
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// nsfs inode number.
    pub fn inode(&self) -> Result<u64, HarnessError> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| {
                HarnessError::Netns(NetnsError::Open {
                    path: self.path.display().to_string(),
                    source,
                })
            })
    }

    /// Netns cookie (`SO_NETNS_COOKIE`).
    pub fn cookie(&self) -> Result<u64, HarnessError> {
        self.run(kubetune_agent::sockdiag::current_netns_cookie)?
            .map_err(|e| HarnessError::Io {
                op: "SO_NETNS_COOKIE",
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// Writes `/proc/sys/<key>` inside the netns (`key` like `net/core/somaxconn`).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), HarnessError> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        self.run(move || std::fs::write(&path, value))?
            .map_err(|source| HarnessError::Io {
                op: "write sysctl",
                source,
            })
    }

    /// Runs `f` on a thread inside the netns.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HarnessError> {
        Ok(run_in_netns(&self.path, f)?)
    }

    /// Starts a listener inside the netns (on its own thread) and returns once `listen()` returned.
    pub fn spawn_listener(&self, spec: ListenerSpec) -> Result<TestListener, HarnessError> {
        TestListener::spawn(&self.path, spec)
    }

    /// Opens `n` non-blocking loopback connections to `127.0.0.1:port` inside the netns, waits
    /// `settle` for handshakes, and returns the client sockets (closed when the [`Burst`] drops).
    pub fn burst(&self, port: u16, n: usize, settle: Duration) -> Result<Burst, HarnessError> {
        Burst::open(&self.path, port, n, settle)
    }

    /// `ip netns exec <ns> nstat -az <counter>` (e.g. `TcpExtListenOverflows`): ground truth.
    pub fn nstat(&self, counter: &str) -> Result<u64, HarnessError> {
        let out = run_cmd(&["ip", "netns", "exec", &self.name, "nstat", "-az", counter])?;
        Ok(parse_nstat(&out, counter))
    }

    /// `ip netns exec <ns> ss -lntH`: ground truth (local address → (Recv-Q, Send-Q)); for a
    /// listener Recv-Q is the accept queue and Send-Q the effective backlog.
    pub fn ss_listeners(&self) -> Result<HashMap<String, (u64, u64)>, HarnessError> {
        let out = run_cmd(&["ip", "netns", "exec", &self.name, "ss", "-lntH"])?;
        Ok(parse_ss(&out)
            .into_iter()
            .map(|r| (r.local, (r.recv_q, r.send_q)))
            .collect())
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(&["ip", "netns", "delete", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "could not delete test netns");
        }
    }
}

/// How a [`TestListener`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Never calls `accept()`: the queue fills.
    Never,
    /// Accepts (and closes) one connection per interval.
    Every(Duration),
}

/// What listener to start.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    /// Backlog passed to `listen()`.
    pub backlog: i32,
    /// Port on 127.0.0.1 (0 = ephemeral).
    pub port: u16,
    /// Accept behaviour.
    pub accept: AcceptMode,
    /// `TCP_DEFER_ACCEPT` seconds (a bare final ACK then leaves the request in SYN_RECV until data
    /// arrives, which lets tests provoke final-ACK-phase overflows deterministically).
    pub defer_accept_secs: Option<u32>,
}

impl ListenerSpec {
    /// A listener with `backlog` that never accepts, on an ephemeral port.
    pub fn never_accepting(backlog: i32) -> Self {
        ListenerSpec {
            backlog,
            port: 0,
            accept: AcceptMode::Never,
            defer_accept_secs: None,
        }
    }
}

/// A listener running on its own thread inside a netns; stops and closes on drop.
#[derive(Debug)]
pub struct TestListener {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    handle: Option<JoinHandle<()>>,
}

impl TestListener {
    /// Starts the listener thread in the netns at `netns_path`.
    pub fn spawn(netns_path: &Path, spec: ListenerSpec) -> Result<Self, HarnessError> {
        let fd = open_netns(netns_path, None)?;
        let path = netns_path.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (tx, rx) = mpsc::channel::<Result<u16, HarnessError>>();
        let (stop2, acc2) = (stop.clone(), accepted.clone());
        let handle = std::thread::Builder::new()
            .name("kt-test-listener".into())
            .spawn(move || {
                let setup = || -> Result<(std::net::TcpListener, u16), HarnessError> {
                    setns_current_thread(&fd, &path)?;
                    listen_loopback(spec)
                };
                let (l, port) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(port));
                let _ = l.set_nonblocking(true);
                while !stop2.load(Ordering::Relaxed) {
                    match spec.accept {
                        AcceptMode::Never => std::thread::sleep(Duration::from_millis(20)),
                        AcceptMode::Every(d) => {
                            std::thread::sleep(d);
                            if l.accept().is_ok() {
                                acc2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
            .map_err(|source| HarnessError::Io {
                op: "spawn",
                source,
            })?;
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| HarnessError::Netns(NetnsError::Panicked))??;
        Ok(TestListener {
            port,
            stop,
            accepted,
            handle: Some(handle),
        })
    }

    /// Port the listener is bound to on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn listen_loopback(spec: ListenerSpec) -> Result<(std::net::TcpListener, u16), HarnessError> {
    let io = |op| move |source| HarnessError::Io { op, source };
    // SAFETY: socket(2); fd owned immediately.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fd.
    let l = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
    }
    if let Some(secs) = spec.defer_accept_secs {
        let v = secs as libc::c_int;
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&v as *const i32).cast(),
                4,
            );
        }
    }
    let addr = loopback(spec.port);
    // SAFETY: addr is a valid sockaddr_in.
    if unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    } != 0
    {
        return Err(io("bind")(std::io::Error::last_os_error()));
    }
    // SAFETY: listen(2) on our fd with the chosen backlog.
    if unsafe { libc::listen(fd, spec.backlog) } != 0 {
        return Err(io("listen")(std::io::Error::last_os_error()));
    }
    let port = l.local_addr().map_err(io("getsockname"))?.port();
    Ok((l, port))
}

/// Client sockets of a connection burst (closed on drop).
#[derive(Debug)]
pub struct Burst {
    sockets: Vec<OwnedFd>,
}

impl Burst {
    fn open(
        netns_path: &Path,
        port: u16,
        n: usize,
        settle: Duration,
    ) -> Result<Self, HarnessError> {
        let sockets = run_in_netns(netns_path, move || -> Result<Vec<OwnedFd>, HarnessError> {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                // SAFETY: socket(2); fd owned immediately.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                if fd < 0 {
                    return Err(HarnessError::Io {
                        op: "socket",
                        source: std::io::Error::last_os_error(),
                    });
                }
                // SAFETY: fresh fd.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let addr = loopback(port);
                // SAFETY: valid sockaddr_in; non-blocking connect returns EINPROGRESS.
                unsafe {
                    libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    );
                }
                v.push(owned);
            }
            Ok(v)
        })??;
        std::thread::sleep(settle);
        Ok(Burst { sockets })
    }

    /// Client sockets whose handshake completed (from the client's point of view).
    pub fn established(&self) -> usize {
        self.sockets
            .iter()
            .filter(|s| {
                // SAFETY: getpeername on a valid fd with a large-enough buffer.
                let mut a: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                unsafe {
                    libc::getpeername(
                        s.as_raw_fd(),
                        (&mut a as *mut libc::sockaddr_storage).cast(),
                        &mut len,
                    ) == 0
                }
            })
            .count()
    }

    /// Sends one byte on every connected client socket (completes deferred handshakes on a
    /// `TCP_DEFER_ACCEPT` listener). Returns how many sends succeeded.
    pub fn send_byte_each(&self) -> usize {
        self.sockets
            .iter()
            .filter(|s| {
                // SAFETY: send(2) of one byte from a valid buffer.
                unsafe {
                    libc::send(s.as_raw_fd(), b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) == 1
                }
            })
            .count()
    }
}

/// `127.0.0.1:port` as a `sockaddr_in`, for bind(2) and connect(2).
pub fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}
