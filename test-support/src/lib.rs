//! Test support for kubetune, used as a dev-dependency only (and by the local demo binary in
//! e2e, which runs the same harness outside a test): nothing here is part of a shipped binary.
//!
//! - [`json`]: the deep JSON merge the fixtures build on.
//! - `apiserver` (feature `apiserver`): an in-memory fake apiserver over HTTPS, with a
//!   kubeconfig, that records when each write arrived (the detection benchmarks).
//! - [`admission`]: pods, policies, cluster facts and AdmissionReviews as the webhook sees them.
//! - [`operator`]: typed policies, pods with admission records, and ListenerReports as the
//!   operator reads them from its stores.
//! - [`ground_truth`]: what `ss` and `nstat` print, parsed; [`is_root`].
//! - [`test_env`]: the skip-or-fail rule of the root-only tests (agent and e2e).
//! - `netns` (feature `netns`): stand-in pods — named network namespaces with a chosen
//!   `somaxconn`, non-accepting listeners, bounded connection bursts — over the agent's netns
//!   primitives.
//! - `webhook` (feature `webhook`): webhook snapshots of the admission fixtures.
//! - `client` (feature `client`): an HTTPS/1.1 keep-alive client trusting one CA.

pub mod admission;
#[cfg(feature = "apiserver")]
pub mod apiserver;
#[cfg(feature = "client")]
pub mod client;
pub mod ground_truth;
pub mod json;
#[cfg(feature = "netns")]
pub mod netns;
pub mod operator;
pub mod test_env;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use ground_truth::is_root;
