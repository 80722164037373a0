//! What any donor reads without a token: the consent notice texts by hash, the steward-signed
//! study bundle, and the per-address rate limit on the public reads. Also the bundles the intake
//! refuses to start with.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{slug, Env};
use datadonor_intake::init::EXAMPLE_NOTICE;
use datadonor_intake::Intake;
use datadonor_schemas::bundle::{notice_sha256, StudyBundle};
use datadonor_schemas::cosignature::WitnessSigner;
use datadonor_schemas::signing::{PublicKey, SignedObject, SigningKey};
use datadonor_schemas::time::SystemClock;
use http::{header, Request, StatusCode};

fn steward_public(dir: &Path) -> PublicKey {
    let text = std::fs::read_to_string(dir.join("steward/steward.key.pub")).unwrap();
    PublicKey::from_base64(text.trim()).unwrap()
}

fn steward(dir: &Path) -> SigningKey {
    SigningKey::from_key_file(&std::fs::read_to_string(dir.join("steward/steward.key")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn notices_are_served_by_their_hash() {
    let env = Env::new();
    let hash = hex::encode(notice_sha256(EXAMPLE_NOTICE.as_bytes()));
    assert_eq!(hash, hex::encode(env.study.definition.notice_sha256));
    let req = Request::get(format!("/v1/notices/{hash}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let (s, h, body) = env.request(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.as_ref(), EXAMPLE_NOTICE.as_bytes());
    assert_eq!(h[header::CONTENT_TYPE], "text/markdown; charset=utf-8");
    assert!(h[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    // The Danish text, by the hash the study's Danish translation names.
    let da = env.study.definition.texts("da").unwrap().notice_sha256;
    let (s, body) = env
        .get(&format!("/v1/notices/{}", hex::encode(da)), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body.as_ref(),
        datadonor_intake::init::EXAMPLE_NOTICE_DA.as_bytes()
    );
    // Any other spelling of the hash, a hash of nothing served, or not a hash: 404.
    for path in [
        format!("/v1/notices/{}", hash.to_uppercase()),
        format!("/v1/notices/{}", &hash[..63]),
        format!("/v1/notices/{}", "0".repeat(64)),
        "/v1/notices/..%2Fconfig.toml".to_string(),
    ] {
        let (s, b) = env.get(&path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(slug(&b), "not-found");
    }
}

#[tokio::test]
async fn the_bundle_names_the_ledger_key_and_is_signed_by_the_steward() {
    let env = Env::new();
    let (s, body) = env.get("/v1/studies/t2d-dk/bundle", None).await;
    assert_eq!(s, StatusCode::OK);
    let signed = SignedObject::from_bytes(&body).unwrap();
    let b = StudyBundle::open(&signed, Some(&steward_public(env.path()))).unwrap();
    let (ledger_pk, _) = env.ledger_key().await;
    b.check_ledger(&ledger_pk).unwrap();
    b.check_study(
        &env.study.definition,
        &env.study.sha256,
        &steward_public(env.path()),
    )
    .unwrap();
    assert!(b.witnesses.is_empty());
    assert_eq!(b.signed.body.witness_quorum, 0);
    // Signed by another key it does not open against the steward's.
    assert!(
        StudyBundle::open(&signed, Some(&SigningKey::generate().unwrap().public_key())).is_err()
    );
    let (s, b) = env.get("/v1/studies/no-such-study/bundle", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(slug(&b), "not-found");
}

/// The bundle file of the example study in a data directory.
fn bundle_path(dir: &Path) -> std::path::PathBuf {
    dir.join("studies/bundles/t2d-dk.json")
}

/// Replace the bundle by `good` edited and signed with `key`.
fn rewrite_bundle(env: &Env, good: &[u8], key: &SigningKey, edit: impl FnOnce(&mut StudyBundle)) {
    let signed = SignedObject::from_bytes(good).unwrap();
    let mut b = StudyBundle::open(&signed, None).unwrap().signed.body;
    edit(&mut b);
    std::fs::write(bundle_path(env.path()), b.sign(key).to_bytes()).unwrap();
}

fn open_error(env: &Env) -> String {
    match Intake::open(env.config.clone(), Arc::new(SystemClock)) {
        Ok(_) => panic!("the intake started with a bad bundle"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_bundles_stop_the_intake_from_starting() {
    let mut env = Env::new();
    env.stop();
    let good = std::fs::read(bundle_path(env.path())).unwrap();
    let stranger = SigningKey::generate().unwrap();
    let steward = steward(env.path());

    rewrite_bundle(&env, &good, &stranger, |_| {});
    assert!(
        open_error(&env).contains("trusted_signers"),
        "{}",
        open_error(&env)
    );

    rewrite_bundle(&env, &good, &steward, |b| {
        b.ledger_vkey = {
            let other = datadonor_schemas::checkpoint::NoteVerifier::new(
                "datadonor.localhost/ledger",
                stranger.public_key().0,
            )
            .unwrap();
            other.to_vkey()
        }
    });
    assert!(
        open_error(&env).contains("another ledger key"),
        "{}",
        open_error(&env)
    );

    rewrite_bundle(&env, &good, &steward, |b| b.study_sha256[0] ^= 1);
    assert!(
        open_error(&env).contains("study_sha256"),
        "{}",
        open_error(&env)
    );

    let w = WitnessSigner::new("witness.example/w9", SigningKey::generate().unwrap()).unwrap();
    rewrite_bundle(&env, &good, &steward, |b| {
        b.witnesses = vec![w.public().to_vkey()];
        b.witness_quorum = 1;
    });
    assert!(
        open_error(&env).contains("not among the intake's [[witnesses]]"),
        "{}",
        open_error(&env)
    );

    rewrite_bundle(&env, &good, &steward, |b| b.witness_quorum = 1);
    assert!(
        open_error(&env).contains("witness_quorum"),
        "{}",
        open_error(&env)
    );

    std::fs::write(bundle_path(env.path()), &good).unwrap();
    env.restart();
    let (s, _) = env.get("/v1/studies/t2d-dk/bundle", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn public_reads_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datadonor_intake::testkit::init_test_dir(dir.path()).unwrap();
    config.limits.public_read_burst = 3;
    config.limits.public_reads_per_second = 0.01;
    let intake = datadonor_intake::start(config).await.unwrap();
    let url = intake.base_url();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(intake.ca_pem_path()).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let get = |p: &str| http.get(format!("{url}{p}")).send();
    for _ in 0..3 {
        assert_eq!(get("/v1/ledger/checkpoint").await.unwrap().status(), 200);
    }
    for p in [
        "/v1/ledger/checkpoint",
        "/v1/ledger/inclusion?index=0&size=1",
        "/v1/studies/t2d-dk/bundle",
    ] {
        let r = get(p).await.unwrap();
        assert_eq!(r.status(), 429, "{p}");
        assert_eq!(r.headers()[header::RETRY_AFTER.as_str()], "1");
        assert_eq!(slug(&r.bytes().await.unwrap()), "rate-limited");
    }
    // The study list and the keys a donation needs are not counted.
    for _ in 0..5 {
        assert_eq!(get("/v1/studies").await.unwrap().status(), 200);
        assert_eq!(get("/v1/hpke-config").await.unwrap().status(), 200);
    }
    intake.shutdown().await.unwrap();
}
