//! A client's session, and its writes (moved out of `remote.rs`, stop
//! 55): the session slot and the one open attempt its first writes share
//! ([`Client::opened`](super::Client)), a session write's sequence number
//! and its acknowledgement (session rule 6, `runtime::session`), the
//! [`WriteOnce`] handle, closing a session (and closing it when the last
//! clone of a client drops). The module doc of [`super`] says what is
//! exactly-once and what each error of a write means.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::debug;

use super::{Client, Inner, deadline_in, traced};
use crate::client::Submit;
use crate::client::wire::{ClientRequest, ClientResponse, SessionId, SessionRef};
use crate::error::{Applied, Error};
use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, read_frame, write_frame};

impl Client {
    /// The session writes go to now.
    fn slot(&self) -> Arc<SessionSlot> {
        match self.inner.session.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The current session, opened through the log first if it is not yet,
    /// by `deadline` (the deadline of the write that needs it).
    ///
    /// Concurrent first writes share one open attempt: one of them makes
    /// it, the others wait for its outcome (each at most until its own
    /// deadline) and, if it failed, end with its error rather than make an
    /// attempt of their own one after the other, unless the attempt failed
    /// only for want of time that the waiter has: an attempt fails
    /// retryably only at its deadline (`request_tracked` retries such
    /// errors until then), so a waiter whose deadline is later (by more
    /// than one backoff) makes its own attempt, under its own deadline
    /// (review s52, stop 53 client #1: a write of 10 s ended with the
    /// failure of a concurrent write of 100 ms). A failure says the write
    /// was not applied (it was never sent; [`unsent`]).
    pub(super) async fn opened(
        &self,
        deadline: Instant,
    ) -> Result<(Arc<SessionSlot>, SessionId), Error> {
        let slot = self.slot();
        if let Some(&id) = slot.id.get() {
            return Ok((slot, id));
        }
        // Attempts that ended before this call waited for its turn.
        let seen = slot.open_attempts.load(Ordering::SeqCst);
        let Ok(mut failed) = tokio::time::timeout_at(deadline, slot.opening.lock()).await else {
            return Err(unsent(Error::Timeout));
        };
        if let Some(&id) = slot.id.get() {
            return Ok((Arc::clone(&slot), id));
        }
        if slot.open_attempts.load(Ordering::SeqCst) != seen
            && let Some((e, by)) = failed.clone()
            && (!e.is_retryable() || deadline <= by + self.inner.opts.backoff)
        {
            // An attempt made while this call waited failed, and this
            // call's own attempt could not get further: its outcome is
            // this call's too.
            return Err(e);
        }
        let open = async {
            let answer = self
                .request_tracked(&mut ClientRequest::OpenSession, None, &mut false, deadline)
                .await?;
            let out = Self::expect_ok(answer)?;
            let id: SessionId = crate::state_machine::decode("session id", &out)?;
            Ok::<_, Error>(id)
        };
        let outcome = open.await.map_err(unsent);
        slot.open_attempts.fetch_add(1, Ordering::SeqCst);
        match outcome {
            Ok(id) => {
                // Only this call opens it (it holds `opening`).
                let id = *slot.id.get_or_init(|| async { id }).await;
                debug!(session = %id, "session opened");
                *failed = None;
                Ok((Arc::clone(&slot), id))
            }
            Err(e) => {
                debug!(error = %e, "the session could not be opened");
                *failed = Some((e.clone(), deadline));
                Err(e)
            }
        }
    }

    /// Replaces `expired` by a fresh session (once, whichever call noticed).
    fn rotate(&self, expired: &Arc<SessionSlot>) {
        let mut current = match self.inner.session.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if Arc::ptr_eq(&current, expired) {
            debug!(session = ?expired.id.get(), "session expired; the next write opens a new one");
            *current = Arc::new(SessionSlot::default());
        }
    }

    /// The id of this client's session, once its first write opened it
    /// (`None` before, and after [`Client::close`] until the next write).
    pub fn session_id(&self) -> Option<SessionId> {
        self.slot().id.get().copied()
    }

    /// Closes this client's session on the cluster, which then forgets its
    /// stored replies at once instead of after the session's time-to-live.
    /// The client stays usable: its next write opens a new session. A write
    /// still in flight on the closed session moves to the new session if
    /// none of its attempts can have been applied, and otherwise ends with
    /// [`Error::SessionExpired`] (outcome unknown): close a client once its
    /// calls have returned. Dropping the last clone of a client closes its
    /// session too, in the background and on a best-effort basis.
    pub async fn close(&self) -> Result<(), Error> {
        let old = {
            let mut current = match self.inner.session.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            std::mem::replace(&mut *current, Arc::new(SessionSlot::default()))
        };
        let Some(&id) = old.id.get() else {
            return Ok(());
        };
        old.closed.store(true, Ordering::SeqCst);
        Self::expect_ok(self.request(ClientRequest::CloseSession { id }).await?).map(|_| ())
    }

    /// A handle for **one** logical write that can be retried exactly-once:
    /// its first write takes a sequence number of this client's session and
    /// every later call through the handle re-sends that same number, so the
    /// cluster applies the command at most once and answers every retry
    /// with the first outcome. Use it when a caller must retry after
    /// [`Error::Timeout`] (or any error whose outcome is unknown) without
    /// applying twice; see [`WriteOnce`].
    pub fn write_once(&self) -> WriteOnce {
        WriteOnce {
            client: self.clone(),
            state: Mutex::new(OnceState::default()),
        }
    }

    /// A session write of `command`. `bound` pins the write to one
    /// sequence number across calls ([`WriteOnce`]); `None` takes a new one.
    async fn session_write(
        &self,
        command: Vec<u8>,
        state: Option<&mut OnceState>,
    ) -> Result<Vec<u8>, Error> {
        let mut local = OnceState::default();
        // The outcome is kept only for a `WriteOnce` handle's later calls:
        // a plain write's own state ends with this call, so its outcome is
        // not copied into it.
        let keeps_outcome = state.is_some();
        let state = match state {
            Some(s) => {
                match &s.command {
                    Some(c) if *c != command => {
                        return Err(Error::Rejected(
                            "this WriteOnce handle already carries another write; take a new handle per logical write".into(),
                        ));
                    }
                    Some(_) => {}
                    None => s.command = Some(command.clone()),
                }
                // Its outcome is known and its sequence number acknowledged:
                // the cluster forgot the reply, so nothing is sent again.
                if let Some(answer) = &s.answered {
                    return answer.clone();
                }
                // Its session was forgotten after an attempt that may have
                // been applied: a new session would apply it again.
                if let Some(why) = &s.expired {
                    return Err(Error::SessionExpired(why.clone()));
                }
                s
            }
            None => &mut local,
        };
        let mut request = ClientRequest::Write {
            session: SessionRef {
                id: SessionId(0),
                seq: 0,
                acked_below: 0,
            },
            command,
        };
        // One deadline for the whole call: opening the session, and the
        // transparent re-open below, count against it.
        let deadline = deadline_in(self.inner.opts.timeout);
        // At most one transparent re-open: when the session turns out to be
        // gone and no attempt of this write can have been applied.
        for _ in 0..2 {
            let bound = match &state.bound {
                Some(b) => b.clone(),
                None => {
                    // Nothing of this write was sent yet: a failure to open
                    // says so (even through a `WriteOnce` handle whose
                    // earlier call may have applied it under a forgotten
                    // session: that one ended `SessionExpired` for good).
                    let (slot, id) = self.opened(deadline).await?;
                    let seq = slot.take();
                    let b = Bound { slot, id, seq };
                    state.bound = Some(b.clone());
                    b
                }
            };
            if let ClientRequest::Write { session, .. } = &mut request {
                *session = SessionRef {
                    id: bound.id,
                    seq: bound.seq,
                    acked_below: bound.slot.acked_below(),
                };
            }
            // An earlier call through a `WriteOnce` handle may have applied
            // it: then no error of this call may say it was not applied.
            let mut uncertain = state.sent;
            // Until this call ends, its attempt may be at a member: if the
            // caller stops waiting (drops this future), the handle keeps
            // that, and its next call never moves the write to a new
            // session, where it would apply a second time. Set precisely
            // once the call ends.
            state.sent = true;
            let r = self
                .request_tracked(&mut request, Some(&bound.slot), &mut uncertain, deadline)
                .await;
            if let Err(Error::SessionExpired(why)) = r {
                self.rotate(&bound.slot);
                state.unbind();
                state.sent = uncertain;
                if uncertain {
                    state.expired = Some(why.clone());
                    return Err(Error::SessionExpired(why));
                }
                debug!(session = %bound.id, seq = bound.seq, "session gone before this write was ever sent; retrying under a new session");
                continue;
            }
            state.sent = uncertain
                || match &r {
                    Ok(_) => true,
                    Err(e) => e.applied() != Applied::No,
                };
            let out = r.and_then(Self::expect_ok);
            let applied = match &out {
                Ok(_) => true,
                Err(e) => e.applied() == Applied::Yes,
            };
            if applied {
                // The write's one outcome: kept for every later call
                // through a `WriteOnce` handle, which sends nothing more,
                // and its sequence number acknowledged (a kept handle holds
                // no room of the session's window, session rule 6).
                if keeps_outcome {
                    state.answer(out.clone());
                } else {
                    state.unbind();
                }
            } else if !state.sent {
                // No attempt of this write, in this call or an earlier one,
                // can have been applied: nothing of it is at a member, so
                // its number is released and a later call takes a new one.
                state.unbind();
            }
            // Otherwise its outcome is unknown: the number stays
            // unacknowledged, so that a retry through the handle gets the
            // stored reply.
            return out;
        }
        Err(Error::SessionExpired(
            "the cluster forgot two sessions in a row; not retried".into(),
        ))
    }
}

impl Drop for Inner {
    /// Closes the session in the background (best effort: without a tokio
    /// runtime, or if the runtime stops first, expiry reaps it).
    fn drop(&mut self) {
        let slot = match self.session.get_mut() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let Some(&id) = slot.id.get() else { return };
        if slot.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let leader = self.leader.lock().ok().and_then(|l| *l);
        let Some(conn) = self.conns.try_lock().ok().and_then(|c| {
            leader
                .and_then(|l| c.get(&l).cloned())
                .or_else(|| c.values().next().cloned())
        }) else {
            return;
        };
        let endpoint = self.endpoint.clone();
        runtime.spawn(async move {
            let close = async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                let request = ClientRequest::CloseSession { id };
                write_frame(&mut send, &request, DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .ok()?;
                let _ = send.finish();
                read_frame::<ClientResponse, _>(&mut recv, DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .ok()
            };
            let answer = tokio::time::timeout(CLOSE_ON_DROP_TIMEOUT, close).await;
            debug!(session = %id, ?answer, "session closed on drop");
            drop(endpoint);
        });
    }
}

/// How long the background close of a dropped client may take.
const CLOSE_ON_DROP_TIMEOUT: Duration = Duration::from_secs(2);

/// One session as the client sees it: its id once opened, the sequence
/// numbers issued, and those not yet answered (the acknowledgement).
#[derive(Default)]
pub(super) struct SessionSlot {
    id: tokio::sync::OnceCell<SessionId>,
    /// Held by the call opening the session; the error of the latest
    /// attempt, if it failed, with the deadline it was made under.
    opening: Mutex<Option<(Error, Instant)>>,
    /// Open attempts ended so far (a waiter whose turn comes after one
    /// ended takes that attempt's outcome).
    open_attempts: AtomicU64,
    seqs: std::sync::Mutex<Seqs>,
    closed: std::sync::atomic::AtomicBool,
    /// Signalled whenever [`SessionSlot::acked_below`] rises.
    acked: tokio::sync::Notify,
}

#[derive(Default)]
struct Seqs {
    /// The last sequence number issued.
    last: u64,
    /// Issued and not yet answered (or held by a [`WriteOnce`] whose
    /// write's outcome is unknown), in ascending order: numbers are issued
    /// in ascending order (pushed at the back) and mostly answered in that
    /// order (removed near the front), so a sorted ring is cheaper than a
    /// B-tree (no node allocated or freed as the set grows and shrinks).
    outstanding: std::collections::VecDeque<u64>,
}

impl SessionSlot {
    fn seqs(&self) -> std::sync::MutexGuard<'_, Seqs> {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues the next sequence number.
    pub(super) fn take(&self) -> u64 {
        let mut s = self.seqs();
        s.last += 1;
        let seq = s.last;
        // Above every number issued before: the order is kept.
        s.outstanding.push_back(seq);
        seq
    }

