//! Table-driven tests of the pure status computation.

mod fixtures;

use fixtures::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubetune_crds::decision::{Outcome, SKIP_ANNOTATION};
use kubetune_crds::facts::{ClusterFacts, PodContext, TuningCni};
use kubetune_crds::policy::{
    condition, Delivery, DeliveryDecision, TuningPolicy, TuningPolicyStatus,
};
use kubetune_crds::report::{Diagnosis, ListenerReport};
use kubetune_crds::sysctl::{KubeVersion, PodSecurityLevel, Preset};
use kubetune_operator::status::{
    compute_status, evaluate, find_condition, Environment, Observation, PodState,
};

const SOMAXCONN: &str = "net.core.somaxconn";

struct Case {
    name: &'static str,
    policy: TuningPolicy,
    pods: Vec<Pod>,
    reports: Vec<ListenerReport>,
    facts: ClusterFacts,
    env: Environment,
    now: i64,
    phase: &'static str,
    /// matched, applied, verified, overflowing, needsRestart
    counts: (i32, i32, i32, i32, i32),
    /// (status, reason) of Accepted, Applied, Verified
    accepted: (&'static str, &'static str),
    applied: (&'static str, &'static str),
    verified: (&'static str, &'static str),
}

/// No PodSecurity enforcement, NAD CRD served, the reports' node watched by its agent.
fn watched() -> Environment {
    Environment {
        agents: agents_watching(),
        ..Environment::default()
    }
}

fn web_policy() -> TuningPolicy {
    policy("web", 1, "web", &[(SOMAXCONN, "8192")])
}

fn injected_web() -> Vec<E<'static>> {
    vec![injected("web", 1, SOMAXCONN, "8192")]
}

