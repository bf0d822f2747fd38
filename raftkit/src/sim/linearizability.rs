//! A linearizability checker for key-value register histories.
//!
//! # What is checked
//!
//! A history is a set of [`Operation`]s, each with an invocation time and,
//! if the client learned the result, a completion time and an outcome. The
//! history is *linearizable* (Herlihy & Wing 1990) if every operation can be
//! assigned a single instant between its invocation and its completion such
//! that, replayed in the order of those instants, the operations produce
//! exactly the recorded outcomes on a sequential register per key: the value
//! of a key is an `Option<Value>`, initially `None`; `Put` sets it, `Get`
//! returns it, `Cas` swaps iff the current value equals `expected`.
//!
//! Times are virtual `u64` instants. Two operations whose intervals touch
//! (one's invocation equals the other's completion) are treated as
//! concurrent, which is the conservative choice: it can only make more
//! histories acceptable, never reject a correct one.
//!
//! An operation whose outcome is `None` (the client timed out, crashed or
//! was never answered) may have taken effect at any instant after its
//! invocation, or never. Following porcupine, it is modelled as completing at
//! +infinity with an outcome the model accepts whatever it is; "never took
//! effect" is then the linearization that places it after everything else.
//! Pending `Get`s have no effect on the state and are dropped.
//!
//! # Algorithm
//!
//! 1. **P-compositionality** (Herlihy & Wing 1990; Horn & Kroening 2015): a
//!    history is linearizable iff its restriction to each key is, because
//!    every operation touches exactly one key. The history is split by key
//!    and each part is checked on its own, which turns one search that is
//!    exponential in the total concurrency into several small ones.
//! 2. **Wing & Gong's search** (Wing & Gong 1993, "Testing and verifying
//!    concurrent objects") in the form Lowe gives it ("Testing for
//!    linearizability", Concurrency and Computation: Practice and Experience
//!    29(4), 2017), with *just-in-time linearization*: the invocation and
//!    completion events of one key are sorted by time into a doubly linked
//!    list (`entries`). The search walks the list from its head:
//!    - at a *call* entry, it tries to linearize that operation now: if the
//!      model accepts the operation's outcome in the current state, the
//!      operation's call and return entries are unlinked (dancing-links
//!      style, so that they can be relinked in O(1)), the operation and the
//!      previous state are pushed on an undo stack, and the walk restarts at
//!      the head; otherwise it moves on to the next entry (linearizing a
//!      later-invoked operation first);
//!    - at a *return* entry, the operation it belongs to has not been
//!      linearized, and every point at which it could be has been passed:
//!      the last choice is undone (pop, relink, restore the state) and the
//!      walk continues just after the undone call entry. An empty undo stack
//!      at that point means no linearization exists.
//!
//!    The search succeeds when the list is empty.
//! 3. **Memoization** (Lowe 2017, following the state-caching idea of
//!    Wing & Gong): the rest of the search depends only on *which*
//!    operations are linearized and on the model state, not on the order in
//!    which they were linearized. Each (set of linearized operations as a
//!    bitset, state) pair is recorded when first reached; a step that would
//!    reach a recorded pair is skipped as already explored. The cache is
//!    keyed by a Zobrist hash of the bitset (updated incrementally) mixed with
//!    the state, with full comparison on collision.
//!
//! # Invariants
//!
//! - The linked list holds exactly the call and return entries of the
//!   operations not yet linearized, in time order; an operation's call entry
//!   precedes its return entry (calls sort before returns at equal times).
//! - The undo stack holds the linearized operations in linearization order,
//!   each with the model state from before it; the current state is the
//!   result of replaying the stack from `None`; the bitset and its hash
//!   describe the set of operations on the stack.
//! - Every linearized operation was linearized before any remaining return
//!   entry, i.e. before the completion of every operation not yet
//!   linearized: this is what makes the order respect real time.
//! - Every (bitset, state) pair in the cache has been, or is being, fully
//!   explored.
//!
//! # Budget
//!
//! The search is exponential in the worst case (the problem is NP-complete,
//! Gibbons & Korach 1997). Each key's search stops after `budget` steps (one
//! step is one visit of a list entry) and the result is then
//! [`CheckResult::Unknown`]: the history was *not* checked, which callers
//! must treat as a failure, never as a pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A key of the key-value register.
pub type Key = u64;

/// A value stored under a key.
pub type Value = u64;

/// A reasonable default for the `budget` argument of [`check`]: ample for
/// histories of a few hundred operations per key with realistic concurrency,
/// which take a few thousand steps when linearizable. A step costs well
/// under a microsecond in an optimized build, so a key that exhausts this
/// budget costs under a second.
pub const DEFAULT_BUDGET: u64 = 10_000_000;

