//! Cluster mode: pods on this node (watch limited by `spec.nodeName`), one `ListenerReport` per
//! pod via server-side apply (field manager `kubetune-agent`, ownerReference to the Pod), written
//! only when the observation changed, at most once per `min_write_interval` per pod — except
//! that new overflows are written at once when the last write carrying overflows is that old
//! ([`should_write`]). Overflow events re-sample a pod between scans ([`crate::events`]).
//! Alongside, [`crate::nodepublish::run`] publishes what this node's kubelet accepts and
//! [`crate::heartbeat::run`] renews the node's heartbeat Lease.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use kubetune_crds::report::{ListenerReport, ListenerReportSpec, AGENT_FIELD_MANAGER};
use tracing::{info, warn};

use crate::attribution::strip_runtime_scheme;
use crate::metrics::{self, MetricsState, PodNames};
use crate::probe::tier_reason;
use crate::scanner::{Scanner, Snapshot};

/// Errors in cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Kubernetes client error.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Metrics server.
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
}

/// Cluster-mode settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// This node.
    pub node_name: String,
    /// `/metrics` listen address.
    pub metrics_addr: std::net::SocketAddr,
    /// Scan interval.
    pub interval: Duration,
    /// Minimum time between two writes of one pod's report.
    pub min_write_interval: Duration,
    /// Re-sample a pod at once on the probe's overflow events (eBPF tiers); otherwise poll only.
    pub overflow_events: bool,
    /// The node's heartbeat Lease ([`crate::heartbeat`]).
    pub heartbeat: crate::heartbeat::HeartbeatConfig,
}

/// What was last written for a pod, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct LastWrite {
    /// The spec written.
    pub spec: ListenerReportSpec,
    /// When.
    pub at: Instant,
    /// When a write last carried new overflows (`overflowsTotal` grew).
    pub overflow_at: Option<Instant>,
}

impl LastWrite {
    /// The record after writing `spec` at `now` (over `prev`).
    pub fn after(prev: Option<&LastWrite>, spec: ListenerReportSpec, now: Instant) -> LastWrite {
        let grew = spec.overflows_total > prev.map_or(0, |p| p.spec.overflows_total);
        LastWrite {
            overflow_at: if grew {
                Some(now)
            } else {
                prev.and_then(|p| p.overflow_at)
            },
            spec,
            at: now,
        }
    }
}

/// Decides whether a pod's report must be written now (pure; unit tested).
///
/// Written when there is no previous write, or when the spec changed (ignoring `observedAt`)
/// and either the last write is at least `min_interval` old, or the change carries new
/// overflows and the last write that did is at least `min_interval` old. So under a sustained
/// flood every write carries overflows and a pod gets one write per interval, while a burst
/// right after a routine write (a queue length, a window expiring) is not held back by it.
pub fn should_write(
    last: Option<&LastWrite>,
    new: &ListenerReportSpec,
    now: Instant,
    min_interval: Duration,
) -> bool {
    match last {
        None => true,
        Some(l) => {
            let mut a = l.spec.clone();
            let mut b = new.clone();
            a.observed_at.clear();
            b.observed_at.clear();
            let due = |t: Instant| now.duration_since(t) >= min_interval;
            a != b
                && (due(l.at)
                    || (new.overflows_total > l.spec.overflows_total
                        && l.overflow_at.is_none_or(due)))
        }
    }
}

/// The server-side-apply body of a pod's report.
pub fn report_object(pod: &Pod, spec: ListenerReportSpec) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": kubetune_crds::API_VERSION,
        "kind": "ListenerReport",
        "metadata": {
            "name": pod.metadata.name,
            "namespace": pod.metadata.namespace,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
                "controller": false,
                "blockOwnerDeletion": false,
            }],
        },
        "spec": spec,
    })
}

