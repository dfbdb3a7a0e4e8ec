//! Event-driven detection (cluster mode): the kernel's overflow events wake the agent, which
//! re-samples that pod's netns at once and writes its `ListenerReport`, bounded per pod by the
//! minimum write interval.
//!
//! * [`read_events`] waits on the probe's ring buffer (tokio `AsyncFd`) and turns each
//!   `EVENT_OVERFLOW` record (at most one per listener per 100 ms, rate-limited in the kernel)
//!   and each `EVENT_LISTEN` record into a [`Wake`]. A listen wake only tells the scanner that
//!   the netns changed ([`ScanRequest::Changed`]): its next periodic scan samples it in full
//!   instead of re-reading it (see [`crate::scanner`]).
//! * [`Coalescer`] (pure) decides per netns: re-sample now when the pod's last write is at least
//!   `min_write_interval` old, otherwise (and always after an immediate re-sample) once more when
//!   the interval has passed, so a burst yields one write at once and one with its final numbers.
//! * [`scan_loop`] owns the [`Scanner`] on its thread: a full scan every `interval`, and the
//!   re-samples the report loop asks for in between.
//!
//! Only what the kernel reports wakes the agent: final-ACK-phase overflows (`kfree_skb` with
//! reason `TCP_LISTEN_OVERFLOW`) on every eBPF tier, SYN-phase overflows on the fentry tier. A
//! SYN dropped because the accept queue is full has no tracepoint, so on the tracepoint tier
//! those are found by the periodic scan (`sk_drops`), as are all overflows in the sock-diag
//! fallback tier, which only polls.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use std::sync::{Arc, RwLock};

use aya::maps::{MapData, RingBuf};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::Client;
use kubetune_probe_common::{EVENT_LISTEN, EVENT_OVERFLOW};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::cluster::{write_reports, LastWrite};
use crate::metrics::{self, MetricsState};
use crate::netns::NetnsId;
use crate::scanner::{Scanner, Snapshot};

/// What a ring-buffer event reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeKind {
    /// An accept-queue overflow.
    Overflow,
    /// A successful `listen()`.
    Listen,
}

/// An overflow or listen event: the listener's netns, as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Netns identity (inode + cookie).
    pub netns: NetnsId,
    /// Listener port (for logs).
    pub port: u16,
    /// What happened.
    pub kind: WakeKind,
}

/// What the report loop asks of the scan thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanRequest {
    /// Re-sample these namespaces now.
    Rescan(Vec<NetnsId>),
    /// A listener appeared in these namespaces: sample them in full at the next scan.
    Changed(Vec<NetnsId>),
}

/// One scan's result and cost.
#[derive(Debug)]
pub struct ScanResult {
    /// What was seen (only the re-sampled namespaces when `partial`).
    pub snapshot: Snapshot,
    /// Wall time of the scan (seconds).
    pub wall: f64,
    /// CPU time of the scan thread for it (seconds).
    pub cpu: f64,
    /// The namespaces asked for, when this is a re-sample rather than a full scan.
    pub partial: Option<Vec<NetnsId>>,
}

/// Reads the ring buffer until `tx` closes; forwards overflow and listen events as [`Wake`]s.
pub async fn read_events(rb: RingBuf<MapData>, tx: mpsc::UnboundedSender<Wake>) {
    // SAFETY: the ring buffer owns its map fd, which stays open (and the same) for as long as
    // the `RingBuf` lives, i.e. until the `AsyncFd` that owns it is dropped.
    let mut fd = match unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "overflow events: cannot poll the ring buffer; polling only");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "overflow events: ring buffer poll failed; polling only");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            let Some(ev) = crate::probe::decode_event(&item) else {
                continue;
            };
            let kind = match ev.kind {
                EVENT_OVERFLOW => WakeKind::Overflow,
                EVENT_LISTEN => WakeKind::Listen,
                _ => continue,
            };
            let wake = Wake {
                netns: NetnsId {
                    inode: u64::from(ev.info.key.netns_inum),
                    cookie: ev.info.key.netns_cookie,
                },
                port: ev.info.key.port,
                kind,
            };
            if tx.send(wake).is_err() {
                return;
            }
        }
        guard.clear_ready();
    }
}

