//! The rollout planner (`restartPods: Rollout`): which workloads are restarted, in what order,
//! what waits and what is skipped and why; workload state read from real apps/v1 objects; the
//! restart patch; status and the `RolledOut` condition.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kubetune_crds::policy::{
    condition, rollout_reason as reason, DeliveryDecision, Mode, RestartPods, SysctlDeliveryStatus,
    TuningPolicyStatus, WorkloadRolloutState,
};
use kubetune_operator::rollout::{
    apply_to_status, in_flight, plan, pod_is_failing, pod_sysctl_forbidden, resolve_owner,
    restart_patch, rolled_out, rollout_status, Cluster, MatchedPod, Owner, Plan, PolicyRollout,
    Progress, RestartRecord, Workload, WorkloadKind, WorkloadRef,
};
use serde_json::json;

const NS: &str = "shop";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_735_689_600 + secs).unwrap()
}

fn policy(name: &str, generation: i64) -> PolicyRollout {
    PolicyRollout {
        name: name.into(),
        generation,
        restart: RestartPods::Rollout,
        mode: Mode::Enforce,
        accepted: true,
        sysctls: vec![sysctl(
            "net.ipv4.tcp_keepalive_time",
            DeliveryDecision::PodSecurityContext,
        )],
        sysctl_forbidden: false,
    }
}

fn sysctl(name: &str, delivery: DeliveryDecision) -> SysctlDeliveryStatus {
    SysctlDeliveryStatus {
        name: name.into(),
        value: "600".into(),
        delivery,
        reason: "SafeSysctl".into(),
        message: String::new(),
        refused_pods: 0,
    }
}

fn id(kind: WorkloadKind, name: &str) -> WorkloadRef {
    WorkloadRef::new(kind, NS, name)
}

fn dep(name: &str) -> WorkloadRef {
    id(WorkloadKind::Deployment, name)
}

fn wl(id: WorkloadRef, progress: Progress, record: &str) -> Workload {
    Workload {
        id,
        paused: false,
        on_delete: false,
        progress,
        record: RestartRecord::parse(record),
    }
}

fn pods_of(owner: &Owner, prefix: &str, needing: usize, fine: usize) -> Vec<MatchedPod> {
    (0..needing + fine)
        .map(|i| MatchedPod {
            name: format!("{prefix}-{i}"),
            needs_restart: i < needing,
            owner: owner.clone(),
        })
        .collect()
}

fn owned(w: &WorkloadRef) -> Owner {
    Owner::Workload(w.clone())
}

fn manual(kind: &str, name: &str, reason: &'static str) -> Owner {
    Owner::Manual {
        kind: kind.into(),
        name: name.into(),
        reason,
    }
}

fn cluster(workloads: Vec<Workload>, cap: usize) -> Cluster {
    Cluster {
        in_flight: in_flight(&workloads),
        workloads: workloads.into_iter().map(|w| (w.id.clone(), w)).collect(),
        max_concurrent: cap,
        claims: BTreeMap::new(),
    }
}

/// (kind/name, state, reason) of every entry.
fn lines(p: &Plan) -> Vec<(String, WorkloadRolloutState, &'static str)> {
    p.entries
        .iter()
        .map(|e| (format!("{}/{}", e.kind, e.name), e.state, e.reason))
        .collect()
}

fn restarted(p: &Plan) -> Vec<String> {
    p.restart.iter().map(|r| r.workload.to_string()).collect()
}

use WorkloadRolloutState::{Pending, Restarted, Skipped};

#[test]
fn a_deployment_with_pods_needing_restart_is_restarted_once_per_generation() {
    let web = dep("web");
    let pods = pods_of(&owned(&web), "web", 2, 1);
    // Generation 3, never restarted (or restarted for an older generation only).
    for record in ["", "web-tuning@2", "other@1"] {
        let c = cluster(vec![wl(web.clone(), Progress::Complete, record)], 1);
        let p = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
        assert_eq!(restarted(&p), ["Deployment/web"], "record {record:?}");
        assert!(p.restart[0].record.has("web-tuning", 3));
        assert_eq!(p.restart[0].pods, 2);
        assert_eq!(
            lines(&p),
            [("Deployment/web".into(), Restarted, reason::ROLLING_OUT)]
        );
        let (ok, r, msg) = rolled_out(&p);
        assert!(!ok);
        assert_eq!(r, reason::RESTARTING_WORKLOADS);
        assert!(msg.contains("Deployment/web"), "{msg}");
    }
    // Other policies' entries are kept in the new record.
    let c = cluster(vec![wl(web.clone(), Progress::Complete, "other@1")], 1);
    let p = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
    assert_eq!(p.restart[0].record.render(), "other@1,web-tuning@3");
}

