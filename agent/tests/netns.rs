//! Root-only tests against real network namespaces, real listeners and (when loadable) the real
//! eBPF programs. Each test creates its own `kt-test-<pid>-...` namespaces and checks what the
//! agent reports against `ss`/`nstat` run inside the same namespace.
//!
//! Without root every test prints a message naming it and returns (fails with
//! `KUBETUNE_REQUIRE_ROOT=1`, as in CI; rule in `kubetune_test_support::test_env`). As root, the eBPF tests fail when the
//! probe cannot load, unless `KUBETUNE_SKIP_EBPF_TESTS=1`.

use std::time::Duration;

use kubetune_agent::diagnose::GENEROUS_BACKLOG;
use kubetune_agent::probe::{Probe, Tier};
use kubetune_agent::scanner::{
    EbpfMode, ListenerObservation, NetnsObservation, SampleKinds, Scanner, ScannerConfig,
};
use kubetune_crds::report::{Diagnosis, LimitedBy};
use kubetune_test_support::netns::{self, AcceptMode, ListenerSpec, NamedNetns, NetnsId};

macro_rules! require_root {
    () => {
        if !kubetune_test_support::test_env::require_root("network namespaces") {
            return;
        }
    };
}

/// A scanner with the eBPF probe, or None when eBPF tests are explicitly skipped.
fn ebpf_scanner() -> Option<Scanner> {
    match Probe::load() {
        Ok(p) => Some(Scanner::with_probe(Some(p), None, Duration::from_secs(60))),
        Err(e) if std::env::var("KUBETUNE_SKIP_EBPF_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping eBPF part: {e} (KUBETUNE_SKIP_EBPF_TESTS=1)");
            None
        }
        Err(e) => panic!("eBPF probe must load as root on this kernel: {e} (set KUBETUNE_SKIP_EBPF_TESTS=1 to skip)"),
    }
}

fn fallback_scanner() -> Scanner {
    Scanner::new(ScannerConfig {
        window: Duration::from_secs(60),
        ebpf: EbpfMode::Off,
        ..Default::default()
    })
}

/// Scans only `ns` (through the normal enumeration) and returns its observation.
fn scan_ns(sc: &mut Scanner, ns: &NamedNetns) -> NetnsObservation {
    let ino = ns.inode().unwrap();
    let refs: Vec<_> = netns::enumerate()
        .into_iter()
        .filter(|r| r.inode == ino)
        .collect();
    assert_eq!(refs.len(), 1, "netns {} enumerated", ns.name());
    let snap = sc.scan_refs(refs);
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    snap.netns.into_iter().next().expect("observation")
}

fn listener(obs: &NetnsObservation, port: u16) -> &ListenerObservation {
    obs.listeners
        .iter()
        .find(|l| l.port == port)
        .unwrap_or_else(|| panic!("listener :{port} not reported: {obs:#?}"))
}

/// Checks the agent's numbers against `ss` and `nstat` in the netns.
fn check_ground_truth(ns: &NamedNetns, obs: &NetnsObservation, l: &ListenerObservation) {
    let ss = ns.ss_listeners().unwrap();
    let (recvq, sendq) = ss[&format!("127.0.0.1:{}", l.port)];
    assert_eq!(
        l.effective_backlog as u64, sendq,
        "effective backlog vs ss Send-Q"
    );
    // The queue can only have grown or stayed (non-accepting) / shrunk by accepts between the
    // two reads; for non-accepting listeners they must match.
    let overflows = ns.nstat("TcpExtListenOverflows").unwrap();
    let drops = ns.nstat("TcpExtListenDrops").unwrap();
    assert!(overflows > 0, "nstat shows overflows");
    assert!(l.overflows_total > 0, "agent shows overflows");
    assert!(
        l.overflows_total <= drops,
        "agent overflows {} must not exceed the netns ListenDrops {drops} read after it",
        l.overflows_total
    );
    let c = obs.counters.expect("netns counters");
    assert!(c.listen_overflows > 0 && c.listen_overflows <= overflows);
    eprintln!(
        "ss Recv-Q {recvq} Send-Q {sendq}; nstat ListenOverflows {overflows} ListenDrops {drops}; agent {:?}",
        (l.queue_now, l.effective_backlog, l.overflows_total, l.sk_drops, l.ebpf_ack_phase_overflows)
    );
}

