//! Linearizable reads by ReadIndex (Raft thesis §6.4).
//!
//! A read is served by the leader only when:
//! 1. the leader has committed an entry of its current term (so its commit
//!    index is at least that of any earlier leader); reads arriving before
//!    wait for it;
//! 2. the read index is set to the commit index at (or after) the read's
//!    arrival;
//! 3. a heartbeat round started after the read's arrival is acknowledged by
//!    a quorum, proving no newer leader existed at that moment;
//! 4. the runtime answers once the state machine has applied the read index.
//!
//! Many reads share one round: reads that arrive while a round is in flight
//! wait for the next one, which starts as soon as the current one completes.
//! A leader that steps down fails every pending read with `NotLeader`.
//!
//! Invariant: rounds are numbered increasingly for the life of the node and a
//! round's reads are released only by acknowledgements of that round or a
//! later one.

use std::collections::VecDeque;

use super::quorum;
use super::raft::{Raft, Role};
use super::ready::ReadState;
use super::types::Index;

/// Pending reads of a leader.
#[derive(Debug, Default)]
pub(super) struct ReadIndex {
    /// Arrived before the leader committed an entry of its term.
    waiting: Vec<u64>,
    /// Waiting for the next round to start.
    queued: Vec<u64>,
    /// Rounds in flight: (round, read index, contexts).
    rounds: VecDeque<(u64, Index, Vec<u64>)>,
    /// The last round number issued.
    round: u64,
}

impl ReadIndex {
    /// The latest round number issued (heartbeats carry it).
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// Removes every pending read, returning their contexts.
    pub(super) fn fail_all(&mut self) -> Vec<u64> {
        let mut out = std::mem::take(&mut self.waiting);
        out.append(&mut self.queued);
        for (_, _, ctxs) in self.rounds.drain(..) {
            out.extend(ctxs);
        }
        out
    }
}

impl Raft {
    /// Requests a linearizable read identified by `ctx`. The answer arrives
    /// in a later [`Ready::reads`](super::Ready::reads): the index the state
    /// machine must have applied before the read is served, or an error if
    /// leadership was lost meanwhile.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), super::NotLeader> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        #[cfg(any(test, feature = "sim"))]
        if self.cfg.bugs.read_without_heartbeat {
            let index = self.log.committed();
            self.read_states.push(ReadState {
                ctx,
                result: Ok(index),
            });
            return Ok(());
        }
        let committed_in_term = self.committed_in_term();
        #[cfg(any(test, feature = "sim"))]
        let committed_in_term = committed_in_term || self.cfg.bugs.read_before_term_commit;
        if !committed_in_term {
            self.reads.waiting.push(ctx);
        } else {
            self.reads.queued.push(ctx);
            self.maybe_start_read_round();
        }
        Ok(())
    }

    /// Whether the commit index is in the current term (thesis §6.4 step 1).
    pub(super) fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    /// Called when the commit index advances on the leader.
    pub(super) fn release_waiting_reads(&mut self) {
        if !self.reads.waiting.is_empty() && self.committed_in_term() {
            let waiting = std::mem::take(&mut self.reads.waiting);
            self.reads.queued.extend(waiting);
            self.maybe_start_read_round();
        }
    }

    fn maybe_start_read_round(&mut self) {
        if !self.reads.rounds.is_empty() || self.reads.queued.is_empty() {
            return;
        }
        self.reads.round += 1;
        let round = self.reads.round;
        let ctxs = std::mem::take(&mut self.reads.queued);
        self.reads
            .rounds
            .push_back((round, self.log.committed(), ctxs));
        if let Some(me) = self.progress.get_mut(&self.id) {
            me.read_round = round;
        }
        self.broadcast_heartbeat();
        self.check_read_quorum();
    }

    /// Releases every round a quorum has acknowledged.
    pub(super) fn check_read_quorum(&mut self) {
        while let Some(&(round, index, _)) = self.reads.rounds.front() {
            let confirmed = quorum::is_quorum(&self.conf, |id| {
                self.progress
                    .get(&id)
                    .is_some_and(|p| p.read_round >= round)
            });
            if !confirmed {
                return;
            }
            if let Some((_, _, ctxs)) = self.reads.rounds.pop_front() {
                self.read_states
                    .extend(ctxs.into_iter().map(|ctx| ReadState {
                        ctx,
                        result: Ok(index),
                    }));
            }
        }
        self.maybe_start_read_round();
    }
}
