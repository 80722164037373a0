//! Running the `datadonor-analytics` binary from the CLI tests.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Run the binary in `dir`; (exit code, stdout, stderr), with `dir` shown as `<TMP>` in both
/// streams so that golden output does not depend on the temporary directory.
#[allow(dead_code)]
pub fn run_in<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> (i32, String, String) {
    run_in_env(dir, args, &[])
}

/// [`run_in`] with extra environment variables.
#[allow(dead_code)]
pub fn run_in_env<S: AsRef<OsStr>>(
    dir: &Path,
    args: &[S],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_datadonor-analytics"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    let tmp = dir.display().to_string();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace(&tmp, "<TMP>"),
        String::from_utf8_lossy(&out.stderr).replace(&tmp, "<TMP>"),
    )
}
