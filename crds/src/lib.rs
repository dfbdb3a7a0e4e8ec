//! kubetune API types (`kubetune.dev/v1alpha1`), the one table of sysctl knowledge, and every
//! rule the webhook and the operator share (each lives here once).
//!
//! - [`policy`]: `TuningPolicy` (user intent), its status, conditions and phases.
//! - [`report`]: `ListenerReport` (node agent observation, one per pod).
//! - [`node`]: `NodeTuning` (what a node's kubelet accepts, one per node) and the node labels.
//! - [`decision`]: the pod annotation the webhook writes and the operator reads.
//! - [`sysctl`]: which sysctls exist per pod, are safe in which Kubernetes version, how values
//!   validate, presets.
//! - [`facts`]: cluster facts (and reading their ConfigMap) and the pure per-sysctl delivery
//!   decision.
//! - [`podsec`]: the PodSecurity level a namespace enforces.
//! - [`matching`]: label selectors and which policies select a pod, in precedence order.
//! - [`heartbeat`]: the node agent's per-node Lease (names, annotation, reading and writing it).
//! - [`placement`]: node truth (what each node accepts) and where a pod may be scheduled.
//! - [`pod`]: what kubetune reads from a pod (its sysctls, its admission record).
//! - [`reason`]: every machine-readable reason (decisions, conditions, events).
//! - [`limits`]: message size limits and truncation.
//! - [`schema`]: generated CRDs and a structural-schema checker.

pub mod decision;
pub mod facts;
pub mod heartbeat;
pub mod json;
pub mod limits;
pub mod matching;
pub mod node;
pub mod placement;
pub mod pod;
pub mod podsec;
pub mod policy;
pub mod reason;
pub mod report;
pub mod schema;
pub mod sysctl;

pub use decision::{DecisionEntry, Outcome, PodDecision};
pub use node::{NodeTuning, NodeTuningSpec};
pub use policy::{condition, phase};
pub use policy::{Delivery, Mode, RestartPods, TuningPolicy, TuningPolicySpec, TuningPolicyStatus};
pub use report::{Diagnosis, LimitedBy, ListenerReport, ListenerReportSpec, ListenerStatus};

/// API group of every kubetune resource.
pub const GROUP: &str = "kubetune.dev";
/// API version of every kubetune resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every kubetune resource (`GROUP/VERSION`).
pub const API_VERSION: &str = "kubetune.dev/v1alpha1";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn api_version_is_group_slash_version_of_every_kind() {
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
        assert_eq!(TuningPolicy::api_version(&()), API_VERSION);
        assert_eq!(ListenerReport::api_version(&()), API_VERSION);
        assert_eq!(TuningPolicy::group(&()), GROUP);
        assert_eq!(ListenerReport::version(&()), VERSION);
    }
}
