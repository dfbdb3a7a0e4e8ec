//! The one table of sysctl knowledge: which sysctls exist per pod, which Kubernetes version
//! treats them as "safe", how their values validate, which PodSecurity level allows them, and
//! what the presets expand to. Every other crate asks this module; nothing is duplicated.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reason;

/// Which kernel namespace a sysctl lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Per network namespace: can be set per pod (securityContext or tuning CNI).
    Network,
    /// Per IPC namespace: can be set per pod (securityContext only).
    Ipc,
    /// Node-wide: can never be set per pod.
    Node,
}

/// Shape of a sysctl's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// One integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// Two integers `"lo hi"` each in `min..=max`; `strict` requires lo < hi, else lo <= hi.
    Range { min: i64, max: i64, strict: bool },
    /// Three integers `"min default max"`, each >= 1, non-decreasing (tcp_rmem/tcp_wmem).
    Triple,
    /// A comma-separated list of ports and port ranges (`"8080,9000-9100"`), or empty.
    PortList,
    /// N integers separated by whitespace, each >= 0 (kernel.sem: 4).
    Ints(usize),
}

/// A Kubernetes minor version, e.g. 1.29.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KubeVersion {
    /// Construct `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }
    /// The newest version this table knows about; used when the cluster version is unknown.
    pub const LATEST: KubeVersion = KubeVersion::new(1, 35);

    /// Parse `1.29`, `v1.29.3`, `1.29+` or `v1.30.0-eks-abc`.
    pub fn parse(s: &str) -> Result<Self, SysctlError> {
        let t = s.trim().trim_start_matches('v');
        let mut it = t.split(['.', '+', '-']);
        let major = it.next().and_then(|m| m.parse().ok());
        let minor = it.next().and_then(|m| m.parse().ok());
        match (major, minor) {
            (Some(major), Some(minor)) => Ok(Self { major, minor }),
            _ => Err(SysctlError::BadVersion(s.to_string())),
        }
    }
}

/// Serialised as `major.minor`; parsed as [`KubeVersion::parse`] reads it.
impl serde::Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KubeVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KubeVersion::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// PodSecurity admission level (`pod-security.kubernetes.io/enforce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodSecurityLevel {
    /// No restrictions on sysctls.
    Privileged,
    /// Only the safe sysctls of the policy version.
    Baseline,
    /// Same sysctl rule as baseline.
    Restricted,
}