#[test]
fn somaxconn_bound() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    assert!(sc.scan().listen_events, "the default probe sees listen()");
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("smx"), 128).unwrap();
    let lst = ns
        .spawn_listener(ListenerSpec::never_accepting(511))
        .unwrap();
    let _burst = ns
        .burst(lst.port(), 200, Duration::from_millis(500))
        .unwrap();
    let obs = scan_ns(&mut sc, &ns);
    assert_eq!(obs.somaxconn, Some(128));
    assert_eq!(obs.name.as_deref(), Some(ns.name()));
    let l = listener(&obs, lst.port());
    assert_eq!(l.requested_backlog, Some(511));
    assert_eq!(l.effective_backlog, 128);
    assert_eq!(l.somaxconn_at_listen, Some(128));
    assert_eq!(l.queue_now, 129, "full accept queue holds effective + 1");
    assert_eq!(l.limited_by, LimitedBy::Somaxconn);
    assert_eq!(l.diagnosis, Diagnosis::SomaxconnBound);
    assert_eq!(l.process.as_ref().map(|p| p.pid), Some(std::process::id()));
    check_ground_truth(&ns, &obs, l);
}

#[test]
fn app_backlog_bound() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("app"), 4096).unwrap();
    let lst = ns
        .spawn_listener(ListenerSpec::never_accepting(16))
        .unwrap();
    let _burst = ns
        .burst(lst.port(), 100, Duration::from_millis(500))
        .unwrap();
    let obs = scan_ns(&mut sc, &ns);
    assert_eq!(obs.somaxconn, Some(4096));
    let l = listener(&obs, lst.port());
    assert_eq!(l.requested_backlog, Some(16));
    assert_eq!(l.effective_backlog, 16);
    assert_eq!(l.queue_now, 17);
    assert_eq!(l.limited_by, LimitedBy::ApplicationBacklog);
    assert_eq!(l.diagnosis, Diagnosis::ApplicationBacklogBound);
    check_ground_truth(&ns, &obs, l);
}

#[test]
fn slow_accept() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("slow"), 4096).unwrap();
    let backlog = 256;
    assert!(i64::from(backlog) >= GENEROUS_BACKLOG);
    let lst = ns
        .spawn_listener(ListenerSpec {
            backlog,
            port: 0,
            accept: AcceptMode::Every(Duration::from_millis(250)),
            defer_accept_secs: None,
        })
        .unwrap();
    let _burst = ns
        .burst(lst.port(), 300, Duration::from_millis(300))
        .unwrap();
    let mut obs = scan_ns(&mut sc, &ns);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        obs = scan_ns(&mut sc, &ns);
    }
    let l = listener(&obs, lst.port());
    assert!(lst.accepted() > 0, "the app does accept, slowly");
    assert_eq!(l.requested_backlog, Some(i64::from(backlog)));
    assert_eq!(l.effective_backlog, i64::from(backlog));
    assert_eq!(l.samples, 5);
    assert!(
        l.queue_max > i64::from(backlog) * 9 / 10,
        "queue max {}",
        l.queue_max
    );
    assert_eq!(l.diagnosis, Diagnosis::SlowAccept, "{l:#?}");
    check_ground_truth(&ns, &obs, l);
}

