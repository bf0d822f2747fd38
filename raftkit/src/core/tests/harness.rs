//! A small harness for the paper tests: nodes built from given logs and
//! terms, and an in-memory network of cores.
//!
//! The harness honours the persistence contract of [`Ready`]: it takes a
//! Ready, treats its writes as instantly durable, calls
//! [`Raft::on_persisted`] with the Ready's marker, and only then delivers
//! both `messages` and `persisted_messages`. Tests that need to look at the
//! contract itself (what may leave before persistence) use
//! [`Raft::ready`] directly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::core::{
    Body, Config, Configuration, Entry, HardState, Index, InstalledSnapshot, Message, NO_NODE,
    NodeId, Payload, Raft, ReadState, Restored, Role, SnapshotMeta, Term,
};

/// `T`, the election timeout of every test node (the default).
pub const T: u32 = 10;

/// The default parameters of node `id` (election timeout `T`, heartbeat
/// every 2 ticks, PreVote and CheckQuorum on).
pub fn config(id: NodeId) -> Config {
    let cfg = Config::new(id);
    assert_eq!(cfg.election_ticks, T);
    cfg
}

/// A no-op entry.
pub fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Noop,
    }
}

/// A command entry.
pub fn command(index: Index, term: Term, data: &[u8]) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(data.to_vec().into()),
    }
}

/// No-op entries at indexes 1, 2, ... with the given terms.
pub fn ents(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as Index + 1, t))
        .collect()
}

/// Durable state of a member of the cluster `voters` at `term` (no vote)
/// whose log holds entries of the given terms. The configuration comes from
/// an empty snapshot at index 0, so that the log is exactly `log`.
pub fn restored(voters: &[NodeId], term: Term, log: &[Term]) -> Restored {
    Restored {
        hard_state: HardState {
            term,
            vote: NO_NODE,
            commit: 0,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            config: Configuration::new(voters.iter().copied()),
        },
        snapshot_data: None,
        entries: ents(log),
    }
}

/// Node `id` of the cluster `voters`, at `term`, with a log of the given
/// terms, and parameters adjusted by `tweak`.
pub fn node_with(
    id: NodeId,
    voters: &[NodeId],
    term: Term,
    log: &[Term],
    tweak: impl Fn(&mut Config),
) -> Raft {
    let mut cfg = config(id);
    tweak(&mut cfg);
    Raft::new(cfg, restored(voters, term, log)).expect("valid config")
}

/// Node `id` of the cluster `voters`, at `term`, with a log of the given
/// terms and the default parameters.
pub fn node(id: NodeId, voters: &[NodeId], term: Term, log: &[Term]) -> Raft {
    node_with(id, voters, term, log, |_| {})
}

/// The `(index, term)` pairs of a node's in-memory log.
pub fn log_of(r: &Raft) -> Vec<(Index, Term)> {
    r.log()
        .entries()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

// ----- messages --------------------------------------------------------------

/// A message.
pub fn msg(from: NodeId, to: NodeId, term: Term, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// An AppendEntries.
pub fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (Index, Term),
    entries: Vec<Entry>,
    commit: Index,
) -> Message {
    msg(
        from,
        to,
        term,
        Body::AppendEntries {
            prev_index: prev.0,
            prev_term: prev.1,
            entries,
            commit,
        },
    )
}

/// A successful AppendEntries answer acknowledging up to `index`.
pub fn append_ok(from: NodeId, to: NodeId, term: Term, index: Index) -> Message {
    msg(
        from,
        to,
        term,
        Body::AppendEntriesResponse {
            index,
            success: true,
            hint: None,
        },
    )
}

/// A heartbeat.
pub fn heartbeat(from: NodeId, to: NodeId, term: Term, commit: Index) -> Message {
    msg(from, to, term, Body::Heartbeat { commit, round: 0 })
}

/// A RequestVote (not PreVote, not a transfer).
pub fn vote_req(from: NodeId, to: NodeId, term: Term, last: (Index, Term)) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVote {
            last_index: last.0,
            last_term: last.1,
            pre_vote: false,
            transfer: false,
        },
    )
}

