//! Parsing and validation: syn syntax trees in, a checked model out.
//!
//! Both entry points collect every error they find into an [`Errors`] value
//! instead of stopping at the first one, and never panic. The impl-block
//! parser also strips every `#[write]` / `#[read]` attribute from the item it
//! is given, whether or not the handler is valid, so that the caller can
//! re-emit the item on the error path without those attributes expanding into
//! their own "outside `#[raftkit::state_machine]`" errors.
//!
//! Invariants of a model returned with no errors:
//! - every handler has a unique method name, a unique variant name and a tag
//!   unique among the handlers of its kind (`write` or `read`);
//! - every argument is a plain identifier with an owned, non-`impl Trait`
//!   type, and `Self` inside argument and return types has been replaced by
//!   the state machine's type, so the types can be named outside the impl.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ImplItem, ItemImpl, LitInt, LitStr, Pat, ReturnType, Type};

use crate::case::{to_camel, to_snake};
use crate::errors::Errors;

/// What a panicking `#[write]` handler does (mirrors `raftkit::ErrorPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Answer `Error::Handler` and go on with the next entry.
    Skip,
    /// Stop applying on this node.
    Halt,
}

impl Policy {
    /// The default policy of a state machine with no `on_error` setting.
    pub const DEFAULT: Policy = Policy::Skip;

    fn parse(lit: &LitStr, errors: &mut Errors) -> Option<Policy> {
        match lit.value().as_str() {
            "skip" => Some(Policy::Skip),
            "halt" => Some(Policy::Halt),
            other => {
                errors.spanned(
                    lit,
                    format!(
                        "unknown `on_error` value `{other}`: expected \"skip\" (answer the caller \
                         with `Error::Handler` and go on) or \"halt\" (stop applying on this node)"
                    ),
                );
                None
            }
        }
    }
}

/// The struct half: what `#[derive(StateMachine)]` learned from the struct.
pub struct DeriveModel {
    /// The struct's name.
    pub ident: Ident,
    /// The state machine's name (`NAME`).
    pub name: String,
    /// The struct-level error policy.
    pub policy: Policy,
    /// The state's snapshot version (`#[raftkit(version = N)]`).
    pub version: Option<u32>,
    /// The migration of older snapshots (`#[raftkit(migrate = path)]`).
    pub migrate: Option<syn::Path>,
    /// Where `#[raftkit(snapshot = "clone")]` was set, if it was: snapshots
    /// serialize a clone of the state off the apply thread.
    pub snapshot_clone: Option<proc_macro2::Span>,
}