fn base(name: &'static str) -> Case {
    Case {
        name,
        policy: web_policy(),
        pods: vec![pod("web-1", "web", 100, Some(&injected_web()))],
        reports: vec![report(
            "web-1",
            R {
                observed_at: 110,
                ..R::default()
            },
        )],
        facts: facts_allowing_somaxconn(),
        env: watched(),
        now: 100 + 301,
        phase: "Verified",
        counts: (1, 1, 1, 0, 0),
        accepted: ("True", "Accepted"),
        applied: ("True", "AllPodsApplied"),
        verified: ("True", "Verified"),
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();

    v.push(base(
        "somaxconn-bound pod: injected, observed, no overflows for the window",
    ));

    v.push(Case {
        now: 100 + 200,
        phase: "NotObservedYet",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "NotObservedYet"),
        ..base("window not elapsed since the pod started")
    });

    v.push(Case {
        reports: vec![],
        phase: "NotObservedYet",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "NotObservedYet"),
        ..base("no ListenerReport yet")
    });

    v.push(Case {
        reports: vec![{
            let mut r = report("web-1", R::default());
            r.spec.pod_uid = "uid-of-a-previous-pod".into();
            r
        }],
        phase: "NotObservedYet",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "NotObservedYet"),
        ..base("report of a previous pod with the same name is ignored")
    });

    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                diagnosis: Diagnosis::ApplicationBacklogBound,
                recent: 40,
                total: 40,
                requested_backlog: Some(100),
                observed_at: 390,
                ..R::default()
            },
        )],
        phase: "NotSysctlBound",
        counts: (1, 1, 0, 1, 0),
        verified: ("False", "ApplicationBacklogBound"),
        ..base("applied but the app's listen() backlog binds")
    });

    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                diagnosis: Diagnosis::SlowAccept,
                recent: 0,
                observed_at: 390,
                ..R::default()
            },
        )],
        phase: "NotSysctlBound",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "SlowAccept"),
        ..base("applied but the app accepts slowly")
    });

    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                diagnosis: Diagnosis::SomaxconnBound,
                recent: 7,
                total: 7,
                requested_backlog: Some(65535),
                observed_at: 390,
                ..R::default()
            },
        )],
        phase: "StillOverflowing",
        counts: (1, 1, 0, 1, 0),
        verified: ("False", "StillOverflowing"),
        ..base("applied, still somaxconn-bound and overflowing")
    });

    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                somaxconn: 4096,
                observed_at: 110,
                ..R::default()
            },
        )],
        phase: "NotObservedYet",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "ValueMismatch"),
        ..base("netns shows another value than injected: never verified from the patch")
    });

    v.push(Case {
        pods: vec![pod("web-1", "web", 100, None)],
        phase: "PodsNeedRestart",
        counts: (1, 0, 0, 0, 1),
        applied: ("False", "PodsNeedRestart"),
        verified: ("False", "PodsNeedRestart"),
        ..base("pod created before the policy (no admission record)")
    });

    v.push(Case {
        policy: policy("web", 2, "web", &[(SOMAXCONN, "16384")]),
        pods: vec![pod("web-1", "web", 100, Some(&injected_web()))],
        phase: "PodsNeedRestart",
        counts: (1, 0, 0, 0, 1),
        applied: ("False", "PodsNeedRestart"),
        verified: ("False", "PodsNeedRestart"),
        ..base("pod admitted at generation 1 values, policy now at generation 2 with a new value")
    });

    v.push(Case {
        policy: {
            let mut p = policy("web", 3, "web", &[(SOMAXCONN, "8192")]);
            p.spec.priority = 10;
            p
        },
        ..base("generation changed but not the values: pod still applied")
    });

    v.push(Case {
        pods: vec![
            pod("web-1", "web", 100, Some(&injected_web())),
            pod("web-2", "web", 100, None),
        ],
        phase: "PodsNeedRestart",
        counts: (2, 1, 1, 0, 1),
        applied: ("False", "PodsNeedRestart"),
        verified: ("True", "Verified"),
        ..base("one new pod verified, one old pod needs restart")
    });

    v.push(Case {
        policy: dry_run(web_policy()),
        pods: vec![pod(
            "web-1",
            "web",
            100,
            Some(&[with_outcome(
                injected("web", 1, SOMAXCONN, "8192"),
                Outcome::WouldInject,
                "AllowedUnsafeSysctl",
            )]),
        )],
        reports: vec![report(
            "web-1",
            R {
                somaxconn: 4096,
                diagnosis: Diagnosis::SomaxconnBound,
                recent: 3,
                total: 3,
                requested_backlog: Some(8192),
                observed_at: 390,
                ..R::default()
            },
        )],
        phase: "DryRun",
        counts: (1, 1, 0, 1, 0),
        applied: ("True", "AllPodsWouldInject"),
        verified: ("False", "DryRun"),
        ..base("DryRun: Applied counts WouldInject, never Verified")
    });

    v.push(Case {
        policy: dry_run(web_policy()),
        phase: "DryRun",
        counts: (1, 0, 0, 0, 0),
        applied: ("False", "NotApplied"),
        verified: ("False", "DryRun"),
        ..base("DryRun policy: an Injected record (from Enforce) does not count as WouldInject")
    });

    v.push(Case {
        policy: {
            let mut p = web_policy();
            p.spec.preset = Some(Preset::HighConnectionServer);
            p
        },
        phase: "Invalid",
        counts: (1, 0, 0, 0, 0),
        accepted: ("False", "InvalidSpec"),
        applied: ("False", "NotAccepted"),
        verified: ("False", "NotAccepted"),
        ..base("invalid spec: both sysctls and preset")
    });

    v.push(Case {
        policy: policy("web", 1, "web", &[("kernel.pid_max", "65536")]),
        pods: vec![],
        reports: vec![],
        phase: "Invalid",
        counts: (0, 0, 0, 0, 0),
        accepted: ("False", "InvalidSpec"),
        applied: ("False", "NotAccepted"),
        verified: ("False", "NotAccepted"),
        ..base("invalid spec: node-level sysctl")
    });

    v.push(Case {
        facts: facts_strict(),
        pods: vec![pod(
            "web-1",
            "web",
            100,
            Some(&[with_outcome(
                injected("web", 1, SOMAXCONN, "8192"),
                Outcome::Refused,
                "RefusedUnsafeSysctl",
            )]),
        )],
        phase: "Refused",
        counts: (1, 0, 0, 0, 0),
        accepted: ("False", "RefusedUnsafeSysctl"),
        applied: ("False", "NotAccepted"),
        verified: ("False", "NotAccepted"),
        ..base("unsafe sysctl the kubelets do not allow, no tuning CNI")
    });

    v.push(Case {
        env: Environment {
            namespace: PodContext {
                pod_security: Some((PodSecurityLevel::Baseline, KubeVersion::LATEST)),
                ..Default::default()
            },
            tuning_cni_crd: true,
            ..watched()
        },
        phase: "Refused",
        counts: (1, 1, 1, 0, 0),
        accepted: ("False", "RefusedByPodSecurity"),
        applied: ("False", "NotAccepted"),
        verified: ("False", "NotAccepted"),
        ..base("namespace enforces PodSecurity baseline: somaxconn refused")
    });

    v.push(Case {
        policy: {
            let mut p = web_policy();
            p.spec.delivery = Delivery::TuningCni;
            p
        },
        facts: ClusterFacts {
            tuning_cni: Some(TuningCni {
                network_name: "kubetune-tuning".into(),
            }),
            ..facts_strict()
        },
        env: Environment {
            tuning_cni_crd: false,
            ..watched()
        },
        phase: "Refused",
        counts: (1, 1, 1, 0, 0),
        accepted: ("False", "TuningCNIUnavailable"),
        applied: ("False", "NotAccepted"),
        verified: ("False", "NotAccepted"),
        ..base("tuning CNI chosen but the NAD CRD is not served")
    });

    v.push(Case {
        pods: vec![pod("api-1", "api", 100, None)],
        reports: vec![],
        phase: "NoMatchingPods",
        counts: (0, 0, 0, 0, 0),
        applied: ("False", "NoMatchingPods"),
        verified: ("False", "NoMatchingPods"),
        ..base("selector matches nothing")
    });

    v.push(Case {
        pods: {
            let mut other_ns = pod("web-9", "web", 100, None);
            other_ns.metadata.namespace = Some("other".into());
            let mut done = pod("web-8", "web", 100, None);
            done.status.as_mut().unwrap().phase = Some("Succeeded".into());
            let mut terminating = pod("web-7", "web", 100, None);
            terminating.metadata.deletion_timestamp = Some(Time(t(300)));
            let mut skipped = pod("web-6", "web", 100, None);
            skipped
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(SKIP_ANNOTATION.into(), "true".into());
            vec![
                pod("web-1", "web", 100, Some(&injected_web())),
                other_ns,
                done,
                terminating,
                skipped,
            ]
        },
        ..base("other namespace, finished, terminating and opted-out pods are not matched")
    });

    v.push(Case {
        pods: vec![pod(
            "web-1",
            "web",
            100,
            Some(&[with_outcome(
                injected("web", 1, SOMAXCONN, "8192"),
                Outcome::Refused,
                "RefusedHostNamespace",
            )]),
        )],
        phase: "Pending",
        counts: (1, 0, 0, 0, 0),
        applied: ("False", "RefusedHostNamespace"),
        verified: ("False", "NotApplied"),
        ..base("per-pod refusal (hostNetwork pod)")
    });

    v.push(Case {
        pods: vec![pod(
            "web-1",
            "web",
            100,
            Some(&[with_outcome(
                injected("web", 1, SOMAXCONN, "8192"),
                Outcome::PodValueKept,
                "PodValueKept",
            )]),
        )],
        phase: "Pending",
        counts: (1, 0, 0, 0, 0),
        applied: ("False", "PodValueKept"),
        verified: ("False", "NotApplied"),
        ..base("the pod sets the sysctl itself")
    });

    // Overflows seen early (total > 0), none in the report window: clean since
    // max(start, observedAt - window) = 400 - 300 = 100 -> verified from 400 on.
    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                total: 12,
                recent: 0,
                observed_at: 400,
                ..R::default()
            },
        )],
        now: 401,
        ..base("overflows before the report window, none within it")
    });
    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                total: 12,
                recent: 0,
                observed_at: 500,
                window: 60,
                ..R::default()
            },
        )],
        now: 700,
        phase: "NotObservedYet",
        counts: (1, 1, 0, 0, 0),
        verified: ("False", "NotObservedYet"),
        ..base("short agent window after overflows: clean since 440, not yet 300 s")
    });
    v.push(Case {
        reports: vec![report(
            "web-1",
            R {
                total: 12,
                recent: 0,
                observed_at: 500,
                window: 60,
                ..R::default()
            },
        )],
        now: 740,
        ..base("short agent window after overflows: clean since 440, verified at 740")
    });

    v
}

