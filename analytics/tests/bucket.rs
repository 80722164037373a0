//! The steward's side of batches in an S3-compatible bucket, against a real S3 server (s3s-fs,
//! started by `scripts/storage-servers.sh` as `.ci/run` does): runs, compaction and the batch
//! audit read a bucket prefix exactly as they read the intake's directory; an intake batch no
//! ledger entry names is never read; a replacement interrupted at any step never shows a row
//! twice or loses one. `#[ignore]`d in the README's test command; without the server's
//! variables these tests fail, not skip.

mod common;

use datadonor_analytics::audit::audit_batches;
use datadonor_analytics::compact::{compact, CompactOptions};
use datadonor_analytics::ledger::{verify_ledger, LedgerView, MemoryLedger};
use datadonor_analytics::query::{run_query, QueryInputs, ResultTable};
use datadonor_analytics::sealed::seal_batch;
use datadonor_analytics::store::{BatchFile, BatchStore};
use datadonor_analytics::testkit::{
    accepted, approval_of, donor, grant, parquet_bytes, store_frame, synthetic_frame, withdraw, Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::query::QuerySpec;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::StudyDefinition;
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const NOW: i64 = 1_750_000_000;
const EPI: &str = "t2d-epidemiology";
const NEEDS_SERVER: &str = "run scripts/storage-servers.sh start (as .ci/run does) and export \
                            the variables it prints";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {NEEDS_SERVER}"))
}

/// The test server's settings as object_store keys (what `AWS_*` variables give the CLI).
fn options() -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", env("DATADONOR_TEST_S3")),
        ("aws_access_key_id", env("DATADONOR_TEST_S3_ACCESS_KEY")),
        ("aws_secret_access_key", env("DATADONOR_TEST_S3_SECRET_KEY")),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
    ]
}

/// A fresh prefix of the test bucket for one study's batches.
fn bucket_url() -> String {
    let id: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .expect("random")
        .expose();
    format!("s3://datadonor/analytics-{}/t2d-dk", hex::encode(id))
}

fn open_bucket(url: &str) -> BatchStore {
    let opts = options();
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    BatchStore::open_location_with(url, &opts).expect("bucket opens")
}

