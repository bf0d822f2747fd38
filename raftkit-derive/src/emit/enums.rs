//! The command enums (`KvWrite`, `KvRead`: one variant per handler, holding
//! its arguments as named fields) and the output enums (`KvWriteOutput`,
//! `KvReadOutput`: one variant per handler, holding its return value).
//!
//! Variants carry the handler's `#[cfg]`s and docs. They derive nothing: the
//! wire impls are hand-written (`wire`), and `Debug`/`Clone` would demand
//! more of the argument types than the contract does.

use proc_macro2::TokenStream;
use quote::quote;

use super::{Names, of_kind};
use crate::model::{Handler, ImplModel, Kind};

/// The enum pattern (or expression) of a command variant binding each
/// argument to `__f0`, `__f1`, ...: `Kv::Put { key: __f0, value: __f1 }`.
pub fn command_pattern(enum_ident: &syn::Ident, h: &Handler, by_ref: bool) -> TokenStream {
    let variant = &h.variant;
    if h.args.is_empty() {
        return quote!(#enum_ident::#variant);
    }
    let fields = h.args.iter().enumerate().map(|(i, a)| {
        let field = &a.ident;
        let bind = field_binding(i);
        if by_ref {
            quote!(#field: ref #bind)
        } else {
            quote!(#field: #bind)
        }
    });
    quote!(#enum_ident::#variant { #(#fields),* })
}

/// `__f{i}`: the local an argument is bound to in generated code.
pub fn field_binding(i: usize) -> syn::Ident {
    quote::format_ident!("__f{}", i)
}

fn docs_or(h: &Handler, default: String) -> TokenStream {
    if h.docs.is_empty() {
        quote!(#[doc = #default])
    } else {
        let docs = &h.docs;
        quote!(#(#docs)*)
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
            quote! { #docs #[doc = ""] #[doc = #tag_doc] #(#cfgs)* #variant }
        } else {
            let fields = h.args.iter().map(|a| {
                let field = &a.ident;
                let ty = &a.ty;
                let doc = format!("The `{field}` argument.");
                quote!(#[doc = #doc] #field: #ty)
            });
            quote! { #docs #[doc = ""] #[doc = #tag_doc] #(#cfgs)* #variant { #(#fields),* } }
        }
    });
    let out_variants = of_kind(model, kind).map(|h| {
        let variant = &h.variant;
        let cfgs = &h.cfgs;
        let ty = &h.output;
        let doc = format!("What the `{}` handler returned.", h.ident);
        quote! { #[doc = #doc] #(#cfgs)* #variant(#ty) }
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
    quote! {
        #[doc = #cmd_doc]
        #[allow(private_interfaces, clippy::large_enum_variant)]
        pub enum #cmd { #(#cmd_variants,)* }

        #[doc = #out_doc]
        #[allow(private_interfaces, clippy::large_enum_variant)]
        pub enum #out { #(#out_variants,)* }
    }
}

/// The four enums of a state machine.
pub fn enums(model: &ImplModel, names: &Names) -> TokenStream {
    let write = enum_pair(model, names, Kind::Write);
    let read = enum_pair(model, names, Kind::Read);
    quote!(#write #read)
}
