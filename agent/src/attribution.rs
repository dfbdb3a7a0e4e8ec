//! netns → pod attribution from `/proc/<pid>/cgroup` (pure parsing), and the off-cluster
//! process fallback.
//!
//! The pod is found by its own components wherever they stand in the path, so the same parser
//! works for absolute paths (the host's cgroup namespace), for paths relative to a private cgroup
//! namespace (`0::/../../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`, what an
//! unprivileged agent container sees on cgroup v2), for cgroup v1 and hybrid files, and for nested
//! setups like kind. Recognised components:
//! * systemd driver: `<prefix>kubepods[-<qos>]-pod<uid_with_underscores>.slice` (Guaranteed pods
//!   have no qos level: `kubepods-pod<uid>.slice`), followed by `<runtime>-<id>.scope` with runtime
//!   `cri-containerd`, `crio`, `docker`; `crio-conmon-<id>.scope` is CRI-O's monitor, not a container.
//! * cgroupfs driver: `pod<uid>` followed by `<id>`; the qos is the parent component (`burstable`,
//!   `besteffort`, or `kubepods` for Guaranteed), `unknown` when a relative path starts below it.

use serde::Serialize;

/// What a process's cgroup path says about its pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodCgroup {
    /// Pod UID (dashes).
    pub pod_uid: String,
    /// QoS class from the path: `guaranteed`, `burstable`, `besteffort`, or `unknown` (a
    /// cgroupfs-driver path relative to a private cgroup namespace that starts below the qos level).
    pub qos: String,
    /// Container id (64 hex), when the process is in a container's cgroup.
    pub container_id: Option<String>,
    /// Runtime prefix of the scope (`cri-containerd`, `crio`, `docker`), when systemd-style.
    pub runtime: Option<String>,
}

/// Parses the content of `/proc/<pid>/cgroup` (v2 `0::` line, v1 `N:controllers:` lines, or
/// both on hybrid hosts). Returns `None` for non-pod processes.
pub fn parse_pod_cgroup(content: &str) -> Option<PodCgroup> {
    // The v2 line first, then the v1 lines, longest path first.
    let mut paths: Vec<(bool, &str)> = content
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let id = it.next()?;
            it.next()?;
            Some((id == "0", it.next()?))
        })
        .collect();
    paths.sort_by_key(|(v2, p)| (!v2, std::cmp::Reverse(p.len())));
    paths
        .into_iter()
        .find_map(|(_, p)| parse_pod_cgroup_path(p))
}

/// Parses one cgroup path, absolute or `..`-relative: the innermost pod component and the
/// container component right below it.
pub fn parse_pod_cgroup_path(path: &str) -> Option<PodCgroup> {
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let (i, pod_uid, qos) = comps.iter().enumerate().rev().find_map(|(i, c)| {
        let parent = i.checked_sub(1).map(|j| comps[j]);
        pod_component(c, parent).map(|(uid, qos)| (i, uid, qos))
    })?;
    let (container_id, runtime) = comps
        .get(i + 1)
        .map(|c| container_component(c))
        .unwrap_or((None, None));
    Some(PodCgroup {
        pod_uid,
        qos: qos.to_string(),
        container_id,
        runtime,
    })
}

/// A pod-level component: (uid with dashes, qos).
fn pod_component(c: &str, parent: Option<&str>) -> Option<(String, &'static str)> {
    if let Some(s) = c.strip_suffix(".slice") {
        // systemd: <prefix>kubepods-<qos>-pod<uid_>.slice or <prefix>kubepods-pod<uid_>.slice
        let (head, uid) = s.rsplit_once("-pod")?;
        let uid = uid.replace('_', "-");
        let qos = if head.ends_with("kubepods") {
            "guaranteed"
        } else {
            match head.rsplit_once('-')? {
                (k, "burstable") if k.ends_with("kubepods") => "burstable",
                (k, "besteffort") if k.ends_with("kubepods") => "besteffort",
                _ => return None,
            }
        };
        return is_uid(&uid).then_some((uid, qos));
    }
    // cgroupfs: [kubepods/][<qos>/]pod<uid>
    let uid = c.strip_prefix("pod").filter(|u| is_uid(u))?;
    let qos = match parent {
        Some("burstable") => "burstable",
        Some("besteffort") => "besteffort",
        Some("kubepods") => "guaranteed",
        _ => "unknown",
    };
    Some((uid.to_string(), qos))
}

