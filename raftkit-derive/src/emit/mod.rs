//! Code generation: a checked model in, tokens out.
//!
//! Every path in the generated code is absolute (`::raftkit::...`,
//! `::core::...`) and serde is reached through `::raftkit::__private::serde`,
//! so the user's crate needs no `use` and may shadow any name.
//!
//! Hygiene. The code is made of the macro's own tokens and the user's
//! (types, handler and argument names, the `migrate` path), and the user's
//! may come from anywhere, a `macro_rules!` expansion included, each with
//! its own hygiene. So:
//! - the macro writes its own tokens at `Span::mixed_site()`
//!   (`quote_internal!`, `local`): every local (`self` included) is
//!   declared and used at that one span, so the user's tokens, wherever
//!   they come from, can neither see nor capture it. A local is never
//!   written at a user token's span: a `quote_spanned!` at a user's type
//!   (there so that an unmet bound is reported at the type) holds a path
//!   and types only, and the call's arguments are written outside it;
//! - generic parameters and items local to a function are not hygienic
//!   under any stable span, so a user type of the same name would be
//!   captured by them inside the generated code: they have names no user
//!   type plausibly has, starting with `__` (`__Submit`, `__Addrs`, serde's
//!   `__S`, `__D`, `__A`, `__Visitor`).
//!
//! For a state machine `Kv` the generated items are (see `crate` docs):
//! `KvWrite`, `KvRead` (commands), `KvWriteOutput`, `KvReadOutput` (replies),
//! their wire impls (`wire`), `impl StateMachine for Kv` (`dispatch`) and
//! `KvClient<__Submit>` (`client`).

/// `quote!` for the macro's own code: the tokens written in the macro call
/// are spanned at `Span::mixed_site()`, interpolated ones keep their spans.
/// Every generated item and local goes through it (see the module docs).
/// Defined before the submodules, which see it by textual scope.
macro_rules! quote_internal {
    ($($tt:tt)*) => {
        ::quote::quote_spanned!(::proc_macro2::Span::mixed_site()=> $($tt)*)
    };
}

mod client;
mod derive;
mod dispatch;
mod enums;
pub mod fingerprint;
mod wire;

use proc_macro2::{Span, TokenStream};
use quote::format_ident;
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

/// A local of the generated code whose name is computed (`__f0`, `__f1`,
/// ...): spanned like every token of `quote_internal!`, like the generated
/// code's other locals.
pub fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
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
    quote_internal! {
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
    quote_internal! {
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
    quote_internal! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        struct #name;
    }
}
