//! Writes the protocol's own test vectors, one JSON file per format, into a directory
//! (normally `schemas/vectors`):
//!
//! ```sh
//! cargo run -p datadonor-schemas --example write_vectors -- schemas/vectors
//! ```
//!
//! The output is deterministic; the `own_vectors` test checks that the committed files are
//! exactly what this writes, and that every vector decodes (or fails) as annotated.

// Shared with the `own_vectors` test, which uses parts this binary does not.
#[allow(dead_code)]
#[path = "vector_gen/mod.rs"]
mod vector_gen;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: write_vectors <output directory>");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("write_vectors: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for file in vector_gen::build() {
        let path = dir.join(file.name);
        if let Err(e) = std::fs::write(&path, &file.text) {
            eprintln!("write_vectors: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}
