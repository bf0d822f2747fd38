//! The membership admin: adds nodes (started empty, added as learners,
//! promoted once the leader reports them caught up), removes voters (the
//! leader too) and replaces nodes in one joint change, retrying on the node
//! it believes leads. Removed nodes are shut down once their removal
//! commits, or kept running to show that they cannot disrupt the cluster.
//! Some changes come with a fault in place before their first message
//! leaves: a partition of the failure domain of the node replaced, a split
//! across the change (a majority of C_old on one side, of C_new on the
//! other), or a crash of the leader.

use rand::Rng;

use super::{Event, Node, Step, World};
use crate::core::{Configuration, NodeId, Restored, Role};
use crate::sim::options::FailureKind;

/// No change is proposed in the last this many ms of a run.
const LAST_CHANGE_MS: u64 = 1_000;
use crate::sim::oracle::Violation;

/// A membership change the admin is carrying out. The admin judges
/// progress by the configuration in the leader's log, never by what it
/// proposed, so a change lost with a leader is simply proposed again.
#[derive(Clone, Copy, Debug)]
enum AdminOp {
    /// Add `id` as learner, wait until it is caught up, then promote it —
    /// replacing `replaces` in the same joint change if set.
    Add {
        id: NodeId,
        replaces: Option<NodeId>,
        /// Admin rounds spent waiting for the learner to catch up.
        waited: u32,
    },
    /// Remove `id` (voter or learner).
    Remove { id: NodeId },
}

#[derive(Default)]
pub(super) struct Admin {
    /// The node the admin believes leads.
    hint: Option<NodeId>,
    op: Option<AdminOp>,
    /// Operations started.
    started: usize,
}

impl World {
    /// Starts a new node with nothing on disk: it knows of no configuration
    /// and waits for a leader to replicate to it.
    fn spawn_node(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        let restored = Restored::empty();
        let raft = self.new_raft(id, restored.clone());
        let tick_tenths = self.tick_rate();
        self.nodes
            .insert(id, Node::fresh(raft, &restored, 0, tick_tenths));
        self.ids.push(id);
        self.nodes.get_mut(&id).expect("just added").last_tick = self.now;
        let offset = self.rng.random_range(1..=tick_tenths / 10);
        self.schedule(offset, Event::Tick { node: id, epoch: 0 });
        id
    }

