//! Building and starting a peer.
//!
//! Size: past 1,000 lines because its documented options and `start` share
//! the builder's private fields, and `start`'s step order is an invariant:
//! a bad configuration or certificate fails before anything is written, and
//! another binary's directory becomes this one's only once every step that
//! can fail has passed. The join helpers would move out first.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::admission::{self, Admission};
use super::apply::{self, ApplyStatus};
use super::node::{NodeTask, WallClock};
use super::persist::{self, PeerMeta, Persister, SnapshotSaver, StorageChoice};
use super::session::{DEFAULT_MAX_SESSIONS, SESSION_TTL_MS};
use super::{Inner, Peer, PeerStatus};
use crate::core::{Config, Configuration, Message, NodeId, Raft, Restored};
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::state_machine::StateMachine;
use crate::storage::WalOptions;
use crate::storage::vfs::SharedFs;
use crate::tls::Identity;
use crate::transport::Transport;
use crate::transport::inbox_bytes::{InboxBytes, InboxRx, InboxTx};
use crate::transport::quic::{QuicConfig, QuicTransport};

/// The most messages a node task's inbox holds (besides its bytes,
/// `transport::inbox_bytes`).
const INBOX_CAPACITY: usize = 4096;

/// Makes a transport for a node, given its id and the channel inbound
/// messages must go to.
pub type TransportFactory =
    Box<dyn FnOnce(NodeId, mpsc::Sender<Message>) -> Arc<dyn Transport> + Send>;

/// Makes a transport for a node whose inbound messages each hold their
/// charge to a node-wide inbox budget (a multi-group node's groups,
/// `transport::inbox_bytes`).
pub(crate) type ChargedFactory = Box<
    dyn FnOnce(NodeId, mpsc::Sender<crate::transport::inbox_bytes::Charged>) -> Arc<dyn Transport>
        + Send,
>;

/// The transport a builder was given instead of its own QUIC one.
enum MakeTransport {
    /// [`PeerBuilder::transport`].
    Plain(TransportFactory),
    /// [`PeerBuilder::charged_transport`].
    Charged(ChargedFactory),
}

/// Wraps the peer transport a builder made (see
/// [`PeerBuilder::wrap_transport`]).
pub type TransportWrap = Box<dyn FnOnce(Arc<dyn Transport>) -> Arc<dyn Transport> + Send>;

/// `Kv::peer()`: the entry point for starting a peer of a state machine.
///
/// Implemented for every [`StateMachine`] that is also [`Default`]:
/// `Default::default()` is the state a brand-new cluster starts from (a peer
/// restarting from a snapshot restores its state instead), so a state
/// machine needs `#[derive(Default)]` (or an `impl Default`) to be started
/// as a peer. [`client::Local`](crate::client::Local) needs no `Default`.
pub trait PeerExt: StateMachine + Default {
    /// A builder for a peer of this state machine.
    fn peer() -> PeerBuilder<Self> {
        PeerBuilder::new()
    }
}

impl<S: StateMachine + Default> PeerExt for S {}

/// Configures and starts a [`Peer`].
///
/// Defaults: name `<state machine name>@<advertised address>`, data in
/// `./data/<name>`, a 50 ms tick, elections after 10–20 ticks, heartbeats
/// every 2 ticks, a snapshot every 10,000 applied entries, commands of at
/// most 8 MiB, at most 16,384 commands and 64 MiB of them in flight (a call
/// waits up to 2 s for room, then fails with `Overloaded`), client sessions
/// idle for an hour expire, at most 10,000 client sessions.
///
/// A node of a real cluster (three processes, each with its own node
/// certificate of the cluster CA; see [`crate::tls`]):
///
/// ```no_run
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
/// # async fn run() -> Result<(), raftkit::Error> {
/// let peer = Counter::peer()
///     .listen("10.0.0.1:7001")
///     .data_dir("/var/lib/counter")
///     .bootstrap_members(["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])
///     .certs_dir("/etc/counter/certs", "counter@10.0.0.1:7001")?
///     .start()
///     .await?;
/// // A restart needs only the data directory: name, address and
/// // certificate are stored there.
/// peer.shutdown().await?;
/// let peer = Counter::peer().data_dir("/var/lib/counter").start().await?;
/// # Ok(()) }
/// ```
///
/// A peer with no certificate at all fails at `start`, before writing
/// anything, with an [`Error::Tls`] that says what to add.
pub struct PeerBuilder<S> {
    name: Option<String>,
    listen: Option<String>,
    listen_socket: Option<std::net::UdpSocket>,
    advertise: Option<String>,
    storage: Option<StorageChoice>,
    bootstrap: Option<Vec<String>>,
    join: Option<Vec<String>>,
    tick: Duration,
    election_ticks: u32,
    heartbeat_ticks: u32,
    clock_drift_bound: f64,
    snapshot_every: u64,
    snapshot_log_ratio: f64,
    max_snapshot_bytes: u64,
    transport: Option<MakeTransport>,
    wrap_transport: Option<TransportWrap>,
    identity: Option<Identity>,
    revocation_lists: Vec<Vec<u8>>,
    fs: SharedFs,
    wal: WalOptions,
    max_command_bytes: usize,
    max_in_flight: (usize, usize),
    admission_wait: Duration,
    client_limits: super::intake::ConnectionLimits,
    client_body_stall: Duration,
    client_min_body_rate: u64,
    client_unreceived_per_certificate: Option<usize>,
    client_receive_window: u64,
    peer_connections: (usize, usize),
    handshakes: (usize, Duration),
    session_ttl: Duration,
    max_sessions: u64,
    max_sessions_per_owner: u64,
    max_reply_bytes_per_session: u64,
    max_reply_bytes_per_owner: u64,
    wall_clock: Option<WallClock>,
    threads: super::threads::Threads,
    apply_inline: bool,
    seed: Option<u64>,
    session_ids: Option<super::session::SessionIdSource>,
    watch_journal_bytes: usize,
    watches_per_certificate: usize,
    group_storage: Option<GroupStorage>,
    tick_gate: Option<Arc<super::TickGate>>,
    schema_book: Option<Arc<crate::schema::SchemaBook>>,
    status_interval: Duration,
    gather: bool,
    membership_fence: Option<(crate::core::Index, crate::core::Term)>,
    receive_budget: Option<Arc<super::receive_budget::ReceiveBudget>>,
    _sm: PhantomData<fn() -> S>,
}

/// The storage of one group of a multi-group node (`crate::multi`): its
/// log is a view of the node's shared journal and its writes go to the
/// journal's commit thread.
pub(crate) struct GroupStorage {
    /// The group's log, for reading back and bootstrapping.
    pub(crate) log: persist::BoxedLog,
    /// The group's snapshot store.
    pub(crate) snapshots: Box<dyn crate::storage::SnapshotStore + Send>,
    /// Where the group's writes go once it runs.
    pub(crate) sink:
        Box<dyn FnOnce(persist::SharedSnapshots) -> Box<dyn persist::SharedSink> + Send>,
    /// The log and snapshot places, for errors.
    pub(crate) places: (PathBuf, PathBuf),
}

/// The default maximum size of one command: half a transport frame, so that
/// an AppendEntries carrying it (or a batch of smaller entries, at most
/// 1 MiB) always fits one frame.
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 8 << 20;

/// What a frame carries besides the command bytes of its entries (message
/// and entry headers, the envelope, the client session): generously.
const FRAME_OVERHEAD: usize = 64 << 10;

