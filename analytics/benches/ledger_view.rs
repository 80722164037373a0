//! Benchmark: verifying a large consent ledger on the steward's and the auditor's side, as the
//! full view that keeps every entry (`verify_ledger`, what the auditor's reports read) against
//! the streamed fold the query service and compaction use (`verify_ledger_index`), and the
//! streamed `audit log` (entries counted and dropped), in the same run; and the auditor's
//! `audit consents` report (a timeline per donor) built from the full view against built as the
//! ledger streams (`ConsentFold`).
//!
//! ```text
//! cargo bench -p datadonor-analytics --bench ledger_view -- --donors 1000000
//! ```
//!
//! Options: `--donors N` (default 100 000; each donor is a `consent_granted` and a
//! `donation_accepted` entry, 16 donors to a batch, and one `query_run` per 10 000 donors),
//! `--dir PATH` (generate into PATH and keep it; a later run with the same PATH and size reuses
//! it). The ledger is written straight to a ledger file with a signed checkpoint (not donated
//! one by one); generation is not timed. Each variant runs in a child process (this binary
//! re-executed with `--child <variant> <dir>`) that reads and verifies the file and reports its
//! wall time and its own peak RSS (`VmHWM`), so the peaks do not mix; each child then answers
//! the question a run asks (the consent records allowed for the example purpose), so a variant
//! cannot win by skipping the work.

mod child;

use std::path::{Path, PathBuf};
use std::time::Instant;

use child::{arg, run_child, vm_hwm_kib, Res};

use datadonor_analytics::audit::{audit_consents, audit_log, ConsentFold};
use datadonor_analytics::ledger::{
    encode_record, verify_ledger, verify_ledger_index, verify_ledger_with, LocalLedgerFile,
};
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, Frontier};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::{PublicKey, SigningKey};
use datadonor_schemas::study::StudyId;

const ORIGIN: &str = "datadonor.bench/ledger";
const NOW: i64 = 1_750_000_000;
const PURPOSE: &str = "t2d-epidemiology";

fn id16(i: u64, tag: u8) -> [u8; 16] {
    let mut b = [tag; 16];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

fn generate(dir: &Path, donors: u64) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let study = StudyId::new("t2d-dk")?;
    let key = SigningKey::generate()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("ledger.log"))?);
    let mut frontier = Frontier::new();
    let mut push = |e: &LedgerEntry| -> Res<()> {
        let bytes = e.to_bytes();
        frontier.push(merkle::leaf_hash(&bytes));
        std::io::Write::write_all(&mut out, &encode_record(&bytes))?;
        Ok(())
    };
    for i in 0..donors {
        let mut p = [0u8; 32];
        p[..8].copy_from_slice(&i.to_be_bytes());
        let record = id16(i, 0xc0);
        push(&LedgerEntry::ConsentGranted {
            time: NOW - 1000,
            study_id: study.clone(),
            study_version: 1,
            pseudonym: Pseudonym(p),
            consent_record_id: record,
            purposes: vec![PURPOSE.into(), "t2d-care-quality".into()],
            given_at: NOW - 1000,
            expires_at: NOW + 365 * 86_400,
            manifest_sha256: [7; 32],
            donor_public_key: PublicKey(p),
        })?;
        push(&LedgerEntry::DonationAccepted {
            time: NOW - 1000,
            study_id: study.clone(),
            pseudonym: Pseudonym(p),
            consent_record_id: record,
            idempotency_key: id16(i, 0x1d),
            envelope_sha256: [9; 32],
            rows: 24,
            batch_id: hex::encode(id16(i / 16, 0xba)),
        })?;
        if i % 10_000 == 9_999 {
            push(&LedgerEntry::QueryRun {
                time: NOW - 500,
                study_id: study.clone(),
                query_sha256: [1; 32],
                approval_sha256: [2; 32],
                researcher: "researcher@sdu.example".into(),
                purpose: PURPOSE.into(),
                donors_considered: i,
                cells_published: 40,
                cells_suppressed: 2,
                privacy: None,
            })?;
        }
    }
    std::io::Write::flush(&mut out)?;
    drop(out);
    let cp = Checkpoint::new(ORIGIN, frontier.size(), frontier.root())?;
    std::fs::write(
        dir.join("checkpoint"),
        checkpoint::sign(&cp, ORIGIN, key.key_pair())?,
    )?;
    let vkey = NoteVerifier::from_key_pair(ORIGIN, key.key_pair())?;
    std::fs::write(dir.join("ledger.vkey"), vkey.to_vkey())?;
    std::fs::write(dir.join("donors"), donors.to_string())?;
    Ok(())
}

