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

    // The generated client's consistency and staleness methods.
    #[read]
    fn with(&self, k: u64) -> u64 {
        self.n + k
    }

    #[read]
    fn last_staleness(&self) -> u64 {
        self.n
    }

    // `Kv::peer()` builds the peer.
    #[read]
    fn peer(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