impl<S: StateMachine + Default> Default for PeerBuilder<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: StateMachine + Default> PeerBuilder<S> {
    /// A builder with the defaults.
    pub fn new() -> Self {
        PeerBuilder {
            name: None,
            listen: None,
            listen_socket: None,
            advertise: None,
            storage: None,
            bootstrap: None,
            join: None,
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            clock_drift_bound: crate::core::config::DEFAULT_CLOCK_DRIFT_BOUND,
            snapshot_every: 10_000,
            snapshot_log_ratio: crate::core::config::DEFAULT_SNAPSHOT_LOG_RATIO,
            max_snapshot_bytes: crate::core::config::DEFAULT_MAX_SNAPSHOT_BYTES,
            transport: None,
            wrap_transport: None,
            identity: None,
            revocation_lists: Vec::new(),
            fs: crate::storage::vfs::real(),
            wal: WalOptions::default(),
            max_command_bytes: DEFAULT_MAX_COMMAND_BYTES,
            max_in_flight: (
                admission::DEFAULT_MAX_IN_FLIGHT,
                admission::DEFAULT_MAX_IN_FLIGHT_BYTES,
            ),
            admission_wait: admission::DEFAULT_ADMISSION_WAIT,
            client_limits: super::intake::ConnectionLimits::default(),
            client_body_stall: super::intake::DEFAULT_BODY_STALL,
            client_min_body_rate: super::intake::DEFAULT_MIN_BODY_RATE,
            client_unreceived_per_certificate: None,
            client_receive_window: crate::transport::quic::DEFAULT_CLIENT_RECEIVE_WINDOW,
            peer_connections: (
                crate::transport::quic::DEFAULT_PEER_CONNECTIONS_PER_NODE,
                crate::transport::quic::DEFAULT_MAX_PEER_CONNECTIONS,
            ),
            handshakes: (
                crate::transport::quic::DEFAULT_MAX_HANDSHAKES,
                crate::transport::quic::DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            session_ttl: Duration::from_millis(SESSION_TTL_MS),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_owner: super::session::DEFAULT_MAX_SESSIONS_PER_OWNER,
            max_reply_bytes_per_session: super::session::DEFAULT_MAX_REPLY_BYTES_PER_SESSION,
            max_reply_bytes_per_owner: super::session::DEFAULT_MAX_REPLY_BYTES_PER_OWNER,
            wall_clock: None,
            threads: super::threads::Threads::default(),
            apply_inline: false,
            seed: None,
            session_ids: None,
            watch_journal_bytes: super::watch::DEFAULT_WATCH_JOURNAL_BYTES,
            watches_per_certificate: super::watch::DEFAULT_WATCHES_PER_CERTIFICATE,
            group_storage: None,
            tick_gate: None,
            schema_book: None,
            status_interval: super::node::STATUS_INTERVAL,
            gather: false,
            membership_fence: None,
            receive_budget: None,
            _sm: PhantomData,
        }
    }

    /// The peer's TLS identity: a `node` certificate of the cluster CA issued
    /// to this peer's name (see [`crate::tls`]); peers talk over QUIC with
    /// mutual TLS. It is copied into the data directory, so a restart needs
    /// only the directory.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Certificate revocation lists (PEM, one or more `X509 CRL` blocks,
    /// signed by the cluster CA) to refuse certificates by, as etcd's
    /// `--client-crl-file`: a peer or client whose certificate is listed is
    /// refused at the TLS handshake, and so is a listed node this peer
    /// dials (its `join` included). A certificate no list covers is
    /// accepted; none by default (nothing revoked). Retire a node by
    /// removing it and revoking its certificate: a node certificate may
    /// otherwise add itself back. See [`crate::tls`] (Revocation).
    ///
    /// The lists are not stored in the data directory: give them at every
    /// start. Checked at [`start`](Self::start): a list that does not parse
    /// or is not signed by the identity's CA fails the start with
    /// [`Error::Tls`] before anything is written. Called again, the lists
    /// add up.
    ///
    /// ```no_run
    /// # use raftkit::prelude::*;
    /// # #[derive(StateMachine, Default, Serialize, Deserialize)]
    /// # struct Counter { n: u64 }
    /// # #[raftkit::state_machine]
    /// # impl Counter {
    /// #     #[write]
    /// #     fn add(&mut self, by: u64) -> u64 { self.n += by; self.n }
    /// # }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // crl.pem: `ClusterCa::revocation_list_pem` or `openssl ca -gencrl`.
    /// let peer = Counter::peer()
    ///     .listen("10.0.0.1:7001")
    ///     .data_dir("/var/lib/counter")
    ///     .revocation_list_pem(std::fs::read("/etc/counter/crl.pem")?)
    ///     .start()
    ///     .await?;
    /// # drop(peer);
    /// # Ok(()) }
    /// ```
    pub fn revocation_list_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.revocation_lists.push(pem.into());
        self
    }

