//! Three versions of one key-value store (`kv`), shared by the upgrade
//! tests of single-group peers (`upgrade.rs`) and of multi-group nodes
//! (`multi_upgrade.rs`): `v1`; `v2` adds a handler, renames and respells
//! another, and adds an optional field to the state through a snapshot
//! migration; `v3` changes an existing handler's argument type.
//!
//! Included with `#[path = "support/kv_versions.rs"] mod kv_versions;`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use raftkit::prelude::*;

/// The one write of the v1 directories the refusal tests start from.
pub fn put_a_1() -> v1::KvWrite {
    v1::KvWrite::Put {
        key: "a".into(),
        value: "1".into(),
    }
}

/// The reason of a start that `who` (a binary) must have been refused
/// with a schema mismatch at `handler`; panics otherwise.
pub fn refusal<T>(who: &str, started: Result<T, raftkit::Error>, handler: &str) -> String {
    match started {
        Err(raftkit::Error::SchemaMismatch {
            handler: named,
            reason,
        }) => {
            assert_eq!(named, handler, "{who} refused at another handler: {reason}");
            reason
        }
        Err(e) => panic!("{who}: expected a schema mismatch at {handler}, got {e}"),
        Ok(_) => panic!(
            "{who} started on a data directory it must refuse (expected a schema mismatch at {handler})"
        ),
    }
}

/// v3's refusal of a directory v1 wrote: `put`'s second argument changed
/// from a string to a number.
pub fn assert_v3_refused<T>(started: Result<T, raftkit::Error>) {
    let reason = refusal("v3", started, "`put` (write tag 0)");
    assert!(
        reason.contains("string") && reason.contains("u64"),
        "{reason}"
    );
}

pub mod v1 {
    use super::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "kv")]
    pub struct Kv {
        pub map: BTreeMap<String, String>,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn put(&mut self, key: String, value: String) -> Option<String> {
            self.map.insert(key, value)
        }

        #[read]
        fn get(&self, key: String) -> Option<String> {
            self.map.get(&key).cloned()
        }
    }
}

pub mod v2 {
    use raftkit::state_machine::{CodecError, decode};

    use super::*;

    /// v1's state plus an optional counter: a new state version, restored
    /// from v1 snapshots by `migrate`.
    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "kv", version = 2, migrate = Kv::migrate)]
    pub struct Kv {
        pub map: BTreeMap<String, String>,
        pub deletes: Option<u64>,
    }

    impl Kv {
        fn migrate(from_version: u32, bytes: &[u8]) -> Result<Kv, CodecError> {
            match from_version {
                1 => {
                    let old: super::v1::Kv = decode("v1 snapshot", bytes)?;
                    Ok(Kv {
                        map: old.map,
                        deletes: None,
                    })
                }
                other => Err(CodecError {
                    what: "snapshot",
                    reason: format!("no migration from state version {other}"),
                }),
            }
        }
    }

    #[raftkit::state_machine]
    impl Kv {
        /// v1's `put`, renamed and with its types respelled: same tag,
        /// same shapes, so old entries keep their meaning.
        #[write]
        fn insert(
            &mut self,
            key: std::string::String,
            value: std::string::String,
        ) -> Option<std::string::String> {
            self.map.insert(key, value)
        }

        #[read]
        fn get(&self, key: String) -> Option<String> {
            self.map.get(&key).cloned()
        }

        /// New in v2 (write tag 1).
        #[write]
        fn delete(&mut self, key: String) -> Option<String> {
            *self.deletes.get_or_insert(0) += 1;
            self.map.remove(&key)
        }

        /// New in v2 (read tag 1).
        #[read]
        fn deletes(&self) -> Option<u64> {
            self.deletes
        }
    }
}

pub mod v3 {
    use super::*;

    /// `put` now takes a number: old log entries would not decode.
    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "kv")]
    pub struct Kv {
        pub map: BTreeMap<String, String>,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn put(&mut self, key: String, value: u64) -> Option<String> {
            self.map.insert(key, value.to_string())
        }

        #[read]
        fn get(&self, key: String) -> Option<String> {
            self.map.get(&key).cloned()
        }
    }
}
