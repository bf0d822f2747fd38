//! [`Shape`]: what a type looks like on the wire, built from the type itself.
//!
//! A shape is obtained by tracing a type's serde `Deserialize` impl (see
//! [`super::trace`]; no extra derive on user types) and normalising it to
//! what postcard — the log, wire and snapshot format — actually encodes:
//!
//! - type names are dropped, and respelling `String` as
//!   `std::string::String` never mattered: the trace sees the type, not its
//!   spelling;
//! - field names, variant names and handler argument names are not encoded
//!   either, but position is: a field or variant is [`Shape::Named`], so
//!   that a swap of two fields or variants of the same shape (old log
//!   entries would decode with the other meaning) is told from a rename
//!   (harmless). A flattened field's name is its path (`order.qty`; an
//!   unnamed tuple element is its index). Structure is compared with the
//!   names dropped ([`Shape::without_names`]), then names by position
//!   (see [`super`]);
//! - structs, tuple structs and tuples are all a [`Shape::Tuple`] of their
//!   fields (postcard writes fields one after the other), flattened: a
//!   nested tuple is spliced in, a unit field (which encodes as nothing) is
//!   dropped, a one-field tuple or newtype *is* its field, an array
//!   `[T; N]` is N fields;
//! - an enum is the list of its variants' payload shapes in variant-index
//!   order (postcard writes the index, then the payload);
//! - a recursive type refers back to an enclosing named type by depth
//!   ([`Shape::Recursive`]).
//!
//! Invariant: two types with equal shapes encode the same values the same
//! way as far as postcard's structure goes, so bytes written by one decode
//! with the other. The converse is deliberately strict: `u32` and `u64`,
//! `String` and `Vec<u8>` are different shapes even where some of their
//! encodings coincide.
//!
//! A part of a type whose `Deserialize` impl cannot be traced (one that
//! needs a self-describing format, or refuses every value the tracer makes
//! up before it has asked for its whole structure) becomes
//! [`Shape::Opaque`] with its Rust type name: compatible only with the
//! very same opaque description. Opacity is confined to that part (a
//! field, a tuple's elements from the first that could not be reached, a
//! variant's payload): the rest of the type is traced and compared. A
//! validating type that asked for its whole structure before refusing the
//! made-up value (a `try_from = "String"` newtype, a `Uuid` that wants 16
//! bytes) is not opaque at all: its shape is what it asked for. A type
//! traced only in part is wrapped in [`Shape::PartlyOpaque`] with its name,
//! the form in which raftkit before the confinement saw the whole type
//! ([`Shape::legacy`]).

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::trace::trace;