#[test]
fn the_record_of_this_generation_means_no_second_restart() {
    // As after an operator restart: the only memory is the annotation on the workload.
    let web = dep("web");
    let cases: Vec<(Progress, usize, WorkloadRolloutState, &str, bool, &str)> = vec![
        // Rolling out: old pods still need a restart, nothing to do but wait.
        (
            Progress::InProgress,
            2,
            Restarted,
            reason::ROLLING_OUT,
            false,
            reason::RESTARTING_WORKLOADS,
        ),
        // Done: every pod is new.
        (
            Progress::Complete,
            0,
            Restarted,
            reason::ROLLED_OUT,
            true,
            reason::ROLLOUT_COMPLETE,
        ),
        // Done, yet pods lack the sysctls (admitted while the webhook was down): not again.
        (
            Progress::Complete,
            1,
            Skipped,
            reason::ALREADY_RESTARTED,
            false,
            reason::MANUAL_RESTART_NEEDED,
        ),
    ];
    for (progress, needing, state, why, ok, cond) in cases {
        let c = cluster(vec![wl(web.clone(), progress.clone(), "web-tuning@3")], 1);
        let p = plan(
            &policy("web-tuning", 3),
            &pods_of(&owned(&web), "web", needing, 1),
            &c,
        )
        .unwrap();
        assert!(p.restart.is_empty(), "{progress:?}");
        assert_eq!(
            lines(&p),
            [("Deployment/web".into(), state, why)],
            "{progress:?}"
        );
        let (status, r, _) = rolled_out(&p);
        assert_eq!((status, r.as_str()), (ok, cond), "{progress:?}");
    }
}

#[test]
fn restarting_with_the_patch_then_reading_the_deployment_back_plans_nothing() {
    let mut d: Deployment = serde_json::from_value(deployment_json(3, 3, 3, 3, 3)).unwrap();
    let web = dep("web");
    let pods = pods_of(&owned(&web), "web", 3, 0);
    let c = cluster(vec![Workload::from_deployment(&d, 0)], 1);
    let first = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
    assert_eq!(first.restart.len(), 1);
    // Apply the patch as the apiserver would (merge into the template's annotations).
    let patch = restart_patch(&first.restart[0], t(10));
    let mut v = serde_json::to_value(&d).unwrap();
    json_merge(&mut v, &patch);
    v["metadata"]["generation"] = json!(4);
    d = serde_json::from_value(v).unwrap();
    // A new operator process: same pods (still old), the Deployment now rolling out.
    let w = Workload::from_deployment(&d, 0);
    assert_eq!(
        w.progress,
        Progress::InProgress,
        "generation 4 not observed yet"
    );
    let c = cluster(vec![w], 1);
    let second = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
    assert!(second.restart.is_empty());
    assert_eq!(
        lines(&second),
        [("Deployment/web".into(), Restarted, reason::ROLLING_OUT)]
    );
}

#[test]
fn restart_patch_is_the_pod_template_annotations_and_nothing_else() {
    let r = kubetune_operator::rollout::Restart {
        workload: dep("web"),
        record: RestartRecord::parse("b@4,a@1"),
        pods: 2,
    };
    let at =
        Timestamp::from_second(1_735_689_600).unwrap() + std::time::Duration::from_millis(1500);
    assert_eq!(
        restart_patch(&r, at),
        json!({"spec": {"template": {"metadata": {"annotations": {
            "kubetune.dev/restarted-for": "a@1,b@4",
            "kubetune.dev/restartedAt": "2025-01-01T00:00:01Z",
        }}}}})
    );
}

