//! The protocol's own vectors, `schemas/vectors/*.json`, checked by one parametrised test.
//!
//! For every valid vector the test decodes and verifies it with the crate's public API and
//! asserts every annotated field; for every malformed vector it runs the named decoder and
//! asserts that it fails with exactly the named error variant (nested variants spelled
//! `Outer::Variant(Inner::Variant)`, as in the files). It also pins the file set and the number of
//! vectors per file, so an empty or missing file cannot pass silently. A second test checks that
//! the generator (`examples/write_vectors.rs`) still produces the committed files byte for byte.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use arrow::array::{Array, BooleanArray, Float64Array, RecordBatch, StringArray};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use datadonor_schemas::batch::{chunk_nonce, BatchHeader, CHUNK_SIZE, TAG_LEN, WRAP_INFO};
use datadonor_schemas::bundle::{BundleError, StudyBundle};
use datadonor_schemas::checkpoint::{self, key_hash, CheckpointError, NoteVerifier};
use datadonor_schemas::consent::{check_manifest, open_manifest, open_withdrawal, ConsentError};
use datadonor_schemas::cosignature::{
    self as cosig, AddCheckpointError, AddCheckpointRequest, Cosignature, CosignatureError,
    WitnessKey,
};
use datadonor_schemas::envelope::{
    hpke_open, hpke_seal_with_rng, DonationPayload, Envelope, EnvelopeError, HpkeConfigList,
    HpkePrivateKey,
};
use datadonor_schemas::geo::municipality_of_postcode;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, Hash, MerkleError, ProofAnswer, ProofAnswerError};
use datadonor_schemas::pseudonym::{Cpr, OprfOutput, Pseudonym, PseudonymError};
use datadonor_schemas::query::{check_approval, QueryError, QuerySpec, QUERY_HASH_PREFIX};
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle, ReceiptError};
use datadonor_schemas::signing::{signed_bytes, Context, SignatureError, SignedObject, SigningKey};
use datadonor_schemas::study::{
    age_band_label, age_band_labels, rows_from_ipc, rows_to_ipc, FieldType, Granularity,
    StudyDefinition, StudyError,
};
use datadonor_schemas::threshold::{
    blind_input_with_scalar, combine_points, lagrange_at_zero, AnswerError, ConfigError,
    EvaluateRequest, InstanceAnswer, PseudonymiserConfig, ThresholdBlind, ThresholdError,
};
use datadonor_schemas::WireError;
use rand_core::{CryptoRng, RngCore};
use serde_json::Value;
use voprf::{
    BlindedElement, EvaluationElement, Group, Proof, Ristretto255, VoprfClient, VoprfServer,
};
use zeroize::Zeroizing;

// The generator module is shared with the example; this test uses only `build`.
#[allow(dead_code)]
#[path = "../examples/vector_gen/mod.rs"]
mod vector_gen;

/// Every vector file and its number of (valid, malformed) vectors.
const EXPECTED: [(&str, usize, usize); 14] = [
    ("signed-object.json", 10, 25),
    ("study-definition.json", 8, 67),
    ("consent-manifest.json", 3, 26),
    ("withdrawal.json", 1, 9),
    ("envelope.json", 4, 51),
    ("pseudonym.json", 16, 25),
    ("threshold-oprf.json", 3, 37),
    ("ledger-entry.json", 9, 39),
    ("receipt.json", 2, 19),
    ("query.json", 4, 30),
    ("batch-header.json", 5, 33),
    ("cosignature.json", 3, 18),
    ("proof-answer.json", 6, 25),
    ("study-bundle.json", 2, 18),
];

/// Rows limit when a rows vector names none.
const DEFAULT_MAX_ROWS: usize = 10_000;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run {})", path.display(), vector_gen::GENERATOR));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"))
}

#[test]
fn every_vector_decodes_as_annotated() {
    let mut on_disk: Vec<String> = std::fs::read_dir(vectors_dir())
        .expect("schemas/vectors exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = EXPECTED.iter().map(|(n, _, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "the vector file set changed");

    let mut failures = Vec::new();
    let (mut valid_done, mut malformed_done) = (0usize, 0usize);
    for (name, n_valid, n_malformed) in EXPECTED {
        let file = load(name);
        let valid = file["valid"].as_array().expect("valid array");
        let malformed = file["malformed"].as_array().expect("malformed array");
        assert_eq!(valid.len(), n_valid, "{name}: number of valid vectors");
        assert_eq!(
            malformed.len(),
            n_malformed,
            "{name}: number of malformed vectors"
        );
        let mut names = std::collections::BTreeSet::new();
        for v in valid.iter().chain(malformed) {
            assert!(
                names.insert(s(v, "name")),
                "{name}: duplicate vector name {}",
                s(v, "name")
            );
        }
        for v in valid {
            let r = catch_unwind(AssertUnwindSafe(|| check_valid(&file, v)));
            if r.is_err() {
                failures.push(format!("{name}: valid {}", s(v, "name")));
            }
            valid_done += 1;
        }
        for v in malformed {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let (got, detail) = decode_malformed(&file, v);
                assert_eq!(got, s(v, "expect"), "error variant");
                if let Some(d) = v.get("expect_detail") {
                    assert_eq!(detail.as_deref(), d.as_str(), "error detail");
                }
            }));
            if r.is_err() {
                failures.push(format!("{name}: malformed {}", s(v, "name")));
            }
            malformed_done += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
    let want_valid: usize = EXPECTED.iter().map(|e| e.1).sum();
    let want_malformed: usize = EXPECTED.iter().map(|e| e.2).sum();
    assert_eq!((valid_done, malformed_done), (want_valid, want_malformed));
    assert!(malformed_done >= 60, "too few malformed vectors");
}

#[test]
fn generator_reproduces_the_committed_files() {
    let built = vector_gen::build();
    let names: Vec<&str> = built.iter().map(|f| f.name).collect();
    assert_eq!(names, vector_gen::FILE_NAMES.to_vec());
    for f in built {
        let path = vectors_dir().join(f.name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == f.text,
            "{} differs from the generator's output; run `{}`",
            path.display(),
            vector_gen::GENERATOR
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Small accessors.

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing string member {k:?}"))
}

fn hx(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(s(v, k)).unwrap_or_else(|e| panic!("{k}: {e}"))
}

fn hx32(v: &Value, k: &str) -> [u8; 32] {
    hx(v, k).try_into().expect("32 bytes")
}

fn num(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("missing integer member {k:?}"))
}

fn arr<'a>(v: &'a Value, k: &str) -> &'a Vec<Value> {
    v[k].as_array()
        .unwrap_or_else(|| panic!("missing array member {k:?}"))
}

fn input(v: &Value) -> Vec<u8> {
    if let Some(t) = v.get("input_text") {
        t.as_str().expect("text").as_bytes().to_vec()
    } else if v.get("input_hex").is_some() {
        hx(v, "input_hex")
    } else {
        let r = &v["input_repeat"];
        s(r, "text").repeat(num(r, "count") as usize).into_bytes()
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("UTF-8 input")
}

fn context(label: &str) -> Context {
    Context::ALL
        .into_iter()
        .find(|c| c.label() == label)
        .unwrap_or_else(|| panic!("unknown context {label}"))
}

/// The Ed25519 key of `who` from the file's `keys`, checked against its public half.
fn ed_key(file: &Value, who: &str) -> SigningKey {
    let k = &file["keys"][who];
    let key = SigningKey::from_seed(&hx32(k, "seed_hex")).expect("seed");
    assert_eq!(key.public_key().to_base64(), s(k, "public_key_b64"));
    assert_eq!(hex::encode(key.public_key().0), s(k, "public_key_hex"));
    key
}

fn valid_named<'a>(file: &'a Value, name: &str) -> &'a Value {
    arr(file, "valid")
        .iter()
        .find(|v| s(v, "name") == name)
        .unwrap_or_else(|| panic!("no valid vector {name}"))
}

fn valid_of_kind<'a>(file: &'a Value, kind: &str) -> &'a Value {
    arr(file, "valid")
        .iter()
        .find(|v| s(v, "kind") == kind)
        .unwrap_or_else(|| panic!("no valid vector of kind {kind}"))
}

/// A layout's segments are contiguous from 0, cover `bytes` exactly and match them.
fn check_layout(layout: &Value, bytes: &[u8]) {
    let mut off = 0usize;
    for seg in layout.as_array().expect("layout array") {
        assert_eq!(
            num(seg, "offset") as usize,
            off,
            "segment {}",
            s(seg, "field")
        );
        let len = num(seg, "len") as usize;
        assert_eq!(
            hex::encode(&bytes[off..off + len]),
            s(seg, "hex"),
            "segment {}",
            s(seg, "field")
        );
        off += len;
    }
    assert_eq!(off, bytes.len(), "layout covers every byte");
}

/// The annotated fields name exactly the members of `body`, with its values, in wire order.
fn check_fields(fields: &Value, body_json: &[u8]) {
    let body: Value = serde_json::from_slice(body_json).expect("body is JSON");
    let map = body.as_object().expect("object");
    let fields = fields.as_array().expect("fields array");
    assert_eq!(fields.len(), map.len(), "every member is annotated");
    let mut last = 0usize;
    let wire = text(body_json);
    for f in fields {
        let name = s(f, "name");
        assert_eq!(map.get(name), Some(&f["value"]), "field {name}");
        let pos = wire
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} in wire"));
        assert!(pos >= last, "field {name} out of wire order");
        last = pos;
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().try_into().expect("32 bytes")
}

/// Yields exactly the given bytes (an HPKE `ikmE`), then refuses.
struct FixedRng(Vec<u8>);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("only fill_bytes is used")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("only fill_bytes is used")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(dest.len() <= self.0.len(), "the seal drew more than ikmE");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

fn study_of(file: &Value) -> (StudyDefinition, [u8; 32]) {
    let payload = s(file, "study_payload_text").as_bytes();
    (
        StudyDefinition::from_json(payload).expect("study"),
        sha256(payload),
    )
}

