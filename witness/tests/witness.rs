//! The witness against the C2SP tlog-witness rules: it cosigns a consistent sequence and refuses
//! rollback, forks (two roots at one size), bad proofs, forged log signatures and unknown logs;
//! its state survives a restart; it accepts the reference witness's published checkpoints; and
//! it serves over TLS through the shared accept loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::cosignature::{
    self, AddCheckpointRequest, WitnessKey, WitnessSigner, SIZE_CONTENT_TYPE,
};
use datadonor_schemas::merkle::{self, Hash};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::ManualClock;
use datadonor_witness::state::{origin_hash, StateDir};
use datadonor_witness::{server, Witness};
use tower::ServiceExt as _;

const ORIGIN: &str = "datadonor.example/ledger";
const NOW: i64 = 1_767_225_600;

fn ledger_key() -> SigningKey {
    SigningKey::from_seed(&[1; 32]).expect("key")
}

fn log_verifier() -> NoteVerifier {
    NoteVerifier::new(ORIGIN, ledger_key().public_key().0).expect("verifier")
}

fn witness_signer() -> WitnessSigner {
    WitnessSigner::new(
        "witness.example/w1",
        SigningKey::from_seed(&[2; 32]).expect("key"),
    )
    .expect("signer")
}

fn leaves(n: u64, fork: bool) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            let tag = if fork && i >= 5 { "fork" } else { "main" };
            merkle::leaf_hash(format!("{tag} {i}").as_bytes())
        })
        .collect()
}

/// The log's signed checkpoint of the first `n` leaves.
fn note_of(l: &[Hash], key: &SigningKey) -> String {
    let cp = Checkpoint::new(ORIGIN, l.len() as u64, merkle::root(l)).expect("cp");
    checkpoint::sign(&cp, ORIGIN, key.key_pair()).expect("sign")
}

fn request(old: u64, proof: Vec<Hash>, note: &str) -> Vec<u8> {
    AddCheckpointRequest {
        old_size: old,
        proof,
        note: note.as_bytes().to_vec(),
    }
    .to_bytes()
}

/// The request moving the witness from `old` to `new` leaves of one history.
fn step(l: &[Hash], old: u64) -> Vec<u8> {
    let proof = if old == 0 {
        Vec::new()
    } else {
        merkle::consistency_proof(l, old).expect("proof")
    };
    request(old, proof, &note_of(l, &ledger_key()))
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: PathBuf,
    app: axum::Router,
}