/// Parses the struct a `#[derive(StateMachine)]` is on. Returns a model even
/// when there are errors (with defaults for what could not be read), unless
/// the item cannot be a state machine at all (generic, union).
pub fn parse_derive(input: &syn::DeriveInput, errors: &mut Errors) -> Option<DeriveModel> {
    let mut usable = true;
    if let syn::Data::Union(u) = &input.data {
        errors.spanned(
            u.union_token,
            "`#[derive(StateMachine)]` supports structs and enums, not unions: a state machine \
             must be serializable for snapshots",
        );
        usable = false;
    }
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        errors.spanned(
            &input.generics,
            "`#[derive(StateMachine)]` does not support generic state machines: the command \
             enums and the schema fingerprint need one concrete type. Wrap a concrete \
             instantiation in its own struct instead (`struct MyKv(Kv<String>);`)",
        );
        usable = false;
    }

    let mut name: Option<String> = None;
    let mut policy: Option<Policy> = None;
    let mut version: Option<u32> = None;
    let mut migrate: Option<syn::Path> = None;
    let mut snapshot_clone: Option<proc_macro2::Span> = None;
    for attr in &input.attrs {
        if !attr.path().is_ident("raftkit") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("on_error") {
                let lit: LitStr = meta.value()?.parse()?;
                if policy.is_some() {
                    errors.spanned(&meta.path, "`on_error` is set more than once");
                }
                policy = Policy::parse(&lit, errors).or(policy);
                Ok(())
            } else if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                if name.is_some() {
                    errors.spanned(&meta.path, "`name` is set more than once");
                }
                let value = lit.value();
                if let Some(problem) = name_problem(&value) {
                    errors.spanned(
                        &lit,
                        format!("invalid state machine name {value:?}: {problem}"),
                    );
                } else {
                    name = Some(value);
                }
                Ok(())
            } else if meta.path.is_ident("version") {
                let lit: LitInt = meta.value()?.parse()?;
                match lit.base10_parse::<u32>() {
                    Ok(v) if v >= 1 => version = Some(v),
                    _ => errors.spanned(
                        &lit,
                        "a state version is an integer from 1 (the default) to 4294967295",
                    ),
                }
                Ok(())
            } else if meta.path.is_ident("migrate") {
                let path: syn::Path = meta.value()?.parse()?;
                migrate = Some(path);
                Ok(())
            } else if meta.path.is_ident("snapshot") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value() == "clone" {
                    snapshot_clone = Some(lit.span());
                } else {
                    errors.spanned(
                        &lit,
                        format!(
                            "unknown `snapshot` value {:?}: expected \"clone\" (snapshots \
                             serialize a clone of the state off the apply thread; leave the \
                             setting out to serialize the state itself on the apply thread)",
                            lit.value()
                        ),
                    );
                }
                Ok(())
            } else {
                Err(meta.error(format!(
                    "unknown `raftkit` setting `{}`: expected `on_error = \"skip\"|\"halt\"`, \
                     `name = \"...\"`, `version = N`, `migrate = path` or \
                     `snapshot = \"clone\"`",
                    meta.path.to_token_stream()
                )))
            }
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }

    if let Some(path) = &migrate
        && version.is_none_or(|v| v < 2)
    {
        errors.spanned(
            path,
            "`migrate` restores snapshots of older state versions: set `version = N` (N >= 2) \
             too, the version of the current state type",
        );
    }

    usable.then(|| DeriveModel {
        name: name.unwrap_or_else(|| to_snake(&input.ident.to_string())),
        ident: input.ident.clone(),
        policy: policy.unwrap_or(Policy::DEFAULT),
        version,
        migrate,
        snapshot_clone,
    })
}

/// Why `name` cannot name a state machine, if it cannot. Names appear in peer
/// names (`<name>@<address>`) and data directories.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Some(
            "use only ASCII letters, digits, `_`, `-` and `.` (it is used in peer names and directory names)",
        )
    } else {
        None
    }
}

/// `#[write]` or `#[read]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A command: `&mut self`, goes through the log.
    Write,
    /// A query: `&self`, served after a ReadIndex round.
    Read,
}

impl Kind {
    /// `"write"` or `"read"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Read => "read",
        }
    }
}

/// One handler argument.
pub struct Arg {
    /// The argument's name, also its field name in the command variant.
    pub ident: Ident,
    /// Its type, with `Self` replaced by the state machine type.
    pub ty: TokenStream,
    /// Where the type was written, for diagnostics.
    pub span: Span,
}

/// How a handler takes the handler context (`raftkit::Ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtxArg {
    /// `ctx: &Ctx`.
    Shared,
    /// `ctx: &mut Ctx` (writes only: the random generator needs it).
    Mut,
}

/// One `#[write]` or `#[read]` method.
pub struct Handler {
    /// Which kind of handler.
    pub kind: Kind,
    /// The method name.
    pub ident: Ident,
    /// The variant name in the command and output enums.
    pub variant: Ident,
    /// The wire tag, unique within the kind.
    pub tag: u32,
    /// The per-handler policy (`#[write(on_error = ..)]`), if set.
    pub policy: Option<Policy>,
    /// The index in `args` of the shard key (`#[write(shard = key)]`), if
    /// set: a sharded client routes the command by it.
    pub shard: Option<usize>,
    /// Whether the first argument after the receiver is the handler context
    /// (not part of the command: the runtime passes it).
    pub ctx: Option<CtxArg>,
    /// The arguments after the receiver (and the context), the command's
    /// fields.
    pub args: Vec<Arg>,
    /// The return type (`()` when none is written), `Self` replaced.
    pub output: TokenStream,
    /// Where the return type was written (or the method name).
    pub output_span: Span,
    /// `#[doc]` attributes.
    pub docs: Vec<Attribute>,
    /// `#[cfg]` attributes: every generated piece of this handler carries them.
    pub cfgs: Vec<Attribute>,
    /// Lint and deprecation attributes, mirrored on the client method.
    pub lints: Vec<Attribute>,
}

