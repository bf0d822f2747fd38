//! Changing a state machine in production (`raftkit::schema`): three
//! versions of one key-value store, `v1`, `v2` (adds a handler, renames and
//! respells another, and adds an optional field to the state through a
//! snapshot migration) and `v3` (changes an existing handler's argument
//! type).
//!
//! - the rolling upgrade: a 3-node QUIC cluster runs v1 under a client
//!   workload that never stops; nodes restart one by one on v2; the new
//!   handler is refused (`Unsupported`, nothing applied) until the last node
//!   runs v2 and works after; every acknowledged write is present at the
//!   end, and the only errors the workload saw are retryable ones;
//! - the refusals: v3 refuses a v1/v2 data directory at start naming the
//!   handler; a v2 start that fails (its port is taken) leaves the
//!   directory to v1; a peer whose schema is incompatible is refused at hello (and
//!   a compatible one with another fingerprint is accepted, and a v2 node
//!   joins a v1 cluster); `add_server` does not promote a v1 node into a
//!   v2 cluster that uses `delete` (it stays a learner, `delete` keeps
//!   working);
//! - state evolution: a v1 snapshot restores into v2 through the migration,
//!   a v2 snapshot is refused by v1;
//! - an entry a node cannot decode halts it with the index and the tag,
//!   even under the `skip` error policy; so does a command with a trailing
//!   field its binary does not know (`wider`: v1's `put` with a third
//!   argument), instead of applying it with the field dropped.

mod support;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{DevCluster, free_addrs, member_builder};

use raftkit::client::ClientOptions;
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::schema::{HandlerKind, Schema, SchemaBook, Shape};
use raftkit::tls::{Identity, dev_cluster};
use raftkit::transport::{LinkState, QuicConfig, QuicTransport, Transport as _};
use tokio::time::Instant;

#[path = "support/kv_versions.rs"]
mod kv_versions;
pub use kv_versions::{v1, v2, v3};

/// v1 with a field appended to `put`'s arguments (same tag): postcard
/// encodes its commands as a v1 command followed by the new field, so a v1
/// binary must refuse them rather than decode the prefix.
pub mod wider {
    use super::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "kv")]
    pub struct Kv {
        pub map: BTreeMap<String, String>,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn put(&mut self, key: String, value: String, note: String) -> Option<String> {
            self.map.insert(key, format!("{value} ({note})"))
        }

        #[read]
        fn get(&self, key: String) -> Option<String> {
            self.map.get(&key).cloned()
        }
    }
}

/// v1 with `put`'s two arguments swapped (same tag, same types): every
/// shape is v1's, but an old `put(k, v)` entry would apply as `put(v, k)`.
pub mod swapped {
    use super::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "kv")]
    pub struct Kv {
        pub map: BTreeMap<String, String>,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn put(&mut self, value: String, key: String) -> Option<String> {
            self.map.insert(key, value)
        }

        #[read]
        fn get(&self, key: String) -> Option<String> {
            self.map.get(&key).cloned()
        }
    }
}

/// Swapped arguments of a write are refused at start and between peers,
/// naming the handler (found by review, stop 42: names were dropped, so
/// the swap passed every check and old entries changed meaning).
#[test]
fn swapped_arguments_of_a_write_are_refused() {
    let (s1, swapped) = (v1::Kv::schema(), swapped::Kv::schema());
    let e = swapped.check_upgrade_from(&s1).err();
    assert!(
        e.is_some(),
        "v1 -> put(value, key) passed the upgrade check"
    );
    let e = e.unwrap();
    assert_eq!(e.handler, "`put` (write tag 0)");
    assert!(e.reason.contains("`key` moved"), "{e}");
    assert!(swapped.check_peer(&s1).is_err());
    assert!(s1.check_peer(&swapped).is_err());
}

