//! The binaries of this crate describe themselves: `--help` opens with the binary's own
//! summary, not the crate's description.

use std::process::Command;

/// The crate's description, which no binary's `--help` should show.
const CRATE_DESCRIPTION: &str = env!("CARGO_PKG_DESCRIPTION");

fn help(bin: &str) -> String {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

#[test]
fn synth_help_describes_the_synthetic_population() {
    let h = help(env!("CARGO_BIN_EXE_datadonor-synth"));
    assert!(
        h.starts_with("Generate a deterministic synthetic population of Danish data donors"),
        "{h}"
    );
    assert!(!h.contains(CRATE_DESCRIPTION), "{h}");
}

#[test]
fn demo_help_describes_the_demo() {
    let h = help(env!("CARGO_BIN_EXE_datadonor-demo"));
    assert!(
        h.starts_with("Run the Datadonor pipeline end to end on localhost"),
        "{h}"
    );
    assert!(!h.contains(CRATE_DESCRIPTION), "{h}");
}
