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
//!   dropped client leaves no task and no connection behind.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use quinn::SendStream;
use tokio::sync::{Notify, oneshot};
use tracing::debug;

use super::wire::{ClientRequest, ClientResponse, RequestMeta};
use crate::error::Error;
use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, FrameError, encode_frame_bytes};
use crate::transport::frame_reader::FrameReader;

/// Requests are encoded into buffers of this size (a new one once less
/// than a sixteenth of it is left): one allocation serves many requests.
const REQUEST_BUFFER: usize = 16 * 1024;

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

#[derive(Default)]
struct Waiting {
    next: u64,
    calls: HashMap<u64, oneshot::Sender<ClientResponse>, BuildHasherDefault<IdHasher>>,
    /// Request frames queued for the writer, whole.
    out: BytesMut,
    /// Why the stream can no longer be used, once it cannot.
    closed: Option<String>,
    /// The mux was dropped: the writer sends what is queued and finishes.
    dropped: bool,
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
        let tx = self.lock().calls.remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(response);
        }
    }

    /// Marks the stream unusable and fails every call waiting on it.
    fn close(&self, why: &str) {
        {
            let mut w = self.lock();
            w.closed.get_or_insert_with(|| why.to_string());
            // Dropping the senders fails the waiting calls.
            w.calls.clear();
            w.out.clear();
        }
        self.wake.notify_one();
    }
}

/// The client end of a multiplexed request stream.
pub(crate) struct Mux {
    shared: Arc<Shared>,
    /// Dropped with the mux: stops the reading task.
    _stop: oneshot::Sender<()>,
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
        })
    }

    /// Whether the stream failed or ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Sends `request` (with `meta`) and waits for its answer. `sent` is set
    /// once the request may leave (its frame is queued whole for the
    /// writer, which sends it even if this call is dropped).
    pub async fn call(
        &self,
        request: &ClientRequest,
        meta: Option<RequestMeta>,
        sent: &mut bool,
    ) -> Result<ClientResponse, Error> {
        let (tx, rx) = oneshot::channel();
        let (id, wake) = {
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
            w.next += 1;
            w.calls.insert(id, tx);
            (id, wake)
        };
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
        // Answered: `deliver` took the entry already.
        std::mem::forget(entry);
        answer.map_err(|_| {
            let why = self
                .shared
                .lock()
                .closed
                .clone()
                .unwrap_or_else(|| "request stream closed".into());
            Error::Transport(why)
        })
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

/// Reads answers until the stream ends or fails, or the mux is dropped.
async fn read_answers(
    mux: std::sync::Weak<Shared>,
    mut frames: FrameReader,
    mut stop: oneshot::Receiver<()>,
) {
    let why = loop {
        let body = tokio::select! {
            body = frames.next(DEFAULT_MAX_FRAME_BYTES) => body,
            _ = &mut stop => return,
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
        let cancelled =
            tokio::time::timeout(Duration::from_millis(200), mux.call(&big, None, &mut sent)).await;
        assert!(cancelled.is_err(), "answered: {cancelled:?}");
        assert!(sent, "the write may have left");
        let next = {
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut sent = false;
                mux.call(&ClientRequest::Status, None, &mut sent).await
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
}
