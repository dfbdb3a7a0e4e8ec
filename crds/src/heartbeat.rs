//! The node agent's heartbeat: one `coordination.k8s.io/v1` Lease per node in kubetune's
//! namespace, renewed by the agent every period, read by the operator to know which nodes are
//! being watched (and since when without a gap). The agent writes it with [`lease_body`]; the
//! operator reads it with [`Heartbeat::from_lease`]. Names, label and annotation live here only.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// Prefix of an agent's Lease name; the rest is the node name.
pub const LEASE_PREFIX: &str = "kubetune-agent-";
/// Label on every agent Lease (the operator watches only these).
pub const LEASE_LABEL: &str = "kubetune.dev/agent-heartbeat";
/// Value of [`LEASE_LABEL`].
pub const LEASE_LABEL_VALUE: &str = "true";
/// Annotation (RFC 3339): since when the holder has watched its node without a gap.
pub const WATCHING_SINCE: &str = "kubetune.dev/watching-since";
/// Field manager of the agent's Lease applies.
pub const HEARTBEAT_FIELD_MANAGER: &str = "kubetune-agent-heartbeat";

/// Name of `node`'s agent Lease.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// The node an agent Lease is for (`None`: not an agent Lease).
pub fn lease_node(lease_name: &str) -> Option<&str> {
    lease_name
        .strip_prefix(LEASE_PREFIX)
        .filter(|n| !n.is_empty())
}

/// What an agent Lease says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agent pod holding it.
    pub holder: String,
    /// Last renewal.
    pub renewed: Timestamp,
    /// How long a renewal stays valid.
    pub duration: SignedDuration,
    /// Since when the holder has watched the node without a gap.
    pub watching_since: Timestamp,
}

impl Heartbeat {
    /// Read an agent Lease (`None` when a field is missing or unparsable: treated as no
    /// heartbeat, never as a fresh one).
    pub fn from_lease(lease: &Lease) -> Option<Heartbeat> {
        let spec = lease.spec.as_ref()?;
        let watching_since = lease
            .metadata
            .annotations
            .as_ref()?
            .get(WATCHING_SINCE)?
            .parse()
            .ok()?;
        Some(Heartbeat {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renewed: spec.renew_time.as_ref()?.0,
            duration: SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?)),
            watching_since,
        })
    }

    /// Is the renewal still valid at `now` (`renewTime + leaseDuration > now`)?
    pub fn fresh(&self, now: Timestamp) -> bool {
        self.renewed + self.duration > now
    }

    /// When the renewal stops being valid.
    pub fn expires(&self) -> Timestamp {
        self.renewed + self.duration
    }
}

/// The server-side-apply body of `node`'s Lease in `namespace`.
pub fn lease_body(
    namespace: &str,
    node: &str,
    holder: &str,
    duration_seconds: i32,
    renewed: Timestamp,
    watching_since: Timestamp,
) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node),
            "namespace": namespace,
            "labels": {LEASE_LABEL: LEASE_LABEL_VALUE},
            "annotations": {WATCHING_SINCE: watching_since.to_string()},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            // MicroTime: RFC 3339 with microseconds.
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_through_a_lease() {
        let renewed: Timestamp = "2026-01-01T00:00:10.5Z".parse().unwrap();
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let body = lease_body("kubetune-system", "n1", "agent-x", 30, renewed, since);
        assert_eq!(body["metadata"]["name"], "kubetune-agent-n1");
        assert_eq!(body["spec"]["renewTime"], "2026-01-01T00:00:10.500000Z");
        let lease: Lease = serde_json::from_value(body).unwrap();
        let hb = Heartbeat::from_lease(&lease).unwrap();
        assert_eq!(
            hb,
            Heartbeat {
                holder: "agent-x".into(),
                renewed,
                duration: SignedDuration::from_secs(30),
                watching_since: since,
            }
        );
        assert!(hb.fresh(renewed + SignedDuration::from_secs(29)));
        assert!(!hb.fresh(renewed + SignedDuration::from_secs(30)));
        assert_eq!(lease_node("kubetune-agent-n1"), Some("n1"));
        assert_eq!(lease_node("kubetune-operator"), None);
        assert_eq!(lease_node("kubetune-agent-"), None);
    }

    #[test]
    fn a_lease_without_watching_since_or_renewal_is_no_heartbeat() {
        let now = Timestamp::UNIX_EPOCH;
        let mut body = lease_body("ns", "n1", "a", 30, now, now);
        body["metadata"]["annotations"] = json!({});
        let lease: Lease = serde_json::from_value(body).unwrap();
        assert_eq!(Heartbeat::from_lease(&lease), None);
        let mut body = lease_body("ns", "n1", "a", 30, now, now);
        body["spec"]["renewTime"] = serde_json::Value::Null;
        let lease: Lease = serde_json::from_value(body).unwrap();
        assert_eq!(Heartbeat::from_lease(&lease), None);
    }
}
