//! A stand-in application for the netns harness and the demo.
//!
//! `kt-listener listen --addr 127.0.0.1:8080 --backlog 511 [--accept-every-ms N] [--max-secs S]`
//!   binds, calls `listen(backlog)` with exactly the given backlog, prints `listening` and then
//!   either never accepts (default: the queue fills) or accepts one connection every N ms (a
//!   slow application). Exits after `--max-secs` (default 600) so nothing outlives a test.
//!
//! `kt-listener burst --addr 127.0.0.1:8080 --count 300 [--wait-ms 500]`
//!   opens `count` non-blocking connections at once, waits, prints
//!   `{"attempted":N,"connected":M}` and closes them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(&format!("bad value for {name}"))),
        None => default.unwrap_or_else(|| die(&format!("{name} is required"))),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("kt-listener: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("listen") => listen(&args),
        Some("burst") => burst(&args),
        _ => die("usage: kt-listener listen|burst ..."),
    }
}

fn listen(args: &[String]) {
    let addr: SocketAddr = arg(args, "--addr", None);
    let backlog: i32 = arg(args, "--backlog", None);
    let every_ms: u64 = arg(args, "--accept-every-ms", Some(0));
    let max_secs: u64 = arg(args, "--max-secs", Some(600));
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .unwrap_or_else(|e| die(&e.to_string()));
    sock.set_reuse_address(true).ok();
    sock.bind(&addr.into())
        .unwrap_or_else(|e| die(&format!("bind {addr}: {e}")));
    sock.listen(backlog)
        .unwrap_or_else(|e| die(&format!("listen: {e}")));
    println!("listening {addr} backlog {backlog}");
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut accepted = Vec::new();
    while Instant::now() < deadline {
        if every_ms == 0 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        std::thread::sleep(Duration::from_millis(every_ms));
        if let Ok((c, _)) = sock.accept() {
            accepted.push(c); // keep it open: a slow app still holds its connections
            if accepted.len() > 4096 {
                accepted.clear();
            }
        }
    }
}

fn burst(args: &[String]) {
    let addr: SocketAddr = arg(args, "--addr", None);
    let count: usize = arg(args, "--count", None);
    let wait_ms: u64 = arg(args, "--wait-ms", Some(500));
    if count > 5000 {
        die("--count is bounded to 5000");
    }
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .unwrap_or_else(|e| die(&e.to_string()));
        s.set_nonblocking(true).ok();
        let _ = s.connect(&addr.into()); // EINPROGRESS expected
        socks.push(s);
    }
    std::thread::sleep(Duration::from_millis(wait_ms));
    let connected = socks.iter().filter(|s| s.peer_addr().is_ok()).count();
    println!("{{\"attempted\":{count},\"connected\":{connected}}}");
}
