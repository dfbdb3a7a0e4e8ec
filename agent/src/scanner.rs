//! The scanner: one sweep of every network namespace (sock_diag + procfs inside the netns on a
//! dedicated thread), joined with the eBPF maps when the probe is loaded, attributed to
//! pods/processes, sampled over a window, and diagnosed.
//!
//! What a periodic [`Scanner::scan`] re-reads depends on the tier:
//!
//! * **eBPF tiers**: a netns gets a *full sample* (setns, sock_diag dump, somaxconn, `TcpExt`,
//!   socket owners, pod) when it is new, when a `listen()` event named it, when one of its known
//!   listeners is gone, and at every full resync ([`ScannerConfig::resync`], default 60 s, or
//!   at once when the ring buffer lost events). Every other netns gets a *re-read* through
//!   handles kept open from its last full sample — no setns: an exact sock_diag lookup of each
//!   known listener (queue length, limit, `sk_drops`), and the netns's somaxconn and `TcpExt`
//!   counters. So queue lengths, overflows and closes are still seen every scan; a listener
//!   that no event announced (io_uring `IORING_OP_LISTEN`, lost events) waits for the resync.
//!   Listeners found closed have their eBPF map entries removed ([`Probe::forget`]).
//! * **sock-diag tier** (no eBPF, no events), and an eBPF tier without a `listen()` hook
//!   ([`EbpfMode::NoSyscallTracepoints`] where `fexit/inet_listen` does not load): a full sample
//!   of every netns every scan.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kubetune_crds::report::{Diagnosis, LimitedBy, ListenerReportSpec, ListenerStatus};
use kubetune_probe_common::{ListenInfo, ListenerKey, OverflowCounts, EVENT_LISTEN};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::attribution::{parse_pod_cgroup, PodCgroup};
use crate::diagnose::{diagnose, near_full, DiagnosisInput};
use crate::netns::{self, NetnsId, NetnsRef};
use crate::probe::{Probe, Tier};
use crate::procfs::{self, ListenCounters};
use crate::sockdiag::{self, DiagListener, DiagSocket};

/// Whether to use eBPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EbpfMode {
    /// Load the probe when possible, fall back to sock_diag otherwise.
    #[default]
    Auto,
    /// Never load eBPF (fallback mode).
    Off,
    /// Load the probe when possible, without the `listen()` syscall tracepoints
    /// ([`crate::probe::without_syscall_tracepoints`]): no cost on other system calls, but where
    /// `fexit/inet_listen` does not load either, no `listen()` is seen (requested backlogs
    /// unknown, every scan samples every netns in full).
    NoSyscallTracepoints,
}

/// Scanner settings.
#[derive(Debug, Clone, Copy)]
pub struct ScannerConfig {
    /// Window for `queue_max`, `overflows_recent` and the "sustained" test.
    pub window: Duration,
    /// eBPF use.
    pub ebpf: EbpfMode,
    /// eBPF tiers: how often a scan samples every netns in full (see the module docs).
    pub resync: Duration,
}

/// Default [`ScannerConfig::resync`].
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            window: Duration::from_secs(60),
            ebpf: EbpfMode::Auto,
            resync: DEFAULT_RESYNC,
        }
    }
}

/// A process, for off-cluster attribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessRef {
    /// pid.
    pub pid: u32,
    /// comm.
    pub comm: String,
}

/// One TCP listener as observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerObservation {
    /// Local address.
    pub address: IpAddr,
    /// Local port.
    pub port: u16,
    /// Socket inode.
    pub inode: u64,
    /// Backlog passed to `listen()`; `None` when the listener predates the probe or eBPF is off.
    pub requested_backlog: Option<i64>,
    /// `sk_max_ack_backlog`.
    pub effective_backlog: i64,
    /// `somaxconn` at the time of `listen()` (eBPF only).
    pub somaxconn_at_listen: Option<i64>,
    /// Accept-queue length now.
    pub queue_now: i64,
    /// Highest accept-queue length over the window.
    pub queue_max: i64,
    /// Overflows: max(eBPF counters (since probe load; exact for the phases they cover),
    /// min(`sk_drops`, netns `ListenOverflows`)). `sk_drops` covers both phases for the socket's
    /// life but also counts other listen drops; the netns counter is exact but shared, so the
    /// min is exact for a netns with one overflowing listener and an upper bound otherwise.
    pub overflows_total: u64,
    /// Overflows in the window (on first sight: everything so far, see [`Scanner`]).
    pub overflows_recent: u64,
    /// Overflow rate over the window, when there are two samples or more.
    pub overflows_per_minute: Option<f64>,
    /// Final-ACK-phase overflows counted by `tp_btf/kfree_skb` (eBPF tiers).
    pub ebpf_ack_phase_overflows: Option<u64>,
    /// SYN-phase overflows counted by fentry (fentry tier).
    pub ebpf_syn_phase_overflows: Option<u64>,
    /// `sk_drops` from sock_diag.
    pub sk_drops: Option<u64>,
    /// Which limit sets the effective backlog.
    pub limited_by: LimitedBy,
    /// Verdict.
    pub diagnosis: Diagnosis,
    /// Owning process (from `/proc/*/fd`, else the pid that called `listen()`).
    pub process: Option<ProcessRef>,
    /// Pod/container of the owning process, from its cgroup.
    pub pod: Option<PodCgroup>,
    /// Queue samples in the window.
    pub samples: u32,
}

