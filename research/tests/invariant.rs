//! The client cannot open sealed batches: it depends on no crate that does, mentions no vault
//! key and calls none of the protocol crate's envelope or batch routines.

use std::path::Path;

const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "datadonor-analytics",
    "polars",
    "hpke",
    "aes-gcm",
    "datadonor-intake",
    "datadonor-pseudonymiser",
];

#[test]
fn the_manifest_depends_on_no_crate_that_opens_batches() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.contains("dependencies");
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line
                .split(['=', '.'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            names.push(name);
        }
    }
    assert!(names.iter().any(|n| n == "datadonor-schemas"), "{names:?}");
    assert!(names.iter().any(|n| n == "reqwest"), "{names:?}");
    for bad in FORBIDDEN_DEPENDENCIES {
        assert!(!names.iter().any(|n| n == bad), "{bad} in {names:?}");
    }
}

#[test]
fn the_sources_take_no_vault_key_and_open_no_envelope() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        for bad in [
            "vault",
            "hpke",
            "envelope",
            "schemas::batch",
            "open_batch",
            "unseal",
        ] {
            assert!(!code.contains(bad), "{}: {bad}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 3, "lib.rs, main.rs and output.rs at least");
}
