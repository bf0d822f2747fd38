//! An in-process [`Submit`]: one state machine behind a mutex, no log, no
//! network. Commands go through exactly the same encode, dispatch, error
//! policy and decode path as in a cluster.

use std::sync::{Arc, Mutex, MutexGuard};

use super::Submit;
use crate::error::Error;
use crate::state_machine::{ApplyError, StateMachine, apply_encoded, query_encoded};

/// A state machine served in this process.
///
/// Cloning a `Local` shares the same state machine.
pub struct Local<S> {
    state: Arc<Mutex<LocalState<S>>>,
}

struct LocalState<S> {
    machine: S,
    halted: Option<String>,
}

impl<S> Clone for Local<S> {
    fn clone(&self) -> Self {
        Local {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: StateMachine> Local<S> {
    /// Serves `machine` in this process.
    pub fn new(machine: S) -> Self {
        Local {
            state: Arc::new(Mutex::new(LocalState {
                machine,
                halted: None,
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
        match apply_encoded(&mut state.machine, &command) {
            Err(ApplyError::Halted { message }) => {
                state.halted = Some(message.clone());
                Err(Error::Halted { message })
            }
            other => other.map_err(to_error),
        }
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let state = self.lock();
        query_encoded(&state.machine, &query).map_err(to_error)
    }
}
