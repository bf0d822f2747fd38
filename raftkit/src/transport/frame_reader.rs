//! Reading length-prefixed frames ([`super::frame`]) from a QUIC stream
//! by chunks: the bytes quinn received are taken as they are
//! (`RecvStream::read_chunk`, reference-counted slices of the decrypted
//! packets), and a frame that lies within one chunk is handed out as a
//! slice of it, without a copy.
//!
//! `read_frame_body` on a stream reads the length prefix and then the body
//! through `AsyncRead`: two calls into quinn per frame (each locks the
//! connection) and a copy of every byte into a fresh buffer. Here one call
//! takes whatever arrived, which at load is many frames (the requests of
//! many clients, the appends of one round), and only a frame split between
//! two chunks is copied (into one buffer of its length).
//!
//! # Invariants
//!
//! 1. As [`super::frame`]: no frame whose prefix says more than the cap is
//!    ever buffered whole; the prefix is checked as soon as its 4 bytes
//!    are here, and [`FrameError::TooLarge`] is returned before anything
//!    more is read. At most one frame plus one received chunk is buffered
//!    (and what holds them is bounded, invariant 6).
//! 2. Network bytes are never trusted: a stream that ends inside a frame
//!    is [`FrameError::Closed`], like one that ends between frames; nothing
//!    here indexes or unwraps on received bytes.
//! 3. [`FrameReader::next`] is cancel-safe: everything received is kept in
//!    the reader until a frame is complete, so a `select!` that drops the
//!    call loses nothing (quinn's `read_chunk` is itself cancel-safe).
//! 4. Frames come out in stream order, each exactly once, whatever the
//!    chunk boundaries (the tests cut streams at random points).
//! 5. A caller may learn a frame's length before its body is read
//!    ([`FrameReader::next_len`], to take room for it first), and may
//!    discard a frame ([`FrameReader::skip_frame`]): only the first bytes
//!    of its body are kept (its request id), the rest is dropped as it
//!    arrives, never buffered.
//! 6. Received bytes cost about what they count (the intake budget counts
//!    a frame's length): a chunk is a slice of the packet it came in, and
//!    a peer sending a frame a byte per packet would make every counted
//!    byte hold a packet. At most [`MAX_CHUNKS`] chunks are kept as they
//!    arrived. When one more arrives, the kept chunks' bytes are moved
//!    into one buffer reserved for the whole frame in progress (the length
//!    its prefix says, at most the frame cap, and at most a stream's
//!    receive window past the bytes received, [`RESERVE_AHEAD`]: a
//!    sender's claim alone reserves nothing more; a larger frame's buffer
//!    grows as its bytes arrive), and its remaining bytes are
//!    copied there as they arrive; the frame is then handed out as that
//!    buffer, without another copy: each of its bytes is copied once, into
//!    one allocation (as a frame spread over a few chunks is copied once
//!    when it is taken). The bytes after it are kept as chunks again, so
//!    the frames that follow within a chunk are still slices of it (the
//!    hot path).

use std::collections::VecDeque;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use quinn::RecvStream;

use super::frame::FrameError;

/// Length of the length prefix.
const PREFIX: usize = 4;

/// The most received chunks a [`FrameBuffer`] keeps as they arrived
/// (invariant 6): a frame within a few packets is sliced or copied from
/// them as before; bytes arriving past this many are copied.
const MAX_CHUNKS: usize = 32;

/// The most bytes reserved for a frame being copied beyond those already
/// received (invariant 6): one stream's receive window, the most a sender
/// may have in flight on it. A 1 MiB batch (the default) fits, so it is
/// copied once into one allocation; a frame claiming more only gets room
/// as its bytes arrive.
const RESERVE_AHEAD: usize = super::quic_tuning::STREAM_RECEIVE_WINDOW as usize;

/// The bytes of a skipped frame's body that are kept: enough for a
/// request id (a postcard `u64`, at most 10 bytes).
pub(crate) const HEAD: usize = 10;

