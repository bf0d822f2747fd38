//! The apply thread: owns the user's state machine, applies committed
//! entries in log order, answers the proposals and reads that wait on them,
//! and takes and restores snapshots.
//!
//! It is a thread of its own (started in [`super::threads`]), not a tokio
//! task: handlers, snapshot serialization and restoration are the user's
//! code and may take long or block, and on a thread they never stall the
//! runtime's worker threads (the node task keeps ticking, voting and
//! replicating meanwhile). The exception is a lone small batch of quick
//! handlers while this thread is idle: the node task applies it itself,
//! under the same lock and through the same code, saving two thread
//! wake-ups on a write's path (see [`inline`] for the bounds).
//!
//! Invariants:
//! - entries are applied exactly once each, in index order; a snapshot
//!   restore replaces the state and moves `applied` to the snapshot's index;
//! - a proposal registered at (index, term) is answered with its result only
//!   if the entry applied at that index has that term; otherwise it was
//!   replaced by another leader's entry and the caller is told `NotLeader`
//!   (it was not applied);
//! - a proposal registered at an index another proposal already waits on
//!   (this node lost leadership, its log was cut back below the index by a
//!   later leader's conflicting entries, Raft §5.3, and it leads again)
//!   does not displace the earlier one: both wait for the entry that
//!   commits there. The earlier entry is gone from this node's log, but a
//!   node that still holds it may yet become leader and commit it (§5.4.2,
//!   Figure 8), so neither outcome is known before that index applies;
//! - a read registered with read index `i` is served only once `applied >=
//!   i` (Raft thesis §6.4 step 4);
//! - a snapshot taken at index `i` is the state and the session table after
//!   exactly the entries up to `i`: serialized here before the next entry,
//!   or, when the state machine gives a copy
//!   ([`StateMachine::snapshot_copy`]), the copy and a clone of the session
//!   table made before the next entry and serialized later on the snapshot
//!   thread ([`TakenBody::Deferred`]) while this thread goes on applying;
//! - the thread *halts* at an entry whose handler panics, or whose output's
//!   `Serialize` returns an error, under the `halt` policy (under `skip`
//!   either is the caller's `Error::Handler`, applied, on every replica
//!   alike), or that this binary cannot decode (a newer binary wrote it):
//!   it applies nothing more, the log keeps the entry, and every waiting
//!   and later caller is answered [`Error::Halted`] (a fixed binary will
//!   apply the write, so it is never reported as failed), but a read, which
//!   changes nothing, is refused "not applied" as the halted node task
//!   refuses one: `NotLeader` with the leader's address if the node knows
//!   one, else `Unavailable` ([`Apply::refused_read`]);
//! - it halts the same way at an entry whose apply panics outside the
//!   handler (the command's `Deserialize`, before the handler ran; the
//!   output's `Serialize`, after it ran, whatever its error policy: a fixed
//!   binary will apply the entry, so the caller's `Halted` says "may have
//!   been applied"), whether the thread or the node task applies it (`inline`);
//!   a panic escaping the handling of any message (a bug) halts it too
//!   (a second panic while halting is caught as well), and should the loop
//!   end by a panic all the same, a drop guard halts it and answers every
//!   waiting and queued caller, and the node task's sender answers what it
//!   sends later: no caller ever waits for an answer that cannot come, and
//!   no write is told less than `Halted`. The node task sees the halt in the status,
//!   steps down and refuses later calls at once (as openraft's state
//!   machine failing stops its Raft node with a fatal error, but the log
//!   and the vote stay served: see `node.rs`). A read whose query decoding
//!   or answer encoding panics fails alone ([`Error::Rejected`]: a read
//!   changes nothing);
//! - after [`ApplyMsg::Fail`] (the node's storage failed) every waiting and
//!   later caller is answered with that error (a read: refused not
//!   applied, as above); every caller is answered;
//! - after [`ApplyMsg::Orphaned`] (the node left the configuration and does
//!   not lead) the callers waiting above the node's commit index are
//!   answered [`Error::Ambiguous`]: no leader replicates to a non-member
//!   (thesis §4.2.2), so their entries' fate never reaches this node; the
//!   thread goes on applying what was committed;
//! - client writes go through the session table (`session.rs`): sessions
//!   are opened and closed by their own log entries, a write under a
//!   session the table does not know is refused with
//!   [`Error::SessionExpired`], one under another identity's session is
//!   refused and changes nothing, and a write the table already answered
//!   is answered from it, never applied twice. Every decision depends only
//!   on the log, so all replicas keep identical tables;
//! - the [`ApplyStatus`] is current whenever the thread's queue is empty
//!   (and lags by at most [`PUBLISH_EVERY`] batches while it is not), but
//!   the node task is
//!   *woken* by it only when that matters (see [`status_channel`]): the
//!   thread halted, a snapshot was taken or restored, or the node asked
//!   ([`ProgressTx`]: it is paused on the apply backlog, or idle with
//!   applied entries it has not seen). Under load the node task is woken by
//!   its own inputs and reads the status then, so applying a batch costs no
//!   wake-up of its own.
//!
//! Size: past 1,000 lines because every transition of the apply loop
//! (apply, halt, restore, snapshot, reads, answers) changes the one private
//! `Apply` state the invariants above are about; `inline` and
//! `unwind_tests` are apart already. The status channel (`ApplyStatus`,
//! `ProgressTx`, `ProgressRx` and their tests) would move out first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info};

use super::admission::Permit;
use super::seq_map::SeqMap;
use super::session::{
    AppSnapshot, BytesFull, CopiedSnapshot, Dedup, EnvelopeRef, Eviction, OpRef, Owner,
    ReplyBounds, SESSION_WINDOW, SessionCounters, SessionRef, SessionRefusal, Sessions,
    StoredReply, encode_app_snapshot,
};
use super::watch::{Journal, event as watch_event};
use crate::client::wire::WatchEvent;
use crate::core::{Entry, Index, Payload, Term};
use crate::error::Error;
use crate::handler_panic::message as panic_message;
use crate::state_machine::{
    ApplyError, Ctx, StateMachine, apply_decoded_as, apply_encoded_as, decode, encode_shared,
    query_encoded, read_error,
};

/// Rebuilds the state machine and the session table from a snapshot taken
/// by [`run`].
pub fn restore<S: StateMachine>(data: &[u8]) -> Result<(S, Sessions), Error> {
    let mut snap: AppSnapshot = decode("snapshot", data)?;
    let sm = S::restore(&snap.state)?;
    snap.sessions.recount();
    Ok((sm, snap.sessions))
}

/// Where `part`, a slice borrowed from `whole`, lies in it (`None` if it
/// does not: never, for a command decoded in place, and then it is copied
/// rather than trusted).
fn range_in(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (!part.is_empty() && end <= whole.len()).then_some(start..end)
}

/// `whole` narrowed to `range`: no copy, and no reference count taken (the
/// buffer is shared with the log and the node's other threads, where each
/// count is a contended atomic).
fn narrow(mut whole: Bytes, range: std::ops::Range<usize>) -> Bytes {
    whole.truncate(range.end);
    whole.advance(range.start);
    whole
}

