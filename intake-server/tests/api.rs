//! The HTTP API driven through `app()` with `oneshot`: the happy path, every refusal (with its
//! slug, and nothing written), idempotency, withdrawals, expiry, key rotation, the OPRF limit,
//! auditor endpoints and proofs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use axum::body::Body;
use base64::Engine as _;
use common::{slug, Env, ENVELOPE_CT};
use datadonor_intake::testkit;
use datadonor_schemas::checkpoint;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::Clock;
use http::{header, Request, StatusCode};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[tokio::test]
async fn happy_path_receipt_verifies() {
    let env = Env::new();
    let d = env.builder().build().unwrap();
    let (before_ledger, before_batches) = env.snapshot();
    let (s, body) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = env.verify(&body).await;
    assert_eq!(v.receipt.pseudonym, d.manifest.pseudonym);
    match &v.entry {
        LedgerEntry::DonationAccepted { rows, batch_id, .. } => {
            assert_eq!(*rows, 3);
            assert!(env
                .path()
                .join(format!("batches/t2d-dk/{batch_id}.ddb"))
                .exists());
        }
        other => panic!("unexpected entry {other:?}"),
    }
    let (after_ledger, after_batches) = env.snapshot();
    assert!(after_ledger > before_ledger);
    assert_eq!(after_batches.len(), before_batches.len() + 1);
    let (s, m) = env.get("/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("datadonor_donations_accepted_total 1"), "{m}");
    assert!(m.contains("datadonor_batch_flushes_total 1"));
    assert!(m.contains("datadonor_request_duration_seconds_count{route=\"/v1/donations\"} 1"));
}

#[tokio::test]
async fn public_endpoints() {
    let env = Env::new();
    let (s, b) = env.get("/v1/studies", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
        serde_json::json!({"studies":["t2d-dk"]})
    );
    let (s, b) = env.get("/v1/studies/t2d-dk", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b.as_ref(), env.study.signed_bytes.as_slice());
    let (s, b) = env.get("/v1/studies/nope-study", None).await;
    assert_eq!((s, slug(&b).as_str()), (StatusCode::NOT_FOUND, "not-found"));
    let (s, b) = env.get("/v1/hpke-config", None).await;
    assert_eq!(s, StatusCode::OK);
    let list = datadonor_schemas::envelope::HpkeConfigList::from_json(&b).unwrap();
    assert_eq!(list.current().unwrap(), env.hpke);
    let (s, b) = env.get("/healthz", None).await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, b"ok".as_ref()));
    let (s, b) = env.get("/v1/nothing-here", None).await;
    assert_eq!((s, slug(&b).as_str()), (StatusCode::NOT_FOUND, "not-found"));
}

fn replace_column(rows: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let idx = rows.schema().index_of(name).unwrap();
    let mut cols = rows.columns().to_vec();
    cols[idx] = col;
    RecordBatch::try_new(rows.schema(), cols).unwrap()
}

/// Send a donation, expect the refusal, and check nothing was written.
async fn refused(env: &Env, envelope: Vec<u8>, status: StatusCode, want: &str) {
    let before = env.snapshot();
    let (s, body) = env.donate(envelope).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (status, want),
        "body: {}",
        String::from_utf8_lossy(&body)
    );
    // Let any (wrongly) queued commit run before looking at the disk.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(env.snapshot(), before, "{want}: something was written");
}

