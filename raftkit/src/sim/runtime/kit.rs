//! The public kit: [`Simulation`] runs real peers of the user's state
//! machine for many seeds and judges each run.
//!
//! One seed: `nodes` peers (`Peer<Probe<S>>`, see `probe.rs`) bootstrap a
//! cluster over the in-process transport, each on its own simulated disk;
//! `clients` clients each make `ops` workload calls while a nemesis throws
//! faults at the cluster; then the faults stop, every node is restarted or
//! healed, and the cluster gets time to converge. The run fails if
//! replicas diverged, a node cannot restart from its disk, a write was
//! applied twice or an acknowledged one lost, or the history is not
//! linearizable with `S` as the specification.
//!
//! Size: past 1,000 lines because the `World`'s node table and failure
//! record stay private to this module, and what starts, crashes, restarts
//! and judges the nodes (`World`'s methods, `run_one`, `nemesis`) reads
//! them; `client.rs` and `moves.rs` use only its crate-visible items. The
//! nemesis would move first, into a child module.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client::SimClient;
use super::disk::{DiskFaults, SimDisk};
use super::exec::{Trace, fnv, runtime};
use super::history::{self, History, Kind, Outcome, StaleRead, Verdict};
use super::probe::{Applies, PROBE, Probe, ProbeCtx};
use super::teeth::{Armed, Tooth, on};
use crate::core::NodeId;
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::multi::{Journal, JournalOptions};
use crate::runtime::session::SessionId;
use crate::runtime::threads::{Threads, Worker};
use crate::runtime::{GroupStorage, Peer, PeerBuilder};
use crate::state_machine::StateMachine;
use crate::storage::FileSnapshotStore;
use crate::transport::memory::MemoryNetwork;

/// The tick of simulated peers (elections after 10–20 ticks).
const TICK: Duration = Duration::from_millis(20);
/// The longest a calm phase waits for the cluster to converge.
const CONVERGE: Duration = Duration::from_secs(60);
/// Messages at one virtual instant that make a livelock.
const STORM: u64 = 20_000;
/// Steps the linearizability search may take per seed.
const CHECK_BUDGET: u64 = 200_000;
/// One seed in this many runs its peers with a short session time-to-live
/// (`SHORT_TTL_MS`, drawn per seed), so that sessions expire within a run.
const SHORT_TTL_ONE_IN: u64 = 3;
/// The range of short session time-to-lives, in ms of replicated time:
/// shorter than the longest partitions the nemesis makes and than the
/// clients' long absences.
const SHORT_TTL_MS: Range<u64> = 2_000..5_000;

type Workload<S> =
    Arc<dyn Fn(StdRng, SimClient<S>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The whole-runtime simulation of a cluster of `S` (see the [module
/// documentation](super)).
pub struct Simulation<S: StateMachine> {
    nodes: usize,
    clients: usize,
    ops: usize,
    seeds: Range<u64>,
    workload: Option<Workload<S>>,
    teeth: Vec<Tooth>,
    faults: Faults,
    snapshot_every: u64,
    groups: Option<usize>,
    replicas: Option<usize>,
}

/// Which faults the nemesis may inject (all by default).
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Partitions (split, one-way, isolated node), loss, duplication,
    /// reordering and long delays.
    pub network: bool,
    /// Process crashes (losing unsynced data, possibly torn) and restarts.
    pub crashes: bool,
    /// ENOSPC and EIO on the log, on snapshots only, or on both.
    pub disk: bool,
    /// Jumps of a node's wall clock (which stamps session expiry).
    pub clock: bool,
    /// Leadership transfers to random targets and, with several groups
    /// on spare nodes ([`Simulation::replicas`]), replica moves by
    /// membership changes (`moves.rs`).
    pub membership: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            network: true,
            crashes: true,
            disk: true,
            clock: true,
            membership: true,
        }
    }
}

/// How a seed failed.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The property violated.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
    /// The trace hash up to the failure.
    pub trace_hash: u64,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The test harness names each test's thread after the test; the
        // test binary's name (less cargo's hash) is the target.
        let test = std::thread::current()
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| "<test>".into());
        let target = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|s| match s.rsplit_once('-') {
                Some((name, _hash)) => name.to_string(),
                None => s,
            })
            .unwrap_or_else(|| "<target>".into());
        write!(
            f,
            "seed {} violates {}: {}\nreplay: RAFTKIT_SIM_SEED={} RAFTKIT_SIM_TRACE=1 cargo test --test {target} {test} -- --exact --nocapture",
            self.seed, self.property, self.detail, self.seed
        )
    }
}

/// What a passing seed did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The hash of the run's trace (equal for equal seeds).
    pub trace_hash: u64,
    /// Events in the trace.
    pub events: u64,
    /// Calls answered, and calls left unknown.
    pub calls: (usize, usize),
    /// Crashes and restarts.
    pub crashes: u64,
    /// Disk faults injected.
    pub disk_faults: u64,
    /// Whether the linearizability search ran out of budget.
    pub undecided: bool,
    /// The session time-to-live the peers ran with (short in about a third
    /// of the seeds, else the default hour).
    pub session_ttl: Duration,
    /// Whether the peers applied a lone small batch on the node task
    /// instead of the apply worker (`PeerBuilder::apply_small_batches_inline`,
    /// half of the seeds, or `RAFTKIT_SIM_APPLY_INLINE=0|1`).
    pub apply_inline: bool,
    /// Writes applied on a node task rather than its apply worker (0
    /// unless `apply_inline`).
    pub inline_applies: u64,
    /// Session expiry: what the cluster and the clients saw.
    pub sessions: SessionCounts,
    /// Virtual time the run covered.
    pub virtual_time: Duration,
    /// Leadership transfers and replica moves.
    pub membership: MembershipCounts,
    /// Stale reads judged (`history::stale_reads`).
    pub stale_reads: usize,
}

/// Leadership transfers and replica moves in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipCounts {
    /// Leadership transfers started (the leader accepted them).
    pub transfers: u64,
    /// Replica moves started.
    pub moves_started: u64,
    /// Replica moves that went through every step (learner added, caught
    /// up, joint change committed, old replica dropped).
    pub moves_done: u64,
    /// Of those, moves that brought the group back to a node it had left
    /// (a new replica behind its membership fence).
    pub moves_back: u64,
}

/// Session expiry in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions the cluster expired: the most one replica counted in one
    /// incarnation (`PeerStatus::session_expiries`, read before each crash
    /// and at the end; a lower bound on the expiries the log holds).
    pub expired: u64,
    /// `SessionExpired` answers the clients got.
    pub expired_errors: u64,
    /// Writes whose outcome became unknown because their session expired
    /// (the call failed with `SessionExpired`, recorded as `Maybe`).
    pub unknown_by_expiry: u64,
    /// Writes retried under a new session by the client itself (no attempt
    /// could have been applied).
    pub reopened: u64,
}