/// A PreVote probe for `term`.
pub fn pre_vote_req(from: NodeId, to: NodeId, term: Term, last: (Index, Term)) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVote {
            last_index: last.0,
            last_term: last.1,
            pre_vote: true,
            transfer: false,
        },
    )
}

/// The read round the first heartbeat in `out` carries, if any.
pub fn heartbeat_round(out: &Out) -> Option<u64> {
    out.all().iter().find_map(|m| match m.body {
        Body::Heartbeat { round, .. } => Some(round),
        _ => None,
    })
}

/// An answer to a (pre-)vote request.
pub fn vote_resp(from: NodeId, to: NodeId, term: Term, granted: bool, pre_vote: bool) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVoteResponse { granted, pre_vote },
    )
}

// ----- driving one node ----------------------------------------------------

/// Everything a node asked for in one or more Readies.
#[derive(Debug, Default)]
pub struct Out {
    /// Messages that could leave at once.
    pub messages: Vec<Message>,
    /// Messages that could leave only after the writes were durable.
    pub persisted_messages: Vec<Message>,
    /// Entries written.
    pub entries: Vec<Entry>,
    /// Hard states written.
    pub hard_states: Vec<HardState>,
    /// Entries to apply.
    pub committed: Vec<Entry>,
    /// Read results.
    pub reads: Vec<ReadState>,
    /// Snapshots installed.
    pub snapshots: Vec<InstalledSnapshot>,
}

impl Out {
    /// Every message, those that could leave at once first.
    pub fn all(&self) -> Vec<Message> {
        self.messages
            .iter()
            .chain(&self.persisted_messages)
            .cloned()
            .collect()
    }

    /// The messages of one kind (see [`Body::kind`]).
    pub fn of_kind(&self, kind: &str) -> Vec<Message> {
        self.all()
            .into_iter()
            .filter(|m| m.body.kind() == kind)
            .collect()
    }

    fn absorb(&mut self, rd: crate::core::Ready) {
        self.messages.extend(rd.messages);
        self.persisted_messages.extend(rd.persisted_messages);
        self.entries.extend(rd.entries);
        self.hard_states.extend(rd.hard_state);
        self.committed.extend(rd.committed_entries);
        self.reads.extend(rd.reads);
        self.snapshots.extend(rd.snapshot);
    }
}

/// Takes every Ready the node has, treating each one's writes as instantly
/// durable (`on_persisted` is called before the next one is taken).
pub fn flush(r: &mut Raft) -> Out {
    let mut out = Out::default();
    let mut rounds = 0;
    while r.has_ready() {
        rounds += 1;
        assert!(rounds < 1000, "node {} never runs out of Readies", r.id());
        let rd = r.ready();
        let marker = rd.persist_marker;
        out.absorb(rd);
        r.on_persisted(marker);
    }
    out
}

/// Panics if a message that depends on durable state (a granted vote, an
/// acknowledgement of entries or of an installed snapshot) could leave before the
/// writes of its Ready were durable.
pub fn check_contract(out: &Out) {
    for m in &out.messages {
        let needs_persist = matches!(
            m.body,
            Body::RequestVoteResponse {
                granted: true,
                pre_vote: false
            } | Body::AppendEntriesResponse { .. }
                | Body::InstallSnapshotResponse { done: true, .. }
        );
        assert!(
            !needs_persist,
            "{} from {} to {} may leave before persistence: {m:?}",
            m.body.kind(),
            m.from,
            m.to
        );
    }
}

/// Steps `m` into `r` and flushes.
pub fn step(r: &mut Raft, m: Message) -> Out {
    r.step(m);
    flush(r)
}

/// The other voters of `r`'s configuration (both halves when joint).
pub fn peers(r: &Raft) -> Vec<NodeId> {
    let conf = r.config();
    let mut all: BTreeSet<NodeId> = conf.voters.clone();
    all.extend(conf.outgoing.iter().copied());
    all.into_iter().filter(|&id| id != r.id()).collect()
}

