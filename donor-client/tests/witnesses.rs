//! The donor client requiring a quorum of witnesses, against a live intake whose checkpoints two
//! real `datadonor-witness` servers (in process, over TLS) cosign: a donation's receipt is
//! anchored to a checkpoint cosigned by 2 of 2 and verifies; requiring a third witness that never
//! cosigned fails with the number of valid cosignatures found (and a donation's receipt is then
//! not accepted, but handed back); a quorum larger than the witnesses is refused; a forged
//! cosignature line is refused; the CLI pins `--witness` keys per intake.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use datadonor_client::client::{ClientError, Intake, IntakeConfig, WitnessPolicy};
use datadonor_client::donation::seal_donation;
use datadonor_client::keystore::Keystore;
use datadonor_client::minimise::{minimise_paths, MinimiseOptions};
use datadonor_client::session::{IntakeSession, SessionError};
use datadonor_client::{ConsentChoice, TrustAnchors};
use datadonor_intake::config::WitnessConfig;
use datadonor_schemas::cosignature::{Cosignature, CosignatureError, WitnessSigner};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::{Clock, SystemClock};
use datadonor_witness::server;

mod data;
use data::testdata;

fn signer(n: u8) -> WitnessSigner {
    WitnessSigner::new(
        &format!("witness.example/w{n}"),
        SigningKey::from_seed(&[40 + n; 32]).expect("key"),
    )
    .expect("signer")
}

fn vkey(n: u8) -> String {
    signer(n).public().to_vkey()
}

