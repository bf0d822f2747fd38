//! One long-lived request stream per client connection, carrying many
//! requests at once (protocol version 2).
//!
//! Version 1 opens a QUIC bidirectional stream per request: one request
//! frame, one response frame, both ends finished. Opening, finishing and
//! acknowledging a stream per call costs both ends stream state, frames and
//! a task per stream. In version 2 the client's hello stream stays open
//! after the hello is answered: each request on it is a frame
//! `id:u64 request [meta]` (postcard values back to back, `meta` as in
//! version 1), each answer a frame `id:u64 response`. Answers come back in
//! completion order, matched to their callers by `id`.
//!
//! Negotiation: the client's hello says `version: 2` and leaves its side of
//! the stream open; a member that speaks version 2 answers the hello with
//! `Ok([2])` and keeps the stream. A member that only speaks version 1
//! answers `Ok([])` (and finishes its side): the client then finishes its
//! side too and opens a stream per request, as before. Every other kind of
//! stream (a request on its own stream) is served as before, whatever the
//! hello said.
//!
//! Invariants:
//! - every call ends: with the answer of its `id`, or with
//!   [`Error::Transport`] once the stream or the connection fails (every
//!   call waiting then fails at once), or when the caller stops waiting
//!   (its entry is removed);
//! - a call that returns before its frame was queued reports `sent ==
//!   false`: it cannot have been applied; once queued, the frame leaves
//!   whole, even if its caller stops waiting;
//! - the stream carries whole frames only: frames are written by one task
//!   of the mux's own ([`write_requests`]), never by a caller, because a
//!   caller can be cancelled (its deadline, the application's `timeout` or
//!   `select!`) in the middle of a write that QUIC flow control holds back,
//!   and the part of a frame left behind would run into the next one (the
//!   member would read the rest of the stream out of step; quinn's
//!   `write_chunk` is not cancellation-safe);
//! - an answer whose `id` nobody waits for (the caller gave up) is dropped;
//!   a frame that does not decode ends the stream (the connection is then
//!   dropped by the caller, which retries on a fresh connection);
//! - the reading and writing tasks stop when the [`Mux`] is dropped, so a
//!   dropped client leaves no task and no connection behind;
//! - when either task stops, however it stops (its end, a panic, or the
//!   runtime it ran on dropping it), the stream is closed ([`CloseOnExit`]):
//!   every call waiting fails with [`Error::Transport`] and no new call is
//!   queued, since nothing would time or answer it any more;
//! - a call with a deadline ends with [`Error::Timeout`] once its deadline
//!   passes unanswered, as under a `tokio::time::timeout_at` of its own
//!   (its entry is removed, a late answer dropped), as long as the reading
//!   task runs (and it closes the stream when it stops). One difference: an
//!   answer and the deadline both ready in one wake-up of the reader may
//!   end the call either way (`Timeout` says "maybe applied", which is
//!   true of either).
//!
//! # Deadlines
//!
//! A tokio timer registered and cancelled per call, and polled with it,
//! cost about 700 instructions per durable write on the client (callgrind,
//! issue 16, stop 51). So a call only carries its deadline, kept with its
//! entry; one timer per stream, owned by the reading task, is armed no
//! later than the earliest deadline of the calls waiting (`Waiting::armed`:
//! a call whose deadline is earlier than the one armed lowers it and wakes
//! the reader, which re-arms). When the timer fires the reader ends every
//! call past its deadline with a timeout and re-arms at the earliest
//! deadline left. Calls of a client mostly have the same timeout, so a
//! later call has a later deadline: the timer is re-armed about once per
//! timeout, not once per call. The deadlines are kept in arrival order
//! (`Waiting::by_arrival`; the rare one earlier than the last, a retry's,
//! in a small heap), so a fire looks only at the calls it ends and at
//! entries of calls already gone, each once: a member that stops
//! answering many calls costs O(calls), not O(calls) per fire.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use quinn::SendStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::wire::{ClientRequest, ClientResponse, RequestMeta};
use crate::error::Error;
use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, FrameError, encode_frame_bytes};
use crate::transport::frame_reader::FrameReader;

