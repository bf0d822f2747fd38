//! Exactly-once writes: client sessions in the replicated state (Raft
//! thesis §6.3).
//!
//! Every client write in the log is an [`Envelope`]: the leader's clamped
//! clock stamp and an [`Op`]. The apply task keeps a [`Sessions`] table,
//! part of every snapshot, that turns the log into exactly-once writes:
//!
//! 1. **Sessions are opened through the log** (the thesis' `RegisterClient`).
//!    A client's first write waits for [`Op::OpenSession`]: the leader draws
//!    a 128-bit id from the operating system's CSPRNG ([`new_session_id`]),
//!    binds it to the [`Owner`] that asked (the certificate fingerprint of
//!    the connection's [`Principal`], i.e. the SHA-256 of the leaf
//!    certificate it presented, or [`Owner::Local`] in-process) and answers only once the
//!    entry is applied. A client sends writes only after that answer, so
//!    every write of a session follows its open entry in the log *whatever
//!    order the writes take among themselves*: a client with writes `1..k`
//!    in flight at once may see them reach the log in any order, which is
//!    why "sequence number 1 opens the session" would be wrong (a `2` landing
//!    first would be refused, or a `1` retried after an expiry would reopen
//!    the session and be applied twice). The open entry is committed before
//!    its answer, so it precedes the session's writes in every later
//!    leader's log too.
//! 2. **Ids are never reused.** A retried open proposes a *new* id (the
//!    orphan is reaped by expiry or eviction), and nothing else creates a
//!    session, so a write delayed past its session's close, expiry or
//!    eviction can never find the session again.
//! 3. **A write for a session the table does not know is refused** with
//!    [`Error::SessionExpired`](crate::Error::SessionExpired) and changes
//!    nothing (§6.3: the client must open a new session; whether the
//!    write's earlier attempts were applied before the session was forgotten
//!    is unknown).
//! 4. **A session belongs to its owner.** A write or close under a session
//!    owned by another identity is refused and changes nothing: no reply is
//!    stored, no acknowledgement processed, the session's idle time is not
//!    refreshed.
//! 5. **Duplicates are answered, not applied.** A write whose sequence
//!    number already has a stored reply is answered with it.
//! 6. **Acknowledgements shrink the window.** Each write carries
//!    [`SessionRef::acked_below`], the lowest sequence number the client has
//!    not yet seen answered: the replies below it are dropped, and a write
//!    below it (a stale duplicate: its caller already has its answer) is
//!    refused without being applied. A session stores at most
//!    [`SESSION_WINDOW`] replies; a new write that would need one more is
//!    refused, not applied, so no reply is ever forgotten before it was
//!    acknowledged.
//! 7. **Time is replicated.** Sessions unused for their time-to-live of
//!    *replicated* time are dropped on every replica at the same entry.
//!    Replicated time is the largest stamp applied, and stamps cannot jump:
//!    the leader clamps its wall clock to the time elapsed on its monotonic
//!    clock since its term's anchor, within [`STAMP_SLACK_MS`], the anchor
//!    being the replicated time it applied through the last entry of the
//!    earlier terms (it stamps nothing before: see `stamps.rs`), and the
//!    apply step advances replicated time by at most
//!    [`MAX_STAMP_STEP_MS`] per entry, so one node with a bad clock (an NTP
//!    step, a VM resumed) cannot expire sessions early. No replica's own
//!    clock is ever consulted at apply. Consequences, all on the safe side:
//!    replicated time does not run while the cluster is down (sessions do
//!    not age then, and it trails the wall clock afterwards), and it
//!    advances only with entries, so a session lives *at least* its
//!    time-to-live.
//! 8. **The table is bounded, and shared fairly between identities.** An
//!    open entry carries the leader's `max_sessions` setting; opening a
//!    session in a full table first evicts sessions until there is room, by
//!    the rule the entry's variant names ([`Eviction`]):
//!    - [`Op::OpenSessionFair`] (fair share): the session idle the longest
//!      of the owner holding the most sessions, the opener's new one
//!      counted (ties between owners: the session idle the longest among
//!      theirs; then the smallest id). With `k` owners holding sessions,
//!      the opener included, the owners' counts sum to more than
//!      `max_sessions`, so the one evicted from holds more than
//!      `max_sessions / k`, its fair share: **an owner holding at most its
//!      fair share never loses a session to another owner's opens**, and
//!      one client certificate opening sessions without end only evicts
//!      its own once it holds the most (exactly-once for the others'
//!      retries, thesis §6.3).
//!    - [`Op::OpenSession`] (least recently used, the rule before): the
//!      session idle the longest in the whole table, whoever owns it (ties:
//!      smallest id). Kept for ever for the entries of this variant: a log
//!      or snapshot written before fair shares replays to the same table.
//!
//!    The leader proposes [`Op::OpenSessionFair`] only once every voter
//!    runs a binary that applies it (`open_entry`: the runtime log
//!    version of the voters' schemas, gated like a new handler, see
//!    [`crate::schema`]), [`Op::OpenSession`] until then: an older replica
//!    would halt at an entry it cannot decode, and the rule cannot change
//!    under an existing variant, since replicas of both binaries applying
//!    the same log would then compute different tables. The per-owner
//!    counts are derived from the table (recounted on restore), so the
//!    snapshot format is unchanged. Every decision above depends only on
//!    the log, so all replicas keep identical tables.
//!
//! 9. **Stored replies are bounded in bytes, per session and per owner;
//!    sessions per owner in number** (runtime log version 2,
//!    [`crate::schema::RUNTIME_LOG_BOUNDED_SESSIONS`]). Without it one
//!    client certificate could hold every session of the table, each with
//!    [`SESSION_WINDOW`] replies of any size, on every replica, in every
//!    snapshot, and again after a restart. The bounds travel in the
//!    entries, so a replica applies the leader's numbers, never its own:
//!    - [`Op::OpenSessionBounded`] carries `max_owner_sessions`: an owner
//!      already holding that many sessions first loses its own idle the
//!      longest (ties: smallest id), then the table's bound applies as for
//!      [`Op::OpenSessionFair`]. An owner opening sessions without end
//!      thus only ever holds `max_owner_sessions`, whatever `max_sessions`.
//!    - [`Op::SessionWriteBounded`] carries [`ReplyBounds`]. A reply counts
//!      [`REPLY_OVERHEAD_BYTES`] plus its output's length (a handler's
//!      error message counts [`STORED_MESSAGE_BYTES`] whatever its length,
//!      and is stored cut to that length: panic messages need not be equal
//!      on every replica, the count must be). A new write is applied only
//!      while its session and its owner each have room for one more
//!      handler error's reply ([`MIN_REPLY_BYTES`], so a handler's error
//!      is always kept and a retry answers it); otherwise it is refused,
//!      **not applied** (the handler does not run): `Overloaded` while
//!      writes below it are unacknowledged or the owner's other sessions
//!      hold bytes (acknowledgements make room: retried), else `Rejected`
//!      (the bytes are held by this session's later writes, acknowledged
//!      only once this one is answered: final), as for a full window.
//!    - An output is known only once the handler ran. If its reply does
//!      not fit in the room left, the write **is applied**, its caller
//!      waiting at the leader gets its output, and the session keeps a
//!      [`StoredReply::Dropped`] marker (counted as a reply of no output)
//!      instead: a retry of it is answered
//!      [`Error::AnswerTooLarge`](crate::Error::AnswerTooLarge) (applied =
//!      Yes, not retried) saying its output was not kept. So the bytes a
//!      session or an owner holds never pass its bound, and no retry is
//!      ever applied twice.
//!
//!    - An owner without room for a write first **reclaims**: the stored
//!      outputs of its other sessions, idle the longest first (ties:
//!      smallest id), each one's replies in write order, become
//!      [`StoredReply::Dropped`] markers until there is room (a retry of
//!      one is answered `AnswerTooLarge`, applied, as above; nothing is
//!      reclaimed when all of them would not make room). Idle or
//!      crashed clients thus never keep their owner's later writes out
//!      until their sessions expire; the write is refused only when the
//!      owner's markers and handler messages alone fill its bound.
//!      **Limit** (review s58 #3, not fixed): each reclaimed output keeps
//!      a marker of [`REPLY_OVERHEAD_BYTES`], so reclaiming small outputs
//!      frees little (an 8-byte output frees 8 of its 72 counted bytes):
//!      an owner whose idle sessions hold many small unacknowledged
//!      replies (say 4,096 each in a few hundred crashed processes) fills
//!      its bound with markers, and its later writes are refused
//!      `Overloaded` until those sessions expire (their TTL). The harm
//!      stays within that owner (one certificate). One marker per run of
//!      dropped writes, or evicting the owner's idle-longest session once
//!      only markers are left, would close it.
//!    - [`Owner::Local`] (in-process code of every peer, one owner
//!      cluster-wide, trusted) has no per-owner cap and no owner byte
//!      bound: only `max_sessions` and the per-session bound apply.
//!
//!    The byte counts are derived from the table (recounted on restore,
//!    as the owner counts): no new snapshot field. [`Op::SessionWrite`]
//!    and the older open entries keep their rules for ever (no byte bound,
//!    no owner cap), so a log or snapshot written before version 2
//!    replays to the same table; the leader proposes the new entries only
//!    once every voter applies version 2 (as for rule 8), and the
//!    [`StoredReply::Dropped`] marker, which an older binary cannot decode
//!    in a snapshot, is only written by [`Op::SessionWriteBounded`].
//!    The memory the table can hold is thus about `owners ×
//!    max_reply_bytes_per_owner` (`PeerBuilder`), and at most
//!    `max_sessions × SESSION_WINDOW` small replies in all.
//!
//! # Formats
//!
//! Log entries and snapshots are postcard. A command entry's payload is an
//! [`Envelope`] `{ stamp_ms: varint, op: Op }`, where `Op` is an enum
//! (varint tag in declaration order): `Write { command }`,
//! `SessionWrite { session: SessionRef { id: u128, seq, acked_below },
//! owner, command }`, `OpenSession { id, owner, ttl_ms, max_sessions }`,
//! `CloseSession { id, owner }`, `OpenSessionFair { id, owner, ttl_ms,
//! max_sessions }` (tag 4, runtime log version 1), `SessionWriteBounded {
//! session, owner, bounds: ReplyBounds { session_bytes, owner_bytes },
//! command }` (tag 5, version 2), `OpenSessionBounded { id, owner, ttl_ms,
//! max_sessions, max_owner_sessions }` (tag 6, version 2); [`Owner`] is
//! `Local` (tag 0) or `Certificate([u8; 32])` (tag 1). A snapshot is an
//! [`AppSnapshot`] `{ sessions, state, index }` where `sessions` is
//! `{ table: map of id to { owner, ttl_ms, last_used_ms, acked_below,
//! replies: map of seq to StoredReply }, now_ms, swept_ms }`; a
//! [`StoredReply`] is `Ok(bytes)`, `Handler(string)`, `Rejected(string)` or
//! `Dropped { len }` (tag 3, written only by version 2 entries). New
//! variants are only ever appended;
//! this layout is the first released one (snapshots written before it do
//! not load).
//!
//! This file is past 1,000 lines on purpose: the rules above are
//! enforced by one type, [`Sessions`], whose methods keep derived counts
//! (replies, bytes and sessions per owner) that only hold if every
//! mutation updates them together; keeping the table, its counts, its
//! bounds and its wire layout in one place keeps those invariants
//! reviewable at once. Its tests live next to it (`session_tests.rs`,
//! `session_owner_tests.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::seq_map::SeqMap;
use crate::core::{Index, NodeId};
use crate::tls::Principal;

