//! The contract between raftkit and a user's replicated state machine.
//!
//! Users rarely implement [`StateMachine`] by hand: `#[derive(StateMachine)]`
//! on a struct together with `#[raftkit::state_machine]` on its impl block
//! generate it (see the crate docs). The runtime and the simulation speak to a
//! state machine only through the byte-level helpers in this module
//! (`apply_encoded`, `query_encoded`: internal, hidden from the docs), which
//! decode commands with postcard, run the handler, apply the error policy and
//! encode the reply.
//!
//! # Invariants
//! - Handlers are deterministic: the same state and the same command give the
//!   same result and the same new state on every replica. No clocks, no
//!   randomness, no IO in handlers: the replicated time and a seeded random
//!   generator come in the handler's [`Ctx`].
//! - Whatever a handler does, including panicking or returning an output
//!   whose `Serialize` fails, the log is neither lost nor reordered: under [`ErrorPolicy::Skip`] the entry is consumed with an
//!   error reply on every replica alike; under [`ErrorPolicy::Halt`] the node
//!   stops applying at that entry and keeps it in the log for a fixed binary.
//! - A command, query, reply or state decodes only as a whole ([`decode`]):
//!   bytes left after the value (a field a newer binary appended) are a
//!   decode error, never dropped, so every replica applies the command the
//!   proposer encoded or halts on it.
//! - A handler's panic prints nothing on standard error (the panic hook is
//!   silenced for handlers only); it becomes one `tracing` error event with
//!   the handler's name, the entry's index, the message and the location.

use serde::{Serialize, de::DeserializeOwned};

pub use crate::context::Ctx;
use crate::handler_panic::{self, Caught};

/// What happens when a `#[write]` handler panics, or returns an output
/// whose `Serialize` returns `Err` (DESIGN §6).
///
/// # Upgrading
///
/// Releases before this one consumed an entry whose output did not encode
/// as a skip under either policy. The rule is this binary's, not the
/// entry's (entries do not record the binary that wrote them), so a node
/// upgraded to this release that replays such an old entry of a `Halt`
/// handler halts where the others applied it: take a snapshot on every
/// node before upgrading a cluster whose state machine can fail to encode
/// an output under `Halt` (README, "Changing your state machine").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorPolicy {
    /// Log the panic, answer the caller with a handler error, and go on with
    /// the next entry. Every replica does the same, so replicas stay equal.
    Skip,
    /// Stop applying on this node, report it through status and metrics, and
    /// keep the log intact so that a fixed binary can resume from it.
    Halt,
}

