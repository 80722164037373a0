//! Rows are matched to consent by record: a donor who withdraws consent record A and consents
//! again under record B has only B's rows counted, A's rows reported by the batch audit until
//! compaction erases exactly them, and an erasure entry naming A.

use std::collections::BTreeMap;

use datadonor_analytics::audit::{audit_batches, audit_consents, BatchViolationKind};
use datadonor_analytics::compact::{compact, CompactOptions};
use datadonor_analytics::ledger::{verify_ledger, LedgerView, MemoryLedger};
use datadonor_analytics::query::{run_query, QueryInputs, ResultTable};
use datadonor_analytics::sealed::open_batch_file;
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{
    approval_of, donor, grant, record_hex, record_id, set_consent, store_frame, synthetic_frame,
    withdraw, Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_analytics::AnalyticsError;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::query::QuerySpec;
use datadonor_schemas::signing::{PublicKey, SignedObject, SigningKey};
use datadonor_schemas::study::{StudyDefinition, CONSENT_COLUMN, DONOR_COLUMN};
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const NOW: i64 = 1_750_000_000;
const EPI: &str = "t2d-epidemiology";
/// The donor who withdraws record A and consents again under record B.
const RETURNING: u32 = 3;
const RECORD_B: [u8; 16] = [0xb0; 16];
const WITHDRAWN_AT: i64 = NOW - 500;

const SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
[[measures]]
op = "rows"
[[measures]]
op = "mean"
field = "hba1c"
"#;

struct World {
    study: StudyDefinition,
    vault: VaultKey,
    steward: SigningKey,
    ledger: MemoryLedger,
    store: BatchStore,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("dir");
    World {
        study: StudyDefinition::from_toml(STUDY).expect("example study"),
        vault: VaultKey::generate(1),
        steward: SigningKey::generate().expect("key"),
        ledger: MemoryLedger::new("datadonor.test/ledger").expect("ledger"),
        store: BatchStore::open(dir.path()).expect("store"),
        _dir: dir,
    }
}

/// `n` rows of donor `i` with HbA1c `hba1c`, under the donor's default consent record.
fn rows(w: &World, i: u32, n: usize, hba1c: f64, rng: &mut Rng) -> DataFrame {
    let mut df = synthetic_frame(&w.study, &[donor(i).to_hex()], n, rng).expect("rows");
    df.with_column(Column::new("hba1c".into(), vec![Some(hba1c); n]))
        .expect("hba1c");
    df
}

fn view(w: &World) -> LedgerView {
    verify_ledger(&w.ledger, &[w.ledger.verifier().expect("verifier")], None)
        .expect("ledger verifies")
}

fn run(w: &World, id: u8) -> Result<ResultTable, AnalyticsError> {
    let spec = QuerySpec::from_toml(SPEC).expect("spec");
    let approval: SignedObject = approval_of(&spec, id, NOW, 1).sign(&w.steward);
    let approvers = [w.steward.public_key()];
    let inputs = QueryInputs {
        spec: &spec,
        approval: &approval,
        study: &w.study,
        approvers: &approvers,
        now: NOW,
    };
    run_query(&inputs, &view(w).index(), &w.store, &w.vault, &w.ledger).map(|o| o.table)
}

/// Rows per (donor hex, consent hex) over every batch of the study.
fn sealed_rows(w: &World) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for f in w.store.list(&w.study.id).expect("list") {
        let opened = open_batch_file(&f.path, &w.vault).expect("opens");
        let df = ParquetReader::new(std::io::Cursor::new(opened.plaintext.as_slice()))
            .finish()
            .expect("parquet");
        let donors = df.column(DONOR_COLUMN).expect("donor").str().expect("text");
        let records = df
            .column(CONSENT_COLUMN)
            .expect("compacted batches keep the consent column")
            .str()
            .expect("text");
        for (d, r) in donors.iter().zip(records.iter()) {
            let key = (
                d.expect("donor").to_string(),
                r.expect("consent").to_string(),
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// Ten donors consent and donate 3 rows each (HbA1c 6.0); the returning donor's 4 rows under
/// record A have HbA1c 15.0. The returning donor withdraws A, consents again under B, and
/// donates 2 rows (HbA1c 9.0) under B.
fn reconsent_world() -> World {
    let w = world();
    let mut rng = Rng::new(11);
    for i in 0..10 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut first = rows(&w, 0, 3, 6.0, &mut rng);
    for i in 1..10 {
        let (n, v) = if i == RETURNING { (4, 15.0) } else { (3, 6.0) };
        first
            .vstack_mut_owned(rows(&w, i, n, v, &mut rng))
            .expect("stack");
    }
    store_frame(&w.store, &w.study, &w.vault, &mut first, NOW - 1000).expect("stored");
    w.ledger
        .push(&withdraw(&w.study, donor(RETURNING), WITHDRAWN_AT));
    let p = donor(RETURNING);
    w.ledger.push(&LedgerEntry::ConsentGranted {
        time: NOW - 400,
        study_id: w.study.id.clone(),
        study_version: w.study.version,
        pseudonym: p,
        consent_record_id: RECORD_B,
        purposes: vec![EPI.into()],
        given_at: NOW - 400,
        expires_at: NOW + 1000,
        manifest_sha256: [2; 32],
        donor_public_key: PublicKey(p.0),
    });
    let mut again = rows(&w, RETURNING, 2, 9.0, &mut rng);
    set_consent(&mut again, RECORD_B).expect("consent column");
    store_frame(&w.store, &w.study, &w.vault, &mut again, NOW - 300).expect("stored");
    w
}

#[test]
fn a_withdrawn_record_stays_out_after_the_donor_consents_again() {
    let w = reconsent_world();
    let returning = donor(RETURNING).to_hex();
    let (a, b) = (record_hex(donor(RETURNING)), hex::encode(RECORD_B));

    // The query counts the 27 rows of the nine others and the 2 rows under B, not the 4 under A.
    let expected = vec![
        Some(10.0),
        Some(29.0),
        Some((27.0 * 6.0 + 2.0 * 9.0) / 29.0),
    ];
    let t = run(&w, 1).expect("runs");
    assert_eq!(t.rows.len(), 1);
    assert_eq!(t.rows[0].values.len(), 3);
    for (got, want) in t.rows[0].values.iter().zip(&expected) {
        let (got, want) = (got.expect("published"), want.expect("value"));
        assert!(
            (got - want).abs() < 1e-9,
            "{:?} != {expected:?}",
            t.rows[0].values
        );
    }

    // Before compaction the batch audit reports A's rows, by record, and nothing else.
    let before = audit_batches(&view(&w).index(), &w.store, &w.vault, &w.study.id).expect("audit");
    assert_eq!(before.rows, 33);
    assert_eq!(before.violations.len(), 1, "{}", before.render_text());
    let v = &before.violations[0];
    assert_eq!(v.kind, BatchViolationKind::Withdrawn { at: WITHDRAWN_AT });
    assert_eq!(v.pseudonym, Some(donor(RETURNING)));
    assert_eq!((v.consent_record.as_str(), v.rows), (a.as_str(), 4));
    assert!(before.render_text().contains("withdrawn at"));
    assert_eq!(
        view(&w).pending_erasures(&w.study.id),
        vec![(donor(RETURNING), record_id(donor(RETURNING)))]
    );
    let consents = audit_consents(&view(&w), &w.study.id).totals;
    assert_eq!((consents.active, consents.pending_erasure), (10, 1));

    // Compaction erases exactly A's rows and keeps B's, though the donor is active again.
    let report = compact(
        &w.store,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        CompactOptions { target_rows: 1000 },
    )
    .expect("compacts");
    assert_eq!(report.erased.len(), 1);
    assert_eq!(report.erased[&(returning.clone(), a.clone())].0, 4);
    assert_eq!(report.rows_kept, 29);
    assert_eq!(report.entries_logged, 1);
    let after = sealed_rows(&w);
    assert_eq!(after.get(&(returning.clone(), a.clone())), None);
    assert_eq!(after.get(&(returning.clone(), b.clone())), Some(&2));
    assert_eq!(after.values().sum::<usize>(), 29);
    let erasures: Vec<LedgerEntry> = w
        .ledger
        .parsed()
        .into_iter()
        .filter(|e| e.kind() == "erasure_done")
        .collect();
    match erasures.as_slice() {
        [LedgerEntry::ErasureDone {
            pseudonym,
            consent_record_id,
            rows_erased,
            ..
        }] => {
            assert_eq!(*pseudonym, donor(RETURNING));
            assert_eq!(*consent_record_id, Some(record_id(donor(RETURNING))));
            assert_eq!(*rows_erased, 4);
        }
        other => panic!("expected one erasure entry, got {other:?}"),
    }

    // Clean afterwards: no violation, nothing pending, and the same result.
    let clean = audit_batches(&view(&w).index(), &w.store, &w.vault, &w.study.id).expect("audit");
    assert!(clean.violations.is_empty(), "{}", clean.render_text());
    assert_eq!((clean.rows, clean.donors), (29, 10));
    assert!(view(&w).pending_erasures(&w.study.id).is_empty());
    assert_eq!(
        audit_consents(&view(&w), &w.study.id)
            .totals
            .pending_erasure,
        0
    );
    let t = run(&w, 2).expect("runs");
    for (got, want) in t.rows[0].values.iter().zip(&expected) {
        assert!((got.expect("published") - want.expect("value")).abs() < 1e-9);
    }
    let again = compact(
        &w.store,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        CompactOptions { target_rows: 1000 },
    )
    .expect("compacts");
    assert_eq!((again.entries_logged, again.erased.len()), (0, 0));
}

#[test]
fn rows_under_an_unknown_or_another_donors_record_are_violations() {
    let w = world();
    let mut rng = Rng::new(5);
    for i in 0..3 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut df = rows(&w, 0, 3, 6.0, &mut rng);
    // Donor 1's rows under donor 2's record; donor 2's under a record nobody was granted.
    let mut borrowed = rows(&w, 1, 2, 6.0, &mut rng);
    set_consent(&mut borrowed, record_id(donor(2))).expect("consent");
    let mut unknown = rows(&w, 2, 1, 6.0, &mut rng);
    set_consent(&mut unknown, [0xee; 16]).expect("consent");
    df.vstack_mut_owned(borrowed).expect("stack");
    df.vstack_mut_owned(unknown).expect("stack");
    store_frame(&w.store, &w.study, &w.vault, &mut df, NOW).expect("stored");

    let r = audit_batches(&view(&w).index(), &w.store, &w.vault, &w.study.id).expect("audit");
    let mut kinds: Vec<(Option<_>, BatchViolationKind, u64)> = r
        .violations
        .iter()
        .map(|v| (v.pseudonym, v.kind.clone(), v.rows))
        .collect();
    kinds.sort_by_key(|k| k.2);
    assert_eq!(
        kinds,
        vec![
            (Some(donor(2)), BatchViolationKind::UnknownRecord, 1),
            (Some(donor(1)), BatchViolationKind::OtherDonor(donor(2)), 2),
        ]
    );
}

#[test]
fn a_batch_without_the_consent_column_is_refused_naming_the_file() {
    let w = world();
    let mut rng = Rng::new(9);
    for i in 0..6 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let hex: Vec<String> = (0..6).map(|i| donor(i).to_hex()).collect();
    let mut df = synthetic_frame(&w.study, &hex, 50, &mut rng).expect("rows");
    df.drop_in_place(CONSENT_COLUMN).expect("dropped");
    let path = store_frame(&w.store, &w.study, &w.vault, &mut df, NOW).expect("stored");
    let file = path.display().to_string();
    let err = run(&w, 1).expect_err("refused").to_string();
    assert!(err.contains(&file) && err.contains(CONSENT_COLUMN), "{err}");
    let err = audit_batches(&view(&w).index(), &w.store, &w.vault, &w.study.id)
        .expect_err("refused")
        .to_string();
    assert!(err.contains(&file) && err.contains(CONSENT_COLUMN), "{err}");
}

#[test]
fn a_row_counts_under_the_donor_its_consent_record_was_granted_to() {
    use datadonor_analytics::engine::QueryEngine;
    let w = world();
    let mut rng = Rng::new(11);
    for i in 0..3 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    // Donor 1's rows under donor 2's record: they count as donor 2's, whose own rows average
    // 10.0, so donor 2's mean is (2 × 8 + 3 × 10) / 5 = 9.2.
    let mut df = rows(&w, 0, 4, 6.0, &mut rng);
    let mut borrowed = rows(&w, 1, 2, 8.0, &mut rng);
    set_consent(&mut borrowed, record_id(donor(2))).expect("consent");
    df.vstack_mut_owned(borrowed).expect("stack");
    df.vstack_mut_owned(rows(&w, 2, 3, 10.0, &mut rng))
        .expect("stack");
    let spec = QuerySpec::from_toml(
        r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
contribution = "donor_mean"
[[measures]]
op = "donors"
[[measures]]
op = "rows"
[[measures]]
op = "mean"
field = "hba1c"
"#,
    )
    .expect("spec");
    let allowed = view(&w).allowed_record_donors(&w.study.id, EPI, NOW);
    assert_eq!(allowed.len(), 3);
    let mut engine = QueryEngine::new(&spec, &w.study, &allowed).expect("engine");
    engine.add_lazy(df.lazy()).expect("rows");
    let table = engine.finish().expect("aggregates");
    assert_eq!(table.cells.len(), 1);
    let cell = &table.cells[0];
    assert_eq!(
        cell.donors.len(),
        2,
        "donor 1 has no record of their own here"
    );
    assert_eq!(cell.values[0], Some(2.0));
    assert_eq!(cell.values[1], Some(9.0));
    let mean = cell.values[2].expect("a mean");
    assert!((mean - (6.0 + 9.2) / 2.0).abs() < 1e-9, "{mean}");
}
