//! The coverage rule (`operator/src/coverage.rs`) as a table, and its effect on the Verified
//! condition through `evaluate`: a pod whose report is quiet counts as verified only while its
//! node's agent heartbeat is fresh and has watched since the pod's clean window began.

mod fixtures;

use std::collections::BTreeSet;

use fixtures::*;
use kubetune_crds::heartbeat::Heartbeat;
use kubetune_crds::policy::condition;
use kubetune_crds::reason;
use kubetune_operator::coverage::{heartbeats, watched, Gap, Heartbeats, Watched};
use kubetune_operator::status::{
    evaluate, find_condition, phase, Environment, Observation, PodState,
};

fn agents(hb: Option<Heartbeat>) -> Heartbeats {
    hb.map(|h| Heartbeats::from([(NODE.to_string(), h)]))
        .unwrap_or_default()
}

#[test]
fn coverage_table() {
    // Clean since t(100), window 300 s: the window is complete at t(400).
    let (clean, window) = (t(100), secs(300));
    struct Case {
        name: &'static str,
        node: Option<&'static str>,
        hb: Option<Heartbeat>,
        now: i64,
        want: Watched,
    }
    let not_observed = |gap| Watched::NotObserved {
        node: NODE.into(),
        gap,
    };
    let cases = [
        Case {
            name: "fresh heartbeat, watching since before the window, window complete",
            node: Some(NODE),
            hb: Some(heartbeat(495, 0)),
            now: 500,
            want: Watched::Verified,
        },
        Case {
            name: "watching since exactly the window start",
            node: Some(NODE),
            hb: Some(heartbeat(495, 100)),
            now: 500,
            want: Watched::Verified,
        },
        Case {
            name: "fresh heartbeat, window not yet complete",
            node: Some(NODE),
            hb: Some(heartbeat(395, 0)),
            now: 399,
            want: Watched::Waiting { until: t(400) },
        },
        Case {
            name: "stale heartbeat: renewed at 460 for 30 s, now 500",
            node: Some(NODE),
            hb: Some(heartbeat(460, 0)),
            now: 500,
            want: not_observed(Gap::Stale { since: t(490) }),
        },
        Case {
            name: "stale exactly at renewTime + leaseDuration",
            node: Some(NODE),
            hb: Some(heartbeat(470, 0)),
            now: 500,
            want: not_observed(Gap::Stale { since: t(500) }),
        },
        Case {
            name: "stale even while the window is not complete",
            node: Some(NODE),
            hb: Some(heartbeat(150, 0)),
            now: 300,
            want: not_observed(Gap::Stale { since: t(180) }),
        },
        Case {
            name: "missing lease: agent gone",
            node: Some(NODE),
            hb: None,
            now: 500,
            want: not_observed(Gap::AgentGone),
        },
        Case {
            name: "agent restarted mid-window at 250: its own window ends at 550",
            node: Some(NODE),
            hb: Some(heartbeat(495, 250)),
            now: 500,
            want: not_observed(Gap::Restarted {
                at: t(250),
                until: t(550),
            }),
        },
        Case {
            name: "restarted mid-window, and the restarted agent has watched a full window since",
            node: Some(NODE),
            hb: Some(heartbeat(595, 250)),
            now: 600,
            want: Watched::Verified,
        },
        Case {
            name: "pod on no node",
            node: None,
            hb: Some(heartbeat(495, 0)),
            now: 500,
            want: Watched::NotObserved {
                node: String::new(),
                gap: Gap::NoNode,
            },
        },
    ];
    for c in cases {
        let got = watched(c.node, &agents(c.hb), clean, window, t(c.now));
        assert_eq!(got, c.want, "{}", c.name);
    }
}

#[test]
fn another_nodes_heartbeat_does_not_cover_the_pod() {
    let other = Heartbeats::from([("node-2".to_string(), heartbeat(495, 0))]);
    assert_eq!(
        watched(Some(NODE), &other, t(100), secs(300), t(500)),
        Watched::NotObserved {
            node: NODE.into(),
            gap: Gap::AgentGone
        }
    );
}

#[test]
fn heartbeats_are_read_from_the_agent_leases_of_the_wanted_nodes() {
    let mut not_agent = agent_lease("x", 1, 0);
    not_agent.metadata.name = Some("kubetune-operator".into());
    let mut unreadable = agent_lease("node-3", 1, 0);
    unreadable.metadata.annotations = None;
    let leases = [
        agent_lease(NODE, 495, 7),
        agent_lease("node-2", 495, 0),
        not_agent,
        unreadable,
    ];
    let wanted = BTreeSet::from([NODE, "node-3", "node-4"]);
    let got = heartbeats(leases.iter(), |n| wanted.contains(n));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[NODE].renewed, t(495));
    assert_eq!(got[NODE].watching_since, t(7));
    assert_eq!(got[NODE].duration, secs(30));
}