/// A replicated state machine.
///
/// `Write` commands change the state and go through the log; `Read` queries
/// observe it and are served on the leader after a ReadIndex round.
///
/// The derive implements it (see the crate docs); what it generates can be
/// used directly:
///
/// ```
/// # use raftkit::prelude::*;
/// # #[derive(StateMachine, Default, Serialize, Deserialize)]
/// # struct Counter { n: u64 }
/// # #[raftkit::state_machine]
/// # impl Counter {
/// #     #[write]
/// #     fn add(&mut self, by: u64) -> u64 { self.n += by; self.n }
/// #     #[read]
/// #     fn get(&self) -> u64 { self.n }
/// # }
/// use raftkit::{Ctx, ErrorPolicy};
/// assert_eq!(Counter::NAME, "counter");
/// let mut counter = Counter::default();
/// let mut ctx = Ctx::new(1, 1, 0);
/// let out = counter.apply(&mut ctx, CounterWrite::Add { by: 3 });
/// assert_eq!(format!("{out:?}"), "Add(3)");
/// assert_eq!(Counter::error_policy(&CounterWrite::Add { by: 1 }), ErrorPolicy::Skip);
/// let restored = Counter::restore(&counter.snapshot()?)?;
/// assert_eq!(restored.n, 3);
/// # Ok::<(), raftkit::state_machine::CodecError>(())
/// ```
pub trait StateMachine: Sized + Send + 'static {
    /// The command enum: one variant per `#[write]` handler.
    type Write: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a `Write` returns.
    type WriteOutput: Serialize + DeserializeOwned + Send + 'static;
    /// The query enum: one variant per `#[read]` handler.
    type Read: Serialize + DeserializeOwned + Send + 'static;
    /// What a `Read` returns.
    type ReadOutput: Serialize + DeserializeOwned + Send + 'static;

    /// The state machine's name, used in default peer names
    /// (`<name>@<advertised address>`).
    const NAME: &'static str;
    /// A fingerprint of the command schema (handler names, tags, argument and
    /// return types). Peers compare it when they connect and a replayed log is
    /// checked against it, so that a mismatch is an error, never a misapplied
    /// command.
    const SCHEMA_FINGERPRINT: u64;

    /// The structural schema: every handler's kind, tag and argument and
    /// return shapes, and the state's shape and version (see
    /// [`crate::schema`]). Generated code computes it once and caches it.
    fn schema() -> crate::schema::Schema;

    /// Applies a command. Must be deterministic: everything it may know
    /// beyond the state and the command is in `ctx` (the entry's index and
    /// term, replicated time, a seeded random generator; see [`Ctx`]).
    fn apply(&mut self, ctx: &mut Ctx, command: Self::Write) -> Self::WriteOutput;
    /// Answers a query without changing the state. `ctx` describes the last
    /// entry applied (its time is the replicated time of that entry).
    fn query(&self, ctx: &Ctx, query: Self::Read) -> Self::ReadOutput;
    /// What to do if `apply` panics on this command.
    fn error_policy(command: &Self::Write) -> ErrorPolicy;
    /// The name of the handler of `command`, for logs and traces (the
    /// derive returns the method name).
    fn handler_name(command: &Self::Write) -> &'static str {
        let _ = command;
        "write"
    }
    /// The name of the handler of `query`, for logs and traces.
    fn query_name(query: &Self::Read) -> &'static str {
        let _ = query;
        "read"
    }
    /// The shard key of `command` (`#[write(shard = key)]` in the derive):
    /// the bytes a sharded client ([`crate::client::ShardedClient`]) routes
    /// the command by, or `None` when the command has none (a sharded
    /// client refuses it).
    fn shard_key(command: &Self::Write) -> Option<Vec<u8>> {
        let _ = command;
        None
    }
    /// The shard key of `query` (`#[read(shard = key)]`), or `None`.
    fn read_shard_key(query: &Self::Read) -> Option<Vec<u8>> {
        let _ = query;
        None
    }
    /// Serializes the whole state for a snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, CodecError>;
    /// [`StateMachine::snapshot`]'s bytes, written at the end of `buf`
    /// (appending, never reading or changing what is already there).
    ///
    /// The runtime serializes each snapshot into the memory of one the
    /// node let go, where a fresh buffer costs the kernel zeroing every page
    /// of it. The default appends what [`StateMachine::snapshot`] returns
    /// (one copy); `#[derive(StateMachine)]` serializes in place.
    fn snapshot_onto(&self, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        buf.extend_from_slice(&self.snapshot()?);
        Ok(())
    }
    /// Rebuilds the state from a snapshot made by [`StateMachine::snapshot`].
    fn restore(data: &[u8]) -> Result<Self, CodecError>;
    /// A copy of the state to serialize for a snapshot away from the apply
    /// thread, or `None` (the default): the apply thread then serializes the
    /// state itself with [`StateMachine::snapshot`] and applies nothing
    /// meanwhile.
    ///
    /// `#[raftkit(snapshot = "clone")]` on the derive returns a clone of the
    /// state here. That pays only when cloning is much cheaper than
    /// serializing: a state held in persistent collections (such as the
    /// `imbl` crate's), whose clone shares its nodes and copies one only when
    /// either side changes it. The copy must not share anything mutable with
    /// the live state (no `Arc<Mutex<_>>` both hold): the runtime serializes
    /// it while later entries are applied, and the snapshot must be the
    /// state at exactly the index it is taken at. Its bytes must be what
    /// [`StateMachine::snapshot`] would have given at that index.
    ///
    /// ```
    /// # use raftkit::prelude::*;
    /// use std::collections::BTreeMap;
    /// use raftkit::Ctx;
    ///
    /// // The clone shares every blob: a snapshot copies the map's entries,
    /// // not the blobs, and the snapshot thread serializes the copy.
    /// #[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
    /// #[raftkit(snapshot = "clone")]
    /// struct Blobs {
    ///     map: BTreeMap<String, bytes::Bytes>,
    /// }
    ///
    /// #[raftkit::state_machine]
    /// impl Blobs {
    ///     #[write]
    ///     fn put(&mut self, key: String, blob: Vec<u8>) {
    ///         self.map.insert(key, blob.into());
    ///     }
    /// }
    ///
    /// let mut blobs = Blobs::default();
    /// blobs.apply(&mut Ctx::new(1, 1, 0), BlobsWrite::Put { key: "a".into(), blob: vec![1; 4] });
    /// let copy = blobs.snapshot_copy().expect("a copy");
    /// blobs.apply(&mut Ctx::new(2, 1, 0), BlobsWrite::Put { key: "b".into(), blob: vec![2] });
    /// // The snapshot is the state as of the copy.
    /// let restored = Blobs::restore(&copy.encode()?)?;
    /// assert_eq!(restored.map.len(), 1);
    /// # Ok::<(), raftkit::state_machine::CodecError>(())
    /// ```
    fn snapshot_copy(&self) -> Option<SnapshotCopy> {
        None
    }
}