/// The wire structure of a type, traced from its `Deserialize` impl: names
/// are dropped, structs and tuples are flattened field lists, enums list
/// their variants' payloads by index (see [`crate::schema`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// Encodes as nothing: `()`, a unit struct, an empty tuple.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// A string.
    Str,
    /// A byte string (`serde_bytes`).
    Bytes,
    /// `Option<T>`.
    Option(#[serde(deserialize_with = "nested")] Box<Shape>),
    /// A sequence (`Vec<T>`, sets, ...).
    Seq(#[serde(deserialize_with = "nested")] Box<Shape>),
    /// A map: key and value shapes.
    Map(
        #[serde(deserialize_with = "nested")] Box<Shape>,
        #[serde(deserialize_with = "nested")] Box<Shape>,
    ),
    /// Two or more fields one after the other (structs and tuples,
    /// flattened).
    Tuple(#[serde(deserialize_with = "nested")] Vec<Shape>),
    /// An enum: each variant's payload, in variant-index order.
    Enum(#[serde(deserialize_with = "nested")] Vec<Shape>),
    /// The enclosing named type `n` levels up (0: the innermost).
    Recursive(u32),
    /// A type that could not be traced, described by its Rust name and why.
    Opaque(String),
    /// A field of a struct (its path, if flattened from a nested one) or a
    /// handler's argument in a [`Shape::Tuple`], or a variant in a
    /// [`Shape::Enum`]: the name does not change the encoding, its position
    /// is compared (added after schemas first shipped: only in the
    /// detailed part of a [`super::Schema`], see [`super`]).
    Named(String, #[serde(deserialize_with = "nested")] Box<Shape>),
    /// A type (its Rust name) with parts that could not be traced (they are
    /// [`Shape::Opaque`]): compared as its shape, or by name alone with a
    /// schema written before opacity was confined (see [`Shape::legacy`]).
    PartlyOpaque(String, #[serde(deserialize_with = "nested")] Box<Shape>),
}

/// What [`Shape::normal`] keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Names and the shapes inside partly opaque types.
    Names,
    /// The shapes inside partly opaque types, no names.
    Structure,
    /// Neither: what raftkit wrote before names and confined opacity.
    Legacy,
}

/// How deeply shapes may nest when decoded. Schemas arrive in the hellos of
/// peers and clients: without a bound, a hello of a few megabytes of nested
/// `Option` tags would recurse until the stack overflows and abort the
/// node. Traced shapes of real types stay far below (the tracer itself
/// stops at 128 named types, and a named type is one level).
pub const MAX_SHAPE_DEPTH: u32 = 256;

thread_local! {
    /// The nesting depth of the shape being decoded on this thread.
    static DECODE_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Leaves one nesting level of [`DECODE_DEPTH`] when dropped (also when
/// decoding fails or unwinds).
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Decodes the nested part of a shape one level deeper, refusing more than
/// [`MAX_SHAPE_DEPTH`] levels with a decode error instead of recursing on.
fn nested<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DECODE_DEPTH.with(|c| {
        let depth = c.get().saturating_add(1);
        c.set(depth);
        depth
    });
    let _guard = DepthGuard;
    if depth > MAX_SHAPE_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "schema shapes nested deeper than {MAX_SHAPE_DEPTH} levels"
        )));
    }
    T::deserialize(d)
}

impl Shape {
    /// The shape of `T`, traced through its `Deserialize` impl. Never
    /// panics: a part that cannot be traced is [`Shape::Opaque`], and a
    /// type with such parts is [`Shape::PartlyOpaque`].
    pub fn of<T: DeserializeOwned>() -> Shape {
        let name = std::any::type_name::<T>();
        match catch_unwind(AssertUnwindSafe(trace::<T>)) {
            Ok(Ok((shape, false))) => shape,
            Ok(Ok((shape @ Shape::Opaque(_), true))) => shape,
            Ok(Ok((shape, true))) => {
                tracing::debug!(ty = name, shape = %shape, "type traced in part; its untraceable parts are opaque");
                Shape::PartlyOpaque(name.to_string(), Box::new(shape))
            }
            Ok(Err(e)) => {
                tracing::debug!(ty = name, error = %e, "type not traceable; its schema is opaque");
                Shape::Opaque(name.to_string())
            }
            Err(_) => Shape::Opaque(name.to_string()),
        }
    }

    /// The shape of fields one after the other (a handler's arguments):
    /// flattened like a struct's fields.
    pub fn tuple<const N: usize>(fields: [Shape; N]) -> Shape {
        Shape::flatten(fields.into_iter().collect())
    }

    /// The shape of named fields one after the other (a handler's
    /// arguments, with their names): flattened like a struct's fields.
    pub fn fields<const N: usize>(fields: [(&str, Shape); N]) -> Shape {
        Shape::flatten(
            fields
                .into_iter()
                .map(|(name, shape)| Shape::Named(name.to_string(), Box::new(shape)))
                .collect(),
        )
    }

    /// Fields one after the other as postcard writes them: a unit field
    /// is dropped, a tuple's fields are spliced in (a spliced field is
    /// named by its path: the outer field's name, or its index if it has
    /// none, then its own name or index), one field is itself (unnamed),
    /// none is [`Shape::Unit`].
    pub(crate) fn flatten(items: Vec<Shape>) -> Shape {
        let mut out = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let (name, shape) = match item {
                Shape::Named(name, shape) => (Some(name), *shape),
                other => (None, other),
            };
            match shape {
                Shape::Unit => {}
                Shape::Tuple(inner) => {
                    for (k, field) in inner.into_iter().enumerate() {
                        let (own, field) = match field {
                            Shape::Named(own, field) => (Some(own), field),
                            other => (None, Box::new(other)),
                        };
                        let path = match (&name, own) {
                            (Some(outer), Some(own)) => Some(format!("{outer}.{own}")),
                            (Some(outer), None) => Some(format!("{outer}.{k}")),
                            (None, Some(own)) => Some(format!("{index}.{own}")),
                            (None, None) => None,
                        };
                        out.push(match path {
                            Some(path) => Shape::Named(path, field),
                            None => *field,
                        });
                    }
                }
                shape => out.push(match name {
                    Some(name) => Shape::Named(name, Box::new(shape)),
                    None => shape,
                }),
            }
        }
        match out.len() {
            0 => Shape::Unit,
            1 => match out.pop() {
                Some(Shape::Named(_, shape)) => *shape,
                Some(shape) => shape,
                None => Shape::Unit,
            },
            _ => Shape::Tuple(out),
        }
    }

    /// Whether the shape holds an opaque part.
    pub fn is_opaque(&self) -> bool {
        match self {
            Shape::Opaque(_) | Shape::PartlyOpaque(..) => true,
            Shape::Option(s) | Shape::Seq(s) | Shape::Named(_, s) => s.is_opaque(),
            Shape::Map(k, v) => k.is_opaque() || v.is_opaque(),
            Shape::Tuple(items) | Shape::Enum(items) => items.iter().any(Shape::is_opaque),
            _ => false,
        }
    }

    /// The structure: names dropped, a partly opaque type as its shape,
    /// flattened. Two shapes encode alike when their structures are equal.
    pub fn without_names(&self) -> Shape {
        self.normal(Keep::Structure)
    }

    /// The shape as raftkit wrote it before names and confined opacity (a
    /// schema file or hello without the detailed part): no names, and a
    /// partly opaque type opaque as a whole, by its name.
    pub fn legacy(&self) -> Shape {
        self.normal(Keep::Legacy)
    }

    /// The shape with names, a partly opaque type as its shape, flattened.
    fn with_names(&self) -> Shape {
        self.normal(Keep::Names)
    }

    fn normal(&self, keep: Keep) -> Shape {
        let boxed = |s: &Shape| Box::new(s.normal(keep));
        match self {
            Shape::Option(s) => Shape::Option(boxed(s)),
            Shape::Seq(s) => Shape::Seq(boxed(s)),
            Shape::Map(k, v) => Shape::Map(boxed(k), boxed(v)),
            Shape::Tuple(items) => Shape::flatten(items.iter().map(|s| s.normal(keep)).collect()),
            Shape::Enum(items) => Shape::Enum(items.iter().map(|s| s.normal(keep)).collect()),
            Shape::Named(name, s) if keep == Keep::Names => Shape::Named(name.clone(), boxed(s)),
            Shape::Named(_, s) => s.normal(keep),
            Shape::PartlyOpaque(name, _) if keep == Keep::Legacy => Shape::Opaque(name.clone()),
            Shape::PartlyOpaque(_, s) => s.normal(keep),
            leaf => leaf.clone(),
        }
    }

    /// Why `new` does not read what `old` wrote: `Err` says how. With
    /// `names`, the structures must be equal and no field or variant name
    /// of `old` may sit at another position in `new` (a swap; a rename to a
    /// new name is allowed: names are not encoded); without (a schema
    /// written before names), the legacy forms must be equal.
    pub fn check_compatible(old: &Shape, new: &Shape, names: bool) -> Result<(), String> {
        if !names {
            return if old.legacy() == new.legacy() {
                Ok(())
            } else {
                Err(format!("{} became {}", old.legacy(), new.legacy()))
            };
        }
        if old.without_names() != new.without_names() {
            return Err(format!("{old} became {new}"));
        }
        match moved(&old.with_names(), &new.with_names()) {
            None => Ok(()),
            Some(what) => Err(format!("{what} ({old} became {new})")),
        }
    }
}

