//! The pure per-listener diagnosis: which limit binds, and what fixes it.
//!
//! Inputs are what the agent observed over the report window; the output is a
//! [`Diagnosis`] plus the [`LimitedBy`] explanation of the effective backlog.
//!
//! Thresholds (all inclusive):
//! * **pressure**: the listener is in trouble when it overflowed in the window
//!   (`overflows_recent > 0`) or its queue reached the effective backlog (`queue_max >=
//!   effective_backlog`; the kernel admits `effective + 1` entries, so a queue at `effective`
//!   is full). Without pressure the verdict is `Healthy`.
//! * **near full**: a sample with `queue >= 90 %` of the effective backlog ([`NEAR_FULL_PERCENT`]).
//! * **sustained**: at least [`SUSTAINED_MIN_SAMPLES`] samples in the window and at least half
//!   of them near full ([`SUSTAINED_PERCENT`]). A one-shot scan (one sample) is never sustained.
//! * **generous backlog**: `effective_backlog >= 128` ([`GENEROUS_BACKLOG`], the historic
//!   `somaxconn` default and above what most frameworks ask: Java 50, uwsgi 100). A queue that
//!   long sitting full means the application is not accepting, not that it asked too little.
//!
//! Rules, first match wins:
//! 1. no pressure → `Healthy`.
//! 2. requested backlog known and larger than the effective one (`somaxconn` clipped it) →
//!    `SomaxconnBound` (raising `net.core.somaxconn` at pod creation fixes it).
//! 3. generous backlog and sustained near-full queue → `SlowAccept`.
//! 4. requested backlog unknown and effective == somaxconn (the app asked at least somaxconn;
//!    cannot tell whether more) → `SomaxconnBound` with `LimitedBy::Unknown`: raising
//!    somaxconn is the only knob that can raise this limit without an app change.
//! 5. otherwise → `ApplicationBacklogBound` (the app's own `listen()` backlog binds).
//!
//! `LimitedBy`: `Somaxconn` when requested > effective; `ApplicationBacklog` when requested <=
//! effective, or when requested is unknown but `effective < somaxconn` (then the kernel cannot
//! have clipped it, assuming somaxconn was not lowered since the `listen()`); else `Unknown`.

use kubetune_crds::report::{Diagnosis, LimitedBy};

/// Percentage of the effective backlog at which a queue sample counts as near full.
pub const NEAR_FULL_PERCENT: i64 = 90;
/// Minimum samples in the window before "sustained" can hold.
pub const SUSTAINED_MIN_SAMPLES: u32 = 3;
/// Percentage of near-full samples that makes a full queue "sustained".
pub const SUSTAINED_PERCENT: u32 = 50;
/// Effective backlog at or above which the backlog counts as generous.
pub const GENEROUS_BACKLOG: i64 = 128;

/// What the diagnosis looks at for one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiagnosisInput {
    /// Backlog passed to `listen()` when known (eBPF saw the call). Negative values are
    /// treated as "as large as possible" like the kernel does (it compares as unsigned).
    pub requested_backlog: Option<i64>,
    /// `sk_max_ack_backlog`.
    pub effective_backlog: i64,
    /// Current `net.core.somaxconn` of the netns, when read.
    pub somaxconn: Option<i64>,
    /// Highest accept-queue length in the window.
    pub queue_max: i64,
    /// Overflows in the window.
    pub overflows_recent: u64,
    /// Queue samples in the window.
    pub samples: u32,
    /// Samples in the window with the queue near full.
    pub near_full_samples: u32,
}

/// True when `queue` counts as near full for `effective` (see [`NEAR_FULL_PERCENT`]).
pub fn near_full(queue: i64, effective: i64) -> bool {
    effective > 0 && queue * 100 >= effective * NEAR_FULL_PERCENT
}

/// Which limit sets the effective backlog.
pub fn limited_by(i: &DiagnosisInput) -> LimitedBy {
    match i.requested_backlog {
        Some(req) => {
            let req = if req < 0 { i64::from(u32::MAX) } else { req };
            if req > i.effective_backlog {
                LimitedBy::Somaxconn
            } else {
                LimitedBy::ApplicationBacklog
            }
        }
        None => match i.somaxconn {
            Some(s) if i.effective_backlog < s => LimitedBy::ApplicationBacklog,
            _ => LimitedBy::Unknown,
        },
    }
}

