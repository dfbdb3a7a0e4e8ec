//! The `kubetune-agent` command line (here, not in `main.rs`, so that the deploy manifests'
//! arguments can be checked against it in tests).

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "kubetune-agent",
    version,
    about = "kubetune node agent: TCP accept-queue observation and diagnosis"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: kubetune_logging::LogArgs,
    #[command(subcommand)]
    /// What to do.
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    /// `kubectl get`-style table.
    Table,
    /// JSON.
    Json,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// Do not load eBPF (fallback mode: sock_diag + procfs). Env: KUBETUNE_NO_EBPF=1.
    #[arg(long, env = "KUBETUNE_NO_EBPF", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_ebpf: bool,
    /// Window for queue max / recent overflows / slow-accept detection (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,
    /// Do not attach the `listen()` syscall tracepoint (`sys_enter_listen`: it adds ~50 ns to
    /// every system call on the node where `fexit/inet_listen` does not load; without it
    /// requested backlogs are unknown there and every scan samples every netns in full).
    /// Env: KUBETUNE_NO_SYSCALL_TRACEPOINTS=1.
    #[arg(long, env = "KUBETUNE_NO_SYSCALL_TRACEPOINTS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_syscall_tracepoints: bool,
    /// eBPF tiers: sample every netns in full this often; in between, a scan re-reads only
    /// queue lengths and counters of namespaces no listen() event named (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub resync: Duration,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Print every TCP listener in every network namespace.
    Scan {
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Keep scanning and print every interval.
        #[arg(long)]
        watch: bool,
        /// Sample for this long (every --interval), then print once (or stop watching).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Scan once and exit (the default without --watch/--duration).
        #[arg(long)]
        once: bool,
        /// Interval between samples.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
        /// Include namespaces without listeners in JSON output.
        #[arg(long)]
        all: bool,
    },
    /// Cluster mode: write one ListenerReport per pod on this node, serve /metrics.
    Run {
        #[command(flatten)]
        common: Common,
        /// This node's name (spec.nodeName of the pods to watch).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// Address for the Prometheus /metrics endpoint.
        #[arg(long, default_value = "0.0.0.0:9101")]
        metrics: std::net::SocketAddr,
        /// Scan interval.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
        /// Minimum time between two writes of the same pod's report (new overflows are written
        /// at once when the last write that carried overflows is at least this old).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        min_write_interval: Duration,
        /// Poll only: do not re-sample a pod on the probe's overflow events (the sock-diag
        /// tier always polls). Env: KUBETUNE_NO_OVERFLOW_EVENTS=1.
        #[arg(long, env = "KUBETUNE_NO_OVERFLOW_EVENTS", action = clap::ArgAction::SetTrue,
              value_parser = clap::builder::BoolishValueParser::new())]
        no_overflow_events: bool,
        /// Namespace of this node's heartbeat Lease (the agent's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "kubetune-system")]
        namespace: String,
        /// This agent pod's name (the heartbeat Lease's holderIdentity).
        #[arg(long, env = "POD_NAME", default_value = "kubetune-agent")]
        pod_name: String,
        /// How often the node's heartbeat Lease is renewed (it lasts three periods). The API
        /// cost is one write per node per period: 1,000 nodes at 10s = 100 writes/s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        heartbeat_period: Duration,
    },
    /// Load the eBPF programs, print the active tier and per-hook status as JSON, unload.
    Probe,
}

/// `500ms`, `5s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}
