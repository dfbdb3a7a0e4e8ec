//! Table-driven tests of the planner: every rule of the design.

mod common;

use std::collections::BTreeMap;

use common::*;
use kubetune_crds::decision::Outcome;
use kubetune_crds::policy::DeliveryDecision;
use kubetune_webhook::plan::{matching_policies, plan, NamespaceFacts};
use serde_json::json;

fn ns(labels: &[(&str, &str)]) -> NamespaceFacts {
    NamespaceFacts {
        name: "shop".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// (sysctl, outcome, reason) triples of a plan, sorted.
fn outcomes(p: &kubetune_webhook::plan::Plan) -> Vec<(String, String, Outcome, String)> {
    let mut v: Vec<_> = p
        .decision
        .entries
        .iter()
        .map(|e| {
            (
                e.policy.clone(),
                e.sysctl.clone(),
                e.outcome,
                e.reason.clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

fn o(
    policy: &str,
    sysctl: &str,
    outcome: Outcome,
    reason: &str,
) -> (String, String, Outcome, String) {
    (policy.into(), sysctl.into(), outcome, reason.into())
}

#[test]
fn planner_rules() {
    use Outcome::*;
    let ingress = json!({"spec": {"nodeSelector": {"pool": "ingress"}}});
    struct Case {
        what: &'static str,
        pod: serde_json::Value,
        ns: NamespaceFacts,
        policies: Vec<kubetune_crds::TuningPolicy>,
        cni: bool,
        want: Vec<(String, String, Outcome, String)>,
        sc: &'static [(&'static str, &'static str)],
        tuning: &'static [(&'static str, &'static str)],
    }
    let cases = vec![
        Case {
            what: "safe sysctl into securityContext",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "ka",
                json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]}),
            )],
            want: vec![o(
                "ka",
                "net.ipv4.tcp_keepalive_time",
                Injected,
                "SafeSysctl",
            )],
            sc: &[("net.ipv4.tcp_keepalive_time", "600")],
            tuning: &[],
        },
        Case {
            what: "unsafe allowed on the pod's node group",
            pod: ingress.clone(),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy("hcs", json!({"preset": "HighConnectionServer"}))],
            want: vec![
                o("hcs", "net.core.somaxconn", Injected, "AllowedUnsafeSysctl"),
                o(
                    "hcs",
                    "net.ipv4.tcp_max_syn_backlog",
                    Injected,
                    "AllowedUnsafeSysctl",
                ),
            ],
            sc: &[
                ("net.core.somaxconn", "8192"),
                ("net.ipv4.tcp_max_syn_backlog", "8192"),
            ],
            tuning: &[],
        },
        Case {
            what: "unsafe, pod may land anywhere, no CNI: refused",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "s",
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
            )],
            want: vec![o("s", "net.core.somaxconn", Refused, "RefusedUnsafeSysctl")],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "unsafe, pod may land anywhere, CNI enabled: tuning CNI",
            pod: json!({}),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy(
                "s",
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
            )],
            want: vec![o("s", "net.core.somaxconn", Injected, "TuningCNI")],
            sc: &[],
            tuning: &[("net.core.somaxconn", "4096")],
        },
        Case {
            what: "PodSecurity baseline refuses unsafe even with CNI",
            pod: ingress.clone(),
            ns: ns(&[("pod-security.kubernetes.io/enforce", "baseline")]),
            cni: true,
            policies: vec![policy(
                "s",
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}, {"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]}),
            )],
            want: vec![
                o("s", "net.core.somaxconn", Refused, "RefusedByPodSecurity"),
                o("s", "net.ipv4.tcp_keepalive_time", Injected, "SafeSysctl"),
            ],
            sc: &[("net.ipv4.tcp_keepalive_time", "600")],
            tuning: &[],
        },
        Case {
            what: "PodSecurity restricted pinned to 1.28 refuses keepalive (safe only since 1.29)",
            pod: json!({}),
            ns: ns(&[
                ("pod-security.kubernetes.io/enforce", "restricted"),
                ("pod-security.kubernetes.io/enforce-version", "v1.28"),
            ]),
            cni: false,
            policies: vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
            want: vec![
                o(
                    "ka",
                    "net.ipv4.tcp_keepalive_intvl",
                    Refused,
                    "RefusedByPodSecurity",
                ),
                o(
                    "ka",
                    "net.ipv4.tcp_keepalive_probes",
                    Refused,
                    "RefusedByPodSecurity",
                ),
                o(
                    "ka",
                    "net.ipv4.tcp_keepalive_time",
                    Refused,
                    "RefusedByPodSecurity",
                ),
            ],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "hostNetwork pod gets no net.* sysctl",
            pod: json!({"spec": {"hostNetwork": true, "nodeSelector": {"pool": "ingress"}}}),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy("hcs", json!({"preset": "HighConnectionServer"}))],
            want: vec![
                o("hcs", "net.core.somaxconn", Refused, "RefusedHostNamespace"),
                o(
                    "hcs",
                    "net.ipv4.tcp_max_syn_backlog",
                    Refused,
                    "RefusedHostNamespace",
                ),
            ],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "node-level sysctl makes the whole policy invalid (slipped past admission)",
            pod: ingress.clone(),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy(
                "bad",
                json!({"sysctls": [{"name": "net.core.rmem_max", "value": "1048576"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![
                o("bad", "net.core.rmem_max", Refused, "RefusedNodeLevel"),
                o("bad", "net.ipv4.tcp_syncookies", Refused, "InvalidSpec"),
            ],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "invalid spec (both sysctls and preset) refuses everything",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "both",
                json!({"preset": "WideEphemeralPorts", "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![o("both", "net.ipv4.tcp_syncookies", Refused, "InvalidSpec")],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "the pod's own value is kept",
            pod: json!({"spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "300"}]}}}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy("ka", json!({"preset": "IpvsIdleKeepalive"}))],
            want: vec![
                o("ka", "net.ipv4.tcp_keepalive_intvl", Injected, "SafeSysctl"),
                o(
                    "ka",
                    "net.ipv4.tcp_keepalive_probes",
                    Injected,
                    "SafeSysctl",
                ),
                o(
                    "ka",
                    "net.ipv4.tcp_keepalive_time",
                    PodValueKept,
                    "PodValueKept",
                ),
            ],
            sc: &[
                ("net.ipv4.tcp_keepalive_intvl", "60"),
                ("net.ipv4.tcp_keepalive_probes", "5"),
            ],
            tuning: &[],
        },
        Case {
            what: "priority wins, then name",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                policy(
                    "b-low",
                    json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "100"}]}),
                ),
                policy(
                    "z-high",
                    json!({"priority": 5, "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "500"}]}),
                ),
                policy(
                    "a-low",
                    json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "200"}]}),
                ),
            ],
            want: vec![
                o(
                    "a-low",
                    "net.ipv4.tcp_keepalive_time",
                    Overridden,
                    "OverriddenByPolicy",
                ),
                o(
                    "b-low",
                    "net.ipv4.tcp_keepalive_time",
                    Overridden,
                    "OverriddenByPolicy",
                ),
                o(
                    "z-high",
                    "net.ipv4.tcp_keepalive_time",
                    Injected,
                    "SafeSysctl",
                ),
            ],
            sc: &[("net.ipv4.tcp_keepalive_time", "500")],
            tuning: &[],
        },
        Case {
            what: "DryRun only records",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "dry",
                json!({"mode": "DryRun", "preset": "WideEphemeralPorts"}),
            )],
            want: vec![o(
                "dry",
                "net.ipv4.ip_local_port_range",
                WouldInject,
                "SafeSysctl",
            )],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "DryRun does not block an enforcing policy",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                policy(
                    "a-dry",
                    json!({"mode": "DryRun", "priority": 9, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "0"}]}),
                ),
                policy(
                    "b-enf",
                    json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
                ),
            ],
            want: vec![
                o(
                    "a-dry",
                    "net.ipv4.tcp_syncookies",
                    WouldInject,
                    "SafeSysctl",
                ),
                o("b-enf", "net.ipv4.tcp_syncookies", Injected, "SafeSysctl"),
            ],
            sc: &[("net.ipv4.tcp_syncookies", "1")],
            tuning: &[],
        },
        Case {
            what: "policy in another namespace or not selecting is ignored",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                {
                    let mut p = policy("other-ns", json!({"preset": "WideEphemeralPorts"}));
                    p.metadata.namespace = Some("elsewhere".into());
                    p
                },
                policy(
                    "other-app",
                    json!({"podSelector": {"matchLabels": {"app": "db"}}, "preset": "WideEphemeralPorts"}),
                ),
            ],
            want: vec![],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "explicit TuningCNI delivery even where securityContext would work",
            pod: ingress.clone(),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy(
                "cni",
                json!({"delivery": "TuningCNI", "sysctls": [{"name": "net.core.somaxconn", "value": "2048"}]}),
            )],
            want: vec![o("cni", "net.core.somaxconn", Injected, "TuningCNI")],
            sc: &[],
            tuning: &[("net.core.somaxconn", "2048")],
        },
        Case {
            what: "value canonicalised",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "ports",
                json!({"sysctls": [{"name": "net/ipv4/ip_local_port_range", "value": "1024\t  60999"}]}),
            )],
            want: vec![o(
                "ports",
                "net.ipv4.ip_local_port_range",
                Injected,
                "SafeSysctl",
            )],
            sc: &[("net.ipv4.ip_local_port_range", "1024 60999")],
            tuning: &[],
        },
        Case {
            what: "one bad value refuses the whole policy",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "v",
                json!({"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "65535 1024"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![
                o("v", "net.ipv4.ip_local_port_range", Refused, "InvalidValue"),
                o("v", "net.ipv4.tcp_syncookies", Refused, "InvalidSpec"),
            ],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "a selector that matches but is invalid refuses the policy with InvalidSelector",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "sel",
                json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["web"]}]}, "preset": "WideEphemeralPorts"}),
            )],
            want: vec![o(
                "sel",
                "net.ipv4.ip_local_port_range",
                Refused,
                "InvalidSelector",
            )],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "hostIPC pod gets no IPC sysctl, but its net.* sysctls",
            pod: json!({"spec": {"hostIPC": true}}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "ipc",
                json!({"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![
                o(
                    "ipc",
                    "kernel.shm_rmid_forced",
                    Refused,
                    "RefusedHostNamespace",
                ),
                o("ipc", "net.ipv4.tcp_syncookies", Injected, "SafeSysctl"),
            ],
            sc: &[("net.ipv4.tcp_syncookies", "1")],
            tuning: &[],
        },
        Case {
            what: "explicit TuningCNI while tuning CNI is disabled",
            pod: ingress.clone(),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "cni",
                json!({"delivery": "TuningCNI", "sysctls": [{"name": "net.core.somaxconn", "value": "2048"}]}),
            )],
            want: vec![o(
                "cni",
                "net.core.somaxconn",
                Refused,
                "TuningCNIUnavailable",
            )],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "explicit PodSecurityContext never falls back to tuning CNI",
            pod: json!({}),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy(
                "psc",
                json!({"delivery": "PodSecurityContext", "sysctls": [{"name": "net.core.somaxconn", "value": "2048"}]}),
            )],
            want: vec![o(
                "psc",
                "net.core.somaxconn",
                Refused,
                "RefusedUnsafeSysctl",
            )],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "unreadable Multus annotation: tuning CNI refused, securityContext still works",
            pod: json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "[{\"name\": "}}}),
            ns: ns(&[]),
            cni: true,
            policies: vec![policy(
                "s",
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![
                o("s", "net.core.somaxconn", Refused, "TuningCNIUnavailable"),
                o("s", "net.ipv4.tcp_syncookies", Injected, "SafeSysctl"),
            ],
            sc: &[("net.ipv4.tcp_syncookies", "1")],
            tuning: &[],
        },
        Case {
            what: "PodSecurity privileged does not restrict; unknown enforce-version = latest",
            pod: ingress.clone(),
            ns: ns(&[
                ("pod-security.kubernetes.io/enforce", "privileged"),
                ("pod-security.kubernetes.io/enforce-version", "v1.25"),
            ]),
            cni: false,
            policies: vec![policy(
                "s",
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
            )],
            want: vec![o(
                "s",
                "net.core.somaxconn",
                Injected,
                "AllowedUnsafeSysctl",
            )],
            sc: &[("net.core.somaxconn", "4096")],
            tuning: &[],
        },
        Case {
            what: "PodSecurity baseline with an unparsable enforce-version uses the latest rules",
            pod: json!({}),
            ns: ns(&[
                ("pod-security.kubernetes.io/enforce", "baseline"),
                ("pod-security.kubernetes.io/enforce-version", "someday"),
            ]),
            cni: false,
            policies: vec![policy(
                "ka",
                json!({"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]}),
            )],
            want: vec![o(
                "ka",
                "net.ipv4.tcp_keepalive_time",
                Injected,
                "SafeSysctl",
            )],
            sc: &[("net.ipv4.tcp_keepalive_time", "600")],
            tuning: &[],
        },
        Case {
            what: "the pod's own value is recognised under the slash spelling",
            pod: json!({"spec": {"securityContext": {"sysctls": [{"name": "net/ipv4/tcp_syncookies", "value": "0"}]}}}),
            ns: ns(&[]),
            cni: false,
            policies: vec![policy(
                "sc",
                json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
            )],
            want: vec![o(
                "sc",
                "net.ipv4.tcp_syncookies",
                PodValueKept,
                "PodValueKept",
            )],
            sc: &[],
            tuning: &[],
        },
        Case {
            what: "a policy being deleted no longer applies; an empty selector selects every pod",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                {
                    let mut p = policy("gone", json!({"preset": "WideEphemeralPorts"}));
                    p.metadata.deletion_timestamp = Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
                    );
                    p
                },
                policy(
                    "all",
                    json!({"podSelector": {}, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
                ),
            ],
            want: vec![o("all", "net.ipv4.tcp_syncookies", Injected, "SafeSysctl")],
            sc: &[("net.ipv4.tcp_syncookies", "1")],
            tuning: &[],
        },
        Case {
            what: "matchExpressions selector",
            pod: json!({"metadata": {"labels": {"app": "web", "tier": "edge"}}}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                policy(
                    "in",
                    json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge", "lb"]}]}, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
                ),
                policy(
                    "notin",
                    json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["edge"]}]}, "preset": "WideEphemeralPorts"}),
                ),
            ],
            want: vec![o("in", "net.ipv4.tcp_syncookies", Injected, "SafeSysctl")],
            sc: &[("net.ipv4.tcp_syncookies", "1")],
            tuning: &[],
        },
        Case {
            what: "a refused higher-priority policy does not block a lower one",
            pod: json!({}),
            ns: ns(&[]),
            cni: false,
            policies: vec![
                policy(
                    "hi",
                    json!({"priority": 100, "sysctls": [{"name": "net.core.somaxconn", "value": "8192"}]}),
                ),
                policy(
                    "lo",
                    json!({"delivery": "TuningCNI", "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}),
                ),
            ],
            want: vec![
                o("hi", "net.core.somaxconn", Refused, "RefusedUnsafeSysctl"),
                o("lo", "net.core.somaxconn", Refused, "TuningCNIUnavailable"),
            ],
            sc: &[],
            tuning: &[],
        },
    ];
    for c in cases {
        let p = plan(&pod(c.pod), &c.ns, &c.policies, &facts(c.cni));
        let mut want = c.want.clone();
        want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(outcomes(&p), want, "{}", c.what);
        let sc: BTreeMap<String, String> =
            c.sc.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(p.security_context, sc, "{}: securityContext", c.what);
        let tu: BTreeMap<String, String> = c
            .tuning
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p.tuning_cni, tu, "{}: tuning", c.what);
        for e in &p.decision.entries {
            assert!(
                !e.message.is_empty(),
                "{}: every decision explains itself",
                c.what
            );
            if e.outcome == Outcome::Injected {
                assert!(e.delivery.is_some());
            }
        }
    }
}

