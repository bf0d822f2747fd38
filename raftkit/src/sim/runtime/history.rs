//! The history of typed client calls, and the checkers that judge it with
//! the user's own state machine as the sequential specification.
//!
//! A call is invoked and completed at points of one global event order
//! (`seq`, taken when the simulation records the event: the real-time order
//! of linearizability) and at virtual times (for reports). A write's
//! outcome is its encoded output, `Maybe` (the client never learned whether
//! it applied: it may or may not take effect, at any point after its
//! invocation) or `NotApplied` (the cluster said so). A read that never got
//! an answer constrains nothing and is left out.
//!
//! [`linearizable`]: some total order of the calls, consistent with their
//! real-time order, in which every completed call, applied in that order to
//! a fresh `S::default()`, gives exactly its observed encoded output
//! (Herlihy & Wing; the search is Wing & Gong's, with Lowe's memo of
//! (linearized set, state) pairs). Maybe-writes may be placed anywhere
//! after their invocation, or left out.
//!
//! `stale_reads`: a `Stale` read is not linearizable and is kept out of
//! the history; what it promises is checked instead (see there).
//!
//! `exactly_once`: compares what the replicas applied (the probe's
//! record, see `probe.rs`) with the calls: a command applied more often
//! than it was acknowledged plus left unknown was applied twice; one
//! applied less often than acknowledged was lost.

use std::collections::{BTreeMap, HashSet};

use super::exec::fnv;
use super::probe::Applies;
use crate::context::Ctx;
use crate::state_machine::{StateMachine, apply_encoded, query_encoded};

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A write command.
    Write,
    /// A read query.
    Read,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet completed.
    Pending,
    /// Answered with this encoded output.
    Ok(Vec<u8>),
    /// The client does not know whether it applied.
    Maybe,
    /// The cluster refused it: it was not applied and never will be.
    NotApplied,
}

/// One call.
#[derive(Clone, Debug)]
pub struct Call {
    /// The client that made it.
    pub client: usize,
    /// Read or write.
    pub kind: Kind,
    /// The encoded command or query.
    pub bytes: Vec<u8>,
    /// Its invocation in the global event order.
    pub invoked: u64,
    /// Its completion in the global event order (`None`: never learned).
    pub completed: Option<u64>,
    /// Virtual time of invocation and completion, in ms.
    pub at_ms: (u64, Option<u64>),
    /// The outcome.
    pub outcome: Outcome,
}

/// The history of one run.
#[derive(Default, Debug)]
pub struct History {
    calls: Vec<Call>,
    next_seq: u64,
}

impl History {
    /// Records an invocation; returns its handle.
    pub(crate) fn invoke(
        &mut self,
        client: usize,
        kind: Kind,
        bytes: Vec<u8>,
        at_ms: u64,
    ) -> usize {
        self.next_seq += 1;
        self.calls.push(Call {
            client,
            kind,
            bytes,
            invoked: self.next_seq,
            completed: None,
            at_ms: (at_ms, None),
            outcome: Outcome::Pending,
        });
        self.calls.len() - 1
    }

    /// Records a completion.
    pub(crate) fn complete(&mut self, call: usize, outcome: Outcome, at_ms: u64) {
        self.next_seq += 1;
        let seq = self.next_seq;
        if let Some(c) = self.calls.get_mut(call) {
            if matches!(outcome, Outcome::Ok(_)) {
                c.completed = Some(seq);
            }
            c.at_ms.1 = Some(at_ms);
            c.outcome = outcome;
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }
}

/// The verdict of [`linearizable`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists; the message names the calls that cannot be placed.
    Violation(String),
    /// The search gave up after its step budget (neither proven nor
    /// refuted).
    Undecided,
}

