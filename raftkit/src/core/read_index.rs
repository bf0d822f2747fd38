//! Linearizable reads by ReadIndex (Raft thesis §6.4), on the leader and,
//! through the leader, on followers (thesis §6.4.1).
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
//! A follower serves a read itself (thesis §6.4.1): it sends the leader a
//! [`Body::ReadIndexRequest`] carrying its context; the leader puts it in
//! the same rounds as its own reads (steps 1 to 3) and answers with the
//! read index; the follower hands that index out in a [`ReadState`], and
//! the runtime serves the read once the follower's own state machine has
//! applied it (step 4). The read point lies within the read's lifetime: the
//! request reached the leader after the read began, and the index was
//! confirmed after that.
//!
//! Many reads share one round: reads that arrive while a round is in flight
//! wait for the next one, which starts as soon as the current one completes.
//! A leader that steps down fails every pending read with `NotLeader` (its
//! followers' reads with a `None` answer). A follower fails its pending
//! reads when its term or role changes (a response from the old leader
//! then finds no pending context and is dropped, counted as
//! [`DropReason::UnknownReadContext`](super::DropReason::UnknownReadContext)),
//! and after [`FOLLOWER_READ_TIMEOUT_ELECTIONS`] election timeouts without
//! an answer (the request or its answer was lost): the caller retries; a
//! follower never answers with an index that was not confirmed by its
//! current leader.
//!
//! Invariants: rounds are numbered increasingly for the life of the node and a
//! round's reads are released only by acknowledgements of that round or a
//! later one; the leader holds at most [`MAX_REMOTE_READS`] followers' reads
//! (more are dropped and counted, so a hostile member cannot grow its
//! memory), and of those at most a fair share per member: the room divided
//! among the members other than the leader (stop 58: one member, a learner
//! is enough, kept the whole room full and every other follower's reads
//! were dropped). `remote` is the sum of `remote_by`.

use std::collections::{BTreeMap, VecDeque};

use super::message::Body;
use super::quorum;
use super::raft::{Raft, Role};
use super::ready::ReadState;
use super::types::{Index, NodeId};

/// The most followers' reads a leader holds at once.
pub const MAX_REMOTE_READS: usize = 1 << 16;

/// A follower fails a read the leader has not answered within this many
/// election timeouts.
pub const FOLLOWER_READ_TIMEOUT_ELECTIONS: u64 = 2;

/// Whose read a leader is confirming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// This node's own, answered in a [`ReadState`].
    Local(u64),
    /// A follower's (node, its context), answered with a message.
    Remote(NodeId, u64),
}

/// Pending reads of a leader, and a follower's reads waiting for its
/// leader's answer.
#[derive(Debug, Default)]
pub(super) struct ReadIndex {
    /// Arrived before the leader committed an entry of its term.
    waiting: Vec<Reader>,
    /// Waiting for the next round to start.
    queued: Vec<Reader>,
    /// Rounds in flight: (round, read index, readers).
    rounds: VecDeque<(u64, Index, Vec<Reader>)>,
    /// The last round number issued.
    round: u64,
    /// Followers' reads held by this leader.
    remote: usize,
    /// Followers' reads held by this leader, per follower (no zeros).
    remote_by: BTreeMap<NodeId, usize>,
    /// Follower: reads sent to the leader, with the tick they were sent at.
    forwarded: BTreeMap<u64, u64>,
}

impl ReadIndex {
    /// The latest round number issued (heartbeats carry it).
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// Issues the next round number.
    pub(super) fn next_round(&mut self) -> u64 {
        self.round += 1;
        self.round
    }

    /// Whether `ctx` is a read this follower forwarded and still waits for.
    pub(super) fn is_forwarded(&self, ctx: u64) -> bool {
        self.forwarded.contains_key(&ctx)
    }

    /// Removes every pending read: this node's own contexts, and the
    /// followers' reads as (node, context).
    fn take_all(&mut self) -> (Vec<u64>, Vec<(NodeId, u64)>) {
        let mut all = std::mem::take(&mut self.waiting);
        all.append(&mut self.queued);
        for (_, _, readers) in self.rounds.drain(..) {
            all.extend(readers);
        }
        self.remote = 0;
        self.remote_by.clear();
        let mut local: Vec<u64> = std::mem::take(&mut self.forwarded).into_keys().collect();
        let mut remote = Vec::new();
        for r in all {
            match r {
                Reader::Local(ctx) => local.push(ctx),
                Reader::Remote(from, ctx) => remote.push((from, ctx)),
            }
        }
        (local, remote)
    }
}

