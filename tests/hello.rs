//! Runs `examples/hello.rs`, the README's smallest complete program, as it
//! is: three real peers and a typed client, then a clean shutdown.

mod hello {
    include!("../examples/hello.rs");

    pub fn run() -> Result<(), raftkit::Error> {
        main()
    }
}

#[test]
fn the_smallest_complete_program_runs() {
    // `main` builds its own tokio runtime (`#[tokio::main]`) and returns the
    // first error of any step: the cluster, the write, the read, shutdown.
    if let Err(e) = hello::run() {
        panic!("examples/hello.rs failed: {e}");
    }
}

#[test]
fn the_smallest_complete_program_is_at_most_30_lines() {
    let text = include_str!("../examples/hello.rs");
    let lines = text.lines().count();
    assert!(lines <= 30, "examples/hello.rs has {lines} lines");
    // The README shows the same program.
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(text),
        "README.md must quote examples/hello.rs verbatim"
    );
}
