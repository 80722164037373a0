//! The adversarial suite: one test per attack of the threat model, each named after the attack
//! and each driving the real components. Every intake test starts a real intake over TLS 1.3 on
//! a loopback port (`datadonor_intake::start_with_clock`, a fresh `init`ed data directory, a
//! manual clock) and talks to it through a TLS client trusting the intake's dev CA; the
//! analytics tests run the real query, ledger verification and batch opening code of
//! `datadonor_analytics` against that intake's ledger (over HTTPS, as the auditor and the
//! researcher do) and its sealed batches (with the vault key `init` wrote).
//!
//! Every refusal by the intake is checked for its status, its RFC 7807 problem document
//! (`application/problem+json`, `type` = `urn:datadonor:problem:<slug>`), and that nothing was
//! written: the ledger file's length, the published tree size and the list of batch files are
//! the same before and after.
//!
//! | attack | test |
//! |---|---|
//! | replayed envelope (same idempotency key and body) | [`replayed_envelope`] |
//! | idempotency key reused with a different body | [`idempotency_key_reused_for_another_envelope`] |
//! | envelope sealed to an unknown key id | [`envelope_to_an_unknown_key_id`] |
//! | envelope sealed to a retired key id (after `rotate-key` and the grace period) | [`envelope_to_a_retired_key_id`] |
//! | truncated envelope | [`truncated_envelope`] |
//! | bit-flipped envelope | [`bit_flipped_envelope`] |
//! | manifest with a forged signature | [`manifest_with_a_forged_signature`] |
//! | manifest for a study the intake does not serve | [`manifest_for_an_unknown_study`] |
//! | manifest with a purpose outside the study's | [`manifest_with_a_purpose_outside_the_study`] |
//! | expired consent (at submission, lapsed since, or beyond the study's maximum) | [`expired_consent`] |
//! | rows outside the study's schema | [`rows_outside_the_study_schema`] |
//! | rows outside ranges, enumerations or period formats | [`rows_outside_ranges_and_enumerations`] |
//! | oversized body (declared, and streamed without a length) | [`oversized_body`] |
//! | slow client: body trickled after the headers | [`slow_body_is_cut_off`] |
//! | slow client: headers trickled | [`slow_headers_are_cut_off`] |
//! | slow client: TCP connection that never starts TLS | [`silent_connection_is_cut_off_before_the_handshake`] |
//! | slow client: idle after the TLS handshake (no request byte; HTTP/2 without a stream; an HTTP/2 frame trickled a byte at a time) | [`idle_connection_after_the_handshake_is_cut_off`] |
//! | withdrawal signed by another donor's key | [`withdrawal_signed_by_another_donors_key`] |
//! | approval for query A used to run query B | [`approval_for_one_query_used_for_another`] |
//! | expired approval | [`expired_approval`] |
//! | sealed batch with a flipped byte | [`sealed_batch_with_a_flipped_byte`] |
//! | truncated sealed batch | [`truncated_sealed_batch`] |
//! | sealed batch with two chunks reordered | [`sealed_batch_with_reordered_chunks`] |
//! | headers swapped between two sealed batches | [`sealed_batch_headers_swapped`] |
//! | ledger history rewritten and re-signed | [`rewritten_ledger_is_caught_by_the_auditor`] |
//! | withdrawn donor counted by a later query | [`withdrawn_donor_is_not_counted_by_a_later_query`] |
//!
//! Attacks on pseudonymisation (an intake operator enumerating CPR numbers, a malicious or
//! lost pseudonymiser instance, replayed and malformed answers, floods without and with donor
//! credentials) run against real pseudonymiser instances in `tests/threshold.rs`.
//!
//! The idle cut-off must not break an honest client that keeps its connection open between
//! requests: [`ledger_client_outlives_the_idle_cut_off`].
//!
//! The crash test (the intake killed with SIGKILL again and again under concurrent donations,
//! then every acknowledged donation found in exactly one sealed batch and in the ledger) is
//! `intake-server/tests/crash.rs`: it drives the `datadonor-intake` binary, which only that
//! crate's tests can name. Parsers of untrusted bytes are fuzzed in `fuzz/` and replayed in
//! `tests/fuzz_corpus.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datadonor_analytics::audit::{audit_batches, audit_log, BatchViolationKind};
use datadonor_analytics::ledger::{
    decode_records, encode_record, verify_ledger, LedgerError, LedgerView, STATE_FILE,
};
use datadonor_analytics::ledger_http::HttpLedger;
use datadonor_analytics::query::{open_study, run_query, QueryInputs, QueryOutcome};
use datadonor_analytics::sealed::{BatchError, BatchErrorKind, SEGMENT_LEN};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::vault::VaultKey;
use datadonor_analytics::AnalyticsError;
use datadonor_intake::config::Config;
use datadonor_intake::studies::LoadedStudy;
use datadonor_intake::{testkit, RunningIntake};
use datadonor_schemas::batch::BatchHeader;
use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::envelope::HpkePublicKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};
use datadonor_schemas::signing::{PublicKey, SignedObject, SigningKey};
use datadonor_schemas::study::{FieldType, StudyDefinition, StudyId};
use datadonor_schemas::time::{Clock, ManualClock, SystemClock};
use rand::{Rng as _, SeedableRng as _};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

const ENVELOPE_CT: &str = "application/vnd.datadonor.envelope.v1";
const PROBLEM_CT: &str = "application/problem+json";
const STUDY: &str = "t2d-dk";
const EPI: &str = "t2d-epidemiology";
/// The timeouts configured for the slow-client tests (handshake, headers, body).
const SHORT_TIMEOUT_MS: u64 = 1_000;
/// Slack on top of a configured timeout before a connection still open counts as not cut off.
const SLACK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// A live intake over TLS

