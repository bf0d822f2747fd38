//! Retiring the node's replicas that a committed configuration removed,
//! and orphans (see [`crate::multi::hosting`]), and the membership queries
//! a replica that missed its removal asks and answers (see
//! [`crate::multi::removal`]).
//!
//! Invariants:
//! - a replica is retired only for a [`Retire`] reason the policy modules
//!   give; retirements are serialised (the `retiring` lock);
//! - order: out of the table, refused on demand (buried), stopped, its
//!   successors durable (`crate::multi::successors`), then the journal's
//!   tombstone with its fence, and only then its files deleted; a
//!   tombstone the journal refuses leaves the group retiring
//!   ([`MultiNode::pending_retirements`]) until a retry writes it;
//! - a replica counts as listed only by a committed configuration (an
//!   uncommitted one may be rolled back).

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::info;

use super::MultiNode;
use crate::core::Index;
use crate::error::Error;
use crate::multi::GroupId;
use crate::multi::hosting::{Retire, retire_reason};
use crate::multi::removal::{self, Asker};
use crate::runtime::PeerExt;
use crate::storage::LogStore;
use crate::transport::GroupInbound;
use crate::transport::frame::PeerFrame;

/// Retiring removed replicas (see [`crate::multi::hosting`], [`crate::multi::removal`]).
impl<S: PeerExt> MultiNode<S> {
    /// Retires every replica that a committed configuration removed, and
    /// every orphan (see [`crate::multi::hosting`]).
    pub(super) async fn retire_removed(&self) {
        self.retry_tombstones().await;
        let me = self.id();
        let mut newly_listed = Vec::new();
        let due: Vec<(GroupId, Retire)> = self
            .inner
            .groups()
            .iter_mut()
            .filter_map(|(g, h)| {
                let w = h.peer.watch();
                let st = w.borrow();
                // Listed by a committed configuration only: an uncommitted
                // one that adds this node may be rolled back by a new
                // leader, and then a committed one without it is no removal.
                if !h.listed
                    && st.config_index > h.fence
                    && st.commit >= st.config_index
                    && st.members.iter().any(|m| m.id == me)
                {
                    h.listed = true;
                    newly_listed.push(*g);
                }
                let hosted_for = h.since.elapsed();
                let quiet_for = st
                    .leader_contact
                    .map_or(hosted_for, |at| at.elapsed().min(hosted_for));
                retire_reason(me, &st, quiet_for, &self.inner.hosting, h.listed, h.fence)
                    .map(|r| (*g, r))
            })
            .collect();
        for group in newly_listed {
            if let Err(e) =
                crate::multi::hosting::mark_listed(&*self.inner.fs, &self.inner.dir, group)
            {
                // Kept in memory; after a restart this replica is retired
                // only on its group leader's word (see `crate::multi::removal`).
                tracing::warn!(group, error = %e, "cannot record that a replica was listed");
            }
        }
        for (group, reason) in due {
            if let Err(e) = self.retire(group, reason).await {
                tracing::warn!(group, error = %e, "cannot retire a removed replica");
            }
        }
    }

    /// Asks the members of each group whose replica here is not listed by
    /// its latest configuration, or has known no leader for a while,
    /// whether it is still a member (see [`crate::multi::removal`]).
    pub(super) fn ask_membership(&self, asker: &mut Asker) {
        let me = self.id();
        let now = tokio::time::Instant::now();
        let asks: Vec<(GroupId, Vec<crate::core::NodeId>)> = {
            let groups = self.inner.groups();
            let hosted: Vec<GroupId> = groups.keys().copied().collect();
            asker.retain(&hosted);
            groups
                .iter()
                .map(|(g, h)| {
                    let w = h.peer.watch();
                    let st = w.borrow();
                    (*g, asker.ask(me, *g, &st, now))
                })
                .filter(|(_, to)| !to.is_empty())
                .collect()
        };
        for (group, to) in asks {
            tracing::debug!(group, ?to, "asking whether this node is still a member");
            for node in to {
                self.inner
                    .links
                    .send_control(node, PeerFrame::MemberQuery { group });
            }
        }
    }

