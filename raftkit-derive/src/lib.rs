//! Procedural macros for [raftkit](https://docs.rs/raftkit): replicated
//! state machines from plain structs. Use them through `raftkit`
//! (`raftkit::StateMachine`, `raftkit::state_machine`, `raftkit::prelude`),
//! whose crate docs hold the user guide; this page describes the macros'
//! contract and how they are built.
//!
//! # The two halves
//!
//! A derive cannot see methods, so a state machine takes two macros:
//!
//! - `#[derive(StateMachine)]` on the struct (or enum) reads
//!   `#[raftkit(name = "...", on_error = "skip" | "halt")]` and emits
//!   `impl raftkit::__private::Derived`, carrying the name (default: the type
//!   name in snake case) and the default error policy (default: `skip`).
//! - `#[raftkit::state_machine]` on the inherent impl block reads its
//!   `#[write]` (`&mut self`) and `#[read]` (`&self`) methods and emits the
//!   command and output enums, their wire format, `impl raftkit::StateMachine`
//!   and the typed client.
//!
//! The halves meet through traits: the `StateMachine` impl reads the name and
//! policy from `Derived` (so a missing derive is a compile error saying to add
//! it), and the derive requires the `Handlers` marker that the impl-block
//! macro emits (so a missing impl block is a compile error saying to add it).
//!
//! # Generated items, for a state machine `Kv`
//!
//! - `KvWrite` / `KvRead`: one variant per handler (CamelCase), holding the
//!   arguments as named fields; `KvWriteOutput` / `KvReadOutput`: one
//!   variant per handler holding its return value.
//! - `impl raftkit::StateMachine for Kv`: dispatch, `error_policy` per
//!   command (`#[write(on_error = "halt")]` overrides the struct's), `NAME`,
//!   `SCHEMA_FINGERPRINT`, `schema()` (the structural schema: each
//!   handler's kind, tag and argument and return shapes, traced once from
//!   the types and cached), and snapshots as postcard of the whole struct
//!   behind a state-version header (the struct must be
//!   `Serialize + DeserializeOwned`; `#[raftkit(version = N, migrate = path)]`
//!   sets the version and the restore of older ones).
//! - `#[write(shard = key)]` / `#[read(shard = key)]` name the argument a
//!   sharded client routes the command by: the impl then overrides
//!   `StateMachine::shard_key` / `read_shard_key` (the bytes of that
//!   argument through `raftkit::multi::ShardKey`, `None` for handlers
//!   without one); without any, the trait's defaults (`None`) stay. A key
//!   that is not an argument is a compile error.
//! - `KvClient<__Submit: raftkit::client::Submit>`: `KvClient::new(submit)`
//!   and one `async fn` per handler returning `Result<Ret, raftkit::Error>`.
//!
//! # Wire stability
//!
//! Each handler has a tag: its index among the handlers of its kind in
//! declaration order, or `#[write(tag = N)]` / `#[read(tag = N)]`. Two
//! handlers of one kind with the same tag (pinned or implicit) are a compile
//! error. Commands and outputs are serialized as the tuple
//! `(tag: u32, fields...)` by hand-written serde impls (in postcard: a varint
//! tag, then the fields), never by variant index; an unknown tag fails to
//! decode. So a new handler appended at the end, or inserted anywhere with
//! its older neighbours pinned, leaves old log entries meaning what they
//! meant. A `#[cfg]`'d-out handler keeps its implicit tag slot, so features
//! never shift tags. `SCHEMA_FINGERPRINT` (FNV-1a over the name and every
//! handler's kind, tag, name, argument names and types and return type)
//! changes with any change of the schema; compatibility is decided on the
//! structural schema instead (`raftkit::schema`).
//!
//! # Limits
//!
//! - Generic state machines (and generic impl blocks) are rejected: the
//!   command enums and fingerprint need one concrete type. Wrap an
//!   instantiation in a struct of its own.
//! - Handlers cannot be `async`, generic, `unsafe` or take `self` by value;
//!   arguments must be plain names with owned types that are
//!   `Serialize + DeserializeOwned + Send + 'static`, as must return types.
//! - Handler names `new`, `inner`, `into_inner`, `connect`, `connect_with`,
//!   `write_once`, `close`, `clone`, `clone_from`, `to_owned`, `into`,
//!   `try_into` and `type_id` are taken by the client.
//! - The handler context is recognised by name, as a macro cannot resolve
//!   types: a parameter whose type's last path segment is `Ctx` (`&Ctx`,
//!   `&mut raftkit::Ctx`, `&my::Ctx`) is taken as the context, so no user
//!   type passed to a handler may be named `Ctx`.
//! - Borrows nested in argument and return types (`Option<&str>`,
//!   `Cow<'a, str>`) are rejected by the macro, not left to serde's bounds.
//! - One `#[raftkit::state_machine]` block per type: each defines a guard
//!   item named `<Type>_has_a_second_raftkit_state_machine_impl_block__...`,
//!   so a second block's first error says what is wrong.
//! - The generated enums implement `Debug` by hand: a field of a type
//!   without `Debug` prints its type name (autoref specialization at the
//!   concrete type), so `Debug` is never demanded of argument types.
//!
//! # Structure
//!
//! Like serde_derive: `model` parses syn trees into a checked model,
//! collecting every error (`errors`); `emit` turns the model into tokens.
//! The macros never panic; on errors `#[raftkit::state_machine]` re-emits the
//! impl block (with `#[write]`/`#[read]` stripped) next to the errors so that
//! IDEs and the rest of the crate keep working.

