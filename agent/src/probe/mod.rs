//! Loading and attaching kubetune's kernel programs, with per-hook tier detection.
//!
//! [`Probe::load`] computes offsets (BTF + tracefs), loads the embedded object
//! ([`PROBE_OBJECT`]), and tries each hook. The resulting [`Tier`]:
//!
//! * [`Tier::EbpfFentry`]: listen hook + `tp_btf/kfree_skb` + `fentry/tcp_conn_request`
//!   (SYN-phase overflows counted in-kernel). **Not available on this project's CI machines**
//!   (BTF trampolines are refused with EPERM there), so this tier is untested.
//! * [`Tier::EbpfTracepoint`]: listen hook (requested backlog etc.) + `tp_btf/kfree_skb`
//!   (final-ACK-phase overflows). SYN-phase overflows come from the listener's `sk_drops`
//!   (sock_diag). This is the tier tested in CI.
//!
//! The listen hook is `fexit/inet_listen` where the kernel allows BTF trampolines (untested
//! here, refused with EPERM), else the `syscalls:sys_enter_listen` tracepoint (no exit
//! tracepoint: see the kernel programs' docs), then the only syscall tracepoint attached. There is no close hook (see the kernel programs'
//! docs): the scanner removes the map entries of listeners it no longer finds
//! ([`Probe::forget`]).
//! * [`Tier::SockDiag`]: no eBPF at all (the agent's fallback mode; never returned by
//!   `Probe::load`, which errors instead).

pub mod memlock;
pub mod offsets;

use std::collections::HashMap;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use kubetune_probe_common::{
    Event, ListenInfo, ListenerKey, OverflowCounts, STAT_ACK_OVERFLOW, STAT_COUNT,
    STAT_EVENTS_LOST, STAT_LISTEN_ENTER, STAT_LISTEN_OK, STAT_LISTEN_RESOLVE_FAIL,
    STAT_OVERFLOW_EVENTS, STAT_OVERFLOW_EVENTS_SUPPRESSED, STAT_OVERFLOW_UNATTRIBUTED,
    STAT_SYN_OVERFLOW,
};
use serde::Serialize;
use tracing::{debug, info, warn};

/// The eBPF object built by `build.rs` (empty when the eBPF build was impossible; see
/// [`PROBE_BUILD_ERROR`]).
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kubetune-probe"));

/// Why the eBPF object could not be built (empty string when it was).
pub const PROBE_BUILD_ERROR: &str = env!("KUBETUNE_PROBE_BUILD_ERROR");

/// Which observation tier is producing the numbers. `as_str` values are what
/// `ListenerReportSpec.source` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// eBPF with fentry (SYN- and ACK-phase overflows counted in-kernel).
    EbpfFentry,
    /// eBPF with tracepoints only (ACK-phase in-kernel, SYN-phase from `sk_drops`).
    EbpfTracepoint,
    /// No eBPF: sock_diag + procfs.
    SockDiag,
}

impl Tier {
    /// Stable name: `ebpf-fentry`, `ebpf-tracepoint` or `sock-diag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::EbpfFentry => "ebpf-fentry",
            Tier::EbpfTracepoint => "ebpf-tracepoint",
            Tier::SockDiag => "sock-diag",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors loading the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The agent was built without the eBPF object.
    #[error("eBPF object not built: {0}")]
    NotBuilt(String),
    /// Missing privileges.
    #[error("eBPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root")]
    NotPermitted,
    /// tracefs is not mounted.
    #[error("tracefs not found at /sys/kernel/tracing or /sys/kernel/debug/tracing (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
    /// Offsets could not be computed.
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    /// aya failed to load the object.
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A required hook could not be attached.
    #[error("required hook {hook}: {msg}")]
    Hook {
        /// Hook name.
        hook: &'static str,
        /// Error text.
        msg: String,
    },
    /// Reading a map failed.
    #[error("map {map}: {msg}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Error text.
        msg: String,
    },
}

