//! Tests of the auditor's tools (`datadonor_analytics::audit`) over an in-memory ledger,
//! a local ledger file and batches sealed with synthetic rows.

use datadonor_analytics::audit::{
    audit_batches, audit_consents, audit_log, audit_queries, audit_receipt, load_approvals,
    parse_receipt_file, short_pseudonym, write_html, BatchViolationKind, ConsentFold, QueryFlag,
};
use datadonor_analytics::ledger::{
    encode_record, verify_ledger, verify_ledger_index, verify_ledger_with, LedgerError,
    LocalLedgerFile, MemoryLedger, STATE_FILE,
};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{
    approval, donor, grant, query_run, record_id, store_frame, synthetic_frame, withdraw, Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_analytics::AnalyticsError;
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, MerkleLog};
use datadonor_schemas::receipt::{HexHash, Receipt, ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::StudyDefinition;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const EPI: &str = "t2d-epidemiology";
const NOW: i64 = 1_750_000_000;

fn study() -> StudyDefinition {
    StudyDefinition::from_toml(STUDY).expect("example study")
}

fn erased(s: &StudyDefinition, i: u32, time: i64) -> LedgerEntry {
    LedgerEntry::ErasureDone {
        time,
        study_id: s.id.clone(),
        pseudonym: donor(i),
        consent_record_id: Some(record_id(donor(i))),
        rows_erased: 3,
        batches_rewritten: vec!["00".repeat(16)],
    }
}

#[test]
fn consistent_log_passes_and_rewritten_log_is_refused() {
    let s = study();
    let l = MemoryLedger::new("datadonor.test/ledger").expect("ledger");
    let v = [l.verifier().expect("verifier")];
    for i in 0..5 {
        l.push(&grant(&s, donor(i), &[EPI], NOW + 86_400));
    }
    let state = tempfile::tempdir().expect("dir");
    let first = audit_log(&l, &v, state.path()).expect("first audit");
    assert_eq!(first.size, 5);
    assert_eq!(first.previous_size, None);
    assert_eq!(first.counts.get("consent_granted"), Some(&5));

    l.push(&withdraw(&s, donor(1), NOW));
    l.push(&erased(&s, 1, NOW + 1));
    let second = audit_log(&l, &v, state.path()).expect("extension is consistent");
    let view = verify_ledger(&l, &v, None).expect("verifies");
    assert_eq!(second.size, 7);
    assert_eq!(second.previous_size, Some(5));
    assert_eq!(second.counts.get("consent_withdrawn"), Some(&1));
    assert_eq!(second.counts.get("erasure_done"), Some(&1));
    assert_eq!(view.verified.len(), 7);
    let mut log = MerkleLog::new();
    for e in &view.verified {
        log.push(merkle::leaf_hash(&e.to_bytes()));
    }
    assert_eq!(log.root(), second.root);

    let html_path = state.path().join("log.html");
    write_html(&html_path, &second.to_html()).expect("html");
    let html = std::fs::read_to_string(&html_path).expect("read");
    assert!(html.contains("<dd>7</dd>"), "{html}");
    assert!(html.contains(&second.root.to_hex()));
    assert!(!html.contains("<script"));

    // History rewritten and re-signed by the same key: the new head is not an extension.
    let kept = std::fs::read(state.path().join(STATE_FILE)).expect("state");
    l.tamper(2, grant(&s, donor(99), &[EPI], NOW + 86_400).to_bytes());
    l.push(&grant(&s, donor(7), &[EPI], NOW + 86_400));
    let err = audit_log(&l, &v, state.path()).expect_err("rewritten log refused");
    assert!(
        matches!(
            err,
            AnalyticsError::Ledger(LedgerError::Inconsistent { old: 7, new: 8, .. })
        ),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
    // The refused head was not stored.
    assert_eq!(
        std::fs::read(state.path().join(STATE_FILE)).expect("state"),
        kept
    );
}

#[test]
fn queries_beyond_max_runs_outside_window_or_unapproved_are_flagged() {
    let s = study();
    let key = SigningKey::generate().expect("key");
    let l = MemoryLedger::new("datadonor.test/ledger").expect("ledger");
    let a = approval(&s, 1, 2, NOW);
    let signed = a.sign(&key);
    let digest = signed.payload_digest();
    l.push(&grant(&s, donor(0), &[EPI], NOW + 86_400));
    l.push(&query_run(&s, &a, digest, NOW)); // 1
    l.push(&query_run(&s, &a, digest, NOW + 10)); // 2
    l.push(&query_run(&s, &a, digest, NOW + 20)); // 3: beyond max runs
    l.push(&query_run(&s, &a, digest, NOW + 5000)); // 4: beyond and expired
    l.push(&query_run(&s, &a, [9; 32], NOW)); // no approval

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("a1.json"), signed.to_bytes()).expect("write");
    let approvals = load_approvals(dir.path(), Some(&[key.public_key()])).expect("approvals");
    assert_eq!(approvals.len(), 1);
    let view = verify_ledger(&l, &[l.verifier().expect("v")], None).expect("verifies");

    let unchecked = audit_queries(&view, None);
    assert_eq!(unchecked.runs.len(), 5);
    assert_eq!(unchecked.flagged(), 0);

    let r = audit_queries(&view, Some(&approvals));
    assert_eq!(r.runs.len(), 5);
    assert!(r.runs[0].flags.is_empty() && r.runs[1].flags.is_empty());
    assert_eq!(
        r.runs[2].flags,
        vec![QueryFlag::BeyondMaxRuns {
            run: 3,
            max_runs: 2
        }]
    );
    assert!(r.runs[3]
        .flags
        .iter()
        .any(|f| matches!(f, QueryFlag::OutsideWindow { .. })));
    assert!(r.runs[3]
        .flags
        .iter()
        .any(|f| matches!(f, QueryFlag::BeyondMaxRuns { run: 4, .. })));
    assert_eq!(r.runs[4].flags, vec![QueryFlag::NoApproval]);
    assert_eq!(r.flagged(), 3);
    assert_eq!(r.runs[0].index, 1);
    assert!(r.render_text().contains("5 runs, 3 flagged"));
    let html = r.to_html();
    assert!(html.contains("<dt>Flagged runs</dt><dd>3</dd>"), "{html}");
    assert!(html.contains("beyond the approval&#39;s max runs 2"));

    // An approval by an untrusted key is refused when approvers are given.
    let other = SigningKey::generate().expect("key");
    assert!(matches!(
        load_approvals(dir.path(), Some(&[other.public_key()])),
        Err(AnalyticsError::Input { .. })
    ));
}

#[test]
fn batch_with_withdrawn_and_erased_donor_is_reported() {
    let s = study();
    let l = MemoryLedger::new("datadonor.test/ledger").expect("ledger");
    let vault = VaultKey::generate(1);
    let dir = tempfile::tempdir().expect("dir");
    let store = BatchStore::open(dir.path()).expect("store");
    for i in 0..6 {
        l.push(&grant(&s, donor(i), &[EPI], NOW + 86_400));
    }
    let donors: Vec<String> = (0..6).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(7);
    let mut df = synthetic_frame(&s, &donors, 300, &mut rng).expect("frame");
    store_frame(&store, &s, &vault, &mut df, NOW).expect("stored");
    // A second batch with a donor who never consented.
    let mut df2 = synthetic_frame(&s, &[donor(42).to_hex()], 5, &mut rng).expect("frame");
    store_frame(&store, &s, &vault, &mut df2, NOW + 1).expect("stored");

    let v = [l.verifier().expect("v")];
    let clean = audit_batches(
        &verify_ledger_index(&l, &v, None).expect("v"),
        &store,
        &vault,
        &s.id,
    )
    .expect("audit");
    assert_eq!(clean.batches, 2);
    assert_eq!(clean.rows, 305);
    assert_eq!(clean.donors, 7);
    assert_eq!(clean.violations.len(), 1);
    // Their rows name a consent record the ledger does not know.
    assert_eq!(clean.violations[0].kind, BatchViolationKind::UnknownRecord);
    assert_eq!(clean.violations[0].pseudonym, Some(donor(42)));

    // Donor 3 withdraws and is logged as erased, but the batch still holds their rows.
    l.push(&withdraw(&s, donor(3), NOW + 100));
    l.push(&erased(&s, 3, NOW + 200));
    let index = verify_ledger_index(&l, &v, None).expect("v");
    let r = audit_batches(&index, &store, &vault, &s.id).expect("audit");
    assert_eq!(r.violations.len(), 2);
    let bad = r
        .violations
        .iter()
        .find(|x| x.pseudonym == Some(donor(3)))
        .expect("erased donor reported");
    assert_eq!(bad.kind, BatchViolationKind::Erased { at: NOW + 200 });
    assert!(bad.rows > 0);
    let text = r.render_text();
    assert!(text.contains(&short_pseudonym(&donor(3))), "{text}");
    assert!(text.contains("2 violations"));
    let html_path = dir.path().join("batches.html");
    write_html(&html_path, &r.to_html()).expect("html");
    let html = std::fs::read_to_string(&html_path).expect("read");
    assert!(html.contains("<dt>Rows</dt><dd>305</dd>"), "{html}");
    assert!(html.contains("<dt>Violations</dt><dd>2</dd>"));

    // The consent timeline of the same log.
    let c = audit_consents(&verify_ledger(&l, &v, None).expect("v"), &s.id);
    assert_eq!(c.totals.donors, 6);
    assert_eq!(c.totals.granted, 6);
    assert_eq!(c.totals.withdrawn, 1);
    assert_eq!(c.totals.erased, 1);
    assert_eq!(c.totals.active, 5);
    assert_eq!(c.totals.pending_erasure, 0);
    let html = c.to_html();
    assert!(html.contains("<dt>active</dt><dd>5</dd>"), "{html}");
    assert!(html.contains(&short_pseudonym(&donor(3))));
    assert!(!html.contains(&donor(3).to_hex()));

    // Streamed as the CLI reads it (no entry kept), the same report; donor 4's withdrawal, not
    // yet erased, is pending in both.
    l.push(&withdraw(&s, donor(4), NOW + 300));
    let view = audit_consents(&verify_ledger(&l, &v, None).expect("v"), &s.id);
    let mut fold = ConsentFold::new(&s.id);
    verify_ledger_with(&l, &v, None, &mut |e, verified| fold.add(&e, verified)).expect("v");
    let streamed = fold.finish();
    assert_eq!(streamed, view);
    assert_eq!(
        (streamed.totals.withdrawn, streamed.totals.pending_erasure),
        (2, 1)
    );
    assert_eq!(streamed.timelines.len(), 6);
    assert_eq!(streamed.timelines[0].pseudonym, c.timelines[0].pseudonym);
}

#[test]
fn receipt_is_verified_and_found_in_the_current_log() {
    let s = study();
    let key = SigningKey::generate().expect("key");
    let name = "datadonor.test/ledger";
    let verifier = NoteVerifier::from_key_pair(name, key.key_pair()).expect("verifier");
    let dir = tempfile::tempdir().expect("dir");
    let ledger_path = dir.path().join("ledger.log");
    let cp_path = dir.path().join("checkpoint");

    let mut entries: Vec<Vec<u8>> = (0..4)
        .map(|i| grant(&s, donor(i), &[EPI], NOW + 86_400).to_bytes())
        .collect();
    entries.push(withdraw(&s, donor(2), NOW).to_bytes());
    let write_log = |entries: &[Vec<u8>]| -> (u64, [u8; 32], String) {
        let mut bytes = Vec::new();
        for e in entries {
            bytes.extend(encode_record(e));
        }
        std::fs::write(&ledger_path, bytes).expect("write");
        let log = MerkleLog::from_leaves(entries.iter().map(|b| merkle::leaf_hash(b)));
        let cp = Checkpoint::new(name, log.size(), log.root()).expect("cp");
        let note = checkpoint::sign(&cp, name, key.key_pair())
            .expect("sign")
            .into_bytes();
        std::fs::write(&cp_path, &note).expect("write");
        (
            log.size(),
            log.root().0,
            String::from_utf8(note).expect("utf8"),
        )
    };
    let (size, _, note) = write_log(&entries);
    let log = MerkleLog::from_leaves(entries.iter().map(|b| merkle::leaf_hash(b)));
    let index = 4u64;
    let receipt = Receipt {
        format: 1,
        kind: ReceiptKind::Withdrawal,
        study_id: s.id.clone(),
        pseudonym: donor(2),
        consent_record_id: record_id(donor(2)),
        request_sha256: [1; 32],
        ledger_index: index,
        entry_sha256: merkle::leaf_hash(&entries[4]).0,
        checkpoint: note,
        issued_at: NOW,
    };
    let bundle = ReceiptBundle {
        receipt: receipt.sign(&key),
        entry: entries[4].clone(),
        inclusion_proof: log
            .inclusion_proof(index, size)
            .expect("proof")
            .into_iter()
            .map(|h| HexHash(h.0))
            .collect(),
    };
    // The log grows after the receipt was issued.
    entries.push(grant(&s, donor(9), &[EPI], NOW + 86_400).to_bytes());
    write_log(&entries);
    let source = LocalLedgerFile::new(&ledger_path, Some(&cp_path));

    // The donor client's stored form wraps the bundle.
    let bundle_json = serde_json::to_value(&bundle).expect("json");
    let stored =
        serde_json::json!({"study_id": "t2d-dk", "ledger_index": index, "bundle": bundle_json});
    let stored_path = dir.path().join("receipt.json");
    let stored_bytes = serde_json::to_vec(&stored).expect("json");
    let parsed = parse_receipt_file(&stored_bytes, &stored_path).expect("stored form");
    assert_eq!(parsed, bundle);
    let direct = serde_json::to_vec(&bundle).expect("json");
    assert_eq!(
        parse_receipt_file(&direct, &stored_path).expect("bundle form"),
        bundle
    );

    let ok = audit_receipt(&parsed, &key.public_key(), &verifier, &source, None)
        .expect("receipt audits");
    assert_eq!(ok.current_size, 6);
    assert_eq!(ok.receipt.tree_size, 5);

    // The log rewritten (the receipt's entry replaced) is caught.
    entries[4] = withdraw(&s, donor(3), NOW).to_bytes();
    write_log(&entries);
    assert!(audit_receipt(&parsed, &key.public_key(), &verifier, &source, None).is_err());
}
