//! Donation and withdrawal round trips against the recording test intake: receipts verify (also
//! against the current checkpoint with consistency), retries after a 503 and after a dropped
//! connection return the same receipt and never create a second donation, a wrong CA is refused.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use datadonor_client::client::{AuditorToken, ClientError, Intake, IntakeConfig, RetryPolicy};
use datadonor_client::keystore::{Keystore, Passphrase};
use datadonor_client::minimise::{minimise_paths, MinimiseOptions};
use datadonor_client::session::IntakeSession;
use datadonor_client::{ConsentChoice, MinimisedRows, PublishedStudy, TrustAnchors};
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::signing::SigningKey;
use support::TestIntake;

fn intake(server: &TestIntake, auditor: bool) -> Intake {
    let mut c = IntakeConfig::new(&server.url, TrustAnchors::CaPem(server.ca_pem.clone()));
    c.steward_key = Some(server.steward);
    c.retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    if auditor {
        c.auditor_token = Some(AuditorToken::new(&server.auditor_token()));
    }
    Intake::new(c).expect("intake")
}

fn bundle(prefix: &str) -> PathBuf {
    support::fhir_bundles()
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .expect("bundle")
}

fn rows(study: &PublishedStudy) -> MinimisedRows {
    let p = bundle("dab4861f");
    let r = minimise_paths(
        &[p.as_path()],
        &study.definition,
        MinimiseOptions::default().with_postcode("5000"),
        &mut |_| {},
    )
    .expect("minimise");
    assert!(!r.rows.is_empty());
    r
}

fn consent() -> ConsentChoice {
    ConsentChoice {
        purposes: vec!["t2d-epidemiology".into()],
        expires_in_days: 365,
        language: None,
    }
}

struct Setup {
    server: TestIntake,
    session: IntakeSession,
    study: PublishedStudy,
    rows: MinimisedRows,
    key: SigningKey,
    cpr: Cpr,
}

async fn setup(auditor: bool) -> Setup {
    let server = TestIntake::start().await;
    let intake = intake(&server, auditor);
    let session = IntakeSession::connect(intake, None).await.expect("connect");
    let study = session
        .intake()
        .study(&support::example_study().id)
        .await
        .expect("study");
    let rows = rows(&study);
    Setup {
        server,
        session,
        study,
        rows,
        key: SigningKey::generate().expect("key"),
        cpr: Cpr::parse("0101721234").expect("cpr"),
    }
}