/// The answer to a session open entry.
fn open_reply(
    opened: Result<(), SessionRefusal>,
    id: crate::client::wire::SessionId,
) -> Result<Bytes, Error> {
    match opened {
        Ok(()) => Ok(Bytes::new()),
        Err(_) => Err(Error::Rejected(format!("session id {id} is in use"))),
    }
}

fn stored_to_result(r: StoredReply) -> Result<Bytes, Error> {
    match r {
        StoredReply::Ok(out) => Ok(out),
        StoredReply::Handler(message) => Err(Error::Handler { message }),
        // Not written any more (a command that does not decode halts the
        // node instead); it would mean the entry was refused at apply.
        StoredReply::Rejected(why) => Err(Error::Rejected(why)),
        // Applied, its output not kept (`session.rs` rule 9).
        StoredReply::Dropped { len } => Err(Error::AnswerTooLarge(format!(
            "the write was applied, but its output ({len} bytes) was not kept for retries: its session's or client identity's stored replies were at their byte bound; do not send it again"
        ))),
    }
}

/// The refusal of write `session` of `owner` that `full` says has no
/// room under `bounds` (`session.rs` rule 9): not applied either way.
/// `Overloaded` (retried) while acknowledgements can make room: writes
/// below it are unanswered, or the owner's other sessions hold some of the
/// bytes; else `Rejected` (final): the bytes are held by replies of this
/// session's later writes, acknowledged only once this one is answered.
fn bytes_full(
    index: Index,
    session: SessionRef,
    owner: Owner,
    bounds: ReplyBounds,
    full: BytesFull,
) -> Error {
    let retried = match full {
        BytesFull::Session => session.acked_below < session.seq,
        BytesFull::Owner { elsewhere } => elsewhere || session.acked_below < session.seq,
    };
    // Every replica decides alike: debug, not a log flood.
    debug!(index, session = %session.id, seq = session.seq, ?owner, ?full, retried,
        "no room for the reply under the stored-reply byte bound; write not applied");
    if retried {
        return Error::Overloaded;
    }
    let (what, bound) = match full {
        BytesFull::Session => ("session", bounds.session_bytes),
        BytesFull::Owner { .. } => ("client identity", bounds.owner_bytes),
    };
    Error::Rejected(format!(
        "the {what} of session {} has no room under its bound of {bound} bytes of stored replies, held by unacknowledged replies of writes after write {}, which was not applied",
        session.id, session.seq
    ))
}

/// Where a caller's answer goes, with the caller's room in the node's
/// budgets (returned when the answer is sent, or the reply dropped).
#[derive(Debug)]
pub struct Reply {
    tx: oneshot::Sender<Result<Bytes, Error>>,
    _permit: Option<Permit>,
    /// The caller's trace span (a client request's `raftkit.request` span):
    /// the parent of the apply or read span that answers it.
    span: tracing::Span,
    /// A write's command as the leader decoded it to check it (an
    /// `S::Write`): applied in place of decoding the entry again, if the
    /// entry applied at the proposal's index has the proposal's term (so it
    /// is the proposal, and its bytes are the ones decoded).
    decoded: Option<Box<dyn std::any::Any + Send>>,
}

impl Reply {
    /// A reply holding `permit` until it is answered, traced under the
    /// current span.
    pub fn new(tx: oneshot::Sender<Result<Bytes, Error>>, permit: Option<Permit>) -> Self {
        Reply {
            tx,
            _permit: permit,
            span: tracing::Span::current(),
            decoded: None,
        }
    }

    /// The reply of a write whose command the leader decoded already
    /// (`decoded` is the `S::Write` its bytes decode to).
    pub fn with_decoded(mut self, decoded: Box<dyn std::any::Any + Send>) -> Self {
        self.decoded = Some(decoded);
        self
    }

    /// Answers the caller (who may have gone: then nobody hears it).
    pub fn send(self, r: Result<Bytes, Error>) {
        crate::probe::mark("a.reply");
        let _ = self.tx.send(r);
    }

    /// [`Reply::send`], keeping the caller's room in the budgets in `room`
    /// (see [`Permit::absorb`]): returned when `room` is dropped, together
    /// with the rest of the batch's.
    fn send_pooled(self, r: Result<Bytes, Error>, room: &mut Option<Permit>) {
        crate::probe::mark("a.reply");
        let _ = self.tx.send(r);
        match (room.as_mut(), self._permit) {
            (Some(room), Some(permit)) => room.absorb(permit),
            (None, permit) => *room = permit,
            (Some(_), None) => {}
        }
    }
}

/// Work for the apply thread, sent by the node task in log order.
pub enum ApplyMsg {
    /// Proposals now wait at (index, term), each with where its result
    /// goes.
    Register(Vec<(Index, Term, Reply)>),
    /// Committed entries, in order, after the proposals registered since
    /// the last message (one message, so one wake-up of the thread, per
    /// batch the node hands over): `register` is handled exactly as a
    /// [`ApplyMsg::Register`] sent right before.
    Entries {
        /// Proposals now waiting at (index, term), registered first.
        register: Vec<(Index, Term, Reply)>,
        /// The committed entries.
        entries: Vec<Entry>,
    },
    /// A linearizable read, to serve once `index` is applied.
    Read {
        /// The read index.
        index: Index,
        /// The encoded query.
        query: Vec<u8>,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Replace the state with a snapshot received from the leader.
    Restore {
        /// The snapshot's last index.
        index: Index,
        /// The serialized state (shared with the core's local snapshot).
        data: std::sync::Arc<Vec<u8>>,
    },
    /// Serialize the state; the answer goes back to the node task.
    TakeSnapshot {
        /// Memory to serialize into: a snapshot's the node let go (see
        /// [`super::persist::SnapshotSaver::take_snapshot_room`]), or empty.
        room: Vec<u8>,
    },
    /// The node left the cluster's configuration and does not lead: no
    /// entry past `above` (its commit index) will reach it, so the
    /// proposals waiting above it are answered `Ambiguous` (a later leader
    /// may commit them, or not). The thread goes on applying.
    Orphaned {
        /// The node's commit index: the proposals at or below it are
        /// answered when their entries apply, as usual.
        above: Index,
    },
    /// The node stopped serving (its storage failed): answer every waiting
    /// and later caller with this error.
    Fail(Error),
}

#[cfg(test)]
impl ApplyMsg {
    /// Committed entries with no proposal to register.
    pub fn entries(entries: Vec<Entry>) -> ApplyMsg {
        ApplyMsg::Entries {
            register: Vec::new(),
            entries,
        }
    }
}

/// A snapshot taken by the apply thread.
pub struct Taken {
    /// The last index applied to the state it serializes.
    pub index: Index,
    /// The serialized state, or the copy to serialize.
    pub body: TakenBody,
}

/// A snapshot's bytes, or what gives them.
pub enum TakenBody {
    /// Serialized on the apply thread.
    Encoded(Vec<u8>),
    /// A copy of the state and the session table at the snapshot's index,
    /// serialized when encoded (on the snapshot thread, see
    /// [`super::persist::SnapshotSaver`]).
    Deferred(CopiedSnapshot),
}

impl TakenBody {
    /// The snapshot's bytes, serializing a deferred copy here; the error
    /// says why not.
    pub fn encode(self) -> Result<Vec<u8>, String> {
        self.encode_hinted(0)
    }

