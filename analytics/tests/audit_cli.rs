//! Golden tests of `datadonor-analytics audit log|receipt|consents|queries|batches`: the built
//! binary over a local ledger file with a signed checkpoint, sealed batches and approvals
//! written by the test. Pinned: exit status, the key stdout lines (totals, timelines, flagged
//! runs, violations), the one-line refusal of a rewritten ledger, and self-contained `--html`
//! reports.

mod common;

use std::path::PathBuf;

use datadonor_analytics::audit::short_pseudonym;
use datadonor_analytics::ledger::{encode_record, STATE_FILE};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{
    approval, donor, grant, query_run, record_id, store_frame, synthetic_frame, withdraw, Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, MerkleLog};
use datadonor_schemas::receipt::{HexHash, Receipt, ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::{SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const EPI: &str = "t2d-epidemiology";
const ORIGIN: &str = "datadonor.test/ledger";
/// 2025-06-15T15:06:40Z.
const NOW: i64 = 1_750_000_000;
/// The time of every `grant` entry of the testkit: 2023-11-14T22:13:20Z.
const GRANTED: &str = "2023-11-14T22:13:20Z";
/// `NOW + 100`: donor 3 withdraws.
const WITHDRAWN: &str = "2025-06-15T15:08:20Z";
/// `NOW + 200`: donor 3 is logged as erased.
const ERASED: &str = "2025-06-15T15:10:00Z";
/// The donor who withdraws and is logged as erased, while the batch keeps their rows.
const VICTIM: u32 = 3;

/// A working directory with a ledger key, the ledger file and its signed checkpoint.
struct World {
    dir: tempfile::TempDir,
    study: StudyDefinition,
    key: SigningKey,
    entries: Vec<Vec<u8>>,
}

impl World {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    /// Write the ledger file with every entry and a checkpoint covering the first `size`.
    fn write_ledger(&self, size: usize) -> String {
        let mut bytes = Vec::new();
        for e in &self.entries {
            bytes.extend(encode_record(e));
        }
        std::fs::write(self.p("ledger.log"), bytes).expect("ledger written");
        let log = MerkleLog::from_leaves(self.entries[..size].iter().map(|b| merkle::leaf_hash(b)));
        let cp = Checkpoint::new(ORIGIN, log.size(), log.root()).expect("checkpoint");
        let note = checkpoint::sign(&cp, ORIGIN, self.key.key_pair()).expect("signed");
        std::fs::write(self.p("checkpoint"), &note).expect("checkpoint written");
        note
    }

    fn push(&mut self, e: &LedgerEntry) {
        self.entries.push(e.to_bytes());
    }

    /// `--ledger-file`, `--ledger-checkpoint`, `--ledger-vkey` and `--state-dir <state>`.
    fn verified(&self, state: &str) -> Vec<String> {
        vec![
            "--ledger-file".into(),
            self.s("ledger.log"),
            "--ledger-checkpoint".into(),
            self.s("checkpoint"),
            "--ledger-vkey".into(),
            self.s("ledger.vkey"),
            "--state-dir".into(),
            self.s(state),
        ]
    }

    /// Run the binary in the world's directory (see [`common::run_in`]).
    fn run(&self, args: &[String]) -> (i32, String, String) {
        common::run_in(self.dir.path(), args)
    }
}

fn args(fixed: &[&str], rest: Vec<String>) -> Vec<String> {
    fixed.iter().map(|s| s.to_string()).chain(rest).collect()
}

fn time(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .expect("in range")
        .to_string()
}

/// Six donors consent; donor 3 withdraws and is logged as erased.
fn world() -> World {
    let study = StudyDefinition::from_toml(STUDY).expect("example study");
    let key = SigningKey::generate().expect("ledger key");
    let dir = tempfile::tempdir().expect("temp dir");
    let verifier = NoteVerifier::from_key_pair(ORIGIN, key.key_pair()).expect("verifier");
    std::fs::write(
        dir.path().join("ledger.vkey"),
        format!("{}\n", verifier.to_vkey()),
    )
    .expect("vkey written");
    let mut w = World {
        dir,
        study,
        key,
        entries: Vec::new(),
    };
    for i in 0..6 {
        let e = grant(&w.study, donor(i), &[EPI], NOW + 86_400);
        w.push(&e);
    }
    let e = withdraw(&w.study, donor(VICTIM), NOW + 100);
    w.push(&e);
    let e = LedgerEntry::ErasureDone {
        time: NOW + 200,
        study_id: w.study.id.clone(),
        pseudonym: donor(VICTIM),
        consent_record_id: Some(record_id(donor(VICTIM))),
        rows_erased: 3,
        batches_rewritten: vec!["00".repeat(16)],
    };
    w.push(&e);
    w
}

/// An HTML report is one self-contained file: no script, no external reference.
fn assert_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<style>"), "inline CSS: {html}");
    for banned in [
        "http://", "https://", "<script", "<link", "src=", "url(", "@import",
    ] {
        assert!(!html.contains(banned), "{banned} in {html}");
    }
}

fn read(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.p(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn audit_log_verifies_extensions_and_refuses_a_rewritten_ledger() {
    let mut w = world();
    let note = w.write_ledger(8);
    let root8 = MerkleLog::from_leaves(w.entries.iter().map(|b| merkle::leaf_hash(b))).root();

    // First audit: the head is verified and stored.
    let (code, stdout, stderr) = w.run(&args(&["audit", "log"], w.verified("state")));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "origin: {ORIGIN}\nsize: 8\nroot: {}\nno previously verified head (first audit)\n  \
             consent_granted: 6\n  consent_withdrawn: 1\n  erasure_done: 1\n",
            root8.to_hex()
        )
    );
    assert_eq!(stderr, "");
    assert_eq!(read(&w, "state/verified-checkpoint"), note);

    // The log grows; the checkpoint lags one entry behind the file.
    for i in 0..3 {
        let e = grant(&w.study, donor(10 + i), &[EPI], NOW + 86_400);
        w.push(&e);
    }
    w.write_ledger(10);
    let root10 =
        MerkleLog::from_leaves(w.entries[..10].iter().map(|b| merkle::leaf_hash(b))).root();
    let mut a = args(&["audit", "log"], w.verified("state"));
    a.extend(["--html".to_string(), w.s("log.html")]);
    let (code, stdout, stderr) = w.run(&a);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "origin: {ORIGIN}\nsize: 10\nroot: {}\nconsistent with the previously verified head of \
             size 8\nunsigned entries after the head: 1\n  consent_granted: 8\n  \
             consent_withdrawn: 1\n  erasure_done: 1\n",
            root10.to_hex()
        )
    );
    assert_eq!(stderr, "HTML report written to <TMP>/log.html\n");
    let html = read(&w, "log.html");
    assert_self_contained(&html);
    assert!(html.contains("<dt>Size</dt><dd>10</dd>"), "{html}");
    assert!(html.contains("<dt>Previous verified size</dt><dd>8</dd>"));
    assert!(html.contains(&root10.to_hex()));
    assert!(html.contains("<td>consent_granted</td><td class=\"num\">8</td>"));

    // History rewritten (donor 2's grant replaced) and re-signed by the same ledger key.
    let kept = read(&w, &format!("state/{STATE_FILE}"));
    w.entries[2] = grant(&w.study, donor(99), &[EPI], NOW + 86_400).to_bytes();
    w.write_ledger(11);
    let (code, stdout, stderr) = w.run(&args(&["audit", "log"], w.verified("state")));
    assert_eq!(code, 4, "{stdout}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(
            "datadonor-analytics: violation: ledger is not append-only: checkpoint at size 11 is not \
             consistent with the verified one at size 10"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The refused head is not stored: the next audit is checked against the last good one.
    assert_eq!(read(&w, &format!("state/{STATE_FILE}")), kept);
    let (code, _, _) = w.run(&args(&["audit", "log"], w.verified("state")));
    assert_eq!(code, 4, "still refused");

    // A head older than the verified one: a rollback.
    w.write_ledger(9);
    let (code, _, stderr) = w.run(&args(&["audit", "log"], w.verified("state")));
    assert_eq!(code, 4);
    assert_eq!(
        stderr,
        "datadonor-analytics: violation: ledger rolled back: last verified size 10, new checkpoint size 9\n"
    );

    // Auditing a ledger file needs its checkpoint and verifier key.
    let (code, _, stderr) = w.run(&args(
        &["audit", "log", "--ledger-file"],
        vec![w.s("ledger.log")],
    ));
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "datadonor-analytics: error: auditing --ledger-file needs --ledger-checkpoint and --ledger-vkey\n"
    );
}

