//! Membership changes over QUIC: grow by join, shrink, replace, remove the
//! leader, transfer leadership under load, a joiner with a foreign
//! certificate refused, a change while another is in flight refused.

mod support;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::free_addrs;

use raftkit::client::wire::ClientRequest;
use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::{ClusterCa, Identity, dev_cluster};

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, u64>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: u64) {
        self.map.insert(key, value);
    }

    #[read]
    fn get(&self, key: String) -> Option<u64> {
        self.map.get(&key).copied()
    }
}

const TICK: Duration = Duration::from_millis(20);
/// The tick of the tests with a cluster of two voters, where every election
/// needs both: at [`TICK`] (elections after 200-400 ms of silence) a loaded
/// machine's scheduling gaps set them off again and again (s62: "membership
/// did not reach 2 voters" after 30 s); at 100 ms, after 1-2 s.
const SLOW_TICK: Duration = Duration::from_millis(100);

struct World {
    dir: tempfile::TempDir,
    ca: ClusterCa,
    /// An admin certificate: membership commands and data.
    client: Identity,
    /// The peers' tick.
    tick: Duration,
}

impl World {
    fn new() -> World {
        World::with_tick(TICK)
    }

    fn with_tick(tick: Duration) -> World {
        let ca = ClusterCa::generate("membership").expect("CA");
        let client = ca.issue_admin("admin").expect("admin identity");
        World {
            dir: tempfile::tempdir().expect("tempdir"),
            ca,
            client,
            tick,
        }
    }

    async fn peer(&self, addr: &str, bootstrap: bool, join: &[String]) -> Peer<Kv> {
        let id = self
            .ca
            .issue_node(&format!("kv@{addr}"), &[])
            .expect("issue");
        let mut b = Kv::peer()
            .listen(addr)
            .data_dir(self.dir.path().join(addr))
            .identity(id)
            .tick(self.tick);
        if bootstrap {
            b = b.bootstrap();
        }
        if !join.is_empty() {
            b = b.join(join.to_vec());
        }
        b.start().await.expect("peer starts")
    }

    async fn client(&self, addrs: &[String]) -> Client {
        Client::connect_with(
            addrs,
            self.client.clone(),
            Kv::SCHEMA_FINGERPRINT,
            ClientOptions::default(),
        )
        .await
        .expect("client connects")
    }
}

