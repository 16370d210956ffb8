//! The generated server's binary: parse the command line, run it.

use clap::Parser;
use vibeserve_server::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
