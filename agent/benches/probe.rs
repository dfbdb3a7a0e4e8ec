//! kubetune-agent benchmarks (not timed tests; run as root): `cargo bench -p kubetune-agent --bench probe`
//!
//! 1. Probe overhead: loopback connections/s inside a scratch netns with the eBPF probe attached
//!    vs detached, interleaved phases (D A D A) in one run; prints the ratio (target >= 0.99).
//! 2. Agent footprint: 100 netns x 10 listeners, the release `kubetune-agent scan` sampling every
//!    5 s; prints RSS (VmRSS / VmHWM) and CPU (% of one core) after start-up (targets <= 32 MiB,
//!    <= 1 %).
//!
//! Each part is bounded (< 60 s). Set `KT_BENCH_ONLY=overhead|footprint` to run one part.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubetune_agent::netns::{self, NamedNetns};
use kubetune_agent::probe::Probe;

fn main() {
    if !netns::is_root() {
        eprintln!("benchmarks need root (netns, eBPF); skipping");
        return;
    }
    let only = std::env::var("KT_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "overhead" {
        overhead();
    }
    if only.is_empty() || only == "footprint" {
        footprint();
    }
}

/// A connect/accept/close loop running inside `ns` (1 client + 1 server thread) until dropped.
struct Workload {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(ns: &NamedNetns) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (listener, addr) = ns
            .run(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let a = l.local_addr().unwrap();
                (l, a)
            })
            .unwrap();
        let s2 = stop.clone();
        let server = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    drop(c);
                }
            }
        });
        let (s3, c3) = (stop.clone(), count.clone());
        let path = ns.path().to_path_buf();
        let client = std::thread::spawn(move || {
            let fd = netns::open_netns(&path, None).unwrap();
            netns::setns_current_thread(&fd, &path).unwrap();
            while !s3.load(Ordering::Relaxed) {
                if let Ok(s) = TcpStream::connect::<SocketAddr>(addr) {
                    let l = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: valid fd and option buffer; RST on close avoids TIME_WAIT buildup.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&l as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as u32,
                        );
                    }
                    c3.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Workload {
            stop,
            count,
            addr,
            threads: vec![server, client],
        }
    }

    /// CPU time (user + sys, including softirq work done in their context) of the workload threads.
    fn cpu(&self) -> f64 {
        use std::os::unix::thread::JoinHandleExt;
        self.threads
            .iter()
            .map(|t| {
                let mut clk: libc::clockid_t = 0;
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: the thread is alive (joined only in stop()); valid out-pointers.
                unsafe {
                    libc::pthread_getcpuclockid(t.as_pthread_t(), &mut clk);
                    libc::clock_gettime(clk, &mut ts);
                }
                ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
            })
            .sum()
    }

    /// (connections per wall second, connections per CPU second of the workload) over `d`.
    fn rate(&self, d: Duration) -> (f64, f64) {
        let (c0, cpu0) = (self.count.load(Ordering::Relaxed), self.cpu());
        let t0 = Instant::now();
        std::thread::sleep(d);
        let n = (self.count.load(Ordering::Relaxed) - c0) as f64;
        (
            n / t0.elapsed().as_secs_f64(),
            n / (self.cpu() - cpu0).max(1e-9),
        )
    }

    fn stop(self, ns: &NamedNetns) {
        self.stop.store(true, Ordering::Relaxed);
        let addr = self.addr;
        // Wake the blocking accept.
        let _ = ns.run(move || TcpStream::connect(addr).map(drop));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn overhead() {
    let ns = NamedNetns::create(&NamedNetns::unique_name("bench")).expect("netns");
    let w = Workload::start(&ns);
    let settle = Duration::from_millis(250);
    let phase = Duration::from_millis(1000);
    std::thread::sleep(Duration::from_secs(1));
    let (mut dw, mut dc, mut aw, mut ac) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_stats = None;
    for _ in 0..10 {
        std::thread::sleep(settle);
        let (w1, c1) = w.rate(phase);
        let probe = Probe::load().expect("probe must load for the overhead benchmark");
        std::thread::sleep(settle);
        let (w2, c2) = w.rate(phase);
        last_stats = probe.stats().ok();
        drop(probe);
        dw.push(w1);
        dc.push(c1);
        aw.push(w2);
        ac.push(c2);
    }
    w.stop(&ns);
    let r = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    println!("probe overhead (loopback connect+accept+close in a netns, 1 client + 1 server thread; 10 x (1 s detached, 1 s attached), interleaved):");
    println!(
        "  detached: median {:.0} conn/s wall, {:.0} conn per CPU-s  wall {:?}",
        median(&mut dw.clone()),
        median(&mut dc.clone()),
        r(&dw)
    );
    println!(
        "  attached: median {:.0} conn/s wall, {:.0} conn per CPU-s  wall {:?}",
        median(&mut aw.clone()),
        median(&mut ac.clone()),
        r(&aw)
    );
    println!(
        "  ratio attached/detached: {:.4} (conn/s, medians), {:.4} (conn per CPU-second, medians); target >= 0.99",
        median(&mut aw) / median(&mut dw),
        median(&mut ac) / median(&mut dc)
    );
    println!("  probe stats in the last attached phase: {last_stats:?}");
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ')' start at state (3rd field); utime is field 14, stime 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn footprint() {
    // SAFETY: raising our own soft RLIMIT_NOFILE to the hard limit.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let t0 = Instant::now();
    let mut namespaces = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..100 {
        let ns = NamedNetns::create(&NamedNetns::unique_name(&format!("fp{i}"))).expect("netns");
        let ls = ns
            .run(|| {
                (0..10)
                    .map(|j| TcpListener::bind(("127.0.0.1", 20000 + j)).unwrap())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        sockets.extend(ls);
        namespaces.push(ns);
    }
    eprintln!("  created 100 netns x 10 listeners in {:?}", t0.elapsed());
    let interval = "5s";
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kubetune-agent"))
        .args([
            "scan",
            "--duration",
            "31s",
            "--interval",
            interval,
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(6));
    let hz = 100.0; // USER_HZ
    let c0 = cpu_ticks(pid);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let c1 = cpu_ticks(pid);
    let wall = w0.elapsed().as_secs_f64();
    let rss = proc_status(pid, "VmRSS:");
    let hwm = proc_status(pid, "VmHWM:");
    let out = child.wait_with_output().expect("agent output");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let nlisteners: usize = v["netns"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n["listeners"].as_array().map_or(0, |l| l.len()))
                .sum()
        })
        .unwrap_or(0);
    println!("agent footprint (100 netns x 10 listeners, `kubetune-agent scan --interval {interval}`, tier {}):", v["tier"]);
    println!("  listeners reported: {nlisteners}");
    println!(
        "  RSS: {:.1} MiB (peak VmHWM {:.1} MiB; target <= 32 MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  CPU at rest: {:.2} % of one core over {:.0} s after start-up (target <= 1 %)",
        (c1 - c0) as f64 / hz / wall * 100.0,
        wall
    );
    drop(sockets);
    drop(namespaces);
}