#[test]
fn listener_from_before_the_agent() {
    require_root!();
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("pre"), 4096).unwrap();
    let lst = ns
        .spawn_listener(ListenerSpec::never_accepting(16))
        .unwrap();
    let _burst = ns
        .burst(lst.port(), 60, Duration::from_millis(400))
        .unwrap();
    // The agent (and its probe) start after the listener called listen().
    let Some(mut sc) = ebpf_scanner() else { return };
    let snap = sc.scan(); // full sweep of every netns on the host
    let ino = ns.inode().unwrap();
    let obs = snap
        .netns
        .iter()
        .find(|n| n.id.inode == ino)
        .expect("netns found by the full sweep");
    let l = listener(obs, lst.port());
    assert_eq!(
        l.requested_backlog, None,
        "requested backlog is unknown for a pre-existing listener"
    );
    assert_eq!(l.effective_backlog, 16);
    assert_eq!(
        l.limited_by,
        LimitedBy::ApplicationBacklog,
        "effective < somaxconn"
    );
    assert_eq!(l.diagnosis, Diagnosis::ApplicationBacklogBound);
    check_ground_truth(&ns, obs, l);
}

#[test]
fn fallback_mode_without_ebpf() {
    require_root!();
    let mut sc = fallback_scanner();
    assert_eq!(sc.tier(), Tier::SockDiag);
    assert!(sc.fallback_reason().is_some());
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("fb"), 128).unwrap();
    let lst = ns
        .spawn_listener(ListenerSpec::never_accepting(511))
        .unwrap();
    let _burst = ns
        .burst(lst.port(), 200, Duration::from_millis(500))
        .unwrap();
    let obs = scan_ns(&mut sc, &ns);
    let l = listener(&obs, lst.port());
    assert_eq!(l.requested_backlog, None, "no eBPF, no requested backlog");
    assert_eq!(l.ebpf_ack_phase_overflows, None);
    assert_eq!(l.effective_backlog, 128);
    assert_eq!(obs.somaxconn, Some(128));
    assert_eq!(l.limited_by, LimitedBy::Unknown);
    assert_eq!(l.diagnosis, Diagnosis::SomaxconnBound);
    check_ground_truth(&ns, &obs, l);
    // sk_drops (sock_diag) counts every overflow of this listener, and more.
    assert!(l.sk_drops.unwrap() >= l.overflows_total);
}

