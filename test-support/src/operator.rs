//! What the operator reads from its stores, typed: policies, pods with admission records, and
//! ListenerReports; in namespace `shop` unless built with an `_in` variant.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::ObjectMeta;
use kubetune_crds::decision::{
    DecisionEntry, Outcome, PodDecision, PolicyRef, DECISION_ANNOTATION, DECISION_VERSION,
};
use kubetune_crds::facts::{ClusterFacts, NodeGroup};
use kubetune_crds::policy::{
    Delivery, DeliveryDecision, Mode, RestartPods, SysctlSetting, TuningPolicy, TuningPolicySpec,
};
use kubetune_crds::report::{
    Diagnosis, LimitedBy, ListenerReport, ListenerReportSpec, ListenerStatus,
};
use kubetune_crds::sysctl::KubeVersion;

pub use crate::admission::NS;

/// A uid unique in the cluster: `uid-<name>` in [`NS`], `uid-<namespace>-<name>` elsewhere.
pub fn uid(namespace: &str, name: &str) -> String {
    if namespace == NS {
        format!("uid-{name}")
    } else {
        format!("uid-{namespace}-{name}")
    }
}

/// 2025-01-01T00:00:00Z plus `secs`.
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_735_689_600 + secs).unwrap()
}

/// A label map.
pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Facts: Kubernetes 1.31, every node allows net.core.somaxconn.
pub fn facts_allowing_somaxconn() -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: vec![NodeGroup {
            name: "all".into(),
            node_selector: BTreeMap::new(),
            allowed_unsafe_sysctls: vec!["net.core.somaxconn".into()],
        }],
        tuning_cni: None,
        ..Default::default()
    }
}

/// Facts: no unsafe sysctl allowed, no tuning CNI.
pub fn facts_strict() -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: vec![NodeGroup {
            name: "all".into(),
            node_selector: BTreeMap::new(),
            allowed_unsafe_sysctls: vec![],
        }],
        tuning_cni: None,
        ..Default::default()
    }
}

/// Policy `name` in [`NS`] selecting `app=<app>`, asking for `sysctls` (enforced, automatic
/// delivery, 300 s verification window).
pub fn policy(name: &str, generation: i64, app: &str, sysctls: &[(&str, &str)]) -> TuningPolicy {
    policy_in(NS, name, generation, app, sysctls)
}

/// [`policy`] in `namespace`.
pub fn policy_in(
    namespace: &str,
    name: &str,
    generation: i64,
    app: &str,
    sysctls: &[(&str, &str)],
) -> TuningPolicy {
    let mut p = TuningPolicy::new(
        name,
        TuningPolicySpec {
            pod_selector: LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            sysctls: Some(
                sysctls
                    .iter()
                    .map(|(n, v)| SysctlSetting {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            ),
            preset: None,
            delivery: Delivery::Auto,
            mode: Mode::Enforce,
            restart_pods: RestartPods::Never,
            priority: 0,
            verification_window_seconds: Some(300),
        },
    );
    p.metadata.namespace = Some(namespace.into());
    p.metadata.generation = Some(generation);
    p.metadata.uid = Some(uid(namespace, name));
    p.metadata.creation_timestamp = Some(Time(t(0)));
    p
}

/// `p` in DryRun mode.
pub fn dry_run(mut p: TuningPolicy) -> TuningPolicy {
    p.spec.mode = Mode::DryRun;
    p
}

/// One admission-record line.
pub struct E<'a> {
    pub policy: &'a str,
    pub generation: i64,
    pub sysctl: &'a str,
    pub value: &'a str,
    pub outcome: Outcome,
    pub reason: &'a str,
}

/// An `Injected` record line (reason AllowedUnsafeSysctl).
pub fn injected<'a>(policy: &'a str, generation: i64, sysctl: &'a str, value: &'a str) -> E<'a> {
    E {
        policy,
        generation,
        sysctl,
        value,
        outcome: Outcome::Injected,
        reason: "AllowedUnsafeSysctl",
    }
}

