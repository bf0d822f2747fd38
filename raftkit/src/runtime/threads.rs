//! Where the runtime's threads come from.
//!
//! A peer runs on the caller's tokio runtime (the node task, the client
//! service) plus three threads of its own, all started here and nowhere
//! else:
//!
//! - `raftkit-storage`: the write-ahead log behind group commit;
//! - `raftkit-snapshots`: saves the snapshots the node takes, beside the
//!   log writer and never in front of it;
//! - `raftkit-apply`: the user's state machine (handlers, serialization and
//!   restoration of snapshots), so that a slow or blocking handler never
//!   stalls a tokio worker.
//!
//! Keeping every spawn in this one function is what lets a deterministic
//! simulation of the whole runtime replace the threads later without
//! touching the code that uses them.

use std::thread::JoinHandle;

use crate::error::Error;

/// Starts a named thread of the runtime running `body`.
pub(crate) fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map_err(|e| Error::Unavailable(format!("cannot start thread {name}: {e}")))
}