pub use crate::client::wire::{SessionId, SessionRef};

/// The default time-to-live of an idle session (replicated time).
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;

/// The default bound on the number of sessions in the table.
pub const DEFAULT_MAX_SESSIONS: u64 = 10_000;

/// How far a leader's stamp may stray from its anchor plus the time its
/// monotonic clock measured (either way).
pub const STAMP_SLACK_MS: u64 = 1_000;

/// The most replicated time one entry can advance (a second line of
/// defence behind the leader's clamp: even a stamp far in the future moves
/// time by at most this much per entry).
pub const MAX_STAMP_STEP_MS: u64 = 60 * 1000;

/// Replies remembered per session: at most this many writes of one session
/// may be unacknowledged (the client library acknowledges every answer, so
/// it stays far below this unless a caller holds many retry handles).
pub const SESSION_WINDOW: usize = 4096;

/// The default bound of sessions one owner (client certificate) holds
/// (rule 9 of the module docs): a tenth of [`DEFAULT_MAX_SESSIONS`].
pub const DEFAULT_MAX_SESSIONS_PER_OWNER: u64 = 1_000;

/// The default bound of the bytes of stored replies per session (rule 9).
pub const DEFAULT_MAX_REPLY_BYTES_PER_SESSION: u64 = 4 << 20;

