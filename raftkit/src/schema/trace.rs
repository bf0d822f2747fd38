//! Tracing a type's `Deserialize` impl into a [`Shape`].
//!
//! A serde [`Deserializer`] that answers every request of the impl with a
//! small made-up value and records what was requested: the impl describes
//! its own wire structure (the same calls postcard sees, since both are
//! non-self-describing and not human-readable). One run follows one path
//! through the type: an enum takes one variant, an option is `Some`, a
//! sequence or map has one element. Runs repeat, recording into one
//! partial tree, each taking at every enum the first variant not fully
//! known yet, until the tree is complete (every variant of every reachable
//! enum traced).
//!
//! Recursion: a named type (struct, enum, newtype or tuple struct, keyed by
//! its Rust type) met again inside itself is recorded as
//! [`Shape::Recursive`] and its value is built in *cut* mode, which records
//! nothing and keeps values minimal (options `None`, sequences and maps
//! empty, enums their first variant) so that it ends. Depth is bounded:
//! a type that does not end even so fails to trace.
//!
//! Invariants: tracing never panics by itself (a panicking user impl is
//! caught by the caller), allocates in proportion to the type's size, and
//! runs at most [`MAX_RUNS`] times.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::shape::Shape;

/// The most runs one trace makes (each completes at least one variant).
const MAX_RUNS: usize = 4096;
/// The deepest nesting of named types followed.
const MAX_DEPTH: usize = 128;

/// Why a type could not be traced.
#[derive(Debug)]
pub struct TraceError(String);

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// A shape being traced: parts not reached yet are `Unknown`.
#[derive(Clone, Debug)]
enum Partial {
    Unknown,
    Leaf(Shape),
    Option(Box<Partial>),
    Seq(Box<Partial>),
    Map(Box<Partial>, Box<Partial>),
    Tuple(Vec<Partial>),
    Enum(Vec<Partial>),
    Recursive(u32),
}

impl Partial {
    fn complete(&self) -> bool {
        match self {
            Partial::Unknown => false,
            Partial::Leaf(_) | Partial::Recursive(_) => true,
            Partial::Option(p) | Partial::Seq(p) => p.complete(),
            Partial::Map(k, v) => k.complete() && v.complete(),
            Partial::Tuple(items) | Partial::Enum(items) => items.iter().all(Partial::complete),
        }
    }

    /// The shape, flattened (see the `shape` module docs).
    fn finish(self) -> Shape {
        match self {
            Partial::Unknown => Shape::Opaque("an untraced part".into()),
            Partial::Leaf(s) => s,
            Partial::Option(p) => Shape::Option(Box::new(p.finish())),
            Partial::Seq(p) => Shape::Seq(Box::new(p.finish())),
            Partial::Map(k, v) => Shape::Map(Box::new(k.finish()), Box::new(v.finish())),
            Partial::Tuple(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.finish() {
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
            Partial::Enum(variants) => {
                Shape::Enum(variants.into_iter().map(Partial::finish).collect())
            }
            Partial::Recursive(n) => Shape::Recursive(n),
        }
    }

    /// Makes `self` a `want`-kind node (keeping what earlier runs found).
    fn ensure(&mut self, want: impl FnOnce() -> Partial, same: impl Fn(&Partial) -> bool) {
        if !same(self) {
            *self = want();
        }
    }
}

/// The state of one trace across runs.
struct Tracer {
    /// The named types being deserialized, outermost first.
    stack: Vec<&'static str>,
}

/// Traces `T` (see the [module docs](self)).
pub fn trace<T: DeserializeOwned>() -> Result<Shape, TraceError> {
    let mut tracer = Tracer { stack: Vec::new() };
    let mut root = Partial::Unknown;
    for _ in 0..MAX_RUNS {
        tracer.stack.clear();
        T::deserialize(De {
            t: &mut tracer,
            out: &mut root,
            cut: false,
        })?;
        if root.complete() {
            return Ok(root.finish());
        }
    }
    Err(TraceError(format!(
        "not every variant was reached in {MAX_RUNS} runs"
    )))
}

struct De<'a> {
    t: &'a mut Tracer,
    /// Where this value's shape goes (a scratch slot in cut mode).
    out: &'a mut Partial,
    cut: bool,
}

impl<'a> De<'a> {
    fn leaf(self, shape: Shape) {
        if !self.cut {
            *self.out = Partial::Leaf(shape);
        }
    }