    /// [`TakenBody::encode`], with the length a deferred copy's snapshot
    /// is expected to have (e.g. the last snapshot's; see
    /// [`super::session::encode_app_snapshot`]). A panic in the copy's
    /// `Serialize` is an error like any other (the snapshot is retried
    /// later, the node keeps serving): it would otherwise end the snapshot
    /// thread and leave the node waiting for that snapshot for ever.
    pub fn encode_hinted(self, hint: usize) -> Result<Vec<u8>, String> {
        match self {
            TakenBody::Encoded(data) => Ok(data),
            TakenBody::Deferred(copied) => {
                let started = Instant::now();
                let index = copied.index;
                let data = catch_unwind(AssertUnwindSafe(|| copied.encode(hint)))
                    .map_or_else(
                        |payload| Err(format!("panicked: {}", panic_message(payload.as_ref()))),
                        |r| r.map_err(|e| e.to_string()),
                    )
                    .map_err(|e| format!("the state machine's copy did not serialize: {e}"))?;
                info!(
                    index,
                    bytes = data.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "state machine copy serialized for a snapshot"
                );
                Ok(data)
            }
        }
    }
}

/// What the apply thread reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStatus {
    /// The last applied index.
    pub applied: Index,
    /// Set when the thread halted (see the module invariants).
    pub halted: Option<String>,
    /// Client sessions in the replicated session table.
    pub sessions: usize,
    /// Unacknowledged replies stored across all sessions.
    pub session_replies: usize,
    /// Sessions evicted and expired by this replica since it started.
    pub session_counters: SessionCounters,
    /// Replicated time (the session table's "now"), in ms since the epoch.
    pub replicated_ms: u64,
    /// The longest time applying stopped for a snapshot (serializing one,
    /// or restoring one received from the leader).
    pub longest_pause: Duration,
    /// Batches the node task applied itself (`inline`) since the start.
    pub inline_batches: u64,
}

impl ApplyStatus {
    /// The status of an apply thread at `applied` with these sessions (and
    /// no snapshot pause yet).
    pub fn of(applied: Index, halted: &Option<String>, sessions: &Sessions) -> ApplyStatus {
        ApplyStatus {
            applied,
            halted: halted.clone(),
            sessions: sessions.len(),
            session_replies: sessions.stored_replies(),
            session_counters: sessions.counters(),
            replicated_ms: sessions.now_ms(),
            longest_pause: Duration::ZERO,
            inline_batches: 0,
        }
    }
}

/// The apply thread's side of its status: see [`status_channel`].
#[derive(Debug)]
pub struct ProgressTx {
    status: watch::Sender<ApplyStatus>,
    wanted: Arc<AtomicBool>,
}

/// The node task's side of the apply thread's status: see
/// [`status_channel`].
#[derive(Debug)]
pub struct ProgressRx {
    status: watch::Receiver<ApplyStatus>,
    wanted: Arc<AtomicBool>,
}

/// The channel the apply thread reports its [`ApplyStatus`] on.
///
/// The value is replaced after every batch, but [`ProgressRx::changed`]
/// resolves only when the thread halted, took or restored a snapshot, or
/// while the node task wants every change ([`ProgressRx::want`]). No update
/// is lost: the node sets the wish *before* it reads the status
/// ([`ProgressRx::want`] returns what it read), and the apply thread reads
/// the wish while it holds the watch's write lock, after it wrote the
/// value; so either the node's read sees the new value, or the apply
/// thread sees the wish and wakes it.
pub fn status_channel(initial: ApplyStatus) -> (ProgressTx, ProgressRx) {
    let (status, rx) = watch::channel(initial);
    let wanted = Arc::new(AtomicBool::new(false));
    (
        ProgressTx {
            status,
            wanted: wanted.clone(),
        },
        ProgressRx { status: rx, wanted },
    )
}

impl ProgressTx {
    /// Replaces the status; wakes the node task if `always`, if the thread
    /// halted, or if the node wants it.
    fn publish(&self, new: ApplyStatus, always: bool) {
        self.status.send_if_modified(|old| {
            if *old == new {
                return false;
            }
            let wake = always || old.halted != new.halted || self.wanted.load(Ordering::SeqCst);
            *old = new;
            wake
        });
    }
}

impl ProgressRx {
    /// Resolves when the apply thread woke the node (see
    /// [`status_channel`]); an error once the thread is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.status.changed().await
    }

    /// The current status (whether or not the node was woken for it).
    pub fn borrow(&self) -> watch::Ref<'_, ApplyStatus> {
        self.status.borrow()
    }

    /// Sets whether the node task wants to be woken at every batch the
    /// thread applies, then returns the applied index as it stands: any
    /// later batch wakes the node if `wanted`.
    pub fn want(&self, wanted: bool) -> Index {
        self.wanted.store(wanted, Ordering::SeqCst);
        self.status.borrow().applied
    }
}

mod inline;
#[cfg(test)]
mod unwind_tests;
#[cfg(test)]
pub use inline::INLINE_MAX_ENTRIES;
pub use inline::{ApplyTx, Inline, Shared};

/// The address of the leader the node task knows of, other than itself
/// (`None`: none known, or this node leads): where a read the stopped apply
/// thread refuses is sent on ([`Apply::refused_read`]). Kept by the node
/// task as the leader changes; read only when a read is refused.
#[derive(Debug, Default)]
pub struct LeaderHint(std::sync::Mutex<Option<String>>);

impl LeaderHint {
    /// Sets the leader's address.
    pub fn set(&self, hint: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = hint;
    }