/// Whether one hook attached.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    /// e.g. `tracepoint/syscalls/sys_enter_listen`.
    pub hook: &'static str,
    /// Attached and running.
    pub attached: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

/// Program health counters (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProbeStats {
    /// `listen()` entries seen.
    pub listen_calls: u64,
    /// Successful `listen()`s recorded.
    pub listens_recorded: u64,
    /// Successful `listen()`s whose socket could not be resolved.
    pub listen_resolve_failures: u64,
    /// Final-ACK-phase overflows.
    pub ack_phase_overflows: u64,
    /// SYN-phase overflows (fentry tier).
    pub syn_phase_overflows: u64,
    /// Overflows not attributed to a listener.
    pub unattributed_overflows: u64,
    /// Ring-buffer events lost.
    pub events_lost: u64,
    /// Overflow events sent (at most one per listener per 100 ms).
    pub overflow_events: u64,
    /// Overflows that sent no event (rate limit).
    pub overflow_events_suppressed: u64,
}

/// The loaded and attached kernel programs. Dropping it detaches and unloads everything.
pub struct Probe {
    ebpf: Ebpf,
    tier: Tier,
    hooks: Vec<HookStatus>,
    events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("tier", &self.tier)
            .field("hooks", &self.hooks)
            .finish()
    }
}

const HOOK_ENTER: &str = "tracepoint/syscalls/sys_enter_listen";
const HOOK_LISTEN_FEXIT: &str = "fexit/inet_listen";
const HOOK_KFREE: &str = "tp_btf/kfree_skb";
const HOOK_FENTRY: &str = "fentry/tcp_conn_request";

/// Hook selection for [`Probe::load_selected`]: every hook but the `listen()` syscall
/// tracepoint. While any syscall tracepoint is attached, the kernel sends every system call of
/// every process on the node through its syscall-tracing path (tens of ns each,
/// agent/BENCHMARKS.md);
/// without them, on a kernel where `fexit/inet_listen` does not load, no `listen()` is seen:
/// requested backlogs are unknown and the scanner samples every netns in full every scan.
pub fn without_syscall_tracepoints(hook: &str) -> bool {
    hook != HOOK_ENTER
}

/// Every hook [`Probe::load_selected`] knows, in attach order.
pub const HOOKS: [&str; 4] = [HOOK_LISTEN_FEXIT, HOOK_ENTER, HOOK_KFREE, HOOK_FENTRY];

impl Probe {
    /// Loads the programs and attaches every hook the kernel allows.
    ///
    /// Required: a listen hook (`fexit/inet_listen`, else the `sys_enter_listen` tracepoint)
    /// and `tp_btf/kfree_skb` (without them the eBPF tier adds nothing over sock_diag, so an
    /// error is returned and the caller falls back). Optional: `fentry/tcp_conn_request`
    /// (SYN-phase overflows; its success selects [`Tier::EbpfFentry`]).
    pub fn load() -> Result<Probe, ProbeError> {
        Self::load_selected(&|_| true)
    }