#[test]
fn netns_disappearing_mid_scan() {
    require_root!();
    let mut sc = fallback_scanner();
    let keep = NamedNetns::create(&NamedNetns::unique_name("keep")).unwrap();
    let gone = NamedNetns::create(&NamedNetns::unique_name("gone")).unwrap();
    let l1 = keep
        .spawn_listener(ListenerSpec::never_accepting(8))
        .unwrap();
    let l2 = gone
        .spawn_listener(ListenerSpec::never_accepting(8))
        .unwrap();
    let (ki, gi) = (keep.inode().unwrap(), gone.inode().unwrap());
    let gone_name = gone.name().to_string();
    let refs: Vec<_> = netns::enumerate()
        .into_iter()
        .filter(|r| r.inode == ki || r.inode == gi)
        .collect();
    assert_eq!(refs.len(), 2);
    let first = sc.scan_refs(refs.clone());
    assert_eq!(first.netns.len(), 2);
    // The netns dies between enumeration and inspection.
    drop(l2);
    drop(gone);
    let snap = sc.scan_refs(refs);
    assert!(
        snap.errors.is_empty(),
        "a vanished netns is not an error: {:?}",
        snap.errors
    );
    assert_eq!(snap.vanished, 1);
    assert_eq!(snap.netns.len(), 1);
    assert_eq!(snap.netns[0].id.inode, ki);
    assert_eq!(listener(&snap.netns[0], l1.port()).effective_backlog, 8);
    // And a full sweep never reports it again.
    let again = sc.scan();
    assert!(
        again
            .netns
            .iter()
            .all(|n| n.name.as_deref() != Some(gone_name.as_str())),
        "deleted netns reported again"
    );

    // Concurrent churn: namespaces deleted while a full sweep runs; no panic, no error spiral.
    let churn: Vec<NamedNetns> = (0..8)
        .map(|i| NamedNetns::create(&NamedNetns::unique_name(&format!("churn{i}"))).unwrap())
        .collect();
    let killer = std::thread::spawn(move || {
        for n in churn {
            drop(n);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for _ in 0..3 {
        let s = sc.scan();
        assert!(s.errors.len() <= 1, "errors: {:?}", s.errors);
    }
    killer.join().unwrap();
}

#[test]
fn reused_netns_inode_gets_a_new_identity() {
    require_root!();
    let mut sc = fallback_scanner();
    let name = NamedNetns::unique_name("reuse");
    let (id_a, port) = {
        let a = NamedNetns::create(&name).unwrap();
        let lst = a.spawn_listener(ListenerSpec::never_accepting(16)).unwrap();
        let _b = a.burst(lst.port(), 60, Duration::from_millis(300)).unwrap();
        let obs = scan_ns(&mut sc, &a);
        assert!(listener(&obs, lst.port()).overflows_total > 0);
        assert_eq!(obs.id.cookie, a.cookie().unwrap());
        (obs.id, lst.port())
    };
    let mut reused = false;
    let mut id_b: NetnsId = id_a;
    // Recreate until the kernel hands the same inode back (it usually does at once).
    for _ in 0..5 {
        let b = NamedNetns::create(&name).unwrap();
        let lst = b
            .spawn_listener(ListenerSpec {
                port,
                ..ListenerSpec::never_accepting(16)
            })
            .unwrap();
        let obs = scan_ns(&mut sc, &b);
        id_b = obs.id;
        let l = listener(&obs, port);
        assert_eq!(
            l.overflows_total, 0,
            "no state inherited from the dead netns"
        );
        assert_eq!(l.queue_max, 0, "no queue history inherited");
        drop(lst);
        if id_b.inode == id_a.inode {
            reused = true;
            break;
        }
    }
    assert_ne!(id_a, id_b, "distinct identities");
    assert_ne!(id_a.cookie, id_b.cookie, "cookies are never reused");
    eprintln!("inode reused: {reused} ({id_a} vs {id_b})");
}

#[test]
fn ebpf_tier_listen_events_ack_phase_overflows_and_close() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    assert!(matches!(sc.tier(), Tier::EbpfTracepoint | Tier::EbpfFentry));
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("ack"), 4096).unwrap();
    let backlog = 16usize;
    // TCP_DEFER_ACCEPT keeps handshakes in SYN_RECV until data arrives, so the accept queue can
    // be filled *after* the SYNs were admitted: the data-bearing final ACKs then overflow.
    let lst = ns
        .spawn_listener(ListenerSpec {
            defer_accept_secs: Some(5),
            ..ListenerSpec::never_accepting(backlog as i32)
        })
        .unwrap();
    let first = ns
        .burst(lst.port(), backlog, Duration::from_millis(200))
        .unwrap();
    assert_eq!(first.send_byte_each(), backlog);
    std::thread::sleep(Duration::from_millis(200));
    let second = ns
        .burst(lst.port(), backlog + 1, Duration::from_millis(200))
        .unwrap();
    second.send_byte_each();
    std::thread::sleep(Duration::from_millis(500));

    let obs = scan_ns(&mut sc, &ns);
    let l = listener(&obs, lst.port());
    let ack = l
        .ebpf_ack_phase_overflows
        .expect("eBPF tier reports ACK-phase overflows");
    let overflows = ns.nstat("TcpExtListenOverflows").unwrap();
    eprintln!(
        "ACK-phase (kfree_skb) {ack}, sk_drops {:?}, nstat ListenOverflows {overflows}",
        l.sk_drops
    );
    assert!(ack > 0, "kfree_skb TCP_LISTEN_OVERFLOW counted: {l:#?}");
    assert!(
        ack <= overflows,
        "kernel-program count {ack} <= netns ListenOverflows {overflows}"
    );
    assert_eq!(l.requested_backlog, Some(backlog as i64));
    assert!(l.overflows_total >= ack);

    // The listen() record: pid/comm/cgroup of this test process, netns identity.
    let probe = sc.probe_mut().unwrap();
    let _ = probe.drain_events();
    let infos = probe.listeners().unwrap();
    let (key, info) = infos
        .iter()
        .find(|(k, _)| k.port == lst.port() && k.netns_cookie == obs.id.cookie)
        .expect("listen() recorded by the tracepoints");
    assert_eq!(u64::from(key.netns_inum), obs.id.inode);
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.requested_backlog, backlog as i32);
    assert_eq!(info.effective_backlog, backlog as u32);
    assert_eq!(info.somaxconn, 4096);
    assert!(info.cgroup_id > 0);
    let key = *key;
    let stats = probe.stats().unwrap();
    assert!(
        stats.listens_recorded > 0 && stats.ack_phase_overflows > 0,
        "{stats:?}"
    );

    assert!(probe.overflows().unwrap().contains_key(&key));

    // Listener close: there is no close hook; the next scan of the netns finds the listener
    // gone and removes its records.
    drop(lst);
    std::thread::sleep(Duration::from_millis(100));
    let obs = scan_ns(&mut sc, &ns);
    assert!(obs.listeners.is_empty(), "{obs:#?}");
    let probe = sc.probe_mut().unwrap();
    assert!(
        !probe.listeners().unwrap().contains_key(&key),
        "the scan removed the listener record"
    );
    assert!(
        !probe.overflows().unwrap().contains_key(&key),
        "the scan removed the overflow counters"
    );
}

