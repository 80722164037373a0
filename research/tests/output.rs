//! The renderings of a released table, on a hand-built table (no server).

use std::collections::HashMap;

use arrow::array::{Array, Float64Array, StringArray};
use datadonor_research::output;
use datadonor_schemas::privacy::{
    ContributionBounds, ReleasedColumn, ReleasedRow, ReleasedTable, RunPrivacy,
};
use datadonor_schemas::query::MeasureOp;
use datadonor_schemas::study::StudyId;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn column(name: &str, op: MeasureOp, q: Option<f64>) -> ReleasedColumn {
    ReleasedColumn {
        name: name.into(),
        op,
        field: (op != MeasureOp::Donors).then(|| "hba1c".to_string()),
        q,
        noise_scale: 2.0,
        epsilon: 0.1,
        decimals: None,
    }
}

fn row(region: Option<&str>, donors: f64, mean: f64, q50: f64) -> ReleasedRow {
    ReleasedRow {
        key: vec![region.map(str::to_string)],
        values: vec![Some(donors), Some(mean), Some(q50)],
        error95: vec![Some(5.99), Some(0.123456789), None],
        suppressed: None,
    }
}

fn table() -> ReleasedTable {
    ReleasedTable {
        format: 1,
        study_id: StudyId::new("diabetes-2026").expect("study id"),
        query_sha256: [0xab; 32],
        approval_sha256: [0xcd; 32],
        researcher: "alice".into(),
        purpose: "HbA1c by region".into(),
        title: "Mean HbA1c by region".into(),
        k: 10,
        dimensions: vec!["region".into()],
        columns: vec![
            column("donors", MeasureOp::Donors, None),
            column("mean_hba1c", MeasureOp::Mean, None),
            column("q0.5_hba1c", MeasureOp::Quantile, Some(0.5)),
        ],
        rows: vec![
            row(Some("north"), 120.0, 48.123456789, 47.0),
            row(Some("south"), 95.0, 51.5, 50.25),
            ReleasedRow {
                key: vec![Some("west".into())],
                values: vec![None, None, None],
                error95: vec![None, None, None],
                suppressed: Some("few-donors".into()),
            },
            row(None, 215.0, 49.75, 48.5),
        ],
        privacy: RunPrivacy {
            epsilon: 0.5,
            delta: 1e-7,
            study_epsilon_left: 4.5,
            study_delta_left: 9e-7,
            researcher_epsilon_left: 1.5,
            researcher_delta_left: 4e-7,
        },
        bounds: ContributionBounds {
            max_rows_per_cell: 3,
            max_cells_per_donor: 2,
            tables: 2,
        },
        ledger_index: 42,
    }
}

#[test]
fn text_has_header_values_with_intervals_and_footnotes() {
    let text = output::to_text(&table());
    assert!(text.starts_with("Mean HbA1c by region\n"), "{text}");
    assert!(
        text.contains(
            "differentially private: ε = 0.5, δ = 0.0000001 this run; k = 10; contribution bounds L = 3, C = 2"
        ),
        "{text}"
    );
    let north = text
        .lines()
        .find(|l| l.starts_with("north"))
        .expect("north row");
    assert!(north.contains("120 ± 5.990"), "{north}");
    assert!(north.contains("48.123 ± 0.123"), "{north}");
    // The quantile has no interval: the line has exactly two ±.
    assert_eq!(north.matches('±').count(), 2, "{north}");
    assert!(north.trim_end().ends_with("47"), "{north}");
    assert!(text.lines().any(|l| l.starts_with("(total)")), "{text}");
    assert!(
        !text.contains("west"),
        "a suppressed cell is not listed: {text}"
    );
    assert!(text.contains("noisy"), "{text}");
    assert!(text.contains("95 % interval"), "{text}");
    assert!(text.contains("not listed"), "{text}");
    assert!(text.contains("1 cell(s) suppressed"), "{text}");
}

#[test]
fn text_strips_control_characters_from_server_strings() {
    let mut t = table();
    t.title = "evil\x1b[2Jtitle".into();
    t.rows[0].key = vec![Some("no\rrth".into())];
    let text = output::to_text(&t);
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("evil[2Jtitle"), "{text}");
}

#[test]
fn csv_header_and_rows() {
    let csv = output::to_csv(&table()).expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "region,donors,donors_error95,mean_hba1c,mean_hba1c_error95,q0.5_hba1c,q0.5_hba1c_error95"
    );
    assert_eq!(lines[1], "north,120,5.99,48.1235,0.123457,47,");
    assert_eq!(lines[2], "south,95,5.99,51.5,0.123457,50.25,");
    assert_eq!(lines[3], "(total),215,5.99,49.75,0.123457,48.5,");
    assert_eq!(lines.len(), 4, "the suppressed cell is not listed: {csv}");
}

#[test]
fn csv_json_and_parquet_use_the_declared_decimals() {
    let mut t = table();
    t.columns[0].decimals = Some(0);
    t.columns[1].decimals = Some(1);
    let csv = output::to_csv(&t).expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    // 48.1234567 with one decimal, its error 0.123456789 too; the quantile keeps 6 digits.
    assert_eq!(lines[1], "north,120,6,48.1,0.1,47,");
    let v: serde_json::Value =
        serde_json::from_str(&output::to_json(&t).expect("json")).expect("json");
    assert_eq!(v["rows"][0]["mean_hba1c"], 48.1);
    assert_eq!(v["rows"][0]["donors_error95"], 6.0);
    assert!(
        output::to_text(&t).contains("48.1 ± 0.1"),
        "{}",
        output::to_text(&t)
    );
    assert_eq!(output::format_column(-0.04, Some(1)), "0.0");
    assert_eq!(output::format_column(2.25, Some(0)), "2");
    assert_eq!(output::round_column(7.2849, Some(2)), 7.28);
}

