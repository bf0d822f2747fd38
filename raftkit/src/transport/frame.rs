//! Peer-link framing: length-delimited postcard frames.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of a
//! postcard-encoded [`PeerFrame`]. The peer protocol on one QUIC stream is:
//!
//! ```text
//! dialer                              acceptor
//!   Hello { from, name, addr, schema, version } ─▶
//!                                      ◀─ HelloOk ++ HelloOkTail { features } | Refused { reason } (then close)
//!   Msg(..) Msg(..) ... ─▶
//! ```
//!
//! The acceptor's `HelloOk` is followed, in the same frame, by the feature
//! bits of the message shapes it understands (`transport::peer_features`;
//! a dialer of an earlier binary decodes the `HelloOk` and ignores them).
//!
//! A hello whose schema is too large with its detailed shapes offers them,
//! and the acceptor asks for them before it answers (`SendSchemaDetail`,
//! then `SchemaDetail`; see `transport::hello_detail`).
//!
//! # Invariants
//!
//! 1. No frame longer than the configured cap (default
//!    [`DEFAULT_MAX_FRAME_BYTES`], 16 MiB) is ever allocated, read or
//!    written: the length prefix is checked before any buffer is allocated,
//!    and a writer refuses to send a frame its peer would refuse.
//! 2. Network data is never trusted: a short read, a length over the cap or
//!    bytes that do not decode are typed errors ([`FrameError`]), never a
//!    panic. The caller closes the stream; the node carries on.
//! 3. An AppendEntries frame (`Msg`, or `Group` of a multi-group node)
//!    decodes into at most [`MAX_ENTRIES_PER_APPEND`] entries: one claiming
//!    more is refused from its header ([`FrameError::TooManyEntries`])
//!    before any entry is decoded.
//! 4. The lists of a coalesced heartbeat and of a membership answer are
//!    capped the same way ([`FrameError::TooManyItems`], from the list's
//!    length before any item is decoded): at most
//!    [`MAX_QUIESCED_PER_FRAME`] groups (the sender lists no more, see
//!    `crate::multi::quiesce`) and [`MAX_MEMBERS`] members (no
//!    configuration in force has more).
//! 5. Postcard encodes enum variants by index, so variants of [`PeerFrame`]
//!    and of the message [`Body`](crate::core::Body) are only ever
//!    appended, and an existing variant's fields never change;
//!    [`PROTOCOL_VERSION`] changes when the meaning of existing bytes
//!    changes (it must match for a link to come up, so a rolling upgrade
//!    never changes it). An appended variant an earlier binary cannot
//!    decode is sent only to a peer that announced it understands it
//!    (`transport::peer_features`), the earlier shape to any other: so
//!    far `Body::TransferVote` (feature `TRANSFER_VOTE`), in place of
//!    `Body::RequestVote` with `transfer` set.

use std::io;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::{MAX_ENTRIES_PER_APPEND, MAX_MEMBERS, Message, NodeId};
use crate::postcard_cursor::Cursor;

/// The default cap on one frame's body: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// The version of the peer protocol spoken in [`PeerFrame::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Length of the length prefix.
const PREFIX: usize = 4;