    /// The leader's address, if one is known.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The most batches of entries applied between two updates of the status
/// while more batches are queued (see [`run`]).
const PUBLISH_EVERY: usize = 8;

struct Apply<S> {
    sm: S,
    sessions: Sessions,
    applied: Index,
    /// The term of the entry at `applied` (0 after a snapshot restore until
    /// the next entry): the term a read's [`Ctx`] reports.
    applied_term: Term,
    /// Callers waiting for their proposal's entry, by index.
    waiting: SeqMap<(Term, Reply)>,
    /// Callers of an earlier proposal at an index a later proposal of this
    /// node registered at again (see [`Apply::register`]): still waiting
    /// for the entry that commits there. Rare (a leadership lost and
    /// regained with a log cut back), so a plain list.
    superseded: Vec<(Index, Term, Reply)>,
    reads: Vec<(Index, Vec<u8>, Reply)>,
    halted: Option<String>,
    failed: Option<Error>,
    longest_pause: Duration,
    /// Batches the node task applied itself (`inline`).
    inline_batches: u64,
    status: ProgressTx,
    /// The leader the node task knows of, for the reads refused here.
    leader: Arc<LeaderHint>,
    /// Every applied client write goes there for watches (`watch.rs`).
    journal: Arc<Journal>,
    /// The watch events of the batch being applied, appended to the
    /// journal at its end (one lock per batch).
    events: Vec<WatchEvent>,
}

/// Runs the apply loop until the node task drops its sender. Handlers run
/// inline: run it on its own thread (see `threads`), or as a task of the
/// whole-runtime simulation's executor. (The peer runs [`run_shared`]; this
/// is the loop alone, for tests.)
#[cfg(test)]
pub async fn run<S: StateMachine>(
    sm: S,
    sessions: Sessions,
    applied: Index,
    rx: mpsc::UnboundedReceiver<ApplyMsg>,
    snapshots: mpsc::UnboundedSender<Result<Taken, String>>,
    status: ProgressTx,
    journal: Arc<Journal>,
) {
    let shared = Arc::new(Shared::new(sm, sessions, applied, status, journal));
    run_shared(shared, rx, snapshots).await;
}

/// [`run`] on state that the node task may also apply small batches to
/// while this loop is idle (see [`inline`]).
pub async fn run_shared<S: StateMachine>(
    shared: Arc<Shared<S>>,
    rx: mpsc::UnboundedReceiver<ApplyMsg>,
    snapshots: mpsc::UnboundedSender<Result<Taken, String>>,
) {
    // Batches applied since the status was last published: it is published
    // when the queue runs empty (before the thread waits) or after
    // `PUBLISH_EVERY` batches, so a run of batches queued back to back
    // costs one update, and the status never lags by more than that.
    let mut unpublished = 0;
    // Should this loop end by a panic all the same (one outside the
    // handling of a message), the callers waiting and queued are answered
    // and the node halts: nobody waits for an answer that cannot come.
    let mut unwind = HaltOnUnwind {
        shared: &shared,
        rx: Some(rx),
        snapshots: &snapshots,
    };
    while let Some(rx) = unwind.rx.as_mut() {
        let Some(msg) = rx.recv().await else { break };
        let rx = &*rx;
        if rx.is_closed() {
            // The node stopped: nothing applied from now on would be seen
            // (the state lives in memory; the log keeps every entry). The
            // callers still waiting learn that the peer stopped.
            break;
        }
        let mut guard = shared.lock();
        let a = &mut *guard;
        // A panic that escapes the handling of a message (a bug: the
        // state machine's own code is caught where it runs) halts the
        // node; the loop goes on answering every caller `Halted`.
        let handled = catch_unwind(AssertUnwindSafe(|| match msg {
            ApplyMsg::Register(proposals) => a.register(proposals),
            ApplyMsg::Entries { register, entries } => {
                crate::probe::mark("a.recv");
                let started = inline::now();
                let n = entries.len();
                a.register(register);
                a.apply(entries, &|| rx.is_closed());
                shared.took(started, n);
                // The status once per run of queued batches (at most
                // `PUBLISH_EVERY`), not per batch.
                unpublished += 1;
            }
            ApplyMsg::Read {
                index,
                query,
                reply,
            } => match a.refused_read() {
                Some(e) => reply.send(Err(e)),
                None => {
                    a.reads.push((index, query, reply));
                    a.serve_reads();
                }
            },
            ApplyMsg::Restore { index, data } => {
                a.restore(index, &data);
                a.publish(true);
            }
            ApplyMsg::TakeSnapshot { room } => {
                let taken = a.take_snapshot(room);
                let _ = snapshots.send(taken);
                a.publish(true);
            }
            ApplyMsg::Orphaned { above } => {
                let waiting = a.waiting.take_after(above).into_iter();
                let superseded = a.take_superseded(|i| i > above).into_iter();
                let superseded = superseded.map(|(index, term, reply)| (index, (term, reply)));
                for (index, (_, reply)) in waiting.chain(superseded) {
                    debug!(
                        index,
                        above,
                        "proposal answered Ambiguous: this node left the configuration before its entry committed here"
                    );
                    reply.send(Err(Error::Ambiguous(
                        "this node left the cluster's configuration before the entry committed here; a later leader may have committed it".into(),
                    )));
                }
            }
            ApplyMsg::Fail(e) => {
                a.journal.stop(&mut a.events, e.clone());
                a.failed = Some(e);
                a.answer_all();
            }
        }));
        if let Err(payload) = handled {
            a.halt_caught("the apply loop", payload);
        }
        if unpublished > 0 && (unpublished >= PUBLISH_EVERY || rx.is_empty()) {
            a.publish(false);
            unpublished = 0;
        }
        // Processed, status published when the queue ran empty: only now
        // may the node task apply a batch itself (under this lock).
        shared.done_one();
        drop(guard);
    }
    let mut guard = shared.lock();
    let a = &mut *guard;
    a.journal
        .stop(&mut a.events, Error::Unavailable("the peer stopped".into()));
}

/// Answers every one of `replies` with `e`, each on its own: a panic while
/// one is answered (dropping the caller's decoded command runs the user's
/// `Drop`) is logged and does not keep the others from their answer, nor
/// unwind through the rest (where a second one would abort the process).
fn answer_each(replies: impl Iterator<Item = Reply>, e: &Error) {
    for reply in replies {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| reply.send(Err(e.clone())))) {
            error!(panic = %panic_message(payload.as_ref()), "a panic while answering a caller (its answer was sent)");
            std::mem::forget(payload);
        }
    }
}

/// How long the guard ([`HaltOnUnwind`]) waits, after closing the queue,
/// for a send already in flight to land, so that its caller is answered
/// too. A send's count-to-push window is a few instructions: only a
/// sender thread preempted there makes the guard wait at all.
const RACED_SEND_WAIT: Duration = Duration::from_secs(1);

/// Halts the node if the apply loop ends by a panic (see [`run_shared`]):
/// every waiting caller is answered, the status shows the halt (the node
/// task steps down and refuses later calls at once), and the messages
/// still queued are answered as a halted loop answers them (`Halted`), not
/// dropped with the queue. The queue is closed first: what the node task
/// sends later its sender answers itself ([`ApplyTx::send`]).
///
/// Its drop runs while the thread unwinds, where a second panic escaping
/// it would abort the process: everything it does is caught, and a caught
/// panic's payload is forgotten, not dropped (its own `Drop` may panic).
/// That includes dropping the queued messages: each is refused under a
/// catch of its own (a panic while one is dropped does not leave the rest
/// queued), and the receiver itself is dropped inside the catch, not with
/// the guard after it. The drain goes on until the queue reports no send
/// in flight (a send that passed tokio's closed check before the close
/// pushes after it), so a message that raced the close is answered too,
/// not dropped with the receiver (its caller would hear `Ambiguous`) nor
/// left in the queue unanswered until the peer stops.
struct HaltOnUnwind<'a, S: StateMachine> {
    shared: &'a Shared<S>,
    /// The loop's queue (taken by the drop; always there before).
    rx: Option<mpsc::UnboundedReceiver<ApplyMsg>>,
    snapshots: &'a mpsc::UnboundedSender<Result<Taken, String>>,
}

