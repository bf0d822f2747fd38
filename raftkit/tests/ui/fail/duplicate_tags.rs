use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    n: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write(tag = 3)]
    fn set(&mut self, n: u64) {
        self.n = n;
    }

    #[write(tag = 3)]
    fn add(&mut self, n: u64) {
        self.n += n;
    }

    // Implicitly tag 2 (third #[write]), collides with the pinned tag below.
    #[write]
    fn clear(&mut self) {
        self.n = 0;
    }

    #[write(tag = 2)]
    fn double(&mut self) {
        self.n *= 2;
    }
}

fn main() {}
