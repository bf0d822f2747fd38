//! The depth limit of [`super::deserialize_limited`]: exactly the limit
//! decodes, one more level is refused, flat sequences are not depth, and
//! values below the limit decode as postcard alone decodes them.

use super::{MAX_DEPTH, deserialize_limited};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A recursive type: one level (one enum) and one byte per `Neg`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Expr {
    Lit(u64),
    Neg(Box<Expr>),
}

/// `levels` nested enums: `levels - 1` times `Neg`, then `Lit(7)`.
fn nested(levels: usize) -> Vec<u8> {
    let mut bytes = vec![1u8; levels - 1];
    bytes.extend_from_slice(&[0, 7]);
    bytes
}

fn decode<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    limit: usize,
) -> Result<T, Option<postcard::Error>> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    deserialize_limited(&mut de, limit)
}

fn depth_of(e: &Expr) -> usize {
    let mut n = 1;
    let mut e = e;
    while let Expr::Neg(inner) = e {
        n += 1;
        e = inner;
    }
    n
}

#[test]
fn exactly_the_limit_decodes_and_one_more_level_is_refused() {
    let at = decode::<Expr>(&nested(MAX_DEPTH), MAX_DEPTH).expect("the limit decodes");
    assert_eq!(depth_of(&at), MAX_DEPTH);
    assert_eq!(
        decode::<Expr>(&nested(MAX_DEPTH + 1), MAX_DEPTH).err(),
        Some(None)
    );
    // The limit is a parameter, not a constant in the counting.
    assert!(decode::<Expr>(&nested(3), 3).is_ok());
    assert_eq!(decode::<Expr>(&nested(4), 3).err(), Some(None));
}

#[test]
fn a_very_deep_value_is_refused_without_overflowing() {
    // Far deeper than any stack holds (the test binary aborted here before
    // the limit existed, if decoded unlimited).
    assert_eq!(
        decode::<Expr>(&nested(1_000_000), MAX_DEPTH).err(),
        Some(None)
    );
}

#[test]
fn every_compound_kind_counts_one_level() {
    type Deep = Option<(Vec<BTreeMap<u8, Wrapped>>,)>;
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapped(Inner);
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        e: Expr,
    }
    // option, tuple, seq, map, newtype struct, struct, enum: 7 levels.
    let value: Deep = Some((vec![BTreeMap::from([(
        1,
        Wrapped(Inner { e: Expr::Lit(2) }),
    )])],));
    let bytes = postcard::to_allocvec(&value).expect("encodes");
    assert_eq!(decode::<Deep>(&bytes, 7).ok(), Some(value));
    assert_eq!(decode::<Deep>(&bytes, 6).err(), Some(None));
}

#[test]
fn flat_sequences_are_not_depth() {
    let flat = vec![9u8; 1_000_000];
    let bytes = postcard::to_allocvec(&flat).expect("encodes");
    assert_eq!(decode::<Vec<u8>>(&bytes, 1).ok(), Some(flat));
    let strings: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let bytes = postcard::to_allocvec(&strings).expect("encodes");
    assert_eq!(decode::<Vec<String>>(&bytes, 1).ok(), Some(strings));
    let exprs: Vec<Expr> = (0..10_000).map(Expr::Lit).collect();
    let bytes = postcard::to_allocvec(&exprs).expect("encodes");
    assert_eq!(decode::<Vec<Expr>>(&bytes, 2).ok(), Some(exprs));
}

#[test]
fn other_errors_pass_through_and_values_match_postcard() {
    // An unknown variant is postcard's error, not the depth's.
    assert!(matches!(decode::<Expr>(&[5, 0], MAX_DEPTH), Err(Some(_))));
    assert!(matches!(decode::<Expr>(&[1, 1], MAX_DEPTH), Err(Some(_))));
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum All {
        Unit,
        Tuple(i8, u128, f32, char),
        Struct {
            s: String,
            b: Vec<u8>,
            o: Option<bool>,
        },
    }
    let values = vec![
        All::Unit,
        All::Tuple(-3, u128::MAX, 1.5, 'é'),
        All::Struct {
            s: "x".into(),
            b: vec![1, 2],
            o: Some(true),
        },
        All::Struct {
            s: String::new(),
            b: vec![],
            o: None,
        },
    ];
    let bytes = postcard::to_allocvec(&values).expect("encodes");
    assert_eq!(
        decode::<Vec<All>>(&bytes, MAX_DEPTH).ok(),
        postcard::from_bytes(&bytes).ok()
    );
    assert_eq!(decode::<Vec<All>>(&bytes, MAX_DEPTH).ok(), Some(values));
}