impl PodSecurityLevel {
    /// Parse the label value (`privileged`, `baseline`, `restricted`; surrounding whitespace
    /// ignored). Anything else is an error; [`crate::podsec::enforced`] then assumes
    /// `restricted`.
    pub fn parse(s: &str) -> Result<Self, SysctlError> {
        match s.trim() {
            "privileged" => Ok(Self::Privileged),
            "baseline" => Ok(Self::Baseline),
            "restricted" => Ok(Self::Restricted),
            other => Err(SysctlError::BadPodSecurityLevel(other.to_string())),
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysctlInfo {
    /// Canonical dotted name.
    pub name: &'static str,
    /// Namespace the sysctl lives in.
    pub scope: Scope,
    /// First Kubernetes version whose kubelet allows it without `allowedUnsafeSysctls` (and whose
    /// PodSecurity baseline allows it); `None` = never safe.
    pub safe_since: Option<KubeVersion>,
    /// Value shape.
    pub kind: ValueKind,
    /// What it does, for messages.
    pub about: &'static str,
}

impl SysctlInfo {
    /// Safe (allowed by every kubelet and by PodSecurity baseline) in Kubernetes `v`.
    pub fn is_safe_in(&self, v: KubeVersion) -> bool {
        self.safe_since.is_some_and(|s| v >= s)
    }
    /// Whether the tuning CNI plugin can set it (only keys under /proc/sys/net/).
    pub fn tuning_cni_capable(&self) -> bool {
        self.scope == Scope::Network
    }
}

const fn v(minor: u32) -> Option<KubeVersion> {
    Some(KubeVersion::new(1, minor))
}
const INT_MAX: i64 = i32::MAX as i64;
const fn int(min: i64, max: i64) -> ValueKind {
    ValueKind::Int { min, max }
}

use Scope::{Ipc, Network, Node};

/// The table. Namespaced sysctls that kubetune knows how to validate, and well-known node-level
/// sysctls (so the refusal can name the reason instead of "unknown").
pub static TABLE: &[SysctlInfo] = &[
    // --- safe in every supported version
    SysctlInfo {
        name: "kernel.shm_rmid_forced",
        scope: Ipc,
        safe_since: v(0),
        kind: int(0, 1),
        about: "destroy SysV shm segments with no attached process",
    },
    SysctlInfo {
        name: "net.ipv4.ip_local_port_range",
        scope: Network,
        safe_since: v(0),
        kind: ValueKind::Range {
            min: 1,
            max: 65535,
            strict: true,
        },
        about: "ephemeral port range for outgoing connections",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_syncookies",
        scope: Network,
        safe_since: v(0),
        kind: int(0, 2),
        about: "SYN cookies when the SYN queue overflows",
    },
    SysctlInfo {
        name: "net.ipv4.ping_group_range",
        scope: Network,
        safe_since: v(0),
        kind: ValueKind::Range {
            min: 0,
            max: INT_MAX,
            strict: false,
        },
        about: "groups allowed to create ICMP echo sockets",
    },
    SysctlInfo {
        name: "net.ipv4.ip_unprivileged_port_start",
        scope: Network,
        safe_since: v(0),
        kind: int(0, 65536),
        about: "first port an unprivileged process may bind",
    },
    // --- 1.27+
    SysctlInfo {
        name: "net.ipv4.ip_local_reserved_ports",
        scope: Network,
        safe_since: v(27),
        kind: ValueKind::PortList,
        about: "ports excluded from ephemeral allocation",
    },
    // --- 1.29+
    SysctlInfo {
        name: "net.ipv4.tcp_keepalive_time",
        scope: Network,
        safe_since: v(29),
        kind: int(1, 32767),
        about: "idle seconds before the first TCP keepalive probe",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_keepalive_intvl",
        scope: Network,
        safe_since: v(29),
        kind: int(1, 32767),
        about: "seconds between TCP keepalive probes",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_keepalive_probes",
        scope: Network,
        safe_since: v(29),
        kind: int(1, 127),
        about: "unanswered keepalive probes before the connection is dropped",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_fin_timeout",
        scope: Network,
        safe_since: v(29),
        kind: int(1, INT_MAX),
        about: "seconds an orphaned connection stays in FIN-WAIT-2",
    },
    // --- 1.32+
    SysctlInfo {
        name: "net.ipv4.tcp_rmem",
        scope: Network,
        safe_since: v(32),
        kind: ValueKind::Triple,
        about: "TCP receive buffer min/default/max",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_wmem",
        scope: Network,
        safe_since: v(32),
        kind: ValueKind::Triple,
        about: "TCP send buffer min/default/max",
    },
    // --- namespaced, never safe: the kubelet must list them in allowedUnsafeSysctls
    SysctlInfo {
        name: "net.core.somaxconn",
        scope: Network,
        safe_since: None,
        kind: int(1, INT_MAX),
        about: "upper bound on a listen() backlog (accept queue length)",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_max_syn_backlog",
        scope: Network,
        safe_since: None,
        kind: int(1, INT_MAX),
        about: "SYN (request) queue length per listener",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_abort_on_overflow",
        scope: Network,
        safe_since: None,
        kind: int(0, 1),
        about: "reset connections when the accept queue overflows",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_tw_reuse",
        scope: Network,
        safe_since: None,
        kind: int(0, 2),
        about: "reuse TIME-WAIT sockets for new outgoing connections",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_synack_retries",
        scope: Network,
        safe_since: None,
        kind: int(0, 255),
        about: "SYN-ACK retransmissions for a passive open",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_syn_retries",
        scope: Network,
        safe_since: None,
        kind: int(1, 127),
        about: "SYN retransmissions for an active open",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_retries2",
        scope: Network,
        safe_since: None,
        kind: int(0, 255),
        about: "retransmissions before an established connection is dropped",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_slow_start_after_idle",
        scope: Network,
        safe_since: None,
        kind: int(0, 1),
        about: "restart slow start after an idle period",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_fastopen",
        scope: Network,
        safe_since: None,
        kind: int(0, 0x7ff),
        about: "TCP Fast Open client/server flags",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_max_tw_buckets",
        scope: Network,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "TIME-WAIT sockets held by the netns",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_notsent_lowat",
        scope: Network,
        safe_since: None,
        kind: int(1, u32::MAX as i64),
        about: "unsent bytes threshold for POLLOUT",
    },
    SysctlInfo {
        name: "net.ipv4.ip_forward",
        scope: Network,
        safe_since: None,
        kind: int(0, 1),
        about: "forward IPv4 packets between interfaces",
    },
    SysctlInfo {
        name: "net.ipv6.conf.all.disable_ipv6",
        scope: Network,
        safe_since: None,
        kind: int(0, 1),
        about: "disable IPv6 on all interfaces",
    },
    SysctlInfo {
        name: "net.unix.max_dgram_qlen",
        scope: Network,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "unix datagram socket queue length",
    },
    SysctlInfo {
        name: "kernel.shmmax",
        scope: Ipc,
        safe_since: None,
        kind: int(1, i64::MAX),
        about: "largest SysV shm segment",
    },
    SysctlInfo {
        name: "kernel.shmall",
        scope: Ipc,
        safe_since: None,
        kind: int(1, i64::MAX),
        about: "total SysV shm pages",
    },
    SysctlInfo {
        name: "kernel.shmmni",
        scope: Ipc,
        safe_since: None,
        kind: int(1, 1 << 24),
        about: "number of SysV shm segments",
    },
    SysctlInfo {
        name: "kernel.msgmax",
        scope: Ipc,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "largest SysV message",
    },
    SysctlInfo {
        name: "kernel.msgmnb",
        scope: Ipc,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "bytes in one SysV message queue",
    },
    SysctlInfo {
        name: "kernel.msgmni",
        scope: Ipc,
        safe_since: None,
        kind: int(0, 1 << 15),
        about: "number of SysV message queues",
    },
    SysctlInfo {
        name: "kernel.sem",
        scope: Ipc,
        safe_since: None,
        kind: ValueKind::Ints(4),
        about: "SysV semaphore limits SEMMSL SEMMNS SEMOPM SEMMNI",
    },
    SysctlInfo {
        name: "fs.mqueue.msg_max",
        scope: Ipc,
        safe_since: None,
        kind: int(1, 65536),
        about: "messages per POSIX queue",
    },
    SysctlInfo {
        name: "fs.mqueue.msgsize_max",
        scope: Ipc,
        safe_since: None,
        kind: int(128, 16 << 20),
        about: "largest POSIX message",
    },
    SysctlInfo {
        name: "fs.mqueue.queues_max",
        scope: Ipc,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "number of POSIX message queues",
    },
    // --- node-level: never per pod (listed so the refusal names the reason)
    SysctlInfo {
        name: "net.core.rmem_max",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide cap on socket receive buffers",
    },
    SysctlInfo {
        name: "net.core.wmem_max",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide cap on socket send buffers",
    },
    SysctlInfo {
        name: "net.core.rmem_default",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide default receive buffer",
    },
    SysctlInfo {
        name: "net.core.wmem_default",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide default send buffer",
    },
    SysctlInfo {
        name: "net.core.netdev_max_backlog",
        scope: Node,
        safe_since: None,
        kind: int(1, INT_MAX),
        about: "node-wide per-CPU input packet queue",
    },
    SysctlInfo {
        name: "net.core.optmem_max",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide ancillary buffer cap",
    },
    SysctlInfo {
        name: "net.ipv4.tcp_mem",
        scope: Node,
        safe_since: None,
        kind: ValueKind::Triple,
        about: "node-wide TCP memory pressure thresholds",
    },
    SysctlInfo {
        name: "net.ipv4.udp_mem",
        scope: Node,
        safe_since: None,
        kind: ValueKind::Triple,
        about: "node-wide UDP memory thresholds",
    },
    SysctlInfo {
        name: "net.netfilter.nf_conntrack_max",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide conntrack table size",
    },
    SysctlInfo {
        name: "net.nf_conntrack_max",
        scope: Node,
        safe_since: None,
        kind: int(0, INT_MAX),
        about: "node-wide conntrack table size",
    },
];

/// Prefixes of namespaced sysctl families (Kubernetes' rule). Anything else is node-level.
const NAMESPACED_PREFIXES: &[&str] = &["net.", "kernel.shm", "kernel.msg", "fs.mqueue."];
const NAMESPACED_EXACT: &[&str] = &["kernel.sem"];

/// Errors about sysctl names, values and versions. Every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    /// Not a namespaced family: affects the whole node.
    #[error("{name} is a node-level sysctl ({about}); it cannot be set per pod — set it on the nodes instead")]
    NodeLevel { name: String, about: String },
    /// Namespaced family but not in the table.
    #[error("{0} is not a sysctl kubetune knows how to validate (not in its table); use a listed sysctl")]
    Unknown(String),
    /// Value does not parse or is out of range.
    #[error("invalid value {value:?} for {name}: {why}")]
    InvalidValue {
        name: String,
        value: String,
        why: String,
    },
    /// Version string unparsable.
    #[error("invalid Kubernetes version {0:?}: expected MAJOR.MINOR, e.g. 1.30")]
    BadVersion(String),
    /// PodSecurity label value unknown.
    #[error("invalid PodSecurity level {0:?}: expected privileged, baseline or restricted")]
    BadPodSecurityLevel(String),
}

impl SysctlError {
    /// Stable machine-readable reason, used in statuses and annotations.
    pub fn reason(&self) -> &'static str {
        match self {
            SysctlError::NodeLevel { .. } => reason::REFUSED_NODE_LEVEL,
            SysctlError::Unknown(_) => reason::UNKNOWN_SYSCTL,
            SysctlError::InvalidValue { .. } => reason::INVALID_VALUE,
            SysctlError::BadVersion(_) => reason::BAD_VERSION,
            SysctlError::BadPodSecurityLevel(_) => reason::BAD_POD_SECURITY_LEVEL,
        }
    }
}

/// Canonical form of a sysctl name: Kubernetes accepts `/` as the separator too
/// (`net/ipv4/tcp_keepalive_time`); kubetune compares dotted names.
pub fn normalize_name(name: &str) -> String {
    name.trim().replace('/', ".")
}

/// True for names in a family that is namespaced in the kernel (the Kubernetes rule).
pub fn is_namespaced_family(name: &str) -> bool {
    let n = normalize_name(name);
    NAMESPACED_PREFIXES.iter().any(|p| n.starts_with(p)) || NAMESPACED_EXACT.contains(&n.as_str())
}

/// Look a sysctl up in the table (name normalised).
pub fn lookup(name: &str) -> Option<&'static SysctlInfo> {
    let n = normalize_name(name);
    TABLE.iter().find(|i| i.name == n)
}

