//! [`PeerBuilder::listen_socket`](super::PeerBuilder::listen_socket): a
//! peer serves on a UDP socket its caller bound, never releasing the port
//! (`dev::Cluster` and the kv demo learn free ports by binding port 0; they
//! used to drop those sockets and have the peers bind the port numbers
//! again, leaving a window in which another process could take one).

use std::time::Duration;

use crate::client::ClientOptions;
use crate::core::Role;
use crate::error::Error;
use crate::prelude::*;
use crate::tls::dev_cluster;

use super::test_gate::until;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "handed")]
struct Handed {
    n: u64,
}

#[crate::state_machine]
impl Handed {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

/// The peer listens on the very socket it was handed (its address, its
/// name, a client's write through it), and the port stays taken from the
/// caller's bind on: binding it again fails all along. A second handle on
/// the socket stays open through the start, so a peer that bound the port
/// by address (the release-then-rebind race) fails to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serves_on_the_socket_it_was_handed() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let addr = socket.local_addr().expect("its address");
    let taken = |when: &str| {
        let again = std::net::UdpSocket::bind(addr).map(drop);
        assert_eq!(
            again.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse),
            "{when}: the port is taken"
        );
    };
    let (ca, mut ids) = dev_cluster([format!("handed@{addr}")]).expect("dev CA");
    let node = ids.pop().expect("node identity");
    // Held through the start: a peer that released the handed socket and
    // bound its address again would find the port taken and fail to start.
    let dup = socket.try_clone().expect("a second handle on the socket");
    let builder = Handed::peer()
        .in_memory()
        .listen_socket(socket)
        .bootstrap()
        .identity(node)
        .tick(Duration::from_millis(20));
    taken("handed to the builder");
    let peer = builder
        .start()
        .await
        .expect("the peer starts on the handed socket, not by binding its address");
    drop(dup);
    taken("served");
    assert_eq!(peer.local_addr(), Some(addr), "the handed socket's address");
    assert_eq!(peer.name(), format!("handed@{addr}"), "named after it");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    let client = HandedClient::connect_with(
        [addr.to_string()],
        ca.issue_client("c").expect("client identity"),
        ClientOptions::default().with_timeout(Duration::from_secs(20)),
    )
    .await
    .expect("a client connects at the socket's address");
    assert_eq!(client.add(2).await.expect("a write"), 2);
    peer.shutdown().await.expect("shutdown");
}

/// Starts a bootstrapping peer (in memory, or on `dir`) handed a socket
/// bound to a free loopback port but told to listen on another one (held
/// by the returned socket, so nobody else takes it): the handed socket's
/// address, the other address, the socket holding it, and the outcome.
async fn start_mismatched(
    dir: Option<&std::path::Path>,
) -> (
    std::net::SocketAddr,
    String,
    std::net::UdpSocket,
    Result<Peer<Handed>, Error>,
) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let addr = socket.local_addr().expect("its address");
    let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("another free port");
    let elsewhere = other.local_addr().expect("its address").to_string();
    let (_ca, mut ids) = dev_cluster([format!("handed@{elsewhere}")]).expect("dev CA");
    let builder = match dir {
        Some(dir) => Handed::peer().data_dir(dir),
        None => Handed::peer().in_memory(),
    };
    let started = builder
        .listen(elsewhere.clone())
        .listen_socket(socket)
        .bootstrap()
        .identity(ids.pop().expect("node identity"))
        .tick(Duration::from_millis(20))
        .start()
        .await;
    (addr, elsewhere, other, started)
}

/// A listen address that is not the handed socket's is refused at start,
/// nothing served: the peer would be named (and its certificate issued)
/// after an address it does not listen on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_other_than_the_sockets_is_refused() {
    let (addr, elsewhere, _other, started) = start_mismatched(None).await;
    match started {
        Err(Error::Rejected(why)) => assert!(
            why.contains(&addr.to_string()) && why.contains(&elsewhere),
            "names both addresses: {why}"
        ),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a peer started on a socket not bound to its listen address"),
    }
}

/// The refusal of a mismatched listen address comes before the data
/// directory is written (no meta, no bootstrapped log naming an address
/// the peer never served on): a corrected start on the same directory
/// then starts, named after the socket it serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_listen_address_leaves_the_data_directory_unwritten() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("peer");
    let (_, _, _other, started) = start_mismatched(Some(&dir)).await;
    match started {
        Err(Error::Rejected(_)) => {}
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a peer started on a socket not bound to its listen address"),
    }
    let written: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "a refused start wrote into the data directory: {written:?}"
    );

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let addr = socket.local_addr().expect("its address");
    let (_ca, mut ids) = dev_cluster([format!("handed@{addr}")]).expect("dev CA");
    let peer = Handed::peer()
        .data_dir(&dir)
        .listen_socket(socket)
        .bootstrap()
        .identity(ids.pop().expect("node identity"))
        .tick(Duration::from_millis(20))
        .start()
        .await
        .expect("the corrected start on the same directory starts");
    assert_eq!(peer.local_addr(), Some(addr), "the handed socket's address");
    assert_eq!(peer.name(), format!("handed@{addr}"), "named after it");
    peer.shutdown().await.expect("shutdown");
}
