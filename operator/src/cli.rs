//! The `kubetune-operator` command line (here, not in `main.rs`, so that the deploy manifests'
//! arguments can be checked against it in tests).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// The operator issues the webhook certificate and keeps the caBundles in sync.
    SelfSigned,
    /// cert-manager issues it (`cert-manager.io/inject-ca-from`); the operator does nothing.
    CertManager,
}

#[derive(Parser, Debug)]
#[command(name = "kubetune-operator", version, about = "kubetune operator")]
pub struct Args {
    #[command(flatten)]
    pub log: kubetune_logging::LogArgs,
    /// Namespace the operator runs in (facts ConfigMap, webhook Secret and Service).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubetune-system")]
    pub namespace: String,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics: SocketAddr,
    /// Who issues the webhook's serving certificate: `cert-manager` turns the operator's own
    /// certificate loop off (config/cert-manager sets it).
    #[arg(long, env = "KUBETUNE_CERT_MODE", value_enum, default_value_t = CertMode::SelfSigned)]
    pub cert_mode: CertMode,
    /// How often the webhook certificate and caBundles are checked (seconds).
    #[arg(long, default_value_t = 300)]
    pub cert_check_seconds: u64,
    /// Cluster-wide number of workload rollouts that `restartPods: Rollout` policies may have in
    /// progress at a time; the next restart starts when one completed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_rollouts: u32,
    #[command(flatten)]
    pub election: ElectionArgs,
}

/// Leader election among the operator's replicas (Lease `kubetune-operator` in `--namespace`).
#[derive(clap::Args, Debug, Clone)]
pub struct ElectionArgs {
    /// Elect a leader on the Lease: only the leader reconciles and writes (status, events,
    /// NADs, the webhook certificate). `false` for a single replica without the Lease.
    #[arg(long, env = "KUBETUNE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "kubetune-operator")]
    pub leader_identity: String,
    /// How long a leader's lease lasts after each renewal; a crashed leader is replaced after
    /// at most this long (seconds).
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// The leader renews this long before its lease would expire (seconds, less than the
    /// lease duration).
    #[arg(long, default_value_t = 5)]
    pub lease_renew_before_seconds: u64,
    /// After a failed Lease request, campaign again after this long (seconds).
    #[arg(long, default_value_t = 2)]
    pub lease_retry_seconds: u64,
}