/// What an HTTP exchange returned.
struct Reply {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn slug(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:datadonor:problem:"))
            .unwrap_or("")
            .to_string()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the intake has stored: the ledger file's length, the published tree size, and every
/// file under `batches/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    ledger_bytes: u64,
    tree_size: u64,
    batch_files: Vec<PathBuf>,
}

/// A running intake over a fresh data directory, and a TLS client for it.
struct Live {
    dir: tempfile::TempDir,
    config: Config,
    clock: Arc<ManualClock>,
    intake: Option<RunningIntake>,
    addr: SocketAddr,
    client: reqwest::Client,
    study: Arc<LoadedStudy>,
    hpke: (u32, HpkePublicKey),
    auditor_token: String,
    ledger_key: PublicKey,
    verifier: NoteVerifier,
}

fn https_client(dir: &Path, addr: SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(dir.join("tls/ca.pem")).expect("init wrote the dev CA");
    let ca = reqwest::Certificate::from_pem(&pem).expect("the dev CA parses");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .resolve("localhost", addr)
        .build()
        .expect("client builds")
}

impl Live {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = testkit::init_test_dir(dir.path()).expect("init");
        edit(&mut config);
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let intake = datadonor_intake::start_with_clock(config.clone(), clock.clone())
            .await
            .expect("the intake starts");
        let addr = intake.addr();
        let client = https_client(dir.path(), addr);
        let study = testkit::load_study(dir.path(), STUDY).expect("example study");
        let hpke = testkit::current_hpke_key(dir.path()).expect("transport key");
        let auditor_token = std::fs::read_to_string(dir.path().join("auditor.token"))
            .expect("auditor token")
            .trim()
            .to_string();
        let mut live = Self {
            dir,
            config,
            clock,
            intake: Some(intake),
            addr,
            client,
            study,
            hpke,
            auditor_token,
            ledger_key: PublicKey([0; 32]),
            verifier: NoteVerifier::new("datadonor.localhost/ledger", [0; 32])
                .expect("placeholder verifier"),
        };
        let key = live.get("/v1/ledger-key", false).await;
        assert_eq!(key.status, StatusCode::OK, "{}", key.text());
        let v: serde_json::Value = serde_json::from_slice(&key.body).expect("ledger key JSON");
        live.ledger_key = PublicKey::from_base64(v["public_key"].as_str().expect("public_key"))
            .expect("ledger public key");
        live.verifier =
            NoteVerifier::parse_vkey(v["vkey"].as_str().expect("vkey")).expect("ledger vkey");
        live
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.bytes().await.expect("response body").to_vec();
        Reply {
            status,
            content_type,
            body,
        }
    }

    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        Self::reply(resp).await
    }

    async fn get(&self, path: &str, auditor: bool) -> Reply {
        let mut req = self.client.get(self.url(path));
        if auditor {
            req = req.bearer_auth(&self.auditor_token);
        }
        Self::reply(req.send().await.expect("request sent")).await
    }

    async fn donate(&self, envelope: Vec<u8>) -> Reply {
        self.post("/v1/donations", ENVELOPE_CT, envelope).await
    }

    async fn withdraw(&self, withdrawal: Vec<u8>) -> Reply {
        self.post("/v1/withdrawals", "application/json", withdrawal)
            .await
    }

    /// A donation builder for the example study, dated by the intake's clock.
    fn builder(&self) -> testkit::DonationBuilder<'_> {
        let mut b = testkit::DonationBuilder::new(&self.study, self.hpke);
        b.now = self.clock.now();
        b
    }

    /// Donate a valid donation and return it with its verified receipt.
    async fn donate_ok(
        &self,
        b: testkit::DonationBuilder<'_>,
    ) -> (
        testkit::Donation,
        datadonor_schemas::receipt::VerifiedReceipt,
        Vec<u8>,
    ) {
        let d = b.build().expect("donation builds");
        let r = self.donate(d.envelope.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = self.verify(&r.body);
        (d, v, r.body)
    }

    fn verify(&self, receipt: &[u8]) -> datadonor_schemas::receipt::VerifiedReceipt {
        let bundle = ReceiptBundle::from_json(receipt).expect("a receipt bundle");
        verify_receipt(&bundle, &self.ledger_key, &self.verifier).expect("the receipt verifies")
    }

    /// The published tree size, from the signed checkpoint.
    async fn tree_size(&self) -> u64 {
        let r = self.get("/v1/ledger/checkpoint", true).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        checkpoint::open(&r.body, std::slice::from_ref(&self.verifier))
            .expect("the checkpoint verifies")
            .checkpoint
            .size
    }

    async fn stored(&self) -> Stored {
        let ledger_bytes = std::fs::metadata(self.path().join("ledger/ledger.log"))
            .expect("ledger file")
            .len();
        Stored {
            ledger_bytes,
            tree_size: self.tree_size().await,
            batch_files: testkit::files_under(&self.path().join("batches")),
        }
    }

    /// Assert a refusal (status, problem document) that wrote nothing since `before`.
    async fn assert_refused(&self, r: &Reply, status: StatusCode, slug: &str, before: &Stored) {
        assert_eq!(
            (r.status, r.slug().as_str()),
            (status, slug),
            "body: {}",
            r.text()
        );
        assert_eq!(r.content_type, PROBLEM_CT, "{slug}");
        let doc: serde_json::Value = serde_json::from_slice(&r.body).expect("problem JSON");
        assert_eq!(doc["status"], status.as_u16(), "{slug}");
        assert!(doc["title"].is_string(), "{slug}: {doc}");
        // Let a (wrongly) queued commit run before looking at the disk.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            &self.stored().await,
            before,
            "{slug}: something was written"
        );
    }

    /// POST a donation envelope and expect it refused with nothing written.
    async fn donation_refused(&self, envelope: Vec<u8>, status: StatusCode, slug: &str) {
        let before = self.stored().await;
        let r = self.donate(envelope).await;
        self.assert_refused(&r, status, slug, &before).await;
    }

    /// Build a donation and expect it refused with nothing written.
    async fn built_refused(&self, b: testkit::DonationBuilder<'_>, status: StatusCode, slug: &str) {
        self.donation_refused(b.build().expect("builds").envelope, status, slug)
            .await;
    }

    /// Stop the intake (drained, committed, directory lock released).
    async fn stop(&mut self) {
        // Drop the pooled connections so that the drain does not wait for them.
        self.client = reqwest::Client::new();
        if let Some(i) = self.intake.take() {
            i.shutdown().await.expect("clean shutdown");
        }
    }

    /// Start the intake again over the same directory and clock (a new port).
    async fn restart(&mut self) {
        self.stop().await;
        let intake = datadonor_intake::start_with_clock(self.config.clone(), self.clock.clone())
            .await
            .expect("the intake restarts");
        self.addr = intake.addr();
        self.client = https_client(self.path(), self.addr);
        self.intake = Some(intake);
    }
}

fn replace_column(rows: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let idx = rows.schema().index_of(name).expect("column exists");
    let mut cols = rows.columns().to_vec();
    cols[idx] = col;
    RecordBatch::try_new(rows.schema(), cols).expect("same schema")
}

