//! `kubetune-operator --namespace <ns> --metrics 0.0.0.0:8080 --cert-mode self-signed|cert-manager`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kubetune_operator::cli::{Args, CertMode};
use kubetune_operator::{certs, controller, metrics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(metrics::Metrics::default());

    let m = metrics.clone();
    let addr = args.metrics;
    let metrics_server = tokio::spawn(async move { metrics::serve(addr, m).await });

    if args.cert_mode == CertMode::SelfSigned {
        let (client, ns) = (client.clone(), args.namespace.clone());
        let every = Duration::from_secs(args.cert_check_seconds.max(10));
        tokio::spawn(async move {
            loop {
                match certs::sync(&client, &ns, k8s_openapi::jiff::Timestamp::now()).await {
                    Ok(o) if o.rotated || !o.patched.is_empty() => {
                        tracing::info!(rotated = o.rotated, patched = ?o.patched, "webhook certificate synced")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "webhook certificate sync failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
    } else {
        tracing::info!(
            "cert-mode cert-manager: webhook certificate and caBundle are left to cert-manager"
        );
    }

    tokio::select! {
        _ = controller::run(client, args.namespace.clone(), metrics) => {}
        r = metrics_server => {
            r.context("metrics server task")?.context("metrics server")?;
        }
    }
    Ok(())
}