/// One network namespace as observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetnsObservation {
    /// Identity (inode + cookie).
    pub id: NetnsId,
    /// `ip netns` name when bind-mounted under /run/netns.
    pub name: Option<String>,
    /// True for the init (host) network namespace.
    pub host: bool,
    /// Pod that owns the netns (from its processes' cgroups; never set for the host netns).
    pub pod: Option<PodCgroup>,
    /// Lowest-pid process in the netns.
    pub process: Option<ProcessRef>,
    /// Number of processes in the netns.
    pub process_count: usize,
    /// `net.core.somaxconn` now.
    pub somaxconn: Option<i64>,
    /// The other per-netns sysctls kubetune can set (every `net.*` row of the sysctl table),
    /// read inside the netns (whitespace collapsed), so the operator can verify any policy.
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// `TcpExt ListenOverflows` / `ListenDrops`.
    pub counters: Option<ListenCounters>,
    /// TCP listeners, sorted by port then address.
    pub listeners: Vec<ListenerObservation>,
}

/// Everything one scan saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Active tier.
    pub tier: Tier,
    /// A `listen()` hook is attached ([`Probe::sees_listens`]): requested backlogs are known
    /// and new listeners are announced. False on the `sock-diag` tier and, where
    /// `fexit/inet_listen` does not load, under `--no-syscall-tracepoints`.
    pub listen_events: bool,
    /// Why eBPF is not in use, in fallback mode.
    pub fallback_reason: Option<String>,
    /// RFC 3339 time of the scan.
    pub observed_at: String,
    /// Window length in seconds.
    pub window_seconds: i64,
    /// Namespaces, sorted by inode.
    pub netns: Vec<NetnsObservation>,
    /// Namespaces that vanished between enumeration and inspection (not an error).
    pub vanished: usize,
    /// Other per-netns errors (the scan continues past them).
    pub errors: Vec<String>,
}

/// How the last sample read its namespaces ([`Scanner::last_sample`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SampleKinds {
    /// Namespaces sampled in full (setns + dump + procfs).
    pub full: usize,
    /// Namespaces re-read through kept handles (eBPF tiers; always 0 on the sock-diag tier,
    /// which samples every netns in full every scan).
    pub reread: usize,
}

impl NetnsObservation {
    /// Worst diagnosis over the listeners (by `Diagnosis`'s order; `Healthy` when none).
    pub fn diagnosis(&self) -> Diagnosis {
        self.listeners
            .iter()
            .map(|l| l.diagnosis)
            .max()
            .unwrap_or(Diagnosis::Healthy)
    }

    /// Converts this observation into a `ListenerReport` spec for `pod_uid` on `node_name`.
    /// `container_names` maps container ids to names (from the Pod's status), when known.
    pub fn to_report_spec(
        &self,
        pod_uid: &str,
        node_name: &str,
        snapshot: &Snapshot,
        container_names: &HashMap<String, String>,
    ) -> ListenerReportSpec {
        let mut listeners: Vec<ListenerStatus> = self
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                address: l.address.to_string(),
                port: i32::from(l.port),
                requested_backlog: l.requested_backlog,
                effective_backlog: l.effective_backlog,
                queue_now: l.queue_now,
                queue_max: l.queue_max,
                overflows_total: l.overflows_total as i64,
                overflows_recent: l.overflows_recent as i64,
                limited_by: l.limited_by,
                diagnosis: l.diagnosis,
                process: l.process.as_ref().map(|p| p.comm.clone()),
                container: l
                    .pod
                    .as_ref()
                    .and_then(|p| p.container_id.as_ref())
                    .map(|id| {
                        container_names
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| id.chars().take(12).collect())
                    }),
            })
            .collect();
        listeners.sort_by(|a, b| (a.port, &a.address).cmp(&(b.port, &b.address)));
        ListenerReportSpec {
            pod_uid: pod_uid.to_string(),
            node_name: node_name.to_string(),
            somaxconn: self.somaxconn,
            sysctls: self.sysctls.clone(),
            listener_count: listeners.len() as i32,
            overflows_total: listeners.iter().map(|l| l.overflows_total).sum(),
            overflows_recent: listeners.iter().map(|l| l.overflows_recent).sum(),
            diagnosis: self.diagnosis(),
            listeners,
            window_seconds: snapshot.window_seconds,
            source: snapshot.tier.as_str().to_string(),
            observed_at: snapshot.observed_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ListenerId {
    netns: NetnsId,
    inode: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    queue: i64,
    near_full: bool,
    total: u64,
}

#[derive(Debug)]
struct History {
    first_seen: Instant,
    samples: VecDeque<Sample>,
}

struct RawNetns {
    r: NetnsRef,
    cookie: u64,
    somaxconn: Option<i64>,
    /// Read this scan (`Some`), or `None` when the cached values are still fresh.
    sysctls: Option<std::collections::BTreeMap<String, String>>,
    counters: Option<ListenCounters>,
    listeners: Vec<DiagListener>,
    /// Handles opened inside the netns during a full sample (to be kept for re-reads).
    handles: Option<NetnsHandles>,
    /// A re-read's owners, from the last full sample (`None`: a full sample, look them up).
    ownership: Option<std::sync::Arc<Ownership>>,
}

/// Files of one netns opened from inside it; they keep answering for that netns from any
/// thread, so a re-read needs no setns. (They also keep the netns alive, so its inode is not
/// reused while they are held; the scanner drops them once the netns is no longer enumerated.)
#[derive(Debug)]
struct NetnsHandles {
    diag: DiagSocket,
    netstat: std::fs::File,
    somaxconn: std::fs::File,
}

impl NetnsHandles {
    /// Opens the calling thread's netns's handles.
    fn open() -> std::io::Result<NetnsHandles> {
        Ok(NetnsHandles {
            diag: DiagSocket::open().map_err(std::io::Error::other)?,
            netstat: std::fs::File::open("/proc/thread-self/net/netstat")?,
            somaxconn: std::fs::File::open("/proc/sys/net/core/somaxconn")?,
        })
    }

    fn read(f: &std::fs::File) -> std::io::Result<String> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::with_capacity(8192);
        let mut buf = [0u8; 8192];
        loop {
            let n = f.read_at(&mut buf, out.len() as u64)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).map_err(std::io::Error::other)
    }

    fn somaxconn(&self) -> Option<i64> {
        Self::read(&self.somaxconn).ok()?.trim().parse().ok()
    }

    fn counters(&self) -> Option<ListenCounters> {
        Self::read(&self.netstat)
            .ok()
            .map(|t| procfs::listen_counters_from(&t))
    }
}