/// The impl half: what `#[raftkit::state_machine]` learned from the impl block.
pub struct ImplModel {
    /// The state machine type as written after `impl`.
    pub self_ty: Type,
    /// The state machine's name: the last segment of the type path. The
    /// generated items are named after it (`KvWrite`, `KvClient`, ...).
    pub ident: Ident,
    /// Every handler, in declaration order.
    pub handlers: Vec<Handler>,
}

/// Names a handler must not take: the generated client's own methods
/// (`new` .. `close`), the methods of the traits it implements (`Clone`) and
/// the blanket conversions every value has, which an inherent method of the
/// same name would silently shadow.
const RESERVED: &[&str] = &[
    "new",
    "inner",
    "into_inner",
    "connect",
    "connect_with",
    "write_once",
    "close",
    "with",
    "last_staleness",
    "watch",
    "watch_from_now",
    "clone",
    "clone_from",
    "to_owned",
    "into",
    "try_into",
    "type_id",
];

/// What a handler attribute said.
struct HandlerAttr {
    kind: Kind,
    tag: Option<(u32, Span)>,
    policy: Option<Policy>,
    shard: Option<Ident>,
}

fn handler_kind(attr: &Attribute) -> Option<Kind> {
    let path = attr.path();
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let last = match segments.as_slice() {
        [one] => one.as_str(),
        [krate, one] if krate == "raftkit" => one.as_str(),
        _ => return None,
    };
    match last {
        "write" => Some(Kind::Write),
        "read" => Some(Kind::Read),
        _ => None,
    }
}

fn parse_handler_attr(attr: &Attribute, kind: Kind, errors: &mut Errors) -> HandlerAttr {
    let mut out = HandlerAttr {
        kind,
        tag: None,
        policy: None,
        shard: None,
    };
    match &attr.meta {
        syn::Meta::Path(_) => {}
        syn::Meta::NameValue(nv) => errors.spanned(
            nv,
            format!(
                "expected `#[{0}]` or `#[{0}(tag = N{1})]`",
                kind.as_str(),
                if kind == Kind::Write {
                    ", on_error = \"halt\""
                } else {
                    ""
                }
            ),
        ),
        syn::Meta::List(_) => {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("tag") {
                    let lit: LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(tag) => out.tag = Some((tag, lit.span())),
                        Err(_) => errors.spanned(&lit, "a tag is an integer from 0 to 4294967295"),
                    }
                    Ok(())
                } else if meta.path.is_ident("shard") {
                    let key: Ident = meta.value()?.parse()?;
                    out.shard = Some(key);
                    Ok(())
                } else if meta.path.is_ident("on_error") {
                    let lit: LitStr = meta.value()?.parse()?;
                    if kind == Kind::Read {
                        errors.spanned(
                            &meta.path,
                            "`on_error` applies to `#[write]` handlers only: a panicking `#[read]` \
                             changes no state and is always reported to its caller",
                        );
                    } else {
                        out.policy = Policy::parse(&lit, errors);
                    }
                    Ok(())
                } else {
                    Err(meta.error(format!(
                        "unknown `{}` setting `{}`: expected `tag = N`, `shard = <argument>`{}",
                        kind.as_str(),
                        meta.path.to_token_stream(),
                        if kind == Kind::Write {
                            " or `on_error = \"skip\"|\"halt\"`"
                        } else {
                            ""
                        }
                    )))
                }
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }
    out
}