/// `note` with the cosignature line of `name` changed in one bit of its signature.
fn forge(note: &str, name: &str) -> String {
    let prefix = format!("\u{2014} {name} ");
    let mut out = String::new();
    let mut forged = false;
    for l in note.split_inclusive('\n') {
        if l.starts_with(&prefix) && !forged {
            let mut c = Cosignature::parse_line(l).expect("cosignature line");
            c.signature[0] ^= 1;
            out.push_str(&c.to_line());
            forged = true;
        } else {
            out.push_str(l);
        }
    }
    assert!(forged, "no line by {name} in {note}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_need_the_quorum_of_the_donors_witnesses() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let mut config = datadonor_intake::testkit::init_test_dir(d).expect("init");
    // The ledger's verifier key, as `GET /v1/ledger-key` serves it.
    let log = {
        let intake =
            datadonor_intake::Intake::open(config.clone(), Arc::new(SystemClock)).expect("open");
        let v = intake.state().0.verifier.clone();
        intake.shutdown();
        v
    };
    // Two witnesses of the ledger, served with the intake's development certificate.
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
    let ca = std::fs::read(d.join("tls/ca.pem")).expect("ca");
    let client =
        Intake::new(IntakeConfig::new(url.clone(), TrustAnchors::CaPem(ca))).expect("client");
    let both = vec![vkey(1), vkey(2)];
    let two_of_two = WitnessPolicy::from_vkeys(&both, 2).expect("policy");
    let session = IntakeSession::connect(client, None)
        .await
        .expect("connect")
        .with_witnesses(Some(two_of_two.clone()));

    // A donation: its receipt is anchored to a checkpoint both witnesses cosigned.
    let study = session
        .intake()
        .study(&StudyId::new("t2d-dk").expect("id"))
        .await
        .expect("study");
    let export = testdata("data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json");
    let rows = minimise_paths(
        &[export.as_path()],
        &study.definition,
        MinimiseOptions::default().with_postcode("5000"),
        &mut |_| {},
    )
    .expect("rows");
    let consent = ConsentChoice {
        purposes: vec!["t2d-epidemiology".into()],
        expires_in_days: 365,
        language: None,
    };
    let sealed = seal_donation(
        &study,
        &rows,
        &Pseudonym([0x5a; 32]),
        &SigningKey::generate().expect("donor key"),
        &consent,
        session.hpke(),
        SystemClock.now(),
    )
    .expect("sealed");
    let out = session.send_donation(&sealed).await.expect("donation");
    let witnessed = out.witnessed.clone().expect("a cosigned checkpoint");
    assert_eq!(
        witnessed.cosigned_by,
        ["witness.example/w1", "witness.example/w2"]
    );
    assert!(witnessed.checkpoint.size > out.receipt.receipt.ledger_index);

    // `verify`: against a current checkpoint cosigned by 2 of 2.
    let v = session
        .verify(&out.stored, Some(&witnessed.note))
        .await
        .expect("verify with 2 of 2");
    assert_eq!(v.cosigned_by.len(), 2);
    // Two of three, the third never cosigned: still met.
    let three = vec![vkey(1), vkey(2), vkey(3)];
    let two_of_three = WitnessPolicy::from_vkeys(&three, 2).expect("policy");
    let v = session
        .clone()
        .with_witnesses(Some(two_of_three))
        .verify(&out.stored, None)
        .await
        .expect("verify with 2 of 3");
    assert_eq!(v.cosigned_by.len(), 2);

    // All three required: after the bounded wait, the typed error says 2 valid of 3.
    let three_of_three = WitnessPolicy::from_vkeys(&three, 3)
        .expect("policy")
        .with_max_wait(Duration::from_millis(600));
    match session
        .clone()
        .with_witnesses(Some(three_of_three))
        .verify(&out.stored, None)
        .await
    {
        Err(SessionError::Client(ClientError::WitnessQuorum {
            valid: 2,
            quorum: 3,
        })) => {}
        other => panic!("expected the quorum error, got {other:?}"),
    }
    // A quorum of 3 out of 2 witnesses cannot be configured.
    assert!(matches!(
        WitnessPolicy::from_vkeys(&both, 3),
        Err(ClientError::Config(_))
    ));
    assert!(matches!(
        WitnessPolicy::from_vkeys(&[vkey(1), vkey(1)], 1),
        Err(ClientError::Config(_))
    ));

    // A forged cosignature line by a required witness is refused, never counted or skipped.
    let max_time = u64::try_from(SystemClock.now()).expect("time") + 60;
    let ledger = &session.ledger().verifier;
    two_of_two
        .check(witnessed.note.as_bytes(), ledger, max_time)
        .expect("the served note checks");
    let forged = forge(&witnessed.note, "witness.example/w1");
    match two_of_two.check(forged.as_bytes(), ledger, max_time) {
        Err(ClientError::Cosignature(CosignatureError::InvalidCosignature { name })) => {
            assert_eq!(name, "witness.example/w1");
        }
        other => panic!("expected an invalid cosignature, got {other:?}"),
    }
    let one_of_two = WitnessPolicy::from_vkeys(&both, 1).expect("policy");
    assert!(matches!(
        one_of_two.check(forged.as_bytes(), ledger, max_time),
        Err(ClientError::Cosignature(_))
    ));

    // A donation no checkpoint with the quorum covers: the receipt is not accepted, and the
    // error carries it so that it can be kept and verified later.
    let strict = session.clone().with_witnesses(Some(
        WitnessPolicy::from_vkeys(&three, 3)
            .expect("policy")
            .with_max_wait(Duration::from_millis(600)),
    ));
    let sealed = seal_donation(
        &study,
        &rows,
        &Pseudonym([0x5b; 32]),
        &SigningKey::generate().expect("donor key"),
        &consent,
        session.hpke(),
        SystemClock.now(),
    )
    .expect("sealed");
    match strict.send_donation(&sealed).await {
        Err(SessionError::NotWitnessed { stored, reason }) => {
            assert_eq!(stored.study_id, "t2d-dk");
            assert!(
                matches!(
                    *reason,
                    SessionError::Client(ClientError::WitnessQuorum { quorum: 3, .. })
                ),
                "{reason}"
            );
        }
        other => panic!("expected the receipt not to be accepted, got {other:?}"),
    }

    // The CLI: `--witness` keys are pinned for the intake and apply to the next commands.
    let home = tempfile::tempdir().expect("home");
    let ks = Keystore::open(home.path()).expect("keystore");
    ks.pin_ledger_key(&url, &session.ledger().info)
        .expect("pin ledger key");
    let receipt = ks.store_receipt(&out.stored).expect("receipt");
    let ca_path = d.join("tls/ca.pem");
    let (code, stdout, stderr) = cli(
        home.path(),
        &[
            "verify",
            &receipt.display().to_string(),
            "--ca",
            &ca_path.display().to_string(),
            "--witness",
            &vkey(1),
            "--witness",
            &vkey(2),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout
            .contains("cosigned by 2 required witnesses (witness.example/w1, witness.example/w2)"),
        "{stdout}"
    );
    let pin = ks.pinned_witnesses(&url).expect("read").expect("pinned");
    assert_eq!((pin.witnesses, pin.quorum), (both.clone(), 2));
    // Pinned: without --ca the receipt is no longer checked offline.
    let (code, _, stderr) = cli(home.path(), &["verify", &receipt.display().to_string()]).await;
    assert_eq!(code, Some(4), "{stderr}");
    // A quorum larger than the witnesses given is a usage error.
    let (code, _, stderr) = cli(
        home.path(),
        &[
            "verify",
            &receipt.display().to_string(),
            "--ca",
            &ca_path.display().to_string(),
            "--witness",
            &vkey(1),
            "--witness-quorum",
            "2",
        ],
    )
    .await;
    assert_eq!(code, Some(4), "{stderr}");

    intake.shutdown().await.expect("intake stops");
    for w in witnesses {
        w.shutdown().await;
    }
}

/// Runs the `datadonor` binary with the key store `home`; exit code, stdout, stderr.
async fn cli(home: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--keystore".to_string(), home.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_datadonor"))
            .args(&all)
            .env_remove("DATADONOR_PASSPHRASE")
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