#[test]
fn the_derived_schema_is_structural() {
    let (s1, s2, s3) = (v1::Kv::schema(), v2::Kv::schema(), v3::Kv::schema());
    assert_eq!(s1.state_version, 1);
    assert_eq!(s2.state_version, 2);
    let put = s1.handler(HandlerKind::Write, 0).unwrap();
    assert_eq!(
        put.args.without_names(),
        Shape::Tuple(vec![Shape::Str, Shape::Str])
    );
    // Argument and field names are kept, for the positions they take.
    assert_eq!(put.args.to_string(), "(key: string, value: string)");
    assert_eq!(put.output, Shape::Option(Box::new(Shape::Str)));
    // Renamed and respelled, same structure.
    let insert = s2.handler(HandlerKind::Write, 0).unwrap();
    assert_eq!(insert.name, "insert");
    assert_eq!((&insert.args, &insert.output), (&put.args, &put.output));
    assert_eq!(
        s2.state.without_names(),
        Shape::Tuple(vec![
            Shape::Map(Box::new(Shape::Str), Box::new(Shape::Str)),
            Shape::Option(Box::new(Shape::U64)),
        ])
    );
    s2.check_upgrade_from(&s1).unwrap();
    s2.check_peer(&s1).unwrap();
    s1.check_peer(&s2).unwrap();
    let e = s3.check_upgrade_from(&s1).unwrap_err();
    assert_eq!(e.handler, "`put` (write tag 0)");
    assert!(s3.check_peer(&s2).is_err());
    // The schema travels: it round-trips through postcard.
    let bytes = postcard::to_allocvec(&s2).unwrap();
    assert_eq!(postcard::from_bytes::<Schema>(&bytes).unwrap(), s2);
}

#[test]
fn a_v1_snapshot_restores_into_v2_and_not_the_other_way() {
    let mut old = v1::Kv::default();
    old.map.insert("a".into(), "1".into());
    let snap = old.snapshot().unwrap();
    let new = v2::Kv::restore(&snap).unwrap();
    assert_eq!(new.map.get("a").map(String::as_str), Some("1"));
    assert_eq!(new.deletes, None);
    let newer = new.snapshot().unwrap();
    let back = v2::Kv::restore(&newer).unwrap();
    assert_eq!(back.map, new.map);
    let e = v1::Kv::restore(&newer).err().expect("v1 cannot read v2");
    assert!(e.reason.contains("state version 2"), "{e}");
}

const TICK: Duration = Duration::from_millis(20);

/// A node of either version.
enum Node {
    V1(Peer<v1::Kv>),
    V2(Peer<v2::Kv>),
}

impl Node {
    fn status(&self) -> raftkit::runtime::PeerStatus {
        match self {
            Node::V1(p) => p.status(),
            Node::V2(p) => p.status(),
        }
    }

    async fn shutdown(&self) {
        let r = match self {
            Node::V1(p) => p.shutdown().await,
            Node::V2(p) => p.shutdown().await,
        };
        r.expect("clean shutdown");
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    nodes: Vec<Option<Node>>,
    client_identity: Identity,
    ca: raftkit::tls::ClusterCa,
}

impl Cluster {
    async fn start_v1() -> Cluster {
        Self::start(false).await
    }

    /// Three bootstrapped nodes, all on v2 (`v2`) or all on v1.
    async fn start(v2: bool) -> Cluster {
        let DevCluster {
            addrs,
            ca,
            ids,
            client: client_identity,
            dir,
        } = DevCluster::new(3);
        let mut nodes = Vec::new();
        for (addr, id) in addrs.iter().zip(ids) {
            let node = if v2 {
                let peer = member_builder::<v2::Kv>(dir.path(), &addrs, addr, id, TICK)
                    .snapshot_every(40)
                    .start()
                    .await
                    .expect("v2 peer starts");
                Node::V2(peer)
            } else {
                let peer = member_builder::<v1::Kv>(dir.path(), &addrs, addr, id, TICK)
                    .snapshot_every(40)
                    .start()
                    .await
                    .expect("v1 peer starts");
                Node::V1(peer)
            };
            nodes.push(Some(node));
        }
        Cluster {
            dir,
            addrs,
            nodes,
            client_identity,
            ca,
        }
    }

    fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(&self.addrs[i])
    }

    /// Stops node `i` and starts it again from its data directory on v2.
    async fn upgrade(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
        let peer = v2::Kv::peer()
            .data_dir(self.data_dir(i))
            .tick(TICK)
            .snapshot_every(40)
            .start()
            .await
            .expect("v2 accepts the v1 data directory");
        self.nodes[i] = Some(Node::V2(peer));
    }

