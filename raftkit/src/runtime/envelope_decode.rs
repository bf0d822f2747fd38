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
//!    returns what `postcard::take_from_bytes::<EnvelopeRef>` returns when
//!    it reads the whole input: the same value when that decodes and leaves
//!    no byte, an error when it does not (the error's kind may differ).
//!    Replicas
//!    running this build and replicas running one that decodes through
//!    serde therefore apply, or halt on, exactly the same entries. Pinned
//!    by a property test against the serde derive, which stays as the
//!    reference.
//! 2. **Trailing bytes are refused**, as `state_machine::decode` refuses
//!    them in a command: postcard writes a variant's fields one after the
//!    other, so an entry from a newer binary whose `Op` variant gained a
//!    field at its end starts with a valid encoding of the older variant.
//!    Decoding that prefix would drop the field and let older replicas
//!    apply another operation than newer ones (divergence during a rolling
//!    upgrade); refused, the entry halts the older replica as any entry it
//!    cannot decode does (`runtime::apply`). No encoder ever wrote bytes
//!    after an envelope (the leader encodes exactly one
//!    [`Envelope`](super::session::Envelope) per
//!    entry, `runtime::node`), so no existing log changes verdict.
//! 3. **Bounded and checked.** Entry bytes come from the network and the
//!    disk: every read is checked against the input's length, varints are
//!    bounded as postcard bounds them (at most 5, 10 or 19 bytes for
//!    `u32`, `u64` and `u128`, the last byte holding only the bits the type
//!    has left; non-minimal encodings are accepted, as postcard does), and
//!    nothing is allocated.

use super::session::{EnvelopeRef, OpRef, Owner, ReplyBounds};
use crate::client::wire::{SessionId, SessionRef};
use crate::postcard_cursor::{Cursor, CursorError};

/// Why an envelope does not decode.
pub(crate) type EnvelopeDecodeError = CursorError;

fn session_id(r: &mut Cursor<'_>) -> Result<SessionId, CursorError> {
    Ok(SessionId(r.u128()?))
}

fn owner(r: &mut Cursor<'_>) -> Result<Owner, CursorError> {
    match r.u32()? {
        0 => Ok(Owner::Local),
        1 => {
            let mut fingerprint = [0u8; 32];
            fingerprint.copy_from_slice(r.take(32)?);
            Ok(Owner::Certificate(fingerprint))
        }
        tag => Err(CursorError::UnknownTag(tag)),
    }
}

