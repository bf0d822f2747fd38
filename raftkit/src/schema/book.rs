//! [`SchemaBook`]: what a node knows of the schemas around it — its own,
//! the one its data directory held when it started, and every peer's (from
//! the hello of the peer's last link to this node) — and the leader's two
//! gates: one enables a handler only once every voter knows it
//! ([`SchemaBook::check_enabled`], and [`SchemaBook::knows_runtime_log`]
//! for raftkit's own entries), the other promotes a learner to voter only
//! if that disables nothing ([`SchemaBook::check_promotion`]).
//!
//! What a voter not heard from since this node started is taken to know
//! (hellos on a QUIC link bring every voter's schema once it links): with
//! hellos, for a write tag the oldest schema this node's data directory
//! recorded (file `schema.floor`, [`crate::schema::load_oldest_schema`]),
//! and for raftkit's own entries the runtime log version of the last raise
//! proven (in this process, or recorded in `schema.raised`,
//! [`crate::schema::load_raised_schema`]), else version 0: a fresh
//! directory's floor is this node's own schema and proves nothing of the
//! other voters (review s58 sessions #1: a node provisioned mid-upgrade
//! would propose entries an old voter halts on); without hellos (in-process
//! transports) the floor, the schema the directory held at this start,
//! or nothing would ever be enabled. Not the floor with hellos: after two
//! starts on a newer binary the floor is that binary's schema, while a voter
//! down since before the first may still run the older one (stop 44 and
//! 45). The oldest schema assumes, like the floor of a new directory, that
//! the directory was created on a binary every voter of its cluster knew
//! (a new cluster's nodes run one binary; a node added later is promoted
//! only if it knows every enabled write, not if it knows less).
//!
//! The oldest schema is raised to this node's own once a check of a
//! write finds every voter it names heard since this start on a schema
//! that knows every write of this one (same test as for one tag, for
//! each) and applies its runtime log version ([`Schema::runtime_log`]):
//! each of them recorded a schema at least that new in its data
//! directory before running on it, and a binary refuses a directory whose
//! schema has a handler it lacks ([`Schema::check_upgrade_from`],
//! [`crate::schema`]), so no voter can run an older binary again; a node
//! added later is promoted only if it knows every enabled write. Else a
//! node that restarts after an upgrade v1 → v2 → v3 would refuse every
//! write added since v1 while one voter is down or not linked yet, after
//! every restart. A raise is written to `schema.floor` and
//! `schema.raised` on a thread of its own (an fsync does not block the
//! async caller), and the book assumes it only once durable (both files
//! written and fsynced, their directory fsynced: review s61 schema #5),
//! so that no gate opens that a crash right after would close again; until
//! then a voter not heard counts as before. The check that a raise is
//! above what is durable and what is already queued, and its queueing,
//! are one critical section, and the writes reach the disk in that order
//! (review s61 schema L2, see `RaiseState`). A failed write changes
//! nothing, is logged (a `warn` event with the directory and the error),
//! and is tried again at a later hello, checked write or change of the
//! voter set, no sooner than a second after the failure (review s61
//! schema L3). Only a book given its file ([`SchemaBook::with_oldest_file`],
//! a single-group peer with a data directory) raises: a multi-group
//! node's book serves groups with different voters, and one group's voters
//! say nothing of another's. The raise is tried on each checked write
//! and, for a single-group peer, on each hello accepted
//! ([`SchemaBook::raise_on_hellos`]), so a follower that never checked a
//! write records it too (review s58 sessions #2), and each time the
//! peer's voter set changes ([`SchemaBook::try_raise_heard`]): a node that
//! joins hears the voters' hellos before its log holds the configuration
//! naming them, and the last node to join hears none after it, so it
//! would never raise, and once a voter was gone for good would refuse
//! every write should it lead (review s60 schema H1).
//!
//! A fresh directory's floor depends on how its node entered its cluster
//! (s60 schema #1). One that **founded** it (`bootstrap`) records its own
//! schema: every founding member runs one binary, so that schema is the
//! cluster's first and every voter knows it, and a new cluster's writes do
//! not wait for each voter to link. One that **joined** an existing
//! cluster (`join`, or started empty to be added) records a floor with no
//! write ([`crate::schema::joined_floor`]): the other voters may still run
//! any older compatible binary (a node provisioned mid-upgrade), and this
//! node's own schema says nothing of them. Such a node, should it lead,
//! enables a write only for voters it heard on a binary that knows it, and
//! refuses every write while a voter is unheard (after waiting up to an
//! election timeout for its hello, so that a leader just elected does not
//! refuse for a voter about to link), until a raise proves every voter
//! knows this binary's writes. Short of that, once hellos from every
//! voter of its configuration were heard, the writes they all know are
//! recorded (a partial raise, [`SchemaBook::accept_peer`]): a node that
//! joined a cluster still on the older binary keeps that binary's writes
//! enabled after a restart with a voter down. Raises write the floor, so
//! a restart keeps them. A follower's gate sends the caller to the
//! leader rather than refusing (only the leader's gate decides). A
//! directory from before this distinction keeps its floor (taken as
//! founded). Limit: a joined node that never heard every voter of its
//! configuration at once since it joined (one was down from before it
//! joined until after it restarted), and leads while that voter is down,
//! refuses every write (after waiting, at most
//! half the client request timeout, for that voter's hello) until that voter links, is
//! removed, or another node leads; a replicated record of the schema the
//! cluster has proven, carried in the log and snapshots, would lift it.
//! Limit: a voter's hello can reach this node
//! before that voter saved its schema file (its transport, and its
//! learned link back to this leader, start before the last steps of its
//! start that can fail); a voter whose start fails after that point and
//! that is then rolled back to the older binary, its directory still that
//! binary's, would be taken after this node's next start to know writes
//! it does not.
//!
//! Invariant: a write tag that the current voters have enabled stays
//! enabled across `add_server`. The enabled set only shrinks when a voter
//! restarts on an older binary (refused by its data directory, see
//! [`crate::schema`]) or when a learner that lacks a tag is promoted, which
//! the second gate refuses.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{HandlerKind, Mismatch, Schema};
use crate::core::NodeId;
use crate::error::Error;
use crate::storage::vfs::SharedFs;

