//! The client protocol: what a client and a peer say to each other on a
//! client connection (QUIC, ALPN `raftkit-client/1`).
//!
//! A connection starts with a [`ClientHello`] answered by a
//! [`ClientResponse`] (`Ok` or an error such as a schema mismatch); then
//! each request travels on its own bidirectional stream: one
//! [`ClientRequest`] frame out, one [`ClientResponse`] frame back. Frames
//! are length-delimited postcard with a size cap, like peer frames.
//!
//! Peers never forward: a request that only the leader can serve is answered
//! with [`WireError::NotLeader`] and the leader's address, and the client
//! library follows it, so callers never see a redirect unless every retry
//! failed.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A client session's id: 128 random bits drawn by the leader that opened
/// it (from the operating system's CSPRNG), bound to the identity that
/// opened it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u128);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Identifies one write of one client session (exactly-once writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session id (from [`ClientRequest::OpenSession`]).
    pub id: SessionId,
    /// The write's sequence number within the session, from 1.
    pub seq: u64,
    /// The client's acknowledgement: the lowest sequence number whose answer
    /// it has not received yet. The cluster forgets the replies below it
    /// and refuses writes below it.
    pub acked_below: u64,
}

/// The first frame of a client connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The protocol version (1).
    pub version: u32,
    /// The schema fingerprint of the client's state machine, or 0 for an
    /// untyped client that only asks for status and membership.
    pub schema: u64,
    /// The structural schema of a typed client (see [`crate::schema`]):
    /// when present the peer checks compatibility with it instead of
    /// comparing fingerprints.
    pub schema_desc: Option<crate::schema::Schema>,
}

/// A request on a client stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// An encoded `Write` command, part of a session. The session must be
    /// open ([`ClientRequest::OpenSession`]) and owned by this connection's
    /// certificate: a write under a session the cluster does not know is
    /// answered [`WireError::SessionExpired`], under another identity's
    /// session [`WireError::Rejected`]; neither changes anything.
    Write {
        /// The session and sequence number.
        session: SessionRef,
        /// The encoded command.
        #[serde(with = "crate::byte_field")]
        command: Vec<u8>,
    },
    /// An encoded `Read` query, served linearizably by the leader.
    Read {
        /// The encoded query.
        #[serde(with = "crate::byte_field")]
        query: Vec<u8>,
    },
    /// The answering peer's own status.
    Status,
    /// Add a member as a learner, wait until it caught up, then make it a
    /// voter (the thesis §4.2.1 rounds rule).
    AddServer {
        /// The new member's address.
        addr: String,
    },
    /// Add a member as a learner only.
    AddLearner {
        /// The new member's address.
        addr: String,
    },
    /// Remove a member.
    RemoveServer {
        /// The member's address.
        addr: String,
    },
    /// Move leadership to a member.
    TransferLeader {
        /// The member's address.
        addr: String,
    },
    /// Open a session for this connection's identity (thesis §6.3
    /// `RegisterClient`): answered, once applied, with the new
    /// [`SessionId`] (postcard).
    OpenSession,
    /// Close a session of this connection's identity (best effort: expiry
    /// and eviction reap the sessions nobody closes).
    CloseSession {
        /// The session.
        id: SessionId,
    },
    /// Open a watch of the writes this member applies (see
    /// [`crate::client::watch`]): the stream stays open and carries
    /// [`ClientResponse::Events`] frames, in index order, until the client
    /// drops it or an error frame ([`ClientResponse::Err`]) ends it. Any
    /// member serves it, followers too.
    Watch {
        /// The first index wanted; `None`: from the next entry this member
        /// applies.
        from: Option<u64>,
    },
    /// A request about a multi-group node as a whole ([`crate::multi`]),
    /// not one of its groups. A single-group peer refuses it.
    Node(NodeRequest),
}

/// The requests about a multi-group node as a whole (the operator's
/// commands; see [`crate::multi::service`]). New requests go at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// The status of every group the node hosts: answered with the postcard
    /// of `Vec<(group, StatusReport)>`, group 0 (the placement) first when
    /// hosted. Open to every role, like [`ClientRequest::Status`].
    Groups,
    /// One round of the leader balancer on this node
    /// ([`MultiNode::balance_leaders`](crate::multi::MultiNode::balance_leaders)):
    /// answered with the postcard of the transfers started,
    /// `Vec<(group, target node id)>`. Admin only.
    BalanceLeaders,
    /// Moves group `group`'s replica from the node at `from` to the node
    /// at `to` (advertised addresses;
    /// [`MultiNode::move_replica`](crate::multi::MultiNode::move_replica)).
    /// Only the node leading the group runs it; another answers
    /// `NotLeader`. Answered with the postcard of a one-line summary of the
    /// steps. Admin only.
    MoveReplica {
        /// The group.
        group: u64,
        /// The advertised address of the node that leaves the group.
        from: String,
        /// The advertised address of the node that joins it.
        to: String,
    },
}