impl<S: StateMachine> Drop for HaltOnUnwind<'_, S> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (shared, snapshots) = (self.shared, self.snapshots);
        let Some(mut rx) = self.rx.take() else { return };
        let done = catch_unwind(AssertUnwindSafe(move || {
            let mut guard = shared.lock();
            let a = &mut *guard;
            a.halt_caught(
                "the apply loop (it ended)",
                Box::new("a panic outside any message"),
            );
            rx.close();
            // Until the queue reports no send in flight: tokio's `send`
            // counts a message (checking the closed bit) before it pushes
            // it, so a send that counted before the close may still push
            // after the queue looked empty; its caller is answered here
            // too (review s52 #1). Bounded: the node task is the only
            // sender, so at most one send is in flight, and a send that
            // comes after the close fails and is answered by the sender.
            let until = Instant::now() + RACED_SEND_WAIT;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        let refused =
                            catch_unwind(AssertUnwindSafe(|| a.refuse(msg, Some(snapshots))));
                        if let Err(payload) = refused {
                            error!(panic = %panic_message(payload.as_ref()), "a panic while a queued message was refused after the apply loop ended");
                            std::mem::forget(payload);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                        std::thread::yield_now();
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        error!(
                            waited = ?RACED_SEND_WAIT,
                            "a send to the ended apply loop was still in flight after the wait; its caller is answered only when the peer stops (Ambiguous)"
                        );
                        break;
                    }
                }
            }
            drop(guard);
            drop(rx);
        }));
        if let Err(payload) = done {
            std::mem::forget(payload);
        }
    }
}

impl<S: StateMachine> Apply<S> {
    /// [`Apply::halt_on_panic`], which cannot unwind: a second panic while
    /// halting (a caller's value whose `Drop` panics as the caller is
    /// answered) is caught, the node is halted all the same and every
    /// caller answered. Caught payloads are forgotten, not dropped (a
    /// payload's own `Drop` may panic).
    fn halt_caught(&mut self, what: &str, payload: Box<dyn std::any::Any + Send>) {
        let first = catch_unwind(AssertUnwindSafe(|| {
            self.halt_on_panic(what, payload.as_ref())
        }));
        std::mem::forget(payload);
        let Err(again) = first else { return };
        error!(
            panic = %panic_message(again.as_ref()),
            "a second panic while halting after {what}; the node halts all the same"
        );
        std::mem::forget(again);
        if self.halted.is_none() {
            self.halted = Some(format!(
                "{what} panicked outside any handler after entry {}, and again while halting",
                self.applied
            ));
        }
        let last = catch_unwind(AssertUnwindSafe(|| {
            self.answer_all();
            self.publish(true);
        }));
        if let Err(payload) = last {
            std::mem::forget(payload);
        }
    }

    /// Answers the callers of `msg`, which this loop will not handle (it
    /// ended by a panic, see [`HaltOnUnwind`]), with the error that stopped
    /// it: the proposals of a registration (their entries are in the log:
    /// `Halted` says they may be applied), a read, a snapshot asked for.
    fn refuse(
        &mut self,
        msg: ApplyMsg,
        snapshots: Option<&mpsc::UnboundedSender<Result<Taken, String>>>,
    ) {
        // Not stopped: the node is shutting down (its proposals are in the
        // log, their outcome unknown here, as for a reply dropped then).
        let e = self
            .stopped()
            .unwrap_or_else(|| Error::Ambiguous("the apply loop ended before answering".into()));
        match msg {
            ApplyMsg::Register(register) | ApplyMsg::Entries { register, .. } => {
                answer_each(register.into_iter().map(|(.., reply)| reply), &e);
            }
            ApplyMsg::Read { reply, .. } => {
                // Not stopped: the peer is shutting down; the read was
                // not served, and a read changes nothing.
                let e = self.refused_read().unwrap_or_else(|| {
                    Error::Unavailable(
                        "the peer stopped before serving the read (not applied: a read changes nothing)"
                            .into(),
                    )
                });
                answer_each(std::iter::once(reply), &e);
            }
            ApplyMsg::TakeSnapshot { .. } => {
                if let Some(snapshots) = snapshots {
                    let _ = snapshots.send(Err(format!("not taken: {e}")));
                }
            }
            ApplyMsg::Restore { .. } | ApplyMsg::Orphaned { .. } | ApplyMsg::Fail(_) => {}
        }
    }

    /// Halts after a panic that escaped `what` (not a handler's: those are
    /// the error policy's), answering every waiting caller `Halted` (may
    /// have been applied) and waking the node task with the status.
    fn halt_on_panic(&mut self, what: &str, payload: &(dyn std::any::Any + Send)) {
        if self.halted.is_none() {
            let message = format!(
                "{what} panicked outside any handler after entry {}: {}",
                self.applied,
                panic_message(payload)
            );
            self.halt(self.applied, message);
        }
        self.publish(true);
    }

    /// The error every caller gets once this thread stopped serving.
    fn stopped(&self) -> Option<Error> {
        if let Some(e) = &self.failed {
            return Some(e.clone());
        }
        self.halted.as_ref().map(|message| Error::Halted {
            message: message.clone(),
        })
    }

    /// Proposals now wait at (index, term); answered at once if the thread
    /// stopped serving. A proposal at an index another one waits on (of an
    /// earlier term of this node's leadership) keeps the earlier one
    /// waiting too, in [`Apply::superseded`]: the entry that commits there
    /// answers both (see the module invariants).
    fn register(&mut self, proposals: Vec<(Index, Term, Reply)>) {
        for (index, term, reply) in proposals {
            match self.stopped() {
                Some(e) => reply.send(Err(e)),
                None => {
                    if let Some((earlier, reply)) = self.waiting.insert(index, (term, reply)) {
                        debug!(
                            index,
                            earlier,
                            term,
                            "proposal registered at an index an earlier proposal waits on; both wait for the entry that commits there"
                        );
                        self.superseded.push((index, earlier, reply));
                    }
                }
            }
        }
    }

    /// Takes the superseded waiters whose index `pick` accepts.
    fn take_superseded(&mut self, pick: impl Fn(Index) -> bool) -> Vec<(Index, Term, Reply)> {
        if self.superseded.is_empty() {
            return Vec::new();
        }
        let (picked, kept) = std::mem::take(&mut self.superseded)
            .into_iter()
            .partition(|(index, ..)| pick(*index));
        self.superseded = kept;
        picked
    }

    fn answer_all(&mut self) {
        let Some(e) = self.stopped() else { return };
        let waiting = self.waiting.take_all().into_iter();
        answer_each(waiting.map(|(_, (_, reply))| reply), &e);
        let superseded = self.take_superseded(|_| true).into_iter();
        answer_each(superseded.map(|(.., reply)| reply), &e);
        let reads = std::mem::take(&mut self.reads).into_iter();
        let refused = self.refused_read().unwrap_or(e);
        answer_each(reads.map(|(.., reply)| reply), &refused);
    }

    /// The answer to a read this thread refuses once it stopped serving
    /// (halted, or its node's storage failed), if it has. A read changes
    /// nothing, so it says "not applied", as the node task's refusals of a
    /// halted or failed node do (`NodeTask::refused_halted`): `NotLeader`
    /// with the leader's address when the node knows another leader (a
    /// halted node keeps following it, Raft §5.2), else `Unavailable`.
    /// Never `Halted` or `Storage` ("may have been applied"), which are for
    /// the writes in the log.
    fn refused_read(&self) -> Option<Error> {
        let why = match (&self.failed, &self.halted) {
            (Some(e), _) => format!("its storage failed: {e}"),
            (None, Some(h)) => format!("it halted: {h}"),
            (None, None) => return None,
        };
        Some(match self.leader.get() {
            Some(hint) => Error::NotLeader { hint: Some(hint) },
            None => Error::Unavailable(format!(
                "this peer serves no reads until restarted, {why} (this read was not served: not applied, a read changes nothing; no leader known)"
            )),
        })
    }

