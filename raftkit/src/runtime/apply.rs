//! The apply task: owns the user's state machine, applies committed entries
//! in log order, answers the proposals and reads that wait on them, and
//! takes and restores snapshots.
//!
//! Invariants:
//! - entries are applied exactly once each, in index order; a snapshot
//!   restore replaces the state and moves `applied` to the snapshot's index;
//! - a proposal registered at (index, term) is answered with its result only
//!   if the entry applied at that index has that term; otherwise it was
//!   replaced by another leader's entry and the caller is told to retry;
//! - a read registered with read index `i` is served only once `applied >=
//!   i` (Raft thesis §6.4 step 4);
//! - under the `halt` policy a panicking handler stops this task's applying
//!   at that entry; the log keeps it, and every waiting caller is told.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use super::session::{
    AppSnapshot, Dedup, Envelope, Op, SessionCounters, SessionRefusal, Sessions, StoredReply,
};
use crate::core::{Entry, Index, Payload, Term};
use crate::error::Error;
use crate::state_machine::{
    ApplyError, StateMachine, apply_encoded, decode, encode, query_encoded,
};

/// Rebuilds the state machine and the session table from a snapshot taken
/// by [`run`].
pub fn restore<S: StateMachine>(data: &[u8]) -> Result<(S, Sessions), Error> {
    let mut snap: AppSnapshot = decode("snapshot", data)?;
    let sm = S::restore(&snap.state)?;
    snap.sessions.recount();
    Ok((sm, snap.sessions))
}

fn stored_to_result(r: StoredReply) -> Result<Vec<u8>, Error> {
    match r {
        StoredReply::Ok(out) => Ok(out),
        StoredReply::Handler(message) => Err(Error::Handler { message }),
        StoredReply::Rejected(why) => Err(Error::Rejected(why)),
    }
}

/// A reply to a caller: encoded output or an error.
pub type Reply = oneshot::Sender<Result<Vec<u8>, Error>>;

/// Work for the apply task, sent by the node task in log order.
pub enum ApplyMsg {
    /// Proposals now wait at (index, term), each with where its result
    /// goes.
    Register(Vec<(Index, Term, Reply)>),
    /// Committed entries, in order.
    Entries(Vec<Entry>),
    /// A linearizable read, to serve once `index` is applied.
    Read {
        /// The read index.
        index: Index,
        /// The encoded query.
        query: Vec<u8>,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Replace the state with a snapshot received from the leader.
    Restore {
        /// The snapshot's last index.
        index: Index,
        /// The serialized state.
        data: Vec<u8>,
    },
    /// Serialize the state; the answer goes back to the node task.
    TakeSnapshot,
}

/// A snapshot taken by the apply task.
pub struct Taken {
    /// The last index applied to the state it serializes.
    pub index: Index,
    /// The serialized state.
    pub data: Vec<u8>,
}

/// What the apply task reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStatus {
    /// The last applied index.
    pub applied: Index,
    /// Set when a handler panicked under `halt`.
    pub halted: Option<String>,
    /// Client sessions in the replicated session table.
    pub sessions: usize,
    /// Unacknowledged replies stored across all sessions.
    pub session_replies: usize,
    /// Sessions evicted and expired by this replica since it started.
    pub session_counters: SessionCounters,
    /// Replicated time (the session table's "now"), in ms since the epoch.
    pub replicated_ms: u64,
}

impl ApplyStatus {
    /// The status of an apply task at `applied` with these sessions.
    pub fn of(applied: Index, halted: &Option<String>, sessions: &Sessions) -> ApplyStatus {
        ApplyStatus {
            applied,
            halted: halted.clone(),
            sessions: sessions.len(),
            session_replies: sessions.stored_replies(),
            session_counters: sessions.counters(),
            replicated_ms: sessions.now_ms(),
        }
    }
}

