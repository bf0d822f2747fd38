//! What a leader knows about each follower's log (Raft §5.3), and the flow
//! control that keeps replication pipelined but bounded.
//!
//! A follower is in one of three modes:
//! - **Probe**: the leader does not know where the follower's log matches.
//!   It sends one AppendEntries at a time and waits for the answer (or a
//!   heartbeat response) before sending the next.
//! - **Replicate**: the follower is known to match up to `matched`. The
//!   leader streams entries optimistically, advancing `next` as it sends, up
//!   to `max_inflight` unacknowledged messages ([`Inflights`]).
//! - **Snapshot**: the follower needs entries the leader has compacted; a
//!   snapshot is being sent and nothing else is until it is acknowledged.
//!
//! Invariants: `matched < next`; in replicate mode every in-flight message's
//! last index lies in `(matched, next)`, ascending.

use std::collections::VecDeque;

use super::types::Index;

/// The replication mode of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One message at a time, until the match point is found.
    Probe,
    /// Pipelined, optimistic streaming.
    Replicate,
    /// A snapshot is in transfer.
    Snapshot,
}

/// A bounded window of in-flight AppendEntries, identified by the index of
/// their last entry.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<Index>,
    capacity: usize,
}

impl Inflights {
    /// A window of at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Inflights {
            last_indexes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Whether no more messages may be sent.
    pub fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.last_indexes.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.last_indexes.is_empty()
    }

    /// Records a message whose last entry is `last`.
    pub fn add(&mut self, last: Index) {
        debug_assert!(self.last_indexes.back().is_none_or(|&b| b < last));
        self.last_indexes.push_back(last);
    }

    /// Frees every message acknowledged by a response covering `upto`.
    pub fn free_to(&mut self, upto: Index) {
        while self.last_indexes.front().is_some_and(|&i| i <= upto) {
            self.last_indexes.pop_front();
        }
    }

    /// Frees the oldest message (it was probably lost).
    pub fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    /// Frees everything.
    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's view of one member.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    pub matched: Index,
    /// The next index to send.
    pub next: Index,
    /// The replication mode.
    pub mode: Mode,
    /// In probe mode: a message was sent and no answer has arrived yet.
    pub probe_sent: bool,
    /// In snapshot mode: the index of the snapshot being sent.
    pub pending_snapshot: Index,
    /// The pipelining window.
    pub inflights: Inflights,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// The highest read-confirmation round this member acknowledged.
    pub read_round: u64,
    /// Catch-up rounds (thesis §4.2.1): the current round ends once the
    /// member holds this index, the leader's last index when it began.
    pub round_end: Index,
    /// The leader's tick count when the current round began.
    pub round_start: u64,
    /// How many ticks the last completed round took, if one completed.
    pub last_round: Option<u64>,
    /// The leader's tick count when a heartbeat answer last made it send
    /// to this member again (the lost-message recovery of
    /// [`Progress::resend_due`]), if one ever did.
    pub resent_at: Option<u64>,
}

impl Progress {
    /// A member whose log position is unknown: probe from `next`.
    pub fn new(next: Index, max_inflight: usize) -> Self {
        Progress {
            matched: 0,
            next,
            mode: Mode::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            inflights: Inflights::new(max_inflight),
            recent_active: false,
            read_round: 0,
            round_end: next.saturating_sub(1),
            round_start: 0,
            last_round: None,
            resent_at: None,
        }
    }

    /// Starts the first catch-up round at tick `now`: it ends when the
    /// member holds everything the leader holds now (`next - 1`).
    pub fn start_rounds(&mut self, now: u64) {
        self.round_end = self.next.saturating_sub(1);
        self.round_start = now;
        self.last_round = None;
    }

    /// Thesis §4.2.1: replication to a new server proceeds in rounds, each
    /// replicating everything the leader held when the round began. Called
    /// at tick `now` whenever the member acknowledged something (entries or
    /// a heartbeat), with the leader's last index: if the member holds the
    /// round's last entry, the round is over and the next one begins. An
    /// idle, caught-up member completes an empty round at each heartbeat
    /// answer, so a round's duration never includes idle time.
    pub fn on_ack(&mut self, leader_last: Index, now: u64) {
        if self.matched >= self.round_end {
            self.last_round = Some(now.saturating_sub(self.round_start));
            self.round_end = leader_last;
            self.round_start = now;
        }
    }

    /// Whether the member is caught up at tick `now` by the rounds rule
    /// (thesis §4.2.1): its last round took less than `timeout` ticks (an
    /// election timeout) and the round in progress is not already overdue.
    pub fn caught_up(&self, now: u64, timeout: u64) -> bool {
        self.last_round.is_some_and(|d| d < timeout)
            && now.saturating_sub(self.round_start) < timeout
    }

