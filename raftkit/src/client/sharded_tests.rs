//! The sharded client's re-reads of the placement after `NotHosted` (found
//! by review, stop 53): none starts once the call's deadline passed, and
//! a re-read that fails leaves the call's own `NotHosted`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ShardedClient;
use crate::client::ClientOptions;
use crate::client::fake_member::{Act, FakeMember, not_hosted};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::error::Error;
use crate::multi::placement::{PlacementReadOutput, Shard};
use crate::prelude::*;
use crate::tls::dev_cluster;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Keys {
    keys: Vec<String>,
}

#[crate::state_machine]
impl Keys {
    #[write(shard = key)]
    fn add(&mut self, key: String) -> usize {
        self.keys.push(key);
        self.keys.len()
    }

    #[read(shard = key)]
    fn has(&self, key: String) -> bool {
        self.keys.contains(&key)
    }
}

/// Group 1 is listed on a member that answers `NotHosted`, and the
/// placement never lists it elsewhere; group 0 answers every read until
/// the call's deadline and none after it (a group 0 that lost its leader
/// then). The call ends by its deadline with its own `NotHosted`; before,
/// it started one more read at the deadline, waited a quarter of its
/// timeout more for it, and ended with that read's `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reread_of_the_placement_starts_after_the_calls_deadline() {
    const T: Duration = Duration::from_secs(2);
    let (ca, nodes) = dev_cluster(["fake-p", "fake-d"]).expect("dev certificates");
    let client_id = ca.issue_client("app").expect("client certificate");
    let data = FakeMember::start(&nodes[1], |_| not_hosted(1));
    let shards = vec![Shard {
        group: 1,
        start: 0,
        end: u64::MAX,
        replicas: vec![data.addr().to_string()],
    }];
    let listed = ClientResponse::Ok(
        crate::state_machine::encode("placement", &PlacementReadOutput::Shards(shards))
            .expect("encodes"),
    );
    // Reads of group 0 are answered until `cut`, then never.
    let cut: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let placement = FakeMember::start(&nodes[0], {
        let cut = cut.clone();
        move |request| {
            let open = cut
                .lock()
                .map(|c| c.is_none_or(|c| Instant::now() < c))
                .unwrap_or(false);
            match request {
                ClientRequest::Read { .. } if open => Act::answer(listed.clone()),
                ClientRequest::Read { .. } => Act::Ignore,
                _ => Act::answer(ClientResponse::Err(WireError::Rejected("no".into()))),
            }
        }
    });
    let opts = ClientOptions::default().with_timeout(T);
    let sharded = tokio::time::timeout(
        Duration::from_secs(10),
        ShardedClient::<Keys>::connect_with([placement.addr().to_string()], client_id, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let keys = KeysClient::new(sharded);
    let started = Instant::now();
    *cut.lock().expect("not poisoned") = Some(started + T);
    let err = tokio::time::timeout(Duration::from_secs(10), keys.has("k".into()))
        .await
        .expect("ends")
        .expect_err("no replica hosts the group");
    let took = started.elapsed();
    assert_eq!(err, Error::NotHosted { group: 1 });
    // Its timeout, not a quarter more (slack for a loaded machine).
    assert!(took < T + T / 8, "took {took:?}");
}
