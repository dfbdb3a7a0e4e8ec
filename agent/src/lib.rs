//! kubetune node agent (library).
//!
//! * [`probe::Probe`]: loads/attaches the kernel programs and reports the active [`probe::Tier`].
//! * [`scanner::Scanner`]: sweeps every network namespace and returns a [`scanner::Snapshot`]
//!   (`Vec<NetnsObservation>`); [`scanner::NetnsObservation::to_report_spec`] converts one
//!   netns into a `ListenerReportSpec`.
//! * [`diagnose::diagnose`]: the pure per-listener diagnosis.
//! * [`attribution::parse_pod_cgroup`]: pure cgroup-path → pod parsing.
//! * [`netns`]: netns enumeration and `setns` on a dedicated thread.
//! * [`kubelet`]: pure parsing of the kubelet's `allowedUnsafeSysctls` (flags, config, drop-ins);
//!   [`nodeinfo`]: node discovery (kubelet process, kernel, netns default, tuning CNI);
//!   [`nodepublish`]: its publication (the node's labels, its `NodeTuning`).
//! * [`table`]: `scan` output; [`metrics`]: Prometheus; [`cluster`]: ListenerReport writer;
//!   [`events`]: overflow events → immediate, coalesced re-samples and writes.

pub mod attribution;
pub mod cli;
pub mod cluster;
pub mod diagnose;
pub mod events;
pub mod heartbeat;
pub mod kubelet;
pub mod metrics;
pub mod netns;
pub mod nodeinfo;
pub mod nodepublish;
pub mod probe;
pub mod procfs;
pub mod scanner;
pub mod sockdiag;
pub mod table;

pub use diagnose::{diagnose, DiagnosisInput};
pub use probe::{Probe, Tier};
pub use scanner::{EbpfMode, NetnsObservation, Scanner, ScannerConfig, Snapshot};
