//! [`MultiNodeBuilder::listen_socket`](super::MultiNodeBuilder::listen_socket):
//! a multi-group node serves on a UDP socket its caller bound, never
//! releasing the port (`benches/multi.rs` used to bind port 0, drop the
//! socket and have the node bind the port again, leaving a window in which
//! another process could take it).

use std::time::Duration;

use super::MultiNode;
use crate::error::Error;
use crate::multi::placement::Placement;
use crate::tls::ClusterCa;

/// The node listens on the very socket it was handed: a second handle on
/// it stays open through the start, so a node that bound the address
/// itself would fail with "address in use"; a handed socket bound
/// elsewhere than `listen` names is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_group_node_serves_on_the_socket_it_was_handed() {
    let ca = ClusterCa::generate("multi-listen-socket-test").expect("a CA");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let addr = socket.local_addr().expect("its address");
    let dup = socket.try_clone().expect("a second handle on the socket");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = MultiNode::<Placement>::builder()
        .identity(
            ca.issue_node(&format!("raftkit_placement@{addr}"), &[])
                .expect("a node certificate"),
        )
        .listen_socket(socket)
        .data_dir(dir.path())
        .tick(Duration::from_millis(20))
        .start()
        .await
        .expect("the node starts on the handed socket, not by binding its address");
    drop(dup);
    assert_eq!(node.local_addr(), addr, "the handed socket's address");
    assert_eq!(node.name(), format!("raftkit_placement@{addr}"));
    node.create_group(1, &[addr.to_string()])
        .await
        .expect("a group served on it");
    let _ = node.shutdown().await;

    let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let refused = MultiNode::<Placement>::builder()
        .identity(
            ca.issue_node(&format!("raftkit_placement@{addr}"), &[])
                .expect("a node certificate"),
        )
        .listen(addr.to_string())
        .listen_socket(other)
        .data_dir(dir.path())
        .start()
        .await;
    assert!(
        matches!(refused, Err(Error::Rejected(_))),
        "a socket bound elsewhere than the listen address: {:?}",
        refused.as_ref().map(|_| ())
    );
}
