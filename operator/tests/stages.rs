//! Table tests of each stage of the status computation on its own: delivery, the Accepted
//! condition, per-pod verdicts, the tally, the Applied and Verified conditions, the phase.

mod fixtures;

use fixtures::*;
use kubetune_crds::decision::Outcome;
use kubetune_crds::facts::{PodContext, TuningCni};
use kubetune_crds::policy::{phase, DeliveryDecision, TuningPolicy};
use kubetune_crds::reason;
use kubetune_crds::report::Diagnosis;
use kubetune_crds::sysctl::{KubeVersion, PodSecurityLevel};
use kubetune_operator::status::{
    accepted_condition, applied_condition, delivery, pod_verdicts, status_phase,
    verified_condition, Environment, Observation, PodState, PodVerdict, Tally,
};

const SOMAXCONN: &str = "net.core.somaxconn";
const PORTS: &str = "net.ipv4.ip_local_port_range";

fn tuning_cni() -> kubetune_crds::facts::ClusterFacts {
    kubetune_crds::facts::ClusterFacts {
        tuning_cni: Some(TuningCni {
            network_name: "kubetune-tuning".into(),
        }),
        ..facts_strict()
    }
}

fn baseline() -> Environment {
    Environment {
        namespace: PodContext {
            pod_security: Some((PodSecurityLevel::Baseline, KubeVersion::new(1, 31))),
            ..Default::default()
        },
        ..Environment::default()
    }
}

#[test]
fn delivery_stage() {
    let web = |s: &[(&str, &str)]| policy("web", 1, "web", s);
    // (what, policy, facts, env, per-sysctl (delivery, reason), uses tuning CNI, spec valid)
    type Case = (
        &'static str,
        TuningPolicy,
        kubetune_crds::facts::ClusterFacts,
        Environment,
        Vec<(DeliveryDecision, &'static str)>,
        bool,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "allowed unsafe",
            web(&[(SOMAXCONN, "8192")]),
            facts_allowing_somaxconn(),
            Environment::default(),
            vec![(
                DeliveryDecision::PodSecurityContext,
                reason::ALLOWED_UNSAFE_SYSCTL,
            )],
            false,
            true,
        ),
        (
            "refused unsafe",
            web(&[(SOMAXCONN, "8192"), (PORTS, "1024 65535")]),
            facts_strict(),
            Environment::default(),
            vec![
                (DeliveryDecision::Refused, reason::REFUSED_UNSAFE_SYSCTL),
                (DeliveryDecision::PodSecurityContext, reason::SAFE_SYSCTL),
            ],
            false,
            true,
        ),
        (
            "tuning CNI",
            web(&[(SOMAXCONN, "8192")]),
            tuning_cni(),
            Environment::default(),
            vec![(DeliveryDecision::TuningCni, reason::TUNING_CNI)],
            true,
            true,
        ),
        (
            "DryRun never needs a NAD",
            dry_run(web(&[(SOMAXCONN, "8192")])),
            tuning_cni(),
            Environment::default(),
            vec![(DeliveryDecision::DryRun, reason::TUNING_CNI)],
            false,
            true,
        ),
        (
            "PodSecurity baseline refuses unsafe even through tuning CNI",
            web(&[(SOMAXCONN, "8192")]),
            tuning_cni(),
            baseline(),
            vec![(DeliveryDecision::Refused, reason::REFUSED_BY_POD_SECURITY)],
            false,
            true,
        ),
        (
            "invalid spec: no NAD",
            web(&[(SOMAXCONN, "8192"), ("kernel.pid_max", "65536")]),
            tuning_cni(),
            Environment::default(),
            vec![
                (DeliveryDecision::Refused, reason::REFUSED_NODE_LEVEL),
                (DeliveryDecision::TuningCni, reason::TUNING_CNI),
            ],
            false,
            false,
        ),
    ];
    for (what, p, facts, env, want, cni, valid) in cases {
        let d = delivery(&p, &facts, &env);
        let got: Vec<(DeliveryDecision, &str)> = d
            .sysctls
            .iter()
            .map(|s| (s.delivery, s.reason.as_str()))
            .collect();
        assert_eq!(got, want, "{what}");
        assert_eq!(d.uses_tuning_cni, cni, "{what}");
        assert_eq!(d.spec_errors.is_empty(), valid, "{what}");
        assert!(d.sysctls.iter().all(|s| s.refused_pods == 0), "{what}");
        assert_eq!(d.desired.len(), d.sysctls.len(), "{what}");
    }
}