#[test]
fn restart_record_parses_leniently_and_renders_in_name_order() {
    let r = RestartRecord::parse(" b@4, a@1,junk,@3,c@x,d@2");
    assert_eq!(r.render(), "a@1,b@4,d@2");
    assert!(r.has("b", 4) && !r.has("b", 3) && !r.has("c", 0));
    assert_eq!(RestartRecord::parse("").render(), "");
}

#[test]
fn a_shared_workload_is_restarted_once_for_both_policies() {
    let web = dep("web");
    let pods = pods_of(&owned(&web), "web", 2, 0);
    let mut c = cluster(vec![wl(web.clone(), Progress::Complete, "")], 1);
    // Policy a (generation 1) and b (generation 4) both need web restarted.
    c.claims
        .insert(web.clone(), BTreeMap::from([("b".to_string(), 4)]));
    let pa = plan(&policy("a", 1), &pods, &c).unwrap();
    assert_eq!(restarted(&pa), ["Deployment/web"]);
    assert_eq!(pa.restart[0].record.render(), "a@1,b@4");
    // b, seeing a's claim, waits for a's restart instead of making its own.
    c.claims
        .insert(web.clone(), BTreeMap::from([("a".to_string(), 1)]));
    let pb = plan(&policy("b", 4), &pods, &c).unwrap();
    assert!(pb.restart.is_empty());
    assert_eq!(
        lines(&pb),
        [(
            "Deployment/web".into(),
            Pending,
            reason::RESTART_BY_OTHER_POLICY
        )]
    );
    let (_, _, msg) = rolled_out(&pb);
    assert!(msg.contains("RestartByOtherPolicy: a"), "{msg}");
    // After a's restart both find themselves in the record: nothing more.
    let c2 = cluster(vec![wl(web.clone(), Progress::InProgress, "a@1,b@4")], 1);
    for (name, g) in [("a", 1), ("b", 4)] {
        let p = plan(&policy(name, g), &pods, &c2).unwrap();
        assert!(p.restart.is_empty(), "{name}");
        assert_eq!(lines(&p)[0].2, reason::ROLLING_OUT, "{name}");
    }
    // A claimant already in the record does not hold the restart back.
    c.claims
        .insert(web.clone(), BTreeMap::from([("a".to_string(), 1)]));
    c.workloads.get_mut(&web).unwrap().record = RestartRecord::parse("a@1");
    let pb = plan(&policy("b", 4), &pods, &c).unwrap();
    assert_eq!(restarted(&pb), ["Deployment/web"]);
    assert_eq!(pb.restart[0].record.render(), "a@1,b@4");
}

#[test]
fn owners_the_operator_cannot_restart_are_named_for_a_manual_restart() {
    let web = dep("web");
    let gone = dep("gone");
    let mut pods = pods_of(&owned(&web), "web", 1, 0);
    pods.extend(pods_of(
        &manual("Pod", "debug", reason::BARE_POD),
        "debug",
        1,
        0,
    ));
    pods.extend(pods_of(
        &manual("Job", "backup-29", reason::JOB_POD),
        "backup",
        1,
        0,
    ));
    pods.extend(pods_of(
        &manual("Rollout", "canary", reason::UNKNOWN_OWNER),
        "canary",
        1,
        0,
    ));
    pods.extend(pods_of(
        &manual("ReplicaSet", "old-5d4f8", reason::OWNER_NOT_FOUND),
        "old",
        1,
        0,
    ));
    pods.extend(pods_of(&owned(&gone), "gone", 1, 0));
    // A manual target whose pods are all fine is not reported.
    pods.extend(pods_of(
        &manual("Pod", "fine", reason::BARE_POD),
        "fine",
        0,
        1,
    ));
    let c = cluster(vec![wl(web.clone(), Progress::Complete, "")], 1);
    let p = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
    assert_eq!(restarted(&p), ["Deployment/web"]);
    let skipped: BTreeSet<(String, &str)> = lines(&p)
        .into_iter()
        .filter(|l| l.1 == Skipped)
        .map(|l| (l.0, l.2))
        .collect();
    let want: BTreeSet<(String, &str)> = [
        ("Pod/debug", reason::BARE_POD),
        ("Job/backup-29", reason::JOB_POD),
        ("Rollout/canary", reason::UNKNOWN_OWNER),
        ("ReplicaSet/old-5d4f8", reason::OWNER_NOT_FOUND),
        ("Deployment/gone", reason::OWNER_NOT_FOUND),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_string(), r))
    .collect();
    assert_eq!(skipped, want);
    let s = rollout_status(&p);
    assert_eq!((s.restarted, s.pending, s.skipped), (1, 0, 5));
    assert_eq!(
        s.workloads[0].state, Skipped,
        "skipped listed before restarted"
    );
    // Once the Deployment is rolled out, what is left is the manual part.
    let c = cluster(vec![wl(web.clone(), Progress::Complete, "web-tuning@3")], 1);
    let pods: Vec<MatchedPod> = pods
        .into_iter()
        .map(|mut p| {
            p.needs_restart &= p.owner != owned(&web);
            p
        })
        .collect();
    let p = plan(&policy("web-tuning", 3), &pods, &c).unwrap();
    let (ok, r, msg) = rolled_out(&p);
    assert!(!ok);
    assert_eq!(r, reason::MANUAL_RESTART_NEEDED);
    assert!(
        msg.contains("Pod/debug (BarePod)") && msg.contains("Job/backup-29 (JobPod)"),
        "{msg}"
    );
}