    /// The lowest sequence number not yet answered.
    pub(super) fn acked_below(&self) -> u64 {
        let s = self.seqs();
        s.outstanding
            .front()
            .copied()
            .unwrap_or(s.last.saturating_add(1))
    }

    /// `seq` was answered (or given up): acknowledge it with later writes.
    pub(super) fn done(&self, seq: u64) {
        let rose = {
            let mut s = self.seqs();
            match s.outstanding.binary_search(&seq) {
                Ok(at) => {
                    s.outstanding.remove(at);
                    at == 0
                }
                // Not outstanding (done already): nothing changes.
                Err(_) => false,
            }
        };
        if rose {
            self.acked.notify_waiters();
        }
    }

    /// Waits until [`SessionSlot::acked_below`] is past `sent`, or until
    /// `deadline`.
    pub(super) async fn acked_past(&self, sent: u64, deadline: Instant) {
        loop {
            let rose = self.acked.notified();
            tokio::pin!(rose);
            // Registered before the check: a rise in between still wakes it.
            rose.as_mut().enable();
            if self.acked_below() > sent {
                return;
            }
            if tokio::time::timeout_at(deadline, rose).await.is_err() {
                return;
            }
        }
    }
}

/// A write's claim on a sequence number of a session.
#[derive(Clone)]
struct Bound {
    slot: Arc<SessionSlot>,
    id: SessionId,
    seq: u64,
}

/// The state of one logical write: its sequence number once taken, its
/// command, whether an attempt may have been applied, whether its session
/// expired after such an attempt (then every later call through its handle
/// answers `SessionExpired`), and its outcome once a call got it (then
/// every later call returns it).
///
/// Its sequence number stays unacknowledged exactly while the write's
/// outcome is unknown to the handle (an attempt may be at a member, or may
/// have been applied without an answer): then the cluster must keep the
/// reply for a retry. An answered write and a write that no attempt can
/// have applied release it.
#[derive(Default)]
struct OnceState {
    bound: Option<Bound>,
    command: Option<Vec<u8>>,
    sent: bool,
    expired: Option<String>,
    /// The write's outcome once a call got one that says it was applied
    /// (`Ok`, or an error saying [`Applied::Yes`]); its sequence number is
    /// then acknowledged (unbound), and every later call returns this.
    answered: Option<Result<Vec<u8>, Error>>,
}

impl OnceState {
    fn unbind(&mut self) {
        if let Some(b) = self.bound.take() {
            b.slot.done(b.seq);
        }
    }

