//! `kubectl kubetune top`: the listeners with the most accept-queue overflows, from the
//! agents' ListenerReports, worst first (overflows in the report window, then lifetime).

use kubetune_crds::report::{Diagnosis, ListenerReport};
use serde::Serialize;

/// One overflowing listener.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub container: Option<String>,
    pub address: String,
    pub port: i32,
    pub overflows_recent: i64,
    pub overflows_total: i64,
    pub window_seconds: i64,
    pub requested_backlog: Option<i64>,
    pub effective_backlog: i64,
    pub somaxconn: Option<i64>,
    pub diagnosis: Diagnosis,
}

/// The `limit` listeners with overflows, worst first (ties: namespace, pod, port).
pub fn rows(reports: &[ListenerReport], limit: usize) -> Vec<TopRow> {
    let mut out: Vec<TopRow> = reports
        .iter()
        .flat_map(|r| {
            r.spec.listeners.iter().map(move |l| TopRow {
                namespace: r.metadata.namespace.clone().unwrap_or_default(),
                pod: r.metadata.name.clone().unwrap_or_default(),
                node: r.spec.node_name.clone(),
                container: l.container.clone(),
                address: l.address.clone(),
                port: l.port,
                overflows_recent: l.overflows_recent,
                overflows_total: l.overflows_total,
                window_seconds: r.spec.window_seconds,
                requested_backlog: l.requested_backlog,
                effective_backlog: l.effective_backlog,
                somaxconn: r.spec.somaxconn,
                diagnosis: l.diagnosis,
            })
        })
        .filter(|r| r.overflows_total > 0)
        .collect();
    out.sort_by(|a, b| {
        (b.overflows_recent, b.overflows_total)
            .cmp(&(a.overflows_recent, a.overflows_total))
            .then_with(|| (&a.namespace, &a.pod, a.port).cmp(&(&b.namespace, &b.pod, b.port)))
    });
    out.truncate(limit);
    out
}

/// Plain-text rendering (a `kubectl get`-style table).
pub fn render(rows: &[TopRow]) -> String {
    if rows.is_empty() {
        return "No listener has dropped connections (no ListenerReport shows accept-queue overflows).\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let opt = |v: Option<i64>| v.map_or("?".into(), |v| v.to_string());
            vec![
                r.namespace.clone(),
                r.pod.clone(),
                r.container.clone().unwrap_or("-".into()),
                format!("{}:{}", r.address, r.port),
                format!("{} ({}s)", r.overflows_recent, r.window_seconds),
                r.overflows_total.to_string(),
                opt(r.requested_backlog),
                r.effective_backlog.to_string(),
                opt(r.somaxconn),
                format!("{:?}", r.diagnosis),
            ]
        })
        .collect();
    let mut s = table(
        &[
            "NAMESPACE",
            "POD",
            "CONTAINER",
            "LISTENER",
            "RECENT",
            "TOTAL",
            "REQUESTED",
            "EFFECTIVE",
            "SOMAXCONN",
            "DIAGNOSIS",
        ],
        &cells,
        "",
    );
    s += "\n`kubectl kubetune why POD -n NAMESPACE` explains one.\n";
    s
}

/// Left-aligned columns separated by two spaces, each line prefixed with `indent`.
pub fn table(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = indent.to_string();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l += c;
            } else {
                l += &format!("{c:<w$}  ", w = width[i]);
            }
        }
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut s = line(header.to_vec());
    for r in rows {
        s += &line(r.iter().map(String::as_str).collect());
    }
    s
}