/// A container component: (container id, runtime).
fn container_component(c: &str) -> (Option<String>, Option<String>) {
    match c.strip_suffix(".scope") {
        Some(scope) if scope.starts_with("crio-conmon-") => (None, Some("crio".to_string())),
        Some(scope) => match scope.rsplit_once('-') {
            Some((rt, id)) => (
                is_container_id(id).then(|| id.to_string()),
                Some(rt.to_string()),
            ),
            None => (None, None),
        },
        None => (is_container_id(c).then(|| c.to_string()), None),
    }
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

    /// The three QoS classes × three runtime/driver layouts, as absolute paths (host cgroup
    /// namespace) and as what a process in a private cgroup namespace reads (`..`-relative, from
    /// an agent cgroup at several depths), as v2, v1 and hybrid files.
    #[test]
    fn every_qos_driver_and_view() {
        // systemd driver with a runtime prefix, or the cgroupfs driver (None).
        fn comps(runtime: Option<&str>, qos: &str) -> Vec<String> {
            let g = qos == "guaranteed";
            let mut v = match runtime {
                Some(_) => vec!["kubepods.slice".to_string()],
                None => vec!["kubepods".to_string()],
            };
            match (runtime, g) {
                (Some(_), true) => v.push(format!("kubepods-pod{UIDU}.slice")),
                (Some(_), false) => {
                    v.push(format!("kubepods-{qos}.slice"));
                    v.push(format!("kubepods-{qos}-pod{UIDU}.slice"));
                }
                (None, true) => v.push(format!("pod{UID}")),
                (None, false) => {
                    v.push(qos.to_string());
                    v.push(format!("pod{UID}"));
                }
            }
            v.push(match runtime {
                Some(rt) => format!("{rt}-{CID}.scope"),
                None => CID.to_string(),
            });
            v
        }
        let mut checked = 0;
        for runtime in [Some("cri-containerd"), Some("crio"), None] {
            for qos in ["guaranteed", "burstable", "besteffort"] {
                let comps = comps(runtime, qos);
                let pod_at = comps.len() - 2;
                // Absolute, then relative: the agent's own cgroup is 1..=4 levels deep and shares
                // 0..=pod_at leading components with the target.
                let mut views = vec![(format!("/{}", comps.join("/")), qos)];
                for up in 1..=4 {
                    for keep in 0..=pod_at {
                        let rel = format!("/{}{}", "../".repeat(up), comps[keep..].join("/"));
                        // cgroupfs names the qos only in the parent component.
                        let want = if runtime.is_none() && keep == pod_at {
                            "unknown"
                        } else {
                            qos
                        };
                        views.push((rel, want));
                    }
                }
                for (path, want_qos) in views {
                    let v1 = format!("12:pids:{path}\n11:memory:{path}\n1:name=systemd:{path}\n");
                    for content in [
                        format!("0::{path}\n"),
                        v1.clone(),
                        // hybrid: the unified line is systemd's and names no pod
                        format!("{v1}0::/../../system.slice/containerd.service\n"),
                    ] {
                        let g = parse_pod_cgroup(&content)
                            .unwrap_or_else(|| panic!("no pod in {content}"));
                        assert_eq!(g.pod_uid, UID, "{content}");
                        assert_eq!(g.qos, want_qos, "{content}");
                        assert_eq!(g.container_id.as_deref(), Some(CID), "{content}");
                        assert_eq!(g.runtime.as_deref(), runtime, "{content}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300, "{checked}");
    }

    #[test]
    fn not_a_pod_even_when_relative() {
        for content in [
            "0::/\n",
            "0::/../../..\n",
            "0::/../../system.slice/kubelet.service\n",
            "0::/../kubepods-burstable.slice\n",
            "0::/../kubepods-burstable-podnot_a_uid.slice/cri-containerd-1.scope\n",
            "0::/../../burstable/pod1234/abc\n",
            // a pod-like slice outside kubepods is not a pod
            "0::/../../user-pod8f4e2a6c_1b3d_4e5f_9a7b_0c1d2e3f4a5b.slice\n",
        ] {
            assert_eq!(parse_pod_cgroup(content), None, "{content}");
        }
    }

    #[test]
    fn runtime_scheme() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
