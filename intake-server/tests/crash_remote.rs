//! Crash test on the remote backends: the real binary, configured with the ledger in PostgreSQL
//! and the batches in S3 (`[storage]`), is SIGKILLed at random moments while N clients donate
//! concurrently (as `tests/crash.rs` does with the data directory). After the last, graceful,
//! stop: every donation whose receipt reached a client is in the PostgreSQL ledger exactly once
//! with its batch object in the bucket, no object in the bucket is unnamed by the ledger, and
//! every checkpoint a client saw is a prefix of the final log.
//!
//! Needs the servers of `scripts/storage-servers.sh` (run by `.ci/run`); without its variables
//! the test fails.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datadonor_intake::config::{
    BatchBackend, LedgerBackend, PostgresConfig, S3Config, StorageConfig,
};
use datadonor_intake::store::{BatchStore, LedgerStore};
use datadonor_intake::store_pg::{PgLedgerStore, PgOptions, DEFAULT_LOCK_WAIT};
use datadonor_intake::store_s3::S3BatchStore;
use datadonor_intake::studies::LoadedStudy;
use datadonor_intake::{testkit, Config};
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::envelope::HpkePublicKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{leaf_hash, MerkleLog};
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};
use datadonor_schemas::signing::PublicKey;
use rand::Rng;

const ROUNDS: usize = 4;
const CLIENTS: usize = 6;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/storage-servers.sh start (as .ci/run does)")
    })
}

