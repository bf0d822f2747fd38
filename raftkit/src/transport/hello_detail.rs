//! A peer hello whose schema is too large with its detailed shapes: the
//! shapes then follow in a second frame, asked for by the acceptor.
//!
//! A hello is capped ([`MAX_HELLO_BYTES`], 64 KiB) and the detailed shapes
//! (field, variant and argument names) about double a schema's size. A
//! dialer whose hello would not fit with them sends its schema without
//! them ([`crate::schema::Schema::without_detail`]) and, after the hello's
//! postcard value, in the same frame, a [`HelloTail`] offering them:
//!
//! ```text
//! dialer                                   acceptor
//!   Hello { .., schema_desc: legacy } ++ HelloTail { detail_on_request } ─▶
//!                                           ◀─ SendSchemaDetail
//!   SchemaDetail(schema) (≤ MAX_DETAIL_BYTES) ─▶
//!                                           ◀─ HelloOk | Refused { reason }
//! ```
//!
//! Mixed versions (the earlier binary is the one that fitted hellos
//! without offering the detail, or one before that):
//!
//! - a dialer of this binary, an earlier acceptor: the acceptor decodes
//!   the hello with `postcard::from_bytes`, which leaves the tail alone,
//!   compares the legacy forms and answers `HelloOk` at once; the dialer
//!   takes that answer as the link's, sends no detail, and the link is up
//!   as before (names unchecked on it, as with any earlier peer).
//! - an earlier dialer, an acceptor of this binary: the hello has no tail,
//!   so the acceptor never asks (`SendSchemaDetail` would be an answer
//!   that dialer refuses) and compares the legacy forms as before.
//! - both of this binary: the acceptor asks, and compares the detailed
//!   schemas, names included, before it answers.
//!
//! # Invariants
//!
//! 1. An acceptor asks only a dialer whose hello offered the detail, only
//!    when it compares schemas structurally, and only after the hello's
//!    identity checks passed (a node certificate of the hello's name and
//!    id, the protocol version): it buffers at most [`MAX_DETAIL_BYTES`]
//!    more for a certified node, as for a client hello.
//! 2. A detail frame over the cap, that does not decode, that is not a
//!    `SchemaDetail`, carries no detailed shapes, or whose legacy form is
//!    not the hello's schema refuses the link with a reason; nothing in it
//!    is indexed or unwrapped.
//! 3. A dialer offers the detail only when the offer and the hello fit the
//!    hello cap, the detail frame fits [`MAX_DETAIL_BYTES`], and its
//!    schema's encoding ends with its runtime log version (so the tail is
//!    never read as a field of the schema); otherwise it sends the hello
//!    without the detail as the earlier binary did (logged).

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::accept::MAX_HELLO_BYTES;
use tokio::io::AsyncWrite;

use super::frame::{FrameError, PeerFrame, decode_peer_frame, encode_frame, write_frame};
use super::quic::frame_kind;
use crate::schema::Schema;

/// The cap on a [`PeerFrame::SchemaDetail`] frame: 1 MiB, as a client's
/// hello (`runtime::client_service::MAX_CLIENT_HELLO_BYTES`).
pub const MAX_DETAIL_BYTES: usize = 1 << 20;

/// What a dialer appends to its hello's postcard value, in the same frame.
/// Acceptors of the earlier binary never read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HelloTail {
    /// The hello's schema was sent without its detailed shapes, and the
    /// dialer sends them in a [`PeerFrame::SchemaDetail`] frame when the
    /// acceptor answers [`PeerFrame::SendSchemaDetail`].
    pub(super) detail_on_request: bool,
}

/// The tail of a hello that offers its schema's detail.
const OFFER: HelloTail = HelloTail {
    detail_on_request: true,
};

/// A dialer's hello as it is sent.
#[derive(Debug)]
pub(super) struct DialerHello {
    /// The hello, with or without its schema's detailed shapes.
    pub(super) hello: PeerFrame,
    /// The frame with the detailed shapes, offered in the hello's tail;
    /// `None` when the hello carries them or does not offer them.
    pub(super) detail: Option<PeerFrame>,
}

impl DialerHello {
    /// The hello frame's body: the hello, then the tail when the detail is
    /// offered.
    pub(super) fn encode(&self, cap: usize, buf: &mut Vec<u8>) -> Result<(), FrameError> {
        match self.detail {
            None => encode_frame(&self.hello, cap, buf),
            Some(_) => encode_frame(&(&self.hello, &OFFER), cap, buf),
        }
    }

    /// Writes the hello frame (as [`DialerHello::encode`] encodes it).
    pub(super) async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        cap: usize,
    ) -> Result<(), FrameError> {
        match self.detail {
            None => write_frame(w, &self.hello, cap).await,
            Some(_) => write_frame(w, &(&self.hello, &OFFER), cap).await,
        }
    }
}