#[test]
fn audit_receipt_is_found_in_the_current_log_and_refused_after_a_rewrite() {
    let mut w = world();
    // The withdrawal (index 6) receipt, issued under the head of size 8.
    let note = w.write_ledger(8);
    let log = MerkleLog::from_leaves(w.entries.iter().map(|b| merkle::leaf_hash(b)));
    let index = 6u64;
    let entry = w.entries[6].clone();
    let receipt = Receipt {
        format: 1,
        kind: ReceiptKind::Withdrawal,
        study_id: w.study.id.clone(),
        pseudonym: donor(VICTIM),
        consent_record_id: record_id(donor(VICTIM)),
        request_sha256: [1; 32],
        ledger_index: index,
        entry_sha256: merkle::leaf_hash(&entry).0,
        checkpoint: note,
        issued_at: NOW,
    };
    let bundle = ReceiptBundle {
        receipt: receipt.sign(&w.key),
        entry: entry.clone(),
        inclusion_proof: log
            .inclusion_proof(index, 8)
            .expect("proof")
            .into_iter()
            .map(|h| HexHash(h.0))
            .collect(),
    };
    // The donor client's stored form wraps the bundle.
    let stored = serde_json::json!({
        "study_id": "t2d-dk",
        "ledger_index": index,
        "bundle": serde_json::to_value(&bundle).expect("json"),
    });
    std::fs::write(
        w.p("receipt.json"),
        serde_json::to_vec(&stored).expect("json"),
    )
    .expect("receipt written");

    // The log grows after the receipt was issued.
    let e = grant(&w.study, donor(20), &[EPI], NOW + 86_400);
    w.push(&e);
    w.write_ledger(9);
    let root9 = MerkleLog::from_leaves(w.entries.iter().map(|b| merkle::leaf_hash(b))).root();
    let (code, stdout, stderr) = w.run(&args(
        &["audit", "receipt", &w.s("receipt.json")],
        w.verified("state"),
    ));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "receipt valid: consent_withdrawn entry {} at index 6 (study t2d-dk, pseudonym {}), \
             issued {}\nreceipt head size 8; included in the current head of size 9 (root {})\n",
            hex::encode(merkle::leaf_hash(&entry).0),
            short_pseudonym(&donor(VICTIM)),
            time(NOW),
            root9.to_hex()
        )
    );

    // The receipt's entry rewritten in the log, head re-signed: refused (exit 3), one line.
    w.entries[6] = withdraw(&w.study, donor(4), NOW + 100).to_bytes();
    w.write_ledger(9);
    let (code, stdout, stderr) = w.run(&args(
        &["audit", "receipt", &w.s("receipt.json")],
        w.verified("fresh-state"),
    ));
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(
        stderr,
        "datadonor-analytics: refused: receipt: the log's entry at index 6 is not the receipt's entry\n"
    );

    // A receipt file that is not one.
    std::fs::write(w.p("junk.json"), b"{\"hello\":1}").expect("written");
    let (code, _, stderr) = w.run(&args(
        &["audit", "receipt", &w.s("junk.json")],
        w.verified("fresh-state"),
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(
            "datadonor-analytics: error: <TMP>/junk.json: neither a receipt bundle nor a stored receipt"
        ),
        "{stderr}"
    );
}

