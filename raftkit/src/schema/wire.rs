//! How a [`Schema`] is encoded (the schema file of a data directory, the
//! hellos of peers and clients), readable by raftkit before shapes had
//! names and by this one.
//!
//! Layout (postcard): the name, the state version, the state's shape and
//! the handlers, every shape in its [`Shape::legacy`] form (no
//! [`Shape::Named`], no [`Shape::PartlyOpaque`]): the four fields raftkit
//! wrote before names. Then, for a detailed schema, one byte string: the
//! postcard encoding of [`Detail`], the detailed shapes of the state and
//! of every handler in order (empty for a schema that is not detailed but
//! has a runtime log version). Then, when not 0, the runtime log version
//! ([`Schema::runtime_log`]) as a varint, which the raftkit before it
//! leaves alone as it leaves the byte string; a schema that ends before it
//! has version 0.
//!
//! A schema is always the last value of what carries it (the file's body,
//! the last field of `PeerFrame::Hello` and of `ClientHello`), and those
//! are decoded with `postcard::from_bytes`, which leaves trailing bytes
//! alone: a binary of the earlier raftkit reads the four fields and never
//! sees the byte string. This one reads a schema that ends after the four
//! fields (a directory or peer of the earlier raftkit) as not detailed:
//! its shapes are compared in their legacy forms, names unknown. A byte
//! string that does not decode, or whose shapes do not match the four
//! fields' legacy forms, is ignored the same way.
//!
//! A peer's hello is capped (`transport::quic::MAX_HELLO_BYTES`, 64 KiB),
//! and the detailed shapes about double a schema's size: a dialer whose
//! hello would exceed the cap with them sends its schema without them
//! ([`Schema::without_detail`]) and offers them in a second frame, which
//! an acceptor of this raftkit asks for (`transport::hello_detail`), so
//! two peers of this raftkit always compare names; an acceptor of the
//! earlier raftkit does not ask and compares legacy forms, as with any
//! peer of it.
//!
//! Invariant: [`Shape::legacy`] of the detailed shapes equals the shapes
//! the earlier raftkit traced from the same types, so a peer of either
//! raftkit compares what the other sends as it compared its own.

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{HandlerSchema, Schema, Shape};

/// The detailed shapes of a schema, in the byte string after its four
/// legacy fields.
#[derive(Serialize, Deserialize)]
struct Detail {
    /// The state's shape.
    state: Shape,
    /// Each handler's arguments and output, in the order of the handlers.
    handlers: Vec<(Shape, Shape)>,
}

/// A byte string, read from any of serde's byte forms.
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(BytesVisitor)
    }
}

const FIELDS: &[&str] = &[
    "name",
    "state_version",
    "state",
    "handlers",
    "detail",
    "runtime_log",
];

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let handlers: Vec<HandlerSchema> = self
            .handlers
            .iter()
            .map(|h| HandlerSchema {
                args: h.args.legacy(),
                output: h.output.legacy(),
                ..h.clone()
            })
            .collect();
        let fields = match (self.detailed, self.runtime_log) {
            (_, 1..) => 6,
            (true, 0) => 5,
            (false, 0) => 4,
        };
        let mut st = s.serialize_struct("Schema", fields)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("state_version", &self.state_version)?;
        st.serialize_field("state", &self.state.legacy())?;
        st.serialize_field("handlers", &handlers)?;
        if !self.detailed && fields > 4 {
            // No detail, but a field after it: an empty byte string, which
            // does not decode as a `Detail` (the schema stays legacy).
            st.serialize_field("detail", &Bytes(Vec::new()))?;
        }
        if self.detailed {
            let detail = Detail {
                state: self.state.clone(),
                handlers: self
                    .handlers
                    .iter()
                    .map(|h| (h.args.clone(), h.output.clone()))
                    .collect(),
            };
            let bytes = postcard::to_allocvec(&detail).map_err(serde::ser::Error::custom)?;
            st.serialize_field("detail", &Bytes(bytes))?;
        }
        if fields > 5 {
            st.serialize_field("runtime_log", &self.runtime_log)?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Schema, D::Error> {
        d.deserialize_struct("Schema", FIELDS, SchemaVisitor)
    }
}

struct SchemaVisitor;