/// The default bound of the bytes of stored replies per owner, all its
/// sessions together (rule 9).
pub const DEFAULT_MAX_REPLY_BYTES_PER_OWNER: u64 = 64 << 20;

/// What one stored reply counts beyond its output's bytes (its queue
/// slot and allocation; rule 9): the size of a marker or of an empty
/// output.
pub const REPLY_OVERHEAD_BYTES: u64 = 64;

/// What a stored handler error message counts (beyond
/// [`REPLY_OVERHEAD_BYTES`]) whatever its length, and the length it is
/// cut to when stored under [`Op::SessionWriteBounded`] (rule 9).
pub const STORED_MESSAGE_BYTES: usize = 256;

/// The smallest byte bound of stored replies a `PeerBuilder` accepts
/// (smaller settings are raised to it): room for one reply holding a
/// handler's error message.
pub const MIN_REPLY_BYTES: u64 = REPLY_OVERHEAD_BYTES + STORED_MESSAGE_BYTES as u64;

/// The bounds of stored reply bytes a [`Op::SessionWriteBounded`] entry
/// carries (the leader's settings when it proposed; rule 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBounds {
    /// The most bytes the write's session may hold.
    pub session_bytes: u64,
    /// The most bytes all sessions of the write's owner may hold.
    pub owner_bytes: u64,
}

/// Why [`Sessions::admits`] refuses a write: which bound has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesFull {
    /// The session's replies hold its bound.
    Session,
    /// The owner's sessions' replies together hold its bound; `elsewhere`:
    /// some of them are other sessions' (acknowledged independently).
    Owner {
        /// Whether sessions other than the write's hold some of the bytes.
        elsewhere: bool,
    },
}

/// Where a peer draws session ids from: [`new_session_id`] in production;
/// the whole-runtime simulation injects a seeded source.
pub type SessionIdSource =
    std::sync::Arc<dyn Fn() -> Result<SessionId, crate::Error> + Send + Sync>;

/// Draws a fresh session id from the operating system's CSPRNG.
pub fn new_session_id() -> Result<SessionId, crate::Error> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| crate::Error::Unavailable(format!("no randomness for a session id: {e}")))?;
    Ok(SessionId(u128::from_le_bytes(bytes)))
}

/// Who a session belongs to: the identity that opened it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Owner {
    /// Code in a peer's own process ([`Peer::open_session`](super::Peer::open_session)).
    Local,
    /// A remote client: the SHA-256 of the leaf certificate it presented.
    Certificate([u8; 32]),
}

