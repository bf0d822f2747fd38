//! The executor, the clock and the trace of a simulated run.
//!
//! One seed runs on one current-thread tokio runtime whose clock is paused
//! ([`runtime`]): `tokio::time` is virtual and jumps to the next timer as
//! soon as every task waits, so a run takes the CPU time its work needs,
//! not the virtual time it covers. Tasks run one at a time, in the order
//! they became ready (tokio's run queue is FIFO and its timer wheel
//! deterministic), so the run is a function of the seed as long as nothing
//! else is random: the peers' workers are tasks of this runtime, the node
//! task's `select!` is `biased`, every random choice (faults, election
//! jitter, session ids, disk tears, workload) comes from RNGs seeded from
//! the seed, and every collection iterated in an order that matters is
//! ordered. The [`Trace`] hash is the test of that claim.

use std::fmt::Display;
use std::time::Duration;

/// FNV-1a, 64 bits: a stable hash (the same across processes and builds).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The ordered log of a run's events (messages, faults, crashes, client
/// calls and results), kept as a running hash; printed to stderr as it
/// grows when `print` (`RAFTKIT_SIM_TRACE`).
#[derive(Debug)]
pub(crate) struct Trace {
    hash: u64,
    events: u64,
    print: bool,
}

impl Trace {
    pub(crate) fn new(print: bool) -> Trace {
        Trace {
            hash: fnv(b""),
            events: 0,
            print,
        }
    }

    /// Appends an event that happened at virtual time `at`.
    pub(crate) fn event(&mut self, at: Duration, what: impl Display) {
        let line = format!("{:>9.3}s {what}", at.as_secs_f64());
        self.hash = fnv(&[self.hash.to_le_bytes().as_slice(), line.as_bytes()].concat());
        self.events += 1;
        if self.print {
            eprintln!("{line}");
        }
    }

    /// The hash of every event so far, and their number.
    pub(crate) fn digest(&self) -> (u64, u64) {
        (self.hash, self.events)
    }
}

/// The runtime of one seed: current-thread, paused clock (virtual time).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
}
