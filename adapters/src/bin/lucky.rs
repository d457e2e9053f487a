//! `lucky`: run a command under a distributed lock, or run the simulator (see [`lucky::cli`]).

fn main() -> std::process::ExitCode {
    lucky::cli::main()
}
