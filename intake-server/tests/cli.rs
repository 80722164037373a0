//! Golden tests of the `datadonor-intake` command line: `init`, `rotate-key` and the refusals
//! of `init` and `serve`, with exit status, stdout and stderr (the temporary directory shown
//! as `<TMP>`); `serve --listen` as a process answering over TLS with the dev CA. `serve` under
//! load and SIGKILL runs in `crash.rs`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

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
             auditor token (also in auditor.token, which the auditor's commands read as --auditor-token @FILE; where the auditor is someone else, hand it over and delete the file):\n\
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

/// A `serve` process, killed if the test ends before it is stopped.
struct Served {
    child: Child,
    /// The address it printed, as `https://HOST:PORT`.
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `serve` with `args` in `dir` and read the address from its first line of output.
fn serve(dir: &Path, args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    let Some(url) = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .map(str::to_string)
    else {
        let _ = child.kill();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        panic!("serve {args:?}: first line {line:?}, stderr: {stderr}");
    };
    Served { child, url }
}

/// `GET /healthz` at `url` over TLS, trusting only the dev CA of the data directory `dir`.
async fn healthz(dir: &Path, url: &str) -> (u16, String) {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("tls/ca.pem")).expect("ca"))
        .expect("ca pem");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    let r = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}/healthz: {e}"));
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The port of `https://127.0.0.1:PORT`; not 0, since the bound address is printed.
fn bound_port(url: &str) -> u16 {
    let port: u16 = url
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not https://127.0.0.1:PORT: {url:?}"));
    assert_ne!(port, 0, "{url}");
    port
}

#[tokio::test]
async fn serve_listens_where_told_and_prints_the_bound_address() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();

    // `serve --listen` overrides the config's address (init's default, 127.0.0.1:8443).
    let (code, _, stderr) = run(t, &["init", "--dir", "d"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        read(&t.join("d/config.toml")).contains("listen = \"127.0.0.1:8443\"\n"),
        "default listen address"
    );
    let mut served = serve(t, &["--dir", "d", "--listen", "127.0.0.1:0"]);
    bound_port(&served.url);
    assert_eq!(
        healthz(&t.join("d"), &served.url).await,
        (200, "ok".to_string())
    );

    // SIGTERM: a clean stop. Waited for on a blocking thread, so that this runtime goes on
    // driving the client's connection and closes it (else the intake waits for it to drain).
    let status = tokio::task::spawn_blocking(move || {
        let pid = served.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(kill.success());
        served.child.wait().expect("wait")
    })
    .await
    .expect("the waiting task");
    assert!(status.success(), "serve exited with {status}");

    // `init --listen` writes the address into the config, and `serve` uses it.
    let (code, _, stderr) = run(t, &["init", "--dir", "e", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        read(&t.join("e/config.toml")).contains("listen = \"127.0.0.1:0\"\n"),
        "listen address from init --listen"
    );
    let served = serve(t, &["--dir", "e"]);
    bound_port(&served.url);
    assert_eq!(
        healthz(&t.join("e"), &served.url).await,
        (200, "ok".to_string())
    );

    // A listen address that is not one is refused before anything is read.
    let (code, stdout, stderr) = run(t, &["serve", "--dir", "e", "--listen", "localhost"]);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert!(
        stderr.starts_with(
            "error: invalid value 'localhost' for '--listen <ADDR>': invalid socket address syntax"
        ),
        "{stderr}"
    );
}

#[test]
fn the_log_written_to_a_pipe_has_no_colour_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let (code, _, stderr) = run(t, &["init", "--dir", "d"]);
    assert_eq!(code, 0, "{stderr}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(["serve", "--dir", "d", "--listen", "127.0.0.1:0"])
        .current_dir(t)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    assert!(line.starts_with("listening on "), "{line:?}");
    let mut stderr = child.stderr.take().expect("stderr");
    // The log line of the start is written before the address is printed.
    let mut log = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&log).contains("intake listening") {
        let n = stderr.read(&mut buf).expect("read stderr");
        assert!(
            n > 0,
            "no start line in the log: {}",
            String::from_utf8_lossy(&log)
        );
        log.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.contains("\x1b["),
        "colour codes in a piped log: {log:?}"
    );
}