impl Owner {
    /// The owner of the sessions a remote client opens: the fingerprint of
    /// the certificate it connected with, as its [`Principal`] states it
    /// (computed once, when the connection was accepted).
    pub fn of(principal: &Principal) -> Owner {
        Owner::Certificate(principal.cert_fingerprint)
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Local => f.write_str("local"),
            Owner::Certificate(h) => {
                f.write_str("cert:")?;
                for b in h.iter().take(8) {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// A client write or session operation as it is stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The leader's clamped clock (ms since the epoch) when it proposed.
    pub stamp_ms: u64,
    /// What the entry does.
    pub op: Op,
}

/// What a logged envelope does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A write outside any session (in-process [`Peer::write`](super::Peer::write)).
    Write {
        /// The encoded `Write` command.
        #[serde(with = "crate::byte_field")]
        command: Vec<u8>,
    },
    /// A write of a session.
    SessionWrite {
        /// The session, sequence number and acknowledgement.
        session: SessionRef,
        /// Who sent it.
        owner: Owner,
        /// The encoded `Write` command.
        #[serde(with = "crate::byte_field")]
        command: Vec<u8>,
    },
    /// Opens a session (thesis §6.3 `RegisterClient`).
    OpenSession {
        /// The new session's id, drawn by the leader.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle (replicated time).
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
    },
    /// Closes a session.
    CloseSession {
        /// The session.
        id: SessionId,
        /// Who asks.
        owner: Owner,
    },
    /// Opens a session, as [`Op::OpenSession`], evicting by fair share
    /// ([`Eviction::FairShare`], rule 8 of the module docs) when the table
    /// is full. Runtime log version 1 ([`crate::schema::RUNTIME_LOG`]).
    OpenSessionFair {
        /// The new session's id, drawn by the leader.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle (replicated time).
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
    },
    /// A write of a session, as [`Op::SessionWrite`], under byte bounds of
    /// the stored replies (rule 9 of the module docs). Runtime log version
    /// 2 ([`crate::schema::RUNTIME_LOG_BOUNDED_SESSIONS`]).
    SessionWriteBounded {
        /// The session, sequence number and acknowledgement.
        session: SessionRef,
        /// Who sent it.
        owner: Owner,
        /// The leader's bounds when it proposed.
        bounds: ReplyBounds,
        /// The encoded `Write` command.
        #[serde(with = "crate::byte_field")]
        command: Vec<u8>,
    },
    /// Opens a session, as [`Op::OpenSessionFair`], after evicting the
    /// owner's own session idle the longest while it holds
    /// `max_owner_sessions` (rule 9 of the module docs). Runtime log
    /// version 2.
    OpenSessionBounded {
        /// The new session's id, drawn by the leader.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle (replicated time).
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
        /// The bound of one owner's sessions at the leader that proposed it.
        max_owner_sessions: u64,
    },
}

/// The session settings a leader writes into its entries (rules 8 and 9
/// of the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SessionLimits {
    /// Idle time-to-live (replicated time).
    pub ttl_ms: u64,
    /// The table's bound.
    pub max_sessions: u64,
    /// One owner's bound of sessions.
    pub max_owner_sessions: u64,
    /// The byte bounds of stored replies.
    pub bounds: ReplyBounds,
}

/// Whether the leader may propose the entries of rule 9 (byte bounds,
/// owner cap): this binary and every voter of `voters` apply runtime log
/// version 2.
pub(crate) fn bounded(
    schemas: &crate::schema::SchemaBook,
    voters: impl IntoIterator<Item = NodeId>,
) -> bool {
    schemas.knows_runtime_log(crate::schema::RUNTIME_LOG_BOUNDED_SESSIONS, voters)
}

/// The entry a leader proposes for write `session` of `owner`:
/// [`Op::SessionWriteBounded`] when `bounded` (see [`bounded`]), else
/// [`Op::SessionWrite`] (rule 9 of the module docs).
pub(crate) fn write_entry(
    bounded: bool,
    session: SessionRef,
    owner: Owner,
    bounds: ReplyBounds,
    command: Vec<u8>,
) -> Op {
    if bounded {
        Op::SessionWriteBounded {
            session,
            owner,
            bounds,
            command,
        }
    } else {
        Op::SessionWrite {
            session,
            owner,
            command,
        }
    }
}

/// The entry a leader proposes to open session `id` for `owner`:
/// [`Op::OpenSessionBounded`] when this binary and every voter of `voters`
/// (this node excluded) apply it, as `schemas` knows them
/// ([`SchemaBook::knows_runtime_log`](crate::schema::SchemaBook::knows_runtime_log)),
/// else [`Op::OpenSessionFair`] if they all apply that, else
/// [`Op::OpenSession`] (rules 8 and 9 of the module docs).
pub(crate) fn open_entry(
    schemas: &crate::schema::SchemaBook,
    voters: impl IntoIterator<Item = NodeId>,
    id: SessionId,
    owner: Owner,
    limits: SessionLimits,
) -> Op {
    let SessionLimits {
        ttl_ms,
        max_sessions,
        max_owner_sessions,
        ..
    } = limits;
    let voters: Vec<NodeId> = voters.into_iter().collect();
    if bounded(schemas, voters.iter().copied()) {
        Op::OpenSessionBounded {
            id,
            owner,
            ttl_ms,
            max_sessions,
            max_owner_sessions,
        }
    } else if schemas.knows_runtime_log(crate::schema::RUNTIME_LOG_FAIR_SESSIONS, voters) {
        Op::OpenSessionFair {
            id,
            owner,
            ttl_ms,
            max_sessions,
        }
    } else {
        Op::OpenSession {
            id,
            owner,
            ttl_ms,
            max_sessions,
        }
    }
}

/// An [`Envelope`] decoded in place, its command borrowed from the entry's
/// payload instead of copied into a `Vec` of its own: what the apply thread
/// reads (the state machine decodes the command from the borrowed bytes, the
/// watch journal keeps a shared slice of the payload). Decodes exactly the
/// bytes an [`Envelope`] encodes to: same fields, same variants in the same
/// order (postcard writes an enum's variant index, and a byte string as its
/// length followed by the bytes, as `byte_field` writes the owned command).
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct EnvelopeRef<'a> {
    /// See [`Envelope::stamp_ms`].
    pub stamp_ms: u64,
    /// See [`Envelope::op`].
    #[serde(borrow)]
    pub op: OpRef<'a>,
}

/// [`Op`] with its command borrowed (see [`EnvelopeRef`]). The variants
/// mirror [`Op`]'s one for one, in order.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum OpRef<'a> {
    /// [`Op::Write`].
    Write {
        /// The encoded `Write` command.
        command: &'a [u8],
    },
    /// [`Op::SessionWrite`].
    SessionWrite {
        /// The session, sequence number and acknowledgement.
        session: SessionRef,
        /// Who sent it.
        owner: Owner,
        /// The encoded `Write` command.
        command: &'a [u8],
    },
    /// [`Op::OpenSession`].
    OpenSession {
        /// The new session's id.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle.
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
    },
    /// [`Op::CloseSession`].
    CloseSession {
        /// The session.
        id: SessionId,
        /// Who asks.
        owner: Owner,
    },
    /// [`Op::OpenSessionFair`].
    OpenSessionFair {
        /// The new session's id.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle.
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
    },
    /// [`Op::SessionWriteBounded`].
    SessionWriteBounded {
        /// The session, sequence number and acknowledgement.
        session: SessionRef,
        /// Who sent it.
        owner: Owner,
        /// The leader's bounds when it proposed.
        bounds: ReplyBounds,
        /// The encoded `Write` command.
        command: &'a [u8],
    },
    /// [`Op::OpenSessionBounded`].
    OpenSessionBounded {
        /// The new session's id.
        id: SessionId,
        /// Who it belongs to.
        owner: Owner,
        /// Its time-to-live when idle.
        ttl_ms: u64,
        /// The table's bound at the leader that proposed it.
        max_sessions: u64,
        /// The bound of one owner's sessions.
        max_owner_sessions: u64,
    },
}

