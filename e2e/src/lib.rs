//! kubetune end-to-end support: rendering and checking the deploy manifests.

pub mod manifests;
