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
//! - a call that returns before its frame was written reports `sent ==
//!   false`: it cannot have been applied;
//! - an answer whose `id` nobody waits for (the caller gave up) is dropped;
//!   a frame that does not decode ends the stream (the connection is then
//!   dropped by the caller, which retries on a fresh one);
//! - the reading task stops when the [`Mux`] is dropped, so a dropped
//!   client leaves no task and no connection behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::BytesMut;
use quinn::SendStream;
use tokio::sync::oneshot;
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

#[derive(Default)]
struct Waiting {
    next: u64,
    calls: HashMap<u64, oneshot::Sender<ClientResponse>>,
    /// Why the stream can no longer be used, once it cannot.
    closed: Option<String>,
}

/// The client end of a multiplexed request stream.
pub(crate) struct Mux {
    /// The stream, and the buffer requests are encoded into (its filled
    /// part handed to quinn without a copy, see `encode_frame_bytes`).
    send: tokio::sync::Mutex<(SendStream, BytesMut)>,
    waiting: Mutex<Waiting>,
    /// Dropped with the mux: stops the reading task.
    _stop: oneshot::Sender<()>,
}

/// Removes a call's entry if the caller stops waiting before its answer.
struct Entry<'a> {
    mux: &'a Mux,
    id: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.mux.waiting.lock() {
            w.calls.remove(&self.id);
        }
    }
}

impl Mux {
    /// Takes over the hello stream of a connection whose member accepted
    /// version 2, and starts the task reading its answers.
    pub fn start(send: SendStream, frames: FrameReader) -> Arc<Mux> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let mux = Arc::new(Mux {
            send: tokio::sync::Mutex::new((send, BytesMut::with_capacity(REQUEST_BUFFER))),
            waiting: Mutex::new(Waiting::default()),
            _stop: stop_tx,
        });
        tokio::spawn(read_answers(Arc::downgrade(&mux), frames, stop_rx));
        mux
    }

    /// Whether the stream failed or ended.
    pub fn is_closed(&self) -> bool {
        self.waiting.lock().map_or(true, |w| w.closed.is_some())
    }

    /// Sends `request` (with `meta`) and waits for its answer. `sent` is set
    /// once the request may have left.
    pub async fn call(
        &self,
        request: &ClientRequest,
        meta: Option<RequestMeta>,
        sent: &mut bool,
    ) -> Result<ClientResponse, Error> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = self
                .waiting
                .lock()
                .map_err(|_| Error::Transport("request stream poisoned".into()))?;
            if let Some(why) = &w.closed {
                return Err(Error::Transport(why.clone()));
            }
            let id = w.next;
            w.next += 1;
            w.calls.insert(id, tx);
            id
        };
        let entry = Entry { mux: self, id };
        let mut guard = self.send.lock().await;
        let (send, buf) = &mut *guard;
        if buf.capacity() - buf.len() < REQUEST_BUFFER / 16 {
            buf.reserve(REQUEST_BUFFER);
        }
        match meta {
            Some(meta) => encode_frame_bytes(&(id, request, meta), DEFAULT_MAX_FRAME_BYTES, buf),
            None => encode_frame_bytes(&(id, request), DEFAULT_MAX_FRAME_BYTES, buf),
        }
        .map_err(|e| match e {
            // Nothing was sent: the request cannot be carried.
            FrameError::TooLarge { len, max } => Error::Rejected(format!(
                "the request is {len} bytes, more than a frame carries ({max} bytes)"
            )),
            e => Error::Transport(e.to_string()),
        })?;
        *sent = true;
        crate::probe::mark("c.send");
        let written = send.write_chunk(buf.split().freeze()).await;
        drop(guard);
        if let Err(e) = written {
            let why = format!("request stream: {e}");
            self.close(&why);
            return Err(Error::Transport(why));
        }
        let answer = rx.await;
        crate::probe::mark("c.recv");
        drop(entry);
        answer.map_err(|_| {
            let why = self
                .waiting
                .lock()
                .ok()
                .and_then(|w| w.closed.clone())
                .unwrap_or_else(|| "request stream closed".into());
            Error::Transport(why)
        })
    }

    /// Delivers the answer to call `id`, if anyone still waits for it.
    fn deliver(&self, id: u64, response: ClientResponse) {
        let tx = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.calls.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(response);
        }
    }

    /// Marks the stream unusable and fails every call waiting on it.
    fn close(&self, why: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.closed.get_or_insert_with(|| why.to_string());
            // Dropping the senders fails the waiting calls.
            w.calls.clear();
        }
    }
}

/// Reads answers until the stream ends or fails, or the mux is dropped.
async fn read_answers(mux: Weak<Mux>, mut frames: FrameReader, mut stop: oneshot::Receiver<()>) {
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
