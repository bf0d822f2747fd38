//! The bounded outbound queue of one peer link ([`super::quic`]).
//!
//! # Invariants
//!
//! - At most `cap` Raft messages are queued; past it the oldest is dropped
//!   and counted (Raft tolerates lost messages, and a slow peer never
//!   blocks the node that sends to it).
//! - At most one unsent heartbeat per sender and group: a newer one
//!   replaces it (it carries everything the older one did).
//! - At most one unsent coalesced heartbeat (the latest wins), and at most
//!   [`MAX_QUEUED_CONTROL`] membership queries and answers (past it new
//!   ones are dropped: the asker asks again).

use std::collections::VecDeque;

use crate::core::{Body, Message};

use super::frame::PeerFrame;

/// The bounded outbound queue of one peer.
#[derive(Debug)]
pub(crate) struct OutQueue {
    /// Messages with their group (`None`: the node's only group).
    msgs: VecDeque<(Option<u64>, Message)>,
    cap: usize,
    /// Heartbeats replaced by a newer one before being sent.
    superseded: u64,
    /// Messages dropped because the queue was full (not yet reported).
    overflowed: u64,
    /// The latest coalesced heartbeat not yet sent (a newer one replaces
    /// it).
    coalesced: Option<Vec<(u64, u64, u64)>>,
    /// Membership queries and answers not yet sent (at most
    /// [`MAX_QUEUED_CONTROL`]; past it new ones are dropped: the asker asks
    /// again).
    control: Vec<PeerFrame>,
}

/// The most membership queries and answers queued for one peer.
const MAX_QUEUED_CONTROL: usize = 256;

impl OutQueue {
    pub(crate) fn new(cap: usize) -> OutQueue {
        OutQueue {
            msgs: VecDeque::new(),
            cap: cap.max(1),
            superseded: 0,
            overflowed: 0,
            coalesced: None,
            control: Vec::new(),
        }
    }

    /// Queues a membership query or answer (dropped past
    /// [`MAX_QUEUED_CONTROL`]). Whether it was queued.
    pub(crate) fn push_control(&mut self, frame: PeerFrame) -> bool {
        if self.control.len() >= MAX_QUEUED_CONTROL {
            return false;
        }
        self.control.push(frame);
        true
    }

    /// Takes the membership queries and answers waiting to be sent.
    pub(crate) fn take_control(&mut self) -> Vec<PeerFrame> {
        std::mem::take(&mut self.control)
    }

    /// Queues `msg` of the node's only group.
    #[cfg(test)]
    pub(crate) fn push(&mut self, msg: Message) {
        self.push_tagged(None, msg);
    }

    /// Queues `msg` of `group` (`None`: the node's only group): a heartbeat
    /// replaces any unsent heartbeat from the same sender and group; past
    /// the capacity the oldest message is dropped.
    pub(crate) fn push_tagged(&mut self, group: Option<u64>, msg: Message) {
        if matches!(msg.body, Body::Heartbeat { .. }) {
            let before = self.msgs.len();
            self.msgs.retain(|(g, m)| {
                !(matches!(m.body, Body::Heartbeat { .. }) && m.from == msg.from && *g == group)
            });
            self.superseded += (before - self.msgs.len()) as u64;
        }
        while self.msgs.len() >= self.cap {
            self.msgs.pop_front();
            self.overflowed += 1;
        }
        self.msgs.push_back((group, msg));
    }

    /// Takes everything queued, oldest first.
    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> Vec<Message> {
        self.msgs.drain(..).map(|(_, m)| m).collect()
    }

    /// Takes everything queued with its group, oldest first.
    pub(crate) fn drain_tagged(&mut self) -> Vec<(Option<u64>, Message)> {
        self.msgs.drain(..).collect()
    }

    /// Replaces the coalesced heartbeat waiting to be sent.
    pub(crate) fn set_coalesced(&mut self, quiesced: Vec<(u64, u64, u64)>) {
        self.coalesced = Some(quiesced);
    }

    /// Takes the coalesced heartbeat waiting to be sent, if any.
    pub(crate) fn take_coalesced(&mut self) -> Option<Vec<(u64, u64, u64)>> {
        self.coalesced.take()
    }

    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    /// How many messages overflowed since the last call.
    pub(crate) fn take_overflowed(&mut self) -> u64 {
        std::mem::take(&mut self.overflowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::NodeId;

    fn hb(from: NodeId, round: u64) -> Message {
        Message {
            from,
            to: 9,
            term: 1,
            body: Body::Heartbeat { commit: 0, round },
        }
    }

    fn vote(from: NodeId) -> Message {
        Message {
            from,
            to: 9,
            term: 1,
            body: Body::TimeoutNow,
        }
    }

    #[test]
    fn newer_heartbeat_supersedes_unsent_one() {
        let mut q = OutQueue::new(16);
        q.push(hb(1, 1));
        q.push(vote(1));
        q.push(hb(1, 2));
        q.push(hb(1, 3));
        let got = q.drain();
        assert_eq!(got, vec![vote(1), hb(1, 3)]);
        assert_eq!(q.superseded, 2);
        // Nothing left: a heartbeat after a drain is queued afresh.
        q.push(hb(1, 4));
        assert_eq!(q.drain(), vec![hb(1, 4)]);
    }

    #[test]
    fn full_queue_drops_oldest() {
        let mut q = OutQueue::new(3);
        for i in 0..5 {
            q.push(Message { term: i, ..vote(1) });
        }
        let terms: Vec<_> = q.drain().iter().map(|m| m.term).collect();
        assert_eq!(terms, vec![2, 3, 4]);
        assert_eq!(q.take_overflowed(), 2);
        assert_eq!(q.take_overflowed(), 0);
    }

    #[test]
    fn a_heartbeat_supersedes_only_its_own_senders_and_groups() {
        let mut q = OutQueue::new(16);
        q.push_tagged(None, hb(1, 1));
        q.push_tagged(Some(7), hb(1, 2));
        q.push_tagged(Some(8), hb(1, 3));
        q.push_tagged(Some(7), hb(2, 4));
        // A newer heartbeat of sender 1 in group 7: only that one goes.
        q.push_tagged(Some(7), hb(1, 5));
        assert_eq!(
            q.drain_tagged(),
            vec![
                (None, hb(1, 1)),
                (Some(8), hb(1, 3)),
                (Some(7), hb(2, 4)),
                (Some(7), hb(1, 5)),
            ]
        );
        assert_eq!(q.superseded, 1);
    }

    #[test]
    fn membership_control_frames_are_capped() {
        let mut q = OutQueue::new(1);
        for group in 0..MAX_QUEUED_CONTROL as u64 {
            assert!(q.push_control(PeerFrame::MemberQuery { group }));
        }
        assert!(
            !q.push_control(PeerFrame::MemberQuery { group: 999 }),
            "past the cap"
        );
        let taken = q.take_control();
        assert_eq!(taken.len(), MAX_QUEUED_CONTROL);
        assert_eq!(taken.first(), Some(&PeerFrame::MemberQuery { group: 0 }));
        // Taken: room again.
        assert!(q.push_control(PeerFrame::MemberQuery { group: 1 }));
    }
}
