//! The live-core harness: a 3-node cluster of cores that has elected a
//! leader, replicated entries and taken snapshots, then driven by the
//! input: ticks, proposals, deliveries of its own messages, compactions,
//! apply pauses and halts (what the runtime does under backpressure and
//! when a handler panics, [`Raft::set_apply_paused`], [`Raft::set_halted`]), and
//! arbitrary messages built from the input's bytes (from members, from a
//! stranger, from node 0 and from the node itself; at the node's term,
//! around it and at the extremes; indexes around the log's cursors and at
//! the extremes; entries contiguous or not; snapshot chunks of any offset).
//!
//! After every operation every node must pass
//! [`Raft::check_invariants`], its commit index must not have gone down, and
//! every entry it handed out as committed must still be in its log with the
//! same term (or compacted into a snapshot). Arbitrary messages "from"
//! members may be byzantine, so agreement *between* nodes is not checked:
//! Raft does not promise it against a member that lies.

use std::collections::{BTreeMap, VecDeque};

use crate::core::{
    Body, Config, Configuration, Entry, Index, Message, NO_NODE, NodeId, Payload, Raft, Restored,
    Role, SnapshotMeta, Term,
};

const IDS: [NodeId; 3] = [1, 2, 3];
/// A node outside the configuration.
const STRANGER: NodeId = 4;

/// The input, read front to back; exhausted input reads as zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn pick(&mut self, n: u8) -> u8 {
        self.u8() % n.max(1)
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        u64::from_le_bytes(bytes)
    }
}

struct Node {
    raft: Raft,
    /// Entries this node handed out as committed: index -> term.
    committed: BTreeMap<Index, Term>,
    commit: Index,
}

struct Cluster {
    nodes: Vec<Node>,
    queue: VecDeque<Message>,
}

fn config() -> Configuration {
    let mut conf = Configuration::new(IDS);
    for id in IDS {
        conf.addrs.insert(id, format!("n{id}"));
    }
    conf
}

impl Cluster {
    fn new() -> Cluster {
        let nodes = IDS
            .iter()
            .filter_map(|&id| {
                let mut cfg = Config::new(id);
                cfg.seed = id;
                cfg.max_inflight = 4;
                cfg.snapshot_chunk_bytes = 16;
                cfg.max_snapshot_bytes = 256;
                cfg.snapshot_entries = 0;
                Raft::new(cfg, Restored::bootstrap(config())).ok()
            })
            .map(|raft| Node {
                raft,
                committed: BTreeMap::new(),
                commit: 0,
            })
            .collect();
        Cluster {
            nodes,
            queue: VecDeque::new(),
        }
    }

    fn node(&self, id: NodeId) -> Option<usize> {
        IDS.iter().position(|&x| x == id)
    }