    /// Enters a named type: `Ok(true)` when it is already being
    /// deserialized further out (recursion: recorded, and the rest is cut).
    fn enter(&mut self, name: &'static str) -> Result<bool, TraceError> {
        if self.t.stack.len() >= MAX_DEPTH {
            return Err(TraceError(format!(
                "nested deeper than {MAX_DEPTH} named types (a recursive type with no finite value?)"
            )));
        }
        let recursive = !self.cut
            && self
                .t
                .stack
                .iter()
                .rposition(|s| *s == name)
                .map(|pos| {
                    let depth = self.t.stack.len() - 1 - pos;
                    *self.out = Partial::Recursive(u32::try_from(depth).unwrap_or(u32::MAX));
                })
                .is_some();
        self.t.stack.push(name);
        Ok(recursive)
    }

    fn leave(&mut self) {
        self.t.stack.pop();
    }

    /// Visits `len` fields into a tuple node.
    fn tuple<'de, V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        let mut scratch = Vec::new();
        let slots = if self.cut {
            scratch.resize(len, Partial::Unknown);
            &mut scratch
        } else {
            self.out.ensure(
                || Partial::Tuple(vec![Partial::Unknown; len]),
                |p| matches!(p, Partial::Tuple(v) if v.len() == len),
            );
            match self.out {
                Partial::Tuple(v) => v,
                _ => return Err(TraceError("internal: tuple slot".into())),
            }
        };
        visitor.visit_seq(Fields {
            t: self.t,
            slots,
            next: 0,
            cut: self.cut,
        })
    }

    /// Runs `f` with the named type `V::Value` entered.
    fn named<'de, V: Visitor<'de>>(
        mut self,
        f: impl FnOnce(De<'_>, V) -> Result<V::Value, TraceError>,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        let recursive = self.enter(name)?;
        let mut scratch = Partial::Unknown;
        let result = if recursive {
            f(
                De {
                    t: &mut *self.t,
                    out: &mut scratch,
                    cut: true,
                },
                visitor,
            )
        } else {
            f(
                De {
                    t: &mut *self.t,
                    out: &mut *self.out,
                    cut: self.cut,
                },
                visitor,
            )
        };
        self.leave();
        result
    }
}

struct Fields<'a> {
    t: &'a mut Tracer,
    slots: &'a mut Vec<Partial>,
    next: usize,
    cut: bool,
}

impl<'de> SeqAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        let Some(slot) = self.slots.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(De {
            t: &mut *self.t,
            out: slot,
            cut: self.cut,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len() - self.next)
    }
}

/// One element (or none in cut mode) of a sequence.
struct OneElement<'a> {
    t: &'a mut Tracer,
    slot: &'a mut Partial,
    left: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        if !self.left {
            return Ok(None);
        }
        self.left = false;
        seed.deserialize(De {
            t: &mut *self.t,
            out: &mut *self.slot,
            cut: false,
        })
        .map(Some)
    }
}

/// One entry (or none in cut mode) of a map.
struct OneEntry<'a> {
    t: &'a mut Tracer,
    key: &'a mut Partial,
    value: &'a mut Partial,
    left: bool,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if !self.left {
            return Ok(None);
        }
        self.left = false;
        seed.deserialize(De {
            t: &mut *self.t,
            out: &mut *self.key,
            cut: false,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        seed.deserialize(De {
            t: &mut *self.t,
            out: &mut *self.value,
            cut: false,
        })
    }
}

