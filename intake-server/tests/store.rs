//! The storage backends: one conformance suite run against the local and in-memory backends
//! and, with real servers (`scripts/storage-servers.sh`, run by `.ci/run`), against the
//! PostgreSQL ledger and the S3 batch store; torn-tail recovery of the ledger file; startup
//! recovery deleting unacknowledged batches.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod fault_s3;

use std::io::Write;
use std::path::PathBuf;

use common::{batch_files, Env};
use datadonor_intake::store::{
    conformance, decode_records, encode_record, BatchStore, LedgerStore, LocalBatchStore,
    LocalLedgerStore, MemBatchStore, MemLedgerStore,
};
use http::StatusCode;

struct Local(PathBuf);
impl conformance::Backend for Local {
    fn open(&self) -> (Box<dyn LedgerStore>, Box<dyn BatchStore>) {
        (
            Box::new(LocalLedgerStore::open(&self.0.join("ledger/ledger.log")).unwrap()),
            Box::new(LocalBatchStore::open(&self.0.join("batches")).unwrap()),
        )
    }
}

struct Mem(MemLedgerStore, MemBatchStore);
impl conformance::Backend for Mem {
    fn open(&self) -> (Box<dyn LedgerStore>, Box<dyn BatchStore>) {
        (Box::new(self.0.clone()), Box::new(self.1.clone()))
    }
}

#[test]
fn conformance_local_backend() {
    let d = tempfile::tempdir().unwrap();
    conformance::run(&Local(d.path().to_path_buf())).unwrap();
    let c = tempfile::tempdir().unwrap();
    let store = LocalBatchStore::open(c.path()).unwrap();
    conformance::compacted(&store).unwrap();
    // A compaction journal in a study's directory is seen.
    std::fs::write(c.path().join("t2d-dk/compact.journal"), b"{}").unwrap();
    assert_eq!(
        store.compaction_journals().unwrap(),
        vec!["t2d-dk".to_string()]
    );
}

#[test]
fn conformance_memory_backend() {
    conformance::run(&Mem(MemLedgerStore::default(), MemBatchStore::default())).unwrap();
}

#[test]
fn torn_and_corrupt_tails_are_truncated() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("ledger.log");
    let store = LocalLedgerStore::open(&path).unwrap();
    store.append(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
    let good_len = std::fs::metadata(&path).unwrap().len();
    drop(store);
    // A torn record: length and part of the body.
    let mut rec = Vec::new();
    encode_record(b"three-is-longer", &mut rec);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&rec[..rec.len() - 10])
        .unwrap();
    let store = LocalLedgerStore::open(&path).unwrap();
    assert_eq!(
        store.recover().unwrap(),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    drop(store);
    // A complete record with a bad hash.
    let mut rec = Vec::new();
    encode_record(b"four", &mut rec);
    let n = rec.len();
    rec[n - 1] ^= 1;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&rec)
        .unwrap();
    let store = LocalLedgerStore::open(&path).unwrap();
    assert_eq!(store.recover().unwrap().len(), 2);
    store.append(&[b"five".to_vec()]).unwrap();
    let (records, valid) = decode_records(&std::fs::read(&path).unwrap());
    assert_eq!(records.len(), 3);
    assert_eq!(valid as u64, std::fs::metadata(&path).unwrap().len());
}

#[test]
fn a_record_with_damaged_entry_bytes_is_not_recovered() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("ledger.log");
    let store = LocalLedgerStore::open(&path).unwrap();
    let entries = [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()];
    store.append(&entries).unwrap();
    drop(store);
    let first_len = 4 + entries[0].len() + 32;
    let mut bytes = std::fs::read(&path).unwrap();
    // One bit of the second record's entry bytes (its stored leaf hash is left as it was).
    bytes[first_len + 4 + 2] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let store = LocalLedgerStore::open(&path).unwrap();
    let records = store.recover_records().unwrap();
    assert_eq!(
        records.entries(),
        [b"first".to_vec()],
        "recovery stops at the damaged record"
    );
    assert_eq!(
        records.leaf_hashes(),
        [datadonor_schemas::merkle::leaf_hash(b"first")]
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len as u64);
}

#[tokio::test]
async fn recovery_deletes_unacknowledged_batches_and_temporaries() {
    let mut env = Env::new();
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    let kept = batch_files(env.path());
    assert_eq!(kept.len(), 1);
    env.stop();
    let orphan = env
        .path()
        .join(format!("batches/t2d-dk/{}.ddb", "ab".repeat(16)));
    std::fs::write(&orphan, b"sealed but never acknowledged").unwrap();
    let tmp = env.path().join("batches/t2d-dk/.tmp-0123");
    std::fs::write(&tmp, b"half written").unwrap();
    env.restart();
    let r = env.intake.as_ref().unwrap().recovery().clone();
    assert_eq!((r.orphan_batches_deleted, r.temporaries_deleted), (1, 1));
    assert!(!orphan.exists() && !tmp.exists());
    assert_eq!(batch_files(env.path()), kept);
}

#[tokio::test]
async fn the_data_directory_is_locked_while_open() {
    let env = Env::new();
    let err = datadonor_intake::Intake::open(env.config.clone(), env.clock.clone()).unwrap_err();
    assert!(matches!(err, datadonor_intake::Error::Locked(_)), "{err}");
    let err = datadonor_intake::rotate_transport_key(&env.config, 0).unwrap_err();
    assert!(matches!(err, datadonor_intake::Error::Locked(_)), "{err}");
}

#[test]
fn secrets_are_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    datadonor_intake::init::init(d.path(), None, 1_700_000_000).unwrap();
    for f in [
        "keys/transport-1.key",
        "keys/ledger.key",
        "auditor.token",
        "tls/server.key",
        "steward/steward.key",
        "vault-private/vault.key",
    ] {
        let mode = std::fs::metadata(d.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // init refuses to overwrite.
    assert!(datadonor_intake::init::init(d.path(), None, 1_700_000_000).is_err());
    // --vault-public-key: no private half is written.
    let d2 = tempfile::tempdir().unwrap();
    let pubfile = d.path().join("vault.pub");
    datadonor_intake::init::init(d2.path(), Some(&pubfile), 1_700_000_000).unwrap();
    assert!(!d2.path().join("vault-private").exists());
    assert_eq!(
        std::fs::read(d2.path().join("vault.pub")).unwrap(),
        std::fs::read(&pubfile).unwrap()
    );
}

// --- PostgreSQL and S3 (real servers) ---------------------------------------------------------

use datadonor_intake::config::S3Config;
use datadonor_intake::store::StoreError;
use datadonor_intake::store_pg::{PgLedgerStore, PgOptions};
use datadonor_intake::store_s3::S3BatchStore;

const NEEDS_SERVERS: &str = "run scripts/storage-servers.sh start (as .ci/run does) and export \
                             the variables it prints";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {NEEDS_SERVERS}"))
}

