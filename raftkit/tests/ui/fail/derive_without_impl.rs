use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

impl Counter {
    #[allow(dead_code)]
    fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn main() {}
