//! The `datadonor-pseudonymiser` binary as operators run it: the key ceremony on three
//! "machines" (three directories, messages passed as files), the configuration assembled from
//! their public results, and one instance served on a free port.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_datadonor-pseudonymiser");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn ceremony_by_files_then_config_then_serve() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path();
    let mail = root.join("mail");
    std::fs::create_dir_all(&mail).expect("mail dir");
    let dirs: Vec<_> = (1..=3).map(|i| root.join(format!("m{i}"))).collect();

    // Round 1 at each instance.
    let mut r1 = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let out = mail.join(format!("round1-{}.json", i + 1));
        let stdout = run(&[
            "dkg",
            "round1",
            "--dir",
            &p(dir),
            "--index",
            &(i + 1).to_string(),
            "--instances",
            "3",
            "--threshold",
            "2",
            "--out",
            &p(&out),
        ]);
        assert!(stdout.contains("identity fingerprint: "), "{stdout}");
        r1.push(p(&out));
    }
    // Round 1 twice is refused (its state would be overwritten).
    let again = Command::new(BIN)
        .args([
            "dkg",
            "round1",
            "--dir",
            &p(&dirs[0]),
            "--index",
            "1",
            "--instances",
            "3",
            "--threshold",
            "2",
            "--out",
            &p(&mail.join("again.json")),
        ])
        .output()
        .expect("run");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.starts_with("datadonor-pseudonymiser: error: ") && err.contains("already ran round 1"),
        "{err}"
    );

    // Round 2 at each instance, with every round-1 message.
    for dir in &dirs {
        let mut args = vec!["dkg", "round2", "--dir"];
        let d = p(dir);
        args.push(&d);
        for m in &r1 {
            args.push("--round1");
            args.push(m);
        }
        let m = p(&mail);
        args.extend(["--out", &m]);
        let stdout = run(&args);
        assert_eq!(stdout.matches("send to instance").count(), 2, "{stdout}");
        assert!(!dir.join("dkg/round1.state").exists());
    }
    // Finish at each instance, with the messages addressed to it.
    let mut results = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let me = i + 1;
        let mine: Vec<String> = (1..=3)
            .filter(|from| *from != me)
            .map(|from| p(&mail.join(format!("round2-{from}-to-{me}.json"))))
            .collect();
        let d = p(dir);
        let mut args = vec!["dkg", "finish", "--dir", &d];
        for m in &mine {
            args.push("--round2");
            args.push(m);
        }
        run(&args);
        assert!(dir.join("share.json").is_file());
        assert!(!dir.join("dkg/round2.state").exists());
        results.push(p(&dir.join("public-result.json")));
    }
    // The steward assembles the configuration.
    let config = root.join("pseudonymiser.json");
    let mut args = vec!["config".to_string()];
    for r in &results {
        args.push("--result".into());
        args.push(r.clone());
    }
    for i in 1..=3 {
        args.push("--url".into());
        args.push(format!("{i}=https://127.0.0.1:{}", 9440 + i));
        args.push("--operator".into());
        args.push(format!("{i}=Region {i}"));
    }
    args.push("--out".into());
    args.push(p(&config));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a);
    let c = datadonor_schemas::threshold::PseudonymiserConfig::from_json(
        &std::fs::read(&config).expect("config"),
    )
    .expect("a valid configuration");
    assert_eq!((c.threshold, c.instances.len()), (2, 3));
    assert_eq!(c.instances[1].operator, "Region 2");

    // One instance served on a free port, with a development certificate.
    let ca = datadonor_pseudonymiser::tls::DevCa::new().expect("ca");
    ca.issue_into(&dirs[0], 1).expect("cert");
    let mut child = Command::new(BIN)
        .args(["serve", "--dir", &p(&dirs[0]), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("line");
    let url = line
        .trim()
        .strip_prefix("pseudonymiser instance 1 listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let body = rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("pem"))
            .use_rustls_tls()
            .build()
            .expect("client");
        client
            .get(format!("{url}/v1/public-share"))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text")
    });
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    use base64::Engine as _;
    assert_eq!(
        v["public_share"].as_str(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(c.instances[0].public_share)
                .as_str()
        )
    );
}
