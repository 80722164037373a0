//! The steward's and auditor's commands of README's "Running the parts by hand" (the researcher's
//! run through the query service is in `examples/walkthrough.sh` and `tests/service.rs`),
//! run as the `datadonor-analytics` binary against a real intake over HTTPS: the demo steward
//! key and tokens `init` wrote (`@FILE`), the dev CA, the ledger read through the auditor
//! endpoints and the runs and erasures appended through `POST /v1/ledger/events`. The same
//! commands run once more against an intake writing its batches to an S3 bucket (`#[ignore]`d:
//! it needs the server `scripts/storage-servers.sh` starts), with `--batches s3://...`.

use std::path::{Path, PathBuf};
use std::process::Output;

use datadonor_intake::app::ENVELOPE_CONTENT_TYPE;
use datadonor_intake::testkit;
use datadonor_schemas::time::{Clock, SystemClock};

const QUERY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/t2d-query.toml");

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Run the CLI on a blocking thread, so that the intake keeps serving on the test's runtime.
async fn analytics(args: Vec<String>, envs: &[(&'static str, String)]) -> Output {
    let envs = envs.to_vec();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-analytics"))
            .args(&args)
            .envs(envs)
            .output()
            .expect("runs")
    })
    .await
    .expect("the CLI task")
}

