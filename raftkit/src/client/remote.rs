//! The network client: what generated `<Name>Client::connect` uses.
//!
//! It connects to any member of the cluster over QUIC (ALPN
//! `raftkit-client/1`, mutual TLS: the client verifies the cluster CA and
//! presents its own certificate, the secure default), finds the leader by
//! following `NotLeader` answers, retries with backoff within a per-call
//! deadline, and numbers its writes within a random session so that a write
//! retried after a lost reply or a leader change is applied exactly once.
//!
//! A member that just failed (no connection within [`CONNECT_TIMEOUT`], a
//! lost connection, a broken stream) is *suspect* for [`SUSPECT_FOR`]: the
//! client tries the other members first and does not follow a redirect to
//! it, so that after a leader dies the followers' stale hints do not make
//! every call wait on the dead address. Connections send keep-alives and
//! give up after [`IDLE_TIMEOUT`] of silence, so a request in flight to a
//! member that died without closing its connections fails over too.
//!
//! Callers see a redirect only as [`Error::NotLeader`] after every retry
//! failed; the other errors are typed and say whether the command may have
//! been applied ([`Error::applied`]): [`Error::Timeout`] (the deadline
//! passed; a write may or may not have been applied), [`Error::Rejected`],
//! [`Error::Handler`], [`Error::Overloaded`] and the others. The client
//! retries exactly the retryable ones ([`Error::is_retryable`]); a member
//! whose storage failed or that halted is suspected and not taken for the
//! leader again.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::debug;

use super::Submit;
use super::wire::{ClientHello, ClientRequest, ClientResponse, SessionRef, StatusReport};
use crate::error::{Applied, Error};
use crate::tls::{CLUSTER_SAN, Identity};
use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, FrameError, read_frame, write_frame};
use crate::transport::quic::{quic_client_config, transport_config};

/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a member that failed is tried only when no other is left.
pub const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// How often an idle client connection sends a keep-alive.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// How long a silent client connection lives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable naming the directory with the client's
/// certificates (`ca.pem`, `client.pem`, `client.key`).
pub const CERTS_ENV: &str = "RAFTKIT_CERTS";

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may take, retries included.
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

struct Inner {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    members: Vec<SocketAddr>,
    leader: std::sync::Mutex<Option<SocketAddr>>,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    session: u64,
    seq: AtomicU64,
    schema: u64,
    opts: ClientOptions,
    rotate: AtomicU64,
    suspects: std::sync::Mutex<HashMap<SocketAddr, Instant>>,
}