impl Summary {
    /// The session counts of every seed, added up.
    pub fn sessions(&self) -> SessionCounts {
        self.seeds
            .iter()
            .fold(SessionCounts::default(), |a, s| SessionCounts {
                expired: a.expired + s.sessions.expired,
                expired_errors: a.expired_errors + s.sessions.expired_errors,
                unknown_by_expiry: a.unknown_by_expiry + s.sessions.unknown_by_expiry,
                reopened: a.reopened + s.sessions.reopened,
            })
    }
}

/// What [`Simulation::check`] ran.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// One report per seed.
    pub seeds: Vec<SeedReport>,
}

impl<S: StateMachine + Default> Default for Simulation<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: StateMachine + Default> Simulation<S> {
    /// 3 nodes, 4 clients of 8 calls each, seeds `0..8`, every fault.
    pub fn new() -> Self {
        Simulation {
            nodes: 3,
            clients: 4,
            ops: 8,
            seeds: 0..8,
            workload: None,
            teeth: Vec::new(),
            faults: Faults::default(),
            snapshot_every: 16,
            groups: None,
            replicas: None,
        }
    }

    /// Runs `k` Raft groups (1 to 8) of `S` on the simulated nodes, as a
    /// [`MultiNode`](crate::multi::MultiNode) does: each node's replicas of
    /// every group share the node's one journal
    /// ([`Journal`](crate::multi::Journal)) on its simulated disk, and its
    /// fate (a crash, a restart, a partition hits all of them). Each group
    /// has its own history, judged on its own. Without this call, each node
    /// runs one ordinary peer with its own write-ahead log.
    pub fn groups(mut self, k: usize) -> Self {
        self.groups = Some(k.clamp(1, 8));
        self
    }

    /// With [`groups`](Self::groups): each group starts with replicas on
    /// this many nodes (rotating, default all of them); the nodes left
    /// over are spares that replica moves bring groups to.
    pub fn replicas(mut self, r: usize) -> Self {
        self.replicas = Some(r.max(1));
        self
    }

