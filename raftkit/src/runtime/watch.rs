//! Watching applied writes: each member's **watch journal**, fed by its
//! apply thread, and the watch streams served from it (to network clients
//! by the client service, in process through [`Peer::watch_from`]).
//!
//! Every member applies every committed entry in log order, and applying is
//! deterministic, so every member produces the same (index, command,
//! output) for each applied write. The apply thread appends each applied
//! client write to the journal; a watch from index `i` is a cursor into it:
//! served from the journal first, then live as entries apply. So any member
//! serves watches (followers too), and a watch resumed on another member
//! from `last + 1` continues exactly where it stopped.
//!
//! Invariants:
//! - the journal holds, in index order, one event per applied client write
//!   with index `>= start`: a write refused by the session table (unknown
//!   or foreign session, already acknowledged, window full) or answered
//!   from it (a retried duplicate) applied nothing and is no event;
//!   sessions, configurations and no-ops are no events (indices still
//!   increase, with gaps). A write whose handler panicked under the `skip`
//!   policy *is* an event (it counts as applied on every replica), with
//!   the handler's message as its output; a write that halted the node is
//!   not (it was not applied), and the node's watches end with
//!   [`Error::Halted`] after the events before it;
//! - once the member stopped applying (halted, storage failed, shut
//!   down), a watch opened on it that has no event left to take is
//!   refused at once with the stop error, never accepted: an accepted
//!   watch looks healthy to a client, which would then reconnect to it
//!   for ever. One opened at an event the journal still holds gets the
//!   events, then the error;
//! - the journal is bounded by bytes ([`PeerBuilder::watch_journal_bytes`]):
//!   appending past the bound drops the oldest events and moves `start`
//!   past them. After a restart it starts empty at the snapshot the node
//!   restored (the replayed entries refill it); a snapshot installed from
//!   the leader empties it and moves `start` past the snapshot. It is not
//!   trimmed when the node compacts its own log: a snapshot is taken at the
//!   applied index, and trimming there would cut off every watcher;
//! - a watch asking for an index below `start` is refused with
//!   [`Error::Compacted`]; a watcher whose next event is dropped while it
//!   is being served (it reads more slowly than writes apply, by more than
//!   the journal holds) is disconnected with [`Error::WatchLagged`]. No
//!   watcher holds more than one batch of its own: the journal is the only
//!   buffer, shared by every watcher of the member, so memory stays within
//!   the bound whatever the number or speed of watchers. A watcher whose
//!   next event went away with a snapshot from the leader is told
//!   [`Error::Unavailable`] (another member may still hold it);
//! - a network watch is served only by a member that still follows a
//!   leader: one that is not the leader and, for an election timeout (the
//!   node's `election_ticks` × `tick`), has heard from no leader or is out
//!   of its own latest configuration ends the watch with
//!   [`Error::Unavailable`], retryable, after the events it holds. Such a
//!   member applies nothing while the cluster may commit writes (cut off
//!   from the leader and still reachable by the client, removed from the
//!   configuration and still running, a leader that lost its quorum and
//!   stepped down), and a silent watch cannot be told from a cluster with
//!   no writes; the client fails over to another member and resumes from
//!   the index after its last event. This is the only staleness a watch
//!   has: a member that follows a leader may trail it by the entries in
//!   flight (a few heartbeats), never by more than an election timeout
//!   plus one check unnoticed. The check costs nothing per event: while
//!   the watch waits for events, once per election timeout it reads the
//!   node's status watch (`PeerStatus::role`, `leader_contact`,
//!   `members`; no lock of the node or the journal), and ends the watch
//!   when two checks an election timeout apart both found the member
//!   without a leader, so a watch ends within three election timeouts of
//!   the member's last contact. A node whose ticks are stopped
//!   (quiescence, [`TickGate`]) is not checked: its group is idle, its own
//!   election timer stopped too, and the multi-group node wakes it when
//!   its leader may be gone. An in-process watch ([`Peer::watch_from`])
//!   is not checked: it watches this member itself, whose
//!   [`Peer::status`] says whether it follows a leader;
//! - at most [`MAX_WATCHERS`] watches are open on a member at once; one
//!   more is refused with [`Error::Overloaded`]. Of them, at most
//!   [`PeerBuilder::watches_per_certificate`] (default
//!   [`DEFAULT_WATCHES_PER_CERTIFICATE`], a quarter) are network watches
//!   of one client certificate (its fingerprint, as sessions' owners and
//!   `intake`'s connection places), over however many connections it
//!   opens; one more of it is refused with [`Error::Overloaded`] too
//!   (nothing applied, retryable after a backoff; logged as the
//!   per-certificate cap), so one certificate holding idle watches (which,
//!   with no writes, never lag) cannot leave every other client
//!   `Overloaded`. A slot, the member's and the certificate's, is given
//!   back when the watch's cursor is dropped: on every end of the watch
//!   (client gone, overtaken, member stopped). In-process watches
//!   ([`Peer::watch_from`]) count toward the member's cap only. A watch's batch shares the
//!   journal's bytes (reference-counted); its own memory is one encoded
//!   frame of at most 64 KiB (or one larger event) while it is written, so
//!   watchers cost at most `MAX_WATCHERS` × 64 KiB beyond the journal, plus
//!   what QUIC flow control lets each stream hold.
//!
//! [`PeerBuilder::watch_journal_bytes`]: super::PeerBuilder::watch_journal_bytes
//! [`PeerBuilder::watches_per_certificate`]: super::PeerBuilder::watches_per_certificate
//! [`TickGate`]: super::TickGate

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::{SendStream, VarInt};
use tokio::sync::watch;
use tracing::debug;

