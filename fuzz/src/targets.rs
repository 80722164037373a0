//! One function per parser of untrusted bytes. Each takes arbitrary bytes, must never panic,
//! and returns whether the input was accepted all the way through (so a corpus can be checked
//! to reach past the first refusal). The libFuzzer binaries in `fuzz_targets/` call these, and
//! the workspace test `tests/tests/fuzz_corpus.rs` replays the committed corpus and mutations
//! of it through the same functions on a stable toolchain.
//!
//! Keys and studies come from the published vectors in `schemas/vectors/`, so seeds built from
//! those vectors open, verify and validate.

use std::io::Cursor;
use std::sync::OnceLock;

use datadonor_client::import::{self, ImportOptions, SourceItem, SyntheaTable};
use datadonor_client::minimise::{MinimiseOptions, Minimiser};
use datadonor_schemas::batch::BatchHeader;
use datadonor_schemas::bundle::StudyBundle;
use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::consent::{check_manifest, open_manifest, open_withdrawal};
use datadonor_schemas::cosignature::{verify_quorum, AddCheckpointRequest, WitnessKey};
use datadonor_schemas::envelope::{DonationPayload, Envelope, HpkePrivateKey};
use datadonor_schemas::ledger::{decode_ledger_records, LedgerEntry};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::QuerySpec;
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};
use datadonor_schemas::signing::{PublicKey, SignedObject};
use datadonor_schemas::study::{rows_from_ipc, StudyDefinition};
use datadonor_schemas::threshold::{
    blind_input_with_scalar, DonorCredential, EvaluateRequest, InstanceAnswer, PseudonymiserConfig,
};

/// A target: arbitrary bytes in, whether they were accepted all the way through.
pub type Target = fn(&[u8]) -> bool;

/// The targets, by name (the names of `fuzz_targets/*.rs` and of the corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("payload", payload),
    ("manifest", manifest),
    ("withdrawal", withdrawal),
    ("study", study),
    ("query", query),
    ("batch_header", batch_header),
    ("rows", rows),
    ("ledger", ledger),
    ("receipt", receipt),
    ("threshold", threshold),
    ("cosignature", cosignature),
    ("bundle", bundle),
    ("fhir", fhir),
    ("synthea_csv", synthea_csv),
    ("apple_xml", apple_xml),
];

const ENVELOPE_VECTORS: &str = include_str!("../../schemas/vectors/envelope.json");
const MANIFEST_VECTORS: &str = include_str!("../../schemas/vectors/consent-manifest.json");
const RECEIPT_VECTORS: &str = include_str!("../../schemas/vectors/receipt.json");
const THRESHOLD_VECTORS: &str = include_str!("../../schemas/vectors/threshold-oprf.json");
const COSIGNATURE_VECTORS: &str = include_str!("../../schemas/vectors/cosignature.json");
/// Rows per donation accepted by the rows decoder here (the intake's default limit).
const MAX_ROWS: usize = 10_000;

struct Fixture {
    /// (key id, private key) of the envelope vectors' recipients.
    hpke: Vec<(u32, HpkePrivateKey)>,
    /// The study the manifest vectors are for, and the SHA-256 of its signed payload.
    study: StudyDefinition,
    study_sha256: [u8; 32],
    /// "Now" of the manifest vectors.
    now: i64,
    /// Ledger key and checkpoint verifier of the receipt vectors.
    ledger_key: PublicKey,
    verifier: NoteVerifier,
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let env = json(ENVELOPE_VECTORS);
        let mut hpke = Vec::new();
        for k in env["recipient_keys"].as_array()? {
            let id = u32::try_from(k["key_id"].as_u64()?).ok()?;
            let sk = hex::decode(k["private_key_hex"].as_str()?).ok()?;
            hpke.push((id, HpkePrivateKey::from_bytes(&sk).ok()?));
        }
        let man = json(MANIFEST_VECTORS);
        let payload = man["study_payload_text"].as_str()?;
        let study = StudyDefinition::from_json(payload.as_bytes()).ok()?;
        let study_sha256 = ring::digest::digest(&ring::digest::SHA256, payload.as_bytes())
            .as_ref()
            .try_into()
            .ok()?;
        let now = man["valid"][0]["now"].as_i64()?;
        let rec = json(RECEIPT_VECTORS);
        let ledger_key =
            PublicKey::from_base64(rec["keys"]["ledger"]["public_key_b64"].as_str()?).ok()?;
        let verifier = NoteVerifier::parse_vkey(rec["vkey"].as_str()?).ok()?;
        Some(Fixture {
            hpke,
            study,
            study_sha256,
            now,
            ledger_key,
            verifier,
        })
    })
    .as_ref()
}