/// One frame of the peer protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// The first frame a dialer sends: who it is and what it speaks.
    Hello {
        /// The dialer's node id.
        from: NodeId,
        /// The dialer's name (its id is derived from it).
        name: String,
        /// Where the dialer can be reached: the acceptor opens its own link
        /// back there if it does not know the dialer yet (a new member
        /// answering the leader before it has learned the configuration).
        addr: String,
        /// The fingerprint of the dialer's state-machine schema.
        schema: u64,
        /// The dialer's [`PROTOCOL_VERSION`].
        version: u32,
        /// The dialer's structural schema (see [`crate::schema`]): when
        /// both sides have one, they talk when the schemas are compatible
        /// instead of when the fingerprints are equal. Without its detailed
        /// shapes when they would make the hello larger than
        /// [`MAX_HELLO_BYTES`](super::quic::MAX_HELLO_BYTES): they then
        /// follow in a [`PeerFrame::SchemaDetail`] when the acceptor asks
        /// (an acceptor of the earlier binary does not, and compares
        /// legacy forms).
        schema_desc: Option<crate::schema::Schema>,
    },
    /// The acceptor accepted the hello; `Msg` frames follow.
    HelloOk,
    /// The acceptor refused the hello and closes the link.
    Refused {
        /// Why, for the dialer's logs and link state.
        reason: String,
    },
    /// A Raft message.
    Msg(Message),
    /// A Raft message of one group of a multi-group node (`crate::multi`):
    /// the messages of every group two nodes share travel on one link.
    Group {
        /// The group.
        group: u64,
        /// The message.
        msg: Message,
    },
    /// A multi-group node's coalesced heartbeat (`crate::multi`): one per
    /// tick interval per pair of nodes, in place of the heartbeats of
    /// every quiescent group the sender leads. Its arrival says that the
    /// sender is alive; it lists the `(group, term, commit)` of each group
    /// the sender leads and has quiesced.
    Coalesced {
        /// `(group, term, commit)` of every quiesced group the sender leads.
        quiesced: Vec<(u64, u64, u64)>,
    },
    /// A multi-group node asks whether it is still a member of `group`
    /// (`crate::multi::removal`): its replica hears from no leader, or its
    /// latest configuration no longer lists it.
    MemberQuery {
        /// The group.
        group: u64,
    },
    /// The answer to a [`PeerFrame::MemberQuery`]: the sender's latest
    /// configuration of `group` and how far it knows the log committed
    /// (`crate::multi::removal` judges it).
    MemberAnswer {
        /// The group.
        group: u64,
        /// The sender's latest configuration of the group.
        answer: MemberAnswer,
    },
    /// The acceptor's answer to a hello that offered its schema's detailed
    /// shapes (`transport::hello_detail`): send them. Sent only to a dialer
    /// that offered them.
    SendSchemaDetail,
    /// The dialer's schema with its detailed shapes, sent when the
    /// acceptor asked ([`PeerFrame::SendSchemaDetail`]); at most
    /// [`MAX_DETAIL_BYTES`](super::quic::MAX_DETAIL_BYTES). The acceptor
    /// then answers `HelloOk` or `Refused`.
    SchemaDetail(crate::schema::Schema),
}

/// What a member says of its group's configuration, in a
/// [`PeerFrame::MemberAnswer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAnswer {
    /// The log index of the sender's latest configuration.
    pub config_index: u64,
    /// The sender's commit index: the configuration is committed when it
    /// is at least `config_index`.
    pub commit: u64,
    /// Whether that configuration is joint.
    pub joint: bool,
    /// Whether the sender leads the group (a leader holds every committed
    /// entry, Raft §5.4: its configuration is the newest committed one).
    pub leader: bool,
    /// The sender's current term: a leader's word counts only if its term
    /// is at least the asker's (a deposed leader that has not yet noticed
    /// may hold an older configuration, Raft §5.1).
    pub term: u64,
    /// Every member (voters, outgoing voters, learners) it lists.
    pub members: Vec<NodeId>,
}

/// An error reading or writing a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix (or an outgoing frame) exceeds the cap.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The body is not a valid postcard [`PeerFrame`].
    #[error("frame does not decode: {0}")]
    Decode(#[source] postcard::Error),
    /// A frame could not be encoded.
    #[error("frame does not encode: {0}")]
    Encode(#[source] postcard::Error),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// The stream ended (cleanly between frames, or in the middle of one).
    #[error("stream closed")]
    Closed,
    /// An AppendEntries frame claims more entries than one message may
    /// carry ([`MAX_ENTRIES_PER_APPEND`]); refused before any entry is
    /// decoded. No correct peer sends one: the link is closed.
    #[error("AppendEntries of {count} entries exceeds the cap of {max} entries per message")]
    TooManyEntries {
        /// The entry count the frame claims.
        count: u64,
        /// The cap.
        max: usize,
    },
    /// An AppendEntries frame claims more entries than its length can hold
    /// (an entry takes at least 3 bytes): refused from its header, before
    /// its body is read, charged or decoded (nothing of it was applied).
    /// No correct peer sends one: the link is closed.
    #[error(
        "AppendEntries claims {count} entries in a frame of {len} bytes, which holds at most {max}"
    )]
    EntriesPastFrame {
        /// The entry count the frame claims.
        count: u64,
        /// The frame body's length.
        len: usize,
        /// The most entries that length can hold.
        max: usize,
    },
    /// A coalesced heartbeat or a membership answer lists more items than
    /// any correct sender puts in one ([`MAX_QUIESCED_PER_FRAME`] quiesced
    /// groups, [`MAX_MEMBERS`] members); refused from the list's length
    /// before any item is decoded. Neither frame carries a command (nothing
    /// was applied); no correct peer sends one: the link is closed.
    #[error("{kind} frame lists {count} items, over the cap of {max}")]
    TooManyItems {
        /// The frame's kind.
        kind: &'static str,
        /// The item count the frame claims.
        count: u64,
        /// The cap.
        max: usize,
    },
    /// A well-formed frame of a kind this build does not know (a newer
    /// peer's): skipped, the link goes on (see [`decode_peer_frame`]).
    #[error("frame of unknown kind {0}")]
    UnknownKind(u32),
}

