//! The discrete-event scheduler that runs one simulated cluster.
//!
//! Everything happens at a virtual time (milliseconds) drawn from one seeded
//! RNG, in the order of a priority queue keyed by (time, sequence number):
//! node ticks, message deliveries, fsync completions, client requests and
//! timeouts, and the nemesis that alternates fault and calm periods. One seed
//! always yields the same run; the trace hash proves it.
//!
//! Each simulated node is what the runtime will be in miniature: it drives a
//! [`Raft`] core, persists through a simulated [`Disk`] whose writes complete
//! in order after a latency, sends persisted-only messages after their
//! write completes, applies committed entries to a [`SimKv`], tracks client
//! proposals by (index, term), and serves ReadIndex reads once applied.
//!
//! With [`SimOptions::membership`], an admin changes the cluster while the
//! nemesis works: it starts new nodes empty ([`Restored::empty`]), adds them
//! as learners, promotes them once the leader reports them caught up
//! ([`Raft::learner_caught_up`]), removes voters (the leader too) and
//! replaces nodes in one joint change, retrying on the node it believes
//! leads. Removed nodes are shut down once their removal commits, or kept
//! running to show that they cannot disrupt the cluster.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::{Disk, PendingWrite, WriteQueue};
use super::kv::{SimKv, SimKvRead, SimKvReadOutput, SimKvWrite};
use super::linearizability::{self, History, Key, KvOp, KvOutcome, OpId, Value};
use super::network::{NetworkFaults, Partition};
use super::options::{FailureKind, SimFailure, SimOptions, SimReport};
use super::oracle::{Oracle, Violation};
use crate::core::{
    Body, Config, Configuration, Entry, Index, Message, NodeId, Payload, Raft, Restored, Role, Term,
};
use crate::state_machine::{StateMachine, decode, encode};

const TICK_MS: u64 = 10;
const OP_TIMEOUT_MS: u64 = 400;
const READ_ATTEMPT_MS: u64 = 120;

#[derive(Debug)]
enum Event {
    Tick {
        node: NodeId,
        epoch: u64,
    },
    Deliver(Message),
    Persisted {
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
    },
    Heal,
    Admin,
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
    id: NodeId,
    raft: Option<Raft>,
    epoch: u64,
    disk: Disk,
    writes: WriteQueue,
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
}

/// A membership change the admin is carrying out. The admin judges
/// progress by the configuration in the leader's log, never by what it
/// proposed, so a change lost with a leader is simply proposed again.
#[derive(Clone, Copy, Debug)]
enum AdminOp {
    /// Add `id` as learner, wait until it is caught up, then promote it —
    /// replacing `replaces` in the same joint change if set.
    Add {
        id: NodeId,
        replaces: Option<NodeId>,
        /// Admin rounds spent waiting for the learner to catch up.
        waited: u32,
    },
    /// Remove `id` (voter or learner).
    Remove { id: NodeId },
}

#[derive(Default)]
struct Admin {
    /// The node the admin believes leads.
    hint: Option<NodeId>,
    op: Option<AdminOp>,
    /// Operations started.
    started: usize,
}

