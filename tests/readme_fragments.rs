//! The README's `rust,ignore` fragments, compiled.
//!
//! The README shows some code as fragments (a handler without its struct, a
//! call without the client it is made on); rustdoc cannot compile those as
//! they stand, so they are marked `ignore` there. Each is copied here
//! verbatim inside the items it needs, and
//! [`every_ignored_readme_fragment_is_compiled_here`] checks that every
//! `rust,ignore` block of the README still appears here line for line
//! (leading whitespace aside; a `/* ... */` in the README stands for any
//! text): a fragment edited in the README without its copy here, or an API
//! change that breaks a copy, fails the build or that test. The fragments
//! that start clusters are compiled, not run (other tests run the same
//! calls); the conformance macro's tests run.
//!
//! `rustfmt::skip` keeps each copy as the README has it.

#![allow(dead_code, unused_imports, unused_variables)]

/// "Schema evolution": a state struct of a new version with its migration.
#[rustfmt::skip]
mod state_version {
use raftkit::prelude::*;
use std::collections::BTreeMap;

/// The version-1 state, kept for its snapshots.
#[derive(Deserialize)]
pub struct KvV1 {
    map: BTreeMap<String, String>,
}

use raftkit::state_machine::CodecError;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv", version = 2, migrate = Kv::migrate)]
pub struct Kv {
    map: BTreeMap<String, String>,
    deletes: Option<u64>, // new in version 2
}

impl Kv {
    fn migrate(from_version: u32, bytes: &[u8]) -> Result<Kv, CodecError> {
        match from_version {
            1 => {
                let old: KvV1 = raftkit::state_machine::decode("snapshot", bytes)?;
                Ok(Kv { map: old.map, deletes: None })
            }
            v => Err(CodecError { what: "snapshot", reason: format!("no migration from {v}") }),
        }
    }
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> { self.map.insert(key, value) }
}
}

/// "Adding `count` to the `kv` store": the read handler added.
#[rustfmt::skip]
mod added_read {
use raftkit::prelude::*;
use std::collections::BTreeMap;

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Kv { map: BTreeMap<String, String> }

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> { self.map.insert(key, value) }

    /// How many keys start with `prefix`.
    #[read]
    pub fn count(&self, prefix: String) -> u64 { /* ... */
        self.map.keys().filter(|k| k.starts_with(&prefix)).count() as u64 }
}
}

/// The kv state machine the client fragments call.
mod kv {
    use raftkit::prelude::*;
    use std::collections::BTreeMap;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Kv {
        map: BTreeMap<String, String>,
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

/// "Exactly-once": retrying one logical write through its `write_once` handle.
#[rustfmt::skip]
async fn write_once_retry(kv: kv::KvClient<raftkit::client::Client>) -> Result<Option<String>, raftkit::Error> {
  let put = kv.write_once();           // one handle per logical write
  let old = loop {
      match put.put("k".into(), "v".into()).await {
          Err(e) if e.is_retryable() => continue, // Timeout, Ambiguous, Halted, ...
          other => break other?,
      }
  };
  Ok(old)
}

/// "Read consistency": one client, three levels.
#[rustfmt::skip]
async fn read_levels(kv: kv::KvClient<raftkit::client::Client>) -> Result<(), raftkit::Error> {
use raftkit::client::{ClientOptions, Consistency, ReadRouting};
let v = kv.get("k".into()).await?;                                  // linearizable
let v = kv.with(Consistency::Lease).get("k".into()).await?;         // leader lease
let stale = kv.with(Consistency::Stale);
let v = stale.get("k".into()).await?;                               // any member
let behind = stale.last_staleness().map(|s| s.behind());            // entries it may miss
Ok(())
}

/// "Simulating your own state machine": the bank of the example.
mod bank {
    use raftkit::prelude::*;
    use std::collections::BTreeMap;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Bank {
        balances: BTreeMap<u8, i64>,
    }

    #[raftkit::state_machine]
    impl Bank {
        #[write]
        fn transfer(&mut self, from: u8, to: u8, amount: i64) -> i64 {
            *self.balances.entry(from).or_default() -= amount;
            let to = self.balances.entry(to).or_default();
            *to += amount;
            *to
        }
    }
}

#[rustfmt::skip]
fn simulate_bank() {
use bank::{Bank, BankClient};
use raftkit::sim::rand::Rng;
let summary = raftkit::sim::Simulation::<Bank>::new()
    .nodes(5)
    .clients(8)
    .workload(|mut rng, client| async move {
        let bank = BankClient::new(client); // the generated typed client
        let (from, to) = (rng.random_range(0..4u8), rng.random_range(0..4u8));
        let _ = bank.transfer(from, to, rng.random_range(1..100)).await;
    })
    .seeds(0..500)
    .run(); // panics with the failing seed, the property and the replay command
}

/// "Many groups in one process".
#[rustfmt::skip]
async fn many_groups(ca: raftkit::tls::ClusterCa) -> Result<(), Box<dyn std::error::Error>> {
use kv::Kv;
use raftkit::multi::MultiNode;
use raftkit::prelude::*;
let node = MultiNode::<Kv>::builder()
    .listen("127.0.0.1:7001")
    .data_dir("data/n1")
    .identity(ca.issue_node("kv@127.0.0.1:7001", &[])?)
    .start()
    .await?;                       // restarts every group the journal holds
for group in 1..=64 {
    // Each member node creates the group with the same member list.
    node.create_group(group, &["127.0.0.1:7001".into(), "127.0.0.1:7002".into(), "127.0.0.1:7003".into()]).await?;
}
let replica: Peer<Kv> = node.group(7).expect("hosted");   // an ordinary Peer
Ok(())
}

/// "Many groups (sharded)": handlers routed by a shard key.
#[rustfmt::skip]
mod sharded {
use raftkit::client::ShardedClient;
use raftkit::multi::MultiNode;
use raftkit::prelude::*;
use std::collections::BTreeMap;

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Kv { map: BTreeMap<String, String> }

#[raftkit::state_machine]
impl Kv {
    #[write(shard = key)]
    fn put(&mut self, key: String, value: String) -> Option<String> { self.map.insert(key, value) }
    #[read(shard = key)]
    fn get(&self, key: String) -> Option<String> { self.map.get(&key).cloned() }
}

async fn form(node: MultiNode<Kv>, members: Vec<String>) -> Result<(), raftkit::Error> {
// Every node, the same list: group 0 + groups 1..=8, a voter on each node.
node.form_shards(8, &members).await?;

// The same KvClient, over a sharded client: it reads the placement from
// group 0, sends each call to the group owning hash(key), and re-reads the
// placement when a node answers NotHosted (or no leader is found).
let kv = KvClient::new(ShardedClient::<Kv>::connect(&members).await?);
kv.put("user:1".into(), "alice".into()).await?;
Ok(())
}
}

/// "Plugging in your own store": the conformance suite as `#[test]`s (run).
#[rustfmt::skip]
mod own_store {
/// Stands for the user's store: here the in-memory one.
struct MyStore;

impl MyStore {
    fn new_in_tempdir() -> raftkit::storage::MemLogStore {
        raftkit::storage::MemLogStore::new()
    }
}

// In a test module: one #[test] per conformance check.
raftkit::log_store_conformance!(MyStore::new_in_tempdir);
// Durable stores also run the reopen checks:
// raftkit::log_store_conformance!(make, reopen = |store| reopen(store));
}

/// The `rust,ignore` blocks of `README.md`, without their fences, each
/// dedented by its fence's indentation.
fn ignored_readme_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for line in readme.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match current.take() {
            None => {
                if trimmed == "```rust,ignore" {
                    current = Some((indent, Vec::new()));
                }
            }
            Some((fence, mut body)) => {
                if trimmed == "```" {
                    blocks.push(body);
                } else {
                    body.push(line.get(fence.min(indent)..).unwrap_or(line).to_string());
                    current = Some((fence, body));
                }
            }
        }
    }
    blocks
}

