//! Which Kubernetes Events a status change deserves. Pure: `(old status, new status) -> events`;
//! the reconciler publishes them on the TuningPolicy with `kube::runtime::events::Recorder`.

use kubetune_crds::policy::{condition, rollout_reason, DeliveryDecision, TuningPolicyStatus};

use crate::status::{find_condition, reason};

/// Severity of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

/// One event to publish on the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    /// Severity.
    pub severity: Severity,
    /// Reason (CamelCase): `Applied`, `Verified`, `StillOverflowing`, `ApplicationBacklogBound`,
    /// `SlowAccept`, `PodsNeedRestart`, `Refused`, `NotAccepted`, `RolledOut`, `RolloutStalled`,
    /// `ManualRestartNeeded`.
    pub reason: String,
    /// Human message.
    pub note: String,
}

fn cond_key(s: Option<&TuningPolicyStatus>, t: &str) -> Option<(String, String)> {
    s.and_then(|s| find_condition(s, t))
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Events for the transition `old -> new` (`old = None`: first status). Only transitions produce
/// events, so re-reconciling an unchanged policy publishes nothing.
pub fn transition_events(
    old: Option<&TuningPolicyStatus>,
    new: &TuningPolicyStatus,
) -> Vec<PolicyEvent> {
    let mut out = Vec::new();
    let mut push = |severity, reason: &str, note: String| {
        out.push(PolicyEvent {
            severity,
            reason: reason.to_string(),
            note,
        })
    };
    let changed = |t: &str| cond_key(old, t) != cond_key(Some(new), t);
    let msg = |t: &str| {
        find_condition(new, t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let is = |t: &str, status: &str, r: Option<&str>| {
        find_condition(new, t)
            .is_some_and(|c| c.status == status && r.is_none_or(|r| c.reason == r))
    };

    if changed(condition::ACCEPTED) && is(condition::ACCEPTED, "False", None) {
        let r = find_condition(new, condition::ACCEPTED)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        push(
            Severity::Warning,
            reason::NOT_ACCEPTED,
            format!("{r}: {}", msg(condition::ACCEPTED)),
        );
    }
    if changed(condition::APPLIED) {
        if is(condition::APPLIED, "True", None) {
            push(
                Severity::Normal,
                condition::APPLIED,
                msg(condition::APPLIED),
            );
        } else if is(condition::APPLIED, "False", Some(reason::PODS_NEED_RESTART)) {
            push(
                Severity::Normal,
                reason::PODS_NEED_RESTART,
                msg(condition::APPLIED),
            );
        }
    }
    if changed(condition::VERIFIED) {
        if is(condition::VERIFIED, "True", None) {
            push(
                Severity::Normal,
                condition::VERIFIED,
                msg(condition::VERIFIED),
            );
        }
        for r in [
            reason::STILL_OVERFLOWING,
            reason::APPLICATION_BACKLOG_BOUND,
            reason::SLOW_ACCEPT,
        ] {
            if is(condition::VERIFIED, "False", Some(r)) {
                push(Severity::Warning, r, msg(condition::VERIFIED));
            }
        }
    }
    // restartPods: Rollout (the restarts themselves are published where they are made).
    if changed(condition::ROLLED_OUT) {
        let rolled = condition::ROLLED_OUT;
        if is(rolled, "True", None) {
            push(Severity::Normal, "RolledOut", msg(rolled));
        } else if is(rolled, "False", Some(rollout_reason::ROLLOUT_STALLED)) {
            push(
                Severity::Warning,
                rollout_reason::ROLLOUT_STALLED,
                msg(rolled),
            );
        } else if is(rolled, "False", Some(rollout_reason::MANUAL_RESTART_NEEDED)) {
            push(
                Severity::Normal,
                rollout_reason::MANUAL_RESTART_NEEDED,
                msg(rolled),
            );
        }
    }
    // Refusals: a sysctl newly refused for the namespace, or newly refused for some pods.
    for s in &new.sysctls {
        let before = old.and_then(|o| o.sysctls.iter().find(|p| p.name == s.name));
        let was_refused = before.is_some_and(|b| b.delivery == DeliveryDecision::Refused);
        if s.delivery == DeliveryDecision::Refused && !was_refused {
            push(
                Severity::Warning,
                reason::REFUSED,
                format!(
                    "{}={} refused ({}): {}",
                    s.name, s.value, s.reason, s.message
                ),
            );
        } else if s.refused_pods > before.map_or(0, |b| b.refused_pods) {
            push(
                Severity::Warning,
                reason::REFUSED,
                format!(
                    "{}={} refused for {} pod(s); see the pods' kubetune.dev/decision annotation",
                    s.name, s.value, s.refused_pods
                ),
            );
        }
    }
    out
}