    /// Loads the identity `<name>.pem` / `<name>.key` / `ca.pem` from `dir`
    /// (as written by `ClusterCa::issue_node(..).write_to(dir, name)`).
    /// `name` names the files; the certificate must be a `node`
    /// certificate issued to this peer's name (checked at
    /// [`start`](Self::start)), so naming the files after the peer, as
    /// `kv serve` does (`kv@127.0.0.1:7001.pem`), keeps them apart.
    /// Missing or unreadable files are an [`Error::Tls`] naming them.
    pub fn certs_dir(
        mut self,
        dir: impl AsRef<std::path::Path>,
        name: &str,
    ) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let identity = Identity::load(dir, name).map_err(|e| {
            Error::Tls(format!(
                "no identity {name:?} in {}: {e}; certs_dir(dir, {name:?}) reads {name}.pem, {name}.key and ca.pem \
                 (`ClusterCa::issue_node({name:?}, &[])?.write_to(dir, {name:?})` writes them for a node of that name)",
                dir.display()
            ))
        })?;
        self.identity = Some(identity);
        Ok(self)
    }

    /// The address to listen on, e.g. `127.0.0.1:7001`.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Serves on `socket`, a UDP socket the caller bound already (to port
    /// 0, say, to learn a free port): the peer takes it over and binds
    /// nothing itself, so no other process can take the port between the
    /// caller learning it and the peer listening on it (as it could if the
    /// caller released the port for [`listen`](Self::listen) to bind). The
    /// listen address is the socket's local address, unless `listen` names
    /// one: that must resolve to the socket's address (a restarted peer's
    /// stored one too), or [`start`](Self::start) fails with
    /// [`Error::Rejected`], nothing served. Unused with a transport of the
    /// caller's ([`PeerBuilder::transport`]).
    pub fn listen_socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.listen_socket = Some(socket);
        self
    }

    /// The address other members reach this peer at (default: the listen
    /// address).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// Overrides the default name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the log, snapshots and metadata live (default `./data/<name>`).
    /// A directory that already holds a peer restarts it: no other setting
    /// is needed.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Some(StorageChoice::Disk(dir.into()));
        self
    }

    /// Keeps the log in memory only: nothing survives the process.
    pub fn in_memory(mut self) -> Self {
        self.storage = Some(StorageChoice::Memory);
        self
    }

    /// Founds a new cluster of this peer alone. Ignored when the data
    /// directory already holds a peer.
    pub fn bootstrap(mut self) -> Self {
        self.bootstrap = Some(Vec::new());
        self
    }

    /// Founds a new cluster of the peers at `addrs` (this one included; all
    /// named by default). Every founding member must be started with the
    /// same list. Ignored when the data directory already holds a peer.
    pub fn bootstrap_members<I, A>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.bootstrap = Some(addrs.into_iter().map(Into::into).collect());
        self
    }

    /// Joins an existing cluster through any of its members at `addrs`: the
    /// new peer starts empty (it never campaigns), asks the leader to add it
    /// (as a learner, then a voter once caught up) and retries until it is
    /// added. When the data directory already holds a peer, it restarts
    /// with its old identity and log, and asks again only while its own
    /// restored configuration lists it as a learner (it stopped between
    /// the learner and voter steps); a voter, or a node removed since, does
    /// not ask.
    ///
    /// The request carries this binary's structural schema: a cluster
    /// running an older or newer binary of the state machine whose schema
    /// is compatible ([`crate::schema`]) adds it, so an upgrade may add
    /// nodes of the new binary and then remove the old ones. Needs the QUIC
    /// transport: with [`Self::transport`], `start` fails.
    pub fn join<I, A>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.join = Some(addrs.into_iter().map(Into::into).collect());
        self
    }

    /// The tick interval: elections take 10–20 ticks, heartbeats 2.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Test only: the election timeout in ticks (default 10; elections
    /// then take `n`–`2n` ticks). Must stay above the heartbeat's 2 ticks.
    #[cfg(test)]
    pub(crate) fn election_ticks(mut self, n: u32) -> Self {
        self.election_ticks = n;
        self
    }

    /// The clock drift bound of lease reads (default 1.25): the largest
    /// factor by which the monotonic clocks of two members may run apart
    /// over an election timeout, pauses included. A leader's lease lasts
    /// `(election_ticks - 1) / bound` ticks after the start of its latest
    /// heartbeat round a quorum acknowledged (thesis §6.4.1); lease reads
    /// ([`Consistency::Lease`](crate::client::Consistency::Lease)) are
    /// linearizable only while every member's clock respects it. Must be
    /// at least 1.0.
    pub fn clock_drift_bound(mut self, bound: f64) -> Self {
        self.clock_drift_bound = bound;
        self
    }

    /// The largest snapshot this peer accepts from a leader (default 1 GiB);
    /// larger ones are dropped chunk by chunk, so a hostile or broken peer
    /// cannot grow the receive buffer past it. Every member needs a bound of
    /// at least the largest snapshot the state machine produces.
    pub fn max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// Whether the peer's own threads (storage, snapshots, apply) run under
    /// Linux's `SCHED_BATCH` policy (default: yes; elsewhere nothing
    /// changes). Such a thread, woken while the cores are busy, waits for
    /// an idle core, a yield or the next scheduler tick instead of
    /// preempting the tokio worker that woke it: fewer context switches per
    /// write, the same share of the CPU. Measured on 2 cores: 13–18 % more
    /// writes per second in process, 6–10 % across three processes, one
    /// client's latency unchanged (see
    /// [`set_batch_scheduling`](crate::runtime::set_batch_scheduling), which
    /// does the same for your runtime's threads). Turn it off when other
    /// work on the machine must not delay the log's fsyncs by up to a tick.
    pub fn batch_scheduling(mut self, on: bool) -> Self {
        if let super::threads::Threads::Os { batch } = &mut self.threads {
            *batch = on;
        }
        self
    }

    /// Whether the node task may apply a small batch of committed entries
    /// itself while the apply thread is idle (default: no). It saves two
    /// thread wake-ups on a lone write's path (measured with three `kv
    /// serve` on 2 cores, one client: 21.1 -> 17.3 context switches per
    /// write across the cluster; one client's put p50 ~512 -> ~465 us in
    /// one quiet run, about even in another). Only for state machines whose
    /// write handlers are quick and never block: a batch is applied there
    /// only when the last one cost under 50 us for as many entries and no
    /// read waits for it (reads run on the apply thread), but a handler that
    /// turns slow without warning stalls the node's I/O for that one batch
    /// (see `apply::inline`). Handlers must not depend on the thread they
    /// run on (thread-locals, `tokio::runtime::Handle::current()`): inline
    /// they run on a tokio worker, otherwise on the apply thread. A panic
    /// outside the handler itself (a command's `Deserialize` or an
    /// output's `Serialize` panicking) does the same on either path: the
    /// node halts at that entry, its callers get
    /// [`Error::Halted`](crate::Error::Halted) at once (the write may have
    /// been applied), and its status shows why.
    pub fn apply_small_batches_inline(mut self, on: bool) -> Self {
        self.apply_inline = on;
        self
    }

    /// Take a snapshot every this many applied entries (0: never), once
    /// the log since the last one is also large enough against it (see
    /// [`PeerBuilder::snapshot_log_ratio`]).
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries;
        self
    }

    /// Take a snapshot only once the entries applied since the last one add
    /// up to at least this fraction of its size (default 1.0; 0: count
    /// entries only, see [`PeerBuilder::snapshot_every`]).
    ///
    /// A snapshot serializes the whole state: counted in entries alone, its
    /// cost per write grows with the state (`kv` at a million keys: a
    /// snapshot every 100,000 small writes cost about as much CPU as
    /// applying them, and stalled the apply thread for a quarter of a
    /// second each time). With the ratio `r`, snapshots write at most
    /// `1 / r` bytes per byte of log they replace, and the log held in
    /// memory and replayed after a restart stays within about `r` times the
    /// snapshot (or `snapshot_every` entries, whichever is more), as Redis
    /// bounds its log rewrites (`auto-aof-rewrite-percentage`).
    /// Must be a finite number of at least 0.
    ///
    /// ```
    /// # use raftkit::prelude::*;
    /// # #[derive(StateMachine, Default, Serialize, Deserialize)]
    /// # struct Counter { n: u64 }
    /// # #[raftkit::state_machine]
    /// # impl Counter {
    /// #     #[write]
    /// #     fn add(&mut self, by: u64) -> u64 { self.n += by; self.n }
    /// # }
    /// // etcd's interval, but never more snapshot bytes than log bytes.
    /// let builder = Counter::peer()
    ///     .snapshot_every(100_000)
    ///     .snapshot_log_ratio(1.0);
    /// # drop(builder);
    /// ```
    pub fn snapshot_log_ratio(mut self, ratio: f64) -> Self {
        self.snapshot_log_ratio = ratio;
        self
    }

    /// The file system the log, the snapshots and the peer metadata are
    /// kept on (default: the operating system's).
    ///
    /// A testing hook: pass a [`FaultyFs`](crate::storage::vfs::FaultyFs) to
    /// see what the node does when its disk fills, fails or stalls. (The TLS
    /// identity files are written with `std::fs` once, when a node is
    /// created.)
    pub fn file_system(mut self, fs: SharedFs) -> Self {
        self.fs = fs;
        self
    }

    /// The size at which the write-ahead log starts a new segment file
    /// (default 64 MiB). Smaller segments are compacted away sooner after a
    /// snapshot.
    pub fn wal_segment_bytes(mut self, bytes: u64) -> Self {
        self.wal.segment_size = bytes.max(1);
        self
    }

    /// The largest command (encoded write) the peer accepts, in bytes
    /// (default 8 MiB). A larger one is refused with
    /// [`Error::Rejected`] before it enters the log.
    /// At most the transport's frame cap (16 MiB) less 64 KiB: an entry must
    /// always fit the AppendEntries that carries it.
    pub fn max_command_bytes(mut self, bytes: usize) -> Self {
        self.max_command_bytes = bytes;
        self
    }

    /// Backpressure: at most `commands` calls and `bytes` bytes of commands
    /// in flight on this peer between admission and answer (defaults 16,384
    /// and 64 MiB). A call that finds no room waits for at most the
    /// admission wait, then fails with
    /// [`Error::Overloaded`]. The client service holds the bytes of the
    /// requests it received and has not answered within `bytes` too (a
    /// quarter of it per connection), taken before a request's frame is
    /// read: a request that finds no room within the admission wait is
    /// answered `Overloaded` unread, and one larger than `bytes` is
    /// refused [`Error::Rejected`] unread (nothing applied).
    pub fn max_in_flight(mut self, commands: usize, bytes: usize) -> Self {
        self.max_in_flight = (commands.max(1), bytes.max(1));
        self
    }

    /// The most client connections the client service serves at once:
    /// `per_certificate` of one client certificate and `total` in all
    /// (defaults 1024 and 2048; at least 1 each). A connection past either
    /// is closed before anything it sent is read; the client reports
    /// [`Error::Unavailable`] (nothing applied) naming the limit. With
    /// [`client_receive_window`](Self::client_receive_window) they bound
    /// the memory clients can make the node hold beyond
    /// [`max_in_flight`](Self::max_in_flight)'s bytes: `total` times the
    /// window plus a hello (at most 1 MiB) each.
    pub fn client_connections(mut self, per_certificate: usize, total: usize) -> Self {
        self.client_limits = super::intake::ConnectionLimits {
            per_certificate: per_certificate.max(1),
            total: total.max(1),
        };
        self
    }

    /// How long a client request's body may go without a byte once its
    /// room in the node's budget of received requests
    /// ([`max_in_flight`](Self::max_in_flight)'s bytes) is taken (default
    /// [`DEFAULT_BODY_STALL`](super::DEFAULT_BODY_STALL), 5 s; at least
    /// 1 ms). Past it the room is given back and the request read no
    /// further: on a stream of its own it is answered
    /// [`Error::Overloaded`] (nothing applied), a multiplexed stream ends
    /// (its client's waiting calls fail and are retried on a fresh
    /// connection). A body that keeps coming, however slowly, is read
    /// whole. Keep it above the [admission wait](Self::admission_wait).
    pub fn client_body_stall(mut self, stall: Duration) -> Self {
        self.client_body_stall = stall.max(Duration::from_millis(1));
        self
    }

    /// The slowest a client request's body may arrive on average once its
    /// room in the node's budget of received requests is taken, in bytes
    /// per second (default
    /// [`DEFAULT_MIN_BODY_RATE`](super::DEFAULT_MIN_BODY_RATE), 64 KiB/s;
    /// at least 1): the whole body must be here within the
    /// [body stall](Self::client_body_stall) plus its length at this rate,
    /// or it is dropped as a stalled one is. Without it a sender that
    /// trickled a byte within every stall bound held its room for as long
    /// as it liked. Lower it for clients that upload large writes over
    /// slow links.
    pub fn client_min_body_rate(mut self, bytes_per_second: u64) -> Self {
        self.client_min_body_rate = bytes_per_second.max(1);
        self
    }

    /// The most bytes of client requests one client certificate may have
    /// claimed in the node's budget of received requests
    /// ([`max_in_flight`](Self::max_in_flight)'s bytes) and not yet sent,
    /// on all its connections together (default: a quarter of that
    /// budget, 16 MiB of the default 64 MiB; at least 1, at most the
    /// budget). Each request counts at least 4 KiB against it while its
    /// body is on its way; a request larger than it takes all of it. A
    /// request past it waits for room, up to the
    /// [admission wait](Self::admission_wait), and is answered
    /// [`Error::Overloaded`] past that (nothing applied; the client
    /// retries after a backoff). It keeps one certificate from holding the
    /// whole budget with requests whose bodies it sends slowly, or not at
    /// all. The cost to an application of a single certificate: at most
    /// this many bytes of its requests (or this many over 4 KiB requests)
    /// are on their way to the node at once; raise it to the budget for
    /// one that uploads more at once and is the node's only client.
    pub fn client_unreceived_bytes_per_certificate(mut self, bytes: usize) -> Self {
        self.client_unreceived_per_certificate = Some(bytes.max(1));
        self
    }

    /// The most inbound peer connections (links from other nodes) the
    /// node's QUIC transport serves at once: `per_node` of one node (the
    /// id of its certificate's name) and `total` in all (defaults 8 and
    /// 1024; at least 1 each). A node links to each peer over one
    /// connection, and a second overlaps while it redials or restarts; a
    /// connection past either limit is closed before anything it sent is
    /// read, and its dialer retries with its backoff until a place is free
    /// (see `transport::peer_limits`).
    pub fn peer_connections(mut self, per_node: usize, total: usize) -> Self {
        self.peer_connections = (per_node.max(1), total.max(1));
        self
    }

    /// The most inbound connections (peer or client) the node's QUIC
    /// transport has in their handshake at once, and how long one may
    /// take (defaults
    /// [`DEFAULT_MAX_HANDSHAKES`](crate::transport::quic::DEFAULT_MAX_HANDSHAKES),
    /// 256, and 10 s; at least 1 and 1 s): one past the bound is refused
    /// at once (unless it may take the place of a stranger's handshake
    /// stalled in TLS; one from an address not validated yet is sent a
    /// QUIC Retry instead), one not done in time is closed (TLS within a
    /// quarter of the timeout,
    /// [`tls_timeout`](crate::transport::quic::tls_timeout)); once half
    /// are taken an attempt from an address not yet validated is sent a
    /// QUIC Retry, one source IP holds at most a quarter, and a quarter
    /// is kept for the configured peers' exact addresses (see
    /// [`QuicConfig::max_handshakes`](crate::transport::QuicConfig::max_handshakes)
    /// for what is guaranteed, and `transport::handshakes`).
    pub fn handshakes(mut self, max: usize, timeout: Duration) -> Self {
        self.handshakes = (
            max.max(1),
            timeout.max(crate::transport::quic::MIN_HANDSHAKE_TIMEOUT),
        );
        self
    }

    /// The most bytes the node's QUIC endpoint buffers unread for one
    /// client connection, on all its streams together: its connection
    /// receive window (default 2 MiB, at least 1). A larger window lets a
    /// client stream large requests faster over a long round trip; the
    /// memory bound of [`client_connections`](Self::client_connections)
    /// grows with it. Links between peers are not limited by it.
    pub fn client_receive_window(mut self, bytes: u64) -> Self {
        self.client_receive_window = bytes.max(1);
        self
    }

    /// How long a call waits for room in the in-flight budget before it
    /// fails with [`Error::Overloaded`] (default
    /// 2 s).
    pub fn admission_wait(mut self, wait: Duration) -> Self {
        self.admission_wait = wait;
        self
    }

    /// How long a client session may stay idle before it expires (default
    /// one hour of replicated time). A client whose session expired gets
    /// [`Error::SessionExpired`] for a write whose earlier attempts may have
    /// been applied. Applies to sessions opened while this peer leads.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// The most client sessions the replicated session table holds (default
    /// 10,000): opening one more evicts the session idle the longest of the
    /// client identity holding the most sessions, so an identity within its
    /// fair share keeps its sessions whatever another opens (the session
    /// idle the longest in the whole table while a voter runs a raftkit
    /// before fair shares; `runtime::session` rule 8; counted in
    /// [`PeerStatus::session_evictions`]). Applies to sessions opened while
    /// this peer leads.
    ///
    /// Size it with [`Self::max_reply_bytes_per_owner`]: the table's
    /// stored replies take up to about that many bytes per client
    /// identity holding sessions, on every replica and in every snapshot.
    pub fn max_sessions(mut self, sessions: u64) -> Self {
        self.max_sessions = sessions.max(1);
        self
    }

    /// The most sessions one client identity (certificate) holds in the
    /// replicated session table (default
    /// [`DEFAULT_MAX_SESSIONS_PER_OWNER`](super::session::DEFAULT_MAX_SESSIONS_PER_OWNER),
    /// 1,000; at least 1): opening one more evicts that identity's own
    /// session idle the longest. Takes effect only once every voter runs a
    /// raftkit that applies it (runtime log version 2, `runtime::session`
    /// rule 9); applies to sessions opened while this peer leads. Does not
    /// cap in-process sessions
    /// ([`Owner::Local`](super::session::Owner::Local)).
    pub fn max_sessions_per_owner(mut self, sessions: u64) -> Self {
        self.max_sessions_per_owner = sessions.max(1);
        self
    }

    /// The most bytes of stored replies (unacknowledged answers kept for
    /// retries) one session holds (default
    /// [`DEFAULT_MAX_REPLY_BYTES_PER_SESSION`](super::session::DEFAULT_MAX_REPLY_BYTES_PER_SESSION),
    /// 4 MiB). A reply counts its output's bytes plus
    /// [`REPLY_OVERHEAD_BYTES`](super::session::REPLY_OVERHEAD_BYTES). A
    /// write of a session without room for one more reply is refused, not
    /// applied ([`Error::Overloaded`] while acknowledgements can make
    /// room, else [`Error::Rejected`]); a write whose output does not fit
    /// in the room left is applied, but its output is not kept: its caller
    /// gets it, a retry gets [`Error::AnswerTooLarge`] (applied). Takes
    /// effect only once every voter runs a raftkit that applies it
    /// (`runtime::session` rule 9); applies to writes proposed while this
    /// peer leads.
    ///
    /// At least [`MIN_REPLY_BYTES`](super::session::MIN_REPLY_BYTES) (a
    /// smaller value, 0 included, is raised to it: room for one reply of
    /// a handler error), so that a session can always store an answer.
    pub fn max_reply_bytes_per_session(mut self, bytes: u64) -> Self {
        self.max_reply_bytes_per_session = bytes.max(super::session::MIN_REPLY_BYTES);
        self
    }

    /// The most bytes of stored replies all sessions of one client
    /// identity hold together (default
    /// [`DEFAULT_MAX_REPLY_BYTES_PER_OWNER`](super::session::DEFAULT_MAX_REPLY_BYTES_PER_OWNER),
    /// 64 MiB), as [`Self::max_reply_bytes_per_session`] per session.
    /// At least [`MIN_REPLY_BYTES`](super::session::MIN_REPLY_BYTES), as
    /// that setter. Does not bound in-process sessions
    /// ([`Owner::Local`](super::session::Owner::Local): trusted code of
    /// every peer, bounded per session and by the table's bound only).
    pub fn max_reply_bytes_per_owner(mut self, bytes: u64) -> Self {
        self.max_reply_bytes_per_owner = bytes.max(super::session::MIN_REPLY_BYTES);
        self
    }

    /// The bound of this peer's watch journal (default 64 MiB): the applied
    /// writes (command and output bytes) it keeps for watches
    /// ([`crate::client::watch`]). A watch from an index the journal no
    /// longer holds gets [`Error::Compacted`]; a watcher that falls behind
    /// by more than it holds is disconnected with [`Error::WatchLagged`].
    /// 0 turns watching off (every event is dropped as it applies, so a
    /// watch ends with `WatchLagged` at the first write).
    pub fn watch_journal_bytes(mut self, bytes: usize) -> Self {
        self.watch_journal_bytes = bytes;
        self
    }

    /// The most watches of one client certificate (over all its
    /// connections) this peer serves at once (default
    /// [`DEFAULT_WATCHES_PER_CERTIFICATE`](super::watch::DEFAULT_WATCHES_PER_CERTIFICATE),
    /// a quarter of the member's [`MAX_WATCHERS`](super::watch::MAX_WATCHERS);
    /// at least 1). One more is refused with [`Error::Overloaded`] (nothing
    /// applied; retry after a backoff), as past the member's cap, so one
    /// certificate cannot take every watch slot. In-process watches
    /// ([`Peer::watch_from`](super::Peer::watch_from)) are not counted.
    pub fn watches_per_certificate(mut self, watches: usize) -> Self {
        self.watches_per_certificate = watches.max(1);
        self
    }

    /// Replaces the wall clock the leader stamps entries with (ms since the
    /// Unix epoch), for tests of clock jumps. Not for production use.
    #[doc(hidden)]
    pub fn wall_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.wall_clock = Some(Arc::new(clock));
        self
    }

    /// Where the peer's workers (storage, snapshots, apply) run: the
    /// whole-runtime simulation runs them as tasks of its executor.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn threads(mut self, threads: super::threads::Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The seed of the core's election-timeout randomness (default: drawn
    /// from the clock), for reproducible runs.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Where session ids come from (default: the operating system's
    /// CSPRNG), for reproducible runs.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn session_ids(mut self, source: super::session::SessionIdSource) -> Self {
        self.session_ids = Some(source);
        self
    }

    /// Keeps the log in a multi-group node's shared journal (the storage
    /// choice then only says that nothing else is on disk).
    pub(crate) fn group_storage(mut self, storage: GroupStorage) -> Self {
        self.group_storage = Some(storage);
        self
    }

    /// Checks writes and promotions against `book` (a multi-group node's,
    /// shared by its groups of `S`: its local schema is `S::schema()`, its
    /// floor the schema the node's directory recorded, and its transport
    /// records the peers' hellos in it) instead of a book of the peer's own.
    pub(crate) fn schema_book(mut self, book: Arc<crate::schema::SchemaBook>) -> Self {
        self.schema_book = Some(book);
        self
    }

    /// Lets `gate` stop the node's ticks while it is idle (quiescence, see
    /// [`TickGate`](super::TickGate)).
    pub(crate) fn tick_gate(mut self, gate: Arc<super::TickGate>) -> Self {
        self.tick_gate = Some(gate);
        self
    }

    /// How late the status fields that take clones to build (members,
    /// latency histograms, drop counts, addresses) may be (default
    /// 1 ms; see the node task's module documentation): a multi-group
    /// node, whose many replicas each rebuilt them up to a thousand times
    /// a second under load, sets its tick.
    pub(crate) fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// Whether each round of the node task first yields to the other ready
    /// tasks, then takes what they queued for it, before it drains the
    /// core (default off). For a multi-group node: one group among many
    /// with few clients each otherwise wrote to the journal and sent
    /// append messages for every one or two writes, where one busy group
    /// batches many.
    pub(crate) fn gather(mut self, on: bool) -> Self {
        self.gather = on;
        self
    }

    /// The replica's membership fence (a multi-group node's replica of a
    /// group it left and joined again, see
    /// [`Config::membership_fence`](crate::core::Config::membership_fence)).
    /// The replica starts in the fence's term at least: the caller keeps
    /// the fence durably, so the raised term is as durable as the fence.
    pub(crate) fn membership_fence(
        mut self,
        fence: Option<(crate::core::Index, crate::core::Term)>,
    ) -> Self {
        self.membership_fence = fence;
        self
    }

    /// The node-wide budget this replica's snapshot receive buffer shares
    /// with the other groups of a multi-group node (see
    /// `runtime::receive_budget`); none: only `max_snapshot_bytes` bounds
    /// it.
    pub(crate) fn receive_budget(
        mut self,
        budget: Arc<super::receive_budget::ReceiveBudget>,
    ) -> Self {
        self.receive_budget = Some(budget);
        self
    }

    /// Uses a transport of the crate's (a multi-group node's group link)
    /// whose inbound messages hold their charge to the node's inbox budget
    /// (`transport::inbox_bytes`) until the node task takes them.
    pub(crate) fn charged_transport(
        mut self,
        make: impl FnOnce(
            NodeId,
            mpsc::Sender<crate::transport::inbox_bytes::Charged>,
        ) -> Arc<dyn Transport>
        + Send
        + 'static,
    ) -> Self {
        self.transport = Some(MakeTransport::Charged(Box::new(make)));
        self
    }

    /// Uses a custom transport (for example the in-process one of the
    /// transport module) instead of QUIC.
    pub fn transport(
        mut self,
        make: impl FnOnce(NodeId, mpsc::Sender<Message>) -> Arc<dyn Transport> + Send + 'static,
    ) -> Self {
        self.transport = Some(MakeTransport::Plain(Box::new(make)));
        self
    }

    /// Wraps the transport between peers (QUIC or the one given to
    /// [`Self::transport`]) in another: for tests that cut links between
    /// peers while clients still reach every peer over QUIC.
    #[doc(hidden)]
    pub fn wrap_transport(
        mut self,
        wrap: impl FnOnce(Arc<dyn Transport>) -> Arc<dyn Transport> + Send + 'static,
    ) -> Self {
        self.wrap_transport = Some(Box::new(wrap));
        self
    }

    /// The default data directory, `data/<name>`, of a peer given no
    /// [`Self::data_dir`]: the name given, or the default one of the
    /// advertised (else listen) address. None without a listen address
    /// (a new peer then fails for want of one; a restart needs it to find
    /// its directory, as the directory is named after it).
    fn default_data_dir(&self) -> Result<Option<PathBuf>, Error> {
        let listen = match (&self.listen, &self.listen_socket) {
            (Some(listen), _) => listen.clone(),
            (None, Some(socket)) => socket
                .local_addr()
                .map_err(|e| Error::Transport(format!("the listen socket's address: {e}")))?
                .to_string(),
            (None, None) => return Ok(None),
        };
        let advertise = self.advertise.clone().unwrap_or(listen);
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_name(S::NAME, &advertise));
        Ok(Some(PathBuf::from("data").join(name)))
    }

    /// Opens (or creates) the peer's storage and starts it.
    pub async fn start(mut self) -> Result<Peer<S>, Error> {
        let frame = crate::transport::frame::DEFAULT_MAX_FRAME_BYTES;
        if self.max_command_bytes == 0 || self.max_command_bytes + FRAME_OVERHEAD > frame {
            return Err(Error::Rejected(format!(
                "max_command_bytes must be between 1 and {} (a transport frame is {frame} bytes)",
                frame - FRAME_OVERHEAD
            )));
        }
        // A configuration error fails before anything is written.
        if self.join.is_some() && self.transport.is_some() {
            return Err(Error::Transport(
                "joining a cluster needs the QUIC transport".into(),
            ));
        }
        // 1. Who we are: from the data directory when it holds a peer. The
        // default directory (`data/<name>`) is looked in too (review s61
        // schema H2: looking only in a directory given by `data_dir` took
        // every restart on the default one for a first start, which
        // skipped the schema's upgrade check and rewrote its floor).
        let meta_dir = match &self.storage {
            Some(StorageChoice::Disk(dir)) => Some(dir.clone()),
            Some(StorageChoice::Memory) => None,
            None => self.default_data_dir()?,
        };
        let mut meta = None;
        if let Some(dir) = &meta_dir {
            meta = PeerMeta::load_in(&*self.fs, dir)?;
        }
        // The structural schema (crate::schema): a data directory accepts
        // a binary whose schema keeps every handler of the one it held.
        let schema = S::schema();
        let mut stored_schema = None;
        // Whether the directory held a peer already: then it belongs to the
        // binary that last ran on it until this start has succeeded.
        let existing = meta.is_some();
        let meta = match meta {
            Some(mut m) => {
                if let Some(dir) = &meta_dir {
                    stored_schema = crate::schema::load_schema(&*self.fs, dir)?;
                }
                match &stored_schema {
                    Some(old) => {
                        schema.check_upgrade_from(old)?;
                        if old != &schema {
                            info!(name = %m.name, old_state_version = old.state_version, state_version = schema.state_version, handlers = schema.handlers.len(), old_handlers = old.handlers.len(), "data directory upgraded to a compatible schema");
                        }
                    }
                    // A directory from before structural schemas: only the
                    // binary that wrote it.
                    None if m.schema != S::SCHEMA_FINGERPRINT => {
                        return Err(Error::SchemaMismatch {
                            handler: "(unknown: the data directory predates structural schemas)"
                                .into(),
                            reason: format!(
                                "the log in this data directory was written by `{}` with schema fingerprint {:#018x}, this binary's `{}` has {:#018x}; start the old binary once with a schema-aware raftkit first",
                                m.state_machine,
                                m.schema,
                                S::NAME,
                                S::SCHEMA_FINGERPRINT
                            ),
                        });
                    }
                    None => {}
                }
                m.schema = S::SCHEMA_FINGERPRINT;
                m
            }
            None => {
                let listen = match (&self.listen, &self.listen_socket) {
                    (Some(listen), _) => listen.clone(),
                    (None, Some(socket)) => socket
                        .local_addr()
                        .map_err(|e| Error::Transport(format!("the listen socket's address: {e}")))?
                        .to_string(),
                    (None, None) => {
                        return Err(Error::Rejected(
                            "a new peer needs a listen address (PeerBuilder::listen or PeerBuilder::listen_socket)"
                                .into(),
                        ));
                    }
                };
                let advertise = self.advertise.clone().unwrap_or_else(|| listen.clone());
                let name = self
                    .name
                    .clone()
                    .unwrap_or_else(|| default_name(S::NAME, &advertise));
                PeerMeta {
                    name,
                    listen,
                    advertise,
                    state_machine: S::NAME.to_string(),
                    schema: S::SCHEMA_FINGERPRINT,
                }
            }
        };
        // A handed socket not bound to the listen address fails before
        // anything is written: the meta (and a bootstrap's configuration)
        // would name an address the peer never serves on, and an existing
        // directory ignores the builder's listen on every later start.
        if let (None, Some(socket)) = (&self.transport, &self.listen_socket) {
            let bound = socket
                .local_addr()
                .map_err(|e| Error::Transport(format!("the listen socket's address: {e}")))?;
            let listen = resolve(&meta.listen)?;
            if bound != listen {
                return Err(Error::Rejected(format!(
                    "the listen socket is bound to {bound}, not to the listen address {} ({listen}); nothing was written or served",
                    meta.listen
                )));
            }
        }
        // A missing certificate fails before anything is written, saying
        // what to add. (Not a compile-time typestate: a restart finds the
        // identity in its data directory, which only the run time knows.)
        if self.transport.is_none() && self.identity.is_none() {
            let stored = match &self.storage {
                Some(StorageChoice::Disk(dir)) => Identity::load(dir.join("tls"), "peer").is_ok(),
                Some(StorageChoice::Memory) => false,
                None => Identity::load(PathBuf::from("data").join(&meta.name).join("tls"), "peer")
                    .is_ok(),
            };
            if !stored {
                return Err(Error::Tls(missing_identity(&meta.name)));
            }
        }
        // A wrong certificate, or a bad revocation list, fails before
        // anything is written.
        if let (None, Some(identity)) = (&self.transport, &self.identity) {
            identity
                .check_node(&meta.name)
                .map_err(|e| Error::Tls(format!("the TLS identity of {}: {e}", meta.name)))?;
            with_revocation_lists(identity.clone(), &self.revocation_lists, &meta.name)?;
        }
        let storage = self
            .storage
            .clone()
            .unwrap_or_else(|| StorageChoice::Disk(PathBuf::from("data").join(&meta.name)));
        // The schema (and the fingerprint in the meta file) the directory
        // records for this binary. A new directory records them at once: it
        // holds nothing of another binary, and a retried start finds its
        // meta. A directory another binary ran on keeps that binary's until
        // every step of this start that can fail (the snapshot's migration,
        // the listening socket, the threads) has passed: a failed start of
        // a newer binary must leave it to the older one. Nothing this
        // binary writes reaches the log before then (the node task, started
        // after the save, is what writes).
        let schema_to_save = (stored_schema.as_ref() != Some(&schema)).then(|| schema.clone());
        // A new directory whose node does not found its cluster joins one
        // (`join`, or waits to be added): its own schema proves nothing
        // of the other voters, which may run an older binary (a node
        // provisioned mid-upgrade), so its floor is one with no write
        // (`crate::schema::save_joined_schema`).
        let joins = !existing && self.bootstrap.is_none();
        if let StorageChoice::Disk(dir) = &storage {
            crate::storage::vfs::create_dir_durable(&*self.fs, dir)
                .map_err(|e| Error::Storage(e.to_string()))?;
            if !existing {
                // The schema files before the meta (review s60 schema L1):
                // a directory without its meta is new at the next start,
                // which writes them again from scratch, whatever a crash
                // left of them; one with its meta has them. (Meta first, a
                // crash between made the restart `existing` with no
                // schema: its floor became this binary's own, a joining
                // node taken for a founder.)
                crate::schema::save_new_schema(&*self.fs, dir, &schema, joins)?;
                meta.save_in(&*self.fs, dir)?;
            }
        }
        let schemas = match self.schema_book.take() {
            Some(book) => book,
            None => {
                // The raise of the oldest schema is recorded in the
                // directory, whose `schema` file holds this binary's
                // schema before any write is checked (saved above, or
                // before the node task starts).
                Arc::new(match &storage {
                    StorageChoice::Disk(dir) => crate::schema::SchemaBook::of_dir(
                        schema,
                        stored_schema,
                        self.fs.clone(),
                        dir.clone(),
                    )?,
                    // No directory: nothing recorded, nothing to raise; a
                    // node that joins proves nothing of the other voters
                    // (as `save_joined_schema` records for a directory).
                    _ => {
                        let joined = joins.then(|| crate::schema::joined_floor(&schema));
                        crate::schema::SchemaBook::new(schema, stored_schema).with_oldest(joined)
                    }
                })
            }
        };
        let id = node_id(&meta.name);

        // 2. What we restart from.
        let mut fresh = false;
        let mut group_sink = None;
        let mut opened = match self.group_storage.take() {
            Some(g) => {
                group_sink = Some(g.sink);
                persist::open_stores(g.log, g.snapshots, g.places)?
            }
            None => persist::open(&storage, &self.fs, self.wal.clone())?,
        };
        let mut restored = match opened.restored.take() {
            Some(r) => {
                info!(name = %meta.name, last = r.snapshot.index + r.entries.len() as u64, term = r.hard_state.term, "restarting from durable state");
                r
            }
            None => match &self.bootstrap {
                Some(addrs) => {
                    let mut conf = Configuration::default();
                    let mut members: Vec<String> = addrs.clone();
                    if !members.contains(&meta.advertise) {
                        members.push(meta.advertise.clone());
                    }
                    for addr in members {
                        let member = if addr == meta.advertise {
                            id
                        } else {
                            node_id(&default_name(S::NAME, &addr))
                        };
                        conf.voters.insert(member);
                        conf.addrs.insert(member, addr);
                    }
                    let r = Restored::bootstrap(conf);
                    let err = |e: crate::storage::StorageError| Error::Storage(e.to_string());
                    opened.log.append(&r.entries).map_err(err)?;
                    opened.log.save_hard_state(r.hard_state).map_err(err)?;
                    opened.log.sync().map_err(err)?;
                    info!(name = %meta.name, "bootstrapped a new cluster");
                    r
                }
                None => {
                    fresh = true;
                    Restored::empty()
                }
            },
        };

        // 3. The state machine.
        let applied = restored.snapshot.index;
        let (sm, sessions) = match &restored.snapshot_data {
            Some(data) => apply::restore::<S>(data)
                .map_err(|e| Error::Storage(format!("latest snapshot does not restore: {e}")))?,
            None => (S::default(), Default::default()),
        };

        // 4. The core.
        if let Some((_, term)) = self.membership_fence
            && restored.hard_state.term < term
        {
            // Messages of the terms before the removal come from leaders
            // that may not know of it (Raft §5.1 rejects them).
            restored.hard_state.term = term;
            restored.hard_state.vote = crate::core::NO_NODE;
        }
        let mut cfg = Config::new(id);
        cfg.membership_fence = self.membership_fence;
        cfg.election_ticks = self.election_ticks;
        cfg.heartbeat_ticks = self.heartbeat_ticks;
        cfg.lease_reads = true;
        cfg.clock_drift_bound = self.clock_drift_bound;
        cfg.snapshot_entries = self.snapshot_every;
        cfg.snapshot_log_ratio = self.snapshot_log_ratio;
        cfg.max_snapshot_bytes = self.max_snapshot_bytes;
        // A batch of entries (beyond its first) stays far below a frame; a
        // single entry is at most max_command_bytes (checked above).
        cfg.max_batch_bytes = cfg.max_batch_bytes.min(frame / 4);
        cfg.seed = self.seed.unwrap_or_else(|| id ^ seed_from_clock());
        let raft = Raft::new(cfg, restored).map_err(|e| Error::Rejected(e.to_string()))?;

        // 5. Transport, tasks.
        // The node task's inbox: at most INBOX_CAPACITY messages, and
        // those of the QUIC links (its own, or a multi-group node's) at
        // most the node's inbox budget of bytes (`transport::inbox_bytes`).
        let (clients_tx, clients_rx) = mpsc::channel(64);
        let inbox_rx: InboxRx;
        let mut local_addr = None;
        let mut on_stop: Option<super::node::StopHook> = None;
        let mut join_identity: Option<Identity> = None;
        let transport: Arc<dyn Transport> = match self.transport {
            Some(MakeTransport::Plain(make)) => {
                let (inbox_tx, rx) = mpsc::channel(INBOX_CAPACITY);
                inbox_rx = InboxRx::Plain(rx);
                make(id, inbox_tx)
            }
            Some(MakeTransport::Charged(make)) => {
                let (inbox_tx, rx) = mpsc::channel(INBOX_CAPACITY);
                inbox_rx = InboxRx::Charged(rx);
                make(id, inbox_tx)
            }
            None => {
                let identity = match (&storage, self.identity.clone()) {
                    (StorageChoice::Disk(dir), Some(identity)) => {
                        identity
                            .write_to(dir.join("tls"), "peer")
                            .map_err(|e| Error::Storage(e.to_string()))?;
                        identity
                    }
                    (StorageChoice::Disk(dir), None) => Identity::load(dir.join("tls"), "peer")
                        .map_err(|e| {
                            Error::Tls(format!("{} ({e})", missing_identity(&meta.name)))
                        })?,
                    (StorageChoice::Memory, Some(identity)) => identity,
                    (StorageChoice::Memory, None) => {
                        return Err(Error::Tls(missing_identity(&meta.name)));
                    }
                };
                let identity = with_revocation_lists(identity, &self.revocation_lists, &meta.name)?;
                let listen = resolve(&meta.listen)?;
                // Checked against `listen` before anything was written.
                let mut socket = self.listen_socket.take();
                // A start on a handed socket is never retried: a retry would
                // find the socket taken and bind the address again, reopening
                // the window in which another process takes the port.
                let handed = socket.is_some();
                let config_identity = identity.clone();
                let mut config =
                    QuicConfig::new(listen, &meta.name, identity, S::SCHEMA_FINGERPRINT);
                config.advertise = Some(meta.advertise.clone());
                config.client_receive_window = self.client_receive_window;
                (
                    config.max_peer_connections_per_node,
                    config.max_peer_connections,
                ) = self.peer_connections;
                (config.max_handshakes, config.handshake_timeout) = self.handshakes;
                schemas.hear_peers();
                config.schemas = Some(schemas.clone());
                // A peer restarted at once may find its port still held by
                // the previous endpoint while it drains: retry briefly.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let (inbox_tx, rx) = mpsc::channel(INBOX_CAPACITY);
                inbox_rx = InboxRx::Charged(rx);
                let budget = InboxBytes::for_frames(config.max_frame_bytes);
                let (quic, bound) = loop {
                    match QuicTransport::start_with(
                        config.clone(),
                        InboxTx::Charged(inbox_tx.clone(), budget.clone()),
                        None,
                        Some(clients_tx.clone()),
                        // Taken by the first attempt (see `handed`).
                        socket.take(),
                    )
                    .await
                    {
                        Ok(ok) => break ok,
                        Err(crate::transport::quic::TransportError::Bind { source, .. })
                            if source.kind() == std::io::ErrorKind::AddrInUse
                                && !handed
                                && tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(crate::transport::quic::TransportError::Tls(e)) => {
                            return Err(Error::Tls(format!(
                                "the TLS identity of {}: {e}",
                                meta.name
                            )));
                        }
                        Err(e) => {
                            return Err(Error::Transport(format!(
                                "cannot listen on {}: {e}",
                                meta.listen
                            )));
                        }
                    }
                };
                local_addr = Some(bound);
                join_identity = Some(config_identity.clone());
                let closer = quic.clone();
                on_stop = Some(Box::new(move || {
                    Box::pin(async move { closer.shutdown().await })
                }));
                Arc::new(quic)
            }
        };
        let transport = match self.wrap_transport {
            Some(wrap) => wrap(transport),
            None => transport,
        };
        let inline = matches!(storage, StorageChoice::Memory);
        let saver = SnapshotSaver::start_on(opened.snapshots.clone(), &self.threads)?;
        let mut persister = match group_sink {
            Some(sink) => Persister::shared(sink(opened.snapshots.clone()), opened.snapshots),
            None => Persister::start_on(opened.log, opened.snapshots, inline, &self.threads)?,
        };
        persister.release_through(Arc::clone(&transport));
        // The apply queue is bounded by the node task (MAX_APPLY_BACKLOG_BYTES
        // of entries, and the in-flight budget for registrations and reads).
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        let (apply_status_tx, apply_status_rx) =
            apply::status_channel(ApplyStatus::of(applied, &None, &sessions));
        let journal = super::watch::Journal::with_certificate_cap(
            applied,
            self.watch_journal_bytes,
            self.watches_per_certificate,
        );
        let shared = Arc::new(apply::Shared::new(
            sm,
            sessions,
            applied,
            apply_status_tx,
            journal.clone(),
        ));
        let apply_tx = if self.apply_inline {
            apply::ApplyTx::new(apply_tx, shared.clone())
        } else {
            apply::ApplyTx::thread_only(apply_tx, shared.clone())
        };
        self.threads.spawn(
            "raftkit-apply",
            apply::run_shared(shared, apply_rx, snap_tx),
        )?;
        let admission = Arc::new(Admission::new(
            self.max_in_flight.0,
            self.max_in_flight.1,
            self.admission_wait,
        ));
        let (status_tx, status_rx) = watch::channel(PeerStatus::default());
        let (fault_tx, fault_rx) = watch::channel(None);
        let (cmd_tx, cmd_rx) = mpsc::channel(4096);
        // The election timeout as the core is configured (not the
        // builder's default): the watch server's liveness and the
        // membership calls' bounds (`runtime::membership`) both use it.
        let election_timeout = self.tick * raft.params().election_ticks;
        let liveness = super::watch::Liveness::new(
            status_rx.clone(),
            election_timeout,
            self.tick_gate.clone(),
        );
        let task = NodeTask {
            raft,
            name: meta.name.clone(),
            transport,
            persister: Some(persister),
            saver: Some(saver),
            apply_tx,
            apply_status: apply_status_rx,
            snapshot_rx: snap_rx,
            inbox: inbox_rx,
            commands: cmd_rx,
            status: status_tx,
            fault: fault_tx,
            tick: self.tick,
            on_stop,
            admission: admission.clone(),
            wall_clock: self
                .wall_clock
                .unwrap_or_else(|| Arc::new(super::node::system_clock_ms)),
            gate: self.tick_gate.take(),
            status_interval: self.status_interval,
            gather: self.gather,
            receive_share: self
                .receive_budget
                .take()
                .map(super::receive_budget::ReceiveShare::new),
            lease_reads: 0,
        };
        // Everything that can fail has passed: the directory is this
        // binary's now (see `schema_to_save`). Should the save fail, the
        // task is dropped unstarted (its channels close, and the threads
        // above end).
        if let (true, StorageChoice::Disk(dir)) = (existing, &storage) {
            meta.save_in(&*self.fs, dir)?;
            if let Some(schema) = &schema_to_save {
                crate::schema::save_schema(&*self.fs, dir, schema)?;
            }
        }
        let handle = tokio::spawn(task.run());
        let peer = Peer {
            inner: Arc::new(Inner {
                commands: cmd_tx,
                admission,
                max_command_bytes: self.max_command_bytes,
                status: status_rx,
                fault: fault_rx,
                task: Mutex::new(Some(handle)),
                name: meta.name,
                id,
                local_addr,
                election_timeout,
                session_limits: super::session::SessionLimits {
                    ttl_ms: u64::try_from(self.session_ttl.as_millis()).unwrap_or(u64::MAX),
                    max_sessions: self.max_sessions,
                    max_owner_sessions: self.max_sessions_per_owner,
                    bounds: super::session::ReplyBounds {
                        session_bytes: self.max_reply_bytes_per_session,
                        owner_bytes: self.max_reply_bytes_per_owner,
                    },
                },
                schemas,
                session_ids: self
                    .session_ids
                    .unwrap_or_else(|| Arc::new(super::session::new_session_id)),
                journal,
                liveness,
            }),
            _sm: PhantomData,
        };
        // The raise of the oldest schema on hellos too (not only on a
        // checked write: review s58 sessions #2), from now on: the
        // directory's `schema` holds this binary's schema (saved above).
        // A no-op for a book without its directory.
        let status = peer.inner.status.clone();
        peer.inner
            .schemas
            .raise_on_hellos(move || voters_naming_self(&status.borrow(), id));
        // And each time the voter set changes (review s60 schema H1): a
        // node that joins hears the voters' hellos before its log holds
        // the configuration naming them, and the last one to join hears
        // none after; without this it never raised, and once a voter was
        // gone for good it refused every write should it lead.
        if !peer.inner.schemas.raise_settled() {
            tokio::spawn(raise_on_voter_changes(
                peer.inner.schemas.clone(),
                peer.inner.status.clone(),
                id,
            ));
        }
        tokio::spawn(super::client_service::serve_front_limited(
            peer.clone(),
            clients_rx,
            crate::transport::frame::DEFAULT_MAX_FRAME_BYTES,
            self.client_limits,
            super::intake::BodyBounds {
                stall: self.client_body_stall,
                min_rate: self.client_min_body_rate,
                per_certificate: self.client_unreceived_per_certificate,
            },
        ));
        // (`join` without QUIC was refused above: the identity is there.)
        if let (Some(seeds), Some(identity)) = (self.join, join_identity) {
            let advertise = meta.advertise.clone();
            if fresh {
                tokio::spawn(join_cluster(peer.clone(), seeds, identity, advertise));
            } else {
                tokio::spawn(resume_join(peer.clone(), seeds, identity, advertise));
            }
        }
        Ok(peer)
    }
}

