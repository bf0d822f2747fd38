//! Many Raft groups in one process: [`MultiNode`].
//!
//! One Raft group is bounded by its leader's CPU and disk. A [`MultiNode`]
//! hosts any number of groups of one state machine `S`, each an ordinary
//! raftkit group: the same [`core::Raft`](crate::core::Raft), node task,
//! apply thread, sessions, snapshots, membership changes and error
//! policies as a single-group [`Peer`](crate::runtime::Peer) — each group's
//! replica on a node *is* a `Peer<S>`, started through the ordinary
//! [`PeerBuilder`](crate::runtime::PeerBuilder) with what differs injected:
//!
//! - **storage** ([`journal`]): every group's log lives in the node's one
//!   [`Journal`], a write-ahead log whose batches carry records tagged with
//!   their group. One commit thread takes the writes of all groups that
//!   queued while the previous fsync ran and makes them durable with one
//!   fsync: more groups make bigger batches, not more fsyncs. Each group
//!   keeps its own snapshot directory (`groups/<id>/snapshots`).
//! - **transport** (`links`): one QUIC endpoint per node; each group's
//!   messages are queued on the node's one link per peer node, tagged with
//!   their group, and one write on the link carries the queued messages of
//!   every group (heartbeats included). One task hands inbound messages to
//!   their group.
//! - **idle groups** ([`quiesce`]): a group with nothing to do stops
//!   ticking, and one coalesced heartbeat per interval per pair of nodes
//!   stands for the heartbeats of all of them (CockroachDB's quiescence and
//!   coalesced heartbeats).
//!
//! - **workers**: the apply and snapshot loops of all groups run as tasks
//!   on a small pool of threads of the node's own
//!   ([`MultiNodeBuilder::worker_threads`]), not on a thread per group;
//!   `worker_threads(0)` runs them on the runtime that started the node
//!   (cheaper, for quick handlers and snapshots).
//!
//! # Throughput: what many groups cost
//!
//! A write's fixed costs (the group's node task waking, its Ready, a
//! journal job, an append message and its answer, an apply batch, the
//! client's wake-up) are paid per *batch* of the group. One group with 256
//! clients batches many writes per round; 64 groups with four clients each
//! batch few, so the node's shared resources must do the batching instead:
//! the journal's one fsync covers every group that queued meanwhile (and
//! its commit thread yields before syncing so that groups mid-flush join),
//! and a peer link's task yields once before it writes, so that the
//! messages every group queued in the same scheduling round leave in one
//! write. A group's node task likewise yields once per round before it
//! drains its core, so that what the other ready tasks queue for it
//! meanwhile joins the same Ready (one journal write and one append per
//! peer for more writes), and rebuilds the cloned parts of its status at
//! most once a tick (a configuration change at once). `benches/multi.rs` prints the CPU per put and the fsyncs per put
//! of both cells; the README has the figures and what limits them.
//!
//! A group's replica on a node has the node's id (the node id derives from
//! the node's name, `<state machine>@<advertised address>`, which its
//! certificate names), so a group's configuration lists nodes, and the
//! address in it is the node's one endpoint.
//!
//! # Invariants
//!
//! - A group keeps every rule of a single-group peer: persistence ordering
//!   (a write completes only once the journal sync covering it returned,
//!   [`journal`] invariant 1), the fatal-storage-error policy (a failed
//!   journal sync fails every group's later writes: they share the disk),
//!   snapshots saved before the log is compacted behind them.
//! - Groups never see each other's messages: the group tag is set by the
//!   sender's transport handle and checked by the receiver's
//!   demultiplexer; a message for a group the node does not host is
//!   dropped and counted.
//! - A restart rebuilds every group from the journal (and its snapshot
//!   directory): the groups the journal holds are the groups the node
//!   hosts. A journal that the data directory proves existed (its
//!   `journal.created` marker, a group's snapshot or marker) and that is
//!   missing is refused at start, never created afresh (`lost_journal`).
//! - Schemas are checked as for single-group peers ([`crate::schema`]): the
//!   node's data directory records its binary's schema (one for all data
//!   groups, `dir_schema`) and refuses an incompatible binary at start; its
//!   links' hellos carry the schema and accept a compatible peer, whose
//!   schema every data group's leader then checks writes and promotions
//!   against (one [`SchemaBook`](crate::schema::SchemaBook) per node).
//!
//! # Limits (what this module does not do yet)
//!
//! - The journal keeps each group's live log in memory (its snapshots
//!   keep it short).
//! - Leaders are spread by [`balance`] (on demand or periodically),
//!   replicas are moved by [`moves`] (a node hosts a moved replica on
//!   demand, see [`hosting`]; a removed replica that missed the news asks
//!   the group's members, see [`removal`]). A replica may move back to a
//!   node it left: it starts behind a membership fence instead of under a
//!   fresh replica id ([`hosting`], "Moving back").
//!
//! # Sharding
//!
//! A sharded deployment ([`MultiNode::form_shards`]) adds group 0, the
//! [`placement`]: which data group owns which hash range of the keys and
//! where its replicas are (kept equal to each group's committed
//! configuration by [`placement_sync`]). Clients reach every group through the node's
//! [`service`] and route by shard key with
//! [`ShardedClient`](crate::client::ShardedClient).

pub mod balance;
mod dir_schema;
pub mod hosting;
pub mod journal;
mod links;
mod lost_journal;
#[cfg(test)]
mod lost_journal_tests;
pub mod moves;
mod node;
pub mod placement;
mod placement_auth;
pub mod placement_sync;
pub mod quiesce;
mod rebalance;
mod refusal_log;
pub mod removal;
pub mod service;
mod successors;

pub use hosting::{DEFAULT_SNAPSHOT_RECEIVE_BYTES, HostingPolicy};
pub use journal::{GroupLog, GroupSink, Journal, JournalOptions, JournalStats};
pub use moves::{MoveError, MoveOptions, MoveReport, MoveStep, RefusalCause};
pub use node::{MultiNode, MultiNodeBuilder};
pub use placement::{Placement, ShardKey};

/// The id of a Raft group within a multi-group deployment.
pub type GroupId = u64;
