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
//! Invariants:
//! - the hash folds the 8-byte words of what the key writes, each with a
//!   folded multiply (the 128-bit product of the running hash, xored with
//!   the word, and a constant, its halves xored: every input bit reaches
//!   every output bit; a plain multiply-rotate, rustc's `FxHasher`, was
//!   tried first and two owners one bit apart collided, see the tests);
//!   it is not keyed, so it does not resist chosen collisions. It needs
//!   not: a key is either
//!   [`Owner::Local`] or the SHA-256 of a client certificate that the
//!   cluster's CA signed, so nobody who cannot get certificates issued
//!   chooses keys, and colliding 64-bit hashes means finding SHA-256
//!   outputs that agree on 64 bits each, per certificate issued; the maps
//!   hold one entry per owner holding sessions, which the per-owner cap
//!   bounds anyway;
//! - nothing depends on the maps' iteration order (sums and maxima only),
//!   which was already different in every process under SipHash's random
//!   keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::session::Owner;

/// A map keyed by [`Owner`], hashed by [`OwnerHashing`].
pub(crate) type OwnerMap<V> = HashMap<Owner, V, OwnerHashing>;

/// Builds [`OwnerHasher`]s (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OwnerHashing;

impl BuildHasher for OwnerHashing {
    type Hasher = OwnerHasher;

    fn build_hasher(&self) -> OwnerHasher {
        OwnerHasher(0)
    }
}

/// A folded-multiply fold of the 8-byte words written (module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnerHasher(u64);

/// An odd constant with its bits spread (the fractional part of pi):
/// one multiplication carries every bit of the other factor into the
/// high half of the product, which the fold brings back into the low.
const SEED: u64 = 0x24_3f_6a_88_85_a3_08_d3;

impl OwnerHasher {
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(SEED);
        // Both halves of the product, kept: the cast keeps the low one.
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for OwnerHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(owner: Owner) -> u64 {
        OwnerHashing.hash_one(owner)
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
