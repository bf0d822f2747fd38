//! Log replication and commitment (Raft §5.3, §5.4.2), heartbeats (§5.2).
//!
//! The leader streams entries to each follower according to its
//! [`Progress`](super::progress::Progress) mode: one probe at a time until
//! the match point is found (using the follower's conflict hint to skip a
//! whole term per round trip), then pipelined batches within a bounded
//! window. Heartbeats carry `min(follower's match, commit)`, a commit index
//! the follower is known to hold the entries for.
//!
//! Invariants:
//! - the leader commits an index only when a quorum (of both halves of a
//!   joint configuration) holds it **and** it belongs to the leader's term
//!   (§5.4.2); earlier entries commit with it;
//! - the leader counts itself only for entries durable on its own disk;
//! - a follower never truncates a committed entry, and a stale or duplicated
//!   AppendEntries never truncates anything;
//! - an AppendEntries carries at most `max_batch_bytes` of entries (at least
//!   one) and at most [`MAX_ENTRIES_PER_APPEND`] entries: batching (thesis
//!   §10.2.1) stops at whichever comes first. Receivers refuse a message of
//!   more entries (the transport before decoding it, `inbound` after), so
//!   a correct leader never sends one;
//! - retries driven by heartbeat answers (a probe or window slot freed,
//!   Raft §5.3's retry of lost AppendEntries) happen at most once per
//!   heartbeat interval per follower (`Progress::resend_due`), however
//!   many read rounds (thesis §6.4) it answers; replication driven by
//!   append answers is not paced;
//! - follower flow control: while the runtime has paused handing out
//!   committed entries ([`Raft::set_apply_paused`]: its state machine is
//!   behind by its apply bound, or halted), a follower takes in no entry
//!   past its last index. An AppendEntries that would bring one is dropped
//!   unanswered, exactly as if lost: Raft §5.3 lets a follower ignore an
//!   RPC, the leader retries AppendEntries until it succeeds. No wire
//!   change, so a leader of any version copes. The leader's retries stay
//!   paced: the window it had in flight goes unanswered, a heartbeat
//!   answer frees a slot (`inflights.free_first`) and the append sent past
//!   the follower's log is refused, so the leader probes, one message per
//!   heartbeat interval (`probe_sent`, cleared by at most one heartbeat
//!   answer per interval: `Progress::resend_due`, since read rounds bring
//!   an answer about once per round trip); once the follower's apply
//!   caught up (the runtime unpauses at half its bound) the next probe is
//!   taken in and streaming resumes, within a heartbeat interval. Appends
//!   that add nothing new (all their entries held, or none) are handled as
//!   always, and heartbeats raise the commit index only to what the leader
//!   knows the follower holds, so a paused follower still learns its
//!   commit index. Answering "success" at a lower index instead would not
//!   do: the leader would send the rest again at once, a tight loop. Hence
//!   the bound on a follower's unapplied log: the runtime's apply bound
//!   plus at most what the leader had in flight to it when the pause began
//!   (`max_inflight` messages of at most `max_batch_bytes`). Committing
//!   elsewhere is unaffected: the other followers make the quorum.

use super::message::{Body, MAX_ENTRIES_PER_APPEND, Message};
use super::progress::Mode;
use super::quorum;
use super::raft::{Raft, Role};
use super::types::{Index, NodeId, Payload};

impl Raft {
    /// Sends entries (or a probe) to every other member.
    pub(super) fn broadcast_append(&mut self) {
        // Peer by peer in id order, looked up after each send (which needs
        // `&mut self`): no list of the peers is built per proposal.
        let mut after = None;
        while let Some(id) = match after {
            None => self.progress.keys().next().copied(),
            Some(prev) => self
                .progress
                .range((std::ops::Bound::Excluded(prev), std::ops::Bound::Unbounded))
                .next()
                .map(|(&id, _)| id),
        } {
            after = Some(id);
            if id != self.id {
                self.send_append_all(id, false);
            }
        }
    }

    /// Sends as many AppendEntries to `to` as its flow control allows; with
    /// `probe`, sends one even when there are no new entries.
    pub(super) fn send_append_all(&mut self, to: NodeId, probe: bool) {
        let mut allow_empty = probe;
        while self.send_append(to, allow_empty) {
            allow_empty = false;
        }
    }

