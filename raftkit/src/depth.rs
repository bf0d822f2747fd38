//! A serde `Deserializer` adapter that refuses values nested deeper than a
//! limit, so that decoding a client's bytes can never overflow the stack.
//!
//! # Where the limit applies: ingress only
//!
//! The limit is used through `state_machine::decode_untrusted`, at ingress
//! only, where a refusal means "not applied": the leader's (and a
//! follower's) check of a client's command, the decode of a read's query,
//! and the local and sharded clients' decode of what they were handed.
//! Committed log entries, snapshots (take, restore, install) and replies
//! decode with plain `state_machine::decode`, without a limit, as before
//! the limit existed: entries were checked at ingress (or committed by a
//! previous release, which a new replica must still apply), a snapshot is
//! the state machine's own state (a list or trie grown by many shallow
//! writes nests far deeper than any one command), and a reply comes from
//! the authenticated server after the command applied (refusing it would
//! report an applied write as "maybe applied").
//!
//! A recursive type (`enum Expr { Lit(u64), Neg(Box<Expr>) }`, a JSON-like
//! `Value`) decodes through serde recursion: one group of stack frames per
//! level, at one byte per level on the wire. postcard has no depth limit, and
//! a stack overflow is no panic: the process aborts, past every
//! `catch_unwind`. Without this adapter one write of a few dozen kilobytes
//! (far below the maximum command size) would abort the leader that checks
//! it, then every next leader; one query would abort any member serving it.
//! No well-kept crate limits the depth of an arbitrary serde
//! `Deserializer`, so this one is hand-written (the same idea as
//! `schema::shape`'s `MAX_SHAPE_DEPTH`, for user types).
//!
//! # Invariants
//!
//! 1. **Depth counts compound values only.** Each `deserialize_*` of a
//!    compound value (seq, tuple, tuple struct, map, struct, enum, option,
//!    newtype struct), and `deserialize_any` and `deserialize_ignored_any`
//!    (which may visit any of them), is one level for everything decoded
//!    inside it. The elements of a sequence or map are siblings, not
//!    nested: a `Vec<u8>` of a million bytes is two levels deep, not a
//!    million.
//! 2. **Everything nested goes through the counter.** The visitor, and the
//!    `SeqAccess`, `MapAccess`, `EnumAccess`, `VariantAccess` and seeds it
//!    is handed, are wrapped, so a nested `deserialize_*` is always the
//!    adapter's.
//! 3. **Same verdict as postcard below the limit.** The adapter only
//!    forwards (including `is_human_readable`); a value of at most
//!    [`MAX_DEPTH`] levels decodes exactly as postcard alone decodes it.
//! 4. **Deterministic.** The verdict depends on the type and the bytes only
//!    (never on the stack left), so every replica refuses the same command.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// The deepest nesting decoded: serde_json's default recursion limit.
///
/// The smallest stack that decodes through here is a tokio worker's or the
/// apply thread's 2 MiB, in a debug build of the user's crate (its derived
/// `Deserialize` is not optimised). One level of a recursive enum costs there
/// a few kilobytes of frames (the user's visitor, this adapter's and
/// postcard's); 128 levels stay under half a megabyte, leaving the rest to
/// the async poll stack above the leader's check. No command or state of a
/// real schema's *command or query* nests 128 compound values deep (a state
/// may; it is not decoded under this limit, see the module doc).
pub(crate) const MAX_DEPTH: usize = 128;

/// Decodes `T` from `de`, refusing a value nested deeper than `limit`
/// compound levels. Returns `Err(None)` for a value too deep, and the
/// underlying error otherwise.
pub(crate) fn deserialize_limited<'de, T, D>(de: D, limit: usize) -> Result<T, Option<D::Error>>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    let too_deep = Cell::new(false);
    let budget = Budget {
        left: limit,
        too_deep: &too_deep,
    };
    match T::deserialize(limited(de, budget)) {
        Ok(value) => Ok(value),
        // A user's `Deserialize` may have replaced the adapter's error with
        // its own: the flag, not the error, tells that the limit was hit.
        Err(_) if too_deep.get() => Err(None),
        Err(e) => Err(Some(e)),
    }
}

/// The state every wrapper carries: how many compound levels may still be
/// entered, and where to record that the limit was hit.
#[derive(Clone, Copy)]
struct Budget<'f> {
    left: usize,
    too_deep: &'f Cell<bool>,
}

impl<'f> Budget<'f> {
    /// The budget inside one more compound level, or the error if there is
    /// none left.
    fn enter<E: de::Error>(self) -> Result<Budget<'f>, E> {
        match self.left.checked_sub(1) {
            Some(left) => Ok(Budget { left, ..self }),
            None => {
                self.too_deep.set(true);
                Err(E::custom(format_args!(
                    "the value is nested deeper than {MAX_DEPTH} levels"
                )))
            }
        }
    }

    /// `inner` (a visitor, access or seed), limited by this budget.
    fn wrap<T>(self, inner: T) -> Wrap<'f, T> {
        Wrap {
            inner,
            budget: self,
        }
    }
}

/// The depth-limited `Deserializer`.
struct Limited<'f, D> {
    inner: D,
    budget: Budget<'f>,
}

impl<'f, D> Limited<'f, D> {
    fn budget(&self) -> Budget<'f> {
        self.budget
    }
}

/// `inner`, limited by `budget`.
fn limited<D>(inner: D, budget: Budget<'_>) -> Limited<'_, D> {
    Limited { inner, budget }
}

/// A visitor, access or seed whose nested deserializers are limited by
/// `budget`.
struct Wrap<'f, T> {
    inner: T,
    budget: Budget<'f>,
}

/// A `deserialize_*` that opens no level (a primitive, an identifier).
macro_rules! flat {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let budget = self.budget();
            self.inner.$method(budget.wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    // `deserialize_any` and `deserialize_ignored_any` may hand the visitor
    // anything, compound values included (under a self-describing codec:
    // serde's buffering of untagged enums and `flatten`, a JSON-like
    // `Value`, `IgnoredAny` skipping a nested value), so each is one
    // level. postcard refuses both at once, so this changes no verdict
    // under it.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_any(budget.wrap(visitor))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_ignored_any(budget.wrap(visitor))
    }

    flat! {
        deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_option(budget.wrap(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget();
        self.inner
            .deserialize_unit_struct(name, budget.wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner
            .deserialize_newtype_struct(name, budget.wrap(visitor))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_seq(budget.wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_tuple(len, budget.wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner
            .deserialize_tuple_struct(name, len, budget.wrap(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner.deserialize_map(budget.wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner
            .deserialize_struct(name, fields, budget.wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let budget = self.budget().enter()?;
        self.inner
            .deserialize_enum(name, variants, budget.wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visit that carries no nested deserializer.
macro_rules! visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(limited(d, self.budget))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(limited(d, self.budget))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(self.budget.wrap(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(self.budget.wrap(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(self.budget.wrap(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(limited(d, self.budget))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(self.budget.wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(self.budget.wrap(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(self.budget.wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'f, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Wrap<'f, A> {
    type Error = A::Error;
    type Variant = Wrap<'f, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (tag, variant) = self.inner.variant_seed(self.budget.wrap(seed))?;
        Ok((tag, self.budget.wrap(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(self.budget.wrap(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, self.budget.wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, self.budget.wrap(visitor))
    }
}

#[cfg(test)]
#[path = "depth_tests.rs"]
mod tests;
