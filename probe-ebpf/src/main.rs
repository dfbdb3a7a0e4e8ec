//! kubetune kernel programs.
//!
//! Tiers (the agent detects per hook at load time which ones the kernel accepts):
//!
//! * **tracepoint tier** (works on kernels that only allow tracepoints, e.g. this project's CI):
//!   - `tracepoint/syscalls/sys_enter_listen`: every `listen()` on a bound, unconnected stream
//!     socket, recorded as the call starts, with pid, comm, cgroup id, netns identity, address
//!     family, local address/port, the requested backlog, the backlog the kernel will give it
//!     (`min(backlog, somaxconn)`, the clamp `__sys_listen` applies before the protocol's
//!     `listen`) and the netns's `somaxconn`. There is no `sys_exit_listen` program: an exit
//!     tracepoint roughly doubles what every syscall of every task pays (agent/BENCHMARKS.md), and
//!     what it added — the return value — is what the agent's scan sees anyway: a call that
//!     fails leaves no listener with that address, and the scan drops map entries of listeners
//!     it does not find. A `listen()` that binds its port itself (no `bind()` before) is not
//!     recorded, as its port is chosen only as the call runs. Misses io_uring
//!     `IORING_OP_LISTEN` (no syscall). Attached only when `fexit/inet_listen` (below) is
//!     refused: an attached syscall tracepoint sends every syscall of every task through the
//!     kernel's syscall-tracing path.
//!   - `tp_btf/kfree_skb`: final-ACK-phase accept-queue overflows (drop reason
//!     `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`, numeric value supplied by the agent from BTF),
//!     counted per listener in the per-CPU hash `OVERFLOWS` — no per-packet userspace work —
//!     plus an `EVENT_OVERFLOW` ring-buffer record at most once per listener per
//!     `OVERFLOW_EVENT_GAP_NS` (100 ms; last-sent times in the LRU hash `OVERFLOW_SENT`), so the
//!     agent re-samples that pod at once and a flood costs one map lookup per drop.
//!
//!   There is no close hook: `sock:inet_sock_set_state` fires on every TCP state change of every
//!   socket (~8 per connection) and cost ~2 % of a connection-heavy workload's CPU. The agent's
//!   scan notices closed listeners and removes their map entries ([`LISTENERS`], [`OVERFLOWS`]).
//! * **`fexit/inet_listen`** (BTF trampoline): the same listen record without syscall
//!   tracepoints, also for io_uring `IORING_OP_LISTEN`. Tried first; **refused (EPERM) on the
//!   development/CI machines**, where the syscall tracepoints above are used instead, so it is
//!   untested there.
//! * **fentry tier** (`fentry/tcp_conn_request`): counts SYN-phase overflows (the SYN arrives
//!   while the accept queue is full; the kernel drops it without a drop reason, so no
//!   tracepoint can see it). **Not runnable on the development/CI machines** (BTF trampolines
//!   are refused with EPERM there); it is loaded opportunistically and, when refused, the agent
//!   takes SYN-phase overflows from the listener's `sk_drops` (sock_diag) instead. It is
//!   compiled and verified-by-the-kernel only where a kernel accepts it; it was not exercised
//!   by this project's tests.
//!
//! No CO-RE: every struct field is read with `bpf_probe_read_kernel` at offsets from the
//! read-only global [`OFFSETS`], which the agent fills in from `/sys/kernel/btf/vmlinux`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        helpers::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
            bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        },
        macros::{btf_tracepoint, fentry, fexit, map, tracepoint},
        maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
        programs::{BtfTracePointContext, FEntryContext, FExitContext, TracePointContext},
    };
    use kubetune_probe_common::{
        Event, ListenInfo, ListenerKey, Offsets, OverflowCounts, AF_INET, AF_INET6, EVENT_LISTEN,
        EVENT_OVERFLOW, OVERFLOW_EVENT_GAP_NS, STAT_ACK_OVERFLOW, STAT_COUNT, STAT_EVENTS_LOST,
        STAT_LISTEN_ENTER, STAT_LISTEN_OK, STAT_LISTEN_RESOLVE_FAIL, STAT_OVERFLOW_EVENTS,
        STAT_OVERFLOW_EVENTS_SUPPRESSED, STAT_OVERFLOW_UNATTRIBUTED, STAT_SYN_OVERFLOW,
    };

    /// Offsets from the agent (BTF + tracefs). Read-only: the verifier sees constants.
    #[unsafe(no_mangle)]
    static OFFSETS: Offsets = Offsets {
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        fdtable_max_fds: 0,
        file_private_data: 0,
        socket_sk: 0,
        socket_state: 0,
        socket_type: 0,
        sk_family: 0,
        sk_num: 0,
        sk_rcv_saddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_net: 0,
        sk_max_ack_backlog: 0,
        sk_ack_backlog: 0,
        net_inum: 0,
        net_cookie: 0,
        net_somaxconn: 0,
        tp_enter_listen_fd: 0,
        tp_enter_listen_backlog: 0,
        listen_overflow_reason: 0,
        valid: 0,
    };

    /// Last listen() seen per listener (bounded LRU: a node with more live listeners than
    /// this loses the requested backlog of the least recently listened ones). Entries of closed
    /// listeners are removed by the agent's scan.
    #[map]
    static LISTENERS: LruHashMap<ListenerKey, ListenInfo> = LruHashMap::with_max_entries(16384, 0);

    /// Accept-queue overflows per listener, per CPU (the agent sums over CPUs).
    #[map]
    static OVERFLOWS: PerCpuHashMap<ListenerKey, OverflowCounts> =
        PerCpuHashMap::with_max_entries(16384, 0);

    /// Program health counters (indices `STAT_*`).
    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

    /// When the last `EVENT_OVERFLOW` of each listener was sent (`bpf_ktime_get_ns`).
    #[map]
    static OVERFLOW_SENT: LruHashMap<ListenerKey, u64> = LruHashMap::with_max_entries(16384, 0);

    /// listen and overflow events for the agent (one record per listen(), at most 10 per
    /// second per overflowing listener; never per packet).
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

    #[inline(always)]
    fn offsets() -> Offsets {
        // SAFETY: plain read of a global; volatile so the compiler does not fold the zeros above.
        unsafe { core::ptr::read_volatile(&OFFSETS) }
    }

    #[inline(always)]
    fn bump(idx: u32) {
        if let Some(p) = STATS.get_ptr_mut(idx) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *p += 1 };
        }
    }

    #[inline(always)]
    unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
        unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }
    }

    /// Reads the listener identity of `sk` (a `struct sock *`).
    #[inline(always)]
    unsafe fn listener_key(o: &Offsets, sk: *const u8) -> Result<ListenerKey, i32> {
        unsafe {
            let family: u16 = read(sk, o.sk_family)?;
            let port: u16 = read(sk, o.sk_num)?;
            let net: *const u8 = read(sk, o.sk_net)?;
            let mut key = ListenerKey {
                netns_cookie: read(net, o.net_cookie)?,
                netns_inum: read(net, o.net_inum)?,
                family,
                port,
                addr: [0; 16],
            };
            if family == AF_INET {
                let a: [u8; 4] = read(sk, o.sk_rcv_saddr)?;
                key.addr[0] = a[0];
                key.addr[1] = a[1];
                key.addr[2] = a[2];
                key.addr[3] = a[3];
            } else if family == AF_INET6 {
                key.addr = read(sk, o.sk_v6_rcv_saddr)?;
            }
            Ok(key)
        }
    }

    #[tracepoint(category = "syscalls", name = "sys_enter_listen")]
    pub fn kt_enter_listen(ctx: TracePointContext) -> u32 {
        let o = offsets();
        if o.valid != 1 {
            return 0;
        }
        bump(STAT_LISTEN_ENTER);
        // SAFETY: offsets come from the tracepoint's format file.
        let (fd, backlog) = unsafe {
            (
                ctx.read_at::<i64>(o.tp_enter_listen_fd as usize),
                ctx.read_at::<i64>(o.tp_enter_listen_backlog as usize),
            )
        };
        let (Ok(fd), Ok(backlog)) = (fd, backlog) else {
            bump(STAT_LISTEN_RESOLVE_FAIL);
            return 0;
        };
        // SAFETY: kernel pointers are only dereferenced through bpf_probe_read_kernel.
        match unsafe { resolve_listen(&o, fd, backlog as i32) } {
            Ok(()) => bump(STAT_LISTEN_OK),
            Err(_) => bump(STAT_LISTEN_RESOLVE_FAIL),
        }
        0
    }

    /// `SS_UNCONNECTED` (`enum socket_state`) and `SOCK_STREAM`.
    const SS_UNCONNECTED: u32 = 1;
    const SOCK_STREAM: u16 = 1;

    /// fd → `struct file` → `struct socket` → `struct sock` as `listen(fd, backlog)` starts;
    /// records the listener when the call can succeed on it: an unconnected stream socket with
    /// a bound port (`inet_listen` refuses the others with EINVAL).
    #[inline(always)]
    unsafe fn resolve_listen(o: &Offsets, fd: i64, backlog: i32) -> Result<(), i32> {
        unsafe {
            if fd < 0 || fd > 1 << 20 {
                return Err(-1);
            }
            let task = bpf_get_current_task() as *const u8;
            let files: *const u8 = read(task, o.task_files)?;
            let fdt: *const u8 = read(files, o.files_fdt)?;
            let max_fds: u32 = read(fdt, o.fdtable_max_fds)?;
            if fd as u64 >= max_fds as u64 {
                return Err(-1);
            }
            let fd_array: *const u8 = read(fdt, o.fdtable_fd)?;
            let file: *const u8 = read(fd_array, (fd as u32) * 8)?;
            let socket: *const u8 = read(file, o.file_private_data)?;
            let state: u32 = read(socket, o.socket_state)?;
            let kind: u16 = read(socket, o.socket_type)?;
            if state != SS_UNCONNECTED || kind != SOCK_STREAM {
                return Err(-1);
            }
            let sk: *const u8 = read(socket, o.socket_sk)?;
            let net: *const u8 = read(sk, o.sk_net)?;
            let somaxconn: u32 = read(net, o.net_somaxconn)?;
            // `__sys_listen`'s clamp, compared as unsigned as the kernel does.
            let effective = if backlog as u32 > somaxconn {
                somaxconn
            } else {
                backlog as u32
            };
            record_listen(o, sk, backlog, effective, bpf_get_current_pid_tgid())
        }
    }

    /// Records a `listen()` of `sk` (a `struct sock *`) by the current task that leaves it with
    /// `effective_backlog`. A socket without a port yet is not recorded (its key would be wrong).
    #[inline(always)]
    unsafe fn record_listen(
        o: &Offsets,
        sk: *const u8,
        requested_backlog: i32,
        effective_backlog: u32,
        id: u64,
    ) -> Result<(), i32> {
        unsafe {
            let key = listener_key(o, sk)?;
            if key.port == 0 {
                return Err(-1);
            }
            let net: *const u8 = read(sk, o.sk_net)?;
            let info = ListenInfo {
                key,
                ts_ns: bpf_ktime_get_ns(),
                cgroup_id: bpf_get_current_cgroup_id(),
                pid: (id >> 32) as u32,
                tid: id as u32,
                requested_backlog,
                effective_backlog,
                somaxconn: read(net, o.net_somaxconn)?,
                ret: 0,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
            };
            let _ = LISTENERS.insert(key, info, 0);
            // A new listener starts with fresh overflow counters.
            let _ = OVERFLOWS.remove(key);
            emit(EVENT_LISTEN, info);
            Ok(())
        }
    }

    /// `inet_listen(struct socket *sock, int backlog)` returned: the listen record without
    /// syscall tracepoints (and for io_uring listens too). BTF-trampoline tier: refused (EPERM)
    /// on this project's CI machines, so untested there.
    #[fexit(function = "inet_listen")]
    pub fn kt_inet_listen(ctx: FExitContext) -> u32 {
        let o = offsets();
        if o.valid != 1 {
            return 0;
        }
        bump(STAT_LISTEN_ENTER);
        let socket: *const u8 = ctx.arg(0);
        let backlog: i64 = ctx.arg(1);
        let ret: i64 = ctx.arg(2);
        if ret as i32 != 0 {
            return 0;
        }
        let id = bpf_get_current_pid_tgid();
        // SAFETY: kernel pointers are only dereferenced through bpf_probe_read_kernel.
        let r = unsafe {
            match read::<*const u8>(socket, o.socket_sk) {
                Ok(sk) => match read::<u32>(sk, o.sk_max_ack_backlog) {
                    Ok(effective) => record_listen(&o, sk, backlog as i32, effective, id),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => bump(STAT_LISTEN_OK),
            Err(_) => bump(STAT_LISTEN_RESOLVE_FAIL),
        }
        0
    }

    #[inline(always)]
    fn emit(kind: u32, info: ListenInfo) {
        if EVENTS
            .output::<Event>(
                Event {
                    kind,
                    _pad: 0,
                    info,
                },
                0,
            )
            .is_err()
        {
            bump(STAT_EVENTS_LOST);
        }
    }

    /// Sends an `EVENT_OVERFLOW` for `key` unless one was sent less than
    /// `OVERFLOW_EVENT_GAP_NS` ago. Two CPUs racing may both send one; the agent coalesces.
    #[inline(always)]
    fn notify_overflow(key: ListenerKey) {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: plain u64 value copied out of the map.
        if let Some(last) = unsafe { OVERFLOW_SENT.get(&key) } {
            if now.wrapping_sub(*last) < OVERFLOW_EVENT_GAP_NS {
                bump(STAT_OVERFLOW_EVENTS_SUPPRESSED);
                return;
            }
        }
        let _ = OVERFLOW_SENT.insert(&key, &now, 0);
        bump(STAT_OVERFLOW_EVENTS);
        emit(
            EVENT_OVERFLOW,
            ListenInfo {
                key,
                ts_ns: now,
                ..ListenInfo::default()
            },
        );
    }

    #[inline(always)]
    fn count_overflow(key: ListenerKey, ack: u64, syn: u64) {
        notify_overflow(key);
        if let Some(p) = OVERFLOWS.get_ptr_mut(key) {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe {
                (*p).ack_phase += ack;
                (*p).syn_phase += syn;
            }
        } else if OVERFLOWS
            .insert(
                key,
                OverflowCounts {
                    ack_phase: ack,
                    syn_phase: syn,
                },
                0,
            )
            .is_err()
        {
            bump(STAT_OVERFLOW_UNATTRIBUTED);
        }
    }

    /// `kfree_skb(skb, location, reason, rx_sk)`: final-ACK-phase accept-queue overflow.
    #[btf_tracepoint(function = "kfree_skb")]
    pub fn kt_kfree_skb(ctx: BtfTracePointContext) -> u32 {
        let o = offsets();
        if o.valid != 1 {
            return 0;
        }
        let reason: u64 = ctx.arg(2);
        if reason as u32 != o.listen_overflow_reason || o.listen_overflow_reason == 0 {
            return 0;
        }
        bump(STAT_ACK_OVERFLOW);
        let sk: *const u8 = ctx.arg(3);
        if sk.is_null() {
            bump(STAT_OVERFLOW_UNATTRIBUTED);
            return 0;
        }
        // SAFETY: rx_sk read through bpf_probe_read_kernel only.
        match unsafe { listener_key(&o, sk) } {
            Ok(key) => count_overflow(key, 1, 0),
            Err(_) => bump(STAT_OVERFLOW_UNATTRIBUTED),
        }
        0
    }

    /// `tcp_conn_request(rsk_ops, af_ops, sk, skb)`: a SYN for listener `sk`. When the accept
    /// queue is already full (`sk_ack_backlog > sk_max_ack_backlog`, the kernel's
    /// `sk_acceptq_is_full`) the kernel drops the SYN and counts ListenOverflows.
    ///
    /// fentry tier only: refused (EPERM) on kernels that forbid BTF trampolines, including this
    /// project's CI machines, so it is untested there.
    #[fentry(function = "tcp_conn_request")]
    pub fn kt_tcp_conn_request(ctx: FEntryContext) -> u32 {
        let o = offsets();
        if o.valid != 1 {
            return 0;
        }
        let sk: *const u8 = ctx.arg(2);
        // SAFETY: reads through bpf_probe_read_kernel only.
        unsafe {
            let ack: u32 = match read(sk, o.sk_ack_backlog) {
                Ok(v) => v,
                Err(_) => return 0,
            };
            let max: u32 = match read(sk, o.sk_max_ack_backlog) {
                Ok(v) => v,
                Err(_) => return 0,
            };
            if ack > max {
                bump(STAT_SYN_OVERFLOW);
                if let Ok(key) = listener_key(&o, sk) {
                    count_overflow(key, 0, 1);
                }
            }
        }
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

/// On the host this binary is empty: the programs only exist for `target_arch = "bpf"`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
