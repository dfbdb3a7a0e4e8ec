//! `ListenerReport`: what the node agent observed about one pod's TCP listeners.
//!
//! One report per pod (name = pod name, same namespace, ownerReference = the Pod), written by the
//! agent on the pod's node with server-side apply under the field manager [`AGENT_FIELD_MANAGER`].
//! The agent owns `spec` (the observation); the operator owns `status` (its recommendation).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Field manager the node agent uses for server-side apply of `ListenerReport.spec`.
pub const AGENT_FIELD_MANAGER: &str = "kubetune-agent";

/// Verdict for one listener (and, for a report, the worst verdict over its listeners).
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
    Default,
)]
pub enum Diagnosis {
    /// No overflows in the window and the queue is not sitting near its limit.
    #[default]
    Healthy,
    /// The application asked for a larger backlog than `net.core.somaxconn` allows and the queue
    /// overflows: raising `net.core.somaxconn` (at pod creation) fixes it.
    SomaxconnBound,
    /// The application's own `listen()` backlog is the limit (it is <= somaxconn) and the queue
    /// overflows: raise the application's backlog; a sysctl will not help.
    ApplicationBacklogBound,
    /// The queue sits full or nearly full over time although the backlog is already generous:
    /// the application is not accepting fast enough (slow I/O, blocked workers). No sysctl fixes it.
    SlowAccept,
}

impl Diagnosis {
    /// True when the listener is overflowing or stuck (anything but `Healthy`).
    pub fn is_problem(self) -> bool {
        !matches!(self, Diagnosis::Healthy)
    }
}

/// Which limit sets a listener's effective accept-queue length.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum LimitedBy {
    /// `effective = somaxconn < requested backlog`.
    Somaxconn,
    /// `effective = requested backlog <= somaxconn`.
    ApplicationBacklog,
    /// The requested backlog is not known (the listener existed before the agent started).
    #[default]
    Unknown,
}

/// One TCP listening socket in the pod's network namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Local address the socket is bound to (`0.0.0.0`, `::`, or a specific address).
    pub address: String,
    /// Local TCP port.
    pub port: i32,
    /// Backlog the process passed to `listen()`. Absent when unknown (the socket was already
    /// listening when the agent started; the agent does not guess).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_backlog: Option<i64>,
    /// Effective accept-queue limit (`sk_max_ack_backlog` = min(requested, somaxconn at listen time)).
    pub effective_backlog: i64,
    /// Connections waiting in the accept queue at the last observation.
    pub queue_now: i64,
    /// Highest accept-queue length seen over the report window.
    pub queue_max: i64,
    /// Accept-queue overflows of this listening socket over its lifetime as the agent can count
    /// them: the larger of the eBPF per-listener count and the socket's drop counter capped by
    /// the netns's `TcpExtListenOverflows` (exact when one listener of the netns overflows, an
    /// upper bound when several do).
    pub overflows_total: i64,
    /// Overflows in the report window (see `windowSeconds`); a listener seen for the first time
    /// reports all its overflows as recent (they cannot be dated).
    pub overflows_recent: i64,
    /// Which limit sets `effectiveBacklog`.
    pub limited_by: LimitedBy,
    /// Verdict for this listener.
    pub diagnosis: Diagnosis,
    /// Name (comm) of the process owning the socket, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Container the owning process runs in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Observation of one pod's network namespace by the node agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "kubetune.dev",
    version = "v1alpha1",
    kind = "ListenerReport",
    plural = "listenerreports",
    shortname = "lr",
    namespaced,
    status = "ListenerReportStatus",
    printcolumn = r#"{"name":"Somaxconn","type":"integer","jsonPath":".spec.somaxconn"}"#,
    printcolumn = r#"{"name":"Listeners","type":"integer","jsonPath":".spec.listenerCount"}"#,
    printcolumn = r#"{"name":"Overflows","type":"integer","jsonPath":".spec.overflowsTotal"}"#,
    printcolumn = r#"{"name":"Diagnosis","type":"string","jsonPath":".spec.diagnosis"}"#,
    printcolumn = r#"{"name":"Node","type":"string","priority":1,"jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ListenerReportSpec {
    /// UID of the pod this report describes (the report is named after the pod).
    pub pod_uid: String,
    /// Node whose agent wrote this report.
    pub node_name: String,
    /// `net.core.somaxconn` read inside the pod's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub somaxconn: Option<i64>,
    /// Other sysctls read inside the pod's network namespace: every per-netns (`net.*`) sysctl
    /// of kubetune's table except `net.core.somaxconn`, which this kernel has (name -> value as
    /// the kernel prints it, whitespace collapsed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Number of TCP listening sockets in the pod's network namespace.
    pub listener_count: i32,
    /// Sum of `overflowsTotal` over the listeners.
    pub overflows_total: i64,
    /// Sum of `overflowsRecent` over the listeners.
    pub overflows_recent: i64,
    /// The listeners, sorted by port then address.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    /// Worst diagnosis over the listeners (`Healthy` when there are none).
    pub diagnosis: Diagnosis,
    /// Length of the window `overflowsRecent` and `queueMax` cover, in seconds.
    pub window_seconds: i64,
    /// Which observation tier produced the numbers: `ebpf-fentry`, `ebpf-tracepoint` or `sock-diag`.
    pub source: String,
    /// When the agent observed this (RFC 3339).
    pub observed_at: String,
}

/// Operator-owned part of a ListenerReport.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListenerReportStatus {
    /// Set when the pod overflows because of somaxconn and no TuningPolicy selects it: the
    /// TuningPolicy (YAML) that would fix it once the pod is recreated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
    /// TuningPolicies that select this pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}
