//! The error type callers of raftkit see, and what each error says about
//! the command that failed.
//!
//! Every error answers two questions truthfully:
//!
//! - **was the command applied?** ([`Error::applied`]): `No` (it never
//!   entered the log, or was refused before the state machine saw it, and
//!   never will be applied), `Maybe` (it may have been applied, or may still
//!   be), or `Yes` (the state machine ran it);
//! - **may the call be retried?** ([`Error::is_retryable`]): the network
//!   client retries exactly these, on another member or after a backoff,
//!   within its deadline. A write retried by the client keeps its session
//!   sequence number, so a `Maybe` write is never applied twice.
//!
//! | variant | applied | retried by the client |
//! |---|---|---|
//! | [`Timeout`](Error::Timeout) | Maybe | yes |
//! | [`Unavailable`](Error::Unavailable) | No | yes |
//! | [`NotLeader`](Error::NotLeader) | No | yes (follows the hint) |
//! | [`Rejected`](Error::Rejected) | No | no |
//! | [`Transport`](Error::Transport) | Maybe | yes |
//! | [`Handler`](Error::Handler) | Yes | no |
//! | [`Codec`](Error::Codec) | Maybe | no |
//! | [`Storage`](Error::Storage) | Maybe | yes, on another member |
//! | [`Protocol`](Error::Protocol) | Maybe | no |
//! | [`Unauthorized`](Error::Unauthorized) | No | no (the certificate's role does not allow the call; see [`crate::tls`]) |
//! | [`Halted`](Error::Halted) | Maybe | yes, on another member |
//! | [`Overloaded`](Error::Overloaded) | No | yes, after a backoff |
//! | [`Ambiguous`](Error::Ambiguous) | Maybe | yes |
//! | [`SessionExpired`](Error::SessionExpired) | Maybe | no (the client opens a new session) |
//! | [`Tls`](Error::Tls) | No | no (fix the certificates or the builder) |
//! | [`Unsupported`](Error::Unsupported) | No | no (the handler is not enabled on the cluster yet: final until a binary is upgraded, unless [`Error::awaits_voter_link`], when the same call may succeed later) |
//! | [`SchemaMismatch`](Error::SchemaMismatch) | No | no |
//! | [`Compacted`](Error::Compacted) | No (a watch applies nothing) | no (re-read the state, then watch from there) |
//! | [`WatchLagged`](Error::WatchLagged) | No (a watch applies nothing) | no (re-read the state, then watch from there) |
//! | [`NotHosted`](Error::NotHosted) | No | no (a sharded client re-reads the placement and re-routes) |
//! | [`AnswerTooLarge`](Error::AnswerTooLarge) | Yes | no (a retry gets the same stored answer) |
//! | [`AnswerUndecodable`](Error::AnswerUndecodable) | Yes | no (a retry gets the same stored answer) |
//!
//! A call may end with an error that is `Maybe` and not retried only when
//! retrying could do no better: a codec or protocol error would recur, and
//! a write whose session expired cannot be retried exactly-once (its
//! earlier attempts may have been applied under the forgotten session, and
//! a new session would apply it again), so the caller decides.

use crate::state_machine::CodecError;
use crate::tls::TlsError;

/// The mark of an [`Error::Unsupported`] that may succeed later with no
/// upgrade ([`Error::awaits_voter_link`]), in its message: part of what
/// peers and clients exchange, so never reworded.
pub(crate) const AWAITS_VOTER_LINK: &str =
    "[may succeed later: waits for a voter to link to the leader]";

/// Whether a failed command may have been applied (see [`Error::applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// It was not applied and never will be.
    No,
    /// It may have been applied, or may still be applied later (by this
    /// cluster, perhaps by a restarted node). Retrying it in the same client
    /// session is safe: the cluster applies a session's write once.
    Maybe,
    /// The state machine ran it (a handler that panicked under the `skip`
    /// policy still counts: every replica skipped it at the same entry).
    Yes,
}

