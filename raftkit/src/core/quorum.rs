//! Quorum arithmetic for simple and joint configurations.
//!
//! A simple configuration decides by a majority of its voters. A joint
//! configuration (Raft thesis §4.3) decides only when a majority of the
//! incoming voters **and** a majority of the outgoing voters agree. Every
//! commit and election decision in the core goes through this module, so
//! joint consensus holds everywhere at once.
//!
//! Invariant: an empty voter set never blocks a decision (it is the absent
//! half of a non-joint configuration).

use std::collections::BTreeSet;

use super::types::{Configuration, Index, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

/// The largest index that a majority of `voters` have reached, given each
/// voter's acknowledged index. An empty set yields `Index::MAX`.
pub fn majority_index(voters: &BTreeSet<NodeId>, acked: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    // With n voters, the (n/2 + 1)-th largest is held by a majority. Runs
    // at every acknowledgement a leader takes in: up to `INLINE` voters
    // (every usual cluster) the indexes are sorted on the stack.
    const INLINE: usize = 16;
    let median = |acks: &mut [Index]| {
        acks.sort_unstable_by(|a, b| b.cmp(a));
        acks[acks.len() / 2]
    };
    if voters.len() <= INLINE {
        let mut acks = [0; INLINE];
        for (slot, &v) in acks.iter_mut().zip(voters) {
            *slot = acked(v);
        }
        median(&mut acks[..voters.len()])
    } else {
        median(&mut voters.iter().map(|&v| acked(v)).collect::<Vec<_>>())
    }
}

/// The largest index acknowledged by a quorum of `conf` (both halves when
/// joint).
pub fn committed_index(conf: &Configuration, acked: impl Fn(NodeId) -> Index) -> Index {
    let incoming = majority_index(&conf.voters, &acked);
    let outgoing = majority_index(&conf.outgoing, &acked);
    incoming.min(outgoing)
}

/// Counts votes of a simple majority.
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &v in voters {
        match vote(v) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let need = voters.len() / 2 + 1;
    if yes >= need {
        VoteResult::Won
    } else if yes + missing >= need {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts votes in `conf`: won only when both halves are won, lost as soon
/// as either half is lost.
pub fn vote_result(conf: &Configuration, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let a = majority_vote(&conf.voters, &vote);
    let b = majority_vote(&conf.outgoing, &vote);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Whether the set of nodes for which `active` holds forms a quorum of
/// `conf`.
pub fn is_quorum(conf: &Configuration, active: impl Fn(NodeId) -> bool) -> bool {
    vote_result(conf, |id| Some(active(id))) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majority_index_picks_the_median_held_by_a_majority() {
        let acked = |id: NodeId| [0, 5, 3, 9, 1, 7][id as usize];
        assert_eq!(majority_index(&set(&[1, 2, 3]), acked), 5);
        assert_eq!(majority_index(&set(&[1, 2, 3, 4]), acked), 3);
        assert_eq!(majority_index(&set(&[1, 2, 3, 4, 5]), acked), 5);
        assert_eq!(majority_index(&set(&[3]), acked), 9);
        assert_eq!(majority_index(&set(&[]), acked), Index::MAX);
        // Past the stack buffer's 16 voters: the same rule.
        let many: Vec<NodeId> = (1..=17).collect();
        assert_eq!(majority_index(&set(&many), |id| id * 10), 90);
        let sixteen: Vec<NodeId> = (1..=16).collect();
        assert_eq!(majority_index(&set(&sixteen), |id| id * 10), 80);
    }

    /// Raft §5.2: a candidate wins with the votes of a majority, and half of
    /// an even number of voters is not one (nor is it a quorum of either
    /// half of a joint configuration, thesis §4.3).
    #[test]
    fn half_of_an_even_voter_set_is_not_a_majority() {
        let four = set(&[1, 2, 3, 4]);
        let granted = |ids: &'static [NodeId]| move |id| Some(ids.contains(&id));
        assert_eq!(
            majority_vote(&four, granted(&[1, 2])),
            VoteResult::Lost,
            "2 of 4 granted, 2 refused"
        );
        assert_eq!(
            majority_vote(&four, |id| (id <= 2).then_some(true)),
            VoteResult::Pending,
            "2 of 4 granted, 2 not answered"
        );
        assert_eq!(majority_vote(&four, granted(&[1, 2, 3])), VoteResult::Won);
        assert!(!is_quorum(&Configuration::new([1, 2, 3, 4]), |id| id <= 2));
        let joint = Configuration::joint([1, 2, 3], [3, 4, 5, 6]);
        assert!(
            !is_quorum(&joint, |id| id <= 4),
            "3 and 4 are half of the outgoing voters"
        );
        assert!(is_quorum(&joint, |id| id <= 5));
    }

    /// Raft §5.2: a candidate that has not yet lost keeps waiting: a vote
    /// is lost only once the answers still missing could not make a
    /// majority even if all granted. These cases sit on that boundary
    /// (`yes + missing == need`).
    #[test]
    fn a_vote_a_missing_answer_could_still_win_is_pending() {
        let answers = |yes: &'static [NodeId], no: &'static [NodeId]| {
            move |id| {
                if yes.contains(&id) {
                    Some(true)
                } else if no.contains(&id) {
                    Some(false)
                } else {
                    None
                }
            }
        };
        let three = set(&[1, 2, 3]);
        let five = set(&[1, 2, 3, 4, 5]);
        assert_eq!(
            majority_vote(&three, answers(&[1], &[2])),
            VoteResult::Pending,
            "3 voters: 1 yes, 1 no, 1 unanswered"
        );
        assert_eq!(
            majority_vote(&five, answers(&[1, 2], &[3, 4])),
            VoteResult::Pending,
            "5 voters: 2 yes, 2 no, 1 unanswered"
        );
        assert_eq!(
            majority_vote(&five, answers(&[1], &[2, 3])),
            VoteResult::Pending,
            "5 voters: 1 yes, 2 no, 2 unanswered"
        );
        assert_eq!(
            majority_vote(&five, answers(&[1], &[2, 3, 4])),
            VoteResult::Lost,
            "5 voters: 1 yes, 3 no, 1 unanswered"
        );
        // The same boundary in either half of a joint configuration.
        let joint = Configuration::joint([1, 2, 3], [3, 4, 5]);
        assert_eq!(
            vote_result(&joint, answers(&[3], &[1, 4])),
            VoteResult::Pending,
            "each half: 1 yes, 1 no, 1 unanswered"
        );
    }

    #[test]
    fn joint_commit_needs_both_majorities() {
        let acked = |id: NodeId| [0, 9, 9, 9, 1, 1, 1][id as usize];
        let old = Configuration::new([1, 2, 3]);
        assert_eq!(committed_index(&old, acked), 9);
        let joint = Configuration::joint([4, 5, 6], [1, 2, 3]);
        assert_eq!(committed_index(&joint, acked), 1);
        let joint = Configuration::joint([1, 2, 4], [1, 2, 3]);
        assert_eq!(committed_index(&joint, acked), 9);
    }

    #[test]
    fn joint_votes_need_both_majorities() {
        let joint = Configuration::joint([1, 2, 3], [3, 4, 5]);
        let granted = |ids: &'static [NodeId]| move |id| Some(ids.contains(&id));
        assert_eq!(vote_result(&joint, granted(&[1, 2])), VoteResult::Lost);
        assert_eq!(vote_result(&joint, granted(&[1, 2, 4, 5])), VoteResult::Won);
        assert_eq!(vote_result(&joint, granted(&[3])), VoteResult::Lost);
        let partial = |id| {
            if id == 1 || id == 3 || id == 4 {
                Some(true)
            } else {
                None
            }
        };
        assert_eq!(vote_result(&joint, partial), VoteResult::Won);
        let pending = |id| if id == 1 { Some(true) } else { None };
        assert_eq!(vote_result(&joint, pending), VoteResult::Pending);
    }
}
