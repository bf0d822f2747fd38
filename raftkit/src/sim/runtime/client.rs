//! The simulation's clients: [`SimClient`] submits a workload's calls to
//! the simulated cluster and records them in the history.
//!
//! It implements [`Submit`], so the user's generated typed client runs on
//! it unchanged (`BankClient::new(sim_client)`): the same encoding,
//! decoding and typed results as in production. The network client's
//! transport (QUIC) does not run in the simulation; `SimClient` does what
//! it does in-process instead, against the peers' own API: it routes to the
//! member it believes leads (from the peers' status, else round robin),
//! opens a client session on first use and numbers its writes in it, and
//! retries a write whose outcome it does not know in the same session with
//! the same sequence number (so the cluster applies it once), until its
//! deadline; reads are retried on any member until one answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::history::{Kind, Outcome};
use super::kit::World;
use crate::client::Submit;
use crate::error::{Applied, Error};
use crate::runtime::session::{SessionId, SessionRef};
use crate::state_machine::StateMachine;

/// How long one attempt may take before the client gives up on it.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How long a call may take, all retries included.
const DEADLINE: Duration = Duration::from_secs(30);
/// The pause between attempts.
const BACKOFF: Duration = Duration::from_millis(30);

struct Session {
    id: SessionId,
    next_seq: u64,
}

/// A client of the simulated cluster (see the module docs). Clones share
/// the session: a client makes one call at a time.
pub struct SimClient<S: StateMachine> {
    world: Arc<World<S>>,
    client: usize,
    session: Arc<Mutex<Option<Session>>>,
    cursor: Arc<Mutex<usize>>,
}

impl<S: StateMachine> Clone for SimClient<S> {
    fn clone(&self) -> Self {
        SimClient {
            world: self.world.clone(),
            client: self.client,
            session: self.session.clone(),
            cursor: self.cursor.clone(),
        }
    }
}

impl<S: StateMachine + Default> SimClient<S> {
    pub(crate) fn new(world: Arc<World<S>>, client: usize) -> Self {
        SimClient {
            world,
            client,
            session: Arc::default(),
            cursor: Arc::new(Mutex::new(client)),
        }
    }

    /// The client's number.
    pub fn id(&self) -> usize {
        self.client
    }

    fn rotate(&self) {
        if let Ok(mut c) = self.cursor.lock() {
            *c += 1;
        }
    }

    fn target(&self) -> Option<crate::runtime::Peer<super::probe::Probe<S>>> {
        let cursor = self.cursor.lock().map(|c| *c).unwrap_or(0);
        self.world.target(cursor)
    }

    fn session(&self) -> Option<(SessionId, u64)> {
        self.session
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| (s.id, s.next_seq)))
    }

    fn set_session(&self, s: Option<Session>) {
        if let Ok(mut slot) = self.session.lock() {
            *slot = s;
        }
    }

    fn advance(&self) {
        if let Ok(mut slot) = self.session.lock()
            && let Some(s) = slot.as_mut()
        {
            s.next_seq += 1;
        }
    }

    async fn write_call(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        let call = self.world.invoke(self.client, Kind::Write, command.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut maybe = false;
        let mut last = Error::Timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                let outcome = if maybe {
                    Outcome::Maybe
                } else {
                    Outcome::NotApplied
                };
                self.world.complete(self.client, call, outcome);
                if maybe {
                    // The sequence number is spent: its write may apply.
                    self.advance();
                }
                return Err(last);
            }
            let Some(peer) = self.target() else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            let (id, seq) = match self.session() {
                Some(s) => s,
                None => match tokio::time::timeout(ATTEMPT, peer.open_session()).await {
                    Ok(Ok(id)) => {
                        self.set_session(Some(Session { id, next_seq: 1 }));
                        (id, 1)
                    }
                    Ok(Err(e)) => {
                        last = e;
                        self.rotate();
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                    Err(_) => {
                        last = Error::Timeout;
                        self.rotate();
                        continue;
                    }
                },
            };
            let session = SessionRef {
                id,
                seq,
                acked_below: seq,
            };
            let attempt = peer.write_in_session(command.clone(), Some(session));
            match tokio::time::timeout(ATTEMPT, attempt).await {
                Ok(Ok(out)) => {
                    self.advance();
                    self.world
                        .complete(self.client, call, Outcome::Ok(out.clone()));
                    return Ok(out);
                }
                Ok(Err(e)) => match e.applied() {
                    Applied::No => {
                        last = e;
                        self.rotate();
                    }
                    Applied::Yes => {
                        self.advance();
                        self.world.complete(self.client, call, Outcome::Maybe);
                        return Err(e);
                    }
                    Applied::Maybe => {
                        maybe = true;
                        if matches!(e, Error::SessionExpired(_)) {
                            self.set_session(None);
                            self.world.complete(self.client, call, Outcome::Maybe);
                            return Err(e);
                        }
                        last = e;
                        self.rotate();
                    }
                },
                Err(_) => {
                    maybe = true;
                    last = Error::Timeout;
                    self.rotate();
                }
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    async fn read_call(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let call = self.world.invoke(self.client, Kind::Read, query.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = Error::Timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                self.world.complete(self.client, call, Outcome::NotApplied);
                return Err(last);
            }
            if let Some(peer) = self.target() {
                match tokio::time::timeout(ATTEMPT, peer.read_encoded(query.clone())).await {
                    Ok(Ok(out)) => {
                        self.world
                            .complete(self.client, call, Outcome::Ok(out.clone()));
                        return Ok(out);
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => last = Error::Timeout,
                }
                self.rotate();
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

impl<S: StateMachine + Default> Submit for SimClient<S> {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_call(command).await
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.read_call(query).await
    }
}
