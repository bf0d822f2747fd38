//! The hand-read fast path of [`decode_peer_frame`](super::frame::decode_peer_frame)
//! for the frame a follower receives for every batch of writes:
//! `PeerFrame::Msg` of an AppendEntries whose entries are commands or
//! no-ops.
//!
//! Through serde each entry's command is copied out of the frame into an
//! allocation of its own (`Bytes`'s visitor copies the borrowed bytes), and
//! every field costs a visitor call. Here the frame is read as postcard
//! reads it ([`Cursor`]), the entries' region is copied once into one
//! shared buffer, and each command is a slice of it: one allocation per
//! frame instead of one per entry. The frame's other bytes are not kept.
//! An entry kept alive keeps that frame's entries' bytes alive; the log
//! and the apply task hold runs of consecutive entries, which share their
//! frames anyway.
//!
//! # Invariants
//!
//! 1. **Serde's verdict.** [`decode_append`] returns `None` for anything
//!    else (another frame or message, a configuration entry, bytes that do
//!    not read): the caller then decodes through serde. When it returns a
//!    frame, that frame is equal to the one serde decodes from the same
//!    bytes (property tests against the serde derive). The bytes on the
//!    wire do not change.
//! 2. **Bounded.** Network bytes: every read is checked ([`Cursor`]), the
//!    entry vector's initial capacity is bounded by the bytes present, not
//!    by the count the frame claims.
//! 3. **Capped before decoding.** [`claimed_entries`] reads the entry count
//!    an AppendEntries frame claims (a `Msg`, or a `Group` frame of a
//!    multi-group node, which serde reads) from its header alone, a
//!    handful of varints, with the same verdicts as serde;
//!    [`decode_peer_frame`](super::frame::decode_peer_frame) refuses a
//!    frame claiming more than [`MAX_ENTRIES_PER_APPEND`] before either
//!    path decodes an entry (a 3-byte no-op is ~120 bytes decoded: ~40x
//!    inflation without the cap). [`decode_append`] itself never builds
//!    more than the cap: it declines such a frame.
//! 4. **Only the frame's value is kept.** A frame with bytes after its
//!    value (no encoder writes any; postcard ignores them) is declined:
//!    its commands would be slices of a copy holding them, so one kept
//!    command would keep a frame of trailing bytes alive. Serde reads it
//!    (each command its own copy, the trailing bytes ignored).

use bytes::Bytes;

use super::frame::PeerFrame;
use crate::core::{Body, Entry, MAX_ENTRIES_PER_APPEND, Message, Payload};
use crate::postcard_cursor::Cursor;

/// `PeerFrame::Msg`'s tag (postcard: variant index).
const MSG: u32 = 3;
/// `PeerFrame::Group`'s tag.
const GROUP: u32 = 4;
/// `Body::AppendEntries`'s tag.
const APPEND_ENTRIES: u32 = 2;
/// `Payload`'s tags.
const NOOP: u32 = 0;
const COMMAND: u32 = 1;
/// The fewest bytes an entry takes (term, index, payload tag).
pub(super) const MIN_ENTRY_BYTES: usize = 3;

/// A [`Message`] of an AppendEntries as far as its entry count.
struct Header {
    from: u64,
    to: u64,
    term: u64,
    prev_index: u64,
    prev_term: u64,
    count: u64,
}

/// Reads a [`Message`] up to its AppendEntries' entry count, or `None` for
/// another message or bytes that do not read that far.
fn header(c: &mut Cursor<'_>) -> Option<Header> {
    let from = c.u64().ok()?;
    let to = c.u64().ok()?;
    let term = c.u64().ok()?;
    if c.u32().ok()? != APPEND_ENTRIES {
        return None;
    }
    Some(Header {
        from,
        to,
        term,
        prev_index: c.u64().ok()?,
        prev_term: c.u64().ok()?,
        count: c.u64().ok()?,
    })
}

