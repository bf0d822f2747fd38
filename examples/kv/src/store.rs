//! The replicated state machine: a sorted map of `String` to `String`.
//!
//! This is the whole of what a raftkit user writes for a store: the derive
//! generates the commands, the dispatch and the typed `KvClient`.
//!
//! Keys may expire: `put_ttl` gives a key a time-to-live in *replicated*
//! time ([`Ctx::time_ms`], the leader's stamp of the entry, never moving
//! backwards), so every replica expires it at the same entry. A key is
//! visible while `now < deadline`; every write first drops the keys whose
//! deadline has passed, and reads hide them until then. Replicated time
//! advances only with entries, so a read sees expiry as of the last write
//! applied (see the caveats in `raftkit::context`).

use std::collections::BTreeMap;

use compact_str::CompactString;
use imbl::{OrdMap, OrdSet};
use raftkit::prelude::*;

/// Why a compare-and-swap did not swap: the key holds this value (`None`:
/// the key is absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch(pub Option<String>);

/// The key-value store every node replicates.
///
/// State version 2 added the time-to-live fields (`expiry`, `deadlines`);
/// snapshots of version 1 (the map alone) are restored by [`Kv::migrate`].
///
/// The maps are `imbl`'s persistent B-trees: a clone shares every node
/// and copies one only when either side changes it, so a snapshot clones
/// the store in O(1) and serializes the clone on the snapshot thread
/// (`snapshot = "clone"`) while the apply thread goes on. They serialize
/// exactly as `std`'s `BTreeMap`/`BTreeSet` (a length, then the entries in
/// key order), and the keys and values ([`Text`]) as `String`s, so
/// snapshots are the same bytes as a `BTreeMap<String, String>`'s.
#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(name = "kv", version = 2, migrate = Kv::migrate, snapshot = "clone")]
pub struct Kv {
    map: OrdMap<Text, Text>,
    /// The deadline (replicated ms) of every key that has one.
    expiry: OrdMap<Text, u64>,
    /// The same deadlines ordered by time, for dropping the expired keys.
    deadlines: OrdSet<(u64, Text)>,
}

/// A key or a value as the store holds it: up to 24 bytes inside the map's
/// node itself, longer ones on the heap. Short keys and values (the common
/// case) cost no allocation of their own, and a lookup or a snapshot reads
/// them where the node is instead of following a pointer per string. It
/// serializes as a `String`, so snapshots are the same bytes.
type Text = CompactString;

/// The state as version 1 wrote it: the map alone.
#[derive(Deserialize)]
struct KvV1 {
    map: BTreeMap<String, String>,
}

impl Kv {
    /// Restores a snapshot of an older state version (see the README's
    /// "Changing your state machine").
    fn migrate(from_version: u32, bytes: &[u8]) -> Result<Kv, raftkit::state_machine::CodecError> {
        match from_version {
            1 => {
                let old: KvV1 = raftkit::state_machine::decode("kv state version 1", bytes)?;
                Ok(Kv {
                    map: old
                        .map
                        .into_iter()
                        .map(|(k, v)| (Text::from(k), Text::from(v)))
                        .collect(),
                    ..Kv::default()
                })
            }
            other => Err(raftkit::state_machine::CodecError {
                what: "kv snapshot",
                reason: format!("no migration from state version {other}"),
            }),
        }
    }

    /// Whether `key` holds a value that has not expired at `now`.
    fn live(&self, key: &str, now: u64) -> Option<&Text> {
        match self.expiry.get(key) {
            Some(&deadline) if deadline <= now => None,
            _ => self.map.get(key),
        }
    }

    /// Drops every key whose deadline is at or before `now` (replicated time,
    /// so every replica drops the same keys at the same entry).
    fn expire(&mut self, now: u64) {
        while let Some((deadline, _)) = self.deadlines.get_min() {
            if *deadline > now {
                break;
            }
            if let Some((_, key)) = self.deadlines.remove_min() {
                self.expiry.remove(&key);
                self.map.remove(&key);
            }
        }
    }

    /// Forgets the deadline of `key` (it is overwritten or removed).
    fn clear_deadline(&mut self, key: &str) {
        if let Some(deadline) = self.expiry.remove(key) {
            self.deadlines.remove(&(deadline, Text::from(key)));
        }
    }
}

#[raftkit::state_machine]
impl Kv {
    /// Sets `key` to `value` (with no time-to-live); returns the previous
    /// value.
    #[write(shard = key)]
    pub fn put(&mut self, ctx: &Ctx, key: String, value: String) -> Option<String> {
        self.expire(ctx.time_ms());
        self.clear_deadline(&key);
        self.map
            .insert(key.into(), value.into())
            .map(Text::into_string)
    }

    /// Removes `key`; returns the value it held.
    #[write(shard = key)]
    pub fn delete(&mut self, ctx: &Ctx, key: String) -> Option<String> {
        self.expire(ctx.time_ms());
        self.clear_deadline(&key);
        self.map.remove(key.as_str()).map(Text::into_string)
    }

    /// Sets `key` to `new` if it holds `old` (`None`: if it is absent);
    /// otherwise reports what it holds.
    #[write(shard = key)]
    pub fn cas(
        &mut self,
        ctx: &Ctx,
        key: String,
        old: Option<String>,
        new: String,
    ) -> Result<(), Mismatch> {
        self.expire(ctx.time_ms());
        let current = self.map.get(key.as_str());
        if current.map(Text::as_str) == old.as_deref() {
            // The new value keeps no time-to-live of the old one.
            self.clear_deadline(&key);
            self.map.insert(key.into(), new.into());
            Ok(())
        } else {
            Err(Mismatch(current.map(Text::to_string)))
        }
    }