impl Node {
    /// A node that has just started from `restored`, with nothing in flight.
    fn fresh(id: NodeId, raft: Raft, restored: &Restored, term: Term) -> Node {
        Node {
            id,
            raft: Some(raft),
            epoch: 0,
            disk: Disk::new(restored),
            writes: WriteQueue::default(),
            kv: SimKv::default(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_waiting: Vec::new(),
            last_role: (Role::Follower, term),
            retired: false,
        }
    }
}

struct InFlight {
    seq: u64,
    op: KvOp,
    id: OpId,
    attempt: u32,
}

struct Client {
    hint: Option<NodeId>,
    op: Option<InFlight>,
    seq: u64,
    counter: u64,
    seen: BTreeMap<Key, Option<Value>>,
}

enum Reply {
    Done(KvOutcome),
    /// Definitely not applied: retry elsewhere.
    Retry(Option<NodeId>),
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
    /// The initial configuration: quorums are judged by it until a
    /// configuration commits.
    conf: Configuration,
    next_id: NodeId,
    admin: Admin,
    faults: NetworkFaults,
    clients: Vec<Client>,
    history: History,
    oracle: Oracle,
    trace: DefaultHasher,
    next_ctx: u64,
    heal_at: u64,
    end_at: u64,
    healed: bool,
    kill_new_leaders: bool,
    /// The "Figure 8" nemesis: new leaders are cut off from everyone at
    /// their election or after their first successful replications.
    isolate_new_leaders: bool,
    /// Nodes cut off by that nemesis, oldest first (at most a minority).
    isolated: VecDeque<NodeId>,
    /// Leaders to cut off after this many more successful AppendEntries
    /// answers in their term: node -> (term, answers left).
    isolate_after_acks: BTreeMap<NodeId, (Term, u32)>,
    write_after_heal: bool,
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
            conf,
            next_id: opts.nodes as NodeId + 1,
            admin: Admin::default(),
            faults: NetworkFaults::default(),
            clients: Vec::new(),
            history: History::new(),
            oracle: Oracle::default(),
            trace: DefaultHasher::new(),
            next_ctx: 1,
            heal_at: opts.fault_ms,
            end_at: opts.fault_ms + opts.heal_ms,
            healed: false,
            kill_new_leaders: false,
            isolate_new_leaders: false,
            isolated: VecDeque::new(),
            isolate_after_acks: BTreeMap::new(),
            write_after_heal: false,
            report: SimReport {
                seed,
                ..Default::default()
            },
            opts,
        };
        for &id in &ids {
            let raft = world.new_raft(id, restored.clone());
            world.nodes.insert(id, Node::fresh(id, raft, &restored, 1));
            let offset = world.rng.random_range(0..TICK_MS);
            world.schedule(offset, Event::Tick { node: id, epoch: 0 });
        }
        for c in 0..world.opts.clients {
            world.clients.push(Client {
                hint: None,
                op: None,
                seq: 0,
                counter: 0,
                seen: BTreeMap::new(),
            });
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
        world
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
            Event::Deliver(m) => {
                (1u8, m.from, m.to, m.term).hash(&mut self.trace);
                m.body.kind().hash(&mut self.trace);
                if !self.opts.trace {
                    return;
                }
                format!(
                    "deliver {} {}->{} term {}: {:?}",
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

    fn handle(&mut self, event: Event) -> Step {
        match event {
            Event::Tick { node, epoch } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if n.epoch != epoch {
                    return Ok(());
                }
                let Some(raft) = n.raft.as_mut() else {
                    return Ok(());
                };
                raft.tick();
                self.schedule(TICK_MS, Event::Tick { node, epoch });
                self.process(node)
            }
            Event::Deliver(m) => {
                let to = m.to;
                self.maybe_isolate_replicating_leader(&m);
                let Some(raft) = self.nodes.get_mut(&to).and_then(|n| n.raft.as_mut()) else {
                    return Ok(());
                };
                raft.step(m);
                self.process(to)
            }
            Event::Persisted { node, epoch } => self.persisted(node, epoch),
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
                let c = &mut self.clients[client];
                if c.op.as_ref().is_some_and(|op| op.seq == seq) {
                    // The outcome stays unknown: possibly applied.
                    c.op = None;
                    let think = self.rng.random_range(0..20);
                    self.schedule(think, Event::ClientNext { client });
                }
                Ok(())
            }
            Event::ReadAttemptTimeout {
                client,
                seq,
                attempt,
            } => {
                let c = &mut self.clients[client];
                if let Some(op) = c.op.as_mut()
                    && op.seq == seq
                    && op.attempt == attempt
                {
                    op.attempt += 1;
                    c.hint = None;
                    let attempt = op.attempt;
                    self.schedule(
                        1,
                        Event::ClientSend {
                            client,
                            seq,
                            attempt,
                        },
                    );
                }
                Ok(())
            }
            Event::Nemesis { fault } => self.nemesis(fault),
            Event::Crash { node, epoch } => {
                if self.healed || self.nodes[&node].epoch != epoch {
                    return Ok(());
                }
                self.crash(node)?;
                let back = self.rng.random_range(20..300);
                self.schedule(back, Event::Restart { node });
                Ok(())
            }
            Event::Restart { node } => {
                self.restart(node);
                Ok(())
            }
            Event::Admin => self.admin(),
            Event::Heal => {
                self.healed = true;
                self.kill_new_leaders = false;
                self.end_leader_isolation();
                self.faults = NetworkFaults::default();
                for id in self.ids.clone() {
                    self.restart(id);
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
            let became_leader = role.0 == Role::Leader && n.last_role != role;
            n.last_role = role;
            if became_leader {
                self.report.leaders += 1;
                if self.isolate_new_leaders {
                    // Raft Figure 8: leaders that fail before (or just
                    // after) their entries reach a majority. Cutting the
                    // node off here, before its first messages leave,
                    // leaves its no-op on its own log only.
                    let roll = self.rng.random_range(0..100);
                    if roll < 35 {
                        self.isolate(id);
                    } else if roll < 80 {
                        let acks = self.rng.random_range(1..=2);
                        self.isolate_after_acks.insert(id, (role.1, acks));
                    }
                }
                let n = self.nodes.get_mut(&id).expect("node exists");
                // The "flaky leader" nemesis: new leaders die young, which
                // produces the leader churn of Raft Figure 8.
                if self.kill_new_leaders && self.rng.random_bool(0.5) {
                    let epoch = n.epoch;
                    let after = self.rng.random_range(1..40);
                    self.seq += 1;
                    self.queue.push(Reverse(Scheduled {
                        time: self.now + after,
                        seq: self.seq,
                        event: Event::Crash { node: id, epoch },
                    }));
                }
            }
            let raft = self.nodes[&id].raft.as_ref().expect("checked above");
            self.oracle
                .observe(raft, &rd.entries, became_leader)
                .map_err(FailureKind::Safety)?;

            let must_write = rd.must_persist() || !rd.persisted_messages.is_empty();
            for m in rd.messages {
                self.send(m);
            }
            let n = self.nodes.get_mut(&id).expect("node exists");
            if let Some(snap) = &rd.snapshot {
                n.kv = SimKv::restore(&snap.data).map_err(|e| {
                    FailureKind::Safety(Violation {
                        property: "snapshot",
                        detail: format!("node {id} received an undecodable snapshot: {e}"),
                    })
                })?;
                self.report.snapshots_installed += 1;
            }
            if must_write {
                let latency = self.rng.random_range(1..4);
                let done_at = n.writes.completion_time(self.now, latency);
                n.writes.pending.push_back(PendingWrite {
                    done_at,
                    installed: rd.snapshot.map(|s| (s.meta, s.data)),
                    entries: rd.entries,
                    hard_state: rd.hard_state,
                    compaction: None,
                    messages: rd.persisted_messages,
                    marker: Some(rd.persist_marker),
                });
                let epoch = n.epoch;
                let delay = done_at - self.now;
                self.schedule(delay, Event::Persisted { node: id, epoch });
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

    fn apply(&mut self, id: NodeId, e: Entry) -> Step {
        self.oracle.on_apply(id, &e).map_err(FailureKind::Safety)?;
        let n = self.nodes.get_mut(&id).expect("node exists");
        let outcome = match &e.payload {
            Payload::Command(bytes) => {
                let cmd: SimKvWrite = decode("command", bytes).map_err(|err| {
                    FailureKind::Safety(Violation {
                        property: "state machine",
                        detail: format!("undecodable command at {}: {err}", e.index),
                    })
                })?;
                Some(KvOutcome::from(n.kv.apply(cmd)))
            }
            _ => None,
        };
        let proposal = n.proposals.remove(&e.index);
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
                let SimKvReadOutput::Get(value) = n.kv.query(SimKvRead::Get { key });
                (client, seq, value)
            })
            .collect();
        for (client, seq, value) in answers {
            self.reply(client, seq, Reply::Done(KvOutcome::Get(value)));
        }
    }

    fn maybe_snapshot(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let Some(raft) = n.raft.as_mut() else { return };
        if !raft.wants_snapshot() {
            return;
        }
        let index = raft.log().applied().min(raft.log().persisted());
        let Ok(data) = n.kv.snapshot() else { return };
        let Ok(meta) = raft.compact(index, data.clone()) else {
            return;
        };
        self.report.snapshots_taken += 1;
        let latency = self.rng.random_range(2..8);
        let done_at = n.writes.completion_time(self.now, latency);
        n.writes.pending.push_back(PendingWrite {
            done_at,
            compaction: Some((meta, data)),
            ..Default::default()
        });
        let epoch = n.epoch;
        self.schedule(done_at - self.now, Event::Persisted { node: id, epoch });
    }

    fn persisted(&mut self, id: NodeId, epoch: u64) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.epoch != epoch {
            return Ok(());
        }
        let Some(w) = n.writes.pending.pop_front() else {
            return Ok(());
        };
        n.disk.apply(&w);
        if let Some(raft) = n.raft.as_mut()
            && let Some(marker) = w.marker
        {
            raft.on_persisted(marker);
        }
        for m in w.messages {
            self.send(m);
        }
        self.process(id)
    }

    fn crash(&mut self, id: NodeId) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.raft.is_none() {
            return Ok(());
        }
        // Unsynced writes are lost, except a random prefix the kernel may
        // already have flushed.
        let pending: Vec<_> = n.writes.pending.drain(..).collect();
        if pending.iter().any(|w| w.compaction.is_some()) {
            self.report.crashes_mid_compaction += 1;
        }
        if pending.iter().any(|w| w.installed.is_some()) {
            self.report.crashes_mid_install += 1;
        }
        let survive = self.rng.random_range(0..=pending.len());
        for w in &pending[..survive] {
            n.disk.apply(w);
        }
        n.raft = None;
        n.epoch += 1;
        n.proposals.clear();
        n.reads.clear();
        n.read_waiting.clear();
        self.report.crashes += 1;
        self.check_durable()
    }

    fn restart(&mut self, id: NodeId) {
        let restored = {
            let n = &self.nodes[&id];
            if n.raft.is_some() || n.retired {
                return;
            }
            n.disk.restore()
        };
        let kv = match &restored.snapshot_data {
            Some(d) => SimKv::restore(d).unwrap_or_default(),
            None => SimKv::default(),
        };
        let raft = self.new_raft(id, restored);
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.kv = kv;
        n.raft = Some(raft);
        n.last_role = (Role::Follower, 0);
        let epoch = n.epoch;
        let offset = self.rng.random_range(1..=TICK_MS);
        self.schedule(offset, Event::Tick { node: id, epoch });
    }

    fn check_durable(&self) -> Step {
        let disks: HashMap<NodeId, &Disk> = self.nodes.values().map(|n| (n.id, &n.disk)).collect();
        self.oracle
            .check_durable(&disks, &self.conf)
            .map_err(FailureKind::Safety)
    }

    // ----- network -------------------------------------------------------

    fn send(&mut self, m: Message) {
        if !self.faults.reachable(m.from, m.to) {
            return;
        }
        if self.faults.drop > 0.0 && self.rng.random_bool(self.faults.drop) {
            return;
        }
        let jitter = self.faults.jitter;
        let delay = self.rng.random_range(1..4)
            + if jitter > 0 {
                self.rng.random_range(0..jitter)
            } else {
                0
            };
        if self.faults.duplicate > 0.0 && self.rng.random_bool(self.faults.duplicate) {
            let later = delay + self.rng.random_range(1..20);
            self.schedule(later, Event::Deliver(m.clone()));
        }
        self.schedule(delay, Event::Deliver(m));
    }

    fn nemesis(&mut self, fault: bool) -> Step {
        if self.healed {
            return Ok(());
        }
        if fault {
            let leader = self.current_leader().unwrap_or(self.ids[0]);
            self.isolate_new_leaders = self.opts.churn && self.rng.random_bool(0.5);
            if self.isolate_new_leaders {
                // Partitions follow the elections (see `isolate`).
            } else if self.opts.churn {
                // Isolate one node at a time, over and over: the sequences
                // of minority leaders of Raft Figure 8.
                if self.rng.random_bool(0.8) {
                    let ids = self.ids.clone();
                    let target = ids[self.rng.random_range(0..ids.len())];
                    Partition::Isolate.apply(&ids, target, &mut self.rng, &mut self.faults);
                }
            } else if self.opts.partitions && self.rng.random_bool(0.6) {
                let kind = Partition::ALL[self.rng.random_range(0..Partition::ALL.len())];
                let target = if self.rng.random_bool(0.6) {
                    leader
                } else {
                    self.ids[self.rng.random_range(0..self.ids.len())]
                };
                let ids = self.ids.clone();
                kind.apply(&ids, target, &mut self.rng, &mut self.faults);
            }
            if self.isolate_new_leaders {
                self.faults.drop = self.rng.random_range(0.0..0.1);
            } else if self.opts.churn {
                self.faults.drop = self.rng.random_range(0.0..0.3);
            } else if self.opts.lossy_network && self.rng.random_bool(0.6) {
                self.faults.drop = self.rng.random_range(0.0..0.25);
                self.faults.duplicate = self.rng.random_range(0.0..0.1);
                self.faults.jitter = self.rng.random_range(0..40);
            }
            if self.opts.crashes && self.rng.random_bool(0.5) {
                let count = self.rng.random_range(1..=(self.ids.len() / 2).max(1));
                for _ in 0..count {
                    let victim = if self.rng.random_bool(0.5) {
                        leader
                    } else {
                        self.ids[self.rng.random_range(0..self.ids.len())]
                    };
                    self.crash(victim)?;
                    let back = self.rng.random_range(20..600);
                    self.schedule(back, Event::Restart { node: victim });
                }
            }
            self.kill_new_leaders = if self.isolate_new_leaders {
                self.rng.random_bool(0.2)
            } else {
                self.opts.churn || (self.opts.crashes && self.rng.random_bool(0.3))
            };
            let length = if self.isolate_new_leaders {
                // Long enough for a few elections to follow each other.
                self.rng.random_range(400..1200)
            } else if self.opts.churn {
                self.rng.random_range(150..400)
            } else {
                self.rng.random_range(100..700)
            };
            self.schedule(length, Event::Nemesis { fault: false });
        } else {
            self.end_leader_isolation();
            self.faults = NetworkFaults::default();
            self.kill_new_leaders = false;
            let length = if self.opts.churn {
                self.rng.random_range(0..60)
            } else {
                self.rng.random_range(50..400)
            };
            self.schedule(length, Event::Nemesis { fault: true });
        }
        Ok(())
    }

    /// Cuts `node` off from every other node. At most a minority stays cut
    /// off: isolating one more reconnects the longest-isolated node, so the
    /// isolations move from leader to leader as in Raft Figure 8.
    fn isolate(&mut self, node: NodeId) {
        if self.isolated.contains(&node) {
            return;
        }
        self.isolated.push_back(node);
        while self.isolated.len() > (self.ids.len() - 1) / 2 {
            self.isolated.pop_front();
        }
        self.faults.cut.clear();
        for &x in &self.isolated {
            let rest: Vec<NodeId> = self.ids.iter().copied().filter(|&y| y != x).collect();
            self.faults.split(&[x], &rest);
        }
    }

    /// The Figure 8 nemesis counts a leader's successful AppendEntries
    /// answers and cuts it off just before it handles the last one it is
    /// allowed: whatever it sends next is lost.
    fn maybe_isolate_replicating_leader(&mut self, m: &Message) {
        if !matches!(m.body, Body::AppendEntriesResponse { success: true, .. }) {
            return;
        }
        let Some(&(term, left)) = self.isolate_after_acks.get(&m.to) else {
            return;
        };
        let leads = self.nodes[&m.to]
            .raft
            .as_ref()
            .is_some_and(|r| r.role() == Role::Leader && r.term() == term);
        if !leads || m.term != term {
            if !leads {
                self.isolate_after_acks.remove(&m.to);
            }
            return;
        }
        if left > 1 {
            self.isolate_after_acks.insert(m.to, (term, left - 1));
        } else {
            self.isolate_after_acks.remove(&m.to);
            self.isolate(m.to);
        }
    }

    fn end_leader_isolation(&mut self) {
        self.isolate_new_leaders = false;
        self.isolated.clear();
        self.isolate_after_acks.clear();
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    // ----- membership ----------------------------------------------------

    /// Starts a new node with nothing on disk: it knows of no configuration
    /// and waits for a leader to replicate to it.
    fn spawn_node(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        let restored = Restored::empty();
        let raft = self.new_raft(id, restored.clone());
        self.nodes.insert(id, Node::fresh(id, raft, &restored, 0));
        self.ids.push(id);
        let offset = self.rng.random_range(1..=TICK_MS);
        self.schedule(offset, Event::Tick { node: id, epoch: 0 });
        id
    }

    /// A node's removal committed: shut it down for good, or keep it running
    /// (at most two such nodes) to show it cannot disrupt the cluster.
    fn removal_committed(&mut self, id: NodeId, conf: &Configuration) {
        self.report.nodes_removed += 1;
        let kept = self
            .ids
            .iter()
            .filter(|&&x| x != id && !conf.contains(x))
            .count();
        if kept < 2 && self.rng.random_bool(0.5) {
            self.report.removed_kept_running += 1;
            return;
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.retired = true;
        n.raft = None;
        n.epoch += 1;
        n.writes.pending.clear();
        n.proposals.clear();
        n.reads.clear();
        n.read_waiting.clear();
        self.ids.retain(|&x| x != id);
    }

    /// One round of the admin, and the next one scheduled: soon when it
    /// was sent to another node that it believes leads.
    fn admin(&mut self) -> Step {
        let redirected = self.admin_round()?;
        let next = if redirected {
            self.rng.random_range(2..10)
        } else if self.healed {
            self.rng.random_range(60..200)
        } else {
            self.rng.random_range(30..120)
        };
        self.schedule(next, Event::Admin);
        Ok(())
    }

    /// Finds the leader, looks at its configuration, and takes the next
    /// step of the current change (or starts one). Returns whether the node
    /// it asked pointed it to another leader.
    fn admin_round(&mut self) -> Result<bool, FailureKind> {
        let target = match self.admin.hint {
            Some(h) if self.ids.contains(&h) => h,
            _ => self.ids[self.rng.random_range(0..self.ids.len())],
        };
        let Some(raft) = self.nodes[&target].raft.as_ref() else {
            self.admin.hint = None;
            return Ok(false);
        };
        if raft.role() != Role::Leader {
            // Ask the leader it knows of, soon.
            self.admin.hint = raft.leader();
            return Ok(self.admin.hint.is_some());
        }
        let leader = target;
        self.admin.hint = Some(leader);
        let (conf_index, conf) = raft.log().last_config();
        let conf = conf.clone();
        if conf_index > raft.log().committed() || conf.is_joint() {
            // A change is in flight: a second one must be refused.
            if self.rng.random_bool(0.3) {
                let other = Configuration::new(conf.voters.iter().copied());
                let raft = self.raft_mut(leader);
                if let Ok(at) = raft.propose_config(other) {
                    return Err(FailureKind::Safety(Violation {
                        property: "one configuration change at a time",
                        detail: format!(
                            "leader {leader} accepted a change at {at} while {conf_index} was in flight"
                        ),
                    }));
                }
            }
            return Ok(false);
        }
        if self.admin.op.is_none() {
            if self.healed || self.now >= self.heal_at {
                return Ok(false);
            }
            self.admin.op = Some(self.choose_op(leader, &conf));
            self.admin.started += 1;
        }
        let Some(op) = self.admin.op else {
            return Ok(false);
        };
        let mut swap = None;
        let mut removes_leader = false;
        let target = match op {
            AdminOp::Remove { id } => {
                if !conf.contains(id) {
                    self.admin.op = None;
                    self.removal_committed(id, &conf);
                    return Ok(false);
                }
                let mut t = conf.clone();
                t.voters.remove(&id);
                t.learners.remove(&id);
                t.outgoing.clear();
                removes_leader = id == leader;
                t
            }
            AdminOp::Add {
                id,
                replaces,
                waited,
            } => {
                if conf.voters.contains(&id) {
                    self.report.nodes_added += 1;
                    self.admin.op = match replaces {
                        Some(old) if conf.contains(old) => Some(AdminOp::Remove { id: old }),
                        Some(old) => {
                            self.removal_committed(old, &conf);
                            None
                        }
                        None => None,
                    };
                    return Ok(false);
                }
                let mut t = conf.clone();
                if conf.learners.contains(&id) {
                    let caught_up = self.nodes[&leader]
                        .raft
                        .as_ref()
                        .is_some_and(|r| r.learner_caught_up(id));
                    if !caught_up {
                        // Thesis §4.2.1: a server that does not catch up
                        // (down, cut off, too slow) is given up on.
                        self.admin.op = Some(if waited >= 20 {
                            AdminOp::Remove { id }
                        } else {
                            AdminOp::Add {
                                id,
                                replaces,
                                waited: waited + 1,
                            }
                        });
                        return Ok(false);
                    }
                    t.learners.remove(&id);
                    t.voters.insert(id);
                    if let Some(old) = replaces.filter(|old| conf.voters.contains(old)) {
                        t.voters.remove(&old);
                        swap = Some((old, id));
                        removes_leader = old == leader;
                    }
                } else {
                    t.learners.insert(id);
                }
                t
            }
        };
        match self.raft_mut(leader).propose_config(target) {
            Ok(_) => {}
            Err(crate::core::ProposeError::InvalidConfiguration(e)) => {
                return Err(FailureKind::Safety(Violation {
                    property: "membership",
                    detail: format!("the admin proposed an invalid configuration: {e}"),
                }));
            }
            // Not ready (no commit in its term yet), in flight, stepped
            // down: try again next round.
            Err(_) => return Ok(false),
        }
        if removes_leader {
            self.report.leaders_removed += 1;
        }
        self.process(leader)?;
        if self.healed {
            return Ok(false);
        }
        let roll = self.rng.random_range(0..100);
        if let Some((old, new)) = swap
            && self.opts.partitions
            && roll < 70
        {
            let (a, b): (Vec<NodeId>, Vec<NodeId>) = if roll < 35 {
                // The prior-art availability scenario: the node replaced and
                // its replacement share a failure domain, which partitions
                // away while the change is in flight. The rest are
                // majorities of both C_old and C_new, so joint consensus
                // carries on.
                self.ids.iter().partition(|&&x| x == old || x == new)
            } else {
                // A split across the change: the node leaving with half of
                // the others, the one joining with the rest — a majority of
                // C_old on one side, of C_new on the other (for an odd
                // number of voters). Joint consensus needs both on one side
                // and waits; a change that skipped C_old,new would let both
                // sides decide.
                let mut others: Vec<NodeId> =
                    conf.voters.iter().copied().filter(|&x| x != old).collect();
                for i in (1..others.len()).rev() {
                    others.swap(i, self.rng.random_range(0..=i));
                }
                let with_old: Vec<NodeId> = others[..conf.voters.len() / 2].to_vec();
                self.ids
                    .iter()
                    .partition(|&&x| x == old || with_old.contains(&x))
            };
            self.faults.split(&a, &b);
        } else if self.opts.crashes && roll >= 75 {
            // The prior-art correctness scenario: the leader fails with its
            // change on a minority, and the next leader changes the
            // configuration in turn.
            let epoch = self.nodes[&leader].epoch;
            let after = self.rng.random_range(1..30);
            self.schedule(
                after,
                Event::Crash {
                    node: leader,
                    epoch,
                },
            );
        }
        Ok(false)
    }

    /// Picks the next change: keep between 3 and 5 voters; the node removed
    /// or replaced is often the leader.
    fn choose_op(&mut self, leader: NodeId, conf: &Configuration) -> AdminOp {
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let victim = if self.rng.random_bool(0.4) && conf.voters.contains(&leader) {
            leader
        } else {
            voters[self.rng.random_range(0..voters.len())]
        };
        let roll = self.rng.random_range(0..3);
        if (roll == 0 && voters.len() < 5) || voters.len() < 3 {
            let id = self.spawn_node();
            AdminOp::Add {
                id,
                replaces: None,
                waited: 0,
            }
        } else if roll == 1 && voters.len() > 3 {
            AdminOp::Remove { id: victim }
        } else {
            let id = self.spawn_node();
            AdminOp::Add {
                id,
                replaces: Some(victim),
                waited: 0,
            }
        }
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .expect("a running node")
    }

    // ----- clients -------------------------------------------------------

    fn start_op(&mut self, client: usize) {
        if self.clients[client].op.is_some()
            || self.now >= self.end_at.saturating_sub(OP_TIMEOUT_MS)
        {
            return;
        }
        let key = self.rng.random_range(0..self.opts.keys);
        let roll = self.rng.random_range(0..100);
        let c = &mut self.clients[client];
        c.counter += 1;
        let value = ((client as u64 + 1) << 32) | c.counter;
        let op = if roll < 45 {
            KvOp::Put { key, value }
        } else if roll < 80 {
            KvOp::Get { key }
        } else {
            let expected = c.seen.get(&key).copied().flatten();
            KvOp::Cas {
                key,
                expected,
                new: value,
            }
        };
        c.seq += 1;
        let seq = c.seq;
        let id = self.history.invoke(client as u64, op, self.now);
        c.op = Some(InFlight {
            seq,
            op,
            id,
            attempt: 0,
        });
        self.report.ops += 1;
        self.schedule(OP_TIMEOUT_MS, Event::ClientDeadline { client, seq });
        self.schedule(
            0,
            Event::ClientSend {
                client,
                seq,
                attempt: 0,
            },
        );
    }

    fn client_send(&mut self, client: usize, seq: u64, attempt: u32) -> Step {
        let c = &self.clients[client];
        let Some(op) = c.op.as_ref() else {
            return Ok(());
        };
        if op.seq != seq || op.attempt != attempt {
            return Ok(());
        }
        let target = match c.hint {
            Some(h) => h,
            None => self.ids[self.rng.random_range(0..self.ids.len())],
        };
        let op_kind = op.op;
        let node = self.nodes.get_mut(&target).expect("node exists");
        let Some(raft) = node.raft.as_mut() else {
            // Connection refused: definitely not applied.
            self.reply(client, seq, Reply::Retry(None));
            return Ok(());
        };
        match SimKvWrite::from_op(&op_kind) {
            Some(cmd) => {
                let bytes = encode("command", &cmd).map_err(|e| {
                    FailureKind::Safety(Violation {
                        property: "encoding",
                        detail: e.to_string(),
                    })
                })?;
                match raft.propose(bytes) {
                    Ok((index, term)) => {
                        node.proposals.insert(index, (term, client, seq));
                    }
                    Err(crate::core::ProposeError::NotLeader(nl)) => {
                        self.reply(client, seq, Reply::Retry(nl.leader))
                    }
                    Err(_) => self.reply(client, seq, Reply::Retry(None)),
                }
            }
            None => {
                let key = op_kind.key();
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match raft.read_index(ctx) {
                    Ok(()) => {
                        node.reads.insert(ctx, (client, seq, key));
                        self.schedule(
                            READ_ATTEMPT_MS,
                            Event::ReadAttemptTimeout {
                                client,
                                seq,
                                attempt,
                            },
                        );
                    }
                    Err(nl) => self.reply(client, seq, Reply::Retry(nl.leader)),
                }
            }
        }
        self.process(target)
    }

    fn reply(&mut self, client: usize, seq: u64, reply: Reply) {
        let c = &mut self.clients[client];
        let Some(op) = c.op.as_mut() else { return };
        if op.seq != seq {
            return;
        }
        match reply {
            Reply::Done(outcome) => {
                if let KvOutcome::Get(v) = &outcome {
                    c.seen.insert(op.op.key(), *v);
                }
                if self.healed && !matches!(op.op, KvOp::Get { .. }) {
                    self.write_after_heal = true;
                }
                self.history.complete(op.id, self.now, outcome);
                c.op = None;
                self.report.completed += 1;
                let think = self.rng.random_range(0..10);
                self.schedule(think, Event::ClientNext { client });
            }
            Reply::Retry(hint) => {
                c.hint = hint;
                op.attempt += 1;
                let attempt = op.attempt;
                let backoff = self.rng.random_range(2..15);
                self.schedule(
                    backoff,
                    Event::ClientSend {
                        client,
                        seq,
                        attempt,
                    },
                );
            }
        }
    }

    // ----- the end -------------------------------------------------------

    fn finish(mut self) -> Result<SimReport, SimFailure> {
        if let Err(kind) = self.check_durable() {
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
        if self.current_leader().is_none() {
            return Err(self.fail(FailureKind::Liveness(format!(
                "no leader {}ms after the network healed",
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
