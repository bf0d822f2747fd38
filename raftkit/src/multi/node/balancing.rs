//! The node's side of balancing ([`crate::multi::balance`]): a round of
//! the leader balancer, and the state the replica balancer
//! (`rebalance`) and replica moves ([`crate::multi::moves`]) keep on the
//! node — the known nodes, refused targets, stray learners and the locks
//! of moves per (group, target).
//!
//! Invariants: every move to a (group, target) pair holds that pair's
//! lock shared while it runs, and the removal of a stray learner there
//! holds it exclusively ([`MultiNode::move_lock`]); a lock nobody holds
//! is dropped from the table. A poisoned lock of the balancer's sets
//! reads as an empty set (the balancer only skips less).

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::info;

use super::MultiNode;
use crate::multi::GroupId;
use crate::runtime::{Peer, PeerExt};

/// Spreading leaders and replicas (see [`crate::multi::balance`]).
impl<S: PeerExt> MultiNode<S> {
    /// One round of the leader balancer ([`balance`](crate::multi::balance)):
    /// starts transferring leaderships this node holds beyond its even
    /// share to the voters that lead the fewest groups. Returns the
    /// transfers started, `(group, target node)`.
    pub async fn balance_leaders(&self) -> Vec<(GroupId, crate::core::NodeId)> {
        let peers: Vec<(GroupId, Peer<S>)> = self
            .inner
            .groups()
            .iter()
            .map(|(g, h)| (*g, h.peer.clone()))
            .collect();
        let view: Vec<crate::multi::balance::GroupView> = peers
            .iter()
            .map(|(g, p)| {
                let s = p.status();
                crate::multi::balance::GroupView {
                    group: *g,
                    leader: s.leader,
                    voters: s.members.iter().filter(|m| m.voter).map(|m| m.id).collect(),
                }
            })
            .collect();
        let mut started = Vec::new();
        for (group, target) in crate::multi::balance::plan(self.id(), &view) {
            let Some((_, peer)) = peers.iter().find(|(g, _)| *g == group) else {
                continue;
            };
            match peer.transfer_leadership(target).await {
                Ok(()) => {
                    info!(
                        group,
                        target, "leadership transfer started to balance leaders"
                    );
                    started.push((group, target));
                }
                Err(e) => {
                    tracing::debug!(group, target, error = %e, "leadership transfer not started")
                }
            }
        }
        started
    }

    /// Tells the replica balancer about nodes (advertised addresses) it may
    /// place replicas on besides those the node's groups list: a new node
    /// hosts nothing, so no group lists it yet.
    pub fn set_known_nodes(&self, addrs: Vec<String>) {
        if let Ok(mut k) = self.inner.known.lock() {
            *k = addrs;
        }
    }

    /// The options of the replica balancer's moves.
    pub(in crate::multi) fn balance_move_options(&self) -> crate::multi::MoveOptions {
        #[cfg(test)]
        if let Some(opts) = self.inner.balance_moves.lock().ok().and_then(|o| o.clone()) {
            return opts;
        }
        crate::multi::MoveOptions::default()
    }

    /// Sets the options of the replica balancer's moves (tests only).
    #[cfg(test)]
    pub(in crate::multi) fn set_balance_move_options(&self, opts: crate::multi::MoveOptions) {
        if let Ok(mut o) = self.inner.balance_moves.lock() {
            *o = Some(opts);
        }
    }

    /// Runs `f` on the replica balancer's refused targets (a poisoned lock:
    /// on a fresh, empty set).
    pub(crate) fn refused_targets<T>(
        &self,
        f: impl FnOnce(&mut crate::multi::balance::RefusedTargets) -> T,
    ) -> T {
        match self.inner.refused.lock() {
            Ok(mut r) => f(&mut r),
            Err(_) => f(&mut Default::default()),
        }
    }

    /// Runs `f` on the learners failed replica-balancing moves left (a
    /// poisoned lock: on a fresh, empty set).
    pub(in crate::multi) fn stray_learners<T>(
        &self,
        f: impl FnOnce(&mut BTreeSet<(GroupId, String)>) -> T,
    ) -> T {
        match self.inner.stray_learners.lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => f(&mut BTreeSet::new()),
        }
    }

    /// The lock of replica moves to node `to` in `group`: every move to
    /// the pair holds it shared while it runs, the replica balancer's
    /// removal of a stray learner there exclusively (see
    /// [`crate::multi::moves`], "Replica balancing").
    pub(in crate::multi) fn move_lock(
        &self,
        group: GroupId,
        to: crate::core::NodeId,
    ) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self
            .inner
            .move_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Held by nobody (only the map refers to it): dropped.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((group, to)).or_default().clone()
    }

    /// The nodes given to [`set_known_nodes`](Self::set_known_nodes).
    pub fn known_nodes(&self) -> Vec<String> {
        self.inner
            .known
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}
