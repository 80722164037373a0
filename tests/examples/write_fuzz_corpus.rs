//! Writes the seed corpus of every fuzz target (`fuzz/corpus/<target>/`), deterministically,
//! from the published vectors in `schemas/vectors/` and the sample exports in `testdata/data/`:
//!
//! ```text
//! cargo run -p datadonor-tests --example write_fuzz_corpus -- fuzz/corpus
//! ```
//!
//! Valid and malformed vector inputs go to the target of their decoder; the FHIR samples are
//! cut to their first entries (small seeds fuzz faster); the Synthea tables to their first rows,
//! prefixed with the byte that selects the table. Inputs that once made a target panic, kept in
//! `fuzz/regressions/<target>/`, are added to that target's corpus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datadonor_schemas::ledger::encode_ledger_record;
use serde_json::Value;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Default)]
struct Corpus(BTreeMap<&'static str, Vec<(String, Vec<u8>)>>);

impl Corpus {
    fn add(&mut self, target: &'static str, name: &str, bytes: Vec<u8>) {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.0.entry(target).or_default().push((name, bytes));
    }
}

fn vectors(root: &Path, file: &str) -> Res<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        root.join("schemas/vectors").join(file),
    )?)?)
}

fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

fn text(v: &Value, key: &str) -> Option<Vec<u8>> {
    v[key].as_str().map(|s| s.as_bytes().to_vec())
}

fn hex_of(v: &Value, key: &str) -> Option<Vec<u8>> {
    v[key].as_str().and_then(|s| hex::decode(s).ok())
}

fn name(v: &Value) -> String {
    v["name"].as_str().unwrap_or("unnamed").to_string()
}