/// A world that was Verified with a watching agent: policy web over pod web-1 (started at 100,
/// report quiet since), window 300 s, evaluated at t(500).
fn verdict_with(hb: Option<Heartbeat>) -> (kubetune_crds::TuningPolicyStatus, PodState) {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let pods = [pod("web-1", "web", 100, Some(&rec))];
    let reports = [report(
        "web-1",
        R {
            observed_at: 110,
            ..R::default()
        },
    )];
    let env = Environment {
        agents: agents(hb),
        ..Environment::default()
    };
    let e = evaluate(
        &p,
        &pods,
        &reports,
        &facts_allowing_somaxconn(),
        &env,
        t(500),
    );
    (e.status, e.pods[0].state.clone())
}

#[test]
fn verified_needs_a_watching_agent_and_the_condition_names_the_node() {
    let (ok, state) = verdict_with(Some(heartbeat(495, 0)));
    assert_eq!(state, PodState::Applied(Observation::Verified));
    assert_eq!(ok.verified_pods, 1);
    assert_eq!(ok.phase.as_deref(), Some(phase::VERIFIED));

    for (hb, says) in [
        (
            None,
            "node node-1: agent gone (no heartbeat Lease kubetune-agent-node-1)",
        ),
        (
            Some(heartbeat(400, 0)),
            "node node-1: agent heartbeat stale since 2025-01-01T00:07:10Z",
        ),
        (
            Some(heartbeat(495, 300)),
            "node node-1: agent restarted mid-window at 2025-01-01T00:05:00Z",
        ),
    ] {
        let (s, state) = verdict_with(hb.clone());
        assert!(
            matches!(state, PodState::Applied(Observation::NotObserved { ref node, .. }) if node == NODE),
            "{hb:?}: {state:?}"
        );
        assert_eq!(s.verified_pods, 0, "{hb:?}");
        assert_eq!(s.applied_pods, 1, "{hb:?}");
        let v = find_condition(&s, condition::VERIFIED).unwrap();
        assert_eq!(v.status, "False", "{hb:?}");
        assert_eq!(v.reason, reason::NOT_OBSERVED, "{hb:?}");
        assert!(v.message.contains(says), "{hb:?}: {}", v.message);
        assert!(v.message.contains("web-1"), "{}", v.message);
        assert_eq!(s.phase.as_deref(), Some(phase::NOT_OBSERVED_YET), "{hb:?}");
    }
}

#[test]
fn a_restarted_agent_brings_the_next_check_to_the_end_of_its_window() {
    let p = policy("web", 1, "web", &[("net.core.somaxconn", "8192")]);
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let pods = [pod("web-1", "web", 100, Some(&rec))];
    let reports = [report("web-1", R::default())];
    let env = Environment {
        agents: agents(Some(heartbeat(495, 300))),
        ..Environment::default()
    };
    let f = facts_allowing_somaxconn();
    let e = evaluate(&p, &pods, &reports, &f, &env, t(500));
    assert_eq!(e.next_check, Some(t(600)));
    // At t(600), renewed meanwhile: verified.
    let env = Environment {
        agents: agents(Some(heartbeat(595, 300))),
        ..Environment::default()
    };
    let e = evaluate(&p, &pods, &reports, &f, &env, t(600));
    assert_eq!(e.status.verified_pods, 1);
}

#[test]
fn only_coverage_changes_trigger_and_renewals_do_not() {
    use kubetune_operator::coverage::{changed_nodes, node_watch};
    let before = node_watch(
        &Heartbeats::from([
            ("a".to_string(), heartbeat(100, 0)),
            ("b".to_string(), heartbeat(100, 0)),
            ("c".to_string(), heartbeat(100, 0)),
            ("d".to_string(), heartbeat(100, 0)),
        ]),
        t(110),
    );
    let after = node_watch(
        &Heartbeats::from([
            // renewed: no change
            ("a".to_string(), heartbeat(110, 0)),
            // not renewed for 30 s: stale now
            ("b".to_string(), heartbeat(100, 0)),
            // restarted
            ("c".to_string(), heartbeat(130, 125)),
            // d's Lease is gone; e is new
            ("e".to_string(), heartbeat(130, 120)),
        ]),
        t(130),
    );
    assert_eq!(changed_nodes(&before, &after), ["b", "c", "d", "e"]);
    assert!(changed_nodes(&after, &after).is_empty());
}

#[test]
fn a_coverage_change_reconciles_the_policies_of_the_nodes_pods() {
    use kubetune_operator::triggers::policies_on_nodes;
    use std::sync::Arc;
    let rec = [injected("web", 1, "net.core.somaxconn", "8192")];
    let on = |name: &str, app: &str, node: &str| {
        let mut p = pod(name, app, 0, Some(&rec));
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        Arc::new(p)
    };
    let pods = [
        on("web-1", "web", "n1"),
        on("web-2", "web", "n1"),
        on("api-1", "api", "n2"),
    ];
    let policies = [
        Arc::new(policy("web", 1, "web", &[("net.core.somaxconn", "8192")])),
        Arc::new(policy("api", 1, "api", &[("net.core.somaxconn", "8192")])),
    ];
    let refs = policies_on_nodes(&policies, &pods, &["n1".to_string()]);
    let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["web"], "each policy once, only those of n1's pods");
    assert!(policies_on_nodes(&policies, &pods, &["n3".to_string()]).is_empty());
}