/// An error from a raftkit peer or client call.
///
/// ```
/// use raftkit::{Error, error::Applied};
/// fn after_a_failed_write(e: &Error) -> &'static str {
///     match e.applied() {
///         Applied::No => "not applied: safe to send again",
///         Applied::Yes => "applied (a handler panicked under `skip`)",
///         Applied::Maybe => "unknown: retry through the same WriteOnce handle",
///     }
/// }
/// assert_eq!(after_a_failed_write(&Error::Overloaded), "not applied: safe to send again");
/// assert!(Error::Timeout.is_retryable());
/// let e: Error = raftkit::tls::TlsError::InvalidName("".into()).into();
/// assert!(matches!(e, Error::Tls(_)));
/// ```
///
/// A handler's own `Err(E)` is not an `Error`: it is an ordinary replicated
/// result and reaches the caller typed, inside the `Ok` of the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call did not complete within its deadline. A write that timed out
    /// may or may not have been applied.
    #[error("timed out (a write may or may not have been applied)")]
    Timeout,
    /// No member could take the call: none was reachable, or the peer had
    /// stopped before the call reached it, or it halted (see
    /// [`Error::Halted`]) and knew no leader to send the caller to.
    /// Nothing was applied.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The node is not the leader (or is handing leadership over to `hint`):
    /// the command did not enter its log. The network client follows the
    /// hint; callers see this only after every retry failed.
    #[error("not leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader the last contacted node believed in (or the target of
        /// a leadership transfer under way), if any.
        hint: Option<String>,
    },
    /// The leader refused the command before it entered the log: it does
    /// not decode, it is larger than the maximum command size, a
    /// configuration change is already in flight, ...; or the caller could
    /// not encode it ([`Error::not_sent`]); or a read whose handler panicked (a read applies nothing). Nothing was applied, and
    /// retrying the same call would be refused again.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A network or TLS failure while the call was under way: a write may or
    /// may not have been applied.
    #[error("transport: {0}")]
    Transport(String),
    /// The handler panicked, or its output's `Serialize` returned an error,
    /// under the `skip` policy: every replica skipped the command at the
    /// same entry (it counts as applied; whatever the handler changed
    /// stays).
    #[error("handler failed: {message}")]
    Handler {
        /// The panic message, or the output's `Serialize` error.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The node's storage failed and the node stopped. A write it was
    /// serving may still be committed by the rest of the cluster.
    #[error("storage: {0}")]
    Storage(String),
    /// The other side answered something this side does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The certificate this call was made with does not allow it (see the
    /// trust model in [`crate::tls`]). The command was not applied;
    /// retrying with the same certificate cannot succeed.
    #[error("not authorized (nothing was applied): {0}")]
    Unauthorized(String),
    /// The node halted: a handler panicked under the `halt` policy, or an
    /// entry does not decode with this binary. It applies nothing more and
    /// gives up leadership until it is restarted (with a fixed binary). A
    /// write it was serving (already in its log) may still be applied, by
    /// the other members or by this node once fixed: retry on another
    /// member. A call the halted node refuses afterwards never reaches its
    /// log and is answered [`Error::NotLeader`] (with the leader's address,
    /// when it knows one) or [`Error::Unavailable`]: not applied.
    #[error("node halted: {message} (a write may still be applied; retry on another member)")]
    Halted {
        /// Why the node halted.
        message: String,
    },
    /// The node has too many commands (or bytes of commands) in flight and
    /// the call could not wait any longer for room. Nothing was applied:
    /// back off and retry.
    #[error("overloaded: too many commands in flight; back off and retry")]
    Overloaded,
    /// The command reached the log, but this node can no longer tell its
    /// outcome (it stopped, or the entry was overtaken by a snapshot, or the
    /// write's session already acknowledged its answer, so an earlier
    /// attempt was answered and this one was not applied). It may have been
    /// applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// The client's session was no longer known to the cluster (it expired,
    /// was evicted from the bounded session table, or was closed) when the
    /// write arrived (Raft thesis §6.3). Nothing was applied by that attempt,
    /// but an earlier attempt of the same write may have been applied before
    /// the session was forgotten: **the write's outcome is unknown (it may
    /// have been applied)**. The network client has already opened a new
    /// session; later calls go on normally.
    #[error("session expired; the write may or may not have been applied: {0}")]
    SessionExpired(String),
    /// A certificate or key could not be made, loaded or used, or a peer
    /// has none (the message says what to add); or a TLS handshake was
    /// refused by either side (`client::refusal`). Raised while setting up
    /// a peer or client, and by a call or a watch when every member refused
    /// this client's handshake (or the leader did, and the others redirect
    /// to it): nothing was sent, so nothing was applied.
    #[error("TLS: {0}")]
    Tls(String),
    /// The handler of the command is not enabled on this cluster. It never
    /// entered the log: nothing was applied. Two cases, told apart by
    /// [`Error::awaits_voter_link`]:
    ///
    /// - **final until an upgrade** (`awaits_voter_link` false): the
    ///   answering node's binary does not know the handler, or a voter's
    ///   binary does not (as its last hello showed, or as the leader's data
    ///   directory records when there are no hellos): a rolling upgrade is
    ///   under way (see [`crate::schema`]), and the same call cannot succeed
    ///   before that binary is upgraded;
    /// - **may succeed later** (`awaits_voter_link` true): a voter has not
    ///   linked to the leader since the leader started, and nothing the
    ///   leader holds proves that voter knows the handler (the leader joined
    ///   its cluster on a new data directory, or the voter may still run an
    ///   older binary). The leader waited for that voter's hello (up to an
    ///   election timeout) before refusing; the same call may succeed, with
    ///   no upgrade, once the voter links, is removed, or another node
    ///   leads.
    ///
    /// The network client retries neither by itself
    /// ([`Error::is_retryable`] is false): a caller that wants to retry the
    /// second case does so later, at its own pace. A peer from before this
    /// distinction sends the second case without its mark: it reads as
    /// final, as that peer documented it.
    #[error("unsupported (nothing was applied): {0}")]
    Unsupported(String),
    /// Two schemas are not compatible (see [`crate::schema`]): a data
    /// directory written by a binary whose handler `handler` this binary
    /// changed or removed, or a peer or client whose schema differs there.
    /// Nothing was applied.
    #[error("schema mismatch at {handler}: {reason}")]
    SchemaMismatch {
        /// The handler (its name, kind and tag), or "the state".
        handler: String,
        /// What differs, and what to do about it.
        reason: String,
    },
    /// A watch ([`crate::client::watch`]) asked for writes from index
    /// `requested`, but the member no longer holds them: its watch journal
    /// starts at `first_available` (older events were dropped by the
    /// journal's byte bound, or precede the snapshot the member restarted
    /// from). Re-read the state (a read handler can return the index it
    /// was answered at, [`Ctx::index`](crate::Ctx::index)) and watch from
    /// that index + 1. A watch applies nothing.
    #[error(
        "watch from index {requested}: the member's watch journal starts at {first_available} (older events were compacted away); re-read the state and watch from the index that read reflects + 1"
    )]
    Compacted {
        /// The first index the watch asked for.
        requested: u64,
        /// The first index the member can serve.
        first_available: u64,
    },
    /// A watcher read its events more slowly than writes were applied, and
    /// fell behind by more than the member's watch journal holds
    /// (`PeerBuilder::watch_journal_bytes`): the event at `next` was
    /// dropped before the watcher took it, so the member disconnected it
    /// rather than buffer without a bound. Re-read the state and watch
    /// again from the index that read reflects + 1. A watch applies
    /// nothing.
    #[error(
        "the watcher fell behind by more than the member's watch journal holds: events from index {next} were dropped; re-read the state and watch again"
    )]
    WatchLagged {
        /// The first event the watcher did not receive.
        next: u64,
    },
    /// The node asked does not host the group the request was for (a
    /// multi-group node, see [`crate::multi`]): the client's placement is
    /// out of date. Nothing was applied; re-read the placement (group 0)
    /// and send the request to a node that hosts the group.
    #[error("this node does not host group {group}: re-read the placement and re-route")]
    NotHosted {
        /// The group the request was for.
        group: u64,
    },
    /// The request was carried out (a write was applied, and its answer
    /// stored in the client's session), but its answer is larger than one
    /// frame carries (`transport::frame::DEFAULT_MAX_FRAME_BYTES`): the
    /// member sent this instead. Do not send the write again; a retry
    /// through the same [`WriteOnce`](crate::client::WriteOnce) handle gets
    /// the same stored answer, so this same error. (A read whose answer is
    /// too large is [`Error::Rejected`]: a read changes nothing.)
    #[error("applied, but its answer cannot be carried (do not send it again): {0}")]
    AnswerTooLarge(String),
    /// The write was applied (its answer came back from the state machine
    /// that applied it), but the answer does not decode here as the
    /// write's output: it does not decode at all (the output's
    /// `Deserialize` refuses what its `Serialize` wrote), or it is another
    /// handler's output (the caller and the cluster run different versions
    /// of the state machine). Made by the caller's side only
    /// ([`Error::undecodable_answer`]), never sent by a member. Do not
    /// send the write again: a retry through the same
    /// [`WriteOnce`](crate::client::WriteOnce) handle gets the same stored
    /// answer, so this same error.
    #[error("applied, but its answer does not decode here (do not send it again): {0}")]
    AnswerUndecodable(String),
}

