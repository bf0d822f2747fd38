//! A hand-written decoder for [`EnvelopeRef`]: the apply thread of every
//! replica decodes each client entry's envelope, and through serde postcard
//! reads the 32-byte [`Owner`] fingerprint one byte at a time (a visitor
//! call, a bounds check and a store per byte) and the 128-bit session id
//! through a generic varint loop: about 800 instructions per entry, most of
//! the envelope's cost. This reads the same bytes directly.
//!
//! # Invariants
//!
//! 1. **Same format, same verdict.** For every input, [`EnvelopeRef::decode`]
//!    returns what `postcard::from_bytes::<EnvelopeRef>` returns: the same
//!    value when that decodes (trailing bytes ignored, as postcard does),
//!    an error when it does not (the error's kind may differ). Replicas
//!    running this build and replicas running one that decodes through
//!    serde therefore apply, or halt on, exactly the same entries. Pinned
//!    by a property test against the serde derive, which stays as the
//!    reference.
//! 2. **Bounded and checked.** Entry bytes come from the network and the
//!    disk: every read is checked against the input's length, varints are
//!    bounded as postcard bounds them (at most 5, 10 or 19 bytes for
//!    `u32`, `u64` and `u128`, the last byte holding only the bits the type
//!    has left; non-minimal encodings are accepted, as postcard does), and
//!    nothing is allocated.

use super::session::{EnvelopeRef, OpRef, Owner};
use crate::client::wire::{SessionId, SessionRef};

/// Why an envelope does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeDecodeError {
    /// The bytes end inside a field.
    #[error("the envelope ends early")]
    Truncated,
    /// A varint is longer than its type allows, or overflows it.
    #[error("bad varint in the envelope")]
    BadVarint,
    /// An enum tag (operation or owner) this build does not know.
    #[error("unknown {what} tag {tag} in the envelope")]
    UnknownTag {
        /// Which enum.
        what: &'static str,
        /// The tag read.
        tag: u32,
    },
}

/// A cursor over the envelope's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    /// The next byte to read (`pos <= buf.len()`).
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, EnvelopeDecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(EnvelopeDecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeDecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(EnvelopeDecodeError::Truncated)?;
        let head = self
            .buf
            .get(self.pos..end)
            .ok_or(EnvelopeDecodeError::Truncated)?;
        self.pos = end;
        Ok(head)
    }

    /// Up to `n <= 9` bytes of a LEB128 varint (7 bits each, so at most 63
    /// bits: no overflow): the value read and whether its last byte came
    /// (a byte without the continuation bit).
    fn run(&mut self, n: u32) -> Result<(u64, bool), EnvelopeDecodeError> {
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

    /// The byte of a varint that its type allows last (postcard's
    /// `try_take_varint_*`): it must end the varint and hold at most
    /// `max` (the bits the type has left).
    fn last(&mut self, max: u8) -> Result<u8, EnvelopeDecodeError> {
        let b = self.byte()?;
        if b > max {
            // A continuation bit (too long) or too many bits (overflow).
            return Err(EnvelopeDecodeError::BadVarint);
        }
        Ok(b)
    }

    /// A `u32` varint: at most 5 bytes, the fifth holding 4 bits.
    fn u32(&mut self) -> Result<u32, EnvelopeDecodeError> {
        let (v, done) = self.run(4)?;
        let v = if done {
            v
        } else {
            v | u64::from(self.last(0x0f)?) << 28
        };
        u32::try_from(v).map_err(|_| EnvelopeDecodeError::BadVarint)
    }

    /// A `u64` varint: at most 10 bytes, the tenth holding 1 bit.
    fn u64(&mut self) -> Result<u64, EnvelopeDecodeError> {
        let (v, done) = self.run(9)?;
        if done {
            return Ok(v);
        }
        Ok(v | u64::from(self.last(0x01)?) << 63)
    }

    /// A `u128` varint: at most 19 bytes, the nineteenth holding 2 bits.
    fn u128(&mut self) -> Result<u128, EnvelopeDecodeError> {
        let (lo, done) = self.run(9)?;
        if done {
            return Ok(u128::from(lo));
        }
        let (hi, done) = self.run(9)?;
        let v = u128::from(lo) | u128::from(hi) << 63;
        if done {
            return Ok(v);
        }
        Ok(v | u128::from(self.last(0x03)?) << 126)
    }

    /// A byte string: its length (a `usize` varint), then the bytes.
    fn bytes(&mut self) -> Result<&'a [u8], EnvelopeDecodeError> {
        let len = usize::try_from(self.u64()?).map_err(|_| EnvelopeDecodeError::Truncated)?;
        self.take(len)
    }

    fn session_id(&mut self) -> Result<SessionId, EnvelopeDecodeError> {
        Ok(SessionId(self.u128()?))
    }

    fn owner(&mut self) -> Result<Owner, EnvelopeDecodeError> {
        match self.u32()? {
            0 => Ok(Owner::Local),
            1 => {
                let mut fingerprint = [0u8; 32];
                fingerprint.copy_from_slice(self.take(32)?);
                Ok(Owner::Certificate(fingerprint))
            }
            tag => Err(EnvelopeDecodeError::UnknownTag { what: "owner", tag }),
        }
    }
}

