//! Spreading leaders evenly over the nodes, by leadership transfer.
//!
//! A group's leader takes all its writes, so a node that leads most groups
//! does most of the work. Every node sees the leader of each group it hosts
//! (its replica's status), hence how many of those groups each node leads.
//! [`plan`] moves leaderships **this node holds** from it to the voter of
//! the group that leads the fewest, until it leads no more than its even
//! share (the number of led groups divided by the number of nodes, rounded
//! up). The transfers themselves are the core's leadership transfer
//! (thesis §3.10: the leader brings the target up to date, then tells it
//! to campaign at once).
//!
//! Invariants:
//! - a node only ever gives away its own leaderships, so two nodes never
//!   fight over one group;
//! - a planned target is a voter of the group and leads strictly fewer
//!   groups than this node would after giving one away, so every transfer
//!   narrows the spread and a balanced layout plans nothing;
//! - counts from replicas' statuses may be a moment stale; a later round
//!   corrects what an earlier one overshot.

use std::collections::BTreeMap;

use super::GroupId;
use crate::core::NodeId;

/// One group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// The group.
    pub group: GroupId,
    /// Its leader, if known.
    pub leader: Option<NodeId>,
    /// Its voters.
    pub voters: Vec<NodeId>,
}

/// The leadership transfers `me` should start: `(group, target)`.
pub fn plan(me: NodeId, view: &[GroupView]) -> Vec<(GroupId, NodeId)> {
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in view {
        for v in &g.voters {
            counts.entry(*v).or_insert(0);
        }
    }
    let mut led = 0usize;
    for g in view {
        if let Some(l) = g.leader {
            *counts.entry(l).or_insert(0) += 1;
            led += 1;
        }
    }
    if counts.is_empty() {
        return Vec::new();
    }
    let share = led.div_ceil(counts.len());
    let mut out = Vec::new();
    for g in view.iter().filter(|g| g.leader == Some(me)) {
        let mine = counts.get(&me).copied().unwrap_or(0);
        if mine <= share {
            break;
        }
        let target = g
            .voters
            .iter()
            .filter(|v| **v != me)
            .min_by_key(|v| (counts.get(v).copied().unwrap_or(0), **v))
            .copied();
        if let Some(t) = target
            && counts.get(&t).copied().unwrap_or(0) + 1 < mine
        {
            out.push((g.group, t));
            *counts.entry(me).or_insert(0) -= 1;
            *counts.entry(t).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leaders: &[u64]) -> Vec<GroupView> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, l)| GroupView {
                group: i as u64 + 1,
                leader: Some(*l),
                voters: vec![1, 2, 3],
            })
            .collect()
    }

    /// Runs rounds of every node's plan until nothing moves.
    fn settle(mut leaders: Vec<u64>) -> Vec<u64> {
        for _ in 0..10 {
            let mut moved = false;
            for me in 1..=3 {
                for (g, t) in plan(me, &view(&leaders)) {
                    leaders[g as usize - 1] = t;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        leaders
    }

    fn counts(leaders: &[u64]) -> Vec<usize> {
        (1..=3)
            .map(|n| leaders.iter().filter(|l| **l == n).count())
            .collect()
    }

    #[test]
    fn all_leaders_on_one_node_spread_evenly() {
        let settled = settle(vec![1; 12]);
        assert_eq!(counts(&settled), vec![4, 4, 4]);
        let settled = settle(vec![2; 7]);
        let c = counts(&settled);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn a_balanced_layout_plans_nothing() {
        for me in 1..=3 {
            assert!(plan(me, &view(&[1, 2, 3, 1, 2, 3])).is_empty());
            assert!(plan(me, &view(&[1, 2, 3, 1])).is_empty());
        }
    }

    #[test]
    fn a_node_gives_away_only_its_own_leaderships_and_only_to_voters() {
        let mut v = view(&[1, 1, 1, 1, 2, 2]);
        v[0].voters = vec![1, 2]; // node 3 is not a voter of group 1
        for (g, t) in plan(1, &v) {
            assert_eq!(v[g as usize - 1].leader, Some(1));
            assert!(v[g as usize - 1].voters.contains(&t), "group {g} to {t}");
        }
        assert!(plan(3, &v).is_empty(), "node 3 leads nothing to give");
    }
}
