use raftkit::prelude::*;

struct Opaque(u32);

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Store {
    total: u32,
}

#[raftkit::state_machine]
impl Store {
    #[write]
    fn add(&mut self, value: Opaque) {
        self.total += value.0;
    }
}

fn main() {}