/// What a client appends to a [`ClientRequest`] in the same frame (postcard
/// values back to back): the request id that ties the client's, the leader's
/// and the apply thread's trace spans of one call together. Peers that
/// predate it ignore the trailing bytes (postcard decoding stops after the
/// request); a request without it is traced without an id.
///
/// Fields are only ever added at the end: a meta of an older client (fewer
/// fields) decodes with the later ones at their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// The call's id, the same for every retry of the call.
    pub request_id: RequestId,
    /// How a read is served (ignored by other requests); linearizable when
    /// absent.
    pub consistency: super::Consistency,
    /// The group the request is for, on a node that hosts many groups
    /// ([`crate::multi`]); `None`: the node's only group. A single-group
    /// peer refuses a request for a group.
    pub group: Option<u64>,
}

/// The second version of [`RequestMeta`] (before groups).
#[derive(Deserialize)]
struct RequestMetaV2 {
    request_id: RequestId,
    consistency: super::Consistency,
}

/// The first version of [`RequestMeta`], as older clients send it.
#[derive(Deserialize)]
struct RequestMetaV1 {
    request_id: RequestId,
}

/// The id of one client call, shown as 16 hex digits in traces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl RequestId {
    /// A fresh id: a per-process counter mixed with the process's start
    /// time (unique enough to follow a call through the logs; not secret).
    pub fn fresh() -> RequestId {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        RequestId(crate::context::CtxRng::for_entry(n, base).next_u64())
    }

    /// Splits a request frame's body into the request and its meta, if the
    /// client sent one.
    ///
    /// A write, nearly every request under load, is read by hand
    /// (`decode_write`); anything else, or anything that does not read
    /// that way, goes through serde, so the verdict is always serde's.
    pub fn decode_request(
        body: &[u8],
    ) -> Result<(ClientRequest, Option<RequestMeta>), postcard::Error> {
        match decode_write(body) {
            Some(fast) => Ok(fast),
            None => decode_request_serde(body),
        }
    }
}

/// [`RequestId::decode_request`] through serde: every request, every
/// version of [`RequestMeta`].
fn decode_request_serde(
    body: &[u8],
) -> Result<(ClientRequest, Option<RequestMeta>), postcard::Error> {
    let (request, rest) = postcard::take_from_bytes::<ClientRequest>(body)?;
    let meta = postcard::from_bytes::<RequestMeta>(rest)
        .ok()
        .or_else(|| {
            postcard::from_bytes::<RequestMetaV2>(rest)
                .ok()
                .map(|v2| RequestMeta {
                    request_id: v2.request_id,
                    consistency: v2.consistency,
                    group: None,
                })
        })
        .or_else(|| {
            postcard::from_bytes::<RequestMetaV1>(rest)
                .ok()
                .map(|v1| RequestMeta {
                    request_id: v1.request_id,
                    consistency: super::Consistency::default(),
                    group: None,
                })
        });
    Ok((request, meta))
}

/// The hand-read fast path of [`RequestId::decode_request`]: a
/// [`ClientRequest::Write`] followed by a current [`RequestMeta`], read as
/// postcard reads them (see `crate::postcard_cursor`) without a serde
/// visitor call per field (the 128-bit session id alone costs a few
/// hundred instructions through serde). `None` for anything else (another
/// request, an older meta, no meta, bytes that do not decode): the caller
/// then decodes through serde, whose verdict stands. When this returns a
/// value it is the one serde returns (tested against it).
fn decode_write(body: &[u8]) -> Option<(ClientRequest, Option<RequestMeta>)> {
    use crate::postcard_cursor::Cursor;
    let mut c = Cursor::new(body);
    // `ClientRequest::Write` is variant 0.
    if c.u32().ok()? != 0 {
        return None;
    }
    let session = SessionRef {
        id: SessionId(c.u128().ok()?),
        seq: c.u64().ok()?,
        acked_below: c.u64().ok()?,
    };
    let command = c.bytes().ok()?.to_vec();
    let request_id = RequestId(c.u64().ok()?);
    let consistency = match c.u32().ok()? {
        0 => super::Consistency::Linearizable,
        1 => super::Consistency::Lease,
        2 => super::Consistency::Stale,
        _ => return None,
    };
    let group = if c.option().ok()? {
        Some(c.u64().ok()?)
    } else {
        None
    };
    Some((
        ClientRequest::Write { session, command },
        Some(RequestMeta {
            request_id,
            consistency,
            group,
        }),
    ))
}

