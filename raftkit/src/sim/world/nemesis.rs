//! The nemesis and the network: fault and calm periods, message delivery
//! (loss, duplication, reordering, late delivery, partitions that drop or
//! hold), crashes (random, and aimed at the window between a queued reply
//! and its fsync, or at a node halfway through receiving a snapshot),
//! process pauses and leadership transfers.
//!
//! Every fault period draws its faults afresh; every kind of period (the
//! Figure 8 isolations, leader churn, partitions, plain loss) can reorder
//! and duplicate messages and hold some back for many election timeouts.

use rand::Rng;

use super::{Event, Step, World};
use crate::core::{Body, Message, NodeId, Role, Term};
use crate::sim::network::{NetworkFaults, Partition};
use crate::sim::options::FailureKind;

/// At most this many messages wait in a partition's backlog.
const BACKLOG_CAP: usize = 20_000;

impl World {
    // ----- network -------------------------------------------------------

    pub(super) fn send(&mut self, m: Message) {
        // Mixed versions (`transport::peer_features`): in one seed in four
        // the even-numbered nodes play a binary of before the named
        // transfer vote, and transfer votes reach them in the earlier
        // form, as the transport sends them to such a peer. Drawn from the
        // seed, not the generator, so that no other event moves.
        let m = if self.seed.rotate_left(23) & 3 == 0 && m.to.is_multiple_of(2) {
            Message {
                body: m.body.legacy_form(),
                ..m
            }
        } else {
            m
        };
        if !self.faults.reachable(m.from, m.to) {
            self.cut_off(m);
            return;
        }
        if self.faults.drop > 0.0 && self.rng.random_bool(self.faults.drop) {
            return;
        }
        let jitter = self.faults.jitter;
        let mut delay = self.rng.random_range(1..4)
            + if jitter > 0 {
                self.rng.random_range(0..jitter)
            } else {
                0
            };
        let slow_end = if self.faults.slow_inbound {
            m.to
        } else {
            m.from
        };
        let hold = if self.faults.slow.contains(&slow_end) {
            self.faults.slow_hold
        } else {
            self.faults.hold
        };
        let late = hold > 0.0 && self.rng.random_bool(hold);
        if late {
            // Log-uniform: as many short holds (across one election) as
            // long ones (across many).
            let (lo, hi) = (30.0, self.faults.hold_ms.max(31) as f64);
            let u: f64 = self.rng.random();
            delay += (lo * (hi / lo).powf(u)) as u64;
        }
        if self.faults.duplicate > 0.0 && self.rng.random_bool(self.faults.duplicate) {
            // One copy on time, the other a little later — or, when the
            // original is held back, the copy may be the one that is.
            let later = if late {
                self.rng.random_range(1..4)
            } else {
                delay + self.rng.random_range(1..20)
            };
            self.schedule(
                later,
                Event::Deliver {
                    msg: m.clone(),
                    late: false,
                },
            );
        }
        self.schedule(delay, Event::Deliver { msg: m, late });
    }

    /// A message meets a cut link: lost, or held in the backlog.
    fn cut_off(&mut self, m: Message) {
        if self.faults.backlog && self.backlog.len() < BACKLOG_CAP {
            self.backlog.push(m);
        }
    }

    /// Releases the backlog of a healed partition: most messages arrive in
    /// a burst, in a shuffled order, some twice; some are lost.
    pub(super) fn release_backlog(&mut self) {
        let backlog = std::mem::take(&mut self.backlog);
        for m in backlog {
            if self.rng.random_bool(0.1) {
                continue;
            }
            let delay = self.rng.random_range(1..40);
            if self.rng.random_bool(0.1) {
                let again = delay + self.rng.random_range(1..20);
                self.schedule(
                    again,
                    Event::Deliver {
                        msg: m.clone(),
                        late: true,
                    },
                );
            }
            self.report.backlog_released += 1;
            self.schedule(delay, Event::Deliver { msg: m, late: true });
        }
    }

