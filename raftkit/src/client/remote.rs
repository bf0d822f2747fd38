//! The network client: what generated `<Name>Client::connect` uses.
//!
//! It connects to any member of the cluster over QUIC (ALPN
//! `raftkit-client/1`, mutual TLS: the client verifies the cluster CA and
//! presents its own certificate, the secure default), finds the leader by
//! following `NotLeader` answers, retries with backoff within a per-call
//! deadline, and numbers its writes within a session so that a write
//! retried after a lost reply or a leader change is applied at most once.
//!
//! A member that just failed (no connection within [`CONNECT_TIMEOUT`], a
//! lost connection, a broken stream) is *suspect* for [`SUSPECT_FOR`]: the
//! client tries the other members first and does not follow a redirect to
//! it, so that after a leader dies the followers' stale hints do not make
//! every call wait on the dead address. Connections send keep-alives and
//! give up after [`IDLE_TIMEOUT`] of silence, so a request in flight to a
//! member that died without closing its connections fails over too.
//!
//! # Sessions, and what is exactly-once
//!
//! A client's first write opens a session through the cluster's log (one
//! extra round trip, once): the leader draws its 128-bit id at random and
//! binds it to this client's certificate, so no other identity can write
//! under it. Opening it counts against the first write's deadline
//! ([`ClientOptions::timeout`] covers the whole call); concurrent first
//! writes share one attempt, and if it fails each ends with an error that
//! says "not applied" (the write was never sent: [`Error::Unavailable`] when
//! retrying may succeed). Every write call takes the session's next sequence number and
//! every *internal* retry of that call (redirects, lost connections, a
//! leader change) re-sends the same number, so **one call applies its
//! command at most once**, and exactly once when it returns `Ok`. Each write
//! also carries the lowest sequence number this client has not seen
//! answered, so the cluster forgets the replies it no longer needs.
//! [`Client::close`] (or dropping the last clone) closes the session.
//!
//! # Errors, and how to retry them
//!
//! The client retries exactly the errors that say so
//! ([`Error::is_retryable`]), within the call's deadline: a redirect is
//! followed at once, `Overloaded` is retried after a backoff (a session
//! write refused while writes below it are unacknowledged, as when its
//! session's window is full, also waits until the session's
//! acknowledgement rises: resending it earlier is refused again, each
//! attempt a replicated entry), and a member
//! whose storage failed or that halted ([`Error::member_is_down`], its
//! answer to a call already in its log) is suspected and not taken for the
//! leader again (a call such a member refuses before its log is answered
//! `NotLeader` or `Unavailable`, not applied, and retried elsewhere). A member answering
//! [`Error::NotHosted`] (it hosts no replica of the client's group) is
//! suspected too and the next member asked at once; the call ends with
//! `NotHosted` only when every member said so. Every error says whether
//! the command may have been applied ([`Error::applied`]), and once an
//! attempt of a call may have been applied, the call never ends with an
//! error that says it was not (it ends with `Timeout` or
//! [`Error::Ambiguous`] instead). Callers see a redirect only as
//! [`Error::NotLeader`] after every retry failed. The errors of a write,
//! and whether it may have been applied:
//!
//! - [`Error::Timeout`]: the call's deadline ([`ClientOptions::timeout`])
//!   passed; **the write may or may not have been applied**, and may still
//!   be applied later. Calling the same method again is a *new* write (a new
//!   sequence number) and can apply the command twice. To retry
//!   exactly-once, make the call through a [`WriteOnce`] handle
//!   ([`Client::write_once`], or `write_once()` on a generated client) and
//!   retry through the same handle: every retry re-sends the same sequence
//!   number, so the command is applied at most once and a retry after it was
//!   applied returns its result.
//! - [`Error::Unavailable`], [`Error::NotLeader`], [`Error::Overloaded`]: no
//!   member could take the write within the deadline; it was not applied.
//!   (A call none of whose attempts may have been applied, every member
//!   down or every answer "not leader", ends `Unavailable` or `NotLeader`
//!   at its deadline, not `Timeout`.)
//! - [`Error::Tls`]: every member refused this client's certificate in the
//!   TLS handshake (or the leader did, and the others redirect to it);
//!   nothing was sent, not applied, and retrying with the same certificate
//!   cannot succeed. So for [`Error::Unauthorized`] (the certificate may
//!   not make this call), [`Error::SchemaMismatch`] (the cluster's binary
//!   does not serve this command), [`Error::NotHosted`] (no member hosts
//!   the client's group: re-read the placement), and
//!   [`Error::Unsupported`] (the command's handler is not enabled on the
//!   cluster): final until a binary is upgraded, except when
//!   [`Error::awaits_voter_link`] is true (the leader refused only
//!   because a voter has not linked to it since it started, and the same
//!   call may succeed later with no upgrade; the client does not retry
//!   it by itself: the caller may, later).
//! - [`Error::Ambiguous`], [`Error::Halted`], [`Error::Storage`],
//!   [`Error::Transport`], [`Error::Codec`], [`Error::Protocol`]: as for
//!   `Timeout`, the write's outcome is unknown;
//!   retry it exactly-once through a [`WriteOnce`] handle.
//! - [`Error::SessionExpired`]: the cluster no longer knew this client's
//!   session (it stayed idle longer than the cluster's session time-to-live,
//!   was evicted from the cluster's full session table, or was closed). The
//!   client has already opened a new session for later calls. If no attempt
//!   of the write could have been applied (the session was gone before the
//!   write ever reached a member), the client retries it under the new
//!   session by itself and the caller never sees this error; otherwise **the
//!   write's outcome is unknown**, and neither this client nor a `WriteOnce`
//!   retry can find out: the answer was forgotten with the session.
//! - [`Error::Rejected`]: refused, not applied (a command that does not
//!   decode or is larger than the maximum command size, a session owned by
//!   another certificate, a `WriteOnce` handle reused for another command).
//! - [`Error::Handler`]: applied, and the handler panicked or its output's
//!   `Serialize` returned an error (policy `skip`).
//! - [`Error::AnswerTooLarge`]: applied, but its answer is larger than a
//!   frame carries; do not send it again.
//! - [`Error::AnswerUndecodable`]: applied, but its answer does not decode
//!   as the write's output on this side (made by the typed client, never
//!   sent); do not send it again.
//!
//! Reads are never applied, so any read may be retried freely.
//!
//! # Layout
//!
//! This file keeps what one call goes through: the connect and its dials,
//! the connections and request streams, and the retry loop with its
//! verdicts (`request_tracked`, `final_error`), which share the client's
//! state and are read together when a verdict is checked (about 1,300
//! lines with the module doc and unit tests). The rest is in submodules:
//! the members and their names (`members`), the session and its writes
//! (`session`, with [`WriteOnce`]), and the requests to one member or
//! node and the administrative calls (`node`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{Instrument, debug};