    /// Whether a heartbeat answer may make the leader send to this member
    /// again now, the current heartbeat interval having begun at tick
    /// `interval_start`: not if one already did in this interval. Raft
    /// §5.3 has the leader retry AppendEntries until the follower stores
    /// every entry; a heartbeat answer shows that messages sent before it
    /// went unanswered (lost, or dropped by a follower whose apply is
    /// paused), so it unblocks a probe and frees a slot of a full window.
    /// Read rounds (thesis §6.4) send heartbeats about once per round trip
    /// under read load; retrying at each answer would send up to a batch
    /// per round trip to a follower that drops it. So retries are paced to
    /// the heartbeat interval, the pace without reads; replication driven
    /// by append answers is not paced.
    pub fn resend_due(&self, interval_start: u64) -> bool {
        self.resent_at.is_none_or(|t| t < interval_start)
    }

    /// Whether the leader must hold back new AppendEntries to this member.
    pub fn is_paused(&self) -> bool {
        match self.mode {
            Mode::Probe => self.probe_sent,
            Mode::Replicate => self.inflights.is_full(),
            Mode::Snapshot => true,
        }
    }

    /// Switches to probe mode, resuming from just after `matched` (or after
    /// the snapshot being sent).
    pub fn become_probe(&mut self) {
        if self.mode == Mode::Snapshot {
            self.next = self.matched.max(self.pending_snapshot) + 1;
        } else {
            self.next = self.matched + 1;
        }
        self.mode = Mode::Probe;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.reset();
    }

