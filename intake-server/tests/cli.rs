//! Golden tests of the `datadonor-intake` command line: `init`, `rotate-key` and the refusals
//! of `init` and `serve`, with exit status, stdout and stderr (the temporary directory shown
//! as `<TMP>`). `serve` itself runs in `crash.rs`.

use std::path::Path;
use std::process::Command;

/// Run in `dir`; return (exit code, stdout, stderr) with `dir` replaced by `<TMP>`.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    let tmp = dir.display().to_string();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace(&tmp, "<TMP>"),
        String::from_utf8_lossy(&out.stderr).replace(&tmp, "<TMP>"),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn init_prints_what_the_operator_hands_over_and_refuses_to_run_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (code, stdout, stderr) = run(tmp.path(), &["init", "--dir", "d"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    let d = tmp.path().join("d");
    let token = read(&d.join("auditor.token"));
    let steward = read(&d.join("steward/steward.key.pub"));
    assert_eq!(token.trim().len(), 64);
    assert_eq!(
        stdout,
        format!(
            "initialised d\n\
             auditor token (also in auditor.token; hand it over, then delete that file):\n\
             {token}\
             demo steward key: {steward}\
             demo vault private key: d/vault-private/vault.key -- move it off this machine; serve never reads it\n"
        )
    );
    for f in [
        "config.toml",
        "vault.pub",
        "keys/transport-1.key",
        "studies/t2d-dk.json",
    ] {
        assert!(d.join(f).is_file(), "{f}");
    }

    // Not twice: the first directory is left as it was.
    let config = read(&d.join("config.toml"));
    let (code, stdout, stderr) = run(tmp.path(), &["init", "--dir", "d"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "datadonor-intake: error: init: d already holds an intake (config.toml exists)\n"
    );
    assert_eq!(read(&d.join("config.toml")), config);
    assert_eq!(read(&d.join("auditor.token")), token);
}

#[test]
fn init_with_the_stewards_vault_key_and_refusals_that_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let (code, _, stderr) = run(t, &["init", "--dir", "first"]);
    assert_eq!(code, 0, "{stderr}");

    // The steward's own vault public key: no demo vault key is made.
    let (code, stdout, stderr) = run(
        t,
        &[
            "init",
            "--dir",
            "own",
            "--vault-public-key",
            "first/vault.pub",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("vault private key"), "{stdout}");
    assert!(!t.join("own/vault-private").exists());
    assert_eq!(
        read(&t.join("own/vault.pub")),
        read(&t.join("first/vault.pub"))
    );

    // A missing or malformed vault key is refused before anything is written.
    std::fs::write(t.join("bad.pub"), "not a key\n").expect("write");
    for (file, reason) in [
        (
            "missing.pub",
            "reading missing.pub: No such file or directory (os error 2)",
        ),
        ("bad.pub", "init: bad.pub: not a vault public key"),
    ] {
        let (code, stdout, stderr) =
            run(t, &["init", "--dir", "fresh", "--vault-public-key", file]);
        assert_eq!((code, stdout.as_str()), (1, ""));
        assert_eq!(stderr, format!("datadonor-intake: error: {reason}\n"));
        assert!(!t.join("fresh").exists(), "{file}: a directory was left");
    }
}

#[test]
fn rotate_key_adds_a_transport_key_and_commands_name_a_missing_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let (code, _, stderr) = run(t, &["init", "--dir", "d"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(t, &["rotate-key", "--dir", "d"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(
        stdout,
        "new transport key id 2; restart the intake to serve it\n"
    );
    assert!(t.join("d/keys/transport-2.key").is_file());
    assert!(t.join("d/keys/transport-1.key").is_file());

    for cmd in ["serve", "rotate-key"] {
        let (code, stdout, stderr) = run(t, &[cmd, "--dir", "nowhere"]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{cmd}");
        assert_eq!(
            stderr,
            "datadonor-intake: error: reading nowhere/config.toml: No such file or directory (os error 2)\n",
            "{cmd}"
        );
    }
}
