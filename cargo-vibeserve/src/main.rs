//! `cargo vibeserve`: a thin binary over the `vibeserve` library.

fn main() -> miette::Result<()> {
    vibeserve::cli::main()
}