/// A state machine's snapshot, to be serialized later and on another thread
/// (see [`StateMachine::snapshot_copy`]).
pub struct SnapshotCopy(Encoder);

/// Serializes a copy into a buffer of its own.
type OwnedEncoder = Box<dyn FnOnce() -> Result<Vec<u8>, CodecError> + Send>;
/// Serializes a copy at the end of the buffer it is given.
type OntoEncoder = Box<dyn FnOnce(&mut Vec<u8>) -> Result<(), CodecError> + Send>;

/// How a [`SnapshotCopy`] gives its bytes.
enum Encoder {
    /// Into a buffer of its own.
    Owned(OwnedEncoder),
    /// At the end of a buffer it is given.
    Onto(OntoEncoder),
}

impl SnapshotCopy {
    /// A snapshot that `encode` serializes when the runtime asks (on its
    /// snapshot thread). `encode` owns what it serializes: a copy of the
    /// state as of the moment this is made.
    ///
    /// ```
    /// use raftkit::state_machine::SnapshotCopy;
    /// let state = vec![1u32, 2, 3];
    /// let copy = SnapshotCopy::new(move || raftkit::state_machine::encode("state", &state));
    /// assert_eq!(copy.encode()?, vec![3, 1, 2, 3]);
    /// # Ok::<(), raftkit::state_machine::CodecError>(())
    /// ```
    pub fn new(encode: impl FnOnce() -> Result<Vec<u8>, CodecError> + Send + 'static) -> Self {
        SnapshotCopy(Encoder::Owned(Box::new(encode)))
    }

    /// A snapshot that `write` serializes at the end of the buffer it is
    /// given (appending, never reading or changing what is already there).
    ///
    /// Prefer this to [`SnapshotCopy::new`] for a large state: the runtime
    /// serializes straight into the snapshot's own buffer, reused from one
    /// snapshot to the next, where a fresh buffer per snapshot costs the
    /// kernel zeroing every page of it (and growing it, copies of it). This
    /// is what `#[raftkit(snapshot = "clone")]` generates.
    ///
    /// ```
    /// use raftkit::state_machine::SnapshotCopy;
    /// let state = vec![1u32, 2, 3];
    /// let copy = SnapshotCopy::writing(move |buf| {
    ///     raftkit::state_machine::encode_onto("state", &state, buf)
    /// });
    /// assert_eq!(copy.encode()?, vec![3, 1, 2, 3]);
    /// # Ok::<(), raftkit::state_machine::CodecError>(())
    /// ```
    pub fn writing(
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError> + Send + 'static,
    ) -> Self {
        SnapshotCopy(Encoder::Onto(Box::new(write)))
    }

