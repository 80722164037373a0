//! End-to-end tests of the analytics library: batches sealed here with synthetic rows, an
//! in-memory ledger, and every step of a run (approval, consent, engine, disclosure, logging),
//! compaction and the output formats.

use std::collections::HashSet;

use datadonor_analytics::compact::{compact, CompactOptions};
use datadonor_analytics::disclosure::Suppression;
use datadonor_analytics::ledger::{verify_ledger, LedgerView, MemoryLedger};
use datadonor_analytics::output;
use datadonor_analytics::query::{run_query, QueryInputs, ResultTable};
use datadonor_analytics::sealed::open_batch_file;
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{approval_of, donor, grant, record_hex, withdraw, Rng};
use datadonor_analytics::vault::VaultKey;
use datadonor_analytics::AnalyticsError;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::signing::{SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const NOW: i64 = 1_750_000_000;
const EPI: &str = "t2d-epidemiology";
const CARE: &str = "t2d-care-quality";

struct World {
    study: StudyDefinition,
    vault: VaultKey,
    steward: SigningKey,
    ledger: MemoryLedger,
    dir: tempfile::TempDir,
    store: BatchStore,
}

fn world() -> World {
    let study = StudyDefinition::from_toml(STUDY).expect("example study");
    let dir = tempfile::tempdir().expect("dir");
    let store = BatchStore::open(dir.path()).expect("store");
    World {
        study,
        vault: VaultKey::generate(1),
        steward: SigningKey::generate().expect("key"),
        ledger: MemoryLedger::new("datadonor.test/ledger").expect("ledger"),
        dir,
        store,
    }
}

/// Rows for donor `i`: `n` rows in `region`, with `t2d`, hba1c = `hba1c`.
fn rows(w: &World, spec: &[(u32, &str, bool, f64, usize)]) -> DataFrame {
    let mut donors = Vec::new();
    let mut regions = Vec::new();
    let mut t2d = Vec::new();
    let mut hba1c = Vec::new();
    for (i, region, flag, value, n) in spec {
        for _ in 0..*n {
            donors.push(donor(*i).to_hex());
            regions.push(region.to_string());
            t2d.push(*flag);
            hba1c.push(Some(*value));
        }
    }
    let n = donors.len();
    let mut cols = vec![
        Column::new("donor".into(), donors),
        Column::new("period".into(), vec!["2024-03"; n]),
        Column::new("age_band".into(), vec!["50-59"; n]),
        Column::new("sex".into(), vec!["female"; n]),
        Column::new("region".into(), regions),
        Column::new("t2d".into(), t2d),
        Column::new("hba1c".into(), hba1c),
    ];
    for f in ["bmi", "systolic", "diastolic", "glucose"] {
        let v: Vec<Option<f64>> = (0..n)
            .map(|i| {
                Some(match f {
                    "bmi" => 25.0 + (i % 5) as f64,
                    "glucose" => 6.0,
                    _ => 80.0 + (i % 7) as f64,
                })
            })
            .collect();
        cols.push(Column::new(f.into(), v));
    }
    let consent: Vec<String> = spec
        .iter()
        .flat_map(|(i, _, _, _, n)| std::iter::repeat_n(record_hex(donor(*i)), *n))
        .collect();
    cols.push(Column::new("consent".into(), consent));
    let _ = &w.study;
    DataFrame::new(n, cols).expect("frame")
}

fn store(w: &World, df: &mut DataFrame, t: i64) {
    datadonor_analytics::testkit::store_frame(&w.store, &w.study, &w.vault, df, t).expect("stored");
}

fn spec(text: &str) -> QuerySpec {
    QuerySpec::from_toml(text).expect("spec parses")
}

fn approve(w: &World, s: &QuerySpec, max_runs: u32) -> SignedObject {
    approval_of(s, 7, NOW, max_runs).sign(&w.steward)
}

fn view(w: &World) -> LedgerView {
    verify_ledger(&w.ledger, &[w.ledger.verifier().expect("verifier")], None)
        .expect("ledger verifies")
}

fn run(w: &World, s: &QuerySpec, approval: &SignedObject) -> Result<ResultTable, AnalyticsError> {
    let approvers = [w.steward.public_key()];
    let inputs = QueryInputs {
        spec: s,
        approval,
        study: &w.study,
        approvers: &approvers,
        now: NOW,
    };
    run_query(&inputs, &view(w).index(), &w.store, &w.vault, &w.ledger).map(|o| o.table)
}

const TOTAL_SPEC: &str = r#"
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

fn consent_world() -> World {
    let w = world();
    // Donors 0..10 consent to epidemiology; 20 withdraws; 21's consent expired; 22 consented to
    // care quality only.
    for i in 0..10 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    w.ledger
        .push(&grant(&w.study, donor(20), &[EPI], NOW + 1000));
    w.ledger.push(&withdraw(&w.study, donor(20), NOW - 100));
    w.ledger.push(&grant(&w.study, donor(21), &[EPI], NOW - 1));
    w.ledger
        .push(&grant(&w.study, donor(22), &[CARE], NOW + 1000));
    let mut good: Vec<(u32, &str, bool, f64, usize)> =
        (0..10).map(|i| (i, "syddanmark", true, 6.0, 3)).collect();
    let mut df = rows(&w, &good);
    store(&w, &mut df, 1);
    good.clear();
    let mut bad = rows(
        &w,
        &[
            (20, "syddanmark", true, 15.0, 4),
            (21, "syddanmark", true, 15.0, 4),
            (22, "syddanmark", true, 15.0, 4),
            (99, "syddanmark", true, 15.0, 4),
        ],
    );
    store(&w, &mut bad, 2);
    w
}

#[test]
fn only_consenting_donors_are_counted() {
    let w = consent_world();
    let s = spec(TOTAL_SPEC);
    let t = run(&w, &s, &approve(&w, &s, 5)).expect("runs");
    assert_eq!(t.rows.len(), 1);
    let r = &t.rows[0];
    assert_eq!(r.cell, None);
    // withdrawn (20), expired (21), other purpose (22) and unknown (99) donors are not counted
    assert_eq!(r.values, vec![Some(10.0), Some(30.0), Some(6.0)]);
    // the run is logged with its numbers
    let logged: Vec<LedgerEntry> = w
        .ledger
        .parsed()
        .into_iter()
        .filter(|e| e.kind() == "query_run")
        .collect();
    assert_eq!(logged.len(), 1);
    match &logged[0] {
        LedgerEntry::QueryRun {
            query_sha256,
            researcher,
            purpose,
            donors_considered,
            cells_published,
            cells_suppressed,
            ..
        } => {
            assert_eq!(query_sha256, &s.hash());
            assert_eq!(researcher, "r@sdu.example");
            assert_eq!(purpose, EPI);
            assert_eq!(*donors_considered, 10);
            assert_eq!((*cells_published, *cells_suppressed), (1, 0));
        }
        other => panic!("unexpected {other:?}"),
    }
}

const REGION_SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
title = "HbA1c by region"
group_by = ["region", "t2d"]
totals = true
contribution = "donor_mean"
[[measures]]
op = "donors"
[[measures]]
op = "mean"
field = "hba1c"
[[measures]]
op = "quantile"
field = "hba1c"
q = 0.5
"#;

fn region_world() -> World {
    let w = world();
    let mut spec_rows = Vec::new();
    // Syddanmark: 8 t2d + 7 not; Hovedstaden: 6 t2d + 2 not (small); Sjælland: 9 t2d + 6 not.
    let mut id = 0u32;
    for (region, t2d, n, v) in [
        ("syddanmark", true, 8, 7.0),
        ("syddanmark", false, 7, 5.5),
        ("hovedstaden", true, 6, 7.5),
        ("hovedstaden", false, 2, 5.0),
        ("sjaelland", true, 9, 7.2),
        ("sjaelland", false, 6, 5.4),
    ] {
        for _ in 0..n {
            w.ledger
                .push(&grant(&w.study, donor(id), &[EPI], NOW + 1000));
            spec_rows.push((id, region, t2d, v, 2usize));
            id += 1;
        }
    }
    let mut df = rows(&w, &spec_rows);
    // Split over two batches to exercise merging.
    let mut a = df.slice(0, df.height() / 2);
    let mut b = df.slice((df.height() / 2) as i64, df.height());
    store(&w, &mut a, 1);
    store(&w, &mut b, 2);
    let _ = &mut df;
    w
}

fn region_labels(study: &StudyDefinition) -> Vec<String> {
    match study.field("region").map(|f| f.field_type()) {
        Some(datadonor_schemas::study::FieldType::Category(v)) => v,
        _ => Vec::new(),
    }
}

#[test]
fn small_cells_are_suppressed_with_secondary_suppression() {
    let w = region_world();
    assert!(
        region_labels(&w.study).contains(&"hovedstaden".to_string()),
        "{:?}",
        region_labels(&w.study)
    );
    let s = spec(REGION_SPEC);
    let t = run(&w, &s, &approve(&w, &s, 5)).expect("runs");
    let find = |r: Option<&str>, f: Option<&str>| {
        t.rows
            .iter()
            .find(|x| x.key == vec![r.map(str::to_string), f.map(str::to_string)])
            .unwrap_or_else(|| panic!("cell {r:?} {f:?}"))
    };
    let small = find(Some("hovedstaden"), Some("false"));
    assert_eq!(small.cell, Some(Suppression::FewDonors));
    assert!(small.values.iter().all(Option::is_none));
    // Its line partners are suppressed too, so it cannot be recovered from the margins.
    let partner_row = find(Some("hovedstaden"), Some("true"));
    assert_eq!(partner_row.cell, Some(Suppression::Secondary));
    let published = find(Some("syddanmark"), Some("true"));
    assert_eq!(published.cell, None);
    assert_eq!(published.values[0], Some(8.0));
    assert_eq!(published.values[1], Some(7.0));
    assert_eq!(published.values[2], Some(7.0));
    let grand = find(None, None);
    assert_eq!(grand.values[0], Some(38.0));
    // The text table marks suppressed cells and explains them.
    let text = output::render_text(&t);
    assert!(text.contains("suppressed (<k)"), "{text}");
    assert!(text.contains("suppressed (secondary)"), "{text}");
    assert!(
        text.contains("* suppressed (<k): fewer than k = 5"),
        "{text}"
    );
    // Outputs parse back.
    let dir = tempfile::tempdir().expect("dir");
    let csv_path = dir.path().join("t.csv");
    output::write_by_extension(&t, &csv_path).expect("csv");
    let mut rdr = csv::Reader::from_path(&csv_path).expect("reads");
    let header = rdr.headers().expect("header").clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "region",
            "t2d",
            "donors",
            "mean_hba1c",
            "q0.5_hba1c",
            "status"
        ]
    );
    let recs: Vec<csv::StringRecord> = rdr.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(recs.len(), t.rows.len());
    assert!(recs
        .iter()
        .any(|r| &r[5] == "suppressed (<k)" && r[2].is_empty()));
    let json_path = dir.path().join("t.json");
    output::write_by_extension(&t, &json_path).expect("json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("read")).expect("json parses");
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(t.rows.len()));
    assert_eq!(v["k"], 5);
    let pq = dir.path().join("t.parquet");
    output::write_by_extension(&t, &pq).expect("parquet");
    let df = ParquetReader::new(std::fs::File::open(&pq).expect("open"))
        .finish()
        .expect("parquet parses");
    assert_eq!(df.height(), t.rows.len());
    assert!(df.column("status").is_ok());
    let svg = dir.path().join("t.svg");
    output::plot_svg(&t, &svg).expect("svg");
    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg_text.starts_with("<svg"));
    assert!(svg_text.contains("mean_hba1c"), "{svg_text}");
}

