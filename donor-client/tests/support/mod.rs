//! A small, recording test intake that implements the `PROTOCOL.md` endpoints the donor client
//! uses (studies, hpke-config, ledger-key, donations, withdrawals, checkpoint, inclusion,
//! consistency), and three pseudonymiser instances (`/p1`, `/p2`, `/p3`, 2 of 3, real key
//! shares from the ceremony) over rustls with a test CA made by rcgen. It opens every envelope with its HPKE
//! key, checks it as the intake would (manifest, study, rows), appends real ledger entries to a
//! real Merkle log, signs checkpoints and receipts with a ledger key, and RECORDS every request
//! body it received (and every opened payload) so tests can assert what left the client.
//!
//! Fault injection: `fail_next_donations(n)` answers the next `n` donations with 503 *after*
//! storing them; `drop_next_donations(n)` stores them and then kills the TCP connection without
//! answering. Both exercise the client's retry with the same envelope bytes.
//!
//! To be replaced by the intake's own test kit (`datadonor_intake::start`) once it exists.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use datadonor_pseudonymiser::KeyShare;
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::consent::{check_manifest, open_manifest, open_withdrawal};
use datadonor_schemas::envelope::{Envelope, HpkeConfig, HpkeConfigList, HpkePrivateKey};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{leaf_hash, MerkleLog};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::receipt::{HexHash, Receipt, ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::{Context, PublicKey, SignedObject, SigningKey};
use datadonor_schemas::study::{rows_from_ipc, StudyDefinition};
use datadonor_schemas::time::{Clock, SystemClock};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[path = "../data/mod.rs"]
mod data;
pub use data::testdata;

/// The example study of the repository.
pub fn example_study() -> StudyDefinition {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/t2d-study.toml");
    StudyDefinition::from_toml(&std::fs::read_to_string(p).expect("read example study"))
        .expect("example study parses")
}

/// Every FHIR bundle in `testdata/data/fhir/`.
pub fn fhir_bundles() -> Vec<PathBuf> {
    let dir = testdata("data/fhir");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read fhir dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no FHIR bundles in {}", dir.display());
    v
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// The body as received.
    pub body: Vec<u8>,
    /// For donations: the opened manifest payload (JSON) and the rows rendered as text and as
    /// raw IPC bytes; for signed objects, the decoded payload.
    pub opened: Vec<Vec<u8>>,
}

/// Idempotency key -> (envelope SHA-256, receipt bundle JSON).
type DonationStore = HashMap<[u8; 16], ([u8; 32], Vec<u8>)>;

struct Consent {
    donor: PublicKey,
    withdrawn: bool,
}

struct Ledger {
    log: MerkleLog,
    entries: Vec<Vec<u8>>,
}

struct Inner {
    study: StudyDefinition,
    signed_study: SignedObject,
    hpke: HpkePrivateKey,
    key_id: u32,
    shares: Vec<KeyShare>,
    ledger_key: SigningKey,
    origin: String,
    auditor_token: String,
    ledger: Mutex<Ledger>,
    donations: Mutex<DonationStore>,
    consents: Mutex<HashMap<[u8; 16], Consent>>,
    recorded: Mutex<Vec<Recorded>>,
    fail_503: Mutex<u32>,
    drop_conn: Mutex<u32>,
    accepted_donations: Mutex<u32>,
    kill: tokio::sync::Notify,
    clock: Arc<dyn Clock>,
}

/// A running test intake.
#[derive(Clone)]
pub struct TestIntake {
    inner: Arc<Inner>,
    /// `https://localhost:<port>`.
    pub url: String,
    /// The test CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The steward key that signed the study.
    pub steward: PublicKey,
}

fn problem(status: StatusCode, slug: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        format!(
            "{{\"type\":\"urn:datadonor:problem:{slug}\",\"title\":\"{slug}\",\"status\":{}}}",
            status.as_u16()
        ),
    )
        .into_response()
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A CA and a `localhost` server certificate signed by it: (ca pem, cert der, key der).
pub fn test_ca() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "datadonor test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server cert");
    (ca_cert.pem(), cert.der().to_vec(), key.serialize_der())
}

impl TestIntake {
    /// Start on an ephemeral port with the example study.
    pub async fn start() -> Self {
        Self::start_with(example_study()).await
    }