/// A million levels of each way one value can hold another (a tuple
/// variant, a struct variant, a map key, an option, a sequence, a newtype
/// struct): every wrapper of the adapter counts, so each is refused at the
/// limit instead of recursing until the stack overflows (which aborts the
/// test binary).
#[test]
fn recursion_through_every_kind_of_wrapper_is_refused() {
    /// A tuple variant: 2 bytes per level (`Node`'s index, the `u8`).
    #[derive(Debug, Serialize, Deserialize)]
    enum T {
        Leaf,
        Node(u8, Box<T>),
    }
    /// A struct variant: 1 byte per level.
    #[derive(Debug, Serialize, Deserialize)]
    enum S {
        Leaf,
        Node { n: Box<S> },
    }
    /// A recursive map *key*: 1 byte per level (the map's length).
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    struct K(BTreeMap<K, u8>);
    /// `Option<Box<Self>>` in a struct: 1 byte per level.
    #[derive(Debug, Serialize, Deserialize)]
    struct O {
        next: Option<Box<O>>,
    }
    /// `Vec<Self>`: 1 byte per level (the length).
    #[derive(Debug, Serialize, Deserialize)]
    struct V(Vec<V>);
    /// A newtype struct behind an option: 1 byte per level.
    #[derive(Debug, Serialize, Deserialize)]
    struct N(Option<Box<N>>);

    const LEVELS: usize = 1_000_000;
    let ones = vec![1u8; LEVELS];
    let tuple_variant = [1u8, 0].repeat(LEVELS);
    assert_eq!(decode::<T>(&tuple_variant, MAX_DEPTH).err(), Some(None));
    assert_eq!(decode::<S>(&ones, MAX_DEPTH).err(), Some(None));
    assert_eq!(decode::<K>(&ones, MAX_DEPTH).err(), Some(None));
    assert_eq!(decode::<O>(&ones, MAX_DEPTH).err(), Some(None));
    assert_eq!(decode::<V>(&ones, MAX_DEPTH).err(), Some(None));
    assert_eq!(decode::<N>(&ones, MAX_DEPTH).err(), Some(None));
    // Below the limit, each decodes as postcard alone decodes it.
    let shallow = [[1u8, 0].repeat(10), vec![0]].concat();
    assert!(decode::<T>(&shallow, MAX_DEPTH).is_ok());
    let shallow = [vec![1u8; 10], vec![0]].concat();
    assert!(decode::<S>(&shallow, MAX_DEPTH).is_ok());
    assert!(decode::<O>(&shallow, MAX_DEPTH).is_ok());
    assert!(decode::<N>(&shallow, MAX_DEPTH).is_ok());
    assert!(decode::<V>(&[1, 1, 1, 0], MAX_DEPTH).is_ok());
    let key =
        postcard::to_allocvec(&K(BTreeMap::from([(K(BTreeMap::new()), 3)]))).expect("encodes");
    assert!(decode::<K>(&key, MAX_DEPTH).is_ok());
}

/// A self-describing deserializer of a tree [`BOTTOM`] levels deep, one
/// sequence of one element per level: what `deserialize_any` and
/// `deserialize_ignored_any` walk under a codec that implements them
/// (postcard refuses both).
struct Tree {
    depth: usize,
}

/// How deep [`Tree`] goes before it fails with [`BOTTOM_REACHED`]: past
/// [`MAX_DEPTH`], well within a test thread's stack.
const BOTTOM: usize = 4 * MAX_DEPTH;
const BOTTOM_REACHED: &str = "the bottom of the tree was reached";

impl<'de> serde::Deserializer<'de> for Tree {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if self.depth >= BOTTOM {
            return Err(serde::de::Error::custom(BOTTOM_REACHED));
        }
        visitor.visit_seq(OneChild {
            depth: self.depth + 1,
            taken: false,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The one element of a [`Tree`] level.
struct OneChild {
    depth: usize,
    taken: bool,
}

impl<'de> serde::de::SeqAccess<'de> for OneChild {
    type Error = serde::de::value::Error;

    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        if std::mem::replace(&mut self.taken, true) {
            return Ok(None);
        }
        seed.deserialize(Tree { depth: self.depth }).map(Some)
    }
}

/// A value read through `deserialize_any`, as `serde_json::Value` and
/// serde's buffering of untagged enums read theirs.
#[derive(Debug)]
struct Any;

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Any, D::Error> {
        struct AnyVisitor;
        impl<'de> serde::de::Visitor<'de> for AnyVisitor {
            type Value = Any;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Any, A::Error> {
                while let Some(Any) = seq.next_element()? {}
                Ok(Any)
            }
        }
        d.deserialize_any(AnyVisitor)
    }
}

/// `deserialize_any` and `deserialize_ignored_any` each count one level,
/// so the limit holds under a codec that implements them too (before
/// stop 57 they were counted as flat: the tree was walked to its bottom).
#[test]
fn deserialize_any_and_ignored_any_count_one_level() {
    let any = deserialize_limited::<Any, _>(Tree { depth: 0 }, MAX_DEPTH);
    assert!(matches!(any, Err(None)), "{any:?}");
    let ignored = deserialize_limited::<serde::de::IgnoredAny, _>(Tree { depth: 0 }, MAX_DEPTH);
    assert!(matches!(ignored, Err(None)), "{ignored:?}");
    // Exactly the limit: `Tree` levels 0..limit are the values, and the
    // bottom is reached below them.
    let limit = BOTTOM + 1;
    let any = deserialize_limited::<Any, _>(Tree { depth: 0 }, limit);
    assert!(
        matches!(&any, Err(Some(e)) if e.to_string() == BOTTOM_REACHED),
        "{any:?}"
    );
    // postcard refuses both before anything is nested.
    assert!(matches!(decode::<Any>(&[1, 1, 0], MAX_DEPTH), Err(Some(_))));
    assert!(matches!(
        decode::<serde::de::IgnoredAny>(&[1, 1, 0], MAX_DEPTH),
        Err(Some(_))
    ));
}
