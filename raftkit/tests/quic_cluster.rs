//! Real peers over real QUIC on loopback, real WAL files in temp dirs,
//! driven through the generated typed client.

mod support;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{DevCluster, free_addrs, member_builder};

use raftkit::client::wire::{ClientRequest, SessionId, SessionRef};
use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::{Identity, dev_cluster};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Mismatch(pub Option<String>);

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, String>,
    counter: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[write]
    fn cas(&mut self, key: String, old: Option<String>, new: String) -> Result<(), Mismatch> {
        let cur = self.map.get(&key).cloned();
        if cur == old {
            self.map.insert(key, new);
            Ok(())
        } else {
            Err(Mismatch(cur))
        }
    }

    #[write]
    fn incr(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    #[write]
    fn boom(&mut self) -> u64 {
        panic!("boom handler")
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    #[read]
    fn count(&self) -> u64 {
        self.counter
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    peers: Vec<Option<Peer<Kv>>>,
    client_identity: Identity,
}

const TICK: Duration = Duration::from_millis(20);

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let DevCluster {
            addrs,
            ids,
            client: client_identity,
            dir,
            ..
        } = DevCluster::new(n);
        let mut peers = Vec::new();
        for (addr, id) in addrs.iter().zip(ids) {
            let peer = member_builder::<Kv>(dir.path(), &addrs, addr, id, TICK)
                .start()
                .await
                .expect("peer starts");
            peers.push(Some(peer));
        }
        Cluster {
            dir,
            addrs,
            peers,
            client_identity,
        }
    }

    async fn restart(&mut self, i: usize) {
        // Only the data directory: name, address and identity come from it.
        let peer = Kv::peer()
            .data_dir(self.dir.path().join(&self.addrs[i]))
            .tick(TICK)
            .start()
            .await
            .expect("peer restarts");
        self.peers[i] = Some(peer);
    }

    async fn stop(&mut self, i: usize) {
        if let Some(p) = self.peers[i].take() {
            p.shutdown().await.expect("clean shutdown");
        }
    }

    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let leaders: Vec<usize> = (0..self.peers.len())
                .filter(|&i| {
                    self.peers[i]
                        .as_ref()
                        .is_some_and(|p| p.status().role == Role::Leader)
                })
                .collect();
            if let [one] = leaders.as_slice() {
                return *one;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no single leader in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn client(&self, addrs: &[String]) -> KvClient {
        KvClient::connect_with(
            addrs,
            self.client_identity.clone(),
            ClientOptions::default(),
        )
        .await
        .expect("client connects")
    }

    async fn shutdown(mut self) {
        for i in 0..self.peers.len() {
            self.stop(i).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_fail_over_and_restart_over_quic() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let kv = c.client(&c.addrs).await;
    for i in 0..20 {
        kv.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    assert_eq!(kv.get("k7".into()).await.unwrap(), Some("v7".into()));
    assert_eq!(
        kv.cas("k1".into(), Some("nope".into()), "x".into())
            .await
            .unwrap(),
        Err(Mismatch(Some("v1".into())))
    );

    // Kill the leader: a new one is elected within a few election
    // timeouts (10-20 ticks each), and the client carries on
    // transparently. The clock starts once the leader is down: its
    // graceful shutdown waits up to a second for its endpoint to go idle,
    // which is no part of the failover (counting it could fail the test on a
    // loaded machine); three timeouts leave room for a split vote, and 5 s
    // more for a CI machine running every test binary at once (it was 1 s).
    c.stop(leader).await;
    let started = tokio::time::Instant::now();
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let elapsed = started.elapsed();
    assert!(
        elapsed < TICK * 20 * 3 + Duration::from_secs(5),
        "failover took {elapsed:?}"
    );
    kv.put("after".into(), "failover".into()).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            kv.get(format!("k{i}")).await.unwrap(),
            Some(format!("v{i}")),
            "committed entry lost"
        );
    }

    // Whole cluster down, then up again from the directories alone.
    c.restart(leader).await;
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.leader().await;
    let kv = c.client(&c.addrs).await;
    assert_eq!(
        kv.get("after".into()).await.unwrap(),
        Some("failover".into())
    );
    assert_eq!(kv.get("k19".into()).await.unwrap(), Some("v19".into()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_follower_gets_leader_served_answers() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let kv = c.client(&[c.addrs[follower].clone()]).await;
    kv.put("a".into(), "1".into()).await.unwrap();
    assert_eq!(kv.get("a".into()).await.unwrap(), Some("1".into()));
    c.shutdown().await;
}

/// Client protocol version 2 (`client::mux`): the calls of one client share
/// the connection's hello stream, and each gets its own answer, matched by
/// id however they interleave. A version-1 client (a stream per request)
/// is still served, and so is a request on a stream of its own from a
/// version-2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_calls_get_their_own_answers_and_version_1_is_still_served() {
    use raftkit::client::wire::{ClientHello, ClientResponse};
    use raftkit::transport::frame::{DEFAULT_MAX_FRAME_BYTES as MAX, read_frame, write_frame};
    use raftkit::transport::quic::connect_client;

    let c = Cluster::start(1).await;
    c.leader().await;
    let kv = c.client(&c.addrs).await;
    let calls = (0..64).map(|i| {
        let kv = kv.clone();
        tokio::spawn(async move {
            // A status call, answered at once, overtakes the write sent
            // before it: answers come back out of order.
            let (put, status) = tokio::join!(
                kv.put(format!("k{i}"), format!("v{i}")),
                kv.inner().request(ClientRequest::Status)
            );
            assert_eq!(put.unwrap(), None, "put {i}");
            assert!(
                matches!(status, Ok(ClientResponse::Status(_))),
                "status {i}: {status:?}"
            );
            kv.get(format!("k{i}")).await.unwrap()
        })
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), Some(format!("v{i}")), "call {i}");
    }

    let addr = c.addrs[0].parse().unwrap();
    for version in [1u32, 2] {
        let conn = connect_client(addr, &c.client_identity).await.unwrap();
        let (mut hs, mut hr) = conn.open_bi().await.unwrap();
        let hello = ClientHello {
            version,
            schema: 0,
            schema_desc: None,
        };
        write_frame(&mut hs, &hello, MAX).await.unwrap();
        let answer: ClientResponse = read_frame(&mut hr, MAX).await.unwrap();
        let mux = version >= 2;
        assert_eq!(
            answer,
            ClientResponse::Ok(if mux { vec![2] } else { Vec::new() }),
            "version {version}"
        );
        // A request on a stream of its own, as in version 1.
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        write_frame(&mut s, &ClientRequest::Status, MAX)
            .await
            .unwrap();
        let _ = s.finish();
        let got: ClientResponse = read_frame(&mut r, MAX).await.unwrap();
        assert!(matches!(got, ClientResponse::Status(_)), "{got:?}");
        if mux {
            // Two requests on the hello stream, answered by id.
            for id in [7u64, 9] {
                write_frame(&mut hs, &(id, ClientRequest::Status), MAX)
                    .await
                    .unwrap();
            }
            let mut ids = Vec::new();
            for _ in 0..2 {
                let (id, got): (u64, ClientResponse) = read_frame(&mut hr, MAX).await.unwrap();
                assert!(matches!(got, ClientResponse::Status(_)), "{got:?}");
                ids.push(id);
            }
            ids.sort_unstable();
            assert_eq!(ids, [7, 9]);
        }
        conn.close(0u32.into(), b"done");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_and_garbage_never_enters_the_log() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let raw = Client::connect_with(
        &c.addrs,
        c.client_identity.clone(),
        Kv::SCHEMA_FINGERPRINT,
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let incr = raftkit::state_machine::encode("command", &KvWrite::Incr).unwrap();
    let opened = raw.request(ClientRequest::OpenSession).await.unwrap();
    let raftkit::client::wire::ClientResponse::Ok(id) = opened else {
        panic!("open answered {opened:?}")
    };
    let id: SessionId = raftkit::state_machine::decode("session id", &id).unwrap();
    let session = SessionRef {
        id,
        seq: 1,
        acked_below: 1,
    };
    let first = raw
        .request(ClientRequest::Write {
            session,
            command: incr.clone(),
        })
        .await
        .unwrap();
    // The reply is "lost"; the client retries the same write.
    let again = raw
        .request(ClientRequest::Write {
            session,
            command: incr,
        })
        .await
        .unwrap();
    assert_eq!(first, again);
    let kv = KvClient::new(raw.clone());
    assert_eq!(
        kv.count().await.unwrap(),
        1,
        "the retried write was applied once"
    );

    // A command that does not decode is refused before it enters the log.
    let before = c.peers[leader].as_ref().unwrap().status().last_index;
    let r = raw
        .request(ClientRequest::Write {
            session: SessionRef {
                id,
                seq: 2,
                acked_below: 2,
            },
            command: vec![0xff, 0xff, 0xff],
        })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))), "got {r:?}");
    assert_eq!(
        c.peers[leader].as_ref().unwrap().status().last_index,
        before
    );

    // A panicking handler under `skip`: the caller gets the error, the
    // cluster keeps serving.
    match kv.boom().await {
        Err(Error::Handler { message }) => assert!(message.contains("boom handler")),
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert_eq!(kv.incr().await.unwrap(), 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_and_schemas_are_refused() {
    let c = Cluster::start(1).await;
    c.leader().await;
    // A client whose certificate comes from another CA.
    let (other, _) = dev_cluster(["kv@elsewhere"]).unwrap();
    let stranger = KvClient::connect_with(
        &c.addrs,
        other.issue_client("client").unwrap(),
        ClientOptions::default().with_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(stranger.is_err(), "a foreign certificate was accepted");
    // A client of another schema.
    let r = Client::connect_with(
        &c.addrs,
        c.client_identity.clone(),
        0xdead_beef,
        ClientOptions::default(),
    )
    .await;
    match r {
        Err(Error::SchemaMismatch { handler, reason }) => {
            assert!(handler.contains("predates structural schemas"), "{handler}");
            assert!(
                reason.contains("the client has 0x00000000deadbeef"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected a schema mismatch, got {other}"),
        Ok(_) => panic!("a client of another schema was accepted"),
    }
    // A peer cannot start with a certificate that is not a node
    // certificate issued to its name; nothing is written.
    let (ca, _) = dev_cluster(["kv@x"]).unwrap();
    let spare = free_addrs(1).remove(0);
    for wrong in [
        ca.issue_client(&format!("kv@{spare}")).unwrap(),
        ca.issue_node("kv@elsewhere", &[]).unwrap(),
    ] {
        let data = c.dir.path().join("wrong");
        let r = Kv::peer()
            .listen(spare.clone())
            .data_dir(&data)
            .bootstrap()
            .identity(wrong)
            .start()
            .await;
        match r {
            Err(Error::Tls(why)) => {
                assert!(why.contains("node certificate issued to its name"), "{why}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a peer started with a wrong certificate"),
        }
        assert!(!data.exists(), "nothing written");
    }
    // The node still serves a good client afterwards.
    let kv = c.client(&c.addrs).await;
    kv.put("still".into(), "serving".into()).await.unwrap();
    c.shutdown().await;
}

/// On a multiplexed stream, a request whose frame arrives in two parts,
/// with another request's answer completing in between, is read whole: the
/// member keeps its half-read frame while it hands over the other answer
/// (`runtime::client_mux` reads the stream across its loop's turns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_frame_split_around_another_answer_is_read_whole() {
    use raftkit::client::wire::{ClientHello, ClientResponse};
    use raftkit::transport::frame::{
        DEFAULT_MAX_FRAME_BYTES as MAX, encode_frame, read_frame, write_frame,
    };
    use raftkit::transport::quic::connect_client;
    use tokio::io::AsyncWriteExt;

    /// An answer within a deadline (a lost half frame leaves the member
    /// waiting for bytes that never come).
    async fn answered<T, E: std::fmt::Debug>(
        read: impl std::future::Future<Output = Result<T, E>>,
    ) -> T {
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("answered within 10 s")
            .expect("an answer frame")
    }

    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let addr = c.addrs[leader].parse().unwrap();
    let conn = connect_client(addr, &c.client_identity).await.unwrap();
    let (mut hs, mut hr) = conn.open_bi().await.unwrap();
    let hello = ClientHello {
        version: 2,
        schema: 0,
        schema_desc: None,
    };
    write_frame(&mut hs, &hello, MAX).await.unwrap();
    let answer: ClientResponse = read_frame(&mut hr, MAX).await.unwrap();
    assert_eq!(answer, ClientResponse::Ok(vec![2]));
    for round in 0..20u64 {
        // Request 1 opens a session: answered only once its entry commits.
        // Request 2 (a status) follows in the same write, cut in half.
        let mut bytes = Vec::new();
        encode_frame(&(2 * round, ClientRequest::OpenSession), MAX, &mut bytes).unwrap();
        let first = bytes.len();
        encode_frame(&(2 * round + 1, ClientRequest::Status), MAX, &mut bytes).unwrap();
        let cut = first + (bytes.len() - first) / 2;
        hs.write_all(&bytes[..cut]).await.unwrap();
        hs.flush().await.unwrap();
        // The session's answer comes while the status frame is half read.
        let (id, got): (u64, ClientResponse) = answered(read_frame(&mut hr, MAX)).await;
        assert_eq!(id, 2 * round, "round {round}: {got:?}");
        assert!(
            matches!(got, ClientResponse::Ok(_)),
            "round {round}: {got:?}"
        );
        hs.write_all(&bytes[cut..]).await.unwrap();
        let (id, got): (u64, ClientResponse) = answered(read_frame(&mut hr, MAX)).await;
        assert_eq!(id, 2 * round + 1, "round {round}: {got:?}");
        assert!(
            matches!(got, ClientResponse::Status(_)),
            "round {round}: {got:?}"
        );
    }
    conn.close(0u32.into(), b"done");
    c.shutdown().await;
}
