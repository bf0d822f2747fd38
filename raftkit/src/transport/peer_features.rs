//! What a peer's binary understands beyond
//! [`PROTOCOL_VERSION`](super::frame::PROTOCOL_VERSION): feature
//! bits the acceptor announces after its `HelloOk`, in the same frame.
//!
//! The protocol version must match exactly for a link to come up
//! (`accept::check_hello`), so a rolling upgrade never changes it; new
//! message shapes are appended variants ([`frame`](super::frame), invariant
//! 5) that a peer of an earlier binary cannot decode (it closes the link).
//! Such a shape is sent only over a link whose acceptor announced the
//! feature that names it; to any other peer the transport sends the
//! earlier shape it replaces:
//!
//! ```text
//! dialer                                   acceptor
//!   Hello { .. } ─▶
//!                                           ◀─ HelloOk ++ HelloOkTail { features }
//!   Msg(..) (each message in the shapes `features` allows) ─▶
//! ```
//!
//! Mixed versions:
//!
//! - a dialer of an earlier binary reads the answer with
//!   `postcard::from_bytes`, which leaves the tail alone: it sees
//!   `HelloOk`, as before, and sends only the shapes it knows;
//! - an acceptor of an earlier binary answers a bare `HelloOk`: no tail,
//!   no features, and this dialer sends it the earlier shapes
//!   ([`for_peer`]).
//!
//! Features, one bit each:
//!
//! - [`TRANSFER_VOTE`]: the peer understands `Body::TransferVote` (a
//!   leadership-transfer vote naming the leader that ordered it, module
//!   docs of `core::transfer`); without it a transfer vote goes as
//!   `Body::RequestVote` with `transfer` set (`Body::legacy_form`).
//!
//! # Invariants
//!
//! 1. A link's features are those its acceptor announced for that
//!    connection; a reconnection reads them again (an acceptor may have
//!    been upgraded, or downgraded, in between).
//! 2. A tail that does not decode (or bytes after a later binary's longer
//!    tail) announces what decodes, nothing when nothing does: never an
//!    error, never a panic. Unknown bits are ignored.
//! 3. The in-process transport (`memory`) and the simulation deliver the
//!    core's messages as they are: they speak every feature of this binary.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{FrameError, PeerFrame, decode_peer_frame, write_frame};
use crate::core::Message;

/// The peer understands `Body::TransferVote`.
pub const TRANSFER_VOTE: u64 = 1;

/// The features this binary announces: every one it understands.
pub const LOCAL_FEATURES: u64 = TRANSFER_VOTE;

/// What an acceptor appends to its `HelloOk`, in the same frame. Dialers
/// of earlier binaries never read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HelloOkTail {
    /// Feature bits ([`TRANSFER_VOTE`], ...).
    features: u64,
}

/// Writes the acceptor's `HelloOk` with the tail announcing
/// [`LOCAL_FEATURES`].
pub(super) async fn write_hello_ok<W: AsyncWrite + Unpin>(
    w: &mut W,
    cap: usize,
) -> Result<(), FrameError> {
    let tail = HelloOkTail {
        features: LOCAL_FEATURES,
    };
    write_frame(w, &(&PeerFrame::HelloOk, &tail), cap).await
}

/// Reads a dialer's answer to its hello: the frame, decoded as any peer
/// frame is ([`decode_peer_frame`]), and the features a `HelloOk`'s tail
/// announces (0 for any other frame, a bare `HelloOk` or a tail that does
/// not decode: invariant 2).
pub(super) async fn read_hello_answer<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<(PeerFrame, u64), FrameError> {
    let body = super::frame::read_frame_body(r, max).await?;
    hello_answer(&body)
}

/// [`read_hello_answer`] of a frame's body.
fn hello_answer(body: &[u8]) -> Result<(PeerFrame, u64), FrameError> {
    let frame = decode_peer_frame(body)?;
    let features = match frame {
        PeerFrame::HelloOk => postcard::take_from_bytes::<PeerFrame>(body)
            .ok()
            .and_then(|(_, rest)| postcard::from_bytes::<HelloOkTail>(rest).ok())
            .map_or(0, |tail| tail.features),
        _ => 0,
    };
    Ok((frame, features))
}

