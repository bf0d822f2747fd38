use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    // `mut self` is a by-value receiver, not `&mut self`.
    #[write]
    fn reset(mut self) -> u64 {
        self.n = 0;
        self.n
    }

    #[read]
    fn get(self) -> u64 {
        self.n
    }

    #[read]
    fn boxed(self: Box<Self>) -> u64 {
        self.n
    }

    #[write]
    fn no_receiver(by: u64) -> u64 {
        by
    }
}

fn main() {}
