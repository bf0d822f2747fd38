//! The node's background tasks (hosting, retiring, placement recording,
//! replica balancing) and hosting an empty replica on a leader's message
//! for a group the node does not host (see [`crate::multi::hosting`]).
//!
//! Invariants: no replica is hosted on demand while a retirement is under
//! way (it holds the `retiring` lock), nor for a group whose tombstone is
//! pending, a quarantined or unfenced one, the placement group, or past
//! the policy's group limit; an earlier replica's markers are deleted
//! before the new replica is recorded; a message not delivered gives its
//! inbox charge back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::{ELECTION_TICKS, MultiNode};
use crate::multi::GroupId;
use crate::multi::placement::PLACEMENT_GROUP;
use crate::multi::removal::Asker;
use crate::runtime::PeerExt;

/// The background tasks and hosting on demand (see [`crate::multi::hosting`]).
impl<S: PeerExt> MultiNode<S> {
    pub(super) fn start_hosting(
        &self,
        mut host_rx: mpsc::Receiver<crate::multi::links::Hosting>,
        replicas_every: Option<Duration>,
    ) {
        let weak = Arc::downgrade(&self.inner);
        let hoster = tokio::spawn(async move {
            while let Some((group, msg, charge)) = host_rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                MultiNode { inner }
                    .host_on_demand_charged(group, msg, charge)
                    .await;
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.tick * ELECTION_TICKS;
        let retirer = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Asks after two election timeouts without a leader, at most
            // once per two election timeouts (see `crate::multi::removal`).
            let mut asker = Asker::new(every * 2, every * 2);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.links.prune_departed();
                let node = MultiNode { inner };
                node.retire_removed().await;
                node.ask_membership(&mut asker);
            }
        });
        let mut tasks = vec![
            hoster,
            retirer,
            crate::multi::placement_sync::spawn(self, every),
        ];
        if let Some(every) = replicas_every {
            let weak = Arc::downgrade(&self.inner);
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let node = MultiNode { inner };
                    if let Err(e) = node.balance_replicas().await {
                        tracing::debug!(node = %node.name(), error = %e, "replica balancing round failed");
                    }
                }
            }));
        }
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Starts an empty replica of `group` on a leader's message for it (if
    /// the policy allows), then hands it the message.
    #[cfg(test)]
    pub(super) async fn host_on_demand(&self, group: GroupId, msg: crate::core::Message) {
        self.host_on_demand_charged(group, msg, None).await;
    }

    /// [`Self::host_on_demand`] for a message holding `charge` of the
    /// node's inbox budget (given back if it is not delivered).
    pub(super) async fn host_on_demand_charged(
        &self,
        group: GroupId,
        msg: crate::core::Message,
        charge: Option<crate::transport::inbox_bytes::InboxCharge>,
    ) {
        let inner = &self.inner;
        // Not while a retirement is under way: it took its replica out of
        // the table before its tombstone (and fence) is written.
        // The placement group is never hosted on demand: its replica is a
        // `PlacementGroup`, not an `S`, lives outside the group table (so
        // `self.group` never shows it), and joins only by `form_shards` or
        // a restart. A message for it before it is registered is dropped;
        // its leader resends.
        if group == PLACEMENT_GROUP {
            tracing::debug!(
                group,
                from = msg.from,
                "not hosting the placement group on demand"
            );
            return;
        }
        let retiring = inner.retiring.lock().await;
        if self.group(group).is_none() {
            if inner.unretired().contains_key(&group) {
                // Its old log is still in the journal (see `hosting`).
                tracing::debug!(
                    group,
                    from = msg.from,
                    "not hosting a group whose retirement is pending"
                );
                return;
            }
            let policy = &inner.hosting;
            // A group this node left comes back behind the fence of its
            // removal (`start_replica`, see `crate::multi::hosting`): the new
            // replica starts in the fence's term, and answers a leader of an
            // earlier term with it (Raft §5.1). A removal without a known
            // fence (an older journal's, or an unreadable one) never.
            let unfenced = inner.journal.fence(group) == Some(crate::multi::journal::LEGACY_FENCE);
            let quarantined = unfenced
                || inner
                    .tombstones
                    .lock()
                    .map(|mut t| t.quarantined(group, policy.quarantine))
                    .unwrap_or(true);
            let full = inner.groups().len() >= policy.max_groups;
            if !policy.on_demand || quarantined || full {
                tracing::debug!(
                    group,
                    from = msg.from,
                    quarantined,
                    full,
                    "not hosting a group on demand"
                );
                return;
            }
            // An earlier replica's markers left by a failed deletion
            // would pass for the new replica's (a leftover `listed` retires
            // it at a configuration that predates its addition): deleted
            // first, or the group is not hosted (its leader resends).
            if let Err(e) = crate::multi::hosting::clear_markers(&*inner.fs, &inner.dir, group) {
                tracing::warn!(group, error = %e, "cannot delete an earlier replica's markers; not hosting the group on demand");
                return;
            }
            if let Err(e) = inner.journal.create_group(group) {
                tracing::warn!(group, error = %e, "cannot record a group hosted on demand");
                return;
            }
            match self.start_group(group, None).await {
                Ok(_) => {
                    // Its answers must reach the leader: a node the group
                    // left has no link to it any more.
                    inner.links.link_joining(group, msg.from);
                    info!(
                        group,
                        from = msg.from,
                        term = msg.term,
                        fence = ?inner.journal.fence(group),
                        "hosting an empty replica on demand"
                    )
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot start a replica on demand");
                    return;
                }
            }
        }
        drop(retiring);
        inner.links.deliver(group, msg, charge);
    }
}