#[test]
fn paused_on_delete_busy_and_stalled_workloads_are_not_restarted() {
    let mut paused = wl(dep("paused"), Progress::Complete, "");
    paused.paused = true;
    let mut on_delete = wl(id(WorkloadKind::StatefulSet, "db"), Progress::Complete, "");
    on_delete.on_delete = true;
    let busy = wl(dep("busy"), Progress::InProgress, "");
    let stuck = wl(
        dep("stuck"),
        Progress::Stalled("ProgressDeadlineExceeded".into()),
        "",
    );
    let all = vec![paused, on_delete, busy, stuck];
    let pods: Vec<MatchedPod> = all
        .iter()
        .flat_map(|w| pods_of(&owned(&w.id), &w.id.name, 1, 0))
        .collect();
    let p = plan(&policy("web-tuning", 3), &pods, &cluster(all, 5)).unwrap();
    assert!(p.restart.is_empty());
    assert_eq!(
        lines(&p),
        [
            (
                "Deployment/busy".into(),
                Pending,
                reason::ROLLOUT_IN_PROGRESS
            ),
            (
                "Deployment/paused".into(),
                Skipped,
                reason::DEPLOYMENT_PAUSED
            ),
            ("Deployment/stuck".into(), Skipped, reason::WORKLOAD_STALLED),
            ("StatefulSet/db".into(), Skipped, reason::ON_DELETE_STRATEGY),
        ]
    );
    // A user's rollout in progress (no record) does not count against the operator's cap.
    assert!(in_flight(&[wl(dep("busy"), Progress::InProgress, "")]).is_empty());
}

#[test]
fn blocked_policies_restart_nothing_and_say_why() {
    let web = dep("web");
    let pods = pods_of(&owned(&web), "web", 2, 0);
    let c = cluster(vec![wl(web.clone(), Progress::Complete, "")], 1);
    let mut dry = policy("p", 1);
    dry.mode = Mode::DryRun;
    let mut not_accepted = policy("p", 1);
    not_accepted.accepted = false;
    let mut refused = policy("p", 1);
    refused
        .sysctls
        .push(sysctl("net.core.somaxconn", DeliveryDecision::Refused));
    let mut forbidden = policy("p", 1);
    forbidden.sysctl_forbidden = true;
    for (p, why) in [
        (dry, reason::DRY_RUN),
        (not_accepted, reason::NOT_ACCEPTED),
        (refused, reason::SYSCTLS_REFUSED),
        (forbidden, reason::SYSCTL_FORBIDDEN),
    ] {
        assert!(!p.eligible(), "{why}");
        let plan = plan(&p, &pods, &c).unwrap();
        assert!(plan.restart.is_empty(), "{why}");
        assert_eq!(lines(&plan), [("Deployment/web".into(), Skipped, why)]);
        let (ok, r, msg) = rolled_out(&plan);
        assert_eq!((ok, r.as_str()), (false, why));
        assert!(msg.contains("Deployment/web"), "{msg}");
    }
    let mut never = policy("p", 1);
    never.restart = RestartPods::Never;
    assert!(plan(&never, &pods, &c).is_none());
    assert!(!never.eligible() && policy("p", 1).eligible());
}

