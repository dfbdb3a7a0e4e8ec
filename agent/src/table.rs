//! `kubetune-agent scan` table output.

use std::fmt::Write as _;

use crate::scanner::{ListenerObservation, NetnsObservation, Snapshot};

/// Column headers.
pub const HEADERS: [&str; 10] = [
    "NETNS",
    "POD/PROCESS",
    "ADDR:PORT",
    "REQUESTED",
    "EFFECTIVE",
    "SOMAXCONN",
    "QUEUE",
    "QMAX",
    "OVERFLOWS",
    "DIAGNOSIS",
];

fn netns_label(ns: &NetnsObservation) -> String {
    match (&ns.name, ns.host) {
        (Some(n), _) => format!("{n}({})", ns.id.inode),
        (None, true) => format!("host({})", ns.id.inode),
        (None, false) => ns.id.inode.to_string(),
    }
}

fn owner_label(ns: &NetnsObservation, l: &ListenerObservation) -> String {
    if let Some(p) = l.pod.as_ref().or(ns.pod.as_ref()) {
        let mut s = format!("pod:{}", p.pod_uid);
        if let Some(c) = &p.container_id {
            let _ = write!(s, "/{}", &c[..c.len().min(12)]);
        }
        return s;
    }
    match &l.process {
        Some(p) => format!("{}({})", p.comm, p.pid),
        None => "-".into(),
    }
}

fn addr_port(l: &ListenerObservation) -> String {
    match l.address {
        std::net::IpAddr::V4(a) => format!("{a}:{}", l.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", l.port),
    }
}

/// One row per listener.
pub fn rows(s: &Snapshot) -> Vec<[String; 10]> {
    let mut out = Vec::new();
    for ns in &s.netns {
        for l in &ns.listeners {
            out.push([
                netns_label(ns),
                owner_label(ns, l),
                addr_port(l),
                l.requested_backlog
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                l.effective_backlog.to_string(),
                ns.somaxconn
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                l.queue_now.to_string(),
                l.queue_max.to_string(),
                match l.overflows_per_minute {
                    Some(r) if r > 0.0 => format!("{} ({:.0}/min)", l.overflows_total, r),
                    _ => l.overflows_total.to_string(),
                },
                format!("{:?}", l.diagnosis),
            ]);
        }
    }
    out
}

/// Renders the snapshot as an aligned table preceded by a mode line.
pub fn render(s: &Snapshot) -> String {
    let rows = rows(s);
    let mut w: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    match &s.fallback_reason {
        None => {
            let hook = if s.listen_events {
                ""
            } else {
                ", no listen() hook: requested backlogs unknown"
            };
            let _ = writeln!(out, "# tier: {} (eBPF{hook})", s.tier);
        }
        Some(r) => {
            let _ = writeln!(out, "# tier: {} (fallback mode: {r})", s.tier);
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<width$}  ", c, width = w[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(HEADERS.to_vec()));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
    if s.vanished > 0 || !s.errors.is_empty() {
        let _ = writeln!(
            out,
            "# {} netns vanished during the scan; {} errors{}",
            s.vanished,
            s.errors.len(),
            s.errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    out
}