#[test]
fn audit_consents_prints_each_pseudonyms_timeline_and_totals() {
    let w = world();
    w.write_ledger(8);
    let mut a = args(
        &["audit", "consents", "--study", "t2d-dk"],
        w.verified("state"),
    );
    a.extend(["--html".to_string(), w.s("consents.html")]);
    let (code, stdout, stderr) = w.run(&a);
    assert_eq!(code, 0, "{stderr}");
    let mut want = String::from("study t2d-dk\npseudonym     granted | withdrawn | erased\n");
    for i in 0..6 {
        let p = short_pseudonym(&donor(i));
        if i == VICTIM {
            want.push_str(&format!("{p}  {GRANTED} | {WITHDRAWN} | {ERASED}\n"));
        } else {
            want.push_str(&format!("{p}  {GRANTED} | - | -\n"));
        }
    }
    want.push_str(
        "totals: donors 6, granted 6, withdrawn 1, erased 1, active 5, pending erasure 0\n",
    );
    assert_eq!(stdout, want);
    assert_eq!(stderr, "HTML report written to <TMP>/consents.html\n");
    let html = read(&w, "consents.html");
    assert_self_contained(&html);
    assert!(html.contains("<dt>donors</dt><dd>6</dd>"), "{html}");
    assert!(html.contains("<dt>active</dt><dd>5</dd>"));
    assert!(html.contains("<dt>pending erasure</dt><dd>0</dd>"));
    assert!(html.contains(&format!(
        ">{}</td><td>{GRANTED}</td><td>{WITHDRAWN}</td><td>{ERASED}</td></tr>",
        short_pseudonym(&donor(VICTIM))
    )));
    // Reports show pseudonym prefixes only.
    assert!(!html.contains(&donor(VICTIM).to_hex()));
    assert!(!stdout.contains(&donor(VICTIM).to_hex()));

    // A withdrawal not yet erased is pending; an unverified ledger file is warned about.
    let mut w2 = world();
    w2.entries.pop();
    w2.write_ledger(7);
    let (code, stdout, stderr) = w2.run(&args(
        &["audit", "consents", "--study", "t2d-dk", "--ledger-file"],
        vec![w2.s("ledger.log")],
    ));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr,
        "datadonor-analytics: warning: <TMP>/ledger.log is not checked against a signed checkpoint\n"
    );
    assert!(
        stdout.ends_with(
            "totals: donors 6, granted 6, withdrawn 1, erased 0, active 5, pending erasure 1\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "{}  {GRANTED} | {WITHDRAWN} | -\n",
        short_pseudonym(&donor(VICTIM))
    )));
}