#[test]
fn the_cluster_wide_cap_paces_restarts_in_kind_then_name_order() {
    let ws = vec![
        wl(id(WorkloadKind::DaemonSet, "agent"), Progress::Complete, ""),
        wl(id(WorkloadKind::StatefulSet, "db"), Progress::Complete, ""),
        wl(dep("web"), Progress::Complete, ""),
        wl(dep("api"), Progress::Complete, ""),
    ];
    let pods: Vec<MatchedPod> = ws
        .iter()
        .flat_map(|w| pods_of(&owned(&w.id), &w.id.name, 1, 0))
        .collect();
    let order = [
        "Deployment/api",
        "Deployment/web",
        "StatefulSet/db",
        "DaemonSet/agent",
    ];
    // No cap pressure: everything, in order.
    let p = plan(&policy("p", 1), &pods, &cluster(ws.clone(), 10)).unwrap();
    assert_eq!(restarted(&p), order);
    // Cap 1 (the default): the first now, the rest wait.
    let p = plan(&policy("p", 1), &pods, &cluster(ws.clone(), 1)).unwrap();
    assert_eq!(restarted(&p), ["Deployment/api"]);
    let pending: Vec<String> = lines(&p)
        .into_iter()
        .filter(|l| l.1 == Pending)
        .map(|l| l.0)
        .collect();
    assert_eq!(pending, order[1..]);
    assert!(p
        .entries
        .iter()
        .filter(|e| e.state == Pending)
        .all(|e| e.reason == reason::CONCURRENCY_CAP));
    let s = rollout_status(&p);
    assert_eq!((s.restarted, s.pending, s.skipped), (1, 3, 0));
    // Cap 2 with one rollout of another policy in flight: one slot left.
    let mut c = cluster(ws.clone(), 2);
    c.in_flight.insert(dep("elsewhere"));
    let p = plan(&policy("p", 1), &pods, &c).unwrap();
    assert_eq!(restarted(&p), ["Deployment/api"]);
    // Our own rollout in flight fills the slot: the next starts only when it completed.
    let mut ws2 = ws.clone();
    ws2[3] = wl(dep("api"), Progress::InProgress, "p@1");
    let p = plan(&policy("p", 1), &pods, &cluster(ws2.clone(), 1)).unwrap();
    assert!(p.restart.is_empty());
    ws2[3].progress = Progress::Complete;
    let pods2: Vec<MatchedPod> = pods
        .iter()
        .cloned()
        .map(|mut m| {
            m.needs_restart &= !m.name.starts_with("api");
            m
        })
        .collect();
    let p = plan(&policy("p", 1), &pods2, &cluster(ws2, 1)).unwrap();
    assert_eq!(restarted(&p), ["Deployment/web"]);
}

#[test]
fn a_stalled_rollout_of_this_generation_stops_further_restarts() {
    let ws = vec![
        wl(
            dep("api"),
            Progress::Stalled("ReplicaSet \"api-7c\" has timed out progressing.".into()),
            "p@2",
        ),
        wl(dep("web"), Progress::Complete, ""),
    ];
    let mut pods = pods_of(&owned(&dep("api")), "api", 1, 0);
    pods.extend(pods_of(&owned(&dep("web")), "web", 1, 0));
    let p = plan(&policy("p", 2), &pods, &cluster(ws.clone(), 5)).unwrap();
    assert!(p.restart.is_empty());
    assert_eq!(
        lines(&p),
        [
            ("Deployment/api".into(), Restarted, reason::ROLLOUT_STALLED),
            ("Deployment/web".into(), Skipped, reason::ROLLOUT_STALLED),
        ]
    );
    let (ok, r, msg) = rolled_out(&p);
    assert_eq!((ok, r.as_str()), (false, reason::ROLLOUT_STALLED));
    assert!(
        msg.contains("Deployment/api") && msg.contains("timed out"),
        "{msg}"
    );
    assert!(
        in_flight(&ws).is_empty(),
        "a stalled rollout does not hold the cap"
    );
    // Stalled for an older generation: not this generation's rollout; the rest proceeds.
    let mut old = ws.clone();
    old[0].record = RestartRecord::parse("p@1");
    let p = plan(&policy("p", 2), &pods, &cluster(old, 5)).unwrap();
    assert_eq!(restarted(&p), ["Deployment/web"]);
    assert_eq!(
        lines(&p)[0],
        ("Deployment/api".into(), Skipped, reason::WORKLOAD_STALLED)
    );
}