#[tokio::test]
async fn every_rejection_has_its_slug_and_writes_nothing() {
    let env = Env::with_config(|c| {
        c.limits.max_rows_per_donation = 5;
        c.limits.max_body_bytes = 64 * 1024;
    });
    let now = env.clock.now();
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let bad = StatusCode::BAD_REQUEST;

    refused(
        &env,
        b"DDE1 not an envelope".to_vec(),
        bad,
        "malformed-envelope",
    )
    .await;

    let d = testkit::DonationBuilder::new(&env.study, (99, env.hpke.1))
        .build()
        .unwrap();
    refused(&env, d.envelope, bad, "unknown-key-id").await;

    let mut e = env.builder().build().unwrap().envelope;
    let last = e.len() - 1;
    e[last] ^= 1;
    refused(&env, e, bad, "decrypt-failed").await;

    let mut b = env.builder();
    b.manifest_bytes = Some(b"{\"not\":\"signed\"}".to_vec());
    refused(&env, b.build().unwrap().envelope, bad, "malformed-manifest").await;

    let other = SigningKey::generate().unwrap();
    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(move |m| m.donor_public_key = other.public_key()));
    refused(&env, b.build().unwrap().envelope, bad, "bad-signature").await;

    // A valid signed object whose signature bytes are tampered with.
    let donor = SigningKey::generate().unwrap();
    let m = testkit::manifest_for(&env.study, &donor, testkit::random_pseudonym(), now);
    let mut obj = m.sign(&donor);
    obj.signature[0] ^= 1;
    let mut b = env.builder();
    b.donor_key = Some(donor);
    b.pseudonym = m.pseudonym;
    b.manifest_bytes = Some(obj.to_bytes());
    refused(&env, b.build().unwrap().envelope, bad, "bad-signature").await;

    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(|m| m.study_version = 99));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "unknown-study",
    )
    .await;

    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(|m| m.study_sha256 = [0; 32]));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "study-mismatch",
    )
    .await;

    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(|m| m.controller.name = "Someone Else".into()));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "manifest-mismatch",
    )
    .await;

    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(|m| m.purposes = vec!["marketing".into()]));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "purpose-not-in-study",
    )
    .await;

    let mut b = env.builder();
    b.edit_manifest = Some(Box::new(move |m| {
        m.given_at = now - 100;
        m.expires_at = now - 1;
    }));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "consent-expired",
    )
    .await;

    let mut b = env.builder();
    b.rows_bytes = Some(b"definitely not arrow".to_vec());
    refused(&env, b.build().unwrap().envelope, bad, "malformed-rows").await;

    let p = testkit::random_pseudonym();
    let wrong = RecordBatch::try_from_iter(vec![(
        "donor",
        Arc::new(StringArray::from(vec![p.to_hex()])) as ArrayRef,
    )])
    .unwrap();
    let mut b = env.builder();
    b.pseudonym = p;
    b.rows = Some(wrong);
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "schema-mismatch",
    )
    .await;

    let p = testkit::random_pseudonym();
    let rows = testkit::sample_rows(&env.study.definition, &p, 2);
    let rows = replace_column(
        &rows,
        "hba1c",
        Arc::new(Float64Array::from(vec![Some(7.0), Some(99.0)])),
    );
    let mut b = env.builder();
    b.pseudonym = p;
    b.rows = Some(rows);
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "value-out-of-range",
    )
    .await;

    let mut b = env.builder();
    b.n_rows = 6;
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "too-many-rows",
    )
    .await;

    let mut b = env.builder();
    b.rows = Some(testkit::sample_rows(
        &env.study.definition,
        &testkit::random_pseudonym(),
        2,
    ));
    refused(
        &env,
        b.build().unwrap().envelope,
        unprocessable,
        "pseudonym-mismatch",
    )
    .await;

    refused(
        &env,
        vec![0u8; 65 * 1024],
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
    )
    .await;

    // Wrong content type.
    let before = env.snapshot();
    let d = env.builder().build().unwrap();
    let (s, body) = env.post("/v1/donations", "text/plain", d.envelope).await;
    assert_eq!((s, slug(&body).as_str()), (bad, "bad-request"));
    assert_eq!(env.snapshot(), before);

    // Refusals are counted by slug.
    let (_, m) = env.get("/metrics", None).await;
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.contains("datadonor_requests_rejected_total{reason=\"bad-signature\"} 2"),
        "{m}"
    );
    assert!(m.contains("datadonor_donations_accepted_total 0"));
}

