//! The struct half: `impl Derived` carrying the name and the default error
//! policy, and the check that the impl half exists.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::model::{DeriveModel, Policy};

/// Tokens for a `ErrorPolicy` value.
pub fn policy_tokens(policy: Policy) -> TokenStream {
    match policy {
        Policy::Skip => quote!(::raftkit::ErrorPolicy::Skip),
        Policy::Halt => quote!(::raftkit::ErrorPolicy::Halt),
    }
}

/// What `#[derive(StateMachine)]` emits.
pub fn derive(model: &DeriveModel) -> TokenStream {
    let ident = &model.ident;
    let name = &model.name;
    let policy = policy_tokens(model.policy);
    let check = quote_spanned! {ident.span()=>
        const _: () = ::raftkit::__private::require_handlers::<#ident>();
    };
    quote! {
        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl ::raftkit::__private::Derived for #ident {
            const NAME: &'static str = #name;
            const ERROR_POLICY: ::raftkit::ErrorPolicy = #policy;
        }
        #check
    }
}