    /// Keeps the write's outcome and acknowledges its sequence number.
    fn answer(&mut self, outcome: Result<Vec<u8>, Error>) {
        self.answered = Some(outcome);
        self.unbind();
    }
}

impl Drop for OnceState {
    fn drop(&mut self) {
        self.unbind();
    }
}

/// One logical write that can be retried exactly-once, from
/// [`Client::write_once`] (or a generated client's `write_once()`).
///
/// The handle implements [`Submit`], so a generated client can wrap it:
/// its first write takes a sequence number of the client's session, and
/// every later write through the handle re-sends *the same* sequence
/// number, which the cluster applies at most once; a retry after the write
/// was applied is answered with the stored result. Reads go through
/// unchanged.
///
/// - Retry through the handle after [`Error::Timeout`], [`Error::Unavailable`],
///   [`Error::NotLeader`] or [`Error::Transport`]: the write is applied at
///   most once, and once a retry gets an answer it is the write's one
///   outcome.
/// - The handle carries one command: a different command through it is
///   refused ([`Error::Rejected`]) before anything is sent.
/// - Once a call through the handle gets the write's outcome (`Ok`, or an
///   error saying it was applied, such as [`Error::Handler`]), the handle
///   keeps it: every later call returns it and sends nothing. The client
///   then acknowledges the write, and the cluster forgets its reply, so a
///   handle kept after its answer holds none of the session's window of
///   [`SESSION_WINDOW`](crate::runtime::session::SESSION_WINDOW) replies.
/// - A call that ended saying the write was not applied (and no earlier
///   call may have) releases its sequence number: the next call through
///   the handle takes a new one, as nothing of the write is at any member.
/// - While the write's outcome is unknown, the cluster keeps its answer for
///   as long as the handle lives (the client does not acknowledge its
///   sequence number before the handle is dropped: each such handle holds
///   one reply of the window), but not past its session: if the session expires (it stayed idle for the
///   cluster's session time-to-live, or was evicted from a full table) a
///   retry gets [`Error::SessionExpired`], and the write's outcome is then
///   unknown: every later retry through the handle gets the same error and
///   sends nothing (under a new session the write could apply twice).
///   Retry promptly, and drop handles you no longer need.
pub struct WriteOnce {
    client: Client,
    state: Mutex<OnceState>,
}

impl WriteOnce {
    /// The client this handle writes through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Submit for WriteOnce {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        traced("write", async {
            let mut state = self.state.lock().await;
            self.client.session_write(command, Some(&mut state)).await
        })
        .await
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.client.read(query).await
    }
}

