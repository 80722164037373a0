//! The command line, without a server: keys, refusals before any request is sent, and help.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datadonor-research"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run the binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn keygen_writes_a_private_key_and_its_public_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("alice.key");
    let o = run(&["keygen", "--out", s(&key), "--name", "alice"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&key).expect("key");
    assert_eq!(text.len(), 65, "64 hex digits and a newline");
    let signing = datadonor_schemas::signing::SigningKey::from_key_file(&text).expect("parses");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let public = std::fs::read_to_string(dir.path().join("alice.key.pub")).expect("pub");
    assert_eq!(public, format!("{}\n", signing.public_key().to_base64()));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!(
            "give the steward this line for the researchers file: alice {}",
            public.trim()
        )),
        "{stdout}"
    );

    let again = run(&["keygen", "--out", s(&key), "--name", "alice"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("alice.key"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        text,
        "unchanged"
    );

    // An existing .pub alone also stops it, before a key is written.
    let other = dir.path().join("bob.key");
    std::fs::write(dir.path().join("bob.key.pub"), "x\n").expect("pub");
    let o = run(&["keygen", "--out", s(&other), "--name", "bob"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bob.key.pub"), "{}", stderr(&o));
    assert!(!other.exists());
}

fn query_args<'a>(dir: &'a Path, spec: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "query".into(),
        "--service".into(),
        "https://127.0.0.1:9".into(),
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--key".into(),
        dir.join("alice.key").display().to_string(),
        "--spec".into(),
        spec.into(),
        "--approval".into(),
        dir.join("approval.json").display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn query_refuses_an_unsupported_output_before_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("q.toml");
    let out = dir.path().join("table.xlsx");
    let o = bin()
        .args(query_args(
            dir.path(),
            s(&spec),
            &["--out", "ok.csv", "--out", s(&out)],
        ))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("table.xlsx"), "{err}");
    assert!(
        err.contains(".csv") && err.contains(".json") && err.contains(".parquet"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn query_names_a_missing_or_invalid_spec_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-spec.toml");
    let o = bin()
        .args(query_args(dir.path(), s(&missing), &["--out", "t.json"]))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing-spec.toml"), "{}", stderr(&o));

    let broken = dir.path().join("broken-spec.toml");
    std::fs::write(&broken, "title = [unclosed\n").expect("write");
    let o = bin()
        .args(query_args(dir.path(), s(&broken), &[]))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("broken-spec.toml"), "{}", stderr(&o));
}

#[test]
fn query_plot_must_be_svg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("q.toml");
    let o = bin()
        .args(query_args(dir.path(), s(&spec), &["--plot", "chart.png"]))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chart.png"), "{}", stderr(&o));
}

#[test]
fn no_command_takes_a_vault_key() {
    for args in [
        &["--help"][..],
        &["query", "--help"],
        &["budget", "--help"],
        &["keygen", "--help"],
    ] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(!help.contains("vault"), "{args:?}: {help}");
    }
    let help = String::from_utf8_lossy(&run(&["query", "--help"]).stdout).into_owned();
    for opt in [
        "--service",
        "--ca",
        "--key",
        "--spec",
        "--approval",
        "--out",
        "--plot",
    ] {
        assert!(help.contains(opt), "{opt}: {help}");
    }
}

#[test]
fn budget_refuses_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").expect("ca");
    let o = run(&[
        "budget",
        "--service",
        "http://127.0.0.1:9",
        "--ca",
        s(&ca),
        "--researcher",
        "alice",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("https"), "{}", stderr(&o));
}
