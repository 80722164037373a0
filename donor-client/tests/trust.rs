//! What a donor can check without any token, against a real intake (in process, over TLS) and
//! real pseudonymiser instances: the consent notice is fetched by the hash the manifest signs and
//! shown before the confirmation; the study's steward key and bundle are pinned on first use and
//! a study or bundle by another key is refused; after more donations the receipt verifies against
//! the grown tree (inclusion and consistency, public proofs only); an intake that shows this
//! device two different trees of the same size, or a smaller tree than one it showed before, is
//! reported as a fork with both signed checkpoints kept as evidence; the witnesses a bundle names
//! are required without any flag.

use std::path::{Path, PathBuf};
use std::process::Command;

use datadonor_client::client::PublishedStudy;
use datadonor_client::keystore::{intake_dir_name, Keystore};
use datadonor_client::pins::{pin_study, PinError, PinOutcome};
use datadonor_client::session::ForkEvidence;
use datadonor_intake::config::WitnessConfig;
use datadonor_intake::init::EXAMPLE_NOTICE;
use datadonor_intake::ledger::LedgerSigner;
use datadonor_schemas::bundle::StudyBundle;
use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::cosignature::WitnessSigner;
use datadonor_schemas::merkle::Hash;
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::{Clock, SystemClock};
use datadonor_witness::server;

mod data;
use data::testdata;
#[path = "support/live.rs"]
mod live;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs the `datadonor` binary with the key store `home`; exit code, stdout, stderr.
async fn cli(home: &Path, args: &[String]) -> (Option<i32>, String, String) {
    let mut all = vec!["--keystore".to_string(), s(home)];
    all.extend(args.iter().cloned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_datadonor"))
            .args(&all)
            .env_remove("DATADONOR_PASSPHRASE")
            .env("LANG", "C")
            .output()
            .expect("run datadonor")
    })
    .await
    .expect("join the CLI thread");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Setup {
    _live: live::Live,
    home: tempfile::TempDir,
    intake_dir: PathBuf,
    pseudonymiser_ca: String,
}

async fn setup() -> (Setup, datadonor_intake::config::Config) {
    let (live, config) = live::prepare().await;
    let home = tempfile::tempdir().expect("keystore dir");
    std::fs::write(
        home.path().join("passphrase"),
        "correct horse battery staple\n",
    )
    .expect("passphrase file");
    let pseudonymiser_ca = s(&live.pseudonymiser_ca());
    let intake_dir = live.intake_dir.clone();
    (
        Setup {
            _live: live,
            home,
            intake_dir,
            pseudonymiser_ca,
        },
        config,
    )
}

fn donate_args(setup: &Setup, url: &str, ca: &str) -> Vec<String> {
    [
        "donate",
        "--study",
        "t2d-dk",
        "--input",
        &s(&testdata(
            "data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json",
        )),
        "--cpr",
        "0101721234",
        "--postcode",
        "5000",
        "--purpose",
        "t2d-epidemiology",
        "--expires-days",
        "365",
        "--intake",
        url,
        "--ca",
        ca,
        "--ca",
        &setup.pseudonymiser_ca,
        "--passphrase-file",
        &s(&setup.home.path().join("passphrase")),
        "--yes",
    ]
    .map(String::from)
    .to_vec()
}

/// The path after "stored in " at the end of the line starting with `prefix`.
fn stored_path(stdout: &str, prefix: &str) -> PathBuf {
    let l = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {stdout}"));
    PathBuf::from(l.rsplit_once(" stored in ").expect("path").1.trim())
}

fn ledger_signer(intake_dir: &Path) -> LedgerSigner {
    LedgerSigner::new(
        datadonor_intake::keys::load_ledger_key(intake_dir).expect("ledger key"),
        datadonor_intake::config::DEFAULT_ORIGIN,
    )
    .expect("signer")
}

