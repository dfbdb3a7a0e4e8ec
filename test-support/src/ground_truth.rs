//! Ground truth the tests compare the agent against: `ss -lntH` and `nstat -az` output, parsed;
//! and whether this process may create network namespaces at all.

/// A listening socket as `ss -lnt` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsRow {
    /// Local address and port, as printed (`127.0.0.1:8080`, `[::]:22`).
    pub local: String,
    /// Recv-Q: for a listener, connections in the accept queue.
    pub recv_q: u64,
    /// Send-Q: for a listener, the effective backlog.
    pub send_q: u64,
}

impl SsRow {
    /// The port of [`SsRow::local`].
    pub fn port(&self) -> Option<u16> {
        self.local.rsplit(':').next()?.parse().ok()
    }
}

/// Parses `ss -lntH` output (`State Recv-Q Send-Q Local Peer` per line) into its listeners.
pub fn parse_ss(out: &str) -> Vec<SsRow> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[0] != "LISTEN" {
                return None;
            }
            Some(SsRow {
                local: f[3].to_string(),
                recv_q: f[1].parse().ok()?,
                send_q: f[2].parse().ok()?,
            })
        })
        .collect()
}

/// One counter out of `nstat -az` output (0 when absent).
pub fn parse_nstat(out: &str, counter: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(counter)).then(|| f.next().and_then(|v| v.parse().ok()))?
        })
        .unwrap_or(0)
}

/// True when running as root (tests that need network namespaces skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_and_counters() {
        let ss = "LISTEN 129    128        127.0.0.1:8080      0.0.0.0:*\nLISTEN 0 4096 [::]:22 [::]:*\nESTAB 0 0 127.0.0.1:1 127.0.0.1:2\n";
        let rows = parse_ss(ss);
        assert_eq!(
            rows,
            vec![
                SsRow {
                    local: "127.0.0.1:8080".into(),
                    recv_q: 129,
                    send_q: 128
                },
                SsRow {
                    local: "[::]:22".into(),
                    recv_q: 0,
                    send_q: 4096
                },
            ]
        );
        assert_eq!(rows[1].port(), Some(22));
        let n = "#kernel\nTcpExtListenOverflows           171                0.0\n";
        assert_eq!(parse_nstat(n, "TcpExtListenOverflows"), 171);
        assert_eq!(parse_nstat(n, "TcpExtListenDrops"), 0);
    }
}