#[test]
fn audit_queries_flags_runs_beyond_their_approval() {
    let mut w = world();
    let steward = SigningKey::generate().expect("steward key");
    let a = approval(&w.study, 1, 2, NOW);
    let signed: SignedObject = a.sign(&steward);
    let digest = signed.payload_digest();
    std::fs::create_dir(w.p("approvals")).expect("dir");
    std::fs::write(w.p("approvals/a1.json"), signed.to_bytes()).expect("approval written");
    std::fs::write(
        w.p("approvers"),
        format!("# stewards\n{}\n", steward.public_key().to_base64()),
    )
    .expect("approvers written");
    let e = query_run(&w.study, &a, digest, NOW); // index 8: run 1
    w.push(&e);
    let e = query_run(&w.study, &a, digest, NOW + 10); // 9: run 2
    w.push(&e);
    let e = query_run(&w.study, &a, digest, NOW + 20); // 10: run 3, beyond max runs
    w.push(&e);
    let e = query_run(&w.study, &a, digest, NOW + 5000); // 11: run 4, beyond and outside the window
    w.push(&e);
    let e = query_run(&w.study, &a, [9; 32], NOW + 30); // 12: no approval
    w.push(&e);
    w.write_ledger(13);

    // Without approvals: every run listed, nothing checked, exit 0.
    let (code, stdout, stderr) = w.run(&args(&["audit", "queries"], w.verified("s1")));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert!(stdout.ends_with("totals: 5 runs (not checked against approvals)\n"));
    let d = hex::encode(digest);
    // A header row, then the runs, columns aligned: counts right, text left, flags last.
    let header = format!(
        "index  time                  study   researcher     purpose           published  suppressed  epsilon  approval sha256{}  flags",
        " ".repeat(64 - "approval sha256".len())
    );
    let row = |index: u64, t: i64, hash: &str, flags: &str| {
        format!(
            "{index:>5}  {}  t2d-dk  r@sdu.example  {EPI}          6           2        -  {hash}  {flags}",
            time(t)
        )
    };
    assert!(
        stdout.starts_with(&format!("{header}\n{}\n", row(8, NOW, &d, "-"))),
        "{stdout}"
    );

    // Against the approvals: three runs flagged, exit 4, a one-line reason on stderr.
    let mut a2 = args(
        &["audit", "queries", "--approvals"],
        vec![w.s("approvals"), "--approvers".into(), w.s("approvers")],
    );
    a2.extend(w.verified("s2"));
    a2.extend(["--html".to_string(), w.s("queries.html")]);
    let (code, stdout, stderr) = w.run(&a2);
    assert_eq!(code, 4, "{stderr}");
    let window = format!(
        "outside the approval window {} .. {}",
        time(NOW - 100),
        time(NOW + 1000)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            header.clone(),
            row(8, NOW, &d, "ok"),
            row(9, NOW + 10, &d, "ok"),
            row(10, NOW + 20, &d, "run 3 beyond the approval's max runs 2"),
            row(
                11,
                NOW + 5000,
                &d,
                &format!("{window}; run 4 beyond the approval's max runs 2"),
            ),
            row(
                12,
                NOW + 30,
                &hex::encode([9u8; 32]),
                "no matching approval"
            ),
            "totals: 5 runs, 3 flagged, 1 approval checked".to_string(),
        ]
    );
    assert_eq!(
        stderr,
        "HTML report written to <TMP>/queries.html\ndatadonor-analytics: audit: 3 query runs flagged\n"
    );
    let html = read(&w, "queries.html");
    assert_self_contained(&html);
    assert!(html.contains("<dt>Runs</dt><dd>5</dd>"), "{html}");
    assert!(html.contains("<dt>Flagged runs</dt><dd>3</dd>"));
    assert!(html.contains("<dt>Approvals checked</dt><dd>1</dd>"));
    assert!(html.contains("run 3 beyond the approval&#39;s max runs 2"));
    // The 64-character hashes wrap (and the table scrolls) so that the flags stay on the page.
    assert!(html.contains("td.hash{overflow-wrap:anywhere;"), "{html}");
    assert!(
        html.contains("div.table{max-width:100%;overflow-x:auto}"),
        "{html}"
    );
    assert!(
        html.contains(&format!("<td class=\"hash\">{d}</td>")),
        "{html}"
    );
    assert!(html.contains("<div class=\"table\">\n<table>"), "{html}");

    // An approval signed by a key outside the approvers file is refused as input.
    let other = SigningKey::generate().expect("key");
    std::fs::write(
        w.p("approvals/a2.json"),
        approval(&w.study, 2, 1, NOW).sign(&other).to_bytes(),
    )
    .expect("written");
    let mut a3 = args(
        &["audit", "queries", "--approvals"],
        vec![w.s("approvals"), "--approvers".into(), w.s("approvers")],
    );
    a3.extend(w.verified("s3"));
    let (code, stdout, stderr) = w.run(&a3);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stderr,
        "datadonor-analytics: error: <TMP>/approvals/a2.json: approval signed by an untrusted key\n"
    );
}

