//! The leader's proposal arena: log envelopes are encoded one after the
//! other into one growing block and split off it as [`Bytes`].
//!
//! A proposal's payload encoded into a `Vec` of its own costs two
//! allocations (the vector, and the shared header `Bytes` adds when it is
//! first cloned) and two frees per write; envelopes split off one block
//! share the block's allocation and its reference count, so a block of
//! [`BLOCK_BYTES`] carries hundreds of them for two allocations.
//!
//! Invariants:
//! - every [`Bytes`] returned holds exactly the postcard encoding of the
//!   value given (the same bytes as `postcard::to_allocvec`);
//! - a block is freed once every payload split off it is dropped: it is
//!   never written again while one lives (a `BytesMut` only writes past
//!   what was split off). A payload keeps its whole block alive, so the
//!   memory held beyond the payloads themselves is at most one block per
//!   run of payloads freed together; entries are dropped in log order (log
//!   compaction, the watch journal's trimming), which keeps that to a
//!   block or two;
//! - after an encoding error the arena holds nothing of the failed value.

use bytes::{Bytes, BytesMut};
use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// The size of a fresh block (a payload larger than this gets a block of
/// its own size).
pub(super) const BLOCK_BYTES: usize = 64 << 10;

/// See the module docs.
#[derive(Default)]
pub(super) struct Arena {
    block: BytesMut,
}

/// A postcard flavor appending to the arena's block.
struct Append<'a>(&'a mut BytesMut);

impl Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Arena {
    /// Encodes `value`, expected to take about `size_hint` bytes (more is
    /// fine: the block grows), and returns its bytes.
    pub(super) fn encode<T: Serialize>(
        &mut self,
        value: &T,
        size_hint: usize,
    ) -> Result<Bytes, postcard::Error> {
        debug_assert!(self.block.is_empty());
        if self.block.capacity() < size_hint {
            // A new block (the old one stays with the payloads split off
            // it), or the old one reclaimed if they are all gone.
            self.block.reserve(size_hint.max(BLOCK_BYTES));
        }
        match postcard::serialize_with_flavor(value, Append(&mut self.block)) {
            Ok(()) => Ok(self.block.split().freeze()),
            Err(e) => {
                self.block.clear();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_the_postcard_encoding_and_share_a_block() {
        let mut arena = Arena::default();
        let values: Vec<(u64, String)> = (0..2_000)
            .map(|i| (i, "v".repeat((i % 97) as usize)))
            .collect();
        let payloads: Vec<Bytes> = values
            .iter()
            .map(|v| arena.encode(v, 8).expect("encodes"))
            .collect();
        for (v, p) in values.iter().zip(&payloads) {
            assert_eq!(&p[..], &postcard::to_allocvec(v).expect("encodes")[..]);
        }
        // Consecutive small payloads are adjacent in one block.
        assert_eq!(payloads[0].as_ptr_range().end, payloads[1].as_ptr());
        // Dropping the older payloads never changes the newer ones.
        let kept = payloads[1_500..].to_vec();
        drop(payloads);
        for _ in 0..500 {
            arena.encode(&(1u64, "w".repeat(50)), 8).expect("encodes");
        }
        for (v, p) in values[1_500..].iter().zip(&kept) {
            assert_eq!(&p[..], &postcard::to_allocvec(v).expect("encodes")[..]);
        }
    }

    #[test]
    fn a_payload_larger_than_a_block_is_whole() {
        let mut arena = Arena::default();
        let big = vec![7u8; 3 * BLOCK_BYTES];
        let p = arena.encode(&big, big.len() + 8).expect("encodes");
        assert_eq!(&p[..], &postcard::to_allocvec(&big).expect("encodes")[..]);
        // Even with a hint too small.
        let p = arena.encode(&big, 8).expect("encodes");
        assert_eq!(&p[..], &postcard::to_allocvec(&big).expect("encodes")[..]);
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeTuple};
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&42u32)?;
                Err(S::Error::custom("no"))
            }
        }
        let mut arena = Arena::default();
        assert!(arena.encode(&Fails, 8).is_err());
        let p = arena.encode(&5u8, 8).expect("encodes");
        assert_eq!(&p[..], &[5]);
    }
}