    /// A node's removal committed: shut it down for good, or keep it running
    /// (at most two such nodes) to show it cannot disrupt the cluster.
    fn removal_committed(&mut self, id: NodeId, conf: &Configuration) {
        self.report.nodes_removed += 1;
        self.removed.push(id);
        let kept = self
            .ids
            .iter()
            .filter(|&&x| x != id && !conf.contains(x))
            .count();
        if kept < 2 && self.rng.random_bool(0.5) {
            self.report.removed_kept_running += 1;
            return;
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.retired = true;
        n.raft = None;
        n.epoch += 1;
        n.paused_until = 0;
        n.receiving = None;
        n.writes.pending.clear();
        n.snap_writes.pending.clear();
        n.proposals.clear();
        n.reads.clear();
        n.read_waiting.clear();
        self.ids.retain(|&x| x != id);
    }

    /// One round of the admin, and the next one scheduled: soon when it
    /// was sent to another node that it believes leads.
    pub(super) fn admin(&mut self) -> Step {
        let redirected = self.admin_round()?;
        let next = if redirected {
            self.rng.random_range(2..10)
        } else if self.healed {
            self.rng.random_range(60..200)
        } else {
            self.rng.random_range(30..120)
        };
        self.schedule(next, Event::Admin);
        Ok(())
    }

    /// Finds the leader, looks at its configuration, and takes the next
    /// step of the current change (or starts one). Returns whether the node
    /// it asked pointed it to another leader.
    fn admin_round(&mut self) -> Result<bool, FailureKind> {
        if self.now + LAST_CHANGE_MS > self.end_at {
            // The end is near: leave time to elect a leader after a change
            // that removed the last one.
            return Ok(false);
        }
        let target = match self.admin.hint {
            Some(h) if self.ids.contains(&h) => h,
            _ => self.ids[self.rng.random_range(0..self.ids.len())],
        };
        let Some(raft) = self.nodes[&target]
            .raft
            .as_ref()
            .filter(|_| !self.nodes[&target].paused(self.now))
        else {
            // Down or paused: no answer.
            self.admin.hint = None;
            return Ok(false);
        };
        if raft.role() != Role::Leader {
            // Ask the leader it knows of, soon.
            self.admin.hint = raft.leader();
            return Ok(self.admin.hint.is_some());
        }
        let leader = target;
        self.admin.hint = Some(leader);
        let (conf_index, conf) = raft.log().last_config();
        let conf = conf.clone();
        if conf_index > raft.log().committed() || conf.is_joint() {
            // A change is in flight: a second one must be refused.
            if self.rng.random_bool(0.3) {
                let other = Configuration::new(conf.voters.iter().copied());
                let raft = self.raft_mut(leader);
                if let Ok(at) = raft.propose_config(other) {
                    return Err(FailureKind::Safety(Violation {
                        property: "one configuration change at a time",
                        detail: format!(
                            "leader {leader} accepted a change at {at} while {conf_index} was in flight"
                        ),
                    }));
                }
            }
            return Ok(false);
        }
        if self.admin.op.is_none() {
            if self.healed || self.now >= self.heal_at {
                return Ok(false);
            }
            self.admin.op = Some(self.choose_op(leader, &conf));
            self.admin.started += 1;
        }
        let Some(op) = self.admin.op else {
            return Ok(false);
        };
        let mut swap = None;
        let mut removes_leader = false;
        let target = match op {
            AdminOp::Remove { id } => {
                if !conf.contains(id) {
                    self.admin.op = None;
                    self.removal_committed(id, &conf);
                    return Ok(false);
                }
                let mut t = conf.clone();
                t.voters.remove(&id);
                t.learners.remove(&id);
                t.outgoing.clear();
                removes_leader = id == leader;
                t
            }
            AdminOp::Add {
                id,
                replaces,
                waited,
            } => {
                if conf.voters.contains(&id) {
                    self.report.nodes_added += 1;
                    self.admin.op = match replaces {
                        Some(old) if conf.contains(old) => Some(AdminOp::Remove { id: old }),
                        Some(old) => {
                            self.removal_committed(old, &conf);
                            None
                        }
                        None => None,
                    };
                    return Ok(false);
                }
                let mut t = conf.clone();
                if conf.learners.contains(&id) {
                    let caught_up = self.nodes[&leader]
                        .raft
                        .as_ref()
                        .is_some_and(|r| r.learner_caught_up(id));
                    if !caught_up {
                        // Thesis §4.2.1: a server that does not catch up
                        // (down, cut off, too slow) is given up on.
                        self.admin.op = Some(if waited >= 20 {
                            AdminOp::Remove { id }
                        } else {
                            AdminOp::Add {
                                id,
                                replaces,
                                waited: waited + 1,
                            }
                        });
                        return Ok(false);
                    }
                    t.learners.remove(&id);
                    t.voters.insert(id);
                    if let Some(old) = replaces.filter(|old| conf.voters.contains(old)) {
                        t.voters.remove(&old);
                        swap = Some((old, id));
                        removes_leader = old == leader;
                    }
                } else {
                    t.learners.insert(id);
                }
                t
            }
        };
        match self.raft_mut(leader).propose_config(target) {
            Ok(_) => {}
            Err(crate::core::ProposeError::InvalidConfiguration(e)) => {
                return Err(FailureKind::Safety(Violation {
                    property: "membership",
                    detail: format!("the admin proposed an invalid configuration: {e}"),
                }));
            }
            // Not ready (no commit in its term yet), in flight, stepped
            // down: try again next round.
            Err(_) => return Ok(false),
        }
        if removes_leader {
            self.report.leaders_removed += 1;
        }
        // The faults that go with a change are in place before the
        // change's first messages leave the leader.
        let roll = if self.healed {
            100
        } else {
            self.rng.random_range(0..100)
        };
        if let Some((old, new)) = swap
            && self.opts.partitions
            && roll < 70
        {
            let (a, b): (Vec<NodeId>, Vec<NodeId>) = if roll < 35 {
                // The prior-art availability scenario: the node replaced and
                // its replacement share a failure domain, which partitions
                // away while the change is in flight. The rest are
                // majorities of both C_old and C_new, so joint consensus
                // carries on.
                self.ids.iter().partition(|&&x| x == old || x == new)
            } else {
                // A split across the change: the node leaving with half of
                // the others, the one joining with the rest — a majority of
                // C_old on one side, of C_new on the other (for an odd
                // number of voters). Joint consensus needs both on one side
                // and waits; a change that skipped C_old,new would let both
                // sides decide.
                let mut others: Vec<NodeId> =
                    conf.voters.iter().copied().filter(|&x| x != old).collect();
                for i in (1..others.len()).rev() {
                    others.swap(i, self.rng.random_range(0..=i));
                }
                let with_old: Vec<NodeId> = others[..conf.voters.len() / 2].to_vec();
                self.ids
                    .iter()
                    .partition(|&&x| x == old || with_old.contains(&x))
            };
            self.faults.split(&a, &b);
        } else if self.opts.crashes && (75..100).contains(&roll) {
            // The prior-art correctness scenario: the leader fails with its
            // change on a minority, and the next leader changes the
            // configuration in turn.
            let epoch = self.nodes[&leader].epoch;
            let after = self.rng.random_range(1..30);
            self.schedule(
                after,
                Event::Crash {
                    node: leader,
                    epoch,
                    quick: false,
                },
            );
        }
        self.process(leader)?;
        Ok(false)
    }

    /// Picks the next change: keep between 3 and 5 voters; the node removed
    /// or replaced is often the leader.
    fn choose_op(&mut self, leader: NodeId, conf: &Configuration) -> AdminOp {
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let victim = if self.rng.random_bool(0.4) && conf.voters.contains(&leader) {
            leader
        } else {
            voters[self.rng.random_range(0..voters.len())]
        };
        let roll = self.rng.random_range(0..3);
        if (roll == 0 && voters.len() < 5) || voters.len() < 3 {
            let id = self.spawn_node();
            AdminOp::Add {
                id,
                replaces: None,
                waited: 0,
            }
        } else if roll == 1 && voters.len() > 3 {
            AdminOp::Remove { id: victim }
        } else {
            let id = self.spawn_node();
            AdminOp::Add {
                id,
                replaces: Some(victim),
                waited: 0,
            }
        }
    }
}
