//! The intake with a `[[witnesses]]` entry and a real `datadonor-witness` over TLS: each
//! published checkpoint gets the witness's cosignature, the checkpoint endpoint serves it, the
//! next checkpoint is cosigned through a consistency proof, and after a restart the intake learns
//! the witness's size from its `409` and carries on.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datadonor_intake::config::WitnessConfig;
use datadonor_intake::{testkit, Intake};
use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::cosignature::{self, WitnessSigner};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::{Clock, SystemClock};
use datadonor_witness::state::StateDir;
use datadonor_witness::{server, Witness};

fn client(dir: &Path) -> reqwest::Client {
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.join("tls/ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

async fn donate(dir: &Path, http: &reqwest::Client, url: &str) {
    let study = testkit::load_study(dir, "t2d-dk").unwrap();
    let d = testkit::DonationBuilder::new(&study, testkit::current_hpke_key(dir).unwrap())
        .build()
        .unwrap();
    let r = http
        .post(format!("{url}/v1/donations"))
        .header("content-type", "application/vnd.datadonor.envelope.v1")
        .body(d.envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Polls the checkpoint endpoint until it carries the witness's cosignature of a tree larger
/// than `after`; returns its size.
async fn cosigned_size(
    http: &reqwest::Client,
    url: &str,
    log: &NoteVerifier,
    witness: &WitnessSigner,
    after: u64,
) -> u64 {
    let keys = [witness.public().clone()];
    for _ in 0..200 {
        let note = http
            .get(format!("{url}/v1/ledger/checkpoint"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let max_time = SystemClock.now() as u64 + 60;
        if let Ok((cp, found)) =
            cosignature::verify_quorum(note.as_bytes(), log, &keys, 1, max_time)
        {
            if cp.size > after {
                assert_eq!(found.len(), 1);
                return cp.size;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no cosigned checkpoint beyond size {after}");
}

#[tokio::test]
async fn checkpoints_are_cosigned_by_the_configured_witness() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = testkit::init_test_dir(dir.path()).unwrap();
    // The ledger's verifier key, as `GET /v1/ledger-key` serves it.
    let log = {
        let intake = Intake::open(config.clone(), Arc::new(SystemClock)).unwrap();
        let v = intake.state().0.verifier.clone();
        intake.shutdown();
        v
    };

    // A witness that knows the ledger, served with the intake's development certificate.
    let witness_key = || SigningKey::from_seed(&[42; 32]).unwrap();
    let signer = WitnessSigner::new("witness.example/w1", witness_key()).unwrap();
    let w = Witness::new(
        WitnessSigner::new("witness.example/w1", witness_key()).unwrap(),
        vec![(config.ledger.origin.clone(), log.clone())],
        StateDir::open(&dir.path().join("witness-state")).unwrap(),
        Arc::new(SystemClock),
    );
    let tls = datadonor_service::tls_config(
        &dir.path().join("tls/server.pem"),
        &dir.path().join("tls/server.key"),
    )
    .unwrap();
    let limits = datadonor_service::ConnLimits {
        max_connections: 16,
        handshake_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
    };
    let running = datadonor_service::start(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        server::router(Arc::new(w)),
        limits,
    )
    .await
    .unwrap();
    config.witnesses = vec![WitnessConfig {
        url: format!("https://localhost:{}", running.addr().port()),
        vkey: signer.public().to_vkey(),
        ca_cert: "tls/ca.pem".into(),
    }];

    let http = client(dir.path());
    let intake = datadonor_intake::start(config.clone()).await.unwrap();
    let url = intake.base_url();
    donate(dir.path(), &http, &url).await;
    let first = cosigned_size(&http, &url, &log, &signer, 0).await;
    // The next checkpoint: the witness moves only with a valid consistency proof.
    donate(dir.path(), &http, &url).await;
    let second = cosigned_size(&http, &url, &log, &signer, first).await;
    intake.shutdown().await.unwrap();

    // Restarted, the intake does not know the witness's size: it learns it from the 409.
    let intake = datadonor_intake::start(config).await.unwrap();
    let url = intake.base_url();
    donate(dir.path(), &http, &url).await;
    cosigned_size(&http, &url, &log, &signer, second).await;
    intake.shutdown().await.unwrap();
    running.shutdown().await;
}

#[test]
fn witness_entries_are_checked() {
    let signer =
        WitnessSigner::new("w.example/1", SigningKey::from_seed(&[7; 32]).unwrap()).unwrap();
    let entry = |url: &str, vkey: &str| {
        format!("[[witnesses]]\nurl = \"{url}\"\nvkey = \"{vkey}\"\nca_cert = \"ca.pem\"\n")
    };
    let vkey = signer.public().to_vkey();
    let c = datadonor_intake::Config::from_toml(&entry("https://w.example", &vkey)).unwrap();
    assert_eq!(c.witnesses.len(), 1);
    assert!(datadonor_intake::Config::from_toml(&entry("http://w.example", &vkey)).is_err());
    // A log (type 0x01) key is not a witness key.
    let note_vkey = NoteVerifier::new("w.example/1", *signer.public().public_key())
        .unwrap()
        .to_vkey();
    assert!(datadonor_intake::Config::from_toml(&entry("https://w.example", &note_vkey)).is_err());
    assert!(datadonor_intake::Config::from_toml(&format!(
        "{}quorum = 1\n",
        entry("https://w.example", &vkey)
    ))
    .is_err());
}

/// A witness that is down delays the cosigned checkpoint but nothing else: donations are
/// acknowledged (durable, with a receipt under the ledger's own checkpoint) while it is down,
/// and once it is up the intake has it cosign a checkpoint covering every one of them.
#[tokio::test]
async fn a_witness_that_is_down_delays_cosigning_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = testkit::init_test_dir(dir.path()).unwrap();
    let log = {
        let intake = Intake::open(config.clone(), Arc::new(SystemClock)).unwrap();
        let v = intake.state().0.verifier.clone();
        intake.shutdown();
        v
    };
    let signer = WitnessSigner::new(
        "witness.example/late",
        SigningKey::from_seed(&[43; 32]).unwrap(),
    )
    .unwrap();
    // A port with nothing behind it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    config.witnesses = vec![WitnessConfig {
        url: format!("https://localhost:{port}"),
        vkey: signer.public().to_vkey(),
        ca_cert: "tls/ca.pem".into(),
    }];
    let http = client(dir.path());
    let intake = datadonor_intake::start(config).await.unwrap();
    let url = intake.base_url();
    for _ in 0..3 {
        donate(dir.path(), &http, &url).await;
    }
    // Published, signed by the ledger, without a cosignature.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let note = http
        .get(format!("{url}/v1/ledger/checkpoint"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let size = checkpoint::open(note.as_bytes(), std::slice::from_ref(&log))
        .unwrap()
        .checkpoint
        .size;
    assert!(size >= 4, "{note}");
    assert!(!note.contains("witness.example/late"), "{note}");

    // The witness comes up on that port: the next interval has it cosign the whole tree.
    let tls = datadonor_service::tls_config(
        &dir.path().join("tls/server.pem"),
        &dir.path().join("tls/server.key"),
    )
    .unwrap();
    let running = server::start_for_log(
        WitnessSigner::new(
            "witness.example/late",
            SigningKey::from_seed(&[43; 32]).unwrap(),
        )
        .unwrap(),
        datadonor_intake::config::DEFAULT_ORIGIN,
        log.clone(),
        &dir.path().join("late-witness"),
        format!("127.0.0.1:{port}").parse().unwrap(),
        tls,
    )
    .await
    .unwrap();
    let cosigned = cosigned_size(&http, &url, &log, &signer, size - 1).await;
    assert_eq!(
        cosigned, size,
        "the cosigned tree holds every donation made while it was down"
    );
    intake.shutdown().await.unwrap();
    running.shutdown().await;
}