/// Checks `calls` for linearizability against `S` (see the module docs).
pub fn linearizable<S: StateMachine + Default>(calls: &[Call], budget: u64) -> Verdict {
    // The calls that take part: answered ones, and writes that may apply.
    let ops: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            matches!(
                (&c.outcome, c.kind),
                (Outcome::Ok(_), _) | (Outcome::Maybe | Outcome::Pending, Kind::Write)
            )
        })
        .collect();
    let required = ops
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Ok(_)))
        .count();
    let Ok(initial) = S::default().snapshot() else {
        return Verdict::Violation("the state machine cannot snapshot its initial state".into());
    };
    let mut search = Search::<S> {
        ops: &ops,
        memo: HashSet::new(),
        steps: 0,
        budget,
        deepest: 0,
        _sm: std::marker::PhantomData,
    };
    let mut done = vec![false; ops.len()];
    match search.dfs(&mut done, 0, required, initial) {
        Some(true) => Verdict::Linearizable,
        None => Verdict::Undecided,
        Some(false) => Verdict::Violation(format!(
            "no order of the {} calls explains the observed outputs with the state machine as the specification (at most {} of the {required} answered calls could be placed)",
            ops.len(),
            search.deepest
        )),
    }
}

struct Search<'a, S> {
    ops: &'a [&'a Call],
    memo: HashSet<(Vec<bool>, u64)>,
    steps: u64,
    budget: u64,
    deepest: usize,
    _sm: std::marker::PhantomData<fn() -> S>,
}