#[test]
fn status_table() {
    for c in cases() {
        let e = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(c.now));
        let s = &e.status;
        let got_counts = (
            s.matched_pods,
            s.applied_pods,
            s.verified_pods,
            s.overflowing_pods,
            s.needs_restart_pods,
        );
        assert_eq!(
            s.phase.as_deref(),
            Some(c.phase),
            "{}: phase; {s:#?}",
            c.name
        );
        assert_eq!(got_counts, c.counts, "{}: counts; {s:#?}", c.name);
        for (ty, want) in [
            (condition::ACCEPTED, c.accepted),
            (condition::APPLIED, c.applied),
            (condition::VERIFIED, c.verified),
        ] {
            let cond = find_condition(s, ty).unwrap_or_else(|| panic!("{}: no {ty}", c.name));
            assert_eq!(
                (cond.status.as_str(), cond.reason.as_str()),
                want,
                "{}: {ty} ({})",
                c.name,
                cond.message
            );
            assert_eq!(cond.observed_generation, c.policy.metadata.generation);
            assert!(!cond.message.is_empty(), "{}: {ty} has a message", c.name);
        }
        assert_eq!(s.observed_generation, c.policy.metadata.generation);
    }
}

#[test]
fn compute_status_is_evaluate_with_default_environment() {
    let c = base("x");
    let a = compute_status(&c.policy, &c.pods, &c.reports, &c.facts, t(c.now));
    let b = evaluate(
        &c.policy,
        &c.pods,
        &c.reports,
        &c.facts,
        &Environment::default(),
        t(c.now),
    )
    .status;
    assert_eq!(a, b);
}

