//! A write whose output's `Serialize` returns `Err` (not a panic) after
//! the handler ran and changed the state: it follows the handler's error
//! policy as a panic of the handler does. Under `halt` the node halts;
//! under `skip` (the default) the caller gets `Error::Handler` (applied
//! `Yes`: the state changed) and one `tracing` error event names the
//! handler, the entry and the codec error. Before (stop 56): the error
//! became `Error::Handler` under either policy, and nothing was logged.

use serde::ser::Error as _;
use serde::{Serialize, Serializer};

use super::{ApplyError, Ctx, apply_decoded, apply_encoded, encode};
use crate::error::{Applied, Error};
use crate::prelude::*;

/// The output whose encoding fails.
pub(crate) const REFUSED: u64 = 777;

/// A write output whose `Serialize` returns `Err` on [`REFUSED`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct Refusing(pub(crate) u64);

impl Serialize for Refusing {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        if self.0 == REFUSED {
            return Err(Z::Error::custom("Refusing::serialize fails on purpose"));
        }
        s.serialize_u64(self.0)
    }
}

/// The output whose decoding fails.
pub(crate) const UNREADABLE: u64 = 999;

/// A write output that encodes, but whose `Deserialize` refuses
/// [`UNREADABLE`]: the reply of a write that applied does not decode at
/// the caller.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct OneWay(pub(crate) u64);

impl<'de> Deserialize<'de> for OneWay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == UNREADABLE {
            return Err(serde::de::Error::custom(
                "OneWay::deserialize fails on purpose",
            ));
        }
        Ok(OneWay(v))
    }
}

/// `put` under the default policy (`skip`), `put_strict` under `halt`;
/// `keep`'s output may not decode.
#[derive(StateMachine, Default, Serialize, Deserialize)]
pub(crate) struct Picky {
    pub(crate) n: u64,
}

#[crate::state_machine]
impl Picky {
    #[write]
    fn put(&mut self, v: u64) -> Refusing {
        self.n = v;
        Refusing(v)
    }

    #[write(on_error = "halt")]
    fn put_strict(&mut self, v: u64) -> Refusing {
        self.n = v;
        Refusing(v)
    }