/// Who owns a netns and its listeners (what a full sample looks up in procfs).
#[derive(Debug, Clone, Default)]
struct Ownership {
    /// Socket inode → lowest pid holding it.
    owners: HashMap<u64, u32>,
    pod: Option<PodCgroup>,
    process: Option<ProcessRef>,
}

/// A netns's handles and what its last full sample found (eBPF tiers).
#[derive(Debug)]
struct Cached {
    cookie: u64,
    handles: NetnsHandles,
    listeners: Vec<DiagListener>,
    ownership: std::sync::Arc<Ownership>,
}

impl Cached {
    /// A re-read of `r` through the handles; `None` when a full sample is needed instead (a
    /// known listener is gone, or the netns does not answer).
    fn reread(&self, r: &NetnsRef) -> Option<RawNetns> {
        let now = self.handles.diag.lookup(&self.listeners).ok()?;
        let listeners: Vec<DiagListener> = now.into_iter().collect::<Option<_>>()?;
        Some(RawNetns {
            r: r.clone(),
            cookie: self.cookie,
            somaxconn: Some(self.handles.somaxconn()?),
            sysctls: None,
            counters: Some(self.handles.counters()?),
            listeners,
            handles: None,
            ownership: Some(std::sync::Arc::clone(&self.ownership)),
        })
    }
}