#[test]
fn audit_batches_reports_rows_of_an_erased_donor() {
    let w = world();
    w.write_ledger(8);
    let vault = VaultKey::generate(1);
    vault.save(&w.p("vault.key")).expect("vault key saved");
    std::fs::create_dir(w.p("batches")).expect("dir");
    let store = BatchStore::open(&w.p("batches")).expect("store");
    let donors: Vec<String> = (0..6).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(7);
    let mut df = synthetic_frame(&w.study, &donors, 300, &mut rng).expect("frame");
    let donor_col = df
        .column("donor")
        .expect("donor column")
        .str()
        .expect("text")
        .clone();
    let victim_rows = (0..donor_col.len())
        .filter(|i| donor_col.get(*i) == Some(donors[VICTIM as usize].as_str()))
        .count();
    assert!(victim_rows > 0, "the victim has rows in the batch");
    // Sealed before the withdrawal and the (claimed) erasure.
    let path = store_frame(&store, &w.study, &vault, &mut df, NOW).expect("stored");
    let batch_id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_string();

    let batch_args = |html: Option<&str>, ledger: Vec<String>| {
        let mut a = args(
            &["audit", "batches", "--study", "t2d-dk", "--batches"],
            vec![w.s("batches"), "--vault-key".into(), w.s("vault.key")],
        );
        a.extend(ledger);
        if let Some(h) = html {
            a.extend(["--html".to_string(), w.s(h)]);
        }
        a
    };

    let (code, stdout, stderr) = w.run(&batch_args(Some("batches.html"), w.verified("state")));
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "violation: batch {batch_id}: {victim_rows} rows of {} remain after erasure at {ERASED}\n\
             study t2d-dk: 1 batch, 300 rows, 6 donors, 1 violation\n",
            short_pseudonym(&donor(VICTIM))
        )
    );
    assert_eq!(
        stderr,
        "HTML report written to <TMP>/batches.html\n\
         datadonor-analytics: audit: 1 violation in the sealed batches of t2d-dk\n"
    );
    let html = read(&w, "batches.html");
    assert_self_contained(&html);
    assert!(html.contains("<dt>Batches</dt><dd>1</dd>"), "{html}");
    assert!(html.contains("<dt>Rows</dt><dd>300</dd>"));
    assert!(html.contains("<dt>Donors</dt><dd>6</dd>"));
    assert!(html.contains("<dt>Violations</dt><dd>1</dd>"));
    assert!(html.contains(&format!("<td>{batch_id}</td>")));
    assert!(!html.contains(&donor(VICTIM).to_hex()));
    // The victim's pseudonym prefix is all digits here; it is an identifier, not a count.
    let prefix = short_pseudonym(&donor(VICTIM));
    assert!(prefix.chars().all(|c| c.is_ascii_digit()), "{prefix}");
    assert!(html.contains(&format!("<td>{prefix}</td>")), "{html}");
    assert!(!html.contains(&format!("<td class=\"num\">{prefix}</td>")));

    // Without the erasure entry (withdrawn, erasure pending) the rows of the withdrawn consent
    // record are still reported, as awaiting compaction.
    let mut w2 = world();
    w2.entries.pop();
    std::fs::create_dir(w2.p("batches")).expect("dir");
    std::fs::copy(&path, w2.p(&format!("batches/{batch_id}.ddc"))).expect("copied");
    std::fs::copy(w.p("vault.key"), w2.p("vault.key")).expect("copied");
    w2.write_ledger(7);
    let mut a = args(
        &["audit", "batches", "--study", "t2d-dk", "--batches"],
        vec![w2.s("batches"), "--vault-key".into(), w2.s("vault.key")],
    );
    a.extend(w2.verified("state"));
    let (code, stdout, stderr) = w2.run(&a);
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "violation: batch {batch_id}: {victim_rows} rows of {} under consent record {} \
             withdrawn at {WITHDRAWN}\n\
             study t2d-dk: 1 batch, 300 rows, 6 donors, 1 violation\n",
            short_pseudonym(&donor(VICTIM)),
            &hex::encode(record_id(donor(VICTIM)))[..12]
        )
    );

    // A damaged batch stops the audit with an error naming the file.
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).expect("written");
    let (code, stdout, stderr) = w.run(&batch_args(None, w.verified("state")));
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stderr,
        format!(
            "datadonor-analytics: error: batch <TMP>/batches/{batch_id}.ddc: final chunk 0 does \
             not authenticate: the file is cut inside it, or it was modified\n"
        )
    );
}