    /// Takes every Ready of node `i`, as a runtime with an instant disk
    /// would.
    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes.get_mut(i) else {
            return;
        };
        while node.raft.has_ready() {
            let rd = node.raft.ready();
            for e in &rd.committed_entries {
                node.committed.insert(e.index, e.term);
            }
            self.queue.extend(rd.messages);
            node.raft.on_persisted(rd.persist_marker);
            self.queue.extend(rd.persisted_messages);
        }
    }

    fn step(&mut self, m: Message) {
        if let Some(i) = self.node(m.to) {
            if let Some(node) = self.nodes.get_mut(i) {
                node.raft.step(m);
            }
            self.drain(i);
        }
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            self.step(m);
        }
    }

    fn tick(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.raft.tick();
        }
        self.drain(i);
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.raft.role() == Role::Leader)
    }

    fn propose(&mut self, data: Vec<u8>) {
        if let Some(i) = self.leader() {
            if let Some(node) = self.nodes.get_mut(i) {
                let _ = node.raft.propose(data);
            }
            self.drain(i);
        }
    }

    fn compact(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            let applied = node.raft.log().applied();
            if applied > node.raft.log().snapshot().index {
                let _ = node.raft.compact(applied, vec![0x5a; 40]);
            }
        }
        self.drain(i);
    }

    /// A deterministic start: a leader, entries, snapshots on every node.
    fn warm_up(&mut self) {
        for _ in 0..100 {
            for i in 0..IDS.len() {
                self.tick(i);
            }
            self.deliver(usize::MAX);
            if self.leader().is_some() {
                break;
            }
        }
        for k in 0..6u8 {
            self.propose(vec![k; 8]);
            self.deliver(usize::MAX);
        }
        for i in 0..IDS.len() {
            self.compact(i);
        }
        for k in 6..9u8 {
            self.propose(vec![k; 8]);
            self.deliver(usize::MAX);
        }
        self.check();
    }

    /// The properties of the module docs.
    fn check(&mut self) {
        for node in &mut self.nodes {
            let raft = &node.raft;
            if let Err(e) = raft.check_invariants() {
                panic!("node {}: invariant broken: {e}", raft.id());
            }
            let log = raft.log();
            assert!(
                log.committed() >= node.commit,
                "node {}: commit index went down from {} to {}",
                raft.id(),
                node.commit,
                log.committed()
            );
            node.commit = log.committed();
            let snap = log.snapshot().index;
            for (&index, &term) in node.committed.range(snap.saturating_add(1)..) {
                assert_eq!(
                    log.term(index),
                    Some(term),
                    "node {}: committed entry {index} (term {term}) changed",
                    raft.id()
                );
            }
        }
    }

    /// An arbitrary message for one of the nodes, from the input.
    fn message(&self, input: &mut Input<'_>) -> Message {
        let to = IDS.get(usize::from(input.pick(3))).copied().unwrap_or(1);
        let Some(target) = self.node(to).and_then(|i| self.nodes.get(i)) else {
            return Message {
                from: 1,
                to,
                term: 0,
                body: Body::TimeoutNow,
            };
        };
        let raft = &target.raft;
        let from = match input.pick(8) {
            0..=4 => IDS.get(usize::from(input.pick(3))).copied().unwrap_or(1),
            5 => STRANGER,
            6 => NO_NODE,
            _ => to,
        };
        let t = raft.term();
        let term = |input: &mut Input<'_>| -> Term {
            match input.pick(8) {
                0..=2 => t,
                3 => t.saturating_add(1),
                4 => t.saturating_sub(1),
                5 => t.saturating_add(u64::from(input.u8())),
                6 => Term::MAX,
                _ => input.u64(),
            }
        };
        let log = raft.log();
        let (last, commit, snap) = (log.last_index(), log.committed(), log.snapshot().index);
        let index = |input: &mut Input<'_>| -> Index {
            match input.pick(9) {
                0 => last,
                1 => last.saturating_add(1),
                2 => commit,
                3 => commit.saturating_sub(1),
                4 => snap,
                5 => 0,
                6 => Index::MAX,
                7 => input.u64(),
                _ => input.u64() % last.saturating_add(3),
            }
        };
        let msg_term = term(input);
        let entries = |input: &mut Input<'_>, prev: Index, prev_term: Term| -> Vec<Entry> {
            let contiguous = input.pick(4) != 0;
            let mut out = Vec::new();
            let mut entry_term = prev_term;
            for k in 0..input.pick(5) {
                let index = if contiguous {
                    prev.saturating_add(1).saturating_add(u64::from(k))
                } else {
                    index(input)
                };
                if input.pick(3) == 0 {
                    entry_term = term(input);
                }
                let payload = match input.pick(4) {
                    0 => Payload::Noop,
                    1 => {
                        let mut conf = Configuration::default();
                        for id in 1..=4 {
                            match input.pick(4) {
                                0 => {
                                    conf.voters.insert(id);
                                }
                                1 => {
                                    conf.learners.insert(id);
                                }
                                2 => {
                                    conf.outgoing.insert(id);
                                }
                                _ => {}
                            }
                        }
                        Payload::Config(conf)
                    }
                    _ => Payload::Command(vec![input.u8(); usize::from(input.pick(16))].into()),
                };
                out.push(Entry {
                    term: entry_term,
                    index,
                    payload,
                });
            }
            out
        };
        let body = match input.pick(14) {
            0 => {
                let (last_index, last_term) = (index(input), term(input));
                let (pre_vote, transfer) = (input.bool(), input.bool());
                // A transfer vote in either form: the earlier one (no
                // leader named) or a `TransferVote` naming a voter, a
                // stranger or nobody as the ordering leader.
                if transfer && input.bool() {
                    let leader = match input.pick(5) {
                        0..=2 => IDS.get(usize::from(input.pick(3))).copied().unwrap_or(1),
                        3 => STRANGER,
                        _ => NO_NODE,
                    };
                    Body::TransferVote {
                        last_index,
                        last_term,
                        leader,
                    }
                } else {
                    Body::RequestVote {
                        last_index,
                        last_term,
                        pre_vote,
                        transfer,
                    }
                }
            }
            1 => Body::RequestVoteResponse {
                granted: input.bool(),
                pre_vote: input.bool(),
            },
            2 | 9 | 10 => {
                let prev_index = index(input);
                let prev_term = if input.pick(4) == 0 {
                    term(input)
                } else {
                    log.term(prev_index).unwrap_or(0)
                };
                Body::AppendEntries {
                    prev_index,
                    prev_term,
                    entries: entries(input, prev_index, prev_term),
                    commit: index(input),
                }
            }
            3 => Body::AppendEntriesResponse {
                index: index(input),
                success: input.bool(),
                hint: if input.bool() {
                    Some((index(input), term(input)))
                } else {
                    None
                },
            },
            4 => Body::Heartbeat {
                commit: index(input),
                round: u64::from(input.u8()),
            },
            5 => Body::HeartbeatResponse {
                round: if input.bool() {
                    u64::from(input.u8())
                } else {
                    input.u64()
                },
            },
            6 => Body::TimeoutNow,
            // Follower reads (thesis §6.4.1): small contexts may match a
            // read the receiver has pending, large ones never do.
            12 => Body::ReadIndexRequest {
                ctx: if input.bool() {
                    u64::from(input.u8())
                } else {
                    input.u64()
                },
            },
            13 => Body::ReadIndexResponse {
                ctx: if input.bool() {
                    u64::from(input.pick(8))
                } else {
                    input.u64()
                },
                index: if input.bool() {
                    Some(index(input))
                } else {
                    None
                },
            },
            7 | 11 => {
                let config = match input.pick(3) {
                    0 => config(),
                    1 => Configuration::new([to]),
                    _ => Configuration::default(),
                };
                let meta = SnapshotMeta {
                    index: index(input),
                    term: term(input),
                    config,
                };
                let offset = match input.pick(4) {
                    0 => 0,
                    1 => u64::from(input.pick(16)) * 16,
                    2 => input.u64(),
                    _ => u64::from(input.u8()),
                };
                let len = usize::from(input.pick(33));
                Body::InstallSnapshot {
                    meta,
                    offset,
                    data: vec![input.u8(); len],
                    done: input.pick(4) == 0,
                }
            }
            _ => Body::InstallSnapshotResponse {
                index: index(input),
                next_offset: if input.bool() {
                    u64::from(input.u8())
                } else {
                    input.u64()
                },
                done: input.bool(),
                rejected: input.bool(),
            },
        };
        Message {
            from,
            to,
            term: msg_term,
            body,
        }
    }
}

