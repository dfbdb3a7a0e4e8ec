//! The whole loop on real network namespaces (root): observe → decide → mutate → verify. This
//! is the local demo's scenario with every claim asserted against ground truth; it runs with the
//! eBPF probes and again in fallback mode.

use std::path::PathBuf;

use kubetune_agent::scanner::EbpfMode;
use kubetune_crds::decision::Outcome;
use kubetune_crds::policy::condition::VERIFIED;
use kubetune_crds::Diagnosis;
use kubetune_e2e::demo::{run, DemoConfig};
use kubetune_operator::status::find_condition;

fn config(tag: &str, ebpf: EbpfMode) -> DemoConfig {
    DemoConfig {
        burst: 300,
        ebpf,
        prefix: format!("kt-loop{}-{tag}", std::process::id() % 100000),
        listener_exe: PathBuf::from(env!("CARGO_BIN_EXE_kt-listener")),
        node_somaxconn: 128,
    }
}

async fn scenario(tag: &str, ebpf: EbpfMode) {
    if !kubetune_test_support::test_env::require_root("network namespaces and eBPF") {
        return;
    }
    let cfg = config(tag, ebpf);
    let mut narration = Vec::new();
    let out = run(&cfg, &mut narration).await;
    kubetune_e2e::kubelet::delete_netns_with_prefix(&cfg.prefix);
    let out = out.unwrap_or_else(|e| {
        panic!(
            "scenario failed: {e}\n{}",
            String::from_utf8_lossy(&narration)
        )
    });
    let text = String::from_utf8_lossy(&narration).into_owned();

    if ebpf == EbpfMode::Off {
        assert_eq!(out.tier, "sock-diag", "{text}");
    } else {
        assert!(
            out.tier.starts_with("ebpf"),
            "eBPF must load on this kernel: {text}"
        );
    }
    // Before: web is clipped by somaxconn 128, api by its own backlog; both overflow, and the
    // agent's numbers match ss/nstat.
    let web = &out.before["web"];
    let api = &out.before["api"];
    for o in [web, api] {
        let l = &o.report.listeners[0];
        let ss = o.ss.as_ref().expect("ss saw the listener");
        assert_eq!(o.report.somaxconn, Some(128));
        assert_eq!(
            l.effective_backlog, ss.send_q as i64,
            "effective backlog = ss Send-Q"
        );
        assert!(
            l.queue_now >= ss.recv_q as i64 - 1 && l.queue_now <= ss.recv_q as i64,
            "queue {} vs ss Recv-Q {}",
            l.queue_now,
            ss.recv_q
        );
        assert!(
            o.nstat_overflows > 0 && o.report.overflows_total > 0,
            "{text}"
        );
        assert!(
            o.report.overflows_total as u64 <= o.nstat_overflows,
            "agent overflows within nstat's netns total"
        );
    }
    assert_eq!(web.report.listeners[0].effective_backlog, 128);
    assert_eq!(web.report.diagnosis, Diagnosis::SomaxconnBound, "{text}");
    assert_eq!(api.report.listeners[0].effective_backlog, 100);
    assert_eq!(
        api.report.diagnosis,
        Diagnosis::ApplicationBacklogBound,
        "{text}"
    );
    if ebpf != EbpfMode::Off {
        assert_eq!(
            web.report.listeners[0].requested_backlog,
            Some(511),
            "eBPF saw listen(511)"
        );
        assert_eq!(api.report.listeners[0].requested_backlog, Some(100));
    }
    // Decide + mutate: the webhook injected somaxconn into both replacement pods.
    for name in ["web", "api"] {
        let d = &out.decisions[name];
        assert!(
            d.entries
                .iter()
                .any(|e| e.sysctl == "net.core.somaxconn" && e.outcome == Outcome::Injected),
            "{d:?}"
        );
        let sc = out.admitted[name]
            .spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .unwrap();
        assert!(sc
            .sysctls
            .as_ref()
            .unwrap()
            .iter()
            .any(|s| s.name == "net.core.somaxconn" && s.value == "4096"));
    }
    // After: the kubelet applied 4096; web no longer overflows, api still does.
    let web = &out.after["web"];
    let api = &out.after["api"];
    assert_eq!(web.report.somaxconn, Some(4096));
    // The agent also reports the other per-netns sysctls policies can set, read in the pod netns.
    let syn_backlog = web.report.sysctls.get("net.ipv4.tcp_max_syn_backlog");
    assert!(
        syn_backlog.is_some_and(|v| v.parse::<u32>().is_ok()),
        "{syn_backlog:?}"
    );
    assert!(web
        .report
        .sysctls
        .get("net.ipv4.ip_local_port_range")
        .is_some_and(|v| v.split(' ').count() == 2));
    assert_eq!(
        web.nstat_overflows, 0,
        "ground truth: web stopped overflowing"
    );
    assert_eq!(web.report.overflows_total, 0);
    assert_eq!(web.report.listeners[0].effective_backlog, 511);
    assert!(api.nstat_overflows > 0);
    assert_eq!(api.report.diagnosis, Diagnosis::ApplicationBacklogBound);
    // Verify: Verified for web (measured), not for api (the sysctl is not the fix).
    let w = &out.statuses["web-backlog"];
    assert_eq!(
        (
            w.matched_pods,
            w.applied_pods,
            w.verified_pods,
            w.overflowing_pods
        ),
        (1, 1, 1, 0),
        "{w:?}"
    );
    assert_eq!(find_condition(w, VERIFIED).unwrap().status, "True");
    let a = &out.statuses["api-backlog"];
    assert_eq!(
        (
            a.matched_pods,
            a.applied_pods,
            a.verified_pods,
            a.overflowing_pods
        ),
        (1, 1, 0, 1),
        "{a:?}"
    );
    let c = find_condition(a, VERIFIED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ApplicationBacklogBound")
    );
    assert!(
        !std::path::Path::new("/run/netns")
            .join(format!("{}-web-2", cfg.prefix))
            .exists(),
        "cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_decide_mutate_verify_with_ebpf() {
    scenario("ebpf", EbpfMode::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_decide_mutate_verify_in_fallback_mode() {
    scenario("fallback", EbpfMode::Off).await;
}
