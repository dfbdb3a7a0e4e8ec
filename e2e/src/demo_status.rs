//! The operator's status function applied to the demo's pods and reports, printed like
//! `kubectl get tuningpolicies`.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::heartbeat::Heartbeat;
use kubetune_crds::report::ListenerReport;
use kubetune_crds::{TuningPolicy, TuningPolicyStatus};
use kubetune_operator::status::Environment;

/// The operator's `evaluate` for every policy at `now`, with the demo's agent watching the
/// reports' nodes since `agent_started` (its heartbeat renewed at `now`).
pub fn statuses(
    policies: &[TuningPolicy],
    pods: &BTreeMap<String, Pod>,
    reports: &[ListenerReport],
    facts: &ClusterFacts,
    agent_started: Timestamp,
    now: Timestamp,
) -> BTreeMap<String, TuningPolicyStatus> {
    let agents = reports
        .iter()
        .map(|r| {
            let hb = Heartbeat {
                holder: "kubetune-agent-demo".into(),
                renewed: now,
                duration: SignedDuration::from_secs(30),
                watching_since: agent_started,
            };
            (r.spec.node_name.clone(), hb)
        })
        .collect();
    let env = Environment {
        agents,
        ..Environment::default()
    };
    policies
        .iter()
        .map(|p| {
            let st = kubetune_operator::status::evaluate(
                p,
                pods.values(),
                reports.iter(),
                facts,
                &env,
                now,
            )
            .status;
            (p.metadata.name.clone().unwrap_or_default(), st)
        })
        .collect()
}

/// Print the printer columns and the conditions.
pub fn print(
    w: &mut dyn Write,
    statuses: &BTreeMap<String, TuningPolicyStatus>,
) -> std::io::Result<()> {
    writeln!(w, "  $ kubectl get tuningpolicies -n shop")?;
    writeln!(
        w,
        "  {:<12} {:<26} {:>7} {:>7} {:>8} {:>11}  {:<24}",
        "NAME", "SYSCTLS", "MATCHED", "APPLIED", "VERIFIED", "OVERFLOWING", "STATUS"
    )?;
    for (name, s) in statuses {
        writeln!(
            w,
            "  {:<12} {:<26} {:>7} {:>7} {:>8} {:>11}  {:<24}",
            name,
            s.summary.as_deref().unwrap_or("-"),
            s.matched_pods,
            s.applied_pods,
            s.verified_pods,
            s.overflowing_pods,
            s.phase.as_deref().unwrap_or("-")
        )?;
    }
    for (name, s) in statuses {
        for c in &s.conditions {
            writeln!(
                w,
                "    {name} {}={} ({}): {}",
                c.type_, c.status, c.reason, c.message
            )?;
        }
    }
    Ok(())
}