/// `msg` in the shapes a peer announcing `features` understands
/// (`Body::legacy_form` when it lacks [`TRANSFER_VOTE`]).
pub(super) fn for_peer(msg: Message, features: u64) -> Message {
    if features & TRANSFER_VOTE != 0 {
        return msg;
    }
    Message {
        body: msg.body.legacy_form(),
        ..msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Body;
    use crate::transport::frame::encode_frame;

    fn body_of<T: Serialize>(frame: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(frame, usize::MAX, &mut buf).expect("encodes");
        buf.split_off(4)
    }

    /// A dialer of the earlier binary (`read_frame`, `postcard::from_bytes`)
    /// reads this acceptor's answer as a bare `HelloOk`; this dialer reads
    /// the features; an earlier acceptor's bare `HelloOk` announces none.
    #[tokio::test]
    async fn the_hello_ok_tail_is_read_by_this_binary_and_ignored_by_the_earlier() {
        let mut wire = Vec::new();
        write_hello_ok(&mut wire, usize::MAX).await.expect("writes");
        let body = wire.split_off(4);
        let earlier: PeerFrame = postcard::from_bytes(&body).expect("earlier dialer decodes");
        assert_eq!(earlier, PeerFrame::HelloOk);
        let mut stream = &wire.iter().chain(&body).copied().collect::<Vec<u8>>()[..];
        let (frame, features) = read_hello_answer(&mut stream, usize::MAX)
            .await
            .expect("reads");
        assert_eq!((frame, features), (PeerFrame::HelloOk, LOCAL_FEATURES));
        assert_eq!(
            hello_answer(&body_of(&PeerFrame::HelloOk)).expect("bare"),
            (PeerFrame::HelloOk, 0)
        );
        // A tail that does not decode announces nothing; a refusal none.
        let mut junk = body_of(&PeerFrame::HelloOk);
        junk.extend_from_slice(&[0xff; 12]);
        assert_eq!(hello_answer(&junk).expect("junk"), (PeerFrame::HelloOk, 0));
        let refused = PeerFrame::Refused {
            reason: "no".into(),
        };
        let mut with_tail = body_of(&refused);
        with_tail.extend_from_slice(&body_of(&HelloOkTail { features: 1 }));
        assert_eq!(hello_answer(&with_tail).expect("refused").1, 0);
    }

    /// A transfer vote goes as itself to a peer that announced
    /// `TRANSFER_VOTE`, and in the earlier form to one that did not; other
    /// messages go unchanged either way.
    #[test]
    fn a_transfer_vote_falls_back_to_the_earlier_form_for_an_earlier_peer() {
        let vote = Message {
            from: 2,
            to: 3,
            term: 5,
            body: Body::TransferVote {
                last_index: 7,
                last_term: 4,
                leader: 1,
            },
        };
        assert_eq!(for_peer(vote.clone(), TRANSFER_VOTE), vote);
        let legacy = for_peer(vote.clone(), 0);
        assert_eq!(
            legacy,
            Message {
                body: Body::RequestVote {
                    last_index: 7,
                    last_term: 4,
                    pre_vote: false,
                    transfer: true,
                },
                ..vote
            }
        );
        let heartbeat = Message {
            from: 1,
            to: 3,
            term: 5,
            body: Body::Heartbeat {
                commit: 2,
                round: 1,
            },
        };
        assert_eq!(for_peer(heartbeat.clone(), 0), heartbeat);
        // The earlier form is a variant the earlier binary decodes: it
        // is encoded as it was (variant 0 of `Body`).
        let frame = body_of(&PeerFrame::Msg(legacy));
        assert_eq!(frame.get(4), Some(&0), "{frame:?}");
    }
}