/// Classify a name for per-pod use: the table row of a namespaced sysctl, or why not.
pub fn classify(name: &str) -> Result<&'static SysctlInfo, SysctlError> {
    let n = normalize_name(name);
    match lookup(&n) {
        Some(info) if info.scope == Scope::Node => Err(SysctlError::NodeLevel {
            name: n,
            about: info.about.to_string(),
        }),
        Some(info) => Ok(info),
        None if !is_namespaced_family(&n) => Err(SysctlError::NodeLevel {
            about: "outside the namespaced families net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*".into(),
            name: n,
        }),
        None => Err(SysctlError::Unknown(n)),
    }
}

/// Is `name` "safe" (allowed by the kubelet without opt-in) in Kubernetes `version`?
pub fn is_safe(name: &str, version: KubeVersion) -> bool {
    lookup(name).is_some_and(|i| i.scope != Scope::Node && i.is_safe_in(version))
}

/// The safe sysctls of Kubernetes `version`, in table order.
pub fn safe_sysctls(version: KubeVersion) -> Vec<&'static str> {
    TABLE
        .iter()
        .filter(|i| i.scope != Scope::Node && i.is_safe_in(version))
        .map(|i| i.name)
        .collect()
}

/// Does PodSecurity at `level` (policy version `version`) admit a pod setting `name`?
/// Baseline and restricted allow exactly the safe set of that version.
pub fn pod_security_allows(name: &str, level: PodSecurityLevel, version: KubeVersion) -> bool {
    match level {
        PodSecurityLevel::Privileged => true,
        PodSecurityLevel::Baseline | PodSecurityLevel::Restricted => is_safe(name, version),
    }
}