/// `e` with another outcome and reason.
pub fn with_outcome<'a>(mut e: E<'a>, outcome: Outcome, reason: &'a str) -> E<'a> {
    e.outcome = outcome;
    e.reason = reason;
    e
}

/// The decision annotation recording `entries`.
pub fn decision(entries: &[E]) -> String {
    let mut refs: Vec<PolicyRef> = entries
        .iter()
        .map(|e| PolicyRef {
            name: e.policy.into(),
            generation: e.generation,
        })
        .collect();
    refs.sort();
    refs.dedup();
    PodDecision {
        version: DECISION_VERSION,
        policies: refs,
        node_affinity: vec![],
        entries: entries
            .iter()
            .map(|e| DecisionEntry {
                policy: e.policy.into(),
                generation: e.generation,
                sysctl: e.sysctl.into(),
                value: e.value.into(),
                outcome: e.outcome,
                delivery: matches!(e.outcome, Outcome::Injected | Outcome::WouldInject)
                    .then_some(DeliveryDecision::PodSecurityContext),
                reason: e.reason.into(),
                message: format!("{} {}", e.reason, e.sysctl),
            })
            .collect(),
    }
    .to_annotation()
}

/// A Running pod started at `started` (seconds after t(0)), with an optional admission record.
pub fn pod(name: &str, app: &str, started: i64, record: Option<&[E]>) -> Pod {
    pod_in(NS, name, app, started, record)
}

/// [`pod`] in `namespace`.
pub fn pod_in(namespace: &str, name: &str, app: &str, started: i64, record: Option<&[E]>) -> Pod {
    let annotations =
        record.map(|r| BTreeMap::from([(DECISION_ANNOTATION.to_string(), decision(r))]));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid(namespace, name)),
            labels: Some(labels(&[("app", app), ("pod-template-hash", "5d4f8")])),
            annotations,
            creation_timestamp: Some(Time(t(started))),
            ..Default::default()
        },
        // The webhook's patch: the injected values are in the spec (the spec proves "applied").
        spec: Some(PodSpec {
            security_context: record.map(spec_sysctls),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            start_time: Some(Time(t(started))),
            ..Default::default()
        }),
    }
}

/// `securityContext.sysctls` with the `Injected` entries of `record`.
fn spec_sysctls(record: &[E]) -> k8s_openapi::api::core::v1::PodSecurityContext {
    let sysctls = record
        .iter()
        .filter(|e| e.outcome == Outcome::Injected)
        .map(|e| k8s_openapi::api::core::v1::Sysctl {
            name: e.sysctl.into(),
            value: e.value.into(),
        })
        .collect();
    k8s_openapi::api::core::v1::PodSecurityContext {
        sysctls: Some(sysctls),
        ..Default::default()
    }
}

/// [`pod`] whose spec lacks the sysctls its record says were injected (an annotation copied
/// from another pod while the webhook was unavailable).
pub fn pod_with_copied_record(name: &str, app: &str, started: i64, record: &[E]) -> Pod {
    let mut p = pod(name, app, started, Some(record));
    p.spec = Some(PodSpec::default());
    p
}

/// A pod of `app` created with `record` that the kubelet on `node` rejected:
/// `Failed`/`SysctlForbidden` for `sysctl`.
pub fn forbidden_pod(name: &str, app: &str, node: &str, sysctl: &str, record: &[E]) -> Pod {
    let mut p = pod(name, app, 0, Some(record));
    if let Some(s) = p.spec.as_mut() {
        s.node_name = Some(node.into());
    }
    p.status = Some(PodStatus {
        phase: Some("Failed".into()),
        reason: Some("SysctlForbidden".into()),
        message: Some(format!(
            "Pod forbidden sysctl: \"{sysctl}\" not allowlisted"
        )),
        ..Default::default()
    });
    p
}

