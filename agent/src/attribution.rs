//! netns → pod attribution from `/proc/<pid>/cgroup` (pure parsing), and the off-cluster
//! process fallback.
//!
//! Recognised layouts (cgroup v1 and v2, anywhere in the path so nested setups like kind work):
//! * systemd driver: `.../kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
//!   (guaranteed pods: `kubepods-pod<uid>.slice`), runtime `cri-containerd`, `crio`, `docker`;
//!   `crio-conmon-<id>.scope` is CRI-O's monitor, not a container.
//! * cgroupfs driver: `.../kubepods/<qos>/pod<uid>/<id>` (guaranteed: `.../kubepods/pod<uid>/<id>`).

use serde::Serialize;

/// What a process's cgroup path says about its pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodCgroup {
    /// Pod UID (dashes).
    pub pod_uid: String,
    /// QoS class from the path: `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
    /// Container id (64 hex), when the process is in a container's cgroup.
    pub container_id: Option<String>,
    /// Runtime prefix of the scope (`cri-containerd`, `crio`, `docker`), when systemd-style.
    pub runtime: Option<String>,
}

/// Parses the content of `/proc/<pid>/cgroup`. Returns `None` for non-pod processes.
pub fn parse_pod_cgroup(content: &str) -> Option<PodCgroup> {
    // Prefer the v2 line ("0::"), else the first line with a kubepods path.
    let mut paths: Vec<&str> = content
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter(|p| p.contains("kubepods"))
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    content
        .lines()
        .find(|l| l.starts_with("0::") && l.contains("kubepods"))
        .and_then(|l| l.get(3..))
        .into_iter()
        .chain(paths)
        .find_map(parse_pod_cgroup_path)
}

/// Parses one cgroup path.
pub fn parse_pod_cgroup_path(path: &str) -> Option<PodCgroup> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kp = comps.iter().position(|c| {
        *c == "kubepods" || *c == "kubepods.slice" || c.ends_with("-kubepods.slice")
    })?;
    let rest = &comps[kp + 1..];
    let mut qos = "guaranteed".to_string();
    let mut uid = None;
    let mut idx = 0;
    for (i, c) in rest.iter().enumerate() {
        if let Some(s) = c.strip_suffix(".slice") {
            // kubepods-burstable.slice / kubepods-burstable-pod<uid>.slice / kubepods-pod<uid>.slice
            let s = match s.find("kubepods-") {
                Some(i) => &s[i + "kubepods-".len()..],
                None => s,
            };
            if let Some(p) = s.find("pod") {
                let q = s[..p].trim_end_matches('-');
                if !q.is_empty() {
                    qos = q.to_string();
                }
                uid = Some(s[p + 3..].replace('_', "-"));
                idx = i;
                break;
            } else if s == "burstable" || s == "besteffort" {
                qos = s.to_string();
            }
        } else if let Some(u) = c.strip_prefix("pod") {
            uid = Some(u.to_string());
            idx = i;
            break;
        } else if *c == "burstable" || *c == "besteffort" {
            qos = c.to_string();
        }
    }
    let uid = uid.filter(|u| is_uid(u))?;
    let (container_id, runtime) = match rest.get(idx + 1) {
        Some(c) => match c.strip_suffix(".scope") {
            Some(scope) => {
                if scope.starts_with("crio-conmon-") {
                    (None, Some("crio".to_string()))
                } else if let Some((rt, id)) = scope.rsplit_once('-') {
                    (
                        is_container_id(id).then(|| id.to_string()),
                        Some(rt.to_string()),
                    )
                } else {
                    (None, None)
                }
            }
            None => (is_container_id(c).then(|| c.to_string()), None),
        },
        None => (None, None),
    };
    Some(PodCgroup {
        pod_uid: uid,
        qos,
        container_id,
        runtime,
    })
}

fn is_uid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Strips a runtime scheme from a Kubernetes `containerID` (`containerd://abc` → `abc`).
pub fn strip_runtime_scheme(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map(|(_, id)| id)
        .unwrap_or(container_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f4e2a6c-1b3d-4e5f-9a7b-0c1d2e3f4a5b";
    const UIDU: &str = "8f4e2a6c_1b3d_4e5f_9a7b_0c1d2e3f4a5b";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn table() {
        type Want<'a> = Option<(&'a str, Option<&'a str>, Option<&'a str>)>;
        let cases: Vec<(String, Want)> = vec![
            (format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UIDU}.slice/cri-containerd-{CID}.scope\n"),
             Some(("burstable", Some(CID), Some("cri-containerd")))),
            (format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UIDU}.slice/crio-{CID}.scope\n"),
             Some(("besteffort", Some(CID), Some("crio")))),
            (format!("0::/kubepods.slice/kubepods-pod{UIDU}.slice/cri-containerd-{CID}.scope\n"),
             Some(("guaranteed", Some(CID), Some("cri-containerd")))),
            (format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UIDU}.slice/crio-conmon-{CID}.scope\n"),
             Some(("besteffort", None, Some("crio")))),
            (format!("0::/kubepods/burstable/pod{UID}/{CID}\n"), Some(("burstable", Some(CID), None))),
            (format!("0::/kubepods/pod{UID}/{CID}\n"), Some(("guaranteed", Some(CID), None))),
            // cgroup v1, several hierarchies
            (format!("12:memory:/kubepods/besteffort/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n"),
             Some(("besteffort", Some(CID), None))),
            (format!("4:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UIDU}.slice/docker-{CID}.scope\n"),
             Some(("burstable", Some(CID), Some("docker")))),
            // kind: the node is itself a container
            (format!("0::/system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UIDU}.slice/cri-containerd-{CID}.scope\n"),
             Some(("besteffort", Some(CID), Some("cri-containerd")))),
            // pod-level cgroup only (e.g. the pause process moved up)
            (format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UIDU}.slice\n"), Some(("burstable", None, None))),
            ("0::/user.slice/user-0.slice/session-1.scope\n".into(), None),
            ("0::/system.slice/containerd.service\n".into(), None),
            ("0::/kubepods.slice/kubepods-burstable.slice\n".into(), None),
            ("0::/kubepods/burstable/podnot-a-uid/abc\n".into(), None),
            ("".into(), None),
        ];
        for (input, want) in cases {
            let got = parse_pod_cgroup(&input);
            match want {
                None => assert_eq!(got, None, "{input}"),
                Some((qos, cid, rt)) => {
                    let g = got.unwrap_or_else(|| panic!("no pod in {input}"));
                    assert_eq!(g.pod_uid, UID, "{input}");
                    assert_eq!(g.qos, qos, "{input}");
                    assert_eq!(g.container_id.as_deref(), cid, "{input}");
                    assert_eq!(g.runtime.as_deref(), rt, "{input}");
                }
            }
        }
    }

    #[test]
    fn runtime_scheme() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
