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

/// One group as the replica balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    /// The group.
    pub group: GroupId,
    /// Whether this node's replica leads it with no change in flight (only
    /// such groups are moved from here).
    pub led_here: bool,
    /// Its voters.
    pub voters: Vec<NodeId>,
}

/// A planned replica move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaMove {
    /// The group.
    pub group: GroupId,
    /// The voter that leaves it.
    pub from: NodeId,
    /// The node that joins it.
    pub to: NodeId,
}

/// The replica moves that even out how many groups each node is a voter
/// of, over the groups in `view` and the nodes in `nodes` (plus every node
/// a group lists). Only groups led here are moved (their leader drives the
/// move, see [`super::moves`]); each move takes a replica from the group's
/// voter with the most replicas to the node with the fewest that is not a
/// voter of the group, and only when the source then still has at least
/// as many as the target: every move narrows the spread, and a layout
/// where no two nodes differ by more than one plans nothing.
pub fn plan_replicas(view: &[ReplicaView], nodes: &[NodeId]) -> Vec<ReplicaMove> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for g in view {
        for v in &g.voters {
            *counts.entry(*v).or_insert(0) += 1;
        }
    }
    let mut out = Vec::new();
    for g in view.iter().filter(|g| g.led_here) {
        let count =
            |counts: &BTreeMap<NodeId, usize>, n: &NodeId| counts.get(n).copied().unwrap_or(0);
        let Some(from) = g
            .voters
            .iter()
            .max_by_key(|v| (count(&counts, v), **v))
            .copied()
        else {
            continue;
        };
        let Some(to) = counts
            .keys()
            .filter(|n| !g.voters.contains(n))
            .min_by_key(|n| (count(&counts, n), **n))
            .copied()
        else {
            continue;
        };
        if count(&counts, &from) > count(&counts, &to) + 1 {
            out.push(ReplicaMove {
                group: g.group,
                from,
                to,
            });
            *counts.entry(from).or_insert(0) -= 1;
            *counts.entry(to).or_insert(0) += 1;
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

    fn replica_view(layout: &[Vec<u64>]) -> Vec<ReplicaView> {
        layout
            .iter()
            .enumerate()
            .map(|(i, v)| ReplicaView {
                group: i as u64 + 1,
                led_here: true,
                voters: v.clone(),
            })
            .collect()
    }

    fn replica_counts(layout: &[Vec<u64>], nodes: &[u64]) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| layout.iter().filter(|v| v.contains(n)).count())
            .collect()
    }

    #[test]
    fn a_new_node_takes_its_share_of_replicas() {
        let nodes = [1, 2, 3, 4];
        let mut layout = vec![vec![1, 2, 3]; 8];
        for _ in 0..20 {
            let moves = plan_replicas(&replica_view(&layout), &nodes);
            if moves.is_empty() {
                break;
            }
            for m in moves {
                let voters = &mut layout[m.group as usize - 1];
                assert!(voters.contains(&m.from), "{m:?} moves from a non-voter");
                assert!(!voters.contains(&m.to), "{m:?} moves to a voter");
                voters.retain(|v| *v != m.from);
                voters.push(m.to);
            }
        }
        assert_eq!(replica_counts(&layout, &nodes), vec![6, 6, 6, 6]);
        for v in &layout {
            assert_eq!(v.len(), 3, "a move keeps the group's size");
        }
    }

    #[test]
    fn a_balanced_replica_layout_plans_nothing() {
        let layout = vec![vec![1, 2, 3], vec![2, 3, 4], vec![3, 4, 1], vec![4, 1, 2]];
        assert!(plan_replicas(&replica_view(&layout), &[1, 2, 3, 4]).is_empty());
        // Off by one is balanced too.
        let layout = vec![vec![1, 2, 3], vec![2, 3, 4]];
        assert!(plan_replicas(&replica_view(&layout), &[1, 2, 3, 4]).is_empty());
    }

    #[test]
    fn only_groups_led_here_are_moved() {
        let mut view = replica_view(&[vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3]]);
        for g in &mut view {
            g.led_here = false;
        }
        assert!(plan_replicas(&view, &[1, 2, 3, 4]).is_empty());
        view[1].led_here = true;
        let moves = plan_replicas(&view, &[1, 2, 3, 4]);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].group, moves[0].to), (2, 4));
    }
}
