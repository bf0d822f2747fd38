//! Group commit: one storage thread, many writers, one fsync per batch.
//!
//! See [`GroupCommit`]: its documentation states the invariants.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

use tracing::trace;

use super::{LogStore, StorageError};
use crate::core::types::{Entry, HardState, Index, Term};

/// Completes a write request once it is durable. `Ok(index)` carries the
/// log's last index right after the request was applied (for an append: its
/// last entry's index). A later request of the same caller (a truncation)
/// may of course have removed it again; the caller, which sent both, knows.
pub type AppendCallback = Box<dyn FnOnce(Result<Index, StorageError>) + Send>;

/// A closure run on the storage thread with the store (see
/// [`GroupCommit::with_store`] and [`GroupCommit::write_with_store`]); an
/// `Err` is a failed write.
type StoreFn<S> = Box<dyn FnOnce(&mut S) -> Result<(), StorageError> + Send>;

enum Op<S> {
    Append(Vec<Entry>),
    HardState(HardState),
    AppendWithState(Vec<Entry>, HardState),
    Truncate(Index),
    Compact(Index, Term),
    Call(StoreFn<S>),
}

struct Request<S> {
    op: Op<S>,
    done: Option<AppendCallback>,
}

/// Counters describing how well group commit batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Syncs performed.
    pub syncs: u64,
    /// Write requests completed.
    pub requests: u64,
    /// Entries appended.
    pub entries: u64,
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    requests: AtomicU64,
    entries: AtomicU64,
}

/// A storage thread owning a [`LogStore`] and batching writes into shared
/// fsyncs.
///
/// [`GroupCommit`] owns a [`LogStore`] on a dedicated thread. Requests arrive
/// over a channel; the thread takes the first request, then every request
/// that queued up meanwhile (those that arrived while the previous fsync ran),
/// applies them all in arrival order, calls [`LogStore::sync`] **once**, and
/// completes each request through its callback. With `n` writers waiting,
/// one fsync serves all of them, which is where a log's throughput comes
/// from when fsync costs milliseconds.
///
/// Invariants:
///
/// - Requests are applied in the order they were sent (one channel, one
///   consumer), so a caller that assigns log indexes in send order gets a
///   contiguous log.
/// - A write's callback runs only after the sync covering it returned; it
///   gets `Ok(index)` only if that sync succeeded. Every callback runs
///   exactly once, including on shutdown and after a failure.
/// - After a failed sync, or a failed request (a write the store refused, a
///   [`GroupCommit::write_with_store`] closure that returned `Err`), every
///   later request fails with [`StorageError::Failed`] without reaching the
///   store, whatever the store would do; nothing is retried. The requests
///   of the failing batch applied before the failure are still synced and
///   completed with their own outcome. Why a failed request and not only a
///   failed sync: the caller built its later writes on the failed one (a
///   hard state whose commit index comes from a received snapshot whose
///   save failed, over a log never compacted behind it, would make a
///   restarted node apply entries never committed, Raft §5.4.3).
/// - Callbacks must not panic: a panicking callback stops the thread, and
///   the requests of its batch that were not yet completed are dropped
///   uncompleted (later sends report [`StorageError::Closed`]).
/// - Callbacks run on the storage thread: they must be quick and must not
///   block on the storage thread itself (completing a oneshot is ideal).
///
/// - A batch holds at most [`MAX_BATCH_BYTES`] of entries (and 65,536
///   requests): past that the thread syncs and starts the next batch, so a
///   backlog behind a slow disk is written in bounded frames instead of one
///   that outgrows what the store accepts. A slow disk makes writes slower,
///   never failed.
///
/// The channel is unbounded: back-pressure belongs to the caller, which
/// bounds what it has in flight (the runtime bounds proposals by count and
/// bytes, and a follower's backlog is bounded by the leader's window of
/// unacknowledged appends). The storage loop is an `async` loop over a
/// tokio channel that needs no tokio runtime: on its own thread it is driven
/// by a minimal executor (`runtime::threads::block_on`); under the
/// whole-runtime simulation it is a task of the simulation's executor. The
/// callback is how a tokio runtime completes its oneshots.
pub struct GroupCommit<S: LogStore + Send + 'static> {
    tx: Option<mpsc::UnboundedSender<Request<S>>>,
    /// Receives the store back when the loop ends (in a mutex only so
    /// that the handle can be shared between threads).
    stopped: Option<std::sync::Mutex<oneshot::Receiver<S>>>,
    /// Whether the loop runs on a thread of its own, so that dropping the
    /// handle may block until the loop has drained (a task of the caller's
    /// executor cannot be waited for synchronously).
    blocking: bool,
    counters: Arc<Counters>,
}