/// The first name of `old` found at another position in `new`, the two
/// being of equal structure, and its positions.
fn moved(old: &Shape, new: &Shape) -> Option<String> {
    fn bare(s: &Shape) -> &Shape {
        match s {
            Shape::Named(_, s) => s,
            other => other,
        }
    }
    fn name(s: &Shape) -> Option<&str> {
        match s {
            Shape::Named(n, _) => Some(n),
            _ => None,
        }
    }
    match (bare(old), bare(new)) {
        (Shape::Tuple(a), Shape::Tuple(b)) | (Shape::Enum(a), Shape::Enum(b)) => {
            let what = if matches!(bare(old), Shape::Enum(_)) {
                "variant"
            } else {
                "field"
            };
            for (i, item) in a.iter().enumerate() {
                let Some(n) = name(item) else { continue };
                if let Some(j) = b.iter().position(|m| name(m) == Some(n))
                    && j != i
                {
                    return Some(format!(
                        "{what} `{n}` moved from position {i} to {j}: old values would decode as another {what}"
                    ));
                }
            }
            a.iter().zip(b).find_map(|(x, y)| moved(x, y))
        }
        (Shape::Option(x), Shape::Option(y)) | (Shape::Seq(x), Shape::Seq(y)) => moved(x, y),
        (Shape::Map(k, v), Shape::Map(k2, v2)) => moved(k, k2).or_else(|| moved(v, v2)),
        _ => None,
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, items: &[Shape], sep: &str| {
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{s}")?;
            }
            Ok(())
        };
        match self {
            Shape::Unit => f.write_str("()"),
            Shape::Bool => f.write_str("bool"),
            Shape::I8 => f.write_str("i8"),
            Shape::I16 => f.write_str("i16"),
            Shape::I32 => f.write_str("i32"),
            Shape::I64 => f.write_str("i64"),
            Shape::I128 => f.write_str("i128"),
            Shape::U8 => f.write_str("u8"),
            Shape::U16 => f.write_str("u16"),
            Shape::U32 => f.write_str("u32"),
            Shape::U64 => f.write_str("u64"),
            Shape::U128 => f.write_str("u128"),
            Shape::F32 => f.write_str("f32"),
            Shape::F64 => f.write_str("f64"),
            Shape::Char => f.write_str("char"),
            Shape::Str => f.write_str("string"),
            Shape::Bytes => f.write_str("bytes"),
            Shape::Option(s) => write!(f, "option<{s}>"),
            Shape::Seq(s) => write!(f, "seq<{s}>"),
            Shape::Map(k, v) => write!(f, "map<{k}, {v}>"),
            Shape::Tuple(items) => {
                f.write_str("(")?;
                list(f, items, ", ")?;
                f.write_str(")")
            }
            Shape::Enum(items) => {
                f.write_str("enum{")?;
                list(f, items, " | ")?;
                f.write_str("}")
            }
            Shape::Recursive(n) => write!(f, "recursive^{n}"),
            Shape::Opaque(name) => write!(f, "opaque({name})"),
            Shape::Named(name, s) if **s == Shape::Unit => f.write_str(name),
            Shape::Named(name, s) => write!(f, "{name}: {s}"),
            Shape::PartlyOpaque(_, s) => write!(f, "{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hostile_shape_nested_a_million_levels_is_refused_not_a_stack_overflow() {
        // postcard: variant index 17 is `Option`, then its payload; a
        // million of them and a `Unit` (0) at the bottom.
        let option =
            postcard::to_allocvec(&super::Shape::Option(Box::new(super::Shape::Unit))).unwrap()[0];
        let mut bytes = vec![option; 1_000_000];
        bytes.push(0);
        let r = postcard::from_bytes::<super::Shape>(&bytes);
        assert!(r.is_err(), "a million nested shapes decoded");
        // The guard is released on the error path: legitimate nesting
        // still decodes afterwards on the same thread.
        let mut ok = super::Shape::Unit;
        for _ in 0..super::MAX_SHAPE_DEPTH {
            ok = super::Shape::Option(Box::new(ok));
        }
        let bytes = postcard::to_allocvec(&ok).unwrap_or_default();
        assert_eq!(postcard::from_bytes::<super::Shape>(&bytes).ok(), Some(ok));
        let too_deep =
            super::Shape::Seq(Box::new(super::Shape::Option(Box::new(super::Shape::Unit))));
        let mut deep = too_deep;
        for _ in 0..super::MAX_SHAPE_DEPTH {
            deep = super::Shape::Option(Box::new(deep));
        }
        let bytes = postcard::to_allocvec(&deep).unwrap_or_default();
        assert!(postcard::from_bytes::<super::Shape>(&bytes).is_err());
    }

    use std::collections::BTreeMap;

    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Point {
        x: i64,
        y: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Renamed {
        first: i64,
        second: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Op {
        Put { key: String, value: Vec<u8> },
        Delete(String),
        Clear,
        Nested(Inner),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Inner {
        A(u8),
        B(Option<u32>),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct List {
        head: u32,
        tail: Option<Box<List>>,
    }

    #[test]
    fn names_do_not_matter_to_the_structure_and_spelling_does_not_either() {
        assert_eq!(
            Shape::of::<Point>().without_names(),
            Shape::of::<Renamed>().without_names()
        );
        assert_eq!(
            Shape::of::<Point>().without_names(),
            Shape::of::<(i64, i64)>()
        );
        assert_eq!(Shape::of::<Point>().to_string(), "(x: i64, y: i64)");
        Shape::check_compatible(&Shape::of::<Point>(), &Shape::of::<Renamed>(), true).unwrap();
        assert_eq!(Shape::of::<String>(), Shape::of::<std::string::String>());
        assert_eq!(Shape::of::<(String,)>(), Shape::Str);
        assert_eq!(Shape::of::<()>(), Shape::Unit);
        assert_eq!(
            Shape::tuple([Shape::of::<Point>(), Shape::of::<()>(), Shape::U8]).without_names(),
            Shape::of::<(i64, i64, u8)>()
        );
        assert_eq!(Shape::tuple([]), Shape::Unit);
    }

    #[test]
    fn structure_matters() {
        assert_ne!(Shape::of::<Point>(), Shape::of::<(i64, u64)>());
        assert_ne!(Shape::of::<u32>(), Shape::of::<u64>());
        assert_ne!(Shape::of::<String>(), Shape::of::<Vec<u8>>());
        assert_ne!(Shape::of::<Option<u8>>(), Shape::of::<u8>());
        assert_eq!(
            Shape::of::<BTreeMap<String, u64>>(),
            Shape::Map(Box::new(Shape::Str), Box::new(Shape::U64))
        );
    }

    #[test]
    fn enums_are_traced_through_every_variant_even_nested() {
        let shape = Shape::of::<Op>();
        assert_eq!(
            shape.to_string(),
            "enum{Put: (key: string, value: seq<u8>) | Delete: string | Clear | Nested: enum{A: u8 | B: option<u32>}}"
        );
        let shape = shape.without_names();
        assert_eq!(
            shape,
            Shape::Enum(vec![
                Shape::Tuple(vec![Shape::Str, Shape::Seq(Box::new(Shape::U8))]),
                Shape::Str,
                Shape::Unit,
                Shape::Enum(vec![Shape::U8, Shape::Option(Box::new(Shape::U32))]),
            ]),
            "{shape}"
        );
        // Nested inside a struct and a vector too.
        let shape = Shape::of::<(u8, Vec<Op>)>();
        assert!(!shape.is_opaque(), "{shape}");
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Expr {
        Lit(u32),
        Add(Box<Expr>, Box<Expr>),
        Neg { inner: Box<Expr> },
    }

    #[test]
    fn recursive_enums_end() {
        assert_eq!(
            Shape::of::<Expr>().without_names(),
            Shape::Enum(vec![
                Shape::U32,
                Shape::Tuple(vec![Shape::Recursive(0), Shape::Recursive(0)]),
                Shape::Recursive(0),
            ])
        );
    }

    #[test]
    fn untraceable_types_are_opaque() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Untagged {
            A(u8),
            B(String),
        }
        assert!(Shape::of::<Untagged>().is_opaque());
        assert!(Shape::of::<(u8, Untagged)>().is_opaque());
    }

    /// Refuses the empty string, the tracer's sample (a validated newtype).
    #[derive(Deserialize)]
    #[serde(try_from = "String")]
    #[allow(dead_code)]
    struct Tag(String);

    impl TryFrom<String> for Tag {
        type Error = &'static str;
        fn try_from(s: String) -> Result<Tag, &'static str> {
            if s.is_empty() {
                Err("an empty tag")
            } else {
                Ok(Tag(s))
            }
        }
    }

    /// Needs exactly 16 bytes, as `uuid::Uuid` does in a compact format.
    #[allow(dead_code)]
    struct Id([u8; 16]);

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
            let bytes = <&[u8]>::deserialize(d)?;
            <[u8; 16]>::try_from(bytes)
                .map(Id)
                .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct OrderV1 {
        id: Tag,
        qty: u32,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Cmd {
        Place { id: Id, qty: u32, note: Option<Tag> },
        Cancel(u64),
        Both(Tag, u16),
    }

    /// An untraceable field is opaque alone: the other fields of its type
    /// are traced and compared (found by review, stop 42: the whole
    /// outermost type became opaque, compared by name only).
    #[test]
    fn an_untraceable_field_leaves_its_neighbours_traced() {
        let shape = Shape::of::<OrderV1>();
        assert!(
            !matches!(shape, Shape::Opaque(_)),
            "a struct with one untraceable field is opaque as a whole: {shape}"
        );
        assert!(shape.to_string().contains("u32"), "{shape}");
        // A validating type that asked for its whole structure is that
        // structure; a struct's fields after a field without a value are
        // traced (by name); a tuple's elements after one cannot be reached
        // and are opaque; other variants are traced.
        let shape = Shape::of::<Cmd>();
        assert_eq!(
            shape.to_string(),
            "enum{Place: (id: bytes, qty: u32, note: option<string>) | Cancel: u64 | Both: (string, opaque(raftkit::schema::shape::tests::Cmd, field 1))}"
        );
        assert!(matches!(shape, Shape::PartlyOpaque(..)));
        // A wholly untraceable field, or one whose impl panics, is opaque
        // alone, by its type's name.
        #[derive(Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Untagged {
            A(u8),
        }
        #[allow(dead_code)]
        struct Panics;
        impl<'de> Deserialize<'de> for Panics {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Panics, D::Error> {
                panic!("a Deserialize impl that panics")
            }
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Mixed {
            a: u8,
            u: Untagged,
            p: Panics,
            c: u32,
        }
        let mixed = Shape::of::<Mixed>().without_names();
        match &mixed {
            Shape::Tuple(items) => {
                assert_eq!(items.len(), 4, "{mixed}");
                assert_eq!((&items[0], &items[3]), (&Shape::U8, &Shape::U32), "{mixed}");
                assert!(
                    matches!(&items[1], Shape::Opaque(n) if n.ends_with("Untagged")),
                    "{mixed}"
                );
                assert!(
                    matches!(&items[2], Shape::Opaque(n) if n.ends_with("Panics")),
                    "{mixed}"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            shape.legacy(),
            Shape::Opaque("raftkit::schema::shape::tests::Cmd".into())
        );
    }

    #[test]
    fn recursive_types_refer_back() {
        assert_eq!(
            Shape::of::<List>().without_names(),
            Shape::Tuple(vec![
                Shape::U32,
                Shape::Option(Box::new(Shape::Recursive(0)))
            ])
        );
    }
}