#[tokio::test]
async fn idempotent_replay_and_conflict() {
    let env = Env::new();
    let d = env.builder().build().unwrap();
    let (s, first) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let before = env.snapshot();
    let (s, again) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first, again, "replay returns the same receipt");
    assert_eq!(env.snapshot(), before, "replay writes nothing");

    // Same key, different envelope (re-sealing alone changes the bytes).
    let mut b = env.builder();
    b.idempotency_key = d.idempotency_key;
    let (s, body) = env.donate(b.build().unwrap().envelope).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::CONFLICT, "idempotency-conflict")
    );
    assert_eq!(env.snapshot(), before);

    // Concurrent identical submissions land once.
    let d2 = env.builder().build().unwrap();
    let (a, b) = tokio::join!(
        env.donate(d2.envelope.clone()),
        env.donate(d2.envelope.clone())
    );
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let va = env.verify(&a.1).await;
    let vb = env.verify(&b.1).await;
    assert_eq!(va.receipt.ledger_index, vb.receipt.ledger_index);
}

#[tokio::test]
async fn second_donation_under_the_same_consent() {
    let env = Env::new();
    let d = env.builder().build().unwrap();
    let (s, _) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let size1 = env
        .intake
        .as_ref()
        .unwrap()
        .state()
        .sequencing()
        .unwrap()
        .state
        .read()
        .unwrap()
        .published_size();
    let mut b = env.builder();
    b.reuse = Some((&d.manifest, &d.donor_key));
    let (s, body) = env.donate(b.build().unwrap().envelope).await;
    assert_eq!(s, StatusCode::OK);
    env.verify(&body).await;
    let size2 = env
        .intake
        .as_ref()
        .unwrap()
        .state()
        .sequencing()
        .unwrap()
        .state
        .read()
        .unwrap()
        .published_size();
    assert_eq!(
        size2,
        size1 + 1,
        "no second ConsentGranted for the same record"
    );
}

#[tokio::test]
async fn withdrawals() {
    let env = Env::new();
    let now = env.clock.now();
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope.clone()).await.0, StatusCode::OK);

    // Forged: another donor's key signs a withdrawal of this consent.
    let other = env.builder().build().unwrap();
    assert_eq!(env.donate(other.envelope.clone()).await.0, StatusCode::OK);
    let before = env.snapshot();
    let forged = d.withdrawal_signed_by(&other.donor_key, now);
    let (s, body) = env.withdraw(forged).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::FORBIDDEN, "withdrawal-key-mismatch")
    );
    assert_eq!(env.snapshot(), before);

    // Unknown consent.
    let stranger = env.builder().build().unwrap();
    let (s, body) = env.withdraw(stranger.withdrawal(now)).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::NOT_FOUND, "unknown-consent")
    );

    // Tampered signature.
    let mut obj: datadonor_schemas::signing::SignedObject =
        serde_json::from_slice(&d.withdrawal(now)).unwrap();
    obj.signature[3] ^= 0x40;
    let (s, body) = env.withdraw(obj.to_bytes()).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad-signature")
    );
    let (s, body) = env.withdraw(b"{]".to_vec()).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad-request")
    );
    assert_eq!(env.snapshot(), before);

    // Good.
    let w = d.withdrawal(now);
    let (s, body) = env.withdraw(w.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = env.verify(&body).await;
    assert!(matches!(v.entry, LedgerEntry::ConsentWithdrawn { .. }));
    // Replay of the same withdrawal: same receipt.
    let (s, again) = env.withdraw(w).await;
    assert_eq!((s, &again), (StatusCode::OK, &body));
    // A different withdrawal of the same consent.
    let (s, b2) = env.withdraw(d.withdrawal(now + 1)).await;
    assert_eq!(
        (s, slug(&b2).as_str()),
        (StatusCode::CONFLICT, "already-withdrawn")
    );
    // Donating again under the withdrawn consent record.
    let mut b = env.builder();
    b.reuse = Some((&d.manifest, &d.donor_key));
    let (s, b3) = env.donate(b.build().unwrap().envelope).await;
    assert_eq!(
        (s, slug(&b3).as_str()),
        (StatusCode::CONFLICT, "already-withdrawn")
    );
}