    /// [`Probe::load`] attaching only the hooks (names in [`HOOKS`]) that `selected` accepts —
    /// for measuring each hook's cost. Only selected required hooks are required.
    pub fn load_selected(selected: &dyn Fn(&str) -> bool) -> Result<Probe, ProbeError> {
        if PROBE_OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt(PROBE_BUILD_ERROR.to_string()));
        }
        if !has_bpf_caps() {
            return Err(ProbeError::NotPermitted);
        }
        memlock::raise_and_log();
        let tracefs = offsets::tracefs_root().ok_or(ProbeError::NoTracefs)?;
        let kbtf = offsets::KernelBtf::load()?;
        let offs = offsets::compute(&kbtf, &tracefs)?;
        debug!(?offs, "kernel offsets");
        if kbtf.btf_tracepoint_args("kfree_skb")? < 4 {
            return Err(ProbeError::Hook {
                hook: HOOK_KFREE,
                msg: "this kernel's kfree_skb tracepoint has no rx_sk argument (needs >= 6.11)"
                    .into(),
            });
        }
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Hook {
            hook: HOOK_KFREE,
            msg: format!("aya BTF: {e}"),
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", &offs, true)
            .load(PROBE_OBJECT)?;

        let hooks = attach_hooks(&mut ebpf, &btf, selected);
        let fentry_ok = hooks.iter().any(|h| h.hook == HOOK_FENTRY && h.attached);
        let fexit_listen = hooks
            .iter()
            .any(|h| h.hook == HOOK_LISTEN_FEXIT && h.attached);

        for h in &hooks {
            match &h.error {
                None => info!(hook = h.hook, "attached"),
                Some(e) => warn!(hook = h.hook, error = %e, "not attached"),
            }
        }
        let required: &[&'static str] = if fexit_listen {
            &[HOOK_KFREE]
        } else {
            &[HOOK_ENTER, HOOK_KFREE]
        };
        for &required in required {
            if !selected(required) {
                continue;
            }
            if let Some(h) = hooks.iter().find(|h| h.hook == required && !h.attached) {
                return Err(ProbeError::Hook {
                    hook: required,
                    msg: h.error.clone().unwrap_or_default(),
                });
            }
        }
        let tier = if fentry_ok {
            Tier::EbpfFentry
        } else {
            Tier::EbpfTracepoint
        };
        let events = ebpf.take_map("EVENTS").and_then(|m| {
            RingBuf::try_from(m)
                .map_err(|e| warn!(error = %e, "EVENTS ring buffer"))
                .ok()
        });
        info!(tier = tier.as_str(), reason = %tier_reason(tier, &hooks, None), "probe loaded");
        if !fexit_listen && !selected(HOOK_ENTER) {
            info!("no listen() hook (syscall tracepoints not selected): requested backlogs unknown, every scan samples every netns in full");
        }
        drop(btf);
        drop(kbtf);
        release_heap();
        Ok(Probe {
            ebpf,
            tier,
            hooks,
            events,
        })
    }

    /// Active tier ([`Tier::EbpfFentry`] or [`Tier::EbpfTracepoint`]).
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// True when a `listen()` hook is attached (`fexit/inet_listen`, or the `sys_enter_listen`
    /// tracepoint): the probe records each `listen()` (with the backlog the application asked
    /// for) and announces it as an event.
    pub fn sees_listens(&self) -> bool {
        let on = |hook: &str| self.hooks.iter().any(|h| h.hook == hook && h.attached);
        on(HOOK_LISTEN_FEXIT) || on(HOOK_ENTER)
    }

    /// Per-hook attach results.
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf.map(name).ok_or(ProbeError::Map {
            map: name,
            msg: "missing".into(),
        })
    }

    /// Last `listen()` recorded per listener (since the probe was loaded).
    pub fn listeners(&self) -> Result<HashMap<ListenerKey, ListenInfo>, ProbeError> {
        let m: BpfHashMap<_, ListenerKey, ListenInfo> =
            BpfHashMap::try_from(self.map("LISTENERS")?).map_err(|e| map_err("LISTENERS", e))?;
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// Overflow counters per listener, summed over CPUs (since the probe was loaded, reset when
    /// a listener with the same identity calls `listen()`, dropped when it closes).
    pub fn overflows(&self) -> Result<HashMap<ListenerKey, OverflowCounts>, ProbeError> {
        let m: PerCpuHashMap<_, ListenerKey, OverflowCounts> =
            PerCpuHashMap::try_from(self.map("OVERFLOWS")?).map_err(|e| map_err("OVERFLOWS", e))?;
        let mut out = HashMap::new();
        for (k, per_cpu) in m.iter().filter_map(Result::ok) {
            let mut sum = OverflowCounts::default();
            for v in per_cpu.iter() {
                sum.ack_phase += v.ack_phase;
                sum.syn_phase += v.syn_phase;
            }
            out.insert(k, sum);
        }
        Ok(out)
    }

    /// Removes the records (`LISTENERS`, `OVERFLOWS`, `OVERFLOW_SENT`) of listeners that have
    /// closed, as the scanner found them (there is no close hook). Returns how many keys went.
    pub fn forget(&mut self, keys: &[ListenerKey]) -> usize {
        if keys.is_empty() {
            return 0;
        }
        let mut gone = 0;
        if let Some(m) = self.ebpf.map_mut("LISTENERS") {
            if let Ok(mut m) = BpfHashMap::<_, ListenerKey, ListenInfo>::try_from(m) {
                gone = keys.iter().filter(|k| m.remove(k).is_ok()).count();
            }
        }
        if let Some(m) = self.ebpf.map_mut("OVERFLOWS") {
            if let Ok(mut m) = PerCpuHashMap::<_, ListenerKey, OverflowCounts>::try_from(m) {
                keys.iter().for_each(|k| drop(m.remove(k)));
            }
        }
        if let Some(m) = self.ebpf.map_mut("OVERFLOW_SENT") {
            if let Ok(mut m) = BpfHashMap::<_, ListenerKey, u64>::try_from(m) {
                keys.iter().for_each(|k| drop(m.remove(k)));
            }
        }
        gone
    }

    /// Program health counters.
    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map("STATS")?).map_err(|e| map_err("STATS", e))?;
        let mut v = [0u64; STAT_COUNT as usize];
        for (i, slot) in v.iter_mut().enumerate() {
            if let Ok(per_cpu) = m.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        Ok(ProbeStats {
            listen_calls: v[STAT_LISTEN_ENTER as usize],
            listens_recorded: v[STAT_LISTEN_OK as usize],
            listen_resolve_failures: v[STAT_LISTEN_RESOLVE_FAIL as usize],
            ack_phase_overflows: v[STAT_ACK_OVERFLOW as usize],
            syn_phase_overflows: v[STAT_SYN_OVERFLOW as usize],
            unattributed_overflows: v[STAT_OVERFLOW_UNATTRIBUTED as usize],
            events_lost: v[STAT_EVENTS_LOST as usize],
            overflow_events: v[STAT_OVERFLOW_EVENTS as usize],
            overflow_events_suppressed: v[STAT_OVERFLOW_EVENTS_SUPPRESSED as usize],
        })
    }

    /// Run time and run count of each attached program, as the kernel accounts them while
    /// BPF statistics are enabled (`BPF_ENABLE_STATS`, e.g. [`aya::sys::enable_stats`];
    /// zeros otherwise). Used to measure the probes' own cost.
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Hands the event ring buffer (listen and overflow events) to the caller, which
    /// then waits on it (it is pollable); [`Probe::drain_events`] returns nothing afterwards.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Takes every pending listen/overflow event out of the ring buffer.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(rb) = self.events.as_mut() {
            while let Some(item) = rb.next() {
                out.extend(decode_event(&item));
            }
        }
        out
    }
}

