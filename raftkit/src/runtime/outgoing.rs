//! An answer on its way into a client's response frame ([`Outgoing`]): a
//! [`ClientResponse`], or a write's output as the apply thread encoded it,
//! shared with the session table and the watch journal (`bytes::Bytes`),
//! written into the frame without first being copied into the `Vec<u8>` of
//! a `ClientResponse::Ok` (one allocation and one copy per write, issue 16).
//!
//! Invariant: [`Outgoing::Ok`] of some bytes encodes exactly as
//! `ClientResponse::Ok` of the same bytes (the variant's index, then the
//! bytes as `byte_field` writes them), so a client decodes it as it always
//! did; pinned by `outgoing::tests`. Only the service's side encodes an
//! `Outgoing`; nothing decodes one (clients decode a [`ClientResponse`]).

use serde::{Serialize, Serializer};

use crate::client::wire::ClientResponse;

/// The index of `ClientResponse::Ok` among the variants (the derived
/// encoding numbers them in declaration order; a test pins it).
const OK_VARIANT: u32 = 0;

/// An answer for a client's response frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Any answer.
    Response(ClientResponse),
    /// Success with this encoded output: sent as `ClientResponse::Ok`.
    Ok(bytes::Bytes),
}

impl Outgoing {
    /// Whether it is a success (`Ok` or a status report).
    pub(crate) fn is_ok(&self) -> bool {
        matches!(
            self,
            Outgoing::Ok(_) | Outgoing::Response(ClientResponse::Ok(_) | ClientResponse::Status(_))
        )
    }
}

impl From<ClientResponse> for Outgoing {
    fn from(response: ClientResponse) -> Self {
        Outgoing::Response(response)
    }
}

impl Serialize for Outgoing {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outgoing::Response(response) => response.serialize(s),
            Outgoing::Ok(output) => {
                s.serialize_newtype_variant("ClientResponse", OK_VARIANT, "Ok", &Output(output))
            }
        }
    }
}

/// An output written as `ClientResponse::Ok`'s field is (`byte_field`).
struct Output<'a>(&'a [u8]);

impl Serialize for Output<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::byte_field::serialize(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::client::wire::WireError;
    use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, encode_frame_bytes};

    /// The frame `(id, answer)` as the multiplexed stream writes it.
    fn frame<T: Serialize>(id: u64, answer: &T) -> Bytes {
        let mut buf = BytesMut::new();
        encode_frame_bytes(&(id, answer), DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("encodes");
        buf.freeze()
    }

    /// A shared output is sent byte for byte as `ClientResponse::Ok` of
    /// the same bytes (lengths around postcard's one- and two-byte length
    /// prefixes, the one-byte outputs `encode_shared` keeps static, a large
    /// one), and decodes back to it.
    #[test]
    fn a_shared_output_is_sent_as_the_vec_answer_was() {
        for len in [0usize, 1, 2, 127, 128, 300, 16_383, 16_384, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let shared = Outgoing::Ok(Bytes::from(bytes.clone()));
            let old = ClientResponse::Ok(bytes.clone());
            for id in [0u64, 1, 300, u64::MAX] {
                assert_eq!(
                    frame(id, &shared),
                    frame(id, &old),
                    "output of {len} bytes, id {id}"
                );
                let body = postcard::to_allocvec(&(id, &shared)).expect("encodes");
                let decoded: (u64, ClientResponse) = postcard::from_bytes(&body).expect("decodes");
                assert_eq!(decoded, (id, old.clone()));
            }
        }
        let one = Outgoing::Ok(Bytes::from_static(&[5]));
        assert_eq!(frame(9, &one), frame(9, &ClientResponse::Ok(vec![5])));
    }

    /// Any other answer is sent as the response itself.
    #[test]
    fn a_response_is_sent_as_itself() {
        for response in [
            ClientResponse::Ok(vec![1, 2, 3]),
            ClientResponse::Err(WireError::Timeout),
            ClientResponse::Err(WireError::Rejected("no".into())),
        ] {
            let out = Outgoing::from(response.clone());
            assert_eq!(frame(7, &out), frame(7, &response));
        }
        assert!(Outgoing::Ok(Bytes::new()).is_ok());
        assert!(!Outgoing::from(ClientResponse::Err(WireError::Timeout)).is_ok());
    }
}
