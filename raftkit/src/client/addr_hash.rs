//! A cheap hash for the remote client's table of live request streams,
//! keyed by member address (`remote::Inner::muxes`), looked up once per
//! call.
//!
//! std's default SipHash-1-3 cost about 234 instructions per lookup of a
//! `SocketAddr` (callgrind, issue 16, stop 51: more than half of
//! `Client::live_mux`); this one a multiply and a rotate per word the
//! address hashes (its kind, its IP's bytes, its port): `live_mux` went
//! from 421 to 188 instructions per call (stop 52).
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

use std::hash::{BuildHasherDefault, Hasher};

/// The multiplier of rustc's FxHash (a 64-bit odd constant with good
/// bit dispersion).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// FxHash-style hasher for socket addresses (module doc).
#[derive(Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

/// Builds [`AddrHasher`]s: the `S` of a `HashMap` keyed by `SocketAddr`.
pub(crate) type AddrHash = BuildHasherDefault<AddrHasher>;

impl AddrHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for AddrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

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