/// An operation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Read `key`.
    Get {
        /// The key read.
        key: Key,
    },
    /// Set `key` to `new` if its current value is `expected`.
    Cas {
        /// The key compared and maybe written.
        key: Key,
        /// The value the key must hold for the swap (`None`: absent).
        expected: Option<Value>,
        /// The value written on a successful swap.
        new: Value,
    },
}

impl KvOp {
    /// The key this operation touches.
    pub fn key(&self) -> Key {
        match *self {
            KvOp::Put { key, .. } | KvOp::Get { key } | KvOp::Cas { key, .. } => key,
        }
    }
}

/// What a client learned about a completed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvOutcome {
    /// A `Put` was applied.
    Put,
    /// A `Get` returned this value (`None`: the key was absent).
    Get(Option<Value>),
    /// A `Cas` swapped (`true`) or found a different value (`false`).
    Cas(bool),
}

/// One operation of a history: who asked for what, when, and what they learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued the operation (only used in explanations).
    pub client: u64,
    /// The operation.
    pub op: KvOp,
    /// Virtual time at which the client invoked the operation.
    pub invoke: u64,
    /// Virtual completion time and outcome, or `None` if the client never
    /// learned the result (timeout, crash): the operation may then have
    /// taken effect at any time after `invoke`, or never.
    pub outcome: Option<(u64, KvOutcome)>,
}

impl Operation {
    /// The key this operation touches.
    pub fn key(&self) -> Key {
        self.op.key()
    }
}

/// Formats as `client 3: put(k1, 17) [invoke 100, complete 250]`.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}: ", self.client)?;
        let result = self.outcome.map(|(_, outcome)| outcome);
        match (self.op, result) {
            (KvOp::Put { key, value }, _) => write!(f, "put(k{key}, {value})")?,
            (KvOp::Get { key }, result) => {
                write!(f, "get(k{key}) -> ")?;
                match result {
                    Some(KvOutcome::Get(value)) => write!(f, "{}", ValueFmt(value))?,
                    Some(other) => write!(f, "{other:?}")?,
                    None => write!(f, "?")?,
                }
            }
            (KvOp::Cas { key, expected, new }, result) => {
                write!(f, "cas(k{key}, {} -> {new}) -> ", ValueFmt(expected))?;
                match result {
                    Some(KvOutcome::Cas(true)) => write!(f, "swapped")?,
                    Some(KvOutcome::Cas(false)) => write!(f, "failed")?,
                    Some(other) => write!(f, "{other:?}")?,
                    None => write!(f, "?")?,
                }
            }
        }
        match self.outcome {
            Some((complete, _)) => write!(f, " [invoke {}, complete {complete}]", self.invoke),
            None => write!(f, " [invoke {}, never completed]", self.invoke),
        }
    }
}

/// Formats an `Option<Value>` as the value or `none`.
struct ValueFmt(Option<Value>);

impl fmt::Display for ValueFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "none"),
        }
    }
}

/// The index of an operation in a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

/// A recorder for a history: invoke operations, later complete them (or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` invoked `op` at `time`; the operation stays
    /// indeterminate until [`History::complete`] is called for it.
    pub fn invoke(&mut self, client: u64, op: KvOp, time: u64) -> OpId {
        self.push(Operation {
            client,
            op,
            invoke: time,
            outcome: None,
        })
    }

    /// Records that the operation `id` completed at `time` with `outcome`.
    ///
    /// # Panics
    ///
    /// If `id` is not in this history or was already completed.
    pub fn complete(&mut self, id: OpId, time: u64, outcome: KvOutcome) {
        let op = &mut self.ops[id.0];
        assert!(op.outcome.is_none(), "operation {id:?} completed twice");
        op.outcome = Some((time, outcome));
    }

    /// Appends a fully described operation.
    pub fn push(&mut self, op: Operation) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// The operations recorded so far, in invocation-recording order.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// The number of operations recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Consumes the history, returning its operations.
    pub fn into_ops(self) -> Vec<Operation> {
        self.ops
    }

    /// Checks this history; see [`check`].
    pub fn check(&self, budget: u64) -> CheckResult {
        check(&self.ops, budget)
    }
}

/// The verdict of the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's history is linearizable.
    Linearizable,
    /// The history of `key` is not linearizable.
    NotLinearizable {
        /// The first key (in key order) whose history is not linearizable.
        key: Key,
        /// A readable account: the operations of that key and the longest
        /// linearizable prefix the search found.
        explanation: String,
    },
    /// The search for `key` ran out of budget: the history was not checked.
    /// This is a failure to check, never a pass.
    Unknown {
        /// The first key (in key order) whose search ran out of budget.
        key: Key,
    },
}