fn example_study() -> (StudyDefinition, Value) {
    let file = load("study-definition.json");
    let v = valid_of_kind(&file, "study").clone();
    (
        StudyDefinition::from_json(s(&v, "json_text").as_bytes()).expect("study"),
        v,
    )
}

// ---------------------------------------------------------------------------------------------
// Error names.

type Named = (String, Option<String>);

fn variant<E: Debug>(e: &E) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default()
        .to_string()
}

fn plain<E: Debug>(ty: &str, e: &E) -> Named {
    (format!("{ty}::{}", variant(e)), None)
}

fn wrap(outer: &str, var: &str, inner: Named) -> Named {
    (format!("{outer}::{var}({})", inner.0), inner.1)
}

fn wire(e: &WireError) -> Named {
    let detail = match e {
        WireError::Truncated(f) | WireError::Encoding(f) => Some(f.to_string()),
        WireError::TooLarge { field, .. } | WireError::Unexpected { field, .. } => {
            Some(field.to_string())
        }
        _ => None,
    };
    (format!("WireError::{}", variant(e)), detail)
}

fn sig(e: &SignatureError) -> Named {
    match e {
        SignatureError::Malformed(w) => wrap("SignatureError", "Malformed", wire(w)),
        _ => plain("SignatureError", e),
    }
}

fn consent(e: &ConsentError) -> Named {
    match e {
        ConsentError::Signature(x) => wrap("ConsentError", "Signature", sig(x)),
        ConsentError::FieldMismatch(f) => {
            ("ConsentError::FieldMismatch".into(), Some(f.to_string()))
        }
        ConsentError::UnknownPurpose(p) => ("ConsentError::UnknownPurpose".into(), Some(p.clone())),
        _ => plain("ConsentError", e),
    }
}

fn study_err(e: &StudyError) -> Named {
    match e {
        StudyError::Malformed(w) => wrap("StudyError", "Malformed", wire(w)),
        StudyError::Ipc(m) => ("StudyError::Ipc".into(), Some(m.clone())),
        StudyError::BadValue { row, field, .. } => (
            "StudyError::BadValue".into(),
            Some(format!("row {row}, field {field}")),
        ),
        _ => plain("StudyError", e),
    }
}

fn envelope_err(e: &EnvelopeError) -> Named {
    match e {
        EnvelopeError::Malformed(w) => wrap("EnvelopeError", "Malformed", wire(w)),
        EnvelopeError::UnknownKeyId(id) => {
            ("EnvelopeError::UnknownKeyId".into(), Some(id.to_string()))
        }
        _ => plain("EnvelopeError", e),
    }
}

fn query_err(e: &QueryError) -> Named {
    match e {
        QueryError::Signature(x) => wrap("QueryError", "Signature", sig(x)),
        _ => plain("QueryError", e),
    }
}

fn receipt_err(e: &ReceiptError) -> Named {
    match e {
        ReceiptError::Malformed(w) => wrap("ReceiptError", "Malformed", wire(w)),
        ReceiptError::Signature(x) => wrap("ReceiptError", "Signature", sig(x)),
        ReceiptError::Checkpoint(c) => {
            wrap("ReceiptError", "Checkpoint", plain("CheckpointError", c))
        }
        ReceiptError::Inclusion(m) => wrap("ReceiptError", "Inclusion", plain("MerkleError", m)),
        ReceiptError::Mismatch(f) => ("ReceiptError::Mismatch".into(), Some(f.to_string())),
        _ => plain("ReceiptError", e),
    }
}

fn bundle_err(e: &BundleError) -> Named {
    match e {
        BundleError::Signature(inner) => wrap("BundleError", "Signature", sig(inner)),
        _ => plain("BundleError", e),
    }
}

/// The study of study-bundle.json (signed by the file's steward key) and its payload digest.
fn bundle_study(file: &Value) -> (StudyDefinition, [u8; 32]) {
    let payload = s(file, "study_payload_text").as_bytes();
    let study = StudyDefinition::from_json(payload).expect("study");
    (study, sha256(payload))
}

fn must_fail<T, E>(r: Result<T, E>, name: impl Fn(&E) -> Named) -> Named {
    match r {
        Ok(_) => ("<accepted>".into(), None),
        Err(e) => name(&e),
    }
}

fn cp_err(e: &CheckpointError) -> Named {
    plain("CheckpointError", e)
}

fn cosig_err(e: &CosignatureError) -> Named {
    match e {
        CosignatureError::Checkpoint(c) => wrap("CosignatureError", "Checkpoint", cp_err(c)),
        _ => plain("CosignatureError", e),
    }
}

fn witness_keys(file: &Value) -> Vec<WitnessKey> {
    arr(file, "witnesses")
        .iter()
        .map(|w| WitnessKey::parse_vkey(w.as_str().expect("vkey")).expect("witness vkey"))
        .collect()
}

fn quorum_of(file: &Value, note: &[u8]) -> Result<(Vec<usize>, u64), CosignatureError> {
    let (cp, found) = cosig::verify_quorum(
        note,
        &ledger_verifier(file),
        &witness_keys(file),
        num(file, "quorum") as usize,
        num(file, "max_time") as u64,
    )?;
    Ok((found.iter().map(|f| f.witness).collect(), cp.size))
}

fn check_cosigned(file: &Value, v: &Value) {
    let note = s(v, "note_text");
    let (witnesses, size) = quorum_of(file, note.as_bytes()).expect("quorum verifies");
    let want: Vec<usize> = arr(v, "expect_witnesses")
        .iter()
        .map(|w| w.as_u64().expect("index") as usize)
        .collect();
    assert_eq!(witnesses, want);
    assert!(note.starts_with(s(v, "body_text")));
    assert_eq!(
        size.to_string(),
        s(v, "body_text").split('\n').nth(1).expect("size")
    );
    let keys = witness_keys(file);
    for c in arr(v, "cosignatures") {
        let i = num(c, "witness") as usize;
        let key = &keys[i];
        let label = format!("witness-{}", i + 1);
        let signer = ed_key(file, &label);
        assert_eq!(key.public_key(), &signer.public_key().0);
        assert_eq!(key.to_vkey(), s(c, "vkey"));
        assert_eq!(key.name(), s(c, "name"));
        assert_eq!(sha256(&hx(c, "key_hash_input_hex"))[..4], key.key_hash());
        let line = s(c, "signature_line");
        assert!(note.contains(line));
        let parsed = Cosignature::parse_line(line).expect("line");
        assert_eq!(parsed.timestamp as i64, num(c, "timestamp"));
        let field = line.trim_end().rsplit(' ').next().expect("field");
        let raw = STANDARD.decode(field).expect("base64");
        check_layout(&c["signature_field_layout"], &raw);
        let msg = s(c, "signed_message_text");
        assert_eq!(
            msg,
            format!(
                "cosignature/v1\ntime {}\n{}",
                parsed.timestamp,
                s(v, "body_text")
            )
        );
        signer
            .public_key()
            .verify_raw(msg.as_bytes(), &raw[12..])
            .expect("Ed25519 over the signed message");
        let resigned = cosig::WitnessSigner::new(key.name(), signer)
            .expect("signer")
            .cosign(s(v, "body_text"), parsed.timestamp)
            .expect("cosign");
        assert_eq!(resigned.to_line(), line, "cosigning is deterministic");
    }
}

fn check_add_checkpoint(v: &Value) {
    let req = AddCheckpointRequest::parse(s(v, "request_text").as_bytes()).expect("request");
    assert_eq!(req.old_size as i64, num(v, "old_size"));
    let want: Vec<String> = arr(v, "proof")
        .iter()
        .map(|p| p.as_str().expect("hex").to_string())
        .collect();
    assert_eq!(
        req.proof.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(req.note, s(v, "note_text").as_bytes());
    assert_eq!(req.to_bytes(), s(v, "request_text").as_bytes());
}

/// The leaf hashes and the roots of sizes 1.. of a proof-answer file's tree, the roots checked
/// against the leaves.
fn answer_tree(file: &Value) -> (Vec<Hash>, Vec<Hash>) {
    let t = &file["tree"];
    let leaves: Vec<Hash> = arr(t, "leaf_hashes")
        .iter()
        .map(|l| {
            Hash::from_slice(&hex::decode(l.as_str().expect("hex")).expect("hex")).expect("32")
        })
        .collect();
    let roots: Vec<Hash> = arr(t, "roots")
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(num(r, "size") as usize, i + 1);
            let root = merkle::root(&leaves[..=i]);
            assert_eq!(root.to_hex(), s(r, "root_hex"));
            root
        })
        .collect();
    (leaves, roots)
}

fn check_proof_answer(file: &Value, v: &Value) {
    let (leaves, roots) = answer_tree(file);
    let text = s(v, "answer_text");
    let a = ProofAnswer::from_json(text.as_bytes()).expect("answer parses");
    let want: Vec<String> = arr(v, "proof")
        .iter()
        .map(|p| p.as_str().expect("hex").to_string())
        .collect();
    assert_eq!(a.proof.iter().map(Hash::to_hex).collect::<Vec<_>>(), want);
    if !text.contains(' ') {
        assert_eq!(a.to_json(), text.as_bytes(), "the intake's compact form");
    }
    if s(v, "kind") == "inclusion-answer" {
        let (i, size) = (num(v, "leaf_index") as usize, num(v, "tree_size") as usize);
        assert_eq!(leaves[i].to_hex(), s(v, "leaf_hash_hex"));
        assert_eq!(roots[size - 1].to_hex(), s(v, "root_hex"));
        assert_eq!(
            a.proof,
            merkle::inclusion_proof(&leaves[..size], i as u64).expect("proof")
        );
        merkle::verify_inclusion(
            i as u64,
            size as u64,
            &leaves[i].0,
            &a.proof,
            &roots[size - 1].0,
        )
        .expect("inclusion verifies");
    } else {
        let (a1, a2) = (num(v, "size1") as usize, num(v, "size2") as usize);
        assert_eq!(roots[a1 - 1].to_hex(), s(v, "root1_hex"));
        assert_eq!(roots[a2 - 1].to_hex(), s(v, "root2_hex"));
        assert_eq!(
            a.proof,
            merkle::consistency_proof(&leaves[..a2], a1 as u64).expect("proof")
        );
        merkle::verify_consistency(
            a1 as u64,
            a2 as u64,
            &a.proof,
            &roots[a1 - 1].0,
            &roots[a2 - 1].0,
        )
        .expect("consistency verifies");
    }
}

