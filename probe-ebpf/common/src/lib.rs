#![no_std]
//! Types shared by kubetune's kernel programs (`kubetune-probe-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of padding surprises (explicit `_pad`
//! fields) so the same bytes mean the same thing on both sides. With the `user` feature the
//! types implement [`aya::Pod`] so the agent can read them out of BPF maps.
//!
//! There is no CO-RE for Rust eBPF: the kernel programs read kernel structs at byte offsets the
//! agent computes from `/sys/kernel/btf/vmlinux` and hands over in [`Offsets`] (a read-only
//! global, so the verifier sees constants).

/// Event kind in [`Event::kind`]: a successful `listen()`.
pub const EVENT_LISTEN: u32 = 1;
// Kind 2 was a listener close (LISTEN → CLOSE, from `sock:inet_sock_set_state`); that hook
// fired on every TCP state change of every socket, so it is gone: the agent's scan notices
// closed listeners (see the agent's scanner).
/// Event kind in [`Event::kind`]: a listener's accept queue overflowed (only `info.key` and
/// `info.ts_ns` are set). Rate-limited in the kernel to one per listener per
/// [`OVERFLOW_EVENT_GAP_NS`]; the counts themselves are in the `OVERFLOWS` map.
pub const EVENT_OVERFLOW: u32 = 3;
/// Minimum gap between two [`EVENT_OVERFLOW`] events of one listener (100 ms).
pub const OVERFLOW_EVENT_GAP_NS: u64 = 100_000_000;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Index into the `STATS` per-CPU array: `listen()` calls seen (`sys_enter_listen` or
/// `fexit/inet_listen` hits).
pub const STAT_LISTEN_ENTER: u32 = 0;
/// `listen()` calls recorded: on a bound TCP socket (`sys_enter_listen`, before the call runs),
/// or that returned 0 (`fexit/inet_listen`).
pub const STAT_LISTEN_OK: u32 = 1;
/// `listen()` calls not recorded: the fd table walk failed, or (`sys_enter_listen`) the fd is not
/// an unconnected, bound stream socket, so the call will fail or bind a port only as it runs.
pub const STAT_LISTEN_RESOLVE_FAIL: u32 = 2;
/// Final-ACK-phase accept-queue overflows seen in `kfree_skb` (drop reason TCP_LISTEN_OVERFLOW).
pub const STAT_ACK_OVERFLOW: u32 = 3;
/// SYN-phase accept-queue overflows (fentry tier only).
pub const STAT_SYN_OVERFLOW: u32 = 4;
/// Overflows whose listener could not be attributed (no `rx_sk`, map full).
pub const STAT_OVERFLOW_UNATTRIBUTED: u32 = 5;
/// Ring-buffer events dropped because the ring was full.
pub const STAT_EVENTS_LOST: u32 = 6;
/// [`EVENT_OVERFLOW`] events sent.
pub const STAT_OVERFLOW_EVENTS: u32 = 7;
/// Overflows that sent no event (another event for the listener within the gap).
pub const STAT_OVERFLOW_EVENTS_SUPPRESSED: u32 = 8;
/// Number of slots in the `STATS` array.
pub const STAT_COUNT: u32 = 9;

/// Identity of one listening socket: network namespace + local address/port.
///
/// The netns is identified by its cookie (`net->net_cookie`, the value `SO_NETNS_COOKIE`
/// returns; never reused during a boot) and its inode number (what `/proc/<pid>/ns/net`
/// shows; reused quickly after a netns dies, so never used alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    /// `net->net_cookie`.
    pub netns_cookie: u64,
    /// `net->ns.inum`.
    pub netns_inum: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port, host byte order.
    pub port: u16,
    /// Local address as the kernel stores it (network order). IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

/// What the kernel program recorded about one `listen()` (`sys_enter_listen`: as the call
/// starts, on a socket it can succeed on; `fexit/inet_listen`: a call that succeeded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenInfo {
    /// Listener identity.
    pub key: ListenerKey,
    /// `bpf_ktime_get_ns()` when recorded.
    pub ts_ns: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Thread-group id (the "pid" userspace sees).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Backlog argument the process passed to `listen()` (as the syscall saw it: an `int`).
    pub requested_backlog: i32,
    /// The accept-queue limit the call gives the socket: min(requested, somaxconn) as unsigned,
    /// `__sys_listen`'s clamp (`sys_enter_listen`), or `sk->sk_max_ack_backlog` after the call
    /// (`fexit/inet_listen`).
    pub effective_backlog: u32,
    /// `net->core.sysctl_somaxconn` of the socket's netns at the time of the call.
    pub somaxconn: i32,
    /// Always 0 (kept for the layout: failed calls are not recorded by `fexit/inet_listen`; a
    /// `sys_enter_listen` record of a call that then fails names no listener the scan finds).
    pub ret: i32,
    /// `comm` of the calling task (NUL padded).
    pub comm: [u8; 16],
}

/// Ring-buffer record sent to the agent for each listen and each (rate-limited) overflow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EVENT_LISTEN`] or [`EVENT_OVERFLOW`].
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// For an overflow event only `info.key` and `ts_ns` are set.
    pub info: ListenInfo,
}

/// Per-listener overflow counters (value of the per-CPU `OVERFLOWS` map; sum over CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowCounts {
    /// Final-ACK-phase overflows (`kfree_skb`, reason TCP_LISTEN_OVERFLOW).
    pub ack_phase: u64,
    /// SYN-phase overflows (fentry tier only; 0 on tracepoint-only kernels).
    pub syn_phase: u64,
}

/// Byte offsets the kernel programs need, computed by the agent from kernel BTF (struct
/// fields) and tracefs `format` files (tracepoint fields). Passed as the read-only global
/// `OFFSETS`; `valid == 1` once filled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd`.
    pub fdtable_fd: u32,
    /// `fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `socket.state` (`socket_state`; `SS_UNCONNECTED` is 1).
    pub socket_state: u32,
    /// `socket.type` (`short`; `SOCK_STREAM` is 1).
    pub socket_type: u32,
    /// `sock.__sk_common.skc_family`.
    pub sk_family: u32,
    /// `sock.__sk_common.skc_num`.
    pub sk_num: u32,
    /// `sock.__sk_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net` (a `possible_net_t` whose first member is `struct net *`).
    pub sk_net: u32,
    /// `sock.sk_max_ack_backlog`.
    pub sk_max_ack_backlog: u32,
    /// `sock.sk_ack_backlog`.
    pub sk_ack_backlog: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `net.net_cookie`.
    pub net_cookie: u32,
    /// `net.core.sysctl_somaxconn`.
    pub net_somaxconn: u32,
    /// `syscalls:sys_enter_listen` field `fd`.
    pub tp_enter_listen_fd: u32,
    /// `syscalls:sys_enter_listen` field `backlog`.
    pub tp_enter_listen_backlog: u32,
    /// Numeric value of `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` in this kernel's `enum skb_drop_reason`.
    pub listen_overflow_reason: u32,
    /// 1 when the agent filled this in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are #[repr(C)], Copy, contain only integers and byte arrays, and have
    // no implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenInfo {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::OverflowCounts {}
    unsafe impl aya::Pod for super::Offsets {}
}

const _: () = assert!(core::mem::size_of::<ListenerKey>() == 32);
const _: () = assert!(core::mem::size_of::<ListenInfo>() == 32 + 8 + 8 + 4 * 6 + 16);
const _: () = assert!(core::mem::size_of::<Event>() == 8 + core::mem::size_of::<ListenInfo>());
const _: () = assert!(core::mem::size_of::<Offsets>() == 22 * 4);
