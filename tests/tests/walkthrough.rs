//! `examples/walkthrough.sh`, the README's "Running the parts by hand" as a script, runs to the end
//! against the workspace's built binaries: three pseudonymiser instances and an intake on free ports, a
//! donor who previews, donates, checks and withdraws, an approved query, compaction and the audits.
#![cfg(unix)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARIES: [&str; 5] = [
    "datadonor",
    "datadonor-intake",
    "datadonor-pseudonymiser",
    "datadonor-analytics",
    "datadonor-research",
];
const TIMEOUT: Duration = Duration::from_secs(240);

/// `target/<profile>/`: the test binary runs from `target/<profile>/deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    let dir = deps.parent().unwrap_or(deps).to_path_buf();
    for name in BINARIES {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: run `cargo build --workspace --bins` first \
             (`cargo test --workspace` builds them)",
            dir.join(name).display()
        );
    }
    dir
}

#[test]
fn the_readme_walkthrough_runs() {
    let bin = bin_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let work = tmp.path().join("work");
    let log_path = tmp.path().join("walkthrough.log");
    let log = File::create(&log_path).expect("the log file");
    let mut child = Command::new("bash")
        .arg(repo.join("examples/walkthrough.sh"))
        .current_dir(repo)
        .env("BIN", &bin)
        .env("WORK", &work)
        .env("DATADONOR_PASSPHRASE", "walkthrough test passphrase")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        // Its own process group, so a timeout also ends the servers it started in the background.
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the walkthrough") {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log_path).expect("the walkthrough's output");
    let status = status.unwrap_or_else(|| panic!("timed out after {TIMEOUT:?}:\n{out}"));
    assert!(status.success(), "exit {status}:\n{out}");
    for expected in [
        "Donated 11 rows to t2d-dk at ledger index 2; receipt verified and stored in",
        "receipt verified: entry 2 is in the intake's current tree",
        "Consent withdrawn for study t2d-dk at ledger index 3",
        "differentially private",
        "logged query_run at ledger index",
        "t2d-dk: 1 donor erased",
        "consistent with the previously verified head",
        "receipt valid: donation_accepted entry",
        "totals: donors 1, granted 1, withdrawn 1, erased 1, active 0, pending erasure 0",
        "study t2d-dk: 0 batches, 0 rows, 0 donors, 0 violations",
    ] {
        assert!(out.contains(expected), "no `{expected}` in:\n{out}");
    }
    for file in ["q.csv", "q.svg", "report.html"] {
        assert!(work.join(file).is_file(), "{file} not written:\n{out}");
    }
}
