//! Cluster mode: pods on this node (watch limited by `spec.nodeName`), one `ListenerReport` per
//! pod via server-side apply (field manager `kubetune-agent`, ownerReference to the Pod), written
//! only when the observation changed and at most once per `min_write_interval` per pod.

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
}

/// Decides whether a pod's report must be written now (pure; unit tested).
///
/// Written when there is no previous write, or when the spec changed (ignoring `observedAt`)
/// and the last write is at least `min_interval` old.
pub fn should_write(
    last: Option<&(ListenerReportSpec, Instant)>,
    new: &ListenerReportSpec,
    now: Instant,
    min_interval: Duration,
) -> bool {
    match last {
        None => true,
        Some((prev, at)) => {
            let mut a = prev.clone();
            let mut b = new.clone();
            a.observed_at.clear();
            b.observed_at.clear();
            a != b && now.duration_since(*at) >= min_interval
        }
    }
}

/// The server-side-apply body of a pod's report.
pub fn report_object(pod: &Pod, spec: ListenerReportSpec) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubetune.dev/v1alpha1",
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
    last: &mut HashMap<String, (ListenerReportSpec, Instant)>,
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
                last.insert(pc.pod_uid.clone(), (spec, now));
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

    let state = std::sync::Arc::new(std::sync::RwLock::new(MetricsState::default()));
    metrics::serve(cfg.metrics_addr, state.clone()).map_err(ClusterError::Metrics)?;
    info!(node = %cfg.node_name, tier = scanner.tier().as_str(), metrics = %cfg.metrics_addr, "cluster mode");

    // The scanner (and the eBPF maps it reads) lives on its own thread.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Snapshot>(2);
    let interval = cfg.interval;
    std::thread::Builder::new()
        .name("kt-scan".into())
        .spawn(move || {
            let mut scanner = scanner;
            loop {
                if tx.blocking_send(scanner.scan()).is_err() {
                    return;
                }
                std::thread::sleep(interval);
            }
        })
        .map_err(ClusterError::Metrics)?;

    let mut last: HashMap<String, (ListenerReportSpec, Instant)> = HashMap::new();
    while let Some(snap) = rx.recv().await {
        let pods_now: Vec<Pod> = store.state().iter().map(|p| p.as_ref().clone()).collect();
        let names = write_reports(
            &client,
            &cfg.node_name,
            &snap,
            &pods_now,
            &mut last,
            cfg.min_write_interval,
        )
        .await;
        if let Ok(mut st) = state.write() {
            st.snapshot = Some(snap);
            st.pods = names;
        }
    }
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
        let last = (spec(1, "a"), t0);
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
