//! Coverage: was a pod watched by its node's agent through its whole clean window? Pure; the
//! status stage [`crate::status::pod_verdicts`] calls [`watched`] for every applied pod whose
//! report is clean, so a quiet report only counts as "no overflows" while an agent is there to
//! rewrite it.
//!
//! # The rule
//!
//! The agent renews a heartbeat Lease per node (`kubetune_crds::heartbeat`) every period and
//! says since when it has watched the node without a gap (`watching-since`). A pod whose clean
//! window starts at `clean_since` and lasts `window` is
//!
//! * **not observed** when its node has no heartbeat (agent gone), or the heartbeat is stale
//!   (`renewTime + leaseDuration <= now`);
//! * **not observed** while the agent has watched for less than the window after a restart in
//!   the window (`watching_since > clean_since` and `watching_since + window > now`): the
//!   restarted agent's own window must elapse before the quiet report counts again;
//! * **waiting** while `clean_since + window > now`;
//! * **verified** otherwise.
//!
//! The cost is on the nodes, not the pods: one Lease renewal per node per period (1,000 nodes
//! at the default 10 s: 100 writes/s), while pod reports are still written only on change.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubetune_crds::heartbeat::{self, Heartbeat};

/// The agents' heartbeats by node name.
pub type Heartbeats = BTreeMap<String, Heartbeat>;

/// Why a node's agent did not watch a pod through its window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gap {
    /// The pod's node is unknown (no `spec.nodeName`, no report naming a node).
    NoNode,
    /// No heartbeat Lease for the node: no agent runs there (or it never wrote one).
    AgentGone,
    /// The heartbeat expired at `since` (the agent stopped renewing it).
    Stale {
        /// `renewTime + leaseDuration`.
        since: Timestamp,
    },
    /// The agent (re)started watching at `at`, after the pod's window began; verifiable at
    /// `until` if nothing changes.
    Restarted {
        /// `watching-since`.
        at: Timestamp,
        /// `at + window`.
        until: Timestamp,
    },
}

impl Gap {
    /// Human wording for condition messages, naming the node.
    pub fn describe(&self, node: &str) -> String {
        match self {
            Gap::NoNode => "pod not bound to a node".into(),
            Gap::AgentGone => format!(
                "node {node}: agent gone (no heartbeat Lease {})",
                heartbeat::lease_name(node)
            ),
            Gap::Stale { since } => format!("node {node}: agent heartbeat stale since {since}"),
            Gap::Restarted { at, until } => format!(
                "node {node}: agent restarted mid-window at {at} (verifiable at {until} if nothing changes)"
            ),
        }
    }
}

/// The coverage verdict of one clean pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Watched through the whole window: verified.
    Verified,
    /// Watched so far; the window ends at `until`.
    Waiting {
        /// `clean_since + window`.
        until: Timestamp,
    },
    /// Not (or not long enough) watched by the node's agent.
    NotObserved {
        /// The node.
        node: String,
        /// Why.
        gap: Gap,
    },
}

/// The coverage rule (see the module documentation) for a pod on `node` whose report has been
/// clean since `clean_since`.
pub fn watched(
    node: Option<&str>,
    heartbeats: &Heartbeats,
    clean_since: Timestamp,
    window: SignedDuration,
    now: Timestamp,
) -> Watched {
    let Some(node) = node.filter(|n| !n.is_empty()) else {
        return Watched::NotObserved {
            node: String::new(),
            gap: Gap::NoNode,
        };
    };
    let not_observed = |gap| Watched::NotObserved {
        node: node.to_string(),
        gap,
    };
    let Some(hb) = heartbeats.get(node) else {
        return not_observed(Gap::AgentGone);
    };
    if !hb.fresh(now) {
        return not_observed(Gap::Stale {
            since: hb.expires(),
        });
    }
    if hb.watching_since > clean_since {
        let until = hb.watching_since + window;
        if until > now {
            return not_observed(Gap::Restarted {
                at: hb.watching_since,
                until,
            });
        }
        return Watched::Verified;
    }
    let until = clean_since + window;
    if until > now {
        Watched::Waiting { until }
    } else {
        Watched::Verified
    }
}

/// The heartbeats of the agents of the nodes `wanted` accepts, read from `leases` (agent
/// Leases only; others and unreadable ones are skipped: no heartbeat).
pub fn heartbeats<'a>(
    leases: impl IntoIterator<Item = &'a k8s_openapi::api::coordination::v1::Lease>,
    wanted: impl Fn(&str) -> bool,
) -> Heartbeats {
    leases
        .into_iter()
        .filter_map(|l| {
            let node = heartbeat::lease_node(l.metadata.name.as_deref()?)?;
            wanted(node).then_some(())?;
            Some((node.to_string(), Heartbeat::from_lease(l)?))
        })
        .collect()
}

/// What of a node's heartbeat can change a pod's coverage: fresh or not, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeWatch {
    /// Fresh at the time of the look.
    pub fresh: bool,
    /// `watching-since`.
    pub watching_since: Timestamp,
}

/// The [`NodeWatch`] of every node with a heartbeat, at `now`.
pub fn node_watch(heartbeats: &Heartbeats, now: Timestamp) -> BTreeMap<String, NodeWatch> {
    heartbeats
        .iter()
        .map(|(n, h)| {
            let w = NodeWatch {
                fresh: h.fresh(now),
                watching_since: h.watching_since,
            };
            (n.clone(), w)
        })
        .collect()
}

/// The nodes whose coverage changed between two looks (pure): the heartbeat went stale or fresh
/// again, the agent restarted (`watching-since` moved), or the Lease appeared or vanished.
/// Renewals alone change nothing.
pub fn changed_nodes(
    before: &BTreeMap<String, NodeWatch>,
    after: &BTreeMap<String, NodeWatch>,
) -> Vec<String> {
    let mut out: Vec<String> = after
        .iter()
        .filter(|(n, w)| before.get(*n) != Some(w))
        .map(|(n, _)| n.clone())
        .chain(before.keys().filter(|n| !after.contains_key(*n)).cloned())
        .collect();
    out.sort();
    out
}