    /// Start with a study.
    pub async fn start_with(mut study: StudyDefinition) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (shares, result) =
            datadonor_pseudonymiser::dkg::run_local("test-pseudonymiser", 3, 2).expect("ceremony");
        let endpoints: Vec<datadonor_pseudonymiser::dkg::Endpoint> = (1..=3u16)
            .map(|i| datadonor_pseudonymiser::dkg::Endpoint {
                index: i,
                url: format!("https://localhost:{port}/p{i}"),
                operator: format!("test instance {i}"),
            })
            .collect();
        study.pseudonymiser = Some(
            datadonor_pseudonymiser::dkg::assemble_config(&result, 1, &endpoints, None)
                .expect("config"),
        );
        let steward = SigningKey::generate().expect("steward key");
        let signed_study = SignedObject::sign(Context::StudyDefinition, &study, &steward);
        let (hpke, _) = HpkePrivateKey::generate();
        let inner = Arc::new(Inner {
            study,
            signed_study,
            hpke,
            key_id: 7,
            shares,
            ledger_key: SigningKey::generate().expect("ledger key"),
            origin: "datadonor.test/ledger".to_string(),
            auditor_token: "ab".repeat(32),
            ledger: Mutex::new(Ledger {
                log: MerkleLog::new(),
                entries: Vec::new(),
            }),
            donations: Mutex::new(HashMap::new()),
            consents: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
            fail_503: Mutex::new(0),
            drop_conn: Mutex::new(0),
            accepted_donations: Mutex::new(0),
            kill: tokio::sync::Notify::new(),
            clock: Arc::new(SystemClock),
        });
        let (ca_pem, cert, key) = test_ca();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = app(inner.clone());
        let kill_src = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                let state = kill_src.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = state.kill.notified() => {}
                    }
                });
            }
        });
        let steward_pk = steward.public_key();
        Self {
            inner,
            url: format!("https://localhost:{port}"),
            ca_pem: ca_pem.into_bytes(),
            steward: steward_pk,
        }
    }

    /// The auditor token.
    pub fn auditor_token(&self) -> String {
        self.inner.auditor_token.clone()
    }

    /// Everything received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.inner.recorded.lock().expect("lock").clone()
    }

    /// Donations stored (distinct idempotency keys).
    pub fn donations(&self) -> usize {
        self.inner.donations.lock().expect("lock").len()
    }

    /// Ledger size.
    pub fn ledger_size(&self) -> u64 {
        self.inner.ledger.lock().expect("lock").log.size()
    }

    /// Answer the next `n` donations with 503 after storing them.
    pub fn fail_next_donations(&self, n: u32) {
        *self.inner.fail_503.lock().expect("lock") = n;
    }

    /// Drop the connection of the next `n` donations after storing them.
    pub fn drop_next_donations(&self, n: u32) {
        *self.inner.drop_conn.lock().expect("lock") = n;
    }

    /// Whether the consent record is withdrawn.
    pub fn is_withdrawn(&self, record: &[u8; 16]) -> bool {
        self.inner
            .consents
            .lock()
            .expect("lock")
            .get(record)
            .is_some_and(|c| c.withdrawn)
    }

    /// Append an unrelated entry (to grow the log).
    pub fn append_filler(&self) {
        let e = LedgerEntry::KeyRotated {
            time: self.inner.clock.now(),
            role: "oprf".into(),
            key_id: 1,
            public_key_sha256: [7u8; 32],
        };
        append(&self.inner, e.to_bytes());
    }
}

fn append(inner: &Inner, entry: Vec<u8>) -> u64 {
    let mut l = inner.ledger.lock().expect("lock");
    let i = l.log.push(leaf_hash(&entry));
    l.entries.push(entry);
    i
}

fn signed_checkpoint(inner: &Inner, l: &Ledger) -> String {
    let cp = Checkpoint::new(inner.origin.clone(), l.log.size(), l.log.root()).expect("checkpoint");
    checkpoint::sign(&cp, &inner.origin, inner.ledger_key.key_pair()).expect("sign checkpoint")
}

