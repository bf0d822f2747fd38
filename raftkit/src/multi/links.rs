//! The peer links of a multi-group node: every group's messages to a node
//! travel on the node's one QUIC link to it.
//!
//! Each group's node task sees an ordinary [`Transport`] ([`GroupLink`]);
//! outbound messages are queued on the shared [`QuicTransport`] tagged with
//! their group ([`PeerFrame::Group`](crate::transport::frame::PeerFrame)),
//! so one write on the link carries the queued messages of all groups
//! (heartbeats of an idle group included). Inbound, one demultiplexing task
//! hands each message to its group's inbox.
//!
//! Invariants:
//! - the links the QUIC transport keeps are the union of the peers every
//!   group's configuration lists: a group that forgets a node does not cut
//!   another group's link to it;
//! - the demultiplexer never waits for one group: a message for a full
//!   inbox, or for a group this node does not host, is dropped and counted
//!   (Raft tolerates lost messages); a slow group never stalls the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tracing::trace;

use super::GroupId;
use crate::core::{Message, NodeId};
use crate::transport::{GroupInbound, QuicTransport, Transport};

struct Hosted {
    inbox: mpsc::Sender<Message>,
    peers: BTreeMap<NodeId, String>,
}

/// The groups' view of one node's QUIC transport.
pub(crate) struct Links {
    quic: QuicTransport,
    groups: Mutex<HashMap<GroupId, Hosted>>,
    /// Inbound messages dropped: unknown group or full inbox.
    dropped: AtomicU64,
}

impl Links {
    pub(crate) fn new(quic: QuicTransport) -> Arc<Links> {
        Arc::new(Links {
            quic,
            groups: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<GroupId, Hosted>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hosts `group`: its inbound messages go to `inbox`.
    pub(crate) fn register(&self, group: GroupId, inbox: mpsc::Sender<Message>) {
        self.groups().insert(
            group,
            Hosted {
                inbox,
                peers: BTreeMap::new(),
            },
        );
    }

    /// Stops hosting `group` (its links stay while other groups list them).
    pub(crate) fn unregister(&self, group: GroupId) {
        let mut groups = self.groups();
        groups.remove(&group);
        self.quic.set_peers(union(&groups));
    }

    /// The nodes some hosted group lists.
    pub(crate) fn peer_nodes(&self) -> Vec<NodeId> {
        union(&self.groups()).into_keys().collect()
    }

    /// Sends a coalesced heartbeat to node `to`.
    pub(crate) fn send_coalesced(&self, to: NodeId, quiesced: Vec<(u64, u64, u64)>) {
        self.quic.send_coalesced(to, quiesced);
    }

    /// Inbound messages dropped so far (unknown group or full inbox).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands an inbound message to its group.
    fn deliver(&self, group: GroupId, msg: Message) {
        let groups = self.groups();
        let delivered = groups
            .get(&group)
            .is_some_and(|h| h.inbox.try_send(msg).is_ok());
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            trace!(
                group,
                "message for a group not hosted here or with a full inbox; dropped"
            );
        }
    }

    /// The transport of one group.
    pub(crate) fn link(self: &Arc<Self>, group: GroupId) -> GroupLink {
        GroupLink {
            links: self.clone(),
            group,
        }
    }
}

fn union(groups: &HashMap<GroupId, Hosted>) -> BTreeMap<NodeId, String> {
    groups
        .values()
        .flat_map(|h| h.peers.iter().map(|(id, addr)| (*id, addr.clone())))
        .collect()
}

/// Delivers the messages arriving on the node's group inbox until it
/// closes: group messages to their group, coalesced heartbeats to the
/// quiescence task (dropped if it is behind: the next one follows).
pub(crate) async fn demultiplex(
    links: Arc<Links>,
    mut inbound: mpsc::Receiver<GroupInbound>,
    coalesced: mpsc::Sender<super::quiesce::Beat>,
) {
    while let Some(item) = inbound.recv().await {
        match item {
            GroupInbound::Msg { group, msg } => links.deliver(group, msg),
            GroupInbound::Coalesced { from, quiesced } => {
                if coalesced.try_send((from, quiesced)).is_err() {
                    links.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One group's [`Transport`]: the node's QUIC links, messages tagged with
/// the group.
pub(crate) struct GroupLink {
    links: Arc<Links>,
    group: GroupId,
}

impl Transport for GroupLink {
    fn send(&self, msg: Message) {
        self.links.quic.send_group(self.group, msg);
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        let mut groups = self.links.groups();
        if let Some(h) = groups.get_mut(&self.group) {
            if h.peers == peers {
                return;
            }
            h.peers = peers;
        }
        self.links.quic.set_peers(union(&groups));
    }
}
