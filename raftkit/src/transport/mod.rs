//! Peer links: how Raft messages travel between nodes.
//!
//! The runtime hands every outbound [`Message`] to a [`Transport`], which
//! queues it for its destination and never blocks the caller; inbound
//! messages arrive on the `mpsc` channel the runtime gave the transport when
//! it started. Raft tolerates lost, duplicated and reordered messages, so a
//! transport may drop messages to an unreachable or slow peer rather than
//! queue them without bound: a slow or dead peer never blocks the others.
//!
//! Implementations:
//! - [`quic`]: the production transport, QUIC (quinn) with mutual TLS
//!   ([`crate::tls`]), framed by [`frame`]; its accepting side (who a
//!   connection's certificate says is there, and what it may do) is
//!   `accept`; how many inbound peer connections it serves is
//!   `peer_limits`, how many inbound handshakes it runs at once and for
//!   how long is `handshakes`, which message shapes a peer of another
//!   binary understands (announced after the hello) is `peer_features`.
//! - [`memory`]: an in-process transport with fault injection (drop, delay,
//!   partition, one-way cut) for tests.
//!
//! Storage and transport never import each other; the runtime joins them.

use std::collections::BTreeMap;

use crate::core::{Message, NodeId};

mod accept;
mod append_decode;
pub mod frame;
pub(crate) mod frame_reader;
mod handshakes;
mod hello_detail;
pub(crate) mod inbox_bytes;
pub mod memory;
mod out_queue;
mod peer_features;
mod peer_limits;
pub mod quic;
mod quic_tuning;

pub use memory::{MemoryNetwork, MemoryTransport};
pub use quic::{GroupInbound, LinkState, QuicConfig, QuicTransport, TransportError};

/// Sends Raft messages to peers.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for `msg.to`. Never blocks; may drop the message when the
    /// peer is unknown, unreachable or too far behind.
    fn send(&self, msg: Message);

    /// Tells the transport where each peer can be reached (the addresses
    /// carried in the configuration in force). Peers no longer listed are
    /// disconnected.
    fn set_peers(&self, peers: BTreeMap<NodeId, String>);
}
