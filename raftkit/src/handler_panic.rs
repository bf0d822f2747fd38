//! Catching a handler's panic without the default panic hook's output.
//!
//! A handler that panics under the `skip` policy panics identically on
//! every replica; the default hook would print the message (and, with
//! `RUST_BACKTRACE`, a backtrace) on the standard error of each of them.
//! Instead, [`catch`] runs the handler with a thread-local flag set, and a
//! panic hook installed once per process (wrapping whatever hook was
//! installed before it) records the panic's location and prints nothing
//! while the flag is set; the caller reports the panic as one structured
//! `tracing` event (see `state_machine::apply_encoded`).
//!
//! # Invariants
//! - Only panics raised while a handler runs on this thread are silenced;
//!   every other panic reaches the previous hook unchanged.
//! - A panic that a handler catches itself (`catch_unwind` inside the
//!   handler) is silenced too, and not reported: it did not escape.
//! - A hook set by the application *after* the first handler ran replaces
//!   this one: handler panics are then printed by that hook (and still
//!   reported as events).

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_HANDLER.with(Cell::get) {
                let at = info.location().map(|l| l.to_string());
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// A handler's panic: its message and where it was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caught {
    /// The panic message (`"non-string panic payload"` when it is none).
    pub message: String,
    /// `file:line:column`, when the hook saw it.
    pub location: Option<String>,
}

/// Runs `f` (a handler) and catches its panic, silencing the panic hook
/// for it.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    install();
    let was = IN_HANDLER.with(|h| h.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_HANDLER.with(|h| h.set(was));
    result.map_err(|payload| Caught {
        message: message(payload.as_ref()),
        location: LOCATION.with(|l| l.borrow_mut().take()),
    })
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