#[test]
fn status_and_condition_follow_the_plan_and_vanish_for_never() {
    let web = dep("web");
    let pods = pods_of(&owned(&web), "web", 1, 0);
    let c = cluster(vec![wl(web.clone(), Progress::Complete, "")], 1);
    let p = plan(&policy("p", 1), &pods, &c).unwrap();
    let mut status = TuningPolicyStatus::default();
    apply_to_status(&mut status, Some(&p), &[], t(0));
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::ROLLED_OUT)
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", reason::RESTARTING_WORKLOADS)
    );
    assert_eq!(cond.observed_generation, Some(1));
    let r = status.rollout.as_ref().unwrap();
    assert_eq!((r.restarted, r.pending, r.skipped), (1, 0, 0));
    assert_eq!(r.workloads[0].pods_needing_restart, 1);
    // Applying again (next reconcile, same plan) keeps one condition and its transition time.
    let prev = status.conditions.clone();
    apply_to_status(&mut status, Some(&p), &prev, t(60));
    let conds: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == condition::ROLLED_OUT)
        .collect();
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0].last_transition_time.0, t(0));
    // restartPods back to Never: no rollout status, no condition.
    apply_to_status(&mut status, None, &prev, t(120));
    assert!(status.rollout.is_none());
    assert!(status
        .conditions
        .iter()
        .all(|c| c.type_ != condition::ROLLED_OUT));
    // Nothing needs a restart: RolledOut=True.
    let p = plan(&policy("p", 1), &pods_of(&owned(&web), "web", 0, 2), &c).unwrap();
    assert!(p.entries.is_empty() && p.restart.is_empty());
    assert_eq!(rolled_out(&p).1, reason::ROLLOUT_COMPLETE);
    assert!(rolled_out(&p).0);
}

// --- Owners and workload state from real objects.

fn pod_owned_by(kind: &str, api_version: &str, name: &str) -> Pod {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p-1", "namespace": NS},
        "status": {"phase": "Running"},
    }))
    .unwrap();
    if !kind.is_empty() {
        pod.metadata.owner_references = Some(vec![
            owner_ref("ConfigMap", "v1", "not-a-controller", false),
            owner_ref(kind, api_version, name, true),
        ]);
    }
    pod
}

fn owner_ref(kind: &str, api_version: &str, name: &str, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(controller),
        block_owner_deletion: None,
    }
}

#[test]
fn owners_resolve_through_the_replicaset_to_the_deployment() {
    let rs = |name: &str| match name {
        "web-5d4f8" => Some(Some(owner_ref("Deployment", "apps/v1", "web", true))),
        "argo-6b7" => Some(Some(owner_ref(
            "Rollout",
            "argoproj.io/v1alpha1",
            "argo",
            true,
        ))),
        "lonely-1" => Some(None),
        _ => None,
    };
    let cases = [
        (
            ("ReplicaSet", "apps/v1", "web-5d4f8"),
            Owner::Workload(dep("web")),
        ),
        (
            ("ReplicaSet", "apps/v1", "argo-6b7"),
            manual("Rollout", "argo", reason::UNKNOWN_OWNER),
        ),
        (
            ("ReplicaSet", "apps/v1", "lonely-1"),
            manual("ReplicaSet", "lonely-1", reason::UNKNOWN_OWNER),
        ),
        (
            ("ReplicaSet", "apps/v1", "deleted-9"),
            manual("ReplicaSet", "deleted-9", reason::OWNER_NOT_FOUND),
        ),
        (
            ("StatefulSet", "apps/v1", "db"),
            Owner::Workload(id(WorkloadKind::StatefulSet, "db")),
        ),
        (
            ("DaemonSet", "apps/v1", "agent"),
            Owner::Workload(id(WorkloadKind::DaemonSet, "agent")),
        ),
        (
            ("Job", "batch/v1", "backup-29"),
            manual("Job", "backup-29", reason::JOB_POD),
        ),
        (
            ("Node", "v1", "node-1"),
            manual("Node", "node-1", reason::UNKNOWN_OWNER),
        ),
        (("", "", ""), manual("Pod", "p-1", reason::BARE_POD)),
    ];
    for ((kind, api, name), want) in cases {
        assert_eq!(
            resolve_owner(&pod_owned_by(kind, api, name), rs),
            want,
            "{kind}/{name}"
        );
    }
}

