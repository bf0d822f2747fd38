//! An in-process [`Submit`]: one state machine behind a mutex, no log, no
//! network. Commands go through exactly the same encode, dispatch, error
//! policy and decode path as in a cluster.
//!
//! Handlers see a [`Ctx`] as in a cluster: writes are numbered 1, 2, ... in
//! term 1, and time is the clock given to [`Local::with_clock`] (the system
//! clock by default), made monotonic like replicated time: a write's time is
//! the largest the clock has shown, a read's the time of the last write.

use std::sync::{Arc, Mutex, MutexGuard};

use super::Submit;
use crate::error::Error;
use crate::state_machine::{ApplyError, Ctx, StateMachine, apply_encoded, query_encoded};

/// A clock in ms since the Unix epoch.
type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// A state machine served in this process.
///
/// ```
/// # use raftkit::prelude::*;
/// # #[derive(StateMachine, Default, Serialize, Deserialize)]
/// # struct Counter { n: u64 }
/// # #[raftkit::state_machine]
/// # impl Counter {
/// #     #[write]
/// #     fn add(&mut self, by: u64) -> u64 { self.n += by; self.n }
/// #     #[read]
/// #     fn get(&self) -> u64 { self.n }
/// # }
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop { if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) { return out } }
/// # }
/// use raftkit::client::Local;
/// let local = Local::new(Counter::default());
/// let counter = CounterClient::new(local.clone());
/// assert_eq!(block_on(counter.add(5))?, 5);
/// assert_eq!(local.with(|c| c.n), 5);
/// # Ok::<(), raftkit::Error>(())
/// ```
///
/// Cloning a `Local` shares the same state machine.
pub struct Local<S> {
    state: Arc<Mutex<LocalState<S>>>,
}

struct LocalState<S> {
    machine: S,
    halted: Option<String>,
    /// The last write's index (the index of the next is one more).
    index: u64,
    /// The last write's time.
    time_ms: u64,
    clock: Clock,
}

impl<S> Clone for Local<S> {
    fn clone(&self) -> Self {
        Local {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: StateMachine> Local<S> {
    /// Serves `machine` in this process; handlers' time is the system
    /// clock.
    pub fn new(machine: S) -> Self {
        Self::with_clock(machine, || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// Serves `machine` with `clock` (ms since the Unix epoch) as the time
    /// of writes: a test controls what handlers see as [`Ctx::time_ms`].
    ///
    /// ```
    /// # use raftkit::{client::Local, prelude::*};
    /// # use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// # #[derive(StateMachine, Default, Serialize, Deserialize)]
    /// # struct Clocked { last: u64 }
    /// # #[raftkit::state_machine]
    /// # impl Clocked {
    /// #     #[write]
    /// #     fn touch(&mut self, ctx: &Ctx) -> u64 { self.last = ctx.time_ms(); self.last }
    /// # }
    /// let now = Arc::new(AtomicU64::new(1_000));
    /// let clock = now.clone();
    /// let local = Local::with_clock(Clocked::default(), move || clock.load(Ordering::SeqCst));
    /// now.store(5_000, Ordering::SeqCst);
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) { return out } }
    /// # }
    /// assert_eq!(block_on(ClockedClient::new(local).touch()).unwrap(), 5_000);
    /// ```
    pub fn with_clock(machine: S, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Local {
            state: Arc::new(Mutex::new(LocalState {
                machine,
                halted: None,
                index: 0,
                time_ms: 0,
                clock: Box::new(clock),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LocalState<S>> {
        // A handler panic is caught inside apply_encoded, so the mutex is
        // never poisoned by one; recover the guard regardless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state machine (for tests and inspection).
    pub fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock().machine)
    }

    /// The panic message that halted this state machine, if one did.
    pub fn halted(&self) -> Option<String> {
        self.lock().halted.clone()
    }
}

fn to_error(e: ApplyError) -> Error {
    match e {
        ApplyError::Decode(c) => Error::Rejected(c.to_string()),
        ApplyError::Panicked { message } | ApplyError::Halted { message } => {
            Error::Handler { message }
        }
    }
}

impl<S: StateMachine> Submit for Local<S> {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut state = self.lock();
        if let Some(message) = &state.halted {
            return Err(Error::Halted {
                message: message.clone(),
            });
        }
        let state = &mut *state;
        state.index += 1;
        state.time_ms = state.time_ms.max((state.clock)());
        let mut ctx = Ctx::new(state.index, 1, state.time_ms);
        match apply_encoded(&mut state.machine, &mut ctx, &command) {
            Err(ApplyError::Halted { message }) => {
                state.halted = Some(message.clone());
                Err(Error::Halted { message })
            }
            other => other.map_err(to_error),
        }
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let state = self.lock();
        let ctx = Ctx::new(state.index, 1, state.time_ms);
        query_encoded(&state.machine, &ctx, &query).map_err(crate::state_machine::read_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Applied;
    use crate::prelude::*;

    /// A state machine whose read handler panics.
    #[derive(StateMachine, Default, Serialize, Deserialize)]
    struct Explodes {
        n: u64,
    }

    #[crate::state_machine]
    impl Explodes {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        #[read]
        fn explode(&self) -> u64 {
            panic!("read exploded on purpose")
        }
    }

    /// A panicking read handler applies nothing: its error says so (it was
    /// `Error::Handler`, which says `Applied::Yes`).
    #[test]
    fn a_panicking_read_handler_says_nothing_was_applied() {
        let local = Local::new(Explodes::default());
        let query = crate::state_machine::encode("query", &ExplodesRead::Explode).expect("encodes");
        let r = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(local.read(query));
        let e = r.expect_err("the read handler panicked");
        assert_eq!(e.applied(), Applied::No, "a panicking read answered {e:?}");
        assert!(e.to_string().contains("read exploded on purpose"), "{e}");
    }
}
