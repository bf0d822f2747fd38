//! Support for the code that `raftkit-derive` generates. Not a public API:
//! nothing here is covered by semver, and users should never name it.
//!
//! The two macro halves meet here: `#[derive(StateMachine)]` implements
//! [`Derived`] and requires [`Handlers`]; `#[raftkit::state_machine]`
//! implements [`Handlers`] and its `StateMachine` impl requires [`Derived`].
//! The `on_unimplemented` messages tell a user which half is missing.

pub use postcard;
pub use serde;

use crate::state_machine::{CodecError, ErrorPolicy, SnapshotCopy};

/// Implemented by `#[derive(StateMachine)]`: the struct-level settings.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has a `#[raftkit::state_machine]` impl block but no `#[derive(StateMachine)]`",
    label = "this type needs `#[derive(StateMachine)]`",
    note = "add `#[derive(raftkit::StateMachine)]` to the definition of `{Self}` (it also takes the `#[raftkit(name = \"...\", on_error = \"skip\"|\"halt\")]` settings)"
)]
pub trait Derived {
    /// The state machine's name.
    const NAME: &'static str;
    /// The policy of `#[write]` handlers that set none.
    const ERROR_POLICY: ErrorPolicy;
    /// The state's snapshot version (`#[raftkit(version = N)]`).
    const STATE_VERSION: u32 = 1;
    /// Rebuilds the state from a snapshot body of an older version
    /// (`#[raftkit(migrate = path)]`).
    fn migrate(from_version: u32, _bytes: &[u8]) -> Result<Self, CodecError>
    where
        Self: Sized,
    {
        Err(CodecError {
            what: "snapshot",
            reason: format!(
                "the snapshot has state version {from_version} and this state machine gives no migration: add `#[raftkit(version = N, migrate = path)]`"
            ),
        })
    }
    /// A copy of the state for a snapshot serialized off the apply thread
    /// (`#[raftkit(snapshot = "clone")]`), or `None`.
    fn snapshot_copy(&self) -> Option<SnapshotCopy> {
        None
    }
}

/// Implemented by `#[raftkit::state_machine]`: the type has handlers.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has `#[derive(StateMachine)]` but no `#[raftkit::state_machine]` impl block",
    label = "this state machine has no handlers",
    note = "add `#[raftkit::state_machine]` on an `impl {Self} {{ ... }}` block holding its `#[write]` (`&mut self`) and `#[read]` (`&self`) methods"
)]
pub trait Handlers {}

/// Compiles only if `T` has a `#[raftkit::state_machine]` impl block.
pub const fn require_handlers<T: ?Sized + Handlers>() {}

/// Compiles only if `T` can be a handler's argument or return type as far
/// as threads go (the serde bounds are checked by the wire impls).
pub const fn require_send<T: Send + 'static>() {}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// Starts a schema fingerprint: FNV-1a of the state machine's name.
pub const fn fingerprint_start(name: &str) -> u64 {
    // A separator keeps "ab" + handler from colliding with "a" + "b...".
    fnv1a(fnv1a(FNV_OFFSET, name.as_bytes()), &[0xff])
}

/// Folds one handler's hash (computed by the macro) into a fingerprint.
pub const fn fingerprint_add(hash: u64, handler: u64) -> u64 {
    fnv1a(hash, &handler.to_le_bytes())
}

/// `Debug` of a generated enum's field, chosen where the field's concrete
/// type is known (autoref specialization): `(&DebugField(x)).debug_field(f)`
/// uses the type's `Debug` when it has one ([`DebugViaDebug`]) and prints
/// `<TypeName>` otherwise ([`DebugViaName`]), so the generated enums are
/// always `Debug` without demanding it of handler argument types.
pub struct DebugField<'a, T: ?Sized>(pub &'a T);

/// The first choice of [`DebugField`]: the type's own `Debug`.
pub trait DebugViaDebug {
    /// Formats the field.
    fn debug_field(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result;
}

impl<T: ?Sized + core::fmt::Debug> DebugViaDebug for DebugField<'_, T> {
    fn debug_field(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.0, f)
    }
}

/// The fallback of [`DebugField`]: the type's name in angle brackets.
pub trait DebugViaName {
    /// Formats the field.
    fn debug_field(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result;
}

impl<T: ?Sized> DebugViaName for &DebugField<'_, T> {
    fn debug_field(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "<{}>", core::any::type_name::<T>())
    }
}

/// A `Debug` value formatted by a closure (the generated enums' fields).
pub struct DebugWith<F>(pub F);

impl<F: Fn(&mut core::fmt::Formatter<'_>) -> core::fmt::Result> core::fmt::Debug for DebugWith<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (self.0)(f)
    }
}