/// A reply as remembered for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredReply {
    /// The encoded output (shared with the caller's answer and the watch
    /// journal; encoded exactly as a `Vec<u8>` was, see
    /// `byte_field::shared`).
    Ok(#[serde(with = "crate::byte_field::shared")] bytes::Bytes),
    /// The handler failed (panicked under `skip`).
    Handler(String),
    /// The command was refused at apply time. Not written any more: a
    /// command that does not decode halts the node (see `apply.rs`); the
    /// variant stays so that the format keeps its tags.
    Rejected(String),
    /// The write was applied, but its output did not fit in the room its
    /// session or owner had left (rule 9 of the module docs): not kept. A
    /// retry is answered [`Error::AnswerTooLarge`](crate::Error::AnswerTooLarge)
    /// (applied). Written only under [`Op::SessionWriteBounded`].
    Dropped {
        /// The output's length in bytes.
        len: u64,
    },
}

impl StoredReply {
    /// What the reply counts against the byte bounds (rule 9): a function
    /// of the replicated table only, equal on every replica.
    pub fn counted_bytes(&self) -> u64 {
        REPLY_OVERHEAD_BYTES
            + match self {
                StoredReply::Ok(out) => out.len() as u64,
                StoredReply::Handler(_) | StoredReply::Rejected(_) => STORED_MESSAGE_BYTES as u64,
                StoredReply::Dropped { .. } => 0,
            }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    owner: Owner,
    ttl_ms: u64,
    last_used_ms: u64,
    /// Every write below this number was answered and acknowledged.
    acked_below: u64,
    /// Unacknowledged replies by sequence number (at most [`SESSION_WINDOW`]):
    /// a client numbers its writes in order and acknowledges them from the
    /// lowest, so an index-ordered queue (encoded as a map).
    replies: SeqMap<StoredReply>,
    /// The replies' [`StoredReply::counted_bytes`] (derived; recounted on
    /// restore).
    #[serde(skip)]
    bytes: u64,
}

/// What the table says about a session write.
#[derive(Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied yet: apply it.
    New,
    /// Applied before: answer with this.
    Duplicate(StoredReply),
    /// Below the session's acknowledgement: its caller already has its
    /// answer; refused, not applied.
    Stale,
    /// The session is not in the table (never opened, expired, evicted or
    /// closed): refused, not applied.
    Unknown,
    /// The session belongs to another identity: refused, changes nothing.
    Foreign,
    /// The session already holds [`SESSION_WINDOW`] unacknowledged replies:
    /// refused, not applied.
    WindowFull,
}

/// Which session an open evicts from a full table (rule 8 of the module
/// docs): named by the open entry's variant, never by the binary applying
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// [`Op::OpenSession`]: the session idle the longest in the whole
    /// table (ties: smallest id).
    LeastRecentlyUsed,
    /// [`Op::OpenSessionFair`]: the session idle the longest of the owner
    /// holding the most sessions, the opener's new one counted (ties
    /// between owners: idle the longest among theirs; then smallest id).
    FairShare,
}

/// Why a session could not be opened or closed.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The id is in use (a 2^-128 accident, or a forged entry).
    IdInUse,
    /// The session belongs to another identity.
    Foreign,
}

/// Counters of what the table did on this replica (not replicated: every
/// replica counts the same events it applied since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Sessions evicted because the table was full.
    pub evicted: u64,
    /// Sessions dropped after their time-to-live.
    pub expired: u64,
}

/// The session table (replicated state, part of snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    table: BTreeMap<SessionId, SessionState>,
    /// The replicated notion of "now": the largest (step-capped) stamp.
    now_ms: u64,
    /// When sessions were last swept for expiry.
    swept_ms: u64,
    #[serde(skip)]
    counters: SessionCounters,
    /// Replies stored across all sessions (derived; recounted on restore).
    #[serde(skip)]
    stored: usize,
    /// Sessions in the table per owner (derived; recounted on restore, and
    /// before a fair-share eviction if it does not add up to the table's
    /// length). An owner holding none has no entry.
    #[serde(skip)]
    owners: super::owner_hash::OwnerMap<usize>,
    /// Counted bytes of stored replies per owner (derived, as `owners`;
    /// an owner holding none has no entry).
    #[serde(skip)]
    owner_bytes: super::owner_hash::OwnerMap<u64>,
}

impl Sessions {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Replies stored across all sessions (unacknowledged answers).
    pub fn stored_replies(&self) -> usize {
        self.stored
    }

    /// Counted bytes of the replies stored across all sessions (rule 9
    /// of the module docs: [`StoredReply::counted_bytes`]).
    pub fn stored_reply_bytes(&self) -> u64 {
        self.table.values().map(|s| s.bytes).sum()
    }

    /// Counted bytes of the replies stored in `owner`'s sessions.
    pub fn owner_reply_bytes(&self, owner: Owner) -> u64 {
        self.owner_bytes.get(&owner).copied().unwrap_or(0)
    }

    /// Sessions in the table owned by `owner`.
    pub fn owner_sessions(&self, owner: Owner) -> usize {
        self.owners.get(&owner).copied().unwrap_or(0)
    }

    /// Replicated time: the largest stamp applied, capped per entry.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// What this replica's table evicted and expired since it started.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Recomputes derived counts after a snapshot was decoded.
    pub fn recount(&mut self) {
        self.stored = self.table.values().map(|s| s.replies.len()).sum();
        self.owners.clear();
        self.owner_bytes.clear();
        for s in self.table.values_mut() {
            s.bytes = s.replies.values().map(StoredReply::counted_bytes).sum();
            *self.owners.entry(s.owner).or_default() += 1;
            if s.bytes > 0 {
                *self.owner_bytes.entry(s.owner).or_default() += s.bytes;
            }
        }
    }