/// The forks/ evidence files of a key store.
fn evidence(home: &Path) -> Vec<ForkEvidence> {
    let Ok(rd) = std::fs::read_dir(home.join("forks")) else {
        return Vec::new();
    };
    rd.map(|e| {
        let b = std::fs::read(e.expect("entry").path()).expect("read evidence");
        serde_json::from_slice(&b).expect("evidence parses")
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn notice_pin_more_donations_and_forks() {
    let (setup, config) = setup().await;
    let intake = datadonor_intake::start(config).await.expect("start intake");
    let url = intake.base_url();
    let ca = s(&intake.ca_pem_path());
    let home = setup.home.path();

    // 1. Donate: the notice itself is shown before the confirmation, and the study is pinned.
    let (code, stdout, stderr) = cli(home, &donate_args(&setup, &url, &ca)).await;
    assert_eq!(code, Some(0), "donate\n{stdout}\n{stderr}");
    let definition = datadonor_intake::testkit::load_study(&setup.intake_dir, "t2d-dk")
        .expect("study")
        .definition
        .clone();
    assert!(
        stdout.contains(&format!(
            "===== Consent notice (en, SHA-256 {}) =====",
            hex::encode(definition.notice_sha256)
        )),
        "{stdout}"
    );
    let notice_line = EXAMPLE_NOTICE
        .lines()
        .find(|l| l.len() > 40)
        .expect("a line of the notice");
    assert!(stdout.contains(notice_line), "{stdout}");
    assert!(stdout.contains("[x] t2d-epidemiology: "), "{stdout}");
    assert!(stdout.contains("[ ] t2d-care-quality: "), "{stdout}");
    assert!(
        stdout.find("Consent notice") < stdout.find("Donated "),
        "the notice comes before the donation: {stdout}"
    );
    assert!(
        stderr.contains("Pinned study t2d-dk on first use: steward key "),
        "{stderr}"
    );
    let pin_file = home
        .join("intakes")
        .join(intake_dir_name(&url))
        .join("studies/t2d-dk.json");
    assert!(pin_file.is_file(), "{}", pin_file.display());
    let receipt = stored_path(&stdout, "Donated ");

    // In Danish: the Danish notice is shown and its hash signed (the intake accepts it).
    let mut danish = donate_args(&setup, &url, &ca);
    danish.extend(["--language".to_string(), "da".to_string()]);
    let (code, stdout, stderr) = cli(home, &danish).await;
    assert_eq!(code, Some(0), "donate --language da\n{stdout}\n{stderr}");
    let da = definition
        .texts("da")
        .expect("the study gives Danish texts");
    assert!(
        stdout.contains(&format!(
            "===== Consent notice (da, SHA-256 {}) =====",
            hex::encode(da.notice_sha256)
        )),
        "{stdout}"
    );
    let danish_line = datadonor_intake::init::EXAMPLE_NOTICE_DA
        .lines()
        .find(|l| l.len() > 40)
        .expect("a line of the Danish notice");
    assert!(stdout.contains(danish_line), "{stdout}");
    assert!(stdout.contains(&format!("Study: {}", da.title)), "{stdout}");
    let (code, _, stderr) = {
        let mut other = donate_args(&setup, &url, &ca);
        other.extend(["--language".to_string(), "sv".to_string()]);
        cli(home, &other).await
    };
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("no notice in language \"sv\""), "{stderr}");

    // 2. More donations by others, then verify without any token: the receipt is in the grown
    // tree, which is consistent with the receipt's.
    let study = datadonor_intake::testkit::load_study(&setup.intake_dir, "t2d-dk").expect("study");
    let hpke = datadonor_intake::testkit::current_hpke_key(&setup.intake_dir).expect("hpke");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca")).expect("pem"),
        )
        .build()
        .expect("http");
    for _ in 0..3 {
        let d = datadonor_intake::testkit::DonationBuilder::new(&study, hpke)
            .build()
            .expect("donation");
        let r = http
            .post(format!("{url}/v1/donations"))
            .header("content-type", "application/vnd.datadonor.envelope.v1")
            .body(d.envelope)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
    }
    let verify = vec!["verify".to_string(), s(&receipt), "--ca".into(), ca.clone()];
    let (code, stdout, stderr) = cli(home, &verify).await;
    assert_eq!(code, Some(0), "verify\n{stdout}\n{stderr}");
    let size: u64 = stdout
        .split("current tree of ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tree size in {stdout}"));
    assert!(size >= 6, "{stdout}");

    // 3. A split view: this device was shown another tree of the same size (signed with the
    // ledger's key). The next verification reports a fork and keeps both checkpoints.
    let signer = ledger_signer(&setup.intake_dir);
    let checkpoint_file = home
        .join("intakes")
        .join(intake_dir_name(&url))
        .join("checkpoint");
    let honest = std::fs::read_to_string(&checkpoint_file).expect("last verified checkpoint");
    let other = signer.checkpoint(size, Hash([7u8; 32])).expect("forged");
    std::fs::write(&checkpoint_file, &other).expect("write");
    let (code, _, stderr) = cli(home, &verify).await;
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!("forked: two different trees of {size} entries")),
        "{stderr}"
    );
    let found = evidence(home);
    assert_eq!(found.len(), 1, "{found:?}");
    let verifier = NoteVerifier::parse_vkey(&signer.verifier().to_vkey()).expect("vkey");
    let a = checkpoint::open(found[0].earlier.as_bytes(), std::slice::from_ref(&verifier))
        .expect("earlier is signed by the ledger");
    let b = checkpoint::open(found[0].later.as_bytes(), std::slice::from_ref(&verifier))
        .expect("later is signed by the ledger");
    assert_eq!(a.checkpoint.size, b.checkpoint.size);
    assert_ne!(a.checkpoint.root, b.checkpoint.root);
    assert_eq!(found[0].earlier, other);
    assert!(found[0]
        .later
        .starts_with(honest.lines().next().expect("origin")));

    // 4. A rollback: the device had seen a larger tree than the intake now shows.
    let larger = signer
        .checkpoint(size + 10, Hash([9u8; 32]))
        .expect("forged");
    std::fs::write(&checkpoint_file, &larger).expect("write");
    let (code, _, stderr) = cli(home, &verify).await;
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains("is smaller than one verified before"),
        "{stderr}"
    );
    assert_eq!(evidence(home).len(), 2);

    // 5. The study signed by another steward key (a new study object and bundle, both by the
    // stranger) is refused against the pin.
    let ks = Keystore::open(home).expect("keystore");
    let stranger = SigningKey::generate().expect("key");
    let signed = SignedObject::sign(Context::StudyDefinition, &definition, &stranger);
    let restudy = PublishedStudy::from_signed(signed.clone(), None).expect("study");
    let bundle = StudyBundle::new(
        &definition,
        signed.payload_digest(),
        &signer.verifier().to_vkey(),
        Vec::new(),
        0,
    )
    .sign(&stranger);
    let opened = StudyBundle::open(&bundle, Some(&stranger.public_key())).expect("bundle");
    match pin_study(&ks, &url, &restudy, &opened, SystemClock.now()) {
        Err(PinError::StewardChanged { study, .. }) => assert_eq!(study, "t2d-dk"),
        other => panic!("expected StewardChanged, got {other:?}"),
    }
    // The same for a fresh device: trusted on first use.
    let fresh = tempfile::tempdir().expect("fresh");
    let ks2 = Keystore::open(fresh.path()).expect("keystore");
    assert_eq!(
        pin_study(&ks2, &url, &restudy, &opened, SystemClock.now()).expect("pin"),
        PinOutcome::First
    );
    assert_eq!(
        pin_study(&ks2, &url, &restudy, &opened, SystemClock.now()).expect("pin"),
        PinOutcome::Unchanged
    );

    intake.shutdown().await.expect("intake stops");
}

