//! A multi-group node's inbox byte budget (`transport::inbox_bytes`,
//! `links`): sized from the node's frame cap, shared by all its groups,
//! one group's waiting messages holding at most the group share.

use super::MultiNode;
use super::retire_tests::start_on;
use crate::multi::placement::Placement;
use crate::test_ports::free_addr;
use crate::tls::{ClusterCa, Identity};
use crate::transport::inbox_bytes::InboxBytes;

/// The frame cap of these tests' nodes: their budget is a few of them.
const FRAME: usize = 64 * 1024;

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

/// The group share and the drop counter of a multi-group node, end to
/// end (no multi-group test had them): a holder of a node certificate
/// streams large AppendEntries for group 1, whose node task takes
/// nothing, then heartbeats for group 2 on the same link. Group 1's
/// waiting messages hold at most the group share (half the budget), the
/// ones past it are dropped and counted in
/// [`MultiNode::dropped_messages`] (where a full group inbox counts its
/// drops), and the link goes on: group 2's messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_one_group_does_not_stop_another_groups_messages() {
    use crate::core::{Body, Message};
    use crate::identity::node_id;
    use crate::transport::frame::{PeerFrame, encode_frame};
    use crate::transport::inbox_bytes::tests::{PAYLOAD, big_append, dial_as};

    const FLOOD: u64 = 48;
    const BEATS: u64 = 8;
    let deadline = std::time::Duration::from_secs(20);
    let (node, _addr, ca, _id, _dir) = node_with_frame(FRAME).await;
    // The node tasks of groups 1 and 2 are the test's: group 1's takes
    // nothing while the flood lasts.
    let (one_tx, mut one) = tokio::sync::mpsc::channel(4096);
    let (two_tx, mut two) = tokio::sync::mpsc::channel(4096);
    node.inner.links.register(1, one_tx);
    node.inner.links.register(2, two_tx);
    let hostile = "raftkit_placement@127.0.0.1:9";
    let cert = ca.issue_node(hostile, &[]).expect("a node certificate");
    let schema = <Placement as crate::StateMachine>::SCHEMA_FINGERPRINT;
    let (mut send, _conn, _endpoint) = dial_as(&cert, hostile, node.local_addr(), schema).await;
    let (from, to) = (node_id(hostile), node.id());
    let mut wire = Vec::new();
    for index in 1..=FLOOD {
        let msg = big_append(from, to, index);
        encode_frame(&PeerFrame::Group { group: 1, msg }, FRAME, &mut wire).expect("encode");
    }
    for round in 1..=BEATS {
        let msg = Message {
            from,
            to,
            term: 1,
            body: Body::Heartbeat { commit: 0, round },
        };
        encode_frame(&PeerFrame::Group { group: 2, msg }, FRAME, &mut wire).expect("encode");
    }
    let writer = tokio::spawn(async move {
        let _ = send.write_all(&wire).await;
        // Keep the stream open: the link stays up while the test reads.
        std::future::pending::<()>().await;
    });
    for round in 1..=BEATS {
        let (msg, _charge) = tokio::time::timeout(deadline, two.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "group 2's heartbeat {round} never arrived behind the flood at group 1 \
                     ({} of group 1's messages waiting, {} bytes of the budget's {} charged, \
                     {} dropped)",
                    one.len(),
                    node.inner.inbox_bytes.held(),
                    node.inner.inbox_bytes.limit(),
                    node.dropped_messages()
                )
            })
            .expect("group 2's inbox open");
        assert!(
            matches!(msg.body, Body::Heartbeat { round: r, .. } if r == round),
            "{msg:?}"
        );
    }
    let share = node.inner.inbox_bytes.group_share();
    let waiting = one.len();
    assert!(
        waiting * PAYLOAD <= share,
        "group 1 holds {waiting} messages of {PAYLOAD} bytes, past its share of {share}"
    );
    assert_eq!(
        node.dropped_messages(),
        FLOOD - waiting as u64,
        "every message of group 1 past its share is dropped and counted"
    );
    // Group 1's node task takes its messages: their charges are back.
    while one.try_recv().is_ok() {}
    assert_eq!(node.inner.inbox_bytes.held(), 0);
    writer.abort();
    node.shutdown().await.expect("a clean shutdown");
}