impl<'a> EnvelopeRef<'a> {
    /// Decodes an envelope from a log entry's payload, borrowing its
    /// command (see the module doc: the verdict of postcard's, without
    /// serde). Bytes after the envelope are ignored, as
    /// `postcard::from_bytes` ignores them.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<EnvelopeRef<'a>, EnvelopeDecodeError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let stamp_ms = r.u64()?;
        // The variants of `Op`, in declaration order.
        let op = match r.u32()? {
            0 => OpRef::Write {
                command: r.bytes()?,
            },
            1 => {
                let session = SessionRef {
                    id: r.session_id()?,
                    seq: r.u64()?,
                    acked_below: r.u64()?,
                };
                let owner = r.owner()?;
                OpRef::SessionWrite {
                    session,
                    owner,
                    command: r.bytes()?,
                }
            }
            2 => OpRef::OpenSession {
                id: r.session_id()?,
                owner: r.owner()?,
                ttl_ms: r.u64()?,
                max_sessions: r.u64()?,
            },
            3 => OpRef::CloseSession {
                id: r.session_id()?,
                owner: r.owner()?,
            },
            tag => return Err(EnvelopeDecodeError::UnknownTag { what: "op", tag }),
        };
        Ok(EnvelopeRef { stamp_ms, op })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::runtime::session::{Envelope, Op};

