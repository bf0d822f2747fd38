use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    n: u64,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn tag(&mut self, names: Vec<impl Into<String>>) {
        self.n += names.len() as u64;
    }

    #[read]
    fn digits(&self) -> Option<impl Iterator<Item = u8>> {
        None::<std::vec::IntoIter<u8>>
    }
}

fn main() {}