/// A sealed envelope: parse, open with the vectors' recipient key of its key id, then the
/// payload as [`payload`].
pub fn envelope(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    let Ok(env) = Envelope::parse(data) else {
        return false;
    };
    let Some((_, sk)) = f.hpke.iter().find(|(id, _)| *id == env.key_id) else {
        return false;
    };
    match env.open(sk) {
        Ok(p) => donation(f, &p),
        Err(_) => false,
    }
}

/// An envelope's plaintext: decode, then the manifest (signature, study, purposes, expiry) and
/// the rows (Arrow IPC, schema, ranges, pseudonym) as the intake checks them.
pub fn payload(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    match DonationPayload::decode(data) {
        Ok(p) => donation(f, &p),
        Err(_) => false,
    }
}

fn donation(f: &Fixture, p: &DonationPayload) -> bool {
    let Ok(m) = open_manifest(&p.manifest) else {
        return false;
    };
    let consent_ok = check_manifest(&m.body, &f.study, &f.study_sha256, f.now).is_ok();
    let Ok(batch) = rows_from_ipc(&p.rows, MAX_ROWS) else {
        return false;
    };
    let pseudonym = m.body.pseudonym.to_hex();
    let rows_ok = f.study.validate_rows(&batch, Some(&pseudonym)).is_ok();
    consent_ok && rows_ok
}

/// A signed consent manifest, checked against the vectors' study.
pub fn manifest(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    match open_manifest(data) {
        Ok(m) => check_manifest(&m.body, &f.study, &f.study_sha256, f.now).is_ok(),
        Err(_) => false,
    }
}

/// A signed withdrawal.
pub fn withdrawal(data: &[u8]) -> bool {
    open_withdrawal(data).is_ok()
}

/// A study definition, as TOML (UTF-8) and as JSON; accepted if either form is.
pub fn study(data: &[u8]) -> bool {
    let toml_ok = std::str::from_utf8(data)
        .ok()
        .and_then(|t| StudyDefinition::from_toml(t).ok())
        .is_some_and(|s| s.validate().is_ok() && !s.to_toml().is_empty());
    let json_ok = StudyDefinition::from_json(data).is_ok_and(|s| s.validate().is_ok());
    toml_ok || json_ok
}

/// A researcher's query spec (TOML), hashed and checked against the vectors' study, with the
/// line of the key a refusal names.
pub fn query(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(spec) = QuerySpec::from_toml(text) else {
        return false;
    };
    let _ = spec.hash();
    match spec.check(&f.study) {
        Ok(()) => true,
        Err(e) => {
            // The line a refusal names: must be found (or not) without panicking.
            let _ = datadonor_schemas::query::spec_key_line(text, &e.key);
            false
        }
    }
}

/// The header of a sealed batch file.
pub fn batch_header(data: &[u8]) -> bool {
    match BatchHeader::parse(data) {
        Ok((_, len)) => len <= data.len(),
        Err(_) => false,
    }
}