    /// Serializes the copy (the same bytes [`StateMachine::snapshot`] gives).
    pub fn encode(self) -> Result<Vec<u8>, CodecError> {
        match self.0 {
            Encoder::Owned(encode) => encode(),
            Encoder::Onto(write) => {
                let mut buf = Vec::new();
                write(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Serializes the copy at the end of `buf` (after a failure, `buf`
    /// holds anything).
    pub(crate) fn encode_onto(self, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        match self.0 {
            Encoder::Owned(encode) => {
                let bytes = encode()?;
                if buf.is_empty() {
                    *buf = bytes;
                } else {
                    buf.extend_from_slice(&bytes);
                }
                Ok(())
            }
            Encoder::Onto(write) => write(buf),
        }
    }
}

impl std::fmt::Debug for SnapshotCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCopy(..)")
    }
}

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CodecError {
    /// What was being encoded or decoded.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

impl CodecError {
    /// Wraps a postcard error.
    pub fn postcard(what: &'static str, err: postcard::Error) -> Self {
        CodecError {
            what,
            reason: err.to_string(),
        }
    }

    /// A value decoded from the first bytes of its input and `left` bytes
    /// were not part of it (see [`decode`]).
    pub fn trailing(what: &'static str, left: usize) -> Self {
        CodecError {
            what,
            reason: format!(
                "{left} trailing bytes after the value (encoded by a binary whose type has more fields?)"
            ),
        }
    }
}

impl CodecError {
    /// A value nested deeper than the decoder allows (see [`decode_untrusted`]).
    fn too_deep(what: &'static str) -> Self {
        CodecError {
            what,
            reason: format!(
                "the value is nested deeper than {} levels (refused: decoding it could overflow the stack)",
                crate::depth::MAX_DEPTH
            ),
        }
    }
}

/// Values up to this many bytes are encoded on the stack first (see
/// [`encode`]).
const ENCODE_ON_STACK: usize = 256;

/// Encodes a value with postcard, the wire and log format of commands.
///
/// A value of at most `ENCODE_ON_STACK` (256) bytes (commands, outputs and
/// queries usually are) is encoded into a buffer on the stack and copied
/// into a vector of exactly its length: one allocation, where growing a
/// vector takes up to four for a few dozen bytes, and a vector whose
/// capacity is its length becomes a [`bytes::Bytes`] without another one
/// (the watch journal keeps outputs so). A larger value is encoded again
/// into a growing vector.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = [0u8; ENCODE_ON_STACK];
    match postcard::to_slice(value, &mut buf) {
        Ok(used) => Ok(used.to_vec()),
        Err(postcard::Error::SerializeBufferFull) => {
            postcard::to_allocvec(value).map_err(|e| CodecError::postcard(what, e))
        }
        Err(e) => Err(CodecError::postcard(what, e)),
    }
}

/// [`encode`] at the end of `buf`, which grows as needed (what is already
/// in it stays). After an error, `buf` is empty.
///
/// ```
/// let mut buf = vec![7];
/// raftkit::state_machine::encode_onto("value", &(1u8, "a"), &mut buf)?;
/// assert_eq!(buf, [7, 1, 1, b'a']);
/// # Ok::<(), raftkit::state_machine::CodecError>(())
/// ```
pub fn encode_onto<T: Serialize>(
    what: &'static str,
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(value, taken).map_err(|e| CodecError::postcard(what, e))?;
    Ok(())
}

/// Every byte value, for the one-byte encodings [`encode_shared`] returns
/// without allocating.
static BYTE_VALUES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as u8;
        i += 1;
    }
    table
};

/// [`encode`] into shared bytes: the apply thread's encoding of a write's
/// output, which the watch journal keeps and, on the leader, the caller
/// receives. An encoding of at most one byte (a unit output, `None`, a
/// `bool`, a field-less enum: most writes) is a static slice, so a
/// replica that answers no caller for the write allocates nothing for
/// its output; a longer one is one exactly sized allocation.
pub(crate) fn encode_shared<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<bytes::Bytes, CodecError> {
    let mut buf = [0u8; ENCODE_ON_STACK];
    match postcard::to_slice(value, &mut buf) {
        Ok(&mut []) => Ok(bytes::Bytes::new()),
        Ok(&mut [b]) => {
            let i = usize::from(b);
            Ok(BYTE_VALUES.get(i..i + 1).map_or_else(
                || bytes::Bytes::copy_from_slice(&[b]),
                bytes::Bytes::from_static,
            ))
        }
        Ok(used) => Ok(bytes::Bytes::copy_from_slice(used)),
        // `to_allocvec` grows its buffer by doubling; the boxed slice drops
        // the spare capacity, so the bytes a session table keeps are the
        // bytes its bounds count (review s61 perf L1).
        Err(postcard::Error::SerializeBufferFull) => postcard::to_allocvec(value)
            .map(|v| bytes::Bytes::from(v.into_boxed_slice()))
            .map_err(|e| CodecError::postcard(what, e)),
        Err(e) => Err(CodecError::postcard(what, e)),
    }
}

/// Decodes a postcard value that is the whole of `bytes`.
///
/// Bytes left after the value are an error naming "trailing bytes", where
/// `postcard::from_bytes` ignores them: postcard writes a struct's or a
/// variant's fields one after the other, so a value encoded by a binary
/// whose type gained a trailing field (a handler argument appended, a
/// field added to an argument's struct) starts with a valid encoding of
/// the older type. Decoding that prefix would drop the field silently, and
/// replicas running the older binary would apply another command than the
/// newer ones; refused, the entry halts the older node instead
/// (`runtime::apply`). Every caller passes exactly one encoded value (a
/// log entry's command is narrowed to its length prefix, a reply or a
/// snapshot body is its own buffer).
///
/// No nesting limit: this decodes values that were already checked at
/// ingress (committed log entries: the leader's check ran
/// [`decode_untrusted`] on them), that the state machine itself produced
/// (snapshots, which may legitimately nest far deeper than a command: a
/// list or trie grown by many shallow writes) or that the authenticated
/// server sent (replies, events). Refusing those for depth would halt a
/// replica, make a snapshot unrestorable or report a applied write as
/// failed. Bytes straight from a client go through [`decode_untrusted`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(CodecError::trailing(what, rest.len())),
        Err(e) => Err(CodecError::postcard(what, e)),
    }
}

