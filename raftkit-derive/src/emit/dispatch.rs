//! `impl ::raftkit::StateMachine`: dispatch of commands and queries to the
//! handlers, the per-command error policy, the schema fingerprint and
//! snapshots through postcard.
//!
//! The impl reads the name and default policy from the derive half through
//! `<Kv as ::raftkit::__private::Derived>`, spanned at the impl's self type:
//! without `#[derive(StateMachine)]` every such use fails with the same
//! message at the same place, which the compiler reports once.
//!
//! Where a call is spanned at a user's type to report an error there, only
//! its path is: its arguments are the macro's own locals (see `emit`).

use proc_macro2::TokenStream;
use quote::quote_spanned;
use syn::spanned::Spanned;

use super::derive::policy_tokens;
use super::enums::{command_pattern, field_binding};
use super::fingerprint::handler_hash;
use super::{Names, of_kind};
use crate::model::{ImplModel, Kind};

/// The `StateMachine` impl and the `Handlers` marker.
pub fn dispatch(model: &ImplModel, names: &Names) -> TokenStream {
    let self_ty = &model.self_ty;
    let derived = quote_spanned! {self_ty.span()=>
        <#self_ty as ::raftkit::__private::Derived>
    };
    let Names {
        write,
        read,
        write_output,
        read_output,
        ..
    } = names;

    let arms = |kind: Kind, recv: TokenStream| {
        let (cmd, out) = names.of(kind);
        of_kind(model, kind)
            .map(|h| {
                let cfgs = &h.cfgs;
                let pattern = command_pattern(cmd, h, false);
                let method = &h.ident;
                let variant = &h.variant;
                let binds = (0..h.args.len()).map(field_binding);
                let ctx = h.ctx.map(|_| quote_internal!(, __ctx));
                quote_internal! {
                    #(#cfgs)*
                    #pattern => #out::#variant(<#self_ty>::#method(#recv #ctx #(, #binds)*)),
                }
            })
            .collect::<Vec<_>>()
    };
    let apply_arms = arms(Kind::Write, quote_internal!(self));
    let query_arms = arms(Kind::Read, quote_internal!(self));

    let policy_arms = of_kind(model, Kind::Write).map(|h| {
        let cfgs = &h.cfgs;
        let variant = &h.variant;
        let pattern = if h.args.is_empty() {
            quote_internal!(#write::#variant)
        } else {
            quote_internal!(#write::#variant { .. })
        };
        let policy = match h.policy {
            Some(p) => policy_tokens(p),
            None => quote_internal!(#derived::ERROR_POLICY),
        };
        quote_internal! { #(#cfgs)* #pattern => #policy, }
    });

    let name_arms = |kind: Kind| {
        let (cmd, _) = names.of(kind);
        of_kind(model, kind)
            .map(|h| {
                let cfgs = &h.cfgs;
                let variant = &h.variant;
                let name = h.ident.to_string();
                let name = name.strip_prefix("r#").unwrap_or(&name).to_string();
                let pattern = if h.args.is_empty() {
                    quote_internal!(#cmd::#variant)
                } else {
                    quote_internal!(#cmd::#variant { .. })
                };
                quote_internal! { #(#cfgs)* #pattern => #name, }
            })
            .collect::<Vec<_>>()
    };
    // The shard key of each command (`#[write(shard = key)]`), `None` for
    // a handler without one.
    let shard_arms = |kind: Kind| {
        let (cmd, _) = names.of(kind);
        of_kind(model, kind)
            .map(|h| {
                let cfgs = &h.cfgs;
                let variant = &h.variant;
                match h.shard.and_then(|i| h.args.get(i)) {
                    Some(arg) => {
                        let field = &arg.ident;
                        let ty = &arg.ty;
                        // A key type that is not `ShardKey` is reported at it.
                        let shard_bytes = quote_spanned! {arg.span=>
                            <#ty as ::raftkit::multi::ShardKey>::shard_bytes
                        };
                        quote_internal! {
                            #(#cfgs)*
                            #cmd::#variant { #field: ref __key, .. } =>
                                ::core::option::Option::Some(#shard_bytes(__key)),
                        }
                    }
                    None => {
                        let pattern = if h.args.is_empty() {
                            quote_internal!(#cmd::#variant)
                        } else {
                            quote_internal!(#cmd::#variant { .. })
                        };
                        quote_internal! { #(#cfgs)* #pattern => ::core::option::Option::None, }
                    }
                }
            })
            .collect::<Vec<_>>()
    };
    let write_shards = shard_arms(Kind::Write);
    let read_shards = shard_arms(Kind::Read);
    let any_shard = model.handlers.iter().any(|h| h.shard.is_some());
    let shard_fns = any_shard.then(|| {
        quote_internal! {
            fn shard_key(command: &#write) -> ::core::option::Option<::std::vec::Vec<u8>> {
                match *command {
                    #(#write_shards)*
                }
            }

            fn read_shard_key(query: &#read) -> ::core::option::Option<::std::vec::Vec<u8>> {
                match *query {
                    #(#read_shards)*
                }
            }
        }
    });
    let write_names = name_arms(Kind::Write);
    let read_names = name_arms(Kind::Read);

    let folds = model.handlers.iter().map(|h| {
        let cfgs = &h.cfgs;
        let hash = handler_hash(h);
        quote_internal! {
            #(#cfgs)*
            {
                __hash = ::raftkit::__private::fingerprint_add(__hash, #hash);
            }
        }
    });

    // The structural schema: each handler's arguments as one tuple (the
    // fields of its command variant, in order) and its return type.
    let schema_handlers = model.handlers.iter().map(|h| {
        let cfgs = &h.cfgs;
        let kind = match h.kind {
            Kind::Write => quote_internal!(::raftkit::schema::HandlerKind::Write),
            Kind::Read => quote_internal!(::raftkit::schema::HandlerKind::Read),
        };
        let tag = h.tag;
        let name = h.ident.to_string();
        // Spanned at the types, like the wire impls' serde bounds: a type
        // that is not `Deserialize` is reported where it is written.
        // With their names: a swap of two arguments of one type is
        // refused (`raftkit::schema::Shape::check_compatible`).
        let args = h.args.iter().map(|a| {
            let ty = &a.ty;
            let arg = a.ident.to_string();
            let shape = quote_spanned! {a.span=> ::raftkit::schema::Shape::of::<#ty>()};
            quote_internal!((#arg, #shape))
        });
        let output = &h.output;
        let output = quote_spanned! {h.output_span=> ::raftkit::schema::Shape::of::<#output>()};
        quote_internal! {
            #(#cfgs)*
            __schema.push(
                #kind,
                #tag,
                #name,
                ::raftkit::schema::Shape::fields([#(#args),*]),
                #output,
            );
        }
    });

    // Spanned at the type: a state machine that is not Serialize +
    // DeserializeOwned is reported there. Snapshots carry the state version
    // (`raftkit::schema::state`).
    let state_shape = quote_spanned! {self_ty.span()=>
        ::raftkit::schema::Shape::of::<#self_ty>()
    };
    // `snapshot` goes through `snapshot_onto`: one place needs the state's
    // `Serialize`, so a state without it gets one error, not two. The
    // functions that need the state's serde impls are spanned at the type.
    let encode_state_onto = quote_spanned! {self_ty.span()=>
        ::raftkit::schema::encode_state_onto::<#self_ty>
    };
    let decode_state = quote_spanned! {self_ty.span()=>
        ::raftkit::schema::decode_state::<#self_ty>
    };

    // Commands and replies cross threads: check each type where it is
    // written (serde bounds are checked there by the wire impls).
    let send_checks = model.handlers.iter().flat_map(|h| {
        let cfgs = &h.cfgs;
        h.args
            .iter()
            .map(|a| (&a.ty, a.span))
            .chain([(&h.output, h.output_span)])
            .map(move |(ty, span)| {
                quote_spanned! {span=>
                    #(#cfgs)*
                    ::raftkit::__private::require_send::<#ty>();
                }
            })
    });

    quote_internal! {
        const _: () = {
            #(#send_checks)*
        };

        #[automatically_derived]
        impl ::raftkit::StateMachine for #self_ty {
            type Write = #write;
            type WriteOutput = #write_output;
            type Read = #read;
            type ReadOutput = #read_output;

            const NAME: &'static str = #derived::NAME;
            const SCHEMA_FINGERPRINT: u64 = {
                let mut __hash = ::raftkit::__private::fingerprint_start(#derived::NAME);
                #(#folds)*
                __hash
            };

            fn schema() -> ::raftkit::schema::Schema {
                static __SCHEMA: ::std::sync::OnceLock<::raftkit::schema::Schema> =
                    ::std::sync::OnceLock::new();
                __SCHEMA
                    .get_or_init(|| {
                        let mut __schema = ::raftkit::schema::Schema::new(
                            #derived::NAME,
                            #derived::STATE_VERSION,
                            #state_shape,
                        );
                        #(#schema_handlers)*
                        __schema
                    })
                    .clone()
            }

            #[allow(deprecated)]
            fn apply(&mut self, __ctx: &mut ::raftkit::Ctx, command: #write) -> #write_output {
                match command {
                    #(#apply_arms)*
                }
            }

            #[allow(deprecated)]
            fn query(&self, __ctx: &::raftkit::Ctx, query: #read) -> #read_output {
                match query {
                    #(#query_arms)*
                }
            }

            fn error_policy(command: &#write) -> ::raftkit::ErrorPolicy {
                match *command {
                    #(#policy_arms)*
                }
            }

            fn handler_name(command: &#write) -> &'static str {
                match *command {
                    #(#write_names)*
                }
            }

            fn query_name(query: &#read) -> &'static str {
                match *query {
                    #(#read_names)*
                }
            }

            #shard_fns

            fn snapshot(
                &self,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                ::raftkit::state_machine::CodecError,
            > {
                let mut buf = ::std::vec::Vec::with_capacity(4096);
                <Self as ::raftkit::StateMachine>::snapshot_onto(self, &mut buf)?;
                ::core::result::Result::Ok(buf)
            }

            fn snapshot_onto(
                &self,
                buf: &mut ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<(), ::raftkit::state_machine::CodecError> {
                #encode_state_onto(#derived::STATE_VERSION, self, buf)
            }

            fn restore(
                data: &[u8],
            ) -> ::core::result::Result<Self, ::raftkit::state_machine::CodecError> {
                #decode_state(#derived::STATE_VERSION, data, #derived::migrate)
            }

            fn snapshot_copy(
                &self,
            ) -> ::core::option::Option<::raftkit::state_machine::SnapshotCopy> {
                #derived::snapshot_copy(self)
            }
        }
    }
}