/// Donated rows (an Arrow IPC stream), validated against the vectors' study.
pub fn rows(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    match rows_from_ipc(data, MAX_ROWS) {
        Ok(batch) => f.study.validate_rows(&batch, None).is_ok(),
        Err(_) => false,
    }
}

/// A ledger file: length-prefixed records, each a ledger entry.
pub fn ledger(data: &[u8]) -> bool {
    let records = decode_ledger_records(data);
    let mut all = records.entries.len() as u64 > 0;
    for e in &records.entries {
        all &= LedgerEntry::from_bytes(e).is_ok();
    }
    let single = LedgerEntry::from_bytes(data).is_ok();
    all || single
}

/// A receipt bundle as the intake returns it, verified against the vectors' ledger key
/// (receipt signature, checkpoint note, inclusion proof, entry).
pub fn receipt(data: &[u8]) -> bool {
    let Some(f) = fixture() else { return false };
    let checkpoint_ok = checkpoint::open(data, std::slice::from_ref(&f.verifier)).is_ok();
    let receipt_ok = ReceiptBundle::from_json(data)
        .is_ok_and(|b| verify_receipt(&b, &f.ledger_key, &f.verifier).is_ok());
    checkpoint_ok || receipt_ok
}

struct ThresholdFixture {
    config: PseudonymiserConfig,
    input: Vec<u8>,
    blind: [u8; 32],
    issuer: PublicKey,
}

fn threshold_fixture() -> Option<&'static ThresholdFixture> {
    static F: OnceLock<Option<ThresholdFixture>> = OnceLock::new();
    F.get_or_init(|| {
        let d = json(THRESHOLD_VECTORS);
        let valid = d["valid"].as_array()?;
        let config = valid
            .iter()
            .find(|v| v["kind"] == "pseudonymiser_config")
            .and_then(|v| v["json_text"].as_str())
            .and_then(|t| PseudonymiserConfig::from_json(t.as_bytes()).ok())?;
        let eval = valid.iter().find(|v| v["kind"] == "threshold_evaluation")?;
        let input = hex::decode(eval["oprf_input_hex"].as_str()?).ok()?;
        let blind = hex::decode(eval["blind_hex"].as_str()?)
            .ok()?
            .try_into()
            .ok()?;
        // Any fixed key will do for credentials: the target checks that parsing and
        // verification of arbitrary bearer values never panic.
        let issuer = config.instances.first()?.public_share;
        Some(ThresholdFixture {
            config,
            input,
            blind,
            issuer: PublicKey(issuer),
        })
    })
    .as_ref()
}

/// What a donor's device parses from a pseudonymiser and what an instance parses from a
/// donor: an instance's answer (then checked against the vectors' configuration for the
/// vectors' blinded element), a configuration, an evaluation request, a credential.
pub fn threshold(data: &[u8]) -> bool {
    let Some(f) = threshold_fixture() else {
        return false;
    };
    let config_ok = PseudonymiserConfig::from_json(data).is_ok();
    let request_ok = EvaluateRequest::from_json(data).is_ok();
    let answer_ok = InstanceAnswer::from_json(data).is_ok_and(|a| {
        blind_input_with_scalar(zeroize::Zeroizing::new(f.input.clone()), f.blind)
            .is_ok_and(|b| b.verify_answer(&f.config, &a).is_ok())
    });
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DonorCredential::verify_bearer(text, &f.issuer, &f.config.config_id, 0);
    }
    config_ok || request_ok || answer_ok
}