/// `ProofAnswerError::Variant`, the element's index as the detail.
fn proof_answer_err(e: &ProofAnswerError) -> Named {
    match e {
        ProofAnswerError::Malformed(w) => wrap("ProofAnswerError", "Malformed", wire(w)),
        ProofAnswerError::BadHex { index } | ProofAnswerError::WrongLength { index, .. } => (
            format!("ProofAnswerError::{}", variant(e)),
            Some(index.to_string()),
        ),
        _ => plain("ProofAnswerError", e),
    }
}

fn merkle_err(e: &MerkleError) -> Named {
    plain("MerkleError", e)
}

fn pseudo_err(e: &PseudonymError) -> Named {
    plain("PseudonymError", e)
}

/// `AnswerError::Variant`, the instance index as the detail.
fn answer_err(e: &AnswerError) -> Named {
    (
        format!("AnswerError::{}", variant(e)),
        Some(e.index().to_string()),
    )
}

/// An answer error as the vectors list it: `AnswerError::BadProof(1)`.
fn answer_text(e: &AnswerError) -> String {
    format!("AnswerError::{e:?}")
}

fn config_err(e: &ConfigError) -> Named {
    match e {
        ConfigError::Wire(w) => wrap("ConfigError", "Wire", wire(w)),
        ConfigError::Invalid(m) => ("ConfigError::Invalid".into(), Some(m.clone())),
        ConfigError::InconsistentShare(i) => {
            ("ConfigError::InconsistentShare".into(), Some(i.to_string()))
        }
        _ => plain("ConfigError", e),
    }
}

fn threshold_err(e: &ThresholdError) -> Named {
    match e {
        ThresholdError::NotEnoughAnswers {
            valid,
            needed,
            rejected,
        } => {
            let r: Vec<String> = rejected.iter().map(answer_text).collect();
            (
                "ThresholdError::NotEnoughAnswers".into(),
                Some(format!(
                    "valid {valid}, needed {needed}, rejected [{}]",
                    r.join(", ")
                )),
            )
        }
        ThresholdError::Config(c) => wrap("ThresholdError", "Config", config_err(c)),
        _ => plain("ThresholdError", e),
    }
}

fn proof(v: &Value, k: &str) -> Vec<Vec<u8>> {
    arr(v, k)
        .iter()
        .map(|p| hex::decode(p.as_str().expect("hex")).expect("hex"))
        .collect()
}

fn hpke_key_of(k: &Value, private: &str) -> HpkePrivateKey {
    let sk = HpkePrivateKey::from_bytes(&hx(k, private)).expect("key");
    assert_eq!(hex::encode(sk.public_key().0), s(k, "public_key_hex"));
    sk
}

fn ledger_verifier(file: &Value) -> NoteVerifier {
    let vkey = match file.get("vkey") {
        Some(v) => v.as_str().expect("vkey").to_string(),
        None => s(valid_of_kind(file, "checkpoint"), "vkey").to_string(),
    };
    NoteVerifier::parse_vkey(&vkey).expect("vkey")
}

// ---------------------------------------------------------------------------------------------
// Malformed vectors: run the named decoder, name its error.