    fn max_commit(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.status().commit)
            .max()
            .unwrap_or(0)
    }

    async fn wait_caught_up(&self, i: usize) {
        let target = self.max_commit();
        wait_for("the restarted node to catch up", 20, || {
            self.nodes[i]
                .as_ref()
                .is_some_and(|n| n.status().applied >= target)
                .then_some(())
        })
        .await;
    }

    async fn wait_leader(&self) {
        wait_for("a leader", 20, || {
            self.nodes
                .iter()
                .flatten()
                .any(|n| n.status().role == Role::Leader)
                .then_some(())
        })
        .await;
    }

    /// Moves leadership to node `i`.
    async fn make_leader(&self, i: usize) {
        let target = match self.nodes[i].as_ref().expect("running") {
            Node::V1(p) => p.id(),
            Node::V2(p) => p.id(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = self
                .nodes
                .iter()
                .flatten()
                .find(|n| n.status().role == Role::Leader);
            match leader {
                Some(n) if n.status().id == target => return,
                Some(Node::V1(p)) => drop(p.transfer_leadership(target).await),
                Some(Node::V2(p)) => drop(p.transfer_leadership(target).await),
                None => {}
            }
            assert!(Instant::now() < deadline, "node {i} never led");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn options() -> ClientOptions {
        ClientOptions::default().with_timeout(Duration::from_secs(10))
    }

    async fn v1_client(&self) -> v1::KvClient {
        v1::KvClient::connect_with(&self.addrs, self.client_identity.clone(), Self::options())
            .await
            .expect("v1 client connects")
    }

    async fn v2_client(&self) -> v2::KvClient {
        v2::KvClient::connect_with(&self.addrs, self.client_identity.clone(), Self::options())
            .await
            .expect("v2 client connects")
    }

    async fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.shutdown().await;
            }
        }
    }
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the background workload saw.
#[derive(Default, Debug)]
struct Workload {
    acked: Vec<String>,
    errors: Vec<Error>,
}

/// Writes `w0000`, `w0001`, ... through a v1 client until `stop`, and
/// returns what happened.
async fn workload(client: v1::KvClient, stop: Arc<AtomicBool>) -> Workload {
    let mut w = Workload::default();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{i:05}");
        match client.put(key.clone(), format!("value {i}")).await {
            Ok(_) => w.acked.push(key),
            Err(e) => w.errors.push(e),
        }
        i += 1;
    }
    w
}

