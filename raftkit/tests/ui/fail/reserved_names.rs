use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    n: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn clone(&mut self) -> u64 {
        self.n
    }

    #[write]
    fn close(&mut self) {}

    #[read]
    fn into(&self) -> u64 {
        self.n
    }
}

fn main() {}
