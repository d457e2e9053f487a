//! The `lucky` command line built as a binary of the test crate, so that `cargo test` builds it
//! for the tests that run it (`CARGO_BIN_EXE_lucky-under-test`), in every profile, with no
//! manual build step first.

fn main() -> std::process::ExitCode {
    lucky::cli::main()
}
