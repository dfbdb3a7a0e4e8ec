//! kubetune end-to-end support: the kubelet-playing netns harness and the deploy manifest checks.

pub mod demo;
pub mod demo_status;
pub mod kubelet;
pub mod manifests;
pub mod webhook_local;