/// Ticks `r` until it starts campaigning (at most `2T` ticks); returns the
/// outputs of the last tick and the number of ticks taken.
pub fn tick_until_campaign(r: &mut Raft) -> (Out, u32) {
    let role = r.role();
    for n in 1..=2 * T {
        r.tick();
        let out = flush(r);
        if r.role() != role
            || !out.of_kind("RequestVote").is_empty()
            || !out.of_kind("PreVote").is_empty()
        {
            return (out, n);
        }
    }
    panic!("node {} did not campaign within 2T ticks", r.id());
}

/// Makes `r` a candidate: it times out and, with PreVote, every peer grants
/// its pre-vote. Returns the outputs of the last step.
pub fn make_candidate(r: &mut Raft) -> Out {
    let (mut out, _) = tick_until_campaign(r);
    if r.role() == Role::PreCandidate {
        let term = r.term() + 1;
        for p in peers(r) {
            out = step(r, vote_resp(p, r.id(), term, true, true));
            if r.role() != Role::PreCandidate {
                break;
            }
        }
    }
    let alone = peers(r).is_empty();
    assert!(
        r.role() == Role::Candidate || (alone && r.role() == Role::Leader),
        "node {} is not a candidate: {:?}",
        r.id(),
        r.role()
    );
    out
}

/// Makes `r` the leader: it campaigns and every peer grants. Returns the
/// outputs of the last step (the new leader's first AppendEntries).
pub fn make_leader(r: &mut Raft) -> Out {
    let mut out = make_candidate(r);
    let term = r.term();
    for p in peers(r) {
        out = step(r, vote_resp(p, r.id(), term, true, false));
        if r.role() == Role::Leader {
            break;
        }
    }
    assert_eq!(r.role(), Role::Leader, "node {} is not the leader", r.id());
    out
}

/// Makes `r` a leader whose no-op entry is committed: every peer
/// acknowledges the whole log. Returns the leader's last index.
pub fn make_settled_leader(r: &mut Raft) -> Index {
    make_leader(r);
    let (term, last) = (r.term(), r.log().last_index());
    for p in peers(r) {
        step(r, append_ok(p, r.id(), term, last));
    }
    assert_eq!(r.log().committed(), last, "the no-op did not commit");
    last
}

// ----- a network of cores ----------------------------------------------------

/// Decides the fate of a message in flight: `false` drops it; it may also
/// rewrite it.
pub type Filter = Box<dyn FnMut(&mut Message) -> bool>;

/// Cores connected by an in-memory network that delivers messages in the
/// order they were sent.
pub struct Cluster {
    /// The nodes.
    pub nodes: BTreeMap<NodeId, Raft>,
    /// Messages in flight.
    pub queue: VecDeque<Message>,
    /// Nodes cut off from everybody.
    pub isolated: BTreeSet<NodeId>,
    /// Drops or rewrites messages, when set.
    pub filter: Option<Filter>,
    /// Every message delivered, in order.
    pub delivered: Vec<Message>,
    /// Every message dropped, in order.
    pub dropped: Vec<Message>,
    /// Entries each node applied.
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Read results each node produced.
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Snapshots each node installed.
    pub installed: BTreeMap<NodeId, Vec<InstalledSnapshot>>,
    /// Messages each node sent before its writes were durable.
    pub early: BTreeMap<NodeId, Vec<Message>>,
}

impl Cluster {
    /// A new cluster of `voters`, bootstrapped, default parameters.
    pub fn new(voters: &[NodeId]) -> Self {
        Self::with(voters, |_| {})
    }

    /// A new cluster of `voters`, bootstrapped, with parameters adjusted by
    /// `tweak`.
    pub fn with(voters: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        let conf = Configuration::new(voters.iter().copied());
        Self::from_nodes(voters.iter().map(|&id| {
            let mut cfg = config(id);
            tweak(&mut cfg);
            (cfg, Restored::bootstrap(conf.clone()))
        }))
    }

