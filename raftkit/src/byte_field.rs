//! `#[serde(with = "crate::byte_field")]` for `Vec<u8>` fields that hold
//! encoded data (commands, queries, replies).
//!
//! serde encodes a `Vec<u8>` as a sequence of `u8`s, which postcard writes
//! as a length followed by the bytes, and decodes it one element at a time
//! (a bounds check, a push and possibly a reallocation per byte). Through
//! this module the field is written with `serialize_bytes` (postcard: the
//! same length followed by the same bytes, so the encoding does not change)
//! and read with `deserialize_byte_buf` (one allocation of the right size
//! and one copy).
//!
//! Invariant: for postcard, `serialize` produces exactly the bytes the
//! derived `Vec<u8>` encoding produces (tested below), so logs and peers
//! written before this module existed still decode.

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Writes the bytes as one byte string.
pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads a byte string (or, from self-describing formats that wrote a
/// sequence, a sequence of `u8`s).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBuf)
}

struct ByteBuf;

/// The same encoding for a shared-buffer field (`bytes::Bytes`): written
/// exactly as [`serialize`] writes a `Vec<u8>` (so a value moved from one
/// to the other keeps its bytes on disk and on the wire), read into one
/// allocation that the `Bytes` then owns (no copy).
pub(crate) mod shared {
    use serde::{Deserializer, Serializer};

    /// Writes the bytes as one byte string.
    pub(crate) fn serialize<S: Serializer>(v: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        super::serialize(v, s)
    }

    /// Reads a byte string (or a sequence of `u8`s).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        super::deserialize(d).map(bytes::Bytes::from)
    }
}

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Bounded by what the input holds, not by its claim.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: u64,
        data: Vec<u8>,
        b: u8,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Tagged {
        a: u64,
        #[serde(with = "super")]
        data: Vec<u8>,
        b: u8,
    }

    #[test]
    fn postcard_encoding_is_unchanged_both_ways() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let plain = Plain {
                a: 42,
                data: data.clone(),
                b: 9,
            };
            let tagged = Tagged { a: 42, data, b: 9 };
            let p = postcard::to_allocvec(&plain).expect("encodes");
            let t = postcard::to_allocvec(&tagged).expect("encodes");
            assert_eq!(p, t, "length {len}");
            let back: Tagged = postcard::from_bytes(&p).expect("decodes");
            assert_eq!(back, tagged);
            let back: Plain = postcard::from_bytes(&t).expect("decodes");
            assert_eq!(back, plain);
        }
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Shared {
        a: u64,
        #[serde(with = "super::shared")]
        data: bytes::Bytes,
        b: u8,
    }

    #[test]
    fn shared_encoding_is_the_vec_encoding() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 5 % 256) as u8).collect();
            let plain = Plain {
                a: 7,
                data: data.clone(),
                b: 3,
            };
            let shared = Shared {
                a: 7,
                data: bytes::Bytes::from(data),
                b: 3,
            };
            let p = postcard::to_allocvec(&plain).expect("encodes");
            let s = postcard::to_allocvec(&shared).expect("encodes");
            assert_eq!(p, s, "length {len}");
            let back: Shared = postcard::from_bytes(&p).expect("decodes");
            assert_eq!(back, shared);
            let back: Plain = postcard::from_bytes(&s).expect("decodes");
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let t = Tagged {
            a: 1,
            data: vec![5; 200],
            b: 2,
        };
        let bytes = postcard::to_allocvec(&t).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(
                postcard::from_bytes::<Tagged>(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }
}
