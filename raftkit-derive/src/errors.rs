//! Error collection: every problem found while parsing and validating is
//! kept, so a user sees all of them in one compile instead of one per fix.

use proc_macro2::TokenStream;
use std::fmt::Display;

/// A growing set of spanned errors, combined with [`syn::Error::combine`].
#[derive(Default)]
pub struct Errors {
    inner: Option<syn::Error>,
    count: usize,
}

impl Errors {
    /// Records an error.
    pub fn push(&mut self, err: syn::Error) {
        self.count += 1;
        match &mut self.inner {
            Some(all) => all.combine(err),
            None => self.inner = Some(err),
        }
    }

    /// Records an error spanning `tokens`.
    pub fn spanned(&mut self, tokens: impl quote::ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at `span`.
    pub fn at(&mut self, span: proc_macro2::Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// How many errors were recorded so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether no error was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// The `compile_error!` invocations for every recorded error (empty when
    /// there is none).
    pub fn to_compile_errors(&self) -> TokenStream {
        self.inner
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }
}