/// A status report on the wire. `#[non_exhaustive]`: build one from
/// `StatusReport::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// The peer's name.
    pub name: String,
    /// Its node id.
    pub id: u64,
    /// "Leader", "Follower", "Candidate" or "PreCandidate".
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader's address, if known.
    pub leader: Option<String>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Members: (address, voter, matched index on the leader).
    pub members: Vec<(String, bool, Option<u64>)>,
    /// Set when the node halted applying.
    pub halted: Option<String>,
    /// Milliseconds since this peer last heard from the leader (0 on the
    /// leader).
    pub last_contact_ms: Option<u64>,
    /// Set when the peer's storage failed: it stopped serving.
    pub fatal: Option<String>,
    /// Why the peer's last snapshot failed, until one succeeds.
    pub snapshot_error: Option<String>,
}

/// The answer to a [`ClientHello`] or a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Success, with the encoded output (empty when there is none).
    Ok(#[serde(with = "crate::byte_field")] Vec<u8>),
    /// A status report (boxed: a rare answer, and the largest; inline it
    /// made every answer, moved many times per request, 224 bytes. Encoded
    /// as the report itself: the box changes nothing on the wire).
    Status(Box<StatusReport>),
    /// Failure.
    Err(WireError),
    /// A batch of a watch stream ([`ClientRequest::Watch`]): the applied
    /// writes in index order (non-data entries, refused writes and retried
    /// duplicates are not events), and the index the stream continues from
    /// (a resume point even when `events` is empty). The first frame of a
    /// watch is such a batch, possibly empty: the watch was accepted.
    Events {
        /// The events, in index order.
        events: Vec<WatchEvent>,
        /// The stream continues with the entries from this index.
        next: u64,
    },
    /// The answer to a [`Consistency::Stale`](super::Consistency::Stale)
    /// read: the encoded output and how stale it may be.
    Stale {
        /// The encoded output.
        #[serde(with = "crate::byte_field")]
        output: Vec<u8>,
        /// How far behind the leader the answering member may have been.
        staleness: super::Staleness,
    },
}

/// One applied write on a watch stream: what a typed client decodes into
/// its state machine's `Write` command and `WriteOutput`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The log index of the entry.
    pub index: u64,
    /// The encoded command (the state machine's `Write`).
    pub command: bytes::Bytes,
    /// What applying it gave.
    pub output: WatchOutput,
}

/// What applying a watched write gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchOutput {
    /// The encoded `WriteOutput`.
    Ok(bytes::Bytes),
    /// The handler panicked, or its output's `Serialize` returned an error,
    /// under the `skip` policy (every replica skipped the entry alike;
    /// [`Error::Handler`] for the writer).
    Handler(String),
}

impl WatchEvent {
    /// What the event costs a watch journal: its bytes plus a fixed
    /// overhead per event.
    pub fn cost(&self) -> usize {
        let output = match &self.output {
            WatchOutput::Ok(b) => b.len(),
            WatchOutput::Handler(m) => m.len(),
        };
        64 + self.command.len() + output
    }
}