/// Replaces every `Self` in `tokens` by `self_ty`, so that a type written
/// inside the impl block can be named in the generated items outside it.
fn replace_self(tokens: TokenStream, self_ty: &Type) -> TokenStream {
    let mut out = TokenStream::new();
    let mut iter = tokens.into_iter().peekable();
    while let Some(tt) = iter.next() {
        match tt {
            TokenTree::Ident(ident) if ident == "Self" => {
                // `Self::Assoc` needs `<T>::Assoc`; a bare `Self` is `T`.
                let path_follows =
                    matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                let replacement = if path_follows {
                    quote!(<#self_ty>)
                } else {
                    quote!(#self_ty)
                };
                out.extend(respan(replacement, ident.span()));
            }
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), replace_self(g.stream(), self_ty));
                group.set_span(g.span());
                out.extend([TokenTree::Group(group)]);
            }
            other => out.extend([other]),
        }
    }
    out
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// Rejects argument and return types that cannot travel through the log.
fn check_type(ty: &Type, what: &str, errors: &mut Errors) {
    match ty {
        Type::ImplTrait(_) => errors.spanned(
            ty,
            format!(
                "a handler {what} cannot be `impl Trait`: handlers cannot be generic, the command \
                 is decoded into one concrete type on every replica; name a concrete type"
            ),
        ),
        Type::Reference(_) => errors.spanned(
            ty,
            format!(
                "a handler {what} must be an owned type: it is encoded into the log and decoded \
                 on every replica (use `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`)"
            ),
        ),
        Type::Paren(p) => check_type(&p.elem, what, errors),
        _ => check_nested(ty, what, errors),
    }
}

/// Rejects borrows nested inside an otherwise owned type (`Option<&str>`,
/// `Vec<&[u8]>`, `Cow<'a, str>`, `(u32, &T)`): a command is decoded on every
/// replica into an owned value, so nothing in it can borrow.
fn check_nested(ty: &Type, what: &str, errors: &mut Errors) {
    let borrowed = |errors: &mut Errors, tokens: &dyn ToTokens, found: &str| {
        errors.spanned(
            tokens.to_token_stream(),
            format!(
                "a handler {what} must own all of its data, but it holds {found}: it is encoded \
                 into the log and decoded on every replica into an owned value (use \
                 `Option<String>` for `Option<&str>`, `String` for `Cow<'_, str>`, `Vec<T>` for \
                 `&[T]`)"
            ),
        )
    };
    match ty {
        Type::Reference(r) => borrowed(errors, r, "a reference"),
        // Nested (`Vec<impl Into<String>>`): the same error as at the top.
        Type::ImplTrait(_) => check_type(ty, what, errors),
        Type::Paren(p) => check_nested(&p.elem, what, errors),
        Type::Group(g) => check_nested(&g.elem, what, errors),
        Type::Tuple(t) => t.elems.iter().for_each(|e| check_nested(e, what, errors)),
        Type::Array(a) => check_nested(&a.elem, what, errors),
        Type::Slice(s) => check_nested(&s.elem, what, errors),
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                check_nested(&q.ty, what, errors);
            }
            for segment in &p.path.segments {
                let syn::PathArguments::AngleBracketed(args) = &segment.arguments else {
                    continue;
                };
                for arg in &args.args {
                    match arg {
                        syn::GenericArgument::Type(t) => check_nested(t, what, errors),
                        syn::GenericArgument::Lifetime(l) if l.ident != "static" => {
                            borrowed(errors, l, &format!("the lifetime `{l}`"))
                        }
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
}

/// How `ty` names the handler context: `Some((reference, mutable))` when its
/// path ends in `Ctx` (`Ctx`, `raftkit::Ctx`, `&Ctx`, `&mut Ctx`).
fn ctx_shape(ty: &Type) -> Option<(bool, bool)> {
    let is_ctx = |ty: &Type| match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Ctx" && s.arguments.is_none()),
        _ => false,
    };
    match ty {
        Type::Reference(r) if is_ctx(&r.elem) => Some((true, r.mutability.is_some())),
        Type::Paren(p) => ctx_shape(&p.elem),
        other if is_ctx(other) => Some((false, false)),
        _ => None,
    }
}

fn self_ident(self_ty: &Type) -> Option<Ident> {
    match self_ty {
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            last.arguments.is_none().then(|| last.ident.clone())
        }
        _ => None,
    }
}

/// Parses and validates an impl block, stripping every `#[write]` / `#[read]`
/// attribute from it. Returns the model (possibly partial when there are
/// errors) or `None` if the block is not usable at all.
pub fn parse_impl(item: &mut ItemImpl, errors: &mut Errors) -> Option<ImplModel> {
    let mut usable = true;
    if let Some((path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "`#[raftkit::state_machine]` goes on an inherent impl block (`impl Kv { ... }`), \
             not on a trait impl",
        );
        usable = false;
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "`#[raftkit::state_machine]` does not support generic impl blocks: generic state \
             machines are not supported (the command enums need one concrete type)",
        );
        usable = false;
    }
    let ident = self_ident(&item.self_ty);
    if ident.is_none() && usable {
        errors.spanned(
            &item.self_ty,
            "`#[raftkit::state_machine]` expects the impl block of a named, non-generic struct \
             or enum (`impl Kv { ... }`)",
        );
        usable = false;
    }
    let self_ty = (*item.self_ty).clone();

    let mut handlers = Vec::new();
    // Declaration index within each kind: the implicit tag.
    let mut next_index = [0u32; 2];
    let mut explicit_tag_spans: Vec<Option<Span>> = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            // A stray #[write] on a const or type is stripped too.
            strip_handler_attrs(impl_item, errors);
            continue;
        };
        let mut found: Vec<(Attribute, Kind)> = Vec::new();
        method.attrs.retain(|attr| match handler_kind(attr) {
            Some(kind) => {
                found.push((attr.clone(), kind));
                false
            }
            None => true,
        });
        let (attr, kind) = match found.as_slice() {
            [] => continue,
            [(attr, kind)] => (attr, *kind),
            [_, (second, _), ..] => {
                errors.spanned(
                    second,
                    "a handler has exactly one `#[write]` or `#[read]` attribute",
                );
                continue;
            }
        };
        let parsed = parse_handler_attr(attr, kind, errors);
        let index = &mut next_index[kind as usize];
        let implicit = *index;
        *index = index.saturating_add(1);
        let (tag, tag_span) = match parsed.tag {
            Some((tag, span)) => (tag, Some(span)),
            None => (implicit, None),
        };
        if let Some(handler) = parse_method(method, &parsed, tag, &self_ty, errors) {
            handlers.push(handler);
            explicit_tag_spans.push(tag_span);
        }
    }

    check_unique(&handlers, &explicit_tag_spans, &ident, errors);

    if !usable {
        return None;
    }
    Some(ImplModel {
        self_ty,
        ident: ident?,
        handlers,
    })
}