use super::{Peer, PeerStatus, TickGate};
use crate::client::watch::{Event, RESET_LAGGED};
use crate::client::wire::{ClientResponse, WatchEvent, WatchOutput};
use crate::core::{Index, Role};
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::transport::frame::{encode_frame, write_frame};

/// The default bound of a member's watch journal: 64 MiB of events.
pub const DEFAULT_WATCH_JOURNAL_BYTES: usize = 64 << 20;

/// The most watches a member serves at once.
pub const MAX_WATCHERS: usize = 1024;

/// The default most watches of one client certificate a member serves at
/// once: a quarter of [`MAX_WATCHERS`], so one certificate (over any number
/// of connections) cannot take every watch slot and leave the others
/// `Overloaded`. Tunable with
/// [`PeerBuilder::watches_per_certificate`](super::PeerBuilder::watches_per_certificate).
pub const DEFAULT_WATCHES_PER_CERTIFICATE: usize = MAX_WATCHERS / 4;

/// The most bytes of events one frame of a watch stream carries (a single
/// larger event travels alone).
const BATCH_BYTES: usize = 64 << 10;

/// A member's watch journal (see the module docs).
pub struct Journal {
    state: Mutex<State>,
    /// Bumped on every change (events, applied index, trim, stop): wakes
    /// the cursors.
    version: watch::Sender<u64>,
    max_bytes: usize,
    watchers: AtomicUsize,
    /// The most network watches of one client certificate at once.
    per_certificate: usize,
    /// Network watches open now, per client certificate (its fingerprint,
    /// as sessions' owners and `intake`'s connection places).
    by_certificate: Mutex<HashMap<[u8; 32], usize>>,
}

struct State {
    /// The first index the journal can serve.
    start: Index,
    /// The last index applied (data or not).
    applied: Index,
    /// The highest index dropped by the byte bound (as opposed to a
    /// snapshot install): a cursor at or below it lagged.
    trimmed_upto: Index,
    events: VecDeque<WatchEvent>,
    bytes: usize,
    /// Set once the member stopped applying: the error every cursor ends
    /// with after the events it holds.
    stopped: Option<Error>,
}

/// The watch event of a write applied at `index`: its command and its
/// output, or the message of its handler's panic (`skip` policy).
pub(crate) fn event(index: Index, command: Bytes, output: Result<Bytes, String>) -> WatchEvent {
    WatchEvent {
        index,
        command,
        output: match output {
            Ok(out) => WatchOutput::Ok(out),
            Err(message) => WatchOutput::Handler(message),
        },
    }
}

impl Journal {
    /// An empty journal of a member whose state machine is at `applied`,
    /// holding at most `max_bytes` of events (0: no events are kept, and
    /// only watches from the next applied entry on are served, live).
    pub fn new(applied: Index, max_bytes: usize) -> Arc<Journal> {
        Journal::with_certificate_cap(applied, max_bytes, DEFAULT_WATCHES_PER_CERTIFICATE)
    }

    /// [`Journal::new`] serving at most `per_certificate` (at least 1)
    /// network watches of one client certificate at once.
    pub fn with_certificate_cap(
        applied: Index,
        max_bytes: usize,
        per_certificate: usize,
    ) -> Arc<Journal> {
        Arc::new(Journal {
            state: Mutex::new(State {
                start: applied.saturating_add(1),
                applied,
                trimmed_upto: 0,
                events: VecDeque::new(),
                bytes: 0,
                stopped: None,
            }),
            version: watch::channel(0).0,
            max_bytes,
            watchers: AtomicUsize::new(0),
            per_certificate: per_certificate.max(1),
            by_certificate: Mutex::default(),
        })
    }