/// A checkpoint note's origin, size and root lines (what two notes of the same tree share).
fn checkpoint_head(note: &[u8]) -> String {
    String::from_utf8_lossy(note)
        .lines()
        .take(3)
        .collect::<Vec<_>>()
        .join("\n")
}

/// After a move: the intake on `config` serves the log it served before (`cp`, its checkpoint),
/// the old receipts verify, and the retried donation `envelope` (whose receipt is `receipts[0]`)
/// is answered with its original entry.
async fn serves_the_moved_log(
    env: &mut Env,
    config: datadonor_intake::config::Config,
    cp: &[u8],
    receipts: &[bytes::Bytes],
    envelope: &[u8],
) {
    env.config = config;
    env.restart();
    let (_, now) = env.get("/v1/ledger/checkpoint", None).await;
    assert_eq!(checkpoint_head(&now), checkpoint_head(cp));
    for r in receipts {
        env.verify(r).await;
    }
    let (s, b) = env.donate(envelope.to_vec()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        env.verify(&b).await.receipt.ledger_index,
        env.verify(&receipts[0]).await.receipt.ledger_index
    );
}

/// A name no other test run uses (a table, a key prefix).
fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

fn pg_options(table: &str) -> PgOptions {
    PgOptions {
        url: env("DATADONOR_TEST_POSTGRES"),
        table: table.to_string(),
        ca_cert: None,
        lock_wait: std::time::Duration::from_secs(10),
    }
}

