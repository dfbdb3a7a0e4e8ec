//! A harness that plays kubelet on this machine with real network namespaces.
//!
//! `run_pod` does, for a typed `Pod`, what a kubelet + runtime + CNI do at sandbox creation:
//! create the pod network namespace (a named `ip netns`), apply the node's defaults, refuse the
//! pod with `SysctlForbidden` when it asks for an unsafe sysctl the node does not allow (as the
//! kubelet does), write `spec.securityContext.sysctls`, run the tuning CNI plugin's part for a
//! Multus network selection carrying `cni-args.sysctl`, and start the "containers" — real
//! processes (`kt-listener`) inside the netns. Dropping the `RunningPod` kills the processes and
//! deletes the netns. Needs root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::MULTUS_NETWORKS_ANNOTATION;
use kubetune_crds::sysctl::{self, KubeVersion};
use kubetune_test_support::ground_truth;

/// Errors the fake kubelet reports, named like the real ones where there is one.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The kubelet refuses a pod asking for an unsafe sysctl not in `allowedUnsafeSysctls`.
    #[error("SysctlForbidden: pod {pod} asks for {sysctl}, which is unsafe and not in the node's allowedUnsafeSysctls")]
    SysctlForbidden {
        /// Pod name.
        pod: String,
        /// The sysctl.
        sysctl: String,
    },
    /// The tuning CNI plugin failed (it only writes /proc/sys/net).
    #[error("tuning CNI plugin: {0}")]
    Tuning(String),
    /// A command failed.
    #[error("{cmd}: {msg}")]
    Command {
        /// Command line.
        cmd: String,
        /// stderr / error.
        msg: String,
    },
    /// The pod spec is unusable.
    #[error("pod spec: {0}")]
    Spec(String),
}

/// The node being emulated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Kubelet version (decides the safe set).
    pub kubernetes_version: KubeVersion,
    /// Sysctls every new pod netns starts with on this node (e.g. `net.core.somaxconn=128` for a
    /// node image that lowers it, or a kernel older than 5.4).
    pub default_sysctls: BTreeMap<String, String>,
    /// The kubelet's `allowedUnsafeSysctls`.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Multus network name whose `cni-args.sysctl` the tuning plugin applies (None = no Multus).
    pub tuning_network: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            kubernetes_version: KubeVersion::LATEST,
            default_sysctls: BTreeMap::new(),
            allowed_unsafe_sysctls: Vec::new(),
            tuning_network: None,
        }
    }
}

/// One "container": arguments to `kt-listener`.
#[derive(Clone, Debug)]
pub struct Container {
    /// Container name.
    pub name: String,
    /// Arguments for kt-listener, e.g. `["listen", "--addr", "127.0.0.1:8080", "--backlog", "511"]`.
    pub args: Vec<String>,
}

/// The fake kubelet.
#[derive(Clone, Debug)]
pub struct FakeKubelet {
    /// The node it plays.
    pub node: NodeConfig,
    /// Prefix of the netns names it creates (unique per test run).
    pub prefix: String,
    /// Path of the `kt-listener` binary.
    pub listener_exe: PathBuf,
}

/// A running pod: its netns and container processes.
#[derive(Debug)]
pub struct RunningPod {
    /// The pod as admitted (uid and creationTimestamp filled in).
    pub pod: Pod,
    /// Name of the network namespace (`ip netns` name).
    pub netns: String,
    procs: Vec<(String, Child)>,
}

