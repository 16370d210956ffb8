//! The command line: clap types and one dispatch match. Command bodies live in their stage modules.

use clap::{Parser, Subcommand};

/// `cargo` invokes us as `cargo-vibeserve vibeserve ARGS`, so the outer parser is `cargo`.
#[derive(Debug, Parser)]
#[command(bin_name = "cargo", version, styles = clap::builder::styling::Styles::styled())]
enum Cargo {
    /// Generate a bespoke LLM inference server from a Serve.toml target.
    Vibeserve(VibeserveArgs),
}

#[derive(Debug, clap::Args)]
#[command(version, about, long_about = None)]
struct VibeserveArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

/// Parse the command line and run the command.
pub fn main() -> miette::Result<()> {
    let Cargo::Vibeserve(args) = Cargo::parse();
    match args.command {}
}
