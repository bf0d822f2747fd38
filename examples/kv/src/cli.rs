//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 failure (cluster unreachable, certificates missing or \
refused, port in use, ...); 2 bad usage (unknown option, unparseable address); \
3 the answer is \"no\" (get/del of an absent key, cas that did not swap).

Logs go to stderr, filtered by RUST_LOG (default: warn; info for `serve`; \
info,raftkit=debug with --verbose).";

/// A replicated key-value store on raftkit.
#[derive(Parser, Debug)]
#[command(name = "kv", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Trace each request on stderr (`RUST_LOG=info,raftkit=debug` unless
    /// RUST_LOG is set): a client call's request id, and on `serve` the same
    /// id through the leader to the apply of its entry.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

/// Where the cluster is and how to prove who we are.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Members of the cluster, any of them (comma-separated HOST:PORT); the
    /// client finds the leader by itself.
    #[arg(
        long,
        env = "KV_CLUSTER",
        value_delimiter = ',',
        value_name = "ADDR,..."
    )]
    pub cluster: Vec<String>,
    /// Directory with the certificates: ca.pem, client.pem, client.key (data
    /// commands, status), and admin.pem, admin.key (membership and
    /// leadership commands), as written by `kv certs init DIR`.
    #[arg(long, env = "RAFTKIT_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Seconds the command may take, connecting and retries included
    /// [default: 10; 60 for add-server and balance; 300 for move-replica].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The cluster is sharded (`kv serve --shards N`): route each key to
    /// its group; `scan`/`count` ask every group; `status` prints one line
    /// per group and node.
    #[arg(long, env = "KV_SHARDED", value_parser = clap::builder::FalseyValueParser::new())]
    pub sharded: bool,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expire the key after this many milliseconds of replicated time
        /// (the cluster's clock, the same on every node).
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the value of KEY (exit code 3 and nothing on stdout if absent).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Delete KEY, printing the value it held (exit code 3 if absent).
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Set KEY to NEW if it holds OLD (`-` for absent); exit code 3 and the
    /// current value on stderr if not.
    Cas {
        /// The key.
        key: String,
        /// The value KEY must hold, or `-` for "KEY is absent".
        old: String,
        /// The value to set.
        new: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print every key starting with PREFIX with its value (tab-separated), in key order.
    Scan {
        /// The prefix ("" for everything).
        prefix: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print how many keys start with PREFIX.
    Count {
        /// The prefix ("" for every key).
        prefix: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the changes to keys starting with PREFIX as the cluster
    /// applies them, one line each (INDEX, put/del/cas, KEY, VALUE;
    /// tab-separated), until interrupted. Follows the cluster through member
    /// failures; exit code 1 if the watch cannot go on.
    Watch {
        /// The prefix ("" or none for every key).
        #[arg(default_value = "")]
        prefix: String,
        /// Start at this log index (a past one replays the changes since,
        /// if the members still hold them) instead of now.
        #[arg(long, value_name = "INDEX")]
        from: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the members of the cluster (as the leader sees them).
    Members {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Add the node at ADDR (running, started without --bootstrap/--join):
    /// as a learner, then a voter once it caught up.
    AddServer {
        /// The new member's address, as it advertises it.
        addr: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove the member at ADDR.
    RemoveServer {
        /// The member's address.
        addr: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Move leadership to the member at ADDR and wait until it leads.
    TransferLeader {
        /// The member's address.
        addr: String,
        /// The group whose leadership moves (sharded clusters).
        #[arg(long, value_name = "G")]
        group: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// A table of every member: name, address, role, term, commit, applied,
    /// lag (leader commit - member applied), last contact with the leader.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Sharded clusters: move group G's replica from the node at FROM to
    /// the node at TO (add learner, catch up, joint change, leave joint);
    /// TO may be a node G was moved away from (the new replica starts
    /// behind the old one's membership fence).
    MoveReplica {
        /// The group.
        #[arg(long, value_name = "G")]
        group: u64,
        /// The advertised address of the node that leaves the group.
        from: String,
        /// The advertised address of the node that joins it.
        to: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Sharded clusters: one round of the leader balancer on every node
    /// given (each moves the leaderships it holds beyond its even share).
    Balance {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Make the cluster CA and certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run a 3-node cluster in this process: a concurrent workload, the
    /// leader killed and restarted, every acknowledged write and the
    /// linearizability of the history checked. Exit code 0 only if every
    /// check passes.
    Demo(DemoArgs),
    /// Closed-loop load against a running cluster; prints one JSON line
    /// (ops/s and latency percentiles). Used by `benches/sidebyside`.
    Bench(BenchArgs),
}

/// `kv serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
A new node needs --listen and --certs (unless --data already holds a node). \
Its name is kv@ADVERTISE and its identity is DIR/kv@ADVERTISE.pem/.key with \
DIR/ca.pem; when that file is missing and DIR holds the CA key (ca.key, as \
made by `kv certs init DIR`), the certificate is issued and written there \
automatically. The identity is copied into the data directory: a restart \
needs only `kv serve --data DIR`.

Start the first node with --bootstrap, the others with --join ADDR (any \
running member); a node started with neither waits for `kv add-server`.")]
pub struct ServeArgs {
    /// The address to listen on (UDP, QUIC), e.g. 127.0.0.1:7001.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The address other members and clients reach this node at (default:
    /// the listen address).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The data directory (log, snapshots, name, address, identity)
    /// (default: ./data/kv@ADVERTISE).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Found a new cluster of this node alone.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join the cluster that these members (comma-separated, any of them)
    /// belong to.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "ADDR")]
    pub join: Vec<String>,
    /// The certificate directory: the cluster CA (ca.pem, and ca.key to
    /// issue this node's certificate automatically) or this node's identity.
    #[arg(long, env = "RAFTKIT_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// A certificate revocation list (PEM, signed by the cluster CA, e.g.
    /// from `openssl ca -gencrl`): peers and clients presenting a
    /// certificate it lists are refused at the handshake, as etcd's
    /// `--client-crl-file`. Read at every start (not stored). To retire a
    /// node: remove it (`kv remove-server`), then revoke its certificate.
    #[arg(long, value_name = "FILE", conflicts_with = "shards")]
    pub crl: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (TCP).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// The Raft tick in milliseconds: elections after 10-20 ticks, a
    /// heartbeat every 2.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub tick_ms: u64,
    /// Snapshot the state and compact the log behind it every this many
    /// applied entries (0: never). Each snapshot serializes the whole
    /// state, so a large state wants a larger interval (etcd's
    /// `--snapshot-count` is 100,000).
    #[arg(long, default_value_t = 10_000, value_name = "ENTRIES")]
    pub snapshot_every: u64,
    /// ... and only once those entries add up to at least this fraction
    /// of the last snapshot's size (0: count entries only), so that the
    /// snapshots of a large state cost a bounded share of each write.
    #[arg(long, default_value_t = 1.0, value_name = "RATIO")]
    pub snapshot_log_ratio: f64,
    /// Run a sharded node: the placement group and N data groups, every one
    /// replicated on the --members (needs --listen, --members, --certs).
    #[arg(long, value_name = "N", conflicts_with_all = ["bootstrap", "join"])]
    pub shards: Option<u64>,
    /// The nodes of a sharded deployment (comma-separated advertised
    /// addresses, this one included; the same list on every node).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "ADDR", requires = "shards")]
    pub members: Vec<String>,
    /// The threads that run the node's async tasks (QUIC connections,
    /// client requests, replication). The node runs its storage thread and
    /// apply thread besides them, so the default is the machine's cores
    /// minus those two, at least 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub async_threads: Option<u16>,
    /// Keep every thread of the node under the normal scheduling policy.
    /// By default (on Linux) they run under SCHED_BATCH: a thread woken by
    /// another waits for an idle core, a yield or the next scheduler tick
    /// instead of preempting it (fewer context switches per write; measured
    /// on 2 cores with 3 nodes at 64 clients: 6-10 % more puts per second,
    /// one client's latency unchanged). Use this when other work on the
    /// machine must not delay the node by up to a tick.
    #[arg(long)]
    pub normal_scheduling: bool,
}

impl ServeArgs {
    /// The number of async worker threads: `--async-threads`, or the
    /// machine's cores minus the node's storage and apply threads (at
    /// least 1). Measured on 2 cores with 3 nodes and `kv bench` on one
    /// machine (64 clients): one worker instead of two gave 8 % more puts
    /// per second and 7 % less CPU per write (fewer hand-offs between
    /// workers: the issue 16 closing note of stop 35).
    pub fn worker_threads(&self) -> usize {
        match self.async_threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(2)
                .max(1),
        }
    }
}

/// `kv certs`.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA in DIR (ca.pem, ca.key), a client identity
    /// (client.pem, client.key: data commands and status) and an admin
    /// identity (admin.pem, admin.key: also membership and leadership).
    Init {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// Issue a certificate of the CA in DIR for NAME with a role (a node is
    /// named kv@ADDR, e.g. kv@127.0.0.1:7001); writes DIR/NAME.pem and
    /// DIR/NAME.key.
    Issue {
        /// The directory holding ca.pem and ca.key.
        dir: PathBuf,
        /// The certificate's name.
        name: String,
        /// What the certificate allows: node (peer links under NAME), client
        /// (data commands, status) or admin (also membership and
        /// leadership).
        #[arg(long, default_value = "node", value_name = "ROLE")]
        role: raftkit::tls::CertRole,
    },
}

/// `kv demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds of workload before the leader is killed.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
}

/// `kv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `put` (a fresh key each time), `get` (linearizable, of a key written
    /// first) or `status` (a QUIC request/response that skips Raft).
    #[arg(long, default_value = "put")]
    pub op: String,
    /// Concurrent tasks, each with one operation in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Most network clients (QUIC connections) the tasks share: one per 16
    /// tasks up to this many.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}