/// `hello` as a dialer sends it: as it is if it fits the cap acceptors
/// read a hello with ([`MAX_HELLO_BYTES`], or the smaller `max_frame`);
/// otherwise with its schema's detailed shapes left out, about halving
/// the schema, and offered in a second frame (see the module doc). A hello
/// that does not fit even so is sent as it is, and refused (logged here).
pub(super) fn fitted_hello(hello: PeerFrame, max_frame: usize) -> DialerHello {
    let cap = max_frame.min(MAX_HELLO_BYTES);
    let fits = |sent: &DialerHello| sent.encode(cap, &mut Vec::new()).is_ok();
    let as_is = DialerHello {
        hello,
        detail: None,
    };
    if fits(&as_is) {
        return as_is;
    }
    let PeerFrame::Hello {
        from,
        name,
        addr,
        schema,
        version,
        schema_desc: Some(desc),
    } = as_is.hello
    else {
        warn!(
            cap,
            "this node's hello is larger than a hello may be; peers will refuse it"
        );
        return as_is;
    };
    let fitted = |desc: Schema| PeerFrame::Hello {
        from,
        name: name.clone(),
        addr: addr.clone(),
        schema,
        version,
        schema_desc: Some(desc),
    };
    let schema_name = desc.name.clone();
    let detail = PeerFrame::SchemaDetail(desc.clone());
    let detail_fits =
        encode_frame(&detail, max_frame.min(MAX_DETAIL_BYTES), &mut Vec::new()).is_ok();
    let legacy = desc.without_detail();
    // Invariant 3: a schema that ends before its runtime log version
    // would read the tail as its next field.
    let offer = detail_fits && legacy.runtime_log > 0;
    let offered = DialerHello {
        hello: fitted(legacy.clone()),
        detail: offer.then_some(detail),
    };
    if offer && fits(&offered) {
        debug!(
            cap,
            schema = %schema_name,
            "the hello carries the schema without its detailed shapes (they do not fit) and offers them in a second frame"
        );
        return offered;
    }
    let bare = DialerHello {
        hello: fitted(legacy),
        detail: None,
    };
    if fits(&bare) {
        warn!(
            cap,
            schema = %schema_name,
            detail_fits,
            "the hello carries the schema without its detailed shapes, and they cannot follow: peers compare legacy forms (names unchecked)"
        );
    } else {
        warn!(
            cap,
            schema = %schema_name,
            "this node's schema is larger than a hello may be, even without its detailed shapes; peers will refuse it"
        );
    }
    bare
}

/// Splits a hello frame's body into the hello and whether it offers its
/// schema's detail (a [`HelloTail`] after it; bytes after the hello that
/// are not one, from a later binary perhaps, offer nothing).
pub(super) fn read_hello(body: &[u8]) -> Result<(PeerFrame, bool), FrameError> {
    let (hello, rest) = postcard::take_from_bytes::<PeerFrame>(body).map_err(FrameError::Decode)?;
    let offered = matches!(
        postcard::from_bytes::<HelloTail>(rest),
        Ok(HelloTail {
            detail_on_request: true
        })
    );
    Ok((hello, offered))
}

/// Whether an acceptor comparing schemas structurally asks for the
/// detail of `hello`: it offered it, and its schema came without it.
pub(super) fn wants_detail(hello: &PeerFrame, offered: bool) -> bool {
    offered
        && matches!(
            hello,
            PeerFrame::Hello {
                schema_desc: Some(desc),
                ..
            } if !desc.detailed
        )
}

