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