/// The most `(group, term, commit)` tuples one [`PeerFrame::Coalesced`]
/// lists: the most groups a multi-group node puts to sleep as their leader
/// at once (`crate::multi::quiesce`; the groups past it keep ticking). It
/// is the default hosting bound (`HostingPolicy::max_groups`, 100,000):
/// 2.4 MB decoded, at most 3 MB encoded, well within a frame.
pub const MAX_QUIESCED_PER_FRAME: usize = 100_000;

/// `PeerFrame::Coalesced`'s tag (postcard: variant index).
const COALESCED: u32 = 5;
/// `PeerFrame::MemberAnswer`'s tag.
const MEMBER_ANSWER: u32 = 7;

/// How many [`PeerFrame`] kinds this build knows: postcard tags a variant
/// by its index, so tags `0..PEER_FRAME_KINDS` (pinned by a test).
pub const PEER_FRAME_KINDS: u32 = 10;

/// Decodes a [`PeerFrame`] body. A body whose tag names a kind past the
/// ones this build knows is [`FrameError::UnknownKind`], not garbage: a
/// newer peer sent it during a rolling upgrade, and the receiver skips it
/// (Raft tolerates a lost message) instead of dropping the link, which
/// carries every group the two nodes share.
///
/// An AppendEntries of commands, the frame of every batch of writes, is
/// read by hand (`append_decode`: same bytes, same verdict, one allocation
/// for its commands instead of one each).
///
/// An AppendEntries (in a `Msg` or a `Group` frame) claiming more than
/// [`MAX_ENTRIES_PER_APPEND`] entries is [`FrameError::TooManyEntries`],
/// read from its header before any entry is decoded: no correct peer of
/// any version sends one, and decoded it would take ~40x its bytes. The
/// caller closes the link, as for any frame that does not decode.
pub fn decode_peer_frame(body: &[u8]) -> Result<PeerFrame, FrameError> {
    // Before either path decodes an entry: no correct peer sends more
    // (see `MAX_ENTRIES_PER_APPEND`).
    if let Some(count) = super::append_decode::claimed_entries(body)
        && count > MAX_ENTRIES_PER_APPEND as u64
    {
        return Err(FrameError::TooManyEntries {
            count,
            max: MAX_ENTRIES_PER_APPEND,
        });
    }
    // Likewise for the two lists a frame may carry (before serde builds
    // them: a 3-byte tuple is 24 bytes decoded).
    if let Some((kind, count, max)) = claimed_list(body)
        && count > max as u64
    {
        return Err(FrameError::TooManyItems { kind, count, max });
    }
    if let Some(frame) = super::append_decode::decode_append(body) {
        return Ok(frame);
    }
    // A configuration's collections (in a `Payload::Config` entry, or an
    // InstallSnapshot's meta) over `MAX_MEMBERS` are refused from their
    // length, before they are decoded (`core::member_bound`): decoded,
    // an element takes ~15 times its bytes.
    let (decoded, refused) =
        crate::core::member_bound::bounded(MAX_MEMBERS, || postcard::from_bytes(body));
    if let Some(count) = refused {
        return Err(FrameError::TooManyItems {
            kind: "Configuration",
            count,
            max: MAX_MEMBERS,
        });
    }
    decoded.map_err(|e| match postcard::take_from_bytes::<u32>(body) {
        Ok((tag, _)) if tag >= PEER_FRAME_KINDS => FrameError::UnknownKind(tag),
        _ => FrameError::Decode(e),
    })
}