#[test]
fn accepted_stage() {
    let web = |s: &[(&str, &str)]| policy("web", 1, "web", s);
    let no_crd = Environment {
        tuning_cni_crd: false,
        ..Environment::default()
    };
    let cases: Vec<(
        &str,
        TuningPolicy,
        kubetune_crds::facts::ClusterFacts,
        Environment,
        bool,
        &str,
    )> = vec![
        (
            "valid",
            web(&[(SOMAXCONN, "8192")]),
            facts_allowing_somaxconn(),
            Environment::default(),
            true,
            reason::ACCEPTED,
        ),
        (
            "invalid",
            web(&[("kernel.pid_max", "1")]),
            facts_allowing_somaxconn(),
            Environment::default(),
            false,
            reason::INVALID_SPEC,
        ),
        (
            "all refused",
            web(&[(SOMAXCONN, "8192")]),
            facts_strict(),
            Environment::default(),
            false,
            reason::REFUSED_UNSAFE_SYSCTL,
        ),
        (
            "some refused",
            web(&[(SOMAXCONN, "8192"), (PORTS, "1024 65535")]),
            facts_strict(),
            Environment::default(),
            true,
            reason::PARTIALLY_ACCEPTED,
        ),
        (
            "NAD CRD not served",
            web(&[(SOMAXCONN, "8192")]),
            tuning_cni(),
            no_crd.clone(),
            false,
            reason::TUNING_CNI_UNAVAILABLE,
        ),
        (
            "NAD CRD irrelevant without tuning CNI",
            web(&[(SOMAXCONN, "8192")]),
            facts_allowing_somaxconn(),
            no_crd,
            true,
            reason::ACCEPTED,
        ),
    ];
    for (what, p, facts, env, ok, want) in cases {
        let (got_ok, got, message) = accepted_condition(&delivery(&p, &facts, &env), &env);
        assert_eq!((got_ok, got.as_str()), (ok, want), "{what}: {message}");
        assert!(!message.is_empty(), "{what}");
    }
}

#[test]
fn pod_verdicts_stage() {
    let p = policy("web", 2, "web", &[(SOMAXCONN, "8192")]);
    let d = delivery(&p, &facts_allowing_somaxconn(), &Environment::default());
    let current = [injected("web", 2, SOMAXCONN, "8192")];
    let old_value = [injected("web", 1, SOMAXCONN, "4096")];
    let kept = [with_outcome(
        injected("web", 2, SOMAXCONN, "8192"),
        Outcome::PodValueKept,
        reason::POD_VALUE_KEPT,
    )];
    let pods = vec![
        pod("web-c", "web", 100, Some(&current)),
        pod("web-a", "web", 100, Some(&old_value)),
        pod("web-b", "web", 100, Some(&kept)),
        pod("web-d", "web", 100, None),
        pod("api-1", "api", 100, Some(&current)),
    ];
    let reports = vec![
        report(
            "web-c",
            R {
                observed_at: 110,
                ..R::default()
            },
        ),
        report(
            "web-b",
            R {
                recent: 3,
                total: 3,
                diagnosis: Diagnosis::SomaxconnBound,
                ..R::default()
            },
        ),
    ];
    let v = pod_verdicts(&p, &d, &pods, &reports, &agents_watching(), t(200));
    let got: Vec<(&str, &PodState, bool)> = v
        .pods
        .iter()
        .map(|v| (v.name.as_str(), &v.state, v.overflowing))
        .collect();
    let waiting = PodState::Applied(Observation::Waiting { until: t(400) });
    let not_applied = PodState::NotApplied {
        reason: reason::POD_VALUE_KEPT.into(),
        message: format!("{} {SOMAXCONN}", reason::POD_VALUE_KEPT),
    };
    assert_eq!(
        got,
        vec![
            ("web-a", &PodState::NeedsRestart, false),
            ("web-b", &not_applied, true),
            ("web-c", &waiting, false),
            ("web-d", &PodState::NeedsRestart, false),
        ],
        "sorted by name, api-1 not matched"
    );
    assert_eq!(v.refused_pods.get(SOMAXCONN), Some(&1));
    assert_eq!(v.next_check, Some(t(400)));
    // After the window the pod is verified and nothing is left to wait for.
    let later = pod_verdicts(&p, &d, &pods, &reports, &agents_watching(), t(401));
    assert_eq!(
        later.pods[2].state,
        PodState::Applied(Observation::Verified)
    );
    assert_eq!(later.next_check, None);
}