    /// Answers the membership queries of other nodes, and retires a
    /// replica on an answer that shows its removal committed (see
    /// [`crate::multi::removal`]).
    pub(super) fn start_removal(&self, mut inbound: mpsc::Receiver<GroupInbound>) {
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            while let Some(item) = inbound.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                MultiNode { inner }.on_membership(item).await;
            }
        });
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.push(task);
        }
    }

    pub(super) async fn on_membership(&self, item: GroupInbound) {
        match item {
            GroupInbound::MemberQuery { from, addr, group } => {
                // Only a group hosted here has anything to tell.
                let Some(peer) = self.group(group) else {
                    return;
                };
                let answer = removal::answer_of(&peer.watch().borrow());
                // The asker refuses a longer list (and drops the link); no
                // configuration in force is longer (`MAX_MEMBERS` is
                // checked on every path that takes one). Not answering is
                // safe: the asker asks again, or goes on waiting.
                if answer.members.len() > crate::core::MAX_MEMBERS {
                    tracing::warn!(
                        group,
                        asker = from,
                        members = answer.members.len(),
                        max = crate::core::MAX_MEMBERS,
                        "membership too large to answer; not answered"
                    );
                    return;
                }
                if self.inner.links.link_asker(from, addr) {
                    self.inner
                        .links
                        .send_control(from, PeerFrame::MemberAnswer { group, answer });
                }
            }
            GroupInbound::MemberAnswer {
                from,
                group,
                answer,
            } => {
                let Some((peer, listed, fence)) = self
                    .inner
                    .groups()
                    .get(&group)
                    .map(|h| (h.peer.clone(), h.listed, h.fence))
                else {
                    return;
                };
                let st = peer.watch().borrow().clone();
                let removed = removal::judge(self.id(), &st, listed, fence, from, &answer);
                if removed {
                    info!(
                        group,
                        by = from,
                        config_index = answer.config_index,
                        commit = answer.commit,
                        "a member says a committed configuration removed this node's replica"
                    );
                    let removal = (answer.config_index, answer.term);
                    if let Err(e) = self.retire(group, Retire::Removed(removal)).await {
                        tracing::warn!(group, error = %e, "cannot retire a removed replica");
                    }
                }
            }
            GroupInbound::Msg { .. } | GroupInbound::Coalesced { .. } => {}
        }
    }

    /// Stops `group`'s replica here and deletes its state: the journal's
    /// removal record first (durable, with the fence of any later replica
    /// of the group here, see `hosting`), then its snapshot files.
    pub(super) async fn retire(&self, group: GroupId, reason: Retire) -> Result<(), Error> {
        // Held to the end: a shutdown waits for a retirement under way (a
        // kill does not: a crash in the middle is recovered at start).
        let _retiring = self.inner.retiring.lock().await;
        let Some(h) = self.inner.groups().remove(&group) else {
            return Ok(());
        };
        // The window: out of the map, no tombstone yet (a test holds it open).
        #[cfg(test)]
        super::retire_tests::WindowPause::hold(&self.inner.window).await;
        // Refused on demand from now on: a message arriving while the
        // replica stops must not start a fresh one.
        if let Ok(mut t) = self.inner.tombstones.lock() {
            t.bury(group);
        }
        let stopped = h.peer.shutdown().await;
        self.inner.links.unregister(group);
        // The nodes the group went on with, when the replica's last
        // configuration is the committed, settled one that removed it (the
        // retirer's case; an answer's retirement may hold an unsettled one,
        // which names nobody here).
        let last = h.peer.status();
        let successors = (!last.joint && last.config_index > 0 && last.commit >= last.config_index)
            .then(|| {
                last.members
                    .iter()
                    .filter(|m| m.voter && m.id != self.id())
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
            });
        // Durable before the tombstone (`crate::multi::successors`): a removal the
        // journal acknowledged keeps them across a restart. Encoded under
        // the lock, written after it (retirements are serialised, so no
        // older encoding overtakes this one).
        let encoded = {
            let mut known = self
                .inner
                .successors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.record(group, successors, std::time::SystemTime::now());
            known.encode()
        };
        let saved = encoded.and_then(|bytes| {
            crate::multi::successors::Successors::write(&*self.inner.fs, &self.inner.dir, &bytes)
        });
        if let Err(e) = saved {
            tracing::warn!(group, error = %e, "cannot keep a retired replica's successors on disk; kept in memory until a restart (rule 4 of placement_auth)");
        }
        // The fence: the committed configuration that removed the replica,
        // and the latest term it knew, read once it has stopped (it never
        // voted in a later one; its votes were durable before they left).
        let (index, term) = match reason {
            Retire::Removed(removal) => removal,
            Retire::Orphan => (0, 0),
        };
        let known = h.peer.status().term;
        let durable = self.inner.journal.log(group).hard_state().term;
        let fence = (index, term.max(known).max(durable));
        if let Err(e) = self.inner.journal.remove_group(group, fence) {
            // Stopped, but its log is still in the journal: retiring until
            // the tombstone is written (see `hosting`).
            tracing::error!(group, ?reason, ?fence, node = %self.inner.name, error = %e, "a retired replica's tombstone was not written; the group stays retiring here (restart the node)");
            self.inner.unretired().insert(group, fence);
            return Err(Error::Storage(e.to_string()));
        }
        crate::multi::hosting::delete_group_files(&*self.inner.fs, &self.inner.dir, group);
        info!(group, ?reason, ?fence, node = %self.inner.name, "replica retired and its state deleted");
        stopped
    }

    /// Writes the tombstones the journal refused to earlier retirements;
    /// each one written ends its group's retirement (its files are deleted
    /// then). See `hosting`, "A retirement the journal refuses".
    pub(super) async fn retry_tombstones(&self) {
        let _retiring = self.inner.retiring.lock().await;
        let pending: Vec<(GroupId, (Index, crate::core::Term))> = self
            .inner
            .unretired()
            .iter()
            .map(|(g, f)| (*g, *f))
            .collect();
        for (group, fence) in pending {
            match self.inner.journal.remove_group(group, fence) {
                Ok(()) => {
                    self.inner.unretired().remove(&group);
                    crate::multi::hosting::delete_group_files(
                        &*self.inner.fs,
                        &self.inner.dir,
                        group,
                    );
                    info!(group, ?fence, node = %self.inner.name, "a retirement's tombstone written on retry; its state deleted");
                }
                Err(e) => {
                    tracing::debug!(group, ?fence, error = %e, "a retirement's tombstone is still refused");
                }
            }
        }
    }
}
