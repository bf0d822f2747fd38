//! The generated dispatch, wire format and client, without a network:
//! commands go through `raftkit::client::Local`, which runs exactly the
//! encode / apply_encoded / decode path of a cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use raftkit::client::Local;
use raftkit::prelude::*;
use raftkit::state_machine::{decode, encode};

/// Drives a future that is ready at once (`Local`'s are).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasMismatch {
    pub actual: Option<String>,
}

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    /// Sets `key` to `value`, returning the previous value.
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[write]
    fn delete(&mut self, key: String) -> Option<String> {
        self.map.remove(&key)
    }

    #[write]
    fn cas(
        &mut self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> Result<(), CasMismatch> {
        let actual = self.map.get(&key).cloned();
        if actual != expected {
            return Err(CasMismatch { actual });
        }
        self.map.insert(key, new);
        Ok(())
    }

    #[write]
    fn boom(&mut self, key: String) {
        self.map.insert(key, "half-done".into());
        panic!("boom handler");
    }

    #[write(tag = 100, on_error = "halt")]
    fn fatal(&mut self) {
        panic!("fatal handler");
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    #[read]
    fn len(&self) -> usize {
        self.map.len()
    }

    #[read(tag = 7)]
    fn explode(&self) -> u32 {
        panic!("read panic")
    }
}

fn kv() -> (Local<Kv>, KvClient<Local<Kv>>) {
    let local = Local::new(Kv::default());
    (local.clone(), KvClient::new(local))
}

#[test]
fn put_get_delete() {
    let (_, kv) = kv();
    assert_eq!(block_on(kv.put("a".into(), "1".into())), Ok(None));
    assert_eq!(
        block_on(kv.put("a".into(), "2".into())),
        Ok(Some("1".into()))
    );
    assert_eq!(block_on(kv.get("a".into())), Ok(Some("2".into())));
    assert_eq!(block_on(kv.len()), Ok(1));
    assert_eq!(block_on(kv.delete("a".into())), Ok(Some("2".into())));
    assert_eq!(block_on(kv.get("a".into())), Ok(None));
    assert_eq!(block_on(kv.delete("a".into())), Ok(None));
}

#[test]
fn cas_error_is_typed() {
    let (_, kv) = kv();
    assert_eq!(block_on(kv.cas("k".into(), None, "1".into())), Ok(Ok(())));
    let r: Result<Result<(), CasMismatch>, raftkit::Error> =
        block_on(kv.cas("k".into(), None, "2".into()));
    assert_eq!(
        r,
        Ok(Err(CasMismatch {
            actual: Some("1".into())
        }))
    );
    assert_eq!(
        block_on(kv.cas("k".into(), Some("1".into()), "2".into())),
        Ok(Ok(()))
    );
    assert_eq!(block_on(kv.get("k".into())), Ok(Some("2".into())));
}

#[test]
fn panic_under_skip_reports_and_continues() {
    let (local, kv) = kv();
    assert_eq!(
        <Kv as StateMachine>::error_policy(&KvWrite::Boom { key: "x".into() }),
        ErrorPolicy::Skip
    );
    match block_on(kv.boom("x".into())) {
        Err(raftkit::Error::Handler { message }) => assert!(message.contains("boom handler")),
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert_eq!(local.halted(), None);
    // The next command works.
    assert_eq!(block_on(kv.put("a".into(), "1".into())), Ok(None));
    assert_eq!(block_on(kv.get("a".into())), Ok(Some("1".into())));
    // A panicking read is reported to its caller whatever the policy, as
    // not applied (a read applies nothing).
    assert!(matches!(
        block_on(kv.explode()),
        Err(raftkit::Error::Rejected(message)) if message.contains("read handler panicked")
    ));
    assert_eq!(block_on(kv.len()), Ok(2));
}

#[test]
fn panic_under_halt_stops() {
    let (local, kv) = kv();
    assert_eq!(
        <Kv as StateMachine>::error_policy(&KvWrite::Fatal),
        ErrorPolicy::Halt
    );
    assert!(matches!(
        block_on(kv.fatal()),
        Err(raftkit::Error::Halted { .. })
    ));
    assert_eq!(local.halted().as_deref(), Some("fatal handler"));
    // Nothing is applied after a halt: a later write is refused before it
    // runs (not applied), as a halted node that knows no leader refuses it.
    let r = block_on(kv.put("a".into(), "1".into()));
    assert!(
        matches!(&r, Err(e @ raftkit::Error::Unavailable(_)) if e.applied() == raftkit::error::Applied::No),
        "{r:?}"
    );
    assert_eq!(local.with(|kv| kv.map.len()), 0);
}

#[test]
fn name_and_default_policy() {
    assert_eq!(<Kv as StateMachine>::NAME, "kv");
    assert_eq!(
        <Kv as StateMachine>::error_policy(&KvWrite::Put {
            key: String::new(),
            value: String::new()
        }),
        ErrorPolicy::Skip
    );
}

#[test]
fn wire_tags_are_stable() {
    // put is the first #[write]: tag 0, then the arguments in order.
    let bytes = encode(
        "cmd",
        &KvWrite::Put {
            key: "k".into(),
            value: "v".into(),
        },
    )
    .unwrap();
    assert_eq!(bytes, [0, 1, b'k', 1, b'v']);
    // delete: tag 1; cas: tag 2; boom: tag 3.
    assert_eq!(
        encode("cmd", &KvWrite::Delete { key: "k".into() }).unwrap(),
        [1, 1, b'k']
    );
    assert_eq!(
        encode("cmd", &KvWrite::Boom { key: String::new() }).unwrap(),
        [3, 0]
    );
    // fatal is pinned to tag 100 (one varint byte), and has no arguments.
    assert_eq!(encode("cmd", &KvWrite::Fatal).unwrap(), [100]);
    // Reads have their own tag space: get 0, len 1, explode pinned to 7.
    assert_eq!(encode("q", &KvRead::Len).unwrap(), [1]);
    assert_eq!(encode("q", &KvRead::Explode).unwrap(), [7]);
    // Outputs carry the handler's tag too.
    assert_eq!(encode("o", &KvReadOutput::Len(5)).unwrap(), [1, 5]);
    let back: KvWrite = decode("cmd", &[1, 1, b'z']).unwrap();
    assert!(matches!(back, KvWrite::Delete { key } if key == "z"));
}

#[test]
fn unknown_tag_fails_to_decode() {
    assert!(decode::<KvWrite>("cmd", &[5]).is_err());
    assert!(decode::<KvWrite>("cmd", &[99, 0]).is_err());
    assert!(decode::<KvRead>("q", &[2]).is_err());
    assert!(decode::<KvReadOutput>("o", &[3, 0]).is_err());
    // A truncated command is an error too, not a default.
    assert!(decode::<KvWrite>("cmd", &[0, 1, b'k']).is_err());
    assert!(decode::<KvWrite>("cmd", &[]).is_err());
    // The leader's check refuses it before it enters the log.
    assert!(raftkit::state_machine::validate_command::<Kv>(&[42]).is_err());
    let (_, kv) = kv();
    let local = kv.inner();
    assert!(matches!(
        block_on(raftkit::client::Submit::write(local, vec![42])),
        Err(raftkit::Error::Rejected(_))
    ));
}

#[test]
fn snapshot_round_trip() {
    let (local, kv) = kv();
    block_on(kv.put("a".into(), "1".into())).unwrap();
    let snap = local.with(|kv| kv.snapshot()).unwrap();
    let restored = Kv::restore(&snap).unwrap();
    assert_eq!(restored.map.get("a").map(String::as_str), Some("1"));
    assert!(Kv::restore(&[0xff, 0xff]).is_err());
}

/// A pinned handler between implicit ones keeps its slot in the
/// declaration order: the handler after it is tagged by its position (2),
/// not shifted down to 1 — pinning one handler must not renumber the
/// others, or old log entries would decode as other commands.
mod pinned_between {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Counter {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Counter {
        #[write]
        fn first(&mut self) -> u64 {
            self.n
        }

        #[write(tag = 9)]
        fn pinned(&mut self) -> u64 {
            self.n
        }

        #[write]
        fn third(&mut self) -> u64 {
            self.n
        }

        #[read]
        fn get(&self) -> u64 {
            self.n
        }
    }
}

#[test]
fn a_pinned_handler_keeps_its_slot_in_the_implicit_numbering() {
    use pinned_between::{CounterRead, CounterWrite};
    assert_eq!(encode("cmd", &CounterWrite::First).unwrap(), [0]);
    assert_eq!(encode("cmd", &CounterWrite::Pinned).unwrap(), [9]);
    assert_eq!(encode("cmd", &CounterWrite::Third).unwrap(), [2]);
    assert_eq!(encode("q", &CounterRead::Get).unwrap(), [0]);
    let back: CounterWrite = decode("cmd", &[2]).unwrap();
    assert!(matches!(back, CounterWrite::Third));
    assert!(decode::<CounterWrite>("cmd", &[1]).is_err());
}

/// The same state machine twice, once with a handler's signature changed.
mod v1 {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }
    }
}

mod v1_again {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        /// Docs and bodies are not part of the schema.
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n = self.n.wrapping_add(by);
            self.n
        }
    }
}