use super::Submit;
use super::addr_hash::AddrHash;
use super::consistency::{Consistency, ReadRouting, Staleness};
use super::mux::{MUX_ACCEPTED, MUX_VERSION, Mux};
use super::refusal::{connect_failed, every_member_refused, hello_failed};
use super::resolve::Names;
use super::wire::{ClientHello, ClientRequest, ClientResponse};
use super::wire::{RequestId, RequestMeta};
use crate::error::{Applied, Error};
use crate::tls::{CLUSTER_SAN, Identity};
use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, FrameError, read_frame, write_frame};
use crate::transport::frame_reader::FrameReader;
use crate::transport::quic::{quic_client_config, transport_config};
use members::Members;
use session::SessionSlot;
pub use session::WriteOnce;

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
/// How long a node request that may run long server-side
/// ([`NodeRequest::MoveReplica`](super::wire::NodeRequest::MoveReplica),
/// [`NodeRequest::BalanceLeaders`](super::wire::NodeRequest::BalanceLeaders))
/// waits for its answer by default ([`Client::node_request`]): a move under
/// the default [`MoveOptions`](crate::multi::MoveOptions) may take its
/// catch-up (120 s) and five steps of up to 30 s each (270 s), plus margin.
/// An enclosing [`by_deadline`] bounds it further.
pub const NODE_ADMIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Client settings: `ClientOptions::default().with_timeout(..)`.
/// `#[non_exhaustive]`: settings are added over time.
///
/// ```
/// use std::time::Duration;
/// let opts = raftkit::client::ClientOptions::default()
///     .with_timeout(Duration::from_secs(2))
///     .with_backoff(Duration::from_millis(20));
/// assert_eq!(opts.timeout, Duration::from_secs(2));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long one call may take, retries included.
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Where linearizable and stale reads go: the leader (the default:
    /// one hop per read, the lowest latency, and what peers of every
    /// version serve), or any member in turn, which spreads the reads'
    /// work over the cluster (see [`ReadRouting`]).
    pub reads: ReadRouting,
    /// The group every request is for, on nodes that host many groups
    /// ([`crate::multi`]); `None` (the default): the cluster's one group.
    pub group: Option<u64>,
}

impl ClientOptions {
    /// Sends every request to `group` of multi-group nodes (see
    /// [`crate::multi`]); a sharded client makes one such client per group.
    pub fn with_group(mut self, group: u64) -> Self {
        self.group = Some(group);
        self
    }

    /// How long one call may take, retries included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The first retry delay (it doubles up to the longest).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest retry delay.
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Where linearizable and stale reads go (see [`ReadRouting`]).
    pub fn with_reads(mut self, reads: ReadRouting) -> Self {
        self.reads = reads;
        self
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            reads: ReadRouting::Leader,
            group: None,
        }
    }
}

struct Inner {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    /// The members' addresses: the cluster addresses that resolved at
    /// connect, those whose lookup ended later, each at the address its
    /// name has now ([`Client::member_list`]).
    members: Members,
    leader: std::sync::Mutex<Option<SocketAddr>>,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// The multiplexed request stream of each connection whose member
    /// speaks protocol version 2 (see [`super::mux`]), with that connection
    /// (the one `conns` holds for the member): a call finds both here under
    /// this lock alone ([`Client::once`]).
    muxes: std::sync::Mutex<HashMap<SocketAddr, (Arc<Mux>, Connection), AddrHash>>,
    /// The session writes go to now (replaced when it expires or closes).
    session: std::sync::Mutex<Arc<SessionSlot>>,
    schema: u64,
    /// The structural schema of a typed client, sent in hellos.
    schema_desc: Option<crate::schema::Schema>,
    opts: ClientOptions,
    rotate: AtomicU64,
    suspects: std::sync::Mutex<HashMap<SocketAddr, Instant>>,
    /// The names this client resolved (its cluster addresses, hints); a
    /// sharded client's group clients share one table.
    names: Names,
    /// Keeps this client's cluster addresses in `names`.
    _pinned: Pinned,
}

/// The cluster addresses a client was given, kept in its (maybe shared)
/// name table while the client lives ([`Names::unpin`] on drop).
struct Pinned {
    names: Names,
    given: Vec<String>,
}

