//! `kubectl-kubetune`: answers "why does my pod have (or not have) this sysctl, and did it
//! help?" in one command, and lists the listeners that drop the most connections.
//!
//! Pure cores: [`why::explain`] turns the typed objects (the pod, its namespace's policies, its
//! ListenerReport) into a [`why::Why`], which [`why::render`] prints in plain words and serde
//! serialises for `-o json`; [`top::rows`] / [`top::render`] do the same for `top`. The binary
//! (`main.rs`) only fetches the objects with the user's kubeconfig.

pub mod cli;
pub mod top;
pub mod why;
