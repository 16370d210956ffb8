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
enum Command {
    /// Write a commented starting Serve.toml.
    Init(crate::manifest::InitArgs),
    /// Validate a Serve.toml and print a summary of the target.
    Check(crate::manifest::CheckArgs),
    /// Fetch the target's model, verify its sha256 and print its metadata.
    Fetch(crate::manifest::TargetArg),
    /// Write the target's round-0 server crate (or check it with --check).
    Generate(crate::generate::command::GenerateArgs),
    /// Benchmark a server (ours, a peer, or any URL) with a streaming OpenAI workload.
    Bench(Box<crate::bench::BenchArgs>),
    /// Measure our engine's prefill and batch-1 decode against llama.cpp's llama-bench.
    BenchEngine(crate::bench::engine::BenchEngineArgs),
    /// List the skills, whether each applies to the target (and why not), and their moves.
    Skills(crate::skills::command::SkillsArgs),
    /// Search for a better server round by round (or rebuild the locked one with --locked).
    Build(crate::build::BuildArgs),
    /// Judge and measure the candidates `build --stage DIR` bundled, where they run.
    Evaluate(crate::evaluate::command::EvaluateArgs),
    /// Show the recorded rounds as a table and write an SVG chart of the objective.
    Log(crate::log::LogArgs),
}

/// Parse the command line and run the command.
pub fn main() -> miette::Result<()> {
    install_error_reporter();
    let Cargo::Vibeserve(args) = Cargo::parse();
    match args.command {
        Command::Init(args) => exit_on_error(crate::manifest::init(&args), |e| e.exit_code()),
        Command::Check(args) => exit_on_error(crate::manifest::check(&args), |e| e.exit_code()),
        Command::Fetch(target) => {
            exit_on_error(crate::prepare::fetch(&target), |_| exit_code::FAILURE)
        }
        Command::Generate(args) => {
            exit_on_error(crate::generate::command::run(&args), |_| exit_code::FAILURE)
        }
        Command::Bench(args) => crate::bench::command::main(*args),
        Command::BenchEngine(args) => {
            exit_on_error(crate::bench::engine::run_command(&args), |_| {
                exit_code::FAILURE
            })
        }
        Command::Skills(args) => {
            exit_on_error(crate::skills::command::run(&args), |_| exit_code::FAILURE)
        }
        Command::Build(args) => exit_on_error(crate::build::run(&args), |_| exit_code::FAILURE),
        Command::Evaluate(args) => {
            exit_on_error(crate::evaluate::command::run(&args), |_| exit_code::FAILURE)
        }
        Command::Log(args) => exit_on_error(crate::log::run(&args), |_| exit_code::FAILURE),
    }
}

/// Process exit codes, named so that scripts and tests can rely on them.
pub mod exit_code {
    /// The command did what it was asked.
    pub const SUCCESS: i32 = 0;
    /// A failure with no more specific code (I/O, a subprocess, …).
    pub const FAILURE: i32 = 1;
    /// The command line was wrong (clap uses the same code).
    pub const USAGE: i32 = 2;
    /// The Serve.toml is invalid: TOML syntax, schema, or a semantic check.
    pub const INVALID_MANIFEST: i32 = 3;
    /// TARGET names no Serve.toml.
    pub const TARGET_NOT_FOUND: i32 = 4;
    /// The command would overwrite a file it was not told to (`init` without `--force`).
    pub const ALREADY_EXISTS: i32 = 5;
}

/// Render errors the same way everywhere: unicode drawing, colour only on a terminal that
/// wants it (miette honours `NO_COLOR`), the terminal's width or 80 when piped, no links.
fn install_error_reporter() {
    // Fails only if a hook is already installed, which then stays in charge.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .unicode(true)
                .terminal_links(false)
                .build(),
        )
    }));
}

/// Print `result`'s error, if any, and exit with the code `code` gives it.
fn exit_on_error<E: miette::Diagnostic + Send + Sync + 'static>(
    result: Result<(), E>,
    code: impl Fn(&E) -> i32,
) -> miette::Result<()> {
    if let Err(e) = result {
        let exit = code(&e);
        eprintln!("{:?}", miette::Report::new(e));
        std::process::exit(exit);
    }
    Ok(())
}
