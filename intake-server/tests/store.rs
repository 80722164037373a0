//! The storage backends: one conformance suite run against the local and in-memory backends,
//! torn-tail recovery of the ledger file, and startup recovery deleting unacknowledged batches.
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