mod v2 {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u32) -> u64 {
            self.n += u64::from(by);
            self.n
        }
    }
}

mod v3 {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "counter")]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }
    }
}

#[test]
fn fingerprint_tracks_the_schema() {
    let v1 = <v1::Kv as StateMachine>::SCHEMA_FINGERPRINT;
    assert_eq!(v1, <v1_again::Kv as StateMachine>::SCHEMA_FINGERPRINT);
    assert_ne!(v1, <v2::Kv as StateMachine>::SCHEMA_FINGERPRINT);
    assert_ne!(v1, <v3::Kv as StateMachine>::SCHEMA_FINGERPRINT);
    assert_eq!(<v3::Kv as StateMachine>::NAME, "counter");
    assert_ne!(v1, <Kv as StateMachine>::SCHEMA_FINGERPRINT);
}

/// The same state machine three times: with a write handler compiled out
/// (`#[cfg(not(test))]`), without it, and with it compiled in (`#[cfg(test)]`).
/// The handler after it keeps its tag (the compiled-out one keeps its
/// slot), pinned in the twin without it.
mod cfg_out {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "cfg-twins")]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        #[cfg(not(test))]
        #[write]
        fn reset(&mut self, to: u64) -> u64 {
            self.n = to;
            self.n
        }

        #[write]
        fn double(&mut self) -> u64 {
            self.n *= 2;
            self.n
        }

        #[read]
        fn get(&self) -> u64 {
            self.n
        }
    }
}

