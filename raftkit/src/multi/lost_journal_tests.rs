//! The lost-journal refusal (`lost_journal`) on a real multi-group node's
//! data directory: a node whose `journal/` was removed beside its groups'
//! files is refused with an error naming the directory, while a first
//! start that stopped before its journal existed, and a directory of the
//! release before the marker, still start.

use std::path::Path;
use std::time::Duration;

use super::MultiNode;
use super::lost_journal::JOURNAL_MARKER;
use crate::core::Role;
use crate::error::Error;
use crate::multi::placement::Placement;
use crate::test_ports::free_addr;
use crate::tls::ClusterCa;

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts a one-node multi-group node on `addr` with its data in `dir`
/// (its identity issued by `ca` on the first start, read from `dir`
/// afterwards).
async fn start(
    addr: &str,
    dir: &Path,
    ca: Option<&ClusterCa>,
) -> Result<MultiNode<Placement>, Error> {
    let mut builder = MultiNode::<Placement>::builder()
        .listen(addr)
        .data_dir(dir)
        .tick(Duration::from_millis(20));
    if let Some(ca) = ca {
        builder = builder.identity(
            ca.issue_node(&format!("raftkit_placement@{addr}"), &[])
                .expect("a node certificate"),
        );
    }
    builder.start().await
}

/// Found by review (stop 56, storage2 #3): a multi-group node whose
/// journal directory was lost started as new (every group at term 0, no
/// vote: Raft §5.2), and its start then swept the groups' directories as
/// orphans. It is refused now, naming `journal/`; with the marker, and,
/// for a directory of the release before it, by the group's directory
/// (review s57 storage #1: also when it holds only an empty `snapshots/`,
/// as a group the node left, or hosted on demand, leaves it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_node_that_lost_its_journal_is_refused() {
    let addr = free_addr();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = ClusterCa::generate("lost-journal-test").expect("a CA");
    let node = start(&addr, dir.path(), Some(&ca))
        .await
        .expect("the first start");
    let peer = node
        .create_group(1, std::slice::from_ref(&addr))
        .await
        .expect("group 1 created");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while peer.status().role != Role::Leader {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group 1 elects no leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peer.status().term >= 1);
    drop(peer);
    node.shutdown().await.expect("a clean shutdown");
    drop(node);

    let journal = dir.path().join("journal");
    std::fs::remove_dir_all(&journal).expect("remove the journal");
    for marked in [true, false] {
        if !marked {
            // As the release before the marker left the directory, of a
            // node that then left group 1 (`hosting::delete_group_files`:
            // no marker, no snapshot, an empty `snapshots/`) or hosted it
            // on demand before it was listed: only the group's directory
            // proves that a journal existed (its tombstone and fence).
            std::fs::remove_file(dir.path().join(JOURNAL_MARKER)).expect("remove the marker");
            let group = dir.path().join("groups").join("1");
            for name in ["founded", "listed"] {
                match std::fs::remove_file(group.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        panic!("remove groups/1/{name}: {e}")
                    }
                    _ => {}
                }
            }
            let snaps = group.join("snapshots");
            for entry in std::fs::read_dir(&snaps).expect("list groups/1/snapshots") {
                let path = entry.expect("a directory entry").path();
                if path.is_file() {
                    std::fs::remove_file(&path).expect("remove a snapshot file");
                }
            }
            let left: Vec<_> = std::fs::read_dir(&group)
                .expect("list groups/1")
                .map(|e| e.expect("a directory entry").file_name())
                .collect();
            assert_eq!(left, ["snapshots"], "only the empty snapshots/ is left");
        }
        match start(&addr, dir.path(), None).await {
            Err(Error::Storage(why)) => {
                assert!(
                    why.contains(&journal.display().to_string()) && why.contains("missing"),
                    "marked {marked}: the error must name the journal's directory: {why}"
                );
            }
            Err(e) => panic!("marked {marked}: refused for another reason: {e}"),
            Ok(node) => {
                let term = node.group(1).map(|p| p.status().term);
                node.shutdown().await.ok();
                drop(node);
                panic!(
                    "marked {marked}: a node that lost its journal started (group 1 at term {term:?})"
                );
            }
        }
        assert!(
            dir.path().join("groups").join("1").is_dir(),
            "marked {marked}: the refused start swept the group's files"
        );
    }
}

/// Teeth the other way: a first start that stopped before its journal was
/// durable (no journal, no marker, no group files) starts, and so does a
/// directory of the release before the marker (a journal, no marker),
/// which is marked then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_without_a_journal_and_an_unmarked_directory_start() {
    let addr = free_addr();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = ClusterCa::generate("lost-journal-test").expect("a CA");
    let node = start(&addr, dir.path(), Some(&ca))
        .await
        .expect("the first start");
    node.shutdown().await.expect("a clean shutdown");
    drop(node);
    let marker = dir.path().join(JOURNAL_MARKER);
    assert!(marker.is_file(), "the first start marks the directory");

    // The first start stopped before its journal existed.
    std::fs::remove_dir_all(dir.path().join("journal")).expect("remove the journal");
    std::fs::remove_file(&marker).expect("remove the marker");
    let node = start(&addr, dir.path(), None)
        .await
        .expect("a start after a first start that stopped early");
    node.shutdown().await.expect("a clean shutdown");
    drop(node);

    // The release before the marker: a journal, no marker.
    std::fs::remove_file(&marker).expect("remove the marker");
    let node = start(&addr, dir.path(), None)
        .await
        .expect("a directory of the previous release");
    node.shutdown().await.expect("a clean shutdown");
    drop(node);
    assert!(
        marker.is_file(),
        "a directory of the previous release is marked"
    );
}