    /// A cluster of nodes restored from the given state.
    pub fn from_nodes(nodes: impl IntoIterator<Item = (Config, Restored)>) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|(cfg, restored)| (cfg.id, Raft::new(cfg, restored).expect("valid config")))
            .collect();
        Cluster {
            nodes,
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            filter: None,
            delivered: Vec::new(),
            dropped: Vec::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            installed: BTreeMap::new(),
            early: BTreeMap::new(),
        }
    }

    /// A cluster of `voters` where node `voters[i]` is at `state[i].0` with
    /// a log of the terms `state[i].1`, with parameters adjusted by `tweak`.
    pub fn from_logs(
        voters: &[NodeId],
        state: &[(Term, &[Term])],
        tweak: impl Fn(&mut Config),
    ) -> Self {
        assert_eq!(voters.len(), state.len());
        Self::from_nodes(voters.iter().zip(state).map(|(&id, &(term, log))| {
            let mut cfg = config(id);
            tweak(&mut cfg);
            (cfg, restored(voters, term, log))
        }))
    }

    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &Raft {
        &self.nodes[&id]
    }

    /// Node `id`, mutably. Call [`Cluster::deliver`] after using it.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).expect("no such node")
    }

    /// Cuts `id` off from everybody.
    pub fn isolate(&mut self, id: NodeId) {
        self.isolated.insert(id);
    }

    /// Reconnects every node.
    pub fn heal(&mut self) {
        self.isolated.clear();
    }

    /// Takes every node's Readies and puts their messages in flight.
    pub fn flush_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let r = self.nodes.get_mut(&id).expect("node");
            let out = flush(r);
            check_contract(&out);
            self.early
                .entry(id)
                .or_default()
                .extend(out.messages.iter().cloned());
            self.applied
                .entry(id)
                .or_default()
                .extend(out.committed.iter().cloned());
            self.reads
                .entry(id)
                .or_default()
                .extend(out.reads.iter().cloned());
            self.installed
                .entry(id)
                .or_default()
                .extend(out.snapshots.iter().cloned());
            self.queue.extend(out.all());
        }
    }

    /// Delivers one message in flight, if any. Returns whether there was one.
    pub fn deliver_one(&mut self) -> bool {
        self.flush_all();
        let Some(mut m) = self.queue.pop_front() else {
            return false;
        };
        let cut = self.isolated.contains(&m.from) || self.isolated.contains(&m.to);
        let passes = !cut && self.filter.as_mut().is_none_or(|f| f(&mut m));
        if !passes || !self.nodes.contains_key(&m.to) {
            self.dropped.push(m);
            return true;
        }
        self.delivered.push(m.clone());
        self.nodes.get_mut(&m.to).expect("node").step(m);
        true
    }

    /// Delivers messages until none is in flight.
    pub fn deliver(&mut self) {
        let mut n = 0;
        while self.deliver_one() {
            n += 1;
            assert!(n < 1_000_000, "the network never goes quiet");
        }
    }

    /// Ticks node `id` once, then delivers.
    pub fn tick(&mut self, id: NodeId) {
        self.node_mut(id).tick();
        self.deliver();
    }

    /// Ticks every node once, `n` times, delivering after each round.
    pub fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node_mut(id).tick();
            }
            self.deliver();
        }
    }

    /// Ticks node `id` alone until it leads (at most a few election
    /// timeouts), delivering after each tick.
    pub fn elect(&mut self, id: NodeId) {
        self.deliver();
        for _ in 0..4 * T {
            self.tick(id);
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        panic!("node {id} was not elected: {:?}", self.node(id).status());
    }

    /// Proposes `data` on `id` and delivers.
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> (Index, Term) {
        let at = self
            .node_mut(id)
            .propose(data.to_vec())
            .expect("proposal accepted");
        self.deliver();
        at
    }

    /// The delivered messages matching `pred`.
    pub fn count(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.delivered.iter().filter(|m| pred(m)).count()
    }

    /// The nodes that are leaders.
    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect()
    }
}