fn receipt_bundle(
    inner: &Inner,
    kind: ReceiptKind,
    entry: &LedgerEntry,
    index: u64,
    request_sha256: [u8; 32],
    pseudonym: Pseudonym,
    record: [u8; 16],
) -> ReceiptBundle {
    let l = inner.ledger.lock().expect("lock");
    let bytes = l.entries[index as usize].clone();
    let note = signed_checkpoint(inner, &l);
    let proof = l
        .log
        .inclusion_proof(index, l.log.size())
        .expect("inclusion proof");
    let study_id = match entry {
        LedgerEntry::DonationAccepted { study_id, .. }
        | LedgerEntry::ConsentWithdrawn { study_id, .. } => study_id.clone(),
        _ => inner.study.id.clone(),
    };
    let r = Receipt {
        format: 1,
        kind,
        study_id,
        pseudonym,
        consent_record_id: record,
        request_sha256,
        ledger_index: index,
        entry_sha256: leaf_hash(&bytes).0,
        checkpoint: note,
        issued_at: inner.clock.now(),
    };
    ReceiptBundle {
        receipt: r.sign(&inner.ledger_key),
        entry: bytes,
        inclusion_proof: proof.into_iter().map(|h| HexHash(h.0)).collect(),
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut o = [0u8; 32];
    o.copy_from_slice(d.as_ref());
    o
}

fn record(inner: &Inner, path: &str, body: &[u8], opened: Vec<Vec<u8>>) {
    inner.recorded.lock().expect("lock").push(Recorded {
        path: path.to_string(),
        body: body.to_vec(),
        opened,
    });
}

fn app(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/studies", get(studies))
        .route("/v1/studies/{id}", get(study))
        .route("/v1/hpke-config", get(hpke_config))
        .route("/v1/ledger-key", get(ledger_key))
        .route("/{instance}/v1/evaluate", post(evaluate))
        .route("/v1/donations", post(donations))
        .route("/v1/withdrawals", post(withdrawals))
        .route("/v1/ledger/checkpoint", get(checkpoint_h))
        .route("/v1/ledger/inclusion", get(inclusion))
        .route("/v1/ledger/consistency", get(consistency))
        .with_state(inner)
}

type S = State<Arc<Inner>>;

async fn studies(State(s): S) -> Response {
    json(format!("{{\"studies\":[\"{}\"]}}", s.study.id).into_bytes())
}

async fn study(State(s): S, UrlPath(id): UrlPath<String>) -> Response {
    if id != s.study.id.as_str() {
        return problem(StatusCode::NOT_FOUND, "unknown-study");
    }
    json(s.signed_study.to_bytes())
}

async fn hpke_config(State(s): S) -> Response {
    let l = HpkeConfigList {
        configs: vec![HpkeConfig::new(s.key_id, &s.hpke.public_key())],
    };
    json(serde_json::to_vec(&l).expect("json"))
}

async fn ledger_key(State(s): S) -> Response {
    let v = NoteVerifier::from_key_pair(&s.origin, s.ledger_key.key_pair()).expect("verifier");
    json(
        serde_json::to_vec(&serde_json::json!({
            "public_key": s.ledger_key.public_key().to_base64(),
            "vkey": v.to_vkey(),
            "origin": s.origin,
        }))
        .expect("json"),
    )
}

async fn evaluate(State(s): S, UrlPath(instance): UrlPath<String>, body: Bytes) -> Response {
    record(&s, &format!("/{instance}/v1/evaluate"), &body, Vec::new());
    let Some(share) = instance
        .strip_prefix('p')
        .and_then(|i| i.parse::<u16>().ok())
        .and_then(|i| s.shares.iter().find(|k| k.index == i))
    else {
        return problem(StatusCode::NOT_FOUND, "not-found");
    };
    let Ok(req) = datadonor_schemas::threshold::EvaluateRequest::from_json(&body) else {
        return problem(StatusCode::BAD_REQUEST, "bad-request");
    };
    match share.evaluate(&req.blinded) {
        Ok(answer) => json(serde_json::to_vec(&answer).expect("json")),
        Err(_) => problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-element"),
    }
}

/// Render every cell of an Arrow batch as text (for the recording).
fn render_rows(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut out = String::new();
    for col in batch.columns() {
        for i in 0..col.len() {
            let v = arrow::util::display::array_value_to_string(col, i).unwrap_or_default();
            out.push_str(&v);
            out.push('\n');
        }
    }
    out.into_bytes()
}

async fn donations(State(s): S, body: Bytes) -> Response {
    let env = match Envelope::parse(&body) {
        Ok(e) => e,
        Err(_) => return problem(StatusCode::BAD_REQUEST, "malformed-envelope"),
    };
    if env.key_id != s.key_id {
        return problem(StatusCode::BAD_REQUEST, "unknown-key-id");
    }
    let Ok(payload) = env.open(&s.hpke) else {
        return problem(StatusCode::BAD_REQUEST, "decrypt-failed");
    };
    let Ok(manifest) = open_manifest(&payload.manifest) else {
        return problem(StatusCode::BAD_REQUEST, "bad-signature");
    };
    let Ok(batch) = rows_from_ipc(&payload.rows, 100_000) else {
        return problem(StatusCode::BAD_REQUEST, "malformed-rows");
    };
    record(
        &s,
        "/v1/donations",
        &body,
        vec![
            manifest.object.payload.clone(),
            payload.manifest.clone(),
            payload.rows.clone(),
            render_rows(&batch),
        ],
    );
    let m = &manifest.body;
    let now = s.clock.now();
    if check_manifest(m, &s.study, &s.signed_study.payload_digest(), now).is_err() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "manifest-mismatch");
    }
    if s.study
        .validate_rows(&batch, Some(&m.pseudonym.to_hex()))
        .is_err()
    {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "schema-mismatch");
    }
    let env_sha = sha256(&body);
    // Idempotency.
    let existing = s
        .donations
        .lock()
        .expect("lock")
        .get(&payload.idempotency_key)
        .cloned();
    let bundle_bytes = match existing {
        Some((sha, bundle)) if sha == env_sha => bundle,
        Some(_) => return problem(StatusCode::CONFLICT, "idempotency-conflict"),
        None => {
            let granted = LedgerEntry::consent_granted(m, manifest.digest(), now);
            append(&s, granted.to_bytes());
            let accepted = LedgerEntry::DonationAccepted {
                time: now,
                study_id: m.study_id.clone(),
                pseudonym: m.pseudonym,
                consent_record_id: m.record_id,
                idempotency_key: payload.idempotency_key,
                envelope_sha256: env_sha,
                rows: batch.num_rows() as u32,
                batch_id: "00".repeat(16),
            };
            let index = append(&s, accepted.to_bytes());
            let bundle = receipt_bundle(
                &s,
                ReceiptKind::Donation,
                &accepted,
                index,
                env_sha,
                m.pseudonym,
                m.record_id,
            );
            let bytes = serde_json::to_vec(&bundle).expect("json");
            s.donations
                .lock()
                .expect("lock")
                .insert(payload.idempotency_key, (env_sha, bytes.clone()));
            s.consents.lock().expect("lock").insert(
                m.record_id,
                Consent {
                    donor: m.donor_public_key,
                    withdrawn: false,
                },
            );
            *s.accepted_donations.lock().expect("lock") += 1;
            bytes
        }
    };
    {
        let mut f = s.fail_503.lock().expect("lock");
        if *f > 0 {
            *f -= 1;
            return problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    }
    let drop_it = {
        let mut d = s.drop_conn.lock().expect("lock");
        if *d > 0 {
            *d -= 1;
            true
        } else {
            false
        }
    };
    if drop_it {
        s.kill.notify_waiters();
        std::future::pending::<()>().await;
    }
    json(bundle_bytes)
}