/// The most entry bytes one batch (one sync) writes.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// The body of the storage thread, for [`GroupCommit::start_on`]: an `async`
/// loop that ends once every handle is gone.
pub type ThreadBody = crate::runtime::threads::WorkerBody;

impl<S: LogStore + Send + 'static> std::fmt::Debug for GroupCommit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S: LogStore + Send + 'static> GroupCommit<S> {
    /// Starts the storage thread, which takes ownership of `store`.
    pub fn spawn(store: S) -> Result<Self, StorageError> {
        Self::start_on(store, |body| {
            std::thread::Builder::new()
                .name("raftkit-storage".into())
                .spawn(move || crate::runtime::threads::block_on(body))
                .map(|_| true)
                .map_err(|e| StorageError::io("spawn storage thread", "", e))
        })
    }

    /// Starts the storage loop on a worker that `spawn` starts (the runtime
    /// starts all its threads in one place), taking ownership of `store`.
    /// `spawn` returns whether the worker is a thread of its own (`true`:
    /// dropping the handle waits for the loop to drain) or a task of the
    /// caller's executor (`false`: use [`GroupCommit::shutdown_async`]).
    pub fn start_on(
        store: S,
        spawn: impl FnOnce(ThreadBody) -> Result<bool, StorageError>,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let blocking = spawn(Box::pin(async move {
            let store = run(store, rx, &c).await;
            let _ = stopped_tx.send(store);
        }))?;
        Ok(GroupCommit {
            tx: Some(tx),
            stopped: Some(std::sync::Mutex::new(stopped)),
            blocking,
            counters,
        })
    }

    fn send(&self, op: Op<S>, done: Option<AppendCallback>) {
        let req = Request { op, done };
        let Some(tx) = &self.tx else {
            if let Some(done) = req.done {
                done(Err(StorageError::Closed));
            }
            return;
        };
        if let Err(mpsc::error::SendError(req)) = tx.send(req)
            && let Some(done) = req.done
        {
            done(Err(StorageError::Closed));
        }
    }

    /// Appends `entries` (see [`LogStore::append`]); `done` gets the last
    /// appended index once they are durable.
    pub fn append(&self, entries: Vec<Entry>, done: AppendCallback) {
        self.send(Op::Append(entries), Some(done));
    }

    /// Appends `entries`, then saves `hs`, as one request: both always join
    /// the same batch (one sync), where two requests could be split across
    /// two syncs when the thread wakes between them. `done` gets the last
    /// appended index once both are durable.
    pub fn append_with_state(&self, entries: Vec<Entry>, hs: HardState, done: AppendCallback) {
        self.send(Op::AppendWithState(entries, hs), Some(done));
    }

    /// Saves the hard state; `done` runs once it is durable.
    pub fn save_hard_state(&self, hs: HardState, done: AppendCallback) {
        self.send(Op::HardState(hs), Some(done));
    }

    /// Truncates the suffix from `from`; `done` runs once that is durable.
    pub fn truncate_suffix(&self, from: Index, done: AppendCallback) {
        self.send(Op::Truncate(from), Some(done));
    }

    /// Compacts the prefix up to `upto` (see [`LogStore::compact_prefix`]);
    /// `done` runs once that is durable.
    pub fn compact_prefix(&self, upto: Index, term: Term, done: AppendCallback) {
        self.send(Op::Compact(upto, term), Some(done));
    }

    /// Runs `f` on the storage thread with the store, in order with the
    /// writes sent before it (it sees them, durable or not). Use it for
    /// reads; a closure that writes goes through
    /// [`GroupCommit::write_with_store`]. If the thread has stopped or
    /// failed, `f` is dropped without running.
    pub fn with_store(&self, f: impl FnOnce(&mut S) + Send + 'static) {
        self.send(
            Op::Call(Box::new(move |s| {
                f(s);
                Ok(())
            })),
            None,
        );
    }