/// The chosen variant of an enum.
struct Variant<'a> {
    t: &'a mut Tracer,
    slot: &'a mut Partial,
    index: u32,
    cut: bool,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = TraceError;
    type Variant = Variant<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Variant<'a>), TraceError> {
        let id = seed.deserialize(self.index.into_deserializer())?;
        Ok((id, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        if !self.cut {
            *self.slot = Partial::Leaf(Shape::Unit);
        }
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        seed.deserialize(De {
            t: self.t,
            out: self.slot,
            cut: self.cut,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        De {
            t: self.t,
            out: self.slot,
            cut: self.cut,
        }
        .tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        De {
            t: self.t,
            out: self.slot,
            cut: self.cut,
        }
        .tuple(fields.len(), visitor)
    }
}

macro_rules! leaf {
    ($($method:ident => $shape:ident, $visit:ident($value:expr);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                self.leaf(Shape::$shape);
                visitor.$visit($value)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = TraceError;

    fn is_human_readable(&self) -> bool {
        // Like postcard: types that encode differently for humans take
        // their compact form here too.
        false
    }

    leaf! {
        deserialize_bool => Bool, visit_bool(false);
        deserialize_i8 => I8, visit_i8(1);
        deserialize_i16 => I16, visit_i16(1);
        deserialize_i32 => I32, visit_i32(1);
        deserialize_i64 => I64, visit_i64(1);
        deserialize_i128 => I128, visit_i128(1);
        deserialize_u8 => U8, visit_u8(1);
        deserialize_u16 => U16, visit_u16(1);
        deserialize_u32 => U32, visit_u32(1);
        deserialize_u64 => U64, visit_u64(1);
        deserialize_u128 => U128, visit_u128(1);
        deserialize_f32 => F32, visit_f32(1.0);
        deserialize_f64 => F64, visit_f64(1.0);
        deserialize_char => Char, visit_char('a');
        deserialize_str => Str, visit_str("");
        deserialize_string => Str, visit_string(String::new());
        deserialize_bytes => Bytes, visit_bytes(&[]);
        deserialize_byte_buf => Bytes, visit_byte_buf(Vec::new());
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf(Shape::Unit);
        visitor.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError(
            "the type asks for a self-describing format (deserialize_any); postcard cannot encode it".into(),
        ))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError(
            "identifiers are not part of postcard's format".into(),
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError(
            "ignored values are not part of postcard's format".into(),
        ))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.cut {
            return visitor.visit_none();
        }
        self.out.ensure(
            || Partial::Option(Box::new(Partial::Unknown)),
            |p| matches!(p, Partial::Option(_)),
        );
        let Partial::Option(inner) = self.out else {
            return Err(TraceError("internal: option slot".into()));
        };
        visitor.visit_some(De {
            t: self.t,
            out: inner,
            cut: false,
        })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.leaf(Shape::Unit);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.named(|de, v| v.visit_newtype_struct(de), visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.cut {
            let mut none = Vec::new();
            return visitor.visit_seq(Fields {
                t: self.t,
                slots: &mut none,
                next: 0,
                cut: true,
            });
        }
        self.out.ensure(
            || Partial::Seq(Box::new(Partial::Unknown)),
            |p| matches!(p, Partial::Seq(_)),
        );
        let Partial::Seq(inner) = self.out else {
            return Err(TraceError("internal: seq slot".into()));
        };
        visitor.visit_seq(OneElement {
            t: self.t,
            slot: inner,
            left: true,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.named(|de, v| de.tuple(len, v), visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.cut {
            let (mut k, mut v) = (Partial::Unknown, Partial::Unknown);
            return visitor.visit_map(OneEntry {
                t: self.t,
                key: &mut k,
                value: &mut v,
                left: false,
            });
        }
        self.out.ensure(
            || Partial::Map(Box::new(Partial::Unknown), Box::new(Partial::Unknown)),
            |p| matches!(p, Partial::Map(..)),
        );
        let Partial::Map(key, value) = self.out else {
            return Err(TraceError("internal: map slot".into()));
        };
        visitor.visit_map(OneEntry {
            t: self.t,
            key,
            value,
            left: true,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.named(|de, v| de.tuple(fields.len(), v), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if variants.is_empty() {
            return Err(TraceError("an enum without variants has no value".into()));
        }
        let n = variants.len();
        self.named(
            |de, v| {
                let De { t, out, cut } = de;
                if cut {
                    let mut scratch = Partial::Unknown;
                    return v.visit_enum(Variant {
                        t,
                        slot: &mut scratch,
                        index: 0,
                        cut: true,
                    });
                }
                out.ensure(
                    || Partial::Enum(vec![Partial::Unknown; n]),
                    |p| matches!(p, Partial::Enum(items) if items.len() == n),
                );
                let Partial::Enum(items) = out else {
                    return Err(TraceError("internal: enum slot".into()));
                };
                // The first variant not fully known yet (or the first).
                let index = items.iter().position(|p| !p.complete()).unwrap_or(0);
                let slot = &mut items[index];
                v.visit_enum(Variant {
                    t,
                    slot,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    cut: false,
                })
            },
            visitor,
        )
    }
}