fn decode_malformed(file: &Value, v: &Value) -> Named {
    let decoder = s(v, "decoder");
    match decoder {
        "SignedObject::from_bytes+verify" => must_fail(
            SignedObject::from_bytes(&input(v)).and_then(|o| o.verify(context(s(v, "verify_as")))),
            sig,
        ),
        "StudyDefinition::from_json" => must_fail(StudyDefinition::from_json(&input(v)), study_err),
        "StudyDefinition::from_toml" => {
            must_fail(StudyDefinition::from_toml(text(&input(v))), study_err)
        }
        "signed-study" => {
            let obj = match SignedObject::from_bytes(&input(v))
                .and_then(|o| o.verify(Context::StudyDefinition).map(|_| o))
            {
                Ok(o) => o,
                Err(e) => return sig(&e),
            };
            must_fail(StudyDefinition::from_json(&obj.payload), study_err)
        }
        "rows" => {
            let study =
                StudyDefinition::from_json(s(valid_of_kind(file, "study"), "json_text").as_bytes())
                    .expect("study");
            let max = v
                .get("max_rows")
                .map_or(DEFAULT_MAX_ROWS, |m| m.as_u64().expect("n") as usize);
            must_fail(
                rows_from_ipc(&input(v), max)
                    .and_then(|b| study.validate_rows(&b, Some(s(v, "pseudonym")))),
                study_err,
            )
        }
        "open_manifest+check_manifest" => {
            let (study, sha) = study_of(file);
            must_fail(
                open_manifest(&input(v))
                    .and_then(|m| check_manifest(&m.body, &study, &sha, num(v, "now"))),
                consent,
            )
        }
        "open_withdrawal" => must_fail(open_withdrawal(&input(v)), consent),
        "StudyBundle::open" => must_fail(
            SignedObject::from_bytes(&input(v))
                .map_err(BundleError::from)
                .and_then(|o| StudyBundle::open(&o, None)),
            bundle_err,
        ),
        "StudyBundle::open+check_study+check_ledger" => {
            let (study, sha) = bundle_study(file);
            let steward = ed_key(file, "steward").public_key();
            let ledger = ed_key(file, "ledger").public_key();
            must_fail(
                SignedObject::from_bytes(&input(v))
                    .map_err(BundleError::from)
                    .and_then(|o| StudyBundle::open(&o, None))
                    .and_then(|b| {
                        b.check_study(&study, &sha, &steward)?;
                        b.check_ledger(&ledger)
                    }),
                bundle_err,
            )
        }
        "Envelope::parse+open" => {
            let bytes = input(v);
            let r = Envelope::parse(&bytes).and_then(|env| {
                let k = arr(file, "recipient_keys")
                    .iter()
                    .find(|k| num(k, "key_id") == i64::from(env.key_id))
                    .ok_or(EnvelopeError::UnknownKeyId(env.key_id))?;
                env.open(&hpke_key_of(k, "private_key_hex"))
            });
            must_fail(r, envelope_err)
        }
        "DonationPayload::decode" => must_fail(DonationPayload::decode(&input(v)), envelope_err),
        "HpkeConfigList::from_json+current" => must_fail(
            HpkeConfigList::from_json(&input(v)).and_then(|l| l.current()),
            envelope_err,
        ),
        "Cpr::parse" => must_fail(Cpr::parse(text(&input(v))), pseudo_err),
        "threshold::blind_input_with_scalar" => {
            let cpr = Cpr::parse("0101901234").expect("cpr");
            let scalar: [u8; 32] = input(v).try_into().expect("32-byte scalar");
            must_fail(
                blind_input_with_scalar(cpr.oprf_input(), scalar),
                threshold_err,
            )
        }
        "Pseudonym::from_hex" => match Pseudonym::from_hex(text(&input(v))) {
            Some(_) => ("<accepted>".into(), None),
            None => ("None".into(), None),
        },
        "InstanceAnswer::from_json+ThresholdBlind::verify_answer" => {
            let (config, tb) = threshold_context(file);
            match InstanceAnswer::from_json(&input(v)) {
                Err(e) => wire(&e),
                Ok(a) => must_fail(tb.verify_answer(&config, &a), answer_err),
            }
        }
        "ThresholdBlind::combine" => {
            let (config, tb) = threshold_context(file);
            let answers: Vec<InstanceAnswer> =
                serde_json::from_slice(&input(v)).expect("a JSON array of answers");
            must_fail(tb.combine(&config, &answers, Vec::new()), threshold_err)
        }
        "PseudonymiserConfig::from_json" => {
            must_fail(PseudonymiserConfig::from_json(&input(v)), config_err)
        }
        "EvaluateRequest::from_json" => must_fail(EvaluateRequest::from_json(&input(v)), wire),
        "LedgerEntry::from_bytes" => must_fail(LedgerEntry::from_bytes(&input(v)), wire),
        "checkpoint::open" => must_fail(
            checkpoint::open(&input(v), &[ledger_verifier(file)]),
            cp_err,
        ),
        "NoteVerifier::parse_vkey" => must_fail(NoteVerifier::parse_vkey(text(&input(v))), cp_err),
        "cosignature::verify_quorum" => must_fail(quorum_of(file, &input(v)), cosig_err),
        "WitnessKey::parse_vkey" => must_fail(WitnessKey::parse_vkey(text(&input(v))), cosig_err),
        "AddCheckpointRequest::parse" => must_fail(
            AddCheckpointRequest::parse(&input(v)),
            |e: &AddCheckpointError| plain("AddCheckpointError", e),
        ),
        "merkle::verify_inclusion" => must_fail(
            merkle::verify_inclusion(
                num(v, "leaf_index") as u64,
                num(v, "tree_size") as u64,
                &hx(v, "leaf_hash_hex"),
                &proof(v, "proof"),
                &hx(v, "root_hex"),
            ),
            merkle_err,
        ),
        "merkle::verify_consistency" => must_fail(
            merkle::verify_consistency(
                num(v, "size1") as u64,
                num(v, "size2") as u64,
                &proof(v, "proof"),
                &hx(v, "root1_hex"),
                &hx(v, "root2_hex"),
            ),
            merkle_err,
        ),
        "ProofAnswer::from_json+merkle::verify_inclusion" => {
            let (leaves, roots) = answer_tree(file);
            let (i, size) = (num(v, "leaf_index") as usize, num(v, "tree_size") as usize);
            match ProofAnswer::from_json(&input(v)) {
                Err(e) => proof_answer_err(&e),
                Ok(a) => must_fail(
                    merkle::verify_inclusion(
                        i as u64,
                        size as u64,
                        &leaves[i].0,
                        &a.proof,
                        &roots[size - 1].0,
                    ),
                    merkle_err,
                ),
            }
        }
        "ProofAnswer::from_json+merkle::verify_consistency" => {
            let (_, roots) = answer_tree(file);
            let (a1, a2) = (num(v, "size1") as usize, num(v, "size2") as usize);
            match ProofAnswer::from_json(&input(v)) {
                Err(e) => proof_answer_err(&e),
                Ok(a) => must_fail(
                    merkle::verify_consistency(
                        a1 as u64,
                        a2 as u64,
                        &a.proof,
                        &roots[a1 - 1].0,
                        &roots[a2 - 1].0,
                    ),
                    merkle_err,
                ),
            }
        }
        "ReceiptBundle::from_json+verify_receipt" => {
            let ledger = ed_key(file, "ledger").public_key();
            let verifier = ledger_verifier(file);
            must_fail(
                ReceiptBundle::from_json(&input(v))
                    .and_then(|b| verify_receipt(&b, &ledger, &verifier)),
                receipt_err,
            )
        }
        "QuerySpec::from_toml" => must_fail(QuerySpec::from_toml(text(&input(v))), query_err),
        "QuerySpec::from_toml+validate" => {
            let (study, _) = study_of(file);
            must_fail(
                QuerySpec::from_toml(text(&input(v))).and_then(|q| q.validate(&study)),
                query_err,
            )
        }
        "check_approval" => {
            let approver = ed_key(file, "approver").public_key();
            let obj = SignedObject::from_bytes(&input(v)).expect("approval wire form parses");
            let spec = QuerySpec::from_toml(s(v, "spec_toml")).expect("spec");
            must_fail(
                check_approval(
                    &obj,
                    &spec,
                    &[approver],
                    num(v, "now"),
                    num(v, "runs_so_far") as u64,
                ),
                query_err,
            )
        }
        "BatchHeader::parse" => must_fail(BatchHeader::parse(&input(v)), wire),
        "sealed batch open" => {
            let base = valid_named(file, s(v, "base"));
            let mut bytes = sealed_file_bytes(base);
            let hl = num(valid_named(file, "header-small"), "header_len") as usize;
            let m = &v["mutation"];
            match s(m, "op") {
                "truncate" => bytes.truncate(num(m, "len") as usize),
                "xor" => bytes[num(m, "offset") as usize] ^= num(m, "mask") as u8,
                "append" => bytes.extend(hx(m, "hex")),
                "swap_chunks" => {
                    let c = CHUNK_SIZE + TAG_LEN;
                    let (a, b) = (num(m, "a") as usize, num(m, "b") as usize);
                    let ca = bytes[hl + a * c..hl + (a + 1) * c].to_vec();
                    let cb = bytes[hl + b * c..hl + (b + 1) * c].to_vec();
                    bytes[hl + a * c..hl + (a + 1) * c].copy_from_slice(&cb);
                    bytes[hl + b * c..hl + (b + 1) * c].copy_from_slice(&ca);
                }
                "replace_header" => {
                    let other = hx(valid_named(file, s(m, "from")), "header_hex");
                    bytes.splice(..other.len(), other);
                }
                op => panic!("unknown mutation {op}"),
            }
            let vault = hpke_key_of(&file["vault_key"], "private_key_hex");
            match open_batch(&bytes, &vault) {
                Ok(_) => ("<accepted>".into(), None),
                Err(e) => (e, None),
            }
        }
        other => panic!("unknown decoder {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Valid vectors: decode, verify, compare every annotated field.

fn check_valid(file: &Value, v: &Value) {
    match s(v, "kind") {
        "signed-object" => check_signed_object(file, v),
        "study" => check_study(file, v),
        "rows" => check_rows(v),
        "age_band_labels" => {
            for c in arr(v, "cases") {
                let labels: Vec<String> =
                    serde_json::from_value(c["labels"].clone()).expect("labels");
                assert_eq!(
                    age_band_labels(
                        num(c, "years") as u8,
                        num(c, "min_age") as u8,
                        num(c, "top_age") as u8
                    ),
                    labels
                );
            }
        }
        "age_band" => {
            for c in arr(v, "cases") {
                let got = age_band_label(
                    num(c, "age") as u8,
                    num(c, "years") as u8,
                    num(c, "min_age") as u8,
                    num(c, "top_age") as u8,
                );
                assert_eq!(got.as_deref(), c["label"].as_str(), "age {}", c["age"]);
            }
        }
        "period_of" => {
            for c in arr(v, "cases") {
                let date: jiff::civil::Date = s(c, "date").parse().expect("date");
                assert_eq!(
                    granularity(s(c, "granularity")).period_of(date),
                    s(c, "period")
                );
            }
        }
        "period_valid" => {
            for c in arr(v, "cases") {
                assert_eq!(
                    granularity(s(c, "granularity")).is_valid_period(s(c, "period")),
                    c["valid"].as_bool().expect("bool"),
                    "period {}",
                    s(c, "period")
                );
            }
        }
        "residence" => {
            for c in arr(v, "cases") {
                let m = municipality_of_postcode(s(c, "postcode"));
                assert_eq!(m.map(|m| i64::from(m.code)), c["municipality"].as_i64());
                assert_eq!(m.map(|m| m.region.label()), c["region"].as_str());
            }
        }
        "manifest" => check_manifest_vector(file, v),
        "withdrawal" => {
            let donor = ed_key(file, "donor").public_key();
            let w = open_withdrawal(s(v, "signed_text").as_bytes()).expect("opens");
            assert_eq!(w.signer, donor);
            assert_eq!(w.object.payload, s(v, "payload_text").as_bytes());
            assert_eq!(hex::encode(w.digest()), s(v, "payload_sha256_hex"));
            check_fields(&v["fields"], &w.object.payload);
        }
        "envelope" => check_envelope(file, v),
        "study-bundle" => {
            let steward = ed_key(file, "steward").public_key();
            let ledger = ed_key(file, "ledger").public_key();
            let (study, sha) = bundle_study(file);
            let obj = SignedObject::from_bytes(s(v, "signed_text").as_bytes()).expect("parses");
            let b = StudyBundle::open(&obj, Some(&steward)).expect("opens");
            b.check_study(&study, &sha, &steward)
                .expect("for the study");
            b.check_ledger(&ledger).expect("names the ledger key");
            assert_eq!(b.ledger.to_vkey(), s(file, "ledger_vkey"));
            assert_eq!(b.witnesses.len() as i64, num(v, "witness_count"));
            assert_eq!(b.signed.object.payload, s(v, "payload_text").as_bytes());
            assert_eq!(hex::encode(b.signed.digest()), s(v, "payload_sha256_hex"));
            check_fields(&v["fields"], &b.signed.object.payload);
        }
        "hpke_config_list" => {
            let l = HpkeConfigList::from_json(s(v, "json_text").as_bytes()).expect("parses");
            let (id, pk) = l.current().expect("current");
            assert_eq!(i64::from(id), num(v, "current_key_id"));
            assert_eq!(hex::encode(pk.0), s(v, "current_public_key_hex"));
        }
        "cpr" => {
            let c = Cpr::parse(s(v, "input")).expect("valid CPR");
            assert_eq!(c.digits(), s(v, "digits"));
            let d = c.birth_date().expect("date");
            assert_eq!(
                format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
                s(v, "birth_date")
            );
            assert_eq!(hex::encode(c.oprf_input()), s(v, "oprf_input_hex"));
        }
        "voprf" => check_voprf(file, v),
        "pseudonymiser_config" => check_config(file, v),
        "threshold_evaluation" => check_threshold(file, v),
        "threshold_rfc9497_evaluation" => check_threshold_rfc9497(v),
        "entry" => {
            let b = s(v, "entry_text").as_bytes();
            let e = LedgerEntry::from_bytes(b).expect("entry parses");
            assert_eq!(e.to_bytes(), b, "re-serialisation is the same bytes");
            assert_eq!(
                hex::encode(LedgerEntry::leaf_hash(b).0),
                s(v, "leaf_hash_hex")
            );
            let mut pre = vec![0u8];
            pre.extend_from_slice(b);
            assert_eq!(hex::encode(sha256(&pre)), s(v, "leaf_hash_hex"));
            check_fields(&v["fields"], b);
            assert_eq!(v["fields"][0]["value"].as_str(), Some(e.kind()));
        }
        "tree" => check_tree(file, v),
        "inclusion-answer" | "consistency-answer" => check_proof_answer(file, v),
        "checkpoint" => check_checkpoint(file, v),
        "cosigned-checkpoint" => check_cosigned(file, v),
        "add-checkpoint-request" => check_add_checkpoint(v),
        "ledger_file" => {
            let bytes = hx(v, "file_hex");
            check_layout(&v["layout"], &bytes);
            let entries: Vec<&Value> = arr(file, "valid")
                .iter()
                .filter(|x| s(x, "kind") == "entry")
                .collect();
            let mut off = 0usize;
            for e in entries {
                let len = u32::from_be_bytes(bytes[off..off + 4].try_into().expect("4")) as usize;
                let entry = &bytes[off + 4..off + 4 + len];
                let leaf = &bytes[off + 4 + len..off + 36 + len];
                assert_eq!(entry, s(e, "entry_text").as_bytes());
                assert_eq!(leaf, merkle::leaf_hash(entry).0);
                off += 36 + len;
            }
            assert_eq!(off, bytes.len());
        }
        "receipt" => {
            let ledger = ed_key(file, "ledger").public_key();
            let b = ReceiptBundle::from_json(s(v, "bundle_text").as_bytes()).expect("parses");
            let r = verify_receipt(&b, &ledger, &ledger_verifier(file)).expect("verifies");
            let want = &v["verified"];
            assert_eq!(r.tree_size as i64, num(want, "tree_size"));
            assert_eq!(hex::encode(r.root), s(want, "root_hex"));
            assert_eq!(r.entry.kind(), s(want, "entry_type"));
            assert_eq!(b.entry, s(v, "entry_text").as_bytes());
            assert_eq!(b.receipt.payload, s(v, "receipt_payload_text").as_bytes());
            check_fields(&v["receipt_fields"], &b.receipt.payload);
        }
        "query" => {
            let (study, _) = example_study();
            let q = QuerySpec::from_toml(s(v, "toml_text")).expect("spec parses");
            q.validate(&study).expect("spec is valid");
            let canon = q.canonical_json();
            assert_eq!(text(&canon), s(v, "canonical_json_text"));
            let reparsed: QuerySpec = serde_json::from_slice(&canon).expect("canonical parses");
            assert_eq!(reparsed.canonical_json(), canon, "canonical form is stable");
            let mut pre = QUERY_HASH_PREFIX.to_vec();
            pre.extend_from_slice(&canon);
            assert_eq!(hex::encode(&pre), s(v, "hash_input_hex"));
            assert_eq!(hex::encode(q.hash()), s(v, "query_sha256_hex"));
            assert_eq!(hex::encode(sha256(&pre)), s(v, "query_sha256_hex"));
            assert_eq!(i64::from(q.effective_k(&study)), num(v, "effective_k"));
            let cols: Vec<String> = q.measures.iter().map(|m| m.column_name()).collect();
            let want: Vec<String> = serde_json::from_value(v["columns"].clone()).expect("columns");
            assert_eq!(cols, want);
        }
        "approval" => {
            let approver = ed_key(file, "approver").public_key();
            let spec = QuerySpec::from_toml(s(valid_named(file, s(v, "query")), "toml_text"))
                .expect("spec");
            let obj = SignedObject::from_bytes(s(v, "signed_text").as_bytes()).expect("parses");
            let a = check_approval(
                &obj,
                &spec,
                &[approver],
                num(v, "now"),
                num(v, "runs_so_far") as u64,
            )
            .expect("approval holds");
            assert_eq!(a.object.payload, s(v, "payload_text").as_bytes());
            assert_eq!(hex::encode(a.digest()), s(v, "payload_sha256_hex"));
            check_fields(&v["fields"], &a.object.payload);
        }
        "header" => {
            let bytes = hx(v, "header_hex");
            let (hd, len) = BatchHeader::parse(&bytes).expect("header parses");
            assert_eq!(len as i64, num(v, "header_len"));
            assert_eq!(len, bytes.len());
            assert_eq!(hd.encode(), bytes);
            check_layout(&v["layout"], &bytes);
            let f = &v["fields"];
            assert_eq!(hex::encode(hd.batch_id), s(f, "batch_id_hex"));
            assert_eq!(hd.batch_id_hex(), s(f, "batch_id_hex"));
            assert_eq!(hd.study_id, s(f, "study_id"));
            assert_eq!(hd.created_at, num(f, "created_at"));
            assert_eq!(i64::from(hd.vault_key_id), num(f, "vault_key_id"));
            assert_eq!(num(f, "chunk_size") as usize, CHUNK_SIZE);
            assert_eq!(hex::encode(hd.enc), s(f, "enc_hex"));
            assert_eq!(hex::encode(hd.wrapped_key), s(f, "wrapped_key_hex"));
            assert_eq!(hex::encode(hd.wrap_aad()), s(v, "wrap_aad_hex"));
            assert_eq!(hd.wrap_aad(), bytes[..bytes.len() - 80]);
            assert_eq!(hex::encode(hd.chunk_aad()), s(v, "chunk_aad_hex"));
            assert_eq!(hd.chunk_aad(), sha256(&bytes));
        }
        "nonces" => {
            for c in arr(v, "cases") {
                let counter = c["counter"].as_u64().expect("u64");
                let last = c["last"].as_bool().expect("bool");
                assert_eq!(hex::encode(chunk_nonce(counter, last)), s(c, "nonce_hex"));
            }
        }
        "sealed_batch" => check_sealed_batch(file, v),
        other => panic!("unknown kind {other}"),
    }
}

fn granularity(g: &str) -> Granularity {
    match g {
        "day" => Granularity::Day,
        "week" => Granularity::Week,
        "month" => Granularity::Month,
        other => panic!("granularity {other}"),
    }
}

fn check_signed_object(file: &Value, v: &Value) {
    let signer = ed_key(file, s(v, "signer"));
    let ctx = context(s(v, "context"));
    let obj = SignedObject::from_bytes(s(v, "wire_text").as_bytes()).expect("wire parses");
    assert_eq!(obj.verify(ctx).expect("verifies"), signer.public_key());
    assert_eq!(obj.context, ctx.label());
    assert_eq!(obj.payload, s(v, "payload_text").as_bytes());
    assert_eq!(
        hex::encode(obj.payload_digest()),
        s(v, "payload_sha256_hex")
    );
    let sb = signed_bytes(ctx, &obj.payload);
    assert_eq!(hex::encode(&sb), s(v, "signed_bytes_hex"));
    check_layout(&v["signed_bytes_layout"], &sb);
    assert_eq!(obj.public_key.to_base64(), s(v, "public_key_b64"));
    assert_eq!(STANDARD.encode(&obj.signature), s(v, "signature_b64"));
    assert_eq!(
        signer.sign(ctx, &obj.payload).to_vec(),
        obj.signature,
        "Ed25519 is deterministic"
    );
    signer
        .public_key()
        .verify_raw(&sb, &obj.signature)
        .expect("the signature covers the signed bytes");
    // The annotated members are those of the compact form.
    check_fields(&v["wire_fields"], &obj.to_bytes());
}

fn check_study(file: &Value, v: &Value) {
    let steward = ed_key(file, s(v, "signed_by")).public_key();
    let from_toml = StudyDefinition::from_toml(s(v, "toml_text")).expect("TOML parses");
    let json = s(v, "json_text").as_bytes();
    let study = StudyDefinition::from_json(json).expect("JSON parses");
    assert_eq!(from_toml, study, "TOML and JSON forms agree");
    assert_eq!(
        serde_json::to_vec(&study).expect("json"),
        json,
        "JSON form is the compact form"
    );
    check_fields(&v["fields"], json);
    assert_eq!(sha256(s(v, "notice_text").as_bytes()), study.notice_sha256);
    let obj = SignedObject::from_bytes(s(v, "signed_text").as_bytes()).expect("signed parses");
    let signed = obj
        .open::<StudyDefinition>(Context::StudyDefinition, "study definition")
        .expect("signature verifies");
    assert_eq!(signed.signer, steward);
    assert_eq!(obj.payload, json);
    assert_eq!(hex::encode(signed.digest()), s(v, "payload_sha256_hex"));
    let schema = study.arrow_schema();
    let cols = arr(v, "arrow_schema");
    assert_eq!(schema.fields().len(), cols.len());
    for (f, c) in schema.fields().iter().zip(cols) {
        assert_eq!(f.name(), s(c, "name"));
        let ty = match f.data_type() {
            arrow::datatypes::DataType::Utf8 => "utf8",
            arrow::datatypes::DataType::Float64 => "float64",
            arrow::datatypes::DataType::Boolean => "bool",
            other => panic!("unexpected type {other:?}"),
        };
        assert_eq!(ty, s(c, "type"), "column {}", f.name());
        assert_eq!(Some(f.is_nullable()), c["nullable"].as_bool());
        if let Some(spec) = study.field(f.name()) {
            match spec.field_type() {
                FieldType::Number { min, max } => {
                    assert_eq!(c["min"].as_f64(), Some(min));
                    assert_eq!(c["max"].as_f64(), Some(max));
                }
                FieldType::Category(vals) => {
                    let want: Vec<String> =
                        serde_json::from_value(c["values"].clone()).expect("values");
                    assert_eq!(vals, want);
                }
                FieldType::Flag => assert!(c.get("values").is_none()),
            }
        }
    }
}

fn check_rows(v: &Value) {
    let (study, _) = example_study();
    let ipc = hx(v, "ipc_hex");
    let batch = rows_from_ipc(&ipc, DEFAULT_MAX_ROWS).expect("rows decode");
    study
        .validate_rows(&batch, Some(s(v, "pseudonym")))
        .expect("rows are valid");
    let mut off = 0usize;
    let msgs = arr(v, "ipc_messages");
    for m in msgs {
        assert_eq!(num(m, "offset") as usize, off);
        assert_eq!(ipc[off..off + 4], [0xff; 4], "continuation marker");
        off += num(m, "len") as usize;
    }
    assert_eq!(off, ipc.len());
    let record_batches = msgs
        .iter()
        .filter(|m| s(m, "kind") == "record batch message")
        .count();
    if record_batches == 1 {
        assert_eq!(
            rows_to_ipc(&batch).expect("encode"),
            ipc,
            "one-batch streams re-encode identically"
        );
    }
    compare_rows(&batch, arr(v, "rows"));
}

fn compare_rows(batch: &RecordBatch, rows: &[Value]) {
    assert_eq!(batch.num_rows(), rows.len());
    for (ci, field) in batch.schema().fields().iter().enumerate() {
        let col = batch.column(ci);
        for (r, row) in rows.iter().enumerate() {
            let want = &row[field.name().as_str()];
            if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                assert_eq!(Some(a.value(r)), want.as_str(), "row {r} {}", field.name());
            } else if let Some(a) = col.as_any().downcast_ref::<BooleanArray>() {
                assert_eq!(Some(a.value(r)), want.as_bool(), "row {r} {}", field.name());
            } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                let got = (!a.is_null(r)).then(|| a.value(r));
                assert_eq!(got, want.as_f64(), "row {r} {}", field.name());
            } else {
                panic!("unexpected column type {:?}", field.data_type());
            }
        }
    }
}

fn check_manifest_vector(file: &Value, v: &Value) {
    let donor = ed_key(file, s(v, "signed_by")).public_key();
    let (study, sha) = study_of(file);
    let m = open_manifest(s(v, "signed_text").as_bytes()).expect("opens");
    assert_eq!(m.signer, donor);
    assert_eq!(m.object.payload, s(v, "payload_text").as_bytes());
    assert_eq!(hex::encode(m.digest()), s(v, "payload_sha256_hex"));
    check_fields(&v["fields"], &m.object.payload);
    let now = num(v, "now");
    check_manifest(&m.body, &study, &sha, now).expect("manifest matches the study");
    let covers: BTreeMap<String, bool> =
        serde_json::from_value(v["covers"].clone()).expect("covers");
    for (purpose, want) in covers {
        assert_eq!(m.body.covers(&purpose, now), want, "covers {purpose}");
    }
}

fn check_envelope(file: &Value, v: &Value) {
    let bytes = hx(v, "envelope_hex");
    assert_eq!(hex::encode(sha256(&bytes)), s(v, "envelope_sha256_hex"));
    check_layout(&v["envelope_layout"], &bytes);
    let env = Envelope::parse(&bytes).expect("parses");
    assert_eq!(i64::from(env.key_id), num(v, "recipient_key_id"));
    assert_eq!(hex::encode(env.header), s(v, "aad_hex"));
    let k = arr(file, "recipient_keys")
        .iter()
        .find(|k| num(k, "key_id") == i64::from(env.key_id))
        .expect("recipient key");
    let sk = hpke_key_of(k, "private_key_hex");
    let p = env.open(&sk).expect("opens");
    let f = &v["payload_fields"];
    assert_eq!(hex::encode(p.idempotency_key), s(f, "idempotency_key_hex"));
    assert_eq!(p.manifest, s(f, "manifest_text").as_bytes());
    assert_eq!(hex::encode(&p.rows), s(f, "rows_hex"));
    let pt = p.encode();
    assert_eq!(hex::encode(&*pt), s(v, "payload_hex"));
    check_layout(&v["payload_layout"], &pt);
    assert_eq!(ENVELOPE_INFO_TEXT, s(v, "info_text"));
    // The seal is reproducible from ikmE alone.
    let resealed = p
        .seal_with_rng(
            env.key_id,
            &sk.public_key(),
            &mut FixedRng(hx(v, "ikm_e_hex")),
        )
        .expect("seal");
    assert_eq!(
        resealed, bytes,
        "sealing with ikm_e reproduces the envelope"
    );
    if s(v, "name") == "donation" {
        // The manifest inside is the consent-manifest vector.
        let cm = load("consent-manifest.json");
        assert_eq!(
            p.manifest,
            s(valid_named(&cm, "manifest"), "signed_text").as_bytes()
        );
        let (study, _) = example_study();
        let rows = rows_from_ipc(&p.rows, DEFAULT_MAX_ROWS).expect("rows decode");
        let m = open_manifest(&p.manifest).expect("manifest opens");
        study
            .validate_rows(&rows, Some(&m.body.pseudonym.to_hex()))
            .expect("rows valid");
    }
}

const ENVELOPE_INFO_TEXT: &str = "datadonor/v1 donation envelope";

/// The 64-byte replay of a DLEQ proof's nonce: ristretto255's `RandomScalar` reads 64 bytes
/// and reduces them, so `r || 0^32` yields exactly `r`.
fn nonce_rng(v: &Value) -> FixedRng {
    let mut r = hx(v, "proof_nonce_hex");
    r.resize(64, 0);
    FixedRng(r)
}

fn scalar_of(b: [u8; 32]) -> Scalar {
    Option::from(Scalar::from_canonical_bytes(b)).expect("canonical scalar")
}

fn point_of(b: &[u8]) -> RistrettoPoint {
    CompressedRistretto::from_slice(b)
        .expect("32 bytes")
        .decompress()
        .expect("valid element")
}

/// `BlindEvaluate` with the vector's proof nonce: the evaluated element and the proof.
fn blind_evaluate(
    server: &VoprfServer<Ristretto255>,
    blinded: &[u8],
    v: &Value,
) -> (Vec<u8>, Vec<u8>) {
    let b = BlindedElement::<Ristretto255>::deserialize(blinded).expect("blinded element");
    let mut rng = nonce_rng(v);
    let r = server.blind_evaluate(&mut rng, &b);
    assert!(rng.0.is_empty(), "the proof drew exactly its nonce");
    (r.message.serialize().to_vec(), r.proof.serialize().to_vec())
}

fn check_pseudonyms(y: &OprfOutput, v: &Value) {
    for p in arr(v, "pseudonyms") {
        let sid = s(p, "study_id");
        assert_eq!(y.study_pseudonym(sid).to_hex(), s(p, "pseudonym_hex"));
        // HKDF-SHA256 with the documented salt and info, independently.
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"datadonor/v1/pseudonym")
            .extract(y.as_bytes());
        let mut okm = [0u8; 32];
        prk.expand(&[sid.as_bytes()], ring::hkdf::HKDF_SHA256)
            .expect("expand")
            .fill(&mut okm)
            .expect("fill");
        assert_eq!(hex::encode(okm), s(p, "pseudonym_hex"));
    }
}