    /// Reports the status; `always` wakes the node task whether or not it
    /// asked (see [`status_channel`]).
    fn publish(&self, always: bool) {
        let new = ApplyStatus {
            longest_pause: self.longest_pause,
            inline_batches: self.inline_batches,
            ..ApplyStatus::of(self.applied, &self.halted, &self.sessions)
        };
        self.status.publish(new, always);
    }

    fn halt(&mut self, index: Index, message: String) {
        error!(index, %message, "this node halts: it applies nothing more until restarted (its log is intact)");
        // The writes applied before it reach the watchers first.
        self.journal.stop(
            &mut self.events,
            Error::Halted {
                message: message.clone(),
            },
        );
        self.halted = Some(message);
        self.answer_all();
    }

    fn apply(&mut self, entries: Vec<Entry>, closed: &dyn Fn() -> bool) {
        // Halted or stopping part-way: the events of the writes applied
        // before go to the journal with its stop.
        if self.apply_entries(entries, closed) {
            self.journal.applied_with(self.applied, &mut self.events);
            self.serve_reads();
        }
    }

    /// Applies `entries` in order; false if it stopped before their end
    /// (the thread halted, or the node went away).
    fn apply_entries(&mut self, entries: Vec<Entry>, closed: &dyn Fn() -> bool) -> bool {
        // The room in the node's budgets of the callers answered below,
        // returned at once when this returns (two locked releases per
        // batch instead of per write).
        let mut room = None;
        for e in entries {
            if self.halted.is_some() || closed() {
                return false;
            }
            if e.index <= self.applied {
                continue;
            }
            // The caller waiting for this entry, if it was proposed here:
            // looked up once (it is answered below, or put back for the
            // halt to answer).
            let mut waiter = self.waiting.remove(e.index);
            // Earlier proposals at this index (see `register`): the one of
            // this entry's term, if any, is the caller answered below.
            let mut others = self.take_superseded(|i| i == e.index);
            if let Some(at) = others.iter().position(|(_, term, _)| *term == e.term) {
                let (_, term, reply) = others.swap_remove(at);
                if let Some((t, r)) = waiter.replace((term, reply)) {
                    others.push((e.index, t, r));
                }
            }
            // A span per applied entry; on the leader, a child of the span of
            // the client request that proposed it (same request id).
            let span = match &waiter {
                Some((_, reply)) => {
                    tracing::debug_span!(parent: &reply.span, "raftkit.apply", index = e.index, term = e.term)
                }
                None => tracing::debug_span!("raftkit.apply", index = e.index, term = e.term),
            };
            let _entered = span.enter();
            // The leader's own proposal: its command, decoded when it was
            // checked, is applied as it is (the entry holds the same bytes).
            let (decoded, answered) = match &mut waiter {
                Some((term, reply)) if *term == e.term => (
                    reply
                        .decoded
                        .take()
                        .and_then(|d| d.downcast::<S::Write>().ok()),
                    true,
                ),
                _ => (None, false),
            };
            let result = match e.payload {
                Payload::Command(bytes) => {
                    let (index, term) = (e.index, e.term);
                    // A panic outside the handler (the command's
                    // `Deserialize`, its output's `Serialize`; the handler's
                    // own is caught by the error policy) halts the node at
                    // this entry, on the thread and inline alike: the caller
                    // and every later one are answered `Halted` (may have
                    // been applied: a fixed binary will apply the entry).
                    // An output `Serialize` panic halts whatever the
                    // handler's policy, `skip` included (chosen at stop 50):
                    // the policy covers the handler, and a panic in a codec
                    // is taken, as a command that does not decode, for a bug
                    // of this binary that a fixed one must apply past; it is
                    // deterministic, so every replica halts at this entry.
                    let applied = catch_unwind(AssertUnwindSafe(|| {
                        self.apply_command(index, term, bytes, decoded, answered)
                    }));
                    let outcome = applied.unwrap_or_else(|payload| {
                        Outcome::Halt(format!(
                            "a panic outside the write handler at entry {index} (the command's Deserialize, before the handler ran, or its output's Serialize, after it ran and changed the state): {}",
                            panic_message(payload.as_ref())
                        ))
                    });
                    match outcome {
                        Outcome::Reply(r) => r,
                        Outcome::Halt(message) => {
                            if let Some(w) = waiter {
                                self.waiting.insert(e.index, w);
                            }
                            self.superseded.extend(others);
                            self.halt(e.index, message);
                            return false;
                        }
                    }
                }
                Payload::Noop | Payload::Config(_) => Ok(Bytes::new()),
            };
            self.applied = e.index;
            self.applied_term = e.term;
            debug!(ok = result.is_ok(), "entry applied");
            if let Some((term, reply)) = waiter {
                let answer = if term == e.term {
                    result
                } else {
                    // Another leader's entry replaced the proposal.
                    Err(Error::NotLeader { hint: None })
                };
                reply.send_pooled(answer, &mut room);
            }
            // The entry at this index is another proposal's: these were
            // not applied, and never will be (a committed entry stays).
            for (_, _, reply) in others {
                reply.send_pooled(Err(Error::NotLeader { hint: None }), &mut room);
            }
        }
        true
    }