/// Requests are encoded into buffers of this size (a new one once less
/// than a sixteenth of it is left): one allocation serves many requests.
const REQUEST_BUFFER: usize = 16 * 1024;

/// Entries of ended calls the deadline queues may hold beyond twice the
/// calls waiting, before they are compacted.
const COMPACT_SLACK: usize = 64;

/// The hello version that asks for a multiplexed request stream.
pub const MUX_VERSION: u32 = 2;

/// The payload of the `Ok` answering a version-2 hello when the member
/// keeps the stream open for multiplexed requests.
pub const MUX_ACCEPTED: &[u8] = &[2];

/// Hashes a call id for [`Waiting::calls`]: one multiplication
/// (Fibonacci hashing) instead of SipHash, twice per call. Only the mux's
/// own sequential ids are ever inserted (an id from the member is only
/// looked up), so no peer can choose keys that collide.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; any bytes still hash (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What a waiting call is sent: its answer, or `None` once its deadline
/// passed (the reader's sweep).
type Answer = Option<ClientResponse>;

/// A call waiting for its answer.
struct Call {
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    calls: HashMap<u64, Call, BuildHasherDefault<IdHasher>>,
    /// The deadline the reader's timer is to be armed at: no later than
    /// the earliest deadline of `calls` (module doc, "Deadlines").
    armed: Option<Instant>,
    /// The deadlines of `calls` in arrival order, `(deadline, id)`, the
    /// deadlines never decreasing (module doc, "Deadlines"). The entry of
    /// a call that ended stays until the sweep reaches it or a compaction.
    by_arrival: VecDeque<(Instant, u64)>,
    /// The deadlines that came earlier than the last of `by_arrival` (a
    /// retry carrying an older call's deadline): a min-heap, same rules.
    early: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The reading task's waker, woken when a call lowers `armed`.
    reader: Option<Waker>,
    /// Request frames queued for the writer, whole.
    out: BytesMut,
    /// Why the stream can no longer be used, once it cannot.
    closed: Option<String>,
    /// The mux was dropped: the writer sends what is queued and finishes.
    dropped: bool,
    /// Entries `expire` looked at, all fires together (tests only).
    #[cfg(test)]
    scanned: usize,
}

impl Waiting {
    /// Enters call `id` (the next id), waiting until `deadline` if it has
    /// one; returns the reader's waker if it must re-arm its timer earlier.
    fn enter(
        &mut self,
        id: u64,
        tx: oneshot::Sender<Answer>,
        deadline: Option<Instant>,
    ) -> Option<Waker> {
        self.next = id + 1;
        self.calls.insert(id, Call { tx });
        if let Some(d) = deadline {
            if self.by_arrival.back().is_none_or(|&(last, _)| last <= d) {
                self.by_arrival.push_back((d, id));
            } else {
                self.early.push(Reverse((d, id)));
            }
            // Entries of ended calls are bounded by those waiting: each
            // compaction looks at as many entries as pushes since the last
            // one, at most (amortised O(1) a call).
            let bound = 2 * self.calls.len() + COMPACT_SLACK;
            let calls = &self.calls;
            if self.by_arrival.len() > bound {
                self.by_arrival.retain(|(_, id)| calls.contains_key(id));
            }
            if self.early.len() > bound {
                self.early.retain(|Reverse((_, id))| calls.contains_key(id));
            }
        }
        // The reader's timer must fire by this call's deadline.
        match deadline {
            Some(d) if self.armed.is_none_or(|a| d < a) => {
                self.armed = Some(d);
                self.reader.clone()
            }
            _ => None,
        }
    }

    /// Settles a deadline queue's front entry `(d, id)` at `now`: a call
    /// past its deadline is taken out (its sender into `expired`). Whether
    /// the entry is done with (to be popped): `false` only for a call
    /// still waiting, where the queue's scan stops.
    fn settle(
        &mut self,
        d: Instant,
        id: u64,
        now: Instant,
        expired: &mut Vec<oneshot::Sender<Answer>>,
    ) -> bool {
        #[cfg(test)]
        {
            self.scanned += 1;
        }
        if d <= now {
            if let Some(call) = self.calls.remove(&id) {
                expired.push(call.tx);
            }
            true
        } else {
            !self.calls.contains_key(&id)
        }
    }
}