/// The tracepoint tier records `listen()` as the call starts (no exit tracepoint): only calls
/// that can succeed are recorded, a record a failed call left behind is not taken for the
/// listener's own, and the backlog the kernel will give is `min(backlog, somaxconn)`.
#[test]
fn ebpf_tier_records_listens_as_they_start_and_never_trusts_a_failed_ones_record() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("lsn"), 256).unwrap();
    let ports = ns.run(listen_cases).unwrap();
    let obs = scan_ns(&mut sc, &ns);

    // Clamped at entry exactly as the kernel clamps.
    let clamped = listener(&obs, ports.clamped);
    assert_eq!(
        (clamped.requested_backlog, clamped.effective_backlog),
        (Some(100_000), 256)
    );
    assert_eq!(clamped.limited_by, LimitedBy::Somaxconn);
    // The second SO_REUSEADDR socket's listen(5) failed (EADDRINUSE) after its record was made:
    // the listener's requested backlog is unknown, never 5.
    let shared = listener(&obs, ports.shared);
    assert_eq!(
        (shared.requested_backlog, shared.effective_backlog),
        (None, 64),
        "{shared:#?}"
    );
    // listen() that binds its own port: not recorded (the port is chosen as the call runs).
    let autobound = listener(&obs, ports.autobound);
    assert_eq!(
        (autobound.requested_backlog, autobound.effective_backlog),
        (None, 9)
    );
    // listen() on a UDP socket fails: nothing recorded under its port.
    let recorded = sc.probe_mut().unwrap().listeners().unwrap();
    let cookie = ns.cookie().unwrap();
    let in_ns = |port: u16| {
        recorded
            .keys()
            .any(|k| k.netns_cookie == cookie && k.port == port)
    };
    assert!(!in_ns(ports.udp) && !in_ns(ports.autobound));
    assert!(in_ns(ports.clamped) && in_ns(ports.shared));
    drop(ports);
}

/// Sockets of [`ebpf_tier_records_listens_as_they_start_and_never_trusts_a_failed_ones_record`]
/// (kept open until dropped).
struct ListenCases {
    clamped: u16,
    shared: u16,
    autobound: u16,
    udp: u16,
    _fds: Vec<std::os::fd::OwnedFd>,
}

