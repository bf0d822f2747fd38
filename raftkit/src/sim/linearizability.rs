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
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};

    fn put(client: u64, key: Key, value: Value, invoke: u64, complete: u64) -> Operation {
        Operation {
            client,
            op: KvOp::Put { key, value },
            invoke,
            outcome: Some((complete, KvOutcome::Put)),
        }
    }

    fn pending_put(client: u64, key: Key, value: Value, invoke: u64) -> Operation {
        Operation {
            client,
            op: KvOp::Put { key, value },
            invoke,
            outcome: None,
        }
    }

    fn get(client: u64, key: Key, read: Option<Value>, invoke: u64, complete: u64) -> Operation {
        Operation {
            client,
            op: KvOp::Get { key },
            invoke,
            outcome: Some((complete, KvOutcome::Get(read))),
        }
    }

    fn cas(
        client: u64,
        key: Key,
        expected: Option<Value>,
        new: Value,
        swapped: bool,
        (invoke, complete): (u64, u64),
    ) -> Operation {
        Operation {
            client,
            op: KvOp::Cas { key, expected, new },
            invoke,
            outcome: Some((complete, KvOutcome::Cas(swapped))),
        }
    }

    fn assert_linearizable(history: &[Operation]) {
        let result = check(history, DEFAULT_BUDGET);
        assert_eq!(result, CheckResult::Linearizable, "{result}");
    }

    fn assert_violation(history: &[Operation], expected_key: Key) -> String {
        match check(history, DEFAULT_BUDGET) {
            CheckResult::NotLinearizable { key, explanation } => {
                assert_eq!(key, expected_key, "{explanation}");
                explanation
            }
            other => panic!("expected a violation on k{expected_key}, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn accepts_sequential_history() {
        assert_linearizable(&[
            get(1, 1, None, 0, 5),
            put(1, 1, 10, 10, 20),
            get(2, 1, Some(10), 30, 40),
            cas(1, 1, Some(10), 11, true, (50, 60)),
            get(2, 1, Some(11), 70, 80),
            cas(3, 1, Some(10), 12, false, (90, 100)),
            cas(3, 1, None, 13, false, (110, 120)),
            get(1, 1, Some(11), 130, 140),
        ]);
    }

    #[test]
    fn accepts_concurrent_histories() {
        // put(20) is concurrent with put(10): either order is possible, and
        // the concurrent get may see either value.
        let base = [put(1, 1, 10, 0, 10), put(2, 1, 20, 5, 15)];
        for read in [Some(10), Some(20), None] {
            let mut history = base.to_vec();
            history.push(get(3, 1, read, 0, 12));
            assert_linearizable(&history);
        }
        // After both puts complete, the value is whichever was linearized last.
        for read in [10, 20] {
            let mut history = base.to_vec();
            history.push(get(3, 1, Some(read), 20, 30));
            history.push(get(4, 1, Some(read), 40, 50));
            assert_linearizable(&history);
        }
        // A read of None is only possible concurrently with the first put.
        let mut history = base.to_vec();
        history.push(get(3, 1, None, 20, 30));
        assert_violation(&history, 1);
    }

    #[test]
    fn accepts_history_needing_backtracking() {
        // Linearizing the calls in invocation order (put 10, put 20) makes
        // the read of 10 fail; the search must undo put 20 and retry.
        assert_linearizable(&[
            put(1, 1, 10, 0, 100),
            put(2, 1, 20, 1, 100),
            get(3, 1, Some(10), 50, 60),
            get(3, 1, Some(20), 110, 120),
        ]);
    }

    #[test]
    fn memoization_bounds_the_search() {
        // Twelve concurrent puts and a concurrent read of a value never
        // written: 12! orders of the puts, but only 2^12 x 13 distinct
        // (linearized set, value) pairs to explore before giving up.
        let mut history: Vec<Operation> = (0..12).map(|i| put(i, 1, i + 1, 0, 100)).collect();
        history.push(get(99, 1, Some(1_000), 0, 100));
        let ops: Vec<&Operation> = history.iter().collect();
        let (result, steps) = search(1, &ops, DEFAULT_BUDGET);
        assert!(
            matches!(result, CheckResult::NotLinearizable { key: 1, .. }),
            "{result}"
        );
        assert!(steps < 2_000_000, "{steps} steps");
    }

    #[test]
    fn equal_times_are_concurrent() {
        // The get is invoked exactly when the put completes: it may precede it.
        assert_linearizable(&[put(1, 1, 10, 0, 10), get(2, 1, None, 10, 20)]);
        // One instant later it may not.
        assert_violation(&[put(1, 1, 10, 0, 10), get(2, 1, None, 11, 20)], 1);
    }

    #[test]
    fn accepts_indeterminate_put_never_observed() {
        assert_linearizable(&[
            put(1, 1, 10, 0, 10),
            pending_put(2, 1, 20, 20),
            get(3, 1, Some(10), 30, 40),
            get(1, 1, Some(10), 50, 60),
            get(3, 1, Some(10), 1_000, 1_010),
        ]);
    }

    #[test]
    fn accepts_indeterminate_put_observed_later() {
        assert_linearizable(&[
            put(1, 1, 10, 0, 10),
            pending_put(2, 1, 20, 20),
            get(3, 1, Some(10), 30, 40),
            get(1, 1, Some(20), 50, 60),
            get(3, 1, Some(20), 1_000, 1_010),
        ]);
    }

    #[test]
    fn rejects_indeterminate_put_observed_then_undone() {
        // Once a pending put is observed it has taken effect: the old value
        // cannot come back without another write.
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                pending_put(2, 1, 20, 20),
                get(3, 1, Some(20), 30, 40),
                get(1, 1, Some(10), 50, 60),
            ],
            1,
        );
    }

    #[test]
    fn rejects_indeterminate_put_observed_before_invocation() {
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                get(3, 1, Some(20), 30, 40),
                pending_put(2, 1, 20, 50),
            ],
            1,
        );
    }

    #[test]
    fn pending_gets_are_ignored() {
        let pending_get = Operation {
            client: 9,
            op: KvOp::Get { key: 1 },
            invoke: 0,
            outcome: None,
        };
        assert_linearizable(&[pending_get, put(1, 1, 10, 5, 10)]);
    }

    #[test]
    fn indeterminate_cas_may_or_may_not_apply() {
        let pending_cas = Operation {
            client: 2,
            op: KvOp::Cas {
                key: 1,
                expected: Some(10),
                new: 20,
            },
            invoke: 20,
            outcome: None,
        };
        let base = [put(1, 1, 10, 0, 10), pending_cas];
        for read in [10, 20] {
            let mut history = base.to_vec();
            history.push(get(3, 1, Some(read), 30, 40));
            assert_linearizable(&history);
        }
    }

    #[test]
    fn rejects_stale_read() {
        let explanation = assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                put(1, 1, 20, 20, 30),
                get(2, 1, Some(10), 40, 50),
            ],
            1,
        );
        assert!(explanation.contains("client 2: get(k1) -> 10 [invoke 40, complete 50]"));
    }

    #[test]
    fn rejects_lost_write() {
        // The put of 20 completed, yet every later read returns the previous value.
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                get(2, 1, Some(10), 15, 25),
                put(1, 1, 20, 20, 30),
                get(2, 1, Some(10), 26, 35),
                get(3, 1, Some(10), 40, 50),
                get(2, 1, Some(10), 60, 70),
            ],
            1,
        );
    }

    #[test]
    fn rejects_read_of_value_never_written() {
        assert_violation(&[put(1, 1, 10, 0, 10), get(2, 1, Some(99), 5, 50)], 1);
        assert_violation(&[get(2, 1, Some(99), 5, 50)], 1);
    }

    #[test]
    fn rejects_cas_success_on_wrong_expected_value() {
        assert_violation(
            &[put(1, 1, 10, 0, 10), cas(2, 1, Some(7), 30, true, (20, 30))],
            1,
        );
        // And a cas that failed although the expected value was there.
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                cas(2, 1, Some(10), 30, false, (20, 30)),
            ],
            1,
        );
        // A successful cas writes its new value.
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                cas(2, 1, Some(10), 30, true, (20, 30)),
                get(3, 1, Some(10), 40, 50),
            ],
            1,
        );
    }

    #[test]
    fn rejects_reads_out_of_real_time_order() {
        // A long put(20) is concurrent with both reads, but once client 2 has
        // seen 20, client 3's later read cannot see 10 again.
        assert_violation(
            &[
                put(1, 1, 10, 0, 10),
                put(1, 1, 20, 20, 100),
                get(2, 1, Some(20), 30, 40),
                get(3, 1, Some(10), 50, 60),
            ],
            1,
        );
        // The same reads, overlapping each other, are fine.
        assert_linearizable(&[
            put(1, 1, 10, 0, 10),
            put(1, 1, 20, 20, 100),
            get(2, 1, Some(20), 30, 55),
            get(3, 1, Some(10), 50, 60),
        ]);
    }

    #[test]
    fn keys_are_independent_and_the_failing_key_is_reported() {
        let history = [
            put(1, 1, 10, 0, 10),
            get(2, 2, None, 20, 30),
            put(1, 3, 30, 0, 10),
            put(1, 3, 31, 20, 30),
            get(2, 3, Some(30), 40, 50),
            get(2, 1, Some(10), 40, 50),
        ];
        let explanation = assert_violation(&history, 3);
        assert!(explanation.contains("k3"), "{explanation}");
        assert!(!explanation.contains("k1"), "{explanation}");
        assert!(check_key(&history, 1, DEFAULT_BUDGET).is_linearizable());
        assert!(check_key(&history, 2, DEFAULT_BUDGET).is_linearizable());
        assert!(!check_key(&history, 3, DEFAULT_BUDGET).is_linearizable());
    }

    #[test]
    fn explanation_is_readable() {
        let history = [
            put(3, 1, 17, 100, 250),
            get(4, 1, Some(5), 300, 310),
            cas(5, 1, None, 9, false, (260, 270)),
        ];
        let explanation = assert_violation(&history, 1);
        for line in [
            "client 3: put(k1, 17) [invoke 100, complete 250]",
            "client 4: get(k1) -> 5 [invoke 300, complete 310]",
            "client 5: cas(k1, none -> 9) -> failed [invoke 260, complete 270]",
            "longest linearizable prefix found (2 of 3 operations)",
            "=> k1 = 17",
        ] {
            assert!(
                explanation.contains(line),
                "missing {line:?} in:\n{explanation}"
            );
        }
        let pending = pending_put(7, 2, 1, 5);
        assert_eq!(
            pending.to_string(),
            "client 7: put(k2, 1) [invoke 5, never completed]"
        );
    }

    #[test]
    fn history_recorder() {
        let mut history = History::new();
        let a = history.invoke(1, KvOp::Put { key: 1, value: 10 }, 0);
        let b = history.invoke(2, KvOp::Get { key: 1 }, 5);
        let _lost = history.invoke(3, KvOp::Put { key: 1, value: 30 }, 6);
        history.complete(b, 20, KvOutcome::Get(Some(10)));
        history.complete(a, 10, KvOutcome::Put);
        assert_eq!(history.len(), 3);
        assert!(history.check(DEFAULT_BUDGET).is_linearizable());
        let c = history.invoke(2, KvOp::Get { key: 1 }, 30);
        history.complete(c, 40, KvOutcome::Get(Some(20)));
        assert!(!history.check(DEFAULT_BUDGET).is_linearizable());
    }

    #[test]
    fn running_out_of_budget_is_unknown() {
        let history = [put(1, 1, 10, 0, 10), get(2, 1, Some(10), 20, 30)];
        assert_eq!(check(&history, 1), CheckResult::Unknown { key: 1 });
        assert!(!check(&history, 1).is_linearizable());
        assert!(check(&history, 100).is_linearizable());
        // A violation elsewhere takes precedence over an unknown.
        let mut history = history.to_vec();
        history.push(get(2, 2, Some(1), 0, 1));
        assert!(matches!(
            check(&history, 3),
            CheckResult::NotLinearizable { key: 2, .. }
        ));
    }

    #[test]
    #[should_panic(expected = "completes before it is invoked")]
    fn malformed_times_panic() {
        check(&[put(1, 1, 10, 10, 5)], DEFAULT_BUDGET);
    }

    /// A valid history: operations run against a sequential model at
    /// increasing linearization points, each wrapped in a random window that
    /// does not overlap the client's previous operation. About 5% of the
    /// writes are indeterminate, and half of those never take effect.
    fn random_valid_history(
        rng: &mut StdRng,
        keys: u64,
        ops_per_key: usize,
        clients: usize,
        max_window: u64,
    ) -> Vec<Operation> {
        let mut state: BTreeMap<Key, Option<Value>> = (0..keys).map(|k| (k, None)).collect();
        let mut remaining: Vec<usize> = vec![ops_per_key; keys as usize];
        let mut busy_until = vec![0u64; clients];
        let mut next_value = 1;
        let mut written: Vec<Value> = Vec::new();
        let mut history = Vec::new();
        let mut now = 1_000u64;
        while remaining.iter().any(|&r| r > 0) {
            now += 10;
            let free: Vec<usize> = (0..clients).filter(|&c| busy_until[c] < now).collect();
            if free.is_empty() {
                continue;
            }
            let client = free[rng.random_range(0..free.len())];
            let key = loop {
                let k = rng.random_range(0..keys);
                if remaining[k as usize] > 0 {
                    break k;
                }
            };
            remaining[key as usize] -= 1;
            let invoke = now - rng.random_range(0..=max_window.min(now - busy_until[client] - 1));
            let complete = now + rng.random_range(0..=max_window);
            busy_until[client] = complete;
            let current = state[&key];
            let (op, outcome, new_state) = match rng.random_range(0..10) {
                0..4 => {
                    let value = next_value;
                    next_value += 1;
                    written.push(value);
                    (KvOp::Put { key, value }, KvOutcome::Put, Some(value))
                }
                4..8 => (KvOp::Get { key }, KvOutcome::Get(current), current),
                _ => {
                    let expected = match rng.random_range(0..4) {
                        0 => None,
                        1 if !written.is_empty() => {
                            Some(written[rng.random_range(0..written.len())])
                        }
                        _ => current,
                    };
                    let new = next_value;
                    next_value += 1;
                    written.push(new);
                    let swapped = current == expected;
                    let new_state = if swapped { Some(new) } else { current };
                    (
                        KvOp::Cas { key, expected, new },
                        KvOutcome::Cas(swapped),
                        new_state,
                    )
                }
            };
            let outcome = if rng.random_bool(0.05) {
                // Indeterminate: took effect at `now`, or never.
                if !matches!(op, KvOp::Get { .. }) && rng.random_bool(0.5) {
                    state.insert(key, new_state);
                }
                None
            } else {
                state.insert(key, new_state);
                Some((complete, outcome))
            };
            history.push(Operation {
                client: client as u64,
                op,
                invoke,
                outcome,
            });
        }
        history
    }

    #[test]
    fn random_valid_histories_are_linearizable() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let history = random_valid_history(&mut rng, 2, 100, 8, 40);
            let result = check(&history, DEFAULT_BUDGET);
            assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {result}");
        }
    }

    #[test]
    fn large_random_history_is_checked_quickly() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let history = random_valid_history(&mut rng, 3, 300, 16, 120);
        let started = Instant::now();
        let result = check(&history, DEFAULT_BUDGET);
        let elapsed = started.elapsed();
        assert_eq!(result, CheckResult::Linearizable, "{result}");
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        // Deterministically: the just-in-time search stays far below the budget.
        for key in 0..3 {
            let ops: Vec<&Operation> = history.iter().filter(|op| op.key() == key).collect();
            assert_eq!(ops.len(), 300);
            let (result, steps) = search(key, &ops, DEFAULT_BUDGET);
            assert!(result.is_linearizable());
            assert!(steps < 100_000, "key {key}: {steps} steps");
        }
    }

    #[test]
    fn mutated_read_of_unwritten_value_is_rejected() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(1_000 + seed);
            let mut history = random_valid_history(&mut rng, 2, 150, 12, 60);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].outcome, Some((_, KvOutcome::Get(_)))))
                .collect();
            let victim = reads[rng.random_range(0..reads.len())];
            let Some((complete, _)) = history[victim].outcome else {
                unreachable!()
            };
            history[victim].outcome = Some((complete, KvOutcome::Get(Some(u64::MAX))));
            let key = history[victim].key();
            match check(&history, DEFAULT_BUDGET) {
                CheckResult::NotLinearizable {
                    key: k,
                    explanation,
                } => {
                    assert_eq!(k, key, "seed {seed}");
                    assert!(explanation.contains("-> 18446744073709551615"));
                }
                other => panic!("seed {seed}: mutated read of k{key} not rejected: {other:?}"),
            }
        }
    }
}
