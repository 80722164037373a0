//! Shared helpers of the intake's integration tests: an opened intake over a fresh data
//! directory with a manual clock, and request helpers over `oneshot`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test binary uses a subset of the helpers

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::Router;
use datadonor_intake::config::Config;
use datadonor_intake::studies::LoadedStudy;
use datadonor_intake::{testkit, Intake};
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::envelope::HpkePublicKey;
use datadonor_schemas::receipt::ReceiptBundle;
use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::time::{Clock, ManualClock, SystemClock};
use http::{Request, StatusCode};
use tower::ServiceExt;

pub const ENVELOPE_CT: &str = "application/vnd.datadonor.envelope.v1";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub clock: Arc<ManualClock>,
    pub intake: Option<Intake>,
    pub router: Router,
    pub study: Arc<LoadedStudy>,
    pub hpke: (u32, HpkePublicKey),
    pub token: String,
}

impl Env {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    pub fn with_config(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = testkit::init_test_dir(dir.path()).unwrap();
        edit(&mut config);
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let intake = Intake::open(config.clone(), clock.clone()).unwrap();
        let router = intake.router();
        let study = testkit::load_study(dir.path(), "t2d-dk").unwrap();
        let hpke = testkit::current_hpke_key(dir.path()).unwrap();
        let token = std::fs::read_to_string(dir.path().join("auditor.token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            dir,
            config,
            clock,
            intake: Some(intake),
            router,
            study,
            hpke,
            token,
        }
    }

    /// Stop the intake and drop everything that holds its stores (the router holds the state).
    pub fn stop(&mut self) {
        if let Some(i) = self.intake.take() {
            i.shutdown();
        }
        self.router = Router::new();
    }

    /// Stop and re-open the intake over the same directory (a restart).
    pub fn restart(&mut self) {
        if let Some(i) = self.intake.take() {
            i.shutdown();
        }
        // The old router holds the old state, and through it the ledger store (and, on
        // PostgreSQL, the connection that holds the ledger's lock).
        self.router = Router::new();
        let intake = Intake::open(self.config.clone(), self.clock.clone()).unwrap();
        self.router = intake.router();
        self.intake = Some(intake);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn builder(&self) -> testkit::DonationBuilder<'_> {
        let mut b = testkit::DonationBuilder::new(&self.study, self.hpke);
        b.now = self.clock.now();
        b
    }

    pub async fn request(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body)
    }

    pub async fn post(&self, path: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let req = Request::post(path)
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        let (s, _, b) = self.request(req).await;
        (s, b)
    }

    pub async fn donate(&self, envelope: Vec<u8>) -> (StatusCode, Bytes) {
        self.post("/v1/donations", ENVELOPE_CT, envelope).await
    }

    pub async fn withdraw(&self, body: Vec<u8>) -> (StatusCode, Bytes) {
        self.post("/v1/withdrawals", "application/json", body).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Bytes) {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let (s, _, body) = self.request(b.body(Body::empty()).unwrap()).await;
        (s, body)
    }

    pub async fn audit(&self, path: &str) -> (StatusCode, Bytes) {
        self.get(path, Some(&self.token.clone())).await
    }

    /// The ledger key and note verifier as published.
    pub async fn ledger_key(&self) -> (PublicKey, NoteVerifier) {
        let (s, b) = self.get("/v1/ledger-key", None).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let pk = PublicKey::from_base64(v["public_key"].as_str().unwrap()).unwrap();
        let vk = NoteVerifier::parse_vkey(v["vkey"].as_str().unwrap()).unwrap();
        (pk, vk)
    }

    pub async fn verify(&self, body: &[u8]) -> datadonor_schemas::receipt::VerifiedReceipt {
        let bundle = ReceiptBundle::from_json(body).unwrap();
        let (pk, vk) = self.ledger_key().await;
        datadonor_schemas::receipt::verify_receipt(&bundle, &pk, &vk).unwrap()
    }

    /// What is on disk: ledger length in bytes and the batch files.
    pub fn snapshot(&self) -> (u64, Vec<PathBuf>) {
        let ledger = std::fs::metadata(self.path().join("ledger/ledger.log"))
            .unwrap()
            .len();
        (ledger, batch_files(self.path()))
    }
}

pub fn batch_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = dir.join("batches");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for s in rd.flatten() {
            if let Ok(rd2) = std::fs::read_dir(s.path()) {
                for f in rd2.flatten() {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The problem slug of a response body.
pub fn slug(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:datadonor:problem:")
        .to_string()
}

/// Every file under a directory.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    datadonor_intake::testkit::files_under(dir)
}
