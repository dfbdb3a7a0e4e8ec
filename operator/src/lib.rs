//! kubetune-operator: computes `TuningPolicy` status from observation, publishes events, writes
//! recommendations into ListenerReports, owns the tuning-CNI NetworkAttachmentDefinitions and
//! the webhook's serving certificate.
//!
//! The hard logic is pure and public:
//! - [`status::compute_status`] / [`status::evaluate`]: `TuningPolicy.status` from the policy,
//!   pods (with their `kubetune.dev/decision` annotations), ListenerReports, cluster facts and
//!   the current time.
//! - [`events::transition_events`]: which events a status change deserves.
//! - [`recommend::recommend`]: the TuningPolicy that would fix a somaxconn-bound pod.
//! - [`nad::render_nad`]: the tuning-CNI NetworkAttachmentDefinition.
//! - [`rollout::plan`]: which workloads `restartPods: Rollout` restarts now, which wait, which
//!   are skipped and why.
//! - [`certs::generate`], [`certs::needs_rotation`]: webhook certificates.
//!
//! [`controller`] wires them to the Kubernetes API (kube-runtime): reconcilers over a
//! [`context::Context`], with [`triggers`] mapping watched changes to the objects to reconcile;
//! [`nad`] and [`certs`] do their own I/O; [`metrics`] serves Prometheus metrics.

pub mod certs;
pub mod cli;
pub mod context;
pub mod controller;
pub mod coverage;
pub mod events;
pub mod guard;
pub mod leader;
pub mod metrics;
pub mod nad;
pub mod recommend;
pub mod restarts;
pub mod rollout;
pub mod status;
pub mod triggers;

pub use status::{compute_status, evaluate, Environment};
