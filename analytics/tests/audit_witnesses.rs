//! `datadonor-analytics audit log --witness ... --witness-quorum N` against a real intake whose
//! checkpoints two real `datadonor-witness` servers (in process, over TLS) cosign: the audit
//! passes with 2 of 2 and with 2 of 3, and fails with exit status 4 when a witness that never
//! cosigned is required too; `audit consents` (any command reading the ledger) likewise.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use datadonor_intake::app::ENVELOPE_CONTENT_TYPE;
use datadonor_intake::config::WitnessConfig;
use datadonor_intake::testkit;
use datadonor_schemas::cosignature::WitnessSigner;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::SystemClock;
use datadonor_witness::server;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn signer(n: u8) -> WitnessSigner {
    WitnessSigner::new(
        &format!("witness.example/w{n}"),
        SigningKey::from_seed(&[60 + n; 32]).expect("key"),
    )
    .expect("signer")
}

fn vkey(n: u8) -> String {
    signer(n).public().to_vkey()
}

/// Run the CLI on a blocking thread, so that the intake keeps serving on the test's runtime.
async fn analytics(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-analytics"))
            .args(&args)
            .output()
            .expect("runs")
    })
    .await
    .expect("the CLI task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_require_the_witness_quorum() {
    let data = tempfile::tempdir().expect("intake dir");
    let d = data.path();
    let mut config = testkit::init_test_dir(d).expect("init");
    let log = {
        let intake =
            datadonor_intake::Intake::open(config.clone(), Arc::new(SystemClock)).expect("open");
        let v = intake.state().0.verifier.clone();
        intake.shutdown();
        v
    };
    let tls = datadonor_service::tls_config(&d.join("tls/server.pem"), &d.join("tls/server.key"))
        .expect("tls");
    let mut witnesses = Vec::new();
    for n in 1..=2 {
        let running = server::start_for_log(
            signer(n),
            &config.ledger.origin,
            log.clone(),
            &d.join(format!("witness-{n}")),
            "127.0.0.1:0".parse().expect("addr"),
            tls.clone(),
        )
        .await
        .expect("witness");
        config.witnesses.push(WitnessConfig {
            url: format!("https://localhost:{}", running.addr().port()),
            vkey: vkey(n),
            ca_cert: "tls/ca.pem".into(),
        });
        witnesses.push(running);
    }
    let intake = datadonor_intake::start(config).await.expect("intake");
    let url = intake.base_url();

    // Two donations over HTTPS.
    let pem = std::fs::read(d.join("tls/ca.pem")).expect("dev CA");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .build()
        .expect("client");
    let study = testkit::load_study(d, "t2d-dk").expect("study");
    let hpke = testkit::current_hpke_key(d).expect("transport key");
    for _ in 0..2 {
        let donation = testkit::DonationBuilder::new(&study, hpke)
            .build()
            .expect("donation");
        let resp = client
            .post(format!("{url}/v1/donations"))
            .header("content-type", ENVELOPE_CONTENT_TYPE)
            .body(donation.envelope)
            .send()
            .await
            .expect("sent");
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    let state = tempfile::tempdir().expect("state");
    let audit = |extra: &[String]| {
        let mut a: Vec<String> = [
            "audit",
            "log",
            "--ledger",
            &url,
            "--auditor-token",
            &format!("@{}", s(&d.join("auditor.token"))),
            "--ca",
            &s(&d.join("tls/ca.pem")),
            "--state-dir",
            &s(state.path()),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().cloned());
        a
    };
    let w = |n: u8| vec!["--witness".to_string(), vkey(n)];

    // 2 of 2 (the default quorum: all), waiting for the cosignatures if need be.
    let out = analytics(audit(&[w(1), w(2)].concat())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    assert!(
        stdout.contains(
            "cosigned by 2 of the required witnesses (quorum 2): witness.example/w1, witness.example/w2"
        ),
        "{stdout}"
    );

    // 2 of 3: the third witness's absence does not matter.
    let mut two_of_three = [w(1), w(2), w(3)].concat();
    two_of_three.extend(["--witness-quorum".to_string(), "2".to_string()]);
    let out = analytics(audit(&two_of_three)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 3 of 3: the checkpoint carries 2 valid cosignatures; the audit fails as a violation.
    let out = analytics(audit(&[w(1), w(2), w(3)].concat())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("2 valid witness cosignatures, the quorum is 3"),
        "{stderr}"
    );

    // Every audit command that reads the ledger requires the quorum in the same way.
    let consents = |extra: &[String]| {
        let mut a = audit(extra);
        a[1] = "consents".to_string();
        a.extend(["--study".to_string(), "t2d-dk".to_string()]);
        a
    };
    let out = analytics(consents(&[w(1), w(2)].concat())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let out = analytics(consents(&[w(1), w(2), w(3)].concat())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("2 valid witness cosignatures, the quorum is 3"),
        "{stderr}"
    );

    // A quorum larger than the witnesses given is an error, not an audit finding.
    let mut unreachable = w(1);
    unreachable.extend(["--witness-quorum".to_string(), "2".to_string()]);
    let out = analytics(audit(&unreachable)).await;
    assert_eq!(out.status.code(), Some(1));

    intake.shutdown().await.expect("intake stops");
    for r in witnesses {
        r.shutdown().await;
    }
}
