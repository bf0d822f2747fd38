use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Clock {
    last: u64,
}

#[raftkit::state_machine]
impl Clock {
    // The context after a command argument.
    #[write]
    fn set(&mut self, at: u64, ctx: &Ctx) {
        self.last = at.max(ctx.time_ms());
    }

    // The context by value.
    #[write]
    fn touch(&mut self, ctx: Ctx) {
        self.last = ctx.time_ms();
    }

    // A read cannot draw from the replicated generator.
    #[read]
    fn peek(&self, ctx: &mut Ctx) -> u64 {
        ctx.rng().next_u64()
    }
}

fn main() {}