    /// The cluster size (1 to 9).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.clamp(1, 9);
        self
    }

    /// How many clients call concurrently.
    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n.max(1);
        self
    }

    /// How many workload calls each client makes.
    pub fn ops_per_client(mut self, n: usize) -> Self {
        self.ops = n;
        self
    }

    /// The seeds to run. `RAFTKIT_SIM_SEED=<n>` runs that seed alone;
    /// `RAFTKIT_SIM_RUNTIME_SEEDS=<n>` runs `n` seeds from the start of the
    /// range instead.
    pub fn seeds(mut self, seeds: Range<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Which faults the nemesis injects.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Take a snapshot every this many entries (default 16: small, so that
    /// snapshots, compaction and snapshot transfer run often).
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries;
        self
    }

    /// Arms a test-only runtime bug (see [`Tooth`]); also
    /// `RAFTKIT_SIM_RUNTIME_BUG=<name>[,<name>]`.
    pub fn tooth(mut self, tooth: Tooth) -> Self {
        self.teeth.push(tooth);
        self
    }

    /// What a client does for one call: `workload(rng, client)` gets a
    /// seeded RNG and the client (wrap it in the generated client:
    /// `BankClient::new(client)`).
    pub fn workload<F, Fut>(mut self, workload: F) -> Self
    where
        F: Fn(StdRng, SimClient<S>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
    {
        self.workload = Some(Arc::new(move |rng, client| {
            let fut = workload(rng, client);
            Box::pin(async move {
                let _ = fut.await;
            })
        }));
        self
    }

    fn seed_list(&self) -> Vec<u64> {
        if let Some(seed) = env_u64("RAFTKIT_SIM_SEED") {
            return vec![seed];
        }
        match env_u64("RAFTKIT_SIM_RUNTIME_SEEDS") {
            Some(n) => (self.seeds.start..self.seeds.start.saturating_add(n)).collect(),
            None => self.seeds.clone().collect(),
        }
    }

    /// Runs every seed; panics at the first failing one with the seed, the
    /// violated property and the command that replays it with a trace.
    pub fn run(self) -> Summary {
        match self.check() {
            Ok(summary) => summary,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Runs every seed; the first failure, if any.
    pub fn check(self) -> Result<Summary, SimFailure> {
        let mut summary = Summary::default();
        let progress = std::env::var_os("RAFTKIT_SIM_PROGRESS").is_some();
        for seed in self.seed_list() {
            let started = std::time::Instant::now();
            let report = self.run_seed(seed);
            if progress {
                eprintln!(
                    "seed {seed}: {:?} in {:?}",
                    report.as_ref().map(|r| r.trace_hash),
                    started.elapsed()
                );
            }
            summary.seeds.push(report?);
        }
        Ok(summary)
    }

    /// Runs one seed.
    pub fn run_seed(&self, seed: u64) -> Result<SeedReport, SimFailure> {
        let mut teeth = self.teeth.clone();
        if let Ok(names) = std::env::var("RAFTKIT_SIM_RUNTIME_BUG") {
            teeth.extend(names.split(',').filter_map(Tooth::from_name));
        }
        let _armed = Armed::new(&teeth);
        let rt = runtime().map_err(|e| SimFailure {
            seed,
            property: "setup",
            detail: format!("cannot build the runtime: {e}"),
            trace_hash: 0,
        })?;
        let print = std::env::var_os("RAFTKIT_SIM_TRACE").is_some();
        let config = Config {
            nodes: self.nodes,
            clients: self.clients,
            ops: self.ops,
            faults: self.faults,
            snapshot_every: self.snapshot_every,
            workload: self.workload.clone(),
            groups: self.groups,
            replicas: self.replicas.unwrap_or(self.nodes).min(self.nodes),
        };
        rt.block_on(run_one::<S>(seed, config, print))
    }
}

/// Whether the peers of `seed` opt in to applying a lone small batch on
/// the node task (`PeerBuilder::apply_small_batches_inline`): half of the
/// seeds, drawn apart from the run's other draws, so that both the
/// default path (every batch on the apply worker) and the inline one are
/// covered. `RAFTKIT_SIM_APPLY_INLINE=0|1` sets it for every seed.
fn apply_inline(seed: u64) -> bool {
    match env_u64("RAFTKIT_SIM_APPLY_INLINE") {
        Some(v) => v != 0,
        None => StdRng::seed_from_u64(seed ^ 0x1a11_e0b5_a7c4_e5d1).random_bool(0.5),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

struct Config<S: StateMachine> {
    nodes: usize,
    clients: usize,
    ops: usize,
    faults: Faults,
    snapshot_every: u64,
    workload: Option<Workload<S>>,
    groups: Option<usize>,
    replicas: usize,
}

/// A node's tasks, by the group they serve (`None`: the node's own).
type Tasks = Arc<Mutex<Vec<(Option<usize>, tokio::task::AbortHandle)>>>;
/// Each replica's inbox, by node and group.
type Inboxes =
    Arc<Mutex<BTreeMap<(NodeId, usize), tokio::sync::mpsc::Sender<crate::core::Message>>>>;

struct Node<S: StateMachine> {
    addr: String,
    id: NodeId,
    disk: SimDisk,
    /// The process runs (its replicas may still be starting).
    up: bool,
    /// Its replica of each group it hosts.
    peers: BTreeMap<usize, Peer<Probe<S>>>,
    /// The node's shared journal (with [`Simulation::groups`]).
    journal: Option<Journal>,
    /// The node's initial groups were created in its journal.
    created: bool,
    /// A restart is under way (restarts are started from several places).
    starting: bool,
    /// The node's tasks, by the group they serve (`None`: the node's own).
    tasks: Tasks,
}

/// One group's record of a run.
pub(crate) struct Group {
    /// Its clients' calls.
    pub(crate) history: Mutex<History>,
    /// What its replicas applied.
    pub(crate) applies: Arc<Mutex<Applies>>,
    /// Its messages (each group has a network of its own; the nemesis'
    /// faults hit all of them alike).
    pub(crate) net: MemoryNetwork,
    /// Its stale reads, judged apart (`history::stale_reads`).
    pub(crate) stale: Mutex<Vec<StaleRead>>,
    /// A replica move of this group is under way.
    pub(crate) moving: std::sync::atomic::AtomicBool,
}

/// Where a group's replica lives on a node, as an operator would record
/// it: its incarnation (a replica moved away and back is a new one, with a
/// snapshot directory of its own; counted once the node's journal took
/// its new log, so that the directory always belongs to the log the
/// journal holds) and whether it was moved away.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Placement {
    pub(crate) incarnation: u64,
    pub(crate) removed: bool,
    /// Moved away, but the node's journal refused the replica's tombstone
    /// (it had failed): the old log is still in the journal, as
    /// `MultiNode::pending_retirements` reports (see `moves.rs`, "A failed
    /// drop"). Cleared once a restart of the node wrote the tombstone.
    pub(crate) retiring: bool,
    /// The last removal: the committed configuration without the replica
    /// and the term its leader was in (the tombstone's fence, with the
    /// replica's own last term).
    pub(crate) removal: (crate::core::Index, crate::core::Term),
}

/// The shared state of one run.
pub(crate) struct World<S: StateMachine> {
    seed: u64,
    start: tokio::time::Instant,
    trace: Arc<Mutex<Trace>>,
    pub(crate) groups: Vec<Group>,
    /// Runs the groups on journals (`Simulation::groups`).
    journal_mode: bool,
    /// The nodes each group started on.
    initial: Vec<Vec<usize>>,
    pub(crate) placement: Mutex<BTreeMap<(usize, usize), Placement>>,
    nodes: Mutex<Vec<Node<S>>>,
    skews: Arc<Mutex<BTreeMap<NodeId, i64>>>,
    session_rng: Arc<Mutex<StdRng>>,
    snapshot_every: u64,
    failure: Mutex<Option<(&'static str, String)>>,
    crashes: Mutex<u64>,
    /// The peers' session time-to-live.
    session_ttl: Duration,
    /// Whether the peers apply a lone small batch on the node task
    /// (`PeerBuilder::apply_small_batches_inline`): half of the seeds.
    apply_inline: bool,
    sessions: Mutex<SessionCounts>,
    pub(crate) membership: Mutex<MembershipCounts>,
    /// The inboxes of the replicas, for the group mix-up tooth.
    inboxes: Inboxes,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: StateMachine + Default> World<S> {
    pub(crate) fn now(&self) -> Duration {
        tokio::time::Instant::now() - self.start
    }

    /// The peers' session time-to-live.
    pub(crate) fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// The highest term a running replica of `group` is in.
    pub(crate) fn max_term(&self, group: usize) -> u64 {
        lock(&self.nodes)
            .iter()
            .filter_map(|n| n.peers.get(&group).map(|p| p.status().term))
            .max()
            .unwrap_or(0)
    }

    /// A client was answered `SessionExpired`.
    pub(crate) fn session_expired_error(&self) {
        lock(&self.sessions).expired_errors += 1;
    }

    /// A write's outcome became unknown because its session expired.
    pub(crate) fn unknown_by_expiry(&self) {
        lock(&self.sessions).unknown_by_expiry += 1;
    }

    /// A client retried a write under a new session.
    pub(crate) fn reopened(&self) {
        lock(&self.sessions).reopened += 1;
    }

    /// Records node `i`'s expiry count (before it crashes, and at the end).
    fn note_expiries(&self, i: usize) {
        let n = lock(&self.nodes)[i]
            .peers
            .values()
            .map(|p| p.status().session_expiries)
            .max()
            .unwrap_or(0);
        let mut c = lock(&self.sessions);
        c.expired = c.expired.max(n);
    }

    pub(crate) fn event(&self, what: impl std::fmt::Display) {
        let at = self.now();
        lock(&self.trace).event(at, what);
    }

    pub(crate) fn fail(&self, property: &'static str, detail: String) {
        self.event(format_args!("FAIL {property}: {detail}"));
        lock(&self.failure).get_or_insert((property, detail));
    }

    pub(crate) fn invoke(&self, group: usize, client: usize, kind: Kind, bytes: Vec<u8>) -> usize {
        let ms = self.now().as_millis() as u64;
        self.event(format_args!(
            "client {client} invokes {kind:?} {bytes:02x?} on group {group}"
        ));
        lock(&self.groups[group].history).invoke(client, kind, bytes, ms)
    }

    pub(crate) fn complete(&self, group: usize, client: usize, call: usize, outcome: Outcome) {
        let ms = self.now().as_millis() as u64;
        self.event(format_args!("client {client} completes {outcome:02x?}"));
        lock(&self.groups[group].history).complete(call, outcome, ms);
    }

    /// Every group's network.
    fn nets(&self) -> impl Iterator<Item = &MemoryNetwork> {
        self.groups.iter().map(|g| &g.net)
    }

    /// The replicas of `group` on running nodes, with their node's index.
    pub(crate) fn replicas(&self, group: usize) -> Vec<(usize, Peer<Probe<S>>)> {
        lock(&self.nodes)
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up)
            .filter_map(|(i, n)| n.peers.get(&group).map(|p| (i, p.clone())))
            .collect()
    }

    /// The replica of `group` a client should call: the leader some
    /// replica names, else the `cursor`-th replica.
    pub(crate) fn target(&self, group: usize, cursor: usize) -> Option<Peer<Probe<S>>> {
        let up: Vec<Peer<Probe<S>>> = self.replicas(group).into_iter().map(|(_, p)| p).collect();
        if up.is_empty() {
            return None;
        }
        // Leader routing, as the network client does: ask a member.
        let asked = &up[cursor % up.len()];
        if let Some(leader) = asked.status().leader
            && let Some(p) = up.iter().find(|p| p.id() == leader)
            && cursor % 3 != 2
        {
            return Some(p.clone());
        }
        Some(asked.clone())
    }

    /// The address and id of node `i`.
    pub(crate) fn node(&self, i: usize) -> (String, NodeId) {
        let nodes = lock(&self.nodes);
        (nodes[i].addr.clone(), nodes[i].id)
    }

    /// How many nodes run.
    pub(crate) fn node_count(&self) -> usize {
        lock(&self.nodes).len()
    }

    /// Whether node `i` runs.
    pub(crate) fn is_up(&self, i: usize) -> bool {
        lock(&self.nodes)[i].up
    }

    /// Whether node `i` hosts a replica of `group` (running or not).
    pub(crate) fn hosts(&self, i: usize, group: usize) -> bool {
        let placed = lock(&self.placement).get(&(i, group)).copied();
        match placed {
            Some(p) => !p.removed,
            None => self.initial[group].contains(&i),
        }
    }

    /// Whether a replica of `group` was moved away from node `i` (its
    /// tombstone: see `moves.rs` on why a node never takes that group
    /// back).
    pub(crate) fn left(&self, i: usize, group: usize) -> bool {
        lock(&self.placement)
            .get(&(i, group))
            .is_some_and(|p| p.removed)
    }

    /// Whether node `i` moved its replica of `group` away but could not
    /// write its tombstone yet (see `moves.rs`, "A failed drop").
    pub(crate) fn retiring(&self, i: usize, group: usize) -> bool {
        lock(&self.placement)
            .get(&(i, group))
            .is_some_and(|p| p.retiring)
    }

    /// Whether the groups run on journals (and replicas can move).
    pub(crate) fn journal_mode(&self) -> bool {
        self.journal_mode
    }

    /// Starts the workers of node `i` as tasks of the simulation, slowed by
    /// seeded delays, reporting applies of `group` to its probe.
    fn threads(&self, i: usize, group: Option<usize>) -> Threads {
        let (id, tasks) = {
            let nodes = lock(&self.nodes);
            (nodes[i].id, nodes[i].tasks.clone())
        };
        let ctx = group.map(|g| ProbeCtx {
            node: id,
            applies: self.groups[g].applies.clone(),
        });
        let slow_seed = self.seed
            ^ id.rotate_left(17)
            ^ lock(&self.crashes).wrapping_mul(31)
            ^ group.map_or(0, |g| (g as u64 + 1).wrapping_mul(0x9e37_79b9));
        Threads::Custom(Arc::new(move |name: &str, body| {
            let body = Slow {
                body,
                delay: None,
                rng: StdRng::seed_from_u64(slow_seed ^ fnv(name.as_bytes())),
            };
            let h = match &ctx {
                Some(ctx) => tokio::spawn(PROBE.scope(ctx.clone(), body)),
                None => tokio::spawn(body),
            };
            lock(&tasks).push((group, h.abort_handle()));
            Ok(Worker::Task(h))
        }))
    }

    async fn start_node(self: &Arc<Self>, i: usize) -> Result<(), Error> {
        if !self.journal_mode {
            let peer = self.start_replica(i, 0, None).await?;
            let mut nodes = lock(&self.nodes);
            nodes[i].peers.insert(0, peer);
            nodes[i].up = true;
            drop(nodes);
            self.event(format_args!("node {i} started"));
            return Ok(());
        }
        let (addr, disk) = {
            let nodes = lock(&self.nodes);
            (nodes[i].addr.clone(), nodes[i].disk.clone())
        };
        let mut opts = JournalOptions::default();
        opts.wal.segment_size = 4096;
        opts.checkpoint_bytes = 32 << 10;
        let journal = Journal::open_on(
            Arc::new(disk),
            std::path::Path::new(&format!("/sim/{addr}/journal-wal")),
            opts,
            &self.threads(i, None),
        )
        .map_err(|e| Error::Storage(e.to_string()))?;
        {
            let mut nodes = lock(&self.nodes);
            nodes[i].journal = Some(journal.clone());
            nodes[i].up = true;
        }
        if !lock(&self.nodes)[i].created {
            // A start that failed half-way created some of them already
            // (the journal never takes a group it holds again).
            let held = journal.groups();
            for g in 0..self.groups.len() {
                if self.initial[g].contains(&i) && !held.contains(&(g as u64)) {
                    journal
                        .create_group(g as u64)
                        .map_err(|e| Error::Storage(e.to_string()))?;
                }
            }
            lock(&self.nodes)[i].created = true;
        }
        for g in journal.groups() {
            let Ok(g) = usize::try_from(g) else { continue };
            if g >= self.groups.len() {
                continue;
            }
            if !self.hosts(i, g) {
                // Moved away, and the node crashed before it dropped the
                // replica: the operator drops it now.
                journal
                    .remove_group(g as u64, self.fence_of(i, g, &journal))
                    .map_err(|e| Error::Storage(e.to_string()))?;
                if let Some(p) = lock(&self.placement).get_mut(&(i, g)) {
                    p.retiring = false;
                }
                self.event(format_args!("node {i} wrote the tombstone of group {g}"));
                continue;
            }
            let peer = self.start_replica(i, g, Some(&journal)).await?;
            let mut nodes = lock(&self.nodes);
            if !nodes[i].up {
                peer.abort();
                return Err(Error::Unavailable(format!(
                    "node {i} crashed while starting"
                )));
            }
            nodes[i].peers.insert(g, peer);
        }
        // A drop whose tombstone was refused (or that raced a crash) and
        // whose group the journal no longer holds: the removal did land.
        let held = journal.groups();
        for ((n, g), p) in lock(&self.placement).iter_mut() {
            if *n == i && p.retiring && !held.contains(&(*g as u64)) {
                p.retiring = false;
            }
        }
        self.event(format_args!("node {i} started"));
        Ok(())
    }

    /// Starts node `i`'s replica of `group`: on the node's journal, or (one
    /// group without a journal) as an ordinary peer with its own log. A
    /// replica of a group's first incarnation on one of its first nodes
    /// founds the group; any other starts empty and waits to be added.
    async fn start_replica(
        self: &Arc<Self>,
        i: usize,
        g: usize,
        journal: Option<&Journal>,
    ) -> Result<Peer<Probe<S>>, Error> {
        let (addr, id, disk) = {
            let nodes = lock(&self.nodes);
            let n = &nodes[i];
            (n.addr.clone(), n.id, n.disk.clone())
        };
        let threads = self.threads(i, Some(g));
        let rng = self.session_rng.clone();
        let session_ids = Arc::new(move || Ok(SessionId(lock(&rng).random())));
        let (skews, start) = (self.skews.clone(), self.start);
        let clock = move || {
            let virtual_ms = (tokio::time::Instant::now() - start).as_millis() as i64;
            let skew = lock(&skews).get(&id).copied().unwrap_or(0);
            (1_800_000_000_000i64 + virtual_ms + skew).max(0) as u64
        };
        let net = self.groups[g].net.clone();
        let inboxes = self.inboxes.clone();
        let mix = self.journal_mode && self.groups.len() > 1 && on(Tooth::GroupTagMixUp);
        let group_count = self.groups.len();
        let mix_seed = self.seed ^ id ^ g as u64;
        let mut builder = PeerBuilder::<Probe<S>>::new()
            .listen(addr.clone())
            .tick(TICK)
            .snapshot_every(self.snapshot_every)
            .threads(threads)
            .seed(self.seed ^ id ^ (g as u64).wrapping_mul(0x5851_f42d))
            .session_ids(session_ids)
            .session_ttl(self.session_ttl)
            .wall_clock(clock);
        builder = match journal {
            None => builder
                .data_dir(format!("/sim/{addr}"))
                .file_system(Arc::new(disk))
                .bootstrap_members(self.addrs())
                .wal_segment_bytes(4096)
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox))),
            Some(journal) => {
                let placed = lock(&self.placement)
                    .get(&(i, g))
                    .copied()
                    .unwrap_or_default();
                let snap_dir = format!("/sim/{addr}/groups/{g}.{}/snapshots", placed.incarnation);
                let snapshots =
                    FileSnapshotStore::open_in(Arc::new(disk), std::path::Path::new(&snap_dir), 1)
                        .map_err(|e| Error::Storage(e.to_string()))?;
                let sink_journal = journal.clone();
                let storage = GroupStorage {
                    log: Box::new(journal.log(g as u64)),
                    snapshots: Box::new(snapshots),
                    sink: Box::new(move |snaps| Box::new(sink_journal.sink(g as u64, snaps))),
                    places: (
                        format!("/sim/{addr}/journal-wal").into(),
                        snap_dir.clone().into(),
                    ),
                };
                // A replica of a group the node left before starts behind
                // its tombstone's fence (the tooth: without it).
                let fence = if on(Tooth::RehostRemovedReplica) {
                    None
                } else {
                    journal.fence(g as u64)
                };
                let mut b = builder
                    .name(default_name(S::NAME, &addr))
                    .advertise(addr.clone())
                    .in_memory()
                    .group_storage(storage)
                    .membership_fence(fence)
                    // As a `MultiNode` starts its replicas.
                    .status_interval(TICK)
                    .gather(true)
                    .transport(move |id, inbox| {
                        lock(&inboxes).insert((id, g), inbox.clone());
                        if !mix {
                            return Arc::new(net.endpoint(id, inbox));
                        }
                        // The tooth: a demultiplexer that now and then
                        // hands a message to the wrong group's replica.
                        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
                        let inboxes = inboxes.clone();
                        tokio::spawn(async move {
                            let mut rng = StdRng::seed_from_u64(mix_seed);
                            while let Some(m) = rx.recv().await {
                                let to = if rng.random_ratio(1, 8) {
                                    (g + 1) % group_count
                                } else {
                                    g
                                };
                                let inbox = lock(&inboxes).get(&(id, to)).cloned();
                                if let Some(inbox) = inbox {
                                    let _ = inbox.try_send(m);
                                }
                            }
                        });
                        Arc::new(net.endpoint(id, tx))
                    });
                if placed.incarnation == 0 && self.initial[g].contains(&i) {
                    let members: Vec<String> =
                        self.initial[g].iter().map(|&j| self.node(j).0).collect();
                    b = b.bootstrap_members(members);
                }
                b
            }
        };
        // The probe made by the start reports to this replica wherever it
        // applies (see `ProbeCtx`).
        let report = ProbeCtx {
            node: id,
            applies: self.groups[g].applies.clone(),
        };
        PROBE
            .scope(
                report,
                builder
                    .apply_small_batches_inline(self.apply_inline)
                    .start(),
            )
            .await
    }

    /// Stops node `i`'s replica of `group` (moved away): the replica's
    /// tasks end and its log leaves the node's journal.
    pub(crate) async fn drop_replica(&self, i: usize, g: usize) {
        let (peer, tasks, journal) = {
            let mut nodes = lock(&self.nodes);
            let n = &mut nodes[i];
            let mut tasks = lock(&n.tasks);
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *tasks)
                .into_iter()
                .partition(|(t, _)| *t == Some(g));
            *tasks = rest;
            drop(tasks);
            (n.peers.remove(&g), mine, n.journal.clone())
        };
        if let Some(p) = peer {
            let _ = tokio::time::timeout(Duration::from_secs(2), p.shutdown()).await;
            p.abort();
        }
        for (_, t) in tasks {
            t.abort();
        }
        let dropped = match journal {
            Some(j) => j.remove_group(g as u64, self.fence_of(i, g, &j)),
            None => Err(crate::storage::StorageError::Closed),
        };
        if let Err(e) = dropped {
            // The old log stays in the journal: the group is retiring on
            // the node until its restart writes the tombstone (its
            // placement says so; see `moves.rs`, "A failed drop").
            if let Some(p) = lock(&self.placement).get_mut(&(i, g)) {
                p.retiring = true;
            }
            self.event(format_args!(
                "node {i} could not drop group {g} ({e}): retiring until a restart"
            ));
            return;
        }
        self.event(format_args!("node {i} dropped its replica of group {g}"));
    }

    /// The fence of the tombstone of node `i`'s replica of `g`, dropped
    /// now: the removal the move recorded, with the replica's latest
    /// durable term (it never voted in a later one).
    fn fence_of(
        &self,
        i: usize,
        g: usize,
        journal: &Journal,
    ) -> (crate::core::Index, crate::core::Term) {
        use crate::storage::LogStore;
        let removal = lock(&self.placement)
            .get(&(i, g))
            .map(|p| p.removal)
            .unwrap_or_default();
        let term = journal.log(g as u64).hard_state().term;
        (removal.0, removal.1.max(term))
    }

    /// Starts an empty replica of `group` on running node `i` (the first
    /// step of a move). Fails if the node is down.
    pub(crate) async fn add_replica(self: &Arc<Self>, i: usize, g: usize) -> Result<(), Error> {
        let journal = {
            let nodes = lock(&self.nodes);
            if !nodes[i].up || nodes[i].starting || nodes[i].peers.contains_key(&g) {
                return Err(Error::Unavailable(format!(
                    "node {i} cannot take group {g}"
                )));
            }
            nodes[i].journal.clone()
        };
        let Some(journal) = journal else {
            return Err(Error::Unavailable(format!("node {i} has no journal")));
        };
        if self.retiring(i, g) {
            return Err(Error::Unavailable(format!(
                "node {i} is still retiring its old replica of group {g}"
            )));
        }
        // The new replica's log first: a journal that refuses it (failed,
        // or still holding a log of the group) leaves the placement as it
        // was.
        journal
            .create_group(g as u64)
            .map_err(|e| Error::Storage(e.to_string()))?;
        {
            let mut placement = lock(&self.placement);
            let p = placement.entry((i, g)).or_default();
            if p.removed || self.initial[g].contains(&i) {
                p.incarnation += 1;
            }
            p.removed = false;
        }
        let peer = self.start_replica(i, g, Some(&journal)).await?;
        let mut nodes = lock(&self.nodes);
        if nodes[i].up {
            nodes[i].peers.insert(g, peer);
        } else {
            peer.abort();
        }
        drop(nodes);
        self.event(format_args!("node {i} hosts a new replica of group {g}"));
        Ok(())
    }

    fn addrs(&self) -> Vec<String> {
        lock(&self.nodes).iter().map(|n| n.addr.clone()).collect()
    }

    /// Kills node `i`'s process: its tasks stop where they are and its
    /// disk loses what was not synced.
    fn crash(&self, i: usize, tear: bool) {
        self.note_expiries(i);
        let (peers, tasks, disk) = {
            let mut nodes = lock(&self.nodes);
            let n = &mut nodes[i];
            n.up = false;
            n.journal = None;
            (
                std::mem::take(&mut n.peers),
                std::mem::take(&mut *lock(&n.tasks)),
                n.disk.clone(),
            )
        };
        for p in peers.values() {
            p.abort();
        }
        for (_, t) in tasks {
            t.abort();
        }
        let torn = disk.crash(tear);
        *lock(&self.crashes) += 1;
        self.event(format_args!("node {i} crashed ({torn} files lost writes)"));
    }

    async fn restart(self: &Arc<Self>, i: usize) {
        {
            let mut nodes = lock(&self.nodes);
            if nodes[i].up || nodes[i].starting {
                return;
            }
            nodes[i].starting = true;
        }
        self.restart_now(i).await;
        lock(&self.nodes)[i].starting = false;
    }

    async fn restart_now(self: &Arc<Self>, i: usize) {
        // Let the aborted tasks unwind first.
        tokio::task::yield_now().await;
        loop {
            let disk = lock(&self.nodes)[i].disk.clone();
            let faulty = disk.has_faults();
            match self.start_node(i).await {
                Ok(()) => return,
                // An injected fault may fail a start: an operator retries
                // once the disk recovers (its faults last a while).
                Err(e) if faulty => {
                    self.event(format_args!("node {i} restart failed ({e}); retrying"));
                    self.crash(i, false);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    self.fail(
                        "restart from the simulated disk",
                        format!("node {i} cannot restart: {e}"),
                    );
                    return;
                }
            }
        }
    }

    fn up(&self) -> Vec<usize> {
        lock(&self.nodes)
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up && !n.starting)
            .map(|(i, _)| i)
            .collect()
    }

    /// The node whose replica of `group` leads, and that replica.
    pub(crate) fn leader(&self, group: usize) -> Option<(usize, Peer<Probe<S>>)> {
        let nodes = lock(&self.nodes);
        nodes.iter().enumerate().find_map(|(i, n)| {
            n.peers
                .get(&group)
                .filter(|p| n.up && p.status().leader == Some(n.id))
                .map(|p| (i, p.clone()))
        })
    }

    /// Whether `group` has a leader whose configuration is not joint and
    /// whose members all run and applied everything it committed.
    fn converged(&self, group: usize) -> bool {
        let Some((_, leader)) = self.leader(group) else {
            return false;
        };
        let ls = leader.status();
        if ls.joint || ls.commit != ls.applied {
            return false;
        }
        let replicas = self.replicas(group);
        ls.members.iter().all(|m| {
            replicas.iter().any(|(_, p)| {
                let s = p.status();
                p.id() == m.id && s.applied == ls.applied && s.commit == s.applied
            })
        })
    }

    /// Node `i` stopped serving (storage failed or halted), or could not
    /// retire a replica (its journal failed; it may host no replica left
    /// to say so): an operator restarts it.
    fn is_stuck(&self, i: usize) -> bool {
        let retiring = lock(&self.placement)
            .iter()
            .any(|(&(n, _), p)| n == i && p.retiring);
        let nodes = lock(&self.nodes);
        let node = &nodes[i];
        (retiring && node.up && !node.starting)
            || node.peers.values().any(|p| {
                let s = p.status();
                s.fatal.is_some() || s.halted.is_some()
            })
    }
}

