//! The crate's one cheap hasher for small in-process tables whose keys
//! nobody outside the cluster chooses: [`WordHashing`], a folded-multiply
//! fold of the 8-byte words a key writes.
//!
//! Its users state why their keys qualify, beside their map types: the
//! session table's per-owner tallies (`runtime::owner_hash`, keyed by
//! [`Owner`](crate::runtime::session::Owner)) and the remote client's live
//! request streams (`client::addr_hash`, keyed by member address). Both
//! replaced std's SipHash, which cost about 240 instructions a lookup of
//! their keys (callgrind, issue 16); their module docs keep the figures.
//!
//! # Invariants
//!
//! 1. Every input bit reaches every output bit: each word is xored into
//!    the running hash and multiplied by [`SEED`] into a 128-bit product
//!    whose halves are xored (a folded multiply). A plain multiply-rotate
//!    (rustc's `FxHasher`) was tried first for owners, and two owners one
//!    bit apart collided (`runtime::owner_hash`'s tests).
//! 2. It is not keyed: equal keys hash equally in every process, so
//!    lookups find what was inserted. It does not resist chosen
//!    collisions; a user whose keys an outsider could choose must not use
//!    it.
//! 3. A write of fewer than 8 bytes, or a tail of one, is zero-padded to a
//!    word (little-endian), so `write_u8(n)`, `write_u16(n)`, … and
//!    `write(&n.to_le_bytes())` fold alike.

use std::hash::{BuildHasher, Hasher};

/// Builds [`WordHasher`]s: the `S` of a `HashMap` (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WordHashing;

impl BuildHasher for WordHashing {
    type Hasher = WordHasher;

    fn build_hasher(&self) -> WordHasher {
        WordHasher(0)
    }
}

/// A folded-multiply fold of the 8-byte words written (module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WordHasher(u64);

/// An odd constant with its bits spread (the fractional part of pi):
/// one multiplication carries every bit of the other factor into the
/// high half of the product, which the fold brings back into the low.
const SEED: u64 = 0x24_3f_6a_88_85_a3_08_d3;

impl WordHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(SEED);
        // Both halves of the product, kept: the cast keeps the low one.
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for WordHasher {
    #[inline]
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

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant 3: a short write folds as the integer it encodes, and a
    /// tail is zero-padded (so the typed writes need not go through
    /// `write`).
    #[test]
    fn short_writes_fold_as_their_zero_padded_word() {
        let typed = |f: &dyn Fn(&mut WordHasher)| {
            let mut h = WordHashing.build_hasher();
            f(&mut h);
            h.finish()
        };
        let n = 0xbeef_u16;
        assert_eq!(
            typed(&|h| h.write_u16(n)),
            typed(&|h| h.write(&n.to_le_bytes()))
        );
        assert_eq!(
            typed(&|h| h.write_u32(7)),
            typed(&|h| h.write(&7u32.to_le_bytes()))
        );
        assert_eq!(typed(&|h| h.write_u8(9)), typed(&|h| h.write(&[9])));
        assert_ne!(typed(&|h| h.write_u8(9)), typed(&|h| h.write_u8(8)));
        // Nine bytes are two words: the ninth counts.
        assert_ne!(
            typed(&|h| h.write(&[1, 2, 3, 4, 5, 6, 7, 8, 0])),
            typed(&|h| h.write(&[1, 2, 3, 4, 5, 6, 7, 8, 1]))
        );
    }
}
