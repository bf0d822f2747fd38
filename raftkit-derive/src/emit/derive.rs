//! The struct half: `impl Derived` carrying the name and the default error
//! policy, and the check that the impl half exists.

use proc_macro2::TokenStream;
use quote::quote_spanned;

use crate::model::{DeriveModel, Policy};

/// Tokens for a `ErrorPolicy` value.
pub fn policy_tokens(policy: Policy) -> TokenStream {
    match policy {
        Policy::Skip => quote_internal!(::raftkit::ErrorPolicy::Skip),
        Policy::Halt => quote_internal!(::raftkit::ErrorPolicy::Halt),
    }
}

/// What `#[derive(StateMachine)]` emits.
pub fn derive(model: &DeriveModel) -> TokenStream {
    let ident = &model.ident;
    let name = &model.name;
    let policy = policy_tokens(model.policy);
    let version = model
        .version
        .map(|v| quote_internal!(const STATE_VERSION: u32 = #v;));
    let migrate = model.migrate.as_ref().map(|path| {
        quote_internal! {
            fn migrate(
                from_version: u32,
                bytes: &[u8],
            ) -> ::core::result::Result<Self, ::raftkit::state_machine::CodecError> {
                #path(from_version, bytes)
            }
        }
    });
    // A clone of the state, serialized on the runtime's snapshot thread.
    // The clone is spanned at the setting: a state that is not `Clone` is
    // reported there.
    let snapshot_copy = model.snapshot_clone.map(|span| {
        let clone = quote_spanned! {span=> <Self as ::core::clone::Clone>::clone};
        quote_internal! {
            fn snapshot_copy(
                &self,
            ) -> ::core::option::Option<::raftkit::state_machine::SnapshotCopy> {
                let copy: Self = #clone(self);
                ::core::option::Option::Some(::raftkit::state_machine::SnapshotCopy::writing(
                    move |buf| {
                        ::raftkit::schema::encode_state_onto::<Self>(
                            <Self as ::raftkit::__private::Derived>::STATE_VERSION,
                            &copy,
                            buf,
                        )
                    },
                ))
            }
        }
    });
    let check = quote_spanned! {ident.span()=>
        const _: () = ::raftkit::__private::require_handlers::<#ident>();
    };
    quote_internal! {
        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl ::raftkit::__private::Derived for #ident {
            const NAME: &'static str = #name;
            const ERROR_POLICY: ::raftkit::ErrorPolicy = #policy;
            #version
            #migrate
            #snapshot_copy
        }
        #check
    }
}