fn run(cmd: &mut Command) -> Result<String, KubeletError> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KubeletError::Command {
            cmd: line.clone(),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            cmd: line,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Write a sysctl inside a named netns.
pub fn set_sysctl(netns: &str, name: &str, value: &str) -> Result<(), KubeletError> {
    let key = sysctl::normalize_name(name);
    run(Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-q", "-w"])
        .arg(format!("{key}={value}")))?;
    Ok(())
}

/// Read a sysctl inside a named netns (whitespace collapsed).
pub fn get_sysctl(netns: &str, name: &str) -> Result<String, KubeletError> {
    let key = sysctl::normalize_name(name);
    let out = run(Command::new("ip").args(["netns", "exec", netns, "sysctl", "-n", &key]))?;
    Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl FakeKubelet {
    /// A kubelet for `node` whose netns names start with `prefix`.
    pub fn new(node: NodeConfig, prefix: impl Into<String>, listener_exe: PathBuf) -> Self {
        Self {
            node,
            prefix: prefix.into(),
            listener_exe,
        }
    }

    fn kubelet_allows(&self, name: &str) -> bool {
        sysctl::is_safe(name, self.node.kubernetes_version)
            || self
                .node
                .allowed_unsafe_sysctls
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => p == name,
                })
    }

    /// Admit and start a pod the way kubelet, runtime and CNI would.
    pub fn run_pod(
        &self,
        mut pod: Pod,
        containers: &[Container],
    ) -> Result<RunningPod, KubeletError> {
        let name = pod
            .metadata
            .name
            .clone()
            .ok_or_else(|| KubeletError::Spec("pod has no name".into()))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let sysctls: Vec<(String, String)> = spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.sysctls.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|s| (sysctl::normalize_name(&s.name), s.value))
            .collect();
        // Kubelet admission: unsafe sysctls must be allowed on this node.
        for (n, _) in &sysctls {
            if !self.kubelet_allows(n) {
                return Err(KubeletError::SysctlForbidden {
                    pod: name,
                    sysctl: n.clone(),
                });
            }
        }
        let tuning = self.tuning_sysctls(&pod)?;
        let netns = format!("{}-{}", self.prefix, name);
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &netns]))?;
        let mut running = RunningPod {
            pod: Pod::default(),
            netns: netns.clone(),
            procs: Vec::new(),
        };
        run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
        // Sandbox creation: node defaults, then the pod's sysctls, then CNI (tuning).
        for (n, v) in &self.node.default_sysctls {
            set_sysctl(&netns, n, v)?;
        }
        for (n, v) in &sysctls {
            set_sysctl(&netns, n, v)?;
        }
        for (n, v) in &tuning {
            set_sysctl(&netns, n, v)?;
        }
        pod.metadata.uid.get_or_insert_with(|| {
            format!(
                "{:08x}-0000-4000-8000-{:012x}",
                std::process::id(),
                rand_suffix()
            )
        });
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        pod.metadata
            .creation_timestamp
            .get_or_insert_with(|| now.clone());
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        status.start_time = Some(now);
        for c in containers {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(&self.listener_exe)
                .args(&c.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| KubeletError::Command {
                    cmd: format!("start container {}", c.name),
                    msg: e.to_string(),
                })?;
            // Wait until the application has called listen().
            use std::io::BufRead;
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped");
            std::io::BufReader::new(stdout).read_line(&mut line).ok();
            if !line.starts_with("listening") {
                let _ = child.kill();
                return Err(KubeletError::Command {
                    cmd: format!("container {}", c.name),
                    msg: format!("did not start listening: {line:?}"),
                });
            }
            running.procs.push((c.name.clone(), child));
        }
        running.pod = pod;
        Ok(running)
    }

    /// The tuning plugin's part: `cni-args.sysctl` of our network in the Multus selection.
    fn tuning_sysctls(&self, pod: &Pod) -> Result<Vec<(String, String)>, KubeletError> {
        let Some(net) = &self.node.tuning_network else {
            return Ok(Vec::new());
        };
        let Some(raw) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MULTUS_NETWORKS_ANNOTATION))
        else {
            return Ok(Vec::new());
        };
        let Ok(serde_json::Value::Array(list)) = serde_json::from_str::<serde_json::Value>(raw)
        else {
            return Ok(Vec::new()); // comma-separated form carries no cni-args
        };
        let mut out = Vec::new();
        for entry in list.iter().filter(|e| e["name"] == net.as_str()) {
            if let Some(map) = entry["cni-args"]["sysctl"].as_object() {
                for (k, v) in map {
                    let k = sysctl::normalize_name(k);
                    if !k.starts_with("net.") {
                        return Err(KubeletError::Tuning(format!(
                            "{k} is not under /proc/sys/net"
                        )));
                    }
                    out.push((k, v.as_str().unwrap_or_default().to_string()));
                }
            }
        }
        Ok(out)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() & 0xffff_ffff_ffff
}

