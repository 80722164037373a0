//! The engine's exact run of the example query against the same query written plainly in polars
//! ([`datadonor_analytics::plain::example_query`], the benchmark's baseline) over the same
//! plaintext rows: every value the engine publishes is the value the plain query computes for
//! that cell.
//!
//! The rows: 4,000 synthetic rows of 300 donors in four sealed batches, with withdrawn, expired
//! and other-purpose consent records, rows donated under a record the ledger does not know, about
//! one value in ten missing per measured field, and one cell (the first region, with type 2
//! diabetes) held to three donors so that the engine suppresses it by k, and others with it.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;

use datadonor_analytics::disclosure::{CellKey, Suppression};
use datadonor_analytics::ledger::{verify_ledger, MemoryLedger};
use datadonor_analytics::plain::{example_query, GROUPINGS};
use datadonor_analytics::query::{run_query, QueryInputs, ResultTable};
use datadonor_analytics::sealed::seal_batch;
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{
    approval_of, donor, grant, parquet_bytes, record_id, set_consent, synthetic_frame, withdraw,
    Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::query::{MeasureOp, QuerySpec};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::{FieldType, StudyDefinition};
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const QUERY: &str = include_str!("../../examples/t2d-query.toml");
const NOW: i64 = 1_750_000_000;
const EPI: &str = "t2d-epidemiology";
const CARE: &str = "t2d-care-quality";

const DONORS: u32 = 300;
const BATCHES: usize = 4;
const BATCH_ROWS: usize = 1_000;
/// Donors of the small cell (the first region, with type 2 diabetes): fewer than k.
const SMALL_CELL: [u32; 3] = [10, 11, 12];

/// Relative tolerance of means and quantiles. Both sides average the same few hundred donor
/// means, summed in a different order (rounding error below n·2⁻⁵³ ≈ 10⁻¹³ relative; about
/// 10⁻¹⁶ here); a single row counted differently changes a value by 10⁻⁴ relative or more.
const REL_TOL: f64 = 1e-12;

/// How a donor consented: the ledger entries of donor `i` and whether its record covers the
/// example's purpose at `NOW`.
fn consent_of(
    study: &StudyDefinition,
    i: u32,
) -> (Vec<datadonor_schemas::ledger::LedgerEntry>, bool) {
    let p = donor(i);
    match i % 20 {
        // Consented to another purpose only.
        7 => (vec![grant(study, p, &[CARE], NOW + 86_400)], false),
        // Withdrew.
        3 => (
            vec![
                grant(study, p, &[EPI, CARE], NOW + 86_400),
                withdraw(study, p, NOW - 1),
            ],
            false,
        ),
        // Consent expired.
        15 => (vec![grant(study, p, &[EPI], NOW - 5)], false),
        _ => (vec![grant(study, p, &[EPI], NOW + 86_400)], true),
    }
}

fn labels(study: &StudyDefinition, field: &str) -> Vec<String> {
    match study.field(field).map(|f| f.field_type()) {
        Some(FieldType::Category(l)) => l,
        other => panic!("{field} is not a category: {other:?}"),
    }
}

/// The plaintext batches: synthetic rows in which only the [`SMALL_CELL`] donors have rows in
/// the first region with type 2 diabetes, then a few rows of those donors in that cell (adults
/// 50–59), and rows of donor 1 under a consent record the ledger does not hold.
fn batches(study: &StudyDefinition) -> Vec<DataFrame> {
    let hex: Vec<String> = (0..DONORS).map(|i| donor(i).to_hex()).collect();
    let small: Vec<String> = SMALL_CELL.iter().map(|i| donor(*i).to_hex()).collect();
    let region = labels(study, "region")[0].clone();
    let mut rng = Rng::new(2024);
    let mut out = Vec::new();
    for _ in 0..BATCHES {
        let df = synthetic_frame(study, &hex, BATCH_ROWS, &mut rng).expect("rows");
        let in_small_cell = col("region").eq(lit(region.clone())).and(col("t2d")).and(
            col("donor")
                .is_in(
                    lit(Series::new("small".into(), small.clone())).implode(false),
                    false,
                )
                .not(),
        );
        let df = df
            .lazy()
            .with_column(
                when(in_small_cell)
                    .then(lit(false))
                    .otherwise(col("t2d"))
                    .alias("t2d"),
            )
            .collect()
            .expect("t2d rewritten");
        out.push(df);
    }
    let small_rows = synthetic_frame(study, &small, 12, &mut rng).expect("rows");
    let small_rows = small_rows
        .lazy()
        .with_columns([
            lit(region).alias("region"),
            lit(true).alias("t2d"),
            lit("50-59").alias("age_band"),
        ])
        .collect()
        .expect("small cell rows");
    out.push(small_rows);
    let mut foreign = synthetic_frame(study, &hex[1..2], 20, &mut rng).expect("rows");
    set_consent(&mut foreign, [0xee; 16]).expect("consent column");
    out.push(foreign);
    out
}

/// The plain query's frames as cell key → value per column, keyed as the engine keys cells
/// (`None` for a total, `t2d` as `"true"`/`"false"`).
fn plain_cells(frames: &[DataFrame], columns: &[String]) -> HashMap<CellKey, Vec<Option<f64>>> {
    let dims = ["region", "t2d"];
    let mut out = HashMap::new();
    for (frame, grouping) in frames.iter().zip(GROUPINGS) {
        for i in 0..frame.height() {
            let key: CellKey = dims
                .iter()
                .map(|d| {
                    grouping.contains(d).then(|| {
                        match frame.column(d).expect("dimension").get(i).expect("row") {
                            AnyValue::String(s) => s.to_string(),
                            AnyValue::StringOwned(s) => s.to_string(),
                            AnyValue::Boolean(b) => b.to_string(),
                            other => panic!("{d} = {other:?}"),
                        }
                    })
                })
                .collect();
            let values = columns
                .iter()
                .map(|c| {
                    let v = frame
                        .column(c)
                        .expect("measure column")
                        .get(i)
                        .expect("row");
                    match v {
                        AnyValue::Null => None,
                        AnyValue::UInt32(n) => Some(f64::from(n)),
                        AnyValue::Float64(x) => Some(x),
                        other => panic!("{c} = {other:?}"),
                    }
                })
                .collect();
            assert!(
                out.insert(key.clone(), values).is_none(),
                "plain query repeats cell {key:?}"
            );
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= REL_TOL * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn engine_publishes_the_plain_querys_values() {
    let study = StudyDefinition::from_toml(STUDY).expect("example study");
    let spec = QuerySpec::from_toml(QUERY).expect("example query");
    let dir = tempfile::tempdir().expect("dir");
    let store = BatchStore::open(dir.path()).expect("store");
    let vault = VaultKey::generate(1);
    let steward = SigningKey::generate().expect("key");
    let ledger = MemoryLedger::new("datadonor.test/ledger").expect("ledger");

    let mut expected_records = HashSet::new();
    for i in 0..DONORS {
        let (entries, allowed) = consent_of(&study, i);
        for e in &entries {
            ledger.push(e);
        }
        if allowed {
            expected_records.insert(record_id(donor(i)));
        }
    }
    for i in SMALL_CELL {
        assert!(consent_of(&study, i).1, "small-cell donor {i} counts");
    }

    // The same Parquet bytes, sealed for the engine and read as plaintext for the plain query.
    let mut plain: Option<DataFrame> = None;
    for (n, mut df) in batches(&study).into_iter().enumerate() {
        let bytes = parquet_bytes(&mut df).expect("parquet");
        let (h, sealed) = seal_batch(&bytes, &study.id, n as i64, &vault.public()).expect("sealed");
        store.write(&h, &sealed).expect("stored");
        let read = ParquetReader::new(Cursor::new(bytes))
            .finish()
            .expect("plaintext");
        match &mut plain {
            Some(all) => {
                all.vstack_mut(&read).expect("stacked");
            }
            None => plain = Some(read),
        }
    }
    let plain = plain.expect("rows");
    assert!(plain.height() > 4_000, "{} rows", plain.height());

    let view = verify_ledger(&ledger, &[ledger.verifier().expect("verifier")], None)
        .expect("ledger verifies");
    let allowed = view.allowed_records(&study.id, &spec.purpose, NOW);
    assert_eq!(allowed, expected_records, "records covering the purpose");

    // The engine's exact run (k-anonymity, no noise), as the steward's reference runs use it.
    let approval = approval_of(&spec, 7, NOW, 1).sign(&steward);
    let approvers = [steward.public_key()];
    let inputs = QueryInputs {
        spec: &spec,
        approval: &approval,
        study: &study,
        approvers: &approvers,
        now: NOW,
    };
    let table: ResultTable = run_query(&inputs, &view.index(), &store, &vault, &ledger)
        .expect("run")
        .table;

    let columns = table.measure_names();
    assert_eq!(
        columns,
        ["donors", "mean_hba1c", "q0.5_bmi", "mean_systolic"],
        "the example query's measures"
    );
    let frames = example_query(plain.lazy(), &allowed).expect("plain query");
    let plain = plain_cells(&frames, &columns);

    // Both hold the same cells: 5 regions and 2 values of t2d, with every margin.
    let engine_keys: HashSet<&CellKey> = table.rows.iter().map(|r| &r.key).collect();
    let plain_keys: HashSet<&CellKey> = plain.keys().collect();
    assert_eq!(
        engine_keys, plain_keys,
        "cells of the engine and the plain query"
    );
    assert_eq!(engine_keys.len(), 6 * 3);

    // The small cell is suppressed by k (and so, secondarily, are others); the plain query
    // shows it with its three donors.
    let small_key: CellKey = vec![
        Some(labels(&study, "region")[0].clone()),
        Some("true".into()),
    ];
    let small = table
        .rows
        .iter()
        .find(|r| r.key == small_key)
        .expect("small cell");
    assert_eq!(small.cell, Some(Suppression::FewDonors));
    assert_eq!(plain[&small_key][0], Some(SMALL_CELL.len() as f64));
    let secondary = table
        .rows
        .iter()
        .filter(|r| r.cell == Some(Suppression::Secondary))
        .count();
    assert!(secondary > 0, "no secondary suppression");

    let mut cells = 0usize;
    // Per column: values both publish and that were compared.
    let mut compared = vec![0usize; columns.len()];
    let mut differences = Vec::new();
    for row in &table.rows {
        if row.cell.is_some() {
            assert!(row.values.iter().all(Option::is_none), "{row:?}");
            continue;
        }
        cells += 1;
        let theirs = &plain[&row.key];
        for (m, measure) in table.measures.iter().enumerate() {
            if row.suppressed[m].is_some() {
                assert_eq!(row.values[m], None, "{row:?}");
                continue;
            }
            let same = match (row.values[m], theirs[m]) {
                (Some(a), Some(b)) => {
                    compared[m] += 1;
                    if measure.op == MeasureOp::Donors {
                        a == b
                    } else {
                        close(a, b)
                    }
                }
                (None, None) => true,
                _ => false,
            };
            if !same {
                differences.push(format!(
                    "{:?} {}: engine {:?}, plain {:?}",
                    row.key, columns[m], row.values[m], theirs[m]
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} values differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Not vacuous: most cells published, and every measure compared in each of them.
    assert!(cells >= 12, "only {cells} of 18 cells published");
    assert!(cells < 18, "nothing suppressed");
    for (m, n) in compared.iter().enumerate() {
        assert_eq!(
            *n, cells,
            "{}: {n} values compared in {cells} cells",
            columns[m]
        );
    }
}