/// Runs the apply task until the node task drops its sender.
pub async fn run<S: StateMachine>(
    mut sm: S,
    mut sessions: Sessions,
    mut applied: Index,
    mut rx: mpsc::UnboundedReceiver<ApplyMsg>,
    snapshots: mpsc::UnboundedSender<Taken>,
    status: watch::Sender<ApplyStatus>,
) {
    let mut waiting: BTreeMap<Index, (Term, Reply)> = BTreeMap::new();
    let mut reads: Vec<(Index, Vec<u8>, Reply)> = Vec::new();
    let mut halted: Option<String> = None;
    while let Some(msg) = rx.recv().await {
        match msg {
            ApplyMsg::Register(proposals) => {
                for (index, term, reply) in proposals {
                    if let Some(h) = &halted {
                        let _ = reply.send(Err(Error::Handler { message: h.clone() }));
                    } else {
                        waiting.insert(index, (term, reply));
                    }
                }
            }
            ApplyMsg::Entries(entries) => {
                for e in entries {
                    if halted.is_some() {
                        break;
                    }
                    if e.index <= applied {
                        continue;
                    }
                    let result = match &e.payload {
                        Payload::Command(bytes) => {
                            apply_command(&mut sm, &mut sessions, e.index, bytes, &mut halted)
                        }
                        Payload::Noop | Payload::Config(_) => Ok(Vec::new()),
                    };
                    if halted.is_some() {
                        let _ = status.send(ApplyStatus::of(applied, &halted, &sessions));
                    }
                    if halted.is_some() {
                        break;
                    }
                    applied = e.index;
                    if let Some((term, reply)) = waiting.remove(&e.index) {
                        let answer = if term == e.term {
                            result
                        } else {
                            Err(Error::NotLeader { hint: None })
                        };
                        let _ = reply.send(answer);
                    }
                }
                if let Some(h) = &halted {
                    for (_, (_, reply)) in std::mem::take(&mut waiting) {
                        let _ = reply.send(Err(Error::Handler { message: h.clone() }));
                    }
                }
                serve_reads(&sm, applied, &mut reads);
                let _ = status.send(ApplyStatus::of(applied, &halted, &sessions));
            }
            ApplyMsg::Read {
                index,
                query,
                reply,
            } => {
                reads.push((index, query, reply));
                serve_reads(&sm, applied, &mut reads);
            }
            ApplyMsg::Restore { index, data } => match restore::<S>(&data) {
                Ok((restored, restored_sessions)) => {
                    sm = restored;
                    sessions = restored_sessions;
                    applied = index;
                    // Proposals the snapshot covers: their outcome is unknown here.
                    let covered: Vec<Index> = waiting.range(..=index).map(|(&i, _)| i).collect();
                    for i in covered {
                        if let Some((_, reply)) = waiting.remove(&i) {
                            let _ = reply.send(Err(Error::Unavailable(
                                "outcome unknown: the entry was covered by a snapshot from the leader".into(),
                            )));
                        }
                    }
                    serve_reads(&sm, applied, &mut reads);
                    let _ = status.send(ApplyStatus::of(applied, &halted, &sessions));
                }
                Err(e) => {
                    error!(%e, index, "snapshot from the leader does not decode; this node stops applying");
                    halted = Some(format!("undecodable snapshot at {index}: {e}"));
                    let _ = status.send(ApplyStatus::of(applied, &halted, &sessions));
                }
            },
            ApplyMsg::TakeSnapshot => {
                if halted.is_some() {
                    continue;
                }
                let snap = sm.snapshot().and_then(|state| {
                    encode(
                        "snapshot",
                        &AppSnapshot {
                            sessions: sessions.clone(),
                            state,
                            index: applied,
                        },
                    )
                });
                match snap {
                    Ok(data) => {
                        let _ = snapshots.send(Taken {
                            index: applied,
                            data,
                        });
                    }
                    Err(e) => error!(%e, "state machine snapshot failed"),
                }
            }
        }
    }
}

