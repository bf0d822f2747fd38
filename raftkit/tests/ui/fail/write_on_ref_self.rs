use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    #[write]
    fn incr(&self, by: u64) -> u64 {
        self.n + by
    }
}

fn main() {}
