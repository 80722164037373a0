//! The repository's `testdata/` (published vectors and sample exports the tests read) is intact:
//! every file `testdata/SHA256SUMS` lists exists with that SHA-256, every data file under
//! `testdata/vectors/` and `testdata/data/` is listed, and every licence text `SOURCES.md` names
//! is there. A failure names each file at fault.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()))
}

/// `(sha256 hex, path relative to testdata/)` for every line of `SHA256SUMS`.
fn listed() -> Vec<(String, String)> {
    let path = testdata_dir().join("SHA256SUMS");
    read_text(&path)
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let (hash, file) = line.split_once("  ").unwrap_or_else(|| {
                panic!("{} line {}: not `<sha256>  <path>`", path.display(), n + 1)
            });
            (hash.to_string(), file.to_string())
        })
        .collect()
}

/// Every file under `dir`, as a path relative to `testdata/` with `/` separators.
fn files_under(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {} ({e})", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {} ({e})", dir.display()))
            .path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_listed_file_matches_its_sha256() {
    let dir = testdata_dir();
    let listed = listed();
    assert!(
        listed.len() > 200,
        "{} lists only {} files",
        dir.join("SHA256SUMS").display(),
        listed.len()
    );
    let mut failures = Vec::new();
    for (want, rel) in &listed {
        let path = dir.join(rel);
        match std::fs::read(&path) {
            Err(e) => failures.push(format!("{}: cannot read ({e})", path.display())),
            Ok(bytes) => {
                let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
                if &got != want {
                    failures.push(format!(
                        "{}: SHA-256 {got}, SHA256SUMS says {want}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_data_file_is_listed() {
    let dir = testdata_dir();
    let listed: BTreeSet<String> = listed().into_iter().map(|(_, f)| f).collect();
    let mut present = BTreeSet::new();
    for sub in ["vectors", "data"] {
        files_under(&dir, &dir.join(sub), &mut present);
    }
    let unlisted: Vec<&String> = present.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "files in {} not listed in SHA256SUMS: {unlisted:?}",
        dir.display()
    );
}

#[test]
fn every_licence_named_in_sources_is_present() {
    let dir = testdata_dir();
    let sources = read_text(&dir.join("SOURCES.md"));
    let named: BTreeSet<&str> = sources
        .split('`')
        .filter(|s| s.starts_with("LICENSES/") && s.len() > "LICENSES/".len())
        .collect();
    assert!(!named.is_empty(), "SOURCES.md names no licence text");
    let missing: Vec<&&str> = named.iter().filter(|f| !dir.join(f).is_file()).collect();
    assert!(
        missing.is_empty(),
        "licence texts missing from {}: {missing:?}",
        dir.display()
    );
}