/// The received bytes of one stream not yet handed out as frames, in
/// order: `copied`, then `chunks`. Pure (no I/O): [`FrameReader`] feeds it
/// from a stream, the tests from arbitrary cuts of a byte string.
#[derive(Debug, Default)]
pub(crate) struct FrameBuffer {
    /// The first buffered bytes, copied (invariant 6): once [`MAX_CHUNKS`]
    /// chunks were kept, they and the rest of the frame in progress are
    /// copied here, into one allocation reserved for that frame, which is
    /// then handed out without another copy. Empty (and unallocated)
    /// otherwise.
    copied: BytesMut,
    /// Bytes of the frame in progress still to come into `copied` (room
    /// reserved for them): pushed bytes fill it first. Non-zero only while
    /// `chunks` is empty.
    room: usize,
    /// Received chunks kept as they arrived (slices of quinn's packets),
    /// after `copied`, at most [`MAX_CHUNKS`] of them.
    chunks: VecDeque<Bytes>,
    /// Sum of the lengths of `copied` and `chunks`.
    len: usize,
    /// Bytes of a skipped frame still to come: dropped as they arrive.
    skip: usize,
}

impl FrameBuffer {
    /// Appends received bytes. `max` is the frame cap of the reads: it
    /// bounds the room reserved for a frame that is copied (invariant 6).
    pub(crate) fn push(&mut self, mut chunk: Bytes, max: usize) {
        if self.skip > 0 {
            let n = self.skip.min(chunk.len());
            chunk.advance(n);
            self.skip -= n;
        }
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        if self.room > 0 {
            // The frame being copied, into the room reserved for it; the
            // bytes after it are kept as they arrived.
            let k = self.room.min(chunk.len());
            self.copied
                .extend_from_slice(chunk.get(..k).unwrap_or_default());
            self.room -= k;
            chunk.advance(k);
            if chunk.is_empty() {
                return;
            }
        }
        if self.chunks.len() < MAX_CHUNKS {
            self.chunks.push_back(chunk);
        } else {
            self.copy_in(chunk, max);
        }
    }

    /// Moves the kept chunks and `chunk` into `copied` (invariant 6), with
    /// room for the rest of the frame in progress: the first frame, which
    /// the caller could not take yet (its length from its prefix, at most
    /// `max`). If the caller left complete frames here, or `copied` holds
    /// some already, the bytes are appended as they are (correct, not the
    /// hot path: [`FrameReader`] takes every complete frame before reading).
    fn copy_in(&mut self, chunk: Bytes, max: usize) {
        let mut want = self.len;
        if self.copied.is_empty() {
            if let Ok(Some(body_len)) = self.peek_len(max) {
                // Room for the whole frame, but never more than a stream's
                // receive window past the bytes here: a sender that claims a
                // large frame and stalls holds about what it sent (as in
                // `super::frame`), not what its prefix claims. A frame
                // larger than that grows its buffer as it arrives.
                let ahead = self.len.saturating_add(RESERVE_AHEAD);
                want = want.max(PREFIX.saturating_add(body_len).min(ahead));
            }
            self.copied = BytesMut::with_capacity(want);
        } else {
            self.copied.reserve(want - self.copied.len());
        }
        for kept in self.chunks.drain(..) {
            self.copied.extend_from_slice(&kept);
        }
        self.copied.extend_from_slice(&chunk);
        self.room = want - self.len;
    }

    /// How many bytes are buffered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The next frame's body if it is complete, `Ok(None)` if more bytes
    /// are needed, [`FrameError::TooLarge`] if its prefix exceeds `max`
    /// (the buffer is then left as it was: the caller drops the stream).
    pub(crate) fn take_frame(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        let Some(body_len) = self.peek_len(max)? else {
            return Ok(None);
        };
        if self.len - PREFIX < body_len {
            return Ok(None);
        }
        self.consume(PREFIX);
        Ok(Some(self.take(body_len)))
    }

