use raftkit::prelude::*;

#[derive(StateMachine, Default)]
struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    #[write]
    fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn main() {}