/// [`decode`] of a client's bytes at ingress, before anything is proposed
/// or applied: the leader's (and a follower's) check of a command
/// ([`validate_command`]), a read's query ([`query_encoded`]), the local
/// and sharded clients' decode of a command or query they were handed.
/// A refusal there means "not applied", so it is safe.
///
/// A value nested deeper than 128 compound levels (a recursive type such as
/// `enum Expr { Lit(u64), Neg(Box<Expr>) }`) is refused with an error
/// naming the depth: decoding it could overflow the stack, which aborts the
/// process (see the `depth` module). The verdict depends only on the type
/// and the bytes, so every replica gives the same one; below the limit it
/// is [`decode`]'s verdict.
pub fn decode_untrusted<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let value = crate::depth::deserialize_limited(&mut de, crate::depth::MAX_DEPTH).map_err(
        |e| match e {
            Some(e) => CodecError::postcard(what, e),
            None => CodecError::too_deep(what),
        },
    )?;
    match de.finalize() {
        Ok([]) => Ok(value),
        Ok(rest) => Err(CodecError::trailing(what, rest.len())),
        Err(e) => Err(CodecError::postcard(what, e)),
    }
}

#[doc(hidden)]
/// Why applying an encoded command produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The command bytes do not decode as this state machine's `Write`.
    #[error("undecodable command: {0}")]
    Decode(CodecError),
    /// The handler panicked, or its output's `Serialize` returned an
    /// error, and its policy is `skip`: the entry is consumed and the
    /// caller receives this error.
    #[error("handler failed: {message}")]
    Panicked {
        /// The panic message, or what did not encode.
        message: String,
    },
    /// The handler panicked, or its output's `Serialize` returned an
    /// error, and its policy is `halt`: this node must stop applying at
    /// this entry.
    #[error("handler failed, node halted: {message}")]
    Halted {
        /// The panic message, or what did not encode.
        message: String,
    },
}