    fn lock_certificates(&self) -> MutexGuard<'_, HashMap<[u8; 32], usize>> {
        // Each count changes in one step: a panic elsewhere leaves them
        // whole.
        self.by_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the cursors after a change of the state. With no cursor
    /// nothing is sent (a send costs the apply thread a round of locks per
    /// batch): a cursor subscribes before it first locks the state, and the
    /// caller changed the state under that lock before counting, so a
    /// cursor the count misses reads the change itself.
    fn bump(&self) {
        if self.version.receiver_count() == 0 {
            return;
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends the event of a write applied at `index` (the apply thread,
    /// in index order; cursors are woken by [`Journal::applied`]).
    #[cfg(test)]
    pub(crate) fn push(&self, index: Index, command: Bytes, output: Result<Bytes, String>) {
        let dropped = {
            let mut st = self.lock();
            self.append_locked(&mut st, &mut vec![event(index, command, output)])
        };
        drop(dropped);
    }

    /// Appends `events` (in index order, drained) to the journal under its
    /// lock, and returns the events the byte bound pushed out, for the
    /// caller to drop once the lock is released.
    fn append_locked(&self, st: &mut State, events: &mut Vec<WatchEvent>) -> Vec<WatchEvent> {
        for event in events.drain(..) {
            st.bytes += event.cost();
            st.events.push_back(event);
        }
        let mut dropped = Vec::new();
        // The newest event stays even if it alone passes the bound (a
        // watcher that keeps up still gets it), unless the bound is 0.
        while st.bytes > self.max_bytes && (st.events.len() > 1 || self.max_bytes == 0) {
            let Some(old) = st.events.pop_front() else {
                break;
            };
            st.bytes -= old.cost();
            st.trimmed_upto = old.index;
            st.start = old.index.saturating_add(1);
            dropped.push(old);
        }
        dropped
    }

    /// The apply thread applied everything up to `applied`, producing
    /// `events` (its client writes since the last call, in index order;
    /// drained here): appends them and wakes the cursors. One lock per
    /// batch of entries, not one per write.
    pub(crate) fn applied_with(&self, applied: Index, events: &mut Vec<WatchEvent>) {
        let appended = !events.is_empty();
        let dropped = {
            let mut st = self.lock();
            let dropped = self.append_locked(&mut st, events);
            let advanced = applied > st.applied;
            if advanced {
                st.applied = applied;
            }
            if !advanced && !appended {
                return;
            }
            dropped
        };
        drop(dropped);
        self.bump();
    }

    /// The apply thread applied everything up to `applied`: wakes the
    /// cursors.
    #[cfg(test)]
    pub(crate) fn applied(&self, applied: Index) {
        self.applied_with(applied, &mut Vec::new());
    }

    /// A snapshot from the leader replaced the state at `index`: the
    /// entries up to it were never applied here, so the journal restarts
    /// after it.
    pub(crate) fn restored(&self, index: Index) {
        {
            let mut st = self.lock();
            st.events.clear();
            st.bytes = 0;
            st.start = st.start.max(index.saturating_add(1));
            st.applied = st.applied.max(index);
        }
        self.bump();
    }

    /// The member stopped applying (halted, storage failed, shut down)
    /// after the writes in `events` (its last, drained here; appended under
    /// the same lock, so no cursor can see the stop without them): every
    /// cursor ends with `error` once it took the events before.
    pub(crate) fn stop(&self, events: &mut Vec<WatchEvent>, error: Error) {
        let dropped = {
            let mut st = self.lock();
            let dropped = self.append_locked(&mut st, events);
            if st.stopped.is_none() {
                st.stopped = Some(error);
            }
            dropped
        };
        drop(dropped);
        self.bump();
    }

    /// The journal's bound, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The first index the journal can serve and the last applied index.
    pub fn range(&self) -> (Index, Index) {
        let st = self.lock();
        (st.start, st.applied)
    }

    /// A cursor at `from` (`None`: the next entry to apply; 0 counts as 1).
    /// Refused with [`Error::Compacted`] below the journal's start, and
    /// with the member's stop error once it stopped applying and holds no
    /// event at or after `from` (the watch could never get one here).
    pub fn cursor(self: &Arc<Self>, from: Option<Index>) -> Result<Cursor, Error> {
        self.cursor_of(from, None)
    }

    /// [`Journal::cursor`] for a network watch of the client certificate
    /// whose fingerprint is `certificate`: also refused with
    /// [`Error::Overloaded`] (nothing applied; retry after a backoff, once
    /// one of its watches ended) when that certificate already holds its
    /// cap of watches on this member. The slot is given back when the
    /// cursor is dropped.
    pub(crate) fn cursor_for(
        self: &Arc<Self>,
        from: Option<Index>,
        certificate: [u8; 32],
    ) -> Result<Cursor, Error> {
        self.cursor_of(from, Some(certificate))
    }

    fn cursor_of(
        self: &Arc<Self>,
        from: Option<Index>,
        certificate: Option<[u8; 32]>,
    ) -> Result<Cursor, Error> {
        let next = {
            let st = self.lock();
            let next = match from {
                None => st.applied.saturating_add(1),
                Some(from) => {
                    let from = from.max(1);
                    if from < st.start {
                        return Err(Error::Compacted {
                            requested: from,
                            first_available: st.start,
                        });
                    }
                    from
                }
            };
            if let Some(e) = &st.stopped
                && st.events.back().is_none_or(|last| last.index < next)
            {
                return Err(e.clone());
            }
            next
        };
        let open = self.watchers.fetch_add(1, Ordering::Relaxed);
        let mut cursor = Cursor {
            journal: Arc::clone(self),
            next,
            changes: self.version.subscribe(),
            certificate: None,
        };
        if open >= MAX_WATCHERS {
            debug!(
                open,
                cap = MAX_WATCHERS,
                "watch refused: the member's cap of watches"
            );
            // Dropping the cursor gives the slot back.
            drop(cursor);
            return Err(Error::Overloaded);
        }
        if let Some(cert) = certificate {
            let mut by_cert = self.lock_certificates();
            let mine = by_cert.entry(cert).or_insert(0);
            if *mine >= self.per_certificate {
                let held = *mine;
                drop(by_cert);
                debug!(
                    open = held,
                    cap = self.per_certificate,
                    "watch refused: the per-certificate cap of watches (this client certificate holds its share of the member's watch slots; nothing applied, retry after a backoff)"
                );
                // Dropping the cursor gives the member's slot back (it
                // holds no certificate slot yet).
                drop(cursor);
                return Err(Error::Overloaded);
            }
            *mine += 1;
            drop(by_cert);
            cursor.certificate = Some(cert);
        }
        Ok(cursor)
    }
}

/// A watcher's position in a [`Journal`]: the next index it wants.
pub struct Cursor {
    journal: Arc<Journal>,
    next: Index,
    changes: watch::Receiver<u64>,
    /// The client certificate whose watch slot this cursor holds (a
    /// network watch), given back when it is dropped.
    certificate: Option<[u8; 32]>,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // Every end of a watch (client gone, overtaken, member stopped,
        // refused) drops its cursor, so this is the one place slots are
        // given back.
        self.journal.watchers.fetch_sub(1, Ordering::Relaxed);
        if let Some(cert) = self.certificate {
            let mut by_cert = self.journal.lock_certificates();
            if let Some(n) = by_cert.get_mut(&cert) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_cert.remove(&cert);
                }
            }
        }
    }
}