async fn voters_become(peers: &[&Peer<Kv>], n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = peers.iter().find(|p| p.status().role == Role::Leader);
        if let Some(l) = leader {
            let st = l.status();
            if st.members.iter().filter(|m| m.voter).count() == n
                && !st.joint
                && st.config_index <= st.commit
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "membership did not reach {n} voters"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader_of<'a>(peers: &[&'a Peer<Kv>]) -> Option<&'a Peer<Kv>> {
    peers
        .iter()
        .copied()
        .find(|p| p.status().role == Role::Leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_by_join_shrink_replace_and_remove_the_leader() {
    let w = World::new();
    let addrs = free_addrs(6);
    let a = w.peer(&addrs[0], true, &[]).await;
    voters_become(&[&a], 1).await;
    let seeds = vec![addrs[0].clone()];
    // 1 -> 3 by join.
    let b = w.peer(&addrs[1], false, &seeds).await;
    let c = w.peer(&addrs[2], false, &seeds).await;
    voters_become(&[&a, &b, &c], 3).await;
    // 3 -> 5 by join.
    let d = w.peer(&addrs[3], false, &seeds).await;
    let e = w.peer(&addrs[4], false, &seeds).await;
    voters_become(&[&a, &b, &c, &d, &e], 5).await;
    let client = w.client(&addrs[..5]).await;
    let kv = KvClient::new(client.clone());
    kv.put("x".into(), 1).await.unwrap();

    // 5 -> 3.
    client
        .admin(ClientRequest::RemoveServer {
            addr: addrs[3].clone(),
        })
        .await
        .unwrap();
    client
        .admin(ClientRequest::RemoveServer {
            addr: addrs[4].clone(),
        })
        .await
        .unwrap();
    voters_become(&[&a, &b, &c], 3).await;
    d.shutdown().await.unwrap();
    e.shutdown().await.unwrap();

    // Replace c by f, added by an operator call that reports its steps.
    let f = w.peer(&addrs[5], false, &[]).await;
    let steps = client.add_server(&addrs[5]).await.unwrap();
    assert!(steps.iter().any(|s| s.contains("learner")), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.contains("catch-up round")),
        "{steps:?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("voter"), "{steps:?}");
    voters_become(&[&a, &b, &c, &f], 4).await;
    client
        .admin(ClientRequest::RemoveServer {
            addr: addrs[2].clone(),
        })
        .await
        .unwrap();
    voters_become(&[&a, &b, &f], 3).await;
    c.shutdown().await.unwrap();

    // Remove the leader: it steps down, the others carry on with every write.
    let peers = [&a, &b, &f];
    let leader = leader_of(&peers).expect("a leader");
    let leader_addr = leader
        .status()
        .members
        .iter()
        .find(|m| m.id == leader.id())
        .and_then(|m| m.addr.clone())
        .unwrap();
    client
        .admin(ClientRequest::RemoveServer {
            addr: leader_addr.clone(),
        })
        .await
        .unwrap();
    let rest: Vec<&Peer<Kv>> = peers
        .iter()
        .copied()
        .filter(|p| p.id() != leader.id())
        .collect();
    voters_become(&rest, 2).await;
    let kv = KvClient::new(
        w.client(
            &addrs
                .iter()
                .filter(|a| **a != leader_addr)
                .cloned()
                .collect::<Vec<_>>(),
        )
        .await,
    );
    assert_eq!(kv.get("x".into()).await.unwrap(), Some(1));
    kv.put("y".into(), 2).await.unwrap();
    for p in [a, b, f] {
        p.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leadership_under_load_loses_no_acknowledged_write() {
    let w = World::new();
    let addrs = free_addrs(3);
    let a = w.peer(&addrs[0], true, &[]).await;
    voters_become(&[&a], 1).await;
    let b = w.peer(&addrs[1], false, &addrs[..1]).await;
    let c = w.peer(&addrs[2], false, &addrs[..1]).await;
    voters_become(&[&a, &b, &c], 3).await;
    let client = w.client(&addrs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for t in 0..4u64 {
        let kv = KvClient::new(client.clone());
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("t{t}-{i}");
                if kv.put(key.clone(), i).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                    done.push((key, i));
                }
                i += 1;
            }
            done
        }));
    }
    let peers = [&a, &b, &c];
    for _ in 0..2 {
        let before = acked.load(Ordering::Relaxed);
        while acked.load(Ordering::Relaxed) < before + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let leader = leader_of(&peers).expect("leader");
        let target = peers.iter().find(|p| p.id() != leader.id()).expect("other");
        let target_addr = leader
            .status()
            .members
            .iter()
            .find(|m| m.id == target.id())
            .and_then(|m| m.addr.clone())
            .unwrap();
        client
            .admin(ClientRequest::TransferLeader { addr: target_addr })
            .await
            .unwrap();
        assert_eq!(leader_of(&peers).map(|p| p.id()), Some(target.id()));
    }
    stop.store(true, Ordering::Relaxed);
    let kv = KvClient::new(client.clone());
    for wtask in writers {
        for (key, value) in wtask.await.unwrap() {
            assert_eq!(
                kv.get(key.clone()).await.unwrap(),
                Some(value),
                "acknowledged write {key} lost"
            );
        }
    }
    for p in [a, b, c] {
        p.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_joiner_is_refused_and_concurrent_changes_are_refused() {
    let w = World::with_tick(SLOW_TICK);
    let addrs = free_addrs(3);
    let a = w.peer(&addrs[0], true, &[]).await;
    voters_become(&[&a], 1).await;
    // A joiner whose certificate comes from another CA never gets in.
    let (_, mut foreign) = dev_cluster([format!("kv@{}", addrs[2])]).unwrap();
    let stranger = Kv::peer()
        .listen(addrs[2].clone())
        .data_dir(w.dir.path().join("stranger"))
        .identity(foreign.pop().unwrap())
        .tick(w.tick)
        .join(addrs[..1].to_vec())
        .start()
        .await
        .unwrap();
    // A change while another is in flight is refused with a clear error:
    // adding a learner that never answers keeps nothing in flight, so use
    // two back-to-back changes on the leader itself.
    let b_id = w.ca.issue_node(&format!("kv@{}", addrs[1]), &[]).unwrap();
    let b = Kv::peer()
        .listen(addrs[1].clone())
        .data_dir(w.dir.path().join(&addrs[1]))
        .identity(b_id)
        .tick(w.tick)
        .start()
        .await
        .unwrap();
    let mut conf = raftkit::core::Configuration::new([a.id()]);
    conf.addrs.insert(a.id(), addrs[0].clone());
    conf.voters.insert(b.id());
    conf.addrs.insert(b.id(), addrs[1].clone());
    a.change_config(conf.clone()).await.unwrap();
    let second = a.change_config(conf).await;
    match second {
        Err(Error::Rejected(why)) => assert!(why.contains("in flight"), "{why}"),
        other => panic!("a second change was not refused: {other:?}"),
    }
    voters_become(&[&a, &b], 2).await;
    let st = a.status();
    assert!(
        !st.members.iter().any(|m| m.id == stranger.id()),
        "the foreign joiner got in"
    );
    assert_eq!(stranger.status().role, Role::Follower);
    for p in [a, b, stranger] {
        p.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_certificate_changes_membership() {
    let w = World::new();
    let addrs = free_addrs(3);
    let a = w.peer(&addrs[0], true, &[]).await;
    voters_become(&[&a], 1).await;
    // b waits to be added (neither bootstrap nor join).
    let b = w.peer(&addrs[1], false, &[]).await;
    let connect = |identity: Identity| {
        let seeds = addrs[..1].to_vec();
        async move {
            Client::connect_with(
                &seeds,
                identity,
                Kv::SCHEMA_FINGERPRINT,
                ClientOptions::default().with_timeout(Duration::from_secs(5)),
            )
            .await
            .expect("any role connects")
        }
    };
    let unauthorized = |r: Result<(), Error>, needle: &str| match r {
        Err(Error::Unauthorized(why)) => {
            assert!(why.contains(needle), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    };

    // A client certificate: data yes, membership and leadership no.
    let client = connect(w.ca.issue_client("app").expect("client cert")).await;
    KvClient::new(client.clone())
        .put("k".into(), 1)
        .await
        .expect("a client writes");
    unauthorized(
        client.add_server(&addrs[1]).await.map(|_| ()),
        "need an admin certificate",
    );
    for request in [
        ClientRequest::AddLearner {
            addr: addrs[1].clone(),
        },
        ClientRequest::RemoveServer {
            addr: addrs[0].clone(),
        },
        ClientRequest::TransferLeader {
            addr: addrs[0].clone(),
        },
    ] {
        unauthorized(client.admin(request).await, "need an admin certificate");
    }
    // b's own node certificate may ask for b only, and no data.
    let as_b = connect(
        w.ca.issue_node(&format!("kv@{}", addrs[1]), &[])
            .expect("node cert"),
    )
    .await;
    unauthorized(
        as_b.admin(ClientRequest::AddLearner {
            addr: addrs[2].clone(),
        })
        .await,
        "may only ask to add its own node",
    );
    // (A write first opens a session: that is what is refused.)
    unauthorized(
        KvClient::new(as_b.clone())
            .put("k".into(), 2)
            .await
            .map(|_| ()),
        "data commands need a client or admin certificate",
    );
    assert_eq!(a.status().members.len(), 1, "nothing was applied");
    assert!(as_b.status().await.is_ok(), "status is open to every role");

    // The admin certificate adds b as a learner: a learner, not a voter.
    let admin = w.client(&addrs[..1]).await;
    admin
        .admin(ClientRequest::AddLearner {
            addr: addrs[1].clone(),
        })
        .await
        .expect("an admin adds a learner");
    // (The request returns once the change is proposed: wait for it.)
    let mut w = a.watch();
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        w.wait_for(|s| s.members.iter().any(|m| m.id == b.id()) && s.commit >= s.config_index),
    )
    .await
    .expect("b listed in time")
    .expect("peer alive")
    .clone();
    let b_in_a = st.members.iter().find(|m| m.id == b.id());
    assert!(
        b_in_a.is_some_and(|m| !m.voter),
        "added as a learner: {b_in_a:?}"
    );
    // Then as a server (the learner is promoted).
    admin
        .add_server(&addrs[1])
        .await
        .expect("an admin adds a server");
    voters_become(&[&a, &b], 2).await;
    for p in [a, b] {
        p.shutdown().await.unwrap();
    }
}

/// Found by review (stop 41): `join` ran only on a node's first start (an
/// empty store). A joiner added as a learner that stopped before its
/// promotion came back with a store, never asked again, and stayed a
/// learner for good. A restart with `join` resumes the join while the
/// node's own configuration lists it as a learner (and only then: a node
/// that was removed does not add itself back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_restarted_as_a_learner_is_promoted() {
    let w = World::new();
    let addrs = free_addrs(2);
    let a = w.peer(&addrs[0], true, &[]).await;
    voters_become(&[&a], 1).await;
    // The second node starts without joining; the admin adds it as a
    // learner only (as a join cut short after its first step would).
    let b = w.peer(&addrs[1], false, &[]).await;
    let client = w.client(&addrs[..1]).await;
    client
        .admin(ClientRequest::AddLearner {
            addr: addrs[1].clone(),
        })
        .await
        .expect("learner added");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !b
        .status()
        .members
        .iter()
        .any(|m| m.id == b.id() && !m.voter)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the learner never heard of its configuration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.shutdown().await.expect("shutdown");
    drop(b);
    // Back with `join`, from its store.
    let b = w.peer(&addrs[1], false, &addrs[..1]).await;
    voters_become(&[&a, &b], 2).await;
    for p in [a, b] {
        p.shutdown().await.expect("shutdown");
    }
}