/// The VOPRF key of pseudonym.json's `oprf_key` (or threshold-oprf.json's `group_key`),
/// derived from its seed and checked against the stated private and public keys.
fn oprf_key(k: &Value) -> VoprfServer<Ristretto255> {
    let seed = match k.get("seed_hex") {
        Some(_) => hx(k, "seed_hex"),
        None => vector_gen::seed(s(k, "seed_label")).to_vec(),
    };
    let key = VoprfServer::<Ristretto255>::new_from_seed(&seed, s(k, "info_text").as_bytes())
        .expect("derive");
    let mut sk_pk = hx(k, "private_key_hex");
    sk_pk.extend(hx(k, "public_key_hex"));
    assert_eq!(key.serialize().to_vec(), sk_pk, "skS || pkS");
    let loaded = VoprfServer::<Ristretto255>::new_with_key(&hx(k, "private_key_hex")).expect("key");
    assert_eq!(loaded.serialize(), key.serialize());
    key
}

fn check_voprf(file: &Value, v: &Value) {
    let key = oprf_key(&file["oprf_key"]);
    let cpr = Cpr::parse(s(v, "cpr_input")).expect("cpr");
    let input = cpr.oprf_input();
    assert_eq!(hex::encode(&*input), s(v, "oprf_input_hex"));
    check_layout(&v["oprf_input_layout"], &input);
    // The crate's blinding with the vector's blind is RFC 9497's, in mode 0x01.
    let blind = hx32(v, "blind_hex");
    let tb = blind_input_with_scalar(input.clone(), blind).expect("blind");
    assert_eq!(hex::encode(tb.blinded), s(v, "blinded_element_hex"));
    let r = VoprfClient::<Ristretto255>::deterministic_blind_unchecked(&input, scalar_of(blind))
        .expect("blind");
    assert_eq!(r.message.serialize().as_slice(), tb.blinded);
    // The server's evaluation and proof, with the stated nonce.
    let (evaluated, proof) = blind_evaluate(&key, &tb.blinded, v);
    assert_eq!(hex::encode(&evaluated), s(v, "evaluated_element_hex"));
    assert_eq!(hex::encode(&proof), s(v, "proof_hex"));
    // The nonce is the one the stated seed gives.
    let wide: [u8; 64] =
        vector_gen::DetRng::first_bytes(vector_gen::seed(s(v, "proof_seed_label")), 64)
            .try_into()
            .expect("64");
    assert_eq!(
        hex::encode(Scalar::from_bytes_mod_order_wide(&wide).to_bytes()),
        s(v, "proof_nonce_hex")
    );
    // The client verifies the proof against the public key and finalises.
    let ev = EvaluationElement::<Ristretto255>::deserialize(&hx(v, "evaluated_element_hex"))
        .expect("element");
    let proof = Proof::<Ristretto255>::deserialize(&hx(v, "proof_hex")).expect("proof");
    let pk = Ristretto255::deserialize_elem(&hx(&file["oprf_key"], "public_key_hex")).expect("pk");
    let y = r
        .state
        .finalize(&input, &ev, &proof, pk)
        .expect("proof verifies");
    assert_eq!(hex::encode(y), s(v, "output_hex"));
    // ... which is the server's unblinded evaluation.
    assert_eq!(
        hex::encode(key.evaluate(&input).expect("evaluate")),
        s(v, "output_hex")
    );
    // A proof for another key does not verify.
    let other = VoprfServer::<Ristretto255>::new_with_key(&[7; 32]).expect("key");
    assert!(r
        .state
        .finalize(&input, &ev, &proof, other.get_public_key())
        .is_err());
    let y: [u8; 64] = hx(v, "output_hex").try_into().expect("64 bytes");
    check_pseudonyms(&OprfOutput::from_bytes(y), v);
}