/// Diagnoses one listener (see the module docs for the rules and thresholds).
pub fn diagnose(i: &DiagnosisInput) -> (Diagnosis, LimitedBy) {
    let lim = limited_by(i);
    let pressure =
        i.overflows_recent > 0 || (i.effective_backlog > 0 && i.queue_max >= i.effective_backlog);
    if !pressure {
        return (Diagnosis::Healthy, lim);
    }
    if lim == LimitedBy::Somaxconn {
        return (Diagnosis::SomaxconnBound, lim);
    }
    let sustained = i.samples >= SUSTAINED_MIN_SAMPLES
        && i.near_full_samples * 100 >= i.samples * SUSTAINED_PERCENT;
    if i.effective_backlog >= GENEROUS_BACKLOG && sustained {
        return (Diagnosis::SlowAccept, lim);
    }
    if lim == LimitedBy::Unknown {
        return (Diagnosis::SomaxconnBound, lim);
    }
    (Diagnosis::ApplicationBacklogBound, lim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Diagnosis::*;

    fn input(
        req: Option<i64>,
        eff: i64,
        smx: i64,
        qmax: i64,
        ovf: u64,
        samples: u32,
        full: u32,
    ) -> DiagnosisInput {
        DiagnosisInput {
            requested_backlog: req,
            effective_backlog: eff,
            somaxconn: Some(smx),
            queue_max: qmax,
            overflows_recent: ovf,
            samples,
            near_full_samples: full,
        }
    }

    #[test]
    fn table() {
        #[rustfmt::skip]
        let cases: &[(&str, DiagnosisInput, Diagnosis, LimitedBy)] = &[
            ("idle listener", input(Some(511), 511, 4096, 0, 0, 10, 0), Healthy, LimitedBy::ApplicationBacklog),
            ("busy but never full", input(Some(511), 511, 4096, 400, 0, 10, 0), Healthy, LimitedBy::ApplicationBacklog),
            ("nginx on old somaxconn overflowing", input(Some(511), 128, 128, 129, 40, 1, 1), SomaxconnBound, LimitedBy::Somaxconn),
            ("clipped, full but no overflow yet", input(Some(511), 128, 128, 128, 0, 1, 1), SomaxconnBound, LimitedBy::Somaxconn),
            ("clipped but healthy", input(Some(511), 128, 128, 3, 0, 10, 0), Healthy, LimitedBy::Somaxconn),
            ("negative backlog means max", input(Some(-1), 4096, 4096, 4097, 5, 1, 1), SomaxconnBound, LimitedBy::Somaxconn),
            ("java default 50 overflowing", input(Some(50), 50, 4096, 51, 9, 1, 1), ApplicationBacklogBound, LimitedBy::ApplicationBacklog),
            ("small backlog sustained full is still app backlog", input(Some(16), 16, 4096, 17, 100, 10, 10), ApplicationBacklogBound, LimitedBy::ApplicationBacklog),
            ("generous backlog sustained full", input(Some(256), 256, 4096, 257, 43, 6, 6), SlowAccept, LimitedBy::ApplicationBacklog),
            ("generous backlog, brief spike", input(Some(256), 256, 4096, 257, 10, 6, 1), ApplicationBacklogBound, LimitedBy::ApplicationBacklog),
            ("generous, one sample cannot be sustained", input(Some(256), 256, 4096, 257, 10, 1, 1), ApplicationBacklogBound, LimitedBy::ApplicationBacklog),
            ("exactly half near full is sustained", input(Some(1024), 1024, 4096, 1025, 1, 4, 2), SlowAccept, LimitedBy::ApplicationBacklog),
            ("unknown request, effective below somaxconn", input(None, 16, 4096, 17, 3, 1, 1), ApplicationBacklogBound, LimitedBy::ApplicationBacklog),
            ("unknown request, effective at somaxconn", input(None, 128, 128, 129, 3, 1, 1), SomaxconnBound, LimitedBy::Unknown),
            ("unknown request, generous and stuck", input(None, 4096, 4096, 4097, 3, 5, 5), SlowAccept, LimitedBy::Unknown),
            ("unknown request, healthy", input(None, 4096, 4096, 0, 0, 1, 0), Healthy, LimitedBy::Unknown),
        ];
        for (name, i, d, l) in cases {
            assert_eq!(diagnose(i), (*d, *l), "{name}: {i:?}");
        }
    }

    #[test]
    fn unknown_somaxconn() {
        let i = DiagnosisInput {
            requested_backlog: None,
            effective_backlog: 16,
            somaxconn: None,
            queue_max: 17,
            overflows_recent: 1,
            samples: 1,
            near_full_samples: 1,
        };
        assert_eq!(diagnose(&i), (SomaxconnBound, LimitedBy::Unknown));
    }

    #[test]
    fn near_full_threshold() {
        assert!(near_full(90, 100));
        assert!(!near_full(89, 100));
        assert!(near_full(17, 16));
        assert!(!near_full(0, 0));
    }
}