// ---------------------------------------------------------------------------------------------
// Replays and idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_envelope() {
    let live = Live::start().await;
    let (d, first, first_body) = live.donate_ok(live.builder()).await;
    let before = live.stored().await;
    let r = live.donate(d.envelope.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.body, first_body,
        "a replay gets the byte-identical receipt"
    );
    let again = live.verify(&r.body);
    assert_eq!(again.receipt.ledger_index, first.receipt.ledger_index);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(live.stored().await, before, "a replay writes nothing");
    // Exactly one donation entry in the ledger file carries the idempotency key.
    let ledger_file = live.path().join("ledger/ledger.log");
    let records = decode_records(
        &std::fs::read(&ledger_file).expect("ledger file"),
        &ledger_file,
    )
    .expect("ledger records");
    let with_key = records
        .iter()
        .filter(|bytes| {
            matches!(
                LedgerEntry::from_bytes(bytes).expect("entry parses"),
                LedgerEntry::DonationAccepted { idempotency_key, .. }
                    if idempotency_key == d.idempotency_key
            )
        })
        .count();
    assert_eq!(with_key, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_reused_for_another_envelope() {
    let live = Live::start().await;
    let (d, _, _) = live.donate_ok(live.builder()).await;
    // The same payload sealed again (a fresh HPKE encapsulation: other bytes).
    let mut b = live.builder();
    b.idempotency_key = d.idempotency_key;
    b.reuse = Some((&d.manifest, &d.donor_key));
    let resealed = b.build().expect("builds").envelope;
    assert_ne!(resealed, d.envelope);
    live.donation_refused(resealed, StatusCode::CONFLICT, "idempotency-conflict")
        .await;
    // Another donor's donation under a stolen idempotency key.
    let mut b = live.builder();
    b.idempotency_key = d.idempotency_key;
    live.built_refused(b, StatusCode::CONFLICT, "idempotency-conflict")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Transport keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_to_an_unknown_key_id() {
    let live = Live::start().await;
    for key_id in [0, live.hpke.0 + 1, u32::MAX] {
        let mut b = testkit::DonationBuilder::new(&live.study, (key_id, live.hpke.1));
        b.now = live.clock.now();
        live.built_refused(b, StatusCode::BAD_REQUEST, "unknown-key-id")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_to_a_retired_key_id() {
    let grace = 3_600;
    let mut live = Live::start_with(|c| c.keys.transport_key_grace_secs = grace).await;
    let old = live.hpke;
    // `rotate-key` takes the directory lock: the intake is stopped for it.
    live.stop().await;
    let new_id =
        datadonor_intake::rotate_transport_key(&live.config, live.clock.now()).expect("rotate-key");
    assert_ne!(new_id, old.0);
    live.restart().await;
    // Within the grace period the old key is still accepted.
    let mut b = testkit::DonationBuilder::new(&live.study, old);
    b.now = live.clock.now();
    live.donate_ok(b).await;
    // After it, the old key id is retired.
    live.clock.advance(i64::try_from(grace).expect("small") + 1);
    let mut b = testkit::DonationBuilder::new(&live.study, old);
    b.now = live.clock.now();
    live.built_refused(b, StatusCode::BAD_REQUEST, "unknown-key-id")
        .await;
    // ... and no longer published; the new key works.
    let r = live.get("/v1/hpke-config", false).await;
    let list =
        datadonor_schemas::envelope::HpkeConfigList::from_json(&r.body).expect("hpke config list");
    let ids: Vec<u32> = list.configs.iter().map(|c| c.key_id).collect();
    assert_eq!(ids, vec![new_id]);
    let new = list.current().expect("a current key");
    let mut b = testkit::DonationBuilder::new(&live.study, new);
    b.now = live.clock.now();
    live.donate_ok(b).await;
}

// ---------------------------------------------------------------------------------------------
// Damaged envelopes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_envelope() {
    let live = Live::start().await;
    let e = live.builder().build().expect("builds").envelope;
    let bad = StatusCode::BAD_REQUEST;
    for (len, slug) in [
        (0, "malformed-envelope"),       // nothing
        (3, "malformed-envelope"),       // inside the magic
        (30, "malformed-envelope"),      // inside `enc`
        (46 + 15, "malformed-envelope"), // less than a tag of ciphertext
        (e.len() / 2, "decrypt-failed"), // half the ciphertext
        (e.len() - 1, "decrypt-failed"), // the tag's last byte
    ] {
        live.donation_refused(e[..len].to_vec(), bad, slug).await;
    }
    // The intact envelope is accepted: the refusals were about the cuts.
    let r = live.donate(e).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flipped_envelope() {
    let live = Live::start().await;
    let e = live.builder().build().expect("builds").envelope;
    let bad = StatusCode::BAD_REQUEST;
    for (offset, slug) in [
        (0, "malformed-envelope"),       // magic
        (7, "unknown-key-id"),           // key id
        (9, "malformed-envelope"),       // KEM id
        (13, "malformed-envelope"),      // AEAD id
        (20, "decrypt-failed"),          // enc (part of the AAD and the KEM input)
        (46, "decrypt-failed"),          // first ciphertext byte
        (e.len() / 2, "decrypt-failed"), // inside the payload
        (e.len() - 1, "decrypt-failed"), // the tag
    ] {
        let mut flipped = e.clone();
        flipped[offset] ^= 0x01;
        live.donation_refused(flipped, bad, slug).await;
    }
    let r = live.donate(e).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Manifests and consent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_a_forged_signature() {
    let live = Live::start().await;
    let now = live.clock.now();
    // The signature bytes tampered with.
    let donor = SigningKey::generate().expect("key");
    let m = testkit::manifest_for(&live.study, &donor, testkit::random_pseudonym(), now);
    let mut obj = m.sign(&donor);
    obj.signature[0] ^= 0x01;
    let mut b = live.builder();
    b.donor_key = Some(donor);
    b.pseudonym = m.pseudonym;
    b.manifest_bytes = Some(obj.to_bytes());
    live.built_refused(b, StatusCode::BAD_REQUEST, "bad-signature")
        .await;
    // A manifest naming a victim's donor key, signed by the attacker's key.
    let victim = SigningKey::generate().expect("key");
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(move |m| m.donor_public_key = victim.public_key()));
    live.built_refused(b, StatusCode::BAD_REQUEST, "bad-signature")
        .await;
    // A payload changed after signing (the wrapper's payload replaced, signature kept).
    let donor = SigningKey::generate().expect("key");
    let p = testkit::random_pseudonym();
    let m = testkit::manifest_for(&live.study, &donor, p, now);
    let mut obj = m.sign(&donor);
    let mut wider = m.clone();
    wider.purposes = live
        .study
        .definition
        .purpose_codes()
        .map(str::to_string)
        .collect();
    obj.payload = serde_json::to_vec(&wider).expect("manifest JSON");
    let mut b = live.builder();
    b.donor_key = Some(donor);
    b.pseudonym = p;
    b.manifest_bytes = Some(obj.to_bytes());
    live.built_refused(b, StatusCode::BAD_REQUEST, "bad-signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_for_an_unknown_study() {
    let live = Live::start().await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(|m| {
        m.study_id = StudyId::new("flu-dk").expect("a valid study id");
    }));
    live.built_refused(b, unprocessable, "unknown-study").await;
    // The served study, but a version the intake does not serve.
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(|m| m.study_version += 1));
    live.built_refused(b, unprocessable, "unknown-study").await;
    // The right id and version, but consented to another rendition of the study.
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(|m| m.study_sha256[0] ^= 1));
    live.built_refused(b, unprocessable, "study-mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_a_purpose_outside_the_study() {
    let live = Live::start().await;
    for purposes in [
        vec!["insurance-pricing"],
        vec![EPI, "insurance-pricing"],
        vec![EPI, EPI],
        vec![],
    ] {
        let mut b = live.builder();
        let purposes: Vec<String> = purposes.iter().map(|p| p.to_string()).collect();
        b.edit_manifest = Some(Box::new(move |m| m.purposes = purposes));
        live.built_refused(b, StatusCode::UNPROCESSABLE_ENTITY, "purpose-not-in-study")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_consent() {
    let live = Live::start().await;
    let now = live.clock.now();
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    // Expired when submitted.
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(move |m| {
        m.given_at = now - 86_400;
        m.expires_at = now - 1;
    }));
    live.built_refused(b, unprocessable, "consent-expired")
        .await;
    // Longer than the study allows.
    let max = i64::from(live.study.definition.max_consent_days) * 86_400;
    let mut b = live.builder();
    b.edit_manifest = Some(Box::new(move |m| m.expires_at = m.given_at + max + 1));
    live.built_refused(b, unprocessable, "consent-expired")
        .await;
    // Accepted once, then a later donation under the same consent after it lapsed.
    let (d, _, _) = live.donate_ok(live.builder()).await;
    live.clock.set(d.manifest.expires_at + 1);
    let mut b = live.builder();
    b.reuse = Some((&d.manifest, &d.donor_key));
    live.built_refused(b, unprocessable, "consent-expired")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Rows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_outside_the_study_schema() {
    let live = Live::start().await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let p = testkit::random_pseudonym();
    let rows = testkit::sample_rows(&live.study.definition, &p, 2);

    // An extra column smuggling an identifier.
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("cpr", DataType::Utf8, false));
    let mut cols = rows.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec!["0101801234"; 2])));
    let extra = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
    // A measure sent as text.
    let retyped = {
        let schema = rows.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let i = schema.index_of("hba1c").expect("hba1c");
        fields[i] = Field::new("hba1c", DataType::Utf8, true);
        let mut cols = rows.columns().to_vec();
        cols[i] = Arc::new(StringArray::from(vec!["7.1", "6.9"]));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch")
    };
    // A column missing.
    let missing = rows.project(&[0, 1, 2]).expect("projection");
    for bad in [extra, retyped, missing] {
        let mut b = live.builder();
        b.pseudonym = p;
        b.rows = Some(bad);
        live.built_refused(b, unprocessable, "schema-mismatch")
            .await;
    }
    // Not Arrow IPC at all.
    let mut b = live.builder();
    b.rows_bytes = Some(b"donor,period\nabc,2023-01\n".to_vec());
    live.built_refused(b, StatusCode::BAD_REQUEST, "malformed-rows")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_outside_ranges_and_enumerations() {
    let live = Live::start().await;
    let p = testkit::random_pseudonym();
    let rows = testkit::sample_rows(&live.study.definition, &p, 2);
    let cases: Vec<(&str, ArrayRef)> = vec![
        (
            "hba1c",
            Arc::new(Float64Array::from(vec![Some(7.0), Some(99.0)])),
        ),
        (
            "hba1c",
            Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(7.0)])),
        ),
        (
            "systolic",
            Arc::new(Float64Array::from(vec![Some(-120.0), Some(120.0)])),
        ),
        (
            "region",
            Arc::new(StringArray::from(vec!["syddanmark", "atlantis"])),
        ),
        ("sex", Arc::new(StringArray::from(vec!["female", "F"]))),
        (
            "age_band",
            Arc::new(StringArray::from(vec!["50-59", "5-9"])),
        ),
        (
            "period",
            Arc::new(StringArray::from(vec!["2023-01", "2023-13"])),
        ),
    ];
    for (column, values) in cases {
        let mut b = live.builder();
        b.pseudonym = p;
        b.rows = Some(replace_column(&rows, column, values));
        live.built_refused(b, StatusCode::UNPROCESSABLE_ENTITY, "value-out-of-range")
            .await;
    }
    // Rows of someone else under this donor's consent.
    let mut b = live.builder();
    b.rows = Some(testkit::sample_rows(
        &live.study.definition,
        &testkit::random_pseudonym(),
        2,
    ));
    live.built_refused(b, StatusCode::UNPROCESSABLE_ENTITY, "pseudonym-mismatch")
        .await;
    // The untouched rows are accepted.
    let mut b = live.builder();
    b.pseudonym = p;
    b.rows = Some(rows);
    live.donate_ok(b).await;
}