/// The schemas a node knows (see the [`crate::schema`] docs). Shared by the
/// transport (which records peers' schemas) and the peer (which checks
/// commands against them).
#[derive(Debug)]
pub struct SchemaBook {
    local: Arc<Schema>,
    /// What a voter whose schema this node has not seen is assumed to
    /// know: the schema the data directory held when this node started (or
    /// the local one for a new directory).
    floor: Arc<Schema>,
    /// What the book raised, durably, and the raise being written: shared
    /// with the thread that writes it.
    raise: Arc<RaiseState>,
    /// Where the raise is recorded (`schema.floor` of the data directory,
    /// [`crate::schema::raise_oldest_schema`]). None: no raise at all (a
    /// book of a multi-group node, whose groups have different voters, or
    /// of a node without a directory).
    oldest_file: Option<(SharedFs, PathBuf)>,
    /// The voters of this node's current configuration, this node
    /// excluded (as [`Self::check_enabled`] is given them), for the raise
    /// on a hello ([`Self::accept_peer`]). None: no raise on hellos.
    voters: Mutex<Option<VoterSource>>,
    /// Each peer's schema from its last hello, at most one entry per peer.
    /// A list, not a map: a cluster has a handful of peers, and the
    /// leader looks every voter up on each write ([`Self::check_enabled`]),
    /// where a scan of a few ids costs less than hashing them.
    peers: Mutex<Vec<(NodeId, Arc<Schema>)>>,
    /// Whether peers' hellos carry their schemas to this book (the QUIC
    /// transport): then a learner's schema is known once it has linked to
    /// this node, and [`Self::check_promotion`] waits for it instead of
    /// assuming the floor.
    hears_peers: AtomicBool,
    /// Woken at each hello recorded ([`Self::accept_peer`]), for
    /// [`Self::wait_heard`].
    heard: tokio::sync::Notify,
    /// How many [`Self::wait_heard`] calls are waiting now (tests).
    #[cfg(test)]
    waiting: std::sync::atomic::AtomicUsize,
}