#[doc(hidden)]
/// Decodes `bytes` as a `Write` command of `S`: the leader's test before a
/// command may enter the log. The decoded command is handed on to the
/// leader's apply thread (see `runtime::apply`), which then does not decode
/// the entry a second time.
pub fn validate_command<S: StateMachine>(bytes: &[u8]) -> Result<S::Write, CodecError> {
    decode_untrusted::<S::Write>("command", bytes)
}

#[doc(hidden)]
/// Decodes a command, applies it under the state machine's error policy and
/// encodes the reply.
pub fn apply_encoded<S: StateMachine>(
    sm: &mut S,
    ctx: &mut Ctx,
    bytes: &[u8],
) -> Result<Vec<u8>, ApplyError> {
    apply_encoded_as(sm, ctx, bytes, |out| encode("write output", out))
}

/// [`apply_encoded`] with the output encoded by `encode_output` (the apply
/// thread's [`encode_shared`]).
pub(crate) fn apply_encoded_as<S: StateMachine, O>(
    sm: &mut S,
    ctx: &mut Ctx,
    bytes: &[u8],
    encode_output: impl FnOnce(&S::WriteOutput) -> Result<O, CodecError>,
) -> Result<O, ApplyError> {
    let command: S::Write = decode("command", bytes).map_err(ApplyError::Decode)?;
    apply_decoded_as(sm, ctx, command, encode_output)
}

#[doc(hidden)]
/// [`apply_encoded`] of a command already decoded from the entry's bytes.
pub fn apply_decoded<S: StateMachine>(
    sm: &mut S,
    ctx: &mut Ctx,
    command: S::Write,
) -> Result<Vec<u8>, ApplyError> {
    apply_decoded_as(sm, ctx, command, |out| encode("write output", out))
}

/// [`apply_decoded`] with the output encoded by `encode_output`.
pub(crate) fn apply_decoded_as<S: StateMachine, O>(
    sm: &mut S,
    ctx: &mut Ctx,
    command: S::Write,
    encode_output: impl FnOnce(&S::WriteOutput) -> Result<O, CodecError>,
) -> Result<O, ApplyError> {
    let policy = S::error_policy(&command);
    let handler = S::handler_name(&command);
    let index = ctx.index();
    match handler_panic::catch(|| sm.apply(ctx, command)) {
        // The handler ran and changed the state, but its output's
        // `Serialize` returned an error: a failure of the handler's code
        // like a panic in it, so it follows the handler's policy (a panic
        // in the `Serialize` halts whatever the policy: `runtime::apply`).
        // The error depends only on the output, so every replica decides
        // alike.
        //
        // postcard drops the `Serialize` impl's own message, so the event
        // names the output type. The skip message goes into the replicated
        // session table and must be the same bytes on every replica and
        // binary: `type_name` may change between compiler versions, so it
        // stays out of it (it is in the halt message, which is this node's
        // status only, and in the event).
        Ok(output) => encode_output(&output).map_err(|e| {
            let output_type = std::any::type_name::<S::WriteOutput>();
            match policy {
                ErrorPolicy::Skip => {
                    tracing::error!(handler, index, output_type, error = %e, policy = "skip",
                        "a write's output did not encode; the entry is applied on every replica and its caller gets Error::Handler");
                    ApplyError::Panicked {
                        message: format!("the output of `{handler}` did not encode ({e}); the handler ran and its change to the state stays"),
                    }
                }
                ErrorPolicy::Halt => {
                    tracing::error!(handler, index, output_type, error = %e, policy = "halt",
                        "a write's output did not encode under the halt policy; this node stops applying");
                    ApplyError::Halted {
                        message: format!("the output of `{handler}` (type `{output_type}`) did not encode ({e}); the handler ran and its change to the state stays"),
                    }
                }
            }
        }),
        Err(Caught { message, location }) => match policy {
            ErrorPolicy::Skip => {
                tracing::error!(handler, index, panic = %message, location, policy = "skip",
                    "a handler panicked; the entry is skipped on every replica and its caller gets Error::Handler");
                Err(ApplyError::Panicked { message })
            }
            ErrorPolicy::Halt => {
                tracing::error!(handler, index, panic = %message, location, policy = "halt",
                    "a handler panicked under the halt policy; this node stops applying");
                Err(ApplyError::Halted { message })
            }
        },
    }
}