async fn run_one<S: StateMachine + Default>(
    seed: u64,
    config: Config<S>,
    print: bool,
) -> Result<SeedReport, SimFailure> {
    let mut rng = StdRng::seed_from_u64(seed);
    let group_count = config.groups.unwrap_or(1);
    let trace = Arc::new(Mutex::new(Trace::new(print)));
    let storm: Arc<Mutex<(Duration, u64, bool)>> = Arc::default();
    let start = tokio::time::Instant::now();
    // `RAFTKIT_SIM_TRACE=2`: messages with their bodies (shortened).
    let detail = std::env::var("RAFTKIT_SIM_TRACE").is_ok_and(|v| v.trim() == "2");
    let mut groups = Vec::new();
    for g in 0..group_count {
        let net = MemoryNetwork::new(rng.random());
        let trace = trace.clone();
        let storm = storm.clone();
        let tag = if group_count > 1 {
            format!("g{g} ")
        } else {
            String::new()
        };
        net.observe(Arc::new(move |from, m, delivered| {
            let at = tokio::time::Instant::now() - start;
            let verdict = if delivered { "->" } else { "-x" };
            // A livelock: messages without virtual time passing. Reported,
            // and the network stops so that the run can end.
            let mut st = lock(&storm);
            if st.0 != at {
                *st = (at, 0, st.2);
            }
            st.1 += 1;
            if st.1 > STORM {
                st.2 = true;
            }
            if st.2 {
                return false;
            }
            drop(st);
            lock(&trace).event(
                at,
                format_args!(
                    "{tag}{from:#x} {verdict} {:#x} {} t{}{}",
                    m.to,
                    m.body.kind(),
                    m.term,
                    if detail {
                        let d = format!(" {:?}", m.body);
                        d.chars().take(300).collect::<String>()
                    } else {
                        String::new()
                    }
                ),
            );
            true
        }));
        groups.push(Group {
            history: Mutex::default(),
            applies: Arc::default(),
            net,
            stale: Mutex::default(),
            moving: Default::default(),
        });
    }
    // Group g starts on `replicas` nodes from node g on (rotating).
    let initial: Vec<Vec<usize>> = (0..group_count)
        .map(|g| {
            if config.groups.is_none() {
                (0..config.nodes).collect()
            } else {
                (0..config.replicas)
                    .map(|k| (g + k) % config.nodes)
                    .collect()
            }
        })
        .collect();
    let nodes = (0..config.nodes)
        .map(|i| {
            let addr = format!("node-{i}");
            Node {
                id: node_id(&default_name(S::NAME, &addr)),
                addr,
                disk: SimDisk::new(rng.random()),
                up: false,
                peers: BTreeMap::new(),
                journal: None,
                created: false,
                starting: false,
                tasks: Arc::default(),
            }
        })
        .collect();
    // Drawn apart from the run's other draws.
    let mut ttl_rng = StdRng::seed_from_u64(seed ^ 0x5e55_1075_e551_0775);
    let short_ttl = ttl_rng
        .random_ratio(1, SHORT_TTL_ONE_IN as u32)
        .then(|| Duration::from_millis(ttl_rng.random_range(SHORT_TTL_MS)));
    let apply_inline = apply_inline(seed);
    let world = Arc::new(World::<S> {
        seed,
        start,
        trace,
        groups,
        journal_mode: config.groups.is_some(),
        initial,
        placement: Mutex::default(),
        nodes: Mutex::new(nodes),
        skews: Arc::default(),
        session_rng: Arc::new(Mutex::new(StdRng::seed_from_u64(rng.random()))),
        snapshot_every: config.snapshot_every,
        failure: Mutex::new(None),
        crashes: Mutex::new(0),
        session_ttl: short_ttl.unwrap_or(Duration::from_millis(
            crate::runtime::session::SESSION_TTL_MS,
        )),
        apply_inline,
        sessions: Mutex::default(),
        membership: Mutex::default(),
        inboxes: Arc::default(),
    });
    if let Some(ttl) = short_ttl {
        world.event(format_args!("session time-to-live {ttl:?}"));
    }
    if apply_inline {
        world.event(format_args!("small batches applied on the node task"));
    }
    let failure = |world: &World<S>, property: &'static str, detail: String| SimFailure {
        seed,
        property,
        detail,
        trace_hash: lock(&world.trace).digest().0,
    };
    for i in 0..config.nodes {
        if let Err(e) = world.start_node(i).await {
            return Err(failure(&world, "setup", format!("node {i}: {e}")));
        }
    }

    // The clients: each call goes to a group drawn at random, through the
    // client's own session with that group.
    let mut clients = Vec::new();
    if let Some(workload) = &config.workload {
        for c in 0..config.clients {
            let (world, workload) = (world.clone(), workload.clone());
            let client_seed: u64 = rng.random();
            let ops = config.ops;
            clients.push(tokio::spawn(async move {
                let per_group: Vec<SimClient<S>> = (0..group_count)
                    .map(|g| SimClient::new(world.clone(), g, c))
                    .collect();
                let mut rng = StdRng::seed_from_u64(client_seed);
                for _ in 0..ops {
                    // Think time: spreads the calls over the nemesis' faults.
                    let pause = rng.random_range(0..400);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    // A long absence (a client gone longer than its
                    // session's time-to-live): its next write finds the
                    // session expired.
                    if let Some(ttl) = short_ttl
                        && rng.random_ratio(1, 8)
                    {
                        let away = ttl + Duration::from_millis(rng.random_range(500..3_000));
                        world.event(format_args!("client {c} away for {away:?}"));
                        tokio::time::sleep(away).await;
                    }
                    let group = if group_count > 1 {
                        rng.random_range(0..group_count)
                    } else {
                        0
                    };
                    let call_rng = StdRng::seed_from_u64(rng.random());
                    workload(call_rng, per_group[group].clone()).await;
                }
            }));
        }
    }

    // The nemesis, until every client is done.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nemesis = {
        let (world, done) = (world.clone(), done.clone());
        let nemesis_seed: u64 = rng.random();
        let faults = config.faults;
        tokio::spawn(async move { nemesis(world, done, nemesis_seed, faults).await })
    };
    for c in clients {
        let _ = c.await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = nemesis.await;
    // Moves under way finish (or give up) before the calm.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while world
        .groups
        .iter()
        .any(|g| g.moving.load(std::sync::atomic::Ordering::SeqCst))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Calm: heal everything and let the cluster converge.
    world.event("calm");
    for net in world.nets() {
        net.heal();
        net.set_drop_rate(0.0);
        net.set_duplicate_rate(0.0);
        net.set_delay(0..0);
    }
    for i in 0..config.nodes {
        lock(&world.nodes)[i].disk.set_faults(DiskFaults::default());
        if world.is_stuck(i) {
            world.crash(i, false);
        }
        world.restart(i).await;
    }
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let converged = (0..group_count).all(|g| world.converged(g));
        if converged || tokio::time::Instant::now() > deadline {
            break;
        }
    }

    let report = |world: &World<S>, undecided| {
        let (trace_hash, events) = lock(&world.trace).digest();
        let (mut answered, mut total) = (0, 0);
        for g in &world.groups {
            let history = lock(&g.history);
            answered += history
                .calls()
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Ok(_)))
                .count();
            total += history.calls().len();
        }
        SeedReport {
            seed,
            trace_hash,
            events,
            calls: (answered, total - answered),
            crashes: *lock(&world.crashes),
            disk_faults: lock(&world.nodes)
                .iter()
                .map(|n| n.disk.faults_injected())
                .sum(),
            undecided,
            session_ttl: world.session_ttl,
            apply_inline: world.apply_inline,
            inline_applies: world.groups.iter().map(|g| lock(&g.applies).inline).sum(),
            sessions: *lock(&world.sessions),
            virtual_time: world.now(),
            membership: *lock(&world.membership),
            stale_reads: world.groups.iter().map(|g| lock(&g.stale).len()).sum(),
        }
    };

    // Stop the peers (their tasks would outlive the runtime otherwise).
    for i in 0..config.nodes {
        world.note_expiries(i);
        let (peers, tasks) = {
            let mut nodes = lock(&world.nodes);
            let n = &mut nodes[i];
            n.journal = None;
            (
                std::mem::take(&mut n.peers),
                std::mem::take(&mut *lock(&n.tasks)),
            )
        };
        for p in peers.values() {
            p.abort();
        }
        for (_, t) in tasks {
            t.abort();
        }
    }

    // The verdicts.
    if lock(&storm).2 {
        return Err(failure(
            &world,
            "progress",
            format!("a livelock: more than {STORM} messages without virtual time passing"),
        ));
    }
    if let Some((property, detail)) = lock(&world.failure).clone() {
        return Err(failure(&world, property, detail));
    }
    let mut undecided = false;
    for (g, group) in world.groups.iter().enumerate() {
        let of = |detail: String| {
            if group_count > 1 {
                format!("group {g}: {detail}")
            } else {
                detail
            }
        };
        if let Some(d) = lock(&group.applies).divergence.clone() {
            return Err(failure(&world, "diverging replicas", of(d)));
        }
        let calls = lock(&group.history).calls().to_vec();
        if let Err(e) = history::exactly_once(&calls, &lock(&group.applies)) {
            return Err(failure(&world, "exactly-once", of(e)));
        }
        match history::linearizable::<S>(&calls, CHECK_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Undecided => undecided = true,
            Verdict::Violation(e) => return Err(failure(&world, "linearizability", of(e))),
        }
        let stale = lock(&group.stale).clone();
        if let Err(e) = history::stale_reads::<S>(&stale, &lock(&group.applies)) {
            return Err(failure(&world, "stale reads", of(e)));
        }
    }
    Ok(report(&world, undecided))
}

