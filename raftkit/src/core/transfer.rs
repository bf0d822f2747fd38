//! Leadership transfer (Raft thesis §3.10).
//!
//! The leader stops accepting proposals, brings the target's log up to date,
//! then sends it `TimeoutNow`; the target campaigns at once, skipping
//! PreVote, with a [`Body::TransferVote`] naming the leader that ordered it
//! (the sender of the TimeoutNow, which `inbound` admits only from the
//! leader of the target's term, at that term). A transfer that does not
//! complete within an election timeout is abandoned (see `election`).
//!
//! # Which transfer votes override a lease
//!
//! A voter inside a lease (it leads, or heard its leader within an
//! election timeout, or is in its startup lease: thesis §4.2.3, §6.4.1)
//! ignores vote requests; a transfer vote overrides that
//! (`Raft::transfer_overrides_lease`) only when
//!
//! - it comes one term above the voter's: the honest target was at its
//!   leader's term, which a voter in that leader's lease is at, and
//!   campaigns at the next one (review s58, finding 2); and
//! - it names as the ordering leader the voter's own leader of that term
//!   (`term_leader`, which a voter knows from that leader's messages, or
//!   is, when it leads).
//!
//! So only the leader whose lease is at stake can lift it, which is what
//! the leader gives up when it starts a transfer (`lease`, "What voids a
//! lease"). A node that followed someone else at that term (a demoted or
//! removed voter its stale configuration still lists, or a learner that
//! wrote its own promotion: module docs of `inbound`) and obeys its
//! TimeoutNow names that node, and voters in the real leader's lease
//! refuse it as an ordinary vote request (review s59, finding 1; stop 59).
//! A voter that knows no leader of its term (restarted, or it learnt the
//! term from a vote) refuses every transfer vote inside its startup lease:
//! the honest transfer then needs the other voters' grants; nothing
//! retries it (with 3 voters the old leader's grant and the target's own
//! make a majority; with 5 whose other 3 just restarted, the transfer
//! fails and the cluster elects normally after an election timeout, review
//! s60 core #2).
//!
//! # Mixed versions
//!
//! A peer of an earlier binary neither sends nor understands a
//! `TransferVote`: the transport sends it the earlier form,
//! [`Body::RequestVote`] with `transfer` set ([`Body::legacy_form`];
//! `transport::peer_features`), and a transfer vote in that form, which
//! names nobody, keeps the earlier rule: it overrides a lease one term up,
//! whoever ordered it. That is the limit of a cluster that is not wholly
//! upgraded: the holes above stay open for a candidate of the earlier
//! binary, and for one whose link to the voter came up to a voter of the
//! earlier binary (the feature is learnt per link, at its hello) —
//! `tests::non_voters::mixed_version_legacy_transfer_vote_keeps_the_earlier_rule`.
//!
//! Invariants:
//! - a transfer is timed on its own clock (`transfer_elapsed`), started when
//!   the transfer starts; it never touches `election_elapsed`, the clock
//!   CheckQuorum runs on (thesis §6.2), so transfers asked for more often
//!   than every election timeout cannot keep a leader without a quorum in
//!   office;
//! - asking again for the transfer in progress (same target) does not
//!   restart its clock: it is abandoned an election timeout after it was
//!   first asked for, and the leader takes proposals again; a transfer to
//!   another target is a new transfer, with a new election timeout;
//! - this core sends transfer votes only as [`Body::TransferVote`], naming
//!   the sender of the TimeoutNow that started the campaign.

use super::message::{Body, Message};
use super::raft::{Raft, Role};
use super::types::{NO_NODE, NodeId};

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node is not the leader.
    #[error(transparent)]
    NotLeader(#[from] super::NotLeader),
    /// The target is not a voter of the configuration in force.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
}

