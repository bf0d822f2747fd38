//! Code generation: a checked model in, tokens out.
//!
//! Every path in the generated code is absolute (`::raftkit::...`,
//! `::core::...`) and serde is reached through `::raftkit::__private::serde`,
//! so the user's crate needs no `use` and may shadow any name. Generated
//! locals start with `__` so they cannot capture a handler's argument names.
//! For a state machine `Kv` the generated items are (see `crate` docs):
//! `KvWrite`, `KvRead` (commands), `KvWriteOutput`, `KvReadOutput` (replies),
//! their wire impls (`wire`), `impl StateMachine for Kv` (`dispatch`) and
//! `KvClient<S>` (`client`).

mod client;
mod derive;
mod dispatch;
mod enums;
pub mod fingerprint;
mod wire;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use crate::model::{Handler, ImplModel, Kind};

pub use derive::derive;

/// The names of the generated items of one state machine.
pub struct Names {
    /// `KvWrite`.
    pub write: Ident,
    /// `KvRead`.
    pub read: Ident,
    /// `KvWriteOutput`.
    pub write_output: Ident,
    /// `KvReadOutput`.
    pub read_output: Ident,
    /// `KvClient`.
    pub client: Ident,
}

impl Names {
    fn new(ident: &Ident) -> Self {
        let span = ident.span();
        Names {
            write: format_ident!("{}Write", ident, span = span),
            read: format_ident!("{}Read", ident, span = span),
            write_output: format_ident!("{}WriteOutput", ident, span = span),
            read_output: format_ident!("{}ReadOutput", ident, span = span),
            client: format_ident!("{}Client", ident, span = span),
        }
    }

    /// The command enum and the output enum of `kind`.
    pub fn of(&self, kind: Kind) -> (&Ident, &Ident) {
        match kind {
            Kind::Write => (&self.write, &self.write_output),
            Kind::Read => (&self.read, &self.read_output),
        }
    }
}

/// The handlers of one kind, in declaration order.
pub fn of_kind(model: &ImplModel, kind: Kind) -> impl Iterator<Item = &Handler> {
    model.handlers.iter().filter(move |h| h.kind == kind)
}

/// Everything `#[raftkit::state_machine]` adds next to the impl block.
pub fn state_machine(model: &ImplModel) -> TokenStream {
    let names = Names::new(&model.ident);
    let enums = enums::enums(model, &names);
    let wire = wire::wire(model, &names);
    let dispatch = dispatch::dispatch(model, &names);
    let client = client::client(model, &names);
    quote! {
        #enums
        #wire
        #dispatch
        #client
    }
}

/// The marker impl that tells the derive half an impl block exists. Emitted
/// on the error path too, so that a broken impl block does not add a second,
/// misleading "missing `#[raftkit::state_machine]`" error.
pub fn handlers_marker(item: &syn::ItemImpl) -> TokenStream {
    if item.trait_.is_some() {
        return TokenStream::new();
    }
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let once = one_impl_block_guard(self_ty);
    quote! {
        #once
        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl #impl_generics ::raftkit::__private::Handlers for #self_ty #where_clause {}
    }
}

/// A state machine has one `#[raftkit::state_machine]` impl block. A macro
/// expansion cannot see the others, so a second block is caught by the
/// compiler: this item, defined by every block, is then defined twice, and
/// its name (which the "defined multiple times" error quotes, at the second
/// block's type) says what to do. It comes first so the compiler reports
/// it before the duplicate generated enums.
fn one_impl_block_guard(self_ty: &syn::Type) -> TokenStream {
    let syn::Type::Path(p) = self_ty else {
        return TokenStream::new();
    };
    let Some(last) = p.path.segments.last() else {
        return TokenStream::new();
    };
    let name = format_ident!(
        "{}_has_a_second_raftkit_state_machine_impl_block__put_all_its_handlers_in_one",
        last.ident,
        span = last.ident.span()
    );
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        struct #name;
    }
}
