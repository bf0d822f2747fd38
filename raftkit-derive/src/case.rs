//! Identifier case conversions: `put_if_absent` -> `PutIfAbsent` for enum
//! variants, `KvStore` -> `kv_store` for the default state machine name.

/// `snake_case` (or any) identifier text to `CamelCase`; a leading `r#` is
/// dropped and underscores separate words.
pub fn to_camel(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let mut out = String::with_capacity(ident.len());
    let mut upper_next = true;
    for c in ident.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            out.extend(c.to_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `CamelCase` identifier text to `snake_case`: `Kv` -> `kv`,
/// `KvStore` -> `kv_store`, `HTTPCache` -> `http_cache`.
pub fn to_snake(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                Some(_) => false,
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel() {
        assert_eq!(to_camel("put"), "Put");
        assert_eq!(to_camel("put_if_absent"), "PutIfAbsent");
        assert_eq!(to_camel("r#type"), "Type");
        assert_eq!(to_camel("_hidden"), "Hidden");
        assert_eq!(to_camel("get2"), "Get2");
    }

    #[test]
    fn snake() {
        assert_eq!(to_snake("Kv"), "kv");
        assert_eq!(to_snake("KvStore"), "kv_store");
        assert_eq!(to_snake("HTTPCache"), "http_cache");
        assert_eq!(to_snake("Counter2"), "counter2");
        // A capital after a digit starts a word: the default name is in
        // peer names and data directories, so it must not change.
        assert_eq!(to_snake("V2Store"), "v2_store");
        assert_eq!(to_snake("Kv2Cache"), "kv2_cache");
        assert_eq!(to_snake("already_snake"), "already_snake");
    }
}
