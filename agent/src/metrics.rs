//! Prometheus `/metrics` (prometheus-client), rendered from the latest snapshot at scrape time.
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
//!
//! Listener labels: `namespace`, `pod`, `container` (empty off-pod), `netns` (inode), `address`, `port`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::scanner::Snapshot;

/// Every metric name the agent exports (as they appear in the exposition, counters with
/// `_total`); tests check that alert rules only use these.
pub const METRIC_NAMES: &[&str] = &[
    "kubetune_agent_info",
    "kubetune_listen_overflows_total",
    "kubetune_listen_queue_length",
    "kubetune_listen_queue_max",
    "kubetune_listen_backlog",
    "kubetune_listen_requested_backlog",
    "kubetune_listen_diagnosis",
    "kubetune_netns_somaxconn",
    "kubetune_netns_listen_overflows_total",
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

/// Serves `GET /metrics` on `addr` from a background thread (tiny HTTP/1.0 responder).
pub fn serve(
    addr: std::net::SocketAddr,
    state: SharedState,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)?;
    let reg = registry(state);
    std::thread::Builder::new().name("kt-metrics".into()).spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = if path.starts_with("/metrics") {
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(&reg))
            } else if path.starts_with("/healthz") {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                ("404 Not Found", "text/plain", "not found\n".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
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

    #[test]
    fn empty_before_first_scan() {
        let text = render(&registry(Default::default()));
        assert!(!text.contains("kubetune_listen"), "{text}");
    }
}