/// One ring-buffer record as the kernel wrote it (`None` when too short).
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= std::mem::size_of::<Event>()).then(|| {
        // SAFETY: the kernel wrote an `Event` (repr(C), Pod) of this size; unaligned read.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) }
    })
}

/// Why the agent runs `tier` (pure; logged at startup): for the eBPF tiers from the hooks'
/// statuses, for the fallback from `fallback` (the load error or `--no-ebpf`).
pub fn tier_reason(tier: Tier, hooks: &[HookStatus], fallback: Option<&str>) -> String {
    match tier {
        Tier::EbpfFentry => {
            format!("{HOOK_FENTRY} attached: SYN- and ACK-phase overflows are counted in-kernel")
        }
        Tier::EbpfTracepoint => {
            let why = hooks
                .iter()
                .find(|h| h.hook == HOOK_FENTRY)
                .and_then(|h| h.error.as_deref())
                .unwrap_or("not attempted");
            format!(
                "{HOOK_FENTRY} not attached ({why}): ACK-phase overflows in-kernel, SYN-phase ones from the listener's sk_drops"
            )
        }
        Tier::SockDiag => format!(
            "no eBPF ({}): queues, backlogs and drops from sock_diag and procfs",
            fallback.unwrap_or("reason unknown")
        ),
    }
}

