//! `kubectl kubetune why POD`: one pod's story — the policies that select it, what admission
//! decided for each sysctl (the `kubetune.dev/decision` annotation), what the agent observed
//! in the pod's network namespace (its ListenerReport), each policy's verdict (its status
//! conditions), and, in plain words, what that means and what to do next.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{Outcome, PodDecision, DECISION_ANNOTATION};
use kubetune_crds::policy::{desired_sysctls, DeliveryDecision};
use kubetune_crds::report::{Diagnosis, ListenerReport, ListenerStatus};
use kubetune_crds::TuningPolicy;
use serde::Serialize;

const SOMAXCONN: &str = "net.core.somaxconn";

/// Everything `why` knows about one pod.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Why {
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    /// The policies selecting the pod now, in precedence order.
    pub policies: Vec<PolicyView>,
    /// The admission decision recorded on the pod.
    pub decision: DecisionView,
    /// The agent's observation of the pod's netns (absent: no report for this pod yet).
    pub observed: Option<Observed>,
    /// What it means, in plain words.
    pub verdict: String,
    /// What to do next.
    pub next_step: String,
}

/// A policy selecting the pod, and its verdict.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub priority: i32,
    pub mode: String,
    /// The sysctls it asks for.
    pub sysctls: BTreeMap<String, String>,
    pub phase: Option<String>,
    pub conditions: Vec<ConditionView>,
}

/// One status condition.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The `kubetune.dev/decision` annotation, read.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    /// `present`, `absent` (the webhook never decided about this pod: created before kubetune,
    /// the webhook was down, or the namespace is excluded) or `malformed`.
    pub state: &'static str,
    pub error: Option<String>,
    pub sysctls: Vec<SysctlView>,
}

/// One (policy, sysctl) of the decision with the value the agent observed.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SysctlView {
    pub policy: String,
    pub sysctl: String,
    pub value: String,
    pub outcome: Outcome,
    pub delivery: Option<DeliveryDecision>,
    pub reason: String,
    pub message: String,
    /// Value in the pod's netns, as the agent read it.
    pub observed: Option<String>,
}

/// What the agent saw in the pod's network namespace.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    pub source: String,
    pub observed_at: String,
    pub window_seconds: i64,
    pub somaxconn: Option<i64>,
    pub sysctls: BTreeMap<String, String>,
    pub overflows_total: i64,
    pub overflows_recent: i64,
    pub diagnosis: Diagnosis,
    pub listeners: Vec<ListenerStatus>,
    /// The operator's ready-made TuningPolicy, when no policy selects an overflowing pod.
    pub recommendation: Option<String>,
}

/// Builds the story of `pod` from its namespace's `policies` (any namespace is fine: only the
/// pod's are considered) and its ListenerReport (ignored if it describes another pod UID).
pub fn explain(pod: &Pod, policies: &[TuningPolicy], report: Option<&ListenerReport>) -> Why {
    let meta = &pod.metadata;
    let observed = report
        .filter(|r| Some(&r.spec.pod_uid) == meta.uid.as_ref())
        .map(observed);
    let mut why = Why {
        namespace: meta.namespace.clone().unwrap_or_default(),
        pod: meta.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        policies: kubetune_crds::matching::matching_policies(pod, policies)
            .into_iter()
            .map(policy_view)
            .collect(),
        decision: decision_view(pod, observed.as_ref()),
        observed,
        verdict: String::new(),
        next_step: String::new(),
    };
    (why.verdict, why.next_step) = advise(&why);
    why
}

fn observed(r: &ListenerReport) -> Observed {
    Observed {
        source: r.spec.source.clone(),
        observed_at: r.spec.observed_at.clone(),
        window_seconds: r.spec.window_seconds,
        somaxconn: r.spec.somaxconn,
        sysctls: r.spec.sysctls.clone(),
        overflows_total: r.spec.overflows_total,
        overflows_recent: r.spec.overflows_recent,
        diagnosis: r.spec.diagnosis,
        listeners: r.spec.listeners.clone(),
        recommendation: r.status.as_ref().and_then(|s| s.recommendation.clone()),
    }
}

