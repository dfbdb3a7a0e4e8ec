//! Scale benchmark (not a timed test): recompute the status of 200 TuningPolicies over 10,000
//! pods and 10,000 ListenerReports held in kube-runtime reflector stores, the way the reconciler
//! reads them. Prints seconds and peak RSS. Targets: <= 1 s, <= 200 MiB.
//!
//! `cargo bench -p kubetune-operator --bench status`

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kubetune_crds::decision::{
    DecisionEntry, Outcome, PodDecision, PolicyRef, DECISION_ANNOTATION,
};
use kubetune_crds::facts::{ClusterFacts, NodeGroup};
use kubetune_crds::policy::{DeliveryDecision, SysctlSetting, TuningPolicy, TuningPolicySpec};
use kubetune_crds::report::{Diagnosis, ListenerReport, ListenerReportSpec};
use kubetune_crds::sysctl::KubeVersion;
use kubetune_operator::status::evaluate;
use kubetune_operator::Environment;

const NAMESPACES: usize = 20;
const POLICIES_PER_NS: usize = 10;
const PODS_PER_POLICY: usize = 50; // 20 * 10 * 50 = 10,000 pods

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_735_689_600 + s).unwrap()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let t0 = Instant::now();
    let (policies, mut pw) = reflector::store::<TuningPolicy>();
    let (pods, mut podw) = reflector::store::<Pod>();
    let (reports, mut rw) = reflector::store::<ListenerReport>();
    let diagnoses = [
        Diagnosis::Healthy,
        Diagnosis::Healthy,
        Diagnosis::SomaxconnBound,
        Diagnosis::ApplicationBacklogBound,
        Diagnosis::SlowAccept,
    ];
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        for p in 0..POLICIES_PER_NS {
            let app = format!("app-{p}");
            let name = format!("policy-{p}");
            let mut pol = TuningPolicy::new(
                &name,
                TuningPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".to_string(), app.clone())])),
                        ..Default::default()
                    },
                    sysctls: Some(vec![
                        SysctlSetting {
                            name: "net.core.somaxconn".into(),
                            value: "8192".into(),
                        },
                        SysctlSetting {
                            name: "net.ipv4.tcp_keepalive_time".into(),
                            value: "600".into(),
                        },
                    ]),
                    preset: None,
                    delivery: Default::default(),
                    mode: Default::default(),
                    priority: 0,
                    verification_window_seconds: Some(300),
                },
            );
            pol.metadata.namespace = Some(ns.clone());
            pol.metadata.generation = Some(1);
            pol.metadata.uid = Some(format!("{ns}-{name}"));
            pw.apply_watcher_event(&watcher::Event::Apply(pol));
            for i in 0..PODS_PER_POLICY {
                let pod_name = format!("{app}-{i}");
                // Every 10th pod predates the policy (no record).
                let record = (i % 10 != 0).then(|| {
                    PodDecision {
                        version: 1,
                        policies: vec![PolicyRef {
                            name: name.clone(),
                            generation: 1,
                        }],
                        entries: [
                            ("net.core.somaxconn", "8192"),
                            ("net.ipv4.tcp_keepalive_time", "600"),
                        ]
                        .iter()
                        .map(|(s, v)| DecisionEntry {
                            policy: name.clone(),
                            generation: 1,
                            sysctl: s.to_string(),
                            value: v.to_string(),
                            outcome: Outcome::Injected,
                            delivery: Some(DeliveryDecision::PodSecurityContext),
                            reason: "AllowedUnsafeSysctl".into(),
                            message:
                                "every node the pod may run on lists it in allowedUnsafeSysctls"
                                    .into(),
                        })
                        .collect(),
                    }
                    .to_annotation()
                });
                let pod = Pod {
                    metadata: ObjectMeta {
                        name: Some(pod_name.clone()),
                        namespace: Some(ns.clone()),
                        uid: Some(format!("{ns}-{pod_name}")),
                        labels: Some(BTreeMap::from([
                            ("app".to_string(), app.clone()),
                            ("pod-template-hash".to_string(), "7c9d5".to_string()),
                        ])),
                        annotations: record
                            .map(|r| BTreeMap::from([(DECISION_ANNOTATION.to_string(), r)])),
                        creation_timestamp: Some(Time(ts(0))),
                        ..Default::default()
                    },
                    spec: Some(PodSpec::default()),
                    status: Some(PodStatus {
                        phase: Some("Running".into()),
                        start_time: Some(Time(ts(0))),
                        ..Default::default()
                    }),
                };
                podw.apply_watcher_event(&watcher::Event::Apply(pod));
                let d = diagnoses[i % diagnoses.len()];
                let overflowing = d != Diagnosis::Healthy;
                let mut rep = ListenerReport::new(
                    &pod_name,
                    ListenerReportSpec {
                        pod_uid: format!("{ns}-{pod_name}"),
                        node_name: format!("node-{}", i % 50),
                        somaxconn: Some(8192),
                        sysctls: BTreeMap::from([
                            ("net.core.somaxconn".to_string(), "8192".to_string()),
                            ("net.ipv4.tcp_keepalive_time".to_string(), "600".to_string()),
                        ]),
                        listener_count: 1,
                        overflows_total: if overflowing { 10 } else { 0 },
                        overflows_recent: if overflowing { 10 } else { 0 },
                        listeners: vec![],
                        diagnosis: d,
                        window_seconds: 300,
                        source: "ebpf-tracepoint".into(),
                        observed_at: ts(10).to_string(),
                    },
                );
                rep.metadata.namespace = Some(ns.clone());
                rw.apply_watcher_event(&watcher::Event::Apply(rep));
            }
        }
    }
    let facts = ClusterFacts {
        kubernetes_version: KubeVersion::new(1, 31),
        node_groups: vec![NodeGroup {
            name: "all".into(),
            node_selector: BTreeMap::new(),
            allowed_unsafe_sysctls: vec!["net.core.somaxconn".into()],
        }],
        tuning_cni: None,
    };
    let build = t0.elapsed().as_secs_f64();
    println!(
        "stores: {} policies, {} pods, {} reports (built in {build:.2} s)",
        policies.len(),
        pods.len(),
        reports.len()
    );

    let run = |policies: &Store<TuningPolicy>| {
        let start = Instant::now();
        let mut sums = (0, 0, 0, 0, 0);
        for p in policies.state() {
            // Exactly what `controller::reconcile` does per policy.
            let ns = p.metadata.namespace.clone().unwrap();
            let ps = pods.state_filter(|x| x.metadata.namespace.as_deref() == Some(ns.as_str()));
            let rs = reports.state_filter(|x| x.metadata.namespace.as_deref() == Some(ns.as_str()));
            let e = evaluate(
                &p,
                ps.iter().map(|x| x.as_ref()),
                rs.iter().map(|x| x.as_ref()),
                &facts,
                &Environment::default(),
                ts(1000),
            );
            let s = e.status;
            sums.0 += s.matched_pods;
            sums.1 += s.applied_pods;
            sums.2 += s.verified_pods;
            sums.3 += s.overflowing_pods;
            sums.4 += s.needs_restart_pods;
        }
        (start.elapsed().as_secs_f64(), sums)
    };
    let (first, sums) = run(&policies);
    let mut best = first;
    for _ in 0..4 {
        best = best.min(run(&policies).0);
    }
    println!(
        "totals: matched {} applied {} verified {} overflowing {} needsRestart {}",
        sums.0, sums.1, sums.2, sums.3, sums.4
    );
    assert_eq!(sums.0, 10_000);
    assert_eq!(sums.1, 9_000);
    assert_eq!(sums.4, 1_000);
    println!("recompute all 200 policy statuses: first {first:.3} s, best of 5 {best:.3} s (target <= 1 s)");
    println!("peak RSS: {:.1} MiB (target <= 200 MiB)", peak_rss_mib());
}