fn pod_names(pod: &Pod) -> PodNames {
    let mut containers = HashMap::new();
    if let Some(st) = &pod.status {
        for cs in st
            .container_statuses
            .iter()
            .flatten()
            .chain(st.init_container_statuses.iter().flatten())
        {
            if let Some(id) = &cs.container_id {
                containers.insert(strip_runtime_scheme(id).to_string(), cs.name.clone());
            }
        }
    }
    PodNames {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        containers,
    }
}

/// Writes the reports due for one snapshot: for every pod of `pods` (this node's) whose netns is
/// in the snapshot (matched by the pod uid found in the netns's cgroups; hostNetwork pods are
/// skipped), server-side-applies its `ListenerReport` when [`should_write`] says so. `last`
/// carries what was written when, across calls. Returns pod uid → names (for metrics labels).
pub async fn write_reports(
    client: &Client,
    node_name: &str,
    snap: &Snapshot,
    pods: &[Pod],
    last: &mut HashMap<String, LastWrite>,
    min_write_interval: Duration,
) -> HashMap<String, PodNames> {
    let by_uid: HashMap<String, &Pod> = pods
        .iter()
        .filter_map(|p| p.metadata.uid.clone().map(|u| (u, p)))
        .collect();
    let names: HashMap<String, PodNames> = by_uid
        .iter()
        .map(|(u, p)| (u.clone(), pod_names(p)))
        .collect();
    let now = Instant::now();
    for ns in &snap.netns {
        let Some(pc) = &ns.pod else { continue };
        let Some(pod) = by_uid.get(&pc.pod_uid) else {
            continue;
        };
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            continue;
        }
        let pn = &names[&pc.pod_uid];
        let spec = ns.to_report_spec(&pc.pod_uid, node_name, snap, &pn.containers);
        if !should_write(last.get(&pc.pod_uid), &spec, now, min_write_interval) {
            continue;
        }
        let api: Api<ListenerReport> = Api::namespaced(client.clone(), &pn.namespace);
        let body = report_object(pod, spec.clone());
        match api
            .patch(
                &pn.name,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                let w = LastWrite::after(last.get(&pc.pod_uid), spec, now);
                last.insert(pc.pod_uid.clone(), w);
            }
            Err(e) => {
                warn!(pod = %pn.name, namespace = %pn.namespace, error = %e, "writing ListenerReport")
            }
        }
    }
    last.retain(|uid, _| by_uid.contains_key(uid));
    names
}