    pub(super) fn deliver(&mut self, m: Message, late: bool) -> Step {
        // A partition also stops what was in flight when it began.
        if !self.faults.reachable(m.from, m.to) {
            self.cut_off(m);
            return Ok(());
        }
        let to = m.to;
        let Some(n) = self.nodes.get(&to) else {
            return Ok(());
        };
        let Some(raft) = n.raft.as_ref() else {
            return Ok(());
        };
        if n.paused(self.now) {
            let wait = n.paused_until - self.now;
            self.schedule(wait, Event::Deliver { msg: m, late });
            return Ok(());
        }
        if late {
            self.report.late_deliveries += 1;
            if raft.term() != m.term {
                self.report.late_across_terms += 1;
            }
        }
        let mut partial_chunk = false;
        if let Body::InstallSnapshot {
            meta, offset, done, ..
        } = &m.body
        {
            self.report.snapshot_chunks += 1;
            let n = self.nodes.get_mut(&to).expect("node exists");
            let key = (meta.index, meta.term);
            if *offset == 0 && n.receiving.is_some_and(|held| held != key) {
                self.report.snapshot_restarts += 1;
            }
            if *done {
                n.receiving = None;
            } else if *offset == 0 {
                n.receiving = Some(key);
            }
            partial_chunk = !*done;
        }
        if let Body::RequestVote {
            pre_vote: false,
            last_index,
            last_term,
            ..
        }
        | Body::TransferVote {
            last_index,
            last_term,
            ..
        } = m.body
        {
            let log = self.nodes[&to].raft.as_ref().expect("checked above").log();
            let voter_last = (log.last_index(), log.last_term());
            self.oracle
                .on_vote_request(to, m.from, m.term, (last_index, last_term), voter_last);
        }
        self.maybe_isolate_replicating_leader(&m);
        let raft = self
            .nodes
            .get_mut(&to)
            .and_then(|n| n.raft.as_mut())
            .expect("checked above");
        raft.step(m);
        self.process(to)?;
        if partial_chunk && self.fault_active && self.opts.crashes && self.rng.random_bool(0.02) {
            // A node halfway through receiving a snapshot dies.
            let epoch = self.nodes[&to].epoch;
            let after = self.rng.random_range(0..5);
            self.schedule(
                after,
                Event::Crash {
                    node: to,
                    epoch,
                    quick: false,
                },
            );
        }
        Ok(())
    }

    // ----- the nemesis ---------------------------------------------------

    pub(super) fn nemesis(&mut self, fault: bool) -> Step {
        if self.healed {
            return Ok(());
        }
        if fault {
            self.start_fault_period()?;
        } else {
            self.fault_active = false;
            self.disk_faulty = false;
            self.targeted_left = 0;
            self.end_leader_isolation();
            self.faults = NetworkFaults::default();
            self.release_backlog();
            self.kill_new_leaders = false;
            let length = if self.opts.churn {
                self.rng.random_range(0..60)
            } else {
                self.rng.random_range(50..400)
            };
            self.schedule(length, Event::Nemesis { fault: true });
        }
        Ok(())
    }

