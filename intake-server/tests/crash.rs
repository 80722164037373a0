//! Crash test: the real binary is SIGKILLed at random moments while N clients donate
//! concurrently; after every restart, every donation whose receipt reached a client is in the
//! ledger exactly once with its batch file present, there are no orphan batch files, and the
//! ledger verifies (every checkpoint a client saw is a prefix of the final log).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datadonor_intake::studies::LoadedStudy;
use datadonor_intake::{testkit, Config};
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::envelope::HpkePublicKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{leaf_hash, MerkleLog};
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};
use datadonor_schemas::signing::PublicKey;
use rand::Rng;

const ROUNDS: usize = 5;
const CLIENTS: usize = 6;

fn spawn_intake(dir: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(["serve", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

struct Sent {
    envelope: Vec<u8>,
    receipt: Option<ReceiptBundle>,
}

async fn client_loop(
    client: reqwest::Client,
    url: String,
    study: Arc<LoadedStudy>,
    hpke: (u32, HpkePublicKey),
    sent: Arc<Mutex<HashMap<[u8; 16], Sent>>>,
    retry: Vec<([u8; 16], Vec<u8>)>,
) {
    let mut queue = retry;
    loop {
        let (key, envelope) = match queue.pop() {
            Some(x) => x,
            None => {
                let d = testkit::DonationBuilder::new(&study, hpke).build().unwrap();
                sent.lock().unwrap().insert(
                    d.idempotency_key,
                    Sent {
                        envelope: d.envelope.clone(),
                        receipt: None,
                    },
                );
                (d.idempotency_key, d.envelope)
            }
        };
        let r = client
            .post(format!("{url}/v1/donations"))
            .header("content-type", "application/vnd.datadonor.envelope.v1")
            .body(envelope)
            .send()
            .await;
        let Ok(r) = r else { return };
        if r.status() != 200 {
            return;
        }
        let Ok(body) = r.bytes().await else { return };
        let bundle = ReceiptBundle::from_json(&body).unwrap();
        sent.lock().unwrap().get_mut(&key).unwrap().receipt = Some(bundle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_donation() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = testkit::init_test_dir(dir.path()).unwrap();
    config.data_dir = ".".into();
    std::fs::write(dir.path().join("config.toml"), config.to_toml()).unwrap();
    let config = Config::load_dir(dir.path()).unwrap();
    let study = testkit::load_study(dir.path(), "t2d-dk").unwrap();
    let hpke = testkit::current_hpke_key(dir.path()).unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("tls/ca.pem")).unwrap())
        .unwrap();
    let sent: Arc<Mutex<HashMap<[u8; 16], Sent>>> = Arc::default();
    let mut rng = rand::thread_rng();

    for round in 0..=ROUNDS {
        let (mut child, addr) = spawn_intake(dir.path());
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .resolve("localhost", addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("https://localhost:{}", addr.port());
        // Donations that never got an answer are retried first (same idempotency key).
        let unanswered: Vec<([u8; 16], Vec<u8>)> = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.receipt.is_none())
            .map(|(k, s)| (*k, s.envelope.clone()))
            .collect();
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let retry = unanswered
                .iter()
                .skip(i)
                .step_by(CLIENTS)
                .cloned()
                .collect();
            tasks.push(tokio::spawn(client_loop(
                client.clone(),
                url.clone(),
                study.clone(),
                hpke,
                sent.clone(),
                retry,
            )));
        }
        if round < ROUNDS {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(150..600))).await;
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            for t in tasks {
                t.await.unwrap();
            }
        } else {
            // Final round: let it run, then stop gracefully with SIGTERM.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let code = child.wait().unwrap();
            assert!(code.success(), "graceful exit: {code:?}");
            for t in tasks {
                t.await.unwrap();
            }
        }
    }

    // Check the directory (the last shutdown was graceful; open it as the intake would).
    let sent = sent.lock().unwrap();
    let acked: Vec<(&[u8; 16], &ReceiptBundle)> = sent
        .iter()
        .filter_map(|(k, s)| s.receipt.as_ref().map(|r| (k, r)))
        .collect();
    eprintln!(
        "{} donations sent, {} acknowledged over {} kills",
        sent.len(),
        acked.len(),
        ROUNDS
    );
    assert!(
        acked.len() > 20,
        "only {} donations acknowledged",
        acked.len()
    );
    let raw = std::fs::read(dir.path().join("ledger/ledger.log")).unwrap();
    let (records, valid) = datadonor_intake::store::decode_records(&raw);
    assert_eq!(valid, raw.len(), "no torn tail after a graceful stop");
    let log: MerkleLog = records.iter().map(|r| leaf_hash(r)).collect();
    let entries: Vec<LedgerEntry> = records
        .iter()
        .map(|r| LedgerEntry::from_bytes(r).unwrap())
        .collect();
    let mut by_key: HashMap<[u8; 16], Vec<(String, String)>> = HashMap::new();
    for e in &entries {
        if let LedgerEntry::DonationAccepted {
            idempotency_key,
            batch_id,
            study_id,
            ..
        } = e
        {
            by_key
                .entry(*idempotency_key)
                .or_default()
                .push((study_id.to_string(), batch_id.clone()));
        }
    }
    let seed: [u8; 32] = std::fs::read(dir.path().join("keys/ledger.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let ledger_key = datadonor_schemas::signing::SigningKey::from_seed(&seed).unwrap();
    let pk: PublicKey = ledger_key.public_key();
    let vk = NoteVerifier::new(&config.ledger.origin, pk.0).unwrap();
    for (key, bundle) in &acked {
        let v = verify_receipt(bundle, &pk, &vk).unwrap();
        let hits = by_key.get(*key).map_or(0, Vec::len);
        assert_eq!(hits, 1, "acknowledged donation in the ledger {hits} times");
        let (study, batch) = &by_key[*key][0];
        assert!(dir
            .path()
            .join(format!("batches/{study}/{batch}.ddb"))
            .exists());
        // The checkpoint the client saw is a prefix of the final log.
        assert_eq!(log.root_at(v.tree_size).unwrap().0, v.root);
        assert_eq!(records[v.receipt.ledger_index as usize], bundle.entry);
        if v.tree_size > 0 && v.tree_size < log.size() {
            let proof = log.consistency_proof(v.tree_size, log.size()).unwrap();
            let proof: Vec<Vec<u8>> = proof.iter().map(|h| h.0.to_vec()).collect();
            datadonor_schemas::merkle::verify_consistency(
                v.tree_size,
                log.size(),
                &proof,
                &v.root,
                &log.root().0,
            )
            .unwrap();
        }
    }
    // Each idempotency key at most once overall.
    assert!(by_key.values().all(|v| v.len() == 1));
    // No orphan batch files: every file is named by a DonationAccepted entry.
    let named: std::collections::HashSet<String> = by_key
        .values()
        .flatten()
        .map(|(s, b)| format!("{s}/{b}.ddb"))
        .collect();
    let root = dir.path().join("batches");
    for s in std::fs::read_dir(&root).unwrap().flatten() {
        for f in std::fs::read_dir(s.path()).unwrap().flatten() {
            let rel = format!(
                "{}/{}",
                s.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            assert!(named.contains(&rel), "orphan or temporary file {rel}");
        }
    }
}
