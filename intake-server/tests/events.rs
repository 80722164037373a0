//! `POST /v1/ledger/events`: analytics appends query runs and erasures; nothing else, and only
//! with the analytics credential.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use axum::body::Body;
use common::{slug, Env};
use datadonor_schemas::checkpoint;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::Clock;
use http::{Request, StatusCode};

async fn post_event(env: &Env, token: Option<&str>, body: Vec<u8>) -> (StatusCode, bytes::Bytes) {
    let mut b = Request::post("/v1/ledger/events").header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (s, _, body) = env.request(b.body(Body::from(body)).unwrap()).await;
    (s, body)
}

fn query_run(env: &Env, study: &str) -> LedgerEntry {
    LedgerEntry::QueryRun {
        time: env.clock.now(),
        study_id: StudyId::new(study).unwrap(),
        query_sha256: [1; 32],
        approval_sha256: [2; 32],
        researcher: "r@example".into(),
        purpose: "t2d-epidemiology".into(),
        donors_considered: 10,
        cells_published: 3,
        cells_suppressed: 1,
        privacy: None,
    }
}

#[tokio::test]
async fn analytics_appends_query_runs_with_its_token_only() {
    let env = Env::new();
    let token = std::fs::read_to_string(env.path().join("analytics.token")).unwrap();
    let token = token.trim();
    let entry = query_run(&env, "t2d-dk");
    let (before, _) = env.snapshot();

    // No token, the auditor's token, a wrong token: refused, nothing written.
    for t in [None, Some(env.token.as_str()), Some("00")] {
        let (s, b) = post_event(&env, t, entry.to_bytes()).await;
        assert_eq!(
            (s, slug(&b).as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    // Entry types analytics may not append.
    let forged = LedgerEntry::ConsentWithdrawn {
        time: env.clock.now(),
        study_id: StudyId::new("t2d-dk").unwrap(),
        pseudonym: datadonor_intake::testkit::random_pseudonym(),
        consent_record_id: [3; 16],
        withdrawal_sha256: [4; 32],
    };
    let (s, b) = post_event(&env, Some(token), forged.to_bytes()).await;
    assert_eq!(
        (s, slug(&b).as_str()),
        (StatusCode::FORBIDDEN, "forbidden-entry-type")
    );
    // Unknown study, malformed body, a time far from the intake's clock.
    let (s, b) = post_event(&env, Some(token), query_run(&env, "other-study").to_bytes()).await;
    assert_eq!(
        (s, slug(&b).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown-study")
    );
    let (s, b) = post_event(&env, Some(token), b"{\"type\":\"query_run\"}".to_vec()).await;
    assert_eq!(
        (s, slug(&b).as_str()),
        (StatusCode::BAD_REQUEST, "bad-request")
    );
    // A body larger than one ledger entry: a problem document, not the framework's text.
    let (s, b) = post_event(&env, Some(token), vec![b' '; 100 * 1024]).await;
    assert_eq!(
        (s, slug(&b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large")
    );
    for skew in [-301, 301, -3600] {
        let mut skewed = query_run(&env, "t2d-dk");
        if let LedgerEntry::QueryRun { time, .. } = &mut skewed {
            *time += skew;
        }
        let (s, b) = post_event(&env, Some(token), skewed.to_bytes()).await;
        assert_eq!(
            (s, slug(&b).as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "event-time-skew"),
            "{skew} s"
        );
    }
    assert_eq!(
        env.snapshot().0,
        before,
        "a refused event wrote to the ledger"
    );

    // Accepted: durable, included under a signed checkpoint.
    let (s, b) = post_event(&env, Some(token), entry.to_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let ack: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let index = ack["index"].as_u64().unwrap();
    let (_, vk) = env.ledger_key().await;
    let cp = checkpoint::open(ack["checkpoint"].as_str().unwrap().as_bytes(), &[vk]).unwrap();
    let proof: Vec<Vec<u8>> = ack["inclusion_proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    let leaf = merkle::leaf_hash(&entry.to_bytes());
    merkle::verify_inclusion(
        index,
        cp.checkpoint.size,
        &leaf.0,
        &proof,
        &cp.checkpoint.root.0,
    )
    .unwrap();
    assert!(env.snapshot().0 > before);
}
