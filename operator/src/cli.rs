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
    /// Namespace the operator runs in (facts ConfigMap, webhook Secret and Service).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubetune-system")]
    pub namespace: String,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics: SocketAddr,
    /// Who issues the webhook's serving certificate.
    #[arg(long, value_enum, default_value_t = CertMode::SelfSigned)]
    pub cert_mode: CertMode,
    /// How often the webhook certificate and caBundles are checked (seconds).
    #[arg(long, default_value_t = 300)]
    pub cert_check_seconds: u64,
}