fn s3_options(prefix: &str) -> S3Config {
    S3Config {
        bucket: "datadonor".into(),
        endpoint: Some(env("DATADONOR_TEST_S3")),
        region: Some("us-east-1".into()),
        prefix: prefix.to_string(),
        allow_http: true,
        access_key_id: Some(env("DATADONOR_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(env("DATADONOR_TEST_S3_SECRET_KEY")),
        retry_timeout_secs: datadonor_intake::config::DEFAULT_S3_RETRY_TIMEOUT_SECS,
    }
}

struct Remote {
    table: String,
    prefix: String,
}
impl conformance::Backend for Remote {
    fn open(&self) -> (Box<dyn LedgerStore>, Box<dyn BatchStore>) {
        (
            Box::new(PgLedgerStore::open(&pg_options(&self.table)).unwrap()),
            Box::new(S3BatchStore::open(&s3_options(&self.prefix)).unwrap()),
        )
    }
}

/// Another client of the same database, as a second writer would be.
fn raw_pg(sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&env("DATADONOR_TEST_POSTGRES"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client.execute(sql, params).await.unwrap()
    })
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
fn conformance_postgres_and_s3_backends() {
    let remote = Remote {
        table: unique("ledger"),
        prefix: unique("batches"),
    };
    let t = std::time::Instant::now();
    conformance::run(&remote).unwrap();
    eprintln!("conformance against PostgreSQL and S3: {:?}", t.elapsed());
    let prefix = unique("compacted");
    let bucket = S3BatchStore::open(&s3_options(&prefix)).unwrap();
    conformance::compacted(&bucket).unwrap();
    // A study's compaction journal, written into the bucket as the steward's compaction writes
    // it, is seen.
    use object_store::ObjectStoreExt as _;
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("datadonor")
        .with_endpoint(env("DATADONOR_TEST_S3"))
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id(env("DATADONOR_TEST_S3_ACCESS_KEY"))
        .with_secret_access_key(env("DATADONOR_TEST_S3_SECRET_KEY"))
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("{prefix}/t2d-dk/compact.journal"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(raw.put(&key, b"{}".to_vec().into()))
        .unwrap();
    assert_eq!(
        bucket.compaction_journals().unwrap(),
        vec!["t2d-dk".to_string()]
    );
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
fn postgres_refuses_a_second_intake_and_a_forking_append() {
    let table = unique("ledger");
    let a = PgLedgerStore::open(&pg_options(&table)).unwrap();
    assert!(a.recover().unwrap().is_empty());
    a.append(&[b"zero".to_vec(), b"one".to_vec()]).unwrap();
    // A second intake on the same table is refused while the first holds it.
    let mut quick = pg_options(&table);
    quick.lock_wait = std::time::Duration::from_millis(200);
    let err = PgLedgerStore::open(&quick).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    // A writer that bypasses the lock and takes index 3: `a`'s append of 2, 3, 4 fails whole.
    let n = raw_pg(
        &format!("INSERT INTO {table} (idx, record) VALUES (3, $1)"),
        &[&b"other writer".to_vec()],
    );
    assert_eq!(n, 1);
    let err = a
        .append(&[b"two".to_vec(), b"three".to_vec(), b"four".to_vec()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Nothing of the refused append was written; the gap left by the other writer is reported.
    let err = a.recover().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    raw_pg(&format!("DELETE FROM {table} WHERE idx = 3"), &[]);
    assert_eq!(
        a.recover().unwrap(),
        vec![b"zero".to_vec(), b"one".to_vec()]
    );
    // A writer that took the next index first: the append after it conflicts, nothing forks.
    raw_pg(
        &format!("INSERT INTO {table} (idx, record) VALUES (2, $1)"),
        &[&b"other writer".to_vec()],
    );
    let err = a.append(&[b"two".to_vec()]).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(a.recover().unwrap()[2], b"other writer".to_vec());
    drop(a);
    // The lock is released with the connection: a new intake opens.
    let b = PgLedgerStore::open(&pg_options(&table)).unwrap();
    assert_eq!(b.recover().unwrap().len(), 3);
    // Appends are timed (printed, not asserted): one transaction with synchronous commit each.
    let n = 200;
    let t = std::time::Instant::now();
    for i in 0..n {
        b.append(&[format!("record {i}").into_bytes()]).unwrap();
    }
    let pg_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let d = tempfile::tempdir().unwrap();
    let local = LocalLedgerStore::open(&d.path().join("ledger.log")).unwrap();
    let t = std::time::Instant::now();
    for i in 0..n {
        local.append(&[format!("record {i}").into_bytes()]).unwrap();
    }
    let file_rate = f64::from(n) / t.elapsed().as_secs_f64();
    eprintln!(
        "single-record appends: PostgreSQL (synchronous_commit = on) {pg_rate:.0}/s, local file (fsync) {file_rate:.0}/s"
    );
    assert_eq!(b.recover().unwrap().len(), 3 + n as usize);
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
fn s3_never_overwrites_a_batch() {
    let prefix = unique("batches");
    let a = S3BatchStore::open(&s3_options(&prefix)).unwrap();
    let b = S3BatchStore::open(&s3_options(&prefix)).unwrap();
    let r = datadonor_intake::store::BatchRef {
        study: "t2d-dk".into(),
        batch_id: [7; 16],
    };
    a.put(&r, b"first writer").unwrap();
    let err = b.put(&r, b"second writer").unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(a.get(&r).unwrap(), b"first writer");
    // Objects of another shape under the prefix are not batches.
    let other = datadonor_intake::store::BatchRef {
        study: "t2d-dk".into(),
        batch_id: [8; 16],
    };
    b.put(&other, b"x").unwrap();
    assert_eq!(a.list().unwrap(), vec![r.clone(), other.clone()]);
    assert_eq!(a.clean_temporaries().unwrap(), 0);
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
fn postgres_over_tls() {
    // The role of DATADONOR_TEST_POSTGRES_TLS may connect over TLS only (pg_hba `hostnossl …
    // reject`), so appending and recovering as it proves the connection was encrypted and the
    // server's certificate verified against the configured CA.
    let table = unique("ledger_tls");
    let opts = PgOptions {
        url: env("DATADONOR_TEST_POSTGRES_TLS"),
        table: table.clone(),
        ca_cert: Some(PathBuf::from(env("DATADONOR_TEST_POSTGRES_CA"))),
        lock_wait: std::time::Duration::from_secs(10),
    };
    let store = PgLedgerStore::open(&opts).unwrap();
    assert!(store.recover().unwrap().is_empty());
    store.append(&[b"over tls".to_vec()]).unwrap();
    assert_eq!(store.recover().unwrap(), vec![b"over tls".to_vec()]);
    drop(store);
    // Without the CA (no TLS), the same role is refused.
    let plain = PgOptions {
        ca_cert: None,
        url: env("DATADONOR_TEST_POSTGRES_TLS").replace("sslmode=require", "sslmode=disable"),
        ..opts.clone()
    };
    assert!(PgLedgerStore::open(&plain).is_err());
    // A CA that did not sign the server's certificate: the handshake fails.
    let d = tempfile::tempdir().unwrap();
    let other_ca = d.path().join("other-ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other_ca, cert.cert.pem()).unwrap();
    let wrong = PgOptions {
        ca_cert: Some(other_ca),
        ..opts
    };
    let err = PgLedgerStore::open(&wrong).unwrap_err();
    assert!(matches!(err, StoreError::Remote { .. }), "{err}");
}

// --- the indexes and the Merkle tree in PostgreSQL ----------------------------------------------

use datadonor_intake::ledger::LedgerState;
use datadonor_intake::store::{IndexedLedger, Lookup};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{
    consistency_nodes, consistency_proof_from, inclusion_nodes, inclusion_proof_from, leaf_hash,
    root_from, root_nodes, MerkleLog,
};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::StudyId;

/// Three appends of grants, donations and withdrawals: a withdrawal in a later append, a grant
/// and its withdrawal in the same append, a new consent after a withdrawal, a withdrawal naming
/// another record (no effect), two donations in one batch.
fn indexed_appends() -> Vec<Vec<LedgerEntry>> {
    let s = StudyId::new("t2d-dk").unwrap();
    let key = datadonor_schemas::signing::SigningKey::from_seed(&[9; 32])
        .unwrap()
        .public_key();
    let grant = |p: u8, r: u8, t: i64| LedgerEntry::ConsentGranted {
        time: t,
        study_id: s.clone(),
        study_version: 1,
        pseudonym: Pseudonym([p; 32]),
        consent_record_id: [r; 16],
        purposes: vec!["research".into()],
        given_at: t,
        expires_at: t + 1000,
        donor_public_key: key,
        manifest_sha256: [r; 32],
    };
    let donation = |p: u8, r: u8, k: u8, b: u8| LedgerEntry::DonationAccepted {
        time: 10,
        study_id: s.clone(),
        pseudonym: Pseudonym([p; 32]),
        consent_record_id: [r; 16],
        idempotency_key: [k; 16],
        envelope_sha256: [k; 32],
        rows: 3,
        batch_id: hex::encode([b; 16]),
    };
    let withdraw = |p: u8, r: u8, w: u8, t: i64| LedgerEntry::ConsentWithdrawn {
        time: t,
        study_id: s.clone(),
        pseudonym: Pseudonym([p; 32]),
        consent_record_id: [r; 16],
        withdrawal_sha256: [w; 32],
    };
    vec![
        vec![
            LedgerEntry::KeyRotated {
                time: 1,
                role: "hpke-transport".into(),
                key_id: 1,
                public_key_sha256: [1; 32],
            },
            grant(1, 1, 2),
            donation(1, 1, 1, 1),
            grant(2, 2, 3),
            donation(2, 2, 2, 1),
        ],
        vec![
            withdraw(1, 1, 1, 20),
            grant(3, 3, 21),
            withdraw(3, 3, 3, 22),
        ],
        vec![grant(1, 4, 30), donation(1, 4, 3, 2), withdraw(2, 9, 4, 31)],
    ]
}

/// Everything an indexed store serves, against the same records folded in memory: its size,
/// its entries, and every root, inclusion and consistency proof of every size.
fn check_indexed(idx: &dyn IndexedLedger, records: &[Vec<u8>]) {
    let n = records.len() as u64;
    assert_eq!(idx.size().unwrap(), n);
    assert_eq!(idx.entries(0, n).unwrap(), records);
    assert!(idx.entries(0, n + 1).is_err(), "a range past the end");
    let log: MerkleLog = records.iter().map(|r| leaf_hash(r)).collect();
    for size in 1..=n {
        let nodes = idx.nodes(&root_nodes(size)).unwrap();
        assert_eq!(root_from(&nodes, size).unwrap(), log.root_at(size).unwrap());
        assert_eq!(
            idx.entries(size - 1, size).unwrap(),
            vec![records[size as usize - 1].clone()]
        );
        for i in 0..size {
            let nodes = idx.nodes(&inclusion_nodes(i, size).unwrap()).unwrap();
            assert_eq!(
                inclusion_proof_from(&nodes, i, size).unwrap(),
                log.inclusion_proof(i, size).unwrap()
            );
        }
        for m in 1..=size {
            let nodes = idx.nodes(&consistency_nodes(m, size).unwrap()).unwrap();
            assert_eq!(
                consistency_proof_from(&nodes, m, size).unwrap(),
                log.consistency_proof(m, size).unwrap()
            );
        }
    }
}

/// The indexes of [`indexed_appends`] (appended with receipt sizes `sizes`), against the
/// in-memory state; returns the lookup used.
fn check_lookups(idx: &dyn IndexedLedger, memory: &LedgerState, sizes: &[u64]) -> Lookup {
    let s = StudyId::new("t2d-dk").unwrap();
    let q = Lookup {
        donations: vec![[1; 16], [2; 16], [3; 16], [7; 16]],
        consent_records: (1..=9u8).map(|r| (s.clone(), [r; 16])).collect(),
        consents: (1..=4u8).map(|p| (s.clone(), Pseudonym([p; 32]))).collect(),
        withdrawals: (1..=5u8).map(|w| [w; 32]).collect(),
    };
    let found = idx.lookup(&q).unwrap();
    assert_eq!(found.donations.len(), 3);
    for (k, d) in &found.donations {
        assert_eq!(Some(*d), memory.donation(k));
    }
    let by_key: std::collections::HashMap<[u8; 16], u64> = found
        .donations
        .iter()
        .map(|(k, d)| (*k, d.receipt_size))
        .collect();
    assert_eq!(
        (by_key[&[1; 16]], by_key[&[2; 16]], by_key[&[3; 16]]),
        (sizes[0], sizes[0], sizes[2])
    );
    assert_eq!(found.consent_records.len(), 4, "records 1-4");
    for ((st, r), h) in &found.consent_records {
        assert_eq!(Some(*h), memory.consent_record(st, r));
    }
    assert_eq!(found.consents.len(), 3, "pseudonyms 1-3");
    for ((st, p), c) in &found.consents {
        assert_eq!(Some(c), memory.consent(st, p));
    }
    let p1 = &found
        .consents
        .iter()
        .find(|(k, _)| k.1 .0 == [1; 32])
        .unwrap()
        .1;
    assert_eq!((p1.consent_record_id, p1.withdrawn_at), ([4; 16], None));
    let p3 = &found
        .consents
        .iter()
        .find(|(k, _)| k.1 .0 == [3; 32])
        .unwrap()
        .1;
    assert_eq!(
        p3.withdrawn_at,
        Some(22),
        "granted and withdrawn in one append"
    );
    let p2 = &found
        .consents
        .iter()
        .find(|(k, _)| k.1 .0 == [2; 32])
        .unwrap()
        .1;
    assert_eq!(p2.withdrawn_at, None, "a withdrawal of another record");
    assert_eq!(found.withdrawals.len(), 3);
    for (w, rec) in &found.withdrawals {
        assert_eq!(Some(*rec), memory.withdrawal(w));
    }
    assert!(idx.names_batch("t2d-dk", &hex::encode([1u8; 16])).unwrap());
    assert!(idx.names_batch("t2d-dk", &hex::encode([2u8; 16])).unwrap());
    assert!(!idx.names_batch("t2d-dk", &hex::encode([3u8; 16])).unwrap());
    q
}

/// Append [`indexed_appends`] to `store`, returning the records, the state folded in memory
/// and the size after each append.
fn append_all(store: &dyn LedgerStore) -> (Vec<Vec<u8>>, LedgerState, Vec<u64>) {
    let mut memory = LedgerState::default();
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    for group in indexed_appends() {
        let bytes: Vec<Vec<u8>> = group.iter().map(LedgerEntry::to_bytes).collect();
        store.append(&bytes).unwrap();
        let after = (records.len() + bytes.len()) as u64;
        for (e, b) in group.iter().zip(&bytes) {
            memory.push(e, b.clone(), after);
        }
        records.extend(bytes);
        sizes.push(after);
    }
    (records, memory, sizes)
}

/// The ledger file's index (`ledger/index.redb`) answers like the in-memory state; reopened it
/// reads nothing again; records appended without it (an index that lagged in a crash) are
/// indexed at open; a torn tail is cut off; a deleted index, or a file shorter than the index
/// says, is rebuilt from the file.
#[test]
fn the_ledger_files_index_answers_and_catches_up() {
    use datadonor_intake::store_index::{index_path, IndexedLocalLedger};
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("ledger/ledger.log");
    let store = IndexedLocalLedger::open(&path).unwrap();
    let (mut records, memory, sizes) = append_all(&store);
    check_indexed(store.as_indexed().unwrap(), &records);
    let q = check_lookups(store.as_indexed().unwrap(), &memory, &sizes);
    drop(store);
    // Records the index never saw.
    let plain = LocalLedgerStore::open(&path).unwrap();
    let more = vec![b"one more".to_vec(), b"and another".to_vec()];
    plain.append(&more).unwrap();
    drop(plain);
    records.extend(more);
    let store = IndexedLocalLedger::open(&path).unwrap();
    check_indexed(store.as_indexed().unwrap(), &records);
    check_lookups(store.as_indexed().unwrap(), &memory, &sizes);
    drop(store);
    // A torn tail.
    let mut rec = Vec::new();
    encode_record(b"torn", &mut rec);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&rec[..rec.len() - 3])
        .unwrap();
    let store = IndexedLocalLedger::open(&path).unwrap();
    check_indexed(store.as_indexed().unwrap(), &records);
    drop(store);
    // No index at all.
    std::fs::remove_file(index_path(&path)).unwrap();
    let store = IndexedLocalLedger::open(&path).unwrap();
    check_indexed(store.as_indexed().unwrap(), &records);
    assert_eq!(
        store
            .as_indexed()
            .unwrap()
            .lookup(&q)
            .unwrap()
            .donations
            .len(),
        3
    );
    drop(store);
    // The file replaced by a shorter one (its first append only): the index is rebuilt.
    let first: usize = indexed_appends()[0].len();
    let mut prefix = Vec::new();
    for r in &records[..first] {
        encode_record(r, &mut prefix);
    }
    std::fs::write(&path, &prefix).unwrap();
    let store = IndexedLocalLedger::open(&path).unwrap();
    check_indexed(store.as_indexed().unwrap(), &records[..first]);
    let found = store.as_indexed().unwrap().lookup(&q).unwrap();
    assert_eq!((found.donations.len(), found.withdrawals.len()), (2, 0));
}

/// The PostgreSQL store answers like the in-memory ledger state over the same entries: the
/// indexes (with each donation's receipt size: the size after its append), every inclusion and
/// consistency proof and root from the stored nodes, the entries, the batches named; a store
/// reopened goes on from the stored tree; a table written without indexes is indexed at open.
#[test]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
fn postgres_keeps_the_indexes_and_the_merkle_nodes() {
    let table = unique("indexed");
    let store = PgLedgerStore::open(&pg_options(&table)).unwrap();
    let (mut records, memory, sizes) = append_all(&store);
    let idx: &dyn IndexedLedger = store.as_indexed().unwrap();
    check_indexed(idx, &records);
    let q = check_lookups(idx, &memory, &sizes);
    // An idempotency key or a consent record stored twice is refused by the database itself.
    let again = indexed_appends()[0][2].to_bytes();
    assert!(store.append(&[again]).is_err());
    drop(store);

    // Reopened: the tree goes on from the stored edge.
    let store = PgLedgerStore::open(&pg_options(&table)).unwrap();
    let extra = b"a record that is not an entry".to_vec();
    store.append(std::slice::from_ref(&extra)).unwrap();
    records.push(extra);
    check_indexed(store.as_indexed().unwrap(), &records);
    drop(store);

    // A table an older intake wrote, records only: indexed when opened.
    let old = unique("unindexed");
    raw_pg(
        &format!("CREATE TABLE {old} (idx bigint PRIMARY KEY, record bytea NOT NULL)"),
        &[],
    );
    let idxs: Vec<i64> = (0..records.len() as i64).collect();
    raw_pg(
        &format!("INSERT INTO {old} SELECT * FROM unnest($1::bigint[], $2::bytea[])"),
        &[&idxs, &records],
    );
    let store = PgLedgerStore::open(&pg_options(&old)).unwrap();
    check_indexed(store.as_indexed().unwrap(), &records);
    let found = store.as_indexed().unwrap().lookup(&q).unwrap();
    assert_eq!(
        (
            found.donations.len(),
            found.consents.len(),
            found.withdrawals.len()
        ),
        (3, 3, 3)
    );
}

/// An intake on the indexed PostgreSQL ledger (and S3) decides as it does in memory — replays,
/// idempotency conflicts, withdrawals, a donation under a withdrawn consent, a repeated
/// withdrawal, before and after a restart — while its ledger state holds no entry, index record
/// or leaf hash once a group is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
async fn an_intake_on_postgres_holds_no_ledger_in_memory() {
    use datadonor_intake::config::{BatchBackend, LedgerBackend, PostgresConfig, StorageConfig};
    let table = unique("intake");
    let prefix = unique("intake");
    let mut env = Env::with_config(|c| {
        c.storage = StorageConfig {
            ledger: LedgerBackend::Postgres,
            batches: BatchBackend::S3,
            postgres: Some(PostgresConfig {
                url: Some(env("DATADONOR_TEST_POSTGRES")),
                table: table.clone(),
                ca_cert: None,
                lock_wait_secs: 10,
            }),
            s3: Some(s3_options(&prefix)),
        };
    });
    let held = |env: &Env| {
        let st = env.intake.as_ref().unwrap().state();
        let q = st.sequencing().unwrap();
        let s = q.state.read().unwrap();
        assert!(s.is_indexed());
        (s.held_in_memory(), s.published_size())
    };
    assert_eq!(held(&env), (0, 1), "init's key entry, nothing held");
    let donations: Vec<_> = (0..4).map(|_| env.builder().build().unwrap()).collect();
    let mut receipts = Vec::new();
    for d in &donations {
        let (s, b) = env.donate(d.envelope.clone()).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        env.verify(&b).await;
        receipts.push(b);
    }
    assert_eq!(held(&env), (0, 9));
    // A replay is the same receipt; the same key with other bytes is a conflict.
    let (s, b) = env.donate(donations[0].envelope.clone()).await;
    assert_eq!((s, &b), (StatusCode::OK, &receipts[0]));
    let mut other = env.builder();
    other.idempotency_key = donations[0].idempotency_key;
    let (s, b) = env.donate(other.build().unwrap().envelope).await;
    assert_eq!(
        (s, common::slug(&b).as_str()),
        (StatusCode::CONFLICT, "idempotency-conflict")
    );
    // A withdrawal; again (its receipt again); a donation under the withdrawn consent.
    let now = datadonor_schemas::time::Clock::now(&*env.clock);
    let w = donations[1].withdrawal(now);
    let (s, first) = env.withdraw(w.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&first));
    let (s, again) = env.withdraw(w).await;
    assert_eq!((s, &again), (StatusCode::OK, &first));
    let mut under = env.builder();
    under.reuse = Some((&donations[1].manifest, &donations[1].donor_key));
    let (s, b) = env.donate(under.build().unwrap().envelope).await;
    assert_eq!(
        (s, common::slug(&b).as_str()),
        (StatusCode::CONFLICT, "already-withdrawn")
    );
    // A second donation under a live consent adds no consent entry.
    let mut more = env.builder();
    more.reuse = Some((&donations[2].manifest, &donations[2].donor_key));
    let (s, _) = env.donate(more.build().unwrap().envelope).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(held(&env), (0, 11));
    // After a restart: the replay names the same entry, the entries and proofs are served.
    env.restart();
    assert_eq!(held(&env), (0, 11));
    let (s, b) = env.donate(donations[3].envelope.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let before = env.verify(&receipts[3]).await;
    let after = env.verify(&b).await;
    assert_eq!(after.receipt.ledger_index, before.receipt.ledger_index);
    let (s, b) = env.audit("/v1/ledger/entries?start=0&end=100").await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 11);
    let (s, _) = env.get("/v1/ledger/consistency?from=3&to=11", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// While serving, the committer sweeps (between groups) batches no ledger entry names — what a
/// sequencer that lost the ledger could still write after another recovered — and keeps the
/// ones the ledger names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_swept_while_serving() {
    let env = Env::with_config(|c| c.commit.orphan_sweep_secs = 1);
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    let kept = batch_files(env.path());
    assert_eq!(kept.len(), 1);
    let orphan = env
        .path()
        .join(format!("batches/t2d-dk/{}.ddb", "cd".repeat(16)));
    std::fs::write(&orphan, b"written after another sequencer recovered").unwrap();
    let mut waited = 0;
    while orphan.exists() && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(!orphan.exists(), "the orphan is still there after 5 s");
    assert_eq!(batch_files(env.path()), kept);
    let (s, b) = env.get("/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&b).contains("datadonor_orphan_batches_deleted_total 1"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    // A donation after the sweep still lands, in a new batch the next sweep keeps.
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(batch_files(env.path()).len(), 2);
}

/// A ledger `init` did not start is not served: with `ledger/` gone (lost, moved, restored
/// elsewhere) or its file empty, the intake refuses to start and creates nothing in its place,
/// where it would otherwise have started a second log under the same key; put back, it serves
/// where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_refuses_a_ledger_init_did_not_start() {
    let mut env = Env::new();
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    let (_, cp) = env.get("/v1/ledger/checkpoint", None).await;
    env.stop();
    let ledger = env.path().join("ledger");
    let lost = env.path().join("ledger.lost");
    std::fs::rename(&ledger, &lost).unwrap();
    let refused = datadonor_intake::Intake::open(env.config.clone(), env.clock.clone());
    let msg = format!("{:?}", refused.expect_err("no ledger"));
    assert!(
        msg.contains("does not exist") && msg.contains("second log under the same ledger key"),
        "{msg}"
    );
    assert!(
        !ledger.exists(),
        "a ledger was created in the lost one's place"
    );
    std::fs::create_dir(&ledger).unwrap();
    std::fs::write(ledger.join("ledger.log"), b"").unwrap();
    let refused = datadonor_intake::Intake::open(env.config.clone(), env.clock.clone());
    let msg = format!("{:?}", refused.expect_err("an empty ledger"));
    assert!(msg.contains("holds no record"), "{msg}");
    std::fs::remove_dir_all(&ledger).unwrap();
    std::fs::rename(&lost, &ledger).unwrap();
    env.restart();
    let (_, again) = env.get("/v1/ledger/checkpoint", None).await;
    assert_eq!(checkpoint_head(&again), checkpoint_head(&cp));
}

/// An intake on the embedded default moves to PostgreSQL and S3 (`datadonor-intake migrate`):
/// a target holding another ledger is refused before anything is written; an interrupted move
/// (its marker, the first records already in the table) blocks serving and is finished by
/// running the command again; afterwards the intake serves the same log from PostgreSQL, its
/// old receipts verify, a replay names the same entry, and no sealed batch is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
async fn an_embedded_intake_moves_to_postgres_and_s3() {
    use datadonor_intake::config::{BatchBackend, LedgerBackend, PostgresConfig, StorageConfig};
    use datadonor_intake::store::LocalLedgerStore;
    let pg_url = env("DATADONOR_TEST_POSTGRES");
    let mut env = Env::new();
    let donations: Vec<_> = (0..4).map(|_| env.builder().build().unwrap()).collect();
    let mut receipts = Vec::new();
    for d in &donations {
        let (s, b) = env.donate(d.envelope.clone()).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        receipts.push(b);
    }
    let mut more = env.builder();
    more.reuse = Some((&donations[2].manifest, &donations[2].donor_key));
    assert_eq!(
        env.donate(more.build().unwrap().envelope).await.0,
        StatusCode::OK
    );
    let now = datadonor_schemas::time::Clock::now(&*env.clock);
    let withdrawal = donations[1].withdrawal(now);
    let (s, withdrawn) = env.withdraw(withdrawal.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let (_, cp) = env.get("/v1/ledger/checkpoint", None).await;
    let batches_before = batch_files(env.path());
    assert_eq!(batches_before.len(), 5);
    env.stop();
    let records = LocalLedgerStore::open(&env.path().join("ledger/ledger.log"))
        .unwrap()
        .recover()
        .unwrap();
    assert_eq!(
        records.len(),
        11,
        "init's key entry, 4 + 1 donations, 4 grants, a withdrawal"
    );

    let table = unique("moved");
    let prefix = unique("moved");
    let mut to = env.config.clone();
    to.storage = StorageConfig {
        ledger: LedgerBackend::Postgres,
        batches: BatchBackend::S3,
        postgres: Some(PostgresConfig {
            url: Some(pg_url),
            table: table.clone(),
            ca_cert: None,
            lock_wait_secs: 10,
        }),
        s3: Some(s3_options(&prefix)),
    };
    let to_path = env.path().join("scaled.toml");
    std::fs::write(&to_path, to.to_toml()).unwrap();
    let dir = env.path().to_path_buf();
    let migrate = |to: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
            .args(["migrate", "--dir"])
            .arg(&dir)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // A target table holding another ledger: refused, nothing written, the intake serves on.
    let other = unique("other");
    PgLedgerStore::open(&pg_options(&other))
        .unwrap()
        .append(&[b"another ledger's first record".to_vec()])
        .unwrap();
    let mut wrong = to.clone();
    if let Some(pg) = wrong.storage.postgres.as_mut() {
        pg.table = other.clone();
    }
    let wrong_path = env.path().join("wrong.toml");
    std::fs::write(&wrong_path, wrong.to_toml()).unwrap();
    let (ok, _, err) = migrate(&wrong_path);
    assert!(!ok);
    assert!(err.contains("another ledger"), "{err}");
    assert!(!env.path().join("migration.json").exists());
    assert_eq!(batch_files(env.path()), batches_before);
    env.restart();
    env.stop();
    // Serving from the bucket while batches/ still holds this ledger's batches: refused, and
    // the empty table is not seeded.
    let refused = datadonor_intake::Intake::open(to.clone(), env.clock.clone());
    let msg = format!("{:?}", refused.expect_err("batches left behind"));
    assert!(msg.contains("datadonor-intake migrate"), "{msg}");
    assert_eq!(
        PgLedgerStore::open(&pg_options(&table))
            .unwrap()
            .size()
            .unwrap(),
        0
    );

    // A compacted batch of the steward's moves too; a compaction journal stops the move first.
    let compacted = env
        .path()
        .join(format!("batches/t2d-dk/{}.ddc", "ab".repeat(16)));
    std::fs::write(&compacted, b"a compacted batch's sealed bytes").unwrap();
    let journal = env.path().join("batches/t2d-dk/compact.journal");
    std::fs::write(&journal, b"{}").unwrap();
    let (ok, _, err) = migrate(&to_path);
    assert!(!ok);
    assert!(err.contains("compaction of study t2d-dk"), "{err}");
    assert!(!env.path().join("migration.json").exists());
    std::fs::remove_file(&journal).unwrap();

    // An interrupted move: its marker, and the first 3 records already in the table.
    PgLedgerStore::open(&pg_options(&table))
        .unwrap()
        .append(&records[..3])
        .unwrap();
    std::fs::write(env.path().join("migration.json"), b"{}").unwrap();
    let refused = datadonor_intake::Intake::open(env.config.clone(), env.clock.clone());
    let msg = format!(
        "{:?}",
        refused.expect_err("a half-moved intake must not serve")
    );
    assert!(msg.contains("migration.json"), "{msg}");

    let (ok, out, err) = migrate(&to_path);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("ledger records in the target: 11 (8 copied by this run)"),
        "{out}"
    );
    assert!(
        out.contains(
            "sealed batches the ledger names, in the target: 5 (5 copied by this run); \
             compacted batches: 1 (1 copied by this run)"
        ),
        "{out}"
    );
    assert!(!env.path().join("migration.json").exists());
    assert!(
        batch_files(env.path()).is_empty(),
        "sealed batches left behind"
    );
    assert!(!env.path().join("ledger").exists());
    let bucket = S3BatchStore::open(&s3_options(&prefix)).unwrap();
    assert_eq!(bucket.list().unwrap().len(), 5);
    let moved = bucket.list_compacted().unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(
        bucket.get_compacted(&moved[0]).unwrap(),
        b"a compacted batch's sealed bytes"
    );
    assert!(!compacted.exists());

    // Served from PostgreSQL and S3: the same log, the old receipts, a replay, a new donation.
    serves_the_moved_log(&mut env, to, &cp, &receipts, &donations[0].envelope).await;
    let (s, b) = env.withdraw(withdrawal).await;
    assert_eq!(s, StatusCode::OK, "the withdrawal's replay");
    assert_eq!(
        env.verify(&b).await.receipt.ledger_index,
        env.verify(&withdrawn).await.receipt.ledger_index
    );
    let d = env.builder().build().unwrap();
    let (s, b) = env.donate(d.envelope).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(env.verify(&b).await.receipt.ledger_index, 12);
    let listed = S3BatchStore::open(&s3_options(&prefix))
        .unwrap()
        .list()
        .unwrap();
    assert_eq!(listed.len(), 6);
}

/// An intake on PostgreSQL and S3 moves to another table and bucket prefix, then home to the
/// embedded default (`datadonor-intake migrate`, with the intake's own config.toml naming the
/// stores it leaves). Each move renames the old tables out of the way, so the configuration that
/// named them is refused rather than served; at home the same log is served, its receipts
/// verify and a replay names its original entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and an S3 server: run by .ci/run"]
async fn a_scaled_intake_moves_to_other_stores_and_home() {
    use datadonor_intake::config::{BatchBackend, LedgerBackend, PostgresConfig, StorageConfig};
    let pg_url = env("DATADONOR_TEST_POSTGRES");
    let scaled = |table: &str, prefix: &str| StorageConfig {
        ledger: LedgerBackend::Postgres,
        batches: BatchBackend::S3,
        postgres: Some(PostgresConfig {
            url: Some(pg_url.clone()),
            table: table.to_string(),
            ca_cert: None,
            lock_wait_secs: 10,
        }),
        s3: Some(s3_options(prefix)),
    };
    let (table_a, prefix_a) = (unique("from"), unique("from"));
    let mut env = Env::with_config(|c| c.storage = scaled(&table_a, &prefix_a));
    // Seeded with init's ledger file, which then leaves the way.
    assert!(!env.path().join("ledger").exists());
    let donations: Vec<_> = (0..3).map(|_| env.builder().build().unwrap()).collect();
    let mut receipts = Vec::new();
    for d in &donations {
        let (s, b) = env.donate(d.envelope.clone()).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        receipts.push(b);
    }
    let now = datadonor_schemas::time::Clock::now(&*env.clock);
    assert_eq!(
        env.withdraw(donations[1].withdrawal(now)).await.0,
        StatusCode::OK
    );
    let (_, cp) = env.get("/v1/ledger/checkpoint", None).await;
    assert!(
        checkpoint_head(&cp).contains("\n8\n"),
        "init's key, 3 grants, 3 donations, a withdrawal"
    );
    env.stop();
    let dir = env.path().to_path_buf();
    let migrate = |to: &StorageConfig, from: &datadonor_intake::config::Config| {
        std::fs::write(dir.join("config.toml"), from.to_toml()).unwrap();
        let mut target = from.clone();
        target.storage = to.clone();
        let path = dir.join("target.toml");
        std::fs::write(&path, target.to_toml()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
            .args(["migrate", "--dir"])
            .arg(&dir)
            .arg("--to")
            .arg(&path)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        // Each move copies the whole log and every batch.
        assert!(
            stdout.contains("ledger records in the target: 8 (8 copied by this run)"),
            "{stdout}"
        );
        assert!(
            stdout.contains(
                "sealed batches the ledger names, in the target: 3 (3 copied by this run)"
            ),
            "{stdout}"
        );
        (target, stdout)
    };
    let retired = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("the PostgreSQL ledger's tables are now "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no renamed table in {out}"))
            .to_string()
    };

    // To another table and bucket prefix.
    // A long table name: PostgreSQL cuts the key names of its index tables, and the moved
    // tables' names are cut to fit.
    let (table_b, prefix_b) = (unique(&format!("to_{}", "long".repeat(6))), unique("to"));
    assert_eq!(table_b.len(), 44);
    let (at_b, out) = migrate(&scaled(&table_b, &prefix_b), &env.config);
    let old_a = retired(&out);
    assert!(old_a.starts_with(&format!("{table_a}_moved_")), "{old_a}");
    assert_eq!(
        PgLedgerStore::open(&pg_options(&old_a))
            .unwrap()
            .size()
            .unwrap(),
        8
    );
    let bucket = |prefix: &str| {
        S3BatchStore::open(&s3_options(prefix))
            .unwrap()
            .list()
            .unwrap()
    };
    assert_eq!((bucket(&prefix_a).len(), bucket(&prefix_b).len()), (0, 3));
    // The configuration that named the old table finds no ledger there, and is refused.
    let refused = datadonor_intake::Intake::open(env.config.clone(), env.clock.clone());
    let msg = refused
        .expect_err("the old table is not served")
        .to_string();
    assert!(
        msg.contains(&format!("PostgreSQL table \"{table_a}\" holds no record")),
        "{msg}"
    );

    // Home: the embedded default.
    let (home, out) = migrate(&StorageConfig::default(), &at_b);
    assert!(
        retired(&out).starts_with(&format!("{}_moved_", &table_b[..25])),
        "{out}"
    );
    assert!(!out.contains("local ledger directory"), "{out}");
    assert_eq!(bucket(&prefix_b).len(), 0);
    assert_eq!(batch_files(&dir).len(), 3);
    let old_b = retired(&out);
    assert_eq!(
        PgLedgerStore::open(&pg_options(&old_b))
            .unwrap()
            .size()
            .unwrap(),
        8
    );
    assert_eq!(
        PgLedgerStore::open(&pg_options(&table_b))
            .unwrap()
            .size()
            .unwrap(),
        0
    );
    std::fs::write(dir.join("config.toml"), home.to_toml()).unwrap();
    serves_the_moved_log(&mut env, home, &cp, &receipts, &donations[0].envelope).await;
    let d = env.builder().build().unwrap();
    let (s, b) = env.donate(d.envelope).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(env.verify(&b).await.receipt.ledger_index, 9);
    assert_eq!(batch_files(&dir).len(), 4);
}

/// Faults of the bucket, injected by a proxy in front of the S3 server (`tests/fault_s3`): a
/// bucket that refuses a few writes is retried through; one that keeps refusing fails the group
/// (nothing acknowledged, nothing in the ledger, writes refused until a restart); a write the
/// bucket stored but whose answer was lost leaves a batch no entry names, which the next start
/// deletes. Each donor's retry with the same envelope is then accepted once, and the bucket ends
/// holding exactly the batches the ledger names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 server: run by .ci/run"]
async fn a_failing_bucket_acknowledges_nothing_and_loses_nothing() {
    use datadonor_intake::config::BatchBackend;
    let proxy = fault_s3::FaultyS3::start(&env("DATADONOR_TEST_S3")).await;
    let prefix = unique("faults");
    let mut through_proxy = s3_options(&prefix);
    through_proxy.endpoint = Some(proxy.url.clone());
    // Long enough for two refusals' backoff (0.1 s, then 0.2 s, with jitter), short for a test.
    through_proxy.retry_timeout_secs = 3;
    let mut env = Env::with_config(|c| {
        c.storage.batches = BatchBackend::S3;
        c.storage.s3 = Some(through_proxy);
    });
    // The bucket as the server holds it, read past the proxy.
    let stored = || {
        S3BatchStore::open(&s3_options(&prefix))
            .unwrap()
            .list()
            .unwrap()
    };
    let size = |note: &[u8]| -> u64 {
        String::from_utf8_lossy(note)
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let plan = |f: &dyn Fn(&mut fault_s3::Plan)| f(&mut proxy.plan.lock().unwrap());

    // Two refusals: the client's retries carry the write through.
    plan(&|p| p.refuse_puts = 2);
    let first = env.builder().build().unwrap();
    let (s, b) = env.donate(first.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    plan(&|p| assert_eq!((p.puts_seen, p.puts_forwarded), (3, 1)));
    assert_eq!(stored().len(), 1);

    // A bucket that keeps refusing: the group fails, the committer refuses what follows, the
    // log does not move.
    let before = size(&env.get("/v1/ledger/checkpoint", None).await.1);
    plan(&|p| p.refuse_puts = usize::MAX);
    let second = env.builder().build().unwrap();
    let (s, b) = env.donate(second.envelope.clone()).await;
    assert_eq!(
        (s, common::slug(&b).as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    );
    let (s, b) = env.donate(env.builder().build().unwrap().envelope).await;
    assert_eq!(
        (s, common::slug(&b).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(
        size(&env.get("/v1/ledger/checkpoint", None).await.1),
        before
    );
    assert_eq!(stored().len(), 1);
    plan(&|p| p.refuse_puts = 0);
    env.restart();
    let (s, b) = env.donate(second.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(stored().len(), 2);

    // A write the bucket stored but whose answer was lost: not acknowledged; the batch no entry
    // names is deleted at the next start; the retry is accepted.
    let before = size(&env.get("/v1/ledger/checkpoint", None).await.1);
    plan(&|p| p.lose_puts = 1);
    let third = env.builder().build().unwrap();
    let (s, b) = env.donate(third.envelope.clone()).await;
    assert_eq!(
        (s, common::slug(&b).as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    );
    assert_eq!(stored().len(), 3, "the write reached the bucket");
    assert_eq!(
        size(&env.get("/v1/ledger/checkpoint", None).await.1),
        before
    );
    env.restart();
    assert_eq!(
        stored().len(),
        2,
        "the batch no entry names is gone after the restart"
    );
    let (s, b) = env.donate(third.envelope.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, again) = env.donate(third.envelope.clone()).await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &b),
        "a replay is the same receipt"
    );
    let listed = stored();
    assert_eq!(listed.len(), 3);
    let state = env.intake.as_ref().unwrap().state();
    let st = state.sequencing().unwrap().state.read().unwrap();
    for batch in &listed {
        assert!(st.references_batch(&batch.study, &batch.id_hex()).unwrap());
    }
}

/// A frontend's directory holds no ledger or batches: `migrate` refuses it before touching
/// anything (no marker, no ledger file made).
#[test]
fn a_frontend_has_nothing_to_move() {
    let seq = tempfile::tempdir().unwrap();
    datadonor_intake::testkit::init_test_dir(seq.path()).unwrap();
    let front = tempfile::tempdir().unwrap();
    let dir = front.path().join("frontend");
    datadonor_intake::init::init_frontend(
        seq.path(),
        &dir,
        vec!["https://127.0.0.1:8443".into()],
        None,
    )
    .unwrap();
    let from = datadonor_intake::Config::load_dir(&dir).unwrap();
    let mut to = from.clone();
    to.storage.batches = datadonor_intake::config::BatchBackend::S3;
    to.storage.s3 = Some(S3Config {
        bucket: "datadonor".into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        region: None,
        prefix: "frontend".into(),
        allow_http: true,
        access_key_id: None,
        secret_access_key: None,
        retry_timeout_secs: 1,
    });
    let err = datadonor_intake::migrate::migrate(&from, &to, 0, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("frontend"), "{err}");
    assert!(!dir.join("migration.json").exists());
    assert!(!dir.join("ledger").exists());
}