/// [`cfg_out`] without the compiled-out handler.
mod cfg_absent {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "cfg-twins")]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        #[write(tag = 2)]
        fn double(&mut self) -> u64 {
            self.n *= 2;
            self.n
        }

        #[read]
        fn get(&self) -> u64 {
            self.n
        }
    }
}

/// [`cfg_out`] with the handler compiled in.
mod cfg_in {
    use raftkit::prelude::*;

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(name = "cfg-twins")]
    pub struct Kv {
        n: u64,
    }

    #[raftkit::state_machine]
    impl Kv {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        #[cfg(test)]
        #[write]
        fn reset(&mut self, to: u64) -> u64 {
            self.n = to;
            self.n
        }

        #[write]
        fn double(&mut self) -> u64 {
            self.n *= 2;
            self.n
        }

        #[read]
        fn get(&self) -> u64 {
            self.n
        }
    }
}

/// Teeth (stop 53, mutant M10): a handler compiled out of a binary counts
/// in neither its `SCHEMA_FINGERPRINT` nor its structural schema, which
/// peers compare in rolling upgrades: that binary cannot apply the
/// handler's commands, so it must not claim it (a cluster would let a
/// member propose what this one halts on). One compiled in counts. Both
/// follow the `#[cfg]` alike, so the fingerprint and the schema never
/// disagree about the handlers a binary has.
#[test]
fn a_handler_compiled_out_counts_in_neither_fingerprint_nor_schema() {
    let out = <cfg_out::Kv as StateMachine>::SCHEMA_FINGERPRINT;
    let absent = <cfg_absent::Kv as StateMachine>::SCHEMA_FINGERPRINT;
    let inside = <cfg_in::Kv as StateMachine>::SCHEMA_FINGERPRINT;
    assert_eq!(
        out, absent,
        "a compiled-out handler changed the schema fingerprint"
    );
    assert_ne!(
        inside, absent,
        "a compiled-in handler did not change the schema fingerprint"
    );
    let schema = <cfg_out::Kv as StateMachine>::schema();
    assert_eq!(
        schema,
        <cfg_absent::Kv as StateMachine>::schema(),
        "a compiled-out handler is in the structural schema"
    );
    let tags = |s: &raftkit::schema::Schema| {
        s.handlers
            .iter()
            .map(|h| (h.kind.as_str(), h.tag, h.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tags(&schema),
        [
            ("write", 0, "add".to_string()),
            ("write", 2, "double".to_string()),
            ("read", 0, "get".to_string()),
        ],
        "the compiled-out handler keeps its tag slot"
    );
    assert_eq!(
        tags(&<cfg_in::Kv as StateMachine>::schema()),
        [
            ("write", 0, "add".to_string()),
            ("write", 1, "reset".to_string()),
            ("write", 2, "double".to_string()),
            ("read", 0, "get".to_string()),
        ]
    );
}

/// Two handlers of each kind with the same signature, and a handler with
/// two arguments of the same type: a dispatch that picked a handler by its
/// signature, or a client that passed arguments out of order, would still
/// compile.
#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Calc {
    n: u64,
}

#[raftkit::state_machine]
impl Calc {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[write]
    fn sub(&mut self, by: u64) -> u64 {
        self.n -= by;
        self.n
    }

    #[write]
    fn set_diff(&mut self, from: u64, minus: u64) -> u64 {
        self.n = from - minus;
        self.n
    }

    #[read]
    fn doubled(&self) -> u64 {
        self.n * 2
    }

    #[read]
    fn halved(&self) -> u64 {
        self.n / 2
    }
}

#[test]
fn each_command_reaches_its_own_handler_with_its_arguments_in_order() {
    let calc = CalcClient::new(Local::new(Calc::default()));
    assert_eq!(block_on(calc.add(10)), Ok(10));
    assert_eq!(block_on(calc.sub(4)), Ok(6));
    assert_eq!(block_on(calc.doubled()), Ok(12));
    assert_eq!(block_on(calc.halved()), Ok(3));
    assert_eq!(block_on(calc.set_diff(9, 2)), Ok(7));
}

/// A user type named `S`, as a handler's argument and in its return type.
/// The generated client is generic over its submitter: a generic parameter
/// named `S` would capture the user's `S` inside the client's methods, and
/// `put(&self, v: S)` would take the submitter type.
mod user_type_named_s {
    use raftkit::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct S(pub u64);

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Register {
        last: Option<S>,
    }

    #[raftkit::state_machine]
    impl Register {
        #[write]
        fn put(&mut self, v: S) -> Option<S> {
            self.last.replace(v)
        }

        #[read]
        fn get(&self) -> Option<S> {
            self.last
        }
    }
}

#[test]
fn a_user_type_named_s_goes_through_the_client() {
    use user_type_named_s::{Register, RegisterClient, S};
    let register = RegisterClient::new(Local::new(Register::default()));
    assert_eq!(block_on(register.put(S(1))), Ok(None));
    assert_eq!(block_on(register.put(S(2))), Ok(Some(S(1))));
    assert_eq!(block_on(register.get()), Ok(Some(S(2))));
}

/// User names that the generated code's own names must not capture: state
/// machines named `I` and `A` (the client's `connect` names the state
/// machine's type inside a function generic over parameters that were named
/// `I` and `A`), and a migration function named `bytes` (the generated
/// `Derived::migrate` calls it with its own parameters, one of them named
/// `bytes`).
mod user_names {
    use raftkit::prelude::*;
    use raftkit::state_machine::{CodecError, decode};

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct I {
        pub n: u64,
    }

    #[raftkit::state_machine]
    impl I {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }
    }

    /// Version 2 of a state whose version 1 was a bare `u32`.
    #[derive(StateMachine, Default, Serialize, Deserialize)]
    #[raftkit(version = 2, migrate = bytes)]
    pub struct A {
        pub n: u64,
        pub migrated: bool,
    }

    #[raftkit::state_machine]
    impl A {
        #[write]
        fn add(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        #[read]
        fn get(&self) -> u64 {
            self.n
        }
    }

    fn bytes(from_version: u32, data: &[u8]) -> Result<A, CodecError> {
        assert_eq!(from_version, 1);
        let n: u32 = decode("v1 state", data)?;
        Ok(A {
            n: n.into(),
            migrated: true,
        })
    }
}

#[test]
fn user_names_are_not_captured_by_generated_ones() {
    use user_names::{A, AClient, I, IClient};
    assert_eq!(
        block_on(IClient::new(Local::new(I::default())).add(2)),
        Ok(2)
    );
    let a = AClient::new(Local::new(A::default()));
    assert_eq!(block_on(a.add(3)), Ok(3));
    assert_eq!(block_on(a.get()), Ok(3));
    // A version-1 snapshot goes through the user's `bytes`.
    let v1 = raftkit::schema::encode_state(1, &41u32).unwrap();
    let restored = A::restore(&v1).unwrap();
    assert_eq!((restored.n, restored.migrated), (41, true));
}

/// A state machine written inside a `macro_rules!` macro: the generated
/// code's locals must resolve whatever the hygiene of the user's tokens,
/// whether they are written in the macro's body (`define!()`) or passed in
/// by its caller (`define_named!(Named, u32)`: the type's name and the
/// argument, return and field types).
mod in_macro_rules {
    use raftkit::prelude::*;

    macro_rules! define {
        () => {
            #[derive(StateMachine, Default, Serialize, Deserialize)]
            pub struct Tally {
                pub n: u64,
                pub seen: Vec<String>,
            }

            #[raftkit::state_machine]
            impl Tally {
                #[write(shard = key)]
                fn add(&mut self, ctx: &mut Ctx, key: String, by: u64) -> (u64, u64) {
                    self.n += by;
                    self.seen.push(key);
                    (self.n, ctx.index())
                }

                #[read(shard = key)]
                fn seen(&self, key: String) -> bool {
                    self.seen.contains(&key)
                }

                #[read]
                fn get(&self) -> u64 {
                    self.n
                }
            }
        };
    }

    define!();

    macro_rules! define_named {
        ($name:ident, $int:ident) => {
            #[derive(StateMachine, Default, Serialize, Deserialize)]
            pub struct $name {
                pub n: $int,
                pub seen: Vec<$int>,
            }

            #[raftkit::state_machine]
            impl $name {
                #[write(shard = by)]
                fn add(&mut self, ctx: &mut Ctx, by: $int) -> ($int, u64) {
                    self.n += by;
                    self.seen.push(by);
                    (self.n, ctx.index())
                }

                #[read(shard = value)]
                fn seen(&self, value: $int) -> bool {
                    self.seen.contains(&value)
                }

                #[read]
                fn get(&self) -> $int {
                    self.n
                }
            }
        };
    }

    define_named!(Named, u32);
}

#[test]
fn a_state_machine_defined_in_macro_rules_dispatches() {
    use in_macro_rules::{
        Named, NamedClient, NamedRead, NamedWrite, Tally, TallyClient, TallyWrite,
    };

    let local = Local::new(Tally::default());
    let tally = TallyClient::new(local.clone());
    assert_eq!(block_on(tally.add("a".into(), 2)), Ok((2, 1)));
    assert_eq!(block_on(tally.add("b".into(), 3)), Ok((5, 2)));
    assert_eq!(block_on(tally.get()), Ok(5));
    assert_eq!(block_on(tally.seen("a".into())), Ok(true));
    assert_eq!(block_on(tally.seen("c".into())), Ok(false));
    let command = TallyWrite::Add {
        key: "k".into(),
        by: 1,
    };
    assert_eq!(
        <Tally as StateMachine>::shard_key(&command),
        Some(b"k".to_vec())
    );
    let restored = Tally::restore(&local.with(|t| t.snapshot()).unwrap()).unwrap();
    assert_eq!((restored.n, restored.seen.len()), (5, 2));

    let local = Local::new(Named::default());
    let named = NamedClient::new(local.clone());
    assert_eq!(block_on(named.add(7)), Ok((7, 1)));
    assert_eq!(block_on(named.add(4)), Ok((11, 2)));
    assert_eq!(block_on(named.get()), Ok(11u32));
    assert_eq!(block_on(named.seen(4)), Ok(true));
    assert_eq!(block_on(named.seen(5)), Ok(false));
    assert_eq!(
        <Named as StateMachine>::shard_key(&NamedWrite::Add { by: 1 }),
        Some(1u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        <Named as StateMachine>::read_shard_key(&NamedRead::Seen { value: 2 }),
        Some(2u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        <Named as StateMachine>::read_shard_key(&NamedRead::Get),
        None
    );
    let restored = Named::restore(&local.with(|t| t.snapshot()).unwrap()).unwrap();
    assert_eq!((restored.n, restored.seen), (11, vec![7, 4]));
}

/// A typed-client write whose argument fails to encode never leaves the
/// process: the error says it was not applied (review stop 56, finding 3).
mod unencodable_argument {
    use super::*;

    /// An argument whose `Serialize` always fails (as a `#[serde(flatten)]`
    /// struct or an unsized `collect_seq` does under postcard).
    #[derive(Debug, Clone, Deserialize)]
    pub struct Unencodable(pub u32);

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this argument never encodes"))
        }
    }

    #[derive(StateMachine, Default, Serialize, Deserialize)]
    pub struct Sink {
        taken: u32,
    }

    #[raftkit::state_machine]
    impl Sink {
        #[write]
        fn take(&mut self, arg: Unencodable) -> u32 {
            self.taken += arg.0;
            self.taken
        }

        #[read]
        fn taken(&self) -> u32 {
            self.taken
        }
    }

    #[test]
    fn a_write_whose_argument_does_not_encode_is_not_applied() {
        let local = Local::new(Sink::default());
        let sink = SinkClient::new(local);
        let err = block_on(sink.take(Unencodable(5))).expect_err("cannot be sent");
        assert_eq!(err.applied(), raftkit::error::Applied::No, "{err:?}");
        assert!(!err.is_retryable(), "{err:?}");
        // postcard keeps no custom message ("Serde Serialization Error"):
        // the error says the command was not sent and that its codec failed.
        assert!(
            err.to_string().contains("not sent") && err.to_string().contains("Serialization"),
            "the error names the failed encode: {err}"
        );
        assert_eq!(block_on(sink.taken()), Ok(0));
    }
}
