//! Several intakes, one sequencer, over real TLS: two frontends made by `init-frontend` open
//! donations and forward them to the sequencer, which checks them again, commits them and signs
//! the receipts; every ledger read and withdrawal is relayed. A frontend's directory holds no
//! ledger key, vault key or credential but its own token, and a sequencer that is down makes a
//! frontend answer `503 unavailable`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use datadonor_intake::cluster::{forwarded_body, FORWARDED_CONTENT_TYPE, FORWARD_PATH};
use datadonor_intake::config::{Config, Role};
use datadonor_intake::{testkit, RunningIntake};
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::envelope::DonationPayload;
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};
use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::study::rows_to_ipc;

const ENVELOPE: &str = "application/vnd.datadonor.envelope.v1";

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    seq_dir: std::path::PathBuf,
    sequencer: Option<RunningIntake>,
    frontends: Vec<RunningIntake>,
    http: reqwest::Client,
}

async fn cluster(n_frontends: usize) -> Cluster {
    let seq = tempfile::tempdir().unwrap();
    let config = testkit::init_test_dir(seq.path()).unwrap();
    let sequencer = datadonor_intake::start(config).await.unwrap();
    let mut dirs = vec![];
    let mut frontends = vec![];
    for _ in 0..n_frontends {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("frontend");
        datadonor_intake::init::init_frontend(
            seq.path(),
            &dir,
            vec![sequencer.base_url()],
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .unwrap();
        let mut c = Config::load_dir(&dir).unwrap();
        assert_eq!(c.cluster.role, Role::Frontend);
        c.limits.public_read_burst = 1_000_000;
        c.limits.public_reads_per_second = 1_000_000.0;
        frontends.push(datadonor_intake::start(c).await.unwrap());
        dirs.push(parent);
    }
    let http = testkit::https_client(
        &std::fs::read(seq.path().join("tls/ca.pem")).unwrap(),
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    let seq_dir = seq.path().to_path_buf();
    dirs.push(seq);
    Cluster {
        _dirs: dirs,
        seq_dir,
        sequencer: Some(sequencer),
        frontends,
        http,
    }
}

impl Cluster {
    fn seq_url(&self) -> String {
        self.sequencer.as_ref().unwrap().base_url()
    }

    fn donation(&self) -> testkit::Donation {
        let study = testkit::load_study(&self.seq_dir, "t2d-dk").unwrap();
        testkit::DonationBuilder::new(&study, testkit::current_hpke_key(&self.seq_dir).unwrap())
            .build()
            .unwrap()
    }

    async fn post(&self, url: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let r = self
            .http
            .post(format!("{url}{path}"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, url: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let mut req = self.http.get(format!("{url}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    async fn ledger_key(&self, url: &str) -> (PublicKey, NoteVerifier) {
        let (s, b) = self.get(url, "/v1/ledger-key", None).await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        (
            PublicKey::from_base64(v["public_key"].as_str().unwrap()).unwrap(),
            NoteVerifier::parse_vkey(v["vkey"].as_str().unwrap()).unwrap(),
        )
    }
}

fn slug(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["type"]
        .as_str()
        .unwrap_or_default()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontends_forward_donations_and_relay_the_ledger() {
    let c = cluster(2).await;
    let seq = c.seq_url();
    let fronts: Vec<String> = c.frontends.iter().map(|f| f.base_url()).collect();

    // A frontend's directory holds what it needs to open envelopes, and nothing that signs,
    // opens a batch or authorises an auditor or analytics.
    for f in &c.frontends {
        let d = f.data_dir();
        for absent in [
            "keys/ledger.key",
            "keys/auditor.sha256",
            "keys/analytics.sha256",
            "keys/frontend.sha256",
            "vault-private",
            "auditor.token",
            "analytics.token",
            "steward",
            "ledger",
            "batches",
        ] {
            assert!(!d.join(absent).exists(), "{absent} in a frontend directory");
        }
        assert!(d.join("keys/transport.json").exists());
    }
    // The ledger key a frontend publishes is the sequencer's.
    let (pk, vk) = c.ledger_key(&seq).await;
    for f in &fronts {
        let (fpk, fvk) = c.ledger_key(f).await;
        assert_eq!((fpk.0, fvk.to_vkey()), (pk.0, vk.to_vkey()));
    }

    // Donations through both frontends at once; every receipt verifies under the ledger key.
    let donations: Vec<testkit::Donation> = (0..6).map(|_| c.donation()).collect();
    let mut sent = tokio::task::JoinSet::new();
    for (i, d) in donations.iter().enumerate() {
        let (http, url, body) = (c.http.clone(), fronts[i % 2].clone(), d.envelope.clone());
        sent.spawn(async move {
            let r = http
                .post(format!("{url}/v1/donations"))
                .header("content-type", ENVELOPE)
                .body(body)
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        });
    }
    let mut receipts = vec![Vec::new(); donations.len()];
    while let Some(r) = sent.join_next().await {
        let (i, status, body) = r.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let bundle = ReceiptBundle::from_json(&body).unwrap();
        let v = verify_receipt(&bundle, &pk, &vk).unwrap();
        assert_eq!(v.receipt.pseudonym, donations[i].manifest.pseudonym);
        receipts[i] = body;
    }
    // A retry through the other frontend gets the same receipt.
    let (s, again) = c
        .post(
            &fronts[1],
            "/v1/donations",
            ENVELOPE,
            donations[0].envelope.clone(),
        )
        .await;
    assert_eq!((s, &again), (200, &receipts[0]));
    // The sequencer wrote them: one ledger, batches with every row.
    let st = c.sequencer.as_ref().unwrap().state().clone();
    let size = st
        .sequencing()
        .unwrap()
        .state
        .read()
        .unwrap()
        .published_size();
    assert_eq!(
        size,
        1 + 2 * 6,
        "the key entry, then a consent and a donation each"
    );

    // Ledger reads through a frontend are the sequencer's.
    let (s, cp_front) = c.get(&fronts[0], "/v1/ledger/checkpoint", None).await;
    let (_, cp_seq) = c.get(&seq, "/v1/ledger/checkpoint", None).await;
    assert_eq!((s, &cp_front), (200, &cp_seq));
    let path = format!("/v1/ledger/inclusion?index=2&size={size}");
    let (s, p_front) = c.get(&fronts[1], &path, None).await;
    assert_eq!((s, p_front), (200, c.get(&seq, &path, None).await.1));
    let auditor = token(&c.seq_dir, "auditor.token");
    let path = format!("/v1/ledger/entries?start=0&end={size}");
    let (s, e_front) = c.get(&fronts[0], &path, Some(&auditor)).await;
    assert_eq!(
        (s, e_front),
        (200, c.get(&seq, &path, Some(&auditor)).await.1)
    );
    let (s, b) = c.get(&fronts[0], &path, None).await;
    assert_eq!((s, slug(&b).as_str()), (401, "unauthorized"));

    // A withdrawal through a frontend.
    let now = datadonor_schemas::time::Clock::now(&datadonor_schemas::time::SystemClock);
    let (s, b) = c
        .post(
            &fronts[1],
            "/v1/withdrawals",
            "application/json",
            donations[3].withdrawal(now),
        )
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    verify_receipt(&ReceiptBundle::from_json(&b).unwrap(), &pk, &vk).unwrap();

    // The frontend opens envelopes; the sequencer checks what is inside: a manifest that is not
    // a signed object is refused by the sequencer and the refusal relayed.
    let (s, b) = c
        .post(
            &fronts[0],
            "/v1/donations",
            ENVELOPE,
            b"not an envelope".to_vec(),
        )
        .await;
    assert_eq!((s, slug(&b).as_str()), (400, "malformed-envelope"));
    let study = testkit::load_study(&c.seq_dir, "t2d-dk").unwrap();
    let mut bad =
        testkit::DonationBuilder::new(&study, testkit::current_hpke_key(&c.seq_dir).unwrap());
    bad.manifest_bytes = Some(b"{}".to_vec());
    let bad = bad.build().unwrap();
    let (s, b) = c
        .post(&fronts[0], "/v1/donations", ENVELOPE, bad.envelope)
        .await;
    assert_eq!((s, slug(&b).as_str()), (400, "malformed-manifest"));
    let after = st
        .sequencing()
        .unwrap()
        .state
        .read()
        .unwrap()
        .published_size();
    assert_eq!(after, size + 1, "only the withdrawal was added");
}

/// The sequencer's endpoint for forwarded donations takes the frontend token only, and checks
/// the manifest signature itself: a payload whose manifest was signed by someone else than the
/// donor it names is refused even with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_checks_forwarded_donations_again() {
    let c = cluster(1).await;
    let seq = c.seq_url();
    let frontend_token = token(&c.seq_dir, "frontend.token");
    let d = c.donation();
    let payload = DonationPayload {
        idempotency_key: d.idempotency_key,
        manifest: d.manifest.sign(&d.donor_key).to_bytes(),
        rows: rows_to_ipc(&d.rows).unwrap(),
    };
    let body = forwarded_body(&[5; 32], &payload);
    let send = |auth: Option<String>, body: Vec<u8>| {
        let mut req = c
            .http
            .post(format!("{seq}{FORWARD_PATH}"))
            .header("content-type", FORWARDED_CONTENT_TYPE)
            .body(body);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    let (s, b) = send(None, body.clone()).await;
    assert_eq!((s, slug(&b).as_str()), (401, "unauthorized"));
    let (s, b) = send(Some(token(&c.seq_dir, "analytics.token")), body.clone()).await;
    assert_eq!((s, slug(&b).as_str()), (401, "unauthorized"));
    // Another key signed the donor's manifest: with the token, still refused.
    let forger = datadonor_schemas::signing::SigningKey::generate().unwrap();
    let forged = DonationPayload {
        manifest: d.manifest.sign(&forger).to_bytes(),
        ..payload.clone()
    };
    let (s, b) = send(
        Some(frontend_token.clone()),
        forwarded_body(&[5; 32], &forged),
    )
    .await;
    assert_eq!((s, slug(&b).as_str()), (400, "bad-signature"));
    let (s, b) = send(Some(frontend_token.clone()), body[..40].to_vec()).await;
    assert_eq!((s, slug(&b).as_str()), (400, "malformed-envelope"));
    // The genuine payload with the token is accepted, and its receipt names the envelope hash
    // the frontend gave.
    let (s, b) = send(Some(frontend_token), body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let bundle = ReceiptBundle::from_json(&b).unwrap();
    let (pk, vk) = c.ledger_key(&seq).await;
    let v = verify_receipt(&bundle, &pk, &vk).unwrap();
    assert_eq!(v.receipt.request_sha256, [5; 32]);
    // A frontend has no such endpoint.
    let front = c.frontends[0].base_url();
    let (s, b) = c
        .post(&front, FORWARD_PATH, FORWARDED_CONTENT_TYPE, vec![0; 64])
        .await;
    assert_eq!((s, slug(&b).as_str()), (404, "not-found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_without_a_sequencer_answers_unavailable() {
    let mut c = cluster(1).await;
    let front = c.frontends[0].base_url();
    c.sequencer.take().unwrap().shutdown().await.unwrap();
    let d = c.donation();
    let (s, b) = c.post(&front, "/v1/donations", ENVELOPE, d.envelope).await;
    assert_eq!((s, slug(&b).as_str()), (503, "unavailable"));
    let (s, b) = c.get(&front, "/v1/ledger/checkpoint", None).await;
    assert_eq!((s, slug(&b).as_str()), (503, "unavailable"));
    // What a frontend serves itself still works: studies and transport keys.
    let (s, _) = c.get(&front, "/v1/hpke-config", None).await;
    assert_eq!(s, 200);
}