/// In the current netns: `listen(100000)` on a bound socket; two `SO_REUSEADDR` sockets bound
/// to one port, the first listening with 64 and the second's `listen(5)` failing; `listen(9)`
/// on an unbound socket; `listen(7)` on a bound UDP socket (fails).
fn listen_cases() -> ListenCases {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sock = |kind: i32, port: u16| -> OwnedFd {
        // SAFETY: socket(2), the fd owned at once; setsockopt and bind get valid pointers.
        unsafe {
            let fd = OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, kind, 0));
            let one: i32 = 1;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const i32).cast(),
                4,
            );
            let addr = netns::loopback(port);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_in).cast(),
                    len
                ),
                0
            );
            fd
        }
    };
    let port_of = |fd: &OwnedFd| -> u16 {
        // SAFETY: getsockname(2) into a sockaddr_in of the right size.
        unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            );
            u16::from_be(addr.sin_port)
        }
    };
    let listen = |fd: &OwnedFd, backlog: i32| -> std::io::Result<()> {
        // SAFETY: listen(2) on an owned fd.
        match unsafe { libc::listen(fd.as_raw_fd(), backlog) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    let clamped = sock(libc::SOCK_STREAM, 0);
    listen(&clamped, 100_000).unwrap();
    let first = sock(libc::SOCK_STREAM, 0);
    let shared = port_of(&first);
    let second = sock(libc::SOCK_STREAM, shared);
    listen(&first, 64).unwrap();
    let e = listen(&second, 5).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
    // SAFETY: socket(2), the fd owned at once.
    let unbound =
        unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
    listen(&unbound, 9).unwrap();
    let udp = sock(libc::SOCK_DGRAM, 0);
    assert!(listen(&udp, 7).is_err());
    ListenCases {
        clamped: port_of(&clamped),
        shared,
        autobound: port_of(&unbound),
        udp: port_of(&udp),
        _fds: vec![clamped, first, second, unbound, udp],
    }
}

/// `ns`'s observation in a periodic scan (every netns; the eBPF tiers re-read unchanged ones).
fn periodic_ns(sc: &mut Scanner, ns: &NamedNetns) -> (NetnsObservation, SampleKinds) {
    let ino = ns.inode().unwrap();
    let snap = sc.scan();
    let obs = snap
        .netns
        .iter()
        .find(|n| n.id.inode == ino)
        .cloned()
        .expect("netns observed");
    (obs, sc.last_sample())
}

#[test]
fn ebpf_tier_periodic_scan_rereads_unchanged_netns_and_still_sees_queues_listeners_and_closes() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("inc"), 4096).unwrap();
    let a = ns
        .spawn_listener(ListenerSpec::never_accepting(16))
        .unwrap();
    let (first, snap) = periodic_ns(&mut sc, &ns);
    assert!(
        snap.full > 0 && snap.reread == 0,
        "first scan is full: {snap:?}"
    );
    assert_eq!(listener(&first, a.port()).queue_now, 0);

    // Nothing announced: the next scans re-read the netns, and see its queue fill and overflow
    // (SYN-phase, so only sk_drops / TcpExt show them) without a full sample.
    let _burst = ns.burst(a.port(), 60, Duration::from_millis(500)).unwrap();
    let (obs, snap) = periodic_ns(&mut sc, &ns);
    assert!(
        snap.reread > 0,
        "unchanged namespaces are re-read: {snap:?}"
    );
    let l = listener(&obs, a.port());
    assert_eq!(l.queue_now, 17, "queue length from the re-read");
    assert_eq!(l.samples, 2);
    assert_eq!(l.requested_backlog, Some(16));
    assert_eq!(l.process.as_ref().map(|p| p.pid), Some(std::process::id()));
    check_ground_truth(&ns, &obs, l);
    let counters = obs.counters.expect("TcpExt from the re-read");
    assert_eq!(
        counters.listen_overflows,
        ns.nstat("TcpExtListenOverflows").unwrap()
    );

    // A new listener: its listen() event sends the netns to a full sample.
    let b = ns.spawn_listener(ListenerSpec::never_accepting(8)).unwrap();
    let (obs, snap) = periodic_ns(&mut sc, &ns);
    assert_eq!(listener(&obs, b.port()).requested_backlog, Some(8));
    assert_eq!(listener(&obs, a.port()).samples, 3, "history kept");
    assert!(snap.full > 0, "{snap:?}");

    // A closed listener: the re-read misses it, the netns is sampled in full, the listener is
    // gone from the observation and from the probe's maps.
    let (_, _) = periodic_ns(&mut sc, &ns);
    let port_b = b.port();
    drop(b);
    std::thread::sleep(Duration::from_millis(100));
    let (obs, _) = periodic_ns(&mut sc, &ns);
    assert!(obs.listeners.iter().all(|l| l.port != port_b), "{obs:#?}");
    assert!(
        sc.probe()
            .unwrap()
            .listeners()
            .unwrap()
            .keys()
            .all(|k| !(k.port == port_b && k.netns_cookie == obs.id.cookie)),
        "closed listener's record removed"
    );
    assert_eq!(listener(&obs, a.port()).queue_now, 17);
}