impl Raft {
    /// Starts transferring leadership to `to` (thesis §3.10). Transferring
    /// to itself is a no-op; asking again for the transfer in progress
    /// sends the target what it needs again but does not extend the
    /// transfer's election timeout.
    ///
    /// A target that first followed this leader in this term before it
    /// held the configuration that made this leader a voter (a promotion
    /// it missed, thesis §4.1) drops the TimeoutNow for the rest of the
    /// term (`DropReason::TimeoutNowNotFromLeader`; see the `inbound`
    /// module docs: a learner can write such a configuration itself). The
    /// transfer is then abandoned after an election timeout, proposals
    /// being refused meanwhile ([`ProposeError::Transferring`]): choose
    /// another target, or retry in a later term.
    ///
    /// [`ProposeError::Transferring`]: super::ProposeError::Transferring
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(self.not_leader().into());
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) {
            return Err(TransferError::NotVoter(to));
        }
        if self.transfer_target != Some(to) {
            self.transfer_target = Some(to);
            self.transfer_elapsed = 0;
        }
        // The target's campaign is granted inside leases (§3.10).
        self.lease.revoke();
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, Body::TimeoutNow);
        } else {
            self.send_append_all(to, true);
        }
        Ok(())
    }

    /// Whether the vote request `m`, at a term above this node's, is a
    /// transfer vote that lifts this node's lease (module docs): one term
    /// up, and a [`Body::TransferVote`] naming this node's leader of its
    /// term, or the earlier form (a [`Body::RequestVote`] with `transfer`,
    /// from a peer of an earlier binary), which names nobody and keeps the
    /// earlier rule ("Mixed versions").
    pub(super) fn transfer_overrides_lease(&self, m: &Message) -> bool {
        if m.term != self.term.saturating_add(1) {
            return false;
        }
        match m.body {
            Body::TransferVote { leader, .. } => leader != NO_NODE && leader == self.term_leader,
            Body::RequestVote { transfer, .. } => transfer,
            _ => false,
        }
    }

    /// Gives up leadership for good because this node's storage failed
    /// (DESIGN §4: never retry after a failed fsync; §6: a node whose
    /// storage failed acknowledges nothing more). The core is marked
    /// halted, so it never campaigns again, not even when a later leader
    /// sends it a TimeoutNow (it never leads again until restarted), and
    /// steps down at once. It would still vote and take in entries if it
    /// were stepped: what keeps a node whose storage failed from voting or
    /// acknowledging is that its runtime steps, ticks and persists nothing
    /// more (`runtime::node`, `NodeTask::fail`), and that no write of it
    /// can become durable.
    ///
    /// If it led, the returned `TimeoutNow` hands leadership over (thesis
    /// §3.10): the target campaigns at once, without waiting out its
    /// election timeout, and the others grant it their votes if its log is
    /// as up to date as theirs (§5.4.1; otherwise the election fails and
    /// the cluster elects a leader after an election timeout, as it would
    /// have anyway). The target is the voter ranked first by, in order:
    ///
    /// 1. holding every entry this leader knows committed (its `matched`
    ///    at or past the commit index): such a voter can win;
    /// 2. the highest `matched`: a voter further ahead wins any election
    ///    one behind it would lose to it (§5.4.1); right after an
    ///    election, before any follower answered in this term, every
    ///    `matched` is 0 and no voter passes rule 1; one is chosen anyway,
    ///    since only the election decides whether it may lead (§5.4.1),
    ///    and a failed election costs no more than no hand-over (review
    ///    s61, 2a);
    /// 3. among equals, being the target of a leadership transfer in
    ///    flight ([`Raft::transfer_leadership`]): where an operator wanted
    ///    leadership to go (it breaks ties only: ranked above a voter
    ///    further ahead, it could lose the election that voter would win,
    ///    review s62 failure M1);
    /// 4. a hash of this core's seed ([`Config::seed`](super::Config::seed),
    ///    distinct per group in the runtime), its term and the voter's id:
    ///    deterministic, and spreading the leaderships of the many groups
    ///    a failed multi-group node led over their voters, where the
    ///    lowest id would pile them on one node (review s61, 2c).
    ///
    /// Unlike [`Raft::transfer_leadership`] it does not first bring the
    /// target up to date, which would need the responses this node no
    /// longer steps.
    ///
    /// The caller sends the message itself: no [`Ready`](super::Ready) of a
    /// core whose storage failed may be taken (its writes could never be
    /// made durable). The message claims nothing durable: its term was
    /// durable before this node led. `None` when this node did not lead,
    /// or no other voter is known.
    pub fn abdicate(&mut self) -> Option<Message> {
        self.halted = true;
        if self.role != Role::Leader {
            if self.role != Role::Follower {
                // A campaign under way stops.
                self.become_follower(self.term, NO_NODE);
            }
            return None;
        }
        let target = self.handover_target();
        // The target's campaign is granted inside leases (§3.10); this
        // node serves no read again.
        self.lease.revoke();
        let term = self.term;
        self.become_follower(term, NO_NODE);
        target.map(|to| Message {
            from: self.id,
            to,
            term,
            body: Body::TimeoutNow,
        })
    }

    /// The voter [`Raft::abdicate`] hands leadership to (its rules 1-4).
    fn handover_target(&self) -> Option<NodeId> {
        let committed = self.log.committed();
        let operator = self.transfer_target;
        self.progress
            .iter()
            .filter(|(id, _)| **id != self.id && self.conf.is_voter(**id))
            .max_by_key(|(id, p)| {
                let holds_committed = p.matched >= committed;
                (
                    holds_committed,
                    p.matched,
                    operator == Some(**id),
                    self.tie_rank(**id),
                )
            })
            .map(|(id, _)| *id)
    }

    /// Rule 4 of [`Raft::abdicate`]: a hash of this core's seed, its term
    /// and `id`.
    fn tie_rank(&self, id: NodeId) -> u64 {
        use std::hash::BuildHasher;
        crate::word_hash::WordHashing.hash_one((self.cfg.seed, self.term, id))
    }

    /// The target of a transfer campaigns immediately.
    pub(super) fn handle_timeout_now(&mut self) {
        if self.role != Role::Leader {
            self.campaign(true);
        }
    }
}