impl Cursor {
    /// The next index this cursor delivers from.
    pub fn next_index(&self) -> Index {
        self.next
    }

    /// The error of a cursor whose next event is gone, if it is.
    fn overtaken_by(&self, st: &State) -> Option<Error> {
        if self.next >= st.start {
            return None;
        }
        Some(if self.next <= st.trimmed_upto {
            Error::WatchLagged { next: self.next }
        } else {
            Error::Unavailable(format!(
                "this member installed a snapshot from the leader past index {}, so it never applied the events from there; another member may still hold them",
                self.next
            ))
        })
    }

    /// Waits for the next events (at most `max_bytes` of them, at least
    /// one) and moves past them. Ends with the member's error once it
    /// stopped and every event before was taken; with
    /// [`Error::WatchLagged`] if the next event was dropped.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<WatchEvent>, Error> {
        loop {
            self.changes.borrow_and_update();
            {
                let st = self.journal.lock();
                if let Some(e) = self.overtaken_by(&st) {
                    return Err(e);
                }
                let first = st.events.partition_point(|e| e.index < self.next);
                let mut batch = Vec::new();
                let mut bytes = 0;
                for e in st.events.range(first..) {
                    if !batch.is_empty() && bytes + e.cost() > max_bytes {
                        break;
                    }
                    bytes += e.cost();
                    batch.push(e.clone());
                }
                if let Some(last) = batch.last() {
                    self.next = last.index.saturating_add(1);
                    if first + batch.len() == st.events.len() {
                        // Everything applied so far was taken: skip the
                        // non-data entries after the last event.
                        self.next = self.next.max(st.applied.saturating_add(1));
                    }
                    return Ok(batch);
                }
                // No event at or after `next`: skip what applied (no data).
                self.next = self.next.max(st.applied.saturating_add(1));
                if let Some(e) = &st.stopped {
                    return Err(e.clone());
                }
            }
            // The sender lives in the journal, which this cursor holds.
            if self.changes.changed().await.is_err() {
                return Err(Error::Unavailable("the watch journal closed".into()));
            }
        }
    }

    /// Resolves once this cursor's next event was dropped from the journal
    /// (the watcher is too slow), with the error to end the watch with.
    pub async fn overtaken(&mut self) -> Error {
        loop {
            self.changes.borrow_and_update();
            if let Some(e) = self.overtaken_by(&self.journal.lock()) {
                return e;
            }
            if self.changes.changed().await.is_err() {
                return Error::Unavailable("the watch journal closed".into());
            }
        }
    }
}

