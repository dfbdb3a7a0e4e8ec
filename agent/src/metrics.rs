//! Prometheus `/metrics` (prometheus-client), rendered from the latest snapshot at scrape time
//! and served with warp (as the webhook and the operator serve theirs), next to `/healthz`.
//!
//! Names follow node_exporter/cAdvisor conventions:
//! * `kubetune_listen_overflows_total` (counter): accept-queue overflows per listener.
//! * `kubetune_listen_queue_length` (gauge): accept-queue length now.
//! * `kubetune_listen_queue_max` (gauge): highest accept-queue length over the window.
//! * `kubetune_listen_backlog` (gauge): effective backlog (`sk_max_ack_backlog`).
//! * `kubetune_listen_requested_backlog` (gauge): backlog passed to `listen()`, when known.
//! * `kubetune_listen_diagnosis` (gauge, 1 per listener with a `diagnosis` label).
//! * `kubetune_netns_somaxconn` (gauge) and `kubetune_netns_listen_overflows_total` (counter,
//!   `TcpExt ListenOverflows`) per network namespace.
//! * `kubetune_agent_info{tier}` (gauge, 1).
//! * `kubetune_agent_listen_events_enabled` (gauge, 1 when a `listen()` hook records requested
//!   backlogs and announces new listeners; 0 on the `sock-diag` tier and under
//!   `--no-syscall-tracepoints` where `fexit/inet_listen` does not load).
//! * `kubetune_agent_scan_duration_seconds` (gauge): wall time of the latest scan;
//!   `kubetune_agent_scan_cpu_seconds_total` (counter): CPU time the scan thread spent scanning
//!   (its `rate()` is the fraction of a core the scans cost, re-samples included);
//!   `kubetune_agent_scans_total`.
//! * `kubetune_agent_overflow_events_enabled` (gauge, 1 when the kernel's overflow events drive
//!   re-samples, 0 when the agent only polls), `kubetune_agent_overflow_events_total` (events
//!   received) and `kubetune_agent_event_rescans_total` (re-samples of a pod's netns they caused).
//!
//! Listener labels: `namespace`, `pod`, `container` (empty off-pod), `netns` (inode), `address`, `port`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use warp::Filter;

use crate::scanner::Snapshot;

/// Every metric name the agent exports (as they appear in the exposition, counters with
/// `_total`); tests check that alert rules only use these.
pub const METRIC_NAMES: &[&str] = &[
    "kubetune_agent_info",
    "kubetune_agent_listen_events_enabled",
    "kubetune_listen_overflows_total",
    "kubetune_listen_queue_length",
    "kubetune_listen_queue_max",
    "kubetune_listen_backlog",
    "kubetune_listen_requested_backlog",
    "kubetune_listen_diagnosis",
    "kubetune_netns_somaxconn",
    "kubetune_netns_listen_overflows_total",
    "kubetune_agent_scan_duration_seconds",
    "kubetune_agent_scan_cpu_seconds_total",
    "kubetune_agent_scans_total",
    "kubetune_agent_overflow_events_enabled",
    "kubetune_agent_overflow_events_total",
    "kubetune_agent_event_rescans_total",
];

/// Names of a pod (cluster mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNames {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Container id → container name.
    pub containers: HashMap<String, String>,
}

/// What the collector renders: the latest snapshot and pod names by uid.
#[derive(Debug, Default)]
pub struct MetricsState {
    /// Latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Pod uid → names.
    pub pods: HashMap<String, PodNames>,
    /// What the scans cost so far.
    pub scan_cost: ScanCost,
    /// Event-driven detection (cluster mode).
    pub detection: Detection,
}

/// Event-driven detection counters (cluster mode).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    /// Overflow events drive re-samples (false: polling only).
    pub events_enabled: bool,
    /// Overflow events received.
    pub overflow_events: u64,
    /// Re-samples of a netns they caused.
    pub rescans: u64,
}

/// The cost of the agent's scans (cluster mode).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ScanCost {
    /// Wall time of the latest scan (seconds).
    pub last_seconds: f64,
    /// CPU time of every scan so far (seconds, the scan thread's clock).
    pub cpu_seconds_total: f64,
    /// Scans so far.
    pub scans_total: u64,
}

