//! [`Shape`]: what a type looks like on the wire, built from the type itself.
//!
//! A shape is obtained by tracing a type's serde `Deserialize` impl (see
//! [`super::trace`]; no extra derive on user types) and normalising it to
//! what postcard — the log, wire and snapshot format — actually encodes:
//!
//! - names are dropped: type names, field names and variant names are not
//!   encoded, so renaming any of them keeps the shape (and respelling
//!   `String` as `std::string::String` never mattered: the trace sees the
//!   type, not its spelling);
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
//! A type whose `Deserialize` impl cannot be traced (one that validates its
//! input with a value the tracer makes up, or one that needs a
//! self-describing format) becomes [`Shape::Opaque`] with its Rust type name: compatible only with
//! the very same opaque description.

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
    /// panics: a type that cannot be traced is [`Shape::Opaque`].
    pub fn of<T: DeserializeOwned>() -> Shape {
        let name = std::any::type_name::<T>();
        match catch_unwind(AssertUnwindSafe(trace::<T>)) {
            Ok(Ok(shape)) => shape,
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
        let mut out = Vec::new();
        for field in fields {
            match field {
                Shape::Unit => {}
                Shape::Tuple(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Shape::Unit,
            1 => out.pop().unwrap_or(Shape::Unit),
            _ => Shape::Tuple(out),
        }
    }

    /// Whether the shape holds an opaque part.
    pub fn is_opaque(&self) -> bool {
        match self {
            Shape::Opaque(_) => true,
            Shape::Option(s) | Shape::Seq(s) => s.is_opaque(),
            Shape::Map(k, v) => k.is_opaque() || v.is_opaque(),
            Shape::Tuple(items) | Shape::Enum(items) => items.iter().any(Shape::is_opaque),
            _ => false,
        }
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
    fn names_do_not_matter_and_spelling_does_not_either() {
        assert_eq!(Shape::of::<Point>(), Shape::of::<Renamed>());
        assert_eq!(Shape::of::<Point>(), Shape::of::<(i64, i64)>());
        assert_eq!(Shape::of::<String>(), Shape::of::<std::string::String>());
        assert_eq!(Shape::of::<(String,)>(), Shape::Str);
        assert_eq!(Shape::of::<()>(), Shape::Unit);
        assert_eq!(
            Shape::tuple([Shape::of::<Point>(), Shape::of::<()>(), Shape::U8]),
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
            Shape::of::<Expr>(),
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

    #[test]
    fn recursive_types_refer_back() {
        assert_eq!(
            Shape::of::<List>(),
            Shape::Tuple(vec![
                Shape::U32,
                Shape::Option(Box::new(Shape::Recursive(0)))
            ])
        );
    }
}
