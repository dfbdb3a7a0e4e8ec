//! The scanner: one sweep of every network namespace (sock_diag + procfs inside the netns on a
//! dedicated thread), joined with the eBPF maps when the probe is loaded, attributed to
//! pods/processes, sampled over a window, and diagnosed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kubetune_crds::report::{Diagnosis, LimitedBy, ListenerReportSpec, ListenerStatus};
use kubetune_probe_common::{ListenInfo, ListenerKey, OverflowCounts, EVENT_CLOSE, EVENT_LISTEN};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::attribution::{parse_pod_cgroup, PodCgroup};
use crate::diagnose::{diagnose, near_full, DiagnosisInput};
use crate::netns::{self, NetnsId, NetnsRef};
use crate::probe::{Probe, Tier};
use crate::procfs::{self, ListenCounters};
use crate::sockdiag::{self, DiagListener};

/// Whether to use eBPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EbpfMode {
    /// Load the probe when possible, fall back to sock_diag otherwise.
    #[default]
    Auto,
    /// Never load eBPF (fallback mode).
    Off,
}

/// Scanner settings.
#[derive(Debug, Clone, Copy)]
pub struct ScannerConfig {
    /// Window for `queue_max`, `overflows_recent` and the "sustained" test.
    pub window: Duration,
    /// eBPF use.
    pub ebpf: EbpfMode,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            window: Duration::from_secs(60),
            ebpf: EbpfMode::Auto,
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
}

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
            EbpfMode::Auto => match Probe::load() {
                Ok(p) => (Some(p), None),
                Err(e) => {
                    warn!(error = %e, "eBPF unavailable; fallback mode (sock_diag + procfs)");
                    (None, Some(e.to_string()))
                }
            },
        };
        Self::with_probe(probe, reason, cfg.window)
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
        }
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

    /// Scans every network namespace once.
    pub fn scan(&mut self) -> Snapshot {
        let refs = netns::enumerate();
        self.scan_refs(refs)
    }

    /// Scans the given namespaces only (as found by [`netns::enumerate`]); histories of
    /// listeners outside them are dropped.
    pub fn scan_refs(&mut self, refs: Vec<NetnsRef>) -> Snapshot {
        self.sample(refs, true)
    }

    /// Re-samples only the namespaces `ids` (e.g. after an overflow event) and returns a
    /// snapshot of those that still exist; every other history and cache entry is kept.
    pub fn rescan(&mut self, ids: &[NetnsId]) -> Snapshot {
        let refs: Vec<NetnsRef> = netns::enumerate()
            .into_iter()
            .filter(|r| ids.iter().any(|id| id.inode == r.inode))
            .collect();
        let mut snap = self.sample(refs, false);
        snap.netns.retain(|n| ids.contains(&n.id));
        snap
    }

    /// One sample of `refs`; `full` when `refs` is every netns (then state of the others is dropped).
    fn sample(&mut self, refs: Vec<NetnsRef>, full: bool) -> Snapshot {
        let now = Instant::now();
        let fresh: HashSet<(u64, u64)> = self
            .sysctl_cache
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) < SYSCTL_REFRESH)
            .map(|(k, _)| *k)
            .collect();
        let (mut raws, vanished, errors) = sweep(refs, fresh);
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
        if full {
            self.history.retain(|k, _| seen.contains(k));
        }
        crate::probe::release_heap();
        Snapshot {
            tier: self.tier(),
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
        for ev in p.drain_events() {
            let comm = String::from_utf8_lossy(&ev.info.comm)
                .trim_end_matches('\0')
                .to_string();
            match ev.kind {
                EVENT_LISTEN => debug!(
                    pid = ev.info.pid,
                    comm,
                    port = ev.info.key.port,
                    netns = ev.info.key.netns_inum,
                    requested = ev.info.requested_backlog,
                    effective = ev.info.effective_backlog,
                    somaxconn = ev.info.somaxconn,
                    "listen()"
                ),
                EVENT_CLOSE => debug!(
                    port = ev.info.key.port,
                    netns = ev.info.key.netns_inum,
                    "listener closed"
                ),
                _ => {}
            }
        }
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

    /// One netns's observation: who owns it, then each listener's (see [`Self::observe_listener`]).
    fn observe(
        &mut self,
        raw: RawNetns,
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
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        for d in &raw.listeners {
            let key = ListenerKey {
                netns_cookie: raw.cookie,
                netns_inum: raw.r.inode as u32,
                family: d.family,
                port: d.port,
                addr: d.addr_raw,
            };
            let lid = ListenerId {
                netns: id,
                inode: d.inode,
            };
            seen.insert(lid);
            let bpf = (bpf_listeners.get(&key), bpf_overflows.get(&key).copied());
            listeners.push(self.observe_listener(lid, d, &raw, now, bpf, owners.get(&d.inode)));
        }
        listeners.sort_by_key(|l| (l.port, l.address));
        NetnsObservation {
            id,
            name: raw.r.name.clone(),
            host,
            pod,
            process,
            process_count: raw.r.pids.len(),
            somaxconn: raw.somaxconn,
            sysctls: raw.sysctls.clone().unwrap_or_default(),
            counters: raw.counters,
            listeners,
        }
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
/// no other thread ever changes namespace).
fn sweep(
    refs: Vec<NetnsRef>,
    sysctls_fresh: HashSet<(u64, u64)>,
) -> (Vec<RawNetns>, usize, Vec<String>) {
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
                let listeners = match sockdiag::dump_tcp_listeners() {
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