impl From<TlsError> for Error {
    /// A certificate problem: [`Error::Tls`] with its message.
    fn from(e: TlsError) -> Self {
        Error::Tls(e.to_string())
    }
}

impl Error {
    /// The error of a command or query that failed to encode on the
    /// caller's side: it never left the process, so it is
    /// [`Rejected`](Error::Rejected) (applied `No`, not retryable: the same
    /// value fails again), with the codec error's text.
    pub fn not_sent(err: CodecError) -> Self {
        Error::Rejected(format!("not sent: {err}"))
    }

    /// The error of a write whose answer came back (the write was
    /// applied) but does not decode as its output on the caller's side:
    /// [`AnswerUndecodable`](Error::AnswerUndecodable) (applied `Yes`, not
    /// retryable), with `why` (the codec error, or which output came back
    /// instead). A read's answer that does not decode is not this: a read
    /// applies nothing.
    pub fn undecodable_answer(why: impl std::fmt::Display) -> Self {
        Error::AnswerUndecodable(why.to_string())
    }

    /// Whether the command of the failed call may have been applied; see
    /// the [module documentation](self) for every variant.
    pub fn applied(&self) -> Applied {
        match self {
            Error::Unavailable(_)
            | Error::NotLeader { .. }
            | Error::Rejected(_)
            | Error::Unauthorized(_)
            | Error::Overloaded
            | Error::Tls(_)
            | Error::Unsupported(_)
            | Error::SchemaMismatch { .. }
            | Error::Compacted { .. }
            | Error::WatchLagged { .. }
            | Error::NotHosted { .. } => Applied::No,
            Error::Handler { .. } | Error::AnswerTooLarge(_) | Error::AnswerUndecodable(_) => {
                Applied::Yes
            }
            Error::Timeout
            | Error::Transport(_)
            | Error::Codec(_)
            | Error::Storage(_)
            | Error::Protocol(_)
            | Error::Halted { .. }
            | Error::Ambiguous(_)
            | Error::SessionExpired(_) => Applied::Maybe,
        }
    }