impl CheckResult {
    /// Whether the history was proved linearizable (`Unknown` is not).
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::NotLinearizable { explanation, .. } => f.write_str(explanation),
            CheckResult::Unknown { key } => write!(
                f,
                "unknown: the search for key k{key} ran out of budget (not checked)"
            ),
        }
    }
}

/// Checks a whole history, key by key.
///
/// `budget` is the maximum number of search steps spent on each key. If some
/// key's history is not linearizable, the result names the smallest such
/// key; otherwise, if some key's search ran out of budget, the result is
/// `Unknown` for the smallest such key.
///
/// # Panics
///
/// If the history is malformed: an operation completes before it is
/// invoked, or its outcome does not match its kind (a `Get` outcome for a
/// `Put`, ...).
pub fn check(history: &[Operation], budget: u64) -> CheckResult {
    let mut by_key: BTreeMap<Key, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key()).or_default().push(op);
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check_partition(key, &ops, budget) {
            CheckResult::Linearizable => {}
            CheckResult::Unknown { key } => {
                unknown.get_or_insert(key);
            }
            violation @ CheckResult::NotLinearizable { .. } => return violation,
        }
    }
    match unknown {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Linearizable,
    }
}

/// Checks the operations of `history` on `key` only (the others are
/// ignored), spending at most `budget` search steps.
///
/// # Panics
///
/// As [`check`].
pub fn check_key(history: &[Operation], key: Key, budget: u64) -> CheckResult {
    let ops: Vec<&Operation> = history.iter().filter(|op| op.key() == key).collect();
    check_partition(key, &ops, budget)
}

/// Applies `op` to `state`, returning the new state if the model accepts the
/// operation's recorded outcome (an unknown outcome is always accepted).
fn step(state: Option<Value>, op: &Operation) -> Option<Option<Value>> {
    let outcome = op.outcome.map(|(_, outcome)| outcome);
    match (op.op, outcome) {
        (KvOp::Put { value, .. }, _) => Some(Some(value)),
        (KvOp::Get { .. }, Some(KvOutcome::Get(read))) => (read == state).then_some(state),
        (KvOp::Get { .. }, _) => Some(state),
        (KvOp::Cas { expected, new, .. }, outcome) => {
            let swaps = state == expected;
            match outcome {
                Some(KvOutcome::Cas(swapped)) if swapped != swaps => None,
                _ => Some(if swaps { Some(new) } else { state }),
            }
        }
    }
}

