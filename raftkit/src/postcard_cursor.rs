//! A bounded cursor over postcard bytes, for the hand-written decoders of
//! the hot paths (a log entry's envelope, a client write, a peer's
//! AppendEntries): it reads what postcard's deserializer reads, without a
//! serde visitor call per field or per byte.
//!
//! # Invariants
//!
//! 1. **Postcard's verdict.** Each read accepts exactly the inputs
//!    postcard's matching read accepts and yields the same value: varints
//!    are LEB128 of at most 5, 10 or 19 bytes for `u32`, `u64` and `u128`,
//!    the last byte holding only the bits the type has left (non-minimal
//!    encodings are accepted, as postcard accepts them); a byte string is
//!    its length (a `u64` varint) then its bytes; an option's tag is one
//!    byte, 0 or 1. The decoders built on it are tested against the
//!    serde derives they stand in for.
//! 2. **Bounded and checked.** Every read is checked against the input's
//!    length; nothing indexes past it, nothing allocates.

/// Why bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    /// The bytes end inside a field.
    #[error("the bytes end early")]
    Truncated,
    /// A varint is longer than its type allows, or overflows it.
    #[error("bad varint")]
    BadVarint,
    /// A tag (of an enum variant or an option) this decoder does not know.
    #[error("unknown tag {0}")]
    UnknownTag(u32),
    /// Bytes are left after the value, which a decoder that must read the
    /// whole input refuses (e.g. a field a newer binary appended).
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// A cursor over postcard bytes.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    /// The next byte to read (`pos <= buf.len()`).
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// How many bytes were read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// One raw byte (postcard's `u8`).
    #[inline]
    pub(crate) fn byte(&mut self) -> Result<u8, CursorError> {
        let b = *self.buf.get(self.pos).ok_or(CursorError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` raw bytes.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        let end = self.pos.checked_add(n).ok_or(CursorError::Truncated)?;
        let head = self.buf.get(self.pos..end).ok_or(CursorError::Truncated)?;
        self.pos = end;
        Ok(head)
    }

    /// Up to `n <= 9` bytes of a LEB128 varint (7 bits each, so at most 63
    /// bits: no overflow): the value read and whether its last byte came
    /// (a byte without the continuation bit).
    #[inline]
    fn run(&mut self, n: u32) -> Result<(u64, bool), CursorError> {
        let mut out = 0u64;
        for i in 0..n {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// [`Cursor::run`]`(9)` eight bytes at a time: one load, the
    /// terminating byte found from the continuation bits, the 7-bit groups
    /// packed by three shift-and-mask steps (a random 64-bit or 128-bit id
    /// is 10 or 19 bytes: about 11 instructions a byte one by one). Falls
    /// back to the byte loop within 8 bytes of the end.
    #[inline]
    fn run9(&mut self) -> Result<(u64, bool), CursorError> {
        let Some(&first) = self.buf.get(self.pos) else {
            return Err(CursorError::Truncated);
        };
        if first & 0x80 == 0 {
            self.pos += 1;
            return Ok((u64::from(first), true));
        }
        let Some(word) = self
            .buf
            .get(self.pos..self.pos + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        else {
            return self.run(9);
        };
        let w = u64::from_le_bytes(word);
        let stops = !w & 0x8080_8080_8080_8080;
        if stops != 0 {
            // The varint's length in bytes, 1..=8.
            let len = stops.trailing_zeros() / 8 + 1;
            let keep = u64::MAX >> (64 - 8 * len);
            self.pos += len as usize;
            return Ok((pack(w & keep), true));
        }
        // Eight bytes with their continuation bits: 56 bits; the ninth
        // byte may end it.
        self.pos += 8;
        let b = self.byte()?;
        Ok((pack(w) | u64::from(b & 0x7f) << 56, b & 0x80 == 0))
    }

    /// The byte of a varint that its type allows last (postcard's
    /// `try_take_varint_*`): it must end the varint and hold at most
    /// `max` (the bits the type has left).
    #[inline]
    fn last(&mut self, max: u8) -> Result<u8, CursorError> {
        let b = self.byte()?;
        if b > max {
            // A continuation bit (too long) or too many bits (overflow).
            return Err(CursorError::BadVarint);
        }
        Ok(b)
    }

    /// A `u32` varint (also an enum's variant tag): at most 5 bytes, the
    /// fifth holding 4 bits.
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, CursorError> {
        let (v, done) = self.run(4)?;
        let v = if done {
            v
        } else {
            v | u64::from(self.last(0x0f)?) << 28
        };
        u32::try_from(v).map_err(|_| CursorError::BadVarint)
    }

    /// A `u64` varint: at most 10 bytes, the tenth holding 1 bit.
    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, CursorError> {
        let (v, done) = self.run9()?;
        if done {
            return Ok(v);
        }
        Ok(v | u64::from(self.last(0x01)?) << 63)
    }

    /// A `u128` varint: at most 19 bytes, the nineteenth holding 2 bits.
    #[inline]
    pub(crate) fn u128(&mut self) -> Result<u128, CursorError> {
        let (lo, done) = self.run9()?;
        if done {
            return Ok(u128::from(lo));
        }
        let (hi, done) = self.run9()?;
        let v = u128::from(lo) | u128::from(hi) << 63;
        if done {
            return Ok(v);
        }
        Ok(v | u128::from(self.last(0x03)?) << 126)
    }

    /// A byte string: its length (a `usize` varint), then the bytes.
    #[inline]
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], CursorError> {
        let len = usize::try_from(self.u64()?).map_err(|_| CursorError::Truncated)?;
        self.take(len)
    }

    /// An option's tag: `false` for `None`, `true` for `Some` (then the
    /// value follows).
    #[inline]
    pub(crate) fn option(&mut self) -> Result<bool, CursorError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(CursorError::UnknownTag(u32::from(tag))),
        }
    }
}

/// The 7-bit groups of up to eight little-endian varint bytes, packed
/// (continuation bits dropped): byte `i`'s low 7 bits at bit `7 * i`.
#[inline]
fn pack(w: u64) -> u64 {
    let x = w & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every read gives postcard's verdict and value on any bytes.
        #[test]
        fn reads_match_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            prop_assert_eq!(Cursor::new(&bytes).u32().ok(), postcard::from_bytes::<u32>(&bytes).ok());
            prop_assert_eq!(Cursor::new(&bytes).u64().ok(), postcard::from_bytes::<u64>(&bytes).ok());
            prop_assert_eq!(Cursor::new(&bytes).u128().ok(), postcard::from_bytes::<u128>(&bytes).ok());
            prop_assert_eq!(Cursor::new(&bytes).bytes().ok(), postcard::from_bytes::<&[u8]>(&bytes).ok());
            let opt = |b: &[u8]| {
                let mut c = Cursor::new(b);
                match c.option()? {
                    false => Ok(None),
                    true => c.u64().map(Some),
                }
            };
            prop_assert_eq!(opt(&bytes).ok(), postcard::from_bytes::<Option<u64>>(&bytes).ok());
        }

        /// Bytes that mostly carry continuation bits (long varints, cut
        /// anywhere): the same verdict and value, the same bytes consumed.
        #[test]
        fn long_varints_match_postcard(bytes in proptest::collection::vec(
            (any::<u8>(), 0..12u8).prop_map(|(b, k)| if k == 0 { b & 0x7f } else { b | 0x80 }),
            0..40,
        )) {
            let mut c = Cursor::new(&bytes);
            let ours = c.u64().ok().map(|v| (v, c.position()));
            let theirs = postcard::take_from_bytes::<u64>(&bytes).ok().map(|(v, rest)| (v, bytes.len() - rest.len()));
            prop_assert_eq!(ours, theirs);
            let mut c = Cursor::new(&bytes);
            let ours = c.u128().ok().map(|v| (v, c.position()));
            let theirs = postcard::take_from_bytes::<u128>(&bytes).ok().map(|(v, rest)| (v, bytes.len() - rest.len()));
            prop_assert_eq!(ours, theirs);
        }

        /// Encoded integers read back, with what follows left unread.
        #[test]
        fn encoded_values_read_back(a in any::<u32>(), b in any::<u64>(), c in any::<u128>()) {
            let bytes = postcard::to_allocvec(&(a, b, c, 7u8)).expect("encodes");
            let mut cur = Cursor::new(&bytes);
            prop_assert_eq!(cur.u32(), Ok(a));
            prop_assert_eq!(cur.u64(), Ok(b));
            prop_assert_eq!(cur.u128(), Ok(c));
            prop_assert_eq!(cur.rest(), &[7u8][..]);
            prop_assert_eq!(cur.position(), bytes.len() - 1);
        }
    }

    /// Varints at their bounds: the longest accepted, a longer one and a
    /// last byte with more bits than the type has refused, as postcard.
    #[test]
    fn varint_bounds_match_postcard() {
        let cases: Vec<Vec<u8>> = vec![
            [vec![0xff; 4], vec![0x0f]].concat(),
            [vec![0xff; 4], vec![0x10]].concat(),
            [vec![0x80; 5], vec![0x00]].concat(),
            [vec![0xff; 9], vec![0x01]].concat(),
            [vec![0xff; 9], vec![0x02]].concat(),
            [vec![0x80; 10], vec![0x00]].concat(),
            [vec![0xff; 18], vec![0x03]].concat(),
            [vec![0xff; 18], vec![0x04]].concat(),
            [vec![0x80; 19], vec![0x00]].concat(),
            vec![0x80, 0x00],
            vec![],
        ];
        for bytes in cases {
            assert_eq!(
                Cursor::new(&bytes).u32().ok(),
                postcard::from_bytes::<u32>(&bytes).ok(),
                "{bytes:02x?}"
            );
            assert_eq!(
                Cursor::new(&bytes).u64().ok(),
                postcard::from_bytes::<u64>(&bytes).ok(),
                "{bytes:02x?}"
            );
            assert_eq!(
                Cursor::new(&bytes).u128().ok(),
                postcard::from_bytes::<u128>(&bytes).ok(),
                "{bytes:02x?}"
            );
        }
    }
}