/// Another client of the bucket, and the key of `name` under the prefix `url` names.
fn raw(url: &str, name: &str) -> (object_store::aws::AmazonS3, object_store::path::Path) {
    let rest = url.strip_prefix("s3://datadonor/").expect("test bucket");
    let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name("datadonor");
    for (k, v) in options() {
        b = b.with_config(k.parse().expect("key"), v);
    }
    let s3 = b.build().expect("client");
    (s3, object_store::path::Path::from(format!("{rest}/{name}")))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// An object put straight into the bucket prefix (as the intake writes `<id>.ddb`).
fn put_intake_batch(url: &str, name: &str, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt as _;
    let (s3, key) = raw(url, name);
    block_on(s3.put(&key, bytes.into())).expect("put");
}

#[test]
#[ignore = "needs an S3 server: scripts/storage-servers.sh"]
fn a_batch_gone_after_the_listing_is_an_error_naming_it() {
    use object_store::ObjectStoreExt as _;
    let study = StudyDefinition::from_toml(STUDY).expect("study");
    let vault = VaultKey::generate(1);
    let url = bucket_url();
    let store = open_bucket(&url);
    let hex: Vec<String> = (0..3).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(9);
    for t in 0..40 {
        let mut df = synthetic_frame(&study, &hex, 20, &mut rng).expect("rows");
        store_frame(&store, &study, &vault, &mut df, NOW + t).expect("stored");
    }
    let listed = store.list(&study.id).expect("list");
    assert_eq!(listed.len(), 40);
    let gone = listed[25].path.clone();
    let name = gone.file_name().and_then(|n| n.to_str()).expect("name");
    let (s3, key) = raw(&url, name);
    block_on(s3.delete(&key)).expect("deleted");
    let results: Vec<_> = store.open_batches(listed.clone(), &vault).collect();
    assert_eq!(results.len(), 40, "one answer per batch, in order");
    for (i, (r, f)) in results.iter().zip(&listed).enumerate() {
        match r {
            Ok((got, _)) => {
                assert_ne!(i, 25);
                assert_eq!(got.path, f.path);
            }
            Err(e) => {
                assert_eq!(i, 25, "{e}");
                assert!(e.to_string().contains(name), "{e}");
            }
        }
    }
    // Stopping early is fine: the reads still under way are dropped.
    let mut first = store.open_batches(listed, &vault);
    assert!(first.next().expect("one").is_ok());
    drop(first);
}

struct World {
    study: StudyDefinition,
    vault: VaultKey,
    steward: SigningKey,
    ledger: MemoryLedger,
    dir: tempfile::TempDir,
    local: BatchStore,
    url: String,
    bucket: BatchStore,
}

fn view(w: &World) -> LedgerView {
    verify_ledger(&w.ledger, &[w.ledger.verifier().expect("verifier")], None).expect("verifies")
}

/// Twelve consenting donors; three compacted-style batches and one intake batch the ledger
/// names, in both the directory and the bucket; and in both, one intake batch no entry names
/// (rows of donor 0 that a run must not count).
fn world() -> World {
    let study = StudyDefinition::from_toml(STUDY).expect("study");
    let dir = tempfile::tempdir().expect("dir");
    let local = BatchStore::open(dir.path()).expect("dir store");
    let url = bucket_url();
    let bucket = open_bucket(&url);
    let w = World {
        study,
        vault: VaultKey::generate(1),
        steward: SigningKey::generate().expect("key"),
        ledger: MemoryLedger::new("datadonor.test/ledger").expect("ledger"),
        dir,
        local,
        url,
        bucket,
    };
    for i in 0..12 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let hex: Vec<String> = (0..12).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(11);
    for t in 0..3 {
        let mut df = synthetic_frame(&w.study, &hex, 150, &mut rng).expect("rows");
        store_frame(&w.local, &w.study, &w.vault, &mut df, NOW + t).expect("dir");
        store_frame(&w.bucket, &w.study, &w.vault, &mut df, NOW + t).expect("bucket");
    }
    let mut intake_batch = |named: bool, t: i64| {
        let mut df = synthetic_frame(&w.study, &hex[..1], 40, &mut rng).expect("rows");
        let bytes = parquet_bytes(&mut df).expect("parquet");
        let (h, sealed) =
            seal_batch(&bytes, &w.study.id, NOW + t, &w.vault.public()).expect("seal");
        let name = format!("{}.ddb", h.batch_id_hex());
        std::fs::write(w.dir.path().join(&name), &sealed).expect("file");
        put_intake_batch(&w.url, &name, sealed);
        if named {
            w.ledger
                .push(&accepted(&w.study, donor(0), &h.batch_id_hex(), 40));
        }
        h.batch_id_hex()
    };
    intake_batch(true, 3);
    intake_batch(false, 4);
    w
}

fn run(w: &World, store: &BatchStore, s: &QuerySpec) -> ResultTable {
    let approval = approval_of(s, 7, NOW, 10).sign(&w.steward);
    let approvers = [w.steward.public_key()];
    let inputs = QueryInputs {
        spec: s,
        approval: &approval,
        study: &w.study,
        approvers: &approvers,
        now: NOW,
    };
    run_query(&inputs, &view(w).index(), store, &w.vault, &w.ledger)
        .expect("runs")
        .table
}

const SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
[[measures]]
op = "donors"
[[measures]]
op = "rows"
[[measures]]
op = "mean"
field = "hba1c"
"#;

fn rows_in(store: &BatchStore, files: &[BatchFile], vault: &VaultKey) -> usize {
    files
        .iter()
        .map(|f| {
            let o = store.open_batch(f, vault).expect("opens");
            ParquetReader::new(std::io::Cursor::new(o.plaintext.as_slice()))
                .num_rows()
                .expect("parquet")
        })
        .sum()
}

#[test]
#[ignore = "needs an S3 server: scripts/storage-servers.sh"]
fn runs_compaction_and_audit_read_a_bucket_as_they_read_the_directory() {
    let w = world();
    let spec = QuerySpec::from_toml(SPEC).expect("spec");
    assert_eq!(w.local.list(&w.study.id).expect("list").len(), 5);
    assert_eq!(w.bucket.list(&w.study.id).expect("list").len(), 5);
    let readable = w
        .bucket
        .readable(&w.study.id, &view(&w).index())
        .expect("readable");
    assert_eq!((readable.files.len(), readable.unnamed.len()), (4, 1));

    // The same table from both; the unnamed intake batch's 40 rows are in neither.
    let from_dir = run(&w, &w.local, &spec);
    let from_bucket = run(&w, &w.bucket, &spec);
    assert_eq!(from_dir, from_bucket);
    assert_eq!(from_bucket.rows.len(), 1);
    assert_eq!(
        from_bucket.rows[0].values[..2],
        [Some(12.0), Some((3 * 150 + 40) as f64)],
        "donors and rows counted"
    );

    // Donor 5 withdraws; compaction erases their rows in both, merges the small batches,
    // deletes the old objects and leaves the unnamed one alone.
    w.ledger.push(&withdraw(&w.study, donor(5), NOW - 10));
    let before: Vec<String> = w
        .bucket
        .list(&w.study.id)
        .expect("list")
        .iter()
        .map(|f| f.header.batch_id_hex())
        .collect();
    let opts = CompactOptions {
        target_rows: 10_000,
    };
    let r_dir = compact(
        &w.local,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        opts,
    )
    .expect("dir compacts");
    let r_bucket = compact(
        &w.bucket,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        opts,
    )
    .expect("bucket compacts");
    // The same rows erased from as many batches (the two stores' batch ids differ).
    let erased = |r: &datadonor_analytics::compact::CompactionReport| {
        r.erased
            .iter()
            .map(|(k, (n, ids))| (k.clone(), *n, ids.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(erased(&r_dir), erased(&r_bucket));
    assert!(!r_bucket.erased.is_empty());
    assert_eq!(r_dir.rows_kept, r_bucket.rows_kept);
    assert_eq!(r_bucket.removed.len(), 4);
    assert_eq!(r_bucket.written.len(), 1);
    let after = w.bucket.list(&w.study.id).expect("list");
    assert_eq!(
        after.len(),
        2,
        "the merged batch and the unnamed intake batch"
    );
    let readable = w
        .bucket
        .readable(&w.study.id, &view(&w).index())
        .expect("readable");
    assert_eq!(readable.files.len(), 1);
    assert!(!before.contains(&readable.files[0].header.batch_id_hex()));
    assert_eq!(
        rows_in(&w.bucket, &readable.files, &w.vault) as u64,
        r_bucket.rows_kept
    );
    assert_eq!(readable.unnamed[0].header.batch_id_hex(), r_dir_unnamed(&w));

    // The audit finds no row of a withdrawn record, in either, and lists the unnamed batch.
    let a_dir = audit_batches(&view(&w).index(), &w.local, &w.vault, &w.study.id).expect("audits");
    let a_bucket =
        audit_batches(&view(&w).index(), &w.bucket, &w.vault, &w.study.id).expect("audits");
    assert!(a_bucket.violations.is_empty(), "{:?}", a_bucket.violations);
    assert_eq!(a_bucket.unnamed, a_dir.unnamed);
    assert_eq!((a_bucket.rows, a_bucket.donors), (a_dir.rows, a_dir.donors));
    assert_eq!(a_bucket.rows, r_bucket.rows_kept);

    // Logged once: the directory's compaction logged the erasure, so the bucket's had none
    // pending (it still erased the rows: every withdrawn record's rows go).
    let erasures = w
        .ledger
        .parsed()
        .into_iter()
        .filter(|e| matches!(e, LedgerEntry::ErasureDone { .. }))
        .count();
    assert_eq!(
        (erasures, r_dir.entries_logged, r_bucket.entries_logged),
        (1, 1, 0)
    );
}

fn r_dir_unnamed(w: &World) -> String {
    w.local
        .readable(&w.study.id, &view(w).index())
        .expect("readable")
        .unnamed[0]
        .header
        .batch_id_hex()
}

#[test]
#[ignore = "needs an S3 server: scripts/storage-servers.sh"]
fn a_replacement_interrupted_at_any_step_never_counts_a_row_twice() {
    let study = StudyDefinition::from_toml(STUDY).expect("study");
    let vault = VaultKey::generate(1);
    let hex: Vec<String> = (0..4).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(5);
    let frames: Vec<DataFrame> = (0..2)
        .map(|_| synthetic_frame(&study, &hex, 30, &mut rng).expect("rows"))
        .collect();
    // The replacement: two new batches (of 25 and 35 rows) for the two old ones.
    let mut all = frames[0].vstack(&frames[1]).expect("stack");
    let mut firsts = all.slice(0, 25);
    let mut rest = all.slice(25, 35);
    let new: Vec<_> = [&mut firsts, &mut rest]
        .into_iter()
        .map(|df| {
            let b = parquet_bytes(df).expect("parquet");
            seal_batch(&b, &study.id, 9, &vault.public()).expect("seal")
        })
        .collect();
    let _ = &mut all;
    // journal, 2 puts, 2 deletes, the journal's deletion
    for steps in 0..=6 {
        let url = bucket_url();
        let store = open_bucket(&url);
        let old: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(t, df)| {
                let mut df = df.clone();
                store_frame(&store, &study, &vault, &mut df, t as i64).expect("stored")
            })
            .collect();
        let bucket = store.bucket().expect("a bucket");
        bucket.replace_steps(&old, &new, steps).expect("steps");
        let listed = store.list(&study.id).expect("list");
        assert_eq!(
            rows_in(&store, &listed, &vault),
            60,
            "after {steps} steps every row is listed exactly once"
        );
        let new_ids: Vec<_> = new.iter().map(|(h, _)| h.batch_id_hex()).collect();
        let shows_new = listed
            .iter()
            .all(|f| new_ids.contains(&f.header.batch_id_hex()));
        assert_eq!(shows_new, steps >= 3, "after {steps} steps");
        // The next replacement: finishes a journal whose batches are all written, refuses one
        // that is not until the steward abandons it.
        let next = store.replace(&[], &[]);
        if (1..3).contains(&steps) {
            let e = next.expect_err("blocked").to_string();
            assert!(e.contains("--abandon-interrupted"), "{e}");
            assert!(store.abandon_interrupted().expect("abandons"));
            assert!(!store.abandon_interrupted().expect("nothing left"));
        } else {
            next.expect("finishes");
        }
        let listed = store.list(&study.id).expect("list");
        assert_eq!(rows_in(&store, &listed, &vault), 60, "after {steps} steps");
        assert_eq!(listed.len(), 2);
        let ids: Vec<_> = listed.iter().map(|f| f.header.batch_id_hex()).collect();
        assert_eq!(
            ids.iter().all(|i| new_ids.contains(i)),
            steps >= 3,
            "after {steps} steps, recovered"
        );
    }
    // A journal naming anything but a batch is refused, not followed.
    let url = bucket_url();
    let store = open_bucket(&url);
    put_intake_batch(
        &url,
        "compact.journal",
        br#"{"remove":["../ledger.log"],"add":[]}"#.to_vec(),
    );
    let e = store.list(&study.id).expect_err("refused").to_string();
    assert!(e.contains("which is not a batch"), "{e}");
    assert!(store.replace(&[], &[]).is_err());
}

#[test]
#[ignore = "needs an S3 server: scripts/storage-servers.sh"]
fn the_cli_audits_a_bucket_named_by_url_with_aws_variables() {
    let w = world();
    // A ledger file for the CLI: the entries of the in-memory ledger, unverified.
    let mut bytes = Vec::new();
    for e in w.ledger.parsed() {
        bytes.extend(datadonor_analytics::ledger::encode_record(&e.to_bytes()));
    }
    std::fs::write(w.dir.path().join("ledger.log"), bytes).expect("ledger");
    w.vault
        .save(&w.dir.path().join("vault.key"))
        .expect("vault key");
    let opts = options();
    let get = |k: &str| opts.iter().find(|(n, _)| *n == k).expect("set").1.clone();
    let envs = [
        ("AWS_ENDPOINT_URL", get("aws_endpoint")),
        ("AWS_ACCESS_KEY_ID", get("aws_access_key_id")),
        ("AWS_SECRET_ACCESS_KEY", get("aws_secret_access_key")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let audit = |batches: &str| {
        common::run_in_env(
            w.dir.path(),
            &[
                "audit",
                "batches",
                "--study",
                "t2d-dk",
                "--batches",
                batches,
                "--vault-key",
                "vault.key",
                "--ledger-file",
                "ledger.log",
            ],
            &envs,
        )
    };
    let dir = w.dir.path().display().to_string();
    let (code_dir, out_dir, err_dir) = audit(&dir);
    let (code, out, err) = audit(&w.url);
    assert_eq!(code_dir, 0, "{err_dir}");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, out_dir);
    let unnamed = r_dir_unnamed(&w);
    assert!(
        out.contains(&format!("not in the ledger: intake batch {unnamed}")),
        "{out}"
    );
    assert!(
        out.contains("4 batches, 490 rows, 12 donors, 0 violations"),
        "{out}"
    );
    // A bucket that does not answer is an error naming it, not an empty store.
    let (code, _, err) = common::run_in_env(
        w.dir.path(),
        &[
            "audit",
            "batches",
            "--study",
            "t2d-dk",
            "--batches",
            &w.url,
            "--vault-key",
            "vault.key",
            "--ledger-file",
            "ledger.log",
        ],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
            ("AWS_ALLOW_HTTP", "true"),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains(&w.url), "{err}");
}