fn witness_signer(n: u8) -> WitnessSigner {
    WitnessSigner::new(
        &format!("witness.example/t{n}"),
        SigningKey::from_seed(&[60 + n; 32]).expect("key"),
    )
    .expect("signer")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bundles_witnesses_are_required_without_any_flag() {
    let (setup, mut config) = setup().await;
    let d = &setup.intake_dir;
    let log = ledger_signer(d).verifier().clone();
    let tls = datadonor_service::tls_config(&d.join("tls/server.pem"), &d.join("tls/server.key"))
        .expect("tls");
    let mut witnesses = Vec::new();
    for n in 1..=2 {
        let running = server::start_for_log(
            witness_signer(n),
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
            vkey: witness_signer(n).public().to_vkey(),
            ca_cert: "tls/ca.pem".into(),
        });
        witnesses.push(running);
    }
    // The steward signs a bundle naming both witnesses, quorum 2.
    let steward = SigningKey::from_key_file(
        &std::fs::read_to_string(d.join("steward/steward.key")).expect("steward key"),
    )
    .expect("steward");
    let signed_study =
        SignedObject::from_bytes(&std::fs::read(d.join("studies/t2d-dk.json")).expect("study"))
            .expect("signed study");
    let definition = StudyDefinition::from_json(&signed_study.payload).expect("definition");
    let bundle = StudyBundle::new(
        &definition,
        signed_study.payload_digest(),
        &log.to_vkey(),
        vec![
            witness_signer(1).public().to_vkey(),
            witness_signer(2).public().to_vkey(),
        ],
        2,
    );
    std::fs::write(
        d.join("studies/bundles/t2d-dk.json"),
        bundle.sign(&steward).to_bytes(),
    )
    .expect("bundle");
    let intake = datadonor_intake::start(config).await.expect("start intake");
    let url = intake.base_url();
    let ca = s(&intake.ca_pem_path());

    let (code, stdout, stderr) = cli(setup.home.path(), &donate_args(&setup, &url, &ca)).await;
    assert_eq!(code, Some(0), "donate\n{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("cosigned by 2 required witnesses (witness.example/t1, witness.example/t2)"),
        "{stdout}"
    );
    // `verify` requires them too, from the pinned bundle.
    let receipt = stored_path(&stdout, "Donated ");
    let (code, stdout, stderr) = cli(
        setup.home.path(),
        &["verify".to_string(), s(&receipt), "--ca".into(), ca],
    )
    .await;
    assert_eq!(code, Some(0), "verify\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("cosigned by 2 required witnesses"),
        "{stdout}"
    );

    intake.shutdown().await.expect("intake stops");
    for w in witnesses {
        w.shutdown().await;
    }
}
