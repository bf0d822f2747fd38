//! A cheap hash for the remote client's table of live request streams,
//! keyed by member address (`remote::Inner::muxes`), looked up once per
//! call.
//!
//! std's default SipHash-1-3 cost about 234 instructions per lookup of a
//! `SocketAddr` (callgrind, issue 16, stop 51: more than half of
//! `Client::live_mux`); a multiply and a rotate per word the address
//! hashes (its kind, its IP's bytes, its port) took `live_mux` from 421
//! to 188 instructions per call (stop 52). The hash is now the crate's
//! [`WordHashing`] (`word_hash`: a folded multiply per word instead of
//! that multiply-rotate, whose word fold it shared; not measured again
//! since).
//!
//! # Invariants
//!
//! 1. Only member addresses are keys: the client's configured members and
//!    the leader hints of members it reached over mutual TLS, so no party
//!    outside the cluster chooses keys; the table holds a handful. A key
//!    that collides only costs a probe, never a wrong answer (hashbrown
//!    compares keys).
//! 2. Equal addresses hash equally (a plain function of the bytes `Hash`
//!    writes, no seed), so lookups find what was inserted.

use crate::word_hash::WordHashing;

/// Builds the hashers of a `HashMap` keyed by `SocketAddr` (module doc).
pub(crate) type AddrHash = WordHashing;

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;

    /// Addresses that differ only in their port, or only in their IP, hash
    /// apart (all of them, for a table's worth), and a table keyed by them
    /// finds each one.
    #[test]
    fn member_addresses_hash_apart_and_a_table_keyed_by_them_finds_each() {
        let mut addrs: Vec<SocketAddr> = (0..512u16)
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000 + p)))
            .collect();
        addrs.extend((0..=255u8).map(|b| SocketAddr::from((Ipv4Addr::new(10, 0, 0, b), 7000))));
        addrs.extend(
            (0..64u16)
                .map(|b| SocketAddr::from((Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, b), 7000))),
        );
        let hashes: HashSet<u64> = addrs
            .iter()
            .map(|a| AddrHash::default().hash_one(a))
            .collect();
        assert_eq!(hashes.len(), addrs.len(), "two addresses hash alike");
        let table: HashMap<SocketAddr, usize, AddrHash> =
            addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        for (i, a) in addrs.iter().enumerate() {
            assert_eq!(table.get(a), Some(&i), "{a} not found");
        }
    }
}
