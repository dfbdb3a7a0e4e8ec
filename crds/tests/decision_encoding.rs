//! The decision annotation's bytes: `PodDecision::to_annotation` must write exactly what
//! serde_json writes for the same record (pods admitted by earlier versions carry serde_json's
//! bytes; a different encoding of the same record would make re-invocation rewrite them), and
//! read back to the same record — for any strings, including quotes, backslashes, control
//! characters and non-ASCII text.

use kubetune_crds::decision::{DecisionEntry, Outcome, PodDecision, PolicyRef};
use kubetune_crds::placement::NodeRequirement;
use kubetune_crds::policy::DeliveryDecision;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.\\-]{0,40}",
        any::<String>(),
        "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}<>&'é✓🚀 a]{0,30}",
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Injected),
        Just(Outcome::WouldInject),
        Just(Outcome::Refused),
        Just(Outcome::Overridden),
        Just(Outcome::PodValueKept),
    ]
}

fn delivery() -> impl Strategy<Value = Option<DeliveryDecision>> {
    prop_oneof![
        Just(None),
        Just(Some(DeliveryDecision::PodSecurityContext)),
        Just(Some(DeliveryDecision::TuningCni)),
        Just(Some(DeliveryDecision::Refused)),
        Just(Some(DeliveryDecision::DryRun)),
    ]
}

fn entry() -> impl Strategy<Value = DecisionEntry> {
    (
        text(),
        any::<i64>(),
        text(),
        text(),
        outcome(),
        delivery(),
        text(),
        text(),
    )
        .prop_map(
            |(policy, generation, sysctl, value, outcome, delivery, reason, message)| {
                DecisionEntry {
                    policy,
                    generation,
                    sysctl,
                    value,
                    outcome,
                    delivery,
                    reason,
                    message,
                }
            },
        )
}

fn requirement() -> impl Strategy<Value = NodeRequirement> {
    (
        text(),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(|(sysctl, label_key, excluded_nodes)| NodeRequirement {
            sysctl,
            label_key,
            excluded_nodes,
        })
}

fn decision() -> impl Strategy<Value = PodDecision> {
    (
        any::<u32>(),
        proptest::collection::vec((text(), any::<i64>()), 0..4),
        proptest::collection::vec(entry(), 0..8),
        proptest::collection::vec(requirement(), 0..3),
    )
        .prop_map(|(version, policies, entries, node_affinity)| PodDecision {
            version,
            policies: policies
                .into_iter()
                .map(|(name, generation)| PolicyRef { name, generation })
                .collect(),
            entries,
            node_affinity,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_annotation_is_serde_json_s_bytes_and_reads_back(d in decision()) {
        let a = d.to_annotation();
        prop_assert_eq!(&a, &serde_json::to_string(&d).unwrap());
        let (json, literal) = d.to_annotation_and_literal();
        prop_assert_eq!(&json, &a);
        prop_assert_eq!(&literal, &serde_json::to_string(&a).unwrap());
        prop_assert_eq!(&d.to_annotation_literal(), &literal);
        prop_assert_eq!(PodDecision::parse(&a).unwrap(), d);
    }
}
