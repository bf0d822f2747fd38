//! The state machine every cluster benchmark replicates: a map of `String`
//! to `String` with one write (`put`, no reply) and one read (`get`), so
//! that the figures measure raftkit, not the handler.

use std::collections::BTreeMap;

use raftkit::prelude::*;

/// The benchmarks' key-value store.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "benchkv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) {
        self.map.insert(key, value);
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}
