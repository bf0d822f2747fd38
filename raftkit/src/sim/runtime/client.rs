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
//!
//! A write refused with [`Error::SessionExpired`] is handled as the network
//! client documents it (`client/remote.rs`, README "Exactly-once writes,
//! retries and sessions"): the client forgets the session (its next write
//! opens a new one); if no attempt of the write can have been applied, it
//! retries it once under the new session by itself; otherwise the call
//! fails with `SessionExpired` and the history records its outcome as
//! unknown (`Maybe`: applied or not, under the forgotten session).
//!
//! Reads go at the client's [`Consistency`] (a view:
//! [`SimClient::with`], as `client.with(..)` on the network client):
//! `Linearizable` and `Lease` reads enter the history and are judged
//! linearizable (a lease read must be, while clocks respect the drift
//! bound: the simulated clocks share one virtual time); `Stale` reads are
//! recorded apart with the [`Staleness`] the member reported and judged by
//! `history::stale_reads`.
//!
//! With several groups (`Simulation::groups`) a client has one `SimClient`
//! per group, each with its own session with that group.
//!
//! Each expiry is also checked for being early: the session's last known
//! use (the send of the last attempt the cluster answered in it, or of its
//! open) must lie at least the time-to-live in the past, less what the
//! leaders' stamp clamp lets replicated time run ahead of the monotonic
//! clock ([`STAMP_SLACK_MS`] on either side of a term, plus once per new
//! term). A leader's clock jump must not expire a session before that.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::history::{Kind, Outcome, StaleRead};
use super::kit::World;
use crate::client::{Consistency, Submit};
use crate::error::{Applied, Error};
use crate::runtime::session::{STAMP_SLACK_MS, SessionId, SessionRef};
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
    /// When (virtual time) the last attempt the cluster answered in this
    /// session, or its open, was sent, and the highest term any member was
    /// in then.
    last_use: (Duration, u64),
}

/// A client of the simulated cluster (see the module docs). Clones share
/// the session: a client makes one call at a time.
pub struct SimClient<S: StateMachine> {
    world: Arc<World<S>>,
    group: usize,
    client: usize,
    consistency: Consistency,
    session: Arc<Mutex<Option<Session>>>,
    cursor: Arc<Mutex<usize>>,
}

impl<S: StateMachine> Clone for SimClient<S> {
    fn clone(&self) -> Self {
        SimClient {
            world: self.world.clone(),
            group: self.group,
            client: self.client,
            consistency: self.consistency,
            session: self.session.clone(),
            cursor: self.cursor.clone(),
        }
    }
}

impl<S: StateMachine + Default> SimClient<S> {
    pub(crate) fn new(world: Arc<World<S>>, group: usize, client: usize) -> Self {
        SimClient {
            world,
            group,
            client,
            consistency: Consistency::Linearizable,
            session: Arc::default(),
            cursor: Arc::new(Mutex::new(client)),
        }
    }

    /// The client's number.
    pub fn id(&self) -> usize {
        self.client
    }

    /// The group this client calls (0 without `Simulation::groups`).
    pub fn group(&self) -> usize {
        self.group
    }

    /// A view of this client whose reads are served at `consistency`
    /// (session shared): `BankClient::new(client.with(Consistency::Lease))`.
    pub fn with(&self, consistency: Consistency) -> Self {
        SimClient {
            consistency,
            ..self.clone()
        }
    }

    fn rotate(&self) {
        if let Ok(mut c) = self.cursor.lock() {
            *c += 1;
        }
    }

    fn target(&self) -> Option<crate::runtime::Peer<super::probe::Probe<S>>> {
        let cursor = self.cursor.lock().map(|c| *c).unwrap_or(0);
        self.world.target(self.group, cursor)
    }