/// Tries the raise of the oldest schema `book` recorded
/// ([`crate::schema::SchemaBook::try_raise_heard`]) from the first status
/// on, each time the configuration `status` shows changes (compared by
/// its index before anything is built: review s61 schema L4), and again
/// after a failed write of a raise (made here, on a hello or on a checked
/// write), once the book's retry delay after the failure is over, on a
/// timer of its own if no status comes (review s61 schema L3: a failure
/// does not end the watch). Ends once nothing is left to raise (the raise
/// durable: woken by the end of its write, not by a later status), or
/// when the node stops (its status closes).
pub(super) async fn raise_on_voter_changes(
    book: Arc<crate::schema::SchemaBook>,
    mut status: watch::Receiver<PeerStatus>,
    id: NodeId,
) {
    let mut ended = book.raise_ended();
    // The configuration last tried: its index, and whether the status
    // showed no member (the first status, before the node task
    // published one, and a bootstrap configuration may share index 0).
    let mut tried: Option<(crate::core::Index, bool)> = None;
    let mut failures = book.raise_failures();
    let mut retry_due = false;
    loop {
        if book.raise_settled() {
            return;
        }
        let failed = book.raise_failures();
        if failed != failures {
            failures = failed;
            retry_due = true;
        }
        let config = {
            let st = status.borrow_and_update();
            (st.config_index, st.members.is_empty())
        };
        let wait = book
            .raise_retry_at()
            .filter(|at| *at > std::time::Instant::now());
        if (retry_due || tried != Some(config)) && wait.is_none() {
            if tried != Some(config) {
                debug!(
                    node = id,
                    config_index = config.0,
                    "the configuration changed: trying the schema raise"
                );
            }
            book.try_raise_heard();
            tried = Some(config);
            retry_due = false;
        }
        let retry_at = wait.filter(|_| retry_due || tried != Some(config));
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // The sender lives in `book`, held here: never closed.
            _ = ended.changed() => {}
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(
                retry_at.unwrap_or_else(std::time::Instant::now),
            )), if retry_at.is_some() => {}
        }
    }
}

