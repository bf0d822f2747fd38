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
//! Failures are confined to the part that fails (see [`part`]): every
//! field, element, map key or value and variant payload is deserialized
//! through it, which catches a panic and, when the part learned nothing in
//! the run that failed, records it as [`Shape::Opaque`] with its type's
//! name. A part that did trace its whole structure before refusing the
//! made-up value (a validating newtype) keeps that structure. The run
//! fails, but the next one gets past it: a struct whose field yields no
//! value is then deserialized as a map (serde's derived visitors take
//! both) without that field, so the fields after it are traced too (the
//! visitor then reports the missing field); a tuple cannot skip an
//! element, so its elements after one that yields no value are opaque,
//! named by the tuple's type and position. Field and variant names are
//! recorded ([`Shape::Named`]).
//!
//! Invariants: tracing never panics by itself (a panicking user impl is
//! caught by [`part`]), allocates in proportion to the type's size, and
//! runs at most [`MAX_RUNS`] times; a run that fails changes the partial
//! tree (or marks a part opaque), so runs make progress.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use std::panic::{AssertUnwindSafe, catch_unwind};

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
#[derive(Clone, Debug, PartialEq)]
enum Partial {
    Unknown,
    Leaf(Shape),
    Option(Box<Partial>),
    Seq(Box<Partial>),
    Map(Box<Partial>, Box<Partial>),
    /// A struct (`names` its fields') or a tuple (`names` empty).
    Tuple {
        items: Vec<Partial>,
        names: &'static [&'static str],
        /// Deserialized as a map without the `skip`ped fields: a field
        /// before the last yields no value.
        by_key: bool,
        skip: Vec<bool>,
    },
    Enum(Vec<Partial>, &'static [&'static str]),
    Recursive(u32),
    /// A part that could not be traced: its type's name.
    Opaque(String),
}

impl Partial {
    fn complete(&self) -> bool {
        match self {
            Partial::Unknown => false,
            Partial::Leaf(_) | Partial::Recursive(_) | Partial::Opaque(_) => true,
            Partial::Option(p) | Partial::Seq(p) => p.complete(),
            Partial::Map(k, v) => k.complete() && v.complete(),
            Partial::Tuple { items, .. } | Partial::Enum(items, _) => {
                items.iter().all(Partial::complete)
            }
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
            Partial::Tuple { items, names, .. } => Shape::flatten(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| match names.get(i) {
                        Some(name) => Shape::Named((*name).to_string(), Box::new(item.finish())),
                        None => item.finish(),
                    })
                    .collect(),
            ),
            Partial::Enum(variants, names) => Shape::Enum(
                variants
                    .into_iter()
                    .enumerate()
                    .map(|(i, payload)| match names.get(i) {
                        Some(name) => Shape::Named((*name).to_string(), Box::new(payload.finish())),
                        None => payload.finish(),
                    })
                    .collect(),
            ),
            Partial::Recursive(n) => Shape::Recursive(n),
            Partial::Opaque(name) => Shape::Opaque(name),
        }
    }

    /// Makes `self` a `want`-kind node (keeping what earlier runs found),
    /// counting a change.
    fn ensure(
        &mut self,
        changes: &mut u64,
        want: impl FnOnce() -> Partial,
        same: impl Fn(&Partial) -> bool,
    ) {
        if !same(self) {
            *self = want();
            *changes += 1;
        }
    }

    /// Sets `self` to `to`, counting a change if it was something else.
    fn set(&mut self, changes: &mut u64, to: Partial) {
        if *self != to {
            *self = to;
            *changes += 1;
        }
    }
}

/// The state of one trace across runs.
struct Tracer {
    /// The named types being deserialized, outermost first.
    stack: Vec<&'static str>,
    /// How many times the partial tree changed: a part that fails without
    /// changing it learned nothing, and would fail so in every run.
    changes: u64,
}

