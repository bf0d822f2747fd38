//! The error type callers of raftkit see.

use crate::state_machine::CodecError;

/// An error from a raftkit peer or client call.
///
/// A handler's own `Err(E)` is not an `Error`: it is an ordinary replicated
/// result and reaches the caller typed, inside the `Ok` of the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call did not complete within its deadline. A write that timed out
    /// may or may not have been applied.
    #[error("timed out")]
    Timeout,
    /// No member of the cluster could serve the call.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// No leader could be reached after every retry.
    #[error("not leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader the last contacted node believed in, if any.
        hint: Option<String>,
    },
    /// The leader refused the command before it entered the log (for example
    /// it does not decode, or a configuration change is already in flight).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A network or TLS failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The handler panicked under the `skip` policy, or its node halted.
    #[error("handler failed: {message}")]
    Handler {
        /// The panic message.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer's storage failed; the node stops.
    #[error("storage: {0}")]
    Storage(String),
    /// The other side answered something this side does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client's session was no longer known to the cluster (it expired,
    /// was evicted from the bounded session table, or was closed) when the
    /// write arrived (Raft thesis §6.3). Nothing was applied by that attempt,
    /// but an earlier attempt of the same write may have been applied before
    /// the session was forgotten: **the write's outcome is unknown (it may
    /// have been applied)**. The network client has already opened a new
    /// session; later calls go on normally.
    #[error("session expired; the write may or may not have been applied: {0}")]
    SessionExpired(String),
}