    /// The next frame's body length once its prefix is here (`Ok(None)`
    /// before), [`FrameError::TooLarge`] if it exceeds `max`. Nothing is
    /// consumed.
    pub(crate) fn peek_len(&self, max: usize) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.peek_prefix() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix);
        let body_len = usize::try_from(len).unwrap_or(usize::MAX);
        if body_len > max {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max,
            });
        }
        Ok(Some(body_len))
    }

    /// The first `n` bytes of the next frame's body (all of it if
    /// shorter) once they are here (`Ok(None)` before), as
    /// [`Self::peek_len`]; nothing is consumed: what a caller reads of a
    /// frame's header before it takes the frame ([`FrameReader::next_head`]).
    pub(crate) fn peek_head(&self, max: usize, n: usize) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(body_len) = self.peek_len(max)? else {
            return Ok(None);
        };
        Ok(self.peek_at(PREFIX, body_len.min(n)))
    }

    /// Discards the next frame once its first [`HEAD`] body bytes (or its
    /// whole body, if shorter) are here, returning them (`Ok(None)`
    /// before, nothing consumed); the rest of its body is dropped now and
    /// as it arrives.
    pub(crate) fn skip_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(body_len) = self.peek_len(max)? else {
            return Ok(None);
        };
        let head_len = body_len.min(HEAD);
        if self.len - PREFIX < head_len {
            return Ok(None);
        }
        self.consume(PREFIX);
        let head = self.take(head_len).to_vec();
        let rest = body_len - head_len;
        let here = rest.min(self.len);
        self.consume(here);
        self.skip = rest - here;
        Ok(Some(head))
    }

    /// The first 4 buffered bytes, if there are as many.
    fn peek_prefix(&self) -> Option<[u8; PREFIX]> {
        if self.len < PREFIX {
            return None;
        }
        let mut prefix = [0u8; PREFIX];
        let mut filled = 0;
        let pieces = self.chunks.iter().map(|c| &c[..]);
        for chunk in std::iter::once(&self.copied[..]).chain(pieces) {
            let n = (PREFIX - filled).min(chunk.len());
            prefix[filled..filled + n].copy_from_slice(chunk.get(..n)?);
            filled += n;
            if filled == PREFIX {
                return Some(prefix);
            }
        }
        None
    }

    /// A copy of the `n` buffered bytes from `offset`, if they are here.
    fn peek_at(&self, offset: usize, n: usize) -> Option<Vec<u8>> {
        if self.len < offset.saturating_add(n) {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut skip = offset;
        let pieces = self.chunks.iter().map(|c| &c[..]);
        for chunk in std::iter::once(&self.copied[..]).chain(pieces) {
            if out.len() == n {
                break;
            }
            if skip >= chunk.len() {
                skip -= chunk.len();
                continue;
            }
            let rest = chunk.get(skip..).unwrap_or_default();
            skip = 0;
            let k = (n - out.len()).min(rest.len());
            out.extend_from_slice(rest.get(..k).unwrap_or_default());
        }
        (out.len() == n).then_some(out)
    }

    /// Drops the first `n` buffered bytes (`n <= self.len`).
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        if !self.copied.is_empty() {
            let k = n.min(self.copied.len());
            self.copied.advance(k);
            n -= k;
            self.release_copied();
        }
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// Takes the first `n` buffered bytes (`n <= self.len`): split off
    /// `copied` when it holds them all (the frame copied there), a slice
    /// of the first chunk when it holds them all, else a copy.
    fn take(&mut self, n: usize) -> Bytes {
        if !self.copied.is_empty() && self.copied.len() >= n {
            // Copied already, into its own allocation: handed out as it is.
            self.len -= n;
            let body = self.copied.split_to(n).freeze();
            self.release_copied();
            return body;
        }
        if self.copied.is_empty()
            && let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let body = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= n;
            return body;
        }
        let mut body = BytesMut::with_capacity(n);
        let k = n.min(self.copied.len());
        body.extend_from_slice(self.copied.get(..k).unwrap_or_default());
        self.copied.advance(k);
        self.release_copied();
        let mut left = n - k;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = left.min(front.len());
            body.extend_from_slice(&front.split_to(k));
            if front.is_empty() {
                self.chunks.pop_front();
            }
            left -= k;
        }
        self.len -= n - left;
        body.freeze()
    }

    /// Frees `copied`'s allocation once it is all handed out (the frame
    /// taken holds it alone): an idle stream keeps no capacity, and the
    /// bytes that follow are kept as chunks again.
    fn release_copied(&mut self) {
        if self.copied.is_empty() {
            // Replaced even without capacity left: an emptied `BytesMut`
            // still holds a reference to the allocation it was split from.
            self.room = 0;
            self.copied = BytesMut::new();
        }
    }
}

