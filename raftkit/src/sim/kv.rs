//! The simulation's key-value state machine: registers of `u64` keyed by
//! `u64`, with put, get and compare-and-swap, the operations the
//! linearizability checker models. It is defined with the same derive users
//! write, so every simulated run also exercises the generated dispatch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::linearizability::{Key, KvOp, KvOutcome, Value};

/// The simulated key-value store.
#[derive(
    crate::StateMachine, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize,
)]
#[raftkit(name = "simkv", on_error = "halt")]
pub struct SimKv {
    map: BTreeMap<Key, Value>,
}

#[crate::state_machine]
impl SimKv {
    /// Sets a key.
    #[write]
    pub fn put(&mut self, key: Key, value: Value) {
        self.map.insert(key, value);
    }

    /// Sets a key if it holds `expected`; returns whether it swapped.
    #[write]
    pub fn cas(&mut self, key: Key, expected: Option<Value>, new: Value) -> bool {
        let swapped = self.map.get(&key).copied() == expected;
        if swapped {
            self.map.insert(key, new);
        }
        swapped
    }

    /// Reads a key.
    #[read]
    pub fn get(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }
}

impl SimKv {
    /// A digest of the whole state, equal on replicas that applied the same
    /// entries (the oracle compares them at every applied index).
    pub fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

impl SimKvWrite {
    /// The write command of a checker operation (`None` for a get).
    pub fn from_op(op: &KvOp) -> Option<Self> {
        match *op {
            KvOp::Put { key, value } => Some(SimKvWrite::Put { key, value }),
            KvOp::Cas { key, expected, new } => Some(SimKvWrite::Cas { key, expected, new }),
            KvOp::Get { .. } => None,
        }
    }
}

impl From<SimKvWriteOutput> for KvOutcome {
    fn from(w: SimKvWriteOutput) -> Self {
        match w {
            SimKvWriteOutput::Put(()) => KvOutcome::Put,
            SimKvWriteOutput::Cas(swapped) => KvOutcome::Cas(swapped),
        }
    }
}