    /// Switches to pipelined streaming after a successful probe.
    pub fn become_replicate(&mut self) {
        self.mode = Mode::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Switches to snapshot transfer of the snapshot ending at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.mode = Mode::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records that the member's log matches up to `index`. Returns whether
    /// this was news (a stale or duplicate acknowledgement is not).
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Handles a rejection of the AppendEntries whose `prev_index` was
    /// `rejected`; `match_hint` is the leader's best guess of the last
    /// matching index, from the follower's conflict hint (fast backtracking,
    /// Raft §5.3 "the follower can include the term of the conflicting
    /// entry"). Returns whether the rejection was news.
    pub fn maybe_decrease(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.mode == Mode::Replicate {
            // Rejections at or below the match point are stale.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        // In probe mode only the answer to the message in flight counts.
        if self.next.saturating_sub(1) != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Records that an AppendEntries ending at `last` was sent.
    pub fn sent_entries(&mut self, last: Index) {
        match self.mode {
            Mode::Replicate => {
                self.next = last + 1;
                self.inflights.add(last);
            }
            Mode::Probe => self.probe_sent = true,
            Mode::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_bounds_pipelining() {
        let mut pr = Progress::new(1, 2);
        pr.maybe_update(0);
        pr.become_replicate();
        pr.sent_entries(3);
        assert!(!pr.is_paused());
        pr.sent_entries(6);
        assert!(pr.is_paused());
        assert!(pr.maybe_update(3));
        pr.inflights.free_to(3);
        assert!(!pr.is_paused());
        assert_eq!(pr.next, 7);
    }

    #[test]
    fn probe_rejections_use_the_hint_and_ignore_stale_ones() {
        let mut pr = Progress::new(11, 4);
        pr.sent_entries(10);
        assert!(pr.is_paused());
        assert!(!pr.maybe_decrease(5, 2), "not the message in flight");
        assert!(pr.maybe_decrease(10, 4));
        assert_eq!(pr.next, 5);
        assert!(!pr.is_paused());
    }

    /// Thesis §4.2.1: a member is caught up once a round of replication
    /// lasted *less* than an election timeout; a round of exactly one
    /// election timeout does not make it caught up.
    #[test]
    fn a_round_of_exactly_an_election_timeout_is_not_caught_up() {
        const TIMEOUT: u64 = 10;
        for (took, caught_up) in [(TIMEOUT - 1, true), (TIMEOUT, false)] {
            let mut pr = Progress::new(6, 4);
            // The round that begins at tick 100 ends with index 5.
            pr.start_rounds(100);
            assert!(pr.maybe_update(5));
            pr.on_ack(5, 100 + took);
            assert_eq!(
                pr.caught_up(100 + took, TIMEOUT),
                caught_up,
                "a round of {took} ticks against an election timeout of {TIMEOUT}"
            );
        }
    }

    /// Thesis §4.2.1: each catch-up round ends at the leader's last index
    /// when the round *began*. A member that keeps acknowledging but stays
    /// behind a leader taking writes never completes a short round, so it
    /// is never caught up. Mutant M163 (teeth s61): a completed round's
    /// successor ending at the member's own match point (every later
    /// acknowledgement then completed a one-tick round) survived every
    /// `core::` test; a learner 90 entries behind counted as caught up and
    /// could be promoted (§4.2.1: the cluster may then be unavailable while
    /// it catches up).
    #[test]
    fn a_round_ends_at_the_leaders_last_index_when_it_began() {
        const TIMEOUT: u64 = 10;
        let mut pr = Progress::new(101, 4);
        // The first round: everything up to 100, done at tick 50 (slow),
        // while the leader has grown to 200.
        pr.start_rounds(0);
        for (matched, now) in [(40, 20), (100, 50)] {
            assert!(pr.maybe_update(matched));
            pr.on_ack(200, now);
        }
        assert_eq!(pr.last_round, Some(50));
        assert!(!pr.caught_up(50, TIMEOUT));
        // The next round ends at 200: quick acknowledgements short of it
        // complete nothing.
        for (matched, now) in [(110, 51), (120, 52)] {
            assert!(pr.maybe_update(matched));
            pr.on_ack(300, now);
            assert_eq!(pr.last_round, Some(50), "a round ended at {matched}");
            assert!(!pr.caught_up(now, TIMEOUT), "caught up at {matched}");
        }
        assert!(pr.maybe_update(200));
        pr.on_ack(300, 55);
        assert_eq!(pr.last_round, Some(5));
        assert!(pr.caught_up(55, TIMEOUT));
    }

    /// Raft §5.3 (etcd's `MaybeDecrTo` likewise): in replicate mode a
    /// rejection at exactly the match point is stale too, the follower
    /// acknowledged holding that entry (a rejection sent before it did,
    /// delivered late). Mutant PR7 (teeth, stop 55): `rejected <=
    /// self.matched` -> `<` survived every test; such a rejection sent the
    /// leader back to probing.
    #[test]
    fn a_rejection_at_the_match_point_is_stale_in_replicate_mode() {
        let mut pr = Progress::new(1, 4);
        pr.maybe_update(5);
        pr.become_replicate();
        pr.sent_entries(9);
        assert!(!pr.maybe_decrease(5, 0), "a rejection of prev_index 5");
        assert_eq!((pr.mode, pr.next), (Mode::Replicate, 10));
    }

    /// The module's invariant `matched < next` holds whatever the hint of a
    /// probe's rejection says: a hint below the match point sends the next
    /// probe just past it, not below. Mutant PR8 (teeth, stop 55): dropping
    /// `.max(self.matched + 1)` in `maybe_decrease` survived every test.
    #[test]
    fn a_probe_hint_below_the_match_point_keeps_next_past_it() {
        let mut pr = Progress::new(10, 4);
        pr.maybe_update(5);
        pr.sent_entries(9);
        assert!(pr.maybe_decrease(9, 2));
        assert_eq!(pr.next, 6, "next probes from just past the match point 5");
    }

    #[test]
    fn replicate_rejection_falls_back_to_match() {
        let mut pr = Progress::new(1, 4);
        pr.maybe_update(5);
        pr.become_replicate();
        pr.sent_entries(9);
        assert!(!pr.maybe_decrease(4, 0), "stale");
        assert!(pr.maybe_decrease(7, 0));
        assert_eq!(pr.next, 6);
    }

    /// A successful probe switches to streaming from just past the new
    /// match point (Raft §5.3), not from where `next` stood: an answer
    /// acknowledging less than the probe's position (one to an earlier
    /// message) leaves entries between the two the follower may lack.
    /// Mutant M108 (teeth s61): `become_replicate` keeping `next` survived
    /// every `core::` test; the leader then streamed past a gap and lost a
    /// round trip to the follower's rejection.
    #[test]
    fn a_successful_probe_streams_from_just_past_the_match_point() {
        let mut pr = Progress::new(10, 4);
        pr.sent_entries(9);
        assert!(pr.maybe_update(5), "an acknowledgement of index 5");
        pr.become_replicate();
        assert_eq!((pr.mode, pr.next), (Mode::Replicate, 6));
        assert!(pr.inflights.is_empty());
    }

    /// Leaving a snapshot transfer resumes probing after the snapshot even
    /// before an acknowledgement raised `matched` to it (the module's
    /// contract, as etcd raft's `BecomeProbe`): the entries up to the
    /// snapshot are not offered again. Mutant M104 (teeth s61): `next =
    /// matched + 1` survived every `core::` test; today's callers raise
    /// `matched` first, so this pins the contract for the next one.
    #[test]
    fn leaving_a_snapshot_transfer_probes_past_the_snapshot() {
        let mut pr = Progress::new(1, 4);
        pr.maybe_update(3);
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(
            (pr.mode, pr.next, pr.pending_snapshot),
            (Mode::Probe, 21, 0)
        );
        assert!(!pr.is_paused());
    }
}
