//! The `kubectl-kubetune` command line (`kubectl kubetune ...` when the binary is on PATH).

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-kubetune",
    bin_name = "kubectl kubetune",
    version,
    about = "kubetune for kubectl: why a pod has (or lacks) its sysctls and whether they helped; the listeners dropping the most connections"
)]
pub struct Cli {
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// For one pod: the policies selecting it, each sysctl's admission decision, what the agent
    /// observed in its network namespace, each policy's verdict, and what to do next.
    Why {
        /// Pod name.
        pod: String,
    },
    /// The listeners with the most accept-queue overflows (all namespaces unless -n is given).
    Top {
        /// How many listeners to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Plain words and tables.
    Text,
    /// JSON.
    Json,
}
