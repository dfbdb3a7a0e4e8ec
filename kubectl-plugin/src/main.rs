//! `kubectl-kubetune`: fetches the objects with the user's kubeconfig (like kubectl: KUBECONFIG,
//! ~/.kube/config or the in-cluster account; the context's namespace unless `-n`) and prints
//! what the pure renderers make of them.

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kubectl_kubetune::cli::{Cli, Cmd, Output};
use kubectl_kubetune::{top, why};
use kubetune_crds::report::ListenerReport;
use kubetune_crds::TuningPolicy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = kube::Config::infer()
        .await
        .context("reading the kubeconfig")?;
    let default_ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config).context("connecting to the Kubernetes API")?;
    let out = match cli.cmd {
        Cmd::Why { pod } => {
            let ns = cli.namespace.unwrap_or(default_ns);
            let p = Api::<Pod>::namespaced(client.clone(), &ns)
                .get(&pod)
                .await
                .with_context(|| format!("getting pod {ns}/{pod}"))?;
            let policies = Api::<TuningPolicy>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .context("listing TuningPolicies")?
                .items;
            let report = Api::<ListenerReport>::namespaced(client, &ns)
                .get_opt(&pod)
                .await
                .context("getting the ListenerReport")?;
            let w = why::explain(&p, &policies, report.as_ref());
            match cli.output {
                Output::Text => why::render(&w),
                Output::Json => serde_json::to_string_pretty(&w)? + "\n",
            }
        }
        Cmd::Top { limit } => {
            let api: Api<ListenerReport> = match &cli.namespace {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            };
            let reports = api
                .list(&ListParams::default())
                .await
                .context("listing ListenerReports")?
                .items;
            let rows = top::rows(&reports, limit);
            match cli.output {
                Output::Text => top::render(&rows),
                Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
            }
        }
    };
    print!("{out}");
    Ok(())
}