/// Traces `T` (see the [module docs](self)): its shape, and whether some
/// run failed (`T`, or a part of it, yields no value for the tracer: then
/// the shape may hold opaque parts, and raftkit before confined opacity
/// made all of `T` opaque).
pub fn trace<T: DeserializeOwned>() -> Result<(Shape, bool), TraceError> {
    let mut tracer = Tracer {
        stack: Vec::new(),
        changes: 0,
    };
    let mut root = Partial::Unknown;
    let mut failed = false;
    for _ in 0..MAX_RUNS {
        tracer.stack.clear();
        let run = part(&mut tracer, &mut root, false, std::marker::PhantomData::<T>);
        failed |= run.is_err();
        if root.complete() {
            return Ok((root.finish(), failed));
        }
    }
    Err(TraceError(format!(
        "not every variant was reached in {MAX_RUNS} runs"
    )))
}

/// Deserializes one part of a value (the whole value, a field, an
/// element, a map's key or value, a variant's payload) into `slot`, and
/// confines a failure to it: a panic of the type's impl is caught (and the
/// stack of named types restored), and a part that fails without having
/// changed the partial tree in this run (it would fail the same way in
/// every run) becomes [`Partial::Opaque`] with the part's type name.
fn part<'de, S: DeserializeSeed<'de>>(
    t: &mut Tracer,
    slot: &mut Partial,
    cut: bool,
    seed: S,
) -> Result<S::Value, TraceError> {
    let (changes, depth) = (t.changes, t.stack.len());
    let result = catch_unwind(AssertUnwindSafe(|| {
        seed.deserialize(De {
            t: &mut *t,
            out: &mut *slot,
            cut,
        })
    }))
    .unwrap_or_else(|_| {
        t.stack.truncate(depth);
        Err(TraceError(format!(
            "the Deserialize impl of {} panicked",
            std::any::type_name::<S::Value>()
        )))
    });
    if let Err(e) = &result
        && !cut
        && t.changes == changes
        && !slot.complete()
    {
        let name = std::any::type_name::<S::Value>();
        tracing::debug!(ty = name, error = %e, "part of a type not traceable; its schema is opaque");
        slot.set(&mut t.changes, Partial::Opaque(name.to_string()));
    }
    result
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
            self.out.set(&mut self.t.changes, Partial::Leaf(shape));
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
                    self.out.set(
                        &mut self.t.changes,
                        Partial::Recursive(u32::try_from(depth).unwrap_or(u32::MAX)),
                    );
                })
                .is_some();
        self.t.stack.push(name);
        Ok(recursive)
    }

    fn leave(&mut self) {
        self.t.stack.pop();
    }

    /// Visits `len` fields (named `names`, or a tuple's if empty) into a
    /// tuple node; on a failure, prepares the next run (see the
    /// [module docs](self)).
    fn tuple<'de, V: Visitor<'de>>(
        self,
        len: usize,
        names: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let t = self.t;
        if self.cut {
            let mut scratch = vec![Partial::Unknown; len];
            return visitor.visit_seq(Fields {
                t,
                slots: &mut scratch,
                skip: &[],
                next: 0,
                cut: true,
                failed: None,
            });
        }
        self.out.ensure(
            &mut t.changes,
            || Partial::Tuple {
                items: vec![Partial::Unknown; len],
                names,
                by_key: false,
                skip: vec![false; len],
            },
            |p| matches!(p, Partial::Tuple { items, .. } if items.len() == len),
        );
        let Partial::Tuple {
            items,
            names,
            by_key,
            skip,
        } = self.out
        else {
            return Err(TraceError("internal: tuple slot".into()));
        };
        let changes = t.changes;
        let (result, failed, reached) = if *by_key {
            let mut fields = Fields {
                t: &mut *t,
                slots: items,
                skip,
                next: 0,
                cut: false,
                failed: None,
            };
            let result = visitor.visit_map(FieldsByKey {
                fields: &mut fields,
                names,
            });
            (result, fields.failed, fields.next)
        } else {
            let mut fields = Fields {
                t: &mut *t,
                slots: items,
                skip: &[],
                next: 0,
                cut: false,
                failed: None,
            };
            let result = visitor.visit_seq(&mut fields);
            (result, fields.failed, fields.next)
        };
        if result.is_ok() {
            return result;
        }
        match failed {
            // A field traced to the end that yields no value: skip it from
            // the next run on if the type takes its fields by name.
            Some(f) if items.get(f).is_some_and(Partial::complete) && !names.is_empty() => {
                if !*by_key {
                    *by_key = true;
                    t.changes += 1;
                }
                if let Some(s) = skip.get_mut(f)
                    && !*s
                {
                    *s = true;
                    t.changes += 1;
                }
            }
            // Still being traced (the next run goes on), or a tuple whose
            // later elements cannot be reached (below).
            Some(f) if !items.get(f).is_some_and(Partial::complete) => {}
            _ if t.changes != changes || reached >= len => {}
            // The type stopped by itself, or takes no map, or cannot reach
            // its elements after one that yields no value: what is not
            // traced yet stays opaque, named by the type and position.
            _ => {
                let ty = std::any::type_name::<V::Value>();
                for (i, item) in items.iter_mut().enumerate() {
                    if *item == Partial::Unknown {
                        let at = names
                            .get(i)
                            .map_or_else(|| i.to_string(), |n| (*n).to_string());
                        item.set(&mut t.changes, Partial::Opaque(format!("{ty}, field {at}")));
                    }
                }
            }
        }
        result
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

/// The fields of a struct or tuple, in order.
struct Fields<'a> {
    t: &'a mut Tracer,
    slots: &'a mut Vec<Partial>,
    /// The fields left out (by key only).
    skip: &'a [bool],
    /// The next field to visit.
    next: usize,
    cut: bool,
    /// The field that failed, if one did.
    failed: Option<usize>,
}

