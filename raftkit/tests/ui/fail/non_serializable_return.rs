use raftkit::prelude::*;

struct Opaque(u32);

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Store {
    total: u32,
}

#[raftkit::state_machine]
impl Store {
    #[read]
    fn total(&self) -> Opaque {
        Opaque(self.total)
    }
}

fn main() {}
