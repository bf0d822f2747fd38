//! The leader's stamps: the clock readings client entries carry, from which
//! every replica derives replicated time, the time sessions expire by
//! (`session.rs`, rule 7).
//!
//! A leader stamps with its wall clock clamped to its term's *anchor* plus
//! the time its monotonic clock measured since, within [`STAMP_SLACK_MS`]
//! either way ([`StampClock`]), so a leader whose wall clock steps (NTP, a
//! resumed VM) moves replicated time by the slack at most.
//!
//! Invariants:
//! - **The anchor is the cluster's replicated time.** A leader takes it only
//!   once its apply thread has applied every entry its log holds from
//!   earlier terms ([`anchor_ready`]). Those entries include every entry
//!   committed before its term (Leader Completeness, Raft §5.4), and none
//!   of its own term carries a stamp yet, so its replicated time is then
//!   exactly the cluster's at the start of its term. Taken earlier, it
//!   could be behind, or be 0 on a node that has applied no stamp yet (one
//!   restarted without a snapshot, its apply thread still replaying): 0
//!   used to mean "the cluster has no time yet, anchor on the wall clock",
//!   and a wall clock that had jumped ahead then jumped replicated time
//!   ahead with it, expiring sessions early (seed 1787 of the multi-group
//!   simulation; `stamp_tests`). On a new cluster replicated time is still
//!   0 after that point, and the wall clock is the anchor.
//! - Until it has the anchor, the leader stamps nothing: client writes and
//!   session operations wait in the node task ([`Deferred`]), in arrival
//!   order, and are proposed once it has (or refused, if it stopped leading
//!   or the node stopped serving meanwhile). They wait for at most the
//!   commit of its first entry and the apply of the entries before it, which
//!   their own answers wait for anyway.
//! - Stamps never go back within a term.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::apply::Reply;
use super::session::{Op, STAMP_SLACK_MS};
use crate::core::log::RaftLog;
use crate::core::{Index, Term};

/// A leader's stamp clock for one term (see the module docs).
pub(super) struct StampClock {
    /// The term it stamps for.
    pub(super) term: Term,
    /// Replicated time at the anchor (the apply thread's once it applied the
    /// earlier terms, or the wall clock on a cluster that has none yet).
    anchor_ms: u64,
    anchor_at: Instant,
    /// The last stamp this leader issued (stamps never go back).
    last: u64,
    /// Whether a clamp was logged this term (once is enough).
    pub(super) warned: bool,
}

impl StampClock {
    /// The clock of `term`, anchored now at `replicated_ms` (the apply
    /// thread's replicated time, read once [`anchor_ready`] holds), or at
    /// `wall_ms` if the cluster has no replicated time yet.
    pub(super) fn anchor(term: Term, replicated_ms: u64, wall_ms: u64) -> StampClock {
        StampClock {
            term,
            anchor_ms: if replicated_ms == 0 {
                wall_ms
            } else {
                replicated_ms
            },
            anchor_at: Instant::now(),
            last: 0,
            warned: false,
        }
    }

    /// The stamp of an entry proposed now, given the wall clock.
    pub(super) fn stamp(&mut self, wall_ms: u64) -> u64 {
        let elapsed = u64::try_from(self.anchor_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let expected = self.anchor_ms.saturating_add(elapsed);
        let stamp = wall_ms
            .max(expected.saturating_sub(STAMP_SLACK_MS))
            .min(expected.saturating_add(STAMP_SLACK_MS))
            .max(self.last);
        self.last = stamp;
        stamp
    }
}

/// Whether the leader of `term` whose apply thread has applied through
/// `applied` may anchor its stamps: it applied every entry of `log` from an
/// earlier term (see the module docs).
pub(super) fn anchor_ready(log: &RaftLog, term: Term, applied: Index) -> bool {
    // The last entry of an earlier term (terms never decrease along the
    // log); at or below the snapshot when the log holds none.
    let (earlier, _) = log.find_conflict_by_term(log.last_index(), term.saturating_sub(1));
    applied >= earlier
}

/// Client writes and session operations that arrived before the leader had
/// its anchor, in arrival order (see the module docs).
#[derive(Default)]
pub(super) struct Deferred(VecDeque<(Op, Reply)>);

impl Deferred {
    /// Whether none waits.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues one behind the others.
    pub(super) fn push(&mut self, op: Op, reply: Reply) {
        self.0.push_back((op, reply));
    }

    /// The oldest.
    pub(super) fn pop(&mut self) -> Option<(Op, Reply)> {
        self.0.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Entry, Payload, SnapshotMeta};

    fn log(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                index: i as Index + 1,
                term,
                payload: Payload::Noop,
            })
            .collect();
        RaftLog::restore(SnapshotMeta::default(), entries, 0)
    }

    #[test]
    fn the_anchor_waits_for_every_entry_of_the_earlier_terms() {
        // Entries 1..=3 of terms 1 and 2, then the leader's term 4.
        let l = log(&[1, 2, 2, 4, 4]);
        assert!(!anchor_ready(&l, 4, 0));
        assert!(!anchor_ready(&l, 4, 2));
        assert!(anchor_ready(&l, 4, 3));
        assert!(anchor_ready(&l, 4, 5));
        // A leader with nothing before its term.
        assert!(anchor_ready(&log(&[1]), 1, 0));
    }

    #[test]
    fn stamps_follow_the_anchor_within_the_slack_and_never_go_back() {
        let mut c = StampClock::anchor(3, 1_000_000, 9_000_000);
        // A wall clock far ahead is clamped to the anchor plus the slack.
        let s = c.stamp(9_000_000);
        assert!((1_000_000..=1_000_000 + STAMP_SLACK_MS + 1_000).contains(&s));
        // A wall clock far behind cannot take stamps back.
        assert!(c.stamp(0) >= s);
        // No replicated time yet: the wall clock is the anchor.
        let mut fresh = StampClock::anchor(1, 0, 5_000_000);
        assert_eq!(fresh.stamp(5_000_000), 5_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_advance_with_the_monotonic_clock_since_the_anchor() {
        // A wall clock far behind from the start is clamped up to the
        // anchor minus the slack (not left behind).
        let mut behind = StampClock::anchor(2, 1_000_000, 0);
        assert_eq!(behind.stamp(0), 1_000_000 - STAMP_SLACK_MS);
        // Ten seconds on the monotonic clock: a wall clock that agrees is
        // taken as it is, one that stood still is clamped to the anchor plus
        // the elapsed time minus the slack, one far ahead to plus the slack.
        let mut c = StampClock::anchor(3, 1_000_000, 1_000_000);
        assert_eq!(c.stamp(1_000_000), 1_000_000);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!(c.stamp(1_010_000), 1_010_000);
        let mut stood = StampClock::anchor(3, 1_000_000, 1_000_000);
        let mut ahead = StampClock::anchor(3, 1_000_000, 1_000_000);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!(stood.stamp(1_000_000), 1_010_000 - STAMP_SLACK_MS);
        assert_eq!(ahead.stamp(9_000_000), 1_010_000 + STAMP_SLACK_MS);
    }
}