    #[write]
    fn keep(&mut self, v: u64) -> OneWay {
        self.n = v;
        OneWay(v)
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// Everything a `tracing` subscriber writes, as text.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// `f`'s result and the text of the events it logged.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, captured.text())
}

#[test]
fn an_output_encode_error_under_skip_is_a_handler_error_and_is_logged() {
    let mut sm = Picky::default();
    let (r, log) = logged(|| {
        apply_decoded(
            &mut sm,
            &mut Ctx::new(5, 2, 0),
            PickyWrite::Put { v: REFUSED },
        )
    });
    assert_eq!(sm.n, REFUSED, "the handler's state change stays");
    assert!(
        log.contains("ERROR")
            && log.contains("handler=\"put\"")
            && log.contains("index=5")
            && log.contains("policy=\"skip\"")
            && log
                .contains("output_type=\"raftkit::state_machine::output_tests::PickyWriteOutput\""),
        "no error event with the handler, the entry and the output type: {log:?}"
    );
    match &r {
        Err(ApplyError::Panicked { message }) => assert!(
            message.contains("`put`") && message.contains("did not encode"),
            "the error does not say what failed: {message}"
        ),
        other => panic!("an output that does not encode under skip gave {other:?}"),
    }
    assert_eq!(log.lines().count(), 1, "one event: {log}");
    // Any other output encodes as before, and logs nothing.
    let (ok, log) =
        logged(|| apply_decoded(&mut sm, &mut Ctx::new(6, 2, 0), PickyWrite::Put { v: 3 }));
    assert_eq!(
        ok,
        Ok(encode("write output", &PickyWriteOutput::Put(Refusing(3))).expect("encodes"))
    );
    assert!(log.is_empty(), "{log}");
}

#[test]
fn an_output_encode_error_under_halt_halts() {
    let mut sm = Picky::default();
    let command = encode("command", &PickyWrite::PutStrict { v: REFUSED }).expect("encodes");
    let (r, log) = logged(|| apply_encoded(&mut sm, &mut Ctx::new(9, 1, 0), &command));
    match &r {
        Err(ApplyError::Halted { message }) => {
            assert!(
                message.contains("`put_strict`")
                    && message.contains("`raftkit::state_machine::output_tests::PickyWriteOutput`"),
                "{message}"
            )
        }
        other => panic!("an output that does not encode under halt gave {other:?}"),
    }
    assert!(
        log.contains("ERROR")
            && log.contains("handler=\"put_strict\"")
            && log.contains("index=9")
            && log.contains("policy=\"halt\""),
        "no error event with the handler and the entry: {log:?}"
    );
}

/// The in-process client applies the same policy: `Handler` (applied) under
/// skip; under halt `Halted`, and later writes are refused.
#[test]
fn the_local_client_follows_the_policy_of_an_output_encode_error() {
    let local = crate::client::Local::new(Picky::default());
    let client = PickyClient::new(local.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    match rt.block_on(client.put(REFUSED)) {
        Err(e @ Error::Handler { .. }) => assert_eq!(e.applied(), Applied::Yes),
        other => panic!("skip: {other:?}"),
    }
    assert_eq!(local.with(|p| p.n), REFUSED);
    assert_eq!(rt.block_on(client.put(4)).ok(), Some(Refusing(4)));
    match rt.block_on(client.put_strict(REFUSED)) {
        Err(e @ Error::Halted { .. }) => assert_eq!(e.applied(), Applied::Maybe),
        other => panic!("halt: {other:?}"),
    }
    assert!(local.halted().is_some());
    let later = rt
        .block_on(client.put(5))
        .expect_err("refused after the halt");
    assert_eq!(later.applied(), Applied::No, "{later:?}");
}

/// A write whose reply does not decode at the caller was applied (the
/// reply came back from its apply): the error says applied `Yes`, not
/// `Maybe` (which invites a caller without a session to apply it again).
/// Before (stop 56): `Error::Codec`, applied `Maybe`.
#[test]
fn a_write_reply_that_does_not_decode_says_applied() {
    let local = crate::client::Local::new(Picky::default());
    let client = PickyClient::new(local.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let e = rt
        .block_on(client.keep(UNREADABLE))
        .expect_err("the reply does not decode");
    assert_eq!(e.applied(), Applied::Yes, "{e:?}");
    assert!(!e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("write output"), "{e}");
    assert_eq!(local.with(|p| p.n), UNREADABLE, "it was applied");
    assert_eq!(rt.block_on(client.keep(2)).ok(), Some(OneWay(2)));
}

/// A submitter whose every write answers with `reply`.
struct Answers(Vec<u8>);

impl crate::client::Submit for Answers {
    async fn write(&self, _command: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(self.0.clone())
    }

    async fn read(&self, _query: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(self.0.clone())
    }
}

/// A write answered with another handler's output (a peer of another
/// version) was applied too: applied `Yes`. Before (stop 56):
/// `Error::Protocol`, applied `Maybe`.
#[test]
fn a_write_reply_of_another_handler_says_applied() {
    let other = encode("write output", &PickyWriteOutput::Keep(OneWay(1))).expect("encodes");
    let client = PickyClient::new(Answers(other));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let e = rt
        .block_on(client.put(1))
        .expect_err("another handler's output");
    assert_eq!(e.applied(), Applied::Yes, "{e:?}");
    assert!(!e.is_retryable(), "{e:?}");
    // A read applies nothing, whatever its answer: never `Yes`.
    let read = rt.block_on(client.get()).expect_err("not a read output");
    assert_ne!(read.applied(), Applied::Yes, "{read:?}");
}