/// Runs cluster mode until the process is stopped.
pub async fn run(scanner: Scanner, cfg: RunConfig) -> Result<(), ClusterError> {
    let client = Client::try_default().await?;
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store::<Pod>();
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let stream = reflector(writer, watcher(pods, wc))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                warn!(error = %e, "pod watch");
            }
        }
    });

    // This node is watched from now on: the heartbeat says so every period while the process
    // (and with it the scan loop below, whose end ends the process) lives.
    tokio::spawn(crate::heartbeat::run(
        client.clone(),
        cfg.heartbeat.clone(),
        k8s_openapi::jiff::Timestamp::now(),
    ));

    // What this node's kubelet accepts: node labels and the NodeTuning.
    tokio::spawn(crate::nodepublish::run(
        client.clone(),
        cfg.node_name.clone(),
    ));

    let state = std::sync::Arc::new(std::sync::RwLock::new(MetricsState::default()));
    metrics::serve(cfg.metrics_addr, state.clone()).map_err(ClusterError::Metrics)?;
    let hooks = scanner.probe().map(|p| p.hooks()).unwrap_or_default();
    let reason = tier_reason(scanner.tier(), hooks, scanner.fallback_reason());
    info!(node = %cfg.node_name, tier = scanner.tier().as_str(), %reason, metrics = %cfg.metrics_addr, "cluster mode");

    let mut scanner = scanner;
    let ring = if cfg.overflow_events {
        scanner.probe_mut().and_then(crate::Probe::take_events)
    } else {
        None
    };
    match (&ring, scanner.tier()) {
        (Some(_), tier) => info!(tier = tier.as_str(), interval = ?cfg.interval,
            "detection: overflow events (final-ACK-phase drops{}) re-sample a pod at once; SYN-phase drops, queue lengths and new listeners by the scan every interval",
            if tier == crate::Tier::EbpfFentry { " and SYN-phase drops" } else { "" }),
        (None, tier) => info!(tier = tier.as_str(), interval = ?cfg.interval,
            "detection: polling only (no overflow events: {}); overflows are seen by the scan every interval",
            if cfg.overflow_events { "no eBPF ring buffer in this tier" } else { "--no-overflow-events" }),
    }

    // The scanner (and the eBPF maps it reads) lives on its own thread.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (req_tx, req_rx) = std::sync::mpsc::channel();
    let interval = cfg.interval;
    std::thread::Builder::new()
        .name("kt-scan".into())
        .spawn(move || crate::events::scan_loop(scanner, interval, req_rx, tx))
        .map_err(ClusterError::Metrics)?;
    let wakes = ring.map(|rb| {
        let (wtx, wrx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(crate::events::read_events(rb, wtx));
        wrx
    });
    let cx = crate::events::ReportContext {
        client: &client,
        node_name: &cfg.node_name,
        pods: &store,
        state: &state,
        min_write_interval: cfg.min_write_interval,
    };
    crate::events::report_loop(cx, rx, req_tx, wakes).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(q: i64, at: &str) -> ListenerReportSpec {
        ListenerReportSpec {
            pod_uid: "u".into(),
            node_name: "n".into(),
            listener_count: 1,
            overflows_total: q,
            observed_at: at.into(),
            ..Default::default()
        }
    }

    #[test]
    fn write_policy() {
        let t0 = Instant::now();
        let min = Duration::from_secs(10);
        assert!(
            should_write(None, &spec(1, "a"), t0, min),
            "first observation is written"
        );
        let last = LastWrite::after(None, spec(1, "a"), t0);
        assert_eq!(last.overflow_at, Some(t0), "1 overflow is new");
        assert!(
            !should_write(
                Some(&last),
                &spec(1, "b"),
                t0 + Duration::from_secs(60),
                min
            ),
            "only observedAt changed"
        );
        assert!(
            !should_write(Some(&last), &spec(2, "b"), t0 + Duration::from_secs(3), min),
            "changed but rate limited"
        );
        assert!(
            should_write(
                Some(&last),
                &spec(2, "b"),
                t0 + Duration::from_secs(10),
                min
            ),
            "changed and due"
        );
    }

    #[test]
    fn new_overflows_are_not_held_back_by_a_routine_write() {
        let t0 = Instant::now();
        let min = Duration::from_secs(10);
        let s = Duration::from_secs;
        let overflowed = LastWrite::after(None, spec(5, "a"), t0);
        let mut routine = spec(5, "b");
        routine.listener_count = 2;
        let routine = LastWrite::after(Some(&overflowed), routine, t0 + s(20));
        assert_eq!(
            routine.overflow_at,
            Some(t0),
            "a routine write keeps the overflow time"
        );
        let mut burst = routine.spec.clone();
        burst.overflows_total = 9;
        assert!(
            should_write(Some(&routine), &burst, t0 + s(21), min),
            "new overflows 1 s after a routine write: written at once"
        );
        let flood = LastWrite::after(Some(&routine), burst.clone(), t0 + s(21));
        let mut more = burst.clone();
        more.overflows_total = 12;
        assert!(
            !should_write(Some(&flood), &more, t0 + s(25), min),
            "a flood: one write per interval"
        );
        let mut quieter = burst;
        quieter.listener_count = 3;
        assert!(
            !should_write(Some(&flood), &quieter, t0 + s(25), min),
            "a routine change waits for the interval"
        );
    }

    #[test]
    fn report_has_owner_reference() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.uid = Some("1234".into());
        let v = report_object(&pod, spec(3, "t"));
        assert_eq!(v["metadata"]["name"], "web-0");
        assert_eq!(v["metadata"]["namespace"], "shop");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Pod");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "1234");
        assert_eq!(v["spec"]["overflowsTotal"], 3);
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;
    use crate::attribution::PodCgroup;
    use crate::netns::NetnsId;
    use crate::probe::Tier;
    use crate::scanner::{ListenerObservation, NetnsObservation};
    use kubetune_crds::report::{Diagnosis, LimitedBy};

    fn snapshot(at: &str) -> Snapshot {
        let pod = PodCgroup {
            pod_uid: "uid-1".into(),
            qos: "besteffort".into(),
            container_id: None,
            runtime: None,
        };
        let listener = ListenerObservation {
            address: "0.0.0.0".parse().unwrap(),
            port: 80,
            inode: 9,
            requested_backlog: Some(511),
            effective_backlog: 128,
            somaxconn_at_listen: Some(128),
            queue_now: 129,
            queue_max: 129,
            overflows_total: 7,
            overflows_recent: 7,
            overflows_per_minute: None,
            ebpf_ack_phase_overflows: Some(0),
            ebpf_syn_phase_overflows: None,
            sk_drops: Some(7),
            limited_by: LimitedBy::Somaxconn,
            diagnosis: Diagnosis::SomaxconnBound,
            process: None,
            pod: None,
            samples: 1,
        };
        let ns = |uid: &str, ino: u64| NetnsObservation {
            id: NetnsId {
                inode: ino,
                cookie: ino,
            },
            name: None,
            host: false,
            pod: Some(PodCgroup {
                pod_uid: uid.into(),
                ..pod.clone()
            }),
            process: None,
            process_count: 1,
            somaxconn: Some(128),
            sysctls: Default::default(),
            counters: None,
            listeners: vec![listener.clone()],
        };
        Snapshot {
            tier: Tier::EbpfTracepoint,
            listen_events: true,
            fallback_reason: None,
            observed_at: at.into(),
            window_seconds: 60,
            // uid-2 is a pod of another node (not in the pod list): no report for it.
            netns: vec![ns("uid-1", 1), ns("uid-2", 2)],
            vanished: 0,
            errors: vec![],
        }
    }

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web-0".into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[tokio::test]
    async fn server_side_applies_once_per_change() {
        let (svc, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one request");
            assert_eq!(req.method(), http::Method::PATCH);
            let uri = req.uri().to_string();
            assert!(
                uri.starts_with(
                    "/apis/kubetune.dev/v1alpha1/namespaces/shop/listenerreports/web-0?"
                ),
                "{uri}"
            );
            assert!(
                uri.contains("fieldManager=kubetune-agent") && uri.contains("force=true"),
                "{uri}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body = req.into_body().collect_bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["kind"], "ListenerReport");
            assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(v["spec"]["diagnosis"], "SomaxconnBound");
            assert_eq!(v["spec"]["source"], "ebpf-tracepoint");
            assert_eq!(v["spec"]["listeners"][0]["requestedBacklog"], 511);
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(body.to_vec()))
                    .unwrap(),
            );
            // No second request may arrive (the next call only changes observedAt).
            assert!(
                tokio::time::timeout(Duration::from_millis(300), handle.next_request())
                    .await
                    .is_err()
            );
        });
        let mut last = HashMap::new();
        let pods = vec![pod()];
        let names = write_reports(
            &client,
            "node-a",
            &snapshot("t1"),
            &pods,
            &mut last,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(names["uid-1"].name, "web-0");
        assert_eq!(last.len(), 1);
        write_reports(
            &client,
            "node-a",
            &snapshot("t2"),
            &pods,
            &mut last,
            Duration::from_secs(10),
        )
        .await;
        server.await.unwrap();
    }
}
