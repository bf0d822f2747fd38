use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    #[read]
    fn get(&mut self) -> u64 {
        self.n
    }
}

fn main() {}