fn witness_at(state: &Path, logs: Vec<(String, NoteVerifier)>) -> axum::Router {
    let w = Witness::new(
        witness_signer(),
        logs,
        StateDir::open(state).expect("state"),
        Arc::new(ManualClock::new(NOW)),
    );
    server::router(Arc::new(w))
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let app = witness_at(&state, vec![(ORIGIN.to_string(), log_verifier())]);
    Fixture {
        _dir: dir,
        state,
        app,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn post(app: &axum::Router, body: Vec<u8>) -> Answer {
    let req = Request::post("/add-checkpoint")
        .body(Body::from(body))
        .expect("request");
    send(app, req).await
}

fn problem_type(a: &Answer) -> String {
    assert_eq!(a.content_type, server::PROBLEM_CONTENT_TYPE, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("problem JSON");
    v["type"].as_str().expect("type").to_string()
}

/// Checks a 200 answer: one cosignature line by the witness over the checkpoint of `l`.
fn assert_cosigned(a: &Answer, l: &[Hash]) {
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let body = Checkpoint::new(ORIGIN, l.len() as u64, merkle::root(l))
        .expect("cp")
        .to_body();
    let c = cosignature::verify_response(
        &body,
        a.body.as_bytes(),
        witness_signer().public(),
        NOW as u64,
    )
    .expect("a valid cosignature by the witness");
    assert_eq!(c.timestamp, NOW as u64);
}

fn assert_conflict(a: &Answer, size: u64) {
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.content_type, SIZE_CONTENT_TYPE);
    assert_eq!(a.body, format!("{size}\n"));
}

#[tokio::test]
async fn cosigns_a_consistent_sequence() {
    let f = fixture();
    let l = leaves(12, false);
    // Unknown state: `old 0` learns nothing until the first cosignature.
    assert_cosigned(&post(&f.app, step(&l[..3], 0)).await, &l[..3]);
    assert_cosigned(&post(&f.app, step(&l[..7], 3)).await, &l[..7]);
    // The same head again (a fresh timestamp).
    assert_cosigned(&post(&f.app, step(&l[..7], 7)).await, &l[..7]);
    assert_cosigned(&post(&f.app, step(&l[..12], 7)).await, &l[..12]);
    // The monitoring endpoint serves the cosigned checkpoint, which a quorum of one accepts.
    let get = Request::get(format!("/{}/checkpoint", origin_hash(ORIGIN)))
        .body(Body::empty())
        .expect("request");
    let a = send(&f.app, get).await;
    assert_eq!(a.status, StatusCode::OK);
    let keys = [witness_signer().public().clone()];
    let (cp, found) =
        cosignature::verify_quorum(a.body.as_bytes(), &log_verifier(), &keys, 1, NOW as u64)
            .expect("cosigned note");
    assert_eq!((cp.size, found.len()), (12, 1));
    // A log with no cosigned checkpoint: 404.
    let get = Request::get(format!("/{}/checkpoint", origin_hash("other")))
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&f.app, get).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refuses_rollback() {
    let f = fixture();
    let l = leaves(9, false);
    assert_cosigned(&post(&f.app, step(&l[..7], 0)).await, &l[..7]);
    // A smaller tree with old = the witness's size: old after new, 400.
    let a = post(
        &f.app,
        request(7, Vec::new(), &note_of(&l[..5], &ledger_key())),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:old-after-new");
    // A smaller tree claiming a smaller old size: 409 with the witness's size.
    assert_conflict(&post(&f.app, step(&l[..5], 3)).await, 7);
    assert_conflict(&post(&f.app, step(&l[..5], 0)).await, 7);
    // Still at 7.
    assert_cosigned(&post(&f.app, step(&l[..9], 7)).await, &l[..9]);
}

#[tokio::test]
async fn refuses_a_fork_and_keeps_the_evidence() {
    let f = fixture();
    let main = leaves(9, false);
    let fork = leaves(9, true);
    assert_cosigned(&post(&f.app, step(&main[..7], 0)).await, &main[..7]);
    let cosigned = send(
        &f.app,
        Request::get(format!("/{}/checkpoint", origin_hash(ORIGIN)))
            .body(Body::empty())
            .expect("request"),
    )
    .await
    .body;
    // Split view: another root at the same size, validly signed by the log.
    let a = post(&f.app, step(&fork[..7], 7)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:fork");
    let doc: serde_json::Value = serde_json::from_str(&a.body).expect("json");
    assert_eq!(doc["cosigned_checkpoint"].as_str(), Some(cosigned.as_str()));
    // A larger tree of the other history, with that history's own proof from 7.
    let a = post(&f.app, step(&fork[..9], 7)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:inconsistent");
    let evidence = StateDir::open(&f.state).expect("state").evidence();
    assert_eq!(evidence.len(), 2, "both refused heads are kept");
    // Nothing moved: the main history continues from 7.
    assert_conflict(&post(&f.app, step(&main[..9], 0)).await, 7);
    assert_cosigned(&post(&f.app, step(&main[..9], 7)).await, &main[..9]);
}

#[tokio::test]
async fn refuses_bad_proofs() {
    let f = fixture();
    let l = leaves(9, false);
    assert_cosigned(&post(&f.app, step(&l[..4], 0)).await, &l[..4]);
    let note = note_of(&l[..9], &ledger_key());
    let mut proof = merkle::consistency_proof(&l[..9], 4).expect("proof");
    proof[0].0[0] ^= 1;
    let a = post(&f.app, request(4, proof, &note)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:inconsistent");
    let a = post(&f.app, request(4, Vec::new(), &note)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    // From size 0 the proof must be empty.
    let g = fixture();
    let a = post(&g.app, request(0, vec![l[0]], &note)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:proof-from-zero");
    // A tree of size 0 must have the empty tree's root.
    let zero = Checkpoint::new(ORIGIN, 0, l[0]).expect("cp");
    let zero = checkpoint::sign(&zero, ORIGIN, ledger_key().key_pair()).expect("sign");
    let a = post(&g.app, request(0, Vec::new(), &zero)).await;
    assert_eq!(problem_type(&a), "urn:datadonor:problem:empty-tree-root");
    // Malformed bodies: 400; too large: 413.
    let a = post(&g.app, b"old 01\n\n".to_vec()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = post(&g.app, vec![b'a'; cosignature::MAX_REQUEST_SIZE + 1]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn refuses_forged_signatures_and_unknown_logs() {
    let f = fixture();
    let l = leaves(5, false);
    let mallory = SigningKey::from_seed(&[9; 32]).expect("key");
    // Signed by another key under the log's name: no valid signature by the log's key, 403.
    let a = post(&f.app, request(0, Vec::new(), &note_of(&l, &mallory))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:bad-log-signature");
    // The log's signature with a changed root: 403.
    let good = note_of(&l, &ledger_key());
    let other_root = base64_of(&merkle::root(&l[..4]));
    let a = post(
        &f.app,
        request(
            0,
            Vec::new(),
            &good.replacen(&base64_of(&merkle::root(&l)), &other_root, 1),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // An origin the witness does not know: 404, whatever the signature.
    let cp = Checkpoint::new("elsewhere.example/log", 5, merkle::root(&l)).expect("cp");
    let other =
        checkpoint::sign(&cp, "elsewhere.example/log", ledger_key().key_pair()).expect("sign");
    let a = post(&f.app, request(0, Vec::new(), &other)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(problem_type(&a), "urn:datadonor:problem:unknown-log");
    // Nothing was cosigned.
    assert_cosigned(&post(&f.app, step(&l, 0)).await, &l);
}

fn base64_of(h: &Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

#[tokio::test]
async fn restart_keeps_state() {
    let f = fixture();
    let l = leaves(10, false);
    assert_cosigned(&post(&f.app, step(&l[..6], 0)).await, &l[..6]);
    drop(f.app);
    let again = witness_at(&f.state, vec![(ORIGIN.to_string(), log_verifier())]);
    assert_conflict(&post(&again, step(&l[..10], 0)).await, 6);
    assert_conflict(&post(&again, step(&l[..10], 3)).await, 6);
    assert_cosigned(&post(&again, step(&l[..10], 6)).await, &l[..10]);
    let third = witness_at(&f.state, vec![(ORIGIN.to_string(), log_verifier())]);
    assert_conflict(&post(&third, step(&l[..10], 6)).await, 10);
}

#[tokio::test]
async fn concurrent_requests_from_one_size_cosign_once() {
    let f = fixture();
    let l = leaves(20, false);
    assert_cosigned(&post(&f.app, step(&l[..4], 0)).await, &l[..4]);
    let mut tasks = Vec::new();
    for n in 5..=20u64 {
        let app = f.app.clone();
        let body = step(&l[..n as usize], 4);
        tasks.push(tokio::spawn(async move { post(&app, body).await.status }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one request moves the witness from size 4");
}

// ---------------------------------------------------------------------------------------------
// The reference witness's published checkpoints (testdata/vectors/tlog-witness/).

fn go_literal(src: &str, ident: &str) -> String {
    let line = src
        .lines()
        .find(|l| {
            l.trim_start()
                .strip_prefix(ident)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .unwrap_or_else(|| panic!("no {ident}"));
    let start = line.find('"').expect("literal") + 1;
    let end = start + line[start..].find('"').expect("end");
    line[start..end].replace("\\n", "\n")
}

#[tokio::test]
async fn accepts_the_reference_witness_checkpoints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors/tlog-witness/transparency-dev-witness-witness_test.go");
    let src = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
    let log = NoteVerifier::parse_vkey(&go_literal(&src, "mPK")).expect("vkey");
    let init = go_literal(&src, "mInit");
    let next = go_literal(&src, "mNext");
    let block = &src[src.find("consProof = [][]byte{").expect("proof")..];
    let block = &block[..block.find('}').expect("end")];
    let proof: Vec<Hash> = block
        .split("dh(\"")
        .skip(1)
        .map(|s| Hash::from_slice(&hex::decode(&s[..64]).expect("hex")).expect("32 bytes"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = witness_at(&dir.path().join("state"), vec![("monkeys".into(), log)]);
    let a = post(&app, request(0, Vec::new(), &init)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Their "oldSize doesn't match current state" case.
    assert_conflict(&post(&app, request(2, proof.clone(), &next)).await, 5);
    let a = post(&app, request(5, proof, &next)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let body = checkpoint::open(
        next.as_bytes(),
        &[NoteVerifier::parse_vkey(&go_literal(&src, "mPK")).expect("vkey")],
    )
    .expect("note")
    .checkpoint
    .to_body();
    cosignature::verify_response(
        &body,
        a.body.as_bytes(),
        witness_signer().public(),
        NOW as u64,
    )
    .expect("cosignature");
    // Their "smaller checkpoint" case: old 8 and a size-5 checkpoint.
    let a = post(&app, request(8, Vec::new(), &init)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// Over TLS, through the shared accept loop, and the binary's keygen.

#[tokio::test]
async fn serves_add_checkpoint_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
    let tls = datadonor_service::tls_config(&cert_path, &key_path).expect("tls");
    let app = witness_at(
        &dir.path().join("state"),
        vec![(ORIGIN.to_string(), log_verifier())],
    );
    let limits = datadonor_service::ConnLimits {
        max_connections: 8,
        handshake_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
    };
    let running = datadonor_service::start("127.0.0.1:0".parse().expect("addr"), tls, app, limits)
        .await
        .expect("start");
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("pem"),
        )
        .resolve("localhost", running.addr())
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/add-checkpoint", running.addr().port());
    let l = leaves(3, false);
    let resp = client
        .post(&url)
        .body(step(&l, 0))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let text = resp.text().await.expect("text");
    let body = Checkpoint::new(ORIGIN, 3, merkle::root(&l))
        .expect("cp")
        .to_body();
    cosignature::verify_response(
        &body,
        text.as_bytes(),
        witness_signer().public(),
        NOW as u64,
    )
    .expect("cosignature");
    let resp = client
        .post(&url)
        .body(step(&l, 0))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);
    assert_eq!(resp.text().await.expect("text"), "3\n");
    running.shutdown().await;
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_vkey() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("witness.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-witness"))
        .args(["keygen", "--name", "witness.example/w9", "--key"])
        .arg(&key)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vkey = String::from_utf8(out.stdout).expect("utf8");
    let parsed = WitnessKey::parse_vkey(vkey.trim()).expect("vkey");
    assert_eq!(parsed.name(), "witness.example/w9");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let seed =
        SigningKey::from_key_file(&std::fs::read_to_string(&key).expect("read")).expect("key");
    assert_eq!(parsed.public_key(), &seed.public_key().0);
    // A second keygen does not overwrite it.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-witness"))
        .args(["keygen", "--name", "witness.example/w9", "--key"])
        .arg(&key)
        .output()
        .expect("run");
    assert!(!again.status.success());
}

#[test]
fn links_no_ledger_or_intake_code() {
    let meta = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout).expect("metadata json");
    let pkg = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "datadonor-witness")
        .expect("the witness crate");
    let ours: Vec<&str> = pkg["dependencies"]
        .as_array()
        .expect("deps")
        .iter()
        .filter(|d| d["kind"].is_null())
        .filter_map(|d| d["name"].as_str())
        .filter(|n| n.starts_with("datadonor-"))
        .collect();
    assert_eq!(ours, ["datadonor-schemas", "datadonor-service"]);
}