    fn session(&self) -> Option<(SessionId, u64, (Duration, u64))> {
        self.session
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| (s.id, s.next_seq, s.last_use)))
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

    /// The session was used by an attempt sent at `sent`.
    fn used(&self, sent: (Duration, u64)) {
        if let Ok(mut slot) = self.session.lock()
            && let Some(s) = slot.as_mut()
        {
            s.last_use = s.last_use.max(sent);
        }
    }

    /// Fails the run if a session whose last known use was `last_use`
    /// expired too early to be explained by the stamp clamp (module docs).
    fn check_expiry(&self, id: SessionId, last_use: (Duration, u64)) {
        let (now, term) = (self.world.now(), self.world.max_term(self.group));
        let terms = term.saturating_sub(last_use.1);
        let allowance = Duration::from_millis(STAMP_SLACK_MS.saturating_mul(3 + terms));
        let idle = now.saturating_sub(last_use.0);
        if idle + allowance < self.world.session_ttl() {
            self.world.fail(
                "session expiry",
                format!(
                    "client {}'s session {id} expired after {idle:?} of virtual time without use (time-to-live {:?}, {terms} new terms since): a clock jump expired it early",
                    self.client,
                    self.world.session_ttl()
                ),
            );
        }
    }

    async fn write_call(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        let call = self
            .world
            .invoke(self.group, self.client, Kind::Write, command.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut maybe = false;
        // At most one transparent re-open, as the network client does.
        let mut reopened = false;
        let mut last = Error::Timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                let outcome = if maybe {
                    Outcome::Maybe
                } else {
                    Outcome::NotApplied
                };
                self.world.complete(self.group, self.client, call, outcome);
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
            let sent = (self.world.now(), self.world.max_term(self.group));
            let (id, seq, last_use) = match self.session() {
                Some(s) => s,
                None => match tokio::time::timeout(ATTEMPT, peer.open_session()).await {
                    Ok(Ok(id)) => {
                        self.set_session(Some(Session {
                            id,
                            next_seq: 1,
                            last_use: sent,
                        }));
                        (id, 1, sent)
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
            let sent = (self.world.now(), self.world.max_term(self.group));
            let attempt = peer.write_in_session(command.clone(), Some(session));
            match tokio::time::timeout(ATTEMPT, attempt).await {
                Ok(Ok(out)) => {
                    self.used(sent);
                    self.advance();
                    self.world
                        .complete(self.group, self.client, call, Outcome::Ok(out.clone()));
                    return Ok(out);
                }
                Ok(Err(Error::SessionExpired(why))) => {
                    // Refused, not applied now; whether an earlier attempt
                    // applied under the forgotten session is unknown.
                    self.world.session_expired_error();
                    self.check_expiry(id, last_use);
                    self.set_session(None);
                    if !maybe && !reopened {
                        // No attempt can have been applied: retry under a
                        // new session.
                        reopened = true;
                        self.world.reopened();
                        self.world.event(format_args!(
                            "client {} reopens its session; write not applied",
                            self.client
                        ));
                        continue;
                    }
                    self.world.unknown_by_expiry();
                    self.world
                        .complete(self.group, self.client, call, Outcome::Maybe);
                    return Err(Error::SessionExpired(why));
                }
                Ok(Err(e)) => match e.applied() {
                    Applied::No => {
                        last = e;
                        self.rotate();
                    }
                    Applied::Yes => {
                        self.used(sent);
                        self.advance();
                        self.world
                            .complete(self.group, self.client, call, Outcome::Maybe);
                        return Err(e);
                    }
                    Applied::Maybe => {
                        maybe = true;
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
        if self.consistency == Consistency::Stale {
            return self.stale_read(query).await;
        }
        let call = self
            .world
            .invoke(self.group, self.client, Kind::Read, query.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = Error::Timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                self.world
                    .complete(self.group, self.client, call, Outcome::NotApplied);
                return Err(last);
            }
            if let Some(peer) = self.target() {
                let read = peer.read_encoded_with(query.clone(), self.consistency);
                match tokio::time::timeout(ATTEMPT, read).await {
                    Ok(Ok((out, _))) => {
                        self.world.complete(
                            self.group,
                            self.client,
                            call,
                            Outcome::Ok(out.clone()),
                        );
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

impl<S: StateMachine + Default> SimClient<S> {
    /// A `Stale` read: any replica answers from its own state; recorded
    /// with the staleness it reported, outside the linearizable history.
    async fn stale_read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = Error::Timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(peer) = self.target() {
                let read = peer.read_encoded_with(query.clone(), Consistency::Stale);
                match tokio::time::timeout(ATTEMPT, read).await {
                    Ok(Ok((out, staleness))) => {
                        self.world.event(format_args!(
                            "client {} stale read {query:02x?} on group {} from {:#x}: {out:02x?} at {staleness:?}",
                            self.client,
                            self.group,
                            peer.id()
                        ));
                        super::kit::lock(&self.world.groups[self.group].stale).push(StaleRead {
                            client: self.client,
                            node: peer.id(),
                            query,
                            output: out.clone(),
                            staleness,
                        });
                        return Ok(out);
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => last = Error::Timeout,
                }
                self.rotate();
            }
            tokio::time::sleep(BACKOFF).await;
        }
        Err(last)
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
