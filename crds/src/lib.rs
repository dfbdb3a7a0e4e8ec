//! kubetune API types (`kubetune.dev/v1alpha1`) and the one table of sysctl knowledge.
//!
//! - [`policy`]: `TuningPolicy` (user intent) and its status.
//! - [`report`]: `ListenerReport` (node agent observation, one per pod).
//! - [`decision`]: the pod annotation the webhook writes and the operator reads.
//! - [`sysctl`]: which sysctls exist per pod, are safe in which Kubernetes version, how values
//!   validate, presets.
//! - [`facts`]: cluster facts and the pure per-sysctl delivery decision.
//! - [`selector`]: label selector matching.
//! - [`schema`]: generated CRDs and a structural-schema checker.

pub mod decision;
pub mod facts;
pub mod policy;
pub mod report;
pub mod schema;
pub mod selector;
pub mod sysctl;

pub use decision::{DecisionEntry, Outcome, PodDecision};
pub use policy::{Delivery, Mode, TuningPolicy, TuningPolicySpec, TuningPolicyStatus};
pub use report::{Diagnosis, LimitedBy, ListenerReport, ListenerReportSpec, ListenerStatus};

/// API group of every kubetune resource.
pub const GROUP: &str = "kubetune.dev";
/// API version of every kubetune resource.
pub const VERSION: &str = "v1alpha1";