/// `CLOCK_MONOTONIC` in ns (the clock of `bpf_ktime_get_ns`, so of `ListenInfo::ts_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Map keys of listeners that have closed: those of a fully sampled netns (`swept`: cookie →
/// the listeners its dump found) that the dump did not find, and, when `live` is given (a
/// sample of every netns), those of namespaces that no longer exist — unless `listen()`
/// recorded them after `since_ns` (the sample may have missed a listener that new). Pure.
fn closed_keys(
    keys: impl Iterator<Item = ListenerKey>,
    listen_ts: &dyn Fn(&ListenerKey) -> Option<u64>,
    swept: &HashMap<u64, HashSet<ListenerKey>>,
    live: Option<&HashSet<u64>>,
    since_ns: u64,
) -> Vec<ListenerKey> {
    let mut out: Vec<ListenerKey> = keys
        .filter(|k| {
            let gone = match swept.get(&k.netns_cookie) {
                Some(found) => !found.contains(k),
                None => live.is_some_and(|l| !l.contains(&k.netns_cookie)),
            };
            gone && listen_ts(k).is_none_or(|t| t < since_ns)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Scans every netns on the host; keeps per-listener history between scans.
///
/// Overflow accounting: see [`ListenerObservation::overflows_total`]. `overflows_recent` is the growth over the window; a listener seen for the
/// first time reports everything so far as recent (the agent cannot date older overflows, and a
/// one-shot scan must still flag a listener that overflowed).
pub struct Scanner {
    probe: Option<Probe>,
    fallback_reason: Option<String>,
    window: Duration,
    history: HashMap<ListenerId, History>,
    host_netns_inode: u64,
    /// Per-netns sysctl values and when they were read: pod sysctls are fixed when the sandbox
    /// is created, so they are re-read only every [`SYSCTL_REFRESH`] (somaxconn every scan).
    sysctl_cache: HashMap<(u64, u64), (Instant, std::collections::BTreeMap<String, String>)>,
    /// eBPF tiers: handles and last full sample per netns inode (the handles pin the netns,
    /// so the inode names the same netns while cached).
    cache: HashMap<u64, Cached>,
    /// Namespaces a `listen()` event named since their last full sample.
    changed: HashSet<NetnsId>,
    /// When the last full resync ran.
    last_resync: Option<Instant>,
    resync: Duration,
    /// The probe's lost-event count at the last scan (growth forces a resync).
    events_lost: u64,
    last_sample: SampleKinds,
}

/// Most namespaces whose handles a scanner keeps (3 file descriptors each, twice that while a
/// resync reopens them, against the default soft limit of 1 024 descriptors; a node runs at
/// most 110 pods by default); namespaces beyond it are sampled in full every scan.
pub const MAX_CACHED: usize = 128;

/// How often the per-netns sysctls other than somaxconn are re-read.
pub const SYSCTL_REFRESH: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("tier", &self.tier())
            .field("fallback_reason", &self.fallback_reason)
            .field("listeners_tracked", &self.history.len())
            .finish()
    }
}

impl Scanner {
    /// Creates a scanner; with [`EbpfMode::Auto`] it tries [`Probe::load`] and falls back to
    /// sock_diag (logging why) when that fails.
    pub fn new(cfg: ScannerConfig) -> Scanner {
        let (probe, reason) = match cfg.ebpf {
            EbpfMode::Off => (
                None,
                Some("eBPF disabled (--no-ebpf / KUBETUNE_NO_EBPF)".to_string()),
            ),
            EbpfMode::Auto | EbpfMode::NoSyscallTracepoints => match Probe::load_selected(&|hook| {
                cfg.ebpf == EbpfMode::Auto || crate::probe::without_syscall_tracepoints(hook)
            }) {
                Ok(p) => (Some(p), None),
                Err(e) => {
                    warn!(error = %e, "eBPF unavailable; fallback mode (sock_diag + procfs)");
                    (None, Some(e.to_string()))
                }
            },
        };
        let mut sc = Self::with_probe(probe, reason, cfg.window);
        sc.resync = cfg.resync;
        sc
    }

    /// Creates a scanner around an already loaded probe (or none, with the reason).
    pub fn with_probe(
        probe: Option<Probe>,
        fallback_reason: Option<String>,
        window: Duration,
    ) -> Scanner {
        let host_netns_inode = std::fs::metadata("/proc/1/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        Scanner {
            probe,
            fallback_reason,
            window,
            history: HashMap::new(),
            host_netns_inode,
            sysctl_cache: HashMap::new(),
            cache: HashMap::new(),
            changed: HashSet::new(),
            last_resync: None,
            resync: DEFAULT_RESYNC,
            events_lost: 0,
            last_sample: SampleKinds::default(),
        }
    }

    /// How the last scan (or re-sample) read its namespaces.
    pub fn last_sample(&self) -> SampleKinds {
        self.last_sample
    }

    /// Notes namespaces where a listener appeared (from `listen()` events read elsewhere): the
    /// next scan samples them in full.
    pub fn mark_changed(&mut self, ids: &[NetnsId]) {
        self.changed.extend(ids.iter().copied());
    }

    /// Active tier.
    pub fn tier(&self) -> Tier {
        self.probe
            .as_ref()
            .map(Probe::tier)
            .unwrap_or(Tier::SockDiag)
    }

    /// The loaded probe, if any.
    pub fn probe(&self) -> Option<&Probe> {
        self.probe.as_ref()
    }

    /// The loaded probe, mutable (to drain its events).
    pub fn probe_mut(&mut self) -> Option<&mut Probe> {
        self.probe.as_mut()
    }

    /// Why the scanner is in fallback mode.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Scans every network namespace once: on the eBPF tiers a full sample of the namespaces
    /// that need one and a re-read of the others, on the sock-diag tier a full sample of all
    /// (see the module docs).
    pub fn scan(&mut self) -> Snapshot {
        let refs = netns::enumerate();
        // Re-reads between full samples rely on listen() events to announce new listeners.
        let incremental = self.listen_events();
        self.sample(refs, true, incremental)
    }

    /// True when the probe is loaded with a `listen()` hook ([`Probe::sees_listens`]).
    pub fn listen_events(&self) -> bool {
        self.probe.as_ref().is_some_and(Probe::sees_listens)
    }

    /// A full sample of the given namespaces only (as found by [`netns::enumerate`]);
    /// histories of listeners outside them are dropped.
    pub fn scan_refs(&mut self, refs: Vec<NetnsRef>) -> Snapshot {
        self.sample(refs, true, false)
    }

    /// Re-samples only the namespaces `ids` (e.g. after an overflow event) and returns a
    /// snapshot of those that still exist; every other history and cache entry is kept.
    pub fn rescan(&mut self, ids: &[NetnsId]) -> Snapshot {
        let refs: Vec<NetnsRef> = netns::enumerate()
            .into_iter()
            .filter(|r| ids.iter().any(|id| id.inode == r.inode))
            .collect();
        let mut snap = self.sample(refs, false, false);
        snap.netns.retain(|n| ids.contains(&n.id));
        snap
    }

    /// One sample of `refs`; `full` when `refs` is every netns (then state of the others is
    /// dropped); `incremental`: re-read the cached namespaces that need no full sample.
    fn sample(&mut self, refs: Vec<NetnsRef>, full: bool, incremental: bool) -> Snapshot {
        let now = Instant::now();
        let since_ns = monotonic_ns();
        self.drain_events();
        let lost = self.events_were_lost();
        let resync = incremental
            && (lost
                || self
                    .last_resync
                    .is_none_or(|t| now.duration_since(t) >= self.resync));
        if full {
            let enumerated: HashSet<u64> = refs.iter().map(|r| r.inode).collect();
            self.cache.retain(|ino, _| enumerated.contains(ino));
        }
        let mut reread = Vec::new();
        let mut to_sweep = Vec::new();
        for r in refs {
            let cached = self.cache.get(&r.inode).filter(|c| {
                incremental
                    && !resync
                    && !self.changed.contains(&NetnsId {
                        inode: r.inode,
                        cookie: c.cookie,
                    })
            });
            match cached.and_then(|c| c.reread(&r)) {
                Some(raw) => reread.push(raw),
                None => to_sweep.push(r),
            }
        }
        if resync {
            self.last_resync = Some(now);
        }
        let fresh: HashSet<(u64, u64)> = self
            .sysctl_cache
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) < SYSCTL_REFRESH)
            .map(|(k, _)| *k)
            .collect();
        // New handles for at most MAX_CACHED namespaces in all (3 descriptors each); the rest
        // are sampled in full every scan.
        let keep = if incremental {
            MAX_CACHED.saturating_sub(self.cache.len())
        } else {
            0
        };
        let (mut raws, vanished, errors) = sweep(to_sweep, fresh, keep);
        let swept: HashMap<u64, HashSet<ListenerKey>> = raws
            .iter()
            .map(|r| {
                let keys = r.listeners.iter().map(|d| map_key(r, d)).collect();
                (r.cookie, keys)
            })
            .collect();
        for r in &raws {
            self.changed.remove(&NetnsId {
                inode: r.r.inode,
                cookie: r.cookie,
            });
        }
        self.last_sample = SampleKinds {
            full: raws.len(),
            reread: reread.len(),
        };
        raws.extend(reread);
        let live: HashSet<(u64, u64)> = raws.iter().map(|r| (r.r.inode, r.cookie)).collect();
        if full {
            self.sysctl_cache.retain(|k, _| live.contains(k));
        }
        for raw in &mut raws {
            let key = (raw.r.inode, raw.cookie);
            if let Some(read) = raw.sysctls.take() {
                self.sysctl_cache.insert(key, (now, read));
            }
            raw.sysctls = self.sysctl_cache.get(&key).map(|(_, v)| v.clone());
        }
        let (bpf_listeners, bpf_overflows) = self.read_probe();
        let mut seen: HashSet<ListenerId> = HashSet::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            out.push(self.observe(raw, now, &bpf_listeners, &bpf_overflows, &mut seen));
        }
        out.sort_by_key(|n| n.id.inode);
        if full {
            self.history.retain(|k, _| seen.contains(k));
        }
        if let Some(p) = self.probe.as_mut() {
            let live_cookies: HashSet<u64> = live.iter().map(|(_, c)| *c).collect();
            let ts = |k: &ListenerKey| bpf_listeners.get(k).map(|i| i.ts_ns);
            let gone = closed_keys(
                bpf_listeners.keys().chain(bpf_overflows.keys()).copied(),
                &ts,
                &swept,
                // Dead namespaces only when every netns was enumerated and inspected.
                (incremental && vanished == 0 && errors.is_empty()).then_some(&live_cookies),
                since_ns,
            );
            let n = p.forget(&gone);
            if !gone.is_empty() {
                debug!(keys = gone.len(), listeners = n, "forgot closed listeners");
            }
        }
        crate::probe::release_heap();
        Snapshot {
            tier: self.tier(),
            listen_events: self.listen_events(),
            fallback_reason: self.fallback_reason.clone(),
            observed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            window_seconds: self.window.as_secs() as i64,
            netns: out,
            vanished,
            errors,
        }
    }

    fn read_probe(
        &mut self,
    ) -> (
        HashMap<ListenerKey, ListenInfo>,
        HashMap<ListenerKey, OverflowCounts>,
    ) {
        let Some(p) = self.probe.as_mut() else {
            return Default::default();
        };
        let l = p.listeners().unwrap_or_else(|e| {
            warn!(error = %e, "reading LISTENERS");
            HashMap::new()
        });
        let o = p.overflows().unwrap_or_else(|e| {
            warn!(error = %e, "reading OVERFLOWS");
            HashMap::new()
        });
        (l, o)
    }

    /// Takes the probe's pending events (when the ring buffer was not handed elsewhere) and
    /// notes the namespaces `listen()` named.
    fn drain_events(&mut self) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        for ev in p.drain_events() {
            if ev.kind != EVENT_LISTEN {
                continue;
            }
            debug!(
                pid = ev.info.pid,
                comm = %String::from_utf8_lossy(&ev.info.comm).trim_end_matches('\0'),
                port = ev.info.key.port,
                netns = ev.info.key.netns_inum,
                requested = ev.info.requested_backlog,
                effective = ev.info.effective_backlog,
                somaxconn = ev.info.somaxconn,
                "listen()"
            );
            self.changed.insert(NetnsId {
                inode: u64::from(ev.info.key.netns_inum),
                cookie: ev.info.key.netns_cookie,
            });
        }
    }

    /// True when the probe lost ring-buffer events since the last call (then a listen event
    /// may be missing: resync).
    fn events_were_lost(&mut self) -> bool {
        let lost = self
            .probe
            .as_ref()
            .and_then(|p| p.stats().ok())
            .map_or(0, |s| s.events_lost);
        let grew = lost > self.events_lost;
        self.events_lost = lost;
        grew
    }

    /// One netns's observation: who owns it, then each listener's (see [`Self::observe_listener`]).
    fn observe(
        &mut self,
        mut raw: RawNetns,
        now: Instant,
        bpf_listeners: &HashMap<ListenerKey, ListenInfo>,
        bpf_overflows: &HashMap<ListenerKey, OverflowCounts>,
        seen: &mut HashSet<ListenerId>,
    ) -> NetnsObservation {
        let id = NetnsId {
            inode: raw.r.inode,
            cookie: raw.cookie,
        };
        let host = raw.r.inode == self.host_netns_inode;
        let own = match raw.ownership.take() {
            Some(o) => o,
            None => std::sync::Arc::new(ownership(&raw, host)),
        };
        let owners = &own.owners;
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        for d in &raw.listeners {
            let key = map_key(&raw, d);
            let lid = ListenerId {
                netns: id,
                inode: d.inode,
            };
            seen.insert(lid);
            let bpf = (
                listen_record(bpf_listeners.get(&key), d),
                bpf_overflows.get(&key).copied(),
            );
            listeners.push(self.observe_listener(lid, d, &raw, now, bpf, owners.get(&d.inode)));
        }
        listeners.sort_by_key(|l| (l.port, l.address));
        let obs = NetnsObservation {
            id,
            name: raw.r.name.clone(),
            host,
            pod: own.pod.clone(),
            process: own.process.clone(),
            process_count: raw.r.pids.len(),
            somaxconn: raw.somaxconn,
            sysctls: raw.sysctls.take().unwrap_or_default(),
            counters: raw.counters,
            listeners,
        };
        let ino = raw.r.inode;
        match raw.handles {
            Some(handles) => {
                self.cache.insert(
                    ino,
                    Cached {
                        cookie: raw.cookie,
                        handles,
                        listeners: raw.listeners,
                        ownership: own,
                    },
                );
            }
            None => {
                if let Some(c) = self.cache.get_mut(&ino).filter(|c| c.cookie == raw.cookie) {
                    c.listeners = raw.listeners;
                    c.ownership = own;
                }
            }
        }
        obs
    }

    /// One listener: overflow accounting ([`overflows_total`]), the sample into its history
    /// ([`History::record`]), the diagnosis, and the owning process and pod.
    fn observe_listener(
        &mut self,
        lid: ListenerId,
        d: &DiagListener,
        raw: &RawNetns,
        now: Instant,
        (info, counts): (Option<&ListenInfo>, Option<OverflowCounts>),
        owner: Option<&u32>,
    ) -> ListenerObservation {
        let counts = counts.unwrap_or_default();
        let drops = d.drops.map(u64::from);
        let total = overflows_total(drops, raw.counters, counts);
        let effective = i64::from(d.max_backlog);
        let queue = i64::from(d.queue);
        let w = self
            .history
            .entry(lid)
            .or_insert_with(|| History::new(now))
            .record(
                Sample {
                    at: now,
                    queue,
                    near_full: near_full(queue, effective),
                    total,
                },
                self.window,
            );
        let requested = info.map(|i| i64::from(i.requested_backlog));
        let (diagnosis, limited_by) = diagnose(&DiagnosisInput {
            requested_backlog: requested,
            effective_backlog: effective,
            somaxconn: raw.somaxconn,
            queue_max: w.queue_max,
            overflows_recent: w.recent,
            samples: w.samples,
            near_full_samples: w.near_full_samples,
        });
        let (process, pod) = listener_owner(owner.copied(), info);
        ListenerObservation {
            address: d.addr,
            port: d.port,
            inode: d.inode,
            requested_backlog: requested,
            effective_backlog: effective,
            somaxconn_at_listen: info.map(|i| i64::from(i.somaxconn)),
            queue_now: queue,
            queue_max: w.queue_max,
            overflows_total: total,
            overflows_recent: w.recent,
            overflows_per_minute: w.per_minute,
            ebpf_ack_phase_overflows: self.probe.is_some().then_some(counts.ack_phase),
            ebpf_syn_phase_overflows: (self.tier() == Tier::EbpfFentry).then_some(counts.syn_phase),
            sk_drops: drops,
            limited_by,
            diagnosis,
            process,
            pod,
            samples: w.samples,
        }
    }
}