#[test]
fn somaxconn_bound_pod_verifies_app_bound_pod_does_not() {
    // The demo's story: two pods, same policy value, different limits.
    let p = policy("backlog", 1, "shop", &[(SOMAXCONN, "4096")]);
    let web = pod(
        "web",
        "shop",
        0,
        Some(&[injected("backlog", 1, SOMAXCONN, "4096")]),
    );
    let api = pod(
        "api",
        "shop",
        0,
        Some(&[injected("backlog", 1, SOMAXCONN, "4096")]),
    );
    let reports = vec![
        report(
            "web",
            R {
                somaxconn: 4096,
                requested_backlog: Some(511),
                observed_at: 5,
                ..R::default()
            },
        ),
        report(
            "api",
            R {
                somaxconn: 4096,
                requested_backlog: Some(100),
                diagnosis: Diagnosis::ApplicationBacklogBound,
                recent: 25,
                total: 25,
                observed_at: 5,
                ..R::default()
            },
        ),
    ];
    let e = evaluate(
        &p,
        [&web, &api],
        &reports,
        &facts_allowing_somaxconn(),
        &watched(),
        t(400),
    );
    let by_name: std::collections::BTreeMap<_, _> =
        e.pods.iter().map(|v| (v.name.as_str(), &v.state)).collect();
    assert_eq!(by_name["web"], &PodState::Applied(Observation::Verified));
    assert_eq!(
        by_name["api"],
        &PodState::Applied(Observation::ApplicationBacklogBound)
    );
    assert_eq!(e.status.verified_pods, 1);
    let v = find_condition(&e.status, condition::VERIFIED).unwrap();
    assert_eq!(
        (v.status.as_str(), v.reason.as_str()),
        ("False", "ApplicationBacklogBound")
    );
    assert!(v.message.contains("api"), "{}", v.message);
    assert!(!v.message.contains("web,"), "{}", v.message);
}