    /// The value of `key` (none once it expired).
    #[read(shard = key)]
    pub fn get(&self, ctx: &Ctx, key: String) -> Option<String> {
        self.live(&key, ctx.time_ms()).map(Text::to_string)
    }

    /// Every pair whose key starts with `prefix`, in key order (expired keys
    /// left out).
    #[read]
    pub fn scan(&self, ctx: &Ctx, prefix: String) -> Vec<(String, String)> {
        self.map
            .range(Text::from(prefix.as_str())..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| self.live(k, ctx.time_ms()).is_some())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Sets `key` to `value` for `ttl_ms` milliseconds of replicated time
    /// (from the time of this entry); returns the previous value. A later
    /// `put` or `cas` of the key removes the time-to-live.
    #[write(shard = key)]
    pub fn put_ttl(
        &mut self,
        ctx: &Ctx,
        key: String,
        value: String,
        ttl_ms: u64,
    ) -> Option<String> {
        let now = ctx.time_ms();
        self.expire(now);
        self.clear_deadline(&key);
        let deadline = now.saturating_add(ttl_ms);
        let key = Text::from(key);
        self.expiry.insert(key.clone(), deadline);
        self.deadlines.insert((deadline, key.clone()));
        self.map.insert(key, value.into()).map(Text::into_string)
    }

    /// How many keys start with `prefix`. Added after the first release:
    /// appended last, it takes the next read tag and every older tag keeps
    /// its meaning, so a node of the previous binary upgrades in place (see
    /// the README's "Changing your state machine").
    #[read]
    pub fn count(&self, prefix: String) -> u64 {
        self.map
            .range(Text::from(prefix.as_str())..)
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

    #[test]
    fn a_key_with_a_ttl_expires_in_replicated_time() -> Result<(), raftkit::Error> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let now = Arc::new(AtomicU64::new(10_000));
        let clock = now.clone();
        let local = Local::with_clock(Kv::default(), move || clock.load(Ordering::SeqCst));
        let kv = KvClient::new(local.clone());
        assert_eq!(
            block_on(kv.put_ttl("session".into(), "s1".into(), 500))?,
            None
        );
        block_on(kv.put("plain".into(), "p".into()))?;
        now.store(10_499, Ordering::SeqCst);
        block_on(kv.put("tick".into(), "1".into()))?;
        assert_eq!(block_on(kv.get("session".into()))?, Some("s1".into()));
        // The deadline passes on the clock, but replicated time moves only
        // with the next entry: until then the key is still visible.
        now.store(10_500, Ordering::SeqCst);
        assert_eq!(block_on(kv.get("session".into()))?, Some("s1".into()));
        block_on(kv.put("tick".into(), "2".into()))?;
        assert_eq!(block_on(kv.get("session".into()))?, None);
        assert_eq!(block_on(kv.scan(String::new()))?.len(), 2);
        // Physically dropped by the write, not only hidden.
        assert!(local.with(|s| !s.map.contains_key("session") && s.deadlines.is_empty()));
        // A clock going back does not bring it back (time never moves
        // backwards), and a plain put clears a time-to-live.
        now.store(1, Ordering::SeqCst);
        block_on(kv.put_ttl("k".into(), "v".into(), 100))?;
        block_on(kv.put("k".into(), "w".into()))?;
        now.store(20_000, Ordering::SeqCst);
        block_on(kv.put("tick".into(), "3".into()))?;
        assert_eq!(block_on(kv.get("k".into()))?, Some("w".into()));
        Ok(())
    }

    /// The persistent maps serialize as `std`'s: snapshots written before
    /// the store moved to them restore, and theirs restore in a binary
    /// holding `std` maps.
    #[test]
    fn snapshots_are_the_bytes_std_maps_give() -> Result<(), raftkit::Error> {
        use std::collections::BTreeSet;

        #[derive(Serialize)]
        struct StdKv {
            map: BTreeMap<String, String>,
            expiry: BTreeMap<String, u64>,
            deadlines: BTreeSet<(u64, String)>,
        }

        let local = Local::with_clock(Kv::default(), || 1_000);
        let kv = KvClient::new(local.clone());
        for (k, v) in [("b", "2"), ("a", "1"), ("c/x", "3")] {
            block_on(kv.put(k.into(), v.into()))?;
        }
        block_on(kv.put_ttl("t".into(), "4".into(), 500))?;
        block_on(kv.put_ttl("s".into(), "5".into(), 400))?;
        let (ours, theirs) = local.with(|s| {
            let std = StdKv {
                map: s
                    .map
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                expiry: s.expiry.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                deadlines: s
                    .deadlines
                    .iter()
                    .map(|(d, k)| (*d, k.to_string()))
                    .collect(),
            };
            (
                raftkit::state_machine::encode("kv", s),
                raftkit::state_machine::encode("std kv", &std),
            )
        });
        assert_eq!(ours.expect("encodes"), theirs.expect("encodes"));
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
        // `put_ttl` (a write) and `count` (a read) were added; the state
        // went from version 1 to 2 with a migration.
        assert_eq!(new.handlers.len(), old.handlers.len() + 2);
        assert_eq!((old.state_version, new.state_version), (1, 2));
        assert!(old.check_upgrade_from(&new).is_err(), "no downgrade");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_directory_of_the_released_binary_opens_without_a_wipe() {
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let addr = crate::test_ports::free_addr();
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
