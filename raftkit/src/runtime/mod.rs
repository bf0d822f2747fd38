//! Peers that run: the tokio runtime around the pure core.
//!
//! A [`Peer`] is four pieces of work:
//! - the **node task** (`node`), the only owner of the [`Raft`](crate::core::Raft) core: it
//!   feeds it ticks, messages and requests and routes its outputs;
//! - the **storage thread** (`persist`): the write-ahead log behind group
//!   commit, so the node task never waits for a disk;
//! - the **snapshot thread** (`persist`): saves the snapshots the node
//!   takes, beside the log writer, never in front of it;
//! - the **apply thread** (`apply`): the user's state machine, answering
//!   proposals once their entries apply and reads once their read index is
//!   applied. Handlers run there, never on a tokio worker.
//!
//! The threads are started in one place (`threads`).
//!
//! The node task and the transport (QUIC connections, client requests) run
//! on the caller's tokio runtime; the three threads above are the peer's
//! own, and under load the storage and apply threads each keep most of a
//! core busy. So a runtime with as many workers as cores oversubscribes
//! the machine: `kv serve` gives tokio the cores minus two workers, at
//! least one (`--async-threads`). On 2 cores with three nodes and the load
//! generator, one worker instead of two gave about 8 % more durable puts
//! per second at 64 clients and less CPU per write (tokio's workers stop
//! handing each other tasks).
//!
//! Snapshots: when the log since the last snapshot passes
//! [`PeerBuilder::snapshot_every`] entries, the apply thread serializes the
//! state machine and the session table. Only applying pauses, for as long
//! as serializing N bytes takes (about 1–3 ms per MB with postcard; the
//! longest pause is in [`PeerStatus::longest_apply_pause`] and the README
//! gives figures for a 100 MB state). The node task never pauses: it keeps
//! replicating and voting while the snapshot thread writes the snapshot
//! atomically; only once it is durable are the core's log and the
//! write-ahead log compacted behind it. A snapshot that fails is retried
//! with a backoff. A follower too far behind receives the snapshot in
//! chunks and its apply thread restores from it.
//!
//! Backpressure (`admission`): a node admits at most
//! [`PeerBuilder::max_in_flight`] commands and bytes of commands between
//! a call and its answer; a call that finds no room within the admission
//! wait fails with [`Error::Overloaded`]. Commands larger than
//! [`PeerBuilder::max_command_bytes`] are refused before they enter the
//! log, so that every AppendEntries fits one transport frame.
//!
//! Start a peer with `MyStateMachine::peer()` (see [`PeerExt`]).

mod admission;
#[cfg(test)]
mod answer_size_tests;
mod apply;
#[cfg(test)]
mod apply_failure_tests;
#[cfg(test)]
mod apply_inline_tests;
#[cfg(test)]
mod apply_output_error_tests;
#[cfg(test)]
mod apply_tests;
mod arena;
pub mod authorization;
mod builder;
mod client_mux;
#[doc(hidden)]
pub mod client_service;
mod dropped;
mod envelope_decode;
#[cfg(test)]
mod flow_control_tests;
#[cfg(test)]
mod halted_hint_tests;
#[cfg(test)]
mod handle_timeout_tests;
#[cfg(test)]
mod heard_wait_tests;
mod intake;
#[cfg(test)]
mod intake_tests;
#[cfg(test)]
mod lease_read_tests;
#[cfg(test)]
mod listen_socket_tests;
mod membership;
#[cfg(test)]
pub(crate) use membership::pause as membership_pause;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod membership_wait_tests;
mod node;
mod outgoing;
mod owner_hash;
#[doc(hidden)]
pub mod persist;
#[cfg(test)]
mod persist_lost_log_tests;
#[cfg(test)]
mod persist_open_tests;
mod reads;
pub(crate) mod receive_budget;
mod request_deadline;
#[cfg(test)]
mod revocation_tests;
mod seq_map;
#[doc(hidden)]
pub mod session;
#[cfg(test)]
mod shutdown_tests;
#[cfg(test)]
mod snapshot_copy_tests;
mod snapshot_sends;
#[cfg(test)]
mod stamp_tests;
mod stamps;
mod status;
#[cfg(test)]
mod test_gate;
pub(crate) mod threads;
mod tick_gate;
pub mod watch;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch as tokio_watch};
use tokio::task::JoinHandle;

