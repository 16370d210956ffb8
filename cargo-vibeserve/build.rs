//! The tool embeds the server template and the workspace lockfile (see
//! `src/generate/template.rs`); rebuild it when either changes.

fn main() {
    println!("cargo::rerun-if-changed=../templates/server");
    println!("cargo::rerun-if-changed=../Cargo.lock");
    println!("cargo::rerun-if-changed=../skills");
}
