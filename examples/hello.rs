// The smallest complete raftkit program: a state machine, three peers, a typed client.
use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

#[tokio::main]
async fn main() -> Result<(), raftkit::Error> {
    let cluster = raftkit::dev::Cluster::<Counter>::start(3).await?;
    let counter = cluster.client();
    counter.add(42).await?;
    println!("replicated on 3 peers: {}", counter.get().await?);
    cluster.shutdown().await
}