impl<'a> EnvelopeRef<'a> {
    /// Decodes an envelope from a log entry's payload, borrowing its
    /// command (see the module doc: the verdict of postcard's, without
    /// serde). Bytes after the envelope are an error
    /// ([`CursorError::Trailing`], invariant 2).
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<EnvelopeRef<'a>, EnvelopeDecodeError> {
        let mut r = Cursor::new(bytes);
        let stamp_ms = r.u64()?;
        // The variants of `Op`, in declaration order.
        let op = match r.u32()? {
            0 => OpRef::Write {
                command: r.bytes()?,
            },
            1 => {
                let session = SessionRef {
                    id: session_id(&mut r)?,
                    seq: r.u64()?,
                    acked_below: r.u64()?,
                };
                let owner = owner(&mut r)?;
                OpRef::SessionWrite {
                    session,
                    owner,
                    command: r.bytes()?,
                }
            }
            2 => OpRef::OpenSession {
                id: session_id(&mut r)?,
                owner: owner(&mut r)?,
                ttl_ms: r.u64()?,
                max_sessions: r.u64()?,
            },
            3 => OpRef::CloseSession {
                id: session_id(&mut r)?,
                owner: owner(&mut r)?,
            },
            4 => OpRef::OpenSessionFair {
                id: session_id(&mut r)?,
                owner: owner(&mut r)?,
                ttl_ms: r.u64()?,
                max_sessions: r.u64()?,
            },
            5 => {
                let session = SessionRef {
                    id: session_id(&mut r)?,
                    seq: r.u64()?,
                    acked_below: r.u64()?,
                };
                let owner = owner(&mut r)?;
                let bounds = ReplyBounds {
                    session_bytes: r.u64()?,
                    owner_bytes: r.u64()?,
                };
                OpRef::SessionWriteBounded {
                    session,
                    owner,
                    bounds,
                    command: r.bytes()?,
                }
            }
            6 => OpRef::OpenSessionBounded {
                id: session_id(&mut r)?,
                owner: owner(&mut r)?,
                ttl_ms: r.u64()?,
                max_sessions: r.u64()?,
                max_owner_sessions: r.u64()?,
            },
            tag => return Err(CursorError::UnknownTag(tag)),
        };
        match r.rest().len() {
            0 => Ok(EnvelopeRef { stamp_ms, op }),
            left => Err(CursorError::Trailing(left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::runtime::session::{Envelope, Op};

    /// The serde derive's verdict, with bytes left after the envelope
    /// refused (as `state_machine::decode` refuses them).
    fn reference(bytes: &[u8]) -> Option<EnvelopeRef<'_>> {
        match postcard::take_from_bytes::<EnvelopeRef<'_>>(bytes) {
            Ok((envelope, [])) => Some(envelope),
            _ => None,
        }
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
            (
                any::<u128>(),
                any::<u64>(),
                any::<u64>(),
                owner(),
                command.clone()
            )
                .prop_map(|(id, seq, acked_below, owner, command)| Op::SessionWrite {
                    session: SessionRef {
                        id: SessionId(id),
                        seq,
                        acked_below,
                    },
                    owner,
                    command,
                }),
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
            (any::<u128>(), owner(), any::<u64>(), any::<u64>()).prop_map(
                |(id, owner, ttl_ms, max_sessions)| Op::OpenSessionFair {
                    id: SessionId(id),
                    owner,
                    ttl_ms,
                    max_sessions,
                }
            ),
            (
                any::<u128>(),
                any::<u64>(),
                any::<u64>(),
                owner(),
                any::<(u64, u64)>(),
                command.clone()
            )
                .prop_map(
                    |(id, seq, acked_below, owner, (session_bytes, owner_bytes), command)| {
                        Op::SessionWriteBounded {
                            session: SessionRef {
                                id: SessionId(id),
                                seq,
                                acked_below,
                            },
                            owner,
                            bounds: ReplyBounds {
                                session_bytes,
                                owner_bytes,
                            },
                            command,
                        }
                    }
                ),
            (
                any::<u128>(),
                owner(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(id, owner, ttl_ms, max_sessions, max_owner_sessions)| {
                    Op::OpenSessionBounded {
                        id: SessionId(id),
                        owner,
                        ttl_ms,
                        max_sessions,
                        max_owner_sessions,
                    }
                }),
        ];
        (any::<u64>(), op).prop_map(|(stamp_ms, op)| Envelope { stamp_ms, op })
    }

    proptest! {
        /// Every envelope the leader encodes decodes to what serde decodes
        /// (and to the envelope itself); with bytes after it, it is refused.
        #[test]
        fn encoded_envelopes_decode_as_serde_does(e in envelope(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = postcard::to_allocvec(&e).expect("encodes");
            let decoded = EnvelopeRef::decode(&bytes).expect("decodes");
            let serde = reference(&bytes);
            prop_assert_eq!(Some(&decoded), serde.as_ref());
            let (command, owned) = match (&decoded.op, &e.op) {
                (OpRef::Write { command }, Op::Write { command: c }) => (command.to_vec(), c.clone()),
                (OpRef::SessionWrite { command, .. }, Op::SessionWrite { command: c, .. }) => (command.to_vec(), c.clone()),
                (OpRef::SessionWriteBounded { command, .. }, Op::SessionWriteBounded { command: c, .. }) => (command.to_vec(), c.clone()),
                _ => (Vec::new(), Vec::new()),
            };
            prop_assert_eq!(command, owned);
            prop_assert_eq!(decoded.stamp_ms, e.stamp_ms);
            bytes.extend_from_slice(&tail);
            let with_tail = EnvelopeRef::decode(&bytes);
            if tail.is_empty() {
                prop_assert!(with_tail.is_ok());
            } else {
                prop_assert_eq!(with_tail, Err(CursorError::Trailing(tail.len())));
            }
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

    /// Each variant of `Op` with one byte appended (a field a newer binary
    /// added at the end of the variant) is refused, not decoded with the
    /// byte dropped: the entry halts an older replica instead of applying
    /// something else than the newer ones do (finding 4, review stop 56).
    #[test]
    fn a_byte_after_any_variant_is_refused() {
        let owner = Owner::Certificate([9; 32]);
        let session = SessionRef {
            id: SessionId(7),
            seq: 3,
            acked_below: 2,
        };
        let ops = [
            Op::Write {
                command: vec![1, 2],
            },
            Op::SessionWrite {
                session,
                owner,
                command: vec![3],
            },
            Op::OpenSession {
                id: SessionId(8),
                owner: Owner::Local,
                ttl_ms: 60_000,
                max_sessions: 10,
            },
            Op::CloseSession {
                id: SessionId(8),
                owner,
            },
            Op::OpenSessionFair {
                id: SessionId(9),
                owner,
                ttl_ms: 1,
                max_sessions: 2,
            },
        ];
        for op in ops {
            let mut bytes = postcard::to_allocvec(&Envelope { stamp_ms: 5, op }).expect("encodes");
            assert!(EnvelopeRef::decode(&bytes).is_ok(), "{bytes:02x?}");
            bytes.push(0);
            assert_eq!(
                EnvelopeRef::decode(&bytes),
                Err(CursorError::Trailing(1)),
                "input {bytes:02x?}"
            );
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
            // open session (fair share): id 1, owner local, ttl, max.
            vec![0x00, 0x04, 0x01, 0x00, 0x05, 0x06],
            vec![0x00, 0x04, 0x01, 0x00, 0x05],
            // op tag 5 (unknown).
            vec![0x00, 0x05, 0x00],
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