/// What the callers, the reader and the writer share.
#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Wakes the writer: frames were queued, or the mux is going away.
    wake: Notify,
}

impl Shared {
    /// The state, even if a panicking thread poisoned its lock (every
    /// change to it is a single step that leaves it consistent).
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers the answer to call `id`, if anyone still waits for it.
    fn deliver(&self, id: u64, response: ClientResponse) {
        let call = self.lock().calls.remove(&id);
        if let Some(call) = call {
            let _ = call.tx.send(Some(response));
        }
    }

    /// Ends every call past its deadline at `now` with a timeout, and
    /// returns the earliest deadline left (the timer's next arming). Looks
    /// at the deadline queues from their fronts only: each entry is popped
    /// once, so a stalled member's N calls cost O(N) in all, not O(N) a
    /// fire; the timeouts are sent after the lock is released.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut guard = self.lock();
            let w = &mut *guard;
            while let Some(&(d, id)) = w.by_arrival.front()
                && w.settle(d, id, now, &mut expired)
            {
                w.by_arrival.pop_front();
            }
            while let Some(&Reverse((d, id))) = w.early.peek()
                && w.settle(d, id, now, &mut expired)
            {
                w.early.pop();
            }
            let first = w.by_arrival.front().map(|&(d, _)| d);
            let early = w.early.peek().map(|&Reverse((d, _))| d);
            let next = match (first, early) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            w.armed = next;
            next
        };
        for tx in expired {
            let _ = tx.send(None);
        }
        next
    }

    /// Marks the stream unusable and fails every call waiting on it.
    fn close(&self, why: &str) {
        {
            let mut w = self.lock();
            w.closed.get_or_insert_with(|| why.to_string());
            // Dropping the senders fails the waiting calls.
            w.calls.clear();
            w.by_arrival.clear();
            w.early.clear();
            w.out.clear();
        }
        self.wake.notify_one();
    }
}

/// Closes the stream when the task holding it stops, however it stops: at
/// its end, by a panic, or when the runtime it ran on drops it (a client
/// connected in one runtime and used from another after the first is
/// gone). Without it, calls waiting on a stream whose reader is gone would
/// wait for ever: the reader is what times them (module doc, "Deadlines").
struct CloseOnExit {
    shared: Weak<Shared>,
    why: &'static str,
}

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            // A no-op if the task closed it already (the first reason
            // stays).
            shared.close(self.why);
        }
    }
}

/// The client end of a multiplexed request stream.
pub(crate) struct Mux {
    shared: Arc<Shared>,
    /// Dropped with the mux: stops the reading task.
    _stop: oneshot::Sender<()>,
    /// The runtime its tasks run on: only they time the calls, so a caller
    /// on another runtime (which may be kept but no longer driven) times
    /// its call itself ([`Mux::runs_here`]).
    runtime: tokio::runtime::Id,
}

/// Removes a call's entry if the caller stops waiting before its answer.
struct Entry<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.shared.lock().calls.remove(&self.id);
    }
}

