//! Snapshot tests of the pure renderers on realistic objects (tests/fixtures): the expected
//! text is committed here; the README's example output is this output.

mod fixtures;

use fixtures::*;
use kubectl_kubetune::{top, why};
use serde_json::json;

fn check(name: &str, actual: &str, expected: &str) {
    assert!(
        actual == expected,
        "{name}: rendering changed; actual output:\n-----\n{actual}-----"
    );
}

/// web-2: a policy injected somaxconn, the agent sees it and no overflows: verified.
fn fixed_web() -> why::Why {
    let pod = pod(
        "web-2",
        "web",
        "uid-web-2",
        Some(decision(
            &["web-backlog"],
            vec![injected("web-backlog", "net.core.somaxconn", "4096")],
        )),
    );
    let policies = vec![
        policy("web-backlog", "web", "Verified", json!([
            condition("Accepted", "True", "Accepted", "1 sysctl(s) deliverable: net.core.somaxconn=4096 via PodSecurityContext"),
            condition("Applied", "True", "Applied", "all 1 matched pods were admitted with the sysctls"),
            condition("Verified", "True", "Verified", "1 of 1 applied pods show the desired values in their netns and no accept-queue overflows over 300s"),
        ])),
        policy("api-backlog", "api", "NotSysctlBound", json!([])),
    ];
    let report = report(
        "web-2",
        "uid-web-2",
        4096,
        vec![listener(
            8080,
            511,
            511,
            37,
            0,
            0,
            "ApplicationBacklog",
            "Healthy",
        )],
        None,
    );
    why::explain(&pod, &policies, Some(&report))
}

#[test]
fn why_a_fixed_pod() {
    check(
        "why web-2",
        &why::render(&fixed_web()),
        r#"Pod shop/web-2 on node worker-1

Policies selecting it (1):
  web-backlog  priority 0, Enforce, wants net.core.somaxconn=4096; phase Verified
    Accepted=True (Accepted): 1 sysctl(s) deliverable: net.core.somaxconn=4096 via PodSecurityContext
    Applied=True (Applied): all 1 matched pods were admitted with the sysctls
    Verified=True (Verified): 1 of 1 applied pods show the desired values in their netns and no accept-queue overflows over 300s

Admission decision (kubetune.dev/decision):
  net.core.somaxconn=4096  injected via securityContext by web-backlog [AllowedUnsafeSysctl], observed 4096: every node the pod may run on lists it in allowedUnsafeSysctls

Observed by the agent (ebpf-tracepoint, 2026-11-30T10:12:40Z, window 60s): somaxconn 4096, 1 listener(s), 0 overflows (0 in the window), diagnosis Healthy
  LISTENER      CONTAINER  REQUESTED  EFFECTIVE  QUEUE/MAX  OVERFLOWS/RECENT  LIMITED BY          DIAGNOSIS
  0.0.0.0:8080  web        511        511        37/37      0/0               ApplicationBacklog  Healthy

Verdict:   no accept-queue overflows in the last 60s on 1 listener(s); the injected sysctls are in place in the pod's netns
Next step: nothing to do
"#,
    );
}

#[test]
fn why_an_application_backlog_bound_pod() {
    let pod = pod(
        "api-2",
        "api",
        "uid-api-2",
        Some(decision(
            &["api-backlog"],
            vec![injected("api-backlog", "net.core.somaxconn", "4096")],
        )),
    );
    let policies = vec![policy("api-backlog", "api", "NotSysctlBound", json!([
        condition("Verified", "False", "ApplicationBacklogBound", "the sysctls are applied but the application's own listen() backlog is the limit in api-2: raise the application's backlog; the sysctl is not the fix"),
    ]))];
    let report = report(
        "api-2",
        "uid-api-2",
        4096,
        vec![listener(
            9090,
            100,
            100,
            101,
            199,
            199,
            "ApplicationBacklog",
            "ApplicationBacklogBound",
        )],
        None,
    );
    check(
        "why api-2",
        &why::render(&why::explain(&pod, &policies, Some(&report))),
        r#"Pod shop/api-2 on node worker-1

Policies selecting it (1):
  api-backlog  priority 0, Enforce, wants net.core.somaxconn=4096; phase NotSysctlBound
    Verified=False (ApplicationBacklogBound): the sysctls are applied but the application's own listen() backlog is the limit in api-2: raise the application's backlog; the sysctl is not the fix

Admission decision (kubetune.dev/decision):
  net.core.somaxconn=4096  injected via securityContext by api-backlog [AllowedUnsafeSysctl], observed 4096: every node the pod may run on lists it in allowedUnsafeSysctls

Observed by the agent (ebpf-tracepoint, 2026-11-30T10:12:40Z, window 60s): somaxconn 4096, 1 listener(s), 199 overflows (199 in the window), diagnosis ApplicationBacklogBound
  LISTENER      CONTAINER  REQUESTED  EFFECTIVE  QUEUE/MAX  OVERFLOWS/RECENT  LIMITED BY          DIAGNOSIS
  0.0.0.0:9090  api        100        100        101/101    199/199           ApplicationBacklog  ApplicationBacklogBound

Verdict:   port 9090 drops connections because the application's own listen() backlog (100) is the limit, not net.core.somaxconn (4096); a sysctl does not help
Next step: raise the application's backlog (nginx `listen 9090 backlog=N`, uwsgi --listen N, Java ServerSocket backlog) up to 4096, then roll the pods
"#,
    );
}

