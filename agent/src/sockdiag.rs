//! Netlink `sock_diag` (inet_diag) dump of TCP listening sockets in the calling thread's
//! network namespace.
//!
//! For a socket in LISTEN state the kernel reports `idiag_rqueue` = current accept-queue length
//! (`sk_ack_backlog`) and `idiag_wqueue` = its limit (`sk_max_ack_backlog`). With the
//! `INET_DIAG_SKMEMINFO` extension it also reports `SK_MEMINFO_DROPS` = `sk_drops`, which
//! `tcp_listendrop()` increments for every SYN- and ACK-phase accept-queue overflow.
//!
//! A netlink socket answers for the netns it was created in, whatever the calling thread's
//! netns later: [`DiagSocket`] keeps one per netns, so a re-sample needs no `setns`, and
//! [`DiagSocket::lookup`] asks for known listeners one by one (the kernel finds each through
//! its hash) instead of a dump, which walks the whole listening hash (shared by every netns)
//! for each netns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::Serialize;

/// Errors talking to sock_diag.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// Socket syscall failed.
    #[error("sock_diag {op}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The kernel answered with an error.
    #[error("sock_diag: kernel returned error {0}")]
    Kernel(i32),
    /// Malformed answer.
    #[error("sock_diag: malformed reply: {0}")]
    Malformed(&'static str),
}

/// One TCP listening socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiagListener {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local address.
    pub addr: IpAddr,
    /// Raw local address bytes as the kernel stores them (IPv4 in the first 4), used to match
    /// eBPF map keys.
    #[serde(skip)]
    pub addr_raw: [u8; 16],
    /// Local port.
    pub port: u16,
    /// Current accept-queue length (`sk_ack_backlog`).
    pub queue: u32,
    /// Accept-queue limit (`sk_max_ack_backlog`) = the effective backlog.
    pub max_backlog: u32,
    /// Socket inode (matches `/proc/<pid>/fd/* -> socket:[inode]`).
    pub inode: u64,
    /// Socket cookie.
    pub cookie: u64,
    /// `sk_drops` (listen overflows + other listen drops since the socket was created), when the
    /// kernel sent SKMEMINFO.
    pub drops: Option<u32>,
    /// cgroup v2 id of the socket (the cgroup of the task that created it), when reported.
    pub cgroup_id: Option<u64>,
    /// Owning uid.
    pub uid: u32,
    /// Bound interface index (`SO_BINDTODEVICE`; 0 when unbound).
    #[serde(skip)]
    pub ifindex: u32,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_SKMEMINFO: u16 = 7;
const INET_DIAG_CGROUP_ID: u16 = 21;
const SK_MEMINFO_DROPS: usize = 8;
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;

fn io(op: &'static str) -> DiagError {
    DiagError::Io {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// Dumps TCP listeners (IPv4 and IPv6) in the calling thread's network namespace.
pub fn dump_tcp_listeners() -> Result<Vec<DiagListener>, DiagError> {
    DiagSocket::open()?.dump()
}

/// A sock_diag socket of one network namespace (the calling thread's when opened).
#[derive(Debug)]
pub struct DiagSocket(OwnedFd);

/// Exact requests sent per `sendto` by [`DiagSocket::lookup`] (bounds the replies queued on
/// the socket at once).
const LOOKUP_BATCH: usize = 64;

impl DiagSocket {
    /// Opens a sock_diag socket in the calling thread's netns.
    pub fn open() -> Result<DiagSocket, DiagError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io("socket"));
        }
        // SAFETY: fd is a fresh, valid descriptor.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // A receive timeout, so a reply the kernel could not queue fails the read, not hangs it.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(DiagSocket(sock))
    }

    /// Every TCP listener (IPv4 and IPv6) of the socket's netns.
    pub fn dump(&self) -> Result<Vec<DiagListener>, DiagError> {
        let mut out = Vec::new();
        for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
            let mut buf = [0u8; NLMSG_HDR + REQ_LEN];
            encode_request(&mut buf, seq, NLM_F_REQUEST | NLM_F_DUMP, family, None);
            send(&self.0, &buf)?;
            recv_dump(&self.0, seq, &mut out)?;
        }
        Ok(out)
    }

    /// The current state of each of `known` (same socket: address, port, interface and
    /// cookie), in order; `None` for one that is gone (closed, or its address now answers with
    /// another socket). One kernel hash lookup per listener, no walk.
    pub fn lookup(&self, known: &[DiagListener]) -> Result<Vec<Option<DiagListener>>, DiagError> {
        let mut out = Vec::with_capacity(known.len());
        for chunk in known.chunks(LOOKUP_BATCH) {
            let base = out.len();
            let mut buf = vec![0u8; chunk.len() * (NLMSG_HDR + REQ_LEN)];
            for (i, (l, b)) in chunk
                .iter()
                .zip(buf.chunks_mut(NLMSG_HDR + REQ_LEN))
                .enumerate()
            {
                encode_request(
                    b,
                    (base + i + 1) as u32,
                    NLM_F_REQUEST,
                    l.family as u8,
                    Some(l),
                );
            }
            send(&self.0, &buf)?;
            out.resize(base + chunk.len(), None);
            recv_exact(&self.0, base, chunk.len(), &mut out)?;
        }
        for (slot, k) in out.iter_mut().zip(known) {
            if slot
                .as_ref()
                .is_some_and(|l| l.cookie != k.cookie || l.inode != k.inode)
            {
                *slot = None;
            }
        }
        Ok(out)
    }
}

