//! The simulation's key-value state machine: registers of `u64` keyed by
//! `u64`, with put, get and compare-and-swap, the operations the
//! linearizability checker models.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::linearizability::{Key, KvOp, KvOutcome, Value};
use crate::state_machine::{CodecError, ErrorPolicy, StateMachine, decode, encode};

/// The simulated key-value store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimKv {
    map: BTreeMap<Key, Value>,
}

/// A write command of [`SimKv`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimKvWrite {
    /// Sets a key.
    Put {
        /// The key.
        key: Key,
        /// The new value.
        value: Value,
    },
    /// Sets a key if it holds `expected`.
    Cas {
        /// The key.
        key: Key,
        /// The value the key must hold (`None`: absent).
        expected: Option<Value>,
        /// The new value.
        new: Value,
    },
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

impl StateMachine for SimKv {
    type Write = SimKvWrite;
    type WriteOutput = KvOutcomeWire;
    type Read = Key;
    type ReadOutput = Option<Value>;
    const NAME: &'static str = "simkv";
    const SCHEMA_FINGERPRINT: u64 = 0x5_1_3_4_7_7;

    fn apply(&mut self, command: SimKvWrite) -> KvOutcomeWire {
        match command {
            SimKvWrite::Put { key, value } => {
                self.map.insert(key, value);
                KvOutcomeWire::Put
            }
            SimKvWrite::Cas { key, expected, new } => {
                let swapped = self.map.get(&key).copied() == expected;
                if swapped {
                    self.map.insert(key, new);
                }
                KvOutcomeWire::Cas(swapped)
            }
        }
    }

    fn query(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }

    fn error_policy(_: &SimKvWrite) -> ErrorPolicy {
        ErrorPolicy::Halt
    }

    fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        encode("simkv snapshot", self)
    }

    fn restore(data: &[u8]) -> Result<Self, CodecError> {
        decode("simkv snapshot", data)
    }
}

/// The reply to a [`SimKvWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutcomeWire {
    /// A put was applied.
    Put,
    /// A compare-and-swap was applied; whether it swapped.
    Cas(bool),
}

impl From<KvOutcomeWire> for KvOutcome {
    fn from(w: KvOutcomeWire) -> Self {
        match w {
            KvOutcomeWire::Put => KvOutcome::Put,
            KvOutcomeWire::Cas(b) => KvOutcome::Cas(b),
        }
    }
}
