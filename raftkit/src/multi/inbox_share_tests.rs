//! A multi-group node's inbox byte budget (`transport::inbox_bytes`,
//! `links`): sized from the node's frame cap, shared by all its groups,
//! one group's waiting messages holding at most the group share.

use super::MultiNode;
use super::retire_tests::start_on;
use crate::multi::placement::Placement;
use crate::tls::{ClusterCa, Identity};
use crate::transport::inbox_bytes::InboxBytes;

/// The frame cap of these tests' nodes: their budget is a few of them.
const FRAME: usize = 64 * 1024;

/// A free loopback address.
fn free_addr() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .to_string()
}

/// A node of frame cap `frame` (its CA, to issue a hostile dialer's
/// certificate).
async fn node_with_frame(
    frame: usize,
) -> (
    MultiNode<Placement>,
    String,
    ClusterCa,
    Identity,
    tempfile::TempDir,
) {
    let addr = free_addr();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = ClusterCa::generate("inbox-share-test").expect("a CA");
    let identity = ca
        .issue_node(&format!("raftkit_placement@{addr}"), &[])
        .expect("a node certificate");
    let builder = MultiNode::<Placement>::builder()
        .identity(identity.clone())
        .max_frame_bytes(frame);
    let node = start_on(builder, &addr, dir.path()).await;
    (node, addr, ca, identity, dir)
}

/// Found by review, stop 50: a multi-group node sized its inbox byte
/// budget from `DEFAULT_MAX_FRAME_BYTES` (16 MiB: 64 MiB) whatever frame
/// cap its links were configured with, so a node of a larger cap could not
/// fit one maximal message, and one of a smaller cap held far more than a
/// few of its frames. The budget now comes from the links' cap, as a
/// single-group peer's does (`PeerBuilder::start`: `config.max_frame_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_group_nodes_inbox_budget_follows_its_frame_cap() {
    let (node, _addr, _ca, _id, _dir) = node_with_frame(FRAME).await;
    let want = InboxBytes::for_frames(FRAME).limit();
    let got = node.inner.inbox_bytes.limit();
    assert_eq!(
        got,
        want,
        "a node of frame cap {FRAME} has an inbox budget of {got} bytes, not {want} ({} frames)",
        crate::transport::inbox_bytes::INBOX_FRAMES
    );
    node.shutdown().await.expect("a clean shutdown");
}
