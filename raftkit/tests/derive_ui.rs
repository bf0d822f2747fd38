//! Compile tests of the raftkit macros: every shape of handler that must
//! compile (`tests/ui/pass`), and every misuse that must fail with a message
//! pointing at the culprit (`tests/ui/fail`, expected output in `.stderr`).
//!
//! Regenerate the expected output after a deliberate change with
//! `TRYBUILD=overwrite cargo test -p raftkit --test derive_ui`, then read
//! every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