#[test]
fn precedence_is_deterministic_whatever_the_input_order() {
    let a = policy("a", json!({"priority": 1, "preset": "WideEphemeralPorts"}));
    let b = policy(
        "b",
        json!({"priority": 1, "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "2000 3000"}]}),
    );
    let c = policy(
        "c",
        json!({"priority": 2, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
    );
    let p = pod(json!({}));
    let orders = [
        vec![a.clone(), b.clone(), c.clone()],
        vec![c.clone(), b.clone(), a.clone()],
        vec![b, c, a],
    ];
    let plans: Vec<_> = orders
        .iter()
        .map(|o| plan(&p, &ns(&[]), o, &facts(false)))
        .collect();
    assert!(plans.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        plans[0].security_context["net.ipv4.ip_local_port_range"], "1024 65535",
        "a wins the tie by name"
    );
    let names: Vec<_> = matching_policies(&p, &orders[0])
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["c", "a", "b"]);
}

#[test]
fn decision_records_policy_generations() {
    let mut p1 = policy("ka", json!({"preset": "IpvsIdleKeepalive"}));
    p1.metadata.generation = Some(7);
    let plan = plan(&pod(json!({})), &ns(&[]), &[p1], &facts(false));
    assert_eq!(plan.decision.policies.len(), 1);
    assert_eq!(plan.decision.policies[0].generation, 7);
    assert!(plan
        .decision
        .entries
        .iter()
        .all(|e| e.generation == 7 && e.delivery == Some(DeliveryDecision::PodSecurityContext)));
}

#[test]
fn sysctls_injected_earlier_are_ours_not_the_pods() {
    // Re-invocation: the pod carries what the first call injected, and the decision says so.
    let pol = policy(
        "sc",
        json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
    );
    let first = plan(
        &pod(json!({})),
        &ns(&[]),
        std::slice::from_ref(&pol),
        &facts(false),
    );
    let again = pod(json!({
        "metadata": {"annotations": {"kubetune.dev/decision": first.decision.to_annotation()}},
        "spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}
    }));
    let second = plan(&again, &ns(&[]), std::slice::from_ref(&pol), &facts(false));
    assert_eq!(
        second, first,
        "same decision on re-invocation, not PodValueKept"
    );
    // Without the annotation the same spec is the pod's own value.
    let own = pod(
        json!({"spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}}),
    );
    let p = plan(&own, &ns(&[]), &[pol], &facts(false));
    assert_eq!(p.decision.entries[0].outcome, Outcome::PodValueKept);
    assert!(p.security_context.is_empty());
}

#[test]
fn tuning_network_is_set_exactly_when_something_goes_through_cni() {
    let cni = policy(
        "s",
        json!({"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}),
    );
    let p = plan(
        &pod(json!({})),
        &ns(&[]),
        std::slice::from_ref(&cni),
        &facts(true),
    );
    assert_eq!(p.tuning_network.as_deref(), Some("kubetune-tuning"));
    let p = plan(
        &pod(json!({"spec": {"nodeSelector": {"pool": "ingress"}}})),
        &ns(&[]),
        &[cni],
        &facts(true),
    );
    assert_eq!(
        p.tuning_network, None,
        "securityContext delivery needs no network"
    );
    assert_eq!(p.security_context["net.core.somaxconn"], "4096");
}

#[test]
fn a_copied_decision_record_does_not_make_the_plan_flip_flop() {
    // Found by the property test: the pod carries somaxconn=4096 and a decision record (copied
    // from another pod) saying kubetune injected it, but this admission refuses somaxconn.
    // kubetune never removes a sysctl, so the value stays and is the pod's own from now on —
    // recorded as PodValueKept on the first pass already, so the second pass agrees.
    let pol = policy("a", json!({"preset": "HighConnectionServer"}));
    let record = json!({"version": 1, "policies": [], "entries": [{"policy": "a", "generation": 1,
        "sysctl": "net.core.somaxconn", "value": "4096", "outcome": "Injected",
        "delivery": "PodSecurityContext", "reason": "SafeSysctl", "message": "m"}]});
    let p = pod(json!({
        "metadata": {"annotations": {"kubetune.dev/decision": record.to_string()}},
        "spec": {"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "4096"}]}}
    }));
    let first = plan(&p, &ns(&[]), std::slice::from_ref(&pol), &facts(false));
    let kept: Vec<_> = first
        .decision
        .entries
        .iter()
        .map(|e| (e.sysctl.as_str(), e.outcome))
        .collect();
    assert_eq!(
        kept,
        [
            ("net.core.somaxconn", Outcome::PodValueKept),
            ("net.ipv4.tcp_max_syn_backlog", Outcome::Refused)
        ]
    );
    let mut again = p.clone();
    again.metadata.annotations.as_mut().unwrap().insert(
        "kubetune.dev/decision".into(),
        first.decision.to_annotation(),
    );
    assert_eq!(plan(&again, &ns(&[]), &[pol], &facts(false)), first);
}
