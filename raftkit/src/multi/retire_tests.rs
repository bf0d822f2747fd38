//! The retirement window, hit every time: [`MultiNode`]'s `retire` takes a
//! replica out of the group table, stops it, and only then writes the
//! journal's tombstone. An explicit `create_group` of the same group in
//! between must wait for the retirement (it holds the `retiring` lock) and
//! then be refused; before 8a0109e it found neither a hosted replica nor a
//! tombstone and started an empty replica of a group the node had just
//! left. A test hook ([`WindowPause`]) holds a retirement inside the window
//! while the test starts the create.
//!
//! Also here: the placement group 0 is never hosted on demand (its replica
//! is not one of the user's state machine).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use super::MultiNode;
use crate::error::Error;
use crate::multi::hosting::Retire;
use crate::multi::placement::Placement;
use crate::tls::ClusterCa;

/// Holds a retirement between taking the replica out of the table and
/// writing the tombstone, until the test resumes it.
#[derive(Default)]
pub(super) struct WindowPause {
    /// Notified when a retirement reached the window.
    reached: Notify,
    /// Notified by the test to let it go on.
    resume: Notify,
}

impl WindowPause {
    /// Called by `retire` inside the window: waits there if a test set a
    /// pause (once: the pause is taken).
    pub(super) async fn hold(slot: &Mutex<Option<Arc<WindowPause>>>) {
        let pause = slot.lock().ok().and_then(|mut p| p.take());
        if let Some(pause) = pause {
            pause.reached.notify_one();
            pause.resume.notified().await;
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

/// A one-node multi-group node on a free loopback port, with its address
/// and its data directory (kept alive by the caller).
async fn one_node() -> (MultiNode<Placement>, String, tempfile::TempDir) {
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = ClusterCa::generate("retire-test").expect("a CA");
    let node = MultiNode::<Placement>::builder()
        .listen(&addr)
        .data_dir(dir.path())
        .tick(Duration::from_millis(20))
        .identity(
            ca.issue_node(&format!("raftkit_placement@{addr}"), &[])
                .expect("a node certificate"),
        )
        .start()
        .await
        .expect("the node starts");
    (node, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_inside_the_retirement_window_waits_and_is_refused() {
    let (node, addr, _dir) = one_node().await;
    let members = vec![addr.clone()];
    node.create_group(1, &members)
        .await
        .expect("group 1 created");

    let pause = Arc::new(WindowPause::default());
    *node.inner.window.lock().expect("the hook") = Some(pause.clone());
    let retirer = {
        let node = node.clone();
        tokio::spawn(async move { node.retire(1, Retire::Removed((1, 1))).await })
    };
    tokio::time::timeout(DEADLINE, pause.reached.notified())
        .await
        .expect("the retirement reaches its window");
    // Inside the window: no replica in the table, no tombstone yet.
    assert!(node.group(1).is_none());
    assert!(!node.inner.journal.was_removed(1));

    // The create's first poll happens inside the window: without the
    // `retiring` lock it passes both checks there and then.
    let create = node.create_group(1, &members);
    tokio::pin!(create);
    let first = std::future::poll_fn(|cx| Poll::Ready(create.as_mut().poll(cx).is_ready())).await;
    assert!(
        !first,
        "a create inside the retirement window finished at once"
    );
    pause.resume.notify_one();

    let created = tokio::time::timeout(DEADLINE, create)
        .await
        .expect("the create finishes once the retirement did");
    tokio::time::timeout(DEADLINE, retirer)
        .await
        .expect("the retirement finishes")
        .expect("the retirement task")
        .expect("the retirement succeeds");
    assert!(
        matches!(&created, Err(Error::Rejected(why)) if why.contains("left group 1")),
        "a create inside the retirement window must be refused once the tombstone is written, got {:?}",
        created.map(|_| "a replica")
    );
    assert!(
        node.group(1).is_none(),
        "an empty replica of a group the node left"
    );
    assert!(node.inner.journal.was_removed(1));
    node.shutdown().await.expect("a clean shutdown");
}

/// A leader's heartbeat for the placement group 0, offered to a node that
/// does not host it (a restart before `start_placement` registered it, or a
/// node outside group 0), never starts a replica of it: group 0's replica
/// is a `PlacementGroup`, and hosting it on demand started an empty replica
/// of the user's state machine as group 0, over group 0's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_group_is_never_hosted_on_demand() {
    use crate::core::{Body, Message};
    use crate::multi::placement::PLACEMENT_GROUP;
    let (node, _addr, _dir) = one_node().await;
    let heartbeat = Message {
        from: node.id().wrapping_add(1),
        to: node.id(),
        term: 3,
        body: Body::AppendEntries {
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        },
    };
    assert!(crate::multi::hosting::may_host(node.id(), &heartbeat));
    node.host_on_demand(PLACEMENT_GROUP, heartbeat.clone())
        .await;
    assert!(
        node.group(PLACEMENT_GROUP).is_none(),
        "a replica of the user's state machine hosted as group 0"
    );
    assert!(
        !node.inner.journal.groups().contains(&PLACEMENT_GROUP),
        "group 0 recorded in the journal by a hosting on demand"
    );
    // The same message for a data group does host it (the control).
    node.host_on_demand(5, heartbeat).await;
    assert!(node.group(5).is_some(), "a data group is hosted on demand");
    node.shutdown().await.expect("a clean shutdown");
}