extern crate proc_macro;

mod case;
pub(crate) mod emit;
pub(crate) mod errors;
pub(crate) mod model;
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;

use errors::Errors;

/// Derives the struct half of a raftkit state machine.
///
/// Settings: `#[raftkit(name = "kv", on_error = "skip", version = 2, migrate = path,
/// snapshot = "clone")]`
/// (`version`/`migrate`: the state's snapshot version and the function that
/// restores older ones, `fn(u32, &[u8]) -> Result<Self, CodecError>`;
/// `snapshot = "clone"`: a snapshot serializes a clone of the state on the
/// snapshot thread while the apply thread goes on, for a `Clone` state whose
/// clone is cheap, see `StateMachine::snapshot_copy`). `name` is the
/// state machine's name (default: the type name in snake case); `on_error`
/// is what a panicking `#[write]` handler does: `"skip"` (the default)
/// answers the caller with `raftkit::Error::Handler` and goes on, `"halt"`
/// stops applying on the node. Must be paired with `#[raftkit::state_machine]`
/// on the type's impl block.
#[proc_macro_derive(StateMachine, attributes(raftkit))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    derive_impl(input.into()).into()
}

fn derive_impl(input: TokenStream2) -> TokenStream2 {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Errors::default();
    let model = model::parse_derive(&input, &mut errors);
    // Even with errors in the settings, emit the impl (with defaults) so the
    // other half does not report a second, misleading error.
    let tokens = model.as_ref().map(emit::derive).unwrap_or_default();
    let errors = errors.to_compile_errors();
    quote!(#tokens #errors)
}

/// Turns an impl block's `#[write]` and `#[read]` methods into a replicated
/// state machine: command enums, `impl raftkit::StateMachine` and a typed
/// client. Must be paired with `#[derive(StateMachine)]` on the type.
///
/// Handler attributes: `#[write]`, `#[write(tag = N, on_error = "halt")]`,
/// `#[read]`, `#[read(tag = N)]`.
#[proc_macro_attribute]
pub fn state_machine(args: TokenStream, input: TokenStream) -> TokenStream {
    state_machine_impl(args.into(), input.into()).into()
}

fn state_machine_impl(args: TokenStream2, input: TokenStream2) -> TokenStream2 {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.spanned(
            &args,
            "`#[raftkit::state_machine]` takes no arguments: put settings on the struct \
             (`#[raftkit(name = \"...\", on_error = \"...\")]`) or on handlers \
             (`#[write(tag = N)]`)",
        );
    }
    let mut item: syn::ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(parse_error) => {
            if syn::parse2::<syn::Item>(input.clone()).is_ok() {
                errors.spanned(
                    &input,
                    "`#[raftkit::state_machine]` goes on the impl block of a state machine \
                     (`impl Kv { ... }`) whose struct has `#[derive(StateMachine)]`",
                );
            } else {
                errors.push(parse_error);
            }
            let errors = errors.to_compile_errors();
            return quote!(#input #errors);
        }
    };
    let model = model::parse_impl(&mut item, &mut errors);
    let marker = emit::handlers_marker(&item);
    let generated = match &model {
        Some(model) if errors.is_empty() => emit::state_machine(model),
        _ => TokenStream2::new(),
    };
    let errors = errors.to_compile_errors();
    quote! {
        #item
        #marker
        #generated
        #errors
    }
}

const OUTSIDE: &str =
    "is only valid on methods inside an impl block marked `#[raftkit::state_machine]`";

fn misplaced(which: &str, input: TokenStream) -> TokenStream {
    let message = format!("`#[{which}]` {OUTSIDE}");
    let error = syn::Error::new(proc_macro2::Span::call_site(), message).to_compile_error();
    let input = TokenStream2::from(input);
    quote!(#error #input).into()
}

/// Marks a `&mut self` method of a `#[raftkit::state_machine]` impl block as
/// a write handler: `#[write]`, `#[write(tag = N, on_error = "halt")]`.
///
/// `#[raftkit::state_machine]` consumes this attribute; anywhere else it is a
/// compile error.
#[proc_macro_attribute]
pub fn write(_args: TokenStream, input: TokenStream) -> TokenStream {
    misplaced("write", input)
}

/// Marks a `&self` method of a `#[raftkit::state_machine]` impl block as a
/// read handler: `#[read]`, `#[read(tag = N)]`.
///
/// `#[raftkit::state_machine]` consumes this attribute; anywhere else it is a
/// compile error.
#[proc_macro_attribute]
pub fn read(_args: TokenStream, input: TokenStream) -> TokenStream {
    misplaced("read", input)
}