/// Drives a warmed-up cluster with `data` (see the module docs); panics if
/// a property breaks.
pub fn raft_step(data: &[u8]) {
    let mut input = Input { data };
    let mut cluster = Cluster::new();
    cluster.warm_up();
    while !input.is_empty() {
        match input.pick(12) {
            0..=4 => {
                let m = cluster.message(&mut input);
                cluster.step(m);
            }
            5 => {
                let i = usize::from(input.pick(3));
                for _ in 0..=input.pick(4) {
                    cluster.tick(i);
                }
            }
            6 => {
                let n = usize::from(input.pick(16)) + 1;
                cluster.deliver(n);
            }
            7 => {
                let k = input.u8();
                cluster.propose(vec![k; 4]);
            }
            8 => {
                // The network loses some messages.
                for _ in 0..=input.pick(4) {
                    cluster.queue.pop_front();
                }
            }
            9 => {
                let i = usize::from(input.pick(3));
                cluster.compact(i);
            }
            10 => {
                // The runtime pauses or resumes a node's apply (its apply
                // backlog is full, then drained).
                let i = usize::from(input.pick(3));
                let paused = input.bool();
                if let Some(node) = cluster.nodes.get_mut(i) {
                    node.raft.set_apply_paused(paused);
                }
                cluster.drain(i);
            }
            _ => {
                // A node's state machine halts (for good), now and then.
                let i = usize::from(input.pick(3));
                if input.pick(4) == 0 {
                    if let Some(node) = cluster.nodes.get_mut(i) {
                        node.raft.set_halted();
                    }
                    cluster.drain(i);
                }
            }
        }
        cluster.check();
    }
}

/// Inputs that exercise the harness's operations (the seed corpus).
pub(super) fn seeds() -> Vec<Vec<u8>> {
    vec![
        // Quiet: ticks and deliveries only.
        [5u8, 0, 3, 6, 15, 5, 1, 3, 6, 15, 5, 2, 3, 6, 15].repeat(4),
        // Proposals, deliveries, a compaction, losses.
        vec![
            7, 1, 6, 15, 7, 2, 6, 15, 9, 0, 8, 2, 5, 0, 3, 6, 15, 7, 3, 6, 15,
        ],
        // A contiguous AppendEntries from node 2 to node 1 at its term.
        vec![0, 0, 1, 0, 9, 0, 1, 2, 1, 1, 1, 2, 0, 6, 15],
        // A snapshot chunk from a member, and one from the stranger.
        vec![
            0, 1, 0, 0, 7, 0, 0, 0, 0, 0, 0, 4, 1, 0, 5, 0, 11, 0, 0, 0, 0, 0, 0,
        ],
        // A heartbeat at the last term from the stranger.
        vec![0, 2, 5, 6, 4, 0, 3],
        // The leader's apply paused while proposals commit, then resumed;
        // a node halts while the others go on.
        vec![
            10, 0, 1, 10, 1, 1, 10, 2, 1, 7, 4, 6, 15, 7, 5, 6, 15, 10, 0, 0, 10, 1, 0, 10, 2, 0,
            11, 1, 0, 5, 0, 3, 6, 15, 7, 6, 6, 15, 5, 2, 3, 6, 15,
        ],
    ]
}
