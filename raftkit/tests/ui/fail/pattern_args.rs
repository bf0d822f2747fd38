use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Grid {
    cells: Vec<(u32, u32)>,
}

#[raftkit::state_machine]
impl Grid {
    #[write]
    fn mark(&mut self, (x, y): (u32, u32)) {
        self.cells.push((x, y));
    }

    #[read]
    fn count(&self, _: u32) -> usize {
        self.cells.len()
    }
}

fn main() {}