    /// Whether retrying the call (on another member, or after a backoff)
    /// may succeed. The network client retries exactly these errors within
    /// its deadline.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout
            | Error::Unavailable(_)
            | Error::NotLeader { .. }
            | Error::Transport(_)
            | Error::Storage(_)
            | Error::Halted { .. }
            | Error::Overloaded
            | Error::Ambiguous(_) => true,
            Error::Rejected(_)
            | Error::Unauthorized(_)
            | Error::Handler { .. }
            | Error::Codec(_)
            | Error::Protocol(_)
            | Error::SessionExpired(_)
            | Error::Tls(_)
            | Error::Unsupported(_)
            | Error::SchemaMismatch { .. }
            | Error::Compacted { .. }
            | Error::WatchLagged { .. }
            | Error::NotHosted { .. }
            | Error::AnswerTooLarge(_)
            | Error::AnswerUndecodable(_) => false,
        }
    }

    /// Whether this is an [`Error::Unsupported`] that may succeed later
    /// with no upgrade: refused only because a voter has not linked to the
    /// leader since the leader started (see [`Error::Unsupported`]). False
    /// for every other error, and for an `Unsupported` that is final until
    /// a binary is upgraded.
    ///
    /// The mark travels in the message, which the wire carries intact (the
    /// wire's `Unsupported` variant is unchanged, so clients and peers of
    /// any version decode it); an older peer's refusal has no mark and
    /// reads as final.
    ///
    /// ```
    /// use raftkit::Error;
    /// let final_ = Error::Unsupported("no write handler with tag 9".into());
    /// assert!(!final_.awaits_voter_link());
    /// assert!(!Error::Timeout.awaits_voter_link());
    /// ```
    pub fn awaits_voter_link(&self) -> bool {
        matches!(self, Error::Unsupported(why) if why.contains(AWAITS_VOTER_LINK))
    }

    /// Whether the member that answered with this error cannot serve
    /// anything until it is restarted: the client retries elsewhere and
    /// stops treating it as the leader.
    pub fn member_is_down(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Halted { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_says_whether_it_was_applied_and_whether_to_retry() {
        let all = [
            (Error::Timeout, Applied::Maybe, true),
            (Error::Unavailable("x".into()), Applied::No, true),
            (Error::NotLeader { hint: None }, Applied::No, true),
            (Error::Rejected("x".into()), Applied::No, false),
            (Error::Transport("x".into()), Applied::Maybe, true),
            (
                Error::Handler {
                    message: "x".into(),
                },
                Applied::Yes,
                false,
            ),
            (
                Error::Codec(CodecError {
                    what: "x",
                    reason: "y".into(),
                }),
                Applied::Maybe,
                false,
            ),
            (Error::Storage("x".into()), Applied::Maybe, true),
            (Error::Protocol("x".into()), Applied::Maybe, false),
            (Error::Unauthorized("x".into()), Applied::No, false),
            (
                Error::Halted {
                    message: "x".into(),
                },
                Applied::Maybe,
                true,
            ),
            (Error::Overloaded, Applied::No, true),
            (Error::Ambiguous("x".into()), Applied::Maybe, true),
            (Error::SessionExpired("x".into()), Applied::Maybe, false),
            (Error::Tls("x".into()), Applied::No, false),
            (Error::Unsupported("x".into()), Applied::No, false),
            (
                Error::SchemaMismatch {
                    handler: "h".into(),
                    reason: "r".into(),
                },
                Applied::No,
                false,
            ),
            (
                Error::Compacted {
                    requested: 1,
                    first_available: 5,
                },
                Applied::No,
                false,
            ),
            (Error::WatchLagged { next: 1 }, Applied::No, false),
            (Error::NotHosted { group: 3 }, Applied::No, false),
            (Error::AnswerTooLarge("x".into()), Applied::Yes, false),
            (Error::AnswerUndecodable("x".into()), Applied::Yes, false),
        ];
        for (e, applied, retry) in all {
            assert_eq!(e.applied(), applied, "{e:?}");
            assert_eq!(e.is_retryable(), retry, "{e:?}");
            // Only an error that cannot have applied anything may be final
            // and silent about it; a final error is never "maybe" unless the
            // caller can do nothing better (codec, protocol, an expired
            // session: a retry under a new session could apply it twice).
            if !retry && applied == Applied::Maybe {
                assert!(
                    matches!(
                        e,
                        Error::Codec(_) | Error::Protocol(_) | Error::SessionExpired(_)
                    ),
                    "{e:?}"
                );
            }
        }
    }
}