/// The configuration and the blind the threshold file's decoders run with.
fn threshold_context(file: &Value) -> (PseudonymiserConfig, ThresholdBlind) {
    let c = valid_of_kind(file, "pseudonymiser_config");
    let config = PseudonymiserConfig::from_json(s(c, "json_text").as_bytes()).expect("config");
    (
        config,
        threshold_blind(valid_of_kind(file, "threshold_evaluation")),
    )
}

fn threshold_blind(v: &Value) -> ThresholdBlind {
    let cpr = Cpr::parse(s(v, "cpr_input")).expect("cpr");
    blind_input_with_scalar(cpr.oprf_input(), hx32(v, "blind_hex")).expect("blind")
}

/// A scalar from a seed label: the seed with its top four bits cleared (so canonical).
fn seed_scalar_hex(label: &str) -> String {
    let mut b = vector_gen::seed(label);
    b[31] &= 0x0f;
    hex::encode(b)
}

/// The shares of threshold-oprf.json (or of its vector threshold-rfc9497): `k_i = f(i)` of the
/// stated polynomial, `K_i = k_i·G`.
fn shares(file: &Value) -> Vec<(u16, [u8; 32], [u8; 32])> {
    let k = scalar_of(hx32(&file["group_key"], "private_key_hex"));
    let poly = &file["polynomial"];
    let a = scalar_of(hx32(poly, "a1_hex"));
    assert_eq!(
        seed_scalar_hex(s(poly, "a1_seed_label")),
        s(poly, "a1_hex"),
        "a1 comes from its seed"
    );
    assert_eq!((num(poly, "threshold"), num(poly, "instances")), (2, 3));
    arr(file, "shares")
        .iter()
        .enumerate()
        .map(|(n, sh)| {
            let i = num(sh, "index") as u16;
            assert_eq!(usize::from(i), n + 1, "shares by index");
            let ki = k + a * Scalar::from(u64::from(i));
            assert_eq!(hex::encode(ki.to_bytes()), s(sh, "secret_share_hex"));
            let pki = (ki * RISTRETTO_BASEPOINT_POINT).compress().to_bytes();
            assert_eq!(hex::encode(pki), s(sh, "public_share_hex"));
            (i, ki.to_bytes(), pki)
        })
        .collect()
}

