//! The whole pipeline on localhost, through the same code as the demo: real intake over TLS,
//! donor-client library donations from synthetic FHIR exports, withdrawals, an approved query,
//! compaction and the auditor's checks.

use datadonor_tests::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_end_to_end() {
    let donors = 120;
    let work = tempfile::tempdir().expect("tempdir");
    let s = run(DemoOptions {
        donors,
        seed: 7,
        concurrency: 8,
        withdraw_percent: 10,
        keep: Some(work.path().to_path_buf()),
        progress: false,
    })
    .await
    .expect("the pipeline runs");
    assert_eq!(s.donated + s.nothing_to_donate, donors);
    assert!(s.donated >= 100, "only {} of {donors} donated", s.donated);
    // Every tenth donor by index (0, 10, ..., 110) withdraws if they donated.
    assert!(
        (12 - s.nothing_to_donate.min(12)..=12).contains(&s.withdrawn),
        "{} withdrew, {} had nothing to donate",
        s.withdrawn,
        s.nothing_to_donate
    );
    // Each donor's export was deleted once imported; the intake's data stays.
    let exports = std::fs::read_dir(work.path().join("exports"))
        .expect("exports dir")
        .count();
    assert_eq!(exports, 0, "exports left behind");
    assert!(work.path().join("intake/ledger").is_dir());
    // Every donor chose the query's purpose; the withdrawn are not counted.
    assert_eq!(s.donors_considered, s.donated - s.withdrawn);
    assert!(s.rows_erased > 0, "compaction erased nothing");
    assert!(s.cells.0 > 0, "no cell published");
    assert!(s.table.contains("(total)"), "{}", s.table);
    for check in [
        "receipts: ledger signature",
        "withdrawal receipts verified",
        "included in the current tree",
        "refuses a query that differs",
        "matches its signed tree head",
        "append-only",
        "all belong to consenting donors",
    ] {
        assert!(
            s.checks.iter().any(|c| c.contains(check)),
            "missing check {check:?}: {:#?}",
            s.checks
        );
    }
}