    /// Sends one AppendEntries to `to`. Returns whether it carried entries
    /// and more may follow.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let last = self.log.last_index();
        let committed = self.log.committed();
        let max_bytes = self.cfg.max_batch_bytes;
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let prev_index = pr.next - 1;
        // At most MAX_ENTRIES_PER_APPEND entries, whatever the bytes allow
        // (receivers refuse more; see the module's invariants).
        let hi = (last + 1).min(pr.next.saturating_add(MAX_ENTRIES_PER_APPEND as Index));
        let (Some(prev_term), Some(entries)) = (
            self.log.term(prev_index),
            self.log.slice(pr.next, hi, max_bytes),
        ) else {
            // Raft §7: the follower needs entries we have compacted.
            self.send_snapshot(to);
            return false;
        };
        // A follower in probe mode gets its probe even with nothing to
        // send: a member a configuration just added (its `next` is past
        // the log) is probed in the step that appends the configuration
        // (thesis §4.1: the leader uses it from then on; §4.2.1: its
        // catch-up starts), not a heartbeat interval later.
        if entries.is_empty() && !(allow_empty || pr.mode == Mode::Probe) {
            return false;
        }
        let sent_last = prev_index + entries.len() as Index;
        let has_entries = !entries.is_empty();
        if has_entries || pr.mode == Mode::Probe {
            pr.sent_entries(sent_last);
        }
        self.send(
            to,
            Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit: committed,
            },
        );
        has_entries && sent_last < last
    }

    /// Sends a heartbeat to every other member, carrying the latest read
    /// confirmation round. Followers receiving a snapshot get its current
    /// chunk again, so a lost chunk does not stall the transfer.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.forget_departed_sends();
        let round = self.reads.round();
        let committed = self.log.committed();
        let peers: Vec<(NodeId, Index, Mode)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(&id, p)| (id, p.matched, p.mode))
            .collect();
        for (id, matched, mode) in peers {
            let commit = matched.min(committed);
            #[cfg(any(test, feature = "sim"))]
            let commit = if self.cfg.bugs.heartbeat_commit_uncapped {
                committed
            } else {
                commit
            };
            self.send(id, Body::Heartbeat { commit, round });
            if mode == Mode::Snapshot {
                self.resend_snapshot_chunk(id);
            }
        }
    }

    /// Follower: Raft §5.3 receiver rules for AppendEntries.
    pub(super) fn handle_append(&mut self, m: Message) {
        let Body::AppendEntries {
            prev_index,
            prev_term,
            entries,
            commit,
        } = m.body
        else {
            return;
        };
        self.known_leader_commit = self
            .known_leader_commit
            .max(commit.min(super::inbound::MAX_INDEX));
        let committed = self.log.committed();
        if prev_index < committed {
            // Everything up to our commit index already matches the leader
            // (Leader Completeness); tell it where to continue.
            self.send(
                m.from,
                Body::AppendEntriesResponse {
                    index: committed,
                    success: true,
                    hint: None,
                },
            );
            return;
        }
        if self.log.matches(prev_index, prev_term) {
            if self.apply_paused && self.would_extend_log(prev_index, &entries) {
                // Follower flow control (module docs): the state machine is
                // behind by the runtime's apply bound, so entries past our
                // last index are not taken in. The message is dropped
                // unanswered, as if lost (Raft §5.3: the leader retries
                // AppendEntries indefinitely); the leader probes again at
                // its next heartbeat answer, once we have room.
                return;
            }
            let has_config = entries
                .iter()
                .any(|e| matches!(e.payload, Payload::Config(_)));
            #[cfg(any(test, feature = "sim"))]
            let cursors = self.log.storage_cursors();
            let (last_new, truncated) = self.log.append_after(prev_index, entries);
            #[cfg(any(test, feature = "sim"))]
            if truncated && self.cfg.bugs.truncation_not_persisted {
                self.log.forget_truncation(cursors);
            }
            if has_config || truncated {
                self.on_config_changed();
            }
            // Figure 2: commitIndex = min(leaderCommit, index of last new entry).
            self.log.commit_to(commit.min(last_new));
            self.send(
                m.from,
                Body::AppendEntriesResponse {
                    index: last_new,
                    success: true,
                    hint: None,
                },
            );
        } else {
            // Fast backtracking: the largest index at or below the probe
            // whose term is at most the leader's prev_term.
            let hint = self.log.find_conflict_by_term(prev_index, prev_term);
            self.send(
                m.from,
                Body::AppendEntriesResponse {
                    index: prev_index,
                    success: false,
                    hint: Some(hint),
                },
            );
        }
    }

    /// Whether appending `entries` after `prev_index` (which matches) would
    /// leave the log longer than it is: some entry lies past our last
    /// index. An append whose entries all fall within the log (already
    /// held, or conflicting ones that replace held ones) does not.
    fn would_extend_log(&self, prev_index: Index, entries: &[super::types::Entry]) -> bool {
        let sent_last = prev_index.saturating_add(entries.len() as Index);
        sent_last > self.log.last_index()
    }

    /// Leader: an answer to AppendEntries.
    pub(super) fn handle_append_response(&mut self, m: Message) {
        let Body::AppendEntriesResponse {
            index,
            success,
            hint,
        } = m.body
        else {
            return;
        };
        if self.role != Role::Leader {
            return;
        }
        let from = m.from;
        let match_hint = match hint {
            Some((hi, ht)) => self.log.find_conflict_by_term(hi, ht).0,
            None => index.saturating_sub(1),
        };
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !success {
            if pr.maybe_decrease(index, match_hint) {
                if pr.mode == Mode::Replicate {
                    pr.become_probe();
                }
                self.send_append_all(from, true);
            }
            return;
        }
        let updated = pr.maybe_update(index);
        pr.on_ack(last, self.ticks);
        if updated {
            match pr.mode {
                Mode::Probe => pr.become_replicate(),
                Mode::Replicate => pr.inflights.free_to(index),
                Mode::Snapshot => {
                    if pr.matched >= pr.pending_snapshot {
                        // Caught up by appends (etcd raft does the same):
                        // the transfer and the data it pinned go too.
                        pr.become_probe();
                        self.snapshots.end_send(from);
                    }
                }
            }
            let caught_up = pr.matched == last;
            if self.maybe_commit() {
                // Send whatever the flow control now admits. No empty
                // append goes out just to carry the new commit index (etcd
                // raft sends one): followers learn it from the next append
                // or heartbeat (both carry it), which saves two messages per
                // commit round when CPU bounds throughput. A follower's apply
                // lags by at most a heartbeat interval when writes stop:
                // reads are served by the leader and do not see it; a watch
                // served by a follower may deliver that last change up to a
                // heartbeat interval later.
                self.broadcast_append();
            }
            if caught_up && self.transfer_target == Some(from) {
                self.send(from, Body::TimeoutNow);
            }
        } else if pr.mode == Mode::Replicate {
            pr.inflights.free_to(index);
        }
        self.send_append_all(from, false);
    }

    /// Follower: a heartbeat raises the commit index to what the leader
    /// knows this follower holds, and is echoed with its read round.
    pub(super) fn handle_heartbeat(&mut self, m: Message) {
        let Body::Heartbeat { commit, round } = m.body else {
            return;
        };
        self.known_leader_commit = self
            .known_leader_commit
            .max(commit.min(super::inbound::MAX_INDEX));
        self.log.commit_to(commit);
        self.send(m.from, Body::HeartbeatResponse { round });
    }

    /// Leader: a heartbeat answer proves the follower still follows us.
    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.read_round = pr.read_round.max(round);
        pr.on_ack(last, self.ticks);
        // Thesis §3.10: resend TimeoutNow to a caught-up transfer target on
        // each heartbeat answer. A target that restarted since its last ack
        // knows no leader of this term and drops the TimeoutNow that
        // `transfer_leadership` sent at once (inbound admission); the
        // heartbeat it answers made it learn us, so this one is obeyed
        // (review s57, core2 #3). A duplicate reaches a target that already
        // campaigned at a higher term and is dropped there.
        let transfer_due = self.transfer_target == Some(from) && pr.matched == last;
        // At most one retry per heartbeat interval (`Progress::resend_due`):
        // read rounds bring answers about once per round trip.
        let interval_start = self.ticks.saturating_sub(u64::from(self.heartbeat_elapsed));
        if pr.resend_due(interval_start) {
            // Raft §5.3: the leader retries AppendEntries until the follower
            // stores every entry. The probe in flight, if any, or the oldest
            // message of a full window may have been lost: make room for one
            // more, whose rejection (if there is a gap) restarts probing.
            pr.probe_sent = false;
            if pr.mode == Mode::Replicate && pr.inflights.is_full() {
                pr.inflights.free_first();
            }
            if pr.matched < last {
                // In replicate mode `next` may already be past entries that
                // were lost: send even an empty append (at the optimistic
                // position) so that the follower's rejection restarts
                // probing from its match point.
                pr.resent_at = Some(self.ticks);
                self.send_append_all(from, true);
            }
        }
        if transfer_due {
            self.send(from, Body::TimeoutNow);
        }
        self.check_read_quorum();
    }

    /// Raft §5.4.2: advance the commit index to the largest index held by a
    /// quorum, but only if that entry is of the current term. Returns whether
    /// it advanced.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let index = quorum::committed_index(&self.conf, |id| {
            self.progress.get(&id).map_or(0, |p| p.matched)
        });
        #[cfg(any(test, feature = "sim"))]
        let index = if self.cfg.bugs.joint_commit_on_new_voters {
            quorum::majority_index(&self.conf.voters, |id| {
                self.progress.get(&id).map_or(0, |p| p.matched)
            })
        } else {
            index
        };
        if index <= self.log.committed() || index == Index::MAX {
            return false;
        }
        let current_term = self.log.term(index) == Some(self.term);
        #[cfg(any(test, feature = "sim"))]
        let current_term = current_term || self.cfg.bugs.commit_old_terms;
        if !current_term {
            return false;
        }
        self.log.commit_to(index);
        self.on_commit_advanced();
        true
    }
}