impl Fields<'_> {
    /// Visits field `index`.
    fn field<'de, S: DeserializeSeed<'de>>(
        &mut self,
        index: usize,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(TraceError("internal: field slot".into()));
        };
        let result = part(&mut *self.t, slot, self.cut, seed);
        if result.is_err() {
            self.failed = Some(index);
        }
        result
    }
}

impl<'de> SeqAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        if self.next >= self.slots.len() {
            return Ok(None);
        }
        let index = self.next;
        self.next += 1;
        self.field(index, seed).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len() - self.next)
    }
}

/// The fields of a struct as a map keyed by their names, without the
/// skipped ones.
struct FieldsByKey<'a, 'b> {
    fields: &'a mut Fields<'b>,
    names: &'static [&'static str],
}

impl<'de> MapAccess<'de> for FieldsByKey<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let f = &mut *self.fields;
        while f.skip.get(f.next).copied().unwrap_or(false) {
            f.next += 1;
        }
        let Some(name) = self.names.get(f.next) else {
            f.next = f.slots.len();
            return Ok(None);
        };
        f.next += 1;
        seed.deserialize((*name).into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let index = self.fields.next.saturating_sub(1);
        self.fields.field(index, seed)
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
        part(&mut *self.t, &mut *self.slot, false, seed).map(Some)
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
        part(&mut *self.t, &mut *self.key, false, seed).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        part(&mut *self.t, &mut *self.value, false, seed)
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
            self.slot
                .set(&mut self.t.changes, Partial::Leaf(Shape::Unit));
        }
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        part(self.t, self.slot, self.cut, seed)
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
        .tuple(len, &[], visitor)
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
        .tuple(fields.len(), fields, visitor)
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
            &mut self.t.changes,
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
                skip: &[],
                next: 0,
                cut: true,
                failed: None,
            });
        }
        self.out.ensure(
            &mut self.t.changes,
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
        self.tuple(len, &[], visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.named(|de, v| de.tuple(len, &[], v), visitor)
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
            &mut self.t.changes,
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
        self.named(|de, v| de.tuple(fields.len(), fields, v), visitor)
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
                    &mut t.changes,
                    || Partial::Enum(vec![Partial::Unknown; n], variants),
                    |p| matches!(p, Partial::Enum(items, _) if items.len() == n),
                );
                let Partial::Enum(items, _) = out else {
                    return Err(TraceError("internal: enum slot".into()));
                };
                // The first variant not fully known yet (or the first).
                let index = items.iter().position(|p| !p.complete()).unwrap_or(0);
                let Some(slot) = items.get_mut(index) else {
                    return Err(TraceError("internal: variant slot".into()));
                };
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
