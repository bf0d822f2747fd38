use raftkit::prelude::*;

// An unknown `snapshot` value.
#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(snapshot = "copy")]
struct Misspelled {
    n: u64,
}

#[raftkit::state_machine]
impl Misspelled {
    #[write]
    fn set(&mut self, n: u64) {
        self.n = n;
    }
}

// `snapshot = "clone"` on a state that is not `Clone`: reported at the
// setting.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(snapshot = "clone")]
struct NotClone {
    n: u64,
}

#[raftkit::state_machine]
impl NotClone {
    #[write]
    fn set(&mut self, n: u64) {
        self.n = n;
    }
}

fn main() {}
