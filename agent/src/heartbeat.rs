//! The agent's per-node heartbeat: the Lease `kubetune-agent-<node>` in the agent's namespace,
//! renewed every period by server-side apply (field manager `kubetune-agent-heartbeat`), with
//! `holderIdentity` = this agent pod, `leaseDurationSeconds` = 3 periods, and the annotation
//! `kubetune.dev/watching-since`: since when this agent has watched its node without a gap (its
//! start, or the end of the last gap in which it could not renew before the lease expired).
//! The operator counts a pod as verified only while this heartbeat is fresh and has watched
//! since the pod's clean window began. Pod reports are still written only on change: the cost is
//! one write per node per period (1,000 nodes at 10 s: 100 writes/s).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use kubetune_crds::heartbeat::{lease_body, HEARTBEAT_FIELD_MANAGER};
use tracing::{info, warn};

/// Heartbeat settings.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// Namespace of the Lease (the agent's own).
    pub namespace: String,
    /// This node.
    pub node_name: String,
    /// This agent pod (`holderIdentity`).
    pub holder: String,
    /// Renewal period; the lease lasts [`lease_duration_seconds`] of it.
    pub period: Duration,
}

/// `leaseDurationSeconds` for a renewal `period`: three periods (a renewal may be missed twice
/// without the heartbeat going stale), at least one second.
pub fn lease_duration_seconds(period: Duration) -> i32 {
    let secs = (period.as_secs_f64() * 3.0).ceil();
    secs.clamp(1.0, f64::from(i32::MAX)) as i32
}

/// The `watching-since` to write at `now` (pure): unchanged while renewals keep the lease
/// valid; `now` when the last successful renewal (`last_renewed`) is at least a lease duration
/// old — the heartbeat went stale, so whatever happened meanwhile was not reported.
pub fn watching_since(
    since: Timestamp,
    last_renewed: Option<Timestamp>,
    duration: SignedDuration,
    now: Timestamp,
) -> Timestamp {
    match last_renewed {
        Some(last) if now.duration_since(last) >= duration => now,
        _ => since,
    }
}

/// Renew the heartbeat until the process stops. `started` is when this agent began watching.
pub async fn run(client: Client, cfg: HeartbeatConfig, started: Timestamp) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let duration_s = lease_duration_seconds(cfg.period);
    let duration = SignedDuration::from_secs(i64::from(duration_s));
    let pp = PatchParams::apply(HEARTBEAT_FIELD_MANAGER).force();
    let name = kubetune_crds::heartbeat::lease_name(&cfg.node_name);
    let (mut since, mut last_renewed) = (started, None);
    let mut ticker = tokio::time::interval(cfg.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(lease = %name, period = ?cfg.period, duration_s, "heartbeat");
    loop {
        ticker.tick().await;
        let now = Timestamp::now();
        let next_since = watching_since(since, last_renewed, duration, now);
        if next_since != since {
            warn!(lease = %name, gap_since = ?last_renewed, "heartbeat lapsed: watching again from now");
        }
        let body = lease_body(
            &cfg.namespace,
            &cfg.node_name,
            &cfg.holder,
            duration_s,
            now,
            next_since,
        );
        match api.patch(&name, &pp, &Patch::Apply(&body)).await {
            Ok(_) => {
                since = next_since;
                last_renewed = Some(now);
            }
            Err(e) => warn!(lease = %name, error = %e, "renewing the heartbeat"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_735_689_600 + s).unwrap()
    }

    #[test]
    fn lease_lasts_three_periods() {
        assert_eq!(lease_duration_seconds(Duration::from_secs(10)), 30);
        assert_eq!(lease_duration_seconds(Duration::from_millis(1500)), 5);
        assert_eq!(lease_duration_seconds(Duration::from_millis(1)), 1);
    }

    #[test]
    fn watching_since_moves_only_after_a_lapse() {
        let d = SignedDuration::from_secs(30);
        // First renewal: since the agent started.
        assert_eq!(watching_since(t(0), None, d, t(1)), t(0));
        // Renewed 10 s ago, or 29 s ago: no gap.
        assert_eq!(watching_since(t(0), Some(t(90)), d, t(100)), t(0));
        assert_eq!(watching_since(t(0), Some(t(71)), d, t(100)), t(0));
        // The last renewal is a lease duration old: the heartbeat went stale, a gap.
        assert_eq!(watching_since(t(0), Some(t(70)), d, t(100)), t(100));
    }

    #[tokio::test]
    async fn renewal_applies_the_nodes_lease() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let cfg = HeartbeatConfig {
            namespace: "kubetune-system".into(),
            node_name: "n1".into(),
            holder: "kubetune-agent-abc".into(),
            period: Duration::from_secs(10),
        };
        let task = tokio::spawn(run(Client::new(svc, "default"), cfg, t(0)));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "PATCH");
        assert_eq!(
            req.uri().path(),
            "/apis/coordination.k8s.io/v1/namespaces/kubetune-system/leases/kubetune-agent-n1"
        );
        let q = req.uri().query().unwrap_or_default().to_string();
        assert!(q.contains("fieldManager=kubetune-agent-heartbeat"), "{q}");
        let body: serde_json::Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["spec"]["holderIdentity"], "kubetune-agent-abc");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 30);
        assert_eq!(
            body["metadata"]["annotations"]["kubetune.dev/watching-since"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            body["metadata"]["labels"]["kubetune.dev/agent-heartbeat"],
            "true"
        );
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        task.abort();
    }
}
