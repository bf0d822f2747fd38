//! The replicated state machine: a sorted map of `String` to `String`.
//!
//! This is the whole of what a raftkit user writes for a store: the derive
//! generates the commands, the dispatch and the typed `KvClient`.

use std::collections::BTreeMap;

use raftkit::prelude::*;

/// Why a compare-and-swap did not swap: the key holds this value (`None`:
/// the key is absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch(pub Option<String>);

/// The key-value store every node replicates.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    /// Sets `key` to `value`; returns the previous value.
    #[write]
    pub fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    /// Removes `key`; returns the value it held.
    #[write]
    pub fn delete(&mut self, key: String) -> Option<String> {
        self.map.remove(&key)
    }

    /// Sets `key` to `new` if it holds `old` (`None`: if it is absent);
    /// otherwise reports what it holds.
    #[write]
    pub fn cas(&mut self, key: String, old: Option<String>, new: String) -> Result<(), Mismatch> {
        let current = self.map.get(&key);
        if current == old.as_ref() {
            self.map.insert(key, new);
            Ok(())
        } else {
            Err(Mismatch(current.cloned()))
        }
    }

    /// The value of `key`.
    #[read]
    pub fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    /// Every pair whose key starts with `prefix`, in key order.
    #[read]
    pub fn scan(&self, prefix: String) -> Vec<(String, String)> {
        self.map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit::client::Local;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    #[test]
    fn handlers() -> Result<(), raftkit::Error> {
        let kv = KvClient::new(Local::new(Kv::default()));
        assert_eq!(block_on(kv.put("a/1".into(), "x".into()))?, None);
        assert_eq!(block_on(kv.put("a/2".into(), "y".into()))?, None);
        assert_eq!(block_on(kv.put("b".into(), "z".into()))?, None);
        assert_eq!(
            block_on(kv.cas("b".into(), None, "w".into()))?,
            Err(Mismatch(Some("z".into())))
        );
        assert_eq!(
            block_on(kv.cas("b".into(), Some("z".into()), "w".into()))?,
            Ok(())
        );
        assert_eq!(block_on(kv.cas("c".into(), None, "v".into()))?, Ok(()));
        assert_eq!(
            block_on(kv.scan("a/".into()))?,
            vec![("a/1".into(), "x".into()), ("a/2".into(), "y".into())]
        );
        assert_eq!(block_on(kv.delete("a/1".into()))?, Some("x".into()));
        assert_eq!(block_on(kv.get("a/1".into()))?, None);
        assert_eq!(block_on(kv.get("b".into()))?, Some("w".into()));
        assert_eq!(block_on(kv.scan(String::new()))?.len(), 3);
        Ok(())
    }

    /// This very store, run by the whole-runtime simulation: five real
    /// peers, crashes, partitions, disk faults; every history checked for
    /// linearizability against `Kv` itself.
    #[test]
    fn the_store_under_the_whole_runtime_simulation() {
        use raftkit::sim::rand::Rng;
        let summary = raftkit::sim::Simulation::<Kv>::new()
            .nodes(5)
            .clients(4)
            .ops_per_client(10)
            .workload(|mut rng, client| async move {
                let kv = KvClient::new(client);
                let key = format!("k{}", rng.random_range(0..3));
                let value = format!("v{}", rng.random_range(0..100));
                let _ = match rng.random_range(0..4) {
                    0 => kv.put(key, value).await.map(drop),
                    1 => kv.cas(key, None, value).await.map(drop),
                    2 => kv.delete(key).await.map(drop),
                    _ => kv.get(key).await.map(drop),
                };
            })
            .seeds(0..40)
            .run();
        assert!(!summary.seeds.is_empty());
    }
}