#[tokio::test]
async fn consent_expires_with_time() {
    let env = Env::new();
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope.clone()).await.0, StatusCode::OK);
    env.clock.advance(366 * 86_400);
    let before = env.snapshot();
    let mut b = env.builder();
    b.reuse = Some((&d.manifest, &d.donor_key));
    let (s, body) = env.donate(b.build().unwrap().envelope).await;
    assert_eq!(
        (s, slug(&body).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "consent-expired")
    );
    assert_eq!(env.snapshot(), before);
}

#[tokio::test]
async fn retired_key_after_rotation_grace() {
    let mut env = Env::with_config(|c| c.keys.transport_key_grace_secs = 3600);
    let old = env.hpke;
    // Rotation needs the directory lock: stop the intake first.
    env.stop();
    let new_id = datadonor_intake::rotate_transport_key(&env.config, env.clock.now()).unwrap();
    assert_eq!(new_id, old.0 + 1);
    env.restart();
    let (_, b) = env.get("/v1/hpke-config", None).await;
    let list = datadonor_schemas::envelope::HpkeConfigList::from_json(&b).unwrap();
    let ids: Vec<u32> = list.configs.iter().map(|c| c.key_id).collect();
    assert_eq!(
        ids,
        vec![new_id, old.0],
        "current first, then the key in grace"
    );

    // Within grace the old key works.
    let d = testkit::DonationBuilder::new(&env.study, old)
        .build()
        .unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    // After grace it is refused, and no longer published.
    env.clock.advance(3601);
    let mut b = testkit::DonationBuilder::new(&env.study, old);
    b.now = env.clock.now();
    refused(
        &env,
        b.build().unwrap().envelope,
        StatusCode::BAD_REQUEST,
        "unknown-key-id",
    )
    .await;
    let (_, b) = env.get("/v1/hpke-config", None).await;
    let list = datadonor_schemas::envelope::HpkeConfigList::from_json(&b).unwrap();
    assert_eq!(list.configs.len(), 1);
    // The rotation is in the ledger.
    let (_, body) = env.audit("/v1/ledger/entries?start=0&end=2").await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let e1 = b64().decode(v["entries"][1].as_str().unwrap()).unwrap();
    assert!(matches!(
        LedgerEntry::from_bytes(&e1).unwrap(),
        LedgerEntry::KeyRotated { key_id, .. } if key_id == new_id
    ));
    // After a restart past grace the old private key file is deleted.
    env.restart();
    assert!(!env
        .path()
        .join(format!("keys/transport-{}.key", old.0))
        .exists());
}

#[tokio::test]
async fn the_intake_evaluates_no_oprf() {
    // Pseudonyms come from the threshold pseudonymisation service; the intake holds no key
    // share and has no evaluation endpoint.
    let env = Env::new();
    let req = Request::post("/v1/oprf")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"blinded":"AAAA"}"#))
        .unwrap();
    let (s, _, b) = env.request(req).await;
    assert_eq!((s, slug(&b).as_str()), (StatusCode::NOT_FOUND, "not-found"));
}