/// The probe's `listen()` record of `d`, when it describes `d`: the record is made as the
/// call starts (`sys_enter_listen`), so a call that then failed on a socket bound to the same
/// address and port (two `SO_REUSEADDR` sockets bound before either listened) may have
/// overwritten the listener's own (and cleared that address's in-kernel overflow counters; the
/// listener's total then rests on its `sk_drops`, see [`overflows_total`]). The backlog it
/// computed must be the one the kernel gave `d`.
fn listen_record<'a>(info: Option<&'a ListenInfo>, d: &DiagListener) -> Option<&'a ListenInfo> {
    info.filter(|i| i.effective_backlog == d.max_backlog)
}

/// The eBPF map key of a listener that sock_diag reported in `raw`'s netns.
fn map_key(raw: &RawNetns, d: &DiagListener) -> ListenerKey {
    ListenerKey {
        netns_cookie: raw.cookie,
        netns_inum: raw.r.inode as u32,
        family: d.family,
        port: d.port,
        addr: d.addr_raw,
    }
}

/// Who owns `raw`'s netns and listeners, from procfs (`/proc/*/fd`, cgroups, comm).
fn ownership(raw: &RawNetns, host: bool) -> Ownership {
    let wanted: HashSet<u64> = raw.listeners.iter().map(|l| l.inode).collect();
    let owners = procfs::socket_owners(&raw.r.pids, &wanted);
    let pod = if host {
        None
    } else {
        raw.r
            .pids
            .iter()
            .take(64)
            .find_map(|p| procfs::cgroup(*p).and_then(|c| parse_pod_cgroup(&c)))
    };
    let process = raw.r.pids.first().map(|p| ProcessRef {
        pid: *p,
        comm: procfs::comm(*p).unwrap_or_default(),
    });
    Ownership {
        owners,
        pod,
        process,
    }
}