async fn withdrawals(State(s): S, body: Bytes) -> Response {
    let Ok(w) = open_withdrawal(&body) else {
        return problem(StatusCode::BAD_REQUEST, "bad-signature");
    };
    record(&s, "/v1/withdrawals", &body, vec![w.object.payload.clone()]);
    {
        let mut c = s.consents.lock().expect("lock");
        let Some(consent) = c.get_mut(&w.body.consent_record_id) else {
            return problem(StatusCode::NOT_FOUND, "unknown-consent");
        };
        if consent.donor != w.body.donor_public_key {
            return problem(StatusCode::FORBIDDEN, "withdrawal-key-mismatch");
        }
        if consent.withdrawn {
            return problem(StatusCode::CONFLICT, "already-withdrawn");
        }
        consent.withdrawn = true;
    }
    let entry = LedgerEntry::ConsentWithdrawn {
        time: s.clock.now(),
        study_id: w.body.study_id.clone(),
        pseudonym: w.body.pseudonym,
        consent_record_id: w.body.consent_record_id,
        withdrawal_sha256: w.digest(),
    };
    let index = append(&s, entry.to_bytes());
    let bundle = receipt_bundle(
        &s,
        ReceiptKind::Withdrawal,
        &entry,
        index,
        w.digest(),
        w.body.pseudonym,
        w.body.consent_record_id,
    );
    json(serde_json::to_vec(&bundle).expect("json"))
}

fn query(uri: &Uri, key: &str) -> Option<u64> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// Public, as PROTOCOL.md says.
async fn checkpoint_h(State(s): S) -> Response {
    let l = s.ledger.lock().expect("lock");
    (
        [(header::CONTENT_TYPE, "text/plain")],
        signed_checkpoint(&s, &l),
    )
        .into_response()
}

fn proof_json(p: Vec<datadonor_schemas::merkle::Hash>) -> Response {
    let v: Vec<String> = p.iter().map(|h| h.to_hex()).collect();
    json(serde_json::to_vec(&serde_json::json!({ "proof": v })).expect("json"))
}

async fn inclusion(State(s): S, uri: Uri) -> Response {
    let (Some(i), Some(n)) = (query(&uri, "index"), query(&uri, "size")) else {
        return problem(StatusCode::BAD_REQUEST, "bad-request");
    };
    match s.ledger.lock().expect("lock").log.inclusion_proof(i, n) {
        Ok(p) => proof_json(p),
        Err(_) => problem(StatusCode::BAD_REQUEST, "bad-request"),
    }
}

async fn consistency(State(s): S, uri: Uri) -> Response {
    let (Some(m), Some(n)) = (query(&uri, "from"), query(&uri, "to")) else {
        return problem(StatusCode::BAD_REQUEST, "bad-request");
    };
    match s.ledger.lock().expect("lock").log.consistency_proof(m, n) {
        Ok(p) => proof_json(p),
        Err(_) => problem(StatusCode::BAD_REQUEST, "bad-request"),
    }
}