#[test]
fn last_transition_time_kept_while_status_unchanged() {
    let mut c = base("ltt");
    c.now = 200; // not yet verified
    let s1 = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(200)).status;
    let ltt =
        |s: &TuningPolicyStatus, ty| find_condition(s, ty).unwrap().last_transition_time.clone();
    assert_eq!(ltt(&s1, condition::VERIFIED), Time(t(200)));

    // Same state later: every lastTransitionTime kept, status identical (no write needed).
    c.policy.status = Some(s1.clone());
    let s2 = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(250)).status;
    assert_eq!(s2, s1);

    // Verified flips at 401: only its lastTransitionTime moves.
    c.policy.status = Some(s2.clone());
    let s3 = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(401)).status;
    assert_eq!(ltt(&s3, condition::VERIFIED), Time(t(401)));
    assert_eq!(ltt(&s3, condition::ACCEPTED), Time(t(200)));
    assert_eq!(ltt(&s3, condition::APPLIED), Time(t(200)));
    // Reason change with the same status keeps the time too.
    let mut prev = s3.clone();
    for cnd in &mut prev.conditions {
        if cnd.type_ == condition::ACCEPTED {
            cnd.reason = "SomethingElse".into();
        }
    }
    c.policy.status = Some(prev);
    let s4 = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(500)).status;
    assert_eq!(ltt(&s4, condition::ACCEPTED), Time(t(200)));
}

#[test]
fn waiting_pod_gives_next_check() {
    let c = base("next");
    let e = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(200));
    assert_eq!(e.next_check, Some(t(400)));
    let e = evaluate(&c.policy, &c.pods, &c.reports, &c.facts, &c.env, t(401));
    assert_eq!(e.next_check, None);
}

#[test]
fn per_sysctl_delivery_and_refused_pods() {
    let mut p = policy(
        "web",
        1,
        "web",
        &[(SOMAXCONN, "8192"), ("net.ipv4.tcp_keepalive_time", "600")],
    );
    p.metadata.generation = Some(4);
    let host_net = pod(
        "web-h",
        "web",
        0,
        Some(&[
            with_outcome(
                injected("web", 4, SOMAXCONN, "8192"),
                Outcome::Refused,
                "RefusedHostNamespace",
            ),
            with_outcome(
                injected("web", 4, "net.ipv4.tcp_keepalive_time", "600"),
                Outcome::Refused,
                "RefusedHostNamespace",
            ),
        ]),
    );
    let ok = pod(
        "web-1",
        "web",
        0,
        Some(&[
            injected("web", 4, SOMAXCONN, "8192"),
            injected("web", 4, "net.ipv4.tcp_keepalive_time", "600"),
        ]),
    );
    let s = compute_status(&p, [&host_net, &ok], [], &facts_strict(), t(10));
    assert_eq!(s.summary.as_deref(), Some("net.core.somaxconn=8192 (+1)"));
    let by: std::collections::BTreeMap<_, _> =
        s.sysctls.iter().map(|x| (x.name.as_str(), x)).collect();
    assert_eq!(by[SOMAXCONN].delivery, DeliveryDecision::Refused);
    assert_eq!(by[SOMAXCONN].reason, "RefusedUnsafeSysctl");
    assert_eq!(by[SOMAXCONN].refused_pods, 1);
    assert_eq!(
        by["net.ipv4.tcp_keepalive_time"].delivery,
        DeliveryDecision::PodSecurityContext
    );
    assert_eq!(by["net.ipv4.tcp_keepalive_time"].reason, "SafeSysctl");
    assert_eq!(by["net.ipv4.tcp_keepalive_time"].refused_pods, 1);
    // somaxconn is refused for the namespace: web-1 is applied with what can be delivered.
    assert_eq!(s.applied_pods, 1);
    let a = find_condition(&s, condition::ACCEPTED).unwrap();
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("True", "SomeSysctlsRefused")
    );
}