fn deployment_json(
    replicas: i32,
    updated: i32,
    total: i32,
    available: i32,
    observed: i64,
) -> serde_json::Value {
    json!({
        "metadata": {"name": "web", "namespace": NS, "generation": 3},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        },
        "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated, "availableReplicas": available},
    })
}

fn json_merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

#[test]
fn deployment_progress_is_judged_like_kubectl_rollout_status() {
    let d = |v: serde_json::Value| {
        Workload::from_deployment(&serde_json::from_value::<Deployment>(v).unwrap(), 0)
    };
    assert_eq!(
        d(deployment_json(3, 3, 3, 3, 3)).progress,
        Progress::Complete
    );
    assert_eq!(
        d(deployment_json(3, 3, 3, 3, 2)).progress,
        Progress::InProgress,
        "generation not observed"
    );
    assert_eq!(
        d(deployment_json(3, 1, 3, 3, 3)).progress,
        Progress::InProgress,
        "not all updated"
    );
    assert_eq!(
        d(deployment_json(3, 3, 4, 3, 3)).progress,
        Progress::InProgress,
        "old replicas left"
    );
    assert_eq!(
        d(deployment_json(3, 3, 3, 2, 3)).progress,
        Progress::InProgress,
        "not all available"
    );
    let mut v = deployment_json(3, 1, 4, 3, 3);
    v["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"web-7c\" has timed out progressing."}]);
    assert_eq!(
        d(v).progress,
        Progress::Stalled("ReplicaSet \"web-7c\" has timed out progressing.".into())
    );
    let mut v = deployment_json(3, 3, 3, 3, 3);
    v["spec"]["paused"] = json!(true);
    v["spec"]["template"]["metadata"]["annotations"] = json!({"kubetune.dev/restarted-for": "a@1"});
    let w = d(v);
    assert!(w.paused);
    assert!(w.record.has("a", 1));
    let failing = Workload::from_deployment(
        &serde_json::from_value(deployment_json(3, 1, 4, 3, 3)).unwrap(),
        2,
    );
    assert!(
        matches!(failing.progress, Progress::Stalled(ref m) if m.contains("2 pod(s) failing")),
        "{:?}",
        failing.progress
    );
    let complete_with_failing = Workload::from_deployment(
        &serde_json::from_value(deployment_json(3, 3, 3, 3, 3)).unwrap(),
        1,
    );
    assert_eq!(
        complete_with_failing.progress,
        Progress::Complete,
        "failing pods stall only a rollout"
    );
}

