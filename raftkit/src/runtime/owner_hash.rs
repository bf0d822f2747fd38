//! The hashing of the session table's per-owner tallies
//! ([`Sessions`](super::session::Sessions)' sessions and stored-reply
//! bytes per [`Owner`]).
//!
//! Every session write looks its owner up in those maps several times on
//! every replica (the byte bound's admission, the record, the reclaim
//! check, the running counts). With the standard library's SipHash, that
//! was about 5,900 of the 70,000 user-space instructions of a durable
//! write through the whole cluster (callgrind, `benches/perwrite.rs` in
//! `quic` mode, 64 proposers, issue 16; about 50 with this hash): an
//! owner is 41 bytes to SipHash (discriminant, length, 32-byte
//! fingerprint), about 240 instructions a lookup. In CPU time sampled on
//! a `kv serve` leader it was about 0.5 % (the kernel's share is large).
//!
//! The hash is the crate's [`WordHashing`] (`word_hash`: a folded
//! multiply per 8-byte word, not keyed).
//!
//! Invariants:
//! - the hash is not keyed, so it does not resist chosen collisions. It
//!   needs not: a key is either
//!   [`Owner::Local`] or the SHA-256 of a client certificate that the
//!   cluster's CA signed, so nobody who cannot get certificates issued
//!   chooses keys, and colliding 64-bit hashes means finding SHA-256
//!   outputs that agree on 64 bits each, per certificate issued; the maps
//!   hold one entry per owner holding sessions, which the per-owner cap
//!   bounds anyway. Owners one bit apart hash apart (the tests; a plain
//!   multiply-rotate, rustc's `FxHasher`, did not);
//! - nothing depends on the maps' iteration order (sums and maxima only),
//!   which was already different in every process under SipHash's random
//!   keys.

use std::collections::HashMap;

use super::session::Owner;
use crate::word_hash::WordHashing;

/// A map keyed by [`Owner`], hashed by [`WordHashing`] (module docs).
pub(crate) type OwnerMap<V> = HashMap<Owner, V, WordHashing>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash(owner: Owner) -> u64 {
        WordHashing.hash_one(owner)
    }

    /// Owners that differ in any one byte of their fingerprint, or in
    /// kind, hash apart; the same owner always hashes alike (in every
    /// process: the hash is not keyed).
    #[test]
    fn owners_that_differ_anywhere_hash_apart() {
        let base = [7u8; 32];
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(hash(Owner::Local)));
        assert!(seen.insert(hash(Owner::Certificate(base))));
        for i in 0..32 {
            for bit in 0..8 {
                let mut fp = base;
                fp[i] ^= 1 << bit;
                assert!(
                    seen.insert(hash(Owner::Certificate(fp))),
                    "byte {i} bit {bit} collided"
                );
            }
        }
        assert_eq!(
            hash(Owner::Certificate(base)),
            hash(Owner::Certificate(base))
        );
    }

    /// The map behaves as a map: every owner found with its own value
    /// among many (random fingerprints, as SHA-256 gives).
    #[test]
    fn an_owner_map_finds_every_owner() {
        let mut map: OwnerMap<usize> = OwnerMap::default();
        let owners: Vec<Owner> = (0..1000u32)
            .map(|i| {
                let mut fp = [0u8; 32];
                for (j, b) in fp.iter_mut().enumerate() {
                    *b = (i.wrapping_mul(2_654_435_761).rotate_left(j as u32 % 32) >> (j % 4 * 8))
                        as u8;
                }
                fp[..4].copy_from_slice(&i.to_le_bytes());
                Owner::Certificate(fp)
            })
            .collect();
        for (i, o) in owners.iter().enumerate() {
            map.insert(*o, i);
        }
        map.insert(Owner::Local, usize::MAX);
        assert_eq!(map.len(), 1001);
        for (i, o) in owners.iter().enumerate() {
            assert_eq!(map.get(o), Some(&i));
        }
        assert_eq!(map.get(&Owner::Local), Some(&usize::MAX));
    }
}