/// Throws faults at the cluster until `done`.
async fn nemesis<S: StateMachine + Default>(
    world: Arc<World<S>>,
    done: Arc<std::sync::atomic::AtomicBool>,
    seed: u64,
    faults: Faults,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = lock(&world.nodes).len();
    let election = TICK * 20;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        // Nodes whose storage failed are restarted (an operator would).
        for i in 0..n {
            if world.is_stuck(i) && rng.random_bool(0.5) {
                world.crash(i, rng.random_bool(0.5));
                world.restart(i).await;
            }
        }
        let ids: Vec<NodeId> = lock(&world.nodes).iter().map(|n| n.id).collect();
        match rng.random_range(0..15u32) {
            0 if faults.network && n > 1 => {
                let mut side: Vec<NodeId> = ids.clone();
                let k = rng.random_range(1..n);
                for j in (1..side.len()).rev() {
                    side.swap(j, rng.random_range(0..=j));
                }
                let (a, b) = side.split_at(k);
                world.nets().for_each(|net| net.partition(a, b));
                world.event(format_args!("partition {a:x?} | {b:x?}"));
            }
            1 if faults.network && n > 1 => {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                if a != b {
                    world.nets().for_each(|net| net.cut(ids[a], ids[b]));
                    world.event(format_args!("one-way cut {a} -> {b}"));
                }
            }
            2 if faults.network => {
                let g = rng.random_range(0..world.groups.len());
                if let Some((l, _)) = world.leader(g) {
                    world.nets().for_each(|net| net.isolate(ids[l]));
                    world.event(format_args!("isolate leader {l}"));
                }
            }
            3 | 4 => {
                for net in world.nets() {
                    net.heal();
                    net.set_drop_rate(0.0);
                    net.set_duplicate_rate(0.0);
                    net.set_delay(0..0);
                }
                world.event("heal");
            }
            5 if faults.network => {
                let (drop, dup) = (rng.random_range(0.0..0.2), rng.random_range(0.0..0.1));
                let hi = if rng.random_bool(0.3) {
                    election.as_millis() as u64 * 2
                } else {
                    30
                };
                for net in world.nets() {
                    net.set_drop_rate(drop);
                    net.set_duplicate_rate(dup);
                    net.set_delay(1..hi.max(2));
                }
                world.event(format_args!(
                    "lossy net: drop {drop:.2} dup {dup:.2} delay <{hi}ms"
                ));
            }
            6 | 7 if faults.crashes => {
                let up = world.up();
                if up.len() * 2 > n + 1 || (n == 1 && !up.is_empty()) {
                    let i = up[rng.random_range(0..up.len())];
                    world.crash(i, rng.random_bool(0.5));
                    let world = world.clone();
                    let after = Duration::from_millis(rng.random_range(50..2000));
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        world.restart(i).await;
                    });
                }
            }
            8 | 12 if faults.disk => {
                let i = rng.random_range(0..n);
                let only = match rng.random_range(0..3u32) {
                    0 => Some("snapshots".to_string()),
                    1 => Some("wal".to_string()),
                    _ => None,
                };
                let f = DiskFaults {
                    enospc: rng.random_range(0.0..0.05),
                    write_eio: rng.random_range(0.0..0.05),
                    sync_eio: rng.random_range(0.0..0.1),
                    only: only.clone(),
                };
                world.event(format_args!("disk faults on node {i} ({only:?})"));
                let disk = lock(&world.nodes)[i].disk.clone();
                disk.set_faults(f);
                let after = Duration::from_millis(rng.random_range(100..1500));
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    disk.set_faults(DiskFaults::default());
                });
            }
            9 if faults.clock => {
                let g = rng.random_range(0..world.groups.len());
                if let Some((l, _)) = world.leader(g) {
                    // Mostly within ten minutes; now and then two hours,
                    // past any session time-to-live (the default hour
                    // too): the stamp clamp must keep it from expiring
                    // sessions (checked by the clients, see `client.rs`).
                    let jump: i64 = if rng.random_bool(0.3) {
                        rng.random_range(-7_200_000..7_200_000)
                    } else {
                        rng.random_range(-600_000..600_000)
                    };
                    *lock(&world.skews).entry(ids[l]).or_default() += jump;
                    world.event(format_args!("leader {l} clock jumps {jump} ms"));
                }
            }
            13 if faults.membership => {
                let g = rng.random_range(0..world.groups.len());
                super::moves::transfer(&world, g, &mut rng).await;
            }
            14 if faults.membership && world.journal_mode() => {
                let g = rng.random_range(0..world.groups.len());
                super::moves::start_move(&world, g, &mut rng);
            }
            _ => {}
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for Simulation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("nodes", &self.nodes)
            .field("clients", &self.clients)
            .field("ops", &self.ops)
            .field("seeds", &self.seeds)
            .field("teeth", &self.teeth)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// A worker that is slow to run when woken, by a seeded virtual delay: a
/// slow disk (the storage worker's fsyncs), a slow state machine (the apply
/// worker), a descheduled thread. It lets, for example, followers
/// acknowledge an entry before the leader's own write is durable.
struct Slow {
    body: crate::runtime::threads::WorkerBody,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    rng: StdRng,
}

impl Future for Slow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = &mut *self;
        if this.delay.is_none() && this.rng.random_bool(0.3) {
            // Mostly short; now and then longer than a heartbeat interval.
            let ms = if this.rng.random_bool(0.3) {
                this.rng.random_range(40..300)
            } else {
                this.rng.random_range(1..40)
            };
            this.delay = Some(Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        }
        if let Some(d) = &mut this.delay {
            if d.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.delay = None;
        }
        this.body.as_mut().poll(cx)
    }
}