/// True when the effective capabilities allow loading tracing programs: CAP_BPF (39) and
/// CAP_PERFMON (38), or CAP_SYS_ADMIN (21).
pub fn has_bpf_caps() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    (has(39) && has(38)) || has(21)
}

/// Returns freed heap (BTF parsing peaks at tens of MiB) to the OS.
pub fn release_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn map_err(map: &'static str, e: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        map,
        msg: e.to_string(),
    }
}

/// Loads and attaches every program of the object; one status per hook (failures are recorded,
/// not returned: which hooks are required is the caller's rule).
fn attach_hooks(ebpf: &mut Ebpf, btf: &Btf, selected: &dyn Fn(&str) -> bool) -> Vec<HookStatus> {
    let status = |hook: &'static str, r: Result<(), String>| HookStatus {
        hook,
        attached: r.is_ok(),
        error: r.err(),
    };
    let mut hooks = Vec::new();
    let not_selected = || Err("not selected".to_string());
    let r = if selected(HOOK_LISTEN_FEXIT) {
        program::<FExit>(ebpf, "kt_inet_listen").and_then(|p| {
            p.load("inet_listen", btf)
                .map_err(|e| format!("load: {e:#}"))?;
            p.attach().map_err(|e| format!("attach: {e}"))?;
            Ok(())
        })
    } else {
        not_selected()
    };
    let fexit_listen = r.is_ok();
    hooks.push(status(HOOK_LISTEN_FEXIT, r));
    let r = if fexit_listen {
        Err(format!("not needed: {HOOK_LISTEN_FEXIT} attached"))
    } else if !selected(HOOK_ENTER) {
        not_selected()
    } else {
        program::<TracePoint>(ebpf, "kt_enter_listen").and_then(|p| {
            p.load().map_err(|e| format!("load: {e}"))?;
            p.attach("syscalls", "sys_enter_listen")
                .map_err(|e| format!("attach: {e}"))?;
            Ok(())
        })
    };
    hooks.push(status(HOOK_ENTER, r));
    let r = if selected(HOOK_KFREE) {
        program::<BtfTracePoint>(ebpf, "kt_kfree_skb").and_then(|p| {
            p.load("kfree_skb", btf).map_err(|e| format!("load: {e}"))?;
            p.attach().map_err(|e| format!("attach: {e}"))?;
            Ok(())
        })
    } else {
        not_selected()
    };
    hooks.push(status(HOOK_KFREE, r));
    let r = if selected(HOOK_FENTRY) {
        program::<FEntry>(ebpf, "kt_tcp_conn_request").and_then(|p| {
            p.load("tcp_conn_request", btf)
                .map_err(|e| format!("load: {e:#}"))?;
            p.attach().map_err(|e| format!("attach: {e}"))?;
            Ok(())
        })
    } else {
        not_selected()
    };
    hooks.push(status(HOOK_FENTRY, r));
    hooks
}

/// The program `name` of the object as program type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| "program missing from object".to_string())?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_reasons_name_the_cause() {
        let fentry_refused = [HookStatus {
            hook: HOOK_FENTRY,
            attached: false,
            error: Some("load: EPERM".into()),
        }];
        let r = tier_reason(Tier::EbpfTracepoint, &fentry_refused, None);
        assert!(
            r.contains("fentry/tcp_conn_request not attached (load: EPERM)"),
            "{r}"
        );
        let r = tier_reason(Tier::SockDiag, &[], Some("no CAP_BPF"));
        assert!(r.starts_with("no eBPF (no CAP_BPF)"), "{r}");
        let r = tier_reason(Tier::EbpfFentry, &[], None);
        assert!(r.contains("attached"), "{r}");
    }
}
