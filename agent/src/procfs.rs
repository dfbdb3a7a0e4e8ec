//! procfs readers: netstat counters, somaxconn, process names, cgroups, socket owners.

use std::collections::HashMap;
use std::path::Path;

/// Parses `/proc/net/netstat` (pairs of header/value lines per section) into
/// `"Section:Key" -> value` (e.g. `"TcpExt:ListenOverflows"`).
pub fn parse_netstat(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [hdr, vals] = pair else { continue };
        let mut h = hdr.split_whitespace();
        let mut v = vals.split_whitespace();
        let (Some(sec), Some(sec2)) = (h.next(), v.next()) else {
            continue;
        };
        if sec != sec2 {
            continue;
        }
        let sec = sec.trim_end_matches(':');
        for (k, val) in h.zip(v) {
            if let Ok(n) = val.parse::<u64>() {
                out.insert(format!("{sec}:{k}"), n);
            }
        }
    }
    out
}

/// TCP listen counters of one network namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListenCounters {
    /// `TcpExt ListenOverflows`: SYN- and ACK-phase accept-queue overflows.
    pub listen_overflows: u64,
    /// `TcpExt ListenDrops`: every drop at a listener (includes overflows).
    pub listen_drops: u64,
}

/// Reads the calling thread's netns counters from `/proc/thread-self/net/netstat` (after
/// `setns` in a thread, `/proc/self/net` would still show the process's netns).
pub fn thread_listen_counters() -> std::io::Result<ListenCounters> {
    listen_counters_at(Path::new("/proc/thread-self/net/netstat"))
}

/// Reads listen counters from a netstat file (`/proc/<pid>/net/netstat` works without setns).
pub fn listen_counters_at(path: &Path) -> std::io::Result<ListenCounters> {
    Ok(listen_counters_from(&std::fs::read_to_string(path)?))
}

/// The listen counters of a netstat file's text.
pub fn listen_counters_from(netstat: &str) -> ListenCounters {
    let m = parse_netstat(netstat);
    ListenCounters {
        listen_overflows: m.get("TcpExt:ListenOverflows").copied().unwrap_or(0),
        listen_drops: m.get("TcpExt:ListenDrops").copied().unwrap_or(0),
    }
}

/// `net.core.somaxconn` as seen by the calling thread (net sysctls follow the thread's netns).
pub fn thread_somaxconn() -> std::io::Result<i64> {
    let s = std::fs::read_to_string("/proc/sys/net/core/somaxconn")?;
    s.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Every per-netns sysctl of kubetune's table except `net.core.somaxconn` (reported on its
/// own), as the calling thread's netns shows it, whitespace collapsed. Unreadable ones are
/// skipped (e.g. a sysctl this kernel does not have).
pub fn thread_netns_sysctls() -> std::collections::BTreeMap<String, String> {
    kubetune_crds::sysctl::TABLE
        .iter()
        .filter(|i| {
            i.scope == kubetune_crds::sysctl::Scope::Network && i.name != "net.core.somaxconn"
        })
        .filter_map(|i| {
            let path = format!("/proc/sys/{}", i.name.replace('.', "/"));
            let v = std::fs::read_to_string(path).ok()?;
            Some((
                i.name.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect()
}

/// `comm` of a process.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Contents of `/proc/<pid>/cgroup`.
pub fn cgroup(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// Maps socket inodes to the (lowest) pid holding them, for the given pids.
pub fn socket_owners(pids: &[u32], wanted: &std::collections::HashSet<u64>) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(ino) = ino.parse::<u64>() {
                    if wanted.contains(&ino) {
                        out.entry(ino).or_insert(pid);
                    }
                }
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 15\nIpExt: InNoRoutes\nIpExt: 3\n";
        let m = parse_netstat(t);
        assert_eq!(m["TcpExt:ListenOverflows"], 12);
        assert_eq!(m["TcpExt:ListenDrops"], 15);
        assert_eq!(m["IpExt:InNoRoutes"], 3);
    }

    #[test]
    fn own_counters_readable() {
        let c = listen_counters_at(Path::new("/proc/self/net/netstat")).unwrap();
        assert!(c.listen_drops >= c.listen_overflows);
        assert!(thread_somaxconn().unwrap() > 0);
    }
}
