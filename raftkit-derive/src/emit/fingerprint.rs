//! The schema fingerprint.
//!
//! Each handler's description (kind, tag, name, argument names and types,
//! return type) is hashed with 64-bit FNV-1a here, in the macro. The
//! generated `SCHEMA_FINGERPRINT` constant then folds, at compile time, the
//! state machine's name (known only to the derive half, through
//! `Derived::NAME`) and each handler's hash in declaration order; a handler's
//! fold carries its `#[cfg]`s, so a handler compiled out does not count.
//! Types are hashed as their tokens joined by single spaces (independent of
//! how the compiler would pretty-print them). Error policies are not part of
//! the schema: they do not change what a command means on the wire.

use proc_macro2::{Delimiter, TokenStream, TokenTree};

use crate::model::Handler;

/// The FNV-1a 64-bit offset basis.
pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a hash with `bytes`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// Tokens as text, one space between tokens, whatever their original layout.
pub fn canonical(tokens: &TokenStream) -> String {
    let mut out = String::new();
    write_canonical(tokens, &mut out);
    out
}

fn write_canonical(tokens: &TokenStream, out: &mut String) {
    for tt in tokens.clone() {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_canonical(&g.stream(), out);
                if !out.ends_with(' ') && !close.is_empty() {
                    out.push(' ');
                }
                out.push_str(close);
            }
            other => out.push_str(&other.to_string()),
        }
    }
}

/// The schema description of one handler, as hashed.
pub fn describe(h: &Handler) -> String {
    let args: Vec<String> = h
        .args
        .iter()
        .map(|a| format!("{}: {}", a.ident, canonical(&a.ty)))
        .collect();
    format!(
        "{kind} {name} tag={tag} ({args}) -> {output}",
        kind = h.kind.as_str(),
        name = h.ident,
        tag = h.tag,
        args = args.join(", "),
        output = canonical(&h.output),
    )
}

/// The FNV-1a hash of [`describe`].
pub fn handler_hash(h: &Handler) -> u64 {
    fnv1a(OFFSET, describe(h).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn canonical_ignores_layout() {
        let a: TokenStream = "Option<Vec<(u32,String)>>".parse().unwrap();
        let b: TokenStream = "Option < Vec < ( u32 , String ) > >".parse().unwrap();
        assert_eq!(canonical(&a), canonical(&b));
    }
}