/// Panics if `op` is malformed (see [`check`]).
fn validate(op: &Operation) {
    let Some((complete, outcome)) = op.outcome else {
        return;
    };
    assert!(
        complete >= op.invoke,
        "malformed history: operation completes before it is invoked: {op}"
    );
    let matches = matches!(
        (op.op, outcome),
        (KvOp::Put { .. }, KvOutcome::Put)
            | (KvOp::Get { .. }, KvOutcome::Get(_))
            | (KvOp::Cas { .. }, KvOutcome::Cas(_))
    );
    assert!(
        matches,
        "malformed history: outcome {outcome:?} does not match operation {op:?}"
    );
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit hash.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a model state, mixed into the Zobrist hash of the bitset.
fn state_hash(state: Option<Value>) -> u64 {
    match state {
        None => 0x5bd1_e995_0000_0001,
        Some(value) => mix64(value ^ 0xa076_1d64_78bd_642f),
    }
}

/// An explored pair: the set of linearized operations (a bitset over the
/// key's operations) and the model state after them.
type Explored = (Box<[u64]>, Option<Value>);

/// The memo of explored (linearized set, state) pairs, bucketed by hash.
#[derive(Default)]
struct Cache {
    buckets: HashMap<u64, Vec<Explored>>,
}

impl Cache {
    /// Records the pair; returns `false` if it was already recorded.
    fn insert(&mut self, hash: u64, bits: &[u64], state: Option<Value>) -> bool {
        let bucket = self.buckets.entry(hash).or_default();
        if bucket.iter().any(|(b, s)| *s == state && **b == *bits) {
            return false;
        }
        bucket.push((bits.into(), state));
        true
    }
}

/// The head sentinel of the entry list.
const HEAD: usize = 0;

/// Checks the operations of one key (all of `ops` must be on `key`).
fn check_partition(key: Key, ops: &[&Operation], budget: u64) -> CheckResult {
    search(key, ops, budget).0
}

/// The search of [`check_partition`]; also returns the number of steps taken.
fn search(key: Key, ops: &[&Operation], budget: u64) -> (CheckResult, u64) {
    ops.iter().for_each(|op| validate(op));
    // Pending gets have no effect and no observed result: drop them.
    let ops: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|op| op.outcome.is_some() || !matches!(op.op, KvOp::Get { .. }))
        .collect();
    let n = ops.len();
    if n == 0 {
        return (CheckResult::Linearizable, 0);
    }

    // Events sorted by (time, calls before returns, op index); pending
    // operations return at +infinity, after every real time.
    let mut events: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((u128::from(op.invoke), false, i));
        let ret = op
            .outcome
            .map_or(u128::from(u64::MAX) + 1, |(t, _)| u128::from(t));
        events.push((ret, true, i));
    }
    events.sort_unstable();

    // Nodes: 0 is the head sentinel, 1..=2n the events, 2n+1 the tail sentinel.
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.wrapping_sub(1)).collect();
    next[tail] = tail;
    prev[HEAD] = HEAD;
    let mut node_op = vec![usize::MAX; tail + 1];
    let mut is_call = vec![false; tail + 1];
    let mut ret_node = vec![0; n];
    for (pos, &(_, is_return, i)) in events.iter().enumerate() {
        let node = pos + 1;
        node_op[node] = i;
        is_call[node] = !is_return;
        if is_return {
            ret_node[i] = node;
        }
    }
    let zobrist: Vec<u64> = (0..n as u64)
        .map(|i| mix64(i ^ 0x2545_f491_4f6c_dd1d))
        .collect();

    let mut state: Option<Value> = None;
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut bits_hash = 0u64;
    let mut cache = Cache::default();
    // The undo stack: (call node, state before the operation).
    let mut stack: Vec<(usize, Option<Value>)> = Vec::with_capacity(n);
    let mut longest: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut entry = next[HEAD];

    while next[HEAD] != tail {
        steps += 1;
        if steps > budget {
            return (CheckResult::Unknown { key }, steps);
        }
        debug_assert_ne!(entry, tail, "the last entry of the list is a return");
        let i = node_op[entry];
        if is_call[entry] {
            let linearized = step(state, ops[i]).and_then(|new_state| {
                let hash = bits_hash ^ zobrist[i];
                bits[i / 64] |= 1 << (i % 64);
                if cache.insert(hash ^ state_hash(new_state), &bits, new_state) {
                    Some((new_state, hash))
                } else {
                    bits[i / 64] &= !(1 << (i % 64));
                    None
                }
            });
            match linearized {
                Some((new_state, hash)) => {
                    stack.push((entry, state));
                    state = new_state;
                    bits_hash = hash;
                    // Lift the call entry, then its return entry.
                    let ret = ret_node[i];
                    for node in [entry, ret] {
                        next[prev[node]] = next[node];
                        prev[next[node]] = prev[node];
                    }
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(call, _)| node_op[call]).collect();
                    }
                    entry = next[HEAD];
                }
                None => entry = next[entry],
            }
        } else {
            // The return of an unlinearized operation: it cannot be
            // linearized any later, so undo the last choice.
            let Some((call, old_state)) = stack.pop() else {
                let explanation = explain(key, &ops, &longest);
                return (CheckResult::NotLinearizable { key, explanation }, steps);
            };
            let j = node_op[call];
            state = old_state;
            bits[j / 64] &= !(1 << (j % 64));
            bits_hash ^= zobrist[j];
            // Relink in the reverse order of lifting: the return, then the call.
            for node in [ret_node[j], call] {
                next[prev[node]] = node;
                prev[next[node]] = node;
            }
            entry = next[call];
        }
    }
    (CheckResult::Linearizable, steps)
}

/// Describes why the history of `key` is not linearizable.
fn explain(key: Key, ops: &[&Operation], longest: &[usize]) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let mut by_invoke: Vec<usize> = (0..ops.len()).collect();
    by_invoke.sort_by_key(|&i| (ops[i].invoke, i));
    let _ = writeln!(
        out,
        "history of key k{key} is not linearizable ({} operations, pending gets omitted)",
        ops.len()
    );
    let _ = writeln!(out, "operations by invocation time:");
    for &i in &by_invoke {
        let _ = writeln!(out, "  {}", ops[i]);
    }
    let _ = writeln!(
        out,
        "longest linearizable prefix found ({} of {} operations), with the value after each:",
        longest.len(),
        ops.len()
    );
    let mut state = None;
    for (n, &i) in longest.iter().enumerate() {
        state = step(state, ops[i]).expect("the prefix was accepted by the model");
        let _ = writeln!(
            out,
            "  {:>3}. {}  => k{key} = {}",
            n + 1,
            ops[i],
            ValueFmt(state)
        );
    }
    let mut in_prefix = vec![false; ops.len()];
    longest.iter().for_each(|&i| in_prefix[i] = true);
    let _ = writeln!(out, "not linearized after that prefix:");
    for &i in by_invoke.iter().filter(|&&i| !in_prefix[i]) {
        let _ = writeln!(out, "  {}", ops[i]);
    }
    out
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