fn child(variant: &str, dir: &Path) -> Res<()> {
    let vkey = NoteVerifier::parse_vkey(std::fs::read_to_string(dir.join("ledger.vkey"))?.trim())?;
    let file = LocalLedgerFile::new(&dir.join("ledger.log"), Some(&dir.join("checkpoint")));
    let study = StudyId::new("t2d-dk")?;
    let state = tempfile::tempdir()?;
    let start = Instant::now();
    let (entries, allowed) = match variant {
        "view" => {
            let view = verify_ledger(&file, &[vkey], Some(state.path()))?;
            let allowed = view.allowed_record_donors(&study, PURPOSE, NOW).len();
            (view.verified.len() as u64, allowed)
        }
        "index" => {
            let index = verify_ledger_index(&file, &[vkey], Some(state.path()))?;
            let allowed = index.allowed_record_donors(&study, PURPOSE, NOW).len();
            (index.entries(), allowed)
        }
        "audit-log" => {
            let a = audit_log(&file, &[vkey], state.path())?;
            (a.counts.values().sum(), 0)
        }
        // The consent report: entries verified, donors in the report.
        "consents-view" => {
            let view = verify_ledger(&file, &[vkey], Some(state.path()))?;
            let report = audit_consents(&view, &study);
            (view.verified.len() as u64, report.timelines.len())
        }
        "consents-streamed" => {
            let mut fold = ConsentFold::new(&study);
            let mut entries = 0u64;
            verify_ledger_with(&file, &[vkey], Some(state.path()), &mut |e, verified| {
                entries += 1;
                fold.add(&e, verified);
            })?;
            let report = fold.finish();
            (entries, report.timelines.len())
        }
        other => return Err(format!("unknown variant {other}").into()),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "secs={secs} hwm_kib={} entries={entries} allowed={allowed}",
        vm_hwm_kib()
    );
    Ok(())
}

struct Measured {
    secs: f64,
    hwm_mib: f64,
    entries: u64,
    allowed: u64,
}

fn measure(variant: &str, dir: &Path) -> Res<Measured> {
    let line = run_child(dir, variant)?;
    Ok(Measured {
        secs: line.field("secs")?,
        hwm_mib: line.field("hwm_kib")? / 1024.0,
        entries: line.field("entries")? as u64,
        allowed: line.field("allowed")? as u64,
    })
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let variant = args.get(i + 1).ok_or("--child needs a variant")?;
        let dir = PathBuf::from(args.get(i + 2).ok_or("--child needs a dir")?);
        return child(variant, &dir);
    }
    let donors = arg(&args, "--donors", 100_000)? as u64;
    let tmp;
    let dir = match args.iter().position(|a| a == "--dir") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--dir needs a path")?),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let have = std::fs::read_to_string(dir.join("donors")).ok();
    if have.as_deref() != Some(donors.to_string().as_str()) {
        let t = Instant::now();
        generate(&dir, donors)?;
        eprintln!(
            "generated {donors} donors in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let size = std::fs::metadata(dir.join("ledger.log"))?.len();
    println!(
        "ledger: {donors} donors, {:.0} MiB of ledger file",
        size as f64 / 1048576.0
    );
    let view = measure("view", &dir)?;
    let index = measure("index", &dir)?;
    let log = measure("audit-log", &dir)?;
    let consents_view = measure("consents-view", &dir)?;
    let consents = measure("consents-streamed", &dir)?;
    if view.entries != index.entries
        || view.allowed != index.allowed
        || log.entries != view.entries
        || consents_view.entries != view.entries
        || consents.entries != view.entries
        || consents.allowed != consents_view.allowed
        || consents.allowed != donors
    {
        return Err("the variants disagree".into());
    }
    println!(
        "entries verified: {}, records allowed: {}",
        view.entries, view.allowed
    );
    println!("variant                            wall s   peak RSS MiB");
    for (name, m) in [
        ("verify_ledger (every entry kept)", &view),
        ("verify_ledger_index (streamed)", &index),
        ("audit log (streamed, counted)", &log),
        ("audit consents (from the view)", &consents_view),
        ("audit consents (streamed)", &consents),
    ] {
        println!("{name:<34} {:>6.2}   {:>8.0}", m.secs, m.hwm_mib);
    }
    println!(
        "index / view: time {:.2}, peak RSS {:.2}; per donor: view {:.0} B, index {:.0} B",
        index.secs / view.secs,
        index.hwm_mib / view.hwm_mib,
        view.hwm_mib * 1048576.0 / donors as f64,
        index.hwm_mib * 1048576.0 / donors as f64,
    );
    println!(
        "audit consents streamed / from the view: time {:.2}, peak RSS {:.2}; per donor {:.0} B",
        consents.secs / consents_view.secs,
        consents.hwm_mib / consents_view.hwm_mib,
        consents.hwm_mib * 1048576.0 / donors as f64,
    );
    Ok(())
}