    /// Applies one logged entry of a client: unwraps its envelope, opens or
    /// closes a session, answers a retried write from the session table,
    /// refuses a write of a session that is unknown or another identity's,
    /// and applies a new one under the error policy.
    ///
    /// The envelope is decoded in place ([`EnvelopeRef`]): the command is
    /// not copied out of the payload; the watch journal keeps the payload
    /// itself, narrowed to the command (no copy, and no reference count
    /// taken and dropped per write).
    ///
    /// `decoded` is the command the leader decoded from these bytes when it
    /// checked the proposal: applied instead of decoding them again.
    /// `answered`: a caller waits for this entry here (its proposal has
    /// this term), so the output is copied for it.
    fn apply_command(
        &mut self,
        index: Index,
        term: Term,
        bytes: Bytes,
        decoded: Option<Box<S::Write>>,
        answered: bool,
    ) -> Outcome {
        let envelope = match EnvelopeRef::decode(&bytes) {
            Ok(e) => e,
            Err(err) => {
                return Outcome::Halt(format!(
                    "entry {index} does not decode with this binary ({err}); a binary that knows it must apply it"
                ));
            }
        };
        self.sessions.advance(envelope.stamp_ms);
        let (command, session, bounds) = match envelope.op {
            OpRef::Write { command } => (command, None, None),
            OpRef::SessionWrite {
                session,
                owner,
                command,
            } => {
                if let Err(refusal) = self.dedup(index, session, owner) {
                    return refusal;
                }
                (command, Some(session), None)
            }
            // Rule 9 of `session.rs`: refused, not applied, without room
            // for one more reply.
            OpRef::SessionWriteBounded {
                session,
                owner,
                bounds,
                command,
            } => {
                if let Err(refusal) = self.dedup(index, session, owner) {
                    return refusal;
                }
                if let Err(full) = self.sessions.admits(session, owner, bounds) {
                    return Outcome::Reply(Err(bytes_full(index, session, owner, bounds, full)));
                }
                (command, Some(session), Some(bounds))
            }
            // The eviction rule is the entry's, never this binary's
            // (`session.rs` rule 8): replaying a log gives the same table.
            OpRef::OpenSession {
                id,
                owner,
                ttl_ms,
                max_sessions,
            } => {
                let rule = Eviction::LeastRecentlyUsed;
                let opened = self.sessions.open(id, owner, ttl_ms, max_sessions, rule);
                return Outcome::Reply(open_reply(opened, id));
            }
            OpRef::OpenSessionFair {
                id,
                owner,
                ttl_ms,
                max_sessions,
            } => {
                let rule = Eviction::FairShare;
                let opened = self.sessions.open(id, owner, ttl_ms, max_sessions, rule);
                return Outcome::Reply(open_reply(opened, id));
            }
            OpRef::OpenSessionBounded {
                id,
                owner,
                ttl_ms,
                max_sessions,
                max_owner_sessions,
            } => {
                let opened =
                    self.sessions
                        .open_bounded(id, owner, ttl_ms, max_sessions, max_owner_sessions);
                return Outcome::Reply(open_reply(opened, id));
            }
            OpRef::CloseSession { id, owner } => {
                return Outcome::Reply(match self.sessions.close(id, owner) {
                    Ok(()) => Ok(Bytes::new()),
                    Err(SessionRefusal::Foreign | SessionRefusal::IdInUse) => Err(Error::Rejected(
                        format!("session {id} belongs to another client identity; not closed"),
                    )),
                });
            }
        };
        let mut ctx = Ctx::new(index, term, self.sessions.now_ms());
        // Shared bytes (see `encode_shared`): the journal, the session
        // table and the caller's answer hold the same buffer (no copy here;
        // the client service copies it once, into its answer).
        let encode_output = |out: &S::WriteOutput| encode_shared("write output", out);
        let applied = match decoded {
            Some(c) => apply_decoded_as(&mut self.sm, &mut ctx, *c, encode_output),
            None => apply_encoded_as(&mut self.sm, &mut ctx, command, encode_output),
        };
        let output: Result<Bytes, String> = match applied {
            Ok(out) => Ok(out),
            Err(ApplyError::Halted { message }) => {
                return Outcome::Halt(format!(
                    "the write handler failed at entry {index} under the halt policy: {message}"
                ));
            }
            // Logged by `apply_decoded_as` (one error event per panic or
            // output that did not encode).
            Err(ApplyError::Panicked { message }) => Err(message),
            Err(ApplyError::Decode(err)) => {
                // Only binaries that disagree on the schema get here (the
                // leader refuses commands some voter cannot decode): never
                // skip it, whatever the error policy says.
                let tag = match crate::schema::encoded_tag(command) {
                    Some(tag) => format!("write tag {tag}"),
                    None => "no readable tag".to_string(),
                };
                return Outcome::Halt(format!(
                    "the command at entry {index} ({tag}) does not decode with this binary ({err}); a binary that knows it must apply it"
                ));
            }
        };
        if let Some(s) = session {
            let stored = match &output {
                Ok(out) => StoredReply::Ok(out.clone()),
                Err(m) => StoredReply::Handler(m.clone()),
            };
            match bounds {
                None => self.sessions.record(s, stored),
                Some(bounds) => {
                    if !self.sessions.record_bounded(s, stored, bounds) {
                        // Every replica decides alike: debug, not a flood.
                        debug!(index, session = %s.id, seq = s.seq,
                            "applied; its output does not fit in the stored-reply byte bound and is not kept for retries");
                    }
                }
            }
        }
        // The caller's answer, if one waits here (the leader that proposed
        // it): the same shared bytes, not a copy; otherwise only whether it
        // succeeded matters (it is logged).
        let reply = match &output {
            Ok(out) if answered => Ok(out.clone()),
            Ok(_) => Ok(Bytes::new()),
            Err(message) => Err(Error::Handler {
                message: message.clone(),
            }),
        };
        // Applied (a panic under `skip` counts): an event for watchers.
        let command = match range_in(&bytes, command) {
            Some(range) => narrow(bytes, range),
            None => Bytes::copy_from_slice(command),
        };
        self.events.push(watch_event(index, command, output));
        Outcome::Reply(reply)
    }

    /// The session table's verdict on write `session` of `owner` (rules
    /// 3 to 6 of `session.rs`): `Ok` to apply it, else its answer (a
    /// stored reply, or a refusal that says truly whether it may have been
    /// applied).
    fn dedup(&mut self, index: Index, session: SessionRef, owner: Owner) -> Result<(), Outcome> {
        match self.sessions.check(session, owner) {
            Dedup::New => {}
            // Tooth (simulation builds only): apply a retry again.
            #[cfg(feature = "sim")]
            Dedup::Duplicate(_)
                if crate::sim::runtime::teeth::on(
                    crate::sim::runtime::teeth::Tooth::ReapplyRetriedWrite,
                ) => {}
            Dedup::Duplicate(reply) => return Err(Outcome::Reply(stored_to_result(reply))),
            Dedup::Unknown => {
                return Err(Outcome::Reply(Err(Error::SessionExpired(format!(
                    "session {} is not open (expired, evicted or closed); write {} was not applied now",
                    session.id, session.seq
                )))));
            }
            Dedup::Foreign => {
                // Every replica sees it: debug, not a log flood.
                debug!(index, session = %session.id, ?owner, "write under a session owned by another identity; refused");
                return Err(Outcome::Reply(Err(Error::Rejected(format!(
                    "session {} belongs to another client identity; write {} refused, nothing changed",
                    session.id, session.seq
                )))));
            }
            Dedup::Stale => {
                // Its answer was acknowledged, so an earlier attempt
                // was answered (and may have been applied): this one
                // is not applied, and "not applied" would be untrue.
                return Err(Outcome::Reply(Err(Error::Ambiguous(format!(
                    "write {} of session {} was already answered and acknowledged; this attempt was not applied, an earlier one may have been",
                    session.seq, session.id
                )))));
            }
            // The replies held are of writes below this one that
            // its client has not acknowledged yet (it acknowledges
            // each once answered): room is made as they are, so
            // the client retries, with its acknowledgement then.
            Dedup::WindowFull if session.acked_below < session.seq => {
                debug!(index, session = %session.id, seq = session.seq, acked_below = session.acked_below,
                        "session window full of replies below this write; answered Overloaded (retried)");
                return Err(Outcome::Reply(Err(Error::Overloaded)));
            }
            // This write is its client's lowest unanswered one: the
            // replies held are of later writes, which it cannot
            // acknowledge before this one is answered, so waiting
            // makes no room: refused for good.
            Dedup::WindowFull => {
                return Err(Outcome::Reply(Err(Error::Rejected(format!(
                    "session {} holds {SESSION_WINDOW} unacknowledged replies of writes after write {}, which was not applied",
                    session.id, session.seq
                )))));
            }
        }
        Ok(())
    }