impl ScanCost {
    /// Adds one scan.
    pub fn record(&mut self, wall_seconds: f64, cpu_seconds: f64) {
        self.last_seconds = wall_seconds;
        self.cpu_seconds_total += cpu_seconds;
        self.scans_total += 1;
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Shared handle the scan loop updates.
pub type SharedState = Arc<RwLock<MetricsState>>;

#[derive(Debug)]
struct SnapshotCollector(SharedState);

type Labels = Vec<(String, String)>;

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.read().map_err(|_| std::fmt::Error)?;
        let Some(snap) = &st.snapshot else {
            return Ok(());
        };
        let mut overflows: Vec<(Labels, u64)> = Vec::new();
        let mut queue: Vec<(Labels, i64)> = Vec::new();
        let mut qmax: Vec<(Labels, i64)> = Vec::new();
        let mut backlog: Vec<(Labels, i64)> = Vec::new();
        let mut requested: Vec<(Labels, i64)> = Vec::new();
        let mut diag: Vec<(Labels, i64)> = Vec::new();
        let mut somax: Vec<(Labels, i64)> = Vec::new();
        let mut ns_ovf: Vec<(Labels, u64)> = Vec::new();
        for ns in &snap.netns {
            let netns = ns.id.inode.to_string();
            let pod = ns.pod.as_ref().and_then(|p| st.pods.get(&p.pod_uid));
            let (namespace, podname) = pod
                .map(|p| (p.namespace.clone(), p.name.clone()))
                .unwrap_or_default();
            let nl: Labels = vec![
                ("namespace".into(), namespace.clone()),
                ("pod".into(), podname.clone()),
                ("netns".into(), netns.clone()),
            ];
            if let Some(s) = ns.somaxconn {
                somax.push((nl.clone(), s));
            }
            if let Some(c) = ns.counters {
                ns_ovf.push((nl.clone(), c.listen_overflows));
            }
            for l in &ns.listeners {
                let container = l
                    .pod
                    .as_ref()
                    .and_then(|p| p.container_id.as_ref())
                    .map(|id| {
                        pod.and_then(|p| p.containers.get(id).cloned())
                            .unwrap_or_else(|| id.chars().take(12).collect())
                    })
                    .unwrap_or_default();
                let ll: Labels = vec![
                    ("namespace".into(), namespace.clone()),
                    ("pod".into(), podname.clone()),
                    ("container".into(), container),
                    ("netns".into(), netns.clone()),
                    ("address".into(), l.address.to_string()),
                    ("port".into(), l.port.to_string()),
                ];
                overflows.push((ll.clone(), l.overflows_total));
                queue.push((ll.clone(), l.queue_now));
                qmax.push((ll.clone(), l.queue_max));
                backlog.push((ll.clone(), l.effective_backlog));
                if let Some(r) = l.requested_backlog {
                    requested.push((ll.clone(), r));
                }
                let mut dl = ll;
                dl.push(("diagnosis".into(), format!("{:?}", l.diagnosis)));
                diag.push((dl, 1));
            }
        }
        let info: Vec<(Labels, i64)> = vec![(vec![("tier".into(), snap.tier.as_str().into())], 1)];
        gauges(
            &mut enc,
            "kubetune_agent_info",
            "Agent observation tier (1).",
            &info,
        )?;
        let m = enc.encode_descriptor(
            "kubetune_agent_listen_events_enabled",
            "1 when a listen() hook records requested backlogs and announces new listeners.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snap.listen_events)).encode(m)?;
        encode_scan_cost(&mut enc, &st.scan_cost)?;
        encode_detection(&mut enc, &st.detection)?;
        counters(
            &mut enc,
            "kubetune_listen_overflows",
            "Accept-queue overflows per TCP listener.",
            &overflows,
        )?;
        gauges(
            &mut enc,
            "kubetune_listen_queue_length",
            "Accept-queue length now.",
            &queue,
        )?;
        gauges(
            &mut enc,
            "kubetune_listen_queue_max",
            "Highest accept-queue length over the window.",
            &qmax,
        )?;
        gauges(
            &mut enc,
            "kubetune_listen_backlog",
            "Effective accept-queue limit (sk_max_ack_backlog).",
            &backlog,
        )?;
        gauges(
            &mut enc,
            "kubetune_listen_requested_backlog",
            "Backlog passed to listen(), when known.",
            &requested,
        )?;
        gauges(
            &mut enc,
            "kubetune_listen_diagnosis",
            "Diagnosis of the listener (1 for the current one).",
            &diag,
        )?;
        gauges(
            &mut enc,
            "kubetune_netns_somaxconn",
            "net.core.somaxconn of the network namespace.",
            &somax,
        )?;
        counters(
            &mut enc,
            "kubetune_netns_listen_overflows",
            "TcpExt ListenOverflows of the network namespace.",
            &ns_ovf,
        )?;
        Ok(())
    }
}

fn encode_scan_cost(enc: &mut DescriptorEncoder, c: &ScanCost) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(
        "kubetune_agent_scan_duration_seconds",
        "Wall time of the latest scan.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(c.last_seconds).encode(m)?;
    let m = enc.encode_descriptor(
        "kubetune_agent_scan_cpu_seconds",
        "CPU time spent scanning.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(c.cpu_seconds_total).encode(m)?;
    let m = enc.encode_descriptor("kubetune_agent_scans", "Scans.", None, MetricType::Counter)?;
    ConstCounter::new(c.scans_total).encode(m)
}

fn encode_detection(enc: &mut DescriptorEncoder, d: &Detection) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(
        "kubetune_agent_overflow_events_enabled",
        "1 when the kernel's overflow events drive re-samples, 0 when the agent only polls.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(d.events_enabled)).encode(m)?;
    let m = enc.encode_descriptor(
        "kubetune_agent_overflow_events",
        "Overflow events received from the probe (at most one per listener per 100 ms).",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(d.overflow_events).encode(m)?;
    let m = enc.encode_descriptor(
        "kubetune_agent_event_rescans",
        "Re-samples of a pod's netns caused by overflow events.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(d.rescans).encode(m)
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    if v.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, x) in v {
        ConstGauge::new(*x).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    if v.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, x) in v {
        ConstCounter::new(*x).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

/// Registry with the snapshot collector.
pub fn registry(state: SharedState) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SnapshotCollector(state)));
    r
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut s = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut s, registry);
    s
}

/// Content type of the exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` (the registry rendered at request time) and `GET /healthz`.
pub fn routes(
    state: SharedState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let reg = Arc::new(registry(state));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(move || warp::reply::with_header(render(&reg), "content-type", OPENMETRICS));
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| String::from("ok\n"));
    metrics.or(health)
}

