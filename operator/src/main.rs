//! `kubetune-operator --namespace <ns> --metrics 0.0.0.0:8080 --cert-mode self-signed|cert-manager`
//! (`--leader-elect`: of several replicas only the Lease holder reconciles and writes).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kubetune_operator::cli::{Args, CertMode};
use kubetune_operator::leader::{self, ElectionConfig, Ended};
use kubetune_operator::{certs, controller, metrics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kubetune_logging::init(args.log.log_format, "info");
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(metrics::Metrics::default());

    // Every replica serves /healthz and /metrics; only the leader does the work below.
    let m = metrics.clone();
    let addr = args.metrics;
    let metrics_server = tokio::spawn(async move { metrics::serve(addr, m).await });

    let work = leader_work(&args, client.clone(), metrics);
    let lead = async {
        if !args.election.leader_elect {
            tokio::select! {
                _ = work => {}
                _ = kubetune_logging::shutdown_signal() => {}
            }
            return Ok(());
        }
        let cfg = ElectionConfig::from_args(&args.namespace, &args.election);
        let leadership = leader::campaign(client, &cfg).await?;
        tracing::info!(identity = %cfg.identity, lease = leader::LEASE_NAME, "campaigning for the lease");
        match leader::lead(leadership, kubetune_logging::shutdown_signal(), work).await? {
            Ended::SteppedDown => Ok(()),
            // Exit so the pod restarts as a fresh candidate: nothing of the old lead keeps writing.
            Ended::Lost => anyhow::bail!("lost the leader lease"),
        }
    };
    tokio::select! {
        r = lead => r,
        r = metrics_server => {
            r.context("metrics server task")?.context("metrics server")
        }
    }
}

/// What the leader does: the controller and (self-signed mode) the webhook-certificate loop.
async fn leader_work(args: &Args, client: kube::Client, metrics: Arc<metrics::Metrics>) {
    let certs = async {
        if args.cert_mode == CertMode::SelfSigned {
            let every = Duration::from_secs(args.cert_check_seconds.max(10));
            certs::run(client.clone(), args.namespace.clone(), every).await
        } else {
            tracing::info!(
                "cert-mode cert-manager: webhook certificate and caBundle are left to cert-manager"
            );
            std::future::pending().await
        }
    };
    tokio::select! {
        _ = controller::run(
            client.clone(),
            args.namespace.clone(),
            metrics,
            args.max_concurrent_rollouts as usize,
        ) => {}
        _ = certs => {}
    }
}