/// How long after a failed write of a raise no raise is written again (a
/// failing disk is not rewritten at every hello, write or status).
const RAISE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The raise of a [`SchemaBook`]: what it holds durably (what its gates
/// use) and the write under way.
///
/// Invariants: `oldest`, `raised` and `proven_log` change only once the
/// raise is durable (both files written, fsynced and their directory
/// fsynced, [`crate::schema::raise_oldest_schema`]), by the thread that
/// wrote it, holding `queue`: a gate opens only on what a restart reads
/// back (review s61 schema #5). A raise is queued, holding `queue`, only
/// if it is above both what is durable and what is queued (a full raise
/// above every partial one; a partial one above another only if it adds
/// a write), and written after the write queued before it: the writes
/// reach the disk in the order of their schemas, so a partial raise never
/// overwrites a full one (review s61 schema L2).
#[derive(Debug)]
struct RaiseState {
    /// What a voter whose schema this node has not seen is assumed to know
    /// for [`SchemaBook::check_enabled`] when hellos carry schemas: the
    /// oldest schema the data directory recorded (file `schema.floor`,
    /// see [`crate::schema::load_oldest_schema`]), the floor if none; a
    /// raise's schema once durable (see the module docs).
    oldest: Mutex<Arc<Schema>>,
    /// Whether `oldest` was raised to the local schema, durably: the fast
    /// check of [`SchemaBook::check_enabled`], which tries a raise only
    /// while it is false. Never set back.
    raised: AtomicBool,
    /// The runtime log version ([`Schema::runtime_log`]) a voter not heard
    /// from is taken to apply when hellos carry schemas
    /// ([`SchemaBook::knows_runtime_log`]): that of the last raise proven
    /// and durable, by this book or recorded in `schema.raised`
    /// ([`crate::schema::load_raised_schema`]), else 0. Not `oldest`'s: a
    /// fresh directory's `schema.floor` is this node's own schema, which
    /// proves nothing of the other voters (review s58 sessions #1).
    proven_log: AtomicU32,
    /// The raise being written, if any, and when the next may be.
    queue: Mutex<RaiseQueue>,
    /// How many writes of a raise failed (for the peer's watcher of its
    /// voter set, which tries again).
    failures: AtomicU64,
    /// Bumped each time a write of a raise ends (durable or failed): wakes
    /// the peer's watcher of its voter set, which ends once nothing is
    /// left to raise and tries a failed raise again.
    ended: tokio::sync::watch::Sender<u64>,
}

/// The write of a raise under way (see [`RaiseState`]).
#[derive(Debug)]
struct RaiseQueue {
    /// The schema of the last raise queued and not ended yet, and whether
    /// it is the full one (the local schema).
    pending: Option<(Arc<Schema>, bool)>,
    /// The thread writing the raises queued (each waits for the one
    /// before).
    writer: Option<std::thread::JoinHandle<()>>,
    /// After a failed write: no raise is queued before this time.
    retry_at: Option<Instant>,
    /// The wait after a failed write ([`RAISE_RETRY_DELAY`]; tests set it).
    retry_delay: Duration,
}

/// The write tags of `schema`.
fn write_tags(schema: &Schema) -> impl Iterator<Item = u32> + '_ {
    schema
        .handlers
        .iter()
        .filter(|h| h.kind == HandlerKind::Write)
        .map(|h| h.tag)
}

/// Whether a partial raise to `to` is above `from`: it knows every write
/// `from` does and one more.
fn adds_writes(from: &Schema, to: &Schema) -> bool {
    let has: Vec<u32> = write_tags(to).collect();
    let mut had = 0usize;
    for tag in write_tags(from) {
        if !has.contains(&tag) {
            return false;
        }
        had += 1;
    }
    has.len() > had
}

impl RaiseState {
    /// Records the end of the write of `schema` (`full`: the local one):
    /// once durable, the book assumes it of a voter not heard; after a
    /// failure, nothing changes and a raise is queued again no sooner than
    /// the retry delay.
    fn ended(
        &self,
        schema: &Arc<Schema>,
        full: bool,
        written: Result<(), Error>,
        dir: &std::path::Path,
    ) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let writes = write_tags(schema).count();
        match written {
            Ok(()) => {
                {
                    let mut oldest = self.oldest.lock().unwrap_or_else(|p| p.into_inner());
                    if full || adds_writes(&oldest, schema) {
                        *oldest = schema.clone();
                    }
                }
                self.proven_log
                    .fetch_max(schema.runtime_log, Ordering::AcqRel);
                if full {
                    self.raised.store(true, Ordering::Release);
                }
                queue.retry_at = None;
                info!(dir = %dir.display(), writes, full, runtime_log = schema.runtime_log, "every voter knows these writes: the oldest schema recorded is raised to them, durably");
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                queue.retry_at = Some(Instant::now() + queue.retry_delay);
                let retry_ms = u64::try_from(queue.retry_delay.as_millis()).unwrap_or(u64::MAX);
                warn!(dir = %dir.display(), error = %e, writes, full, retry_ms, "writing the raise of the oldest schema recorded failed: nothing is enabled by it; tried again at the next hello, checked write or voter status after the retry delay");
            }
        }
        if queue
            .pending
            .as_ref()
            .is_some_and(|(p, _)| Arc::ptr_eq(p, schema))
        {
            queue.pending = None;
        }
        drop(queue);
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Where [`SchemaBook::accept_peer`] reads the current voters (this node
/// excluded) from.
struct VoterSource(Box<dyn Fn() -> Vec<NodeId> + Send + Sync>);

impl std::fmt::Debug for VoterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VoterSource")
    }
}

/// Why [`SchemaBook::check_promotion`] does not allow a promotion (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromotionRefused {
    /// The learner's hello has not reached this node yet: its schema is not
    /// known.
    Unheard,
    /// Promoting it would disable a write the voters have enabled, or make
    /// a voter of a node that cannot restore any voter's snapshot. Says
    /// which.
    Shrinks(String),
}

