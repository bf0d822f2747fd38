//! The sharded client against scripted members ([`FakeMember`]): a
//! placement (group 0) that lists a group on a node that does not host it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ShardedClient;
use crate::client::ClientOptions;
use crate::client::fake_member::{Act, FakeMember, not_hosted};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::error::{Applied, Error};
use crate::multi::placement::{PlacementReadOutput, Shard};
use crate::prelude::*;
use crate::tls::dev_cluster;

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

/// The group every key of these tests belongs to.
const GROUP: u64 = 1;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "sharded_tests")]
struct Kv {
    map: BTreeMap<String, String>,
}

#[crate::state_machine]
impl Kv {
    #[write(shard = key)]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[read(shard = key)]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

/// The answer of group 0 to every read: one shard, every hash, `GROUP` on
/// the replicas `replicas`.
fn placement_answer(replicas: Vec<String>) -> Act {
    let shards = vec![Shard {
        group: GROUP,
        start: 0,
        end: u64::MAX,
        replicas,
    }];
    match crate::state_machine::encode("placement", &PlacementReadOutput::Shards(shards)) {
        Ok(bytes) => Act::answer(ClientResponse::Ok(bytes)),
        Err(e) => Act::answer(ClientResponse::Err(WireError::Rejected(e.to_string()))),
    }
}

fn reads(member: &FakeMember) -> usize {
    member
        .received()
        .iter()
        .filter(|r| matches!(r, ClientRequest::Read { .. }))
        .count()
}

/// Found by review (stop 46): a call routed to a group whose only listed
/// replica answers `NotHosted`, while the placement never changes (no node
/// hosts the group), re-read the placement until the client's whole timeout
/// passed. It now ends after at most `NOT_HOSTED_REROUTES` re-routes, each
/// after a re-read, with `NotHosted` naming the group: nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_no_node_hosts_fails_promptly_after_bounded_reroutes() {
    let (ca, nodes) = dev_cluster(["fake-zero", "fake-x"]).expect("dev certificates");
    let client_id = ca.issue_client("sharded").expect("client certificate");
    let x = FakeMember::start(&nodes[1], |_| not_hosted(GROUP));
    let x_addr = x.addr().to_string();
    let zero = FakeMember::start(&nodes[0], move |request| match request {
        ClientRequest::Read { .. } => placement_answer(vec![x_addr.clone()]),
        _ => Act::answer(ClientResponse::Err(WireError::Rejected(
            "reads only".into(),
        ))),
    });
    // A timeout far longer than the test's patience: the call must end on
    // its bound, not on its deadline.
    let opts = ClientOptions::default()
        .with_timeout(Duration::from_secs(120))
        .with_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5));
    let sharded = tokio::time::timeout(
        DEADLINE,
        ShardedClient::<Kv>::connect_with([zero.addr().to_string()], client_id, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects and reads the placement");
    assert_eq!(reads(&zero), 1, "the placement read at connect");
    let kv = KvClient::new(sharded);

    let err = tokio::time::timeout(DEADLINE, kv.get("k".into()))
        .await
        .expect("the call ends on its bound, long before its timeout")
        .expect_err("no node hosts the group");
    assert_eq!(err, Error::NotHosted { group: GROUP });
    assert_eq!(err.applied(), Applied::No);
    assert!(err.to_string().contains(&format!("group {GROUP}")), "{err}");
    // One placement re-read before each re-route, and one request to X for
    // the first route and each re-route.
    let bound = super::NOT_HOSTED_REROUTES as usize;
    assert_eq!(reads(&zero), 1 + bound);
    assert_eq!(x.received().len(), 1 + bound);

    // A write is refused the same way (its session cannot open at X):
    // promptly, and saying nothing was applied.
    let err = tokio::time::timeout(DEADLINE, kv.put("k".into(), "v".into()))
        .await
        .expect("the write ends on its bound, long before its timeout")
        .expect_err("no node hosts the group");
    assert_eq!(err.applied(), Applied::No, "{err}");
}
