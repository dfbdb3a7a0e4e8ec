//! The `kubetune-webhook` command line (here, not in `main.rs`, so that the deploy manifests'
//! arguments can be checked against it in tests).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "kubetune-webhook",
    version,
    about = "kubetune mutating/validating admission webhook"
)]
pub struct Args {
    #[command(flatten)]
    pub log: kubetune_logging::LogArgs,
    /// Address to listen on (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Serving certificate (PEM); reloaded when it changes.
    #[arg(long, default_value = "/tls/tls.crt")]
    pub tls_cert: std::path::PathBuf,
    /// Serving key (PEM); reloaded when it changes.
    #[arg(long, default_value = "/tls/tls.key")]
    pub tls_key: std::path::PathBuf,
    /// kubetune's own namespace (never mutated; holds the cluster-facts ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubetune-system")]
    pub namespace: String,
    /// More namespaces to leave alone (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-node-lease"
    )]
    pub exclude_namespaces: Vec<String>,
}
