//! The storage backends: one conformance suite run against the local and in-memory backends
//! and, with real servers (`scripts/storage-servers.sh`, run by `.ci/run`), against the
//! PostgreSQL ledger and the S3 batch store; torn-tail recovery of the ledger file; startup
//! recovery deleting unacknowledged batches.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

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
    env.intake.take().unwrap().shutdown();
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