/// What a watch server reads to tell whether its member still follows a
/// leader (see the module docs): the node's status watch, its election
/// timeout and its tick gate, if any.
#[derive(Clone)]
pub(crate) struct Liveness {
    status: watch::Receiver<PeerStatus>,
    election_timeout: Duration,
    gate: Option<Arc<TickGate>>,
}

impl Liveness {
    /// The liveness of a node publishing `status`, whose election timeout
    /// is `election_timeout` and whose ticks `gate` may stop.
    pub(crate) fn new(
        status: watch::Receiver<PeerStatus>,
        election_timeout: Duration,
        gate: Option<Arc<TickGate>>,
    ) -> Liveness {
        Liveness {
            status,
            // An interval of zero panics; a tick of zero is a test's.
            election_timeout: election_timeout.max(Duration::from_millis(1)),
            gate,
        }
    }

    /// Why the member does not follow a leader now, if it does not: not
    /// the leader, and out of its latest configuration or without contact
    /// with a leader for more than an election timeout.
    fn without_leader(&self, now: std::time::Instant) -> Option<String> {
        if self.gate.as_ref().is_some_and(|g| g.is_asleep()) {
            return None;
        }
        let s = self.status.borrow();
        if s.role == Role::Leader {
            return None;
        }
        if !s.members.is_empty() && !s.members.iter().any(|m| m.id == s.id) {
            return Some("this member is not in its latest configuration".into());
        }
        match s.leader_contact {
            Some(at) if now.saturating_duration_since(at) <= self.election_timeout => None,
            Some(at) => Some(format!(
                "this member has not heard from a leader for {} ms",
                now.saturating_duration_since(at).as_millis()
            )),
            None => Some("this member follows no leader".into()),
        }
    }
}

/// The checks of one watch: when its member was first found without a
/// leader, since the last check that found one.
struct Stall {
    liveness: Liveness,
    since: Option<std::time::Instant>,
}

impl Stall {
    /// Checks the member now; the error to end the watch with once it was
    /// found without a leader at two checks an election timeout apart.
    fn check(&mut self) -> Option<Error> {
        let now = std::time::Instant::now();
        let Some(why) = self.liveness.without_leader(now) else {
            self.since = None;
            return None;
        };
        let since = *self.since.get_or_insert(now);
        let timeout = self.liveness.election_timeout;
        if now.saturating_duration_since(since) < timeout {
            return None;
        }
        debug!(
            reason = %why,
            election_timeout_ms = timeout.as_millis() as u64,
            "watch ended: this member follows no leader"
        );
        Some(Error::Unavailable(format!(
            "{why}, and has not for more than an election timeout ({} ms): it may be cut off from the leader or removed from the cluster, and applies nothing; another member serves the watch",
            timeout.as_millis()
        )))
    }
}