impl<S: StateMachine> Search<'_, S> {
    /// `Some(found)`, or `None` once the budget is spent.
    fn dfs(
        &mut self,
        done: &mut Vec<bool>,
        placed: usize,
        required: usize,
        state: Vec<u8>,
    ) -> Option<bool> {
        if placed >= required {
            return Some(true);
        }
        self.deepest = self.deepest.max(placed);
        if !self.memo.insert((done.clone(), fnv(&state))) {
            return Some(false);
        }
        self.steps += 1;
        if self.steps > self.budget {
            return None;
        }
        // A call can go next only if no pending call completed before it
        // was invoked.
        let horizon = (0..self.ops.len())
            .filter(|&i| !done[i])
            .filter_map(|i| self.ops[i].completed)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if done[i] || op.invoked > horizon {
                continue;
            }
            let Ok(mut sm) = S::restore(&state) else {
                return Some(false);
            };
            let (out, next) = match op.kind {
                Kind::Write => {
                    // The model runs handlers with a context of its own
                    // (index 0, term 0, time 0): the entry's real index and
                    // replicated time are not part of the history, so a
                    // workload whose results depend on `Ctx` (time-to-live
                    // expiry, `ctx.rng()`) cannot be judged by this model.
                    let out = apply_encoded(&mut sm, &mut Ctx::new(0, 0, 0), &op.bytes).ok();
                    let Ok(next) = sm.snapshot() else { continue };
                    (out, next)
                }
                Kind::Read => (
                    query_encoded(&sm, &Ctx::new(0, 0, 0), &op.bytes).ok(),
                    state.clone(),
                ),
            };
            let counts = match &op.outcome {
                Outcome::Ok(expected) => {
                    if out.as_ref() != Some(expected) {
                        continue;
                    }
                    1
                }
                _ => 0,
            };
            done[i] = true;
            let r = self.dfs(done, placed + counts, required, next);
            done[i] = false;
            match r {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

/// Checks exactly-once application (see the module docs): `Err` names the
/// first command applied more often than it may have been, or an
/// acknowledged one never applied.
pub(crate) fn exactly_once(calls: &[Call], applies: &Applies) -> Result<(), String> {
    let mut applied: BTreeMap<&[u8], u64> = BTreeMap::new();
    for a in applies.by_position.values() {
        *applied.entry(&a.command[..]).or_default() += 1;
    }
    // Positions must be contiguous from 1: a hole means no replica applied
    // that position, and the counts below would be short.
    let contiguous = applies
        .by_position
        .keys()
        .enumerate()
        .all(|(i, p)| *p == i as u64 + 1);
    let mut acked: BTreeMap<&[u8], u64> = BTreeMap::new();
    let mut maybe: BTreeMap<&[u8], u64> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.kind == Kind::Write) {
        match c.outcome {
            Outcome::Ok(_) => *acked.entry(&c.bytes[..]).or_default() += 1,
            Outcome::Maybe | Outcome::Pending => *maybe.entry(&c.bytes[..]).or_default() += 1,
            Outcome::NotApplied => {}
        }
    }
    for (cmd, n) in &applied {
        let allowed = acked.get(cmd).copied().unwrap_or(0) + maybe.get(cmd).copied().unwrap_or(0);
        if *n > allowed {
            return Err(format!(
                "a write was applied {n} times but submitted at most {allowed} times (acknowledged or unknown): a write applied twice (command bytes {cmd:02x?})"
            ));
        }
    }
    if contiguous {
        for (cmd, n) in &acked {
            let got = applied.get(cmd).copied().unwrap_or(0);
            if got < *n {
                return Err(format!(
                    "a write acknowledged {n} times was applied only {got} times by any replica: an acknowledged write was lost (command bytes {cmd:02x?})"
                ));
            }
        }
    }
    Ok(())
}

/// A `Stale` read as answered.
#[derive(Clone, Debug)]
pub struct StaleRead {
    /// The client that made it.
    pub client: usize,
    /// The replica that answered.
    pub node: crate::core::NodeId,
    /// The encoded query.
    pub query: Vec<u8>,
    /// The encoded answer.
    pub output: Vec<u8>,
    /// What the replica reported (`None`: it answered without a report,
    /// which is itself a violation).
    pub staleness: Option<crate::client::Staleness>,
}

/// Judges stale reads against what the replicas applied: `Err` names the
/// first read that breaks one of
///
/// 0. **reported**: the answer came with its [`Staleness`](crate::client::Staleness);
/// 1. **bound reported**: its `applied` is at most its `leader_commit`
///    (what `Staleness::behind` counts from);
/// 2. **a committed prefix, exactly the reported one**: the answer is the
///    query's answer, with `S` as the model, on the state after exactly
///    the writes of the group's log at indexes up to `applied` (every
///    committed write there, in log order, and none after). So a stale
///    read never sees an uncommitted or invented state, never misses a
///    write below the index it reports, and is as stale as it says (no
///    more: `applied` is at least what it saw).
///
/// Not checked: freshness (a stale read may lag without bound, which is
/// its contract) and monotonicity across replicas.
pub(crate) fn stale_reads<S: StateMachine + Default>(
    reads: &[StaleRead],
    applies: &Applies,
) -> Result<(), String> {
    if let Some(read) = reads.iter().find(|r| r.staleness.is_none()) {
        return Err(format!(
            "replica {:#x} answered client {}'s stale read {:02x?} without reporting its staleness",
            read.node, read.client, read.query
        ));
    }
    let mut order: Vec<(&StaleRead, crate::client::Staleness)> = reads
        .iter()
        .filter_map(|r| r.staleness.map(|s| (r, s)))
        .collect();
    order.sort_by_key(|(_, s)| s.applied);
    let mut positions = applies.by_position.iter().peekable();
    let mut expected = 1u64;
    let mut sm = S::default();
    for (read, s) in order {
        if s.applied > s.leader_commit {
            return Err(format!(
                "replica {:#x} reported a stale read at applied index {} past the leader's commit {} it reported",
                read.node, s.applied, s.leader_commit
            ));
        }
        while let Some((position, applied)) = positions.next_if(|(_, a)| a.index <= s.applied) {
            if *position != expected {
                // A hole in what the replicas applied: nothing to judge by.
                return Ok(());
            }
            expected += 1;
            let _ = apply_encoded(&mut sm, &mut Ctx::new(0, 0, 0), &applied.command);
        }
        let model = query_encoded(&sm, &Ctx::new(0, 0, 0), &read.query).ok();
        if model.as_ref() != Some(&read.output) {
            return Err(format!(
                "client {}'s stale read {:02x?} on replica {:#x} answered {:02x?} at applied index {}, but the state after the log's writes up to that index answers {:02x?}",
                read.client, read.query, read.node, read.output, s.applied, model
            ));
        }
    }
    Ok(())
}