    fn restore(&mut self, index: Index, data: &[u8]) {
        if self.halted.is_some() {
            return;
        }
        let started = Instant::now();
        match restore::<S>(data) {
            Ok((restored, sessions)) => {
                self.sm = restored;
                self.sessions = sessions;
                self.applied = index;
                self.applied_term = 0;
                self.journal.restored(index);
                self.longest_pause = self.longest_pause.max(started.elapsed());
                // Proposals the snapshot covers: their outcome is unknown here.
                let covered = self.waiting.take_through(index).into_iter();
                let superseded = self.take_superseded(|i| i <= index).into_iter();
                let superseded = superseded.map(|(index, term, reply)| (index, (term, reply)));
                for (_, (_, reply)) in covered.chain(superseded) {
                    reply.send(Err(Error::Ambiguous(
                        "the entry was covered by a snapshot from the leader before it applied here".into(),
                    )));
                }
                self.serve_reads();
            }
            Err(e) => self.halt(
                index,
                format!("the snapshot from the leader at index {index} does not restore: {e}"),
            ),
        }
    }

    fn take_snapshot(&mut self, room: Vec<u8>) -> Result<Taken, String> {
        if let Some(h) = &self.halted {
            return Err(format!("not taken: this node halted ({h})"));
        }
        let started = Instant::now();
        let index = self.applied;
        // A panic while copying or serializing the state is a failed
        // snapshot like an `Err` (logged by the node, retried with a
        // backoff), not a halt: both take `&self`, the state is unchanged.
        let copied =
            catch_unwind(AssertUnwindSafe(|| self.sm.snapshot_copy())).map_err(|payload| {
                format!(
                    "the state machine's snapshot copy panicked: {}",
                    panic_message(payload.as_ref())
                )
            })?;
        if let Some(copy) = copied {
            // The copy and the session table as of `index`; serialized on
            // the snapshot thread while this one applies on.
            let sessions = self.sessions.clone();
            let took = started.elapsed();
            self.longest_pause = self.longest_pause.max(took);
            info!(
                index,
                took_ms = took.as_millis() as u64,
                "state machine copied for a snapshot"
            );
            return Ok(Taken {
                index,
                body: TakenBody::Deferred(CopiedSnapshot {
                    copy,
                    sessions,
                    index,
                    room,
                }),
            });
        }
        // Into the room, guessing the state's length from its size (a
        // former snapshot's).
        let hint = room.capacity();
        let sm = &self.sm;
        let sessions = &self.sessions;
        let snap = catch_unwind(AssertUnwindSafe(|| {
            encode_app_snapshot(sessions, index, room, hint, |buf| sm.snapshot_onto(buf))
        }))
        .map_or_else(
            |payload| Err(format!("panicked: {}", panic_message(payload.as_ref()))),
            |r| r.map_err(|e| e.to_string()),
        );
        let took = started.elapsed();
        self.longest_pause = self.longest_pause.max(took);
        match snap {
            Ok(data) => {
                info!(
                    index,
                    bytes = data.len(),
                    took_ms = took.as_millis() as u64,
                    "state machine serialized for a snapshot"
                );
                Ok(Taken {
                    index,
                    body: TakenBody::Encoded(data),
                })
            }
            Err(e) => Err(format!("the state machine did not serialize: {e}")),
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.applied;
        // Tooth (simulation builds only): serve reads whatever their index.
        #[cfg(feature = "sim")]
        let applied =
            if crate::sim::runtime::teeth::on(crate::sim::runtime::teeth::Tooth::ReadBeforeApplied)
            {
                Index::MAX
            } else {
                applied
            };
        if self.reads.iter().all(|(i, ..)| *i > applied) {
            return;
        }
        let (ready, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(i, ..)| *i <= applied);
        self.reads = pending;
        let ctx = Ctx::new(applied, self.applied_term, self.sessions.now_ms());
        for (_, query, reply) in ready {
            let _span =
                tracing::debug_span!(parent: &reply.span, "raftkit.read", applied).entered();
            // A panic outside the read handler (the query's `Deserialize`,
            // the answer's `Serialize`) fails this read only: a read
            // changes nothing.
            let sm = &self.sm;
            let answer = catch_unwind(AssertUnwindSafe(|| query_encoded(sm, &ctx, &query)))
                .unwrap_or_else(|payload| {
                    let message = panic_message(payload.as_ref());
                    error!(applied, panic = %message, "a read panicked outside its handler (the query's decoding or the answer's encoding); its caller gets Error::Rejected");
                    Err(ApplyError::Panicked {
                        message: format!("outside the read handler: {message}"),
                    })
                })
                .map_err(read_error);
            debug!(ok = answer.is_ok(), "read served");
            reply.send(answer.map(Bytes::from));
        }
    }
}

enum Outcome {
    Reply(Result<Bytes, Error>),
    Halt(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(applied: Index) -> ApplyStatus {
        ApplyStatus {
            applied,
            ..ApplyStatus::default()
        }
    }

    /// Whether the node task would be woken (and marks the wake seen).
    fn woken(rx: &mut ProgressRx) -> bool {
        let woken = rx.status.has_changed().expect("sender alive");
        rx.status.borrow_and_update();
        woken
    }

    #[test]
    fn a_batch_updates_the_status_silently_unless_the_node_wants_it() {
        let (tx, mut rx) = status_channel(at(0));
        // Nobody asked: the value moves, nobody is woken.
        tx.publish(at(5), false);
        assert!(!woken(&mut rx));
        assert_eq!(rx.borrow().applied, 5);
        // The node asks: `want` returns the index as it stands, and the
        // next batch wakes it.
        assert_eq!(rx.want(true), 5);
        tx.publish(at(9), false);
        assert!(woken(&mut rx));
        assert_eq!(rx.borrow().applied, 9);
        // It stops asking: silent again.
        assert_eq!(rx.want(false), 9);
        tx.publish(at(12), false);
        assert!(!woken(&mut rx));
        // Nothing changed: no wake even when asked.
        rx.want(true);
        tx.publish(at(12), false);
        assert!(!woken(&mut rx));
    }

    #[test]
    fn a_halt_and_a_snapshot_always_wake_the_node() {
        let (tx, mut rx) = status_channel(at(0));
        tx.publish(
            ApplyStatus {
                halted: Some("handler panicked".into()),
                ..at(3)
            },
            false,
        );
        assert!(woken(&mut rx), "a halt must reach the node at once");
        let (tx, mut rx) = status_channel(at(0));
        tx.publish(at(100), true);
        assert!(
            woken(&mut rx),
            "a snapshot taken or restored wakes the node"
        );
    }

    /// The node's wish and the thread's update may race: whichever comes
    /// first, the node either reads the new index from `want` or is woken.
    #[test]
    fn a_wish_racing_a_batch_never_loses_the_batch() {
        for round in 0..2_000u64 {
            let (tx, mut rx) = status_channel(at(round));
            let thread = std::thread::spawn(move || {
                tx.publish(at(round + 1), false);
                tx
            });
            let seen = rx.want(true);
            let _tx = thread.join().expect("publisher");
            assert!(
                seen == round + 1 || woken(&mut rx),
                "round {round}: the batch was neither seen nor woken for"
            );
        }
    }
}