fn from_vectors(root: &Path, c: &mut Corpus) -> Res<()> {
    let th = vectors(root, "threshold-oprf.json")?;
    for v in items(&th, "valid") {
        if let Some(b) = text(v, "json_text") {
            c.add("threshold", &format!("valid-{}", name(v)), b);
        }
        if let Some(b) = text(v, "request_json_text") {
            c.add("threshold", &format!("valid-{}-request", name(v)), b);
        }
        for (i, a) in v["answers"].as_array().into_iter().flatten().enumerate() {
            if let Some(b) = text(a, "answer_json_text") {
                c.add(
                    "threshold",
                    &format!("valid-{}-answer-{}", name(v), i + 1),
                    b,
                );
            }
        }
    }
    for v in items(&th, "malformed") {
        if let Some(b) = text(v, "input_text") {
            c.add("threshold", &format!("bad-{}", name(v)), b);
        }
    }
    let cos = vectors(root, "cosignature.json")?;
    for v in items(&cos, "valid") {
        for k in ["note_text", "request_text"] {
            if let Some(b) = text(v, k) {
                c.add("cosignature", &format!("valid-{}-{k}", name(v)), b);
            }
        }
    }
    for w in cos["witnesses"].as_array().into_iter().flatten() {
        if let Some(s) = w.as_str() {
            c.add("cosignature", "valid-witness-vkey", s.as_bytes().to_vec());
        }
    }
    for v in items(&cos, "malformed") {
        if let Some(b) = text(v, "input_text") {
            c.add("cosignature", &format!("bad-{}", name(v)), b);
        }
    }
    // A study bundle naming the cosignature vectors' log and witnesses, signed with a fixed key,
    // and the same bundle with its quorum out of range.
    {
        use datadonor_schemas::bundle::StudyBundle;
        use datadonor_schemas::signing::SigningKey;
        let witnesses: Vec<String> = cos["witnesses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(String::from))
            .collect();
        let mut bundle = StudyBundle {
            format: 1,
            study_id: datadonor_schemas::study::StudyId::new("t2d-dk")?,
            study_version: 1,
            study_sha256: [0x5d; 32],
            ledger_vkey: cos["vkey"].as_str().ok_or("vkey")?.to_string(),
            witnesses,
            witness_quorum: 2,
        };
        let key = SigningKey::from_seed(&[0x42; 32])?;
        c.add("bundle", "valid-two-of-three", bundle.sign(&key).to_bytes());
        bundle.witness_quorum = 4;
        c.add(
            "bundle",
            "bad-quorum-four-of-three",
            bundle.sign(&key).to_bytes(),
        );
    }
    let env = vectors(root, "envelope.json")?;
    for v in items(&env, "valid") {
        if let Some(b) = hex_of(v, "envelope_hex") {
            c.add("envelope", &format!("valid-{}", name(v)), b);
        }
        if let Some(b) = hex_of(v, "payload_hex") {
            c.add("payload", &format!("valid-{}", name(v)), b);
        }
        if let Some(b) = hex_of(&v["payload_fields"], "rows_hex") {
            c.add("rows", &format!("valid-{}", name(v)), b);
        }
    }
    for v in items(&env, "malformed") {
        let target = match v["decoder"].as_str() {
            Some("Envelope::parse+open") => "envelope",
            Some("DonationPayload::decode") => "payload",
            _ => continue,
        };
        if let Some(b) = hex_of(v, "input_hex") {
            c.add(target, &format!("bad-{}", name(v)), b);
        }
    }
    let simple: [(&str, &'static str, &[&str]); 5] = [
        ("consent-manifest.json", "manifest", &["signed_text"]),
        ("withdrawal.json", "withdrawal", &["signed_text"]),
        (
            "study-definition.json",
            "study",
            &["toml_text", "json_text"],
        ),
        ("query.json", "query", &["toml_text"]),
        ("receipt.json", "receipt", &["bundle_text"]),
    ];
    for (file, target, keys) in simple {
        let d = vectors(root, file)?;
        for v in items(&d, "valid") {
            for k in keys {
                if let Some(b) = text(v, k) {
                    c.add(target, &format!("valid-{}-{k}", name(v)), b);
                }
            }
        }
        for v in items(&d, "malformed") {
            let t = match (target, v["decoder"].as_str()) {
                ("study", Some("rows")) => "rows",
                (t, _) => t,
            };
            if t == "rows" {
                continue; // the rows cases are described, not bytes
            }
            if let Some(b) = text(v, "input_text") {
                c.add(t, &format!("bad-{}", name(v)), b);
            }
        }
    }
    let header = vectors(root, "batch-header.json")?;
    for v in items(&header, "valid") {
        if let Some(b) = hex_of(v, "header_hex") {
            c.add("batch_header", &format!("valid-{}", name(v)), b);
        }
    }
    for v in items(&header, "malformed") {
        if let Some(b) = hex_of(v, "input_hex") {
            c.add("batch_header", &format!("bad-{}", name(v)), b);
        }
    }
    let ledger = vectors(root, "ledger-entry.json")?;
    let mut file = Vec::new();
    for v in items(&ledger, "valid") {
        if let Some(b) = text(v, "entry_text") {
            encode_ledger_record(&b, &mut file);
            c.add("ledger", &format!("valid-{}", name(v)), b);
        }
    }
    c.add("ledger", "valid-ledger-file", file.clone());
    file.truncate(file.len().saturating_sub(7));
    c.add("ledger", "torn-ledger-file", file);
    for v in items(&ledger, "malformed") {
        let target = match v["decoder"].as_str() {
            Some("LedgerEntry::from_bytes") => "ledger",
            Some("checkpoint::open") => "receipt",
            _ => continue,
        };
        if let Some(b) = text(v, "input_text") {
            c.add(target, &format!("bad-{}", name(v)), b);
        }
    }
    Ok(())
}

fn from_samples(testdata: &Path, c: &mut Corpus) -> Res<()> {
    let fhir = testdata.join("data/fhir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fhir)
        .map_err(|e| format!("{}: {e}", fhir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let mut bundle: Value = serde_json::from_slice(&std::fs::read(f)?)?;
        if let Some(entries) = bundle["entry"].as_array_mut() {
            // The patient and the first observations and conditions.
            let keep = |e: &Value, ty: &str| e["resource"]["resourceType"] == ty;
            let mut kept: Vec<Value> = Vec::new();
            for ty in ["Patient", "Observation", "Condition", "MedicationRequest"] {
                kept.extend(entries.iter().filter(|e| keep(e, ty)).take(12).cloned());
            }
            *entries = kept;
        }
        c.add("fhir", &format!("sample-{i}"), serde_json::to_vec(&bundle)?);
        if i == 0 {
            // The same resources as Bulk Data NDJSON.
            let mut nd = Vec::new();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                nd.extend(serde_json::to_vec(&e["resource"])?);
                nd.push(b'\n');
            }
            c.add("fhir", "sample-ndjson", nd);
        }
    }
    for (which, table) in ["patients", "observations", "conditions", "medications"]
        .into_iter()
        .enumerate()
    {
        let path = testdata.join(format!("data/synthea_csv/{table}.csv"));
        let csv = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut seed = vec![which as u8];
        for line in csv.lines().take(40) {
            seed.extend(line.as_bytes());
            seed.push(b'\n');
        }
        c.add("synthea_csv", &format!("sample-{table}"), seed);
    }
    c.add("synthea_csv", "header-only", b"\x01Id,DATE\n".to_vec());
    c.add(
        "synthea_csv",
        "not-csv",
        b"\x02\xff\xfe\x00\x01\n\"".to_vec(),
    );
    let path = testdata.join("data/apple_health/export.xml");
    let apple = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    c.add("apple_xml", "sample-export", apple.clone());
    // The same export without its DTD and with every record in one line.
    let text = String::from_utf8_lossy(&apple);
    let bare: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("<!"))
        .collect::<Vec<_>>()
        .join("");
    c.add("apple_xml", "sample-export-bare", bare.into_bytes());
    Ok(())
}

fn main() -> Res<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_fuzz_corpus <dir>")?,
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let testdata = root.join("testdata");
    let mut c = Corpus::default();
    from_vectors(&root, &mut c)?;
    from_samples(&testdata, &mut c)?;
    // A cut copy of each target's first seed: a refusal every corpus starts with.
    for seeds in c.0.values_mut() {
        if let Some((n, b)) = seeds.first().cloned() {
            seeds.push((format!("cut-{n}"), b[..b.len() / 2].to_vec()));
        }
    }
    // Inputs that once made a target panic (`fuzz/regressions/<target>/`) stay in its corpus.
    let regressions = root.join("fuzz/regressions");
    if let Ok(dirs) = std::fs::read_dir(&regressions) {
        let mut dirs: Vec<PathBuf> = dirs.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let target = d
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let Some((&t, _)) = c.0.iter().find(|(k, _)| **k == target) else {
                return Err(format!("regressions for unknown target {target}").into());
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            files.sort();
            for f in files {
                let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("input");
                c.add(t, &format!("regression-{n}"), std::fs::read(&f)?);
            }
        }
    }
    for (target, seeds) in &c.0 {
        let dir = out.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        for (n, bytes) in seeds {
            std::fs::write(dir.join(n), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
