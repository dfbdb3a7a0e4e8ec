//! The webhook's view of a cluster built from the [`crate::admission`] fixtures: a snapshot with
//! namespace `shop`, the given policies and facts.

use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::TuningPolicy;
use kubetune_webhook::admission::Snapshot;
use kubetune_webhook::plan::NamespaceFacts;

use crate::admission::NS;

/// `policies` and `facts`, with namespace `shop` labelled `labels` (an empty memo).
pub fn snapshot_labelled(
    policies: Vec<TuningPolicy>,
    facts: ClusterFacts,
    labels: &[(&str, &str)],
) -> Snapshot {
    Snapshot {
        policies,
        namespaces: [(
            NS.to_string(),
            NamespaceFacts {
                name: NS.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        )]
        .into(),
        facts,
        ..Default::default()
    }
}

/// `policies` and `facts`, with namespace `shop` unlabelled (no PodSecurity labels).
pub fn snapshot(policies: Vec<TuningPolicy>, facts: ClusterFacts) -> Snapshot {
    snapshot_labelled(policies, facts, &[])
}