impl Mux {
    /// Takes over the hello stream of a connection whose member accepted
    /// version 2, and starts the tasks writing its requests and reading its
    /// answers.
    pub fn start(send: SendStream, frames: FrameReader) -> Arc<Mux> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        tokio::spawn(write_requests(shared.clone(), send));
        tokio::spawn(read_answers(Arc::downgrade(&shared), frames, stop_rx));
        Arc::new(Mux {
            shared,
            _stop: stop_tx,
            runtime: tokio::runtime::Handle::current().id(),
        })
    }

    /// Whether the caller runs on the runtime of the stream's tasks, whose
    /// deadline sweep then times its call: a caller on another runtime
    /// must time its call itself (stop 52: a current-thread runtime kept
    /// alive but no longer driven never runs the tasks again, so nothing
    /// closes the stream and a call waited past its deadline for ever).
    pub fn runs_here(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.runtime)
    }

    /// Whether the stream failed or ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Sends `request` (with `meta`) and waits for its answer, until
    /// `deadline` if there is one (then [`Error::Timeout`]). `sent` is set
    /// once the request may leave (its frame is queued whole for the
    /// writer, which sends it even if this call is dropped).
    pub async fn call(
        &self,
        request: &ClientRequest,
        meta: Option<RequestMeta>,
        sent: &mut bool,
        deadline: Option<Instant>,
    ) -> Result<ClientResponse, Error> {
        let (tx, rx) = oneshot::channel();
        let (id, wake, rearm) = {
            let mut w = self.shared.lock();
            if let Some(why) = &w.closed {
                return Err(Error::Transport(why.clone()));
            }
            let id = w.next;
            let buf = &mut w.out;
            let wake = buf.is_empty();
            if buf.capacity() - buf.len() < REQUEST_BUFFER / 16 {
                buf.reserve(REQUEST_BUFFER);
            }
            // On an error nothing is queued (the frame is cut back).
            match meta {
                Some(meta) => {
                    encode_frame_bytes(&(id, request, meta), DEFAULT_MAX_FRAME_BYTES, buf)
                }
                None => encode_frame_bytes(&(id, request), DEFAULT_MAX_FRAME_BYTES, buf),
            }
            .map_err(|e| match e {
                // Nothing was sent: the request cannot be carried.
                FrameError::TooLarge { len, max } => Error::Rejected(format!(
                    "the request is {len} bytes, more than a frame carries ({max} bytes)"
                )),
                e => Error::Transport(e.to_string()),
            })?;
            let rearm = w.enter(id, tx, deadline);
            (id, wake, rearm)
        };
        if let Some(reader) = rearm {
            reader.wake();
        }
        let entry = Entry {
            shared: &self.shared,
            id,
        };
        *sent = true;
        crate::probe::mark("c.send");
        if wake {
            // Frames queued before this one already woke the writer.
            self.shared.wake.notify_one();
        }
        let answer = rx.await;
        crate::probe::mark("c.recv");
        // Answered or expired: `deliver` or `expire` took the entry already.
        std::mem::forget(entry);
        match answer {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(Error::Timeout),
            Err(_) => {
                let why = self
                    .shared
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "request stream closed".into());
                Err(Error::Transport(why))
            }
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.shared.lock().dropped = true;
        self.shared.wake.notify_one();
    }
}

/// Writes the queued request frames, every frame queued at once in one
/// write, until the stream fails or the mux is dropped (then it sends what
/// is queued and finishes the stream). A failed write closes the mux.
async fn write_requests(shared: Arc<Shared>, mut send: SendStream) {
    let _close = CloseOnExit {
        shared: Arc::downgrade(&shared),
        why: "the request stream's writing task stopped",
    };
    loop {
        let (chunk, closed, dropped) = {
            let mut w = shared.lock();
            (w.out.split().freeze(), w.closed.is_some(), w.dropped)
        };
        if closed {
            return;
        }
        if !chunk.is_empty() {
            crate::probe::mark("c.write");
            // Handed over as it is (no copy): quinn keeps it until acked.
            if let Err(e) = send.write_chunk(chunk).await {
                shared.close(&format!("request stream: {e}"));
                return;
            }
            // More may have been queued while this one was written.
            continue;
        }
        if dropped {
            let _ = send.finish();
            return;
        }
        // A wake-up between the check above and this wait is not lost: it
        // leaves a permit.
        shared.wake.notified().await;
    }
}

/// The reader's deadline timer (module doc, "Deadlines").
struct Sweep {
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is armed at, if any.
    at: Option<Instant>,
    /// `sleep` was reset and not polled since (its waker is not this
    /// task's yet).
    fresh: bool,
}

impl Sweep {
    fn new() -> Self {
        Sweep {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            at: None,
            fresh: false,
        }
    }

