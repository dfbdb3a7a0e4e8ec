//! kubetune admission webhook.
//!
//! - [`plan`]: the pure planner (which sysctls, from which policy, delivered how, refused why).
//! - [`patch`]: JSONPatch from a plan (merge, annotations, Multus selection), idempotent.
//! - [`networks`]: the pod's Multus network selection, read (planner) and merged (patch).
//! - [`podview`]: decodes only the fields of a Pod that plan and patch read.
//! - [`admission`]: the `/mutate` and `/validate` handlers, pure over a
//!   [`admission::Snapshot`] of the caches. Never panics, never blocks a pod.
//! - [`review`]: the AdmissionReview v1 codec (request in, [`review::Answer`] out) of both.
//! - [`memo`]: the per-snapshot plan memo (replicas are planned once).
//! - [`skeleton`]: a review's bytes without the string values `/mutate` never reads (a memo key).
//! - [`server`]: warp routes, TLS termination with tokio-rustls and certificate reload, metrics.
//! - [`cache`]: kube-runtime reflectors feeding the snapshot.

pub mod admission;
pub mod cache;
pub mod cli;
pub mod memo;
pub mod metrics;
pub mod networks;
pub mod patch;
pub mod plan;
pub mod podview;
pub mod review;
pub mod server;
pub mod skeleton;
pub mod tls;