    fn reference(bytes: &[u8]) -> Option<EnvelopeRef<'_>> {
        postcard::from_bytes::<EnvelopeRef<'_>>(bytes).ok()
    }

    fn owner() -> impl Strategy<Value = Owner> {
        prop_oneof![
            Just(Owner::Local),
            any::<[u8; 32]>().prop_map(Owner::Certificate),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        let command = proptest::collection::vec(any::<u8>(), 0..300);
        let op = prop_oneof![
            command.clone().prop_map(|command| Op::Write { command }),
            (any::<u128>(), any::<u64>(), any::<u64>(), owner(), command).prop_map(
                |(id, seq, acked_below, owner, command)| Op::SessionWrite {
                    session: SessionRef {
                        id: SessionId(id),
                        seq,
                        acked_below,
                    },
                    owner,
                    command,
                }
            ),
            (any::<u128>(), owner(), any::<u64>(), any::<u64>()).prop_map(
                |(id, owner, ttl_ms, max_sessions)| Op::OpenSession {
                    id: SessionId(id),
                    owner,
                    ttl_ms,
                    max_sessions,
                }
            ),
            (any::<u128>(), owner()).prop_map(|(id, owner)| Op::CloseSession {
                id: SessionId(id),
                owner,
            }),
        ];
        (any::<u64>(), op).prop_map(|(stamp_ms, op)| Envelope { stamp_ms, op })
    }

    proptest! {
        /// Every envelope the leader encodes decodes to what serde decodes
        /// (and to the envelope itself), with or without trailing bytes.
        #[test]
        fn encoded_envelopes_decode_as_serde_does(e in envelope(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = postcard::to_allocvec(&e).expect("encodes");
            let decoded = EnvelopeRef::decode(&bytes).expect("decodes");
            let serde = reference(&bytes);
            prop_assert_eq!(Some(&decoded), serde.as_ref());
            let (command, owned) = match (&decoded.op, &e.op) {
                (OpRef::Write { command }, Op::Write { command: c }) => (command.to_vec(), c.clone()),
                (OpRef::SessionWrite { command, .. }, Op::SessionWrite { command: c, .. }) => (command.to_vec(), c.clone()),
                _ => (Vec::new(), Vec::new()),
            };
            prop_assert_eq!(command, owned);
            prop_assert_eq!(decoded.stamp_ms, e.stamp_ms);
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(EnvelopeRef::decode(&bytes).ok(), reference(&bytes));
        }

        /// Damaged envelopes (a byte changed, the end cut off) get the
        /// verdict serde gives them: the same value or an error.
        #[test]
        fn damaged_envelopes_get_serde_verdict(e in envelope(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut bytes = postcard::to_allocvec(&e).expect("encodes");
            let i = at.index(bytes.len());
            bytes[i] = byte;
            prop_assert_eq!(EnvelopeRef::decode(&bytes).ok(), reference(&bytes));
            let cut = cut.index(bytes.len());
            prop_assert_eq!(EnvelopeRef::decode(&bytes[..cut]).ok(), reference(&bytes[..cut]));
        }

        /// Arbitrary bytes: the same verdict as serde.
        #[test]
        fn arbitrary_bytes_get_serde_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(EnvelopeRef::decode(&bytes).ok(), reference(&bytes));
        }
    }

    /// Varints at their bounds: the longest accepted, one past it refused,
    /// a last byte with more bits than the type has refused; as postcard.
    #[test]
    fn varint_bounds_match_postcard() {
        let cases: Vec<Vec<u8>> = vec![
            // stamp u64::MAX (10 bytes, last byte 1), op Write, empty command.
            [vec![0xff; 9], vec![0x01, 0x00, 0x00]].concat(),
            // stamp with a last byte of 2: overflows u64.
            [vec![0xff; 9], vec![0x02, 0x00, 0x00]].concat(),
            // stamp with 11 bytes.
            [vec![0x80; 10], vec![0x00, 0x00, 0x00]].concat(),
            // a non-minimal stamp (0 in two bytes).
            vec![0x80, 0x00, 0x00, 0x00],
            // op tag u32::MAX, then 16 (overflow), then 6 bytes.
            vec![0x00, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![0x00, 0xff, 0xff, 0xff, 0xff, 0x10],
            vec![0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
            // close session: id u128::MAX (19 bytes, last 3), owner local.
            [vec![0x00, 0x03], vec![0xff; 18], vec![0x03, 0x00]].concat(),
            [vec![0x00, 0x03], vec![0xff; 18], vec![0x04, 0x00]].concat(),
            // owner tag 2, owner certificate cut short.
            [vec![0x00, 0x03, 0x01, 0x02]].concat(),
            [vec![0x00, 0x03, 0x01, 0x01], vec![7; 31]].concat(),
            [vec![0x00, 0x03, 0x01, 0x01], vec![7; 32]].concat(),
            // a command longer than the input.
            vec![0x00, 0x00, 0x05, 1, 2, 3, 4],
            vec![0x00, 0x00, 0x05, 1, 2, 3, 4, 5],
            // op tag 4 (unknown).
            vec![0x00, 0x04, 0x00],
            vec![],
        ];
        for bytes in cases {
            assert_eq!(
                EnvelopeRef::decode(&bytes).ok(),
                reference(&bytes),
                "input {bytes:02x?}"
            );
        }
    }
}