/// The voters (node `id` excluded) of the configuration `status` shows,
/// or none while that configuration does not name node `id` (review s61
/// schema H1): a node catching up holds an older configuration (a
/// snapshot's, an entry's before the one that added it), whose voters
/// may be fewer than the cluster's; a raise proven against them would
/// take a voter added since to know writes it may lack. A configuration
/// naming the node comes at or after the entry that added it, so it names
/// every voter of that time (later changes show as new statuses).
pub(super) fn voters_naming_self(status: &PeerStatus, id: NodeId) -> Vec<NodeId> {
    if !status.members.iter().any(|m| m.id == id) {
        return Vec::new();
    }
    status
        .members
        .iter()
        .filter(|m| m.voter && m.id != id)
        .map(|m| m.id)
        .collect()
}

/// Asks the cluster at `seeds` to add this peer, until it is a voter or the
/// peer stops. The request is made with the peer's own node certificate,
/// which the client service allows to add its own node only (see
/// [`super::authorization`]).
/// On a restart with `join`: resumes a join that stopped between its steps
/// (the node was added as a learner and not yet promoted), and only then:
/// a voter has nothing to ask, and a node that was removed since does not
/// add itself back. Decided on the configuration the node restored, once
/// its status shows it.
async fn resume_join<S: StateMachine>(
    peer: Peer<S>,
    seeds: Vec<String>,
    identity: Identity,
    advertise: String,
) {
    let learner = {
        let mut w = peer.watch();
        let shown = tokio::time::timeout(
            Duration::from_secs(10),
            w.wait_for(|s| !s.members.is_empty()),
        )
        .await;
        match shown {
            Ok(Ok(s)) => s.members.iter().any(|m| m.id == s.id && !m.voter),
            _ => false,
        }
    };
    if learner {
        info!(name = %peer.name(), "restarted as a learner of the cluster it was joining; resuming the join");
        join_cluster(peer, seeds, identity, advertise).await;
    }
}