#[tokio::test]
async fn donation_round_trip_verifies_and_stores_the_receipt() {
    let s = setup(false).await;
    let out = s
        .session
        .donate(&s.study, &s.rows, &s.cpr, &s.key, &consent())
        .await
        .expect("donate");
    assert_eq!(s.server.donations(), 1);
    assert_eq!(out.receipt.receipt.ledger_index, 1);
    assert_eq!(out.stored.pseudonym, out.pseudonym.to_hex());
    // Same donor, same study: the same pseudonym (the OPRF is deterministic under blinding).
    let p2 = s
        .session
        .intake()
        .pseudonym(&s.cpr, &s.study.definition)
        .await
        .expect("pseudonym");
    assert_eq!(p2.pseudonym, out.pseudonym);
    // Two of the three instances were combined, and the third verified as a spare.
    assert_eq!(p2.used.len(), 2);
    assert_eq!(p2.spare.len(), 1);
    assert!(p2.rejected.is_empty());

    let dir = tempfile::tempdir().expect("tmp");
    let ks = Keystore::open(dir.path()).expect("keystore");
    let path = ks.store_receipt(&out.stored).expect("store");
    assert_eq!(ks.receipts().expect("list").len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Without any token: the checkpoint and proofs are public, so the receipt is also checked
    // against the intake's current tree.
    let v = s.session.verify(&out.stored, None).await.expect("verify");
    assert!(v.current.is_some());
}

#[tokio::test]
async fn verify_checks_inclusion_and_consistency_against_the_current_checkpoint() {
    let s = setup(true).await;
    let out = s
        .session
        .donate(&s.study, &s.rows, &s.cpr, &s.key, &consent())
        .await
        .expect("donate");
    s.server.append_filler();
    let first = s.session.verify(&out.stored, None).await.expect("verify");
    let (size, note) = first.current.expect("current checkpoint");
    assert_eq!(size, 3);
    for _ in 0..5 {
        s.server.append_filler();
    }
    let second = s
        .session
        .verify(&out.stored, Some(&note))
        .await
        .expect("verify again");
    assert_eq!(second.current.expect("current").0, 8);
}

async fn retried(fault: impl FnOnce(&TestIntake)) {
    let s = setup(false).await;
    fault(&s.server);
    let out = s
        .session
        .donate(&s.study, &s.rows, &s.cpr, &s.key, &consent())
        .await
        .expect("donate despite the fault");
    assert_eq!(s.server.donations(), 1, "exactly one donation stored");
    assert_eq!(s.server.ledger_size(), 2, "consent + donation, once");
    let posts: Vec<_> = s
        .server
        .recorded()
        .into_iter()
        .filter(|r| r.path == "/v1/donations")
        .collect();
    assert_eq!(posts.len(), 3, "two faults, then success");
    assert!(
        posts.windows(2).all(|w| w[0].body == w[1].body),
        "every retry sends the same envelope bytes"
    );
    assert_eq!(out.receipt.receipt.ledger_index, 1);
}

#[tokio::test]
async fn retry_after_503_returns_the_same_receipt_and_no_second_donation() {
    retried(|s| s.fail_next_donations(2)).await;
}

#[tokio::test]
async fn retry_after_a_dropped_connection_returns_the_same_receipt() {
    retried(|s| s.drop_next_donations(2)).await;
}

#[tokio::test]
async fn withdrawal_round_trip() {
    let s = setup(false).await;
    let out = s
        .session
        .donate(&s.study, &s.rows, &s.cpr, &s.key, &consent())
        .await
        .expect("donate");
    let (receipt, stored) = s
        .session
        .withdraw(&out.stored, &s.key)
        .await
        .expect("withdraw");
    assert_eq!(receipt.receipt.ledger_index, 2);
    assert_eq!(stored.consent_record_id, out.stored.consent_record_id);
    assert!(s
        .server
        .is_withdrawn(&out.receipt.receipt.consent_record_id));
    let again = s.session.withdraw(&out.stored, &s.key).await;
    match again {
        Err(datadonor_client::SessionError::Client(ClientError::Problem {
            status, slug, ..
        })) => {
            assert_eq!((status, slug.as_str()), (409, "already-withdrawn"));
        }
        other => panic!("expected already-withdrawn, got {other:?}"),
    }
    // Another key cannot withdraw.
    let other = SigningKey::generate().expect("key");
    let out2 = s
        .session
        .donate(&s.study, &s.rows, &s.cpr, &s.key, &consent())
        .await
        .expect("donate");
    assert!(s.session.withdraw(&out2.stored, &other).await.is_err());
}

#[tokio::test]
async fn a_wrong_ca_is_refused_unless_verification_is_dangerously_disabled() {
    let server = TestIntake::start().await;
    let (other_ca, _, _) = support::test_ca();
    let wrong = Intake::new(IntakeConfig::new(
        &server.url,
        TrustAnchors::CaPem(other_ca.into_bytes()),
    ))
    .expect("intake");
    match wrong.studies().await {
        Err(ClientError::Network { detail, .. }) => {
            assert!(detail.to_lowercase().contains("certificate"), "{detail}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    let dangerous = Intake::new(IntakeConfig::new(
        &server.url,
        TrustAnchors::DangerousAcceptInvalidCerts,
    ))
    .expect("intake");
    assert_eq!(dangerous.studies().await.expect("studies"), ["t2d-dk"]);
}

#[tokio::test]
async fn a_changed_ledger_key_is_refused_after_pinning() {
    let server = TestIntake::start().await;
    let other = TestIntake::start().await;
    let pin = intake(&other, false)
        .ledger_key()
        .await
        .expect("ledger key");
    let r = IntakeSession::connect(intake(&server, false), Some(&pin)).await;
    assert!(matches!(
        r,
        Err(datadonor_client::SessionError::Client(
            ClientError::LedgerKeyChanged { .. }
        ))
    ));
}

#[test]
fn the_donor_key_is_stored_0600_and_encrypted_under_a_passphrase() {
    let dir = tempfile::tempdir().expect("tmp");
    let ks = Keystore::open(dir.path().join("ks")).expect("open");
    let pass = Passphrase::new("correct horse".into());
    let k1 = ks.donor_key(Some(&pass)).expect("create");
    let k2 = ks.donor_key(Some(&pass)).expect("load");
    assert_eq!(k1.public_key(), k2.public_key());
    assert!(ks.donor_key(None).is_err(), "passphrase required");
    assert!(ks
        .donor_key(Some(&Passphrase::new("wrong".into())))
        .is_err());
    let text = std::fs::read_to_string(dir.path().join("ks/donor-key.json")).expect("read");
    assert!(!text.contains(&hex::encode(k1.seed())));
    assert!(format!("{pass:?}").contains("redacted"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ks/donor-key.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(dir.path().join("ks"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }
}
