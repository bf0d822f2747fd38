//! The handler context: what a handler may know about the entry it applies
//! without breaking determinism.
//!
//! A `#[write]` handler may take `ctx: &Ctx` or `ctx: &mut Ctx` as its first
//! argument after `self`, and a `#[read]` handler `ctx: &Ctx`. The context
//! is not part of the command: the client does not send it, the runtime
//! builds it from the log entry on every replica.
//!
//! ```
//! use raftkit::prelude::*;
//! # use std::collections::BTreeMap;
//! #[derive(StateMachine, Default, Serialize, Deserialize)]
//! struct Tickets { issued: BTreeMap<u64, (String, u64)> }
//!
//! #[raftkit::state_machine]
//! impl Tickets {
//!     /// Issues a ticket: a unique id (the entry's index), the replicated
//!     /// time it was issued at and a random check code, equal on every replica.
//!     #[write]
//!     fn issue(&mut self, ctx: &mut Ctx, holder: String) -> (u64, u64) {
//!         let code = ctx.rng().next_u64() % 10_000;
//!         self.issued.insert(ctx.index(), (holder, ctx.time_ms()));
//!         (ctx.index(), code)
//!     }
//!     #[read]
//!     fn age_ms(&self, ctx: &Ctx, id: u64) -> Option<u64> {
//!         self.issued.get(&id).map(|(_, at)| ctx.time_ms().saturating_sub(*at))
//!     }
//! }
//! ```
//!
//! # Invariants
//! - Every replica builds the same `Ctx` for the same entry: the index and
//!   term are the entry's, the time is derived from the log alone and the
//!   random generator is seeded from the index and term. No replica's own
//!   clock or entropy is consulted while applying.
//! - Replicated time never moves backwards: it is the largest leader stamp
//!   applied so far (each entry may advance it by at most one minute; see
//!   the session rules in `DESIGN.md`), so it is monotonic across leader
//!   changes even when leaders' clocks disagree.
//!
//! # Caveats of replicated time
//! - It is the *leader's* clock when it proposed the entry, clamped to its
//!   monotonic clock: it trails the wall clock by the commit latency and
//!   does not run while the cluster is down (after downtime it continues
//!   from where it stopped and catches up one minute per entry at most).
//! - It advances only with entries. A read sees the time of the last entry
//!   this replica applied, so "expired" can only be decided as of the last
//!   write: a key whose time-to-live has run out in wall-clock terms stays
//!   visible until the next entry is applied.
//! - A new leader's stamps may be behind the previous leader's (clock
//!   skew); time then stands still until its stamps catch up, it never
//!   goes back.
//! - Entries that are not client writes (no-ops of new leaders,
//!   configuration changes) do not advance it.
//!
//! # The random generator
//! [`CtxRng`] is SplitMix64 (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014) seeded with a hash of the
//! entry's index and term. It gives the same sequence on every replica and
//! a different one for every entry. It is **predictable**: anyone who knows
//! the index can compute it. Use it for ids, sampling and tie-breaking, never
//! for secrets.

use std::time::{Duration, SystemTime};

/// The context of the entry a handler applies (or, for a read, of the last
/// entry applied): index, term, replicated time and a deterministic random
/// generator. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Ctx {
    index: u64,
    term: u64,
    time_ms: u64,
    rng: CtxRng,
}

impl Ctx {
    /// The context of the entry at `index` of `term`, applied at replicated
    /// time `time_ms` (ms since the Unix epoch). The runtime builds it;
    /// tests of handlers can too.
    pub fn new(index: u64, term: u64, time_ms: u64) -> Ctx {
        Ctx {
            index,
            term,
            time_ms,
            rng: CtxRng::for_entry(index, term),
        }
    }

    /// The log index of the entry (unique in the cluster's history, so
    /// usable as an id). For a read: the last index this replica applied.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The term of the entry (for a read: of the last entry this replica
    /// applied, or 0 when it started from a snapshot and has applied nothing
    /// since).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Replicated time, in milliseconds since the Unix epoch: never moves
    /// backwards (see the caveats in the [module documentation](self)).
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    /// Replicated time as a [`SystemTime`].
    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.time_ms)
    }

    /// The deterministic random generator of this entry.
    pub fn rng(&mut self) -> &mut CtxRng {
        &mut self.rng
    }
}

/// SplitMix64, seeded from an entry: the same numbers on every replica.
/// Implements [`rand::RngCore`], so `rand::Rng`'s methods
/// (`random_range`, ...) work on it. Predictable: never use it for secrets.
#[derive(Debug, Clone)]
pub struct CtxRng {
    state: u64,
}

impl CtxRng {
    /// The generator of the entry at `index` of `term`.
    pub fn for_entry(index: u64, term: u64) -> CtxRng {
        // Mix both through one SplitMix64 step each, so that neighbouring
        // entries start far apart.
        let seed = mix(index ^ mix(term ^ 0x5241_4654_4b49_5421));
        CtxRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (Stafford's Mix13).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl rand::RngCore for CtxRng {
    fn next_u32(&mut self) -> u32 {
        (CtxRng::next_u64(self) >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        CtxRng::next_u64(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = CtxRng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // SplitMix64 from state 0: the reference implementation's first
        // outputs.
        let mut r = CtxRng { state: 0 };
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn same_entry_same_numbers_other_entry_other_numbers() {
        let draw = |i, t| {
            let mut c = Ctx::new(i, t, 0);
            [c.rng().next_u64(), c.rng().next_u64()]
        };
        assert_eq!(draw(7, 2), draw(7, 2));
        assert_ne!(draw(7, 2), draw(8, 2));
        assert_ne!(draw(7, 2), draw(7, 3));
        let mut bytes = [0u8; 13];
        rand::RngCore::fill_bytes(Ctx::new(1, 1, 0).rng(), &mut bytes);
        assert!(bytes.iter().any(|b| *b != 0));
    }

    #[test]
    fn time_is_the_replicated_stamp() {
        let c = Ctx::new(3, 1, 1_500);
        assert_eq!(c.time_ms(), 1_500);
        assert_eq!(
            c.time(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)
        );
        assert_eq!((c.index(), c.term()), (3, 1));
    }
}