/// Serves one watch request of the client certificate whose fingerprint is
/// `certificate` on a client stream: its refusal (an `Err`
/// frame: compacted, overloaded, or the member stopped with nothing left
/// for the watch), or an `Events` frame confirming the start (possibly
/// empty), then batches as writes apply,
/// until the client goes away or an error ends it (its frame is the last),
/// [`Error::Unavailable`] once the member follows no leader (`liveness`,
/// see the module docs).
/// A client that does not read while the journal overtakes it gets its
/// stream reset with [`RESET_LAGGED`] (a frame could not get through its
/// full flow-control window).
pub(crate) async fn serve(
    journal: &Arc<Journal>,
    liveness: &Liveness,
    certificate: [u8; 32],
    from: Option<Index>,
    mut send: SendStream,
    max_frame: usize,
) {
    let mut cursor = match journal.cursor_for(from, certificate) {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, ?from, "watch refused");
            let _ = write_frame(&mut send, &ClientResponse::Err(e.into()), max_frame).await;
            let _ = send.finish();
            return;
        }
    };
    debug!(from = cursor.next_index(), "watch opened");
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut frame = ClientResponse::Events {
        events: Vec::new(),
        next: cursor.next_index(),
    };
    let batch_bytes = BATCH_BYTES.min(max_frame / 2);
    // Ticks only while the watch waits for events (polled there alone);
    // `Interval::tick` is cancel-safe, so a batch that wins the select
    // loses no check.
    let period = liveness.election_timeout;
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stall = Stall {
        liveness: liveness.clone(),
        since: None,
    };
    loop {
        let mut buf = Vec::new();
        if let Err(e) = encode_frame(&frame, max_frame, &mut buf) {
            // A single event larger than a frame: it cannot be carried.
            let first = match &frame {
                ClientResponse::Events { events, .. } => events.first().map(|e| e.index),
                _ => None,
            };
            let e = Error::Rejected(format!(
                "the watch event at index {first:?} does not fit a frame ({e}); watch from after it"
            ));
            let _ = write_frame(&mut send, &ClientResponse::Err(e.into()), max_frame).await;
            let _ = send.finish();
            return;
        }
        tokio::select! {
            r = send.write_all(&buf) => if let Err(e) = r {
                debug!(error = %e, "watcher went away");
                return;
            },
            e = cursor.overtaken() => {
                debug!(error = %e, "watcher too slow; disconnected");
                let _ = send.reset(VarInt::from_u32(RESET_LAGGED));
                return;
            }
            _ = &mut stopped => return,
        }
        // `next_batch` is cancel-safe: it moves the cursor only when it
        // returns.
        let batch = loop {
            tokio::select! {
                b = cursor.next_batch(batch_bytes) => break b,
                _ = checks.tick() => if let Some(e) = stall.check() {
                    break Err(e);
                },
                _ = &mut stopped => return,
            }
        };
        frame = match batch {
            Ok(events) => ClientResponse::Events {
                events,
                next: cursor.next_index(),
            },
            Err(e) => {
                debug!(error = %e, "watch ended");
                if matches!(e, Error::WatchLagged { .. }) {
                    let _ = send.reset(VarInt::from_u32(RESET_LAGGED));
                    return;
                }
                let _ = write_frame(&mut send, &ClientResponse::Err(e.into()), max_frame).await;
                let _ = send.finish();
                return;
            }
        };
    }
}

/// An in-process watch of a [`Peer`]'s applied writes, from
/// [`Peer::watch_from`]: the same events, in the same order, as a network
/// watch of that member.
pub struct PeerWatch<S> {
    cursor: Cursor,
    batch: VecDeque<WatchEvent>,
    ended: bool,
    _sm: std::marker::PhantomData<fn() -> S>,
}

