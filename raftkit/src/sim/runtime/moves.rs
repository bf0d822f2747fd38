//! Leadership transfers and replica moves in the whole-runtime
//! simulation's fault schedule.
//!
//! - **transfer** (thesis §3.10): the nemesis asks a group's leader to hand
//!   its leadership to a random target: mostly a voter of the group, now
//!   and then a node that is not one (the leader must refuse it).
//! - **move** (thesis §4.2.1, §4.3; issue 18 item 3): a replica of a group
//!   goes from a voter node to a spare node by the membership sequence an
//!   operator runs: start an empty replica on the spare node, add it as a
//!   learner, wait until it has caught up with the leader's commit index,
//!   change the voters (the runtime goes through the joint configuration
//!   `C_old,new` and leaves it once it commits), wait until the leader's
//!   configuration is the new one and not joint, and only then drop the old
//!   replica (stop it, remove its log from the node's journal). Each step
//!   goes to whoever leads at that moment, and is retried until the move's
//!   deadline; crashes, partitions and transfers happen across all of them.
//!   A move that runs out of time stops where it is (a learner may remain
//!   in the configuration; the next move of the group starts from the
//!   configuration in force).
//!
//! **Moving back.** A move may bring a group back to a node it left. A
//! group's members are named by their node's id, so the new, empty
//! replica answers under the id of the old replica, whose log and votes
//! went with it; a member that lags behind the move still holds a
//! configuration that lists that id as a voter. Unfenced, the newcomer
//! counts itself a voter of the old configurations it catches up through
//! and gives its vote as the old voter's: the simulation found this (seed
//! 1864 of the first 2000, when moves back were first allowed): the new
//! replica installed a snapshot from before its node's removal, whose
//! configuration made it a voter again; with a lagging member it formed a
//! majority of that old configuration, elected a leader whose log lacked
//! committed entries, and the group's logs diverged. The node's journal
//! therefore keeps a tombstone with a **membership fence** (the index of
//! the committed configuration that removed the old replica, and the
//! latest term the old replica knew), and the new replica starts behind
//! it ([`Config::membership_fence`](crate::core::Config::membership_fence),
//! `multi::hosting`). [`Tooth::RehostRemovedReplica`](super::teeth::Tooth::RehostRemovedReplica) starts it without
//! the fence, and the run catches it.
//!
//! **A failed drop.** Dropping the old replica writes its tombstone to the
//! node's journal, which refuses it once a write failed there (a full
//! disk): the replica has stopped, but its log is still in the journal,
//! and a real node reports the group as retiring
//! ([`MultiNode::pending_retirements`](crate::multi::MultiNode::pending_retirements),
//! see `multi::hosting`, "A retirement the journal refuses"). The model
//! does what an operator seeing that does: it marks the placement
//! `retiring`, moves no replica of the group back to that node meanwhile,
//! and restarts the node (as any node whose storage failed), whose start
//! writes the tombstone. A move back counts a new incarnation (a new
//! snapshot directory) only once the node's journal took the new log, so
//! that a restart finds the snapshots of the log its journal holds. Seed
//! 494 found both: a move back tried every 100 ms against the failed
//! journal and counted 113 incarnations, and the restart started the old
//! log under the 113th's empty snapshot directory.
//!
//! The nemesis starts at most one move per group at a time. What the run
//! judges is unchanged: each group's replicas agree, no acknowledged write
//! is lost, and its history stays linearizable across the moves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::kit::{World, lock};
use crate::core::{Configuration, NodeId};
use crate::runtime::PeerStatus;
use crate::state_machine::StateMachine;

/// How long a whole move may take.
const MOVE_DEADLINE: Duration = Duration::from_secs(40);
/// How long one call of a step may take.
const STEP: Duration = Duration::from_secs(2);
/// The pause between two tries of a step.
const RETRY: Duration = Duration::from_millis(100);

/// Asks `group`'s leader to transfer its leadership to a random target.
pub(crate) async fn transfer<S: StateMachine + Default>(
    world: &Arc<World<S>>,
    group: usize,
    rng: &mut StdRng,
) {
    let Some((l, leader)) = world.leader(group) else {
        return;
    };
    let voters: Vec<NodeId> = leader
        .status()
        .members
        .iter()
        .filter(|m| m.voter && m.id != leader.id())
        .map(|m| m.id)
        .collect();
    let n = world.node_count();
    let target = if voters.is_empty() || rng.random_ratio(1, 8) {
        world.node(rng.random_range(0..n)).1
    } else {
        voters[rng.random_range(0..voters.len())]
    };
    let r = tokio::time::timeout(STEP, leader.transfer_leadership(target)).await;
    let started = matches!(r, Ok(Ok(())));
    if started {
        lock(&world.membership).transfers += 1;
    }
    world.event(format_args!(
        "group {group}: leader {l} transfers to {target:#x} ({})",
        match r {
            Ok(Ok(())) => "started".to_string(),
            Ok(Err(e)) => format!("refused: {e}"),
            Err(_) => "timed out".to_string(),
        }
    ));
}