impl Pinned {
    /// Pins `given` in `names` until dropped.
    fn new(names: &Names, given: Vec<String>) -> Pinned {
        names.pin(&given);
        Pinned {
            names: names.clone(),
            given,
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.names.unpin(&self.given);
    }
}

tokio::task_local! {
    /// The id of the call under way on this task: set by the traced entry
    /// points ([`traced`]), sent with every attempt of the call.
    static REQUEST_ID: RequestId;
}

tokio::task_local! {
    /// The deadline set by [`by_deadline`] for the calls made under it.
    static CALL_DEADLINE: Instant;
}

/// Runs `work` with every client call made in it (a connect, a call with
/// all its retries, a sharded client's re-routing) ending by `deadline` at
/// the latest; a call whose own timeout ([`ClientOptions::timeout`]) ends
/// first still ends then. Nested, the earlier deadline holds.
///
/// So a connect and the calls after it share one budget: a command-line
/// tool given `--timeout N` connects and calls within `N` in all, not `N`
/// for the connect and `N` more for the call (stop 52). A call cut short
/// by `deadline` ends as at its own deadline: with an error that says
/// whether it may have been applied.
///
/// ```no_run
/// # async fn f(client: raftkit::client::Client) -> Result<(), raftkit::Error> {
/// use std::time::Duration;
/// let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
/// let status = raftkit::client::by_deadline(deadline, client.status()).await?;
/// # Ok(()) }
/// ```
pub async fn by_deadline<F: std::future::Future>(deadline: Instant, work: F) -> F::Output {
    let deadline = CALL_DEADLINE
        .try_with(|outer| (*outer).min(deadline))
        .unwrap_or(deadline);
    CALL_DEADLINE.scope(deadline, work).await
}

/// The deadline of the enclosing [`by_deadline`], if any: a task spawned
/// under it does not inherit it (it is task-local), so code that spawns
/// calls passes it on (`by_deadline(current_deadline, call)` in the task).
///
/// ```no_run
/// # async fn f(client: raftkit::client::Client) {
/// use raftkit::client::{by_deadline, current_deadline};
/// let deadline = current_deadline();
/// let task = tokio::spawn(async move {
///     match deadline {
///         Some(d) => by_deadline(d, client.status()).await,
///         None => client.status().await,
///     }
/// });
/// # }
/// ```
pub fn current_deadline() -> Option<Instant> {
    CALL_DEADLINE.try_with(|d| *d).ok()
}

/// The deadline of a call (or connect) of timeout `timeout` starting now:
/// `timeout` from now, or the earlier deadline of an enclosing
/// [`by_deadline`].
pub(super) fn deadline_in(timeout: Duration) -> Instant {
    let own = Instant::now() + timeout;
    CALL_DEADLINE
        .try_with(|outer| (*outer).min(own))
        .unwrap_or(own)
}

/// Runs one client call under its own request id and trace span
/// (`raftkit.call{request_id, op}`): the id travels with each request frame
/// ([`RequestMeta`]), so the leader's `raftkit.request` span and its
/// `raftkit.apply` span of the entry show the same id.
async fn traced<T>(op: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let id = RequestId::fresh();
    let span = tracing::debug_span!("raftkit.call", request_id = %id, op);
    REQUEST_ID.scope(id, call).instrument(span).await
}

/// An untyped client of a raftkit cluster: what the generated clients
/// (`KvClient`) wrap, and the way to status and membership calls.
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
/// let cluster = raftkit::dev::Cluster::<Counter>::start(1).await?;
/// let client: raftkit::client::Client = cluster.raw_client().clone();
/// let status = client.status().await?;
/// assert_eq!(status.role, "Leader");
/// // Typed calls through the same connection and session:
/// let counter = CounterClient::new(client);
/// assert_eq!(counter.add(1).await?, 1);
/// cluster.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// Cheap to clone; clones share the
/// session.
///
/// A *view* of a client ([`Client::with`]) serves its reads at another
/// [`Consistency`] and shares everything else.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// How this view's reads are served.
    consistency: Consistency,
    /// The staleness of the latest stale read answered through this view.
    staleness: Arc<std::sync::Mutex<Option<Staleness>>>,
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
        let identity = Self::env_identity()?;
        Self::connect_with(addrs, identity, schema, ClientOptions::default()).await
    }

    /// [`Client::connect`] as a client of state machine `S`: its hellos
    /// carry `S`'s structural schema, and the cluster accepts it when the
    /// schemas are compatible (see [`crate::schema`]), so a client built
    /// from an older or newer version of `S` keeps working across a rolling
    /// upgrade.
    pub async fn connect_for<S: crate::StateMachine, I, A>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let identity = Self::env_identity()?;
        Self::connect_with_for::<S, I, A>(addrs, identity, ClientOptions::default()).await
    }

    /// [`Client::connect_with`] as a client of state machine `S` (see
    /// [`Client::connect_for`]).
    pub async fn connect_with_for<S: crate::StateMachine, I, A>(
        addrs: I,
        identity: Identity,
        opts: ClientOptions,
    ) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        Self::connect_inner(
            addrs,
            identity,
            S::SCHEMA_FINGERPRINT,
            Some(S::schema()),
            opts,
            Names::default(),
        )
        .await
    }

    /// [`Client::connect_with_for`] with the state machine's schema given
    /// as values (`None`: an untyped client), whose names are looked up
    /// and kept in `names`, a table it shares with the other clients given
    /// clones of it (the placement and group clients of one sharded
    /// client: `resolve`, "Invariants").
    pub(super) async fn connect_typed<I, A>(
        addrs: I,
        identity: Identity,
        schema: u64,
        schema_desc: Option<crate::schema::Schema>,
        opts: ClientOptions,
        names: Names,
    ) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        Self::connect_inner(addrs, identity, schema, schema_desc, opts, names).await
    }

    /// The table of the names this client looks up, shared with the
    /// clients given clones of it ([`Client::connect_typed`]).
    pub(super) fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The client identity in `$RAFTKIT_CERTS`. A missing variable or
    /// file is a certificate problem ([`Error::Tls`]: nothing was sent, so
    /// nothing was applied, and retrying cannot help), and says which
    /// files the directory needs.
    pub(crate) fn env_identity() -> Result<Identity, Error> {
        Self::identity_in(std::env::var_os(CERTS_ENV).map(PathBuf::from))
    }

    /// [`Client::env_identity`] for a given value of the variable (`None`:
    /// unset), so that tests need not change the process's environment.
    fn identity_in(dir: Option<PathBuf>) -> Result<Identity, Error> {
        let dir = dir.ok_or_else(|| {
            Error::Tls(format!(
                "no client certificate: set {CERTS_ENV} to a directory holding ca.pem, client.pem and client.key \
                 (`ClusterCa::issue_client(\"client\")?.write_to(dir, \"client\")` writes them), \
                 or connect with an identity (`connect_with`)"
            ))
        })?;
        Identity::load(&dir, "client").map_err(|e| {
            Error::Tls(format!(
                "no client certificate in {CERTS_ENV}={}: {e}; the directory needs ca.pem, client.pem and client.key \
                 (`ClusterCa::issue_client(\"client\")?.write_to(dir, \"client\")` writes them)",
                dir.display()
            ))
        })
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
        Self::connect_inner(addrs, identity, schema, None, opts, Names::default()).await
    }

    async fn connect_inner<I, A>(
        addrs: I,
        identity: Identity,
        schema: u64,
        schema_desc: Option<crate::schema::Schema>,
        opts: ClientOptions,
        mut names: Names,
    ) -> Result<Client, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        // The connect's deadline (its timeout, or an enclosing
        // `by_deadline`): the lookups of the cluster addresses count
        // against it, and run off the runtime worker.
        let deadline = deadline_in(opts.timeout);
        // An address that does not resolve is left out (etcd's clientv3
        // does not fail `New` for an endpoint it cannot dial either): the
        // connect fails for it only when no address resolves.
        let given: Vec<String> = addrs.into_iter().map(|a| a.as_ref().to_string()).collect();
        // Kept in the table while the client lives; unpinned when it (or
        // this connect, failing or cancelled) is gone.
        let pinned = Pinned::new(&names, given);
        let resolved = names.resolve_all(&pinned.given, deadline).await;
        let unresolved = resolved.why;
        for why in &unresolved {
            tracing::warn!(error = %why, "a cluster address does not resolve; left out");
        }
        let Some(&(_, first)) = resolved.found.first() else {
            return Err(not_sent_by_connect(Error::Unavailable(
                if unresolved.is_empty() {
                    "no cluster address given".into()
                } else {
                    format!("no cluster address resolves: {}", unresolved.join("; "))
                },
            )));
        };
        // Nothing is sent before a member answers: every error of a connect
        // says "not applied" (`not_sent_by_connect`).
        let mut config = quic_client_config(&identity, crate::tls::CLIENT_ALPN)?;
        config.transport_config(transport_config(KEEP_ALIVE, IDLE_TIMEOUT));
        let bind: SocketAddr = if first.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| Error::Unavailable("bad bind address".into()))?;
        let endpoint = Endpoint::client(bind)
            .map_err(|e| Error::Unavailable(format!("cannot open a client socket: {e}")))?;
        // This client is given addresses its endpoint can reach (its own
        // family: the other clients sharing the table keep theirs).
        names.prefer_family(first.is_ipv4());
        let client = Client {
            consistency: Consistency::default(),
            staleness: Arc::default(),
            inner: Arc::new(Inner {
                endpoint,
                config,
                members: Members::new(resolved.found, resolved.left_out),
                leader: std::sync::Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                muxes: std::sync::Mutex::new(HashMap::default()),
                session: std::sync::Mutex::new(Arc::new(SessionSlot::default())),
                schema,
                schema_desc,
                opts,
                rotate: AtomicU64::new(0),
                suspects: std::sync::Mutex::new(HashMap::new()),
                names,
                _pinned: pinned,
            }),
        };
        // Dial every member at once, each again after a backoff while its
        // dial fails in a way a retry may change, until one answers or the
        // connect's deadline passes (its timeout).
        let addr = client
            .dial_any(deadline)
            .await
            .map_err(not_sent_by_connect)?;
        // Start there: it answers (if it does not lead, it redirects).
        client.set_leader(Some(addr));
        Ok(client)
    }

    /// Dials every member at once until one answers the hello, or until
    /// `deadline`: the member that answered first.
    ///
    /// As etcd's clientv3 (a connection to every endpoint, each redialled
    /// with backoff by its balancer until the dial timeout), a member whose
    /// dial fails in a way a retry may change (refused, lost, timed out:
    /// [`Error::is_retryable`]) is dialled again after a backoff
    /// ([`ClientOptions::backoff`], doubling up to
    /// [`ClientOptions::max_backoff`]); one whose answer cannot change (a
    /// refused certificate, schema or role) is not. The error, when no
    /// member answered: a member's answer if one gave one (a refused
    /// schema says more than a silence), [`Error::Tls`] if every member
    /// refused this client's TLS handshake, else [`Error::Unavailable`]
    /// with each member's last failure. Nothing of any command is sent.
    async fn dial_any(&self, deadline: Instant) -> Result<SocketAddr, Error> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let members = self.member_list();
        for &addr in members.iter() {
            tokio::spawn(self.clone().dial_until(addr, deadline, tx.clone()));
        }
        drop(tx);
        // The latest failure of each member, in address order (the same
        // error whatever order the members answered in).
        let mut failed: std::collections::BTreeMap<SocketAddr, Error> = Default::default();
        // `None`: every member gave up (its answer cannot change); `Err`:
        // the deadline passed.
        while let Ok(Some((addr, r))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match r {
                Ok(()) => return Ok(addr),
                Err(e) => {
                    failed.insert(addr, e);
                }
            }
        }
        if let Some(answer) = failed
            .values()
            .find(|e| !e.is_retryable() && !matches!(e, Error::Tls(_)))
        {
            return Err(answer.clone());
        }
        let refusals: Vec<String> = failed
            .values()
            .filter_map(|e| match e {
                Error::Tls(why) => Some(why.clone()),
                _ => None,
            })
            .collect();
        if refusals.len() == members.len() {
            return Err(every_member_refused(refusals));
        }
        let why: Vec<String> = failed.values().map(ToString::to_string).collect();
        Err(Error::Unavailable(format!(
            "no member answered within the connect's timeout ({:?}){}",
            self.inner.opts.timeout,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        )))
    }

    /// Dials `addr` until it answers, its failure cannot change, `deadline`
    /// passes, or the connect that asked stopped waiting (`tx` closed);
    /// every outcome is sent on `tx`.
    async fn dial_until(
        self,
        addr: SocketAddr,
        deadline: Instant,
        tx: tokio::sync::mpsc::UnboundedSender<(SocketAddr, Result<(), Error>)>,
    ) {
        let mut backoff = self.inner.opts.backoff;
        let mut rng = StdRng::from_os_rng();
        // Whether a dial of `addr` already failed (and was sent on `tx`).
        let mut failed = false;
        loop {
            let r = match tokio::time::timeout_at(deadline, self.connection(addr)).await {
                Ok(r) => r.map(|_| ()),
                // A redial cut by the deadline keeps the failure sent before
                // it: "too many connections" says more than a silence.
                Err(_) if failed => return,
                Err(_) => Err(Error::Unavailable(format!(
                    "{addr}: no answer before the connect's deadline"
                ))),
            };
            failed = r.is_err();
            let again = match &r {
                Ok(()) => false,
                Err(e) => {
                    debug!(member = %addr, error = %e, "dial failed");
                    self.suspect(addr);
                    e.is_retryable()
                }
            };
            if tx.send((addr, r)).is_err() || !again {
                return;
            }
            // Jittered (review s51 #5): clients that lost a cluster at one
            // moment (a restart, a connection limit) do not redial it in
            // lockstep.
            let wait =
                jittered(backoff, &mut rng).min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(self.inner.opts.max_backoff);
        }
    }

    /// Marks `addr` as just failed; its name, if it was given one, is
    /// looked up again in case it moved (bounded: [`Names::refresh`]).
    pub(super) fn suspect(&self, addr: SocketAddr) {
        if let Ok(mut s) = self.inner.suspects.lock() {
            let now = Instant::now();
            // A suspicion past `SUSPECT_FOR` has no effect (`is_suspect`,
            // `round_robin`): dropped here, so the map holds the members
            // that failed lately, not every address ever suspected
            // (review s55 client #5).
            s.retain(|_, at| now.saturating_duration_since(*at) < SUSPECT_FOR);
            s.insert(addr, now);
        }
        self.inner.members.unreachable(addr, &self.inner.names);
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

    pub(super) async fn connection(&self, addr: SocketAddr) -> Result<Connection, Error> {
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
        // A handshake refused by either side's TLS is a certificate error
        // (`refusal`), not a network one.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Unavailable(format!("{addr}: connection timed out")))?
            .map_err(|e| connect_failed(addr, e))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| hello_failed(addr, &conn, e))?;
        let mut frames = FrameReader::new(recv);
        // Version 2: the hello stream stays open and carries every request
        // of the connection, if the member agrees (see `mux`).
        let hello = ClientHello {
            version: MUX_VERSION,
            schema: self.inner.schema,
            schema_desc: self.inner.schema_desc.clone(),
        };
        write_frame(&mut send, &hello, DEFAULT_MAX_FRAME_BYTES)
            .await
            .map_err(|e| hello_failed(addr, &conn, e))?;
        let answer: ClientResponse = frames
            .next_decoded(DEFAULT_MAX_FRAME_BYTES)
            .await
            .map_err(|e| hello_failed(addr, &conn, e))?;
        let mux = match answer {
            ClientResponse::Err(e) => {
                conn.close(0u32.into(), b"refused");
                return Err(e.into());
            }
            ClientResponse::Ok(v) if v == MUX_ACCEPTED => Some(Mux::start(send, frames)),
            _ => {
                // A member that speaks version 1: a stream per request.
                let _ = send.finish();
                None
            }
        };
        let mut conns = self.inner.conns.lock().await;
        if let Ok(mut muxes) = self.inner.muxes.lock() {
            match mux {
                Some(m) => muxes.insert(addr, (m, conn.clone())),
                None => muxes.remove(&addr),
            };
        }
        conns.insert(addr, conn.clone());
        Ok(conn)
    }

    /// What travels after a request: the call's id and the read
    /// consistency, and the group of a client of a multi-group node (a
    /// group always needs a meta, so a call outside a traced entry point
    /// gets a fresh id).
    pub(super) fn meta(&self, consistency: Consistency) -> Option<RequestMeta> {
        let group = self.inner.opts.group;
        REQUEST_ID
            .try_with(|&request_id| request_id)
            .ok()
            .or_else(|| group.map(|_| RequestId::fresh()))
            .map(|request_id| RequestMeta {
                request_id,
                consistency,
                group,
            })
    }

    /// [`Client::once`] ending with [`Error::Timeout`] at `deadline`, as
    /// under `tokio::time::timeout_at`. On a live request stream the
    /// stream's own deadline sweep times the call (`mux`, "Deadlines": no
    /// timer per call); dialling, and a stream per request, run under a
    /// timer of their own.
    async fn once_by(
        &self,
        addr: SocketAddr,
        request: &ClientRequest,
        sent: &mut bool,
        deadline: Instant,
    ) -> Result<ClientResponse, Error> {
        if let Some((mux, conn)) = self.live_mux(addr) {
            let consistency = self.consistency_of(request);
            let call = mux.call(request, self.meta(consistency), sent, Some(deadline));
            // The stream's tasks time the call only if they run: on
            // another runtime than the caller's they may never run again
            // (a runtime kept but not driven), so the caller's own timer
            // ends the call too. A caller in no tokio context (e.g.
            // `futures::executor::block_on` on a plain thread) has no timer
            // to use (a tokio timer panics there): its call is timed by
            // the stream alone, as before (review s52 #5).
            let r = if mux.runs_here() || tokio::runtime::Handle::try_current().is_err() {
                call.await
            } else {
                tokio::time::timeout_at(deadline, call)
                    .await
                    .unwrap_or(Err(Error::Timeout))
            };
            return self.after_attempt(addr, &conn, r).await;
        }
        tokio::time::timeout_at(deadline, self.once(addr, request, sent))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// The member's live request stream and its open connection, under
    /// the std lock alone: the connection table's async lock and its
    /// second lookup are only for dialling (a write's client side paid
    /// both on every call).
    fn live_mux(&self, addr: SocketAddr) -> Option<(Arc<Mux>, Connection)> {
        self.inner
            .muxes
            .lock()
            .ok()
            .and_then(|m| m.get(&addr).cloned())
            .filter(|(m, c)| !m.is_closed() && c.close_reason().is_none())
    }

    /// The consistency a request travels with: the client's for a read.
    fn consistency_of(&self, request: &ClientRequest) -> Consistency {
        match request {
            ClientRequest::Read { .. } => self.consistency,
            _ => Consistency::default(),
        }
    }

    /// One attempt at `addr`; `sent` is set once the request may have left.
    async fn once(
        &self,
        addr: SocketAddr,
        request: &ClientRequest,
        sent: &mut bool,
    ) -> Result<ClientResponse, Error> {
        // A closed stream or connection takes the path below, which dials
        // afresh exactly as before.
        let (conn, mux) = match self.live_mux(addr) {
            Some((mux, conn)) => (conn, Some(mux)),
            None => {
                let conn = match self.connection(addr).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.suspect(addr);
                        return Err(e);
                    }
                };
                let mux = self
                    .inner
                    .muxes
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&addr).map(|(m, _)| m.clone()))
                    .filter(|m| !m.is_closed());
                (conn, mux)
            }
        };
        let consistency = self.consistency_of(request);
        let attempt = async {
            if let Some(mux) = mux {
                return mux.call(request, self.meta(consistency), sent, None).await;
            }
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            *sent = true;
            match self.meta(consistency) {
                Some(meta) => {
                    write_frame(&mut send, &(request, meta), DEFAULT_MAX_FRAME_BYTES).await
                }
                None => write_frame(&mut send, request, DEFAULT_MAX_FRAME_BYTES).await,
            }
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
        self.after_attempt(addr, &conn, r).await
    }

    /// After an attempt on `conn` to `addr`: a transport error drops the
    /// connection (if no concurrent call replaced it yet) and suspects the
    /// member.
    async fn after_attempt(
        &self,
        addr: SocketAddr,
        conn: &Connection,
        r: Result<ClientResponse, Error>,
    ) -> Result<ClientResponse, Error> {
        if matches!(r, Err(Error::Transport(_))) {
            let mut conns = self.inner.conns.lock().await;
            // Only the connection this attempt used: a concurrent call may
            // have dialed a fresh one already.
            if conns
                .get(&addr)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&addr);
                if let Ok(mut muxes) = self.inner.muxes.lock() {
                    muxes.remove(&addr);
                }
            }
            drop(conns);
            self.suspect(addr);
        }
        r
    }

    /// Where the next attempt goes: the remembered leader, unless `spread`
    /// or none is remembered, else the next member in turn.
    fn next_target(&self, spread: bool) -> SocketAddr {
        // The members are brought up to date first, even when the
        // remembered leader is taken: that is what refreshes names by age
        // and forgets a leader remembered at the old address of a name that
        // moved ([`Client::sync_members`]; atomic loads only while nothing
        // changed). Without it a client whose calls all go
        // to the leader never refreshed a name while the node at its old
        // address answered (review s56 client, follow-up 3).
        self.sync_members();
        if !spread
            && let Ok(l) = self.inner.leader.lock()
            && let Some(a) = *l
        {
            return a;
        }
        self.round_robin()
    }

    /// The next member in turn, skipping members that just failed unless
    /// all did (watches spread over the members this way).
    pub(super) fn round_robin(&self) -> SocketAddr {
        // Round robin, skipping members that failed within `SUSPECT_FOR`;
        // if all did, the one that failed longest ago, so that retries still
        // visit every member in turn.
        let members = self.member_list();
        let n = members.len();
        let start = self.inner.rotate.fetch_add(1, Ordering::Relaxed) as usize;
        let suspects = self.inner.suspects.lock().ok();
        let mut oldest: Option<(Instant, SocketAddr)> = None;
        for k in 0..n {
            let Some(&addr) = members.get((start + k) % n) else {
                break;
            };
            let failed = suspects.as_ref().and_then(|s| s.get(&addr));
            match failed.filter(|t| t.elapsed() < SUSPECT_FOR) {
                None => return addr,
                Some(&t) => {
                    if oldest.is_none_or(|(o, _)| t < o) {
                        oldest = Some((t, addr));
                    }
                }
            }
        }
        match (oldest, members.first()) {
            (Some((_, addr)), _) => addr,
            (None, Some(&first)) => first,
            // A client has a member from its connect on: unreachable.
            (None, None) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The members' addresses now: those of the connect, and the cluster
    /// addresses left out of it whose lookup ended since (each call also
    /// restarts, in the background, the lookup of a left-out name whose
    /// last one failed a while ago: a DNS outage at connect does not keep
    /// a member out for the client's life), each at the address its name
    /// was last found at (a member that cannot be reached has its name
    /// looked up again: [`Client::suspect`]).
    fn member_list(&self) -> Arc<Vec<SocketAddr>> {
        // The leader remembered at the old address of a name that moved is
        // forgotten: the node there now is another (review s55 client #2).
        // Kept though it can drop a leader that moved onto that address in
        // an IP swap (review s56 client #4; a routing hint only: no verdict
        // changes, such calls end `NotLeader`/`Unavailable`, not applied,
        // until the leader's own name is refreshed): without it a client
        // whose calls all go to the remembered leader (`next_target`) keeps
        // calling the old address for as long as the node there answers,
        // which is the bug of s55 #2 (the age test's last assertion).
        self.inner
            .members
            .current(&self.inner.names, |old| self.forget_leader_at(old))
    }

    /// What [`Client::member_list`] does, without reading the list: a call
    /// to the remembered leader needs none ([`Members::sync`]).
    fn sync_members(&self) {
        self.inner
            .members
            .sync(&self.inner.names, |old| self.forget_leader_at(old));
    }

    /// Forgets the remembered leader if it is `old`, an address a member's
    /// name left (see [`Client::member_list`]).
    fn forget_leader_at(&self, old: SocketAddr) {
        if let Ok(mut l) = self.inner.leader.lock()
            && *l == Some(old)
        {
            *l = None;
        }
    }

    /// Waits until the lookups in flight of the names standing for the
    /// members at `addrs` ended (their members may be about to move), or
    /// until, at the end of one of them, `moved` holds of the member list;
    /// at once if none is in flight. Unbounded: the caller bounds it by its
    /// deadline.
    pub(super) async fn member_lookups_end(
        &self,
        addrs: &[SocketAddr],
        moved: impl Fn(&[SocketAddr]) -> bool,
    ) {
        use futures_util::StreamExt as _;
        let mut lookups: futures_util::stream::FuturesUnordered<_> = self
            .inner
            .members
            .lookups_of(addrs, &self.inner.names)
            .into_iter()
            .collect();
        // Each lookup's end is a chance that its member moved: one that
        // moved is followed at once, not after the slowest lookup (review
        // s57 client #2).
        while lookups.next().await.is_some() {
            if moved(&self.members()) {
                return;
            }
        }
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
    ///
    /// # Errors
    ///
    /// Every error a call can end with, and whether its command may have
    /// been applied ([`Error::applied`]; the module docs say how to retry):
    ///
    /// - not applied ([`Applied::No`]): [`Error::Unavailable`] (no member
    ///   could take it; also at the deadline when no attempt may have been
    ///   applied: every dial failed, or every member that answered said
    ///   "not applied"), [`Error::NotLeader`], [`Error::Overloaded`]
    ///   (retryable);
    ///   [`Error::Tls`] (every member refused this client's TLS handshake,
    ///   or the leader did and the others redirect to it: nothing was sent),
    ///   [`Error::Unauthorized`], [`Error::Rejected`],
    ///   [`Error::Unsupported`] (final until an upgrade, unless
    ///   [`Error::awaits_voter_link`]: then it may succeed later),
    ///   [`Error::SchemaMismatch`], [`Error::NotHosted`] (not retried by
    ///   the client);
    /// - may have been applied ([`Applied::Maybe`]): [`Error::Timeout`] (the
    ///   deadline passed after an attempt that may have been applied: its
    ///   request left this client and no answer said it was not, or an
    ///   earlier call of the same [`WriteOnce`] write may have applied),
    ///   [`Error::Ambiguous`], [`Error::Halted`], [`Error::Storage`],
    ///   [`Error::Transport`], [`Error::Codec`], [`Error::Protocol`],
    ///   [`Error::SessionExpired`];
    /// - applied ([`Applied::Yes`]): [`Error::Handler`],
    ///   [`Error::AnswerTooLarge`].
    ///
    /// ([`Error::Compacted`] and [`Error::WatchLagged`] end watches only.)
    pub async fn request(&self, mut request: ClientRequest) -> Result<ClientResponse, Error> {
        let deadline = deadline_in(self.inner.opts.timeout);
        self.request_tracked(&mut request, None, &mut false, deadline)
            .await
    }

    /// [`Client::request`], with `uncertain` saying whether an attempt of
    /// the call may have been applied without an answer saying so. On entry
    /// it says whether an earlier call of the same write (a [`WriteOnce`]
    /// retry) may have been applied; it is set when an attempt reached a
    /// member and was retried after an error that leaves its outcome open
    /// (a lost connection, a timeout, `Ambiguous`, a failed or halted
    /// member; a `NotLeader` or `Overloaded` answer says "not proposed").
    /// A write answered `SessionExpired` that is not `uncertain` was not
    /// applied. The call ends by `deadline`.
    ///
    /// A session write of `acks`' session carries, in every attempt, the
    /// acknowledgement of that moment ([`SessionSlot::acked_below`]), not
    /// the one of the call's start: a write answered `Overloaded` because
    /// its session's window is full of replies below it waits for exactly
    /// those acknowledgements (session rule 6, `runtime::session`).
    async fn request_tracked(
        &self,
        request: &mut ClientRequest,
        acks: Option<&SessionSlot>,
        uncertain: &mut bool,
        deadline: Instant,
    ) -> Result<ClientResponse, Error> {
        let mut backoff = self.inner.opts.backoff;
        let mut last = Error::Unavailable("no attempt made".into());
        // The members that answered that they do not host this group.
        let mut not_hosted: HashSet<SocketAddr> = HashSet::new();
        // The members that refused this client's TLS handshake in this call
        // (`refusal`), with why: a stale member of another CA does not end
        // the call while another may serve it.
        let mut refused: HashMap<SocketAddr, String> = HashMap::new();
        // A member's `NotHosted` answer, the one to end on if no member can
        // serve the call.
        let mut not_hosted_answer: Option<Error> = None;
        // The member the last redirect pointed at when it had refused this
        // client's handshake in this call: the leader refuses this client
        // (or the followers still believe in a stale member that does).
        let mut refusing_leader: Option<SocketAddr> = None;
        // A read spread over the members goes to the next one in turn; a
        // retry follows the redirect or the leader, like any request.
        let mut spread = matches!(request, ClientRequest::Read { .. })
            && self.inner.opts.reads == ReadRouting::AnyMember
            && self.consistency != Consistency::Lease;
        loop {
            let mut target = self.next_target(spread);
            if (not_hosted.contains(&target) || refused.contains_key(&target))
                && let Some(&other) = self
                    .member_list()
                    .iter()
                    .find(|m| !not_hosted.contains(m) && !refused.contains_key(m))
            {
                // Every member is asked before one that cannot serve this
                // client is asked again.
                target = other;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let last = match (refusing_leader.and_then(|l| refused.get(&l)), last) {
                    // The members that serve redirect to one that refuses
                    // this client: say so, not `NotLeader` (nothing was
                    // sent to the leader; retrying cannot help).
                    (Some(why), _) => Error::Tls(format!(
                        "{why} (it leads: the other members redirect to it)"
                    )),
                    // One member's refusal while the others did not answer
                    // in time (an outage) is no certificate error of the
                    // call: it ends retryable.
                    (None, Error::Tls(why)) => {
                        Error::Unavailable(format!("{why}; no other member answered in time"))
                    }
                    (None, last) => last,
                };
                return Err(final_error(last, *uncertain, true));
            }
            if let (Some(slot), ClientRequest::Write { session, .. }) = (acks, &mut *request) {
                session.acked_below = slot.acked_below();
            }
            let mut sent = false;
            debug!(member = %target, "sending the request");
            let outcome = self.once_by(target, request, &mut sent, deadline).await;
            let e = match outcome {
                Ok(ClientResponse::Err(e)) => Error::from(e),
                Ok(ok) => {
                    debug!(member = %target, "answered");
                    if !spread {
                        self.set_leader(Some(target));
                    }
                    return Ok(ok);
                }
                Err(e) => e,
            };
            debug!(member = %target, error = %e, "attempt failed");
            spread = false;
            // A member that does not host this client's group (in a sharded
            // deployment: a node outside the group's replicas, such as a
            // spare given among the seeds) cannot serve the call, and
            // nothing was applied: the other members are asked first; only
            // when none hosts the group does the call end with `NotHosted`
            // (a sharded client then re-reads the placement).
            //
            // So with a member that refused this client's TLS handshake
            // (`refusal`: a stale member left with another CA, say): the
            // call ends with `Error::Tls` only when every member refused
            // (nothing was sent to any; retrying cannot help).
            if matches!(e, Error::NotHosted { .. } | Error::Tls(_)) {
                self.suspect(target);
                self.set_leader(None);
                match &e {
                    Error::Tls(why) => {
                        debug!(member = %target, reason = %why, "member refused the TLS handshake; asking the others");
                        refused.insert(target, why.clone());
                    }
                    _ => {
                        not_hosted.insert(target);
                        not_hosted_answer = Some(e.clone());
                    }
                }
                if self
                    .member_list()
                    .iter()
                    .any(|m| !not_hosted.contains(m) && !refused.contains_key(m))
                {
                    last = e;
                    continue;
                }
                let e = match (e, not_hosted_answer) {
                    // Some did not host the group: that answer (a sharded
                    // client re-reads the placement).
                    (Error::Tls(_), Some(hosted)) => hosted,
                    (Error::Tls(_), None) => every_member_refused(refused.into_values().collect()),
                    (e, _) => e,
                };
                return Err(final_error(e, *uncertain, false));
            }
            if !e.is_retryable() {
                return Err(final_error(e, *uncertain, false));
            }
            // Retried without an answer that says what happened: unknown.
            // (An attempt that never left this client applied nothing.)
            *uncertain |= sent && e.applied() != Applied::No;
            match &e {
                Error::NotLeader { hint } => {
                    // A hint at a member that just failed is stale (it is
                    // the dead leader the followers still believe in). So
                    // is one at a member that refused this client's
                    // handshake in this call: following it at once would
                    // send the call past it to a follower again, at round-
                    // trip speed; it is backed off instead, and if it still
                    // leads at the deadline the call ends with its refusal.
                    // Looked up off the worker, by the deadline (a hint
                    // that does not resolve is not followed).
                    let hinted = match hint.as_deref() {
                        Some(h) => self.inner.names.resolve(h, deadline).await.ok(),
                        None => None,
                    };
                    refusing_leader = hinted.filter(|n| refused.contains_key(n));
                    let next = hinted.filter(|n| !self.is_suspect(*n) && !refused.contains_key(n));
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
            // A session write refused `Overloaded` while writes below it
            // were unacknowledged may be refused for its session's full
            // window (`runtime::apply`): a resend before the acknowledgement
            // rises would be refused again, each a replicated entry. It
            // waits for the rise (a lower write answered, or its `WriteOnce`
            // handle dropped), within the deadline, as well as the backoff.
            let waits_for = match (&e, acks, &*request) {
                (Error::Overloaded, Some(slot), ClientRequest::Write { session, .. })
                    if session.acked_below < session.seq =>
                {
                    Some((slot, session.acked_below))
                }
                _ => None,
            };
            last = e;
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(self.inner.opts.max_backoff);
            if let Some((slot, sent)) = waits_for {
                slot.acked_past(sent, deadline).await;
            }
        }
    }

    /// The options this client was made with.
    pub(super) fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The member addresses this client was given (those that resolved at
    /// connect, and those that resolved since), each at the address its
    /// name was last found at.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.member_list().as_ref().clone()
    }

    fn expect_ok(r: ClientResponse) -> Result<Vec<u8>, Error> {
        match r {
            ClientResponse::Ok(out) => Ok(out),
            ClientResponse::Err(e) => Err(e.into()),
            ClientResponse::Status(_) => Err(Error::Protocol("unexpected status report".into())),
            ClientResponse::Events { .. } => Err(Error::Protocol("unexpected watch events".into())),
            ClientResponse::Stale { output, .. } => Ok(output),
        }
    }

    /// A view of this client whose reads are served at `consistency`
    /// (see [`Consistency`]); writes, the session and the connections are
    /// shared. `kv.with(Consistency::Lease).get(k)` on a generated client.
    pub fn with(&self, consistency: Consistency) -> Client {
        Client {
            inner: self.inner.clone(),
            consistency,
            staleness: Arc::default(),
        }
    }

    /// How this view's reads are served.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// The staleness of the latest [`Consistency::Stale`] read answered
    /// through this view (each [`Client::with`] starts a view with none).
    pub fn last_staleness(&self) -> Option<Staleness> {
        self.staleness.lock().ok().and_then(|s| *s)
    }

    /// A stale read of an encoded query, answered by the member the client
    /// reaches (see [`ClientOptions::reads`]) with how stale it may be.
    pub async fn read_stale(&self, query: Vec<u8>) -> Result<(Vec<u8>, Staleness), Error> {
        let view = self.with(Consistency::Stale);
        let out = view.read(query).await?;
        // A peer that predates stale reads answers linearizably: nothing
        // was missing then.
        Ok((out, view.last_staleness().unwrap_or_default()))
    }
}

/// How far a redial's backoff is jittered either way (a quarter).
const REDIAL_JITTER: f64 = 0.25;

/// `backoff` jittered by up to [`REDIAL_JITTER`] of it either way.
fn jittered(backoff: Duration, rng: &mut impl Rng) -> Duration {
    backoff.mul_f64(rng.random_range(1.0 - REDIAL_JITTER..=1.0 + REDIAL_JITTER))
}

/// The error of a connect that failed: a connect sends no command, so it
/// says "not applied" ([`Applied::No`]) whatever failed (a refused or lost
/// dial is [`Error::Transport`], "may have been applied", in a call), and
/// it is retryable exactly when `e` is (stop 51: a connect every member
/// refused ended `Transport`, and a sharded client returned that as the
/// outcome of a write whose group's client could not connect).
fn not_sent_by_connect(e: Error) -> Error {
    if e.applied() == Applied::No {
        return e;
    }
    let why = format!("could not connect, nothing was sent: {e}");
    if e.is_retryable() {
        Error::Unavailable(why)
    } else {
        Error::Rejected(why)
    }
}

/// The error a call ends with: `e`, unless an earlier attempt may have been
/// applied and `e` says the command was not (then the call timed out, or its
/// outcome is unknown).
///
/// At the deadline the verdict is `maybe_applied` (the call's `uncertain`
/// flag: whether any attempt, or an earlier call of the same [`WriteOnce`]
/// write, may have been applied), and nothing else:
/// - if one may have, the call ends [`Error::Timeout`] ("may have been
///   applied"), or with `e` if it already says so;
/// - if none may have (every attempt either never left this client, its
///   dial failed or was cut short by the deadline, or was answered "not
///   applied": `NotLeader`, `Overloaded`, ...), it ends with an error that
///   says "not applied": `e` if it does (`NotLeader`, `Overloaded`,
///   `Unavailable`), otherwise [`Error::Unavailable`] saying why.
///
/// (Until stop 51 the second case was decided by whether any attempt had
/// *reached* a member: a call told `NotLeader` whose later dials all failed
/// ended `Timeout`, "may have been applied", although nothing was.)
fn final_error(e: Error, maybe_applied: bool, at_deadline: bool) -> Error {
    if at_deadline && !maybe_applied {
        return match e {
            e if e.applied() == Applied::No => e,
            Error::Timeout => Error::Unavailable(
                "no member took the call before its deadline (nothing was applied)".into(),
            ),
            other => Error::Unavailable(format!(
                "{other}; no member took the call before its deadline (nothing was applied)"
            )),
        };
    }
    if at_deadline {
        return match e {
            e if e.applied() == Applied::No => Error::Timeout,
            Error::Transport(_) => Error::Timeout,
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

mod members;
mod node;
mod session;

#[cfg(test)]
mod meta_tests;

#[cfg(test)]
mod verdicts;

#[cfg(test)]
mod connect_tests;

#[cfg(test)]
mod window_tests;

#[cfg(test)]
mod live_stream_tests;

#[cfg(test)]
mod resolve_tests;

#[cfg(test)]
mod open_tests;

#[cfg(test)]
mod status_deadline_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose `$RAFTKIT_CERTS` is unset, or names a directory
    /// without a client identity, fails with a certificate error that names
    /// the variable and the files: nothing was sent (it was
    /// `Error::Transport`: "may have been applied", retryable). The
    /// variable's value is passed in: changing the process's environment
    /// while other tests' threads run is undefined behaviour.
    #[test]
    fn a_client_without_its_certificate_files_fails_with_a_certificate_error() {
        let empty = tempfile::tempdir().expect("tempdir");
        for (dir, what) in [
            (Some(empty.path().to_path_buf()), "client.pem"),
            (None, CERTS_ENV),
        ] {
            let Err(err) = Client::identity_in(dir.clone()) else {
                panic!("{dir:?}: no certificate, yet an identity");
            };
            assert!(
                matches!(&err, Error::Tls(m) if m.contains(what) && m.contains(CERTS_ENV)),
                "{dir:?}: {err:?}"
            );
            assert_eq!(err.applied(), crate::error::Applied::No, "{err:?}");
            assert!(!err.is_retryable(), "{err:?}");
        }
    }

    /// Review s51 #5: every client redialled a member after the same
    /// backoff, so a fleet that lost the cluster at one moment redialled
    /// it in lockstep. A redial's backoff is jittered by up to a quarter
    /// either way: never outside that, and not the same every time.
    #[test]
    fn a_redial_backoff_is_jittered_by_up_to_a_quarter() {
        let backoff = Duration::from_millis(400);
        let mut rng = StdRng::seed_from_u64(52);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(backoff, &mut rng)).collect();
        for w in &waits {
            assert!(
                *w >= Duration::from_millis(300) && *w <= Duration::from_millis(500),
                "{w:?} is outside 400 ms +-25%"
            );
        }
        let low = waits.iter().filter(|w| **w < Duration::from_millis(350));
        let high = waits.iter().filter(|w| **w > Duration::from_millis(450));
        assert!(
            low.count() > 10 && high.count() > 10,
            "the backoff is not spread over its range: {:?}",
            &waits[..10]
        );
    }

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
        // At the deadline the flag alone decides (stop 51): a call none of
        // whose attempts may have applied ends "not applied", whatever the
        // last attempt's error, also after a member answered it.
        for last in [
            Error::Timeout,
            Error::Transport("dial refused".into()),
            Error::Halted {
                message: "h".into(),
            },
        ] {
            let verdict = final_error(last.clone(), false, true);
            assert!(
                matches!(verdict, Error::Unavailable(_)),
                "{last:?}: {verdict:?}"
            );
            let verdict = final_error(last.clone(), true, true);
            assert_eq!(verdict.applied(), Applied::Maybe, "{last:?}: {verdict:?}");
        }
    }
}
