//! The whole pipeline on localhost, through the same code as the demo: real intake over TLS,
//! donor-client library donations from synthetic FHIR exports, withdrawals, an approved query,
//! compaction and the auditor's checks.

use datadonor_tests::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_end_to_end() {
    // Enough donors that the grand total clears the noisy threshold of a differentially
    // private release.
    let donors = 400;
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
    assert!(s.donated >= 340, "only {} of {donors} donated", s.donated);
    // Every tenth donor by index (0, 10, ..., 390) withdraws if they donated.
    assert!(
        (40 - s.nothing_to_donate.min(40)..=40).contains(&s.withdrawn),
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
        "cosigned by 2 of 2 witnesses",
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

/// The key files pass between the operators' tools as they are: the demo steward key `init`
/// writes is one `datadonor-analytics approve --key` and `--approvers` read, and a vault key
/// made by `datadonor-analytics vault-keygen` configures `init --vault-public-key`.
#[test]
fn key_files_pass_between_the_intake_and_analytics_tools() {
    use datadonor_analytics::keys::{load_approvers, load_steward_key};
    use datadonor_analytics::query::open_study;
    use datadonor_analytics::vault::{VaultKey, VaultPublicKey};
    use datadonor_schemas::time::{Clock, SystemClock};

    let work = tempfile::tempdir().expect("tempdir");
    let now = SystemClock.now();

    // The demo steward key written by init.
    let dir = work.path().join("demo");
    let report = datadonor_intake::init::init(&dir, None, now).expect("init");
    let steward = load_steward_key(&dir.join("steward/steward.key")).expect("steward key");
    assert_eq!(steward.public_key().to_base64(), report.steward_public_key);
    let approvers = load_approvers(&dir.join("steward/steward.key.pub")).expect("approvers");
    assert_eq!(approvers, vec![steward.public_key()]);
    let study = std::fs::read(dir.join("studies/t2d-dk.json")).expect("signed study");
    open_study(&study, &approvers).expect("the example study verifies under that key");
    let vault_key = report.vault_private_key.expect("demo vault key");
    let vault = VaultKey::load(&vault_key).expect("the demo vault key loads");
    let configured = VaultPublicKey::load(&dir.join("vault.pub")).expect("vault.pub");
    assert_eq!(configured, vault.public());

    // A steward's own vault key, given to init.
    let own = VaultKey::generate(7);
    let own_path = work.path().join("vault.key");
    own.save(&own_path).expect("vault key saved");
    let dir = work.path().join("production");
    let report = datadonor_intake::init::init(
        &dir,
        Some(&datadonor_analytics::keys::pub_path(&own_path)),
        now,
    )
    .expect("init with the steward's vault key");
    assert!(report.vault_private_key.is_none());
    assert!(!dir.join("vault-private").exists());
    let configured = VaultPublicKey::load(&dir.join("vault.pub")).expect("vault.pub");
    assert_eq!(configured, own.public());
}
