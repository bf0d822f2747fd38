//! A peer given no `data_dir` keeps its state in `data/<name>` under the
//! working directory; a restart there must find it as a restart, not a
//! first start (review s61 schema H2: the meta was looked for only in a
//! directory given by `data_dir`, so a restart on the default one skipped
//! the schema's upgrade check and rewrote its oldest schema, a founder's
//! into a joiner's that knows no write).
//!
//! One test in this binary: it changes the process's working directory.

use std::sync::Arc;
use std::time::Duration;

use raftkit::prelude::*;
use raftkit::schema::{HandlerKind, load_oldest_schema};
use raftkit::transport::MemoryNetwork;

#[path = "support/kv_versions.rs"]
mod kv_versions;
pub use kv_versions::v2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_default_directory_keeps_the_founders_oldest_schema() {
    let root = tempfile::tempdir().expect("tempdir");
    std::env::set_current_dir(root.path()).expect("the working directory");
    let start = |bootstrap: bool| {
        let net = MemoryNetwork::new(7);
        let b = v2::Kv::peer()
            .name("founder")
            .listen("founder:1")
            .tick(Duration::from_millis(20))
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)));
        if bootstrap { b.bootstrap() } else { b }.start()
    };
    let writes = || -> Vec<u32> {
        let floor = load_oldest_schema(
            &*raftkit::storage::vfs::real(),
            &root.path().join("data/founder"),
        )
        .expect("the oldest schema reads")
        .expect("the default directory records an oldest schema");
        floor
            .handlers
            .iter()
            .filter(|h| h.kind == HandlerKind::Write)
            .map(|h| h.tag)
            .collect()
    };
    let peer = start(true).await.expect("the founder starts");
    peer.shutdown().await.expect("the founder stops");
    let founded = writes();
    assert!(
        founded.contains(&1),
        "a founder's oldest schema is its own, with v2's writes: {founded:?}"
    );
    // The restart, as such a peer is restarted: no bootstrap.
    let peer = start(false).await.expect("the founder restarts");
    peer.shutdown().await.expect("the founder stops again");
    let restarted = writes();
    assert_eq!(
        restarted, founded,
        "a restart on the default data directory rewrote the founder's oldest schema (taken for a new directory that joins)"
    );
}
