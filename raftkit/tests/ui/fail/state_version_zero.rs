use raftkit::prelude::*;

// Version 0 is below the version every headerless (older) snapshot is read
// as, so such a binary could not restore them: refused at the literal.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(version = 0)]
struct Kv {
    n: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn set(&mut self, n: u64) {
        self.n = n;
    }
}

fn main() {}