    fn start_fault_period(&mut self) -> Step {
        self.fault_active = true;
        let leader = self.current_leader().unwrap_or(self.ids[0]);
        // Churn periods: the scripted Figure 8, random isolations of new
        // leaders, or one node isolated at a time.
        let churn = if self.opts.churn {
            self.rng.random_range(0..3)
        } else {
            3
        };
        self.figure8 = (churn == 0).then_some(0);
        self.isolate_new_leaders = churn <= 1;
        if self.isolate_new_leaders {
            // Partitions follow the elections (see `isolate`).
        } else if self.opts.churn {
            // Isolate one node at a time, over and over: the sequences of
            // minority leaders of Raft Figure 8.
            if self.rng.random_bool(0.8) {
                let ids = self.ids.clone();
                let target = ids[self.rng.random_range(0..ids.len())];
                Partition::Isolate.apply(&ids, target, &mut self.rng, &mut self.faults);
            }
        } else if self.opts.partitions && self.rng.random_bool(0.6) {
            let kind = Partition::ALL[self.rng.random_range(0..Partition::ALL.len())];
            let target = if self.rng.random_bool(0.6) {
                leader
            } else {
                self.ids[self.rng.random_range(0..self.ids.len())]
            };
            let ids = self.ids.clone();
            kind.apply(&ids, target, &mut self.rng, &mut self.faults);
            if kind == Partition::Bridge && self.opts.late_delivery && self.rng.random_bool(0.5) {
                // A slow bridge: both halves campaign through one node
                // whose answers arrive an election or more late, in the
                // candidates' later terms.
                self.faults.slow.insert(target);
                self.faults.slow_hold = self.rng.random_range(0.5..0.95);
                self.faults.slow_inbound = false;
                self.faults.hold_ms = self.rng.random_range(200..600);
            }
        }
        // A partition may hold what it cuts and release it when it heals.
        self.faults.backlog = self.opts.partitions && self.rng.random_bool(0.4);
        if self.figure8.is_some() {
            // The script runs on a clean network.
        } else if self.isolate_new_leaders {
            self.faults.drop = self.rng.random_range(0.0..0.1);
        } else if self.opts.churn {
            self.faults.drop = self.rng.random_range(0.0..0.3);
        } else if self.opts.lossy_network && self.rng.random_bool(0.6) {
            self.faults.drop = self.rng.random_range(0.0..0.25);
        }
        // Reordering and duplication, in every kind of period (the script
        // only duplicates, which keeps its steps in order).
        if self.opts.lossy_network && self.rng.random_bool(0.6) {
            self.faults.duplicate = self.rng.random_range(0.0..0.1);
            if self.figure8.is_none() {
                self.faults.jitter = self.rng.random_range(0..40);
            }
        }
        if self.figure8.is_none()
            && !self.opts.churn
            && self.opts.late_delivery
            && self.rng.random_bool(0.15)
            && self.split_election(leader)?
        {
            let length = self.rng.random_range(400..1000);
            self.schedule(length, Event::Nemesis { fault: false });
            return Ok(());
        }
        if self.figure8.is_some() {
            self.kill_new_leaders = false;
            let length = self.rng.random_range(600..1500);
            self.schedule(length, Event::Nemesis { fault: false });
            return Ok(());
        }
        // Late delivery: a few messages held back for many election
        // timeouts, to arrive across term changes.
        if self.opts.late_delivery && self.rng.random_bool(0.6) {
            self.faults.hold = self.rng.random_range(0.005..0.05);
            if self.faults.hold_ms == 0 {
                self.faults.hold_ms = self.rng.random_range(300..2500);
            }
            if self.faults.slow.is_empty() && self.rng.random_bool(0.5) {
                let ids = &self.ids;
                let slow = ids[self.rng.random_range(0..ids.len())];
                self.faults.slow.insert(slow);
                self.faults.slow_hold = self.rng.random_range(0.2..0.8);
                self.faults.slow_inbound = self.rng.random_bool(0.5);
            }
        }
        if self.opts.crashes && self.rng.random_bool(0.5) {
            let count = self.rng.random_range(1..=(self.ids.len() / 2).max(1));
            for _ in 0..count {
                let victim = if self.rng.random_bool(0.5) {
                    leader
                } else {
                    self.ids[self.rng.random_range(0..self.ids.len())]
                };
                self.crash(victim)?;
                let back = self.rng.random_range(20..600);
                self.schedule(back, Event::Restart { node: victim });
            }
        }
        self.targeted_left = if self.opts.crashes {
            self.rng.random_range(0..=2)
        } else {
            0
        };
        self.disk_faulty = self.opts.disk_faults && self.rng.random_bool(0.6);
        if self.opts.pauses && self.rng.random_bool(0.4) {
            let victim = if self.rng.random_bool(0.5) {
                leader
            } else {
                self.ids[self.rng.random_range(0..self.ids.len())]
            };
            let until = self.pause(victim, None);
            if let Some(until) = until
                && self.rng.random_bool(0.3)
            {
                // A host stall: another node stops and resumes with it.
                let other = self.ids[self.rng.random_range(0..self.ids.len())];
                self.pause(other, Some(until));
            }
        }
        self.kill_new_leaders = if self.isolate_new_leaders {
            self.rng.random_bool(0.2)
        } else {
            self.opts.churn || (self.opts.crashes && self.rng.random_bool(0.3))
        };
        let length = if self.isolate_new_leaders {
            // Long enough for a few elections to follow each other.
            self.rng.random_range(400..1200)
        } else if self.opts.churn {
            self.rng.random_range(150..400)
        } else {
            self.rng.random_range(100..700)
        };
        self.schedule(length, Event::Nemesis { fault: false });
        Ok(())
    }