    /// Removes session `id`, keeping the derived counts.
    fn remove(&mut self, id: SessionId) -> Option<SessionState> {
        let s = self.table.remove(&id)?;
        self.stored = self.stored.saturating_sub(s.replies.len());
        self.forget_bytes(s.owner, s.bytes);
        self.forget_owner(s.owner);
        Some(s)
    }

    /// `bytes` fewer stored for `owner` in the derived counts.
    fn forget_bytes(&mut self, owner: Owner, bytes: u64) {
        if let Some(n) = self.owner_bytes.get_mut(&owner) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                self.owner_bytes.remove(&owner);
            }
        }
    }

    /// One session fewer for `owner` in the derived counts.
    fn forget_owner(&mut self, owner: Owner) {
        if let Some(n) = self.owners.get_mut(&owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owners.remove(&owner);
            }
        }
    }

    /// The session a full table gives up for an open by `opener` under
    /// `rule` (rule 8 of the module docs), if it holds any.
    fn victim(&mut self, opener: Owner, rule: Eviction) -> Option<SessionId> {
        let idle_longest = |(id, s): (&SessionId, &SessionState)| (s.last_used_ms, *id);
        match rule {
            Eviction::LeastRecentlyUsed => self.table.iter().min_by_key(|e| idle_longest(*e)),
            Eviction::FairShare => {
                if self.owners.values().sum::<usize>() != self.table.len() {
                    // Decoded without a recount: count now.
                    self.recount();
                }
                let count = |(o, n): (&Owner, &usize)| *n + usize::from(*o == opener);
                let most = self.owners.iter().map(count).max()?;
                // Usually one owner: compared against each session's.
                let top: Vec<Owner> = self
                    .owners
                    .iter()
                    .filter(|e| count(*e) == most)
                    .map(|(o, _)| *o)
                    .collect();
                self.table
                    .iter()
                    .filter(|(_, s)| top.contains(&s.owner))
                    .min_by_key(|e| idle_longest(*e))
            }
        }
        .map(|(id, _)| *id)
    }

    /// Advances replicated time towards `stamp_ms` (by at most
    /// [`MAX_STAMP_STEP_MS`]; never backwards) and expires idle sessions (at
    /// most once per second of replicated time).
    pub fn advance(&mut self, stamp_ms: u64) {
        let target = if self.now_ms == 0 {
            stamp_ms
        } else {
            stamp_ms.min(self.now_ms.saturating_add(MAX_STAMP_STEP_MS))
        };
        self.now_ms = self.now_ms.max(target);
        if self.now_ms >= self.swept_ms.saturating_add(1000) {
            self.swept_ms = self.now_ms;
            let now = self.now_ms;
            let before = self.table.len();
            let mut dropped = 0;
            let mut gone = Vec::new();
            self.table.retain(|_, s| {
                let live = s.last_used_ms.saturating_add(s.ttl_ms) > now;
                if !live {
                    dropped += s.replies.len();
                    gone.push((s.owner, s.bytes));
                }
                live
            });
            self.stored = self.stored.saturating_sub(dropped);
            for (owner, bytes) in gone {
                self.forget_bytes(owner, bytes);
                self.forget_owner(owner);
            }
            self.counters.expired += (before - self.table.len()) as u64;
        }
    }

    /// Opens session `id` for `owner`, evicting sessions by `rule` (the
    /// open entry's variant) while the table holds `max_sessions` or more.
    pub fn open(
        &mut self,
        id: SessionId,
        owner: Owner,
        ttl_ms: u64,
        max_sessions: u64,
        rule: Eviction,
    ) -> Result<(), SessionRefusal> {
        if self.table.contains_key(&id) {
            return Err(SessionRefusal::IdInUse);
        }
        let max = usize::try_from(max_sessions.max(1)).unwrap_or(usize::MAX);
        while self.table.len() >= max {
            let Some(victim) = self.victim(owner, rule) else {
                break;
            };
            self.remove(victim);
            self.counters.evicted += 1;
        }
        *self.owners.entry(owner).or_default() += 1;
        self.table.insert(
            id,
            SessionState {
                owner,
                ttl_ms,
                last_used_ms: self.now_ms,
                acked_below: 0,
                replies: SeqMap::default(),
                bytes: 0,
            },
        );
        Ok(())
    }

    /// Opens session `id` for `owner` under [`Op::OpenSessionBounded`]
    /// (rule 9 of the module docs): while `owner` holds
    /// `max_owner_sessions` sessions or more, its own session idle the
    /// longest is evicted (ties: smallest id); then as [`Sessions::open`]
    /// with [`Eviction::FairShare`].
    pub fn open_bounded(
        &mut self,
        id: SessionId,
        owner: Owner,
        ttl_ms: u64,
        max_sessions: u64,
        max_owner_sessions: u64,
    ) -> Result<(), SessionRefusal> {
        if self.table.contains_key(&id) {
            return Err(SessionRefusal::IdInUse);
        }
        if self.owners.values().sum::<usize>() != self.table.len() {
            // Decoded without a recount: count now.
            self.recount();
        }
        // In-process code of every peer is one owner, trusted: no cap.
        let cap = match owner {
            Owner::Local => usize::MAX,
            Owner::Certificate(_) => {
                usize::try_from(max_owner_sessions.max(1)).unwrap_or(usize::MAX)
            }
        };
        while self.owner_sessions(owner) >= cap {
            let victim = self
                .table
                .iter()
                .filter(|(_, s)| s.owner == owner)
                .min_by_key(|(id, s)| (s.last_used_ms, **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else { break };
            self.remove(victim);
            self.counters.evicted += 1;
        }
        self.open(id, owner, ttl_ms, max_sessions, Eviction::FairShare)
    }

    /// Closes session `id` (a session already gone is closed).
    pub fn close(&mut self, id: SessionId, owner: Owner) -> Result<(), SessionRefusal> {
        match self.table.get(&id) {
            None => Ok(()),
            Some(s) if s.owner != owner => Err(SessionRefusal::Foreign),
            Some(_) => {
                self.remove(id);
                Ok(())
            }
        }
    }

    /// Looks a session write up, after recording its acknowledgement when
    /// the session is the writer's own.
    pub fn check(&mut self, s: SessionRef, owner: Owner) -> Dedup {
        let now = self.now_ms;
        let Some(st) = self.table.get_mut(&s.id) else {
            return Dedup::Unknown;
        };
        if st.owner != owner {
            return Dedup::Foreign;
        }
        // A write cannot acknowledge itself.
        let ack = s.acked_below.min(s.seq);
        if ack > st.acked_below {
            st.acked_below = ack;
            let mut freed = 0;
            while st.replies.first_key().is_some_and(|k| k < ack) {
                if let Some((_, r)) = st.replies.pop_first() {
                    freed += r.counted_bytes();
                }
                self.stored = self.stored.saturating_sub(1);
            }
            st.bytes = st.bytes.saturating_sub(freed);
            if let Some(n) = self.owner_bytes.get_mut(&st.owner) {
                *n = n.saturating_sub(freed);
                if *n == 0 {
                    self.owner_bytes.remove(&st.owner);
                }
            }
        }
        if s.seq < st.acked_below {
            return Dedup::Stale;
        }
        if let Some(r) = st.replies.get(s.seq) {
            st.last_used_ms = now;
            return Dedup::Duplicate(r.clone());
        }
        if st.replies.len() >= SESSION_WINDOW {
            return Dedup::WindowFull;
        }
        Dedup::New
    }

    /// Records the reply of a newly applied write (after [`Sessions::check`]
    /// said [`Dedup::New`]).
    pub fn record(&mut self, s: SessionRef, reply: StoredReply) {
        let now = self.now_ms;
        let bytes = reply.counted_bytes();
        if let Some(st) = self.table.get_mut(&s.id)
            && st.replies.insert(s.seq, reply).is_none()
        {
            st.last_used_ms = now;
            st.bytes += bytes;
            *self.owner_bytes.entry(st.owner).or_default() += bytes;
            self.stored += 1;
        }
    }

    /// Whether write `s` of `owner`, which [`Sessions::check`] found
    /// [`Dedup::New`], may be applied under `bounds` (rule 9 of the module
    /// docs): its session and its owner each have room for one more
    /// handler error's reply ([`MIN_REPLY_BYTES`]), so a handler error is
    /// always kept as it came. An owner without room first reclaims the
    /// stored outputs of its other sessions ([`Sessions::reclaim`]); no
    /// owner bound applies to [`Owner::Local`].
    pub fn admits(
        &mut self,
        s: SessionRef,
        owner: Owner,
        bounds: ReplyBounds,
    ) -> Result<(), BytesFull> {
        let Some(st) = self.table.get(&s.id) else {
            return Ok(());
        };
        if st.bytes.saturating_add(MIN_REPLY_BYTES) > bounds.session_bytes {
            return Err(BytesFull::Session);
        }
        if owner == Owner::Local {
            return Ok(());
        }
        self.reclaim(s.id, owner, MIN_REPLY_BYTES, bounds.owner_bytes);
        let Some(st) = self.table.get(&s.id) else {
            return Ok(());
        };
        let held = self.owner_reply_bytes(owner);
        if held.saturating_add(MIN_REPLY_BYTES) > bounds.owner_bytes {
            return Err(BytesFull::Owner {
                elsewhere: held > st.bytes,
            });
        }
        Ok(())
    }

    /// Records the reply of a write applied under `bounds` (after
    /// [`Sessions::admits`] said yes; rule 9): a handler's message cut to
    /// [`STORED_MESSAGE_BYTES`], and an output that does not fit in the
    /// room left replaced by [`StoredReply::Dropped`]. Returns whether the
    /// reply was kept as it came.
    pub fn record_bounded(
        &mut self,
        s: SessionRef,
        reply: StoredReply,
        bounds: ReplyBounds,
    ) -> bool {
        let reply = match reply {
            StoredReply::Handler(mut m) => {
                if m.len() > STORED_MESSAGE_BYTES {
                    let mut cut = STORED_MESSAGE_BYTES;
                    while !m.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    m.truncate(cut);
                }
                StoredReply::Handler(m)
            }
            other => other,
        };
        let (session_held, owner) = match self.table.get(&s.id) {
            Some(st) => (st.bytes, st.owner),
            None => return false,
        };
        let need = reply.counted_bytes();
        let session_fits = session_held.saturating_add(need) <= bounds.session_bytes;
        if session_fits {
            self.reclaim(s.id, owner, need, bounds.owner_bytes);
        }
        let fits = session_fits
            && (owner == Owner::Local
                || self.owner_reply_bytes(owner).saturating_add(need) <= bounds.owner_bytes);
        if fits {
            self.record(s, reply);
            return true;
        }
        let len = match &reply {
            StoredReply::Ok(out) => out.len() as u64,
            StoredReply::Handler(m) | StoredReply::Rejected(m) => m.len() as u64,
            StoredReply::Dropped { len } => *len,
        };
        self.record(s, StoredReply::Dropped { len });
        false
    }

    /// Makes room for `need` more bytes of `owner` under its bound `bound`
    /// (rule 9 of the module docs) by turning the stored outputs of its
    /// sessions other than `keep` into [`StoredReply::Dropped`] markers:
    /// sessions idle the longest first (ties: smallest id), each one's
    /// replies in write order, until there is room. Reclaims nothing when
    /// all those outputs together would not make room (they would be lost
    /// for nothing). Only outputs are reclaimed (handler messages and
    /// markers stay): a retry of a reclaimed write is answered
    /// `AnswerTooLarge` (applied), never applied again. Idle or crashed
    /// clients thus never keep their owner's later writes out until their
    /// sessions expire. Depends only on the table: every replica reclaims
    /// alike. [`Owner::Local`] has no owner bound and is never reclaimed
    /// from.
    fn reclaim(&mut self, keep: SessionId, owner: Owner, need: u64, bound: u64) {
        let held = self.owner_reply_bytes(owner);
        if owner == Owner::Local || held.saturating_add(need) <= bound {
            return;
        }
        let others = || {
            self.table
                .iter()
                .filter(move |(id, st)| **id != keep && st.owner == owner && st.bytes > 0)
        };
        let reclaimable: u64 = others()
            .flat_map(|(_, st)| st.replies.values())
            .map(|r| match r {
                StoredReply::Ok(out) => out.len() as u64,
                _ => 0,
            })
            .sum();
        if held.saturating_sub(reclaimable).saturating_add(need) > bound {
            return;
        }
        let mut order: Vec<(u64, SessionId)> =
            others().map(|(id, st)| (st.last_used_ms, *id)).collect();
        order.sort_unstable();
        let mut reclaimed = 0u64;
        for (_, id) in order {
            let Some(st) = self.table.get_mut(&id) else {
                continue;
            };
            let mut freed = 0u64;
            let mut held = self.owner_bytes.get(&owner).copied().unwrap_or(0);
            for r in st.replies.values_mut() {
                if held.saturating_add(need) <= bound {
                    break;
                }
                if let StoredReply::Ok(out) = r
                    && !out.is_empty()
                {
                    let len = out.len() as u64;
                    *r = StoredReply::Dropped { len };
                    freed += len;
                    held = held.saturating_sub(len);
                }
            }
            st.bytes = st.bytes.saturating_sub(freed);
            reclaimed += freed;
            self.forget_bytes(owner, freed);
            if self.owner_reply_bytes(owner).saturating_add(need) <= bound {
                break;
            }
        }
        if reclaimed > 0 {
            tracing::debug!(
                ?owner,
                reclaimed,
                "stored outputs of idle sessions dropped for the owner's byte bound"
            );
        }
    }
}

/// What the apply task snapshots: the state machine and the sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    /// The session table.
    pub sessions: Sessions,
    /// The state machine's own snapshot bytes.
    #[serde(with = "crate::byte_field")]
    pub state: Vec<u8>,
    /// The index the snapshot was taken at.
    pub index: Index,
}