fn verdict(name: &str, state: PodState, overflowing: bool) -> PodVerdict {
    PodVerdict {
        name: name.into(),
        state,
        overflowing,
    }
}

#[test]
fn tally_stage() {
    let verdicts = vec![
        verdict("a", PodState::NeedsRestart, false),
        verdict("b", PodState::WouldInject, false),
        verdict("c", PodState::Applied(Observation::Verified), false),
        verdict(
            "d",
            PodState::Applied(Observation::Overflowing { recent: 2 }),
            true,
        ),
        verdict(
            "e",
            PodState::Applied(Observation::ApplicationBacklogBound),
            true,
        ),
        verdict("f", PodState::Applied(Observation::SlowAccept), false),
        verdict("g", PodState::Applied(Observation::NoReport), false),
        verdict(
            "h",
            PodState::Applied(Observation::ValueMismatch {
                sysctl: SOMAXCONN.into(),
                want: "8192".into(),
                got: "4096".into(),
            }),
            false,
        ),
        verdict(
            "i",
            PodState::NotApplied {
                reason: "x".into(),
                message: "y".into(),
            },
            false,
        ),
    ];
    let t = Tally::of(&verdicts);
    assert_eq!(
        (
            t.matched,
            t.applied,
            t.verified,
            t.overflowing,
            t.needs_restart
        ),
        (9, 7, 1, 2, 1)
    );
    assert_eq!(
        (t.app_bound, t.slow, t.still, t.mismatch, t.waiting),
        (vec!["e"], vec!["f"], vec!["d"], vec!["h"], vec!["g"])
    );
}