    /// A split election with slow voters: two followers `a` and `c`,
    /// which cannot reach each other, stall together, so that their
    /// election timers fire in the same instant when they resume; the
    /// leader is gone (crashed; in a cluster of three it stays, as the
    /// third voter); the voters they both need answer late, often in the
    /// candidates' next terms. A grant from an earlier term must not count.
    /// Returns whether the cluster had the nodes to set it up.
    fn split_election(&mut self, leader: NodeId) -> Result<bool, FailureKind> {
        let now = self.now;
        let Some(voters) = self.nodes[&leader]
            .raft
            .as_ref()
            .map(|r| r.config().voters.clone())
        else {
            return Ok(false);
        };
        let mut up: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&id| {
                self.nodes
                    .get(&id)
                    .is_some_and(|n| n.raft.is_some() && !n.paused(now))
            })
            .collect();
        let mut followers: Vec<NodeId> = up.iter().copied().filter(|&id| id != leader).collect();
        if followers.len() < 2 || up.len() < 3 {
            return Ok(false);
        }
        for i in (1..followers.len()).rev() {
            followers.swap(i, self.rng.random_range(0..=i));
        }
        let (a, c) = (followers[0], followers[1]);
        if up.len() > 3 && up.contains(&leader) {
            self.crash(leader)?;
            let back = self.rng.random_range(300..800);
            self.schedule(back, Event::Restart { node: leader });
            up.retain(|&id| id != leader);
        }
        self.faults.split(&[a], &[c]);
        self.faults.slow = up
            .iter()
            .copied()
            .filter(|&id| id != a && id != c)
            .collect();
        self.faults.slow_inbound = false;
        self.faults.slow_hold = 0.95;
        self.faults.hold_ms = self.rng.random_range(250..500);
        let stall = self.rng.random_range(150..300);
        if self.opts.trace {
            println!(
                "[{now:>6}ms] nemesis: split election of {a} and {c}, slow voters {:?}",
                self.faults.slow
            );
        }
        if let Some(until) = self.pause(a, Some(now + stall)) {
            self.pause(c, Some(until));
        }
        Ok(true)
    }

    /// Stops `node`'s process for up to many election timeouts (ending
    /// shortly after the heal at the latest), or `until` a given time: it
    /// takes no step while its deliveries, fsync completions and requests
    /// queue up, and its missed ticks fire in a burst when it resumes.
    /// Returns when it resumes.
    fn pause(&mut self, node: NodeId, until: Option<u64>) -> Option<u64> {
        let limit = self.heal_at + 300;
        let until = until.unwrap_or(self.now + self.rng.random_range(150..1500));
        let until = until.min(limit);
        let now = self.now;
        let n = self.nodes.get_mut(&node)?;
        if n.raft.is_none() || until <= now || n.paused(now) {
            return None;
        }
        n.paused_until = until;
        self.report.pauses += 1;
        Some(until)
    }

    /// A write carrying a term or vote, or holding back replies until
    /// durable, was just issued: perhaps crash the node before its fsync
    /// completes (in `window` ms), the moment a missing fsync rule would
    /// show. The node restarts at once, as under a supervisor, so that it
    /// rejoins the election it was voting in.
    pub(super) fn maybe_crash_before_fsync(
        &mut self,
        id: NodeId,
        epoch: u64,
        window: u64,
        votes: bool,
    ) {
        if self.healed {
            return;
        }
        let left = if votes {
            &mut self.vote_crashes_left
        } else {
            &mut self.targeted_left
        };
        if *left == 0 {
            return;
        }
        let p = if votes { 0.5 } else { 0.02 };
        if !self.rng.random_bool(p) {
            return;
        }
        *left -= 1;
        self.report.targeted_crashes += 1;
        let at = self.rng.random_range(0..window.max(1));
        self.schedule(
            at,
            Event::Crash {
                node: id,
                epoch,
                quick: true,
            },
        );
    }

    /// Cuts `node` off from every other node. At most a minority stays cut
    /// off: isolating one more reconnects the longest-isolated node, so the
    /// isolations move from leader to leader as in Raft Figure 8.
    pub(super) fn isolate(&mut self, node: NodeId) {
        if self.isolated.contains(&node) {
            return;
        }
        self.isolated.push_back(node);
        let most = if self.figure8.is_some() {
            1
        } else {
            (self.ids.len() - 1) / 2
        };
        while self.isolated.len() > most {
            self.isolated.pop_front();
        }
        self.faults.cut.clear();
        for &x in &self.isolated {
            let rest: Vec<NodeId> = self.ids.iter().copied().filter(|&y| y != x).collect();
            self.faults.split(&[x], &rest);
        }
    }

    /// The Figure 8 nemesis counts a leader's successful AppendEntries
    /// answers and cuts it off just before it handles the last one it is
    /// allowed: whatever it sends next is lost.
    fn maybe_isolate_replicating_leader(&mut self, m: &Message) {
        if !matches!(m.body, Body::AppendEntriesResponse { success: true, .. }) {
            return;
        }
        let Some(&(term, left)) = self.isolate_after_acks.get(&m.to) else {
            return;
        };
        let leads = self.nodes[&m.to]
            .raft
            .as_ref()
            .is_some_and(|r| r.role() == Role::Leader && r.term() == term);
        if !leads || m.term != term {
            if !leads {
                self.isolate_after_acks.remove(&m.to);
            }
            return;
        }
        if left > 1 {
            self.isolate_after_acks.insert(m.to, (term, left - 1));
        } else {
            self.isolate_after_acks.remove(&m.to);
            self.isolate(m.to);
        }
    }

    pub(super) fn end_leader_isolation(&mut self) {
        self.isolate_new_leaders = false;
        self.figure8 = None;
        self.isolated.clear();
        self.isolate_after_acks.clear();
    }

    // ----- leadership transfers --------------------------------------------

    /// The transfer nemesis: a node that leads (perhaps a stale leader) is
    /// asked to hand leadership to a random target — a voter, the most
    /// lagging member, a node that is down, paused or cut off, a learner or
    /// a removed node, or anyone.
    pub(super) fn transfer(&mut self) -> Step {
        if self.healed || self.now >= self.heal_at {
            return Ok(());
        }
        let next = self.rng.random_range(60..400);
        self.schedule(next, Event::Transfer);
        let now = self.now;
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.paused(now))
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect();
        if leaders.is_empty() {
            return Ok(());
        }
        let leader = leaders[self.rng.random_range(0..leaders.len())];
        let raft = self.nodes[&leader].raft.as_ref().expect("a leader runs");
        let conf = raft.config().clone();
        let term: Term = raft.term();
        let voters: Vec<NodeId> = conf
            .voters
            .union(&conf.outgoing)
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let lagging = voters
            .iter()
            .copied()
            .min_by_key(|&v| raft.catch_up_progress(v).map_or(0, |(m, _)| m));
        let unreachable: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| {
                self.nodes[&v].raft.is_none()
                    || self.nodes[&v].paused(now)
                    || !self.faults.reachable(leader, v)
            })
            .collect();
        let outsiders: Vec<NodeId> = conf
            .learners
            .iter()
            .copied()
            .chain(self.removed.iter().copied())
            .collect();
        let everyone: Vec<NodeId> = self.nodes.keys().copied().collect();
        let roll = self.rng.random_range(0..100);
        let pick = |rng: &mut rand::rngs::StdRng, xs: &[NodeId]| {
            (!xs.is_empty()).then(|| xs[rng.random_range(0..xs.len())])
        };
        let target = if roll < 40 {
            pick(&mut self.rng, &voters)
        } else if roll < 60 {
            lagging
        } else if roll < 75 {
            pick(&mut self.rng, &unreachable)
        } else if roll < 90 {
            pick(&mut self.rng, &outsiders)
        } else {
            None
        };
        let target = match target {
            Some(t) => t,
            None => everyone[self.rng.random_range(0..everyone.len())],
        };
        match self.raft_mut(leader).transfer_leadership(target) {
            Ok(()) if target != leader => {
                self.report.transfers += 1;
                self.transfer_pending = Some((target, term));
                if self.fault_active && self.opts.late_delivery && self.rng.random_bool(0.3) {
                    // The target sits behind a congested link: its
                    // TimeoutNow may arrive after the transfer was given
                    // up and the log moved on without it.
                    self.faults.slow.insert(target);
                    self.faults.slow_inbound = true;
                    self.faults.slow_hold = self.rng.random_range(0.5..0.9);
                    if self.faults.hold_ms == 0 {
                        self.faults.hold_ms = self.rng.random_range(300..1500);
                    }
                }
            }
            Ok(()) => {}
            Err(_) => self.report.transfers_refused += 1,
        }
        self.process(leader)
    }
}
