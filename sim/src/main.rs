//! `lucky-sim`: list scenarios, run one seed, or sweep many.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    lucky_sim::cli::main("lucky-sim", &args, lucky_sim::cli::Style::Plain)
}