/// The number of entries a `Msg` or `Group` frame of an AppendEntries
/// claims, read from its header alone (invariant 3); `None` for any other
/// frame, or bytes that do not read as far as the count (serde refuses
/// them the same way).
pub(super) fn claimed_entries(body: &[u8]) -> Option<u64> {
    let mut c = Cursor::new(body);
    match c.u32().ok()? {
        MSG => {}
        GROUP => {
            c.u64().ok()?;
        }
        _ => return None,
    }
    header(&mut c).map(|h| h.count)
}

/// Reads an AppendEntries frame of commands and no-ops, or `None` (see the
/// module doc). A frame of more than [`MAX_ENTRIES_PER_APPEND`] entries is
/// declined too (its caller refuses it first, see [`claimed_entries`]).
pub(super) fn decode_append(body: &[u8]) -> Option<PeerFrame> {
    let mut c = Cursor::new(body);
    if c.u32().ok()? != MSG {
        return None;
    }
    let Header {
        from,
        to,
        term,
        prev_index,
        prev_term,
        count,
    } = header(&mut c)?;
    if count > MAX_ENTRIES_PER_APPEND as u64 {
        return None;
    }
    // One copy of everything after the count (the entries and the commit
    // index, a few bytes): the commands are slices of it.
    let rest = c.rest();
    let shared = if count == 0 {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(rest)
    };
    let mut c = Cursor::new(rest);
    let bound = rest.len() / MIN_ENTRY_BYTES;
    let mut entries = Vec::with_capacity(usize::try_from(count).ok()?.min(bound));
    for _ in 0..count {
        let term = c.u64().ok()?;
        let index = c.u64().ok()?;
        let payload = match c.u32().ok()? {
            NOOP => Payload::Noop,
            COMMAND => {
                let len = c.bytes().ok()?.len();
                let end = c.position();
                // `end <= rest.len() == shared.len()` and `len <= end`.
                if end > shared.len() {
                    return None;
                }
                Payload::Command(shared.slice(end - len..end))
            }
            // A configuration (rare): serde reads it.
            _ => return None,
        };
        entries.push(Entry {
            term,
            index,
            payload,
        });
    }
    let commit = c.u64().ok()?;
    if !c.rest().is_empty() {
        // Trailing bytes (no encoder writes any; postcard ignores them):
        // `shared` holds them and every command would keep them alive.
        // Serde reads the frame, each command copied on its own.
        return None;
    }
    Some(PeerFrame::Msg(Message {
        from,
        to,
        term,
        body: Body::AppendEntries {
            prev_index,
            prev_term,
            entries,
            commit,
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::core::Configuration;

    fn serde(body: &[u8]) -> Option<PeerFrame> {
        postcard::from_bytes::<PeerFrame>(body).ok()
    }

    fn entry(config: bool) -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            Just(Payload::Noop),
            proptest::collection::vec(any::<u8>(), 0..120)
                .prop_map(|v| Payload::Command(Bytes::from(v))),
            if config {
                Just(Payload::Config(Configuration {
                    voters: BTreeSet::from([1, 2, 3]),
                    ..Configuration::default()
                }))
                .boxed()
            } else {
                Just(Payload::Noop).boxed()
            },
        ];
        (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Entry {
            term,
            index,
            payload,
        })
    }

    fn append(config: bool) -> impl Strategy<Value = PeerFrame> {
        (
            any::<[u64; 6]>(),
            proptest::collection::vec(entry(config), 0..12),
        )
            .prop_map(|(n, entries)| {
                PeerFrame::Msg(Message {
                    from: n[0],
                    to: n[1],
                    term: n[2],
                    body: Body::AppendEntries {
                        prev_index: n[3],
                        prev_term: n[4],
                        entries,
                        commit: n[5],
                    },
                })
            })
    }

    proptest! {
        /// AppendEntries of commands and no-ops take the fast path and
        /// read as serde reads them; one with a configuration or trailing
        /// bytes declines it.
        #[test]
        fn appends_read_by_hand_as_serde_reads_them(frame in append(true), tail in proptest::collection::vec(any::<u8>(), 0..3)) {
            let mut body = postcard::to_allocvec(&frame).expect("encodes");
            body.extend_from_slice(&tail);
            let has_config = matches!(&frame, PeerFrame::Msg(Message { body: Body::AppendEntries { entries, .. }, .. })
                if entries.iter().any(|e| matches!(e.payload, Payload::Config(_))));
            let fast = decode_append(&body);
            if has_config || !tail.is_empty() {
                prop_assert_eq!(fast, None);
                // The caller's serde path reads it all the same.
                let slow = crate::transport::frame::decode_peer_frame(&body).ok();
                prop_assert_eq!(slow.as_ref(), Some(&frame));
            } else {
                prop_assert_eq!(fast.as_ref(), Some(&frame));
                prop_assert_eq!(fast, serde(&body));
            }
        }

        /// Damaged or cut frames, or garbage: the fast path declines or
        /// agrees with serde.
        #[test]
        fn damaged_appends_never_read_otherwise_than_serde(
            frame in append(false),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut body = postcard::to_allocvec(&frame).expect("encodes");
            let i = at.index(body.len());
            body[i] = byte;
            let cut = cut.index(body.len());
            for b in [&body[..], &body[..cut], &garbage[..]] {
                if let Some(fast) = decode_append(b) {
                    prop_assert_eq!(Some(fast), serde(b));
                }
            }
        }
    }

    /// Found by review, stop 47: the commands were slices of one copy of
    /// everything after the entry count, trailing bytes included (postcard
    /// ignores them), so a 1-byte command kept a whole frame of trailing
    /// bytes alive. A kept command's allocation now holds no trailing
    /// bytes; the frame still reads as serde reads it.
    #[test]
    fn a_kept_command_does_not_keep_the_frames_trailing_bytes() {
        let frame = PeerFrame::Msg(Message {
            from: 1,
            to: 2,
            term: 3,
            body: Body::AppendEntries {
                prev_index: 4,
                prev_term: 3,
                entries: vec![Entry {
                    term: 3,
                    index: 5,
                    payload: Payload::Command(Bytes::from_static(b"x")),
                }],
                commit: 4,
            },
        });
        let mut body = postcard::to_allocvec(&frame).expect("encodes");
        body.resize(body.len() + (1 << 20), 0xab);
        let got = crate::transport::frame::decode_peer_frame(&body).expect("decodes");
        assert_eq!(got, frame);
        let PeerFrame::Msg(Message {
            body: Body::AppendEntries { mut entries, .. },
            ..
        }) = got
        else {
            panic!("not an append: {got:?}");
        };
        let Some(Entry {
            payload: Payload::Command(command),
            ..
        }) = entries.pop()
        else {
            panic!("no command");
        };
        drop(entries);
        // The command is the only handle on its allocation: its capacity
        // is what it keeps alive.
        let kept = match command.try_into_mut() {
            Ok(m) => m.capacity(),
            Err(b) => panic!("the command's allocation is shared: {b:?}"),
        };
        assert!(kept <= 64, "a 1-byte command keeps {kept} bytes alive");
    }

    /// Other frames and messages decline the fast path.
    #[test]
    fn other_frames_decline() {
        let heartbeat = PeerFrame::Msg(Message {
            from: 1,
            to: 2,
            term: 3,
            body: Body::Heartbeat {
                commit: 4,
                round: 5,
            },
        });
        let body = postcard::to_allocvec(&heartbeat).expect("encodes");
        assert_eq!(decode_append(&body), None);
        let body = postcard::to_allocvec(&PeerFrame::HelloOk).expect("encodes");
        assert_eq!(decode_append(&body), None);
    }
}
