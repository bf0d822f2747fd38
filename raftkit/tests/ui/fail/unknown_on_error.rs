use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(on_error = "retry")]
struct Kv {
    n: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write(on_error = "ignore")]
    fn set(&mut self, n: u64) {
        self.n = n;
    }

    #[read(on_error = "halt")]
    fn get(&self) -> u64 {
        self.n
    }

    #[write(retries = 3)]
    fn add(&mut self, n: u64) {
        self.n += n;
    }
}

fn main() {}