#[tokio::test]
async fn tree_heads_and_proofs_are_public_entries_need_the_token() {
    let env = Env::new();
    // A donor checks a receipt without any token: the checkpoint (revalidated on every use) and
    // proofs between published sizes (immutable, cacheable) name no donor.
    for (path, cache) in [
        ("/v1/ledger/checkpoint", "no-cache"),
        (
            "/v1/ledger/inclusion?index=0&size=1",
            "public, max-age=31536000, immutable",
        ),
        (
            "/v1/ledger/consistency?from=1&to=1",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let (s, h, _) = env.request(req).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(
            h.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
            Some(cache),
            "{path}"
        );
    }
    // Entries carry pseudonyms: auditors only.
    for path in ["/v1/ledger/entries?start=0&end=1"] {
        let (s, b) = env.get(path, None).await;
        assert_eq!(
            (s, slug(&b).as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{path}"
        );
        let (s, _) = env.get(path, Some(&"0".repeat(64))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        let (s, _) = env.audit(path).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
}

async fn checkpoint_now(env: &Env) -> checkpoint::SignedCheckpoint {
    let (_, vk) = env.ledger_key().await;
    let (s, note) = env.audit("/v1/ledger/checkpoint").await;
    assert_eq!(s, StatusCode::OK);
    checkpoint::open(&note, &[vk]).unwrap()
}

#[tokio::test]
async fn consistency_and_inclusion_proofs_verify() {
    let env = Env::new();
    for _ in 0..3 {
        let d = env.builder().build().unwrap();
        assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    }
    let c1 = checkpoint_now(&env).await.checkpoint;
    let mut last = None;
    for _ in 0..4 {
        let d = env.builder().build().unwrap();
        let (s, b) = env.donate(d.envelope).await;
        assert_eq!(s, StatusCode::OK);
        last = Some(b);
    }
    let c2 = checkpoint_now(&env).await.checkpoint;
    assert!(c2.size > c1.size);
    let (s, body) = env
        .audit(&format!(
            "/v1/ledger/consistency?from={}&to={}",
            c1.size, c2.size
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let proof: Vec<Vec<u8>> = v["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    datadonor_schemas::merkle::verify_consistency(c1.size, c2.size, &proof, &c1.root.0, &c2.root.0)
        .unwrap();

    // Entries hash to the leaves proven by inclusion proofs under c2.
    let (s, body) = env
        .audit(&format!("/v1/ledger/entries?start=0&end={}", c2.size))
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, c2.size);
    for (i, e) in entries.iter().enumerate() {
        let bytes = b64().decode(e.as_str().unwrap()).unwrap();
        let (s, pb) = env
            .audit(&format!("/v1/ledger/inclusion?index={i}&size={}", c2.size))
            .await;
        assert_eq!(s, StatusCode::OK);
        let pv: serde_json::Value = serde_json::from_slice(&pb).unwrap();
        let proof: Vec<Vec<u8>> = pv["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
            .collect();
        let leaf = datadonor_schemas::merkle::leaf_hash(&bytes);
        datadonor_schemas::merkle::verify_inclusion(i as u64, c2.size, &leaf.0, &proof, &c2.root.0)
            .unwrap();
    }
    // The last receipt verifies against c2's key too.
    env.verify(&last.unwrap()).await;

    // A range reaching past the log is answered with the entries that exist.
    let (s, b) = env
        .audit(&format!("/v1/ledger/entries?start=0&end={}", c2.size + 5))
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert!(v["entries"].as_array().unwrap().len() as u64 >= c2.size);

    // Out of range or malformed queries.
    for q in [
        format!(
            "/v1/ledger/entries?start={}&end={}",
            c2.size + 1,
            c2.size + 2
        ),
        "/v1/ledger/entries?start=0&end=1001".to_string(),
        "/v1/ledger/consistency?from=0&to=1".to_string(),
        format!("/v1/ledger/inclusion?index={}&size={}", c2.size, c2.size),
        "/v1/ledger/inclusion?index=x&size=1".to_string(),
        "/v1/ledger/inclusion".to_string(),
    ] {
        let (s, b) = env.audit(&q).await;
        assert_eq!(
            (s, slug(&b).as_str()),
            (StatusCode::BAD_REQUEST, "bad-request"),
            "{q}"
        );
    }
}

#[tokio::test]
async fn idempotency_survives_restart() {
    let mut env = Env::new();
    let d = env.builder().build().unwrap();
    let (s, first) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    env.restart();
    let before = env.snapshot();
    let (s, again) = env.donate(d.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let (a, b) = (env.verify(&first).await, env.verify(&again).await);
    assert_eq!(a.receipt.ledger_index, b.receipt.ledger_index);
    assert_eq!(env.snapshot(), before);
    let _ = ENVELOPE_CT;
}