// ---------------------------------------------------------------------------------------------
// Request limits and slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body() {
    let limit = 64 * 1024;
    let live = Live::start_with(|c| c.limits.max_body_bytes = limit).await;
    // Declared by Content-Length.
    live.donation_refused(
        vec![0x44; limit + 1],
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
    )
    .await;
    // Streamed without a length (HTTP/1.1 chunked): cut off while reading.
    let before = live.stored().await;
    let mut tls = tls_connect(&live).await;
    let mut req = format!(
        "POST /v1/donations HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ENVELOPE_CT}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    // Exactly the limit in 8 KiB chunks, then one byte more: the intake has read everything
    // sent when it refuses, so it closes cleanly after its answer.
    let chunk = vec![0x44u8; 8 * 1024];
    for _ in 0..limit / chunk.len() {
        req.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend(&chunk);
        req.extend(b"\r\n");
    }
    req.extend(b"1\r\nD\r\n0\r\n\r\n");
    tls.write_all(&req).await.expect("request written");
    tls.flush().await.expect("flushed");
    let response = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let r = parse_http1(&response);
    live.assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", &before)
        .await;
}

/// A TLS 1.3 client of the intake trusting only its dev CA, offering HTTP/1.1.
async fn tls_connect(live: &Live) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_alpn(live, b"http/1.1").await
}