/// The new handler is refused before the log: `Unsupported`, nothing
/// applied, on whichever node leads.
async fn assert_delete_refused(c: &Cluster, phase: &str) -> String {
    let client = c.v2_client().await;
    match client.delete("w00000".into()).await {
        Err(Error::Unsupported(why)) => {
            assert!(why.contains("tag 1"), "{phase}: {why}");
            why
        }
        other => panic!("{phase}: the new handler was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_keeps_serving_and_enables_the_new_handler_at_the_end() {
    let mut c = Cluster::start_v1().await;
    c.wait_leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(workload(c.v1_client().await, stop.clone()));
    let acked_at = |c: &Cluster| c.max_commit();

    // Some history first: snapshots (every 40 entries) exist on every node,
    // so the restarts below restore v1 snapshots through v2's migration.
    wait_for("some writes", 20, || (acked_at(&c) > 120).then_some(())).await;
    assert_delete_refused(&c, "all on v1").await;

    for i in 0..3 {
        let before = c.max_commit();
        // The node holds a snapshot v1 wrote: v2 starts only if its
        // migration restores it.
        wait_for("a v1 snapshot on the node", 20, || {
            let n = c.nodes[i].as_ref().expect("running");
            (n.status().snapshot_index > 0).then_some(())
        })
        .await;
        c.upgrade(i).await;
        c.wait_caught_up(i).await;
        // The workload goes on across each restart.
        wait_for("writes after the restart", 20, || {
            (c.max_commit() > before + 30).then_some(())
        })
        .await;
        if i < 2 {
            let phase = format!("{} of 3 nodes on v2", i + 1);
            assert_delete_refused(&c, &phase).await;
            // A v2 leader refuses it too: a voter still runs v1.
            c.make_leader(i).await;
            let why = assert_delete_refused(&c, &format!("{phase}, a v2 node leading")).await;
            // It names the voter to upgrade by its address, not only by
            // its node id.
            let v1_left = &c.addrs[i + 1..];
            assert!(
                v1_left.iter().any(|a| why.contains(&format!("({a})"))),
                "{phase}: the refusal names none of the v1 voters {v1_left:?}: {why}"
            );
        }
    }

    // Every voter runs v2: the leader learns it from their hellos and
    // enables `delete` (until then it may still refuse it).
    let client = c.v2_client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let deleted = loop {
        match client.delete("w00000".into()).await {
            Ok(v) => break v,
            Err(Error::Unsupported(why)) if Instant::now() < deadline => {
                eprintln!("delete not enabled yet: {why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("delete after the upgrade: {e}"),
        }
    };
    assert_eq!(deleted.as_deref(), Some("value 0"));
    assert_eq!(client.deletes().await.unwrap(), Some(1));

    stop.store(true, Ordering::Relaxed);
    let w = load.await.expect("workload task");
    eprintln!(
        "workload: {} writes acknowledged, {} errors",
        w.acked.len(),
        w.errors.len()
    );
    assert!(w.acked.len() > 100, "the workload stalled: {w:?}");
    for e in &w.errors {
        assert!(
            e.is_retryable(),
            "a non-retryable error during the upgrade: {e}"
        );
    }
    // Every acknowledged write is there (the one deleted on purpose aside),
    // read through both client versions.
    let old_client = c.v1_client().await;
    for key in w.acked.iter().skip(1) {
        assert!(
            client.get(key.clone()).await.unwrap().is_some(),
            "acknowledged write {key} lost"
        );
    }
    let last = w.acked.last().expect("acks").clone();
    assert!(old_client.get(last).await.unwrap().is_some());
    assert_eq!(old_client.get("w00000".into()).await.unwrap(), None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_peer_joins_a_v1_cluster() {
    // The other way to upgrade: add a node running the new binary, then
    // remove an old one. The joiner's requests carry its schema, which is
    // compatible with v1's (its fingerprint is not v1's).
    let c = Cluster::start_v1().await;
    c.wait_leader().await;
    let addr = free_addrs(1).remove(0);
    let identity = c.ca.issue_node(&format!("kv@{addr}"), &[]).unwrap();
    let joiner = v2::Kv::peer()
        .listen(addr.clone())
        .data_dir(c.dir.path().join(&addr))
        .identity(identity)
        .tick(TICK)
        .join(c.addrs.clone())
        .start()
        .await
        .expect("the v2 joiner starts");
    wait_for("the v2 joiner to become a voter", 20, || {
        let s = joiner.status();
        s.members
            .iter()
            .any(|m| m.id == s.id && m.voter)
            .then_some(())
    })
    .await;
    joiner.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_server_does_not_promote_a_learner_that_cannot_decode_an_enabled_write() {
    // A v2 cluster whose clients use `delete` (write tag 1, v2 only); an
    // admin adds a node that still runs v1. Promoting it would make a voter
    // of a node that halts at the first `delete` entry, and would disable
    // `delete` (a voter without tag 1): add_server must refuse, and the
    // node must stay a learner.
    let c = Cluster::start(true).await;
    c.wait_leader().await;
    let client = c.v2_client().await;
    client.insert("a".into(), "1".into()).await.unwrap();
    client.insert("b".into(), "2".into()).await.unwrap();
    assert_eq!(
        client.delete("a".into()).await.unwrap().as_deref(),
        Some("1")
    );

    let addr = free_addrs(1).remove(0);
    let identity = c.ca.issue_node(&format!("kv@{addr}"), &[]).unwrap();
    let old = v1::Kv::peer()
        .listen(addr.clone())
        .data_dir(c.dir.path().join(&addr))
        .identity(identity)
        .tick(TICK)
        .start()
        .await
        .expect("the v1 node starts");
    let leader = c
        .nodes
        .iter()
        .flatten()
        .find_map(|n| match n {
            Node::V2(p) if p.status().role == Role::Leader => Some(p),
            _ => None,
        })
        .expect("a v2 leader");
    let mut steps = Vec::new();
    let added = leader
        .add_server(&addr, |s| steps.push(s.to_string()))
        .await;
    match &added {
        Err(e @ Error::Rejected(why)) => {
            assert!(why.contains("tag 1"), "{why}");
            assert!(why.contains("stays a learner"), "{why}");
            assert_eq!(e.applied(), raftkit::error::Applied::No);
        }
        other => panic!(
            "add_server promoted a v1 node into a cluster using `delete`: {other:?} (steps {steps:?})"
        ),
    }
    assert!(!steps.iter().any(|s| s == "voter"), "{steps:?}");
    let id = Peer::<v2::Kv>::member_id(&addr);
    let me = leader.status();
    let member = me
        .members
        .iter()
        .find(|m| m.id == id)
        .expect("still a member");
    assert!(!member.voter, "the v1 node stays a learner");
    // `delete` still works, and the cluster still writes.
    assert_eq!(
        client.delete("b".into()).await.unwrap().as_deref(),
        Some("2")
    );
    client.insert("c".into(), "3".into()).await.unwrap();
    old.shutdown().await.ok();
    c.shutdown().await;
}

/// A single-node v1 cluster's data directory after one `put("a", "1")`,
/// stopped, with the address the node listened on.
async fn v1_directory_with_one_put() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addrs(1).remove(0);
    let (_ca, ids) = dev_cluster([format!("kv@{addr}")]).unwrap();
    let peer = v1::Kv::peer()
        .listen(addr.clone())
        .data_dir(dir.path())
        .bootstrap()
        .identity(ids[0].clone())
        .tick(TICK)
        .start()
        .await
        .unwrap();
    wait_for("a leader", 10, || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    peer.write(kv_versions::put_a_1()).await.unwrap();
    peer.shutdown().await.unwrap();
    drop(peer);
    (dir, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_handler_is_refused_at_start_naming_it() {
    let (dir, _) = v1_directory_with_one_put().await;

    kv_versions::assert_v3_refused(v3::Kv::peer().data_dir(dir.path()).tick(TICK).start().await);
    // The refusal wrote nothing: v2 (compatible) still starts on it, and
    // then v1 no longer does (its schema lacks v2's handlers: no downgrade).
    let upgraded = v2::Kv::peer()
        .data_dir(dir.path())
        .tick(TICK)
        .start()
        .await
        .expect("v2 starts on the v1 directory");
    wait_for("a leader", 10, || {
        (upgraded.status().role == Role::Leader).then_some(())
    })
    .await;
    let got = upgraded
        .read(v2::KvRead::Get { key: "a".into() })
        .await
        .unwrap();
    assert!(matches!(got, v2::KvReadOutput::Get(Some(ref v)) if v == "1"));
    upgraded.shutdown().await.unwrap();
    drop(upgraded);
    let started = v1::Kv::peer().data_dir(dir.path()).tick(TICK).start().await;
    kv_versions::refusal("v1", started, "`delete` (write tag 1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_start_that_fails_leaves_the_directory_to_v1() {
    let (dir, addr) = v1_directory_with_one_put().await;

    // v2 cannot listen: its port is taken.
    let held = wait_for("the node's port to be free", 10, || {
        std::net::UdpSocket::bind(&addr).ok()
    })
    .await;
    match v2::Kv::peer().data_dir(dir.path()).tick(TICK).start().await {
        Err(Error::Transport(why)) => assert!(why.contains("cannot listen"), "{why}"),
        Err(e) => panic!("expected a listen failure, got {e}"),
        Ok(_) => panic!("v2 started on a port another socket holds"),
    }
    drop(held);
    // The failed start did not make the directory v2's: v1 runs on it.
    let back = match v1::Kv::peer().data_dir(dir.path()).tick(TICK).start().await {
        Ok(p) => p,
        Err(e) => panic!("v1 refused the directory after v2 failed to start: {e}"),
    };
    wait_for("a leader", 10, || {
        (back.status().role == Role::Leader).then_some(())
    })
    .await;
    let got = back
        .read(v1::KvRead::Get { key: "a".into() })
        .await
        .unwrap();
    assert!(matches!(got, v1::KvReadOutput::Get(Some(ref v)) if v == "1"));
    back.shutdown().await.unwrap();
}

/// A bare QUIC transport whose hellos carry `schema` (and `fingerprint`).
async fn transport(
    name: &str,
    identity: Identity,
    schema: Schema,
    fingerprint: u64,
) -> (
    QuicTransport,
    Arc<SchemaBook>,
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<raftkit::core::Message>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let book = Arc::new(SchemaBook::new(schema, None));
    let mut config = QuicConfig::new("127.0.0.1:0".parse().unwrap(), name, identity, fingerprint);
    config.schemas = Some(book.clone());
    let (t, addr) = QuicTransport::start(config, tx, None)
        .await
        .expect("transport");
    (t, book, addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_across_compatible_schemas_and_refuse_incompatible_ones_at_hello() {
    let names = ["kv@a", "kv@b", "kv@c"];
    let (_ca, ids) = dev_cluster(names).unwrap();
    let (a, a_book, a_addr, _a_rx) = transport(
        names[0],
        ids[0].clone(),
        v1::Kv::schema(),
        v1::Kv::SCHEMA_FINGERPRINT,
    )
    .await;
    let (b, _, _, _b_rx) = transport(
        names[1],
        ids[1].clone(),
        v2::Kv::schema(),
        v2::Kv::SCHEMA_FINGERPRINT,
    )
    .await;
    let (c, _, _, _c_rx) = transport(
        names[2],
        ids[2].clone(),
        v3::Kv::schema(),
        v3::Kv::SCHEMA_FINGERPRINT,
    )
    .await;
    assert_ne!(v1::Kv::SCHEMA_FINGERPRINT, v2::Kv::SCHEMA_FINGERPRINT);
    let a_id = raftkit::identity::node_id(names[0]);
    let a_entry = BTreeMap::from([(a_id, a_addr.to_string())]);
    b.set_peers(a_entry.clone());
    c.set_peers(a_entry);
    // v2 dialing v1: other fingerprints, compatible schemas: accepted, and
    // v1's book now knows what v2 knows.
    let mut wb = b.watch_link(a_id).expect("link");
    tokio::time::timeout(
        Duration::from_secs(10),
        wb.wait_for(|s| *s == LinkState::Connected),
    )
    .await
    .expect("v2 links to v1 in time")
    .unwrap();
    let b_id = raftkit::identity::node_id(names[1]);
    wait_for("v1 to record v2's schema", 10, || a_book.peer(b_id)).await;
    assert!(
        a_book
            .peer(b_id)
            .unwrap()
            .handler(HandlerKind::Write, 1)
            .is_some()
    );
    // v3 dialing v1: `put` changed: refused at hello, naming it.
    let mut wc = c.watch_link(a_id).expect("link");
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        wc.wait_for(|s| matches!(s, LinkState::Refused(_))),
    )
    .await
    .expect("v3 refused in time")
    .unwrap()
    .clone();
    let LinkState::Refused(reason) = state else {
        unreachable!()
    };
    assert!(reason.contains("`put` (write tag 0)"), "{reason}");
    assert!(a_book.peer(raftkit::identity::node_id(names[2])).is_none());
    drop((a, b, c));
}

/// A schema of 600 writes, each with three long argument names: its
/// legacy form (no names) is small, its detailed form is not.
fn big_schema() -> Schema {
    let mut s = Schema::new("big", 1, Shape::Unit);
    for tag in 0..600u32 {
        let arg = |i: u32| format!("argument_{i}_of_handler_{tag}_with_a_long_descriptive_name");
        let (a, b, c) = (arg(0), arg(1), arg(2));
        let args = Shape::fields([
            (a.as_str(), Shape::Str),
            (b.as_str(), Shape::U64),
            (c.as_str(), Shape::Option(Box::new(Shape::Str))),
        ]);
        s.push(
            HandlerKind::Write,
            tag,
            &format!("op{tag}"),
            args,
            Shape::Unit,
        );
    }
    s
}

/// The encoded size of `value` (a frame's body).
fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    let mut buf = Vec::new();
    raftkit::transport::frame::encode_frame(value, usize::MAX, &mut buf).unwrap();
    buf.len() - 4
}

/// Two peers of the same binary whose schema with its detailed shapes is
/// larger than a hello may be ([`MAX_HELLO_BYTES`]) still link: the hello
/// carries the schema without its detailed shapes, which follow in a
/// second frame the acceptor asks for, so the acceptor records (and
/// compared) the detailed schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_whose_detailed_schema_exceeds_the_hello_cap_still_link() {
    use raftkit::transport::quic::MAX_HELLO_BYTES;
    let schema = big_schema();
    let mut legacy = schema.clone();
    legacy.detailed = false;
    assert!(
        encoded_len(&schema) > MAX_HELLO_BYTES,
        "the schema is not large enough"
    );
    assert!(encoded_len(&legacy) < MAX_HELLO_BYTES / 2);
    const FINGERPRINT: u64 = 0xb16;
    let names = ["big@a", "big@b"];
    let (_ca, ids) = dev_cluster(names).unwrap();
    let (a, a_book, a_addr, _a_rx) =
        transport(names[0], ids[0].clone(), schema.clone(), FINGERPRINT).await;
    let (b, _, _, _b_rx) = transport(names[1], ids[1].clone(), schema, FINGERPRINT).await;
    let a_id = raftkit::identity::node_id(names[0]);
    b.set_peers(BTreeMap::from([(a_id, a_addr.to_string())]));
    let mut wb = b.watch_link(a_id).expect("link");
    if tokio::time::timeout(
        Duration::from_secs(10),
        wb.wait_for(|s| *s == LinkState::Connected),
    )
    .await
    .is_err()
    {
        panic!(
            "two peers of the same binary did not link in 10 s (link state {:?})",
            *wb.borrow()
        );
    }
    let b_id = raftkit::identity::node_id(names[1]);
    let heard = wait_for("a to record b's schema", 10, || a_book.peer(b_id)).await;
    assert!(
        heard.detailed,
        "the detailed shapes did not follow the hello: names were not compared"
    );
    assert!(heard.handler(HandlerKind::Write, 599).is_some());
    drop((a, b));
}

/// Two peers whose schemas are too large for a hello with their detailed
/// shapes still compare names: a dialer whose `op0` takes its two `Str`
/// arguments in the other order than the acceptor's is refused, naming
/// the write (the legacy forms, one `(Str, Str)` tuple, are equal, so a
/// comparison without names linked them, and a fresh node of that binary
/// would have applied entries with the two arguments' meanings swapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_whose_detailed_schema_exceeds_the_hello_cap_are_refused_over_swapped_names() {
    use raftkit::transport::quic::MAX_HELLO_BYTES;
    let with_op0 = |first: &str, second: &str| {
        let mut s = big_schema();
        s.handlers[0].args = Shape::fields([(first, Shape::Str), (second, Shape::Str)]);
        s
    };
    let ours = with_op0("from", "to");
    let swapped = with_op0("to", "from");
    assert!(encoded_len(&ours) > MAX_HELLO_BYTES);
    assert!(ours.check_peer(&swapped).is_err(), "names differ");
    const FINGERPRINT: u64 = 0xb16;
    let names = ["big@a", "big@b"];
    let (_ca, ids) = dev_cluster(names).unwrap();
    let (a, a_book, a_addr, _a_rx) = transport(names[0], ids[0].clone(), ours, FINGERPRINT).await;
    let (b, _, _, _b_rx) = transport(names[1], ids[1].clone(), swapped, FINGERPRINT).await;
    let a_id = raftkit::identity::node_id(names[0]);
    b.set_peers(BTreeMap::from([(a_id, a_addr.to_string())]));
    let mut wb = b.watch_link(a_id).expect("link");
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        wb.wait_for(|s| matches!(s, LinkState::Refused(_) | LinkState::Connected)),
    )
    .await
    .expect("the link settles in 10 s")
    .unwrap()
    .clone();
    let LinkState::Refused(reason) = state else {
        panic!(
            "a peer whose `op0` swaps its two `Str` arguments linked (names not compared): {state:?}"
        );
    };
    assert!(reason.contains("`op0` (write tag 0)"), "{reason}");
    assert!(a_book.peer(raftkit::identity::node_id(names[1])).is_none());
    drop((a, b));
}

/// Two v1 nodes and a node running `new` on the in-process transport,
/// with the `new` node leading. That transport carries no hellos, so the
/// leader cannot know that its followers run v1 and lets commands they do
/// not know into the log (over QUIC the hellos tell it, and it refuses).
async fn two_v1_followers_behind<S: StateMachine + Default>(
    dir: &std::path::Path,
    new: raftkit::runtime::PeerBuilder<S>,
) -> (Vec<Peer<v1::Kv>>, Peer<S>) {
    const ADDRS: [&str; 3] = ["m:1", "m:2", "m:3"];
    let net = raftkit::transport::memory::MemoryNetwork::new(3);
    let mut old = Vec::new();
    for addr in &ADDRS[..2] {
        let net = net.clone();
        old.push(
            v1::Kv::peer()
                .listen(*addr)
                .data_dir(dir.join(addr))
                .bootstrap_members(ADDRS)
                .tick(Duration::from_millis(10))
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .start()
                .await
                .unwrap(),
        );
    }
    let net2 = net.clone();
    let new = new
        .listen(ADDRS[2])
        .data_dir(dir.join(ADDRS[2]))
        .bootstrap_members(ADDRS)
        .tick(Duration::from_millis(10))
        .transport(move |id, inbox| Arc::new(net2.endpoint(id, inbox)))
        .start()
        .await
        .unwrap();
    // Make the new node the leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while new.status().role != Role::Leader {
        assert!(Instant::now() < deadline, "the new node never led");
        if let Some(l) = old.iter().find(|p| p.status().role == Role::Leader) {
            let _ = l.transfer_leadership(new.id()).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (old, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_a_node_cannot_decode_halts_it_naming_index_and_tag() {
    // A v2 leader lets `delete` into the log (see `two_v1_followers_behind`):
    // the v1 followers then meet an entry they cannot decode. Under the
    // default `skip` policy they still halt rather than skip it.
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = two_v1_followers_behind(dir.path(), v2::Kv::peer()).await;
    new.write(v2::KvWrite::Insert {
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .unwrap();
    // The delete's index lies after everything in the log before it and at
    // or below the last index once it was answered (the status is read,
    // not the entry, so bound it from both sides rather than guess it).
    let before = new.status().last_index;
    let r = new.write(v2::KvWrite::Delete { key: "k".into() }).await;
    assert!(
        matches!(r, Ok(v2::KvWriteOutput::Delete(Some(_)))),
        "the v2 leader applies delete"
    );
    let after = new.status().last_index;
    for p in &old {
        let halted = wait_for("the v1 follower to halt", 20, || p.status().halted).await;
        assert!(halted.contains("write tag 1"), "{halted}");
        let index: u64 = halted
            .split("entry ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no entry index in {halted:?}"));
        assert!(
            before < index && index <= after,
            "halted at entry {index}, the delete is in ({before}, {after}]: {halted}"
        );
        assert!(
            p.status().applied < index,
            "the entry was skipped: {halted}"
        );
    }
    for p in &old {
        let _ = p.shutdown().await;
    }
    let _ = new.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_a_trailing_field_halts_an_older_node_instead_of_losing_the_field() {
    // `put` with a third argument, let into the log by a leader that does
    // not know its followers run v1 (see `two_v1_followers_behind`). Its
    // bytes start with a whole v1 `put`: a v1 node that decoded the prefix
    // would apply `put(k, v)` and diverge from the leader's `v (n)`.
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = two_v1_followers_behind(dir.path(), wider::Kv::peer()).await;
    let before = new.status().last_index;
    new.write(wider::KvWrite::Put {
        key: "k".into(),
        value: "v".into(),
        note: "n".into(),
    })
    .await
    .unwrap();
    let after = new.status().last_index;
    for p in &old {
        // Halted, or past the entry (applied it): whichever comes first.
        wait_for("the v1 follower to halt or apply the entry", 20, || {
            let s = p.status();
            (s.halted.is_some() || s.applied >= after).then_some(())
        })
        .await;
        let s = p.status();
        let halted = s.halted.unwrap_or_else(|| {
            panic!(
                "the v1 follower applied the wider command (applied {}, the entry is in ({before}, {after}]) instead of halting",
                s.applied
            )
        });
        assert!(
            halted.contains("write tag 0") && halted.contains("trailing bytes"),
            "{halted}"
        );
        assert!(s.applied <= before, "the entry was applied: {halted}");
    }
    for p in &old {
        let _ = p.shutdown().await;
    }
    let _ = new.shutdown().await;
}