/// A listener's overflows (see [`ListenerObservation::overflows_total`]): the larger of the eBPF
/// counters and `sk_drops` capped by the netns's `ListenOverflows`.
fn overflows_total(
    sk_drops: Option<u64>,
    counters: Option<ListenCounters>,
    ebpf: OverflowCounts,
) -> u64 {
    let ebpf_total = ebpf.ack_phase + ebpf.syn_phase;
    // sk_drops counts every listen drop (also backlog drops, TCP_DEFER_ACCEPT drops and some
    // ACK-phase overflows twice), so cap it by the netns's exact ListenOverflows.
    let syn_and_ack = match (sk_drops, counters) {
        (Some(d), Some(c)) => d.min(c.listen_overflows),
        (Some(d), None) => d,
        (None, Some(_)) | (None, None) => 0,
    };
    syn_and_ack.max(ebpf_total)
}

/// What a listener's window says after its newest sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WindowStats {
    /// Overflows in the window (everything so far while the listener is new to the window).
    recent: u64,
    /// Overflow rate from the oldest kept sample, when there are two samples or more.
    per_minute: Option<f64>,
    /// Highest queue length in the window.
    queue_max: i64,
    /// Samples in the window.
    samples: u32,
    /// Of those, samples with the queue near full.
    near_full_samples: u32,
}

