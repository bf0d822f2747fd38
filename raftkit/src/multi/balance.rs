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
//!
//! The replica balancer ([`plan_replicas_avoiding`]) skips the targets in
//! [`RefusedTargets`]: a move to a node refused at its joint change (its
//! binary is older than the group's voters', or another change was in
//! flight), or failed at a step that needs the target (it never caught
//! up: it is down or unreachable), is not planned to that node again
//! until the schema its hello showed changes (it was upgraded) or a
//! backoff of rounds, doubling with each refusal or failure up to
//! [`MAX_SKIP_ROUNDS`], runs out; a move to it that succeeds resets it.
//! Without it the balancer would plan the same move every round, each
//! attempt a learner added, caught up (perhaps by a snapshot) and removed
//! again, or, for a dead target, a catch-up timeout (120 s by default)
//! spent on it every round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::GroupId;
use crate::core::NodeId;
use crate::schema::Schema;

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
    plan_replicas_avoiding(view, nodes, &BTreeSet::new())
}

/// [`plan_replicas`] that never moves a replica **to** a node in `avoid`
/// (their replicas still count, and they may still be a move's source).
pub fn plan_replicas_avoiding(
    view: &[ReplicaView],
    nodes: &[NodeId],
    avoid: &BTreeSet<NodeId>,
) -> Vec<ReplicaMove> {
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
            .filter(|n| !g.voters.contains(n) && !avoid.contains(n))
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

/// The most balancing rounds a refused target is skipped for while its
/// schema stays the same.
pub const MAX_SKIP_ROUNDS: u32 = 64;

/// The rounds a target is skipped for after its first refusal.
const FIRST_SKIP_ROUNDS: u32 = 4;

/// One refused target: the schema heard from it at the refusal (`None`:
/// none heard), the rounds its latest refusal skips it for, and how many
/// of them are left.
#[derive(Debug)]
struct Refusal {
    schema: Option<Arc<Schema>>,
    skip: u32,
    left: u32,
}

/// The replica moves' targets refused at their joint change, which the
/// replica balancer skips (see the [module documentation](self)).
#[derive(Debug, Default)]
pub struct RefusedTargets {
    by_node: BTreeMap<NodeId, Refusal>,
}

impl RefusedTargets {
    /// A move to `node` was refused, or failed for want of the target,
    /// while its hello showed `schema` (`None`: none heard, as from a
    /// node that is down): it is skipped for 4 rounds, twice as many as
    /// last time if it was refused before with the same schema (at most
    /// [`MAX_SKIP_ROUNDS`]).
    pub fn refused(&mut self, node: NodeId, schema: Option<Arc<Schema>>) {
        let skip = match self.by_node.get(&node) {
            Some(r) if r.schema == schema => r.skip.saturating_mul(2).min(MAX_SKIP_ROUNDS),
            _ => FIRST_SKIP_ROUNDS,
        };
        self.by_node.insert(
            node,
            Refusal {
                schema,
                skip,
                left: skip,
            },
        );
    }

    /// A move to `node` succeeded: it is no longer remembered.
    pub fn moved(&mut self, node: NodeId) {
        self.by_node.remove(&node);
    }

    /// Starts a balancing round: the targets to skip in it. `heard` is each
    /// node's schema as its latest hello showed it; a node whose schema
    /// changed since its refusal is forgotten (tried again at once), one
    /// whose skip ran out is tried in this round (and skipped twice as long
    /// if refused again).
    pub fn round(&mut self, heard: impl Fn(NodeId) -> Option<Arc<Schema>>) -> BTreeSet<NodeId> {
        self.by_node.retain(|node, r| heard(*node) == r.schema);
        let mut skip = BTreeSet::new();
        for (node, r) in &mut self.by_node {
            if r.left > 0 {
                r.left -= 1;
                skip.insert(*node);
            }
        }
        skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Shape;

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

    #[test]
    fn a_node_to_avoid_is_not_a_target_but_still_counts() {
        let view = replica_view(&[vec![1, 2, 3], vec![1, 2, 3]]);
        let moves = plan_replicas(&view, &[1, 2, 3, 4, 5]);
        assert_eq!((moves[0].to, moves.len()), (4, 2), "{moves:?}");
        let avoid = BTreeSet::from([4]);
        let moves = plan_replicas_avoiding(&view, &[1, 2, 3, 4, 5], &avoid);
        assert!(moves.iter().all(|m| m.to == 5), "{moves:?}");
        let avoid = BTreeSet::from([4, 5]);
        assert!(plan_replicas_avoiding(&view, &[1, 2, 3, 4, 5], &avoid).is_empty());
    }

    #[test]
    fn a_refused_target_is_skipped_until_its_schema_changes_or_its_backoff_ends() {
        let schema = |version| Some(Arc::new(Schema::new("kv", version, Shape::Unit)));
        let (old, new) = (schema(1), schema(2));
        let mut refused = RefusedTargets::default();
        refused.refused(7, old.clone());
        // Skipped for FIRST_SKIP_ROUNDS rounds, then tried again.
        let rounds: Vec<bool> = (0..FIRST_SKIP_ROUNDS + 1)
            .map(|_| refused.round(|_| old.clone()).contains(&7))
            .collect();
        let mut want = vec![true; FIRST_SKIP_ROUNDS as usize];
        want.push(false);
        assert_eq!(rounds, want);
        // Refused again with the same schema: skipped twice as long.
        refused.refused(7, old.clone());
        let skipped = (0..MAX_SKIP_ROUNDS)
            .take_while(|_| refused.round(|_| old.clone()).contains(&7))
            .count();
        assert_eq!(skipped, 2 * FIRST_SKIP_ROUNDS as usize);
        // Its schema changed (upgraded): tried at once.
        refused.refused(7, old.clone());
        assert!(refused.round(|_| old.clone()).contains(&7));
        assert!(!refused.round(|_| new.clone()).contains(&7));
        // The backoff is bounded.
        for _ in 0..20 {
            refused.refused(7, old.clone());
        }
        let skipped = (0..10 * MAX_SKIP_ROUNDS)
            .take_while(|_| refused.round(|_| old.clone()).contains(&7))
            .count();
        assert_eq!(skipped, MAX_SKIP_ROUNDS as usize);
        refused.moved(7);
        assert!(refused.round(|_| old.clone()).is_empty());
    }
}