#[test]
fn six_significant_digits() {
    assert_eq!(output::format_significant(1234567.0), "1234567");
    assert_eq!(output::format_significant(1234567.89), "1234570");
    assert_eq!(output::format_significant(0.000123456789), "0.000123457");
    assert_eq!(output::format_significant(-2.5), "-2.5");
    assert_eq!(output::format_significant(7.654321987), "7.65432");
}

#[test]
fn json_carries_metadata_and_rows() {
    let t = table();
    let text = output::to_json(&t).expect("json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(v["title"], "Mean HbA1c by region");
    assert_eq!(v["study_id"], "diabetes-2026");
    assert_eq!(v["researcher"], "alice");
    assert_eq!(v["purpose"], "HbA1c by region");
    assert_eq!(v["k"], 10);
    assert_eq!(v["query_sha256"], "ab".repeat(32));
    assert_eq!(v["ledger_index"], 42);
    assert_eq!(v["privacy"]["epsilon"], 0.5);
    assert_eq!(v["privacy"]["researcher_epsilon_left"], 1.5);
    assert_eq!(v["bounds"]["max_cells_per_donor"], 2);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["region"], "north");
    assert_eq!(rows[0]["mean_hba1c"], 48.123456789);
    assert_eq!(rows[0]["mean_hba1c_error95"], 0.123456789);
    assert!(rows[0]["q0.5_hba1c_error95"].is_null());
    assert!(rows[2]["region"].is_null(), "a total is null");
    assert_eq!(rows[2]["donors"], 215.0);
}

#[test]
fn parquet_reads_back_with_the_same_values() {
    let t = table();
    let bytes = output::to_parquet(&t).expect("parquet");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.parquet");
    std::fs::write(&path, &bytes).expect("write");
    let file = std::fs::File::open(&path).expect("open");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
    let codecs: Vec<String> = builder
        .metadata()
        .row_group(0)
        .columns()
        .iter()
        .map(|c| format!("{:?}", c.compression()))
        .collect();
    assert!(codecs.iter().all(|c| c.starts_with("ZSTD")), "{codecs:?}");
    let batches: Vec<_> = builder
        .build()
        .expect("build")
        .collect::<Result<_, _>>()
        .expect("batches");
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    let names: Vec<String> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "region",
            "donors",
            "donors_error95",
            "mean_hba1c",
            "mean_hba1c_error95",
            "q0.5_hba1c",
            "q0.5_hba1c_error95"
        ]
    );
    let col = |name: &str| -> Float64Array {
        b.column_by_name(name)
            .expect(name)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64")
            .clone()
    };
    let region = b
        .column_by_name("region")
        .expect("region")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("utf8")
        .clone();
    assert_eq!(region.value(0), "north");
    assert_eq!(region.value(1), "south");
    assert!(region.is_null(2), "a total is null");
    let expect: HashMap<&str, [Option<f64>; 3]> = HashMap::from([
        ("donors", [Some(120.0), Some(95.0), Some(215.0)]),
        ("mean_hba1c", [Some(48.123456789), Some(51.5), Some(49.75)]),
        ("mean_hba1c_error95", [Some(0.123456789); 3]),
        ("q0.5_hba1c_error95", [None; 3]),
    ]);
    for (name, want) in expect {
        let got = col(name);
        let got: Vec<Option<f64>> = (0..3)
            .map(|i| (!got.is_null(i)).then(|| got.value(i)))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn svg_draws_every_column_with_error_bars() {
    let t = table();
    let svg = output::to_svg(&t).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    let text = |s: &str| svg.contains(&format!("\n{s}\n</text>"));
    assert!(text("Mean HbA1c by region"), "title");
    // One panel per column, each with its caption and axis label.
    for name in ["donors", "mean_hba1c", "q0.5_hba1c"] {
        assert!(text(name), "panel {name}");
        assert!(text(&format!("{name} (noisy)")), "y axis of {name}");
    }
    assert!(text("region"), "x axis label");
    assert!(text("north") && text("south"), "bar labels");
    assert!(!svg.contains("(total)"), "totals are not plotted");
    assert!(
        svg.contains("whiskers: 95 % interval of the noise"),
        "legend"
    );
    // Each error bar is three lines (whiskers and stem) drawn 2 px wide, which nothing else is:
    // two cells with an error in each of the two columns that have one (the quantile has none).
    let wide = r#"stroke-width="2" x1="#;
    assert_eq!(count(&svg, wide), 12, "{svg}");
    let mut bare = t.clone();
    for r in &mut bare.rows {
        r.error95 = vec![None; 3];
    }
    assert_eq!(count(&output::to_svg(&bare).expect("svg"), wide), 0);
}

#[test]
fn write_file_by_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = table();
    for name in ["t.csv", "t.JSON", "t.parquet"] {
        let p = dir.path().join(name);
        output::write_file(&t, &p).expect(name);
        assert!(std::fs::metadata(&p).expect(name).len() > 0, "{name}");
    }
    assert!(std::fs::read_to_string(dir.path().join("t.csv"))
        .expect("csv")
        .starts_with("region,donors"));
    let bad = dir.path().join("t.xlsx");
    let e = output::write_file(&t, &bad).expect_err("xlsx");
    let msg = e.to_string();
    assert!(msg.contains("t.xlsx") && msg.contains(".parquet"), "{msg}");
    assert!(!bad.exists());
}