/// `EbpfMode::NoSyscallTracepoints` (`--no-syscall-tracepoints`): no syscall tracepoint is
/// attached. Where `fexit/inet_listen` does not load either (as on the test machines) no
/// `listen()` is seen: the requested backlog is unknown, and every periodic scan samples the
/// netns in full, so a listener created after a scan is reported by the next one; queues and
/// overflows are counted as before.
#[test]
fn ebpf_without_syscall_tracepoints_samples_every_netns_in_full() {
    require_root!();
    if ebpf_scanner().is_none() {
        return;
    }
    let mut sc = Scanner::new(ScannerConfig {
        window: Duration::from_secs(60),
        ebpf: EbpfMode::NoSyscallTracepoints,
        ..Default::default()
    });
    let probe = sc
        .probe()
        .expect("the probe loads without the syscall tracepoints");
    let syscall_hooks: Vec<_> = probe
        .hooks()
        .iter()
        .filter(|h| h.hook.starts_with("tracepoint/syscalls/"))
        .collect();
    assert_eq!(syscall_hooks.len(), 1, "{:?}", probe.hooks());
    assert!(
        syscall_hooks.iter().all(|h| !h.attached),
        "{syscall_hooks:?}"
    );
    if probe.sees_listens() {
        eprintln!("fexit/inet_listen attached: listen() is seen without syscall tracepoints");
        return;
    }
    assert!(
        !sc.scan().listen_events,
        "the snapshot says listen() is not seen"
    );
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("nst"), 128).unwrap();
    let a = ns
        .spawn_listener(ListenerSpec::never_accepting(511))
        .unwrap();
    let (first, kinds) = periodic_ns(&mut sc, &ns);
    assert!(kinds.full > 0 && kinds.reread == 0, "{kinds:?}");
    let l = listener(&first, a.port());
    assert_eq!(
        l.requested_backlog, None,
        "no listen() hook, no requested backlog"
    );
    assert_eq!(l.effective_backlog, 128);

    let _burst = ns.burst(a.port(), 200, Duration::from_millis(500)).unwrap();
    let (obs, kinds) = periodic_ns(&mut sc, &ns);
    assert_eq!(
        kinds.reread, 0,
        "no re-reads without listen() events: {kinds:?}"
    );
    let l = listener(&obs, a.port());
    assert_eq!(l.queue_now, 129);
    assert_eq!(l.samples, 2, "history kept across full samples");
    assert_eq!(
        l.limited_by,
        LimitedBy::Unknown,
        "capped at somaxconn, request unknown"
    );
    assert_eq!(l.diagnosis, Diagnosis::SomaxconnBound);
    check_ground_truth(&ns, &obs, l);

    let b = ns.spawn_listener(ListenerSpec::never_accepting(8)).unwrap();
    let (obs, _) = periodic_ns(&mut sc, &ns);
    let l = listener(&obs, b.port());
    assert_eq!((l.requested_backlog, l.effective_backlog), (None, 8));
}

#[test]
fn report_spec_from_observation() {
    require_root!();
    let mut sc = fallback_scanner();
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("rep"), 128).unwrap();
    let a = ns
        .spawn_listener(ListenerSpec::never_accepting(511))
        .unwrap();
    let b = ns
        .spawn_listener(ListenerSpec::never_accepting(16))
        .unwrap();
    let _burst = ns.burst(a.port(), 150, Duration::from_millis(300)).unwrap();
    let ino = ns.inode().unwrap();
    let refs: Vec<_> = netns::enumerate()
        .into_iter()
        .filter(|r| r.inode == ino)
        .collect();
    let snap = sc.scan_refs(refs);
    let spec = snap.netns[0].to_report_spec("uid-1", "node-a", &snap, &Default::default());
    assert_eq!(spec.pod_uid, "uid-1");
    assert_eq!(spec.node_name, "node-a");
    assert_eq!(spec.source, "sock-diag");
    assert_eq!(spec.somaxconn, Some(128));
    assert_eq!(spec.listener_count, 2);
    let mut ports = vec![a.port() as i32, b.port() as i32];
    ports.sort();
    assert_eq!(
        spec.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
        ports,
        "sorted by port"
    );
    assert!(spec.overflows_total > 0);
    assert_eq!(
        spec.overflows_total,
        spec.listeners
            .iter()
            .map(|l| l.overflows_total)
            .sum::<i64>()
    );
    assert!(spec.diagnosis.is_problem());
}

