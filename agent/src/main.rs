//! `kubetune-agent`: `scan` (any Linux host, root), `run` (cluster DaemonSet), `probe` (tier check).

use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use kubetune_agent::cli::{Cli, Cmd, Common, Output};
use kubetune_agent::scanner::{EbpfMode, Scanner, ScannerConfig};

fn scanner(common: &Common) -> Scanner {
    Scanner::new(ScannerConfig {
        window: common.window,
        ebpf: match (common.no_ebpf, common.no_syscall_tracepoints) {
            (true, _) => EbpfMode::Off,
            (false, true) => EbpfMode::NoSyscallTracepoints,
            (false, false) => EbpfMode::Auto,
        },
        resync: common.resync,
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
    let cli = Cli::parse();
    kubetune_logging::init(cli.log.log_format, "warn,kubetune_agent=info");
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
            no_overflow_events,
            namespace,
            pod_name,
            heartbeat_period,
        } => {
            let sc = scanner(&common);
            let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
            rt.block_on(kubetune_agent::cluster::run(
                sc,
                kubetune_agent::cluster::RunConfig {
                    node_name: node_name.clone(),
                    metrics_addr: metrics,
                    interval,
                    min_write_interval,
                    overflow_events: !no_overflow_events,
                    heartbeat: kubetune_agent::heartbeat::HeartbeatConfig {
                        namespace,
                        node_name: node_name.clone(),
                        holder: pod_name,
                        period: heartbeat_period,
                    },
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