/// Encodes one `inet_diag_req_v2` into `buf` (`NLMSG_HDR + REQ_LEN` bytes): a dump of the
/// family's listeners, or (with `exact`) one request for that socket.
fn encode_request(buf: &mut [u8], seq: u32, flags: u16, family: u8, exact: Option<&DiagListener>) {
    let len = (NLMSG_HDR + REQ_LEN) as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut buf[NLMSG_HDR..NLMSG_HDR + REQ_LEN];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[2] = 1 << (INET_DIAG_SKMEMINFO - 1);
    r[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    if let Some(l) = exact {
        // inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2].
        let id = &mut r[8..56];
        id[0..2].copy_from_slice(&l.port.to_be_bytes());
        id[4..20].copy_from_slice(&l.addr_raw);
        id[36..40].copy_from_slice(&l.ifindex.to_ne_bytes());
        id[40..44].copy_from_slice(&(l.cookie as u32).to_ne_bytes());
        id[44..48].copy_from_slice(&((l.cookie >> 32) as u32).to_ne_bytes());
    }
}

fn send(sock: &OwnedFd, buf: &[u8]) -> Result<(), DiagError> {
    // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: buf and addr are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io("sendto"));
    }
    Ok(())
}

/// Receives one datagram into `buf` and calls `f(type, seq, payload)` for each netlink message in
/// it, until `f` returns `Some` (which is returned).
fn recv_messages<T>(
    sock: &OwnedFd,
    buf: &mut [u8],
    mut f: impl FnMut(u16, u32, &[u8]) -> Option<Result<T, DiagError>>,
) -> Result<Option<T>, DiagError> {
    // SAFETY: buf is valid for buf.len() bytes.
    let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(DiagError::Io {
            op: "recv",
            source: e,
        });
    }
    let mut data = &buf[..r as usize];
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        let mseq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
        if len < NLMSG_HDR || len > data.len() {
            return Err(DiagError::Malformed("nlmsg length"));
        }
        if let Some(done) = f(ty, mseq, &data[NLMSG_HDR..len]) {
            return done.map(Some);
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    Ok(None)
}

/// Reads the `n` answers (a socket, or an error such as ENOENT) to the exact requests with
/// sequence numbers `base + 1 ..= base + n` into `out[base..]`.
fn recv_exact(
    sock: &OwnedFd,
    base: usize,
    n: usize,
    out: &mut [Option<DiagListener>],
) -> Result<(), DiagError> {
    let mut buf = vec![0u8; 8 * 1024];
    let mut answered = 0;
    while answered < n {
        recv_messages::<()>(sock, &mut buf, |ty, mseq, payload| {
            let mseq = mseq as usize;
            if mseq > base && mseq <= base + n {
                answered += 1;
                if ty == SOCK_DIAG_BY_FAMILY {
                    out[mseq - 1] = parse_msg(payload);
                }
            }
            None
        })?;
    }
    Ok(())
}

fn recv_dump(sock: &OwnedFd, seq: u32, out: &mut Vec<DiagListener>) -> Result<(), DiagError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let done = recv_messages(sock, &mut buf, |ty, mseq, payload| {
            if mseq != seq {
                return None;
            }
            match ty {
                NLMSG_DONE => Some(Ok(())),
                NLMSG_ERROR => {
                    let err = payload
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(-1);
                    Some(if err == 0 {
                        Ok(())
                    } else {
                        Err(DiagError::Kernel(err))
                    })
                }
                SOCK_DIAG_BY_FAMILY => {
                    out.extend(parse_msg(payload));
                    None
                }
                _ => None,
            }
        })?;
        if done.is_some() {
            return Ok(());
        }
    }
}