#[test]
fn scan_cli_json_once() {
    require_root!();
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("cli"), 256).unwrap();
    let lst = ns
        .spawn_listener(ListenerSpec::never_accepting(64))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubetune-agent"))
        .args(["scan", "--once", "-o", "json", "--no-ebpf"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tier"], "sock-diag");
    assert!(v["fallback_reason"].is_string());
    let nsobj = v["netns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == ns.name())
        .expect("netns in JSON");
    assert_eq!(nsobj["somaxconn"], 256);
    let l = nsobj["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == lst.port())
        .unwrap();
    assert_eq!(l["effective_backlog"], 64);
    assert!(l["requested_backlog"].is_null());

    let table = std::process::Command::new(env!("CARGO_BIN_EXE_kubetune-agent"))
        .args(["scan", "--once", "--no-ebpf"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("NETNS") && t.contains("DIAGNOSIS") && t.contains("fallback mode"),
        "{t}"
    );
    assert!(t.contains(&format!("127.0.0.1:{}", lst.port())), "{t}");
}

/// Overflow events: a final-ACK-phase overflow burst sends `EVENT_OVERFLOW` records naming the
/// listener through the ring buffer, rate-limited in the kernel (fewer events than overflows),
/// and `Scanner::rescan` re-samples just that netns.
#[test]
fn ebpf_tier_overflow_events_are_rate_limited_and_rescan_one_netns() {
    require_root!();
    let Some(mut sc) = ebpf_scanner() else { return };
    let mut ring = sc
        .probe_mut()
        .unwrap()
        .take_events()
        .expect("the probe has a ring buffer");
    let ns = NamedNetns::create_with_somaxconn(&NamedNetns::unique_name("evt"), 4096).unwrap();
    let backlog = 16usize;
    let lst = ns
        .spawn_listener(ListenerSpec {
            defer_accept_secs: Some(5),
            ..ListenerSpec::never_accepting(backlog as i32)
        })
        .unwrap();
    let first = ns
        .burst(lst.port(), backlog, Duration::from_millis(200))
        .unwrap();
    first.send_byte_each();
    std::thread::sleep(Duration::from_millis(200));
    let second = ns
        .burst(lst.port(), backlog, Duration::from_millis(200))
        .unwrap();
    second.send_byte_each();
    std::thread::sleep(Duration::from_millis(300));

    let id = NetnsId {
        inode: ns.inode().unwrap(),
        cookie: ns.cookie().unwrap(),
    };
    let mut events = 0usize;
    while let Some(item) = ring.next() {
        if let Some(ev) = kubetune_agent::probe::decode_event(&item) {
            if ev.kind == kubetune_probe_common::EVENT_OVERFLOW
                && ev.info.key.netns_cookie == id.cookie
                && ev.info.key.port == lst.port()
            {
                events += 1;
            }
        }
    }
    let snap = sc.rescan(&[id]);
    assert_eq!(snap.netns.len(), 1, "only the named netns is re-sampled");
    let ack = listener(&snap.netns[0], lst.port())
        .ebpf_ack_phase_overflows
        .expect("eBPF tier");
    eprintln!("{ack} final-ACK-phase overflows, {events} overflow events");
    assert!(ack >= 2, "the burst overflowed several times: {ack}");
    assert!(events >= 1, "an overflow event for the listener");
    assert!(
        (events as u64) < ack,
        "rate-limited: {events} events for {ack} overflows"
    );
}