fn policy_view(p: &TuningPolicy) -> PolicyView {
    let status = p.status.as_ref();
    PolicyView {
        name: p.metadata.name.clone().unwrap_or_default(),
        priority: p.spec.priority,
        mode: format!("{:?}", p.spec.mode),
        sysctls: desired_sysctls(&p.spec),
        phase: status.and_then(|s| s.phase.clone()),
        conditions: status
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| ConditionView {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The value of `sysctl` in the observed netns.
fn observed_value(o: Option<&Observed>, sysctl: &str) -> Option<String> {
    let o = o?;
    if sysctl == SOMAXCONN {
        o.somaxconn.map(|v| v.to_string())
    } else {
        o.sysctls.get(sysctl).cloned()
    }
}

fn decision_view(pod: &Pod, o: Option<&Observed>) -> DecisionView {
    let raw = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DECISION_ANNOTATION));
    let Some(raw) = raw else {
        return DecisionView {
            state: "absent",
            error: None,
            sysctls: vec![],
        };
    };
    match PodDecision::parse(raw) {
        Err(e) => DecisionView {
            state: "malformed",
            error: Some(e.to_string()),
            sysctls: vec![],
        },
        Ok(d) => DecisionView {
            state: "present",
            error: None,
            sysctls: d
                .entries
                .into_iter()
                .map(|e| SysctlView {
                    observed: observed_value(o, &e.sysctl),
                    policy: e.policy,
                    sysctl: e.sysctl,
                    value: e.value,
                    outcome: e.outcome,
                    delivery: e.delivery,
                    reason: e.reason,
                    message: e.message,
                })
                .collect(),
        },
    }
}

/// The listener the verdict is about: the worst diagnosis, then the most recent overflows.
fn worst(o: &Observed) -> Option<&ListenerStatus> {
    o.listeners.iter().max_by_key(|l| {
        (
            l.diagnosis == o.diagnosis,
            l.overflows_recent,
            l.overflows_total,
        )
    })
}

/// Verdict and next step, in plain words.
pub fn advise(w: &Why) -> (String, String) {
    let unadmitted: Vec<&str> = w
        .policies
        .iter()
        .filter(|p| !w.decision.sysctls.iter().any(|e| e.policy == p.name))
        .map(|p| p.name.as_str())
        .collect();
    let overflowing = w
        .observed
        .as_ref()
        .is_some_and(|o| o.diagnosis.is_problem());
    if !unadmitted.is_empty() && !overflowing {
        return (
            format!(
                "policy {} selects this pod, but the pod was admitted before it (or without the kubetune webhook), so it has none of its sysctls",
                unadmitted.join(", ")
            ),
            "recreate the pod (e.g. kubectl rollout restart deployment/NAME) so admission injects them".into(),
        );
    }
    let Some(o) = &w.observed else {
        let node = w.node.as_deref().unwrap_or("<not scheduled>");
        return (
            format!("the kubetune agent has not reported on this pod yet (no ListenerReport {}/{} for its UID)", w.namespace, w.pod),
            format!("wait a scan interval; check the agent on node {node}: kubectl -n kubetune-system get pods -l app.kubernetes.io/name=kubetune-agent --field-selector spec.nodeName={node} (hostNetwork pods get no report)"),
        );
    };
    let l = worst(o);
    let somaxconn = o.somaxconn.map_or("?".into(), |v| v.to_string());
    match (o.diagnosis, l) {
        (Diagnosis::SomaxconnBound, Some(l)) => somaxconn_bound(w, o, l),
        (Diagnosis::ApplicationBacklogBound, Some(l)) => (
            format!(
                "port {} drops connections because the application's own listen() backlog ({}) is the limit, not net.core.somaxconn ({somaxconn}); a sysctl does not help",
                l.port,
                l.requested_backlog.map_or("?".into(), |v| v.to_string())
            ),
            format!("raise the application's backlog (nginx `listen {} backlog=N`, uwsgi --listen N, Java ServerSocket backlog) up to {somaxconn}, then roll the pods", l.port),
        ),
        (Diagnosis::SlowAccept, Some(l)) => (
            format!(
                "port {}'s accept queue sits near full (max {} of {}) although the backlog is generous: the application does not accept connections fast enough",
                l.port, l.queue_max, l.effective_backlog
            ),
            "look at the application (slow I/O, blocked or too few workers); no sysctl fixes this".into(),
        ),
        _ => healthy(w, o),
    }
}

fn healthy(w: &Why, o: &Observed) -> (String, String) {
    let mut verdict = format!(
        "no accept-queue overflows in the last {}s on {} listener(s)",
        o.window_seconds,
        o.listeners.len()
    );
    let injected: Vec<&SysctlView> = w
        .decision
        .sysctls
        .iter()
        .filter(|s| s.outcome == Outcome::Injected)
        .collect();
    let missing: Vec<String> = injected
        .iter()
        .filter(|s| s.observed.as_deref().is_some_and(|v| v != s.value))
        .map(|s| {
            format!(
                "{} (injected {}, observed {})",
                s.sysctl,
                s.value,
                s.observed.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if !missing.is_empty() {
        return (
            format!("{verdict}, but the pod's netns does not have {}", missing.join(", ")),
            "check the delivery (tuning-CNI attachment, kubelet allowedUnsafeSysctls) and recreate the pod".into(),
        );
    }
    if !injected.is_empty() {
        verdict.push_str("; the injected sysctls are in place in the pod's netns");
    }
    (verdict, "nothing to do".into())
}

fn somaxconn_bound(w: &Why, o: &Observed, l: &ListenerStatus) -> (String, String) {
    let s = o.somaxconn.map_or("?".into(), |v| v.to_string());
    let what = format!(
        "port {} drops connections because net.core.somaxconn ({s}) caps the backlog the application asks for ({})",
        l.port,
        l.requested_backlog.map_or("?".into(), |v| v.to_string())
    );
    let entry = |o: Outcome| {
        w.decision
            .sysctls
            .iter()
            .find(|e| e.sysctl == SOMAXCONN && e.outcome == o)
    };
    if let Some(e) = entry(Outcome::Injected) {
        return (
            format!("{what}, although policy {} injected {}={}", e.policy, SOMAXCONN, e.value),
            "the value did not reach the pod's netns: check the delivery (tuning-CNI attachment, kubelet allowedUnsafeSysctls) and recreate the pod".into(),
        );
    }
    if let Some(e) = entry(Outcome::Refused) {
        use kubetune_crds::reason;
        let next = match e.reason.as_str() {
            reason::REFUSED_UNSAFE_SYSCTL => "allow net.core.somaxconn in the kubelets' allowedUnsafeSysctls and list it for the node group in the cluster facts (or enable tuning-CNI delivery), then recreate the pod",
            reason::REFUSED_HOST_NAMESPACE => "a hostNetwork pod shares the node's network namespace: tune the node, not the pod",
            reason::REFUSED_BY_POD_SECURITY => "the namespace's PodSecurity level forbids unsafe sysctls: use tuning-CNI delivery or relax the level",
            _ => "fix what the reason says, then recreate the pod",
        };
        return (
            format!(
                "{what}; kubetune refused to raise it ({}: {})",
                e.reason, e.message
            ),
            next.into(),
        );
    }
    if let Some(e) = entry(Outcome::WouldInject) {
        return (
            format!(
                "{what}; policy {} is DryRun and would set {}={}",
                e.policy, SOMAXCONN, e.value
            ),
            format!(
                "set mode: Enforce on policy {}, then recreate the pod",
                e.policy
            ),
        );
    }
    let wanting: Vec<&str> = w
        .policies
        .iter()
        .filter(|p| p.sysctls.contains_key(SOMAXCONN))
        .map(|p| p.name.as_str())
        .collect();
    if !wanting.is_empty() {
        return (
            format!(
                "{what}; policy {} sets it but the pod was admitted before it",
                wanting.join(", ")
            ),
            "recreate the pod (e.g. kubectl rollout restart) so admission injects the sysctl"
                .into(),
        );
    }
    let next = if o.recommendation.is_some() {
        format!("apply the recommended policy, then recreate the pod: kubectl -n {} get listenerreport {} -o jsonpath='{{.status.recommendation}}' | kubectl apply -f -", w.namespace, w.pod)
    } else {
        "apply a TuningPolicy raising net.core.somaxconn that selects this pod, then recreate the pod".into()
    };
    (
        format!("{what}; no TuningPolicy raising it selects this pod"),
        next,
    )
}

/// Plain-text rendering.
pub fn render(w: &Why) -> String {
    let mut s = format!(
        "Pod {}/{} on node {}\n\n",
        w.namespace,
        w.pod,
        w.node.as_deref().unwrap_or("<not scheduled>")
    );
    s += &render_policies(w);
    s += &render_decision(&w.decision);
    s += &render_observed(w.observed.as_ref());
    s += &format!("\nVerdict:   {}\nNext step: {}\n", w.verdict, w.next_step);
    s
}

fn render_policies(w: &Why) -> String {
    if w.policies.is_empty() {
        return "Policies selecting it: none\n".into();
    }
    let mut s = format!("Policies selecting it ({}):\n", w.policies.len());
    for p in &w.policies {
        let sysctls: Vec<String> = p.sysctls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s += &format!(
            "  {}  priority {}, {}, wants {}; phase {}\n",
            p.name,
            p.priority,
            p.mode,
            sysctls.join(" "),
            p.phase.as_deref().unwrap_or("<no status yet>")
        );
        for c in &p.conditions {
            s += &format!(
                "    {}={} ({}): {}\n",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    s
}

fn render_decision(d: &DecisionView) -> String {
    match d.state {
        "absent" => "\nAdmission decision: none recorded (the pod was admitted without the kubetune webhook: created before the policy or kubetune, the webhook was unreachable, or the namespace is excluded)\n".into(),
        "malformed" => format!("\nAdmission decision: unreadable ({})\n", d.error.as_deref().unwrap_or_default()),
        _ if d.sysctls.is_empty() => "\nAdmission decision: no policy matched at admission\n".into(),
        _ => {
            let mut s = "\nAdmission decision (kubetune.dev/decision):\n".to_string();
            for e in &d.sysctls {
                let how = match (e.outcome, e.delivery) {
                    (Outcome::Injected, Some(DeliveryDecision::TuningCni)) => "injected via tuning CNI".into(),
                    (Outcome::Injected, _) => "injected via securityContext".into(),
                    (Outcome::WouldInject, _) => "would be injected (DryRun)".into(),
                    (o, _) => format!("{o:?}").to_lowercase(),
                };
                s += &format!(
                    "  {}={}  {how} by {} [{}], observed {}: {}\n",
                    e.sysctl,
                    e.value,
                    e.policy,
                    e.reason,
                    e.observed.as_deref().unwrap_or("-"),
                    e.message
                );
            }
            s
        }
    }
}

fn render_observed(o: Option<&Observed>) -> String {
    let Some(o) = o else {
        return "\nObserved by the agent: no ListenerReport for this pod yet\n".into();
    };
    let mut s = format!(
        "\nObserved by the agent ({}, {}, window {}s): somaxconn {}, {} listener(s), {} overflows ({} in the window), diagnosis {:?}\n",
        o.source,
        o.observed_at,
        o.window_seconds,
        o.somaxconn.map_or("?".into(), |v| v.to_string()),
        o.listeners.len(),
        o.overflows_total,
        o.overflows_recent,
        o.diagnosis
    );
    let rows: Vec<Vec<String>> = o
        .listeners
        .iter()
        .map(|l| {
            vec![
                format!("{}:{}", l.address, l.port),
                l.container
                    .clone()
                    .or_else(|| l.process.clone())
                    .unwrap_or("-".into()),
                l.requested_backlog.map_or("?".into(), |v| v.to_string()),
                l.effective_backlog.to_string(),
                format!("{}/{}", l.queue_now, l.queue_max),
                format!("{}/{}", l.overflows_total, l.overflows_recent),
                format!("{:?}", l.limited_by),
                format!("{:?}", l.diagnosis),
            ]
        })
        .collect();
    s += &crate::top::table(
        &[
            "LISTENER",
            "CONTAINER",
            "REQUESTED",
            "EFFECTIVE",
            "QUEUE/MAX",
            "OVERFLOWS/RECENT",
            "LIMITED BY",
            "DIAGNOSIS",
        ],
        &rows,
        "  ",
    );
    s
}
