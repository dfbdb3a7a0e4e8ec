//! `RLIMIT_MEMLOCK` before loading the probes: kernels before 5.11 charge BPF maps and programs
//! against it (a container's default of 64 KiB or 8 MiB is too small, and the load fails with
//! EPERM); 5.11 and later charge the memory cgroup instead, so raising it is harmless there.
//! Raising needs CAP_SYS_RESOURCE above the hard limit; without it the soft limit is raised to
//! the hard one, and what could not be done is logged with what it means on this kernel.

use tracing::{debug, info, warn};

/// What [`raise`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memlock {
    /// The soft limit was already unlimited.
    Unlimited,
    /// Raised to unlimited.
    Raised,
    /// Could not reach unlimited; `soft` is the limit now in force (bytes).
    Limited {
        /// Soft limit after the attempt.
        soft: u64,
        /// Why unlimited was refused.
        error: String,
    },
}

/// True when the kernel `release` (e.g. `5.10.0-28-amd64`) charges BPF memory to
/// `RLIMIT_MEMLOCK` (before 5.11). Unparsable releases count as charging.
pub fn kernel_charges_memlock(release: &str) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>());
    match (it.next(), it.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < (5, 11),
        _ => true,
    }
}

fn getrlimit() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    r
}

fn setrlimit(cur: libc::rlim_t, max: libc::rlim_t) -> Result<(), std::io::Error> {
    let r = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the process's `RLIMIT_MEMLOCK` to unlimited, or the soft limit to the hard one.
pub fn raise() -> Memlock {
    let now = getrlimit();
    if now.rlim_cur == libc::RLIM_INFINITY {
        return Memlock::Unlimited;
    }
    match setrlimit(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        Ok(()) => Memlock::Raised,
        Err(e) => {
            // Without CAP_SYS_RESOURCE the soft limit can still go up to the hard one.
            let _ = setrlimit(now.rlim_max, now.rlim_max);
            Memlock::Limited {
                soft: getrlimit().rlim_cur,
                error: e.to_string(),
            }
        }
    }
}

/// [`raise`], logged with what the outcome means on the running kernel.
pub fn raise_and_log() -> Memlock {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let m = raise();
    match (&m, kernel_charges_memlock(release)) {
        (Memlock::Unlimited, _) => debug!("RLIMIT_MEMLOCK already unlimited"),
        (Memlock::Raised, _) => info!(kernel = release, "RLIMIT_MEMLOCK raised to unlimited"),
        (Memlock::Limited { soft, error }, true) => warn!(
            kernel = release, limit = soft, %error,
            "RLIMIT_MEMLOCK could not be raised and this kernel (< 5.11) charges BPF maps against it: \
             the probes may fail to load (grant CAP_SYS_RESOURCE)"
        ),
        (Memlock::Limited { soft, error }, false) => info!(
            kernel = release, limit = soft, %error,
            "RLIMIT_MEMLOCK could not be raised; harmless on kernels >= 5.11 (BPF memory is charged to the cgroup)"
        ),
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_kernels_charge_memlock() {
        for (rel, charges) in [
            ("4.19.0-27-amd64", true),
            ("5.4.0-1100-aws", true),
            ("5.10.226-214.880.amzn2.x86_64", true),
            ("5.11.0", false),
            ("5.15.0-122-generic", false),
            ("6.18.0", false),
            ("10.0", false),
            ("", true),
            ("garbage", true),
        ] {
            assert_eq!(kernel_charges_memlock(rel), charges, "{rel}");
        }
    }

    #[test]
    fn raise_reports_the_limit_in_force() {
        let m = raise();
        let soft = getrlimit().rlim_cur;
        match m {
            Memlock::Unlimited | Memlock::Raised => assert_eq!(soft, libc::RLIM_INFINITY),
            Memlock::Limited { soft: s, error } => {
                assert_eq!(s, soft);
                assert_ne!(s, libc::RLIM_INFINITY);
                assert!(!error.is_empty());
                // The soft limit went as far as the hard one allows.
                assert_eq!(soft, getrlimit().rlim_max);
            }
        }
    }
}
