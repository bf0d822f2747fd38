//! The typed client `KvClient<__Submit>`: one `async fn` per handler,
//! mirroring the handler's arguments, return type, docs, `#[cfg]`s and lint
//! attributes.
//!
//! The handlers' argument and return types are written inside the client's
//! generic impls, where a generic parameter would capture a user type of the
//! same name (a user's `struct S` in `fn put(&self, v: S)` would be the
//! submitter), and `connect` names the state machine's type inside a
//! function generic over the addresses: these parameters are named
//! `__Submit`, `__Addrs` and `__Addr`, which no user type plausibly is.
//!
//! A call encodes the command, hands it to the wrapped
//! [`Submit`](raftkit::client::Submit) and decodes the reply. A handler
//! returning `T` gives `Result<T, raftkit::Error>`; so a handler returning
//! `Result<T, E>` gives `Result<Result<T, E>, raftkit::Error>` with `E` typed.
//! A reply of another variant than the call's (a peer with another schema)
//! is `Error::Protocol`, never a wrong value.

use proc_macro2::TokenStream;

use super::Names;
use crate::model::{ImplModel, Kind};

/// The client struct and its impls.
pub fn client(model: &ImplModel, names: &Names) -> TokenStream {
    let ident = &model.ident;
    let client = &names.client;
    let event = quote::format_ident!("{}Event", ident, span = ident.span());
    let event_doc = format!(
        "One applied write of the `{ident}` state machine, as a watch delivers it: its log \
         index, its command (`{write}`) and its output (`{output}`); see \
         [`raftkit::client::watch`].",
        write = names.write,
        output = names.write_output,
    );

    let methods = model.handlers.iter().map(|h| {
        let (cmd, out) = names.of(h.kind);
        let method = &h.ident;
        let variant = &h.variant;
        let cfgs = &h.cfgs;
        let lints = &h.lints;
        let docs = if h.docs.is_empty() {
            let doc = format!(
                "Calls the `#[{}]` handler `{ident}::{method}` on the state machine.",
                h.kind.as_str()
            );
            quote_internal!(#[doc = #doc])
        } else {
            let docs = &h.docs;
            quote_internal!(#(#docs)*)
        };
        let params = h.args.iter().map(|a| {
            let name = &a.ident;
            let ty = &a.ty;
            quote_internal!(#name: #ty)
        });
        let fields = h.args.iter().map(|a| &a.ident);
        let command = if h.args.is_empty() {
            quote_internal!(#cmd::#variant)
        } else {
            quote_internal!(#cmd::#variant { #(#fields),* })
        };
        let output = &h.output;
        let (submit, encoded, what) = match h.kind {
            Kind::Write => (quote_internal!(write), "command", "write output"),
            Kind::Read => (quote_internal!(read), "query", "read output"),
        };
        let mismatch = format!(
            "the reply to `{method}` is the output of another handler (does the peer run another \
             version of `{ident}`?)"
        );
        // A write's answer came back from its apply: one that does not
        // decode says applied (`AnswerUndecodable`). A read applied
        // nothing: `Codec` and `Protocol` as before.
        let (undecodable, other_output) = match h.kind {
            Kind::Write => (
                quote_internal!(::raftkit::Error::undecodable_answer(__e)),
                quote_internal!(::raftkit::Error::undecodable_answer(#mismatch)),
            ),
            Kind::Read => (
                quote_internal!(::raftkit::Error::Codec(__e)),
                quote_internal!(::raftkit::Error::Protocol(
                    ::std::string::ToString::to_string(#mismatch),
                )),
            ),
        };
        quote_internal! {
            #docs
            #(#cfgs)*
            #(#lints)*
            pub async fn #method(&self #(, #params)*) -> ::core::result::Result<#output, ::raftkit::Error> {
                // Not sent: nothing was applied (`Rejected`, applied No).
                let __command = ::raftkit::state_machine::encode(#encoded, &#command)
                    .map_err(::raftkit::Error::not_sent)?;
                let __reply = ::raftkit::client::Submit::#submit(&self.submit, __command).await?;
                #[allow(unreachable_patterns)]
                match ::raftkit::state_machine::decode::<#out>(#what, &__reply) {
                    ::core::result::Result::Ok(#out::#variant(__value)) => ::core::result::Result::Ok(__value),
                    ::core::result::Result::Ok(_) => ::core::result::Result::Err(#other_output),
                    ::core::result::Result::Err(__e) => ::core::result::Result::Err(#undecodable),
                }
            }
        }
    });

    let doc = format!(
        "A typed client of the `{ident}` state machine: one `async` method per `#[write]` and \
         `#[read]` handler.\n\nIt wraps any [`Submit`](raftkit::client::Submit): the network \
         client of a cluster, or [`Local`](raftkit::client::Local) in tests. Every method \
         returns `Err(raftkit::Error)` when the call itself fails; the handler's own return \
         value, including a typed `Result`, is inside the `Ok`.\n\n\
         # Retries and exactly-once\n\n\
         Against a cluster, each write call is one logical write of the client's session: the \
         client retries it by itself (redirects, lost connections, leader changes) under one \
         sequence number, so **one call applies its command at most once**. When a write call \
         returns an error whose [`applied()`](raftkit::Error::applied) is `Maybe` \
         (`Timeout`, `Ambiguous`, `Transport`, `Halted`, `Storage`, `Codec`, `Protocol`, \
         `SessionExpired`) the command may or may not \
         have been applied, and **calling the method again is a new write** that can apply it \
         twice. `Unavailable`, `NotLeader` and `Overloaded` (retryable), and `Tls` (every \
         member refused this client's certificate: nothing was sent), `Unauthorized`, \
         `Rejected`, `Unsupported`, `SchemaMismatch` and `NotHosted` (not retryable) say it \
         was not applied; `Handler`, `AnswerTooLarge` and `AnswerUndecodable` that it was. To retry \
         exactly-once, make the call through [`write_once()`](Self::write_once) and retry \
         through that same handle:\n\n\
         ```ignore\n\
         let once = client.write_once(); // one handle per logical write\n\
         let out = loop {{\n\
         \x20   match once.some_write(args.clone()).await {{\n\
         \x20       Err(e) if e.is_retryable() => continue, // Timeout, Ambiguous, Unavailable, ... (back off on Overloaded)\n\
         \x20       other => break other,\n\
         \x20   }}\n\
         }};\n\
         ```\n\n\
         `Err(Error::SessionExpired)` means the cluster forgot the session (idle past its \
         time-to-live, evicted, or closed) while an attempt of the write may have been applied: \
         the outcome is unknown, and the client has opened a new session for later calls. See \
         [`raftkit::client::Client`] for every error and whether it may have been applied."
    );
    quote_internal! {
        #[doc = #event_doc]
        pub type #event = ::raftkit::client::watch::Event<#ident>;

        #[doc = #doc]
        pub struct #client<__Submit = ::raftkit::client::Client> {
            submit: __Submit,
        }

        #[automatically_derived]
        impl<__Submit: ::core::clone::Clone> ::core::clone::Clone for #client<__Submit> {
            fn clone(&self) -> Self {
                #client {
                    submit: ::core::clone::Clone::clone(&self.submit),
                }
            }
        }

        impl<__Submit> #client<__Submit> {
            /// Wraps `submit`, which delivers the encoded commands.
            pub fn new(submit: __Submit) -> Self {
                #client { submit }
            }

            /// The wrapped submitter.
            pub fn inner(&self) -> &__Submit {
                &self.submit
            }

            /// Unwraps the submitter.
            pub fn into_inner(self) -> __Submit {
                self.submit
            }
        }

        impl #client<::raftkit::client::Client> {
            /// Connects to the cluster at `addrs` (any members) with the
            /// client certificate in `$RAFTKIT_CERTS`, refusing a cluster
            /// that runs an incompatible schema. The client finds the leader and
            /// retries by itself.
            pub async fn connect<__Addrs, __Addr>(
                addrs: __Addrs,
            ) -> ::core::result::Result<Self, ::raftkit::Error>
            where
                __Addrs: ::core::iter::IntoIterator<Item = __Addr>,
                __Addr: ::core::convert::AsRef<str>,
            {
                ::core::result::Result::Ok(#client::new(
                    ::raftkit::client::Client::connect_for::<#ident, __Addrs, __Addr>(addrs).await?,
                ))
            }

            /// Connects with an explicit identity and options.
            pub async fn connect_with<__Addrs, __Addr>(
                addrs: __Addrs,
                identity: ::raftkit::tls::Identity,
                options: ::raftkit::client::ClientOptions,
            ) -> ::core::result::Result<Self, ::raftkit::Error>
            where
                __Addrs: ::core::iter::IntoIterator<Item = __Addr>,
                __Addr: ::core::convert::AsRef<str>,
            {
                ::core::result::Result::Ok(#client::new(
                    ::raftkit::client::Client::connect_with_for::<#ident, __Addrs, __Addr>(
                        addrs, identity, options,
                    )
                    .await?,
                ))
            }

            /// A client for **one** logical write that can be retried
            /// exactly-once: call one write method on it, and call it again
            /// (same method, same arguments) after an error whose outcome is
            /// unknown; every call re-sends the same sequence number, so the
            /// command is applied at most once and a retry after it was
            /// applied returns its result. Another write through the same
            /// handle is refused. Reads pass through. See
            /// [`raftkit::client::WriteOnce`].
            pub fn write_once(&self) -> #client<::raftkit::client::WriteOnce> {
                #client::new(self.submit.write_once())
            }

            /// A view of this client whose reads are served at
            /// `consistency` (writes, session and connections shared):
            /// `client.with(Consistency::Lease).get(k)`. See
            /// [`raftkit::client::Consistency`].
            pub fn with(&self, consistency: ::raftkit::client::Consistency) -> Self {
                #client::new(self.submit.with(consistency))
            }

            /// The staleness of the latest `Consistency::Stale` read
            /// answered through this view.
            pub fn last_staleness(&self) -> ::core::option::Option<::raftkit::client::Staleness> {
                self.submit.last_staleness()
            }

            /// Closes the client's session on the cluster (its stored replies
            /// are dropped at once). The client stays usable; its next write
            /// opens a new session. Dropping the last clone of a client also
            /// closes it, in the background and on a best-effort basis.
            pub async fn close(&self) -> ::core::result::Result<(), ::raftkit::Error> {
                self.submit.close().await
            }

            /// Watches the writes the cluster applies from log index `from`:
            /// each one once, in log order, with its command and output. The
            /// watch resumes on another member by itself when its member
            /// fails. `Err(Error::Compacted)` if no member holds `from` any
            /// longer. See [`raftkit::client::watch`].
            pub async fn watch(
                &self,
                from: u64,
            ) -> ::core::result::Result<::raftkit::client::watch::Watch<#ident>, ::raftkit::Error> {
                self.submit.watch::<#ident>(::core::option::Option::Some(from)).await
            }

            /// Watches the writes the cluster applies from now on (from the
            /// next entry the serving member applies); see
            /// [`watch`](Self::watch).
            pub async fn watch_from_now(
                &self,
            ) -> ::core::result::Result<::raftkit::client::watch::Watch<#ident>, ::raftkit::Error> {
                self.submit.watch::<#ident>(::core::option::Option::None).await
            }
        }

        #[automatically_derived]
        impl ::raftkit::client::HasClient for #ident {
            type Client = #client<::raftkit::client::Client>;

            fn typed_client(client: ::raftkit::client::Client) -> Self::Client {
                #client::new(client)
            }
        }

        #[allow(private_interfaces)]
        impl<__Submit: ::raftkit::client::Submit> #client<__Submit> {
            #(#methods)*
        }
    }
}
