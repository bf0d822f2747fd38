//! Names and ids of peers.
//!
//! A peer is named `<state machine name>@<advertised address>` by default
//! (for example `kv@127.0.0.1:7001`). The Raft core identifies nodes by a
//! [`NodeId`]: the id of a peer is derived from its name by a fixed hash, so
//! that every node computes the same id for the same name without any
//! coordination, and a node restarted with the same name keeps its identity.

use crate::core::NodeId;

/// The default name of a peer: `<state machine name>@<advertised address>`.
pub fn default_name(state_machine: &str, advertised: &str) -> String {
    format!("{state_machine}@{advertised}")
}

/// The node id of the peer called `name`: FNV-1a (64-bit) of the name,
/// never zero (zero means "no node" in the core).
pub fn node_id(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if hash == 0 { 1 } else { hash }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(node_id("kv@127.0.0.1:7001"), node_id("kv@127.0.0.1:7001"));
        assert_ne!(node_id("kv@127.0.0.1:7001"), node_id("kv@127.0.0.1:7002"));
        assert_ne!(node_id(""), 0);
        assert_eq!(default_name("kv", "127.0.0.1:7001"), "kv@127.0.0.1:7001");
    }
}