/// Whether `readme_line` matches `here` (both trimmed): equal, or, when the
/// README's line holds `/* ... */`, `here` starts with what precedes it and
/// holds the `/* ... */` too (the body it stands for may go on below).
fn line_matches(readme_line: &str, here: &str) -> bool {
    let readme_line = readme_line.trim();
    let here = here.trim();
    match readme_line.split_once("/* ... */") {
        None => readme_line == here,
        Some((before, _)) => here.starts_with(before.trim_end()) && here.contains("/* ... */"),
    }
}

#[test]
fn every_ignored_readme_fragment_is_compiled_here() {
    let readme = include_str!("../README.md");
    let here: Vec<&str> = include_str!("readme_fragments.rs").lines().collect();
    let blocks = ignored_readme_blocks(readme);
    assert!(
        blocks.len() >= 8,
        "found {} rust,ignore blocks in the README; the parser lost some",
        blocks.len()
    );
    for block in &blocks {
        assert!(
            fragment_is_in(block, &here),
            "this rust,ignore block of README.md is not in tests/readme_fragments.rs \
             (copy it there, inside the items it needs, so it is compiled):\n{}",
            block.join("\n")
        );
    }
}

/// Whether `block`'s paragraphs (runs of non-blank lines) appear in `here`
/// in order, each on consecutive lines: the copy may put the items a
/// fragment needs between its paragraphs, never inside one.
fn fragment_is_in(block: &[String], here: &[&str]) -> bool {
    let mut from = 0;
    for paragraph in block
        .split(|l| l.trim().is_empty())
        .filter(|p| !p.is_empty())
    {
        let found = (from..here.len()).find(|&start| {
            paragraph
                .iter()
                .enumerate()
                .all(|(i, line)| here.get(start + i).is_some_and(|h| line_matches(line, h)))
        });
        match found {
            Some(start) => from = start + paragraph.len(),
            None => return false,
        }
    }
    true
}

#[test]
fn the_fragment_check_notices_a_changed_line() {
    let readme = "x\n```rust,ignore\nlet a = 1;\nlet b = 2;\n```\n";
    let blocks = ignored_readme_blocks(readme);
    assert_eq!(
        blocks,
        vec![vec!["let a = 1;".to_string(), "let b = 2;".to_string()]]
    );
    assert!(line_matches(
        "fn f() -> u64 { /* ... */ }",
        "fn f() -> u64 { /* ... */"
    ));
    assert!(!line_matches(
        "fn f() -> u64 { /* ... */ }",
        "fn g() -> u64 { /* ... */"
    ));
    assert!(!line_matches(
        "fn f() -> u64 { /* ... */ }",
        "fn f() -> u64 { 7 }"
    ));
    assert!(!line_matches("let a = 1;", "let a = 2;"));
    let block = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let here = ["fn f() {", "let a = 1;", "let b = 2;", "}", "let c = 3;"];
    assert!(fragment_is_in(
        &block(&["let a = 1;", "let b = 2;", "", "let c = 3;"]),
        &here
    ));
    assert!(!fragment_is_in(
        &block(&["let a = 1;", "let c = 3;"]),
        &here
    ));
    assert!(!fragment_is_in(
        &block(&["let c = 3;", "", "let a = 1;"]),
        &here
    ));
}