impl<S: StateMachine> PeerWatch<S> {
    /// The next applied write, waiting for it; `None` after the watch ended
    /// with an error (a member that stopped, [`Error::WatchLagged`]). An
    /// event this binary cannot decode is an `Err` of its own
    /// ([`Error::Codec`]) and the watch goes on.
    pub async fn next(&mut self) -> Option<Result<Event<S>, Error>> {
        if self.batch.is_empty() && !self.ended {
            match self.cursor.next_batch(BATCH_BYTES).await {
                Ok(b) => self.batch.extend(b),
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
        self.batch.pop_front().map(Event::decode)
    }

    /// Where this watch would resume: the index of the next event it
    /// delivers.
    pub fn resume_from(&self) -> Index {
        self.batch
            .front()
            .map_or(self.cursor.next_index(), |e| e.index)
    }
}

impl<S: StateMachine> Peer<S> {
    /// Watches the writes this member applies from index `from` (`None`:
    /// from the next entry it applies): their commands and outputs, typed,
    /// in index order. See [`crate::client::watch`] for what is an event;
    /// [`Error::Compacted`] if the member no longer holds `from`; the
    /// member's stop error ([`Error::Halted`], [`Error::Storage`], ...) if
    /// it stopped applying and holds no event from `from` on.
    pub fn watch_from(&self, from: Option<Index>) -> Result<PeerWatch<S>, Error> {
        Ok(PeerWatch {
            cursor: self.inner.journal.cursor(from)?,
            batch: VecDeque::new(),
            ended: false,
            _sm: std::marker::PhantomData,
        })
    }

    /// This member's watch journal (for the client service).
    pub(crate) fn journal(&self) -> &Arc<Journal> {
        &self.inner.journal
    }

    /// What this member's watch server reads to tell whether it still
    /// follows a leader (for the client service).
    pub(crate) fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn indices(b: &[WatchEvent]) -> Vec<Index> {
        b.iter().map(|e| e.index).collect()
    }

    #[test]
    fn events_come_in_order_and_non_data_entries_are_skipped() {
        block_on(async {
            let j = Journal::new(0, 1 << 20);
            let mut c = j.cursor(Some(1)).expect("cursor");
            j.push(2, vec![1].into(), Ok(vec![2].into()));
            j.push(5, vec![3].into(), Err("boom".into()));
            j.applied(7);
            let b = c.next_batch(1 << 20).await.expect("batch");
            assert_eq!(indices(&b), [2, 5]);
            assert_eq!(b[1].output, WatchOutput::Handler("boom".into()));
            assert_eq!(c.next_index(), 8, "entries 6 and 7 carried no data");
            j.push(8, vec![4].into(), Ok(Bytes::new()));
            j.applied(8);
            assert_eq!(indices(&c.next_batch(1 << 20).await.expect("b")), [8]);
            // A cursor from the middle starts there.
            let mut mid = j.cursor(Some(3)).expect("cursor");
            assert_eq!(indices(&mid.next_batch(1 << 20).await.expect("b")), [5, 8]);
            // From "now": nothing until the next write.
            let now = j.cursor(None).expect("cursor");
            assert_eq!(now.next_index(), 9);
        });
    }

    #[test]
    fn the_byte_bound_trims_the_oldest_and_compacted_or_lagged_watchers_are_told() {
        block_on(async {
            let j = Journal::new(0, 3 * 65);
            let mut slow = j.cursor(Some(1)).expect("cursor");
            // At the last event trimmed: lagged too, not "never applied".
            let mut at_edge = j.cursor(Some(2)).expect("cursor");
            for i in 1..=5 {
                j.push(i, vec![0].into(), Ok(Bytes::new()));
            }
            j.applied(5);
            assert_eq!(j.range(), (3, 5), "three events of 65 bytes fit");
            assert_eq!(
                j.cursor(Some(2)).err(),
                Some(Error::Compacted {
                    requested: 2,
                    first_available: 3
                })
            );
            assert!(j.cursor(Some(3)).is_ok());
            assert_eq!(
                slow.next_batch(1 << 20).await.err(),
                Some(Error::WatchLagged { next: 1 })
            );
            assert!(matches!(slow.overtaken().await, Error::WatchLagged { .. }));
            assert_eq!(
                at_edge.next_batch(1 << 20).await.err(),
                Some(Error::WatchLagged { next: 2 })
            );
        });
    }

    /// The newest event stays even when it alone passes the bound: a
    /// watcher that keeps up still gets it.
    #[test]
    fn an_event_larger_than_the_bound_still_reaches_a_watcher_that_keeps_up() {
        block_on(async {
            let j = Journal::new(0, 10);
            let mut c = j.cursor(Some(1)).expect("cursor");
            j.push(1, vec![0; 100].into(), Ok(Bytes::new()));
            j.applied(1);
            assert_eq!(j.range(), (1, 1));
            assert_eq!(indices(&c.next_batch(1 << 20).await.expect("b")), [1]);
            // The next one replaces it.
            j.push(2, vec![0; 100].into(), Ok(Bytes::new()));
            j.applied(2);
            assert_eq!(j.range(), (2, 2));
            assert_eq!(indices(&c.next_batch(1 << 20).await.expect("b")), [2]);
        });
    }

    #[test]
    fn batches_are_bounded_and_a_stop_comes_after_the_events() {
        block_on(async {
            let j = Journal::new(10, 1 << 20);
            assert_eq!(
                j.cursor(Some(10)).err(),
                Some(Error::Compacted {
                    requested: 10,
                    first_available: 11
                }),
                "a restarted member serves from after its snapshot"
            );
            let mut c = j.cursor(Some(11)).expect("cursor");
            for i in 11..=14 {
                j.push(i, vec![0; 100].into(), Ok(Bytes::new()));
            }
            j.applied(14);
            j.stop(
                &mut Vec::new(),
                Error::Halted {
                    message: "h".into(),
                },
            );
            // 164 bytes an event: two fit in 328, exactly.
            assert_eq!(indices(&c.next_batch(328).await.expect("b")), [11, 12]);
            assert_eq!(indices(&c.next_batch(1).await.expect("b")), [13]);
            assert_eq!(indices(&c.next_batch(400).await.expect("b")), [14]);
            assert!(matches!(c.next_batch(400).await, Err(Error::Halted { .. })));
        });
    }

    #[test]
    fn a_stopped_journal_refuses_a_watch_with_nothing_left_at_once() {
        block_on(async {
            let j = Journal::new(0, 1 << 20);
            j.push(1, vec![0].into(), Ok(Bytes::new()));
            j.push(3, vec![0].into(), Ok(Bytes::new()));
            j.applied(4);
            let halted = Error::Halted {
                message: "h".into(),
            };
            j.stop(&mut Vec::new(), halted.clone());
            for from in [None, Some(4), Some(5), Some(u64::MAX)] {
                assert_eq!(j.cursor(from).err(), Some(halted.clone()), "{from:?}");
            }
            // Events still held: they first, then the error.
            let mut c = j.cursor(Some(2)).expect("cursor");
            assert_eq!(indices(&c.next_batch(1 << 20).await.expect("b")), [3]);
            assert_eq!(c.next_batch(1 << 20).await.err(), Some(halted.clone()));
            drop(c);
            // The refusals hold no watcher slot.
            let open: Vec<Cursor> = (0..MAX_WATCHERS)
                .map(|_| j.cursor(Some(1)).expect("cursor"))
                .collect();
            assert_eq!(j.cursor(Some(1)).err(), Some(Error::Overloaded));
            drop(open);
        });
    }

    #[test]
    fn a_snapshot_install_moves_the_start_and_is_not_a_lag() {
        block_on(async {
            let j = Journal::new(0, 1 << 20);
            let mut c = j.cursor(Some(1)).expect("cursor");
            j.restored(20);
            assert!(matches!(
                c.next_batch(1 << 20).await,
                Err(Error::Unavailable(_))
            ));
            assert_eq!(j.range(), (21, 20));
        });
    }

    #[test]
    fn watchers_are_counted_and_bounded() {
        let j = Journal::new(0, 1 << 20);
        let open: Vec<Cursor> = (0..MAX_WATCHERS)
            .map(|_| j.cursor(None).expect("cursor"))
            .collect();
        assert_eq!(j.cursor(None).err(), Some(Error::Overloaded));
        drop(open);
        assert!(j.cursor(None).is_ok());
    }

    /// One client certificate holds at most its cap of watches, whatever
    /// the connections it opens them on: past it its next is refused
    /// `Overloaded` while another certificate still opens one, and a watch
    /// that ends gives its slot back.
    #[test]
    fn one_certificate_cannot_take_every_watch_slot() {
        let j = Journal::with_certificate_cap(0, 1 << 20, 2);
        let (a, b) = ([0xa; 32], [0xb; 32]);
        let mut open_a: Vec<Cursor> = (0..2)
            .map(|_| j.cursor_for(None, a).expect("a watch of A within its cap"))
            .collect();
        assert_eq!(
            j.cursor_for(None, a).err(),
            Some(Error::Overloaded),
            "A's watch past its per-certificate cap of 2 was accepted"
        );
        let of_b = j
            .cursor_for(None, b)
            .expect("B opens a watch while A holds its cap");
        drop(open_a.pop());
        open_a.push(
            j.cursor_for(None, a)
                .expect("A opens a watch again once one of its own ended"),
        );
        drop(open_a);
        drop(of_b);
        assert!(
            j.lock_certificates().is_empty(),
            "every slot was given back"
        );
        assert_eq!(j.watchers.load(Ordering::Relaxed), 0);
    }

    /// The default per-certificate cap leaves the member's slots to other
    /// certificates.
    #[test]
    fn the_default_per_certificate_cap_is_below_the_members() {
        let j = Journal::new(0, 1 << 20);
        assert!(j.per_certificate < MAX_WATCHERS);
        assert_eq!(j.per_certificate, DEFAULT_WATCHES_PER_CERTIFICATE);
    }

    #[test]
    fn a_waiting_cursor_wakes_on_a_write() {
        block_on(async {
            let j = Journal::new(0, 1 << 20);
            let mut c = j.cursor(None).expect("cursor");
            let writer = {
                let j = j.clone();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    j.push(1, vec![9].into(), Ok(Bytes::new()));
                    j.applied(1);
                })
            };
            // A deadline, so a cursor that is never woken fails the test
            // in seconds instead of hanging it.
            let b = tokio::time::timeout(Duration::from_secs(5), c.next_batch(1 << 20))
                .await
                .expect("the waiting cursor was not woken by the write within 5 s")
                .expect("batch");
            assert_eq!(indices(&b), [1]);
            tokio::time::timeout(Duration::from_secs(5), writer)
                .await
                .expect("the writer ends within 5 s")
                .expect("writer");
        });
    }
}
