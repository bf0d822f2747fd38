//! The command enums (`KvWrite`, `KvRead`: one variant per handler, holding
//! its arguments as named fields) and the output enums (`KvWriteOutput`,
//! `KvReadOutput`: one variant per handler, holding its return value).
//!
//! Variants carry the handler's `#[cfg]`s and docs. They derive nothing: the
//! wire impls are hand-written (`wire`), and a derived `Debug`/`Clone` would
//! demand more of the argument types than the contract does. `Debug` is
//! implemented by hand instead, for every enum: each field uses its type's
//! `Debug` when it has one and prints `<type name>` otherwise (chosen at the
//! field's concrete type by autoref specialization,
//! `raftkit::__private::DebugField`), so tests and logs can always print a
//! command and no handler argument type is required to be `Debug`.

use proc_macro2::TokenStream;

use super::{Names, local, of_kind};
use crate::model::{Handler, ImplModel, Kind};

/// The enum pattern (or expression) of a command variant binding each
/// argument to `__f0`, `__f1`, ...: `Kv::Put { key: __f0, value: __f1 }`.
pub fn command_pattern(enum_ident: &syn::Ident, h: &Handler, by_ref: bool) -> TokenStream {
    let variant = &h.variant;
    if h.args.is_empty() {
        return quote_internal!(#enum_ident::#variant);
    }
    let fields = h.args.iter().enumerate().map(|(i, a)| {
        let field = &a.ident;
        let bind = field_binding(i);
        if by_ref {
            quote_internal!(#field: ref #bind)
        } else {
            quote_internal!(#field: #bind)
        }
    });
    quote_internal!(#enum_ident::#variant { #(#fields),* })
}

/// `__f{i}`: the local an argument is bound to in generated code.
pub fn field_binding(i: usize) -> syn::Ident {
    local(&format!("__f{i}"))
}

fn docs_or(h: &Handler, default: String) -> TokenStream {
    if h.docs.is_empty() {
        quote_internal!(#[doc = #default])
    } else {
        let docs = &h.docs;
        quote_internal!(#(#docs)*)
    }
}

fn enum_pair(model: &ImplModel, names: &Names, kind: Kind) -> TokenStream {
    let ident = &model.ident;
    let (cmd, out) = names.of(kind);
    let k = kind.as_str();
    let cmd_variants = of_kind(model, kind).map(|h| {
        let variant = &h.variant;
        let cfgs = &h.cfgs;
        let docs = docs_or(h, format!("The `{}` handler.", h.ident));
        let tag_doc = format!("Wire tag: `{}`.", h.tag);
        if h.args.is_empty() {
            quote_internal! { #docs #[doc = ""] #[doc = #tag_doc] #(#cfgs)* #variant }
        } else {
            let fields = h.args.iter().map(|a| {
                let field = &a.ident;
                let ty = &a.ty;
                let doc = format!("The `{field}` argument.");
                quote_internal!(#[doc = #doc] #field: #ty)
            });
            quote_internal! {
                #docs #[doc = ""] #[doc = #tag_doc] #(#cfgs)* #variant { #(#fields),* }
            }
        }
    });
    let out_variants = of_kind(model, kind).map(|h| {
        let variant = &h.variant;
        let cfgs = &h.cfgs;
        let ty = &h.output;
        let doc = format!("What the `{}` handler returned.", h.ident);
        quote_internal! { #[doc = #doc] #(#cfgs)* #variant(#ty) }
    });
    let cmd_doc = format!(
        "The `#[{k}]` {what} of `{ident}`: one variant per handler. On the wire a value is \
         the tuple `(tag: u32, arguments...)`, so variants keep their meaning when handlers are \
         reordered or added.",
        what = if kind == Kind::Write {
            "commands"
        } else {
            "queries"
        }
    );
    let out_doc = format!(
        "What the `#[{k}]` handlers of `{ident}` return: one variant per handler, encoded as \
         `(tag: u32, value)`."
    );
    quote_internal! {
        #[doc = #cmd_doc]
        #[allow(private_interfaces, clippy::large_enum_variant)]
        pub enum #cmd { #(#cmd_variants,)* }

        #[doc = #out_doc]
        #[allow(private_interfaces, clippy::large_enum_variant)]
        pub enum #out { #(#out_variants,)* }
    }
}

/// The four enums of a state machine, with their `Debug` impls.
pub fn enums(model: &ImplModel, names: &Names) -> TokenStream {
    let write = enum_pair(model, names, Kind::Write);
    let read = enum_pair(model, names, Kind::Read);
    let mut debug = TokenStream::new();
    for kind in [Kind::Write, Kind::Read] {
        let (cmd, out) = names.of(kind);
        debug.extend(debug_impl(model, kind, cmd, false));
        debug.extend(debug_impl(model, kind, out, true));
    }
    quote_internal!(#write #read #debug)
}

/// `Debug` for a command enum (`Put { key: "k", value: "v" }`) or an output
/// enum (`Put(Some("v"))`), each field through `DebugField`.
fn debug_impl(model: &ImplModel, kind: Kind, ident: &syn::Ident, output: bool) -> TokenStream {
    let p = quote_internal!(::raftkit::__private);
    let field = |bind: &syn::Ident| {
        quote_internal! {
            &#p::DebugWith(|__f: &mut ::core::fmt::Formatter<'_>| {
                (&#p::DebugField(#bind)).debug_field(__f)
            })
        }
    };
    let arms = of_kind(model, kind).map(|h| {
        let cfgs = &h.cfgs;
        let variant = &h.variant;
        let name = variant.to_string();
        if output {
            let bind = field_binding(0);
            let value = field(&bind);
            quote_internal! {
                #(#cfgs)*
                #ident::#variant(ref #bind) => __formatter.debug_tuple(#name).field(#value).finish(),
            }
        } else {
            let pattern = command_pattern(ident, h, true);
            let fields = h.args.iter().enumerate().map(|(i, a)| {
                let field_name = a.ident.to_string();
                let value = field(&field_binding(i));
                quote_internal!(.field(#field_name, #value))
            });
            if h.args.is_empty() {
                quote_internal! { #(#cfgs)* #pattern => __formatter.write_str(#name), }
            } else {
                quote_internal! {
                    #(#cfgs)*
                    #pattern => __formatter.debug_struct(#name) #(#fields)* .finish(),
                }
            }
        }
    });
    quote_internal! {
        #[automatically_derived]
        impl ::core::fmt::Debug for #ident {
            fn fmt(&self, __formatter: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                #[allow(unused_imports)]
                use #p::{DebugViaDebug as _, DebugViaName as _};
                #[allow(unreachable_patterns)]
                match *self {
                    #(#arms)*
                }
            }
        }
    }
}
