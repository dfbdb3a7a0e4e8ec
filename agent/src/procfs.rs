//! procfs readers: netstat counters, somaxconn, process names, cgroups, socket owners.

use std::collections::HashMap;
use std::path::Path;

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

/// The listen counters of a netstat file's text: only the `TcpExt:` header/value line pair is
/// read, without building the whole map (this runs for every namespace at every scan).
pub fn listen_counters_from(netstat: &str) -> ListenCounters {
    let mut lines = netstat.lines();
    let mut out = ListenCounters::default();
    while let Some(hdr) = lines.next() {
        let Some(vals) = lines.next() else { break };
        let (Some(names), Some(values)) =
            (hdr.strip_prefix("TcpExt:"), vals.strip_prefix("TcpExt:"))
        else {
            continue;
        };
        for (k, v) in names
            .split_ascii_whitespace()
            .zip(values.split_ascii_whitespace())
        {
            match k {
                "ListenOverflows" => out.listen_overflows = v.parse().unwrap_or(0),
                "ListenDrops" => out.listen_drops = v.parse().unwrap_or(0),
                _ => continue,
            }
        }
        break;
    }
    out
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
        let t = "IpExt: InNoRoutes\nIpExt: 3\nTcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 15\nMPTcpExt: ListenOverflows\nMPTcpExt: 99\n";
        let c = listen_counters_from(t);
        assert_eq!((c.listen_overflows, c.listen_drops), (12, 15));
        // A section without the keys, a torn file, nothing: zero, no panic.
        for t in [
            "TcpExt: SyncookiesSent\nTcpExt: 4\n",
            "TcpExt: ListenOverflows\n",
            "",
        ] {
            assert_eq!(listen_counters_from(t), ListenCounters::default());
        }
    }

    #[test]
    fn counters_equal_the_full_parse_of_this_machine() {
        // What a full header/value pairing of every section says, against the shortcut.
        let text = std::fs::read_to_string("/proc/self/net/netstat").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut full = std::collections::HashMap::new();
        for pair in lines.chunks(2) {
            let [h, v] = pair else { continue };
            for (k, n) in h.split_whitespace().zip(v.split_whitespace()) {
                full.insert(
                    format!("{}{k}", h.split_whitespace().next().unwrap()),
                    n.to_string(),
                );
            }
        }
        let c = listen_counters_from(&text);
        assert_eq!(
            full["TcpExt:ListenOverflows"],
            c.listen_overflows.to_string()
        );
        assert_eq!(full["TcpExt:ListenDrops"], c.listen_drops.to_string());
    }

    #[test]
    fn own_counters_readable() {
        let c = listen_counters_at(Path::new("/proc/self/net/netstat")).unwrap();
        assert!(c.listen_drops >= c.listen_overflows);
        assert!(thread_somaxconn().unwrap() > 0);
    }
}
