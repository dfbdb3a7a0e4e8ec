//! kubetune admission webhook.
//!
//! - [`plan`]: the pure planner (which sysctls, from which policy, delivered how, refused why).
//! - [`patch`]: JSONPatch from a plan (merge, annotations, Multus selection), idempotent.
//! - [`admission`]: AdmissionReview v1 in, AdmissionReview v1 out, for `/mutate` and `/validate`;
//!   pure over a [`admission::Snapshot`] of the caches. Never panics, never blocks a pod.
//! - [`server`]: warp routes, TLS termination with tokio-rustls and certificate reload, metrics.
//! - [`cache`]: kube-runtime reflectors feeding the snapshot.

pub mod admission;
pub mod cache;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod patch;
pub mod plan;
pub mod podview;
pub mod server;
pub mod tls;