fn check_config(file: &Value, v: &Value) {
    let text_json = s(v, "json_text").as_bytes();
    let c = PseudonymiserConfig::from_json(text_json).expect("config");
    assert_eq!(c.to_json(), text_json, "re-serialisation is the same bytes");
    check_fields(&v["fields"], text_json);
    assert_eq!(
        hex::encode(c.group_public_key),
        s(&file["group_key"], "public_key_hex")
    );
    // The group key is pseudonym.json's VOPRF key.
    let single = load("pseudonym.json");
    assert_eq!(
        s(&file["group_key"], "private_key_hex"),
        s(&single["oprf_key"], "private_key_hex")
    );
    oprf_key(&file["group_key"]);
    let shares = shares(file);
    assert_eq!(c.instances.len(), shares.len());
    for (inst, (i, _, pk)) in c.instances.iter().zip(&shares) {
        assert_eq!((inst.index, inst.public_share), (*i, *pk));
        assert_eq!(inst.url, format!("https://pseudonymiser-{i}.example"));
    }
    assert_eq!(
        i64::from(c.threshold),
        num(&file["polynomial"], "threshold")
    );
}

fn check_threshold(file: &Value, v: &Value) {
    let (config, _) = threshold_context(file);
    assert_eq!(
        s(v, "config"),
        s(valid_of_kind(file, "pseudonymiser_config"), "name")
    );
    let shares = shares(file);
    let k = scalar_of(hx32(&file["group_key"], "private_key_hex"));
    let cpr = Cpr::parse(s(v, "cpr_input")).expect("cpr");
    let input = cpr.oprf_input();
    assert_eq!(hex::encode(&*input), s(v, "oprf_input_hex"));
    assert_eq!(
        seed_scalar_hex(s(v, "blind_seed_label")),
        s(v, "blind_hex"),
        "the blind comes from its seed"
    );
    let tb = threshold_blind(v);
    assert_eq!(hex::encode(tb.blinded), s(v, "blinded_element_hex"));
    let req = EvaluateRequest::from_json(s(v, "request_json_text").as_bytes()).expect("request");
    assert_eq!(req.blinded, tb.blinded);
    let b = point_of(&tb.blinded);
    let z = check_answers(v, &shares, &tb, &config);
    // Every t-subset combines to k·B.
    let kb = (k * b).compress().to_bytes();
    assert_eq!(hex::encode(kb), s(v, "single_key_evaluated_element_hex"));
    check_combinations(v, &z, kb);
    // The same evaluated element, output and pseudonyms as the single key of pseudonym.json.
    let single = load("pseudonym.json");
    let sv = arr(&single, "valid")
        .iter()
        .find(|x| s(x, "kind") == "voprf" && s(x, "blind_hex") == s(v, "blind_hex"))
        .expect("pseudonym.json has the same blind");
    assert_eq!(s(sv, "cpr_input"), s(v, "cpr_input"));
    assert_eq!(s(sv, "evaluated_element_hex"), hex::encode(kb));
    assert_eq!(s(sv, "output_hex"), s(v, "output_hex"));
    assert_eq!(sv["pseudonyms"], v["pseudonyms"]);
    // ThresholdBlind::combine on each case reaches y.
    let cases = arr(v, "combine_cases");
    assert!(cases.len() >= 5);
    for c in cases {
        let answers: Vec<InstanceAnswer> =
            serde_json::from_str(s(c, "answers_json_text")).expect("answers");
        let out = threshold_blind(v)
            .combine(&config, &answers, Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", s(c, "note")));
        assert_eq!(hex::encode(out.output.as_bytes()), s(v, "output_hex"));
        let want = |k: &str| -> Vec<u16> { serde_json::from_value(c[k].clone()).expect("indexes") };
        assert_eq!(out.used, want("used"), "{}", s(c, "note"));
        assert_eq!(out.spare, want("spare"), "{}", s(c, "note"));
        let rejected: Vec<String> = out.rejected.iter().map(answer_text).collect();
        let want_rejected: Vec<String> =
            serde_json::from_value(c["rejected"].clone()).expect("rejected");
        assert_eq!(rejected, want_rejected, "{}", s(c, "note"));
    }
    let y: [u8; 64] = hx(v, "output_hex").try_into().expect("64 bytes");
    check_pseudonyms(&OprfOutput::from_bytes(y), v);
}

/// RFC 9497 Appendix A.1.2: the ristretto255-SHA512 suite in mode 0x01, from the published
/// file `testdata/vectors/oprf/rfc9497-allVectors.json`.
fn rfc9497_voprf_suite() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors/oprf/rfc9497-allVectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: Value = serde_json::from_str(&text).expect("RFC 9497 vectors are JSON");
    all.as_array()
        .expect("an array of suites")
        .iter()
        .find(|x| x["identifier"] == "ristretto255-SHA512" && x["mode"] == 1)
        .expect("ristretto255-SHA512 in mode 1")
        .clone()
}

/// threshold-rfc9497: the RFC 9497 vector key shared 2-of-3 reaches the RFC's first mode 0x01
/// test vector.
fn check_threshold_rfc9497(v: &Value) {
    let suite = rfc9497_voprf_suite();
    let tv = &suite["vectors"][0];
    assert_eq!(num(tv, "Batch"), 1);
    // The group key is the RFC's DeriveKeyPair(Seed, KeyInfo): skSm and pkSm.
    let gk = &v["group_key"];
    assert_eq!(s(gk, "seed_hex"), s(&suite, "seed"));
    assert_eq!(hex::encode(s(gk, "info_text")), s(&suite, "keyInfo"));
    assert_eq!(s(gk, "private_key_hex"), s(&suite, "skSm"));
    assert_eq!(s(gk, "public_key_hex"), s(&suite, "pkSm"));
    let key = oprf_key(gk);
    let shares = shares(v);
    // The configuration lists the shares.
    let text_json = s(v, "config_json_text").as_bytes();
    let config = PseudonymiserConfig::from_json(text_json).expect("config");
    assert_eq!(
        config.to_json(),
        text_json,
        "re-serialisation is the same bytes"
    );
    assert_eq!(
        hex::encode(config.group_public_key),
        s(gk, "public_key_hex")
    );
    assert_eq!(
        i64::from(config.threshold),
        num(&v["polynomial"], "threshold")
    );
    assert_eq!(config.instances.len(), shares.len());
    for (inst, (i, _, pk)) in config.instances.iter().zip(&shares) {
        assert_eq!((inst.index, inst.public_share), (*i, *pk));
    }
    // The RFC's input and blind give its BlindedElement.
    assert_eq!(s(v, "input_hex"), s(tv, "Input"));
    assert_eq!(s(v, "blind_hex"), s(tv, "Blind"));
    let input = Zeroizing::new(hx(v, "input_hex"));
    let blind = || blind_input_with_scalar(input.clone(), hx32(v, "blind_hex")).expect("blind");
    let tb = blind();
    assert_eq!(hex::encode(tb.blinded), s(v, "blinded_element_hex"));
    assert_eq!(s(v, "blinded_element_hex"), s(tv, "BlindedElement"));
    let req = EvaluateRequest::from_json(s(v, "request_json_text").as_bytes()).expect("request");
    assert_eq!(req.blinded, tb.blinded);
    // The answers, and every 2-subset combined to skSm·B, the RFC's EvaluationElement.
    let z = check_answers(v, &shares, &tb, &config);
    let k = scalar_of(hx32(gk, "private_key_hex"));
    let kb = (k * point_of(&tb.blinded)).compress().to_bytes();
    assert_eq!(hex::encode(kb), s(v, "evaluated_element_hex"));
    assert_eq!(s(v, "evaluated_element_hex"), s(tv, "EvaluationElement"));
    check_combinations(v, &z, kb);
    // ThresholdBlind::combine of every 2-subset (and of all three) gives the RFC's Output.
    assert_eq!(s(v, "output_hex"), s(tv, "Output"));
    assert_eq!(
        hex::encode(key.evaluate(&input).expect("evaluate")),
        s(v, "output_hex")
    );
    let answers: Vec<InstanceAnswer> = arr(v, "answers")
        .iter()
        .map(|a| InstanceAnswer::from_json(s(a, "answer_json_text").as_bytes()).expect("answer"))
        .collect();
    for set in [vec![1u16, 2], vec![1, 3], vec![2, 3], vec![1, 2, 3]] {
        let given: Vec<InstanceAnswer> = set
            .iter()
            .map(|&i| answers[usize::from(i) - 1].clone())
            .collect();
        let out = blind()
            .combine(&config, &given, Vec::new())
            .unwrap_or_else(|e| panic!("{set:?}: {e}"));
        assert_eq!(hex::encode(out.output.as_bytes()), s(v, "output_hex"));
        assert_eq!(out.used, set[..2].to_vec());
        assert!(out.rejected.is_empty());
    }
}

/// Every instance's answer of a threshold evaluation: reproduced with its share and nonce,
/// verified by the client. Returns `Z_i` by index.
fn check_answers(
    v: &Value,
    shares: &[(u16, [u8; 32], [u8; 32])],
    tb: &ThresholdBlind,
    config: &PseudonymiserConfig,
) -> BTreeMap<u16, RistrettoPoint> {
    let b = point_of(&tb.blinded);
    let mut z = BTreeMap::new();
    for (a, (i, ki, _)) in arr(v, "answers").iter().zip(shares) {
        assert_eq!(num(a, "index"), i64::from(*i));
        let server = VoprfServer::<Ristretto255>::new_with_key(ki).expect("share");
        let (evaluated, proof) = blind_evaluate(&server, &tb.blinded, a);
        assert_eq!(hex::encode(&evaluated), s(a, "evaluated_element_hex"));
        assert_eq!(hex::encode(&proof), s(a, "proof_hex"));
        let zi = scalar_of(*ki) * b;
        assert_eq!(
            zi.compress().as_bytes().as_slice(),
            evaluated,
            "Z_i = k_i·B"
        );
        let ans = InstanceAnswer::from_json(s(a, "answer_json_text").as_bytes()).expect("answer");
        assert_eq!(
            (ans.index, ans.evaluated.to_vec(), ans.proof.clone()),
            (*i, evaluated, proof)
        );
        assert_eq!(
            serde_json::to_vec(&ans).expect("json"),
            s(a, "answer_json_text").as_bytes()
        );
        assert_eq!(tb.verify_answer(config, &ans).expect("verifies"), zi);
        z.insert(*i, zi);
    }
    assert_eq!(z.len(), 3);
    z
}