/// A TLS 1.3 client of the intake trusting only its dev CA, offering one ALPN protocol.
async fn tls_connect_alpn(live: &Live, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let pem = std::fs::read(live.path().join("tls/ca.pem")).expect("dev CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate accepted");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(live.addr).await.expect("TCP connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Read until the server closes the connection (EOF, or an error such as a reset or a missing
/// TLS close_notify); panics if it is still open after `bound`. Returns what was read.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, bound: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server did not close the connection within {bound:?}; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// A whole HTTP/1.1 response (status line, headers, body up to the end of the bytes).
fn parse_http1(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let mut content_type = String::new();
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_string();
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked" {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        // Only what the tests need: concatenate the chunk payloads.
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Reply {
        status: StatusCode::from_u16(code).expect("a status code"),
        content_type,
        body: body.into_bytes(),
    }
}

fn short_timeouts(c: &mut Config) {
    c.server.handshake_timeout_ms = SHORT_TIMEOUT_MS;
    c.server.header_read_timeout_ms = SHORT_TIMEOUT_MS;
    c.server.request_body_timeout_ms = SHORT_TIMEOUT_MS;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_cut_off() {
    let live = Live::start_with(short_timeouts).await;
    let before = live.stored().await;
    let mut tls = tls_connect(&live).await;
    let head = format!(
        "POST /v1/donations HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ENVELOPE_CT}\r\n\
         Content-Length: 10000\r\n\r\n"
    );
    tls.write_all(head.as_bytes())
        .await
        .expect("headers written");
    // A few bytes of the 10000 promised, then nothing.
    tls.write_all(b"DDE1\x00\x00\x00\x01")
        .await
        .expect("body start written");
    tls.flush().await.expect("flushed");
    let bound = Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK;
    let response = read_until_closed(&mut tls, bound).await;
    // The documented answer is `408 timeout`, then the connection is closed.
    let r = parse_http1(&response);
    live.assert_refused(&r, StatusCode::REQUEST_TIMEOUT, "timeout", &before)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let live = Live::start_with(short_timeouts).await;
    let before = live.stored().await;
    let mut tls = tls_connect(&live).await;
    // Half a request line, then nothing.
    tls.write_all(b"POST /v1/donations HT")
        .await
        .expect("written");
    tls.flush().await.expect("flushed");
    let bound = Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK;
    let response = read_until_closed(&mut tls, bound).await;
    // Closed without serving anything (at most an error status).
    if !response.is_empty() {
        let r = parse_http1(&response);
        assert!(
            r.status.is_client_error(),
            "unexpected answer to half a request line: {}",
            String::from_utf8_lossy(&response)
        );
    }
    // Half a header block (the request line complete, a header cut), then nothing.
    let mut tls = tls_connect(&live).await;
    tls.write_all(
        format!("POST /v1/donations HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ENVELOPE_CT}\r\nContent-Le")
            .as_bytes(),
    )
    .await
    .expect("written");
    tls.flush().await.expect("flushed");
    let response = read_until_closed(&mut tls, bound).await;
    if !response.is_empty() {
        assert!(
            parse_http1(&response).status.is_client_error(),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(live.stored().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_cut_off_before_the_handshake() {
    let live = Live::start_with(short_timeouts).await;
    let mut tcp = TcpStream::connect(live.addr).await.expect("TCP connect");
    let bound = Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK;
    let bytes = read_until_closed(&mut tcp, bound).await;
    assert!(
        bytes.is_empty(),
        "the server sent {bytes:?} before any ClientHello"
    );
    // Half a ClientHello (a TLS record header promising more), then nothing.
    let mut tcp = TcpStream::connect(live.addr).await.expect("TCP connect");
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("written");
    read_until_closed(&mut tcp, bound).await;
    // The intake still serves.
    let r = live.get("/healthz", false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::OK, b"ok".as_slice())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_after_the_handshake_is_cut_off() {
    let live = Live::start_with(short_timeouts).await;
    let bound = Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK;
    // The handshake completes, then not a byte.
    let mut tls = tls_connect(&live).await;
    let bytes = read_until_closed(&mut tls, bound).await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    // HTTP/2: the connection preface and an empty SETTINGS frame, then no stream.
    let mut tls = tls_connect_alpn(&live, b"h2").await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface written");
    tls.flush().await.expect("flushed");
    read_until_closed(&mut tls, bound).await;
    // HTTP/2 again, then a HEADERS frame trickled a byte every 200 ms: bytes keep arriving but
    // no request ever starts, so the connection is as idle as a silent one.
    let mut tls = tls_connect_alpn(&live, b"h2").await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface written");
    let frame = b"\x00\x40\x00\x01\x05\x00\x00\x00\x01";
    let started = tokio::time::Instant::now();
    let mut closed = false;
    'trickle: for _ in 0..4 {
        for b in frame.iter().chain(std::iter::repeat_n(&0u8, 64)) {
            if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                closed = true;
                break 'trickle;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break 'trickle;
                }
                _ => {}
            }
            if started.elapsed() > bound {
                break 'trickle;
            }
        }
    }
    assert!(
        closed,
        "a trickling HTTP/2 client was not cut off within {bound:?}"
    );
}

/// A researcher's blocking ledger client reads the ledger, works for longer than the idle
/// cut-off (the intake closes the pooled connection meanwhile), then appends its run and reads
/// again: both go through on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_client_outlives_the_idle_cut_off() {
    let live = Live::start_with(short_timeouts).await;
    live.donate_ok(live.builder()).await;
    let access = LedgerAccess::of(&live);
    let research = Research::load(live.path());
    let s = spec(TOTAL_SPEC);
    let now = SystemClock.now();
    let approval = research.approve(&s, now - 60, now + 3_600);
    let pause = Duration::from_millis(SHORT_TIMEOUT_MS * 5 / 2);
    let (appended, size) = tokio::task::spawn_blocking(move || {
        let ledger = access.client();
        let verifiers = std::slice::from_ref(&access.verifier);
        let view = verify_ledger(&ledger, verifiers, None).expect("the first read");
        std::thread::sleep(pause);
        let store = BatchStore::open(&research.batches).expect("store");
        let outcome = research
            .run(&s, &approval, &view, &store, &ledger)
            .expect("the run is logged after the cut-off");
        std::thread::sleep(pause);
        let view = verify_ledger(&ledger, verifiers, None).expect("a read after the cut-off");
        (outcome.appended.index, view.all().count() as u64)
    })
    .await
    .expect("the research task");
    assert_eq!(size, appended + 1);
}

// ---------------------------------------------------------------------------------------------
// Withdrawals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_signed_by_another_donors_key() {
    let live = Live::start().await;
    let now = live.clock.now();
    let (victim, _, _) = live.donate_ok(live.builder()).await;
    let (attacker, _, _) = live.donate_ok(live.builder()).await;
    let before = live.stored().await;
    // The attacker signs a withdrawal of the victim's consent with their own (registered) key.
    let forged = victim.withdrawal_signed_by(&attacker.donor_key, now);
    let r = live.withdraw(forged).await;
    live.assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "withdrawal-key-mismatch",
        &before,
    )
    .await;
    // The same with a key the intake has never seen.
    let stranger = SigningKey::generate().expect("key");
    let r = live
        .withdraw(victim.withdrawal_signed_by(&stranger, now))
        .await;
    live.assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "withdrawal-key-mismatch",
        &before,
    )
    .await;
    // The victim's own withdrawal is accepted: the consent was there to withdraw.
    let r = live.withdraw(victim.withdrawal(now)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(matches!(
        live.verify(&r.body).entry,
        LedgerEntry::ConsentWithdrawn { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Analytics over the live intake

/// The steward's and researcher's side: the signed study, the steward key (approver), the vault
/// key and the study's batch directory of the intake.
struct Research {
    steward: SigningKey,
    study: StudyDefinition,
    vault: VaultKey,
    batches: PathBuf,
}

impl Research {
    fn load(intake_dir: &Path) -> Self {
        let steward =
            datadonor_analytics::keys::load_steward_key(&intake_dir.join("steward/steward.key"))
                .expect("steward key");
        let signed = std::fs::read(intake_dir.join("studies/t2d-dk.json")).expect("signed study");
        let study = open_study(&signed, &[steward.public_key()]).expect("the study opens");
        let vault = VaultKey::load(&intake_dir.join("vault-private/vault.key")).expect("vault key");
        Self {
            steward,
            study,
            vault,
            batches: intake_dir.join("batches").join(STUDY),
        }
    }

    /// Run an approved query now with the real engine, the steward as the only approver.
    fn run(
        &self,
        spec: &QuerySpec,
        approval: &SignedObject,
        view: &LedgerView,
        store: &BatchStore,
        ledger: &HttpLedger,
    ) -> Result<QueryOutcome, AnalyticsError> {
        let approvers = [self.steward.public_key()];
        let inputs = QueryInputs {
            spec,
            approval,
            study: &self.study,
            approvers: &approvers,
            now: SystemClock.now(),
        };
        run_query(&inputs, &view.index(), store, &self.vault, ledger)
    }

    fn approve(&self, spec: &QuerySpec, not_before: i64, not_after: i64) -> SignedObject {
        QueryApproval {
            format: datadonor_schemas::PROTOCOL_VERSION,
            approval_id: [7; 16],
            query_sha256: spec.hash(),
            study_id: spec.study.clone(),
            purpose: spec.purpose.clone(),
            researcher: spec.researcher.clone(),
            not_before,
            not_after,
            max_runs: 10,
            privacy: None,
        }
        .sign(&self.steward)
    }
}

/// The intake's ledger endpoints as the researcher and auditor reach them.
struct LedgerAccess {
    base: String,
    ca: PathBuf,
    auditor: String,
    analytics: String,
    verifier: NoteVerifier,
}

impl LedgerAccess {
    fn of(live: &Live) -> Self {
        Self {
            base: live.url(""),
            ca: live.path().join("tls/ca.pem"),
            auditor: live.auditor_token.clone(),
            analytics: std::fs::read_to_string(live.path().join("analytics.token"))
                .expect("analytics token")
                .trim()
                .to_string(),
            verifier: live.verifier.clone(),
        }
    }

    /// An HTTPS ledger client (blocking: call it off the async runtime).
    fn client(&self) -> HttpLedger {
        let mut l = HttpLedger::with_ca_file(
            &self.base,
            Zeroizing::new(self.auditor.clone()),
            Some(Zeroizing::new(self.analytics.clone())),
            &self.ca,
        )
        .expect("ledger client");
        l.set_verifiers(vec![self.verifier.clone()]);
        l
    }
}

/// Run an approved query with the real engine over `batches`, the ledger read and verified over
/// HTTPS from the intake, the run logged there.
async fn run_approved(
    live: &Live,
    spec: &QuerySpec,
    approval: &SignedObject,
    batches: Option<PathBuf>,
) -> Result<QueryOutcome, AnalyticsError> {
    let access = LedgerAccess::of(live);
    let dir = live.path().to_path_buf();
    let (spec, approval) = (spec.clone(), approval.clone());
    tokio::task::spawn_blocking(move || {
        let research = Research::load(&dir);
        let ledger = access.client();
        let view = verify_ledger(&ledger, std::slice::from_ref(&access.verifier), None)?;
        let store = BatchStore::open(batches.as_deref().unwrap_or(&research.batches))?;
        research.run(&spec, &approval, &view, &store, &ledger)
    })
    .await
    .expect("the query task")
}

const TOTAL_SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "researcher@sdu.example"
title = "Donors and rows"
[[measures]]
op = "donors"
[[measures]]
op = "rows"
"#;

fn spec(text: &str) -> QuerySpec {
    QuerySpec::from_toml(text).expect("spec parses")
}

fn logged_donors(outcome: &QueryOutcome) -> u64 {
    match &outcome.entry {
        LedgerEntry::QueryRun {
            donors_considered, ..
        } => *donors_considered,
        other => panic!("logged {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_donor_is_not_counted_by_a_later_query() {
    let live = Live::start().await;
    let mut donations = Vec::new();
    for _ in 0..6 {
        donations.push(live.donate_ok(live.builder()).await.0);
    }
    let research = Research::load(live.path());
    let s = spec(TOTAL_SPEC);
    let now = SystemClock.now();
    let approval = research.approve(&s, now - 60, now + 3_600);

    let before = run_approved(&live, &s, &approval, None)
        .await
        .expect("the first run");
    assert_eq!(before.table.rows.len(), 1);
    assert_eq!(before.table.rows[0].values, vec![Some(6.0), Some(18.0)]);
    assert_eq!(logged_donors(&before), 6);

    // One donor withdraws; nothing is compacted yet, so their rows are still sealed.
    let gone = &donations[0];
    let r = live.withdraw(gone.withdrawal(live.clock.now())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let after = run_approved(&live, &s, &approval, None)
        .await
        .expect("the second run");
    assert_eq!(after.table.rows[0].values, vec![Some(5.0), Some(15.0)]);
    assert_eq!(logged_donors(&after), 5);
    assert_eq!(after.appended.index, before.appended.index + 2);

    // The batches still hold the withdrawn donor's rows: the query left them out by consent.
    // The intake sealed every row with the consent record it was donated under, so the batch
    // audit finds exactly the withdrawn record's rows (awaiting compaction) and nothing else.
    let access = LedgerAccess::of(&live);
    let gone_pseudonym: Pseudonym = gone.manifest.pseudonym;
    let gone_record = hex::encode(gone.manifest.record_id);
    let (allowed, batch_donors, batch_rows, violations) = tokio::task::spawn_blocking(move || {
        let ledger = access.client();
        let view = verify_ledger(&ledger, std::slice::from_ref(&access.verifier), None)
            .expect("ledger verifies");
        let store = BatchStore::open(&research.batches).expect("store");
        let audit = audit_batches(&view.index(), &store, &research.vault, &research.study.id)
            .expect("audit");
        let allowed = view.allowed_donors(&research.study.id, EPI, SystemClock.now());
        (allowed, audit.donors, audit.rows, audit.violations)
    })
    .await
    .expect("audit task");
    assert_eq!((batch_donors, batch_rows), (6, 18));
    match violations.as_slice() {
        [v] => {
            assert!(
                matches!(v.kind, BatchViolationKind::Withdrawn { .. }),
                "{v}"
            );
            assert_eq!(v.pseudonym, Some(gone_pseudonym));
            assert_eq!(
                (v.consent_record.as_str(), v.rows),
                (gone_record.as_str(), 3)
            );
        }
        other => panic!("expected the withdrawn record's rows only, got {other:?}"),
    }
    assert_eq!(allowed.len(), 5);
    assert!(!allowed.contains(&gone_pseudonym));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_for_one_query_used_for_another() {
    let live = Live::start().await;
    for _ in 0..5 {
        live.donate_ok(live.builder()).await;
    }
    let research = Research::load(live.path());
    let a = spec(TOTAL_SPEC);
    let now = SystemClock.now();
    let approval_a = research.approve(&a, now - 60, now + 3_600);
    // Query B: the same, broken down by region and sex.
    let b = spec(&TOTAL_SPEC.replace(
        "title = \"Donors and rows\"",
        "title = \"Donors and rows\"\ngroup_by = [\"region\", \"sex\"]",
    ));
    assert_ne!(a.hash(), b.hash());
    for other in [
        b,
        // Only the researcher differs.
        spec(&TOTAL_SPEC.replace("researcher@sdu.example", "someone@else.example")),
        // Only the purpose differs.
        spec(&TOTAL_SPEC.replace(EPI, "t2d-care-quality")),
    ] {
        let size = live.tree_size().await;
        let err = run_approved(&live, &other, &approval_a, None)
            .await
            .expect_err("approval A does not run another query");
        assert!(matches!(err, AnalyticsError::Refused(_)), "{err:?}");
        assert!(err.to_string().contains("query hash mismatch"), "{err}");
        assert_eq!(live.tree_size().await, size, "a refused run is not logged");
    }
    // Approval A runs query A.
    let size = live.tree_size().await;
    let ok = run_approved(&live, &a, &approval_a, None)
        .await
        .expect("approval A runs query A");
    assert_eq!(ok.appended.index, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_approval() {
    let live = Live::start().await;
    live.donate_ok(live.builder()).await;
    let research = Research::load(live.path());
    let s = spec(TOTAL_SPEC);
    let now = SystemClock.now();
    let size = live.tree_size().await;
    for (not_before, not_after, why) in [
        (now - 7_200, now - 3_600, "approval has expired"),
        (now - 7_200, now, "approval has expired"),
        (now + 3_600, now + 7_200, "approval is not valid yet"),
    ] {
        let approval = research.approve(&s, not_before, not_after);
        let err = run_approved(&live, &s, &approval, None)
            .await
            .expect_err("outside its window an approval runs nothing");
        assert!(matches!(err, AnalyticsError::Refused(_)), "{err:?}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(live.tree_size().await, size, "a refused run is not logged");
    }
    let valid = research.approve(&s, now - 60, now + 3_600);
    run_approved(&live, &s, &valid, None)
        .await
        .expect("a valid approval runs");
}

// ---------------------------------------------------------------------------------------------
// Sealed batches

/// A live intake holding two sealed batches it wrote itself: `big` (one donation of many rows
/// with varied values, several chunks) and `small` (one chunk), and a scratch batch directory
/// where tests damage copies of them.
struct Sealed {
    live: Live,
    big: PathBuf,
    small: PathBuf,
    scratch: tempfile::TempDir,
}

/// `n` valid rows with measures spread over their whole ranges (so that Parquet cannot
/// compress them into one chunk).
fn varied_rows(study: &StudyDefinition, p: &Pseudonym, n: usize) -> RecordBatch {
    let mut rows = testkit::sample_rows(study, p, n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for f in &study.fields {
        match f.field_type() {
            FieldType::Number { min, max } => {
                let v: Vec<Option<f64>> = (0..n).map(|_| Some(rng.gen_range(min..max))).collect();
                rows = replace_column(&rows, &f.name, Arc::new(Float64Array::from(v)));
            }
            FieldType::Flag => {
                let v: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.5)).collect();
                rows = replace_column(&rows, &f.name, Arc::new(BooleanArray::from(v)));
            }
            FieldType::Category(_) => {}
        }
    }
    rows
}

fn batch_path(live: &Live, entry: &LedgerEntry) -> PathBuf {
    match entry {
        LedgerEntry::DonationAccepted { batch_id, .. } => live
            .path()
            .join("batches")
            .join(STUDY)
            .join(format!("{batch_id}.ddb")),
        other => panic!("not a donation entry: {other:?}"),
    }
}

fn header_len(bytes: &[u8]) -> usize {
    BatchHeader::parse(bytes).expect("header parses").1
}

async fn sealed_batches() -> Sealed {
    let live = Live::start().await;
    let p = testkit::random_pseudonym();
    let mut b = live.builder();
    b.pseudonym = p;
    b.rows = Some(varied_rows(&live.study.definition, &p, 10_000));
    let (_, big, _) = live.donate_ok(b).await;
    let (_, small, _) = live.donate_ok(live.builder()).await;
    let big = batch_path(&live, &big.entry);
    let small = batch_path(&live, &small.entry);
    assert_ne!(big, small, "two commit groups, two batches");
    let bytes = std::fs::read(&big).expect("big batch");
    let segments = (bytes.len() - header_len(&bytes)).div_ceil(SEGMENT_LEN);
    assert!(segments >= 3, "the big batch has {segments} chunks");
    let bytes = std::fs::read(&small).expect("small batch");
    assert_eq!((bytes.len() - header_len(&bytes)).div_ceil(SEGMENT_LEN), 1);
    let scratch = tempfile::tempdir().expect("scratch dir");
    for f in [&big, &small] {
        std::fs::copy(f, scratch.path().join(f.file_name().expect("name"))).expect("copied");
    }
    Sealed {
        live,
        big,
        small,
        scratch,
    }
}

impl Sealed {
    fn copy_of(&self, original: &Path) -> PathBuf {
        self.scratch
            .path()
            .join(original.file_name().expect("file name"))
    }

    /// Write `bytes` as the scratch copy of `original`.
    fn damage(&self, original: &Path, bytes: &[u8]) -> PathBuf {
        let p = self.copy_of(original);
        std::fs::write(&p, bytes).expect("damaged copy written");
        p
    }

    /// Restore the scratch copy of `original`.
    fn restore(&self, original: &Path) {
        std::fs::copy(original, self.copy_of(original)).expect("restored");
    }

    /// A query over the scratch directory with a fresh approval.
    async fn query(&self) -> Result<QueryOutcome, AnalyticsError> {
        let research = Research::load(self.live.path());
        let s = spec(TOTAL_SPEC);
        let now = SystemClock.now();
        let approval = research.approve(&s, now - 60, now + 3_600);
        run_approved(
            &self.live,
            &s,
            &approval,
            Some(self.scratch.path().to_path_buf()),
        )
        .await
    }

    /// The query over the scratch directory is refused by the batch at `file` with an error of
    /// the expected kind that names the file, and nothing is logged.
    async fn assert_refused(&self, file: &Path, kind: impl Fn(&BatchErrorKind) -> bool) {
        let size = self.live.tree_size().await;
        let err = self
            .query()
            .await
            .expect_err("a damaged batch stops the run");
        match &err {
            AnalyticsError::Batch(BatchError { file: f, kind: k }) => {
                assert_eq!(f, file, "{err}");
                assert!(kind(k), "unexpected kind: {err}");
            }
            other => panic!("not a batch error: {other:?}"),
        }
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "the message names the file: {err}"
        );
        assert_eq!(self.live.tree_size().await, size, "nothing was logged");
    }

    /// The untouched copies run (the refusals are about the damage). Two donors are below k,
    /// so the one cell is suppressed; the logged run shows both were read.
    async fn assert_runs(&self) {
        let out = self.query().await.expect("the intact batches run");
        assert_eq!(logged_donors(&out), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_batch_with_a_flipped_byte() {
    let s = sealed_batches().await;
    s.assert_runs().await;
    let bytes = std::fs::read(&s.big).expect("read");
    let h = header_len(&bytes);
    // A byte of the first chunk.
    let mut flipped = bytes.clone();
    flipped[h + 100] ^= 0x01;
    let f = s.damage(&s.big, &flipped);
    s.assert_refused(&f, |k| {
        matches!(k, BatchErrorKind::ChunkModified { chunk: 0 })
    })
    .await;
    // A byte of the last chunk's tag.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    let f = s.damage(&s.big, &flipped);
    s.assert_refused(&f, |k| {
        matches!(k, BatchErrorKind::FinalChunkInvalid { .. })
    })
    .await;
    // A byte of the header (the batch's creation time).
    let mut flipped = bytes;
    flipped[8 + 16 + 1 + STUDY.len() + 7] ^= 0x01;
    let f = s.damage(&s.big, &flipped);
    s.assert_refused(&f, |k| matches!(k, BatchErrorKind::KeyUnwrap))
        .await;
    s.restore(&s.big);
    s.assert_runs().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_sealed_batch() {
    let s = sealed_batches().await;
    let bytes = std::fs::read(&s.big).expect("read");
    let h = header_len(&bytes);
    // Cut at a chunk boundary: every remaining chunk authenticates, the final one is missing.
    let f = s.damage(&s.big, &bytes[..h + 2 * SEGMENT_LEN]);
    s.assert_refused(&f, |k| matches!(k, BatchErrorKind::Truncated { chunks: 2 }))
        .await;
    // Cut inside a chunk.
    let f = s.damage(&s.big, &bytes[..h + SEGMENT_LEN + 1_000]);
    s.assert_refused(&f, |k| {
        matches!(k, BatchErrorKind::FinalChunkInvalid { chunk: 1 })
    })
    .await;
    // Only the header left.
    let f = s.damage(&s.big, &bytes[..h]);
    s.assert_refused(&f, |k| matches!(k, BatchErrorKind::Truncated { chunks: 0 }))
        .await;
    // The small batch missing its last byte.
    let small = std::fs::read(&s.small).expect("read");
    s.restore(&s.big);
    let f = s.damage(&s.small, &small[..small.len() - 1]);
    s.assert_refused(&f, |k| {
        matches!(k, BatchErrorKind::FinalChunkInvalid { chunk: 0 })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_batch_with_reordered_chunks() {
    let s = sealed_batches().await;
    let bytes = std::fs::read(&s.big).expect("read");
    let h = header_len(&bytes);
    let mut swapped = bytes[..h].to_vec();
    swapped.extend_from_slice(&bytes[h + SEGMENT_LEN..h + 2 * SEGMENT_LEN]);
    swapped.extend_from_slice(&bytes[h..h + SEGMENT_LEN]);
    swapped.extend_from_slice(&bytes[h + 2 * SEGMENT_LEN..]);
    assert_eq!(swapped.len(), bytes.len());
    let f = s.damage(&s.big, &swapped);
    s.assert_refused(&f, |k| {
        matches!(
            k,
            BatchErrorKind::Reordered {
                position: 0,
                belongs_at: 1
            }
        )
    })
    .await;
    // A chunk dropped from the middle.
    let mut dropped = bytes[..h + SEGMENT_LEN].to_vec();
    dropped.extend_from_slice(&bytes[h + 2 * SEGMENT_LEN..]);
    let f = s.damage(&s.big, &dropped);
    s.assert_refused(&f, |k| {
        matches!(
            k,
            BatchErrorKind::Reordered {
                position: 1,
                belongs_at: 2
            }
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_batch_headers_swapped() {
    let s = sealed_batches().await;
    let big = std::fs::read(&s.big).expect("read");
    let small = std::fs::read(&s.small).expect("read");
    let (hb, hs) = (header_len(&big), header_len(&small));
    // The small batch's header on the big batch's body (file named by the header's id).
    let mut moved = small[..hs].to_vec();
    moved.extend_from_slice(&big[hb..]);
    let f = s.damage(&s.small, &moved);
    s.assert_refused(&f, |k| matches!(k, BatchErrorKind::BodyMismatch))
        .await;
    s.restore(&s.small);
    // The big batch's header on the small batch's one-chunk body: with a single chunk the
    // opener cannot tell a moved header from a modified chunk, but it refuses it.
    let mut moved = big[..hb].to_vec();
    moved.extend_from_slice(&small[hs..]);
    let f = s.damage(&s.big, &moved);
    s.assert_refused(&f, |k| {
        matches!(
            k,
            BatchErrorKind::BodyMismatch | BatchErrorKind::FinalChunkInvalid { chunk: 0 }
        )
    })
    .await;
    // Renamed to the other batch's id: the header names another batch than the file.
    s.restore(&s.big);
    let renamed = s.copy_of(&s.small);
    std::fs::write(&renamed, &big).expect("written");
    s.assert_refused(&renamed, |k| {
        matches!(k, BatchErrorKind::FileNameMismatch { .. })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The ledger

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_ledger_is_caught_by_the_auditor() {
    let mut live = Live::start().await;
    live.donate_ok(live.builder()).await;
    let state = tempfile::tempdir().expect("auditor state dir");
    let state_dir = state.path().to_path_buf();

    // The auditor verifies the head and keeps it.
    let audit = |live: &Live| {
        let access = LedgerAccess::of(live);
        let dir = state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let ledger = access.client();
            audit_log(&ledger, std::slice::from_ref(&access.verifier), &dir)
        })
    };
    let first = audit(&live).await.expect("task").expect("first audit");
    // The log grows honestly, across a restart: consistent.
    live.restart().await;
    live.donate_ok(live.builder()).await;
    let second = audit(&live).await.expect("task").expect("second audit");
    assert_eq!(second.previous_size, Some(first.size));
    assert!(second.size > first.size);
    let kept = std::fs::read(state.path().join(STATE_FILE)).expect("auditor state");

    // The operator rewrites history (the first entry) and restarts.
    live.stop().await;
    let ledger_file = live.path().join("ledger/ledger.log");
    let bytes = std::fs::read(&ledger_file).expect("ledger file");
    let mut entries = decode_records(&bytes, &ledger_file).expect("records");
    let rewritten = match LedgerEntry::from_bytes(&entries[0]).expect("entry 0") {
        LedgerEntry::KeyRotated {
            time,
            role,
            key_id,
            public_key_sha256,
        } => LedgerEntry::KeyRotated {
            time: time - 86_400,
            role,
            key_id,
            public_key_sha256,
        },
        other => panic!("entry 0 is {other:?}"),
    };
    entries[0] = rewritten.to_bytes();
    let mut out = Vec::new();
    for e in &entries {
        out.extend(encode_record(e));
    }
    std::fs::write(&ledger_file, out).expect("ledger rewritten");
    // With its index in place the intake still signs the tree it built (the index's last
    // record is untouched): the rewritten entry no longer matches the signed root.
    live.restart().await;
    live.donate_ok(live.builder()).await;
    let err = audit(&live)
        .await
        .expect("task")
        .expect_err("an entry that is not the signed one is refused");
    assert!(
        matches!(
            &err,
            AnalyticsError::Ledger(LedgerError::RootMismatch { .. })
        ),
        "{err:?}"
    );
    // An operator who also removes the index makes the intake rebuild the tree from the
    // rewritten file and sign it: a tree that is not an extension of the one the auditor kept.
    live.stop().await;
    std::fs::remove_file(live.path().join("ledger/index.redb")).expect("ledger index");
    live.restart().await;
    live.donate_ok(live.builder()).await;

    let err = audit(&live)
        .await
        .expect("task")
        .expect_err("the rewritten history is refused");
    match &err {
        AnalyticsError::Ledger(LedgerError::Inconsistent { old, new, .. }) => {
            assert_eq!(*old, second.size);
            assert!(*new > *old);
        }
        other => panic!("not an inconsistency: {other:?}"),
    }
    assert!(err.to_string().contains("not append-only"), "{err}");
    assert_eq!(
        std::fs::read(state.path().join(STATE_FILE)).expect("auditor state"),
        kept,
        "the refused head is not stored"
    );
}
