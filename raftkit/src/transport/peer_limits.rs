//! How many inbound peer connections ([`PEER_ALPN`](crate::tls::PEER_ALPN))
//! a node serves at once: per dialing node, and in all.
//!
//! Every inbound connection is served by a task of its own, and quinn
//! buffers what a connection's streams carry until they are read (up to
//! the connection's receive window, see `quic_tuning`). Only `node`
//! certificates are served on the peer ALPN (any other is closed at once,
//! see `accept`), but without a cap one holder of a node certificate (a
//! stolen or a retired one, or a node whose dialer misbehaves) could open
//! connections without bound, each holding a task, quinn's state and a
//! window, while its hellos wait or after they were accepted.
//!
//! Limits ([`QuicConfig::max_peer_connections_per_node`] and
//! [`QuicConfig::max_peer_connections`], set on a peer by
//! [`PeerBuilder::peer_connections`](crate::runtime::PeerBuilder::peer_connections)):
//! - per node id (the id of the certificate's name, never of what the
//!   dialer says), default [`DEFAULT_PEER_CONNECTIONS_PER_NODE`] (8). A
//!   node dials each peer once: one connection carries its link (a
//!   multi-group node's one link carries every group, `multi::links`). A
//!   second one overlaps while a link is redialed, and a node killed and
//!   restarted leaves its old connection here until the idle timeout (3 s
//!   by default) notices it is dead: 8 leaves room for several restarts
//!   within one idle timeout;
//! - in all, default [`DEFAULT_MAX_PEER_CONNECTIONS`] (1024): a few times
//!   the largest cluster a node links to (every other node of the cluster
//!   at most: a multi-group node links to the nodes its groups share).
//!
//! A connection past either limit is closed as soon as its certificate is
//! read, before any stream of it is accepted (nothing it sent is read),
//! with the application code `CLOSE_TOO_MANY_CONNECTIONS` and the reason
//! ([`PeerRefusal`]); a `warn` event names the dialer and the limit, and
//! [`QuicTransport::refused_peer_connections`] counts them. A refused
//! dialer's link retries with its backoff (at most 1 s by default) and is
//! served once a place is free: a connection's place is given back as soon
//! as the connection is closed (by either side, or by the idle timeout).
//!
//! Invariants:
//! - at most `per_node` connections of one node id and `total` in all are
//!   served at once (counted from the moment the certificate is checked to
//!   the moment the connection's task ends);
//! - the counts are updated under one lock, in one step each: concurrent
//!   connections never both take the last place.
//!
//! [`QuicConfig::max_peer_connections_per_node`]: super::QuicConfig::max_peer_connections_per_node
//! [`QuicConfig::max_peer_connections`]: super::QuicConfig::max_peer_connections
//! [`QuicTransport::refused_peer_connections`]: super::QuicTransport::refused_peer_connections

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::core::NodeId;

/// The default most inbound peer connections of one node a node serves at
/// once (module doc).
pub const DEFAULT_PEER_CONNECTIONS_PER_NODE: usize = 8;

/// The default most inbound peer connections a node serves at once
/// (module doc).
pub const DEFAULT_MAX_PEER_CONNECTIONS: usize = 1024;

/// How many inbound peer connections a node serves at once (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerConnectionLimits {
    /// Per dialing node id (at least 1).
    pub(crate) per_node: usize,
    /// In all (at least 1).
    pub(crate) total: usize,
}

/// Why an inbound peer connection was refused: it would have been past a
/// limit. Nothing it sent was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerRefusal {
    /// The dialer's node already has this many connections open here.
    #[error(
        "too many peer connections of node {node} ({open} open, the most this node serves of one node); nothing was read"
    )]
    PerNode {
        /// The dialer's node id (its certificate's).
        node: NodeId,
        /// Its connections open here.
        open: usize,
    },
    /// The node already serves this many peer connections.
    #[error("too many peer connections ({0} open, the most this node serves); nothing was read")]
    Total(usize),
}

/// Connections open now, in all and per node.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_node: HashMap<NodeId, usize>,
}

/// A node's places for inbound peer connections.
#[derive(Debug)]
pub(super) struct PeerPlaces {
    limits: PeerConnectionLimits,
    open: Mutex<Open>,
    refused: AtomicU64,
}

/// One inbound peer connection's place; given back when dropped.
#[derive(Debug)]
pub(super) struct PeerPlace {
    places: Arc<PeerPlaces>,
    node: NodeId,
}

impl PeerPlaces {
    /// Places for at most `limits` connections (each limit at least 1).
    pub(super) fn new(limits: PeerConnectionLimits) -> Arc<PeerPlaces> {
        Arc::new(PeerPlaces {
            limits: PeerConnectionLimits {
                per_node: limits.per_node.max(1),
                total: limits.total.max(1),
            },
            open: Mutex::default(),
            refused: AtomicU64::new(0),
        })
    }

    /// A place for a new connection of `node` if neither limit is reached;
    /// a refusal is counted.
    pub(super) fn admit(self: &Arc<Self>, node: NodeId) -> Result<PeerPlace, PeerRefusal> {
        let refusal = {
            let mut open = self.lock();
            let mine = open.per_node.get(&node).copied().unwrap_or(0);
            if open.total >= self.limits.total {
                PeerRefusal::Total(open.total)
            } else if mine >= self.limits.per_node {
                PeerRefusal::PerNode { node, open: mine }
            } else {
                open.per_node.insert(node, mine + 1);
                open.total += 1;
                return Ok(PeerPlace {
                    places: Arc::clone(self),
                    node,
                });
            }
        };
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(refusal)
    }

    /// Connections refused so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // The counts are updated in one step each: a panic elsewhere
        // leaves them whole.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut open = self.places.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_node.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_node.remove(&self.node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(per_node: usize, total: usize) -> Arc<PeerPlaces> {
        PeerPlaces::new(PeerConnectionLimits { per_node, total })
    }

    #[test]
    fn per_node_places_are_capped_and_given_back() {
        let p = places(2, 10);
        let a1 = p.admit(1).expect("first");
        let _a2 = p.admit(1).expect("second");
        assert_eq!(
            p.admit(1).err(),
            Some(PeerRefusal::PerNode { node: 1, open: 2 })
        );
        // Another node is not affected.
        let _b = p.admit(2).expect("another node");
        drop(a1);
        let _a3 = p.admit(1).expect("a place given back is taken again");
        assert_eq!(p.refused(), 1);
    }

    #[test]
    fn total_places_are_capped_and_given_back() {
        let p = places(8, 2);
        let a = p.admit(1).expect("a");
        let _b = p.admit(2).expect("b");
        assert_eq!(p.admit(3).err(), Some(PeerRefusal::Total(2)));
        drop(a);
        let _c = p.admit(3).expect("c");
        assert_eq!(p.refused(), 1);
        // Counts return to nothing.
        drop(_b);
        drop(_c);
        let open = p.lock();
        assert_eq!((open.total, open.per_node.len()), (0, 0));
    }

    #[test]
    fn limits_are_at_least_one() {
        let p = places(0, 0);
        let _a = p.admit(1).expect("one place");
        assert!(p.admit(1).is_err());
    }
}
