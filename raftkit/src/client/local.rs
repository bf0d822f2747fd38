//! An in-process [`Submit`]: one state machine behind a mutex, no log, no
//! network. Commands go through exactly the same encode, dispatch, error
//! policy and decode path as in a cluster.
//!
//! Handlers see a [`Ctx`] as in a cluster: writes are numbered 1, 2, ... in
//! term 1, and time is the clock given to [`Local::with_clock`] (the system
//! clock by default), made monotonic like replicated time: a write's time is
//! the largest the clock has shown, a read's the time of the last write.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Submit;
use crate::error::Error;
use crate::handler_panic::message as panic_message;
use crate::state_machine::{
    ApplyError, Ctx, StateMachine, apply_decoded, decode_untrusted, query_encoded,
};

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
        // Every panic of the state machine's code (handlers, codecs) is
        // caught under the lock, so the mutex is never poisoned by one;
        // recover the guard regardless.
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
            // Refused before it ran: not applied, answered as a halted
            // cluster node that knows no leader answers a call it refuses
            // (`Unavailable`: the command is not at fault, the state
            // machine cannot serve it).
            return Err(Error::Unavailable(format!(
                "the state machine halted and applies no more writes (this one was not applied): {message}"
            )));
        }
        // A panic outside the handler is caught as a cluster catches it
        // (`runtime::apply`), not unwound into the caller: the command's
        // `Deserialize` panicking refuses it (nothing ran, as the leader's
        // check refuses it before the log); its output's `Serialize`
        // panicking, after the handler ran and changed the state, halts the
        // state machine (`Halted`, as a node halts at that entry).
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            decode_untrusted::<S::Write>("command", &command)
        }));
        let command = match decoded {
            Ok(Ok(command)) => command,
            Ok(Err(e)) => return Err(Error::Rejected(e.to_string())),
            Err(payload) => {
                let panic = panic_message(payload.as_ref());
                tracing::error!(%panic, "a command's Deserialize panicked; the write is refused (not applied)");
                return Err(Error::Rejected(format!(
                    "the command's Deserialize panicked (not applied): {panic}"
                )));
            }
        };
        let state = &mut *state;
        state.index += 1;
        state.time_ms = state.time_ms.max((state.clock)());
        let mut ctx = Ctx::new(state.index, 1, state.time_ms);
        let machine = &mut state.machine;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            apply_decoded(machine, &mut ctx, command)
        }));
        match applied {
            Ok(Err(ApplyError::Halted { message })) => {
                state.halted = Some(message.clone());
                Err(Error::Halted { message })
            }
            Ok(other) => other.map_err(to_error),
            Err(payload) => {
                let message = format!(
                    "a panic outside the write handler at write {} (its output's Serialize, after the handler ran and changed the state): {}",
                    state.index,
                    panic_message(payload.as_ref())
                );
                tracing::error!(index = state.index, %message, "the state machine halts: it applies no more writes");
                state.halted = Some(message.clone());
                Err(Error::Halted { message })
            }
        }
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let state = self.lock();
        if let Some(message) = &state.halted {
            // Refused, as a halted cluster node that knows no leader
            // refuses a read (`Unavailable`, not applied): the state may be
            // the one a handler left half-way when it panicked.
            return Err(Error::Unavailable(format!(
                "the state machine halted and serves no more reads (this one was not served: not applied): {message}"
            )));
        }
        let ctx = Ctx::new(state.index, 1, state.time_ms);
        let machine = &state.machine;
        // A panic outside the read handler (the query's decoding, the
        // answer's encoding) fails the read alone, as in a cluster: a read
        // changes nothing.
        catch_unwind(AssertUnwindSafe(|| query_encoded(machine, &ctx, &query)))
            .unwrap_or_else(|payload| {
                let panic = panic_message(payload.as_ref());
                tracing::error!(%panic, "a read panicked outside its handler; its caller gets Error::Rejected");
                Err(ApplyError::Panicked {
                    message: format!("outside the read handler: {panic}"),
                })
            })
            .map_err(crate::state_machine::read_error)
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

    /// A value whose `Deserialize` panics on 666.
    #[derive(Clone, Debug, Serialize)]
    struct Touchy(u64);

    impl<'de> Deserialize<'de> for Touchy {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = u64::deserialize(d)?;
            assert_ne!(v, 666, "Touchy::deserialize panics on purpose");
            Ok(Touchy(v))
        }
    }

    /// A value whose `Serialize` panics on 777.
    #[derive(Clone, Debug, Deserialize)]
    struct Loud(u64);

    impl Serialize for Loud {
        fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
            assert_ne!(self.0, 777, "Loud::serialize panics on purpose");
            s.serialize_u64(self.0)
        }
    }

    /// Panics in the codecs around its handlers (never in a handler).
    #[derive(StateMachine, Default, Serialize, Deserialize)]
    struct Codecs {
        n: u64,
    }

    #[crate::state_machine]
    impl Codecs {
        #[write]
        fn put(&mut self, v: Touchy) -> Loud {
            self.n = v.0;
            Loud(v.0)
        }

        #[read]
        fn echo(&self) -> Loud {
            Loud(self.n)
        }

        #[read]
        fn take(&self, v: Touchy) -> u64 {
            v.0 + self.n
        }

        #[read]
        fn shown(&self, v: u64) -> Loud {
            Loud(v)
        }
    }

    /// `f` on a fresh runtime; a panic that unwinds out of the call (into
    /// the caller) fails the test, naming the panic.
    fn call<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f))).unwrap_or_else(
            |p| {
                panic!(
                    "{what}: a panic unwound into the caller: {}",
                    crate::handler_panic::message(p.as_ref())
                )
            },
        )
    }

    /// A panic outside a handler (a command's `Deserialize`, an output's
    /// `Serialize`, a query's) is caught in process as a cluster catches
    /// it, instead of unwinding into the caller: a command that panics
    /// while it decodes is refused (not applied, as the leader's check
    /// refuses it); an output that panics while it encodes halts the state
    /// machine (as it halts a node: `Halted`, may have been applied), and a
    /// later write is refused `Unavailable`, not applied; a read that panics outside its
    /// handler is `Rejected` (a read applies nothing).
    #[test]
    fn a_panic_outside_a_handler_is_caught_as_in_a_cluster() {
        let local = Local::new(Codecs::default());
        let write = |v: u64| {
            crate::state_machine::encode("command", &CodecsWrite::Put { v: Touchy(v) })
                .expect("encodes")
        };
        let r = call(
            "a write whose command panics decoding",
            local.write(write(666)),
        );
        match &r {
            Err(e @ Error::Rejected(m)) => {
                assert_eq!(e.applied(), Applied::No, "{e:?}");
                assert!(m.contains("panics on purpose"), "{e}");
            }
            other => panic!("a write whose command panics decoding got {other:?}"),
        }
        assert_eq!(local.halted(), None);
        assert!(call("a write", local.write(write(5))).is_ok());
        let q = crate::state_machine::encode("query", &CodecsRead::Take { v: Touchy(666) })
            .expect("encodes");
        let r = call("a read whose query panics decoding", local.read(q));
        assert!(
            matches!(&r, Err(e @ Error::Rejected(_)) if e.applied() == Applied::No),
            "{r:?}"
        );
        let q =
            crate::state_machine::encode("query", &CodecsRead::Shown { v: 777 }).expect("encodes");
        let r = call("a read whose answer panics encoding", local.read(q));
        assert!(
            matches!(&r, Err(e @ Error::Rejected(_)) if e.applied() == Applied::No),
            "{r:?}"
        );
        assert_eq!(
            local.halted(),
            None,
            "a read's panic halted the state machine"
        );
        let r = call(
            "a write whose output panics encoding",
            local.write(write(777)),
        );
        match &r {
            Err(e @ Error::Halted { message }) => {
                assert_eq!(e.applied(), Applied::Maybe, "{e:?}");
                assert!(message.contains("panics on purpose"), "{e}");
            }
            other => panic!("a write whose output panics encoding got {other:?}"),
        }
        assert!(local.halted().is_some(), "the state machine did not halt");
        let r = call("a write after the halt", local.write(write(6)));
        match &r {
            Err(e @ Error::Unavailable(m)) => {
                assert_eq!(e.applied(), Applied::No, "{e:?}");
                assert!(m.contains("not applied"), "{e}");
            }
            other => panic!("a write after the halt got {other:?}"),
        }
    }

    /// A halted `Local` refuses reads as a halted cluster node refuses
    /// them (`Unavailable`, not applied): its state may be the one a
    /// handler left half-way when it panicked, and a node serves no read
    /// of it. Before (stop 51), the read was served.
    #[test]
    fn a_halted_local_refuses_reads() {
        let local = Local::new(Codecs::default());
        let write = crate::state_machine::encode("command", &CodecsWrite::Put { v: Touchy(777) })
            .expect("encodes");
        let r = call("a write whose output panics encoding", local.write(write));
        assert!(matches!(r, Err(Error::Halted { .. })), "{r:?}");
        let q = crate::state_machine::encode("query", &CodecsRead::Take { v: Touchy(1) })
            .expect("encodes");
        let r = call("a read after the halt", local.read(q));
        match &r {
            Err(e @ Error::Unavailable(m)) => {
                assert_eq!(e.applied(), Applied::No, "{e:?}");
                assert!(m.contains("halted"), "{e}");
            }
            other => panic!("a read of a halted Local got {other:?}"),
        }
    }
}