#[test]
fn approval_refusals() {
    let w = consent_world();
    let s = spec(TOTAL_SPEC);
    let approval = approve(&w, &s, 1);
    // spec changed by one byte
    let changed = spec(&TOTAL_SPEC.replace("r@sdu.example", "r@sdu.exampla"));
    let e = run(&w, &changed, &approval).expect_err("changed spec");
    assert!(e.to_string().contains("query hash mismatch"), "{e}");
    // unknown approver
    let other = SigningKey::generate().expect("key");
    let foreign = QueryApproval {
        not_after: NOW + 10,
        ..approval_of(&s, 1, NOW, 5)
    };
    let e = run(&w, &s, &foreign.sign(&other)).expect_err("unknown approver");
    assert!(e.to_string().contains("not a trusted steward key"), "{e}");
    // expired
    let expired = QueryApproval {
        not_after: NOW,
        ..foreign.clone()
    }
    .sign(&w.steward);
    let e = run(&w, &s, &expired).expect_err("expired");
    assert!(e.to_string().contains("expired"), "{e}");
    // purpose mismatch
    let purpose = QueryApproval {
        purpose: CARE.into(),
        ..foreign.clone()
    }
    .sign(&w.steward);
    let e = run(&w, &s, &purpose).expect_err("purpose");
    assert!(e.to_string().contains("purpose"), "{e}");
    // runs exhausted: the first run is logged, the second is refused
    run(&w, &s, &approval).expect("first run");
    let e = run(&w, &s, &approval).expect_err("second run");
    assert!(
        e.to_string()
            .contains("approval allows 1 run, already used"),
        "{e}"
    );
    // disclosive specs
    for (bad, why) in [
        (
            TOTAL_SPEC.replace("op = \"rows\"", "op = \"min\"\nfield = \"hba1c\""),
            "refused",
        ),
        (
            TOTAL_SPEC.replace(
                "researcher = \"r@sdu.example\"",
                "researcher = \"r@sdu.example\"\ngroup_by = [\"donor\"]",
            ),
            "pseudonym",
        ),
    ] {
        let b = spec(&bad);
        let e = run(&w, &b, &approve(&w, &b, 5)).expect_err("refused spec");
        assert!(matches!(e, AnalyticsError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains(why), "{e}");
    }
    // Refusals log nothing.
    assert_eq!(
        w.ledger
            .parsed()
            .iter()
            .filter(|e| e.kind() == "query_run")
            .count(),
        1
    );
}

#[test]
fn compaction_erases_a_withdrawn_donor_everywhere_and_logs_it() {
    let w = world();
    for i in 0..12 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut rng = Rng::new(3);
    let hex: Vec<String> = (0..12).map(|i| donor(i).to_hex()).collect();
    for b in 0..4 {
        let mut df = datadonor_analytics::testkit::synthetic_frame(&w.study, &hex, 200, &mut rng)
            .expect("rows");
        store(&w, &mut df, b);
    }
    let victim: Pseudonym = donor(5);
    w.ledger.push(&withdraw(&w.study, victim, NOW - 50));
    let before = w.store.list(&w.study.id).expect("list");
    assert_eq!(before.len(), 4);
    let report = compact(
        &w.store,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        CompactOptions { target_rows: 300 },
    )
    .expect("compacts");
    let (rows_erased, batches) = report
        .erased
        .get(&(victim.to_hex(), record_hex(victim)))
        .cloned()
        .expect("victim erased");
    assert!(rows_erased > 0);
    assert_eq!(batches.len(), 4);
    assert_eq!(report.rows_kept + rows_erased, 800);
    let after = w.store.list(&w.study.id).expect("list");
    assert_eq!(
        after.len(),
        3,
        "800 - erased rows in batches of at most 300"
    );
    let mut total = 0;
    for f in &after {
        assert!(
            before
                .iter()
                .all(|b| b.header.batch_id != f.header.batch_id),
            "fresh batch ids"
        );
        let o = open_batch_file(&f.path, &w.vault).expect("opens");
        let df = ParquetReader::new(std::io::Cursor::new(o.plaintext.as_slice()))
            .finish()
            .expect("parquet");
        total += df.height();
        let col = df
            .column("donor")
            .expect("donor")
            .str()
            .expect("str")
            .clone();
        let donors: HashSet<String> = (0..col.len())
            .filter_map(|i| col.get(i).map(str::to_string))
            .collect();
        assert!(!donors.contains(&victim.to_hex()));
    }
    assert_eq!(total as u64, report.rows_kept);
    let erasures: Vec<LedgerEntry> = w
        .ledger
        .parsed()
        .into_iter()
        .filter(|e| e.kind() == "erasure_done")
        .collect();
    assert_eq!(erasures.len(), 1);
    match &erasures[0] {
        LedgerEntry::ErasureDone {
            pseudonym,
            rows_erased: r,
            ..
        } => {
            assert_eq!(*pseudonym, victim);
            assert_eq!(*r, rows_erased);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A second compaction has nothing to erase and logs nothing.
    let again = compact(
        &w.store,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &w.ledger,
        NOW,
        CompactOptions { target_rows: 300 },
    )
    .expect("compacts");
    assert_eq!(again.entries_logged, 0);
    let _ = &w.dir;
}

#[test]
fn all_rows_measures_match_a_direct_polars_computation() {
    let w = world();
    let hex: Vec<String> = (0..40).map(|i| donor(i).to_hex()).collect();
    for i in 0..40 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut rng = Rng::new(11);
    let mut all: Option<DataFrame> = None;
    for b in 0..3 {
        let mut df = datadonor_analytics::testkit::synthetic_frame(&w.study, &hex, 500, &mut rng)
            .expect("rows");
        match &mut all {
            Some(a) => {
                a.vstack_mut(&df).expect("stack");
            }
            None => all = Some(df.clone()),
        }
        store(&w, &mut df, b);
    }
    let s = spec(
        r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
group_by = ["sex"]
[filter]
cmp = { field = "bmi", op = "ge", value = 30.0 }
[[measures]]
op = "rows"
[[measures]]
op = "sum"
field = "systolic"
[[measures]]
op = "mean"
field = "systolic"
[[measures]]
op = "std"
field = "systolic"
[[measures]]
op = "quantile"
field = "systolic"
q = 0.5
"#,
    );
    let t = run(&w, &s, &approve(&w, &s, 5)).expect("runs");
    let all = all.expect("rows");
    let expected = all
        .lazy()
        .filter(col("bmi").gt_eq(lit(30.0)))
        .group_by([col("sex")])
        .agg([
            col("donor").n_unique().alias("donors"),
            len().alias("rows"),
            col("systolic").sum().alias("sum"),
            col("systolic").mean().alias("mean"),
            col("systolic").std(1).alias("std"),
            col("systolic")
                .quantile(lit(0.5), QuantileMethod::Linear)
                .alias("q"),
        ])
        .collect()
        .expect("reference");
    let sex = expected
        .column("sex")
        .expect("sex")
        .str()
        .expect("str")
        .clone();
    for i in 0..expected.height() {
        let key = sex.get(i).map(str::to_string);
        let row = t
            .rows
            .iter()
            .find(|r| r.key == vec![key.clone()])
            .expect("cell");
        let get = |c: &str| {
            expected
                .column(c)
                .expect("col")
                .cast(&DataType::Float64)
                .expect("cast")
                .f64()
                .expect("f64")
                .get(i)
        };
        assert_eq!(row.values[0], get("donors"));
        assert_eq!(row.values[1], get("rows"));
        for (j, c) in [(2, "sum"), (3, "mean"), (4, "std"), (5, "q")] {
            let (a, b) = (row.values[j].expect("value"), get(c).expect("value"));
            assert!(
                (a - b).abs() < 1e-6 * b.abs().max(1.0) + if c == "q" { 0.01 } else { 0.0 },
                "{c}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn grouping_batches_into_plans_does_not_change_the_result() {
    use datadonor_analytics::engine::QueryEngine;
    use datadonor_analytics::query::aggregate_store_in_groups;
    let w = world();
    let hex: Vec<String> = (0..60).map(|i| donor(i).to_hex()).collect();
    for i in 0..60 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut rng = Rng::new(23);
    for b in 0..5 {
        let mut df = datadonor_analytics::testkit::synthetic_frame(&w.study, &hex, 400, &mut rng)
            .expect("rows");
        store(&w, &mut df, b);
    }
    let allowed = view(&w).allowed_record_donors(&w.study.id, EPI, NOW);
    for contribution in ["all_rows", "donor_mean"] {
        let s = spec(&format!(
            r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
group_by = ["sex", "t2d"]
totals = true
contribution = "{contribution}"
[[measures]]
op = "mean"
field = "hba1c"
[[measures]]
op = "std"
field = "systolic"
[[measures]]
op = "quantile"
field = "bmi"
q = 0.9
"#
        ));
        let table = |group_rows: usize| {
            let engine = QueryEngine::new(&s, &w.study, &allowed).expect("engine");
            aggregate_store_in_groups(
                engine,
                &w.store,
                &view(&w).index(),
                &w.study,
                &w.vault,
                group_rows,
            )
            .expect("aggregates")
        };
        // One plan per batch (five partials merged) against one plan for all five.
        let (per_batch, one_plan) = (table(1), table(usize::MAX));
        assert_eq!(per_batch.batches, 5);
        assert_eq!(one_plan.batches, 5);
        assert_eq!(per_batch.rows_scanned, 2000);
        assert_eq!(one_plan.rows_scanned, 2000);
        assert_eq!(per_batch.cells.len(), one_plan.cells.len());
        assert!(one_plan.cells.len() >= 9, "cells and margins");
        for (a, b) in per_batch.cells.iter().zip(&one_plan.cells) {
            assert_eq!(a.key, b.key);
            // Donor ids are engine-local: compare the counts.
            assert_eq!(a.donors.len(), b.donors.len(), "{contribution} {:?}", a.key);
            let lens = |c: &datadonor_analytics::engine::AggCell| -> Vec<usize> {
                c.field_donors.iter().map(Vec::len).collect()
            };
            assert_eq!(lens(a), lens(b));
            assert_eq!(a.rows, b.rows);
            for (x, y) in a.values.iter().zip(&b.values) {
                match (x, y) {
                    (Some(x), Some(y)) => assert!(
                        (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                        "{contribution} {:?}: {x} vs {y}",
                        a.key
                    ),
                    _ => assert_eq!(x, y),
                }
            }
        }
    }
}

/// A sink that takes a second over its first append, like a slow link to the intake.
struct SlowSink<'a> {
    inner: &'a MemoryLedger,
    first: std::sync::atomic::AtomicBool,
}

impl datadonor_analytics::ledger::LedgerSink for SlowSink<'_> {
    fn append(
        &self,
        entry: &LedgerEntry,
    ) -> Result<datadonor_analytics::ledger::Appended, datadonor_analytics::ledger::LedgerError>
    {
        if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        self.inner.append(entry)
    }
}

/// An entry is timed when it is logged: the run's start plus its duration, so that a long
/// compaction is not refused by the intake for a start time more than 5 minutes back.
#[test]
fn erasure_entries_are_timed_when_they_are_logged() {
    let w = world();
    for i in 0..6 {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 1000));
    }
    let mut rng = Rng::new(9);
    let hex: Vec<String> = (0..6).map(|i| donor(i).to_hex()).collect();
    let mut df =
        datadonor_analytics::testkit::synthetic_frame(&w.study, &hex, 60, &mut rng).expect("rows");
    store(&w, &mut df, 0);
    w.ledger.push(&withdraw(&w.study, donor(1), NOW - 50));
    w.ledger.push(&withdraw(&w.study, donor(2), NOW - 40));
    let sink = SlowSink {
        inner: &w.ledger,
        first: std::sync::atomic::AtomicBool::new(true),
    };
    compact(
        &w.store,
        &w.study.id,
        &w.vault,
        &view(&w).index(),
        &sink,
        NOW,
        CompactOptions::default(),
    )
    .expect("compacts");
    let times: Vec<i64> = w
        .ledger
        .parsed()
        .iter()
        .filter_map(|e| match e {
            LedgerEntry::ErasureDone { time, .. } => Some(*time),
            _ => None,
        })
        .collect();
    assert_eq!(times.len(), 2);
    assert!(
        times.iter().all(|t| (NOW..NOW + 60).contains(t)),
        "{times:?}"
    );
    assert!(
        times[1] > NOW,
        "the second entry kept the start time: {times:?}"
    );
}
