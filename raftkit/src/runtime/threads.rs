//! Where the runtime's threads come from.
//!
//! A peer runs on the caller's tokio runtime (the node task, the client
//! service) plus three workers of its own, all started here and nowhere
//! else:
//!
//! - `raftkit-storage`: the write-ahead log behind group commit;
//! - `raftkit-snapshots`: saves the snapshots the node takes, beside the
//!   log writer and never in front of it;
//! - `raftkit-apply`: the user's state machine (handlers, serialization and
//!   restoration of snapshots), so that a slow or blocking handler never
//!   stalls a tokio worker (a lone small batch of handlers measured quick
//!   is applied by the node task while this worker is idle: `apply::inline`).
//!
//! Each worker's body is one `async` loop over tokio channels: the same code
//! runs in production on an operating-system thread of its own (driven by
//! [`block_on`], a minimal executor that parks the thread while the loop
//! waits for its channel) and, under the whole-runtime simulation, as a task
//! on the simulation's deterministic executor ([`Threads::Custom`]). There is
//! one code path for the logic; only where it runs is injected.
//!
//! Invariant: a worker body never waits on anything but its own channels
//! (never on the node task synchronously), so running it as a task of the
//! same single-threaded executor as the node task cannot deadlock.
//!
//! # Scheduling
//!
//! On Linux the workers run under `SCHED_BATCH` by default
//! ([`set_batch_scheduling`]; `PeerBuilder::batch_scheduling` turns it
//! off). Every write wakes two of them (storage, then apply) from a tokio
//! worker; under the default policy each wake-up preempts the worker that
//! woke it when the cores are busy, an involuntary context switch in the
//! middle of the worker's batch. A batch thread runs on an idle core at
//! once and otherwise at the next scheduler tick or when a running thread
//! yields; its share of the CPU is unchanged. Measured on 2 cores (the issue
//! 16 closing note of stop 38): in-process, 64 proposers, +13–18 % writes
//! per second with the apply threads alone under `SCHED_BATCH`; three `kv
//! serve` processes at 64 clients, +6–10 % and about 1 µs less CPU per write
//! per node with every thread of the peers under it; one client's latency
//! unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::error::Error;

/// The body of a worker: an `async` loop that ends when its channel closes.
pub type WorkerBody = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Starts a worker named `name` running `body` (a testing hook: see
/// [`Threads::Custom`]).
pub type SpawnWorker =
    Arc<dyn Fn(&str, WorkerBody) -> Result<Worker, Error> + Send + Sync + 'static>;

/// Where a peer's workers run.
#[derive(Clone)]
pub enum Threads {
    /// On operating-system threads (production); under `SCHED_BATCH` when
    /// `batch` (see the module documentation).
    Os {
        /// Whether the threads ask for [`set_batch_scheduling`].
        batch: bool,
    },
    /// Wherever the function puts them: the whole-runtime simulation spawns
    /// them as tasks of its deterministic executor. Not for production use.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Custom(SpawnWorker),
}

impl Default for Threads {
    fn default() -> Self {
        Threads::Os { batch: true }
    }
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::Os { batch } => write!(f, "Threads::Os {{ batch: {batch} }}"),
            Threads::Custom(_) => f.write_str("Threads::Custom"),
        }
    }
}

/// A started worker.
pub enum Worker {
    /// An operating-system thread.
    Thread(std::thread::JoinHandle<()>),
    /// A task of the caller's tokio runtime.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Task(tokio::task::JoinHandle<()>),
}

impl Worker {
    /// Waits for the worker to finish. A thread is joined in place (it
    /// blocks the caller, as joining always did); a task is awaited.
    pub async fn join(self) {
        match self {
            Worker::Thread(t) => {
                let _ = t.join();
            }
            Worker::Task(t) => {
                let _ = t.await;
            }
        }
    }

    /// Whether [`Worker::join`] may block the calling thread (a thread:
    /// yes; a task of the caller's executor: it must be awaited instead).
    pub fn joins_by_blocking(&self) -> bool {
        matches!(self, Worker::Thread(_))
    }
}

impl Threads {
    /// Starts a worker named `name` running `body`.
    pub fn spawn(
        &self,
        name: &str,
        body: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Worker, Error> {
        match self {
            Threads::Os { batch } => spawn(name, *batch, body),
            Threads::Custom(f) => f(name, Box::pin(body)),
        }
    }
}

/// Starts a named operating-system thread driving `body` to completion,
/// under `SCHED_BATCH` when `batch` (if the system refuses, the thread
/// runs under the policy it inherited and says so in a debug event).
pub(crate) fn spawn(
    name: &str,
    batch: bool,
    body: impl Future<Output = ()> + Send + 'static,
) -> Result<Worker, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if batch && let Err(e) = set_batch_scheduling() {
                tracing::debug!(error = %e, "cannot run this worker under SCHED_BATCH");
            }
            block_on(body)
        })
        .map(Worker::Thread)
        .map_err(|e| Error::Unavailable(format!("cannot start thread {name}: {e}")))
}

/// Puts the calling thread under the `SCHED_BATCH` policy of Linux
/// (`sched_setscheduler(2)`; no privilege needed): a wake-up of this thread
/// no longer preempts the running thread that woke it, it waits for an idle
/// core, the running thread's yield or the next scheduler tick. raftkit's
/// own threads do this by default (see `PeerBuilder::batch_scheduling`);
/// call it from `tokio::runtime::Builder::on_thread_start` to do the same
/// for the runtime your peers run on, as `kv serve` does:
///
/// ```
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .on_thread_start(|| {
///         // Not fatal: the thread keeps the default policy.
///         let _ = raftkit::runtime::set_batch_scheduling();
///     })
///     .enable_all()
///     .build()?;
/// # drop(runtime);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// The system's error if it refuses; `Unsupported` on systems other than
/// Linux (where nothing changes).
pub fn set_batch_scheduling() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` reads `param` only during the call,
        // and it is a valid, initialised `sched_param` on this stack frame;
        // pid 0 names the calling thread, which outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

/// Wakes a parked thread.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on the current thread, parking it while the
/// future waits (a spurious wake-up only costs one more poll). Needs no
/// tokio runtime: the workers wait only on tokio channels, which work
/// without one.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