/// Applies one logged write: unwraps its envelope, answers a retried write
/// from the session table, applies a new one under the error policy.
fn apply_command<S: StateMachine>(
    sm: &mut S,
    sessions: &mut Sessions,
    index: Index,
    bytes: &[u8],
    halted: &mut Option<String>,
) -> Result<Vec<u8>, Error> {
    let envelope: Envelope = match decode("envelope", bytes) {
        Ok(e) => e,
        Err(err) => {
            error!(index, %err, "undecodable entry in the log; skipped on every replica");
            return Err(Error::Rejected(err.to_string()));
        }
    };
    sessions.advance(envelope.stamp_ms);
    let (command, session) = match envelope.op {
        Op::Write { command } => (command, None),
        Op::SessionWrite {
            session,
            owner,
            command,
        } => {
            match sessions.check(session, owner) {
                Dedup::New => {}
                Dedup::Duplicate(reply) => return stored_to_result(reply),
                Dedup::Unknown => {
                    return Err(Error::SessionExpired(format!(
                        "session {} is not open (expired, evicted or closed); write {} was not applied now",
                        session.id, session.seq
                    )));
                }
                Dedup::Foreign => {
                    debug!(index, session = %session.id, ?owner, "write under a session owned by another identity; refused");
                    return Err(Error::Rejected(format!(
                        "session {} belongs to another client identity; write {} refused, nothing changed",
                        session.id, session.seq
                    )));
                }
                Dedup::Stale => {
                    return Err(Error::Rejected(format!(
                        "write {} of session {} was already answered and acknowledged; not applied again",
                        session.seq, session.id
                    )));
                }
                Dedup::WindowFull => {
                    return Err(Error::Rejected(format!(
                        "session {} holds {} unacknowledged replies; write {} was not applied",
                        session.id,
                        super::session::SESSION_WINDOW,
                        session.seq
                    )));
                }
            }
            (command, Some(session))
        }
        Op::OpenSession {
            id,
            owner,
            ttl_ms,
            max_sessions,
        } => {
            return match sessions.open(id, owner, ttl_ms, max_sessions) {
                Ok(()) => Ok(Vec::new()),
                Err(_) => Err(Error::Rejected(format!("session id {id} is in use"))),
            };
        }
        Op::CloseSession { id, owner } => {
            return match sessions.close(id, owner) {
                Ok(()) => Ok(Vec::new()),
                Err(SessionRefusal::Foreign | SessionRefusal::IdInUse) => Err(Error::Rejected(
                    format!("session {id} belongs to another client identity; not closed"),
                )),
            };
        }
    };
    let stored = match apply_encoded(sm, &command) {
        Ok(out) => StoredReply::Ok(out),
        Err(ApplyError::Halted { message }) => {
            error!(index, %message, "handler panicked under the halt policy; this node stops applying");
            *halted = Some(message.clone());
            return Err(Error::Handler { message });
        }
        Err(ApplyError::Panicked { message }) => {
            warn!(index, %message, "handler panicked; skipped under the skip policy");
            StoredReply::Handler(message)
        }
        Err(ApplyError::Decode(err)) => {
            error!(index, %err, "undecodable command in the log; skipped on every replica");
            StoredReply::Rejected(err.to_string())
        }
    };
    if let Some(s) = session {
        sessions.record(s, stored.clone());
    }
    stored_to_result(stored)
}

fn serve_reads<S: StateMachine>(sm: &S, applied: Index, reads: &mut Vec<(Index, Vec<u8>, Reply)>) {
    if reads.iter().all(|(i, ..)| *i > applied) {
        return;
    }
    let (ready, pending): (Vec<_>, Vec<_>) = std::mem::take(reads)
        .into_iter()
        .partition(|(i, ..)| *i <= applied);
    *reads = pending;
    for (_, query, reply) in ready {
        let answer = query_encoded(sm, &query).map_err(|e| match e {
            ApplyError::Decode(c) => Error::Rejected(c.to_string()),
            ApplyError::Panicked { message } | ApplyError::Halted { message } => {
                Error::Handler { message }
            }
        });
        let _ = reply.send(answer);
    }
}