/// Runs an importer into the minimiser for the vectors' study; accepted if the import
/// succeeded and yielded at least one item.
///
/// # Panics
///
/// If the minimiser turns the input into rows that the study's own validator refuses: the
/// client would build a donation the intake rejects, which is a bug whatever the input.
fn import_into_minimiser(
    run: impl FnOnce(&mut dyn FnMut(SourceItem) -> Result<(), import::ImportError>) -> bool,
) -> bool {
    let Some(f) = fixture() else { return false };
    let mut m = Minimiser::new(&f.study, MinimiseOptions::default());
    let mut items = 0u64;
    let ok = run(&mut |item| {
        items += 1;
        let _ = m.push(item);
        Ok(())
    });
    let rows = m.finish();
    if !rows.rows.is_empty() {
        let pseudonym = Pseudonym([7; 32]);
        let checked = rows
            .to_record_batch(&pseudonym)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                f.study
                    .validate_rows(&b, Some(&pseudonym.to_hex()))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = checked {
            panic!("minimised rows refused by the study: {e}");
        }
    }
    ok && items > 0
}

/// A FHIR R4 JSON export (a Bundle of any type, or Bulk Data NDJSON).
pub fn fhir(data: &[u8]) -> bool {
    import_into_minimiser(|sink| {
        import::fhir::import_json(
            Cursor::new(data),
            "fuzz.json",
            &ImportOptions::default(),
            sink,
        )
        .is_ok()
    })
}

/// A Synthea CSV table; the first byte picks the table, the rest is the file.
pub fn synthea_csv(data: &[u8]) -> bool {
    let Some((&which, csv)) = data.split_first() else {
        return false;
    };
    let table = SyntheaTable::ALL[usize::from(which) % SyntheaTable::ALL.len()];
    import_into_minimiser(|sink| {
        import::synthea::import_table(
            table,
            Cursor::new(csv),
            table.file_name(),
            &ImportOptions::default(),
            sink,
        )
        .is_ok()
    })
}

/// An Apple Health `export.xml`.
pub fn apple_xml(data: &[u8]) -> bool {
    import_into_minimiser(|sink| {
        import::apple::import_xml(
            Cursor::new(data),
            "export.xml",
            &ImportOptions::default(),
            sink,
        )
        .is_ok()
    })
}

struct CosignatureFixture {
    log: NoteVerifier,
    witnesses: Vec<WitnessKey>,
    quorum: usize,
    max_time: u64,
}

fn cosignature_fixture() -> Option<&'static CosignatureFixture> {
    static F: OnceLock<Option<CosignatureFixture>> = OnceLock::new();
    F.get_or_init(|| {
        let d = json(COSIGNATURE_VECTORS);
        let log = NoteVerifier::parse_vkey(d["vkey"].as_str()?).ok()?;
        let witnesses = d["witnesses"]
            .as_array()?
            .iter()
            .map(|v| v.as_str().and_then(|s| WitnessKey::parse_vkey(s).ok()))
            .collect::<Option<Vec<_>>>()?;
        Some(CosignatureFixture {
            log,
            witnesses,
            quorum: usize::try_from(d["quorum"].as_u64()?).ok()?,
            max_time: d["max_time"].as_u64()?,
        })
    })
    .as_ref()
}

/// What donors, auditors and witnesses parse of witness cosigning: a cosigned checkpoint
/// (verified against the vectors' log key, witnesses and quorum), a tlog-witness
/// `add-checkpoint` request body (its note then opened with the log key), a witness vkey.
pub fn cosignature(data: &[u8]) -> bool {
    let Some(f) = cosignature_fixture() else {
        return false;
    };
    let cosigned = verify_quorum(data, &f.log, &f.witnesses, f.quorum, f.max_time).is_ok();
    let request = AddCheckpointRequest::parse(data)
        .is_ok_and(|r| checkpoint::open(&r.note, std::slice::from_ref(&f.log)).is_ok());
    let vkey = std::str::from_utf8(data).is_ok_and(|s| WitnessKey::parse_vkey(s).is_ok());
    cosigned || request || vkey
}

/// A signed study bundle as a donor's device receives it: signed-object parse, context and
/// signature, the payload, every key in it and the quorum.
pub fn bundle(data: &[u8]) -> bool {
    SignedObject::from_bytes(data).is_ok_and(|o| StudyBundle::open(&o, None).is_ok())
}