impl Raft {
    /// Requests a linearizable read identified by `ctx`. The answer arrives
    /// in a later [`Ready::reads`](super::Ready::reads): the index the state
    /// machine must have applied before the read is served, or an error if
    /// leadership was lost meanwhile.
    ///
    /// On the leader the read joins the next heartbeat round (thesis §6.4);
    /// on a follower that knows its leader it is forwarded to the leader
    /// (thesis §6.4.1). Other nodes answer [`NotLeader`](super::NotLeader)
    /// at once.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), super::NotLeader> {
        if self.role == Role::Follower && self.leader != super::types::NO_NODE {
            self.reads.forwarded.insert(ctx, self.ticks);
            let leader = self.leader;
            self.send(leader, Body::ReadIndexRequest { ctx });
            return Ok(());
        }
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
        self.enqueue_read(Reader::Local(ctx));
        Ok(())
    }

    fn enqueue_read(&mut self, reader: Reader) {
        let committed_in_term = self.committed_in_term();
        #[cfg(any(test, feature = "sim"))]
        let committed_in_term = committed_in_term || self.cfg.bugs.read_before_term_commit;
        if !committed_in_term {
            self.reads.waiting.push(reader);
        } else {
            self.reads.queued.push(reader);
            self.maybe_start_read_round();
        }
    }

    /// Leader: a follower's [`Body::ReadIndexRequest`] (admitted: from a
    /// member, at our term). Anyone else answers `None` at once.
    pub(super) fn handle_read_index_request(&mut self, from: NodeId, ctx: u64) {
        if self.role != Role::Leader {
            self.send(from, Body::ReadIndexResponse { ctx, index: None });
            return;
        }
        let held = self.reads.remote_by.get(&from).copied().unwrap_or(0);
        if self.reads.remote >= MAX_REMOTE_READS || held >= self.remote_read_share() {
            self.dropped.record(super::DropReason::ReadQueueFull);
            return;
        }
        self.reads.remote += 1;
        self.reads.remote_by.insert(from, held + 1);
        self.enqueue_read(Reader::Remote(from, ctx));
    }

    /// The most followers' reads the leader holds for one member: the room
    /// ([`MAX_REMOTE_READS`]) divided among the members other than itself
    /// (at least one read each).
    fn remote_read_share(&self) -> usize {
        let conf = &self.conf;
        // Counted without allocating (the members are bounded, MAX_MEMBERS).
        let voters = conf.voters.union(&conf.outgoing).count();
        let learners = conf
            .learners
            .iter()
            .filter(|id| !conf.is_voter(**id))
            .count();
        let others = voters
            .saturating_add(learners)
            .saturating_sub(usize::from(conf.contains(self.id)))
            .max(1);
        (MAX_REMOTE_READS / others).max(1)
    }

    /// Follower: the leader's answer to a forwarded read (admitted: from
    /// our leader, at our term, for a context we wait for).
    pub(super) fn handle_read_index_response(&mut self, ctx: u64, index: Option<Index>) {
        if self.reads.forwarded.remove(&ctx).is_none() {
            return;
        }
        let result = index.ok_or_else(|| self.not_leader());
        self.read_states.push(ReadState { ctx, result });
    }

    /// Follower: fails the forwarded reads the leader has not answered in
    /// time (called on every tick).
    pub(super) fn expire_forwarded_reads(&mut self) {
        if self.reads.forwarded.is_empty() {
            return;
        }
        let limit =
            u64::from(self.cfg.election_ticks).saturating_mul(FOLLOWER_READ_TIMEOUT_ELECTIONS);
        let now = self.ticks;
        let expired: Vec<u64> = self
            .reads
            .forwarded
            .iter()
            .filter(|(_, sent)| now.saturating_sub(**sent) >= limit)
            .map(|(ctx, _)| *ctx)
            .collect();
        let err = self.not_leader();
        for ctx in expired {
            self.reads.forwarded.remove(&ctx);
            self.read_states.push(ReadState {
                ctx,
                result: Err(err),
            });
        }
    }

    /// Fails every pending read (the node's role or term changed): its own
    /// with `NotLeader`, its followers' with a `None` answer.
    pub(super) fn fail_all_reads(&mut self) {
        let (local, remote) = self.reads.take_all();
        let err = self.not_leader();
        self.read_states
            .extend(local.into_iter().map(|ctx| ReadState {
                ctx,
                result: Err(err),
            }));
        for (to, ctx) in remote {
            self.send(to, Body::ReadIndexResponse { ctx, index: None });
        }
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
        let round = self.reads.round() + 1;
        let readers = std::mem::take(&mut self.reads.queued);
        self.reads
            .rounds
            .push_back((round, self.log.committed(), readers));
        self.heartbeat_round();
        self.check_read_quorum();
    }

    /// Releases every round a quorum has acknowledged.
    pub(super) fn check_read_quorum(&mut self) {
        self.update_lease();
        while let Some(&(round, index, _)) = self.reads.rounds.front() {
            let confirmed = quorum::is_quorum(&self.conf, |id| {
                self.progress
                    .get(&id)
                    .is_some_and(|p| p.read_round >= round)
            });
            if !confirmed {
                return;
            }
            let Some((_, _, readers)) = self.reads.rounds.pop_front() else {
                return;
            };
            for r in readers {
                match r {
                    Reader::Local(ctx) => self.read_states.push(ReadState {
                        ctx,
                        result: Ok(index),
                    }),
                    Reader::Remote(to, ctx) => {
                        self.reads.remote = self.reads.remote.saturating_sub(1);
                        if let Some(held) = self.reads.remote_by.get_mut(&to) {
                            *held = held.saturating_sub(1);
                            if *held == 0 {
                                self.reads.remote_by.remove(&to);
                            }
                        }
                        self.send(
                            to,
                            Body::ReadIndexResponse {
                                ctx,
                                index: Some(index),
                            },
                        );
                    }
                }
            }
        }
        self.maybe_start_read_round();
    }
}
