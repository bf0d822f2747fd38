//! Hand-written serde impls for the generated enums: the stable wire format.
//!
//! serde's derived enum impls identify a variant by its declaration index,
//! which would silently change the meaning of logged commands when a handler
//! is inserted or reordered. Instead every value is a tuple
//! `(tag: u32, fields...)`: in postcard, a varint tag followed by the fields
//! in argument order. Tags come from the model (declaration order within the
//! kind by default, `tag = N` to pin). Decoding reads the tag first and an
//! unknown tag is a decode error, never another variant.
//!
//! The serialize/deserialize function of a field is spanned at the field's
//! type, so a type that is not `Serialize`/`Deserialize` is reported where it
//! was written; its arguments are the macro's own locals (see `emit`).

use proc_macro2::{Span, TokenStream};
use quote::quote_spanned;
use syn::Ident;

use super::enums::field_binding;
use super::{Names, of_kind};
use crate::model::{ImplModel, Kind};

/// One variant as the wire impls see it.
struct WireVariant<'a> {
    variant: &'a Ident,
    tag: u32,
    cfgs: &'a [syn::Attribute],
    shape: Shape<'a>,
}

enum Shape<'a> {
    /// A command: named fields (none for a unit variant).
    Named(Vec<(&'a Ident, &'a TokenStream, Span)>),
    /// An output: one unnamed field.
    Single(&'a TokenStream, Span),
}