/// The kind, claimed length and cap of the list a `Coalesced` or a
/// `MemberAnswer` frame carries, read from the few varints before it
/// (invariant 4); `None` for any other frame, or bytes that do not read as
/// far as the length (serde refuses those the same way).
fn claimed_list(body: &[u8]) -> Option<(&'static str, u64, usize)> {
    let mut c = Cursor::new(body);
    match c.u32().ok()? {
        COALESCED => Some(("Coalesced", c.u64().ok()?, MAX_QUIESCED_PER_FRAME)),
        MEMBER_ANSWER => {
            // group, then `MemberAnswer`: config_index, commit, joint,
            // leader, term, members.
            for _ in 0..3 {
                c.u64().ok()?;
            }
            // A bool is one byte, 0 or 1, as an option's tag.
            c.option().ok()?;
            c.option().ok()?;
            c.u64().ok()?;
            Some(("MemberAnswer", c.u64().ok()?, MAX_MEMBERS))
        }
        _ => None,
    }
}

/// Appends `frame`, length-prefixed, to `buf`. On error `buf` is left as it
/// was.
pub fn encode_frame<T: serde::Serialize>(
    frame: &T,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode_into(frame, max, buf)
}

/// [`encode_frame`] into a [`BytesMut`]: its filled part is then handed to
/// quinn as it is (`SendStream::write_chunk` of `split().freeze()`),
/// where writing a `&[u8]` copies it into a buffer of quinn's own; the
/// capacity left over takes the next frames, so one allocation serves many
/// writes.
pub(crate) fn encode_frame_bytes<T: serde::Serialize>(
    frame: &T,
    max: usize,
    buf: &mut BytesMut,
) -> Result<(), FrameError> {
    encode_into(frame, max, buf)
}

fn encode_into<T: serde::Serialize, B: FrameBuf>(
    frame: &T,
    max: usize,
    buf: &mut B,
) -> Result<(), FrameError> {
    let start = buf.filled();
    buf.append(&[0; PREFIX]);
    if let Err(e) = postcard::serialize_with_flavor(frame, Appender(&mut *buf)) {
        buf.cut(start);
        return Err(FrameError::Encode(e));
    }
    let len = buf.filled() - start - PREFIX;
    match u32::try_from(len).ok().filter(|_| len <= max) {
        Some(len32) => {
            buf.patch(start, len32.to_be_bytes());
            Ok(())
        }
        None => {
            buf.cut(start);
            Err(FrameError::TooLarge {
                len: len as u64,
                max,
            })
        }
    }
}

/// What frames are encoded into.
trait FrameBuf {
    fn filled(&self) -> usize;
    fn append(&mut self, data: &[u8]);
    fn cut(&mut self, len: usize);
    /// Writes a length prefix at `at` (`at + PREFIX <= filled()`).
    fn patch(&mut self, at: usize, prefix: [u8; PREFIX]);
}

/// `Vec<u8>` and `BytesMut` have the same growable-slice methods.
macro_rules! frame_buf {
    ($($buf:ty),*) => {$(
        impl FrameBuf for $buf {
            fn filled(&self) -> usize {
                self.len()
            }
            fn append(&mut self, data: &[u8]) {
                self.extend_from_slice(data);
            }
            fn cut(&mut self, len: usize) {
                self.truncate(len);
            }
            fn patch(&mut self, at: usize, prefix: [u8; PREFIX]) {
                if let Some(dst) = self.get_mut(at..at + PREFIX) {
                    dst.copy_from_slice(&prefix);
                }
            }
        }
    )*};
}
frame_buf!(Vec<u8>, BytesMut);

/// Lets postcard append to a borrowed buffer, slices at once.
struct Appender<'a, B>(&'a mut B);

