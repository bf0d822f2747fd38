//! The discrete-event scheduler that runs one simulated cluster.
//!
//! Everything happens at a virtual time (milliseconds) drawn from one seeded
//! RNG, in the order of a priority queue keyed by (time, sequence number):
//! node ticks, message deliveries, fsync completions, client requests and
//! timeouts, leadership transfers, and the nemesis that alternates fault and
//! calm periods. One seed always yields the same run; the trace hash proves
//! it.
//!
//! Each simulated node is what the runtime will be in miniature: it drives a
//! [`Raft`] core at its own tick rate, persists through a simulated [`Disk`]
//! (a log queue whose writes complete in order after a latency, and a
//! snapshot queue for local snapshots that completes independently), sends
//! persisted-only messages after their write completes, applies committed
//! entries to a [`SimKv`], tracks client proposals by (index, term), and
//! serves ReadIndex reads once applied. Some reads are lease reads
//! (thesis §6.4.1) when the target leads and its lease holds; a node serves
//! one only when its tick loop is current (its last tick at most one tick
//! interval ago), as the runtime checks its clock before a lease read: a
//! process resuming from a pause must first catch up on its missed ticks. A paused node takes no step: its
//! ticks, deliveries, completions and requests wait until it resumes.
//!
//! The rest lives in submodules: the nemesis and the network (`nemesis`),
//! storage, crashes and restarts (`storage`), the membership admin
//! (`admin`) and the clients (`clients`).
//!
//! Invariants the world itself checks, besides the [`Oracle`]'s: a node
//! applies, and counts as durable, only entries its own disk holds
//! ("storage agreement"); the core hands storage only writes that fit the
//! log store ("storage contract").

mod admin;
mod clients;
mod nemesis;
mod storage;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::{Disk, Part, PendingWrite, WriteQueue};
use super::kv::{SimKv, SimKvRead, SimKvReadOutput, SimKvWrite};
use super::linearizability::{self, History, Key, KvOutcome};
use super::network::NetworkFaults;
use super::options::{FailureKind, SimFailure, SimOptions, SimReport};
use super::oracle::{Oracle, Violation};
use crate::core::{
    Config, Configuration, Entry, Index, Message, NO_NODE, NodeId, Payload, Raft, Restored, Role,
    Term,
};
use crate::state_machine::{StateMachine, decode};

use admin::Admin;
use clients::{Client, Reply};

/// The nominal tick interval, in tenths of a millisecond; with drift each
/// node has its own.
const TICK_TENTHS: u64 = 100;
/// The cluster may be without a leader this long at the end of a run.
const LEADERLESS_MS: u64 = 500;
/// At most this many missed ticks fire in a burst when a paused process
/// resumes (as a tokio interval does by default).
const TICK_BURST: u64 = 30;
/// The clock drift bound the nodes are configured with: the ratio of the
/// slowest and fastest tick rates `tick_rate` draws (120/85) stays below
/// it.
const SIM_CLOCK_DRIFT_BOUND: f64 = 1.5;