/// An error as it travels to a client: one variant per [`Error`] a peer
/// answers with, so that the client knows whether the command may have been
/// applied (see [`Error::applied`]). New variants go at the end (postcard
/// encodes a variant as its index); `#[non_exhaustive]`, like [`Error`], so
/// that appending one breaks no match outside raftkit (the attribute does
/// not change the encoding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireError {
    /// This peer is not the leader; try `hint`.
    NotLeader {
        /// The leader's address, if known.
        hint: Option<String>,
    },
    /// Refused before entering the log.
    Rejected(String),
    /// The handler panicked, or its output's `Serialize` returned an
    /// error, under the `skip` policy.
    Handler(String),
    /// The peer cannot take the call (nothing was applied).
    Unavailable(String),
    /// The peer's storage failed.
    Storage(String),
    /// The peer timed out waiting.
    Timeout,
    /// The peer halted (see [`Error::Halted`]).
    Halted(String),
    /// Too many commands in flight (see [`Error::Overloaded`]).
    Overloaded,
    /// The outcome is unknown (see [`Error::Ambiguous`]).
    Ambiguous(String),
    /// The session of a write is not (any longer) in the cluster's session
    /// table: the write was not applied now, but an earlier attempt of it
    /// may have been before the session expired.
    SessionExpired(String),
    /// The connection's certificate does not allow this request (see
    /// [`Error::Unauthorized`]); nothing was applied.
    Unauthorized(String),
    /// The handler is not enabled on the cluster (see
    /// [`Error::Unsupported`]); nothing was applied.
    Unsupported(String),
    /// The schemas are not compatible (see [`Error::SchemaMismatch`]).
    SchemaMismatch {
        /// The handler.
        handler: String,
        /// What differs.
        reason: String,
    },
    /// A watch asked for entries this member no longer holds (see
    /// [`Error::Compacted`]).
    Compacted {
        /// The index asked for.
        requested: u64,
        /// The first index the member can serve.
        first_available: u64,
    },
    /// A watcher fell too far behind (see [`Error::WatchLagged`]).
    WatchLagged {
        /// The first event the watcher missed.
        next: u64,
    },
    /// The node does not host the request's group (see
    /// [`Error::NotHosted`]); nothing was applied.
    NotHosted {
        /// The group asked for.
        group: u64,
    },
    /// The request was carried out (a write applied), but its answer is
    /// larger than a frame carries (see [`Error::AnswerTooLarge`]). A
    /// client that predates this variant cannot decode it and fails the
    /// call as a lost connection would (its outcome unknown).
    AnswerTooLarge(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotLeader { hint } => WireError::NotLeader { hint },
            Error::Rejected(s) => WireError::Rejected(s),
            Error::Handler { message } => WireError::Handler(message),
            Error::Unavailable(s) => WireError::Unavailable(s),
            Error::Storage(s) => WireError::Storage(s),
            Error::Timeout => WireError::Timeout,
            Error::Halted { message } => WireError::Halted(message),
            Error::Overloaded => WireError::Overloaded,
            Error::Ambiguous(s) => WireError::Ambiguous(s),
            Error::SessionExpired(s) => WireError::SessionExpired(s),
            Error::Unauthorized(s) => WireError::Unauthorized(s),
            Error::Unsupported(s) => WireError::Unsupported(s),
            Error::SchemaMismatch { handler, reason } => {
                WireError::SchemaMismatch { handler, reason }
            }
            Error::Compacted {
                requested,
                first_available,
            } => WireError::Compacted {
                requested,
                first_available,
            },
            Error::WatchLagged { next } => WireError::WatchLagged { next },
            Error::NotHosted { group } => WireError::NotHosted { group },
            Error::AnswerTooLarge(s) => WireError::AnswerTooLarge(s),
            // Codec, transport and protocol errors of the peer itself: the
            // client cannot tell what happened, so neither does the wire.
            other => WireError::Ambiguous(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader { hint } => Error::NotLeader { hint },
            WireError::Rejected(s) => Error::Rejected(s),
            WireError::Handler(message) => Error::Handler { message },
            WireError::Unavailable(s) => Error::Unavailable(s),
            WireError::Storage(s) => Error::Storage(s),
            WireError::Timeout => Error::Timeout,
            WireError::Halted(message) => Error::Halted { message },
            WireError::Overloaded => Error::Overloaded,
            WireError::Ambiguous(s) => Error::Ambiguous(s),
            WireError::SessionExpired(s) => Error::SessionExpired(s),
            WireError::Unauthorized(s) => Error::Unauthorized(s),
            WireError::Unsupported(s) => Error::Unsupported(s),
            WireError::SchemaMismatch { handler, reason } => {
                Error::SchemaMismatch { handler, reason }
            }
            WireError::Compacted {
                requested,
                first_available,
            } => Error::Compacted {
                requested,
                first_available,
            },
            WireError::WatchLagged { next } => Error::WatchLagged { next },
            WireError::NotHosted { group } => Error::NotHosted { group },
            WireError::AnswerTooLarge(s) => Error::AnswerTooLarge(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Applied;

    /// Every answer is moved many times per request (the futures that
    /// wait for it, the stream's answer queue, the client's call slot), so
    /// a rare large variant inline made every move copy 224 bytes: the
    /// status report is boxed. The encoding is the value's, not the box's:
    /// the same bytes as before (the golden below is the unboxed one's).
    #[test]
    fn an_answer_is_small_and_a_status_encodes_as_before() {
        let report = StatusReport {
            name: "kv@a".into(),
            id: 7,
            role: "Leader".into(),
            term: 3,
            leader: Some("a:1".into()),
            commit: 10,
            applied: 9,
            last_index: 11,
            members: vec![("a:1".into(), true, Some(11))],
            halted: None,
            last_contact_ms: Some(0),
            fatal: None,
            snapshot_error: Some("full".into()),
        };
        let encoded =
            postcard::to_allocvec(&ClientResponse::Status(report.clone().into())).expect("encodes");
        assert_eq!(encoded, GOLDEN_STATUS);
        assert_eq!(
            postcard::from_bytes::<ClientResponse>(&encoded).expect("decodes"),
            ClientResponse::Status(report.into())
        );
        assert!(
            std::mem::size_of::<ClientResponse>() <= 64,
            "ClientResponse is {} bytes",
            std::mem::size_of::<ClientResponse>()
        );
    }

    /// The status above as the unboxed variant encoded it (stop 49).
    const GOLDEN_STATUS: &[u8] = &[
        1, 4, 107, 118, 64, 97, 7, 6, 76, 101, 97, 100, 101, 114, 3, 1, 3, 97, 58, 49, 10, 9, 11,
        1, 3, 97, 58, 49, 1, 1, 11, 0, 1, 0, 0, 1, 4, 102, 117, 108, 108,
    ];

    #[test]
    fn a_request_with_meta_still_decodes_as_a_bare_request() {
        let request = ClientRequest::Read { query: vec![1, 2] };
        let meta = RequestMeta {
            request_id: RequestId(0xabc),
            consistency: crate::client::Consistency::Lease,
            group: Some(4),
        };
        let with = postcard::to_allocvec(&(request.clone(), meta)).unwrap();
        // An older peer reads only the request.
        assert_eq!(
            postcard::from_bytes::<ClientRequest>(&with).unwrap(),
            request
        );
        assert_eq!(
            RequestId::decode_request(&with).unwrap(),
            (request.clone(), Some(meta))
        );
        // An older client sends no meta.
        let bare = postcard::to_allocvec(&request).unwrap();
        assert_eq!(
            RequestId::decode_request(&bare).unwrap(),
            (request.clone(), None)
        );
        // An older client's meta has no consistency: linearizable.
        #[derive(Serialize)]
        struct V1 {
            request_id: RequestId,
        }
        let old = postcard::to_allocvec(&(
            request.clone(),
            V1 {
                request_id: RequestId(7),
            },
        ))
        .unwrap();
        assert_eq!(
            RequestId::decode_request(&old).unwrap(),
            (
                request.clone(),
                Some(RequestMeta {
                    request_id: RequestId(7),
                    consistency: crate::client::Consistency::Linearizable,
                    group: None,
                })
            )
        );
        // A client from before groups: no group.
        #[derive(Serialize)]
        struct V2 {
            request_id: RequestId,
            consistency: crate::client::Consistency,
        }
        let v2 = postcard::to_allocvec(&(
            request.clone(),
            V2 {
                request_id: RequestId(8),
                consistency: crate::client::Consistency::Lease,
            },
        ))
        .unwrap();
        assert_eq!(
            RequestId::decode_request(&v2).unwrap().1,
            Some(RequestMeta {
                request_id: RequestId(8),
                consistency: crate::client::Consistency::Lease,
                group: None,
            })
        );
        assert_ne!(RequestId::fresh(), RequestId::fresh());
        assert_eq!(RequestId(0xabc).to_string(), "0000000000000abc");
    }

    #[test]
    fn errors_keep_their_meaning_across_the_wire() {
        let errors = [
            Error::NotLeader {
                hint: Some("a:1".into()),
            },
            Error::Rejected("r".into()),
            Error::Handler {
                message: "h".into(),
            },
            Error::Unavailable("u".into()),
            Error::Storage("s".into()),
            Error::Timeout,
            Error::Halted {
                message: "h".into(),
            },
            Error::Overloaded,
            Error::Ambiguous("a".into()),
            Error::SessionExpired("e".into()),
            Error::Unauthorized("n".into()),
            Error::Unsupported("u".into()),
            Error::SchemaMismatch {
                handler: "h".into(),
                reason: "r".into(),
            },
            Error::Compacted {
                requested: 3,
                first_available: 9,
            },
            Error::WatchLagged { next: 4 },
            Error::NotHosted { group: 9 },
            Error::Transport("t".into()),
            Error::Protocol("p".into()),
        ];
        for e in errors {
            let wire = WireError::from(e.clone());
            let bytes = postcard::to_allocvec(&wire).unwrap();
            let back = Error::from(postcard::from_bytes::<WireError>(&bytes).unwrap());
            assert_eq!(back.applied(), e.applied(), "{e:?} became {back:?}");
            if !matches!(e, Error::Transport(_) | Error::Protocol(_)) {
                assert_eq!(back, e);
            } else {
                assert_eq!(back.applied(), Applied::Maybe);
            }
        }
    }

    /// A variant travels as its index (postcard), whatever attributes the
    /// enum carries: the first and the last variant, as an earlier client
    /// or peer reads them.
    #[test]
    fn a_wire_error_is_encoded_as_its_variant_index() {
        let first = postcard::to_allocvec(&WireError::NotLeader { hint: None }).unwrap();
        assert_eq!(first, [0, 0]);
        let last = postcard::to_allocvec(&WireError::AnswerTooLarge("x".into())).unwrap();
        assert_eq!(last, [16, 1, b'x']);
    }

    mod fast_write {
        use proptest::prelude::*;

        use super::super::*;

        fn write() -> impl Strategy<Value = ClientRequest> {
            (
                any::<u128>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..200),
            )
                .prop_map(|(id, seq, acked_below, command)| ClientRequest::Write {
                    session: SessionRef {
                        id: SessionId(id),
                        seq,
                        acked_below,
                    },
                    command,
                })
        }

        fn meta() -> impl Strategy<Value = RequestMeta> {
            (any::<u64>(), 0..3u8, any::<Option<u64>>()).prop_map(|(id, c, group)| RequestMeta {
                request_id: RequestId(id),
                consistency: match c {
                    0 => crate::client::Consistency::Linearizable,
                    1 => crate::client::Consistency::Lease,
                    _ => crate::client::Consistency::Stale,
                },
                group,
            })
        }

        proptest! {
            /// A write with its meta takes the fast path, and it reads what
            /// serde reads.
            #[test]
            fn writes_read_by_hand_as_serde_reads_them(request in write(), meta in meta()) {
                let body = postcard::to_allocvec(&(&request, meta)).expect("encodes");
                let fast = decode_write(&body);
                prop_assert_eq!(fast.clone(), Some((request, Some(meta))));
                prop_assert_eq!(fast, decode_request_serde(&body).ok());
            }

            /// Whatever the bytes (a damaged write, a cut one, garbage),
            /// the fast path either declines or agrees with serde.
            #[test]
            fn damaged_writes_never_read_otherwise_than_serde(
                request in write(),
                meta in meta(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<prop::sample::Index>(),
                garbage in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut body = postcard::to_allocvec(&(&request, meta)).expect("encodes");
                let i = at.index(body.len());
                body[i] = byte;
                let cut = cut.index(body.len());
                for b in [&body[..], &body[..cut], &garbage[..]] {
                    if let Some(fast) = decode_write(b) {
                        prop_assert_eq!(Some(fast), decode_request_serde(b).ok());
                    }
                    prop_assert_eq!(RequestId::decode_request(b).ok(), decode_request_serde(b).ok());
                }
            }
        }

        /// Other requests, and writes with an older meta or none, decline
        /// the fast path (serde reads them, as before).
        #[test]
        fn other_requests_decline_the_fast_path() {
            let write = ClientRequest::Write {
                session: SessionRef {
                    id: SessionId(u128::MAX),
                    seq: 1,
                    acked_below: 1,
                },
                command: vec![1, 2, 3],
            };
            let read = ClientRequest::Read { query: vec![4] };
            let meta = RequestMeta {
                request_id: RequestId(9),
                consistency: crate::client::Consistency::Lease,
                group: Some(3),
            };
            assert!(decode_write(&postcard::to_allocvec(&(&read, meta)).unwrap()).is_none());
            assert!(decode_write(&postcard::to_allocvec(&write).unwrap()).is_none());
            assert!(
                decode_write(&postcard::to_allocvec(&(&write, RequestId(9))).unwrap()).is_none()
            );
            assert!(decode_write(&postcard::to_allocvec(&(&write, meta)).unwrap()).is_some());
        }
    }
}