impl History {
    fn new(first_seen: Instant) -> Self {
        History {
            first_seen,
            samples: VecDeque::new(),
        }
    }

    /// Adds `sample` (taken now, at `sample.at`), keeps the samples inside `window` plus the
    /// newest one before it (the baseline), and sums up the window.
    fn record(&mut self, sample: Sample, window: Duration) -> WindowStats {
        let (now, total, queue) = (sample.at, sample.total, sample.queue);
        self.samples.push_back(sample);
        let cutoff = now.checked_sub(window);
        while self.samples.len() > 1 && cutoff.is_some_and(|c| self.samples[1].at <= c) {
            self.samples.pop_front();
        }
        let in_window: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| cutoff.is_none_or(|c| s.at > c))
            .collect();
        let first_in_window = cutoff.is_none_or(|c| self.first_seen > c);
        let baseline = if first_in_window {
            0
        } else {
            self.samples.front().map(|s| s.total).unwrap_or(0)
        };
        let per_minute = self.samples.front().and_then(|o| {
            let dt = now.duration_since(o.at).as_secs_f64();
            (self.samples.len() >= 2 && dt > 0.0)
                .then(|| (total.saturating_sub(o.total)) as f64 * 60.0 / dt)
        });
        WindowStats {
            recent: total.saturating_sub(baseline),
            per_minute,
            queue_max: in_window.iter().map(|s| s.queue).max().unwrap_or(queue),
            samples: in_window.len() as u32,
            near_full_samples: in_window.iter().filter(|s| s.near_full).count() as u32,
        }
    }
}