impl SchemaBook {
    /// A book for a node running `local`, whose data directory held `floor`
    /// when it started.
    pub fn new(local: Schema, floor: Option<Schema>) -> SchemaBook {
        let local = Arc::new(local);
        let floor = floor.map(Arc::new).unwrap_or_else(|| local.clone());
        SchemaBook {
            raise: Arc::new(RaiseState {
                oldest: Mutex::new(floor.clone()),
                raised: AtomicBool::new(false),
                proven_log: AtomicU32::new(0),
                queue: Mutex::new(RaiseQueue {
                    pending: None,
                    writer: None,
                    retry_at: None,
                    retry_delay: RAISE_RETRY_DELAY,
                }),
                failures: AtomicU64::new(0),
                ended: tokio::sync::watch::Sender::new(0),
            }),
            oldest_file: None,
            voters: Mutex::new(None),
            floor,
            local,
            peers: Mutex::new(Vec::new()),
            hears_peers: AtomicBool::new(false),
            heard: tokio::sync::Notify::new(),
            #[cfg(test)]
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Sets the oldest schema the data directory recorded (none: the
    /// floor stays), what [`Self::check_enabled`] assumes of a voter not
    /// heard from when hellos carry schemas.
    pub fn with_oldest(self, oldest: Option<Schema>) -> SchemaBook {
        if let Some(oldest) = oldest {
            *self.raise.oldest.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(oldest);
        }
        self
    }

    /// Sets the schema of the last raise the data directory recorded
    /// (`schema.raised`, [`crate::schema::load_raised_schema`]; none: no
    /// raise proven, and a voter not heard from is taken to apply runtime
    /// log version 0 only, see [`Self::knows_runtime_log`]).
    pub fn with_raised(self, raised: Option<Schema>) -> SchemaBook {
        if let Some(raised) = raised {
            self.raise.proven_log.store(
                raised.runtime_log.min(self.local.runtime_log),
                Ordering::Release,
            );
        }
        self
    }

    /// The book of a single-group peer whose data directory `dir` held
    /// `stored` when it started (none: a new directory, whose `schema`
    /// this start saved already) and records `local` from now on: the
    /// oldest schema and the last raise it recorded are read from it, and
    /// raises are written to it ([`Self::with_oldest_file`]).
    pub(crate) fn of_dir(
        local: Schema,
        stored: Option<Schema>,
        fs: SharedFs,
        dir: PathBuf,
    ) -> Result<SchemaBook, Error> {
        let oldest = crate::schema::load_oldest_schema(&*fs, &dir)?.or_else(|| stored.clone());
        let raised = crate::schema::load_raised_schema(&*fs, &dir)?;
        let book = SchemaBook::new(local, stored)
            .with_oldest(oldest)
            .with_raised(raised)
            .with_oldest_file(fs, dir);
        // Raised already (a restart after the raise): nothing left to
        // raise, so nothing is rewritten, and the peer watches no voter
        // set for it (review s61 schema L4).
        let settled = {
            let oldest = book.raise.oldest.lock().unwrap_or_else(|p| p.into_inner());
            **oldest == *book.local
                && book.raise.proven_log.load(Ordering::Acquire) >= book.local.runtime_log
        };
        book.raise.raised.store(settled, Ordering::Release);
        Ok(book)
    }

    /// Lets [`Self::accept_peer`] try the raise of the oldest schema too
    /// (review s58 sessions #2: not only a node that checks writes, so a
    /// follower that later leads after a restart with a voter down still
    /// proposes the bounded entries): `voters` gives the voters of this
    /// node's current configuration, this node excluded. Only for a book
    /// with its file ([`Self::with_oldest_file`]).
    pub(crate) fn raise_on_hellos(&self, voters: impl Fn() -> Vec<NodeId> + Send + Sync + 'static) {
        if let Ok(mut v) = self.voters.lock() {
            *v = Some(VoterSource(Box::new(voters)));
        }
    }

    /// Lets [`Self::check_enabled`] raise the oldest schema to the local
    /// one, recorded in `dir`'s `schema.floor` through `fs`, once every
    /// voter it checks against was heard on a schema that knows every
    /// write of the local one (see the module docs). Only for a book whose
    /// every check names the voters of one configuration (a single-group
    /// peer), and a directory whose `schema` file holds the local schema
    /// by the time a write is checked.
    pub(crate) fn with_oldest_file(mut self, fs: SharedFs, dir: PathBuf) -> SchemaBook {
        self.oldest_file = Some((fs, dir));
        self
    }

    /// Whether `remote` knows every write handler of the local schema (the
    /// check of [`Self::check_enabled`], for every tag).
    fn knows_every_local_write(&self, remote: &Schema) -> bool {
        self.local
            .handlers
            .iter()
            .filter(|h| h.kind == HandlerKind::Write)
            .all(|h| remote.handler(h.kind, h.tag).is_some())
    }

    /// Raises the oldest schema to the local one: queues its write
    /// ([`Self::queue_raise`]); the book assumes it once durable.
    pub(super) fn raise_oldest(&self) {
        self.queue_raise(self.local.clone(), true);
    }

    /// Raises the oldest schema, short of the local one, to `proven`: the
    /// local schema's writes that every voter of the configuration knows
    /// (each heard since this start), at the lowest runtime log version
    /// among them ([`Self::known_by_every_voter`]). A voter never runs an
    /// older binary again (its directory refuses one), so this holds for
    /// good, as the full raise does: a node that joined its cluster
    /// mid-upgrade (floor with no write) keeps the older binary's writes
    /// enabled after a restart with a voter down. Only when `proven`
    /// knows every write the oldest schema (and any raise queued) does and
    /// one more; queued as the full raise is ([`Self::queue_raise`]).
    pub(super) fn raise_partly(&self, proven: Schema) {
        self.queue_raise(Arc::new(proven), false);
    }

    /// Queues the write of a raise to `schema` (`full`: the local schema)
    /// to `schema.floor` and `schema.raised`
    /// ([`crate::schema::raise_oldest_schema`]) on a thread of its own (an
    /// fsync must not block the caller, an async task), after the write
    /// queued before, if any: the check that it is above what is durable
    /// and what is queued, and the queueing, are one critical section
    /// (the `queue` lock; review s61 schema L2). Nothing is assumed of it
    /// before it is durable ([`RaiseState`]); a failed write is logged,
    /// and a raise is queued again at a later hello, checked write or
    /// voter status, no sooner than the retry delay.
    fn queue_raise(&self, schema: Arc<Schema>, full: bool) {
        let Some((fs, dir)) = &self.oldest_file else {
            return;
        };
        let state = &self.raise;
        let Ok(mut queue) = state.queue.lock() else {
            warn!(dir = %dir.display(), full, "the schema raise's lock is poisoned; the raise is not recorded");
            return;
        };
        if state.raised.load(Ordering::Acquire)
            || queue.retry_at.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let above = match &queue.pending {
            Some((_, true)) => false,
            Some((pending, false)) => full || adds_writes(pending, &schema),
            None => {
                full || adds_writes(
                    &state.oldest.lock().unwrap_or_else(|p| p.into_inner()),
                    &schema,
                )
            }
        };
        if !above {
            return;
        }
        let before = queue.writer.take();
        let (fs, at, shared, target) = (fs.clone(), dir.clone(), state.clone(), schema.clone());
        let spawned = std::thread::Builder::new()
            .name("raftkit-schema-floor".into())
            .spawn(move || {
                if let Some(before) = before {
                    before.join().ok();
                }
                let written = crate::schema::raise_oldest_schema(&*fs, &at, &target);
                shared.ended(&target, full, written, &at);
            });
        match spawned {
            Ok(handle) => {
                queue.writer = Some(handle);
                queue.pending = Some((schema, full));
            }
            Err(e) => {
                // The thread before (if any) was not waited for: it ends
                // on its own, and records its own end.
                state.failures.fetch_add(1, Ordering::AcqRel);
                queue.retry_at = Some(Instant::now() + queue.retry_delay);
                warn!(dir = %dir.display(), error = %e, full, "no thread to write the raise of the oldest schema recorded; tried again later");
                drop(queue);
                state.ended.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// The local schema restricted to the writes every voter of `voters`
    /// (this node excluded) knows, as each was heard since this start, at
    /// the lowest runtime log version among them and this binary's: what
    /// [`Self::raise_partly`] proves. None when a voter was not heard (or
    /// none is given).
    fn known_by_every_voter(&self, voters: &[NodeId]) -> Option<Schema> {
        let heard: Vec<Arc<Schema>> = {
            let peers = self.peers.lock().ok()?;
            voters
                .iter()
                .map(|voter| {
                    peers
                        .iter()
                        .find(|(id, _)| id == voter)
                        .map(|(_, schema)| schema.clone())
                })
                .collect::<Option<Vec<_>>>()?
        };
        if heard.is_empty() {
            return None;
        }
        let mut proven = (*self.local).clone();
        proven.handlers.retain(|h| {
            h.kind != HandlerKind::Write || heard.iter().all(|s| s.handler(h.kind, h.tag).is_some())
        });
        proven.runtime_log = heard
            .iter()
            .map(|s| s.runtime_log)
            .fold(self.local.runtime_log, u32::min);
        Some(proven)
    }

    /// Waits for the thread writing a raise, if one was started.
    #[cfg(test)]
    pub(crate) fn wait_raise_written(&self) {
        let handle = self
            .raise
            .queue
            .lock()
            .ok()
            .and_then(|mut q| q.writer.take());
        if let Some(handle) = handle {
            handle.join().ok();
        }
    }

    /// The oldest schema the book assumes of a voter not heard now.
    #[cfg(test)]
    pub(super) fn oldest_now(&self) -> Arc<Schema> {
        self.raise
            .oldest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the wait after a failed write of a raise (tests: none).
    #[cfg(test)]
    pub(crate) fn set_raise_retry_delay(&self, delay: Duration) {
        if let Ok(mut queue) = self.raise.queue.lock() {
            queue.retry_delay = delay;
        }
    }

    /// How many writes of a raise failed so far.
    pub(crate) fn raise_failures(&self) -> u64 {
        self.raise.failures.load(Ordering::Acquire)
    }

    /// When a raise may be queued again after a failed write (none: now).
    pub(crate) fn raise_retry_at(&self) -> Option<Instant> {
        self.raise.queue.lock().ok().and_then(|q| q.retry_at)
    }

    /// A receiver woken each time a write of a raise ends, durable or
    /// failed.
    pub(crate) fn raise_ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.raise.ended.subscribe()
    }

    /// Says that peers' hellos carry their schemas to this book (the
    /// transport records them with [`Self::accept_peer`]).
    pub(crate) fn hear_peers(&self) {
        self.hears_peers.store(true, Ordering::Relaxed);
    }

    /// What this node takes `id` to know: its last hello's schema or, if
    /// none was seen, the floor (`true` when it is the floor).
    fn known(&self, peers: Option<&[(NodeId, Arc<Schema>)]>, id: NodeId) -> (Arc<Schema>, bool) {
        match peers.and_then(|p| p.iter().find(|(peer, _)| *peer == id)) {
            Some((_, schema)) => (schema.clone(), false),
            None => (self.floor.clone(), true),
        }
    }

    /// This node's schema.
    pub fn local(&self) -> &Schema {
        &self.local
    }

    /// Checks a peer's schema from its hello and, if compatible, records it
    /// as what `from` knows.
    /// Then, once every voter of the current configuration was heard on a
    /// schema that proves the raise (see the module docs), raises the
    /// oldest schema, if the peer said where the voters
    /// are; once every voter was heard, on schemas that do not all prove
    /// it, raises the oldest schema partly, to the writes they all know
    /// (when that adds one).
    pub fn accept_peer(&self, from: NodeId, remote: Schema) -> Result<(), Mismatch> {
        self.local.check_peer(&remote)?;
        if let Ok(mut peers) = self.peers.lock() {
            let remote = Arc::new(remote);
            match peers.iter_mut().find(|(id, _)| *id == from) {
                Some((_, known)) => *known = remote,
                None => peers.push((from, remote)),
            }
        }
        self.heard.notify_waiters();
        self.try_raise_heard();
        Ok(())
    }

    /// Raises the oldest schema, fully or partly, if the hellos heard since
    /// this start prove it for every voter of the current configuration
    /// (the source given to [`Self::raise_on_hellos`]; none: nothing). Tried
    /// at each hello ([`Self::accept_peer`]) and, by the peer, each time
    /// its voter set changes (review s60 schema H1: a node that joins hears
    /// the voters' hellos before its log holds the configuration naming
    /// them, and the last node to join hears no hello after it).
    pub(crate) fn try_raise_heard(&self) {
        if self.raise_settled() {
            return;
        }
        let voters = match self.voters.lock() {
            Ok(source) => source.as_ref().map(|s| (s.0)()),
            Err(_) => None,
        };
        if let Some(voters) = voters {
            if self.every_voter_proves_the_raise(&voters) {
                self.raise_oldest();
            } else if let Some(proven) = self.known_by_every_voter(&voters) {
                self.raise_partly(proven);
            }
        }
    }

    /// Whether no raise is left to try: the book has no file to record one
    /// in, hears no hello, or was raised to the local schema already,
    /// durably (a raise being written, or whose write failed, is still to
    /// try). A founding directory's floor is this node's own schema, but
    /// it still has a raise to make until one is recorded: the runtime
    /// log version a voter not heard is taken to apply (`schema.raised`,
    /// [`Self::knows_runtime_log`]).
    pub(crate) fn raise_settled(&self) -> bool {
        self.oldest_file.is_none()
            || !self.hears_peers.load(Ordering::Relaxed)
            || self.raise.raised.load(Ordering::Acquire)
    }

    /// Whether `voters` (this node excluded) are some, and every one was
    /// heard since this start on a schema that knows every write of this
    /// one and applies its runtime log version: the proof of a raise
    /// (module docs).
    fn every_voter_proves_the_raise(&self, voters: &[NodeId]) -> bool {
        let Ok(peers) = self.peers.lock() else {
            return false;
        };
        !voters.is_empty()
            && voters.iter().all(|voter| {
                peers.iter().any(|(id, schema)| {
                    id == voter
                        && self.knows_every_local_write(schema)
                        && schema.runtime_log >= self.local.runtime_log
                })
            })
    }

    /// Waits until every voter `voters()` names (this node excluded) was
    /// heard since this start, or until `deadline`: true if one was not
    /// heard at first and every one was by the end (a check of a write
    /// may then pass where it did not), false at once without hellos or
    /// when every voter was heard already (nothing to wait for).
    pub(crate) async fn wait_heard(
        &self,
        voters: impl Fn() -> Vec<NodeId>,
        deadline: tokio::time::Instant,
    ) -> bool {
        if !self.hears_peers.load(Ordering::Relaxed) {
            return false;
        }
        let mut waited = false;
        loop {
            let notified = self.heard.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let voters = voters();
            let all = {
                let Ok(peers) = self.peers.lock() else {
                    return false;
                };
                voters.iter().all(|v| peers.iter().any(|(id, _)| id == v))
            };
            if all {
                return waited;
            }
            #[cfg(test)]
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let woken = tokio::time::timeout_at(deadline, notified).await;
            #[cfg(test)]
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            if woken.is_err() {
                return false;
            }
            waited = true;
        }
    }

    /// How many writes are waiting in [`Self::wait_heard`] now.
    #[cfg(test)]
    pub(crate) fn waiting_for_hellos(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The schema `id` showed in its last hello, if any.
    pub fn peer(&self, id: NodeId) -> Option<Arc<Schema>> {
        self.peers.lock().ok().and_then(|p| {
            p.iter()
                .find(|(peer, _)| *peer == id)
                .map(|(_, schema)| schema.clone())
        })
    }

    /// The leader's check before a command enters the log (or a query is
    /// served): this binary must know `(kind, tag)`, and for a write every
    /// voter of `voters` too — as its last hello showed, or, for a voter
    /// not heard from since this node started, as the oldest schema the
    /// data directory recorded when hellos carry schemas to this book (a
    /// voter down since before this node's first start on a newer binary
    /// may still run the binary of that schema: tags added since wait for
    /// its hello; raised to the local schema once every voter was heard on
    /// a schema knowing all its writes, see the module docs), else as the
    /// data directory's schema at start (the floor). Refuses with [`Error::Unsupported`] (nothing was applied).
    pub fn check_enabled(
        &self,
        kind: HandlerKind,
        tag: u32,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), Error> {
        let Some(handler) = self.local.handler(kind, tag) else {
            return Err(Error::Unsupported(format!(
                "this binary of `{}` has no {} handler with tag {tag} (the caller runs a newer schema); nothing was applied, and the same call cannot succeed before this node runs a binary that knows it",
                self.local.name,
                kind.as_str()
            )));
        };
        if kind == HandlerKind::Read {
            // Reads are served by this node alone.
            return Ok(());
        }
        // What a voter not heard from is taken to know: with hellos, the
        // oldest schema the directory recorded (the floor is this node's
        // own last schema, and says nothing of a voter still down on a
        // binary older than it); without, the floor (nothing would ever
        // be heard).
        let hears_peers = self.hears_peers.load(Ordering::Relaxed);
        // Whether a raise of the oldest schema is to be tried: once, while
        // not raised (one atomic load on the hot path once it is).
        // Not with no voter to hear: before the node task first publishes
        // its configuration the voters read as none, and a raise then
        // would take every voter to know this binary unheard (review,
        // stop 45); a node alone enables every write anyway.
        let mut voters = voters.into_iter().peekable();
        let raised = self.raise.raised.load(Ordering::Acquire);
        let mut raise =
            hears_peers && self.oldest_file.is_some() && !raised && voters.peek().is_some();
        let oldest = if hears_peers && raised {
            self.local.clone()
        } else if hears_peers {
            self.raise
                .oldest
                .lock()
                .map(|o| o.clone())
                .unwrap_or_else(|p| p.into_inner().clone())
        } else {
            self.floor.clone()
        };
        let (unheard, unheard_source) = if hears_peers {
            let joined = !oldest.handlers.iter().any(|h| h.kind == HandlerKind::Write);
            (
                &oldest,
                if joined {
                    "it has not linked to this leader since the leader started, and this leader joined its cluster on a new data directory, which proves no write of a voter until every voter was heard on a binary that knows this one's writes"
                } else {
                    "it has not linked to this leader since the leader started, and the oldest schema this node's data directory recorded"
                },
            )
        } else {
            (
                &self.floor,
                "it has not linked to this leader since the leader started, and the schema this node ran before",
            )
        };
        // Locked once for all voters; a poisoned lock reads as "no hello
        // seen", like `peer`.
        let peers = self.peers.lock().ok();
        for voter in voters {
            let seen = peers
                .as_ref()
                .and_then(|p| p.iter().find(|(id, _)| *id == voter));
            let (known, source) = match seen.map(|(_, schema)| schema) {
                Some(schema) => {
                    raise = raise
                        && self.knows_every_local_write(schema)
                        && schema.runtime_log >= self.local.runtime_log;
                    (schema.handler(kind, tag).is_some(), "its binary")
                }
                None => {
                    raise = false;
                    (unheard.handler(kind, tag).is_some(), unheard_source)
                }
            };
            if !known {
                // Review s60 schema L3: for a voter not heard, running a
                // newer binary elsewhere does not help; it must link.
                // Review s61 schema L5: the message says whether the same
                // call may succeed later with no upgrade (the mark of
                // `Error::awaits_voter_link`) or not.
                let (until, mark) = if seen.is_some() || !hears_peers {
                    (
                        format!(
                            "it is enabled once every voter runs a binary that knows it: the same call cannot succeed before voter {voter} is upgraded"
                        ),
                        "",
                    )
                } else {
                    (
                        "it is enabled once that voter links to this leader on a binary that knows it (if it is down for good, remove it from the configuration or move leadership to a node that heard it): the same call may succeed later, with no upgrade ".to_string(),
                        crate::error::AWAITS_VOTER_LINK,
                    )
                };
                return Err(Error::Unsupported(format!(
                    "{} is not enabled yet: voter {voter} may not know it ({source} has no {} tag {tag}); {until}{mark}. Nothing was applied",
                    handler.label(),
                    kind.as_str()
                )));
            }
        }
        drop(peers);
        if raise {
            // Every voter was heard since this start on a schema that knows
            // every write of this one: none can run an older binary again
            // (module docs), so neither can a voter down after this node's
            // next start.
            self.raise_oldest();
        }
        Ok(())
    }

    /// Whether the leader may propose raftkit's own log entries of
    /// `version` ([`Schema::runtime_log`]): this binary applies them, and
    /// so does every voter of `voters`, as its last hello showed. A voter
    /// not heard from since this node started counts, when hellos carry
    /// schemas to this book, as the runtime log version of the last raise
    /// proven (every voter heard on a schema that knows every write of
    /// this one and applies its runtime log version, in this process or
    /// recorded in `schema.raised`), else version 0 (module docs; not the
    /// floor nor the oldest schema recorded: a fresh directory records
    /// this node's own, which says nothing of a voter still on an older
    /// binary); without hellos, the floor. When not, the leader proposes the older entry instead (a
    /// voter that cannot decode an entry halts at it).
    pub fn knows_runtime_log(
        &self,
        version: u32,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> bool {
        if self.local.runtime_log < version {
            return false;
        }
        let unheard = if self.hears_peers.load(Ordering::Relaxed) {
            self.raise.proven_log.load(Ordering::Acquire)
        } else {
            self.floor.runtime_log
        };
        let peers = self.peers.lock().ok();
        voters.into_iter().all(|voter| {
            let seen = peers
                .as_ref()
                .and_then(|p| p.iter().find(|(id, _)| *id == voter));
            match seen {
                Some((_, schema)) => schema.runtime_log >= version,
                None => unheard >= version,
            }
        })
    }

    /// The leader's check before it promotes `learner` to voter, `voters`
    /// being the other voters (this node excluded, as it is for
    /// [`Self::check_enabled`]). Refuses when the learner's schema lacks a
    /// write tag that [`Self::check_enabled`] enables now (the promotion
    /// would disable that write, which clients may be using, and make a
    /// voter of a node that halts at its first entry), or when its state
    /// version is below every voter's (it could restore no voter's
    /// snapshot). The learner's schema is its last hello's; while none was
    /// seen, [`PromotionRefused::Unheard`] if hellos carry schemas to this
    /// book, else the floor (what [`Self::check_enabled`] would assume of
    /// it as a voter). Read handlers are not compared: a query is served
    /// by the leader alone.
    pub fn check_promotion(
        &self,
        learner: NodeId,
        voters: &[NodeId],
    ) -> Result<(), PromotionRefused> {
        let peers = self.peers.lock().ok();
        let (schema, unheard) = self.known(peers.as_deref().map(Vec::as_slice), learner);
        if unheard && self.hears_peers.load(Ordering::Relaxed) {
            return Err(PromotionRefused::Unheard);
        }
        let source = if unheard {
            "the schema this node ran before (its hello carries none)"
        } else {
            "its binary"
        };
        let mut lowest_state = self.local.state_version;
        let others: Vec<Arc<Schema>> = voters
            .iter()
            .map(|&v| self.known(peers.as_deref().map(Vec::as_slice), v).0)
            .collect();
        drop(peers);
        for other in &others {
            lowest_state = lowest_state.min(other.state_version);
        }
        for h in &self.local.handlers {
            if h.kind != HandlerKind::Write || schema.handler(h.kind, h.tag).is_some() {
                continue;
            }
            let enabled = others.iter().all(|o| o.handler(h.kind, h.tag).is_some());
            if enabled {
                return Err(PromotionRefused::Shrinks(format!(
                    "{} is enabled (every voter knows it) but learner {learner} cannot decode it ({source} has no write tag {})",
                    h.label(),
                    h.tag
                )));
            }
        }
        // The runtime log version every voter applies (so the leader may
        // propose its entries): the learner must apply it too. Unheard
        // voters count as the floor here, not as the oldest schema as in
        // `knows_runtime_log` (which would let more learners through):
        // entries of the floor's version, proposed before this node
        // restarted, may be in the log the learner would apply.
        let enabled_log = others
            .iter()
            .map(|o| o.runtime_log)
            .fold(self.local.runtime_log, u32::min);
        if schema.runtime_log < enabled_log {
            return Err(PromotionRefused::Shrinks(format!(
                "every voter applies raftkit log entries of version {enabled_log} (the leader may propose them) but learner {learner} applies up to version {} ({source})",
                schema.runtime_log
            )));
        }
        if schema.state_version < lowest_state {
            return Err(PromotionRefused::Shrinks(format!(
                "learner {learner} knows state version {} but every voter writes snapshots of version {lowest_state} or later, which it cannot restore ({source})",
                schema.state_version
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