impl Submit for Client {
    /// One logical write under this client's session: a new sequence number
    /// for this call, re-sent by every internal retry (redirects, lost
    /// connections, leader changes), so the call applies the command at
    /// most once. See the module docs for what an error means.
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        traced("write", self.session_write(command, None)).await
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        traced("read", async {
            match self.request(ClientRequest::Read { query }).await? {
                ClientResponse::Stale { output, staleness } => {
                    if let Ok(mut s) = self.staleness.lock() {
                        *s = Some(staleness);
                    }
                    Ok(output)
                }
                other => Self::expect_ok(other),
            }
        })
        .await
    }
}

/// The error of a write whose session could not be opened: the write was
/// never sent, so it says "not applied" ([`Applied::No`]) whatever the
/// open's attempts may have done (an opened session applies nothing of
/// the write), and it is retryable exactly when the open's error is.
fn unsent(e: Error) -> Error {
    if e.applied() == Applied::No {
        return e;
    }
    let why = format!("the session could not be opened, so the write was not sent: {e}");
    if e.is_retryable() {
        Error::Unavailable(why)
    } else {
        Error::Rejected(why)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionSlot;

    /// Session rule 6 (`runtime::session`): each write acknowledges the
    /// writes below the lowest sequence number its client has not yet seen
    /// answered, and no further: the cluster drops the replies of
    /// acknowledged writes and refuses their retries, so acknowledging a
    /// write still in flight would turn its retry into a refusal although
    /// it may have been applied (thesis §6.3).
    #[test]
    fn a_write_acknowledges_only_below_the_lowest_unanswered_one() {
        let slot = SessionSlot::default();
        assert_eq!(slot.acked_below(), 1);
        let (a, b, c) = (slot.take(), slot.take(), slot.take());
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(slot.acked_below(), 1);
        slot.done(c);
        assert_eq!(slot.acked_below(), 1, "1 and 2 are still in flight");
        slot.done(a);
        assert_eq!(slot.acked_below(), 2, "2 is still in flight");
        slot.done(a);
        assert_eq!(slot.acked_below(), 2, "a number done twice changes nothing");
        slot.done(b);
        assert_eq!(slot.acked_below(), 4);
        assert_eq!(slot.take(), 4);
        assert_eq!(slot.acked_below(), 4);
    }
}