impl<'de> Visitor<'de> for SchemaVisitor {
    type Value = Schema;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a raftkit schema")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Schema, A::Error> {
        let missing = |i: usize| de::Error::invalid_length(i, &"a schema's four fields");
        let name: String = seq.next_element()?.ok_or_else(|| missing(0))?;
        let state_version: u32 = seq.next_element()?.ok_or_else(|| missing(1))?;
        let state: Shape = seq.next_element()?.ok_or_else(|| missing(2))?;
        let handlers: Vec<HandlerSchema> = seq.next_element()?.ok_or_else(|| missing(3))?;
        let mut schema = Schema {
            name,
            state_version,
            state,
            handlers,
            detailed: false,
            runtime_log: 0,
        };
        // The end of the input here is a schema of the earlier raftkit: no
        // detail (postcard reports it as an error, which is not one here).
        let (detail, more) = match seq.next_element::<Bytes>() {
            Ok(Some(Bytes(bytes))) => (postcard::from_bytes::<Detail>(&bytes).ok(), true),
            Ok(None) | Err(_) => (None, false),
        };
        if let Some(detail) = detail {
            apply(&mut schema, detail);
        }
        // Likewise the end of the input here: runtime log version 0.
        if more && let Ok(Some(version)) = seq.next_element::<u32>() {
            schema.runtime_log = version;
        }
        Ok(schema)
    }
}

impl Schema {
    /// This schema as raftkit before names encoded it: its legacy shapes,
    /// not detailed, encoded without the byte string of detailed shapes.
    /// What a peer's hello carries when the detailed shapes would make it
    /// larger than a hello may be (`transport::hello_detail::fitted_hello`;
    /// they follow in a second frame).
    pub(crate) fn without_detail(&self) -> Schema {
        Schema {
            name: self.name.clone(),
            state_version: self.state_version,
            state: self.state.legacy(),
            handlers: self
                .handlers
                .iter()
                .map(|h| HandlerSchema {
                    args: h.args.legacy(),
                    output: h.output.legacy(),
                    ..h.clone()
                })
                .collect(),
            detailed: false,
            // Kept: it is encoded after an empty detail, and a leader reads
            // it to decide which session open its voters apply.
            runtime_log: self.runtime_log,
        }
    }
}