pub use admission::{DEFAULT_ADMISSION_WAIT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT_BYTES};
pub(crate) use builder::GroupStorage;
pub use builder::{DEFAULT_MAX_COMMAND_BYTES, PeerBuilder, PeerExt};
pub use intake::{DEFAULT_BODY_STALL, DEFAULT_MIN_BODY_RATE};
pub use status::{LATENCY_BOUNDS_US, LatencyHistogram, MemberStatus, PeerStatus};
pub use threads::set_batch_scheduling;
pub use tick_gate::TickGate;

use crate::client::Submit;
use crate::core::{Configuration, Index, NodeId};
use crate::error::Error;
use crate::state_machine::{StateMachine, decode, encode, validate_command};
use node::Command;
use session::{Op, Owner, SessionId};

/// The longest a write refused while a voter is unheard waits for the
/// voters' hellos ([`heard_wait`]): half the client service's request
/// timeout ([`client_service::REQUEST_TIMEOUT`]), so that a write refused
/// after the wait, never proposed, is answered `Unsupported` (nothing
/// applied) and not the service's `Timeout` (may have been applied), with
/// room left for the rest of the request (review s60 schema L2).
const MAX_HEARD_WAIT: std::time::Duration =
    std::time::Duration::from_millis(client_service::REQUEST_TIMEOUT.as_millis() as u64 / 2);

/// How long a write refused while a voter is unheard waits for the
/// voters' hellos before it is refused for good (`Peer::check_command_heard`):
/// an election timeout (a leader just elected hears its live voters
/// within it), at most [`MAX_HEARD_WAIT`] (with a long tick an election
/// timeout reaches the request timeout).
fn heard_wait(election_timeout: std::time::Duration) -> std::time::Duration {
    election_timeout.min(MAX_HEARD_WAIT)
}

struct Inner {
    commands: mpsc::Sender<Command>,
    admission: Arc<admission::Admission>,
    max_command_bytes: usize,
    status: tokio_watch::Receiver<PeerStatus>,
    /// The storage failure that stopped the node, once there is one.
    fault: tokio_watch::Receiver<Option<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
    name: String,
    id: NodeId,
    local_addr: Option<std::net::SocketAddr>,
    /// The core's election timeout (`election_ticks` ticks): the unit of
    /// the membership calls' waits (`membership`).
    election_timeout: std::time::Duration,
    /// What this peer writes into session entries while it leads
    /// (`session.rs` rules 8 and 9).
    session_limits: session::SessionLimits,
    /// This binary's schema and what it knows of the voters' (the gate of
    /// new handlers, `crate::schema`).
    schemas: Arc<crate::schema::SchemaBook>,
    session_ids: session::SessionIdSource,
    /// The watch journal the apply thread feeds (`watch.rs`).
    journal: Arc<watch::Journal>,
    /// What the watch server reads to tell whether this member still
    /// hears from a leader (`watch.rs`).
    liveness: watch::Liveness,
}

