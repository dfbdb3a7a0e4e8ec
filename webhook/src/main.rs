//! `kubetune-webhook`: the admission webhook server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kubetune_webhook::cli::Args;
use kubetune_webhook::{admission::Config, cache, metrics::Metrics, server, tls};

// Fewer cycles per admission than glibc malloc with several threads (webhook/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kubetune_logging::init(args.log.log_format, "info");
    let resolver = Arc::new(
        tls::ReloadingResolver::new(&args.tls_cert, &args.tls_key, Duration::from_secs(2))
            .context("loading the serving certificate")?,
    );
    let tls_cfg = tls::server_config(resolver)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let source = cache::start(client, &args.namespace);
    let state = Arc::new(server::State {
        source,
        config: Config::new(&args.namespace, &args.exclude_namespaces),
        metrics: Metrics::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %args.listen, "serving /mutate /validate /healthz /readyz /metrics over TLS");
    server::serve_tls(
        listener,
        tls_cfg,
        server::routes(state),
        kubetune_logging::shutdown_signal(),
    )
    .await;
    tracing::info!("shutting down");
    Ok(())
}