/// Puts the detailed shapes in `schema` if they are what its legacy shapes
/// say (otherwise `schema` stays legacy: names unknown).
fn apply(schema: &mut Schema, detail: Detail) {
    let matches = detail.state.legacy() == schema.state
        && detail.handlers.len() == schema.handlers.len()
        && detail
            .handlers
            .iter()
            .zip(&schema.handlers)
            .all(|((args, output), h)| args.legacy() == h.args && output.legacy() == h.output);
    if !matches {
        tracing::debug!(
            schema = %schema.name,
            "a schema's detailed shapes do not match its legacy ones; comparing the legacy ones"
        );
        return;
    }
    schema.state = detail.state;
    for (h, (args, output)) in schema.handlers.iter_mut().zip(detail.handlers) {
        h.args = args;
        h.output = output;
    }
    schema.detailed = true;
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::super::{HandlerKind, HandlerSchema, Schema, Shape};

    /// A schema as raftkit before names encoded and decoded it (its derived
    /// serde impls).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct LegacySchema {
        name: String,
        state_version: u32,
        state: Shape,
        handlers: Vec<HandlerSchema>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Point {
        a: u32,
        b: u32,
    }

    fn current() -> Schema {
        let mut s = Schema::new("kv", 1, Shape::of::<Point>());
        s.push(
            HandlerKind::Write,
            0,
            "put",
            Shape::fields([
                ("key", Shape::Str),
                ("value", Shape::Str),
                ("at", Shape::of::<Point>()),
            ]),
            Shape::Unit,
        );
        s
    }

    /// A schema file or hello of the earlier raftkit (no names) still
    /// decodes, not detailed, and checks against this binary's schema of
    /// the same types both ways; and that raftkit reads ours.
    #[test]
    fn a_schema_without_names_still_loads_and_checks() {
        let new = current();
        let old = LegacySchema {
            name: "kv".into(),
            state_version: 1,
            state: Shape::Tuple(vec![Shape::U32, Shape::U32]),
            handlers: vec![HandlerSchema {
                kind: HandlerKind::Write,
                tag: 0,
                name: "put".into(),
                args: Shape::Tuple(vec![Shape::Str, Shape::Str, Shape::U32, Shape::U32]),
                output: Shape::Unit,
            }],
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let read: Schema = postcard::from_bytes(&bytes).unwrap();
        assert!(!read.detailed);
        assert_eq!(read.state, old.state);
        new.check_upgrade_from(&read).unwrap();
        new.check_peer(&read).unwrap();
        read.check_peer(&new).unwrap();
        // Inside a hello too (an `Option` as its last field).
        let hello = postcard::to_allocvec(&(7u32, Some(&old))).unwrap();
        let (_, read) = postcard::from_bytes::<(u32, Option<Schema>)>(&hello).unwrap();
        assert_eq!(read.map(|s| s.detailed), Some(false));
        // The earlier raftkit reads this one's encoding as its own.
        let ours = postcard::to_allocvec(&Some(&new)).unwrap();
        let theirs: Option<LegacySchema> = postcard::from_bytes(&ours).unwrap();
        assert_eq!(theirs.as_ref(), Some(&old));
        // And this one reads it back whole.
        assert_eq!(
            postcard::from_bytes::<Option<Schema>>(&ours).unwrap(),
            Some(new)
        );
    }

    /// A schema sent without its detail (a hello that would not fit
    /// otherwise) still tells its runtime log version: a leader that read 0
    /// there would never propose the entries that version brings.
    #[test]
    fn a_schema_without_its_detail_keeps_its_runtime_log_version() {
        let bytes = postcard::to_allocvec(&current().without_detail()).unwrap();
        let read: Schema = postcard::from_bytes(&bytes).unwrap();
        assert!(!read.detailed);
        assert_eq!(read.runtime_log, super::super::RUNTIME_LOG);
    }

    /// Names swapped over the same types are refused between detailed
    /// schemas, not against a legacy one (it has no names to compare), and
    /// a damaged detail falls back to the legacy shapes.
    #[test]
    fn names_are_compared_only_between_detailed_schemas() {
        let mut same_order = current();
        same_order.handlers[0].args = Shape::fields([
            ("value", Shape::Str),
            ("key", Shape::Str),
            ("at", Shape::of::<Point>()),
        ]);
        assert!(same_order.check_upgrade_from(&current()).is_err());
        let mut legacy = current();
        legacy.detailed = false;
        same_order.check_upgrade_from(&legacy).unwrap();
        let mut bytes = postcard::to_allocvec(&current()).unwrap();
        // The detail's last byte (the runtime log version, one byte, after it).
        let last = bytes.len() - 2;
        bytes[last] = 0xff;
        let read: Schema = postcard::from_bytes(&bytes).unwrap();
        assert!(!read.detailed);
        assert_eq!(read.runtime_log, super::super::RUNTIME_LOG);
    }

    /// A schema of the raftkit before the runtime log version (its four
    /// fields and the detail, nothing after) has version 0, this one's
    /// keeps its version detailed or not, and the raftkit before it reads
    /// this one's as its own.
    #[test]
    fn the_runtime_log_version_is_read_when_present_and_zero_before_it() {
        #[derive(Serialize, Deserialize)]
        struct WithDetail {
            name: String,
            state_version: u32,
            state: Shape,
            handlers: Vec<HandlerSchema>,
            detail: super::Bytes,
        }
        let new = current();
        assert_eq!(new.runtime_log, super::super::RUNTIME_LOG);
        let mut before = new.clone();
        before.runtime_log = 0;
        let bytes = postcard::to_allocvec(&before).unwrap();
        let read: Schema = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(read, before, "a schema that ends after its detail");
        assert!(read.detailed);
        // The raftkit before the field reads this one's encoding (the
        // version after the detail is left alone).
        let ours = postcard::to_allocvec(&new).unwrap();
        let theirs: WithDetail = postcard::from_bytes(&ours).unwrap();
        assert_eq!(theirs.name, "kv");
        assert_eq!(postcard::from_bytes::<Schema>(&ours).unwrap(), new);
        // Not detailed, with a version: an empty detail, then the version.
        let mut legacy = new.clone();
        legacy.detailed = false;
        for h in &mut legacy.handlers {
            h.args = h.args.legacy();
            h.output = h.output.legacy();
        }
        legacy.state = legacy.state.legacy();
        let back: Schema = postcard::from_bytes(&postcard::to_allocvec(&legacy).unwrap()).unwrap();
        assert_eq!(back, legacy);
    }
}