/// Starts moving a replica of `group` from one of its voters to a spare
/// node, if the group has no move under way and a spare node runs.
pub(crate) fn start_move<S: StateMachine + Default>(
    world: &Arc<World<S>>,
    group: usize,
    rng: &mut StdRng,
) {
    let Some((_, leader)) = world.leader(group) else {
        return;
    };
    let status = leader.status();
    let n = world.node_count();
    let members: BTreeSet<NodeId> = status.members.iter().map(|m| m.id).collect();
    let spares: Vec<usize> = (0..n)
        .filter(|&i| {
            world.is_up(i)
                && !world.hosts(i, group)
                && !world.retiring(i, group)
                && !members.contains(&world.node(i).1)
        })
        .collect();
    // A move brings the group back to a node it left whenever it can: the
    // case the membership fence is for (module docs), and the one the
    // tooth breaks.
    let back: Vec<usize> = spares
        .iter()
        .copied()
        .filter(|&i| world.left(i, group))
        .collect();
    let spares = if back.is_empty() { spares } else { back };
    let sources: Vec<usize> = (0..n)
        .filter(|&i| {
            status
                .members
                .iter()
                .any(|m| m.voter && m.id == world.node(i).1)
        })
        .collect();
    if spares.is_empty() || sources.is_empty() || status.joint {
        return;
    }
    if world.groups[group].moving.swap(true, Ordering::SeqCst) {
        return;
    }
    let from = sources[rng.random_range(0..sources.len())];
    let to = spares[rng.random_range(0..spares.len())];
    let back = world.left(to, group);
    lock(&world.membership).moves_started += 1;
    world.event(format_args!(
        "group {group}: moving the replica on node {from} to node {to}"
    ));
    let world = world.clone();
    tokio::spawn(async move {
        let done = move_replica(&world, group, from, to).await;
        match done {
            Ok(()) => {
                let mut counts = lock(&world.membership);
                counts.moves_done += 1;
                counts.moves_back += u64::from(back);
                drop(counts);
                world.event(format_args!(
                    "group {group}: moved from node {from} to node {to}"
                ));
            }
            Err(step) => world.event(format_args!(
                "group {group}: move from node {from} to node {to} stopped at {step}"
            )),
        }
        world.groups[group].moving.store(false, Ordering::SeqCst);
    });
}

/// The status of `group`'s leader, when one runs.
fn leader_status<S: StateMachine + Default>(world: &World<S>, group: usize) -> Option<PeerStatus> {
    world.leader(group).map(|(_, p)| p.status())
}

/// The configuration in force on `status`' node, changed by `edit`.
fn target(status: &PeerStatus, edit: impl FnOnce(&mut Configuration)) -> Configuration {
    let mut conf = Configuration::default();
    for m in &status.members {
        if m.voter {
            conf.voters.insert(m.id);
        } else {
            conf.learners.insert(m.id);
        }
        if let Some(addr) = &m.addr {
            conf.addrs.insert(m.id, addr.clone());
        }
    }
    edit(&mut conf);
    conf
}

/// Proposes the change `edit` makes to the configuration in force, on
/// whoever leads, until `done` says the leader's configuration has it.
async fn change<S: StateMachine + Default>(
    world: &World<S>,
    group: usize,
    deadline: tokio::time::Instant,
    edit: impl Fn(&mut Configuration),
    done: impl Fn(&PeerStatus) -> bool,
) -> Option<PeerStatus> {
    while tokio::time::Instant::now() < deadline {
        if let Some((_, leader)) = world.leader(group) {
            let status = leader.status();
            if done(&status) && !status.joint && status.commit >= status.config_index {
                return Some(status);
            }
            if !done(&status) && !status.joint {
                let conf = target(&status, &edit);
                let _ = tokio::time::timeout(STEP, leader.change_config(conf)).await;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    None
}

/// The steps of a move (module docs); `Err` names the step that ran out
/// of time.
async fn move_replica<S: StateMachine + Default>(
    world: &Arc<World<S>>,
    group: usize,
    from: usize,
    to: usize,
) -> Result<(), &'static str> {
    let deadline = tokio::time::Instant::now() + MOVE_DEADLINE;
    let (to_addr, to_id) = world.node(to);
    let from_id = world.node(from).1;
    // 1. An empty replica on the spare node.
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err("starting the new replica");
        }
        match world.add_replica(to, group).await {
            Ok(()) => break,
            Err(_)
                if world.hosts(to, group)
                    && world.replicas(group).iter().any(|(i, _)| *i == to) =>
            {
                break;
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
    // 2. Added as a learner.
    let has = |s: &PeerStatus, id: NodeId| s.members.iter().any(|m| m.id == id);
    let added = change(
        world,
        group,
        deadline,
        |c| {
            c.learners.insert(to_id);
            c.addrs.insert(to_id, to_addr.clone());
        },
        |s| has(s, to_id),
    )
    .await
    .is_some();
    if !added {
        return Err("adding the learner");
    }
    // 3. Caught up: it applied what the leader had committed.
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err("catching up");
        }
        let commit = leader_status(world, group).map(|s| s.commit);
        let applied = world
            .replicas(group)
            .into_iter()
            .find(|(i, _)| *i == to)
            .map(|(_, p)| p.status().applied);
        if let (Some(commit), Some(applied)) = (commit, applied)
            && applied >= commit
        {
            break;
        }
        tokio::time::sleep(RETRY).await;
    }
    // 4. The voters change (through the joint configuration), committed.
    let is_voter = |s: &PeerStatus, id: NodeId| s.members.iter().any(|m| m.id == id && m.voter);
    let changed = change(
        world,
        group,
        deadline,
        |c| {
            c.learners.remove(&to_id);
            c.voters.insert(to_id);
            c.voters.remove(&from_id);
            c.addrs.remove(&from_id);
        },
        |s| is_voter(s, to_id) && !has(s, from_id),
    )
    .await;
    let Some(changed) = changed else {
        return Err("the joint change");
    };
    // 5. Only now the old replica goes, its tombstone fenced at the
    // committed configuration without it (see the module docs).
    {
        let mut placement = lock(&world.placement);
        let p = placement.entry((from, group)).or_default();
        p.removed = true;
        p.removal = (changed.config_index, changed.term);
    }
    world.drop_replica(from, group).await;
    Ok(())
}
