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
//! 8. **The table is bounded.** An open entry carries the leader's
//!    `max_sessions` setting; opening a session in a full table first evicts
//!    the sessions idle the longest (ties: smallest id). Every decision above
//!    depends only on the log, so all replicas keep identical tables.
//!
//! # Formats
//!
//! Log entries and snapshots are postcard. A command entry's payload is an
//! [`Envelope`] `{ stamp_ms: varint, op: Op }`, where `Op` is an enum
//! (varint tag in declaration order): `Write { command }`,
//! `SessionWrite { session: SessionRef { id: u128, seq, acked_below },
//! owner, command }`, `OpenSession { id, owner, ttl_ms, max_sessions }`,
//! `CloseSession { id, owner }`; [`Owner`] is `Local` (tag 0) or
//! `Certificate([u8; 32])` (tag 1). A snapshot is an [`AppSnapshot`]
//! `{ sessions, state, index }` where `sessions` is `{ table: map of id to
//! { owner, ttl_ms, last_used_ms, acked_below, replies: map of seq to
//! StoredReply }, now_ms, swept_ms }`. New variants are only ever appended;
//! this layout is the first released one (snapshots written before it do
//! not load).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::seq_map::SeqMap;
use crate::core::Index;
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
}

/// A reply as remembered for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredReply {
    /// The encoded output.
    Ok(#[serde(with = "crate::byte_field")] Vec<u8>),
    /// The handler failed (panicked under `skip`).
    Handler(String),
    /// The command was refused at apply time. Not written any more: a
    /// command that does not decode halts the node (see `apply.rs`); the
    /// variant stays so that the format keeps its tags.
    Rejected(String),
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
            self.table.retain(|_, s| {
                let live = s.last_used_ms.saturating_add(s.ttl_ms) > now;
                if !live {
                    dropped += s.replies.len();
                }
                live
            });
            self.stored = self.stored.saturating_sub(dropped);
            self.counters.expired += (before - self.table.len()) as u64;
        }
    }

    /// Opens session `id` for `owner`, evicting the sessions idle the
    /// longest while the table holds `max_sessions` or more.
    pub fn open(
        &mut self,
        id: SessionId,
        owner: Owner,
        ttl_ms: u64,
        max_sessions: u64,
    ) -> Result<(), SessionRefusal> {
        if self.table.contains_key(&id) {
            return Err(SessionRefusal::IdInUse);
        }
        let max = usize::try_from(max_sessions.max(1)).unwrap_or(usize::MAX);
        while self.table.len() >= max {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(id, s)| (s.last_used_ms, **id))
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else { break };
            if let Some(s) = self.table.remove(&oldest) {
                self.stored = self.stored.saturating_sub(s.replies.len());
            }
            self.counters.evicted += 1;
        }
        self.table.insert(
            id,
            SessionState {
                owner,
                ttl_ms,
                last_used_ms: self.now_ms,
                acked_below: 0,
                replies: SeqMap::default(),
            },
        );
        Ok(())
    }

    /// Closes session `id` (a session already gone is closed).
    pub fn close(&mut self, id: SessionId, owner: Owner) -> Result<(), SessionRefusal> {
        match self.table.get(&id) {
            None => Ok(()),
            Some(s) if s.owner != owner => Err(SessionRefusal::Foreign),
            Some(_) => {
                if let Some(s) = self.table.remove(&id) {
                    self.stored = self.stored.saturating_sub(s.replies.len());
                }
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
            while st.replies.first_key().is_some_and(|k| k < ack) {
                st.replies.pop_first();
                self.stored = self.stored.saturating_sub(1);
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
        if let Some(st) = self.table.get_mut(&s.id)
            && st.replies.insert(s.seq, reply).is_none()
        {
            st.last_used_ms = now;
            self.stored += 1;
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
mod tests {
    use super::*;

    /// A copy of `len` bytes, written through the runtime's buffer
    /// (`onto`) or into one of its own.
    fn copy_of(len: usize, onto: bool) -> crate::state_machine::SnapshotCopy {
        use crate::state_machine::SnapshotCopy;
        let state: Vec<u8> = (0..len).map(|i| i as u8).collect();
        if onto {
            SnapshotCopy::writing(move |buf| {
                buf.extend_from_slice(&state);
                Ok(())
            })
        } else {
            SnapshotCopy::new(move || Ok(state))
        }
    }

    #[test]
    fn a_copied_snapshot_is_the_bytes_of_the_owned_one_whatever_the_hint() {
        let mut sessions = opened();
        assert_eq!(sessions.check(w(1, 1), A), Dedup::New);
        sessions.record(w(1, 1), StoredReply::Ok(vec![9, 8]));
        // Lengths on both sides of each varint width, hints right and
        // wrong, reused buffers too small and large enough.
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let state: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let want = postcard::to_allocvec(&AppSnapshot {
                sessions: sessions.clone(),
                state,
                index: 300,
            })
            .expect("encodes");
            for hint in [0, 1, 127, 128, 16_384, len, 1 << 30] {
                for onto in [true, false] {
                    for buf in [Vec::new(), vec![5; 3], Vec::with_capacity(len + 4096)] {
                        let got = CopiedSnapshot {
                            copy: copy_of(len, onto),
                            sessions: sessions.clone(),
                            index: 300,
                            room: buf,
                        }
                        .encode(hint)
                        .expect("encodes");
                        assert!(got == want, "len {len} hint {hint} onto {onto}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_copied_snapshot_is_serialized_into_the_buffer_it_is_given() {
        let len = 100_000;
        let buf = Vec::with_capacity(2 * len);
        let at = buf.as_ptr();
        let got = CopiedSnapshot {
            copy: copy_of(len, true),
            sessions: opened(),
            index: 9,
            room: buf,
        }
        .encode(len)
        .expect("encodes");
        assert_eq!(got.as_ptr(), at, "the state went into a buffer of its own");
        assert_eq!(got.capacity(), 2 * len);
    }

    #[test]
    fn a_copy_that_removes_bytes_it_did_not_write_is_an_error() {
        let copy = crate::state_machine::SnapshotCopy::writing(|buf| {
            buf.clear();
            Ok(())
        });
        let r = CopiedSnapshot {
            copy,
            sessions: opened(),
            index: 9,
            room: Vec::new(),
        }
        .encode(5);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn a_snapshot_written_in_place_decodes_as_the_owned_one() {
        let mut sessions = opened();
        assert_eq!(sessions.check(w(1, 1), A), Dedup::New);
        sessions.record(w(1, 1), StoredReply::Ok(vec![9, 8]));
        let owned = AppSnapshot {
            sessions: sessions.clone(),
            state: vec![1, 2, 3, 250],
            index: 77,
        };
        let bytes = encode_app_snapshot(&sessions, 77, Vec::new(), 0, |buf| {
            buf.extend_from_slice(&[1, 2, 3, 250]);
            Ok(())
        })
        .expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&owned).expect("encodes"));
        // (`stored` is not in the encoding: a restore recounts it.)
        let back: AppSnapshot = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!((back.state, back.index), (owned.state, owned.index));
    }

    const A: Owner = Owner::Local;
    const B: Owner = Owner::Certificate([7; 32]);

    fn w(seq: u64, acked_below: u64) -> SessionRef {
        SessionRef {
            id: SessionId(7),
            seq,
            acked_below,
        }
    }

    /// The owned operation a borrowed one stands for.
    fn owned(op: OpRef<'_>) -> Op {
        match op {
            OpRef::Write { command } => Op::Write {
                command: command.to_vec(),
            },
            OpRef::SessionWrite {
                session,
                owner,
                command,
            } => Op::SessionWrite {
                session,
                owner,
                command: command.to_vec(),
            },
            OpRef::OpenSession {
                id,
                owner,
                ttl_ms,
                max_sessions,
            } => Op::OpenSession {
                id,
                owner,
                ttl_ms,
                max_sessions,
            },
            OpRef::CloseSession { id, owner } => Op::CloseSession { id, owner },
        }
    }

    #[test]
    fn a_borrowed_envelope_decodes_every_owned_encoding_without_copying_the_command() {
        let ops = [
            Op::Write {
                command: vec![1, 2, 3],
            },
            Op::Write {
                command: Vec::new(),
            },
            Op::SessionWrite {
                session: w(5, 3),
                owner: B,
                command: vec![9; 300],
            },
            Op::OpenSession {
                id: SessionId(u128::MAX - 1),
                owner: A,
                ttl_ms: 77,
                max_sessions: 12,
            },
            Op::CloseSession {
                id: SessionId(9),
                owner: B,
            },
        ];
        for op in ops {
            let envelope = Envelope {
                stamp_ms: 1_700_000_000_123,
                op: op.clone(),
            };
            let bytes = postcard::to_allocvec(&envelope).expect("encodes");
            let borrowed: EnvelopeRef<'_> = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(borrowed.stamp_ms, envelope.stamp_ms);
            if let OpRef::Write { command } | OpRef::SessionWrite { command, .. } = &borrowed.op
                && !command.is_empty()
            {
                assert!(
                    bytes.as_ptr_range().contains(&command.as_ptr()),
                    "the command is borrowed from the payload"
                );
            }
            assert_eq!(owned(borrowed.op), op);
        }
    }

    fn opened() -> Sessions {
        let mut s = Sessions::default();
        s.advance(1_000);
        s.open(SessionId(7), A, SESSION_TTL_MS, 100).unwrap();
        s
    }

    #[test]
    fn duplicates_are_answered_in_any_order_and_acks_drop_replies() {
        let mut s = opened();
        assert_eq!(s.check(w(1, 1), A), Dedup::New);
        s.record(w(1, 1), StoredReply::Ok(vec![1]));
        assert_eq!(
            s.check(w(1, 1), A),
            Dedup::Duplicate(StoredReply::Ok(vec![1]))
        );
        // Concurrent writes of one client may apply out of order.
        assert_eq!(s.check(w(3, 1), A), Dedup::New);
        s.record(w(3, 1), StoredReply::Ok(vec![3]));
        assert_eq!(s.check(w(2, 1), A), Dedup::New);
        s.record(w(2, 1), StoredReply::Ok(vec![2]));
        assert_eq!(s.stored_replies(), 3);
        // The client saw 1..=3 answered: write 4 acknowledges them.
        assert_eq!(s.check(w(4, 4), A), Dedup::New);
        assert_eq!(s.stored_replies(), 0);
        // Every acknowledged write is stale, the last one (3) included: its
        // reply is gone, so a late copy must not apply again.
        for seq in 1..=3 {
            assert_eq!(s.check(w(seq, 1), A), Dedup::Stale, "write {seq}");
        }
    }

    #[test]
    fn a_write_cannot_acknowledge_itself_and_the_window_is_never_overrun() {
        let mut s = opened();
        assert_eq!(s.check(w(5, 99), A), Dedup::New);
        s.record(w(5, 99), StoredReply::Ok(vec![]));
        assert_eq!(
            s.check(w(5, 99), A),
            Dedup::Duplicate(StoredReply::Ok(vec![]))
        );
        let mut s = opened();
        for seq in 1..=SESSION_WINDOW as u64 {
            assert_eq!(s.check(w(seq, 1), A), Dedup::New);
            s.record(w(seq, 1), StoredReply::Ok(vec![]));
        }
        let next = SESSION_WINDOW as u64 + 1;
        assert_eq!(s.check(w(next, 1), A), Dedup::WindowFull);
        // Nothing unacknowledged was forgotten.
        assert!(matches!(s.check(w(1, 1), A), Dedup::Duplicate(_)));
    }

    #[test]
    fn unknown_and_foreign_sessions_are_refused_and_change_nothing() {
        let mut s = Sessions::default();
        assert_eq!(s.check(w(1, 1), A), Dedup::Unknown);
        let mut s = opened();
        s.check(w(1, 1), A);
        s.record(w(1, 1), StoredReply::Ok(vec![1]));
        let before = s.clone();
        // Another identity, even acknowledging everything, changes nothing.
        assert_eq!(s.check(w(1, 50), B), Dedup::Foreign);
        assert_eq!(s.check(w(2, 50), B), Dedup::Foreign);
        assert_eq!(s.close(SessionId(7), B), Err(SessionRefusal::Foreign));
        assert_eq!(s, before);
        assert!(matches!(s.check(w(1, 1), A), Dedup::Duplicate(_)));
        assert_eq!(s.close(SessionId(7), A), Ok(()));
        assert_eq!(s.check(w(1, 1), A), Dedup::Unknown);
        assert_eq!(s.stored_replies(), 0);
    }

    #[test]
    fn sessions_expire_by_replicated_time_only_and_time_never_jumps() {
        // Time advances by at most one step per entry.
        fn walk(s: &mut Sessions, to: u64) {
            while s.now_ms() < to {
                s.advance(to);
            }
        }
        let mut s = opened();
        walk(&mut s, 1_000 + SESSION_TTL_MS - 1);
        assert_eq!(s.len(), 1);
        // Sweeps run once per second of replicated time.
        walk(&mut s, 1_000 + SESSION_TTL_MS + 1_000);
        assert!(s.is_empty());
        assert_eq!(s.counters().expired, 1);
        // Time never goes back, whatever a stamp says.
        let now = s.now_ms();
        s.advance(5);
        assert_eq!(s.now_ms(), now);
        // A stamp a day ahead moves time by one step only.
        s.advance(now + 24 * SESSION_TTL_MS);
        assert_eq!(s.now_ms(), now + MAX_STAMP_STEP_MS);
    }

    /// Rule 7 at its boundary: a session unused for exactly its
    /// time-to-live of replicated time is dropped by the sweep that reaches
    /// that time, and one used since is not.
    #[test]
    fn a_session_expires_at_the_sweep_that_reaches_its_time_to_live() {
        let mut s = Sessions::default();
        s.advance(1_000);
        s.open(SessionId(1), A, 2_000, 100).unwrap();
        s.open(SessionId(2), A, 2_000, 100).unwrap();
        s.advance(2_000);
        let r = SessionRef {
            id: SessionId(2),
            seq: 1,
            acked_below: 1,
        };
        assert_eq!(s.check(r, A), Dedup::New);
        s.record(r, StoredReply::Ok(vec![]));
        assert_eq!(s.len(), 2, "a sweep before the time-to-live");
        s.advance(3_000);
        assert_eq!(s.now_ms(), 3_000);
        let one = SessionRef {
            id: SessionId(1),
            ..r
        };
        assert_eq!(s.check(one, A), Dedup::Unknown, "session 1 expired");
        assert_eq!(s.counters().expired, 1);
        // Answering a duplicate is a use too.
        assert!(matches!(s.check(r, A), Dedup::Duplicate(_)));
        s.advance(4_000);
        assert_eq!(s.len(), 1);
        s.advance(5_000);
        assert!(s.is_empty(), "session 2 expired");
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_sessions() {
        let mut s = Sessions::default();
        s.advance(1_000);
        for i in 0..3u128 {
            s.advance(2_000 + i as u64 * 10);
            s.open(SessionId(i), A, SESSION_TTL_MS, 3).unwrap();
        }
        // Session 0 is used again: session 1 is now the longest idle.
        s.advance(3_000);
        let r = SessionRef {
            id: SessionId(0),
            seq: 1,
            acked_below: 1,
        };
        assert_eq!(s.check(r, A), Dedup::New);
        s.record(r, StoredReply::Ok(vec![]));
        s.open(SessionId(9), A, SESSION_TTL_MS, 3).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.counters().evicted, 1);
        let one = SessionRef {
            id: SessionId(1),
            ..r
        };
        assert_eq!(s.check(one, A), Dedup::Unknown);
        assert!(matches!(s.check(r, A), Dedup::Duplicate(_)));
        assert_eq!(
            s.open(SessionId(9), A, SESSION_TTL_MS, 3),
            Err(SessionRefusal::IdInUse)
        );
    }

    #[test]
    fn the_table_survives_a_snapshot_round_trip() {
        let mut s = opened();
        s.check(w(1, 1), A);
        s.record(w(1, 1), StoredReply::Handler("boom".into()));
        let bytes = postcard::to_allocvec(&s).unwrap();
        let mut back: Sessions = postcard::from_bytes(&bytes).unwrap();
        back.recount();
        assert_eq!(back.stored_replies(), 1);
        assert_eq!(back.now_ms(), s.now_ms());
        assert!(matches!(back.check(w(1, 1), A), Dedup::Duplicate(_)));
    }
}
