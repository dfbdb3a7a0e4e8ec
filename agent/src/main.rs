//! `kubetune-agent`: `scan` (any Linux host, root), `run` (cluster DaemonSet), `probe` (tier check).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kubetune_agent::scanner::{EbpfMode, Scanner, ScannerConfig};

#[derive(Parser)]
#[command(
    name = "kubetune-agent",
    version,
    about = "kubetune node agent: TCP accept-queue observation and diagnosis"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Do not load eBPF (fallback mode: sock_diag + procfs). Env: KUBETUNE_NO_EBPF=1.
    #[arg(long, env = "KUBETUNE_NO_EBPF", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    no_ebpf: bool,
    /// Window for queue max / recent overflows / slow-accept detection (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    window: Duration,
}

#[derive(Subcommand)]
enum Cmd {
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
        /// Minimum time between two writes of the same pod's report.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        min_write_interval: Duration,
    },
    /// Load the eBPF programs, print the active tier and per-hook status as JSON, unload.
    Probe,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
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

fn scanner(common: &Common) -> Scanner {
    Scanner::new(ScannerConfig {
        window: common.window,
        ebpf: if common.no_ebpf {
            EbpfMode::Off
        } else {
            EbpfMode::Auto
        },
    })
}

fn print(snap: &kubetune_agent::Snapshot, output: Output, all: bool) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", kubetune_agent::table::render(snap)),
        Output::Json => {
            let mut s = snap.clone();
            if !all {
                s.netns.retain(|n| !n.listeners.is_empty());
            }
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kubetune_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Scan {
            common,
            output,
            watch,
            duration,
            once,
            interval,
            all,
        } => {
            let mut sc = scanner(&common);
            let start = Instant::now();
            let deadline = duration.map(|d| start + d);
            loop {
                let snap = sc.scan();
                let done = once
                    || deadline.is_some_and(|d| Instant::now() + interval > d)
                    || (!watch && deadline.is_none());
                if watch || done {
                    if watch && matches!(output, Output::Table) {
                        print!("\x1b[2J\x1b[H");
                    }
                    print(&snap, output, all)?;
                }
                if done {
                    break;
                }
                std::thread::sleep(interval);
            }
        }
        Cmd::Run {
            common,
            node_name,
            metrics,
            interval,
            min_write_interval,
        } => {
            let sc = scanner(&common);
            let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
            rt.block_on(kubetune_agent::cluster::run(
                sc,
                kubetune_agent::cluster::RunConfig {
                    node_name,
                    metrics_addr: metrics,
                    interval,
                    min_write_interval,
                },
            ))?;
        }
        Cmd::Probe => {
            let p = kubetune_agent::Probe::load().context("loading eBPF probe")?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "tier": p.tier().as_str(),
                    "hooks": p.hooks(),
                }))?
            );
        }
    }
    Ok(())
}