#[test]
fn applied_and_verified_stages() {
    let enforce = policy("web", 3, "web", &[(SOMAXCONN, "8192")]);
    let dry = dry_run(enforce.clone());
    let ok = |s| verdict("p", PodState::Applied(s), false);
    let not_applied = verdict(
        "q",
        PodState::NotApplied {
            reason: reason::REFUSED_HOST_NAMESPACE.into(),
            message: "host".into(),
        },
        false,
    );
    // (what, policy, accepted, verdicts, Applied (ok, reason), Verified (ok, reason))
    type Case<'a> = (
        &'a str,
        &'a TuningPolicy,
        bool,
        Vec<PodVerdict>,
        (bool, &'a str),
        (bool, &'a str),
    );
    let cases: Vec<Case> = vec![
        (
            "not accepted",
            &enforce,
            false,
            vec![ok(Observation::Verified)],
            (false, reason::NOT_ACCEPTED),
            (false, reason::NOT_ACCEPTED),
        ),
        (
            "no pods",
            &enforce,
            true,
            vec![],
            (false, reason::NO_MATCHING_PODS),
            (false, reason::NO_MATCHING_PODS),
        ),
        (
            "verified",
            &enforce,
            true,
            vec![ok(Observation::Verified)],
            (true, reason::ALL_PODS_APPLIED),
            (true, reason::VERIFIED),
        ),
        (
            "dry run",
            &dry,
            true,
            vec![verdict("p", PodState::WouldInject, false)],
            (true, reason::ALL_PODS_WOULD_INJECT),
            (false, reason::DRY_RUN),
        ),
        (
            "restart",
            &enforce,
            true,
            vec![verdict("p", PodState::NeedsRestart, false)],
            (false, reason::PODS_NEED_RESTART),
            (false, reason::PODS_NEED_RESTART),
        ),
        (
            "per-pod refusal",
            &enforce,
            true,
            vec![not_applied.clone()],
            (false, reason::REFUSED_HOST_NAMESPACE),
            (false, reason::NOT_APPLIED),
        ),
        (
            "mixed",
            &enforce,
            true,
            vec![not_applied, ok(Observation::NoReport)],
            (false, reason::REFUSED_HOST_NAMESPACE),
            (false, reason::NOT_OBSERVED_YET),
        ),
        (
            "backlog first",
            &enforce,
            true,
            vec![
                ok(Observation::Overflowing { recent: 1 }),
                ok(Observation::ApplicationBacklogBound),
            ],
            (true, reason::ALL_PODS_APPLIED),
            (false, reason::APPLICATION_BACKLOG_BOUND),
        ),
        (
            "slow",
            &enforce,
            true,
            vec![ok(Observation::SlowAccept)],
            (true, reason::ALL_PODS_APPLIED),
            (false, reason::SLOW_ACCEPT),
        ),
        (
            "overflowing",
            &enforce,
            true,
            vec![ok(Observation::Overflowing { recent: 1 })],
            (true, reason::ALL_PODS_APPLIED),
            (false, reason::STILL_OVERFLOWING),
        ),
        (
            "mismatch",
            &enforce,
            true,
            vec![ok(Observation::ValueMismatch {
                sysctl: SOMAXCONN.into(),
                want: "8192".into(),
                got: "128".into(),
            })],
            (true, reason::ALL_PODS_APPLIED),
            (false, reason::VALUE_MISMATCH),
        ),
    ];
    for (what, p, accepted, verdicts, applied, verified) in cases {
        let t = Tally::of(&verdicts);
        let a = applied_condition(p, accepted, &verdicts, &t);
        let v = verified_condition(p, accepted, &verdicts, &t);
        assert_eq!((a.0, a.1.as_str()), applied, "{what}: Applied {}", a.2);
        assert_eq!((v.0, v.1.as_str()), verified, "{what}: Verified {}", v.2);
    }
    // The restart message names the generation and the pods.
    let vs = vec![verdict("web-1", PodState::NeedsRestart, false)];
    let a = applied_condition(&enforce, true, &vs, &Tally::of(&vs));
    assert!(
        a.2.contains("generation 3") && a.2.contains("web-1"),
        "{}",
        a.2
    );
}

#[test]
fn phase_stage() {
    let p = policy("web", 1, "web", &[(SOMAXCONN, "8192")]);
    let valid = delivery(&p, &facts_allowing_somaxconn(), &Environment::default());
    let invalid = delivery(
        &policy("bad", 1, "web", &[("kernel.pid_max", "1")]),
        &facts_allowing_somaxconn(),
        &Environment::default(),
    );
    let ok = |n: &str, s| verdict(n, PodState::Applied(s), false);
    let restart = verdict("r", PodState::NeedsRestart, false);
    let pending = verdict(
        "n",
        PodState::NotApplied {
            reason: "x".into(),
            message: "y".into(),
        },
        false,
    );
    // (what, delivery, accepted, dry run, verdicts, verified, phase)
    let cases = vec![
        (
            "invalid",
            &invalid,
            false,
            false,
            vec![],
            false,
            phase::INVALID,
        ),
        (
            "refused",
            &valid,
            false,
            false,
            vec![],
            false,
            phase::REFUSED,
        ),
        ("dry run", &valid, true, true, vec![], false, phase::DRY_RUN),
        (
            "no pods",
            &valid,
            true,
            false,
            vec![],
            false,
            phase::NO_MATCHING_PODS,
        ),
        (
            "not sysctl bound beats overflowing",
            &valid,
            true,
            false,
            vec![
                ok("a", Observation::SlowAccept),
                ok("b", Observation::Overflowing { recent: 1 }),
            ],
            false,
            phase::NOT_SYSCTL_BOUND,
        ),
        (
            "overflowing beats restart",
            &valid,
            true,
            false,
            vec![
                ok("a", Observation::Overflowing { recent: 1 }),
                restart.clone(),
            ],
            false,
            phase::STILL_OVERFLOWING,
        ),
        (
            "restart beats waiting",
            &valid,
            true,
            false,
            vec![ok("a", Observation::NoReport), restart],
            false,
            phase::PODS_NEED_RESTART,
        ),
        (
            "waiting",
            &valid,
            true,
            false,
            vec![ok("a", Observation::NoReport)],
            false,
            phase::NOT_OBSERVED_YET,
        ),
        (
            "verified",
            &valid,
            true,
            false,
            vec![ok("a", Observation::Verified)],
            true,
            phase::VERIFIED,
        ),
        (
            "pending",
            &valid,
            true,
            false,
            vec![pending],
            false,
            phase::PENDING,
        ),
    ];
    for (what, d, accepted, dry, verdicts, verified, want) in cases {
        let t = Tally::of(&verdicts);
        assert_eq!(status_phase(d, accepted, dry, &t, verified), want, "{what}");
    }
}
