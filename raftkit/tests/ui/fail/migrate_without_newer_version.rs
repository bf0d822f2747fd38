use raftkit::prelude::*;

fn m(_from_version: u32, _bytes: &[u8]) -> Result<Kv, raftkit::state_machine::CodecError> {
    Ok(Kv::default())
}

fn m2(_from_version: u32, _bytes: &[u8]) -> Result<Plain, raftkit::state_machine::CodecError> {
    Ok(Plain::default())
}

// `migrate` with version 1: nothing is older than 1, the migration could
// never run.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(version = 1, migrate = m)]
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

// `migrate` with no version (the default, 1): the same.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(migrate = m2)]
struct Plain {
    n: u64,
}

#[raftkit::state_machine]
impl Plain {
    #[write]
    fn set(&mut self, n: u64) {
        self.n = n;
    }
}

fn main() {}
