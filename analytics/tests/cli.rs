//! Golden tests of the `datadonor-analytics` command line: arguments, exit status and stderr,
//! for the happy path and every refusal path.

mod common;

use std::path::{Path, PathBuf};

use datadonor_analytics::ledger::encode_record;
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{donor, grant, store_frame, synthetic_frame, Rng};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::study::StudyDefinition;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const QUERY: &str = include_str!("../../examples/t2d-query.toml");

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
}

/// Run in the setup's directory (see [`common::run_in`]).
fn run(s: &Setup, args: &[&str]) -> (i32, String, String) {
    common::run_in(s.dir.path(), args)
}

fn ok(s: &Setup, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(s, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
}

fn setup() -> Setup {
    let s = Setup {
        dir: tempfile::tempdir().expect("dir"),
    };
    std::fs::write(s.p("t.toml"), STUDY).expect("write");
    std::fs::write(s.p("q.toml"), QUERY).expect("write");
    ok(&s, &["keygen", "--out", &s.s("steward.key")]);
    ok(&s, &["keygen", "--out", &s.s("other.key")]);
    std::fs::copy(s.p("steward.key.pub"), s.p("approvers")).expect("copy");
    ok(
        &s,
        &[
            "study",
            "sign",
            "--study",
            &s.s("t.toml"),
            "--key",
            &s.s("steward.key"),
            "--out",
            &s.s("t.json"),
        ],
    );
    // batches and a ledger file with consents
    let study = StudyDefinition::from_toml(STUDY).expect("study");
    let vault = VaultKey::generate(1);
    vault.save(&s.p("vault.key")).expect("vault");
    std::fs::create_dir(s.p("batches")).expect("dir");
    let store = BatchStore::open(&s.p("batches")).expect("store");
    let hex: Vec<String> = (0..60).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(5);
    let mut df = synthetic_frame(&study, &hex, 2000, &mut rng).expect("rows");
    store_frame(&store, &study, &vault, &mut df, 1).expect("stored");
    let mut ledger = Vec::new();
    for i in 0..60 {
        let e = grant(&study, donor(i), &["t2d-epidemiology"], 4_000_000_000);
        ledger.extend(encode_record(&e.to_bytes()));
    }
    std::fs::write(s.p("ledger.log"), ledger).expect("ledger");
    s
}

#[test]
fn refusals_have_one_line_reasons() {
    let s = setup();
    // min / max and grouping by pseudonym
    for (text, reason) in [
        (
            QUERY.replace(
                "op = \"mean\"\nfield = \"systolic\"",
                "op = \"max\"\nfield = \"systolic\"",
            ),
            "26: measures[3]: max is refused: an extreme value is one donor's row-level value",
        ),
        (
            QUERY.replace(
                "op = \"mean\"\nfield = \"systolic\"",
                "op = \"min\"\nfield = \"systolic\"",
            ),
            "26: measures[3]: min is refused: an extreme value is one donor's row-level value",
        ),
        (
            QUERY.replace(
                "group_by = [\"region\", \"t2d\"]",
                "group_by = [\"region\", \"donor\"]",
            ),
            "7: group_by[1]: grouping by pseudonym would publish per-donor rows",
        ),
        (
            QUERY.replace(
                "values = [\"18-19\", \"20-29\", \"30-39\"]",
                "values = [\"18-19\", \"20-29\", \"30-40\"]",
            ),
            "11: filter: \"30-40\" is not a value of age_band",
        ),
        (
            QUERY.replace("field = \"hba1c\"", "field = \"age_band\""),
            "17: measures[1]: \"age_band\" is not a numeric measure",
        ),
    ] {
        std::fs::write(s.p("bad.toml"), &text).expect("write");
        // approve refuses too (validated against the study) ...
        let (code, _, stderr) = run(
            &s,
            &[
                "approve",
                "--spec",
                &s.s("bad.toml"),
                "--key",
                &s.s("steward.key"),
                "--researcher",
                "researcher@sdu.example",
                "--valid-days",
                "3",
                "--max-runs",
                "1",
                "--epsilon",
                "1",
                "--study",
                &s.s("t.json"),
                "--out",
                &s.s("bad.approval"),
            ],
        );
        assert_eq!(code, 3);
        // Errors name the file, the line and the key.
        let refusal = format!("datadonor-analytics: refused: <TMP>/bad.toml:{reason}\n");
        assert_eq!(stderr, refusal);
    }
    // purpose mismatch between the researcher flag and the spec is refused at approval time
    let (code, _, stderr) = run(
        &s,
        &[
            "approve",
            "--spec",
            &s.s("q.toml"),
            "--key",
            &s.s("steward.key"),
            "--researcher",
            "someone@else",
            "--valid-days",
            "3",
            "--max-runs",
            "1",
            "--epsilon",
            "1",
            "--out",
            &s.s("x.approval"),
        ],
    );
    assert_eq!(code, 3);
    assert_eq!(
        stderr,
        "datadonor-analytics: refused: --researcher \"someone@else\" is not the spec's researcher \"researcher@sdu.example\"\n"
    );
    // a spec that does not parse names the file, line and key
    std::fs::write(s.p("broken.toml"), QUERY.replace("k = 5", "k = \"five\"")).expect("write");
    let (code, _, stderr) = run(
        &s,
        &[
            "approve",
            "--spec",
            &s.s("broken.toml"),
            "--key",
            &s.s("steward.key"),
            "--researcher",
            "researcher@sdu.example",
            "--valid-days",
            "3",
            "--max-runs",
            "1",
            "--epsilon",
            "1",
            "--out",
            &s.s("broken.approval"),
        ],
    );
    assert_eq!(code, 3);
    assert!(
        stderr.starts_with(
            "datadonor-analytics: refused: <TMP>/broken.toml: TOML parse error at line 6"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // nothing was logged by any refusal
    let _ = Path::new("");
}

#[test]
fn usage_errors_exit_2() {
    let s = setup();
    let (code, _, stderr) = run(&s, &["approve", "--spec"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error: a value is required for '--spec <SPEC>'"),
        "{stderr}"
    );
}

#[test]
fn help_says_what_the_key_and_approvers_files_hold() {
    let s = setup();
    let help = |args: &[&str]| {
        let (code, stdout, _) = run(&s, args);
        assert_eq!(code, 0, "{args:?}");
        // clap wraps long help; compare with whitespace collapsed.
        stdout.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let approve = help(&["approve", "--help"]);
    assert!(
        approve.contains(
            "--key <FILE> Steward key file: the Ed25519 seed as 64 hex digits, as `keygen`"
        ),
        "{approve}"
    );
    let serve = help(&["serve", "--help"]);
    assert!(
        serve.contains("--approvers <FILE> Approvers file of the trusted approver keys: one base64 Ed25519 public key per line"),
        "{serve}"
    );
    // Read-only commands do not offer the token that appends to the ledger; compact does.
    for cmd in [
        &["audit", "log", "--help"][..],
        &["audit", "queries", "--help"],
        &["audit", "batches", "--help"],
        &["audit", "consents", "--help"],
        &["audit", "receipt", "--help"],
    ] {
        assert!(!help(cmd).contains("--analytics-token"), "{cmd:?}");
    }
    assert!(help(&["compact", "--help"]).contains("--analytics-token"));
    // The researcher's run is not a command of the steward's tool.
    let (code, _, _) = run(&s, &["query", "--help"]);
    assert_eq!(code, 2);
}

#[test]
fn compact_erases_withdrawn_donors_and_logs_each_erasure() {
    use datadonor_analytics::ledger::decode_records;
    use datadonor_analytics::testkit::withdraw;
    use datadonor_schemas::ledger::LedgerEntry;

    let s = setup();
    let study = StudyDefinition::from_toml(STUDY).expect("study");
    let mut ledger = std::fs::read(s.p("ledger.log")).expect("ledger");
    for i in 0..3 {
        ledger.extend(encode_record(
            &withdraw(&study, donor(i), 1_800_000_000).to_bytes(),
        ));
    }
    std::fs::write(s.p("ledger.log"), ledger).expect("ledger");
    let compact = [
        "compact",
        "--batches",
        &s.s("batches"),
        "--vault-key",
        &s.s("vault.key"),
        "--study",
        "t2d-dk",
        "--ledger-file",
        &s.s("ledger.log"),
    ];
    let (code, stdout, stderr) = run(&s, &compact);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("t2d-dk: 3 donors erased, 1 batch removed, 1 written, ")
            && stdout.ends_with(" rows kept, 3 ledger entries\n"),
        "{stdout}"
    );
    // It names the batch it wrote.
    let written: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("wrote <TMP>/batches/"))
        .collect();
    assert_eq!(written.len(), 1, "{stderr}");
    assert!(s.p("batches").join(written[0]).is_file(), "{stderr}");
    let path = s.p("ledger.log");
    let records =
        decode_records(&std::fs::read(&path).expect("ledger"), &path).expect("the ledger decodes");
    let erased: Vec<_> = records
        .iter()
        .filter_map(|r| match LedgerEntry::from_bytes(r) {
            Ok(LedgerEntry::ErasureDone { pseudonym, .. }) => Some(pseudonym),
            _ => None,
        })
        .collect();
    assert_eq!(erased.len(), 3);
    for i in 0..3 {
        assert!(erased.contains(&donor(i)), "donor {i} has no erasure entry");
    }
    // Nothing left to erase: a second run rewrites nothing and logs nothing.
    let (code, stdout, stderr) = run(&s, &compact);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("t2d-dk: 0 donors erased, 0 batches removed, 0 written, "),
        "{stdout}"
    );
}

#[test]
fn approve_and_keygen_say_what_they_wrote() {
    let s = setup();
    let (code, stdout, stderr) = run(
        &s,
        &[
            "approve",
            "--spec",
            &s.s("q.toml"),
            "--key",
            &s.s("steward.key"),
            "--researcher",
            "researcher@sdu.example",
            "--valid-days",
            "30",
            "--max-runs",
            "1",
            "--epsilon",
            "1",
            "--study",
            &s.s("t.json"),
            "--out",
            &s.s("q.approval"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    let line = stderr
        .strip_prefix(
            "wrote <TMP>/q.approval (approval for researcher@sdu.example to run <TMP>/q.toml for t2d-epidemiology, valid until ",
        )
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.ends_with("Z, 1 run)\n"), "{stderr}");
    let (code, _, stderr) = run(&s, &["keygen", "--out", &s.s("k2.key")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr,
        "wrote <TMP>/k2.key (steward key) and <TMP>/k2.key.pub (its public key)\n"
    );
}

#[test]
fn the_log_written_to_a_pipe_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("dir");
    // A data directory for its dev CA only.
    datadonor_intake::testkit::init_test_dir(&dir.path().join("intake")).expect("init");
    // Nothing listens on port 1: the ledger read fails in transport and is retried, which is
    // logged at debug level; stderr is a pipe here.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-analytics"))
        .args([
            "audit",
            "log",
            "--ledger",
            "https://127.0.0.1:1",
            "--auditor-token",
            "token",
            "--ca",
            "intake/tls/ca.pem",
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "datadonor_analytics=debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("retrying once"), "{stderr}");
    assert!(
        !stderr.contains("\x1b["),
        "colour codes in a piped log: {stderr:?}"
    );
}

#[test]
fn study_is_a_file_or_an_id_everywhere() {
    let s = setup();
    // Commands that need only the id read it from the signed study file.
    let consents = |study: &str| {
        run(
            &s,
            &[
                "audit",
                "consents",
                "--study",
                study,
                "--ledger-file",
                &s.s("ledger.log"),
            ],
        )
    };
    let by_file = consents(&s.s("t.json"));
    let by_id = consents("t2d-dk");
    assert_eq!(by_file.0, 0, "{}", by_file.2);
    assert!(by_file.1.starts_with("study t2d-dk\n"), "{}", by_file.1);
    assert_eq!(by_file, by_id);
    // The old spelling still works.
    let (code, stdout, _) = run(
        &s,
        &[
            "audit",
            "consents",
            "--study-id",
            "t2d-dk",
            "--ledger-file",
            &s.s("ledger.log"),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(stdout, by_id.1);
    // Neither a file nor an id.
    let (code, _, stderr) = consents("studies/missing.json");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is neither a signed study file (no such file) nor a study id"),
        "{stderr}"
    );
    // Commands that need the whole definition say so when given an id.
    let (code, stdout, stderr) = run(
        &s,
        &[
            "approve",
            "--spec",
            &s.s("q.toml"),
            "--key",
            &s.s("steward.key"),
            "--researcher",
            "researcher@sdu.example",
            "--valid-days",
            "30",
            "--max-runs",
            "1",
            "--epsilon",
            "1",
            "--study",
            "t2d-dk",
            "--out",
            &s.s("q.approval"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "datadonor-analytics: error: approve --study needs the signed study file (JSON, as \
         `study sign` writes it): \"t2d-dk\" is a study id, and no such file exists\n"
    );
    assert!(!s.p("q.approval").exists());
}