/// Result of a connection burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections established after the wait.
    pub connected: u64,
}

/// A listening socket as `ss -lnt` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsListener {
    /// Local port.
    pub port: u16,
    /// Recv-Q: connections in the accept queue.
    pub recv_q: u64,
    /// Send-Q: the effective backlog.
    pub send_q: u64,
}

impl RunningPod {
    /// Pod name.
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    /// Run `cmd args...` inside the pod netns.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, KubeletError> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns, cmd])
            .args(args))
    }

    /// Open `count` connections at once to `addr` from inside the netns (bounded to 5000).
    pub fn burst(
        &self,
        listener_exe: &std::path::Path,
        addr: &str,
        count: u32,
    ) -> Result<Burst, KubeletError> {
        let out = self.exec(
            listener_exe.to_str().unwrap_or_default(),
            &[
                "burst",
                "--addr",
                addr,
                "--count",
                &count.to_string(),
                "--wait-ms",
                "400",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| KubeletError::Spec(format!("burst output {out:?}: {e}")))?;
        Ok(Burst {
            attempted: v["attempted"].as_u64().unwrap_or(0),
            connected: v["connected"].as_u64().unwrap_or(0),
        })
    }

    /// Ground truth: `ss -lnt` inside the netns.
    pub fn ss_listeners(&self) -> Result<Vec<SsListener>, KubeletError> {
        let out = self.exec("ss", &["-Hlnt"])?;
        Ok(parse_ss(&out))
    }

    /// Ground truth: `nstat -az TcpExtListenOverflows` inside the netns.
    pub fn listen_overflows(&self) -> Result<u64, KubeletError> {
        let out = self.exec("nstat", &["-az", "TcpExtListenOverflows"])?;
        Ok(parse_nstat(&out, "TcpExtListenOverflows"))
    }

    /// Read a sysctl inside the pod netns.
    pub fn sysctl(&self, name: &str) -> Result<String, KubeletError> {
        get_sysctl(&self.netns, name)
    }

    /// Stop the containers and delete the netns (also done on drop).
    pub fn stop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs.clear();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parse `ss -Hlnt` output.
pub fn parse_ss(out: &str) -> Vec<SsListener> {
    ground_truth::parse_ss(out)
        .into_iter()
        .filter_map(|r| {
            Some(SsListener {
                port: r.port()?,
                recv_q: r.recv_q,
                send_q: r.send_q,
            })
        })
        .collect()
}

pub use ground_truth::{is_root, parse_nstat};

/// Delete every `ip netns` whose name starts with `prefix` (cleanup after Ctrl-C or a failure).
pub fn delete_netns_with_prefix(prefix: &str) {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                let _ = Command::new("ip")
                    .args(["netns", "del", &name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_and_nstat() {
        let ss = "LISTEN 129    128        127.0.0.1:8080      0.0.0.0:*\nLISTEN 0 4096 [::]:22 [::]:*\n";
        assert_eq!(
            parse_ss(ss),
            vec![
                SsListener {
                    port: 8080,
                    recv_q: 129,
                    send_q: 128
                },
                SsListener {
                    port: 22,
                    recv_q: 0,
                    send_q: 4096
                },
            ]
        );
        let n = "#kernel\nTcpExtListenOverflows           171                0.0\n";
        assert_eq!(parse_nstat(n, "TcpExtListenOverflows"), 171);
        assert_eq!(parse_nstat(n, "TcpExtListenDrops"), 0);
    }
}