/// Runs the scanner on the current thread: a full scan, then every `interval` another one;
/// in between, the re-samples asked for on `requests` (several queued requests are merged;
/// [`ScanRequest::Changed`] only marks namespaces for the next scan). Returns when either
/// channel closes.
pub fn scan_loop(
    mut scanner: Scanner,
    interval: Duration,
    requests: std_mpsc::Receiver<ScanRequest>,
    tx: mpsc::Sender<ScanResult>,
) {
    let mut next_full = Instant::now();
    loop {
        let now = Instant::now();
        let partial = if now >= next_full {
            None
        } else {
            match requests.recv_timeout(next_full - now) {
                Ok(ScanRequest::Changed(ids)) => {
                    scanner.mark_changed(&ids);
                    continue;
                }
                Ok(ScanRequest::Rescan(mut ids)) => {
                    while let Ok(more) = requests.try_recv() {
                        match more {
                            ScanRequest::Rescan(more) => ids.extend(more),
                            ScanRequest::Changed(c) => scanner.mark_changed(&c),
                        }
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    Some(ids)
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let (t0, cpu0) = (Instant::now(), metrics::thread_cpu_seconds());
        let snapshot = match &partial {
            Some(ids) => scanner.rescan(ids),
            None => scanner.scan(),
        };
        if partial.is_none() {
            next_full = Instant::now() + interval;
        }
        let result = ScanResult {
            snapshot,
            wall: t0.elapsed().as_secs_f64(),
            cpu: metrics::thread_cpu_seconds() - cpu0,
            partial,
        };
        if tx.blocking_send(result).is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct NetnsState {
    /// A re-sample was asked for and its result not yet handled.
    inflight: bool,
    /// Another re-sample is due once the interval has passed.
    pending: bool,
    /// When the last re-sample was asked for.
    last_rescan: Option<Instant>,
}

/// Per-netns coalescing of overflow events into re-samples (pure; unit tested).
///
/// A netns is re-sampled at once on an event when neither its pod's last report write that
/// carried new overflows nor its last re-sample is less than `min_interval` old (a routine write
/// in between does not hold an overflow back; see [`crate::cluster::should_write`]); every event
/// also (re)arms one follow-up re-sample at `max(that write, last re-sample) + min_interval`,
/// which writes the burst's final numbers. So a pod gets at most one overflow-carrying write per
/// interval however long the flood.
#[derive(Debug)]
pub struct Coalescer {
    min_interval: Duration,
    netns: HashMap<NetnsId, NetnsState>,
    /// Netns → pod uid, from the latest full scan (`None`: seen, not a pod's).
    pods: HashMap<NetnsId, Option<String>>,
}

impl Coalescer {
    /// A coalescer for writes at most every `min_interval` per pod.
    pub fn new(min_interval: Duration) -> Coalescer {
        Coalescer {
            min_interval,
            netns: HashMap::new(),
            pods: HashMap::new(),
        }
    }

    /// Learns netns → pod from a full scan and forgets idle namespaces.
    pub fn observe_full(&mut self, snap: &Snapshot, now: Instant) {
        self.pods = snap
            .netns
            .iter()
            .map(|n| (n.id, n.pod.as_ref().map(|p| p.pod_uid.clone())))
            .collect();
        let min = self.min_interval;
        self.netns.retain(|_, s| {
            s.inflight || s.pending || s.last_rescan.is_some_and(|t| now.duration_since(t) < min)
        });
    }

    fn due(&self, id: &NetnsId, last_write: &dyn Fn(&str) -> Option<Instant>) -> Option<Instant> {
        let written = self
            .pods
            .get(id)
            .and_then(|p| p.as_deref())
            .and_then(last_write);
        let rescanned = self.netns.get(id).and_then(|s| s.last_rescan);
        written.max(rescanned).map(|t| t + self.min_interval)
    }

    /// An overflow event for `wake.netns`: returns the namespace to re-sample now, if any.
    /// `last_write` gives when a pod's report last carried new overflows.
    pub fn on_wake(
        &mut self,
        wake: Wake,
        now: Instant,
        last_write: &dyn Fn(&str) -> Option<Instant>,
    ) -> Option<NetnsId> {
        let id = wake.netns;
        if matches!(self.pods.get(&id), Some(None)) {
            return None; // not a pod's netns (host netns, hostNetwork): nothing to write
        }
        let due = self.due(&id, last_write);
        let st = self.netns.entry(id).or_default();
        st.pending = true;
        if st.inflight || due.is_some_and(|d| d > now) {
            return None;
        }
        st.inflight = true;
        st.last_rescan = Some(now);
        Some(id)
    }

    /// A re-sample of `ids` was handled (its reports written or not).
    pub fn rescanned(&mut self, ids: &[NetnsId]) {
        for id in ids {
            if let Some(st) = self.netns.get_mut(id) {
                st.inflight = false;
            }
        }
    }

    /// Follow-up re-samples due at `now`, and when the next one is due after that.
    pub fn due_now(
        &mut self,
        now: Instant,
        last_write: &dyn Fn(&str) -> Option<Instant>,
    ) -> (Vec<NetnsId>, Option<Instant>) {
        let mut ready = Vec::new();
        let mut next: Option<Instant> = None;
        let ids: Vec<NetnsId> = self
            .netns
            .iter()
            .filter(|(_, s)| s.pending && !s.inflight)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            match self.due(&id, last_write) {
                Some(d) if d > now => next = Some(next.map_or(d, |n| n.min(d))),
                _ => ready.push(id),
            }
        }
        for id in &ready {
            let st = self.netns.entry(*id).or_default();
            st.pending = false;
            st.inflight = true;
            st.last_rescan = Some(now);
        }
        ready.sort_unstable();
        (ready, next)
    }
}

/// Replaces the namespaces of `part` (a re-sample) in `full` (the latest full scan).
pub fn merge_partial(full: &mut Snapshot, part: Snapshot) {
    for ns in part.netns {
        match full.netns.iter_mut().find(|n| n.id == ns.id) {
            Some(slot) => *slot = ns,
            None => full.netns.push(ns),
        }
    }
    full.netns.sort_by_key(|n| n.id.inode);
    full.observed_at = part.observed_at;
}

/// What the report loop writes with.
pub struct ReportContext<'a> {
    /// Kubernetes client.
    pub client: &'a Client,
    /// This node.
    pub node_name: &'a str,
    /// This node's pods.
    pub pods: &'a reflector::Store<Pod>,
    /// What `/metrics` renders.
    pub state: &'a Arc<RwLock<MetricsState>>,
    /// Minimum time between two writes of one pod's report.
    pub min_write_interval: Duration,
}

/// The report loop: writes the reports of every scan result; turns overflow events (`wakes`,
/// `None` when polling only) into re-samples through the [`Coalescer`]. Returns when the scan
/// thread stops.
pub async fn report_loop(
    cx: ReportContext<'_>,
    mut results: mpsc::Receiver<ScanResult>,
    requests: std_mpsc::Sender<ScanRequest>,
    mut wakes: Option<mpsc::UnboundedReceiver<Wake>>,
) {
    let mut last: HashMap<String, LastWrite> = HashMap::new();
    let mut coalescer = Coalescer::new(cx.min_write_interval);
    let mut next_due: Option<Instant> = None;
    let mut counts = crate::metrics::Detection {
        events_enabled: wakes.is_some(),
        ..Default::default()
    };
    loop {
        if let Ok(mut st) = cx.state.write() {
            st.detection = counts;
        }
        let timer = async {
            match next_due {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let wake = async {
            match wakes.as_mut() {
                Some(w) => w.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = results.recv() => {
                let Some(r) = r else { return };
                handle_result(&cx, r, &mut last, &mut coalescer).await;
            }
            w = wake => match w {
                Some(w) if w.kind == WakeKind::Listen => {
                    let _ = requests.send(ScanRequest::Changed(vec![w.netns]));
                }
                Some(w) => {
                    counts.overflow_events += 1;
                    let lw = |uid: &str| last.get(uid).and_then(|w| w.overflow_at);
                    let now = coalescer.on_wake(w, Instant::now(), &lw);
                    debug!(netns = %w.netns, port = w.port, rescan = now.is_some(), "overflow event");
                    if let Some(id) = now {
                        counts.rescans += 1;
                        let _ = requests.send(ScanRequest::Rescan(vec![id]));
                    }
                }
                None => wakes = None,
            },
            _ = timer => {}
        }
        let lw = |uid: &str| last.get(uid).and_then(|w| w.overflow_at);
        let (ready, next) = coalescer.due_now(Instant::now(), &lw);
        if !ready.is_empty() {
            counts.rescans += ready.len() as u64;
            let _ = requests.send(ScanRequest::Rescan(ready));
        }
        next_due = next;
    }
}

async fn handle_result(
    cx: &ReportContext<'_>,
    r: ScanResult,
    last: &mut HashMap<String, LastWrite>,
    coalescer: &mut Coalescer,
) {
    let pods_now: Vec<Pod> = cx.pods.state().iter().map(|p| p.as_ref().clone()).collect();
    let names = write_reports(
        cx.client,
        cx.node_name,
        &r.snapshot,
        &pods_now,
        last,
        cx.min_write_interval,
    )
    .await;
    match &r.partial {
        Some(ids) => coalescer.rescanned(ids),
        None => coalescer.observe_full(&r.snapshot, Instant::now()),
    }
    if let Ok(mut st) = cx.state.write() {
        match (r.partial, st.snapshot.as_mut()) {
            (Some(_), Some(full)) => merge_partial(full, r.snapshot),
            _ => st.snapshot = Some(r.snapshot),
        }
        st.pods = names;
        st.scan_cost.record(r.wall, r.cpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NetnsId {
        NetnsId {
            inode: n,
            cookie: n + 1000,
        }
    }

    fn wake(n: u64) -> Wake {
        Wake {
            netns: id(n),
            port: 80,
            kind: WakeKind::Overflow,
        }
    }

    fn pod_snapshot(n: u64, uid: Option<&str>) -> Snapshot {
        let mut snap = Snapshot {
            tier: crate::probe::Tier::EbpfTracepoint,
            listen_events: true,
            fallback_reason: None,
            observed_at: "t".into(),
            window_seconds: 60,
            netns: vec![],
            vanished: 0,
            errors: vec![],
        };
        snap.netns.push(crate::scanner::NetnsObservation {
            id: id(n),
            name: None,
            host: uid.is_none(),
            pod: uid.map(|u| crate::attribution::PodCgroup {
                pod_uid: u.into(),
                qos: "besteffort".into(),
                container_id: None,
                runtime: None,
            }),
            process: None,
            process_count: 1,
            somaxconn: Some(4096),
            sysctls: Default::default(),
            counters: None,
            listeners: vec![],
        });
        snap
    }

    #[test]
    fn burst_writes_at_once_then_final_numbers_after_the_interval() {
        let t0 = Instant::now();
        let min = Duration::from_secs(10);
        let mut c = Coalescer::new(min);
        c.observe_full(&pod_snapshot(1, Some("u1")), t0);
        let never = |_: &str| None;
        assert_eq!(
            c.on_wake(wake(1), t0, &never),
            Some(id(1)),
            "first event: at once"
        );
        // The write happens; events keep coming (rate-limited to 10/s in the kernel).
        let written = move |_: &str| Some(t0 + Duration::from_millis(20));
        for i in 1..100u64 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(c.on_wake(wake(1), at, &written), None, "coalesced at {i}");
            if i == 1 {
                c.rescanned(&[id(1)]);
            }
        }
        let (ready, next) = c.due_now(t0 + Duration::from_secs(5), &written);
        assert!(ready.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_millis(10_020)));
        let (ready, _) = c.due_now(t0 + Duration::from_millis(10_020), &written);
        assert_eq!(ready, vec![id(1)], "follow-up with the final numbers");
        let (ready, next) = c.due_now(t0 + Duration::from_secs(11), &written);
        assert!(ready.is_empty() && next.is_none(), "one follow-up only");
    }

    #[test]
    fn a_recent_periodic_write_defers_the_event() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(10));
        c.observe_full(&pod_snapshot(1, Some("u1")), t0);
        let written = move |_: &str| Some(t0);
        let at = t0 + Duration::from_secs(3);
        assert_eq!(c.on_wake(wake(1), at, &written), None);
        let (ready, next) = c.due_now(at, &written);
        assert!(ready.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(10)));
        let (ready, _) = c.due_now(t0 + Duration::from_secs(10), &written);
        assert_eq!(ready, vec![id(1)]);
    }

    #[test]
    fn non_pod_netns_is_ignored_and_unknown_netns_is_sampled_once_per_interval() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(10));
        c.observe_full(&pod_snapshot(1, None), t0);
        let never = |_: &str| None;
        assert_eq!(c.on_wake(wake(1), t0, &never), None, "host netns");
        assert_eq!(c.on_wake(wake(2), t0, &never), Some(id(2)), "new netns");
        c.rescanned(&[id(2)]);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(c.on_wake(wake(2), at, &never), None);
        let (ready, next) = c.due_now(at, &never);
        assert!(ready.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn merge_replaces_resampled_namespaces() {
        let mut full = pod_snapshot(1, Some("u1"));
        full.netns.extend(pod_snapshot(3, Some("u3")).netns);
        let mut part = pod_snapshot(3, Some("u3"));
        part.netns[0].somaxconn = Some(128);
        part.observed_at = "t2".into();
        merge_partial(&mut full, part);
        assert_eq!(full.netns.len(), 2);
        assert_eq!(full.netns[1].somaxconn, Some(128));
        assert_eq!(full.observed_at, "t2");
    }
}