#[test]
fn dry_run_sysctls_are_reported_as_dry_run() {
    let c = base("dry");
    let s = compute_status(&dry_run(c.policy), &c.pods, &c.reports, &c.facts, t(c.now));
    assert_eq!(s.sysctls.len(), 1);
    assert_eq!(s.sysctls[0].delivery, DeliveryDecision::DryRun);
    assert_eq!(s.sysctls[0].reason, "AllowedUnsafeSysctl");
}

#[test]
fn preset_summary_and_multi_sysctl_verification() {
    let mut p = policy("hcs", 1, "web", &[]);
    p.spec.sysctls = None;
    p.spec.preset = Some(Preset::HighConnectionServer);
    let mut facts = facts_allowing_somaxconn();
    facts.node_groups[0]
        .allowed_unsafe_sysctls
        .push("net.ipv4.tcp_max_syn_backlog".into());
    let rec = [
        injected("hcs", 1, SOMAXCONN, "8192"),
        injected("hcs", 1, "net.ipv4.tcp_max_syn_backlog", "8192"),
    ];
    let pd = pod("web-1", "web", 0, Some(&rec));
    let mut r = report(
        "web-1",
        R {
            observed_at: 5,
            ..R::default()
        },
    );
    // The agent has not read tcp_max_syn_backlog yet: not verified.
    let s = evaluate(&p, [&pd], [&r], &facts, &watched(), t(400)).status;
    assert_eq!(s.summary.as_deref(), Some("net.core.somaxconn=8192 (+1)"));
    assert_eq!(s.verified_pods, 0);
    assert_eq!(
        find_condition(&s, condition::VERIFIED).unwrap().reason,
        "NotObservedYet"
    );
    r.spec
        .sysctls
        .insert("net.ipv4.tcp_max_syn_backlog".into(), "8192".into());
    let s = evaluate(&p, [&pd], [&r], &facts, &watched(), t(400)).status;
    assert_eq!(s.verified_pods, 1);
    assert_eq!(s.phase.as_deref(), Some("Verified"));
}

/// A policy may spell a number the kernel reads the same way (`08192`); the netns reads back
/// `8192`. Applied and Verified compare values as the kernel does, for decision records written
/// canonically (this webhook) and as the policy spelled them (older records).
#[test]
fn non_canonical_policy_values_verify_against_the_kernels_reading() {
    let p = policy("web", 1, "web", &[(SOMAXCONN, "08192")]);
    let facts = facts_allowing_somaxconn();
    let r = report(
        "web-1",
        R {
            observed_at: 5,
            ..R::default()
        },
    );
    for recorded in ["8192", "08192"] {
        let pd = pod(
            "web-1",
            "web",
            0,
            Some(&[injected("web", 1, SOMAXCONN, recorded)]),
        );
        let s = evaluate(&p, [&pd], [&r], &facts, &watched(), t(400)).status;
        assert_eq!(
            (s.applied_pods, s.verified_pods),
            (1, 1),
            "recorded {recorded}: {s:?}"
        );
        assert_eq!(s.phase.as_deref(), Some("Verified"), "recorded {recorded}");
    }
    // A different number is still a different value.
    let r_other = report(
        "web-1",
        R {
            somaxconn: 4096,
            observed_at: 5,
            ..R::default()
        },
    );
    let pd = pod(
        "web-1",
        "web",
        0,
        Some(&[injected("web", 1, SOMAXCONN, "8192")]),
    );
    let s = evaluate(&p, [&pd], [&r_other], &facts, &watched(), t(400)).status;
    assert_eq!(s.verified_pods, 0, "{s:?}");
}