#[doc(hidden)]
/// Decodes a query, runs it and encodes the answer. A panicking read handler
/// changes no state, so it is reported to its caller whatever the policy.
pub fn query_encoded<S: StateMachine>(
    sm: &S,
    ctx: &Ctx,
    bytes: &[u8],
) -> Result<Vec<u8>, ApplyError> {
    let query: S::Read = decode_untrusted("query", bytes).map_err(ApplyError::Decode)?;
    let handler = S::query_name(&query);
    match handler_panic::catch(|| sm.query(ctx, query)) {
        Ok(output) => encode("read output", &output).map_err(|e| ApplyError::Panicked {
            message: format!("its output did not encode: {e}"),
        }),
        Err(Caught { message, location }) => {
            tracing::error!(handler, applied = ctx.index(), panic = %message, location,
                "a read handler panicked; its caller gets Error::Rejected (a read applies nothing)");
            Err(ApplyError::Panicked {
                message: format!("the read handler panicked: {message}"),
            })
        }
    }
}

/// The error of a read that failed: it applied nothing, whatever went
/// wrong, so the error says "not applied" (a panicking read handler is
/// [`crate::Error::Rejected`], not [`crate::Error::Handler`], which says applied; and it
/// is not retried: the same query on the same state panics again).
pub(crate) fn read_error(e: ApplyError) -> crate::Error {
    match e {
        ApplyError::Decode(c) => crate::Error::Rejected(c.to_string()),
        ApplyError::Panicked { message } | ApplyError::Halted { message } => {
            crate::Error::Rejected(format!(
                "the read failed (a read applies nothing): {message}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_postcard_on_both_sides_of_the_stack_buffer() {
        for len in [0, 1, 200, ENCODE_ON_STACK - 2, ENCODE_ON_STACK, 4096] {
            let value = (7u32, "x".repeat(len));
            let bytes = encode("test", &value).expect("encodes");
            assert_eq!(bytes, postcard::to_allocvec(&value).expect("encodes"));
            let back: (u32, String) = decode("test", &bytes).expect("decodes");
            assert_eq!(back, value);
            if bytes.len() <= ENCODE_ON_STACK {
                // Exactly sized: becomes a `Bytes` without an allocation.
                assert_eq!(bytes.capacity(), bytes.len());
            }
            assert_eq!(
                &encode_shared("test", &value).expect("encodes")[..],
                &bytes[..]
            );
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        // A newer binary's command with a field this one does not know
        // decodes as a prefix: the field must not be dropped silently.
        let wider = postcard::to_allocvec(&(1u32, 2u32)).expect("encodes");
        let e = decode::<u32>("command", &wider).expect_err("a trailing field is refused");
        assert_eq!(e.what, "command");
        assert!(e.reason.contains("trailing bytes"), "{e}");
        assert_eq!(decode::<(u32, u32)>("command", &wider), Ok((1, 2)));
    }

    #[test]
    fn one_byte_outputs_are_shared_statics() {
        for b in 0..=255u8 {
            // A u8 encodes as itself; an enum's unit variant as its index.
            let shared = encode_shared("test", &b).expect("encodes");
            assert_eq!(&shared[..], &[b]);
            assert_eq!(shared.as_ptr(), BYTE_VALUES[usize::from(b)..].as_ptr());
        }
        assert!(encode_shared("test", &()).expect("encodes").is_empty());
        let two = encode_shared("test", &300u16).expect("encodes");
        assert_eq!(
            &two[..],
            &postcard::to_allocvec(&300u16).expect("encodes")[..]
        );
    }
}

#[cfg(test)]
#[path = "state_machine_output_tests.rs"]
pub(crate) mod output_tests;