impl<B: FrameBuf> postcard::ser_flavors::Flavor for Appender<'_, B> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.append(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.append(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Writes one frame and flushes.
pub async fn write_frame<T: serde::Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &T,
    max: usize,
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode_frame(frame, max, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame whose body is at most `max` bytes. A stream that ends
/// before or inside a frame yields [`FrameError::Closed`].
pub async fn read_frame<T: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    let body = read_frame_body(r, max).await?;
    postcard::from_bytes(&body).map_err(FrameError::Decode)
}

/// Reads one frame's body (at most `max` bytes) without decoding it: for
/// frames that carry more than one postcard value (a client request and its
/// [`RequestMeta`](crate::client::wire::RequestMeta)).
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_frame_len(r, max).await?;
    read_frame_rest(r, len).await
}

/// Reads one frame's length prefix only: the length of its body, at most
/// `max` (the body is read by [`read_frame_rest`], e.g. once there is
/// room for it).
pub(crate) async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<usize, FrameError> {
    let mut prefix = [0u8; PREFIX];
    read_exact(r, &mut prefix).await?;
    let len = u32::from_be_bytes(prefix);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len_usize)
}

/// Reads the body of `len_usize` bytes of a frame whose prefix
/// [`read_frame_len`] read.
pub(crate) async fn read_frame_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    len_usize: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = u64::try_from(len_usize).unwrap_or(u64::MAX);
    // Grown as the bytes arrive, not allocated at the length the prefix
    // claims: a sender that claims a large frame and stalls holds only
    // what it sent (QUIC flow control bounds that per stream).
    let mut body = Vec::with_capacity(len_usize.min(BODY_START_BYTES));
    let read = (&mut *r).take(len).read_to_end(&mut body).await;
    match read {
        Ok(n) if n == len_usize => Ok(body),
        Ok(_) => Err(FrameError::Closed),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// [`read_frame_rest`], unless no byte of the body arrives for `stall`:
/// then `Ok(None)` (what arrived is dropped; the stream is not read
/// further). However slowly its bytes come, a body whose bytes keep coming
/// is read whole.
pub(crate) async fn read_frame_rest_unless_stalled<R: AsyncRead + Unpin>(
    r: &mut R,
    len_usize: usize,
    stall: std::time::Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    // Grown as the bytes arrive (`read_frame_rest`).
    let mut body = Vec::with_capacity(len_usize.min(BODY_START_BYTES));
    while body.len() < len_usize {
        let rest = u64::try_from(len_usize - body.len()).unwrap_or(u64::MAX);
        let mut limited = (&mut *r).take(rest);
        match tokio::time::timeout(stall, limited.read_buf(&mut body)).await {
            Err(_) => return Ok(None),
            Ok(Ok(0)) => return Err(FrameError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(FrameError::Io(e)),
        }
    }
    Ok(Some(body))
}

/// The memory a frame body starts with before its bytes arrive.
const BODY_START_BYTES: usize = 64 * 1024;

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(e) => Err(FrameError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Body;

    /// Found by review, stop 50 (#3): a configuration (a `Payload::Config`
    /// entry, an InstallSnapshot's meta) was decoded with no bound, ~15
    /// times its bytes; `MAX_MEMBERS` was checked only in core, after the
    /// inbox. Each of its collections over `MAX_MEMBERS` is now refused
    /// from its length, as `TooManyItems`; at the cap it decodes as before.
    #[test]
    fn a_configuration_over_max_members_is_refused_before_it_is_decoded() {
        use crate::core::{Body, Configuration, Entry, Payload, SnapshotMeta};
        let config = |n: u64, which: usize| {
            let mut c = Configuration::new([1]);
            match which {
                0 => c.addrs = (1..=n).map(|id| (id, String::new())).collect(),
                1 => c.voters = (1..=n).collect(),
                2 => c.outgoing = (1..=n).collect(),
                _ => c.learners = (1..=n).collect(),
            }
            c
        };
        let append = |c: Configuration| Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::AppendEntries {
                prev_index: 0,
                prev_term: 0,
                entries: vec![Entry {
                    term: 1,
                    index: 1,
                    payload: Payload::Config(c),
                }],
                commit: 0,
            },
        };
        let snapshot = |c: Configuration| Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 1,
                    term: 1,
                    config: c,
                },
                offset: 0,
                data: Vec::new(),
                done: true,
            },
        };
        let over = MAX_MEMBERS as u64 + 1;
        for which in 0..4 {
            for make in [append, snapshot] {
                for frame in [
                    PeerFrame::Msg(make(config(over, which))),
                    PeerFrame::Group {
                        group: 7,
                        msg: make(config(over, which)),
                    },
                ] {
                    let body = postcard::to_allocvec(&frame).expect("encode");
                    match decode_peer_frame(&body) {
                        Err(FrameError::TooManyItems { count, max, .. }) => {
                            assert_eq!((count, max), (over, MAX_MEMBERS))
                        }
                        other => panic!(
                            "a configuration of {over} elements (collection {which}) decoded \
                             as {:?}",
                            other.map(|f| frame_kind_name(&f))
                        ),
                    }
                }
                // At the cap: decoded as before (same bytes, same value).
                let frame = PeerFrame::Msg(make(config(MAX_MEMBERS as u64, which)));
                let body = postcard::to_allocvec(&frame).expect("encode");
                assert_eq!(decode_peer_frame(&body).expect("decodes"), frame);
            }
        }
        // Outside a peer frame's decoding (storage, snapshots): unbounded.
        let big = config(over, 0);
        let bytes = postcard::to_allocvec(&big).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Configuration>(&bytes).expect("decodes"),
            big
        );
    }

    fn frame_kind_name(f: &PeerFrame) -> &'static str {
        match f {
            PeerFrame::Msg(_) => "Msg",
            PeerFrame::Group { .. } => "Group",
            _ => "other",
        }
    }

    fn msg(n: u64) -> PeerFrame {
        PeerFrame::Msg(Message {
            from: 1,
            to: 2,
            term: n,
            body: Body::Heartbeat {
                commit: n,
                round: n,
            },
        })
    }

    async fn read_all(bytes: &[u8], max: usize) -> Vec<Result<PeerFrame, FrameError>> {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            let f = read_frame(&mut r, max).await;
            let stop = f.is_err();
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let frames = vec![
            PeerFrame::Hello {
                from: 7,
                name: "kv@127.0.0.1:1".into(),
                addr: "127.0.0.1:1".into(),
                schema: 0xdead_beef,
                version: PROTOCOL_VERSION,
                schema_desc: None,
            },
            PeerFrame::HelloOk,
            PeerFrame::Refused {
                reason: "no".into(),
            },
            msg(1),
            msg(2),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            encode_frame(f, DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("encode");
        }
        let got = read_all(&buf, DEFAULT_MAX_FRAME_BYTES).await;
        assert_eq!(got.len(), frames.len() + 1);
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(g.as_ref().expect("frame"), f);
        }
        assert!(matches!(got.last(), Some(Err(FrameError::Closed))));
    }

    #[tokio::test]
    async fn oversized_prefix_is_refused_before_allocating() {
        let bytes = u32::MAX.to_be_bytes();
        let got = read_all(&bytes, 1024).await;
        assert!(matches!(
            got[0],
            Err(FrameError::TooLarge { len, max: 1024 }) if len == u64::from(u32::MAX)
        ));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_all(&bytes, 1024).await[0],
            Err(FrameError::Decode(_))
        ));
        let mut buf = Vec::new();
        encode_frame(&msg(3), 1024, &mut buf).expect("encode");
        buf.pop();
        assert!(matches!(
            read_all(&buf, 1024).await[0],
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_all(&[0, 0], 1024).await[0],
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn writer_refuses_frames_over_the_cap() {
        let mut buf = vec![9u8];
        let big = PeerFrame::Refused {
            reason: "x".repeat(100),
        };
        assert!(matches!(
            encode_frame(&big, 10, &mut buf),
            Err(FrameError::TooLarge { max: 10, .. })
        ));
        assert_eq!(buf, vec![9u8], "buffer left as it was");
    }

    #[tokio::test]
    async fn a_frame_of_exactly_the_cap_is_written_and_read() {
        let frame = msg(1);
        let mut one = Vec::new();
        encode_frame(&frame, DEFAULT_MAX_FRAME_BYTES, &mut one).expect("encode");
        let cap = one.len() - PREFIX;
        let mut buf = Vec::new();
        encode_frame(&frame, cap, &mut buf).expect("a frame of the cap is written");
        assert_eq!(buf, one);
        assert_eq!(read_all(&buf, cap).await[0].as_ref().expect("read"), &frame);
        // One byte less: both sides refuse it.
        assert!(matches!(
            encode_frame(&frame, cap - 1, &mut Vec::new()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read_all(&buf, cap - 1).await[0],
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// An AppendEntries of `count` entries (no-ops, a configuration
    /// first when `config`), as a `Msg` frame or in a `Group` frame.
    fn append_of(count: usize, config: bool, group: Option<u64>) -> PeerFrame {
        let entries = (0..count as u64)
            .map(|k| crate::core::Entry {
                term: 1,
                index: 1 + k,
                payload: if config && k == 0 {
                    crate::core::Payload::Config(crate::core::Configuration::new([1, 2, 3]))
                } else {
                    crate::core::Payload::Noop
                },
            })
            .collect();
        let msg = Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::AppendEntries {
                prev_index: 0,
                prev_term: 0,
                entries,
                commit: 0,
            },
        };
        match group {
            Some(group) => PeerFrame::Group { group, msg },
            None => PeerFrame::Msg(msg),
        }
    }

    /// Found by review, stop 41: an AppendEntries frame of minimal no-op
    /// entries (3 bytes each) decoded into ~40x its bytes. A frame claiming
    /// more than `MAX_ENTRIES_PER_APPEND` entries is refused before any
    /// entry is decoded, on the hand-read path (no-ops and commands), the
    /// serde path (a configuration entry among them) and in a group's
    /// frame; one at the cap decodes.
    #[test]
    fn an_append_over_the_entry_cap_is_refused_before_decoding() {
        use crate::core::MAX_ENTRIES_PER_APPEND as CAP;
        // The bound the cap's docs state: the entries of one frame take
        // at most about 8 MB decoded.
        assert!(std::mem::size_of::<crate::core::Entry>() * CAP <= 8 << 20);
        let over = (CAP + 1) as u64;
        for (config, group) in [
            (false, None),
            (true, None),
            (false, Some(7)),
            (true, Some(7)),
        ] {
            let case = format!("config {config}, group {group:?}");
            let body = postcard::to_allocvec(&append_of(CAP + 1, config, group)).expect("encodes");
            match decode_peer_frame(&body) {
                Err(FrameError::TooManyEntries { count, max }) => {
                    assert_eq!((count, max), (over, CAP), "{case}");
                }
                Err(e) => panic!("{case}: {e}"),
                Ok(_) => panic!("{case}: a frame of {over} entries decoded"),
            }
            let at = append_of(CAP, config, group);
            let body = postcard::to_allocvec(&at).expect("encodes");
            match decode_peer_frame(&body) {
                Ok(frame) => assert!(frame == at, "{case}: the frame at the cap reads otherwise"),
                Err(e) => panic!("{case}: a frame at the cap: {e}"),
            }
        }
        // A count claimed with no entries behind it: refused for the count
        // (not read as far as the missing bytes).
        let mut body = postcard::to_allocvec(&append_of(0, false, None)).expect("encodes");
        body.truncate(body.len() - 2); // the count (0) and the commit (0)
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            decode_peer_frame(&body),
            Err(FrameError::TooManyEntries {
                count: u64::MAX,
                ..
            })
        ));
        assert!(
            FrameError::TooManyEntries {
                count: over,
                max: CAP
            }
            .to_string()
            .contains("65537 entries exceeds the cap of 65536 entries per message")
        );
    }

    #[test]
    fn a_frame_of_a_newer_kind_is_told_apart_from_garbage() {
        // The last kind this build knows has the last tag.
        let mut buf = Vec::new();
        let last = PeerFrame::SchemaDetail(crate::schema::Schema::new(
            "s",
            1,
            crate::schema::Shape::Unit,
        ));
        encode_frame(&last, DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("encode");
        assert_eq!(buf[PREFIX], (PEER_FRAME_KINDS - 1) as u8);
        assert_eq!(decode_peer_frame(&buf[PREFIX..]).expect("decode"), last);
        // A newer kind (tag past the known ones, any payload).
        assert!(matches!(
            decode_peer_frame(&[PEER_FRAME_KINDS as u8, 3, 1, 2]),
            Err(FrameError::UnknownKind(k)) if k == PEER_FRAME_KINDS
        ));
        // A known kind with a broken body, or no body: garbage.
        assert!(matches!(
            decode_peer_frame(&[3, 0xff]),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(decode_peer_frame(&[]), Err(FrameError::Decode(_))));
    }
}

#[cfg(test)]
mod list_cap_tests {
    use super::*;

    /// Found by review, stop 47: a coalesced heartbeat's list and a
    /// membership answer's member list had no cap: a node certificate
    /// could send 16 MiB frames of ~5.6M minimal tuples (~134 MB decoded
    /// each), queued 64 deep. A list over its cap is refused from its
    /// length before any item is decoded; one at the cap decodes.
    #[test]
    fn a_coalesced_or_member_list_over_its_cap_is_refused_before_decoding() {
        let huge = PeerFrame::Coalesced {
            quiesced: vec![(0, 0, 0); 5_000_000],
        };
        let body = postcard::to_allocvec(&huge).expect("encodes");
        match decode_peer_frame(&body) {
            Err(FrameError::TooManyItems { count, max, .. }) => {
                assert_eq!((count, max), (5_000_000, MAX_QUIESCED_PER_FRAME));
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a coalesced heartbeat of 5,000,000 groups decoded"),
        }
        let over = PeerFrame::Coalesced {
            quiesced: vec![(u64::MAX, 1, 1); MAX_QUIESCED_PER_FRAME + 1],
        };
        let body = postcard::to_allocvec(&over).expect("encodes");
        assert!(matches!(
            decode_peer_frame(&body),
            Err(FrameError::TooManyItems { .. })
        ));
        let at = PeerFrame::Coalesced {
            quiesced: vec![(u64::MAX, u64::MAX, u64::MAX); MAX_QUIESCED_PER_FRAME],
        };
        let body = postcard::to_allocvec(&at).expect("encodes");
        assert!(
            body.len() <= DEFAULT_MAX_FRAME_BYTES,
            "the sender's frame fits"
        );
        assert_eq!(decode_peer_frame(&body).expect("at the cap"), at);

        let answer = |n: usize| PeerFrame::MemberAnswer {
            group: u64::MAX,
            answer: MemberAnswer {
                config_index: u64::MAX,
                commit: 3,
                joint: true,
                leader: false,
                term: 9,
                members: (1..=n as u64).collect(),
            },
        };
        let body = postcard::to_allocvec(&answer(MAX_MEMBERS + 1)).expect("encodes");
        match decode_peer_frame(&body) {
            Err(FrameError::TooManyItems { count, max, .. }) => {
                assert_eq!((count, max), (MAX_MEMBERS as u64 + 1, MAX_MEMBERS));
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a member answer of {} members decoded", MAX_MEMBERS + 1),
        }
        let body = postcard::to_allocvec(&answer(MAX_MEMBERS)).expect("encodes");
        assert_eq!(
            decode_peer_frame(&body).expect("at the cap"),
            answer(MAX_MEMBERS)
        );
        // A count claimed with nothing behind it: refused for the count.
        let mut body = vec![COALESCED as u8];
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            decode_peer_frame(&body),
            Err(FrameError::TooManyItems {
                count: u64::MAX,
                ..
            })
        ));
        // A bad boolean before the count: garbage, as serde says.
        let mut body = postcard::to_allocvec(&answer(MAX_MEMBERS + 1)).expect("encodes");
        // tag, group (10 bytes), config_index (10 bytes), commit: the joint flag.
        body[1 + 10 + 10 + 1] = 2;
        assert!(matches!(
            decode_peer_frame(&body),
            Err(FrameError::Decode(_))
        ));
    }
}