    /// Never ready: re-arms at `Waiting::armed` when a call lowered it,
    /// registers the task's waker for that, and expires the calls past
    /// their deadline when the timer fires. The timer is polled only when
    /// just re-armed or elapsed (a poll of a timer costs as much as the
    /// rest of the reader's round).
    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
        {
            let mut w = shared.lock();
            if w.reader.as_ref().is_none_or(|r| !r.will_wake(cx.waker())) {
                w.reader = Some(cx.waker().clone());
            }
            if w.armed != self.at {
                self.at = w.armed;
                if let Some(at) = self.at {
                    self.sleep.as_mut().reset(at);
                    self.fresh = true;
                }
            }
        }
        while self.at.is_some() && (self.fresh || self.sleep.is_elapsed()) {
            self.fresh = false;
            if self.sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            self.at = shared.expire(Instant::now());
            if let Some(at) = self.at {
                self.sleep.as_mut().reset(at);
                self.fresh = true;
            }
        }
        Poll::Pending
    }
}

/// Reads answers until the stream ends or fails, or the mux is dropped;
/// ends the calls past their deadline (module doc, "Deadlines").
async fn read_answers(mux: Weak<Shared>, mut frames: FrameReader, mut stop: oneshot::Receiver<()>) {
    let _close = CloseOnExit {
        shared: mux.clone(),
        why: "the request stream's reading task stopped",
    };
    let mut sweep = Sweep::new();
    let why = loop {
        let deadlines = std::future::poll_fn(|cx| match mux.upgrade() {
            Some(m) => sweep.poll(cx, &m),
            None => Poll::Ready(()),
        });
        let body = tokio::select! {
            body = frames.next(DEFAULT_MAX_FRAME_BYTES) => body,
            _ = &mut stop => return,
            () = deadlines => return,
        };
        crate::probe::mark("c.frame_in");
        let body = match body {
            Ok(body) => body,
            Err(e) => break format!("request stream: {e}"),
        };
        let Ok((id, response)) = postcard::from_bytes::<(u64, ClientResponse)>(&body) else {
            break "request stream: an answer does not decode".to_string();
        };
        match mux.upgrade() {
            Some(m) => m.deliver(id, response),
            None => return,
        }
    };
    debug!(reason = %why, "multiplexed request stream ended");
    if let Some(m) = mux.upgrade() {
        m.close(&why);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quinn::{Endpoint, VarInt};

    use super::*;
    use crate::client::wire::{RequestId, SessionId, SessionRef};
    use crate::tls::dev_cluster;
    use crate::transport::quic::{connect_client, quic_server_config};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Found by review (stop 41): a call cancelled while QUIC flow control
    /// held its frame back (the member reads no further past its window)
    /// left part of the frame on the stream, and the next call's frame ran
    /// into it: the member read the rest of the stream out of step (a
    /// spliced command, or calls that never end). Now a frame, once
    /// queued, leaves whole, whatever became of its caller, and the next
    /// one follows it.
    #[tokio::test]
    async fn a_call_cancelled_while_its_frame_is_held_back_leaves_the_stream_whole() {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client_id = ca.issue_client("app").expect("client cert");
        let mut config = quic_server_config(&ids[0]).expect("server config");
        let mut transport = quinn::TransportConfig::default();
        // A 64 KiB command cannot pass before the member reads.
        transport.stream_receive_window(VarInt::from_u32(4096));
        config.transport_config(Arc::new(transport));
        let server =
            Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let addr = server.local_addr().expect("addr");
        let (read_tx, read_rx) = oneshot::channel::<()>();
        let member = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            let (_send, recv) = conn.accept_bi().await.expect("stream");
            // Reads nothing until told to.
            let _ = read_rx.await;
            let mut frames = FrameReader::new(recv);
            let mut got = Vec::new();
            for _ in 0..2 {
                let body = frames
                    .next(DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .expect("a whole frame");
                let (id, rest) = postcard::take_from_bytes::<u64>(&body).expect("an id");
                let (request, _) = RequestId::decode_request(rest).expect("a request");
                got.push((id, request));
            }
            (got, conn)
        });
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (send, recv) = conn.open_bi().await.expect("stream");
        let mux = Mux::start(send, FrameReader::new(recv));
        let big = ClientRequest::Write {
            session: SessionRef {
                id: SessionId(7),
                seq: 1,
                acked_below: 1,
            },
            command: vec![7; 64 * 1024],
        };
        let mut sent = false;
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            mux.call(&big, None, &mut sent, None),
        )
        .await;
        assert!(cancelled.is_err(), "answered: {cancelled:?}");
        assert!(sent, "the write may have left");
        let next = {
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut sent = false;
                mux.call(&ClientRequest::Status, None, &mut sent, None)
                    .await
            })
        };
        let _ = read_tx.send(());
        let (got, _conn) = tokio::time::timeout(DEADLINE, member)
            .await
            .expect("the member reads both frames whole in time")
            .expect("member task");
        assert!(
            matches!(&got[0], (0, ClientRequest::Write { command, .. }) if command.len() == 64 * 1024),
            "first frame: {:?}",
            got[0].0
        );
        assert!(
            matches!(got[1], (1, ClientRequest::Status)),
            "second frame: {:?}",
            got[1].0
        );
        next.abort();
    }

    /// The stream's deadline sweep (module doc, "Deadlines"): a call ends
    /// with `Timeout` at its own deadline even when it was queued after a
    /// call with a later one (the reader re-arms earlier), the later call
    /// keeps waiting and takes its answer, and a call without a deadline
    /// is never expired.
    #[tokio::test]
    async fn each_call_times_out_at_its_own_deadline_and_no_earlier() {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client_id = ca.issue_client("app").expect("client cert");
        let config = quic_server_config(&ids[0]).expect("server config");
        let server =
            Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let addr = server.local_addr().expect("addr");
        let (answer_tx, answer_rx) = oneshot::channel::<()>();
        let member = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            let (mut send, recv) = conn.accept_bi().await.expect("stream");
            let mut frames = FrameReader::new(recv);
            let mut ids = Vec::new();
            for _ in 0..3 {
                let body = frames
                    .next(DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .expect("a whole frame");
                let (id, _) = postcard::take_from_bytes::<u64>(&body).expect("an id");
                ids.push(id);
            }
            // Answers the first call (the late deadline) when told, and
            // the one without a deadline.
            let _ = answer_rx.await;
            let mut buf = BytesMut::new();
            for id in [ids[0], ids[2]] {
                encode_frame_bytes(
                    &(id, ClientResponse::Ok(vec![1])),
                    DEFAULT_MAX_FRAME_BYTES,
                    &mut buf,
                )
                .expect("encodes");
            }
            send.write_all(&buf).await.expect("answers written");
            (ids, conn, send)
        });
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (send, recv) = conn.open_bi().await.expect("stream");
        let mux = Mux::start(send, FrameReader::new(recv));
        let start = Instant::now();
        let call = |deadline: Option<Instant>| {
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut sent = false;
                let r = mux
                    .call(&ClientRequest::Status, None, &mut sent, deadline)
                    .await;
                (r, start.elapsed())
            })
        };
        let late = call(Some(start + Duration::from_secs(8)));
        // Queued after the late one: its frame is the second.
        tokio::task::yield_now().await;
        let early = call(Some(start + Duration::from_millis(300)));
        tokio::task::yield_now().await;
        let never = call(None);
        let (r, took) = tokio::time::timeout(DEADLINE, early)
            .await
            .expect("the early call ends")
            .expect("task");
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(4),
            "the early call ended after {took:?}, not at its own deadline (300 ms)"
        );
        assert!(
            !late.is_finished(),
            "the late call ended before its deadline"
        );
        assert!(!never.is_finished(), "the call without a deadline ended");
        let _ = answer_tx.send(());
        let (r, took) = tokio::time::timeout(DEADLINE, late)
            .await
            .expect("the late call ends")
            .expect("task");
        assert!(
            matches!(r, Ok(ClientResponse::Ok(ref v)) if v == &[1]),
            "{r:?} after {took:?}"
        );
        let (r, _) = tokio::time::timeout(DEADLINE, never)
            .await
            .expect("the call without a deadline ends")
            .expect("task");
        assert!(matches!(r, Ok(ClientResponse::Ok(_))), "{r:?}");
        let (ids, _conn, _send) = member.await.expect("member");
        assert_eq!(ids, vec![0, 1, 2]);
    }
    /// Found by review (stop 51): the sweep must re-arm after it fires. A
    /// call left waiting after the timer fired for an earlier one (queued
    /// after it, with a later deadline: it never lowered the timer) ends
    /// with `Timeout` at its own deadline, not never (a sweep that stopped
    /// after its first fire left it waiting for ever on a silent member).
    #[tokio::test]
    async fn the_sweep_re_arms_for_calls_left_after_it_fired() {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client_id = ca.issue_client("app").expect("client cert");
        let config = quic_server_config(&ids[0]).expect("server config");
        let server =
            Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let addr = server.local_addr().expect("addr");
        // A member that reads both requests and answers neither.
        let member = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            let (send, recv) = conn.accept_bi().await.expect("stream");
            let mut frames = FrameReader::new(recv);
            for _ in 0..2 {
                frames
                    .next(DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .expect("a whole frame");
            }
            (conn, send, frames)
        });
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (send, recv) = conn.open_bi().await.expect("stream");
        let mux = Mux::start(send, FrameReader::new(recv));
        let start = Instant::now();
        let call = |deadline: Instant| {
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut sent = false;
                let r = mux
                    .call(&ClientRequest::Status, None, &mut sent, Some(deadline))
                    .await;
                (r, start.elapsed())
            })
        };
        let early = call(start + Duration::from_millis(200));
        tokio::task::yield_now().await;
        let late_at = Duration::from_millis(1200);
        let late = call(start + late_at);
        let (r, took) = tokio::time::timeout(DEADLINE, early)
            .await
            .expect("the early call ends")
            .expect("task");
        assert!(matches!(r, Err(Error::Timeout)), "{r:?} after {took:?}");
        assert!(
            !late.is_finished(),
            "the late call ended with the early one"
        );
        // Both requests reached the member, which keeps the stream open.
        let _member = tokio::time::timeout(DEADLINE, member)
            .await
            .expect("the member reads both requests")
            .expect("member task");
        let (r, took) = tokio::time::timeout(DEADLINE, late)
            .await
            .expect("the late call, left waiting after the sweep fired, never ended")
            .expect("task");
        assert!(matches!(r, Err(Error::Timeout)), "{r:?} after {took:?}");
        assert!(
            took >= late_at,
            "the late call ended after {took:?}, before its deadline ({late_at:?})"
        );
    }

    /// Found by review (stop 51): every fire of the sweep looked at every
    /// call waiting, under the stream's lock, so a member that stopped
    /// answering N calls with deadlines spread over the timeout cost N
    /// fires of N entries each (50k calls: 50M entries a second, the lock
    /// held most of that time, exactly when the backlog is answered). The
    /// sweep now looks at each call about once, O(N) in all.
    #[test]
    fn expiring_many_waiting_calls_looks_at_each_about_once() {
        const N: u64 = 5_000;
        let shared = Shared::default();
        let base = Instant::now();
        let mut answers = Vec::new();
        {
            let mut w = shared.lock();
            for i in 0..N {
                let (tx, rx) = oneshot::channel();
                let id = w.next;
                let _ = w.enter(id, tx, Some(base + Duration::from_millis(i + 1)));
                answers.push(rx);
            }
        }
        // The sweep: each fire at the deadline it was armed at.
        let mut fires = 0;
        let mut at = shared.lock().armed;
        while let Some(now) = at {
            fires += 1;
            assert!(fires <= N, "more fires than deadlines");
            at = shared.expire(now);
        }
        assert_eq!(fires, N, "one fire per deadline");
        for mut rx in answers {
            assert!(matches!(rx.try_recv(), Ok(None)), "a call did not expire");
        }
        let scanned = shared.lock().scanned;
        assert!(
            scanned <= 4 * N as usize,
            "{N} calls expired one per fire looked at {scanned} entries"
        );
    }
}