fn ok(what: &str, out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{what}: {stderr}\n{stdout}");
    (stdout, stderr)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steward_researcher_and_auditor_commands_against_a_served_intake() {
    steward_and_auditor_commands(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 server: scripts/storage-servers.sh"]
async fn steward_and_auditor_commands_read_the_intakes_bucket() {
    let env = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| {
            panic!("{n} is not set: run scripts/storage-servers.sh start (as .ci/run does)")
        })
    };
    let id: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .expect("random")
        .expose();
    steward_and_auditor_commands(Some(Bucket {
        endpoint: env("DATADONOR_TEST_S3"),
        access_key: env("DATADONOR_TEST_S3_ACCESS_KEY"),
        secret_key: env("DATADONOR_TEST_S3_SECRET_KEY"),
        prefix: format!("intake-{}", hex::encode(id)),
    }))
    .await;
}

/// The S3 server the intake writes its batches to.
struct Bucket {
    endpoint: String,
    access_key: String,
    secret_key: String,
    prefix: String,
}

async fn steward_and_auditor_commands(bucket: Option<Bucket>) {
    let data = tempfile::tempdir().expect("intake dir");
    let d = data.path();
    let mut config = testkit::init_test_dir(d).expect("init");
    let mut envs: Vec<(&'static str, String)> = Vec::new();
    let batches = match &bucket {
        None => s(&d.join("batches/t2d-dk")),
        Some(b) => {
            config.storage.batches = datadonor_intake::config::BatchBackend::S3;
            config.storage.s3 = Some(datadonor_intake::config::S3Config {
                bucket: "datadonor".into(),
                endpoint: Some(b.endpoint.clone()),
                region: Some("us-east-1".into()),
                prefix: b.prefix.clone(),
                allow_http: true,
                access_key_id: Some(b.access_key.clone()),
                secret_access_key: Some(b.secret_key.clone()),
                retry_timeout_secs: datadonor_intake::config::DEFAULT_S3_RETRY_TIMEOUT_SECS,
            });
            envs = vec![
                ("AWS_ENDPOINT_URL", b.endpoint.clone()),
                ("AWS_ACCESS_KEY_ID", b.access_key.clone()),
                ("AWS_SECRET_ACCESS_KEY", b.secret_key.clone()),
                ("AWS_ALLOW_HTTP", "true".into()),
            ];
            format!("s3://datadonor/{}/t2d-dk", b.prefix)
        }
    };
    let envs = envs.as_slice();
    let intake = datadonor_intake::start(config)
        .await
        .expect("the intake starts");
    let url = intake.base_url();
    let work = tempfile::tempdir().expect("work dir");
    let w = |name: &str| -> PathBuf { work.path().join(name) };

    // Six donations over HTTPS, as the donor client would send them.
    let pem = std::fs::read(d.join("tls/ca.pem")).expect("dev CA");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .build()
        .expect("client");
    let study = testkit::load_study(d, "t2d-dk").expect("study");
    let hpke = testkit::current_hpke_key(d).expect("transport key");
    let mut donations = Vec::new();
    for _ in 0..6 {
        let mut b = testkit::DonationBuilder::new(&study, hpke);
        b.n_rows = 4;
        let donation = b.build().expect("donation");
        let resp = client
            .post(format!("{url}/v1/donations"))
            .header("content-type", ENVELOPE_CONTENT_TYPE)
            .body(donation.envelope.clone())
            .send()
            .await
            .expect("sent");
        assert!(resp.status().is_success(), "{}", resp.status());
        donations.push(donation);
    }

    let ledger_flags = |state: &Path| {
        args(&[
            "--ledger",
            &url,
            "--auditor-token",
            &format!("@{}", s(&d.join("auditor.token"))),
            "--ca",
            &s(&d.join("tls/ca.pem")),
            "--state-dir",
            &s(state),
        ])
    };
    let analytics_token = format!("@{}", s(&d.join("analytics.token")));

    // Steward: approve the example query with init's demo steward key.
    let out = analytics(
        args(&[
            "approve",
            "--spec",
            QUERY,
            "--key",
            &s(&d.join("steward/steward.key")),
            "--researcher",
            "researcher@sdu.example",
            "--valid-days",
            "30",
            "--max-runs",
            "3",
            "--epsilon",
            "1",
            "--study",
            &s(&d.join("studies/t2d-dk.json")),
            "--out",
            &s(&w("q.approval")),
        ]),
        envs,
    )
    .await;
    ok("approve", &out);

    // A donor withdraws; the steward compacts: one erasure, logged.
    let withdrawal = donations[0].withdrawal(SystemClock.now());
    let resp = client
        .post(format!("{url}/v1/withdrawals"))
        .header("content-type", "application/json")
        .body(withdrawal)
        .send()
        .await
        .expect("sent");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut compact = args(&[
        "compact",
        "--batches",
        &batches,
        "--vault-key",
        &s(&d.join("vault-private/vault.key")),
        "--study",
        "t2d-dk",
        "--analytics-token",
        &analytics_token,
    ]);
    compact.extend(ledger_flags(&w("steward")));
    let (stdout, _) = ok("compact", &analytics(compact, envs).await);
    assert!(
        stdout.starts_with("t2d-dk: 1 donor erased, ") && stdout.ends_with(" 1 ledger entry\n"),
        "{stdout}"
    );

    // Auditor: the log verifies and grew by the withdrawal and the erasure; a second
    // audit checks consistency with the head the first one kept.
    let auditor = w("auditor");
    let mut log = args(&["audit", "log"]);
    log.extend(ledger_flags(&auditor));
    let (stdout, _) = ok("audit log", &analytics(log.clone(), envs).await);
    assert!(stdout.contains("size: 15\n"), "{stdout}");
    assert!(stdout.contains("no previously verified head"), "{stdout}");
    let (stdout, _) = ok("audit log again", &analytics(log, envs).await);
    assert!(stdout.contains("size: 15\n"), "{stdout}");
    assert!(!stdout.contains("no previously verified head"), "{stdout}");

    let mut queries = args(&["audit", "queries"]);
    queries.extend(ledger_flags(&auditor));
    let (stdout, _) = ok("audit queries", &analytics(queries, envs).await);
    assert!(stdout.contains("totals: 0 runs (not checked"), "{stdout}");

    let mut batches = args(&[
        "audit",
        "batches",
        "--study",
        "t2d-dk",
        "--batches",
        &batches,
        "--vault-key",
        &s(&d.join("vault-private/vault.key")),
        "--html",
        &s(&w("report.html")),
    ]);
    batches.extend(ledger_flags(&auditor));
    let (stdout, _) = ok("audit batches", &analytics(batches, envs).await);
    assert!(
        stdout.contains("study t2d-dk: ") && stdout.contains(" 5 donors, 0 violations"),
        "{stdout}"
    );
    assert!(w("report.html").is_file());
    if bucket.is_some() {
        // Nothing of the study was written to the data directory.
        assert!(!d.join("batches/t2d-dk").exists());
    }

    intake.shutdown().await.expect("the intake stops");
}