fn parse_ints(name: &str, value: &str) -> Result<Vec<i64>, SysctlError> {
    value
        .split_whitespace()
        .map(|t| {
            t.parse::<i64>().map_err(|_| SysctlError::InvalidValue {
                name: name.into(),
                value: value.into(),
                why: format!("{t:?} is not an integer"),
            })
        })
        .collect()
}

/// Validate `value` for the namespaced sysctl `name`; returns the canonical value (whitespace
/// collapsed to single spaces, as the kernel prints multi-value sysctls with tabs).
pub fn validate_value(name: &str, value: &str) -> Result<String, SysctlError> {
    let info = classify(name)?;
    let n = info.name;
    let bad = |why: String| SysctlError::InvalidValue {
        name: n.into(),
        value: value.into(),
        why,
    };
    let in_range = |x: i64, min: i64, max: i64| -> Result<(), SysctlError> {
        if x < min || x > max {
            Err(bad(format!("{x} is outside {min}..={max}")))
        } else {
            Ok(())
        }
    };
    match info.kind {
        ValueKind::Int { min, max } => {
            let v = parse_ints(n, value)?;
            if v.len() != 1 {
                return Err(bad(format!("expected one integer, got {}", v.len())));
            }
            in_range(v[0], min, max)?;
            Ok(v[0].to_string())
        }
        ValueKind::Range { min, max, strict } => {
            let v = parse_ints(n, value)?;
            if v.len() != 2 {
                return Err(bad(format!(
                    "expected two integers \"low high\", got {}",
                    v.len()
                )));
            }
            in_range(v[0], min, max)?;
            in_range(v[1], min, max)?;
            if (strict && v[0] >= v[1]) || (!strict && v[0] > v[1]) {
                let op = if strict { "<" } else { "<=" };
                return Err(bad(format!("low {} must be {op} high {}", v[0], v[1])));
            }
            Ok(format!("{} {}", v[0], v[1]))
        }
        ValueKind::Triple => {
            let v = parse_ints(n, value)?;
            if v.len() != 3 {
                return Err(bad(format!(
                    "expected three integers \"min default max\", got {}",
                    v.len()
                )));
            }
            if v.iter().any(|x| *x < 1) {
                return Err(bad("every field must be >= 1".into()));
            }
            if !(v[0] <= v[1] && v[1] <= v[2]) {
                return Err(bad("expected min <= default <= max".into()));
            }
            Ok(format!("{} {} {}", v[0], v[1], v[2]))
        }
        ValueKind::Ints(count) => {
            let v = parse_ints(n, value)?;
            if v.len() != count {
                return Err(bad(format!("expected {count} integers, got {}", v.len())));
            }
            if v.iter().any(|x| *x < 0) {
                return Err(bad("values must be >= 0".into()));
            }
            Ok(v.iter().map(i64::to_string).collect::<Vec<_>>().join(" "))
        }
        ValueKind::PortList => {
            let t = value.trim();
            if t.is_empty() {
                return Ok(String::new());
            }
            for part in t.split(',') {
                let part = part.trim();
                let (lo, hi) = match part.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (part, part),
                };
                let p = |s: &str| {
                    s.parse::<i64>()
                        .map_err(|_| bad(format!("{s:?} is not a port")))
                };
                let (lo, hi) = (p(lo)?, p(hi)?);
                in_range(lo, 1, 65535)?;
                in_range(hi, 1, 65535)?;
                if lo > hi {
                    return Err(bad(format!("range {lo}-{hi} is reversed")));
                }
            }
            Ok(t.split(',').map(str::trim).collect::<Vec<_>>().join(","))
        }
    }
}