/// The process owning a listener (from `/proc/*/fd`, else the pid that called `listen()`) and
/// its pod, from its cgroup.
fn listener_owner(
    owner_pid: Option<u32>,
    info: Option<&ListenInfo>,
) -> (Option<ProcessRef>, Option<PodCgroup>) {
    let owner_pid = owner_pid.or(info.map(|i| i.pid));
    let process = owner_pid.map(|pid| ProcessRef {
        pid,
        comm: procfs::comm(pid).unwrap_or_else(|| {
            info.map(|i| {
                String::from_utf8_lossy(&i.comm)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default()
        }),
    });
    let pod = owner_pid
        .and_then(procfs::cgroup)
        .and_then(|c| parse_pod_cgroup(&c));
    (process, pod)
}

/// Visits every netns on one dedicated thread (setns per netns; the thread dies afterwards so
/// no other thread ever changes namespace). For the first `keep_handles` namespaces, opens
/// their [`NetnsHandles`] (and dumps through them) for later re-reads.
fn sweep(
    refs: Vec<NetnsRef>,
    sysctls_fresh: HashSet<(u64, u64)>,
    mut keep_handles: usize,
) -> (Vec<RawNetns>, usize, Vec<String>) {
    if refs.is_empty() {
        return (Vec::new(), 0, Vec::new());
    }
    let worker = std::thread::Builder::new()
        .name("kt-netns-sweep".into())
        .spawn(move || {
            let mut raws = Vec::with_capacity(refs.len());
            let mut vanished = 0usize;
            let mut errors = Vec::new();
            for r in refs {
                let fd = match netns::open_netns(&r.path, Some(r.inode)) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let gone = match &e {
                            netns::NetnsError::Open { source, .. } => matches!(
                                source.raw_os_error(),
                                Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EINVAL)
                            ),
                            netns::NetnsError::Changed { .. } => true,
                            _ => false,
                        };
                        if gone {
                            // The netns (or the process we reach it through) is gone, or its
                            // inode was reused: skip it, it is re-enumerated next scan.
                            debug!(netns = r.inode, error = %e, "netns vanished during scan");
                            vanished += 1;
                        } else {
                            errors.push(e.to_string());
                        }
                        continue;
                    }
                };
                // Already there (e.g. our own netns): no setns needed, which also lets an
                // unprivileged `scan` see at least its own namespace.
                let here = std::fs::metadata("/proc/thread-self/ns/net")
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .ok();
                if here != Some(r.inode) {
                    if let Err(e) = netns::setns_current_thread(&fd, &r.path) {
                        errors.push(e.to_string());
                        continue;
                    }
                }
                let cookie = match sockdiag::current_netns_cookie() {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(format!("netns {}: {e}", r.inode));
                        continue;
                    }
                };
                let handles = if keep_handles > 0 {
                    keep_handles -= 1;
                    NetnsHandles::open()
                        .map_err(|e| debug!(netns = r.inode, error = %e, "netns handles"))
                        .ok()
                } else {
                    None
                };
                let dumped = match &handles {
                    Some(h) => h.diag.dump(),
                    None => sockdiag::dump_tcp_listeners(),
                };
                let listeners = match dumped {
                    Ok(l) => l,
                    Err(e) => {
                        errors.push(format!("netns {}: {e}", r.inode));
                        continue;
                    }
                };
                raws.push(RawNetns {
                    somaxconn: procfs::thread_somaxconn().ok(),
                    sysctls: (!sysctls_fresh.contains(&(r.inode, cookie)))
                        .then(procfs::thread_netns_sysctls),
                    counters: procfs::thread_listen_counters().ok(),
                    cookie,
                    listeners,
                    r,
                    handles,
                    ownership: None,
                });
            }
            (raws, vanished, errors)
        });
    match worker.map(|h| h.join()) {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => (Vec::new(), 0, vec!["netns sweep thread panicked".into()]),
        Err(e) => {
            info!(error = %e, "cannot spawn sweep thread");
            (Vec::new(), 0, vec![format!("spawn sweep thread: {e}")])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_total_is_ebpf_or_sk_drops_capped_by_the_netns_counter() {
        let c = |n| {
            Some(ListenCounters {
                listen_overflows: n,
                listen_drops: n,
            })
        };
        let ebpf = |ack, syn| OverflowCounts {
            ack_phase: ack,
            syn_phase: syn,
        };
        // sk_drops over-counts: capped by ListenOverflows.
        assert_eq!(overflows_total(Some(50), c(42), ebpf(0, 0)), 42);
        assert_eq!(overflows_total(Some(30), c(42), ebpf(0, 0)), 30);
        // No netns counter: sk_drops as is; no sk_drops: nothing from sock_diag.
        assert_eq!(overflows_total(Some(7), None, ebpf(0, 0)), 7);
        assert_eq!(overflows_total(None, c(42), ebpf(0, 0)), 0);
        assert_eq!(overflows_total(None, None, ebpf(0, 0)), 0);
        // The eBPF phases add up and win when larger.
        assert_eq!(overflows_total(Some(50), c(42), ebpf(40, 5)), 45);
        assert_eq!(overflows_total(None, None, ebpf(3, 0)), 3);
    }

    #[test]
    fn closed_keys_are_the_swept_ones_missing_and_those_of_dead_namespaces_not_listened_since() {
        let key = |cookie: u64, port: u16| ListenerKey {
            netns_cookie: cookie,
            netns_inum: cookie as u32,
            family: 2,
            port,
            addr: [0; 16],
        };
        let (open, closed, fresh) = (key(1, 80), key(1, 81), key(1, 82));
        let (other, dead) = (key(2, 80), key(3, 80));
        let swept: HashMap<u64, HashSet<ListenerKey>> = [(1, HashSet::from([open]))].into();
        let ts = |k: &ListenerKey| (*k == fresh).then_some(200);
        let all = [open, closed, fresh, other, dead, closed];
        // Netns 1 was dumped: 81 closed; 82 was listen()ed after the sample began (kept).
        // Netns 2 was only re-read (its keys are kept); without `live`, 3 is kept too.
        assert_eq!(
            closed_keys(all.into_iter(), &ts, &swept, None, 100),
            vec![closed]
        );
        let live = HashSet::from([1, 2]);
        assert_eq!(
            closed_keys(all.into_iter(), &ts, &swept, Some(&live), 100),
            vec![closed, dead]
        );
    }

    fn sample(at: Instant, queue: i64, near_full: bool, total: u64) -> Sample {
        Sample {
            at,
            queue,
            near_full,
            total,
        }
    }

    #[test]
    fn window_counts_everything_as_recent_on_first_sight_then_growth_over_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let window = Duration::from_secs(60);
        let mut h = History::new(at(0));
        // First sight: everything so far is recent; one sample, no rate.
        let w = h.record(sample(at(0), 129, true, 100), window);
        assert_eq!(
            w,
            WindowStats {
                recent: 100,
                per_minute: None,
                queue_max: 129,
                samples: 1,
                near_full_samples: 1
            }
        );
        let w = h.record(sample(at(30), 10, false, 130), window);
        assert_eq!(
            (w.recent, w.samples, w.queue_max, w.near_full_samples),
            (130, 2, 129, 1)
        );
        assert_eq!(w.per_minute, Some(60.0));
        // 90 s, window (30, 90]: the 30 s sample is the newest at or before the cutoff, the
        // baseline; the 0 s one goes. Recent = growth since the baseline.
        let w = h.record(sample(at(90), 5, false, 160), window);
        assert_eq!(h.samples.len(), 2);
        assert_eq!(h.samples.front().unwrap().at, at(30));
        assert_eq!(
            (w.recent, w.samples, w.queue_max, w.near_full_samples),
            (30, 1, 5, 0)
        );
        assert_eq!(w.per_minute, Some(30.0));
        // 100 s, window (40, 100]: the baseline stays the 30 s sample.
        let w = h.record(sample(at(100), 7, true, 160), window);
        assert_eq!(h.samples.len(), 3);
        assert_eq!(h.samples.front().unwrap().at, at(30));
        assert_eq!(
            (w.recent, w.samples, w.queue_max, w.near_full_samples),
            (30, 2, 7, 1)
        );
        assert_eq!(w.per_minute, Some(30.0 * 60.0 / 70.0));
    }

    #[test]
    fn counters_that_go_backwards_count_nothing() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut h = History::new(t0);
        h.record(sample(t0, 0, false, 50), window);
        h.record(sample(t0 + Duration::from_secs(20), 0, false, 60), window);
        let w = h.record(sample(t0 + Duration::from_secs(25), 0, false, 40), window);
        assert_eq!(w.recent, 0);
        assert_eq!(w.per_minute, Some(0.0));
    }
}
