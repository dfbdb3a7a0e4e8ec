//! `kubetune-demo`: the local demo (no cluster, run as root). See `kubetune_e2e::demo`.
//!
//! Flags: `--no-ebpf` (fallback mode), `--burst N` (default 300, max 2000).

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let burst = args
        .iter()
        .position(|a| a == "--burst")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u32)
        .min(2000);
    let ebpf = if args.iter().any(|a| a == "--no-ebpf") {
        kubetune_agent::scanner::EbpfMode::Off
    } else {
        kubetune_agent::scanner::EbpfMode::Auto
    };
    let exe = std::env::current_exe().expect("own path");
    let listener_exe = exe
        .parent()
        .map(|d| d.join("kt-listener"))
        .unwrap_or_else(|| PathBuf::from("kt-listener"));
    let prefix = format!("kt-demo-{}", std::process::id() % 100000);
    let cfg = kubetune_e2e::demo::DemoConfig {
        burst,
        ebpf,
        prefix: prefix.clone(),
        listener_exe,
        node_somaxconn: 128,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Ctrl-C: delete our network namespaces (the stand-in apps die with them or at --max-secs).
    let cleanup_prefix = prefix.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: cleaning up network namespaces {cleanup_prefix}-*");
            kubetune_e2e::kubelet::delete_netns_with_prefix(&cleanup_prefix);
            std::process::exit(130);
        }
    });
    let mut out = std::io::stdout();
    let result = rt.block_on(kubetune_e2e::demo::run(&cfg, &mut out));
    kubetune_e2e::kubelet::delete_netns_with_prefix(&prefix);
    if let Err(e) = result {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}