/// An untyped client of a raftkit cluster. Cheap to clone; clones share the
/// session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn resolve(addr: &str) -> Result<SocketAddr, Error> {
    addr.to_socket_addrs()
        .map_err(|e| Error::Transport(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{addr:?} resolves to no address")))
}

impl Client {
    /// Connects with the identity found in `$RAFTKIT_CERTS` (files `ca.pem`,
    /// `client.pem`, `client.key`). `schema` is the state machine's
    /// fingerprint (0 for an untyped client).
    pub async fn connect<I, A>(addrs: I, schema: u64) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let dir = std::env::var_os(CERTS_ENV).map(PathBuf::from).ok_or_else(|| {
            Error::Transport(format!(
                "no client certificate: set {CERTS_ENV} to a directory holding ca.pem, client.pem and client.key"
            ))
        })?;
        let identity =
            Identity::load(&dir, "client").map_err(|e| Error::Transport(e.to_string()))?;
        Self::connect_with(addrs, identity, schema, ClientOptions::default()).await
    }

    /// Connects with an explicit identity and options.
    pub async fn connect_with<I, A>(
        addrs: I,
        identity: Identity,
        schema: u64,
        opts: ClientOptions,
    ) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let members = addrs
            .into_iter()
            .map(|a| resolve(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Err(Error::Unavailable("no cluster address given".into()));
        }
        let mut config = quic_client_config(&identity, crate::tls::CLIENT_ALPN)
            .map_err(|e| Error::Transport(e.to_string()))?;
        config.transport_config(transport_config(KEEP_ALIVE, IDLE_TIMEOUT));
        let bind: SocketAddr = if members[0].is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| Error::Transport("bad bind address".into()))?;
        let endpoint = Endpoint::client(bind)
            .map_err(|e| Error::Transport(format!("cannot open a client socket: {e}")))?;
        let client = Client {
            inner: Arc::new(Inner {
                endpoint,
                config,
                members,
                leader: std::sync::Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                session: session_id(),
                seq: AtomicU64::new(0),
                schema,
                opts,
                rotate: AtomicU64::new(0),
                suspects: std::sync::Mutex::new(HashMap::new()),
            }),
        };
        // Fail early when no member is reachable at all: dial them all at
        // once and go on with the first that answers.
        let (tx, mut rx) = tokio::sync::mpsc::channel(client.inner.members.len());
        for &addr in &client.inner.members {
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                let r = client.connection(addr).await;
                if r.is_err() {
                    client.suspect(addr);
                }
                let _ = tx.send(r.map(|_| addr)).await;
            });
        }
        drop(tx);
        let mut last = None;
        while let Some(r) = rx.recv().await {
            match r {
                Ok(addr) => {
                    // Start there: it answers (if it does not lead, it
                    // redirects).
                    client.set_leader(Some(addr));
                    return Ok(client);
                }
                // Report an answer (a refused certificate or schema) rather
                // than a silence.
                Err(e) => {
                    if !matches!(last, Some(Error::Transport(_) | Error::Rejected(_))) {
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unavailable("no member reachable".into())))
    }

    /// Marks `addr` as just failed.
    fn suspect(&self, addr: SocketAddr) {
        if let Ok(mut s) = self.inner.suspects.lock() {
            s.insert(addr, Instant::now());
        }
    }

    /// Whether `addr` failed within [`SUSPECT_FOR`].
    fn is_suspect(&self, addr: SocketAddr) -> bool {
        self.inner
            .suspects
            .lock()
            .ok()
            .and_then(|s| s.get(&addr).copied())
            .is_some_and(|t| t.elapsed() < SUSPECT_FOR)
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Connection, Error> {
        if let Some(c) = self.inner.conns.lock().await.get(&addr)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.config.clone(), addr, CLUSTER_SAN)
            .map_err(|e| Error::Transport(format!("{addr}: {e}")))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Unavailable(format!("{addr}: connection timed out")))?
            .map_err(|e| Error::Transport(format!("{addr}: {e}")))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("{addr}: {e}")))?;
        let hello = ClientHello {
            version: 1,
            schema: self.inner.schema,
        };
        write_frame(&mut send, &hello, DEFAULT_MAX_FRAME_BYTES)
            .await
            .map_err(|e| Error::Transport(format!("{addr}: {e}")))?;
        let _ = send.finish();
        let answer: ClientResponse = read_frame(&mut recv, DEFAULT_MAX_FRAME_BYTES)
            .await
            .map_err(|e| Error::Transport(format!("{addr}: {e}")))?;
        if let ClientResponse::Err(e) = answer {
            conn.close(0u32.into(), b"refused");
            return Err(e.into());
        }
        self.inner.conns.lock().await.insert(addr, conn.clone());
        Ok(conn)
    }

    async fn once(
        &self,
        addr: SocketAddr,
        request: &ClientRequest,
    ) -> Result<ClientResponse, Error> {
        let conn = match self.connection(addr).await {
            Ok(conn) => conn,
            Err(e) => {
                self.suspect(addr);
                return Err(e);
            }
        };
        let attempt = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            write_frame(&mut send, request, DEFAULT_MAX_FRAME_BYTES)
                .await
                .map_err(|e| match e {
                    // Nothing was sent: the request cannot be carried.
                    FrameError::TooLarge { len, max } => Error::Rejected(format!(
                        "the request is {len} bytes, more than a frame carries ({max} bytes)"
                    )),
                    e => Error::Transport(e.to_string()),
                })?;
            let _ = send.finish();
            read_frame::<ClientResponse, _>(&mut recv, DEFAULT_MAX_FRAME_BYTES)
                .await
                .map_err(|e| Error::Transport(e.to_string()))
        };
        let r = attempt.await;
        if matches!(r, Err(Error::Transport(_))) {
            self.inner.conns.lock().await.remove(&addr);
            self.suspect(addr);
        }
        r
    }

    fn next_target(&self) -> SocketAddr {
        if let Ok(l) = self.inner.leader.lock()
            && let Some(a) = *l
        {
            return a;
        }
        // Round robin, skipping members that just failed unless all did.
        let n = self.inner.members.len();
        let mut first = None;
        for _ in 0..n {
            let i = self.inner.rotate.fetch_add(1, Ordering::Relaxed) as usize;
            let addr = self.inner.members[i % n];
            if !self.is_suspect(addr) {
                return addr;
            }
            first.get_or_insert(addr);
        }
        first.unwrap_or(self.inner.members[0])
    }

    fn set_leader(&self, addr: Option<SocketAddr>) {
        if let Ok(mut l) = self.inner.leader.lock() {
            *l = addr;
        }
    }

    /// Sends `request` to the leader, following redirects and retrying
    /// within the call's deadline.
    ///
    /// Retries exactly the errors that say so ([`Error::is_retryable`]): a
    /// redirect is followed at once; a member whose storage failed or that
    /// halted ([`Error::member_is_down`]) is suspected and no longer taken
    /// for the leader; `Overloaded` is retried after the backoff. Any other
    /// error ends the call. A write keeps its session sequence number across
    /// retries, so it is applied at most once; and once an attempt may have
    /// been applied, the call never ends with an error that says it was not.
    pub async fn request(&self, request: ClientRequest) -> Result<ClientResponse, Error> {
        let deadline = Instant::now() + self.inner.opts.timeout;
        let mut backoff = self.inner.opts.backoff;
        let mut last = Error::Unavailable("no attempt made".into());
        let mut maybe_applied = false;
        loop {
            let target = self.next_target();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(final_error(last, maybe_applied, true));
            }
            let outcome = tokio::time::timeout(remaining, self.once(target, &request))
                .await
                .unwrap_or(Err(Error::Timeout));
            let e = match outcome {
                Ok(ClientResponse::Err(e)) => Error::from(e),
                Ok(ok) => {
                    self.set_leader(Some(target));
                    return Ok(ok);
                }
                Err(e) => e,
            };
            if !e.is_retryable() {
                return Err(final_error(e, maybe_applied, false));
            }
            maybe_applied |= e.applied() != Applied::No;
            match &e {
                Error::NotLeader { hint } => {
                    // A hint at a member that just failed is stale (it is
                    // the dead leader the followers still believe in).
                    let next = hint
                        .as_deref()
                        .and_then(|h| resolve(h).ok())
                        .filter(|n| !self.is_suspect(*n));
                    debug!(%target, ?next, "redirected to the leader");
                    self.set_leader(next.filter(|n| *n != target));
                    if next.is_some_and(|n| n != target) {
                        last = e;
                        continue; // follow at once
                    }
                }
                // The same member, after the backoff.
                Error::Overloaded => {}
                e if e.member_is_down() => {
                    debug!(%target, error = %e, "member cannot serve until restarted; trying another");
                    self.suspect(target);
                    self.set_leader(None);
                }
                _ => self.set_leader(None),
            }
            last = e;
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(self.inner.opts.max_backoff);
        }
    }

    /// The status of the member at `addr` (no leader needed).
    pub async fn status_of(&self, addr: &str) -> Result<StatusReport, Error> {
        let addr = resolve(addr)?;
        match self.once(addr, &ClientRequest::Status).await? {
            ClientResponse::Status(s) => Ok(s),
            ClientResponse::Err(e) => Err(e.into()),
            ClientResponse::Ok(_) => Err(Error::Protocol("expected a status report".into())),
        }
    }

    /// The status of the member this client reaches first.
    pub async fn status(&self) -> Result<StatusReport, Error> {
        let target = self.next_target();
        self.status_of(&target.to_string()).await
    }

    /// The member addresses this client was given.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.inner.members.clone()
    }

    fn expect_ok(r: ClientResponse) -> Result<Vec<u8>, Error> {
        match r {
            ClientResponse::Ok(out) => Ok(out),
            ClientResponse::Err(e) => Err(e.into()),
            ClientResponse::Status(_) => Err(Error::Protocol("unexpected status report".into())),
        }
    }

    /// Runs an administrative request (membership, leadership) on the
    /// leader.
    pub async fn admin(&self, request: ClientRequest) -> Result<(), Error> {
        Self::expect_ok(self.request(request).await?).map(|_| ())
    }

    /// Adds the member at `addr` (learner, catch-up rounds, then voter) and
    /// returns the steps the leader reported.
    pub async fn add_server(&self, addr: &str) -> Result<Vec<String>, Error> {
        let out = Self::expect_ok(
            self.request(ClientRequest::AddServer {
                addr: addr.to_string(),
            })
            .await?,
        )?;
        if out.is_empty() {
            return Ok(Vec::new());
        }
        Ok(crate::state_machine::decode("progress", &out)?)
    }
}