/// A running peer of state machine `S`. Cloning shares the same peer.
///
/// Start one with `S::peer()` ([`PeerBuilder`]); in a test, a whole cluster
/// with [`crate::dev::Cluster`]. A peer serves the network clients of the
/// cluster by itself; in-process calls go through [`Peer::write`] and
/// [`Peer::read`] (on the leader) or the generated client over the peer
/// (`Peer` is a [`Submit`]).
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
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), raftkit::Error> {
/// let cluster = raftkit::dev::Cluster::<Counter>::start(3).await?;
/// let leader = cluster.leader().expect("start waits for a leader");
/// // In process, typed commands of the state machine:
/// let out = leader.write(CounterWrite::Add { by: 2 }).await?;
/// assert!(matches!(out, CounterWriteOutput::Add(2)), "{out:?}");
/// // Or the generated client over the peer:
/// assert_eq!(CounterClient::new(leader.clone()).get().await?, 2);
/// println!("{} is {:?} in term {}", leader.name(), leader.status().role, leader.status().term);
/// cluster.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Peer<S> {
    inner: Arc<Inner>,
    _sm: PhantomData<fn() -> S>,
}

impl<S> Clone for Peer<S> {
    fn clone(&self) -> Self {
        Peer {
            inner: Arc::clone(&self.inner),
            _sm: PhantomData,
        }
    }
}

