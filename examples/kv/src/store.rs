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

    /// How many keys start with `prefix`. Added after the first release:
    /// appended last, it takes the next read tag and every older tag keeps
    /// its meaning, so a node of the previous binary upgrades in place (see
    /// the README's "Changing your state machine").
    #[read]
    pub fn count(&self, prefix: String) -> u64 {
        self.map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count() as u64
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
        assert_eq!(block_on(kv.count("a/".into()))?, 1);
        assert_eq!(block_on(kv.count(String::new()))?, 3);
        Ok(())
    }

    /// The store as it was released before `count`, verbatim: a data
    /// directory it wrote opens with the current binary, no wipe.
    mod released {
        use std::collections::BTreeMap;

        use raftkit::prelude::*;

        pub use super::super::Mismatch;

        #[derive(StateMachine, Default, Serialize, Deserialize)]
        #[raftkit(name = "kv")]
        pub struct Kv {
            map: BTreeMap<String, String>,
        }

        #[raftkit::state_machine]
        impl Kv {
            #[write]
            pub fn put(&mut self, key: String, value: String) -> Option<String> {
                self.map.insert(key, value)
            }

            #[write]
            pub fn delete(&mut self, key: String) -> Option<String> {
                self.map.remove(&key)
            }

            #[write]
            pub fn cas(
                &mut self,
                key: String,
                old: Option<String>,
                new: String,
            ) -> Result<(), Mismatch> {
                let current = self.map.get(&key);
                if current == old.as_ref() {
                    self.map.insert(key, new);
                    Ok(())
                } else {
                    Err(Mismatch(current.cloned()))
                }
            }

            #[read]
            pub fn get(&self, key: String) -> Option<String> {
                self.map.get(&key).cloned()
            }

            #[read]
            pub fn scan(&self, prefix: String) -> Vec<(String, String)> {
                self.map
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }
        }
    }

    #[test]
    fn the_released_schema_upgrades_to_this_one() {
        let (old, new) = (released::Kv::schema(), Kv::schema());
        new.check_upgrade_from(&old).unwrap();
        assert_eq!(new.handlers.len(), old.handlers.len() + 1);
        assert!(old.check_upgrade_from(&new).is_err(), "no downgrade");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_directory_of_the_released_binary_opens_without_a_wipe() {
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        drop(sock);
        let (_ca, ids) = raftkit::tls::dev_cluster([format!("kv@{addr}")]).unwrap();
        let old = released::Kv::peer()
            .listen(addr.clone())
            .data_dir(dir.path())
            .bootstrap()
            .identity(ids[0].clone())
            .snapshot_every(5)
            .start()
            .await
            .unwrap();
        let leads = |role: raftkit::core::Role| role == raftkit::core::Role::Leader;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !leads(old.status().role) {
            assert!(std::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..12 {
            old.write(released::KvWrite::Put {
                key: format!("k/{i}"),
                value: i.to_string(),
            })
            .await
            .unwrap();
        }
        old.shutdown().await.unwrap();
        drop(old);

        let new = Kv::peer().data_dir(dir.path()).start().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !leads(new.status().role) {
            assert!(
                std::time::Instant::now() < deadline,
                "no leader after the upgrade"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let count = new
            .read(KvRead::Count {
                prefix: "k/".into(),
            })
            .await
            .unwrap();
        assert!(matches!(count, KvReadOutput::Count(12)));
        new.shutdown().await.unwrap();
    }
}