#[test]
fn why_an_untuned_somaxconn_bound_pod() {
    let pod = pod("cart-0", "cart", "uid-cart-0", Some(decision(&[], vec![])));
    let report = report(
        "cart-0",
        "uid-cart-0",
        128,
        vec![listener(
            8080,
            511,
            128,
            129,
            171,
            171,
            "Somaxconn",
            "SomaxconnBound",
        )],
        Some("apiVersion: kubetune.dev/v1alpha1\nkind: TuningPolicy\n"),
    );
    let w = why::explain(&pod, &[], Some(&report));
    check(
        "why cart-0",
        &why::render(&w),
        r#"Pod shop/cart-0 on node worker-1

Policies selecting it: none

Admission decision: no policy matched at admission

Observed by the agent (ebpf-tracepoint, 2026-11-30T10:12:40Z, window 60s): somaxconn 128, 1 listener(s), 171 overflows (171 in the window), diagnosis SomaxconnBound
  LISTENER      CONTAINER  REQUESTED  EFFECTIVE  QUEUE/MAX  OVERFLOWS/RECENT  LIMITED BY  DIAGNOSIS
  0.0.0.0:8080  cart       511        128        129/129    171/171           Somaxconn   SomaxconnBound

Verdict:   port 8080 drops connections because net.core.somaxconn (128) caps the backlog the application asks for (511); no TuningPolicy raising it selects this pod
Next step: apply the recommended policy, then recreate the pod: kubectl -n shop get listenerreport cart-0 -o jsonpath='{.status.recommendation}' | kubectl apply -f -
"#,
    );
}

#[test]
fn why_a_refused_sysctl() {
    let refused = json!({"policy": "cart-backlog", "generation": 1, "sysctl": "net.core.somaxconn", "value": "4096",
        "outcome": "Refused", "reason": "RefusedUnsafeSysctl",
        "message": "net.core.somaxconn is an unsafe sysctl and node group(s) default do not list it in allowedUnsafeSysctls, and tuning-CNI delivery is not enabled in the cluster facts; the pod would fail with SysctlForbidden"});
    let pod = pod(
        "cart-1",
        "cart",
        "uid-cart-1",
        Some(decision(&["cart-backlog"], vec![refused])),
    );
    let policies = vec![policy("cart-backlog", "cart", "Refused", json!([]))];
    let report = report(
        "cart-1",
        "uid-cart-1",
        128,
        vec![listener(
            8080,
            511,
            128,
            129,
            60,
            12,
            "Somaxconn",
            "SomaxconnBound",
        )],
        None,
    );
    let w = why::explain(&pod, &policies, Some(&report));
    assert!(
        w.next_step.contains("allowedUnsafeSysctls"),
        "{}",
        w.next_step
    );
    check(
        "why cart-1",
        &why::render(&w),
        r#"Pod shop/cart-1 on node worker-1

Policies selecting it (1):
  cart-backlog  priority 0, Enforce, wants net.core.somaxconn=4096; phase Refused

Admission decision (kubetune.dev/decision):
  net.core.somaxconn=4096  refused by cart-backlog [RefusedUnsafeSysctl], observed 128: net.core.somaxconn is an unsafe sysctl and node group(s) default do not list it in allowedUnsafeSysctls, and tuning-CNI delivery is not enabled in the cluster facts; the pod would fail with SysctlForbidden

Observed by the agent (ebpf-tracepoint, 2026-11-30T10:12:40Z, window 60s): somaxconn 128, 1 listener(s), 60 overflows (12 in the window), diagnosis SomaxconnBound
  LISTENER      CONTAINER  REQUESTED  EFFECTIVE  QUEUE/MAX  OVERFLOWS/RECENT  LIMITED BY  DIAGNOSIS
  0.0.0.0:8080  cart       511        128        129/129    60/12             Somaxconn   SomaxconnBound

Verdict:   port 8080 drops connections because net.core.somaxconn (128) caps the backlog the application asks for (511); kubetune refused to raise it (RefusedUnsafeSysctl: net.core.somaxconn is an unsafe sysctl and node group(s) default do not list it in allowedUnsafeSysctls, and tuning-CNI delivery is not enabled in the cluster facts; the pod would fail with SysctlForbidden)
Next step: allow net.core.somaxconn in the kubelets' allowedUnsafeSysctls and list it for the node group in the cluster facts (or enable tuning-CNI delivery), then recreate the pod
"#,
    );
}