fn spawn_intake(dir: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(["serve", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut queue = retry;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
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

type Tasks = Vec<tokio::task::JoinHandle<()>>;

/// `CLIENTS` donor loops, loop `i` donating to `urls[i % urls.len()]`, each first retrying its
/// share of the donations still without a receipt; they stop at their first failure or when the
/// returned flag is set.
fn donors(
    client: &reqwest::Client,
    urls: &[String],
    study: &Arc<LoadedStudy>,
    hpke: (u32, HpkePublicKey),
    sent: &Arc<Mutex<HashMap<[u8; 16], Sent>>>,
) -> (Tasks, Arc<std::sync::atomic::AtomicBool>) {
    let unanswered: Vec<([u8; 16], Vec<u8>)> = sent
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.receipt.is_none())
        .map(|(k, s)| (*k, s.envelope.clone()))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = (0..CLIENTS)
        .map(|i| {
            let retry = unanswered
                .iter()
                .skip(i)
                .step_by(CLIENTS)
                .cloned()
                .collect();
            tokio::spawn(client_loop(
                client.clone(),
                urls[i % urls.len()].clone(),
                study.clone(),
                hpke,
                sent.clone(),
                retry,
                stop.clone(),
            ))
        })
        .collect();
    (tasks, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
async fn sigkill_never_loses_an_acknowledged_donation_on_postgres_and_s3() {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let table = format!("crash_{suffix}");
    let prefix = format!("crash-{suffix}");
    let s3 = S3Config {
        bucket: "datadonor".into(),
        endpoint: Some(env("DATADONOR_TEST_S3")),
        region: Some("us-east-1".into()),
        prefix: prefix.clone(),
        allow_http: true,
        access_key_id: Some(env("DATADONOR_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(env("DATADONOR_TEST_S3_SECRET_KEY")),
        retry_timeout_secs: datadonor_intake::config::DEFAULT_S3_RETRY_TIMEOUT_SECS,
    };
    let pg_url = env("DATADONOR_TEST_POSTGRES");

    let dir = tempfile::tempdir().unwrap();
    let mut config = testkit::init_test_dir(dir.path()).unwrap();
    config.data_dir = ".".into();
    config.storage = StorageConfig {
        ledger: LedgerBackend::Postgres,
        batches: BatchBackend::S3,
        postgres: Some(PostgresConfig {
            url: Some(pg_url.clone()),
            table: table.clone(),
            ca_cert: None,
            lock_wait_secs: 10,
        }),
        s3: Some(s3.clone()),
    };
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
        let (tasks, _stop) = donors(&client, std::slice::from_ref(&url), &study, hpke, &sent);
        if round < ROUNDS {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let code = child.wait().unwrap();
            assert!(code.success(), "graceful exit: {code:?}");
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    verify_final(
        &pg_url,
        &table,
        &s3,
        &sent,
        dir.path(),
        &config.ledger.origin,
    )
    .await;
    // Nothing of the intake's was written to the data directory's ledger or batch directory
    // beyond what init wrote.
    assert!(!dir.path().join("batches").exists() || batch_dir_is_empty(dir.path()));
}

/// After the last stop: every donation whose receipt reached a client is in the PostgreSQL
/// ledger exactly once with its batch object in the bucket, its receipt verifies and its
/// checkpoint is a prefix of the final log; no object in the bucket is unnamed by the ledger.
async fn verify_final(
    pg_url: &str,
    table: &str,
    s3: &S3Config,
    sent: &Mutex<HashMap<[u8; 16], Sent>>,
    key_dir: &Path,
    origin: &str,
) {
    let (pg_url, table, s3) = (pg_url.to_string(), table.to_string(), s3.clone());
    // The ledger as PostgreSQL holds it, the batches as the bucket lists them.
    let (records, batches) = tokio::task::spawn_blocking(move || {
        let ledger = PgLedgerStore::open(&PgOptions {
            url: pg_url,
            table,
            ca_cert: None,
            lock_wait: DEFAULT_LOCK_WAIT,
        })
        .unwrap();
        let store = S3BatchStore::open(&s3).unwrap();
        (ledger.recover().unwrap(), store.list().unwrap())
    })
    .await
    .unwrap();

    let sent = sent.lock().unwrap();
    let acked: Vec<(&[u8; 16], &ReceiptBundle)> = sent
        .iter()
        .filter_map(|(k, s)| s.receipt.as_ref().map(|r| (k, r)))
        .collect();
    eprintln!(
        "PostgreSQL + S3: {} donations sent, {} acknowledged; {} ledger records, {} batch objects",
        sent.len(),
        acked.len(),
        records.len(),
        batches.len()
    );
    assert!(
        acked.len() > 20,
        "only {} donations acknowledged",
        acked.len()
    );
    let log: MerkleLog = records.iter().map(|r| leaf_hash(r)).collect();
    let entries: Vec<LedgerEntry> = records
        .iter()
        .map(|r| LedgerEntry::from_bytes(r).unwrap())
        .collect();
    assert!(
        matches!(entries.first(), Some(LedgerEntry::KeyRotated { .. })),
        "the PostgreSQL ledger starts with the transport key init recorded"
    );
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
    let stored: HashSet<(String, String)> = batches
        .iter()
        .map(|b| (b.study.clone(), b.id_hex()))
        .collect();
    let seed: [u8; 32] = std::fs::read(key_dir.join("keys/ledger.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let ledger_key = datadonor_schemas::signing::SigningKey::from_seed(&seed).unwrap();
    let pk: PublicKey = ledger_key.public_key();
    let vk = NoteVerifier::new(origin, pk.0).unwrap();
    for (key, bundle) in &acked {
        let v = verify_receipt(bundle, &pk, &vk).unwrap();
        let hits = by_key.get(*key).map_or(0, Vec::len);
        assert_eq!(hits, 1, "acknowledged donation in the ledger {hits} times");
        assert!(
            stored.contains(&by_key[*key][0]),
            "the batch of an acknowledged donation is in the bucket"
        );
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
    assert!(by_key.values().all(|v| v.len() == 1));
    // No orphan objects: every batch in the bucket is named by a DonationAccepted entry.
    let named: HashSet<(String, String)> = by_key.values().flatten().cloned().collect();
    for b in &stored {
        assert!(named.contains(b), "orphan batch object {b:?}");
    }
}

fn batch_dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("batches"))
        .unwrap()
        .flatten()
        .all(|s| std::fs::read_dir(s.path()).map_or(true, |mut d| d.next().is_none()))
}

/// A free loopback port (bound, then released for a child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `serve` without waiting: a standby sequencer prints its address only once it holds the
/// ledger. The receiver gets the address when it does.
fn spawn_waiting(dir: &Path) -> (Child, std::sync::mpsc::Receiver<std::net::SocketAddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(["serve", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::BufReader::new(stdout).read_line(&mut line).is_ok() {
            if let Some(a) = line.trim().strip_prefix("listening on https://") {
                let _ = tx.send(a.parse().unwrap());
            }
        }
    });
    (child, rx)
}

fn listening(rx: &std::sync::mpsc::Receiver<std::net::SocketAddr>) -> std::net::SocketAddr {
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the intake did not start listening within 60 s")
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert!(code.success(), "graceful exit: {code:?}");
}

/// Two sequencers (one serving, one standby waiting on the ledger's lock) and two frontends on
/// PostgreSQL + S3, six donors spread over the frontends. Round by round: the serving sequencer
/// is SIGKILLed and the standby takes over, a frontend is SIGKILLed and restarted, the new
/// sequencer is SIGKILLed and the first takes over again; then everything stops gracefully. No
/// acknowledged donation is lost or doubled, and no batch object is left unnamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
async fn sequencer_takeover_and_frontend_kills_lose_nothing_on_postgres_and_s3() {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let table = format!("cluster_{suffix}");
    let s3 = S3Config {
        bucket: "datadonor".into(),
        endpoint: Some(env("DATADONOR_TEST_S3")),
        region: Some("us-east-1".into()),
        prefix: format!("cluster-{suffix}"),
        allow_http: true,
        access_key_id: Some(env("DATADONOR_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(env("DATADONOR_TEST_S3_SECRET_KEY")),
        retry_timeout_secs: datadonor_intake::config::DEFAULT_S3_RETRY_TIMEOUT_SECS,
    };
    let pg_url = env("DATADONOR_TEST_POSTGRES");

    // Sequencer directories A and B: the same keys, each its own port; B waits for the lock.
    let root = tempfile::tempdir().unwrap();
    let seq_dirs = [root.path().join("seq-a"), root.path().join("seq-b")];
    let mut config = testkit::init_test_dir(&seq_dirs[0]).unwrap();
    config.data_dir = ".".into();
    config.storage = StorageConfig {
        ledger: LedgerBackend::Postgres,
        batches: BatchBackend::S3,
        postgres: Some(PostgresConfig {
            url: Some(pg_url.clone()),
            table: table.clone(),
            ca_cert: None,
            lock_wait_secs: 600,
        }),
        s3: Some(s3.clone()),
    };
    let seq_ports = [free_port(), free_port()];
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], seq_ports[0]));
    std::fs::write(seq_dirs[0].join("config.toml"), config.to_toml()).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(&seq_dirs[0])
        .arg(&seq_dirs[1])
        .status()
        .unwrap();
    assert!(status.success());
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], seq_ports[1]));
    std::fs::write(seq_dirs[1].join("config.toml"), config.to_toml()).unwrap();
    let sequencers: Vec<String> = seq_ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let front_dirs = [root.path().join("front-1"), root.path().join("front-2")];
    let front_ports = [free_port(), free_port()];
    for (d, p) in front_dirs.iter().zip(front_ports) {
        datadonor_intake::init::init_frontend(
            &seq_dirs[0],
            d,
            sequencers.clone(),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], p))),
        )
        .unwrap();
    }
    let study = testkit::load_study(&seq_dirs[0], "t2d-dk").unwrap();
    let hpke = testkit::current_hpke_key(&seq_dirs[0]).unwrap();
    let client = testkit::https_client(
        &std::fs::read(seq_dirs[0].join("tls/ca.pem")).unwrap(),
        Some(Duration::from_secs(10)),
    )
    .unwrap();
    let front_urls: Vec<String> = front_ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();

    let (a, a_rx) = spawn_waiting(&seq_dirs[0]);
    listening(&a_rx);
    let (b, b_rx) = spawn_waiting(&seq_dirs[1]);
    let mut seqs = [(a, a_rx), (b, b_rx)];
    let mut serving = 0usize;
    let mut fronts: Vec<Child> = front_dirs
        .iter()
        .map(|d| {
            let (c, rx) = spawn_waiting(d);
            listening(&rx);
            c
        })
        .collect();
    let sent: Arc<Mutex<HashMap<[u8; 16], Sent>>> = Arc::default();
    let mut rng = rand::thread_rng();
    let mut takeovers = 0;
    for round in 0..4 {
        let (tasks, stop) = donors(&client, &front_urls, &study, hpke, &sent);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..900))).await;
        match round {
            0 | 2 => {
                // The serving sequencer dies; the standby takes the lock, recovers and serves.
                let (child, _) = &mut seqs[serving];
                child.kill().unwrap();
                child.wait().unwrap();
                let standby = 1 - serving;
                listening(&seqs[standby].1);
                takeovers += 1;
                // The dead one comes back as the standby.
                seqs[serving] = spawn_waiting(&seq_dirs[serving]);
                serving = standby;
            }
            1 => {
                let f = &mut fronts[0];
                f.kill().unwrap();
                f.wait().unwrap();
                let (c, rx) = spawn_waiting(&front_dirs[0]);
                listening(&rx);
                fronts[0] = c;
            }
            _ => {
                for f in &mut fronts {
                    terminate(f);
                }
                terminate(&mut seqs[serving].0);
                // The standby never got the lock before the end; it has written nothing.
                let standby = &mut seqs[1 - serving].0;
                standby.kill().unwrap();
                standby.wait().unwrap();
            }
        }
        // Donors of a frontend that is still up would go on for ever: end the round.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
    }
    assert_eq!(takeovers, 2);
    verify_final(
        &pg_url,
        &table,
        &s3,
        &sent,
        &seq_dirs[0],
        &config.ledger.origin,
    )
    .await;
}