/// Every 2-subset of the answers combines, with the stated Lagrange coefficients, to `kb`.
fn check_combinations(v: &Value, z: &BTreeMap<u16, RistrettoPoint>, kb: [u8; 32]) {
    let combos = arr(v, "combinations");
    assert_eq!(combos.len(), 3, "every 2-subset of 3");
    for c in combos {
        let set: Vec<u16> = serde_json::from_value(c["indexes"].clone()).expect("indexes");
        let lambdas: Vec<String> = set
            .iter()
            .map(|&i| hex::encode(lagrange_at_zero(i, &set).to_bytes()))
            .collect();
        let want: Vec<String> = serde_json::from_value(c["lagrange_hex"].clone()).expect("hex");
        assert_eq!(lambdas, want);
        let pts: Vec<(u16, RistrettoPoint)> = set.iter().map(|i| (*i, z[i])).collect();
        let combined = combine_points(&pts).compress().to_bytes();
        assert_eq!(hex::encode(combined), s(c, "combined_element_hex"));
        assert_eq!(combined, kb);
    }
}

fn check_tree(file: &Value, v: &Value) {
    let entries: Vec<&Value> = arr(file, "valid")
        .iter()
        .filter(|x| s(x, "kind") == "entry")
        .collect();
    let leaves: Vec<Hash> = entries
        .iter()
        .map(|e| merkle::leaf_hash(s(e, "entry_text").as_bytes()))
        .collect();
    let listed: Vec<String> = serde_json::from_value(v["leaf_hashes"].clone()).expect("leaves");
    assert_eq!(leaves.iter().map(Hash::to_hex).collect::<Vec<_>>(), listed);
    for r in arr(v, "roots") {
        let size = num(r, "size") as usize;
        assert_eq!(merkle::root(&leaves[..size]).to_hex(), s(r, "root_hex"));
    }
    let root = merkle::root(&leaves);
    for p in arr(v, "inclusion_proofs_size_6") {
        let i = num(p, "index") as usize;
        merkle::verify_inclusion(
            i as u64,
            leaves.len() as u64,
            &leaves[i].0,
            &proof(p, "proof"),
            &root.0,
        )
        .expect("inclusion");
    }
    for p in arr(v, "consistency_proofs") {
        let (a, b) = (num(p, "size1") as usize, num(p, "size2") as usize);
        merkle::verify_consistency(
            a as u64,
            b as u64,
            &proof(p, "proof"),
            &merkle::root(&leaves[..a]).0,
            &merkle::root(&leaves[..b]).0,
        )
        .expect("consistency");
    }
}

fn check_checkpoint(file: &Value, v: &Value) {
    let ledger = ed_key(file, "ledger");
    let verifier = NoteVerifier::parse_vkey(s(v, "vkey")).expect("vkey");
    assert_eq!(verifier.public_key(), &ledger.public_key().0);
    assert_eq!(verifier.name(), s(v, "key_name"));
    assert_eq!(hex::encode(verifier.key_hash()), s(v, "key_hash_hex"));
    assert_eq!(
        key_hash(s(v, "key_name"), &ledger.public_key().0),
        verifier.key_hash()
    );
    assert_eq!(
        sha256(&hx(v, "key_hash_input_hex"))[..4],
        verifier.key_hash()
    );
    let note = s(v, "note_text");
    let cp = checkpoint::open(note.as_bytes(), &[verifier]).expect("note verifies");
    assert_eq!(cp.checkpoint.origin, s(v, "origin"));
    assert_eq!(cp.checkpoint.size as i64, num(v, "tree_size"));
    assert_eq!(cp.checkpoint.root.to_hex(), s(v, "root_hex"));
    assert_eq!(cp.checkpoint.to_body(), s(v, "body_text"));
    let lines: Vec<&str> = s(v, "body_text")
        .trim_end_matches('\n')
        .split('\n')
        .collect();
    let want: Vec<&str> = arr(v, "body_lines").iter().map(|l| s(l, "line")).collect();
    assert_eq!(lines, want);
    assert_eq!(
        note,
        format!("{}\n{}\n", s(v, "body_text"), s(v, "signature_line"))
    );
    let field = s(v, "signature_line").rsplit(' ').next().expect("field");
    let raw = STANDARD.decode(field).expect("base64");
    check_layout(&v["signature_field_layout"], &raw);
    ledger
        .public_key()
        .verify_raw(s(v, "body_text").as_bytes(), &raw[4..])
        .expect("Ed25519 over the body");
    let resigned =
        checkpoint::sign(&cp.checkpoint, s(v, "key_name"), ledger.key_pair()).expect("sign");
    assert_eq!(resigned, note, "signing is deterministic");
    assert_eq!(
        s(v, "vkey"),
        format!(
            "{}+{}+{}",
            s(v, "key_name"),
            s(v, "key_hash_hex"),
            STANDARD.encode([&[0x01][..], &ledger.public_key().0].concat())
        )
    );
}

/// The bytes of a sealed-batch vector: its `file_hex`, or its header and an independent STREAM
/// seal of its plaintext pattern.
fn sealed_file_bytes(v: &Value) -> Vec<u8> {
    if v.get("file_hex").is_some() {
        return hx(v, "file_hex");
    }
    let mut file = hx(v, "header_hex");
    let (hd, _) = BatchHeader::parse(&file).expect("header");
    let pt = plaintext_of(v);
    let cipher = Aes256Gcm::new_from_slice(&hx(v, "data_key_hex")).expect("key");
    let chunks: Vec<&[u8]> = pt.chunks(CHUNK_SIZE).collect();
    for (i, c) in chunks.iter().enumerate() {
        let nonce = chunk_nonce(i as u64, i + 1 == chunks.len());
        let aad = hd.chunk_aad();
        file.extend(
            cipher
                .encrypt(Nonce::from_slice(&nonce), Payload { msg: c, aad: &aad })
                .expect("seal"),
        );
    }
    file
}

fn plaintext_of(v: &Value) -> Vec<u8> {
    let p = &v["plaintext"];
    if p.get("hex").is_some() {
        return hx(p, "hex");
    }
    assert_eq!(s(p, "pattern"), "byte i = i mod 251, for i in 0..131072");
    let pt: Vec<u8> = (0..num(p, "len") as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_eq!(hex::encode(sha256(&pt)), s(p, "sha256_hex"));
    pt
}

/// The reference opener: header, unwrap, chunks in order; full-size chunks are not last unless
/// nothing follows them; the final chunk carries the last-chunk flag.
fn open_batch(file: &[u8], vault: &HpkePrivateKey) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (hd, hl) = BatchHeader::parse(file).map_err(|e| format!("header: {e}"))?;
    let key = hpke_open(vault, &hd.enc, WRAP_INFO, &hd.wrap_aad(), &hd.wrapped_key)
        .map_err(|_| "unwrap".to_string())?;
    let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| "unwrap".to_string())?;
    let aad = hd.chunk_aad();
    let body = &file[hl..];
    let (mut out, mut off, mut i) = (Vec::new(), 0usize, 0u64);
    loop {
        let rest = &body[off..];
        let last = rest.len() <= CHUNK_SIZE + TAG_LEN;
        let take = if last {
            rest.len()
        } else {
            CHUNK_SIZE + TAG_LEN
        };
        let pt = cipher
            .decrypt(
                Nonce::from_slice(&chunk_nonce(i, last)),
                Payload {
                    msg: &rest[..take],
                    aad: &aad,
                },
            )
            .map_err(|_| format!("chunk {i}"))?;
        out.extend(pt);
        off += take;
        i += 1;
        if last {
            return Ok((out, key.to_vec()));
        }
    }
}

fn check_sealed_batch(file: &Value, v: &Value) {
    let vault = hpke_key_of(&file["vault_key"], "private_key_hex");
    let bytes = sealed_file_bytes(v);
    assert_eq!(bytes.len() as i64, num(v, "file_len"));
    assert_eq!(hex::encode(sha256(&bytes)), s(v, "file_sha256_hex"));
    let (pt, key) = open_batch(&bytes, &vault).expect("opens");
    assert_eq!(pt, plaintext_of(v));
    assert_eq!(hex::encode(&key), s(v, "data_key_hex"));
    let (hd, hl) = BatchHeader::parse(&bytes).expect("header");
    assert_eq!(hex::encode(&bytes[..hl]), s(v, "header_hex"));
    assert_eq!(i64::from(hd.vault_key_id), num(v, "vault_key_id"));
    // The wrap is reproducible from its ikmE.
    let (enc, wrapped) = hpke_seal_with_rng(
        &vault.public_key(),
        WRAP_INFO,
        &hd.wrap_aad(),
        &key,
        &mut FixedRng(hx(v, "wrap_ikm_e_hex")),
    )
    .expect("wrap");
    assert_eq!(enc, hd.enc);
    assert_eq!(wrapped, hd.wrapped_key);
    let chunks = arr(v, "chunks");
    let mut off = hl;
    for (i, c) in chunks.iter().enumerate() {
        let len = num(c, "len") as usize;
        assert_eq!(num(c, "index") as usize, i);
        assert_eq!(num(c, "offset") as usize, off);
        let last = i + 1 == chunks.len();
        assert_eq!(hex::encode(chunk_nonce(i as u64, last)), s(c, "nonce_hex"));
        assert_eq!(
            hex::encode(&bytes[off + len - TAG_LEN..off + len]),
            s(c, "tag_hex")
        );
        off += len;
    }
    assert_eq!(off, bytes.len());
}