#[test]
fn why_without_report_or_decision() {
    let pod = pod("web-1", "web", "uid-web-1", None);
    let policies = vec![policy("web-backlog", "web", "PodsNeedRestart", json!([]))];
    // A report of an earlier pod with the same name does not count.
    let stale = report("web-1", "uid-old", 128, vec![], None);
    let w = why::explain(&pod, &policies, Some(&stale));
    assert!(w.observed.is_none());
    check(
        "why web-1",
        &why::render(&w),
        r#"Pod shop/web-1 on node worker-1

Policies selecting it (1):
  web-backlog  priority 0, Enforce, wants net.core.somaxconn=4096; phase PodsNeedRestart

Admission decision: none recorded (the pod was admitted without the kubetune webhook: created before the policy or kubetune, the webhook was unreachable, or the namespace is excluded)

Observed by the agent: no ListenerReport for this pod yet

Verdict:   policy web-backlog selects this pod, but the pod was admitted before it (or without the kubetune webhook), so it has none of its sysctls
Next step: recreate the pod (e.g. kubectl rollout restart deployment/NAME) so admission injects them
"#,
    );
}

#[test]
fn why_json_carries_every_part() {
    let v = serde_json::to_value(fixed_web()).unwrap();
    assert_eq!(v["pod"], "web-2");
    assert_eq!(
        v["policies"].as_array().unwrap().len(),
        1,
        "only web-backlog selects web-2"
    );
    assert_eq!(v["policies"][0]["conditions"][2]["type"], "Verified");
    assert_eq!(v["decision"]["state"], "present");
    assert_eq!(v["decision"]["sysctls"][0]["observed"], "4096");
    assert_eq!(v["decision"]["sysctls"][0]["outcome"], "Injected");
    assert_eq!(v["observed"]["somaxconn"], 4096);
    assert_eq!(v["observed"]["listeners"][0]["requestedBacklog"], 511);
    assert_eq!(v["observed"]["diagnosis"], "Healthy");
    assert_eq!(v["nextStep"], "nothing to do");
}

fn cluster_reports() -> Vec<kubetune_crds::report::ListenerReport> {
    vec![
        report(
            "web-2",
            "u1",
            4096,
            vec![listener(
                8080,
                511,
                511,
                37,
                0,
                0,
                "ApplicationBacklog",
                "Healthy",
            )],
            None,
        ),
        report(
            "api-2",
            "u2",
            4096,
            vec![listener(
                9090,
                100,
                100,
                101,
                199,
                199,
                "ApplicationBacklog",
                "ApplicationBacklogBound",
            )],
            None,
        ),
        report(
            "cart-0",
            "u3",
            128,
            vec![
                listener(8080, 511, 128, 129, 171, 171, "Somaxconn", "SomaxconnBound"),
                listener(9100, 128, 128, 3, 2, 0, "ApplicationBacklog", "Healthy"),
            ],
            None,
        ),
    ]
}

#[test]
fn top_lists_overflowing_listeners_worst_first() {
    let rows = top::rows(&cluster_reports(), 10);
    check(
        "top",
        &top::render(&rows),
        r#"NAMESPACE  POD     CONTAINER  LISTENER      RECENT     TOTAL  REQUESTED  EFFECTIVE  SOMAXCONN  DIAGNOSIS
shop       api-2   api        0.0.0.0:9090  199 (60s)  199    100        100        4096       ApplicationBacklogBound
shop       cart-0  cart       0.0.0.0:8080  171 (60s)  171    511        128        128        SomaxconnBound
shop       cart-0  cart       0.0.0.0:9100  0 (60s)    2      128        128        128        Healthy

`kubectl kubetune why POD -n NAMESPACE` explains one.
"#,
    );
    let v = serde_json::to_value(&rows).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "web-2 has no overflows");
    assert_eq!(v[0]["pod"], "api-2");
    assert_eq!(v[0]["overflowsRecent"], 199);
    assert_eq!(top::rows(&cluster_reports(), 1).len(), 1);
    check(
        "top empty",
        &top::render(&[]),
        "No listener has dropped connections (no ListenerReport shows accept-queue overflows).\n",
    );
}