async fn join_cluster<S: StateMachine>(
    peer: Peer<S>,
    seeds: Vec<String>,
    identity: Identity,
    advertise: String,
) {
    use crate::client::wire::ClientRequest;
    use crate::client::{Client, ClientOptions};
    let mut backoff = Duration::from_millis(100);
    loop {
        if peer.status().fatal.is_some() {
            return;
        }
        let opts = ClientOptions {
            timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let attempt = async {
            // With the structural schema, as a typed client: a cluster
            // running a compatible older or newer binary (another
            // fingerprint) accepts it, so a node of the new binary can
            // join one of the old (add new nodes, then remove old ones).
            let client =
                Client::connect_with_for::<S, _, _>(&seeds, identity.clone(), opts).await?;
            client
                .admin(ClientRequest::AddServer {
                    addr: advertise.clone(),
                })
                .await
        };
        match attempt.await {
            Ok(()) => {
                info!(name = %peer.name(), "joined the cluster as a voter");
                return;
            }
            Err(e @ Error::SchemaMismatch { .. }) => {
                tracing::error!(name = %peer.name(), error = %e, "the cluster refused this peer; not retrying");
                return;
            }
            Err(e @ Error::Unauthorized(_)) => {
                tracing::error!(name = %peer.name(), error = %e,
                    "the cluster refused to let this node's certificate add it (is the certificate issued to this node's name?); not retrying");
                return;
            }
            Err(e) => {
                tracing::warn!(name = %peer.name(), error = %e, "join attempt failed; retrying");
            }
        }
        if peer.inner.commands.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// `identity` checking the revocation lists `lists` (PEM each) too.
fn with_revocation_lists(
    identity: Identity,
    lists: &[Vec<u8>],
    name: &str,
) -> Result<Identity, Error> {
    lists.iter().try_fold(identity, |identity, pem| {
        identity
            .with_revocation_list_pem(pem)
            .map_err(|e| Error::Tls(format!("the TLS identity of {name}: {e}")))
    })
}

/// What a peer started without an identity is told: exactly what to add.
fn missing_identity(name: &str) -> String {
    format!(
        "peer {name:?} has no TLS identity (peers talk QUIC with mutual TLS). Add one before \
         `.start()`: `.identity(ca.issue_node({name:?}, &[])?)` with a \
         `raftkit::tls::ClusterCa`, or `.certs_dir(dir, \"<file name>\")?` for certificates \
         written by `ClusterCa::issue_node(..).write_to(dir, ..)`. For a local cluster in one \
         program, `raftkit::dev::Cluster::<S>::start(n)` does all of it."
    )
}

fn resolve(addr: &str) -> Result<std::net::SocketAddr, Error> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| Error::Transport(format!("cannot resolve listen address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("listen address {addr:?} resolves to nothing")))
}

/// Election-timeout randomness for a real peer: seeded from the clock, since
/// (unlike the simulation) reproducibility across runs is not wanted here.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