/// Binds `addr` (errors are returned here, not from the server task).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// Serves [`routes`] on `listener` (warp over hyper) on the current Tokio runtime until it ends.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    state: SharedState,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(warp::serve(routes(state)).incoming(listener).run())
}

/// [`bind`] `addr`, then [`serve_on`] it. Call from within a Tokio runtime.
pub fn serve(
    addr: std::net::SocketAddr,
    state: SharedState,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    Ok(serve_on(bind(addr)?, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::PodCgroup;
    use crate::netns::NetnsId;
    use crate::probe::Tier;
    use crate::scanner::{ListenerObservation, NetnsObservation};
    use kubetune_crds::report::{Diagnosis, LimitedBy};

    fn snapshot() -> Snapshot {
        let pod = PodCgroup {
            pod_uid: "uid-1".into(),
            qos: "burstable".into(),
            container_id: Some("c0ffee0000000000".into()),
            runtime: Some("cri-containerd".into()),
        };
        Snapshot {
            tier: Tier::EbpfTracepoint,
            listen_events: true,
            fallback_reason: None,
            observed_at: "2026-01-01T00:00:00Z".into(),
            window_seconds: 60,
            vanished: 0,
            errors: vec![],
            netns: vec![NetnsObservation {
                id: NetnsId {
                    inode: 4026532999,
                    cookie: 7,
                },
                name: None,
                host: false,
                pod: Some(pod.clone()),
                process: None,
                process_count: 2,
                somaxconn: Some(128),
                sysctls: Default::default(),
                counters: Some(crate::procfs::ListenCounters {
                    listen_overflows: 42,
                    listen_drops: 42,
                }),
                listeners: vec![ListenerObservation {
                    address: "0.0.0.0".parse().unwrap(),
                    port: 8080,
                    inode: 1,
                    requested_backlog: Some(511),
                    effective_backlog: 128,
                    somaxconn_at_listen: Some(128),
                    queue_now: 129,
                    queue_max: 129,
                    overflows_total: 42,
                    overflows_recent: 40,
                    overflows_per_minute: Some(40.0),
                    ebpf_ack_phase_overflows: Some(2),
                    ebpf_syn_phase_overflows: None,
                    sk_drops: Some(50),
                    limited_by: LimitedBy::Somaxconn,
                    diagnosis: Diagnosis::SomaxconnBound,
                    process: None,
                    pod: Some(pod),
                    samples: 3,
                }],
            }],
        }
    }

    #[test]
    fn renders_listener_metrics_with_pod_labels() {
        let state: SharedState = Default::default();
        {
            let mut st = state.write().unwrap();
            st.snapshot = Some(snapshot());
            st.scan_cost.record(0.25, 0.125);
            st.scan_cost.record(0.5, 0.25);
            st.detection = Detection {
                events_enabled: true,
                overflow_events: 7,
                rescans: 3,
            };
            st.pods.insert(
                "uid-1".into(),
                PodNames {
                    namespace: "shop".into(),
                    name: "web-0".into(),
                    containers: [("c0ffee0000000000".to_string(), "nginx".to_string())].into(),
                },
            );
        }
        let text = render(&registry(state));
        let labels = r#"namespace="shop",pod="web-0",container="nginx",netns="4026532999",address="0.0.0.0",port="8080""#;
        for line in [
            format!("kubetune_listen_overflows_total{{{labels}}} 42"),
            format!("kubetune_listen_queue_length{{{labels}}} 129"),
            format!("kubetune_listen_queue_max{{{labels}}} 129"),
            format!("kubetune_listen_backlog{{{labels}}} 128"),
            format!("kubetune_listen_requested_backlog{{{labels}}} 511"),
            format!(r#"kubetune_listen_diagnosis{{{labels},diagnosis="SomaxconnBound"}} 1"#),
            r#"kubetune_netns_somaxconn{namespace="shop",pod="web-0",netns="4026532999"} 128"#.to_string(),
            r#"kubetune_netns_listen_overflows_total{namespace="shop",pod="web-0",netns="4026532999"} 42"#.to_string(),
            r#"kubetune_agent_info{tier="ebpf-tracepoint"} 1"#.to_string(),
            "kubetune_agent_listen_events_enabled 1".to_string(),
            "kubetune_agent_scan_duration_seconds 0.5".to_string(),
            "kubetune_agent_scan_cpu_seconds_total 0.375".to_string(),
            "kubetune_agent_scans_total 2".to_string(),
            "kubetune_agent_overflow_events_enabled 1".to_string(),
            "kubetune_agent_overflow_events_total 7".to_string(),
            "kubetune_agent_event_rescans_total 3".to_string(),
            "# TYPE kubetune_listen_overflows counter".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
        for name in METRIC_NAMES {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} not exported:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_over_http() {
        let state: SharedState = Default::default();
        state.write().unwrap().snapshot = Some(snapshot());
        let listener = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = serve_on(listener, state);
        let get = |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        };
        let metrics = get("/metrics").await.unwrap();
        assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
        assert!(
            metrics
                .to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS}")),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"kubetune_agent_info{tier="ebpf-tracepoint"} 1"#),
            "{metrics}"
        );
        let health = get("/healthz").await.unwrap();
        assert!(
            health.starts_with("HTTP/1.0 200") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );
        let other = get("/other").await.unwrap();
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        // A second bind of the same address fails at bind, not in the server task.
        let taken = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        assert!(bind(taken).is_err());
        server.abort();
    }

    #[test]
    fn empty_before_first_scan() {
        let text = render(&registry(Default::default()));
        assert!(!text.contains("kubetune_listen"), "{text}");
    }
}
