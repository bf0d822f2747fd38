use raftkit::prelude::*;

struct Plain {
    n: u64,
}

impl Plain {
    #[write]
    fn set(&mut self, n: u64) {
        self.n = n;
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

fn main() {}