impl WireVariant<'_> {
    fn fields(&self) -> Vec<(&TokenStream, Span)> {
        match &self.shape {
            Shape::Named(f) => f.iter().map(|(_, ty, span)| (*ty, *span)).collect(),
            Shape::Single(ty, span) => vec![(*ty, *span)],
        }
    }

    /// Pattern/constructor with the fields bound to `__f0..`.
    fn pattern(&self, enum_ident: &Ident, by_ref: bool) -> TokenStream {
        let variant = self.variant;
        let r = by_ref.then(|| quote_internal!(ref));
        match &self.shape {
            Shape::Named(f) if f.is_empty() => quote_internal!(#enum_ident::#variant),
            Shape::Named(f) => {
                let fields = f.iter().enumerate().map(|(i, (name, _, _))| {
                    let bind = field_binding(i);
                    quote_internal!(#name: #r #bind)
                });
                quote_internal!(#enum_ident::#variant { #(#fields),* })
            }
            Shape::Single(..) => {
                let bind = field_binding(0);
                quote_internal!(#enum_ident::#variant(#r #bind))
            }
        }
    }
}

fn serde_impls(enum_ident: &Ident, what: &str, variants: &[WireVariant<'_>]) -> TokenStream {
    let serde = quote_internal!(::raftkit::__private::serde);
    let max_len = 1 + variants.iter().map(|v| v.fields().len()).max().unwrap_or(0);

    let ser_arms = variants.iter().map(|v| {
        let pattern = v.pattern(enum_ident, true);
        let cfgs = v.cfgs;
        let tag = v.tag;
        let fields = v.fields();
        let len = 1 + fields.len();
        let elements = fields.iter().enumerate().map(|(i, (ty, span))| {
            let bind = field_binding(i);
            let serialize_element = quote_spanned! {*span=>
                #serde::ser::SerializeTuple::serialize_element::<#ty>
            };
            quote_internal! {
                #serialize_element(&mut __tuple, #bind)?;
            }
        });
        quote_internal! {
            #(#cfgs)*
            #pattern => {
                let mut __tuple = #serde::Serializer::serialize_tuple(__serializer, #len)?;
                #serde::ser::SerializeTuple::serialize_element(&mut __tuple, &#tag)?;
                #(#elements)*
                #serde::ser::SerializeTuple::end(__tuple)
            }
        }
    });

    let de_arms = variants.iter().map(|v| {
        let ctor = v.pattern(enum_ident, false);
        let cfgs = v.cfgs;
        let tag = v.tag;
        let reads = v.fields().into_iter().enumerate().map(|(i, (ty, span))| {
            let bind = field_binding(i);
            let index = i + 1;
            let next_element = quote_spanned! {span=>
                #serde::de::SeqAccess::next_element::<#ty>
            };
            quote_internal! {
                let #bind = match #next_element(&mut __seq)? {
                    ::core::option::Option::Some(__value) => __value,
                    ::core::option::Option::None => {
                        return ::core::result::Result::Err(
                            #serde::de::Error::invalid_length(#index, &self),
                        );
                    }
                };
            }
        });
        quote_internal! {
            #(#cfgs)*
            #tag => {
                #(#reads)*
                ::core::result::Result::Ok(#ctor)
            }
        }
    });

    let expecting = format!("a {what}: a u32 tag followed by its fields");
    let unknown = format!("unknown {what} tag {{}} (from another version of the schema?)");
    quote_internal! {
        #[automatically_derived]
        impl #serde::Serialize for #enum_ident {
            fn serialize<__S>(
                &self,
                __serializer: __S,
            ) -> ::core::result::Result<<__S as #serde::Serializer>::Ok, <__S as #serde::Serializer>::Error>
            where
                __S: #serde::Serializer,
            {
                match *self {
                    #(#ser_arms)*
                }
            }
        }

        #[automatically_derived]
        impl<'de> #serde::Deserialize<'de> for #enum_ident {
            fn deserialize<__D>(
                __deserializer: __D,
            ) -> ::core::result::Result<Self, <__D as #serde::Deserializer<'de>>::Error>
            where
                __D: #serde::Deserializer<'de>,
            {
                struct __Visitor;
                impl<'de> #serde::de::Visitor<'de> for __Visitor {
                    type Value = #enum_ident;

                    fn expecting(
                        &self,
                        __formatter: &mut ::core::fmt::Formatter<'_>,
                    ) -> ::core::fmt::Result {
                        ::core::fmt::Formatter::write_str(__formatter, #expecting)
                    }

                    fn visit_seq<__A>(
                        self,
                        mut __seq: __A,
                    ) -> ::core::result::Result<#enum_ident, <__A as #serde::de::SeqAccess<'de>>::Error>
                    where
                        __A: #serde::de::SeqAccess<'de>,
                    {
                        let __tag: u32 = match #serde::de::SeqAccess::next_element::<u32>(&mut __seq)? {
                            ::core::option::Option::Some(__tag) => __tag,
                            ::core::option::Option::None => {
                                return ::core::result::Result::Err(
                                    #serde::de::Error::invalid_length(0, &self),
                                );
                            }
                        };
                        match __tag {
                            #(#de_arms)*
                            __other => ::core::result::Result::Err(
                                #serde::de::Error::custom(::core::format_args!(#unknown, __other)),
                            ),
                        }
                    }
                }
                #serde::Deserializer::deserialize_tuple(__deserializer, #max_len, __Visitor)
            }
        }
    }
}

/// The serde impls of the four enums.
pub fn wire(model: &ImplModel, names: &Names) -> TokenStream {
    let mut out = TokenStream::new();
    for kind in [Kind::Write, Kind::Read] {
        let (cmd, output) = names.of(kind);
        let commands: Vec<WireVariant<'_>> = of_kind(model, kind)
            .map(|h| WireVariant {
                variant: &h.variant,
                tag: h.tag,
                cfgs: &h.cfgs,
                shape: Shape::Named(h.args.iter().map(|a| (&a.ident, &a.ty, a.span)).collect()),
            })
            .collect();
        let outputs: Vec<WireVariant<'_>> = of_kind(model, kind)
            .map(|h| WireVariant {
                variant: &h.variant,
                tag: h.tag,
                cfgs: &h.cfgs,
                shape: Shape::Single(&h.output, h.output_span),
            })
            .collect();
        let (cmd_what, out_what) = match kind {
            Kind::Write => ("write command", "write output"),
            Kind::Read => ("read query", "read output"),
        };
        out.extend(serde_impls(cmd, cmd_what, &commands));
        out.extend(serde_impls(output, out_what, &outputs));
    }
    out
}