/// Values equal as the kernel sees them: whitespace-insensitive for multi-value sysctls, spaces
/// after commas ignored in port lists, integers compared as numbers (the kernel reads `059` and
/// `+59` as 59 and prints `59`).
pub fn values_equal(a: &str, b: &str) -> bool {
    fn tokens(v: &str) -> impl Iterator<Item = &str> {
        v.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
    }
    let same = |x: &str, y: &str| {
        x == y || matches!((x.parse::<i64>(), y.parse::<i64>()), (Ok(p), Ok(q)) if p == q)
    };
    let (mut a, mut b) = (tokens(a), tokens(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if same(x, y) => {}
            _ => return false,
        }
    }
}

/// Named sets of sysctls.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Preset {
    /// Listen-heavy servers (ingress controllers, proxies): `net.core.somaxconn=8192` and
    /// `net.ipv4.tcp_max_syn_backlog=8192`. Both are unsafe sysctls (kubelet opt-in or tuning CNI).
    /// It only helps if the application's own backlog is larger than the netns's somaxconn.
    HighConnectionServer,
    /// Long-lived connections through kube-proxy IPVS (idle timeout 900 s): keepalive time 600 s,
    /// interval 60 s, 5 probes, so the first probe (and the dead-peer verdict, 600 + 5×60 = 900 s)
    /// comes no later than the IPVS idle expiry. Safe sysctls since Kubernetes 1.29.
    IpvsIdleKeepalive,
    /// Clients making many outgoing connections: `net.ipv4.ip_local_port_range="1024 65535"`
    /// (safe in every version).
    WideEphemeralPorts,
}