#[derive(Debug)]
enum Event {
    Tick {
        node: NodeId,
        epoch: u64,
    },
    Deliver {
        msg: Message,
        /// Held back by the network (or a partition's backlog).
        late: bool,
    },
    /// The log queue's oldest write completes.
    Persisted {
        node: NodeId,
        epoch: u64,
    },
    /// The snapshot queue's oldest write completes.
    SnapshotSaved {
        node: NodeId,
        epoch: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientSend {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientDeadline {
        client: usize,
        seq: u64,
    },
    ReadAttemptTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    Nemesis {
        fault: bool,
    },
    Restart {
        node: NodeId,
    },
    Crash {
        node: NodeId,
        epoch: u64,
        /// Restart within a few ms (a supervised process).
        quick: bool,
    },
    Heal,
    Admin,
    Transfer,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

struct Node {
    raft: Option<Raft>,
    epoch: u64,
    disk: Disk,
    /// Log writes (one per Ready, and compactions behind saved snapshots).
    writes: WriteQueue,
    /// Local snapshots being saved.
    snap_writes: WriteQueue,
    kv: SimKv,
    /// Client proposals by index: (term, client, op seq).
    proposals: BTreeMap<Index, (Term, usize, u64)>,
    /// ReadIndex requests by context: (client, op seq, key).
    reads: BTreeMap<u64, (usize, u64, Key)>,
    /// Reads whose index is known, waiting for the state machine.
    read_waiting: Vec<(Index, usize, u64, Key)>,
    last_role: (Role, Term),
    /// Shut down for good after its removal from the cluster committed.
    retired: bool,
    /// This node's tick interval, in tenths of a millisecond.
    tick_tenths: u64,
    /// Tenths of a millisecond carried over to the next tick.
    tick_carry: u64,
    /// When it last ticked.
    last_tick: u64,
    /// The process takes no step before this time.
    paused_until: u64,
    /// The snapshot it holds part of, as last seen delivered.
    receiving: Option<(Index, Term)>,
}

impl Node {
    /// A node that has just started from `restored`, with nothing in flight.
    fn fresh(raft: Raft, restored: &Restored, term: Term, tick_tenths: u64) -> Node {
        Node {
            raft: Some(raft),
            epoch: 0,
            disk: Disk::new(restored),
            writes: WriteQueue::default(),
            snap_writes: WriteQueue::default(),
            kv: SimKv::default(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_waiting: Vec::new(),
            last_role: (Role::Follower, term),
            retired: false,
            tick_tenths,
            tick_carry: 0,
            last_tick: 0,
            paused_until: 0,
            receiving: None,
        }
    }

    /// The delay to the next tick (ms), carrying fractions over.
    fn next_tick(&mut self) -> u64 {
        let total = self.tick_carry + self.tick_tenths;
        self.tick_carry = total % 10;
        total / 10
    }

    /// Whether the process is paused at `now`.
    fn paused(&self, now: u64) -> bool {
        now < self.paused_until
    }
}

fn storage_violation(property: &'static str, detail: String) -> FailureKind {
    FailureKind::Safety(Violation { property, detail })
}

/// One simulated cluster run.
pub struct World {
    seed: u64,
    opts: SimOptions,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: BTreeMap<NodeId, Node>,
    /// The nodes of the run that are not retired.
    ids: Vec<NodeId>,
    /// Nodes whose removal committed (retired or kept running).
    removed: Vec<NodeId>,
    /// The initial configuration: quorums are judged by it until a
    /// configuration commits.
    conf: Configuration,
    next_id: NodeId,
    admin: Admin,
    faults: NetworkFaults,
    /// Messages held by a partition, released when it heals.
    backlog: Vec<Message>,
    clients: Vec<Client>,
    history: History,
    oracle: Oracle,
    trace: DefaultHasher,
    next_ctx: u64,
    heal_at: u64,
    end_at: u64,
    healed: bool,
    /// A fault period is under way.
    fault_active: bool,
    /// Disk faults (torn writes aside): stalls and IO errors, this period.
    disk_faulty: bool,
    /// Crashes aimed at the window of a write holding acknowledgements
    /// back, left in this fault period.
    targeted_left: u32,
    /// Crashes aimed at the window of a write granting a vote, left in the
    /// run (until the heal).
    vote_crashes_left: u32,
    kill_new_leaders: bool,
    /// The "Figure 8" nemesis: new leaders are cut off from everyone at
    /// their election or after their first successful replications.
    isolate_new_leaders: bool,
    /// The scripted Figure 8: the step reached (see `on_new_leader`).
    figure8: Option<u32>,
    /// Nodes cut off by that nemesis, oldest first (at most a minority).
    isolated: VecDeque<NodeId>,
    /// Leaders to cut off after this many more successful AppendEntries
    /// answers in their term: node -> (term, answers left).
    isolate_after_acks: BTreeMap<NodeId, (Term, u32)>,
    /// The last transfer started: (target, term it was started in).
    transfer_pending: Option<(NodeId, Term)>,
    write_after_heal: bool,
    /// The last time a node was seen leading after the heal.
    led_after_heal: Option<u64>,
    report: SimReport,
}

type Step = Result<(), FailureKind>;

impl World {
    /// Builds a cluster for `seed`.
    pub fn new(seed: u64, opts: SimOptions) -> Self {
        let ids: Vec<NodeId> = (1..=opts.nodes as NodeId).collect();
        let conf = Configuration::new(ids.iter().copied());
        let restored = Restored::bootstrap(conf.clone());
        let mut world = World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            ids: ids.clone(),
            removed: Vec::new(),
            conf,
            next_id: opts.nodes as NodeId + 1,
            admin: Admin::default(),
            faults: NetworkFaults::default(),
            backlog: Vec::new(),
            clients: Vec::new(),
            history: History::new(),
            oracle: Oracle::default(),
            trace: DefaultHasher::new(),
            next_ctx: 1,
            heal_at: opts.fault_ms,
            end_at: opts.fault_ms + opts.heal_ms,
            healed: false,
            fault_active: false,
            disk_faulty: false,
            targeted_left: 0,
            vote_crashes_left: 0,
            kill_new_leaders: false,
            isolate_new_leaders: false,
            figure8: None,
            isolated: VecDeque::new(),
            isolate_after_acks: BTreeMap::new(),
            transfer_pending: None,
            write_after_heal: false,
            led_after_heal: None,
            report: SimReport {
                seed,
                ..Default::default()
            },
            opts,
        };
        for &id in &ids {
            let raft = world.new_raft(id, restored.clone());
            let tick_tenths = world.tick_rate();
            world
                .nodes
                .insert(id, Node::fresh(raft, &restored, 1, tick_tenths));
            let offset = world.rng.random_range(0..tick_tenths / 10);
            world.schedule(offset, Event::Tick { node: id, epoch: 0 });
        }
        if world.opts.crashes {
            world.vote_crashes_left = world.rng.random_range(2..=5);
        }
        for c in 0..world.opts.clients {
            world.clients.push(Client::default());
            let start = world.rng.random_range(0..50);
            world.schedule(start, Event::ClientNext { client: c });
        }
        let first = world.rng.random_range(200..600);
        world.schedule(first, Event::Nemesis { fault: true });
        world.schedule(world.heal_at, Event::Heal);
        if world.opts.membership {
            let first = world.rng.random_range(100..400);
            world.schedule(first, Event::Admin);
        }
        if world.opts.transfers {
            let first = world.rng.random_range(150..500);
            world.schedule(first, Event::Transfer);
        }
        world
    }

    /// A new node's tick interval (tenths of a ms): the nominal one, or
    /// with drift one of its own, from 15% faster to 20% slower. The ratio
    /// stays below 2, so that the randomized election timeouts of
    /// `[T, 2T)` ticks still overlap between any two nodes: a node whose
    /// clock runs twice as fast as the others' could otherwise time out
    /// first every time, forever (without PreVote, each of its hopeless
    /// campaigns resets the others' timers).
    fn tick_rate(&mut self) -> u64 {
        if self.opts.drift {
            self.rng.random_range(85..=120)
        } else {
            TICK_TENTHS
        }
    }

    fn new_raft(&mut self, id: NodeId, restored: Restored) -> Raft {
        let mut cfg = Config::new(id);
        cfg.seed = self
            .seed
            .wrapping_add(id)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ self.rng.random::<u64>();
        cfg.max_inflight = 8;
        cfg.max_batch_bytes = self.opts.max_batch_bytes;
        cfg.snapshot_entries = self.opts.snapshot_entries;
        cfg.snapshot_chunk_bytes = self.opts.snapshot_chunk_bytes;
        cfg.pre_vote = self.opts.pre_vote;
        cfg.check_quorum = self.opts.check_quorum;
        // Lease reads (thesis §6.4.1): the bound covers the drift the
        // simulation gives clocks (`tick_rate`: 120/85 < 1.5).
        cfg.lease_reads = true;
        cfg.clock_drift_bound = SIM_CLOCK_DRIFT_BOUND;
        cfg.bugs = self.opts.bugs;
        match Raft::new(cfg, restored) {
            Ok(r) => r,
            Err(e) => panic!("simulation built an invalid config: {e}"),
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    fn fail(&self, kind: FailureKind) -> SimFailure {
        SimFailure {
            seed: self.seed,
            time: self.now,
            kind,
            membership_forced: self.opts.membership && !SimOptions::for_seed(self.seed).membership,
            bugs: self.opts.bugs,
        }
    }

    /// Runs to the end and checks the history.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.time > self.end_at {
                break;
            }
            self.now = s.time;
            self.report.events += 1;
            self.trace_event(&s.event);
            if let Err(kind) = self.handle(s.event) {
                return Err(self.fail(kind));
            }
        }
        self.finish()
    }

    fn trace_event(&mut self, e: &Event) {
        self.now.hash(&mut self.trace);
        let line = match e {
            Event::Deliver { msg: m, late } => {
                (1u8, m.from, m.to, m.term, *late).hash(&mut self.trace);
                m.body.kind().hash(&mut self.trace);
                if !self.opts.trace {
                    return;
                }
                format!(
                    "deliver{} {} {}->{} term {}: {:?}",
                    if *late { " (late)" } else { "" },
                    m.body.kind(),
                    m.from,
                    m.to,
                    m.term,
                    m.body
                )
            }
            other => {
                let s = format!("{other:?}");
                s.hash(&mut self.trace);
                s
            }
        };
        if self.opts.trace {
            println!("[{:>6}ms] {line}", self.now);
        }
    }

    /// Whether `node` is paused; if so, `event` is put back until it
    /// resumes (in order: events deferred together keep their order).
    fn defer_if_paused(&mut self, node: NodeId, event: Event) -> Option<Event> {
        match self.nodes.get(&node) {
            Some(n) if n.paused(self.now) => {
                let wait = n.paused_until - self.now;
                self.schedule(wait, event);
                None
            }
            _ => Some(event),
        }
    }

    fn handle(&mut self, event: Event) -> Step {
        match event {
            Event::Tick { node, epoch } => {
                let Some(Event::Tick { node, epoch }) =
                    self.defer_if_paused(node, Event::Tick { node, epoch })
                else {
                    return Ok(());
                };
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if n.epoch != epoch {
                    return Ok(());
                }
                let Some(raft) = n.raft.as_mut() else {
                    return Ok(());
                };
                // Ticks missed while the process was paused fire at once,
                // back to back, as a tokio interval's do by default.
                let gap = (self.now - n.last_tick) * 10;
                let burst = if gap >= 2 * n.tick_tenths {
                    (gap / n.tick_tenths - 1).min(TICK_BURST)
                } else {
                    0
                };
                n.last_tick = self.now;
                raft.tick();
                let next = n.next_tick();
                self.schedule(next, Event::Tick { node, epoch });
                self.process(node)?;
                for _ in 0..burst {
                    let Some(raft) = self.nodes.get_mut(&node).and_then(|n| n.raft.as_mut()) else {
                        break;
                    };
                    raft.tick();
                    self.process(node)?;
                }
                // With its clock current, the lease read this node could
                // serve now must be linearizable.
                let lease = self
                    .nodes
                    .get(&node)
                    .and_then(|n| n.raft.as_ref())
                    .and_then(|r| r.lease_read());
                if let Some(index) = lease {
                    self.check_lease(node, index)?;
                }
                Ok(())
            }
            Event::Deliver { msg, late } => self.deliver(msg, late),
            Event::Persisted { node, epoch } => {
                match self.defer_if_paused(node, Event::Persisted { node, epoch }) {
                    Some(_) => self.persisted(node, epoch),
                    None => Ok(()),
                }
            }
            Event::SnapshotSaved { node, epoch } => {
                match self.defer_if_paused(node, Event::SnapshotSaved { node, epoch }) {
                    Some(_) => self.snapshot_saved(node, epoch),
                    None => Ok(()),
                }
            }
            Event::ClientNext { client } => {
                self.start_op(client);
                Ok(())
            }
            Event::ClientSend {
                client,
                seq,
                attempt,
            } => self.client_send(client, seq, attempt),
            Event::ClientDeadline { client, seq } => {
                self.client_deadline(client, seq);
                Ok(())
            }
            Event::ReadAttemptTimeout {
                client,
                seq,
                attempt,
            } => {
                self.read_attempt_timeout(client, seq, attempt);
                Ok(())
            }
            Event::Nemesis { fault } => self.nemesis(fault),
            Event::Crash { node, epoch, quick } => {
                if self.healed || self.nodes[&node].epoch != epoch {
                    return Ok(());
                }
                self.crash(node)?;
                let back = if quick {
                    self.rng.random_range(1..40)
                } else {
                    self.rng.random_range(20..300)
                };
                self.schedule(back, Event::Restart { node });
                Ok(())
            }
            Event::Restart { node } => self.restart(node),
            Event::Admin => self.admin(),
            Event::Transfer => self.transfer(),
            Event::Heal => {
                self.healed = true;
                self.fault_active = false;
                self.disk_faulty = false;
                self.targeted_left = 0;
                self.vote_crashes_left = 0;
                self.kill_new_leaders = false;
                self.end_leader_isolation();
                self.faults = NetworkFaults::default();
                self.release_backlog();
                for id in self.ids.clone() {
                    self.restart(id)?;
                }
                Ok(())
            }
        }
    }

    // ----- nodes ---------------------------------------------------------

    /// Drains a node's Ready outputs and checks the invariants.
    fn process(&mut self, id: NodeId) -> Step {
        loop {
            let Some(n) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            let Some(raft) = n.raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                break;
            }
            let rd = raft.ready();
            let role = (raft.role(), raft.term());
            if self.healed && role.0 == Role::Leader {
                self.led_after_heal = Some(self.now);
            }
            let became_leader = role.0 == Role::Leader && n.last_role != role;
            n.last_role = role;
            if became_leader {
                self.on_new_leader(id, role.1);
            }
            self.observe(id, &rd.entries, became_leader)?;

            let must_write = rd.must_persist() || !rd.persisted_messages.is_empty();
            for m in rd.messages {
                self.check_sent(&m)?;
                self.send(m);
            }
            if let Some(snap) = &rd.snapshot {
                let kv = SimKv::restore(&snap.data).map_err(|e| {
                    storage_violation(
                        "snapshot",
                        format!("node {id} received an undecodable snapshot: {e}"),
                    )
                })?;
                self.oracle
                    .on_restore(id, snap.meta.index, kv.digest(), true)
                    .map_err(FailureKind::Safety)?;
                self.nodes.get_mut(&id).expect("node exists").kv = kv;
                self.report.snapshots_installed += 1;
            }
            if must_write {
                let mut parts = Vec::new();
                if let Some(snap) = rd.snapshot {
                    let (index, term) = (snap.meta.index, snap.meta.term);
                    parts.push(Part::SaveSnapshot(
                        snap.meta,
                        std::sync::Arc::unwrap_or_clone(snap.data),
                    ));
                    parts.push(Part::CompactLog { index, term });
                }
                if !rd.entries.is_empty() {
                    parts.push(Part::Append(rd.entries));
                }
                if let Some(hs) = rd.hard_state {
                    parts.push(Part::HardState(hs));
                }
                let waits = !rd.persisted_messages.is_empty();
                // A vote granted to another node.
                let votes = rd.persist_marker.term_vote.is_some()
                    && rd
                        .hard_state
                        .is_some_and(|hs| hs.vote != NO_NODE && hs.vote != id);
                let latency = self.disk_latency();
                let n = self.nodes.get_mut(&id).expect("node exists");
                let done_at = n.writes.completion_time(self.now, latency);
                n.writes.pending.push_back(PendingWrite {
                    done_at,
                    parts,
                    messages: rd.persisted_messages,
                    marker: Some(rd.persist_marker),
                });
                let epoch = n.epoch;
                let delay = done_at - self.now;
                self.schedule(delay, Event::Persisted { node: id, epoch });
                if waits || votes {
                    self.maybe_crash_before_fsync(id, epoch, delay, votes);
                }
            }
            for e in rd.committed_entries {
                self.apply(id, e)?;
            }
            for r in rd.reads {
                let n = self.nodes.get_mut(&id).expect("node exists");
                let Some((client, seq, key)) = n.reads.remove(&r.ctx) else {
                    continue;
                };
                match r.result {
                    Ok(index) => n.read_waiting.push((index, client, seq, key)),
                    Err(e) => self.reply(client, seq, Reply::Retry(e.leader)),
                }
            }
            self.serve_reads(id);
            self.maybe_snapshot(id);
        }
        Ok(())
    }

    /// Runs the oracle on a node that just produced a Ready, and the checks
    /// its findings call for: leader completeness on every leader and
    /// durability for newly committed entries (everything when a
    /// configuration committed).
    fn observe(&mut self, id: NodeId, entries: &[Entry], became_leader: bool) -> Step {
        let raft = self.nodes[&id]
            .raft
            .as_ref()
            .expect("checked by the caller");
        let observed = self
            .oracle
            .observe(raft, entries, became_leader)
            .map_err(FailureKind::Safety)?;
        if let Some(range) = observed.newly_committed {
            self.oracle
                .check_leaders(self.nodes.values().filter_map(|n| n.raft.as_ref()), &range)
                .map_err(FailureKind::Safety)?;
            let range = if observed.config_committed {
                1..=*range.end()
            } else {
                range
            };
            self.check_durable(range)?;
        }
        Ok(())
    }

    fn on_new_leader(&mut self, id: NodeId, term: Term) {
        self.report.leaders += 1;
        if let Some((target, started)) = self.transfer_pending
            && target == id
            && term > started
        {
            self.report.transfers_completed += 1;
            self.transfer_pending = None;
        }
        if let Some(step) = self.figure8 {
            // Raft Figure 8 step by step: the first two leaders of the
            // period are cut off at their election (their no-ops stay on
            // their own logs, at the same index), the third — the first of
            // them again, elected with its older entry — is cut off once
            // a majority acknowledged that entry, before its own no-op
            // spreads; the second may then be elected over it.
            match step {
                0 | 1 => self.isolate(id),
                2 => {
                    let voters = self.nodes[&id]
                        .raft
                        .as_ref()
                        .map_or(1, |r| r.config().voters.len());
                    let acks = (voters / 2).max(1) as u32;
                    self.isolate_after_acks.insert(id, (term, acks));
                }
                _ => {}
            }
            self.figure8 = Some(step + 1);
        } else if self.isolate_new_leaders {
            // Raft Figure 8: leaders that fail before (or just after) their
            // entries reach a majority. Cutting the node off here, before
            // its first messages leave, leaves its no-op on its own log
            // only.
            let roll = self.rng.random_range(0..100);
            if roll < 35 {
                self.isolate(id);
            } else if roll < 80 {
                let acks = self.rng.random_range(1..=2);
                self.isolate_after_acks.insert(id, (term, acks));
            }
        }
        // The "flaky leader" nemesis: new leaders die young, which produces
        // the leader churn of Raft Figure 8.
        if self.kill_new_leaders && self.rng.random_bool(0.5) {
            let epoch = self.nodes[&id].epoch;
            let after = self.rng.random_range(1..40);
            self.schedule(
                after,
                Event::Crash {
                    node: id,
                    epoch,
                    quick: false,
                },
            );
        }
    }

    fn apply(&mut self, id: NodeId, e: Entry) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if !n.disk.holds(e.index, e.term) {
            return Err(storage_violation(
                "storage agreement",
                format!(
                    "node {id} applies {}@{}, which its disk does not hold",
                    e.index, e.term
                ),
            ));
        }
        let outcome = match &e.payload {
            Payload::Command(bytes) => {
                let cmd: SimKvWrite = decode("command", bytes).map_err(|err| {
                    storage_violation(
                        "state machine",
                        format!("undecodable command at {}: {err}", e.index),
                    )
                })?;
                // The simulation logs bare commands, without the runtime's
                // stamped envelope: replicated time stays 0.
                let mut ctx = crate::Ctx::new(e.index, e.term, 0);
                Some(KvOutcome::from(n.kv.apply(&mut ctx, cmd)))
            }
            _ => None,
        };
        let digest = n.kv.digest();
        let proposal = n.proposals.remove(&e.index);
        self.oracle
            .on_apply(id, &e, digest)
            .map_err(FailureKind::Safety)?;
        if let Some((term, client, seq)) = proposal {
            match outcome {
                Some(o) if term == e.term => self.reply(client, seq, Reply::Done(o)),
                // Another entry took the index: ours was never committed.
                _ => self.reply(client, seq, Reply::Retry(None)),
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let applied = n.raft.as_ref().map_or(0, |r| r.log().applied());
        let (ready, waiting): (Vec<_>, Vec<_>) = n
            .read_waiting
            .drain(..)
            .partition(|(index, ..)| *index <= applied);
        n.read_waiting = waiting;
        let answers: Vec<_> = ready
            .into_iter()
            .map(|(_, client, seq, key)| {
                let ctx = crate::Ctx::new(applied, 0, 0);
                let SimKvReadOutput::Get(value) = n.kv.query(&ctx, SimKvRead::Get { key });
                (client, seq, value)
            })
            .collect();
        for (client, seq, value) in answers {
            self.reply(client, seq, Reply::Done(KvOutcome::Get(value)));
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .expect("a running node")
    }

    // ----- the end -------------------------------------------------------

    fn finish(mut self) -> Result<SimReport, SimFailure> {
        if let Err(kind) = self.check_durable(1..=Index::MAX) {
            return Err(self.fail(kind));
        }
        self.report.trace_hash = self.trace.finish();
        self.report.commit = self.oracle.committed().len() as u64;
        self.report.config_changes = self
            .oracle
            .committed_configs()
            .iter()
            .filter(|(index, _)| *index > 1)
            .count();
        // A leader emerged after the heal, and the cluster is not without
        // one for long at the end: a removed node kept running may still
        // depose the leader once with an old message answered late.
        let led_lately = self
            .led_after_heal
            .is_some_and(|t| t + LEADERLESS_MS >= self.end_at);
        if self.current_leader().is_none() && !led_lately {
            return Err(self.fail(FailureKind::Liveness(format!(
                "no leader {}ms after the network healed, or none in the last {LEADERLESS_MS}ms",
                self.opts.heal_ms
            ))));
        }
        if !self.write_after_heal {
            return Err(self.fail(FailureKind::Liveness(format!(
                "no write completed within {}ms after the network healed",
                self.opts.heal_ms
            ))));
        }
        match linearizability::check(self.history.ops(), linearizability::DEFAULT_BUDGET) {
            linearizability::CheckResult::Linearizable => Ok(self.report),
            other => Err(self.fail(FailureKind::Linearizability(other.to_string()))),
        }
    }
}