    /// Runs the write `f` on the storage thread with the store, in order
    /// with the requests sent before it; the next sync covers what it
    /// wrote. An `Err` fails the thread as a failed sync does: every later
    /// request fails without reaching the store. If the thread has stopped
    /// or failed, `f` is dropped without running.
    pub fn write_with_store(
        &self,
        f: impl FnOnce(&mut S) -> Result<(), StorageError> + Send + 'static,
    ) {
        self.send(Op::Call(Box::new(f)), None);
    }

    /// Batching counters so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            entries: self.counters.entries.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread after it has completed every request already sent,
    /// and returns the store. Blocks the calling thread until then.
    pub fn shutdown(self) -> Result<S, StorageError> {
        crate::runtime::threads::block_on(self.shutdown_async())
    }

    /// [`GroupCommit::shutdown`] without blocking the caller's thread: the
    /// way to stop a loop that runs as a task of the caller's executor.
    pub async fn shutdown_async(mut self) -> Result<S, StorageError> {
        self.tx = None;
        match self.stopped.take().map(std::sync::Mutex::into_inner) {
            Some(Ok(rx)) => rx.await.map_err(|_| StorageError::Closed),
            _ => Err(StorageError::Closed),
        }
    }
}

impl<S: LogStore + Send + 'static> Drop for GroupCommit<S> {
    fn drop(&mut self) {
        self.tx = None;
        if !self.blocking {
            // A task of the caller's executor: it drains on its own.
            return;
        }
        if let Some(Ok(stopped)) = self.stopped.take().map(std::sync::Mutex::into_inner) {
            // Waits for the thread to finish its queue (or to have died).
            let _ = crate::runtime::threads::block_on(stopped);
        }
    }
}

async fn run<S: LogStore>(
    mut store: S,
    mut rx: mpsc::UnboundedReceiver<Request<S>>,
    counters: &Counters,
) -> S {
    let mut batch: Vec<(AppendCallback, Result<Index, StorageError>)> = Vec::new();
    // Set by the first failed sync or request: from then on nothing
    // touches the store, whatever the store itself would do.
    let mut failed: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut entries = 0u64;
        let mut bytes = 0usize;
        // Whether a request of this batch reached the store (else there is
        // nothing to sync).
        let mut applied = false;
        while let Some(req) = next.take() {
            if let Some(cause) = &failed {
                // Completed in order, after the requests before it.
                if let Some(done) = req.done {
                    batch.push((
                        done,
                        Err(StorageError::Failed {
                            cause: cause.clone(),
                        }),
                    ));
                }
                next = rx.try_recv().ok();
                continue;
            }
            applied = true;
            let result = match req.op {
                Op::Append(es) => {
                    entries += es.len() as u64;
                    bytes = es
                        .iter()
                        .fold(bytes, |b, e| b.saturating_add(e.approx_size()));
                    store.append(&es)
                }
                Op::HardState(hs) => store.save_hard_state(hs),
                Op::AppendWithState(es, hs) => {
                    entries += es.len() as u64;
                    bytes = es
                        .iter()
                        .fold(bytes, |b, e| b.saturating_add(e.approx_size()));
                    store.append(&es).and_then(|()| store.save_hard_state(hs))
                }
                Op::Truncate(from) => store.truncate_suffix(from),
                Op::Compact(upto, term) => store.compact_prefix(upto, term),
                Op::Call(f) => f(&mut store),
            };
            if let Err(e) = &result {
                tracing::error!(error = %e, "storage write failed; refusing further requests");
                failed = Some(e.to_string());
            }
            let result = result.map(|()| store.last_index());
            if let Some(done) = req.done {
                batch.push((done, result));
            }
            // Everything that queued while the previous sync ran joins this
            // batch; bound it so callbacks are not delayed without end.
            if batch.len() < 65_536 && bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        if !applied {
            // Every request was refused: nothing to sync.
            for (done, result) in batch.drain(..) {
                done(result);
            }
            continue;
        }
        crate::probe::mark("st.sync_start");
        let synced = store.sync();
        crate::probe::mark("st.sync_end");
        if let Err(e) = &synced {
            tracing::error!(error = %e, "storage sync failed; refusing further requests");
            failed = Some(e.to_string());
        }
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.entries.fetch_add(entries, Ordering::Relaxed);
        trace!(
            requests = batch.len(),
            entries,
            ok = synced.is_ok(),
            "group commit"
        );
        for (done, result) in batch.drain(..) {
            let outcome = match (&synced, result) {
                (Err(e), _) => Err(e.clone()),
                (Ok(()), result) => result,
            };
            done(outcome);
        }
    }
    store
}