/// IPVS TCP idle timeout kube-proxy uses by default, in seconds.
pub const IPVS_TCP_IDLE_TIMEOUT_SECONDS: i64 = 900;

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [
        Preset::HighConnectionServer,
        Preset::IpvsIdleKeepalive,
        Preset::WideEphemeralPorts,
    ];

    /// The concrete sysctls (canonical names and values).
    pub fn expand(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Preset::HighConnectionServer => &[
                ("net.core.somaxconn", "8192"),
                ("net.ipv4.tcp_max_syn_backlog", "8192"),
            ],
            Preset::IpvsIdleKeepalive => &[
                ("net.ipv4.tcp_keepalive_time", "600"),
                ("net.ipv4.tcp_keepalive_intvl", "60"),
                ("net.ipv4.tcp_keepalive_probes", "5"),
            ],
            Preset::WideEphemeralPorts => &[("net.ipv4.ip_local_port_range", "1024 65535")],
        }
    }
}

/// A problem found in a list of desired sysctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlProblem {
    /// The sysctl concerned.
    pub name: String,
    /// What is wrong.
    pub error: SysctlError,
}

/// Validate a policy's desired sysctls (already expanded): every name must be a known namespaced
/// sysctl and every value must validate. Returns all problems, in input order.
pub fn validate_all<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<SysctlProblem> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in items {
        let n = normalize_name(name);
        if !seen.insert(n.clone()) {
            out.push(SysctlProblem {
                error: SysctlError::InvalidValue {
                    name: n.clone(),
                    value: value.into(),
                    why: "listed more than once".into(),
                },
                name: n,
            });
            continue;
        }
        if let Err(error) = validate_value(&n, value) {
            out.push(SysctlProblem { name: n, error });
        }
    }
    out
}