impl Submit for Client {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        // One sequence number per logical write, reused by every retry: the
        // cluster applies it once.
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let session = SessionRef {
            client: self.inner.session,
            seq,
        };
        Self::expect_ok(
            self.request(ClientRequest::Write { session, command })
                .await?,
        )
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        Self::expect_ok(self.request(ClientRequest::Read { query }).await?)
    }
}

/// The error a call ends with: `e`, unless an earlier attempt may have been
/// applied and `e` says the command was not (then the call timed out, or its
/// outcome is unknown).
fn final_error(e: Error, maybe_applied: bool, at_deadline: bool) -> Error {
    if at_deadline {
        return match e {
            e @ Error::NotLeader { .. } if !maybe_applied => e,
            e @ Error::Overloaded if !maybe_applied => e,
            Error::Transport(_) | Error::Unavailable(_) | Error::NotLeader { .. } => Error::Timeout,
            e if maybe_applied && e.applied() == Applied::No => Error::Timeout,
            other => other,
        };
    }
    if maybe_applied && e.applied() == Applied::No {
        return Error::Ambiguous(format!(
            "{e} (an earlier attempt of this call may have been applied)"
        ));
    }
    e
}

/// A random session id: wall clock mixed with the process id and an
/// address, enough to make collisions between clients vanishingly rare.
fn session_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17);
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_may_have_applied_never_ends_saying_it_did_not() {
        let no = Error::NotLeader { hint: None };
        assert_eq!(final_error(no.clone(), false, true), no);
        assert_eq!(final_error(no, true, true), Error::Timeout);
        assert_eq!(
            final_error(Error::Overloaded, false, true),
            Error::Overloaded
        );
        assert_eq!(final_error(Error::Overloaded, true, true), Error::Timeout);
        let refused = final_error(Error::Rejected("x".into()), true, false);
        assert_eq!(refused.applied(), Applied::Maybe, "{refused}");
        assert_eq!(
            final_error(Error::Rejected("x".into()), false, false),
            Error::Rejected("x".into())
        );
        let handler = Error::Handler {
            message: "h".into(),
        };
        assert_eq!(final_error(handler.clone(), true, false), handler);
    }
}