/// Parses one `inet_diag_msg` + attributes.
pub fn parse_msg(p: &[u8]) -> Option<DiagListener> {
    if p.len() < MSG_LEN {
        return None;
    }
    let family = p[0] as u16;
    let state = p[1] as u32;
    if state != TCP_LISTEN {
        return None;
    }
    let id = &p[4..52];
    let port = u16::from_be_bytes([id[0], id[1]]);
    let mut addr_raw = [0u8; 16];
    let addr = if family == libc::AF_INET as u16 {
        addr_raw[..4].copy_from_slice(&id[4..8]);
        IpAddr::V4(Ipv4Addr::new(id[4], id[5], id[6], id[7]))
    } else {
        addr_raw.copy_from_slice(&id[4..20]);
        IpAddr::V6(Ipv6Addr::from(addr_raw))
    };
    let cookie_lo = u32::from_ne_bytes(id[40..44].try_into().ok()?) as u64;
    let cookie_hi = u32::from_ne_bytes(id[44..48].try_into().ok()?) as u64;
    let u = |o: usize| u32::from_ne_bytes(p[o..o + 4].try_into().unwrap());
    let mut l = DiagListener {
        family,
        addr,
        addr_raw,
        port,
        queue: u(56),
        max_backlog: u(60),
        uid: u(64),
        inode: u(68) as u64,
        cookie: cookie_lo | (cookie_hi << 32),
        drops: None,
        cgroup_id: None,
        ifindex: u32::from_ne_bytes(id[36..40].try_into().ok()?),
    };
    let mut attrs = &p[MSG_LEN..];
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let val = &attrs[4..alen];
        match aty {
            INET_DIAG_SKMEMINFO if val.len() >= (SK_MEMINFO_DROPS + 1) * 4 => {
                let o = SK_MEMINFO_DROPS * 4;
                l.drops = Some(u32::from_ne_bytes(val[o..o + 4].try_into().unwrap()));
            }
            INET_DIAG_CGROUP_ID if val.len() >= 8 => {
                l.cgroup_id = Some(u64::from_ne_bytes(val[0..8].try_into().unwrap()));
            }
            _ => {}
        }
        let aligned = (alen + 3) & !3;
        attrs = &attrs[aligned.min(attrs.len())..];
    }
    Some(l)
}

/// `SO_NETNS_COOKIE` of the calling thread's network namespace (Linux ≥ 5.14): a per-boot
/// unique, never-reused identity, unlike the netns inode number.
pub fn current_netns_cookie() -> Result<u64, DiagError> {
    const SO_NETNS_COOKIE: i32 = 71;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket"));
    }
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v/len valid for writes.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io("getsockopt(SO_NETNS_COOKIE)"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, state: u8, port: u16, rq: u32, wq: u32, drops: Option<u32>) -> Vec<u8> {
        let mut p = vec![0u8; MSG_LEN];
        p[0] = family;
        p[1] = state;
        p[4..6].copy_from_slice(&port.to_be_bytes());
        p[8..12].copy_from_slice(&[127, 0, 0, 1]);
        p[56..60].copy_from_slice(&rq.to_ne_bytes());
        p[60..64].copy_from_slice(&wq.to_ne_bytes());
        p[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        if let Some(d) = drops {
            let mut a = vec![0u8; 4 + 9 * 4];
            a[0..2].copy_from_slice(&((4 + 9 * 4) as u16).to_ne_bytes());
            a[2..4].copy_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
            a[4 + 32..4 + 36].copy_from_slice(&d.to_ne_bytes());
            p.extend(a);
        }
        p
    }

    #[test]
    fn parses_listener() {
        let l = parse_msg(&msg(2, 10, 8080, 3, 128, Some(17))).unwrap();
        assert_eq!(l.port, 8080);
        assert_eq!(l.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(l.addr_raw[..4], [127, 0, 0, 1]);
        assert_eq!((l.queue, l.max_backlog, l.inode), (3, 128, 4242));
        assert_eq!(l.drops, Some(17));
    }

    #[test]
    fn ignores_non_listen_and_short() {
        assert!(parse_msg(&msg(2, 1, 80, 0, 0, None)).is_none());
        assert!(parse_msg(&[0u8; 10]).is_none());
        assert_eq!(parse_msg(&msg(2, 10, 80, 0, 5, None)).unwrap().drops, None);
    }

    #[test]
    fn dumps_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = dump_tcp_listeners().unwrap();
        let me = all
            .iter()
            .find(|d| d.port == port)
            .expect("own listener in dump");
        assert!(me.max_backlog > 0);
        assert!(me.inode > 0);
        assert!(current_netns_cookie().unwrap() > 0);
    }

    #[test]
    fn looks_up_known_listeners_and_misses_closed_ones() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("[::1]:0").unwrap();
        let ports = [
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        ];
        let sock = DiagSocket::open().unwrap();
        let known: Vec<DiagListener> = sock
            .dump()
            .unwrap()
            .into_iter()
            .filter(|d| ports.contains(&d.port))
            .collect();
        assert_eq!(known.len(), 2, "{known:?}");
        let c = std::net::TcpStream::connect(a.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = sock.lookup(&known).unwrap();
        let qa = now.iter().flatten().find(|l| l.port == ports[0]).unwrap();
        assert_eq!(
            qa.queue, 1,
            "the unaccepted connection is in the accept queue"
        );
        assert!(now.iter().all(Option::is_some), "{now:?}");
        drop(b);
        let now = sock.lookup(&known).unwrap();
        let gone: Vec<bool> = now.iter().map(Option::is_none).collect();
        let idx_b = known.iter().position(|l| l.port == ports[1]).unwrap();
        assert!(gone[idx_b] && !gone[1 - idx_b], "{now:?}");
        drop(c);
    }
}