/// A snapshot whose state is still a copy
/// ([`StateMachine::snapshot_copy`](crate::StateMachine::snapshot_copy)):
/// the copy and the session table as of `index`, serialized on the
/// snapshot thread.
pub struct CopiedSnapshot {
    /// The state machine's copy.
    pub(crate) copy: crate::state_machine::SnapshotCopy,
    /// The session table as of `index`.
    pub(crate) sessions: Sessions,
    /// The last index applied to both.
    pub(crate) index: Index,
    /// Memory to serialize into (see [`encode_app_snapshot`]).
    pub(crate) room: Vec<u8>,
}

impl CopiedSnapshot {
    /// The snapshot's bytes, serialized into its `room` (see
    /// [`encode_app_snapshot`]).
    pub(crate) fn encode(self, hint: usize) -> Result<Vec<u8>, crate::state_machine::CodecError> {
        let CopiedSnapshot {
            copy,
            sessions,
            index,
            room,
        } = self;
        encode_app_snapshot(&sessions, index, room, hint, |buf| copy.encode_onto(buf))
    }
}

/// The bytes of the [`AppSnapshot`] of the session table, the state that
/// `state` appends to the buffer it is given, and `index`, written into
/// `buf` (emptied first; its memory is reused).
///
/// The state is serialized in place, behind the session table and its own
/// length, not into a buffer of its own to be copied behind them: that
/// buffer cost a state's worth of fresh pages (which the kernel zeroes) and
/// one copy of the state per snapshot. The length goes before the state, so
/// its room is reserved at the width that `hint` (the expected length: the
/// last snapshot's) needs; if the state's length needs another width, the
/// state moves once.
pub(crate) fn encode_app_snapshot(
    sessions: &Sessions,
    index: Index,
    mut buf: Vec<u8>,
    hint: usize,
    state: impl FnOnce(&mut Vec<u8>) -> Result<(), crate::state_machine::CodecError>,
) -> Result<Vec<u8>, crate::state_machine::CodecError> {
    use crate::state_machine::{CodecError, encode_onto};
    buf.clear();
    // `AppSnapshot`'s fields in order: the session table, ...
    encode_onto("snapshot", sessions, &mut buf)?;
    // ... the state as a byte string (postcard: its length as a varint,
    // then the bytes) ...
    let at = buf.len();
    let room = varint_len(hint as u64);
    buf.resize(at + room, 0);
    state(&mut buf)?;
    let Some(len) = buf.len().checked_sub(at + room) else {
        return Err(CodecError {
            what: "snapshot",
            reason: "the state machine removed bytes it did not write".into(),
        });
    };
    let mut width = [0u8; 10];
    let prefix = postcard::to_slice(&(len as u64), &mut width)
        .map_err(|e| CodecError::postcard("snapshot", e))?;
    match buf.get_mut(at..at + room) {
        Some(slot) if slot.len() == prefix.len() => slot.copy_from_slice(prefix),
        _ => {
            buf.splice(at..at + room, prefix.iter().copied());
        }
    }
    // ... and the index.
    encode_onto("snapshot", &index, &mut buf)?;
    Ok(buf)
}

/// The bytes of `n` as a postcard varint (7 bits each).
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_owner_tests.rs"]
mod owner_tests;