#[test]
fn statefulset_and_daemonset_progress_strategy_and_deadline() {
    let sts = |status: serde_json::Value,
               strategy: serde_json::Value,
               restarted_at: Option<i64>| {
        let mut v = json!({
            "metadata": {"name": "db", "namespace": NS, "generation": 2},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "updateStrategy": strategy,
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "pg"}]}}},
            "status": status,
        });
        if let Some(s) = restarted_at {
            v["spec"]["template"]["metadata"]["annotations"] = json!({"kubetune.dev/restarted-for": "p@1", "kubetune.dev/restartedAt": t(s).to_string()});
        }
        Workload::from_stateful_set(
            &serde_json::from_value::<StatefulSet>(v).unwrap(),
            0,
            t(1000),
        )
    };
    let rolling = json!({"type": "RollingUpdate"});
    let done = json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "currentRevision": "db-2", "updateRevision": "db-2"});
    let busy = json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"});
    assert_eq!(
        sts(done.clone(), rolling.clone(), None).progress,
        Progress::Complete
    );
    assert_eq!(
        sts(busy.clone(), rolling.clone(), None).progress,
        Progress::InProgress
    );
    assert_eq!(
        sts(busy.clone(), rolling.clone(), Some(900)).progress,
        Progress::InProgress,
        "within the deadline"
    );
    assert!(
        matches!(
            sts(busy.clone(), rolling.clone(), Some(300)).progress,
            Progress::Stalled(_)
        ),
        "600 s after the restart"
    );
    assert_eq!(
        sts(done.clone(), rolling.clone(), Some(0)).progress,
        Progress::Complete,
        "complete is never stalled"
    );
    let partition = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
    let partial = json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"});
    assert_eq!(
        sts(partial, partition, None).progress,
        Progress::Complete,
        "partition reached"
    );
    assert!(sts(done, json!({"type": "OnDelete"}), None).on_delete);

    let ds = |desired: i32, updated: i32, available: i32, strategy: &str| {
        let v = json!({
            "metadata": {"name": "agent", "namespace": NS, "generation": 5},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": {"type": strategy},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}}},
            "status": {"observedGeneration": 5, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                "numberMisscheduled": 0, "numberReady": available, "updatedNumberScheduled": updated, "numberAvailable": available},
        });
        Workload::from_daemon_set(&serde_json::from_value::<DaemonSet>(v).unwrap(), 0, t(0))
    };
    assert_eq!(ds(4, 4, 4, "RollingUpdate").progress, Progress::Complete);
    assert_eq!(ds(4, 2, 4, "RollingUpdate").progress, Progress::InProgress);
    assert_eq!(ds(4, 4, 3, "RollingUpdate").progress, Progress::InProgress);
    assert!(ds(4, 4, 4, "OnDelete").on_delete);
    assert_eq!(
        ds(4, 4, 4, "RollingUpdate").id,
        id(WorkloadKind::DaemonSet, "agent")
    );
}

#[test]
fn failing_and_sysctl_forbidden_pods_are_recognised() {
    let pod = |status: serde_json::Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    };
    let crash = pod(
        json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false,
        "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
    );
    let starting = pod(
        json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false,
        "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
    );
    let forbidden = pod(
        json!({"phase": "Failed", "reason": "SysctlForbidden", "message": "Pod forbidden sysctl: ..."}),
    );
    let evicted = pod(json!({"phase": "Failed", "reason": "Evicted"}));
    assert!(pod_is_failing(&crash) && !pod_sysctl_forbidden(&crash));
    assert!(!pod_is_failing(&starting));
    assert!(pod_is_failing(&forbidden) && pod_sysctl_forbidden(&forbidden));
    assert!(pod_is_failing(&evicted) && !pod_sysctl_forbidden(&evicted));
    assert!(!pod_is_failing(&pod(json!({"phase": "Running"}))));
}

#[test]
fn rolled_out_transitions_publish_one_event_each() {
    use kubetune_operator::events::{transition_events, Severity};
    let web = dep("web");
    let status_for = |w: Workload, needing: usize| {
        let p = plan(
            &policy("p", 2),
            &pods_of(&owned(&web), "web", needing, 0),
            &cluster(vec![w], 1),
        )
        .unwrap();
        let mut s = TuningPolicyStatus::default();
        apply_to_status(&mut s, Some(&p), &[], t(0));
        s
    };
    let restarting = status_for(wl(web.clone(), Progress::Complete, ""), 1);
    let stalled = status_for(
        wl(web.clone(), Progress::Stalled("deadline".into()), "p@2"),
        1,
    );
    let done = status_for(wl(web.clone(), Progress::Complete, "p@2"), 0);
    let ev = transition_events(Some(&restarting), &stalled);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].severity, ev[0].reason.as_str()),
        (Severity::Warning, reason::ROLLOUT_STALLED)
    );
    assert!(transition_events(Some(&stalled), &stalled).is_empty());
    let ev = transition_events(Some(&stalled), &done);
    assert_eq!(
        (ev[0].severity, ev[0].reason.as_str()),
        (Severity::Normal, "RolledOut")
    );
}