/// `hello` with its schema replaced by the detailed one of the frame the
/// dialer sent when asked (`body`, read within [`MAX_DETAIL_BYTES`]), or
/// why the link is refused (invariant 2).
pub(super) fn with_detail(hello: PeerFrame, body: &[u8]) -> Result<PeerFrame, String> {
    let detail = match decode_peer_frame(body) {
        Ok(PeerFrame::SchemaDetail(detail)) => detail,
        Ok(other) => {
            return Err(format!(
                "expected the schema detail that was asked for, got {}",
                frame_kind(&other)
            ));
        }
        Err(e) => return Err(format!("the schema detail frame does not decode: {e}")),
    };
    let PeerFrame::Hello {
        from,
        name,
        addr,
        schema,
        version,
        schema_desc: Some(legacy),
    } = hello
    else {
        return Err(format!(
            "a schema detail for a {} without a schema",
            frame_kind(&hello)
        ));
    };
    if !detail.detailed {
        return Err(format!(
            "the schema detail of {:?} carries no detailed shapes (or they do not match its legacy ones)",
            detail.name.chars().take(200).collect::<String>()
        ));
    }
    if detail.without_detail() != legacy {
        return Err(format!(
            "the schema detail ({:?}) is not the schema of the hello ({:?})",
            detail.name.chars().take(200).collect::<String>(),
            legacy.name.chars().take(200).collect::<String>()
        ));
    }
    Ok(PeerFrame::Hello {
        from,
        name,
        addr,
        schema,
        version,
        schema_desc: Some(detail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{HandlerKind, Shape};
    use crate::transport::frame::PROTOCOL_VERSION;

    /// A schema whose hello does not fit the cap with its detailed shapes.
    fn big() -> Schema {
        let mut s = Schema::new("big", 1, Shape::Unit);
        for tag in 0..600u32 {
            let arg =
                |i: u32| format!("argument_{i}_of_handler_{tag}_with_a_long_descriptive_name");
            let (a, b, c) = (arg(0), arg(1), arg(2));
            let args = Shape::fields([
                (a.as_str(), Shape::Str),
                (b.as_str(), Shape::U64),
                (c.as_str(), Shape::Option(Box::new(Shape::Str))),
            ]);
            s.push(
                HandlerKind::Write,
                tag,
                &format!("op{tag}"),
                args,
                Shape::Unit,
            );
        }
        s
    }

    fn hello(desc: Schema) -> PeerFrame {
        PeerFrame::Hello {
            from: 1,
            name: "big@a".into(),
            addr: "127.0.0.1:1".into(),
            schema: 7,
            version: PROTOCOL_VERSION,
            schema_desc: Some(desc),
        }
    }

    fn body(sent: &DialerHello) -> Vec<u8> {
        let mut buf = Vec::new();
        sent.encode(MAX_HELLO_BYTES, &mut buf).expect("fits");
        buf.split_off(4)
    }

    /// A large schema is offered in a second frame; the earlier binary's
    /// reading of the hello (`postcard::from_bytes`) leaves the offer
    /// alone and sees the legacy schema; this one reads the offer, and the
    /// detail frame restores the detailed schema.
    #[test]
    fn a_hello_too_large_with_its_detail_offers_it_and_earlier_acceptors_ignore_the_offer() {
        let schema = big();
        let whole = encode_frame(&hello(schema.clone()), MAX_HELLO_BYTES, &mut Vec::new());
        assert!(whole.is_err(), "the hello fits with its detail");
        let sent = fitted_hello(hello(schema.clone()), usize::MAX);
        let Some(detail) = &sent.detail else {
            panic!("no detail offered")
        };
        let body = body(&sent);
        let earlier: PeerFrame = postcard::from_bytes(&body).expect("an earlier acceptor reads it");
        assert_eq!(earlier, hello(schema.without_detail()));
        let (read, offered) = read_hello(&body).expect("read");
        assert!(offered && wants_detail(&read, offered));
        let mut frame = Vec::new();
        encode_frame(detail, MAX_DETAIL_BYTES, &mut frame).expect("fits");
        let whole = with_detail(read, &frame[4..]).expect("accepted");
        assert_eq!(whole, hello(schema));
        // A small schema is sent whole, nothing offered.
        let small = Schema::new("small", 1, Shape::Unit);
        let sent = fitted_hello(hello(small.clone()), usize::MAX);
        assert!(sent.detail.is_none());
        assert_eq!(
            read_hello(&self::body(&sent)).expect("read"),
            (hello(small), false)
        );
    }

    /// A detail frame that does not decode, is of another kind, carries no
    /// detailed shapes or another schema is a refusal, never a panic.
    #[test]
    fn a_bad_detail_frame_is_a_refusal() {
        let schema = big();
        let legacy = || hello(schema.without_detail());
        let encoded = |frame: &PeerFrame| {
            let mut buf = Vec::new();
            encode_frame(frame, usize::MAX, &mut buf).expect("encode");
            buf.split_off(4)
        };
        let garbage = with_detail(legacy(), &[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(garbage.contains("does not decode"), "{garbage}");
        let truncated = encoded(&PeerFrame::SchemaDetail(schema.clone()));
        // Cut in its legacy fields, then in its detail (which a schema
        // reads as absent: not detailed).
        let cut = with_detail(legacy(), &truncated[..20]).expect_err("cut");
        assert!(cut.contains("does not decode"), "{cut}");
        let cut = with_detail(legacy(), &truncated[..truncated.len() - 100]).expect_err("cut");
        assert!(cut.contains("no detailed shapes"), "{cut}");
        let other = with_detail(legacy(), &encoded(&PeerFrame::HelloOk)).expect_err("kind");
        assert!(other.contains("got HelloOk"), "{other}");
        let bare = encoded(&PeerFrame::SchemaDetail(schema.without_detail()));
        let bare = with_detail(legacy(), &bare).expect_err("bare");
        assert!(bare.contains("no detailed shapes"), "{bare}");
        let mut another = schema.clone();
        another.handlers.truncate(1);
        let another = encoded(&PeerFrame::SchemaDetail(another));
        let another = with_detail(legacy(), &another).expect_err("another");
        assert!(
            another.contains("is not the schema of the hello"),
            "{another}"
        );
        // A tail that is not an offer offers nothing.
        let mut body = encoded(&legacy());
        body.push(7);
        assert_eq!(read_hello(&body).expect("read"), (legacy(), false));
    }
}