impl<S: StateMachine> Peer<S> {
    /// The peer's name (`<state machine>@<advertised address>` by default).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The peer's node id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address the peer listens on (for QUIC peers).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_addr
    }

    /// The peer's current status.
    pub fn status(&self) -> PeerStatus {
        self.inner.status.borrow().clone()
    }

    /// A watch channel that changes whenever the status does: role, term,
    /// leader, commit and applied index, members and their progress,
    /// counters.
    pub fn watch(&self) -> tokio_watch::Receiver<PeerStatus> {
        self.inner.status.clone()
    }

    /// Resolves when the node stops serving for good: with the reason once
    /// its storage failed (as [`PeerStatus::fatal`] then says), with `None`
    /// once the node task ended (after [`Peer::shutdown`]). A process that
    /// only needs to notice a fatal error waits here rather than on
    /// [`Peer::watch`], whose receivers wake at every batch the node
    /// handles (each a cross-thread wake-up under load).
    pub async fn fault(&self) -> Option<String> {
        let mut fault = self.inner.fault.clone();
        loop {
            if let Some(f) = fault.borrow_and_update().clone() {
                return Some(f);
            }
            if fault.changed().await.is_err() {
                return fault.borrow().clone();
            }
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Unavailable(format!("peer {} has stopped", self.inner.name)))?;
        rx.await.map_err(|_| {
            Error::Ambiguous(format!("peer {} stopped before answering", self.inner.name))
        })?
    }

    /// Proposes an encoded write command on this peer, which must be the
    /// leader; resolves to the encoded output once applied. A command that
    /// does not decode is refused before it enters the log. The write is
    /// part of no session: a caller that retries it may apply it twice.
    pub async fn write_encoded(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_shared(command, None).await.map(Vec::from)
    }

    /// [`Peer::write_encoded`] as part of a session opened in this process
    /// ([`Peer::open_session`]): a write retried with the same session and
    /// sequence number is applied once. A session the table does not know
    /// (never opened, expired, evicted or closed) gives
    /// [`Error::SessionExpired`]; a session opened by a remote client is
    /// refused ([`Error::Rejected`]).
    pub async fn write_in_session(
        &self,
        command: Vec<u8>,
        session: Option<session::SessionRef>,
    ) -> Result<Vec<u8>, Error> {
        self.write_shared(command, session).await.map(Vec::from)
    }

    /// [`Peer::write_in_session`] answering with the output the apply
    /// thread encoded, shared (no copy; the session table and the watch
    /// journal hold the same bytes).
    pub(crate) async fn write_shared(
        &self,
        command: Vec<u8>,
        session: Option<session::SessionRef>,
    ) -> Result<bytes::Bytes, Error> {
        match session {
            Some(session) => self.write_as(command, session, Owner::Local).await,
            None => {
                let decoded = self.check_command_heard(&command).await?;
                let bytes = command.len();
                self.propose_write(Op::Write { command }, bytes, decoded)
                    .await
            }
        }
    }

    /// A session write on behalf of `owner` (the client service passes the
    /// certificate of the connection).
    pub(crate) async fn write_as(
        &self,
        command: Vec<u8>,
        session: session::SessionRef,
        owner: Owner,
    ) -> Result<bytes::Bytes, Error> {
        let decoded = self.check_command_heard(&command).await?;
        let bytes = command.len();
        // Byte bounds once every voter applies them (`session.rs` rule 9),
        // the entry before until then.
        let bounded = session::bounded(&self.inner.schemas, self.other_voters());
        let op = session::write_entry(
            bounded,
            session,
            owner,
            self.inner.session_limits.bounds,
            command,
        );
        self.propose_write(op, bytes, decoded).await
    }

    /// Opens a client session owned by this process (this peer must be the
    /// leader): its id is 128 bits from the operating system's CSPRNG, and
    /// the answer comes once the session is in the replicated table (thesis
    /// §6.3). Number its writes from 1 ([`Peer::write_in_session`]).
    pub async fn open_session(&self) -> Result<SessionId, Error> {
        self.open_session_as(Owner::Local).await
    }

    pub(crate) async fn open_session_as(&self, owner: Owner) -> Result<SessionId, Error> {
        let id = (self.inner.session_ids)()?;
        // Fair-share eviction and the owner cap once every voter applies
        // them (`session.rs` rules 8 and 9), the rules before until then.
        let op = session::open_entry(
            &self.inner.schemas,
            self.other_voters(),
            id,
            owner,
            self.inner.session_limits,
        );
        self.propose(op, 0).await?;
        Ok(id)
    }

    /// Closes a session opened by [`Peer::open_session`]; its stored
    /// replies are dropped on every replica.
    pub async fn close_session(&self, id: SessionId) -> Result<(), Error> {
        self.close_session_as(id, Owner::Local).await
    }

    pub(crate) async fn close_session_as(&self, id: SessionId, owner: Owner) -> Result<(), Error> {
        self.propose(Op::CloseSession { id, owner }, 0)
            .await
            .map(|_| ())
    }

    /// Refuses, before it enters the log, a command larger than the
    /// maximum command size or that does not decode; returns it decoded.
    fn check_command(&self, command: &[u8]) -> Result<S::Write, Error> {
        let max = self.inner.max_command_bytes;
        if command.len() > max {
            return Err(Error::Rejected(format!(
                "the command is {} bytes, more than the maximum command size of {max} bytes (PeerBuilder::max_command_bytes)",
                command.len()
            )));
        }
        self.check_enabled(crate::schema::HandlerKind::Write, command)?;
        // The command's `Deserialize` is the user's code: a panic there
        // refuses the write (it never entered the log) instead of unwinding
        // into the caller (a client service's request task, whose client
        // would only see its stream die and retry until its deadline).
        let checked = std::panic::catch_unwind(|| validate_command::<S>(command));
        match checked {
            Ok(decoded) => decoded.map_err(|e| Error::Rejected(e.to_string())),
            Err(payload) => {
                let message = crate::handler_panic::message(payload.as_ref());
                tracing::error!(peer = %self.inner.name, panic = %message,
                    "a command's decoding panicked in the leader's check; refused, nothing applied");
                Err(Error::Rejected(format!(
                    "the command's decoding panicked (nothing was applied): {message}"
                )))
            }
        }
    }

    /// The schemas this peer knows: its own and its voters' (see
    /// [`crate::schema`]).
    pub fn schemas(&self) -> &crate::schema::SchemaBook {
        &self.inner.schemas
    }

    /// Refuses with [`Error::Unsupported`] a command or query whose handler
    /// this binary does not know or, for a write, some voter may not know
    /// yet (a rolling upgrade under way): it would not decode there.
    fn check_enabled(&self, kind: crate::schema::HandlerKind, bytes: &[u8]) -> Result<(), Error> {
        let Some(tag) = crate::schema::encoded_tag(bytes) else {
            // Not even a tag: the decode check refuses it.
            return Ok(());
        };
        let checked = self
            .inner
            .schemas
            .check_enabled(kind, tag, self.other_voters());
        if checked.is_err()
            && kind == crate::schema::HandlerKind::Write
            && self.inner.schemas.local().handler(kind, tag).is_some()
        {
            // Refused for what a voter may not know: only the leader's
            // gate decides (a follower never appends to the log), and a
            // follower's book may not have heard voters the leader has (a
            // node that joined its cluster on a new directory takes a
            // voter it never heard to know no write): the caller is sent
            // to the leader rather than refused for good.
            let status = self.inner.status.borrow();
            if status.role != crate::core::Role::Leader {
                return Err(Error::NotLeader {
                    hint: status.leader_addr.clone(),
                });
            }
        }
        checked.map_err(|e| self.name_the_voter(e))
    }

    /// [`Self::check_command`], but a write refused (`Unsupported`) while
    /// a voter has not linked to this leader since it started is checked
    /// again once every voter was heard, waiting for their hellos up to an
    /// election timeout ([`heard_wait`]): a leader just elected hears its live voters
    /// within a heartbeat or two, and until then takes one unheard to know
    /// only what its data directory proves (nothing, for a node that
    /// joined its cluster on a new directory, see
    /// [`SchemaBook`](crate::schema::SchemaBook)).
    async fn check_command_heard(&self, command: &[u8]) -> Result<S::Write, Error> {
        let known = |tag| {
            let write = crate::schema::HandlerKind::Write;
            self.inner.schemas.local().handler(write, tag).is_some()
        };
        match self.check_command(command) {
            Err(Error::Unsupported(_))
                if crate::schema::encoded_tag(command).is_some_and(known) =>
            {
                let deadline =
                    tokio::time::Instant::now() + heard_wait(self.inner.election_timeout);
                // Checked again whether or not every voter was heard
                // (review s61 schema L1): leadership may have moved during
                // the wait, and the caller is owed `NotLeader` then, which
                // it retries, not an `Unsupported` it does not.
                self.inner
                    .schemas
                    .wait_heard(|| self.other_voters().collect(), deadline)
                    .await;
                self.check_command(command)
            }
            checked => checked,
        }
    }

    /// A write refused because a voter may not know its handler names
    /// that voter by node id ([`SchemaBook::check_enabled`]); the operator
    /// upgrades a node by its address, so the refusal gets the address too
    /// (from this peer's configuration; on the error path only).
    ///
    /// [`SchemaBook::check_enabled`]: crate::schema::SchemaBook::check_enabled
    fn name_the_voter(&self, e: Error) -> Error {
        let Error::Unsupported(why) = e else {
            return e;
        };
        let status = self.inner.status.borrow();
        for m in status.members.iter() {
            let needle = format!("voter {} may not know it", m.id);
            if let (true, Some(addr)) = (why.contains(&needle), m.addr.as_deref()) {
                let named = format!("voter {} ({addr}) may not know it", m.id);
                return Error::Unsupported(why.replacen(&needle, &named, 1));
            }
        }
        Error::Unsupported(why)
    }

    /// The voters of the configuration this peer knows, itself excluded
    /// (whose schemas gate what a leader proposes, `crate::schema`).
    fn other_voters(&self) -> impl Iterator<Item = NodeId> + use<S> {
        let me = self.inner.id;
        // Copied out so that the status is not held locked during the
        // check; on the stack for up to 16 other voters (one write, no
        // allocation).
        let (mut inline, mut n, mut more) = ([0; 16], 0, Vec::new());
        for m in self.inner.status.borrow().members.iter() {
            if m.voter && m.id != me {
                match inline.get_mut(n) {
                    Some(slot) => {
                        *slot = m.id;
                        n += 1;
                    }
                    None => more.push(m.id),
                }
            }
        }
        inline.into_iter().take(n).chain(more)
    }

    /// Proposes `op` once the node admits `bytes` more of commands in
    /// flight (backpressure); the room is returned with the answer.
    async fn propose(&self, op: Op, bytes: usize) -> Result<bytes::Bytes, Error> {
        let permit = self.inner.admission.admit(bytes).await?;
        self.call(|tx| Command::Write {
            op,
            reply: apply::Reply::new(tx, Some(permit)),
        })
        .await
    }

    /// [`Peer::propose`] of a client write whose command `decoded` is: this
    /// peer's apply thread applies it without decoding the entry again
    /// (see [`apply::Reply::with_decoded`]).
    async fn propose_write(
        &self,
        op: Op,
        bytes: usize,
        decoded: S::Write,
    ) -> Result<bytes::Bytes, Error> {
        let permit = self.inner.admission.admit(bytes).await?;
        crate::probe::mark("s.cmd_send");
        self.call(|tx| Command::Write {
            op,
            reply: apply::Reply::new(tx, Some(permit)).with_decoded(Box::new(decoded)),
        })
        .await
    }

    /// Serves an encoded query linearizably on this peer, which must be the
    /// leader.
    pub async fn read_encoded(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.read_shared(query).await.map(Vec::from)
    }

    /// [`Peer::read_encoded`] answering with the encoded output as the
    /// apply thread made it.
    async fn read_shared(&self, query: Vec<u8>) -> Result<bytes::Bytes, Error> {
        self.check_enabled(crate::schema::HandlerKind::Read, &query)?;
        let permit = self.inner.admission.admit(query.len()).await?;
        self.call(|tx| Command::Read {
            query,
            reply: apply::Reply::new(tx, Some(permit)),
            consistency: crate::client::Consistency::Linearizable,
            staleness: None,
        })
        .await
    }

    /// Proposes a write command (this peer must be the leader).
    ///
    /// An answer that does not decode as the output is
    /// [`Error::AnswerUndecodable`]: the write was applied.
    pub async fn write(&self, command: S::Write) -> Result<S::WriteOutput, Error> {
        let out = self
            .write_shared(encode("command", &command).map_err(Error::not_sent)?, None)
            .await?;
        decode("write output", &out).map_err(Error::undecodable_answer)
    }

    /// Serves a query linearizably (this peer must be the leader).
    pub async fn read(&self, query: S::Read) -> Result<S::ReadOutput, Error> {
        let out = self
            .read_shared(encode("query", &query).map_err(Error::not_sent)?)
            .await?;
        Ok(decode("read output", &out)?)
    }

    /// Starts transferring leadership to `to` (thesis §3.10).
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), Error> {
        self.call(|reply| Command::Transfer { to, reply }).await
    }

    /// Proposes a new configuration (joint consensus); returns the index of
    /// the first configuration entry. On a leader that has not yet
    /// committed an entry of its term (just elected), the proposal waits
    /// for that commit (thesis §4.1) rather than failing; it fails
    /// `NotLeader` if the peer stops leading first, and `Rejected` if
    /// another change is in flight or the target is invalid.
    pub async fn change_config(&self, target: Configuration) -> Result<Index, Error> {
        self.call(|reply| Command::ChangeConfig { target, reply })
            .await
    }

    /// Stops the node task where it is, as a process crash would (the
    /// whole-runtime simulation's crashes, [`MultiNode::kill`](crate::multi::MultiNode::kill);
    /// the workers are stopped by whoever started them).
    pub(crate) fn abort(&self) {
        if let Some(task) = self.inner.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }

    /// Flushes the log and stops the peer. Further calls fail with
    /// `Unavailable`. Returns the storage error that stopped the node
    /// earlier, if one did.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let result = self.call(|reply| Command::Shutdown { reply }).await;
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        match result {
            Err(Error::Unavailable(_)) => Ok(()), // already stopped
            other => other,
        }
    }
}

impl<S: StateMachine> Submit for Peer<S> {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_encoded(command).await
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.read_encoded(query).await
    }
}