/// What a [`report`] says about a pod's one listener (`0.0.0.0:8080`, nginx in container web).
pub struct R {
    pub somaxconn: i64,
    pub diagnosis: Diagnosis,
    pub recent: i64,
    pub total: i64,
    pub window: i64,
    pub observed_at: i64,
    pub requested_backlog: Option<i64>,
}

impl Default for R {
    fn default() -> Self {
        R {
            somaxconn: 8192,
            diagnosis: Diagnosis::Healthy,
            recent: 0,
            total: 0,
            window: 300,
            observed_at: 0,
            requested_backlog: Some(511),
        }
    }
}

/// The ListenerReport of pod `pod_name` in [`NS`] on node-1 (sock-diag).
pub fn report(pod_name: &str, r: R) -> ListenerReport {
    report_in(NS, pod_name, r)
}

/// [`report`] of a pod in `namespace`.
pub fn report_in(namespace: &str, pod_name: &str, r: R) -> ListenerReport {
    let limited_by = match r.requested_backlog {
        Some(b) if b > r.somaxconn => LimitedBy::Somaxconn,
        Some(_) => LimitedBy::ApplicationBacklog,
        None => LimitedBy::Unknown,
    };
    let effective = r
        .requested_backlog
        .map_or(r.somaxconn, |b| b.min(r.somaxconn));
    let mut rep = ListenerReport::new(
        pod_name,
        ListenerReportSpec {
            pod_uid: uid(namespace, pod_name),
            node_name: NODE.into(),
            somaxconn: Some(r.somaxconn),
            sysctls: BTreeMap::from([("net.core.somaxconn".into(), r.somaxconn.to_string())]),
            listener_count: 1,
            overflows_total: r.total,
            overflows_recent: r.recent,
            listeners: vec![ListenerStatus {
                address: "0.0.0.0".into(),
                port: 8080,
                requested_backlog: r.requested_backlog,
                effective_backlog: effective,
                queue_now: 0,
                queue_max: effective,
                overflows_total: r.total,
                overflows_recent: r.recent,
                limited_by,
                diagnosis: r.diagnosis,
                process: Some("nginx".into()),
                container: Some("web".into()),
            }],
            diagnosis: r.diagnosis,
            window_seconds: r.window,
            source: "sock-diag".into(),
            observed_at: t(r.observed_at).to_string(),
        },
    );
    rep.metadata.namespace = Some(namespace.into());
    rep
}

/// `s` seconds.
pub fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

/// The node of every [`report`].
pub const NODE: &str = "node-1";

/// A heartbeat of `node`'s agent renewed at `renewed` (30 s lease), watching since `since`.
pub fn heartbeat(renewed: i64, since: i64) -> kubetune_crds::heartbeat::Heartbeat {
    kubetune_crds::heartbeat::Heartbeat {
        holder: "kubetune-agent-x".into(),
        renewed: t(renewed),
        duration: secs(30),
        watching_since: t(since),
    }
}

/// `node`'s agent Lease in `kubetune-system` as the agent writes it (30 s lease).
pub fn agent_lease(
    node: &str,
    renewed: i64,
    since: i64,
) -> k8s_openapi::api::coordination::v1::Lease {
    let body = kubetune_crds::heartbeat::lease_body(
        "kubetune-system",
        node,
        "kubetune-agent-x",
        30,
        t(renewed),
        t(since),
    );
    serde_json::from_value(body).expect("a Lease")
}

/// [`NODE`]'s agent watching without a gap since long before and after every time the tests use
/// (renewed at t(100000), watching since t(-100000)): the agents' heartbeats of a healthy
/// cluster.
pub fn agents_watching() -> BTreeMap<String, kubetune_crds::heartbeat::Heartbeat> {
    BTreeMap::from([(NODE.to_string(), heartbeat(100_000, -100_000))])
}