/// Reads frames from one QUIC receive stream by chunks (module doc).
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: FrameBuffer,
    /// The stream finished (no more chunks will come).
    finished: bool,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub(crate) fn new(recv: RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: FrameBuffer::default(),
            finished: false,
        }
    }

    /// The next frame's body, at most `max` bytes. A stream that ends
    /// before or inside a frame yields [`FrameError::Closed`]; a stream
    /// error [`FrameError::Io`]. Cancel-safe (module doc).
    pub(crate) async fn next(&mut self, max: usize) -> Result<Bytes, FrameError> {
        loop {
            if let Some(body) = self.buf.take_frame(max)? {
                return Ok(body);
            }
            self.read_more(max).await?;
        }
    }

    /// The next frame's body length, once its prefix is here; the frame
    /// stays in the reader ([`Self::next`] or [`Self::skip_frame`] takes
    /// it). [`FrameError::TooLarge`] past `max`. Cancel-safe.
    pub(crate) async fn next_len(&mut self, max: usize) -> Result<usize, FrameError> {
        loop {
            if let Some(len) = self.buf.peek_len(max)? {
                return Ok(len);
            }
            self.read_more(max).await?;
        }
    }

    /// The first `n` bytes of the next frame's body (all of it if
    /// shorter), once they are here; the frame stays in the reader
    /// ([`Self::next`] takes it). Cancel-safe.
    pub(crate) async fn next_head(&mut self, max: usize, n: usize) -> Result<Vec<u8>, FrameError> {
        loop {
            if let Some(head) = self.buf.peek_head(max, n)? {
                return Ok(head);
            }
            self.read_more(max).await?;
        }
    }

    /// The next frame's body as [`Self::next`], unless it is incomplete and
    /// no byte arrives for `stall`: then `Ok(None)`, what arrived kept (a
    /// later call resumes). However slowly its bytes come, a frame whose
    /// bytes keep coming is read whole. Cancel-safe.
    pub(crate) async fn next_unless_stalled(
        &mut self,
        max: usize,
        stall: std::time::Duration,
    ) -> Result<Option<Bytes>, FrameError> {
        let mut last = tokio::time::Instant::now();
        self.next_unless_stalled_since(max, stall, &mut last).await
    }

    /// [`Self::next_unless_stalled`], the stall measured from `last`, which
    /// is moved to the arrival of every chunk: a caller that polls this
    /// among other work (and so calls it again and again) keeps one
    /// measure across its calls. Cancel-safe.
    pub(crate) async fn next_unless_stalled_since(
        &mut self,
        max: usize,
        stall: std::time::Duration,
        last: &mut tokio::time::Instant,
    ) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(body) = self.buf.take_frame(max)? {
                return Ok(Some(body));
            }
            match tokio::time::timeout_at(*last + stall, self.read_more(max)).await {
                Ok(read) => {
                    read?;
                    *last = tokio::time::Instant::now();
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Tells the sender that nothing more of the stream will be read
    /// (`STOP_SENDING` with `code`): its writes fail, and what it had in
    /// flight is dropped.
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(code.into());
    }

    /// Discards the next frame (module doc, invariant 5) and returns the
    /// first [`HEAD`] bytes of its body. Cancel-safe.
    pub(crate) async fn skip_frame(&mut self, max: usize) -> Result<Vec<u8>, FrameError> {
        loop {
            if let Some(head) = self.buf.skip_frame(max)? {
                return Ok(head);
            }
            self.read_more(max).await?;
        }
    }

    /// Reads one more chunk into the buffer (`max`: the frame cap of the
    /// read, see [`FrameBuffer::push`]).
    async fn read_more(&mut self, max: usize) -> Result<(), FrameError> {
        if self.finished {
            return Err(FrameError::Closed);
        }
        match self.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => self.buf.push(chunk.bytes, max),
            Ok(None) => self.finished = true,
            Err(e) => return Err(FrameError::Io(io::Error::from(e))),
        }
        Ok(())
    }

    /// The next frame, decoded as a `T`.
    pub(crate) async fn next_decoded<T: serde::de::DeserializeOwned>(
        &mut self,
        max: usize,
    ) -> Result<T, FrameError> {
        let body = self.next(max).await?;
        postcard::from_bytes(&body).map_err(FrameError::Decode)
    }

    /// Bytes received and not yet handed out.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
#[path = "frame_reader_tests.rs"]
mod tests;