fn strip_handler_attrs(item: &mut ImplItem, errors: &mut Errors) {
    let attrs = match item {
        ImplItem::Const(c) => &mut c.attrs,
        ImplItem::Type(t) => &mut t.attrs,
        ImplItem::Macro(m) => &mut m.attrs,
        _ => return,
    };
    attrs.retain(|attr| {
        if handler_kind(attr).is_some() {
            errors.spanned(attr, "`#[write]` and `#[read]` go on methods only");
            false
        } else {
            true
        }
    });
}

fn parse_method(
    method: &syn::ImplItemFn,
    attr: &HandlerAttr,
    tag: u32,
    self_ty: &Type,
    errors: &mut Errors,
) -> Option<Handler> {
    let sig = &method.sig;
    let kind = attr.kind;
    let k = kind.as_str();
    let before = errors.count();
    let fail = |errors: &mut Errors, tokens: &dyn ToTokens, msg: String| {
        errors.spanned(tokens.to_token_stream(), msg);
    };

    if let Some(token) = &sig.asyncness {
        fail(
            errors,
            token,
            format!(
                "a `#[{k}]` handler cannot be `async`: handlers run inside the apply loop and must \
                 finish synchronously and deterministically; remove `async` (the generated client \
                 methods are async already)"
            ),
        );
    }
    if let syn::Safety::Unsafe(token) = &sig.safety {
        fail(
            errors,
            token,
            format!("a `#[{k}]` handler cannot be `unsafe fn`"),
        );
    }
    if let Some(abi) = &sig.abi {
        fail(
            errors,
            abi,
            format!("a `#[{k}]` handler cannot have an `extern` ABI"),
        );
    }
    if !sig.generics.params.is_empty() {
        fail(
            errors,
            &sig.generics,
            format!(
                "a `#[{k}]` handler cannot be generic: every replica decodes the command into one \
                 concrete type; use concrete argument and return types"
            ),
        );
    } else if let Some(wc) = &sig.generics.where_clause {
        fail(
            errors,
            wc,
            format!("a `#[{k}]` handler cannot have a `where` clause: handlers cannot be generic"),
        );
    }
    if let Some(v) = &sig.variadic {
        fail(errors, v, format!("a `#[{k}]` handler cannot be variadic"));
    }

    let (wanted, why) = match kind {
        Kind::Write => (
            "&mut self",
            "a write changes the state (use `#[read]` and `&self` for a handler that only \
             observes it)",
        ),
        Kind::Read => (
            "&self",
            "reads are served without going through the log and must not change the state \
             (use `#[write]` and `&mut self` for a handler that changes it)",
        ),
    };
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => match &r.kind {
            syn::ReceiverKind::Reference(_, _, mutability) => {
                if mutability.is_some() != (kind == Kind::Write) {
                    fail(
                        errors,
                        r,
                        format!("a `#[{k}]` handler takes `{wanted}`: {why}"),
                    );
                }
            }
            syn::ReceiverKind::Value => fail(
                errors,
                r,
                format!(
                    "a `#[{k}]` handler takes `{wanted}`, not `self` by value: the state machine \
                     lives on and handles the next command"
                ),
            ),
            _ => fail(
                errors,
                r,
                format!("a `#[{k}]` handler takes `{wanted}`, not a typed `self`"),
            ),
        },
        _ => fail(
            errors,
            &sig.ident,
            format!(
                "a `#[{k}]` handler is a method taking `{wanted}`; this associated function has no \
                 `self` receiver"
            ),
        ),
    }

    let mut args = Vec::new();
    let mut ctx = None;
    for (position, input) in sig
        .inputs
        .iter()
        .filter(|i| matches!(i, FnArg::Typed(_)))
        .enumerate()
    {
        let FnArg::Typed(pt) = input else { continue };
        if let Some((reference, mutable)) = ctx_shape(&pt.ty) {
            if !reference {
                fail(
                    errors,
                    &pt.ty,
                    format!(
                        "a `#[{k}]` handler takes the context by reference: `ctx: &Ctx`{} (it \
                         belongs to the runtime, which passes it to every handler of the entry)",
                        if kind == Kind::Write {
                            " or `ctx: &mut Ctx`"
                        } else {
                            ""
                        }
                    ),
                );
            } else if position != 0 {
                fail(
                    errors,
                    &pt.ty,
                    format!(
                        "the handler context must be the first argument after `self` \
                         (`fn {}(&{}self, ctx: &{}Ctx, ...)`): it is not part of the command",
                        sig.ident,
                        if kind == Kind::Write { "mut " } else { "" },
                        if mutable { "mut " } else { "" }
                    ),
                );
            } else if mutable && kind == Kind::Read {
                fail(
                    errors,
                    &pt.ty,
                    "a `#[read]` handler takes `ctx: &Ctx`, not `&mut Ctx`: a read describes the \
                     last applied entry and draws no random numbers (only a `#[write]`'s \
                     generator is replicated)"
                        .to_string(),
                );
            } else if matches!(&*pt.pat, Pat::Ident(_) | Pat::Wild(_)) {
                ctx = Some(if mutable { CtxArg::Mut } else { CtxArg::Shared });
            } else {
                fail(
                    errors,
                    &pt.pat,
                    "the handler context must be bound to a plain name (`ctx: &Ctx`)".to_string(),
                );
            }
            continue;
        }
        let ident = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => pi.ident.clone(),
            other => {
                fail(
                    errors,
                    other,
                    format!(
                        "a `#[{k}]` handler argument must be a plain name (`key: String`): each \
                         argument becomes a named field of the command; destructure it inside the \
                         body instead"
                    ),
                );
                continue;
            }
        };
        check_type(&pt.ty, "argument", errors);
        args.push(Arg {
            ident,
            ty: replace_self(pt.ty.to_token_stream(), self_ty),
            span: pt.ty.span(),
        });
    }

    let (output, output_span) = match &sig.output {
        ReturnType::Default => (quote!(()), sig.ident.span()),
        ReturnType::Type(_, ty) => {
            check_type(ty, "return type", errors);
            (replace_self(ty.to_token_stream(), self_ty), ty.span())
        }
    };

    let name = sig.ident.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    if RESERVED.contains(&name) {
        fail(
            errors,
            &sig.ident,
            format!(
                "a handler cannot be named `{name}`: each handler becomes a method of the \
                 generated client, which already has a method of that name (reserved: {}); \
                 rename the handler",
                RESERVED
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if name == "peer" {
        fail(
            errors,
            &sig.ident,
            "a handler cannot be named `peer`: the state machine's `peer()` (`PeerExt::peer`) builds \
             the peer that runs it, and an inherent method of that name would shadow it \
             (`Self::peer()` would call the handler); rename the handler"
                .to_string(),
        );
    }

    let mut docs = Vec::new();
    let mut cfgs = Vec::new();
    let mut lints = Vec::new();
    for a in &method.attrs {
        let p = a.path();
        if p.is_ident("doc") {
            docs.push(a.clone());
        } else if p.is_ident("cfg") {
            cfgs.push(a.clone());
        } else if ["allow", "warn", "deny", "forbid", "deprecated", "cfg_attr"]
            .iter()
            .any(|n| p.is_ident(n))
        {
            lints.push(a.clone());
        }
    }

    if errors.count() > before {
        return None;
    }
    let shard = match &attr.shard {
        None => None,
        Some(key) => {
            let found = args.iter().position(|a| a.ident == *key);
            if found.is_none() {
                errors.spanned(
                    key,
                    format!(
                        "`shard = {key}` names no argument of `{}`: the shard key is one of the \
                         handler's arguments (its value routes the command to a group)",
                        sig.ident
                    ),
                );
                return None;
            }
            found
        }
    };
    let variant = format_ident!(
        "{}",
        to_camel(&sig.ident.to_string()),
        span = sig.ident.span()
    );
    Some(Handler {
        kind,
        ident: sig.ident.clone(),
        variant,
        tag,
        policy: attr.policy,
        shard,
        ctx,
        args,
        output,
        output_span,
        docs,
        cfgs,
        lints,
    })
}

fn check_unique(
    handlers: &[Handler],
    explicit: &[Option<Span>],
    self_ident: &Option<Ident>,
    errors: &mut Errors,
) {
    let owner = self_ident
        .as_ref()
        .map(Ident::to_string)
        .unwrap_or_else(|| "the state machine".into());
    for (i, h) in handlers.iter().enumerate() {
        let earlier = &handlers[..i];
        if let Some(first) = earlier.iter().find(|o| o.ident == h.ident) {
            errors.spanned(
                &h.ident,
                format!(
                    "two handlers are named `{}` (a `#[{}]` and a `#[{}]`): each handler becomes a \
                     method of `{owner}Client`, so names must be unique across writes and reads; \
                     rename one",
                    h.ident,
                    first.kind.as_str(),
                    h.kind.as_str()
                ),
            );
            continue;
        }
        if let Some(first) = earlier
            .iter()
            .find(|o| o.kind == h.kind && o.variant == h.variant)
        {
            errors.spanned(
                &h.ident,
                format!(
                    "handlers `{}` and `{}` both become the variant `{}`; rename one",
                    first.ident, h.ident, h.variant
                ),
            );
        }
        if let Some(first) = earlier.iter().find(|o| o.kind == h.kind && o.tag == h.tag) {
            let k = h.kind.as_str();
            let how = |span: Option<Span>| {
                if span.is_some() {
                    format!("pinned with `tag = {}`", h.tag)
                } else {
                    format!(
                        "implicit tag {}: its position among the `#[{k}]` handlers",
                        h.tag
                    )
                }
            };
            let first_idx = handlers.iter().position(|o| std::ptr::eq(o, first));
            let first_how = how(first_idx.and_then(|j| explicit[j]));
            let span = explicit[i].unwrap_or_else(|| h.ident.span());
            errors.at(
                span,
                format!(
                    "duplicate `#[{k}]` tag {tag}: `{a}` ({first_how}) and `{b}` ({}) would be the \
                     same command on the wire; pin one of them to an unused tag with \
                     `#[{k}(tag = N)]`",
                    how(explicit[i]),
                    tag = h.tag,
                    a = first.ident,
                    b = h.ident,
                ),
            );
        }
    }
}
