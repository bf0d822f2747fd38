//! Peers that run: the tokio runtime around the pure core.
//!
//! A [`Peer`] is three pieces of work:
//! - the **node task** (`node`), the only owner of the [`Raft`](crate::core::Raft) core: it
//!   feeds it ticks, messages and requests and routes its outputs;
//! - the **storage thread** (`persist`): the write-ahead log and snapshot
//!   files behind group commit, so the node task never waits for a disk;
//! - the **apply task** (`apply`): the user's state machine, answering
//!   proposals once their entries apply and reads once their read index is
//!   applied.
//!
//! Snapshots: when the log since the last snapshot passes
//! [`PeerBuilder::snapshot_every`] entries, the apply task serializes the
//! state machine and the session table. Only the apply task pauses, for as
//! long as serializing N bytes takes: about 1–3 ms per MB with postcard
//! (measured by `cargo bench --bench core`: 1.3 MB in 1.5 ms, 21 MB in 54 ms
//! on the 2-core development machine under load). The node task never
//! pauses: it keeps replicating and voting while the storage thread writes
//! the snapshot atomically and then compacts the log behind it. A follower
//! too far behind receives the snapshot in chunks and its apply task
//! restores from it.
//!
//! Start a peer with `MyStateMachine::peer()` (see [`PeerExt`]).

mod apply;
mod builder;
pub mod client_service;
mod membership;
mod node;
pub mod persist;
pub mod session;
mod status;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use builder::{PeerBuilder, PeerExt};
pub use status::{LATENCY_BOUNDS_US, LatencyHistogram, MemberStatus, PeerStatus};

use crate::client::Submit;
use crate::core::{Configuration, Index, NodeId};
use crate::error::Error;
use crate::state_machine::{StateMachine, decode, encode, validate_command};
use node::Command;
use session::{Op, Owner, SessionId};

struct Inner {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<PeerStatus>,
    task: Mutex<Option<JoinHandle<()>>>,
    name: String,
    id: NodeId,
    local_addr: Option<std::net::SocketAddr>,
    tick: std::time::Duration,
    session_ttl_ms: u64,
    max_sessions: u64,
}

/// A running peer of state machine `S`. Cloning shares the same peer.
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
    pub fn watch(&self) -> watch::Receiver<PeerStatus> {
        self.inner.status.clone()
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
            Error::Unavailable(format!("peer {} stopped before answering", self.inner.name))
        })?
    }

    /// Proposes an encoded write command on this peer, which must be the
    /// leader; resolves to the encoded output once applied. A command that
    /// does not decode is refused before it enters the log. The write is
    /// part of no session: a caller that retries it may apply it twice.
    pub async fn write_encoded(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_in_session(command, None).await
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
        match session {
            Some(session) => self.write_as(command, session, Owner::Local).await,
            None => {
                validate_command::<S>(&command).map_err(|e| Error::Rejected(e.to_string()))?;
                self.propose(Op::Write { command }).await
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
    ) -> Result<Vec<u8>, Error> {
        validate_command::<S>(&command).map_err(|e| Error::Rejected(e.to_string()))?;
        self.propose(Op::SessionWrite {
            session,
            owner,
            command,
        })
        .await
    }

    /// Opens a client session owned by this process (this peer must be the
    /// leader): its id is 128 bits from the operating system's CSPRNG, and
    /// the answer comes once the session is in the replicated table (thesis
    /// §6.3). Number its writes from 1 ([`Peer::write_in_session`]).
    pub async fn open_session(&self) -> Result<SessionId, Error> {
        self.open_session_as(Owner::Local).await
    }

    pub(crate) async fn open_session_as(&self, owner: Owner) -> Result<SessionId, Error> {
        let id = session::new_session_id()?;
        self.propose(Op::OpenSession {
            id,
            owner,
            ttl_ms: self.inner.session_ttl_ms,
            max_sessions: self.inner.max_sessions,
        })
        .await?;
        Ok(id)
    }

    /// Closes a session opened by [`Peer::open_session`]; its stored
    /// replies are dropped on every replica.
    pub async fn close_session(&self, id: SessionId) -> Result<(), Error> {
        self.close_session_as(id, Owner::Local).await
    }

    pub(crate) async fn close_session_as(&self, id: SessionId, owner: Owner) -> Result<(), Error> {
        self.propose(Op::CloseSession { id, owner })
            .await
            .map(|_| ())
    }

    async fn propose(&self, op: Op) -> Result<Vec<u8>, Error> {
        self.call(|reply| Command::Write { op, reply }).await
    }

    /// Serves an encoded query linearizably on this peer, which must be the
    /// leader.
    pub async fn read_encoded(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.call(|reply| Command::Read { query, reply }).await
    }

    /// Proposes a write command (this peer must be the leader).
    pub async fn write(&self, command: S::Write) -> Result<S::WriteOutput, Error> {
        let out = self.write_encoded(encode("command", &command)?).await?;
        Ok(decode("write output", &out)?)
    }

    /// Serves a query linearizably (this peer must be the leader).
    pub async fn read(&self, query: S::Read) -> Result<S::ReadOutput, Error> {
        let out = self.read_encoded(encode("query", &query)?).await?;
        Ok(decode("read output", &out)?)
    }

    /// Starts transferring leadership to `to` (thesis §3.10).
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), Error> {
        self.call(|reply| Command::Transfer { to, reply }).await
    }

    /// Proposes a new configuration (joint consensus); returns the index of
    /// the first configuration entry.
    pub async fn change_config(&self, target: Configuration) -> Result<Index, Error> {
        self.call(|reply| Command::ChangeConfig { target, reply })
            .await
    }

    /// Flushes the log and stops the peer. Further calls fail with
    /// `Unavailable`.
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
