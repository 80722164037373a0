//! Builds the protocol's own test vectors, `schemas/vectors/*.json`, deterministically.
//!
//! Shared by the `write_vectors` example, which writes the files, and by the `own_vectors`
//! integration test, which checks that the committed files are exactly what this code produces
//! (and, separately, that every vector in them decodes or fails as annotated). Every key comes
//! from a fixed seed, every HPKE seal draws its `ikmE` and every VOPRF proof its nonce from a
//! deterministic generator, Ed25519 and the VOPRF evaluation are deterministic, so the output is
//! reproducible byte for byte.
//!
//! The expectations written here (`expect`, field values) are stated, not computed by running
//! the decoder under test: the test is what checks them.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use datadonor_schemas::batch::{chunk_nonce, BatchHeader, CHUNK_SIZE, TAG_LEN};
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::consent::{ConsentManifest, Withdrawal, LEGAL_BASIS};
use datadonor_schemas::cosignature::{
    self as cosig, AddCheckpointRequest, Cosignature, WitnessSigner,
};
use datadonor_schemas::envelope::{
    DonationPayload, HpkeConfig, HpkeConfigList, HpkePrivateKey, HpkePublicKey, ENVELOPE_INFO,
};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, Hash, ProofAnswer};
use datadonor_schemas::pseudonym::{Cpr, OprfOutput, Pseudonym, OPRF_INPUT_PREFIX};
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::receipt::{HexHash, Receipt, ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::{signed_bytes, Context, SignedObject, SigningKey};
use datadonor_schemas::study::{
    age_band_label, age_band_labels, rows_to_ipc, FieldType, Granularity, StudyDefinition,
};
use datadonor_schemas::threshold::{
    self, EvaluateRequest, InstanceAnswer, InstanceInfo, PseudonymiserConfig,
};
use datadonor_schemas::time::UnixSeconds;
use rand_core::{CryptoRng, RngCore};
use serde_json::Value;
use voprf::{
    BlindedElement, EvaluationElement, Group as _, Ristretto255, VoprfClient, VoprfServer,
};

/// The vector files, in the order they are written.
pub const FILE_NAMES: [&str; 14] = [
    "signed-object.json",
    "study-definition.json",
    "consent-manifest.json",
    "withdrawal.json",
    "envelope.json",
    "pseudonym.json",
    "threshold-oprf.json",
    "ledger-entry.json",
    "receipt.json",
    "query.json",
    "batch-header.json",
    "cosignature.json",
    "proof-answer.json",
    "study-bundle.json",
];

/// The command that writes the files.
pub const GENERATOR: &str =
    "cargo run -p datadonor-schemas --example write_vectors -- schemas/vectors";

/// One generated file.
pub struct VectorFile {
    /// File name inside `schemas/vectors/`.
    pub name: &'static str,
    /// Its exact contents.
    pub text: String,
}

/// Build every vector file.
pub fn build() -> Vec<VectorFile> {
    let fx = Fixture::new();
    let files = vec![
        ("signed-object.json", signed_object_file(&fx)),
        ("study-definition.json", study_file(&fx)),
        ("consent-manifest.json", consent_file(&fx)),
        ("withdrawal.json", withdrawal_file(&fx)),
        ("envelope.json", envelope_file(&fx)),
        ("pseudonym.json", pseudonym_file(&fx)),
        ("threshold-oprf.json", threshold_file(&fx)),
        ("ledger-entry.json", ledger_file(&fx)),
        ("receipt.json", receipt_file(&fx)),
        ("query.json", query_file(&fx)),
        ("batch-header.json", batch_file(&fx)),
        ("cosignature.json", cosignature_file(&fx)),
        ("proof-answer.json", proof_answer_file(&fx)),
        ("study-bundle.json", bundle_file(&fx)),
    ];
    files
        .into_iter()
        .map(|(name, j)| {
            let mut text = String::new();
            write_json(&j, 0, &mut text);
            text.push('\n');
            VectorFile { name, text }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An ordered JSON value and its pretty printer (serde_json's map sorts keys; these files read
// better in the order written).

/// A JSON value whose object members keep their order.
#[derive(Clone, Debug)]
pub enum J {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<J>),
    /// An object, members in order.
    Obj(Vec<(String, J)>),
    /// Any JSON value, written compactly on one line (serde_json's own form).
    Raw(Value),
}

impl J {
    fn push(&mut self, k: &str, v: impl Into<J>) {
        if let J::Obj(m) = self {
            m.push((k.to_string(), v.into()));
        }
    }
    fn is_scalar(&self) -> bool {
        !matches!(self, J::Arr(_) | J::Obj(_))
    }
}

macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {
        J::Obj(vec![$(($k.to_string(), J::from($v))),*])
    };
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_string())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<&String> for J {
    fn from(s: &String) -> J {
        J::Str(s.clone())
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
macro_rules! int_from {
    ($($t:ty),*) => {$(
        impl From<$t> for J {
            fn from(n: $t) -> J {
                J::Int(i128::from(n))
            }
        }
    )*};
}
int_from!(u8, u16, u32, u64, i64);
impl From<usize> for J {
    fn from(n: usize) -> J {
        J::Int(n as i128)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl From<Value> for J {
    fn from(v: Value) -> J {
        J::Raw(v)
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Null, Into::into)
    }
}

fn strs<S: AsRef<str>>(v: &[S]) -> J {
    J::Arr(v.iter().map(|s| J::Str(s.as_ref().to_string())).collect())
}

fn write_scalar(j: &J, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Int(n) => out.push_str(&n.to_string()),
        J::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialise")),
        J::Raw(v) => out.push_str(&serde_json::to_string(v).expect("values serialise")),
        J::Arr(_) | J::Obj(_) => unreachable!("not a scalar"),
    }
}

fn write_json(j: &J, indent: usize, out: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    match j {
        J::Arr(v) if v.is_empty() => out.push_str("[]"),
        J::Obj(v) if v.is_empty() => out.push_str("{}"),
        J::Arr(v) => {
            if v.iter().all(J::is_scalar) {
                let mut line = String::from("[");
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        line.push_str(", ");
                    }
                    write_scalar(x, &mut line);
                }
                line.push(']');
                if line.len() <= 100 {
                    out.push_str(&line);
                    return;
                }
            }
            out.push_str("[\n");
            for (i, x) in v.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                write_json(x, indent + 1, out);
                out.push_str(if i + 1 < v.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        J::Obj(v) => {
            out.push_str("{\n");
            for (i, (k, x)) in v.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                out.push_str(&serde_json::to_string(k).expect("strings serialise"));
                out.push_str(": ");
                write_json(x, indent + 1, out);
                out.push_str(if i + 1 < v.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        _ => write_scalar(j, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, seeds and a deterministic generator.

/// Fixed "now" of every vector: 2025-01-01T00:00:00Z.
pub const NOW: UnixSeconds = 1_735_689_600;
const DAY: i64 = 86_400;
const STUDY_TOML: &str = include_str!("../../../examples/t2d-study.toml");
const NOTICE: &str = include_str!("../../../examples/t2d-notice.md");
const QUERY_TOML: &str = include_str!("../../../examples/t2d-query.toml");
const ORIGIN: &str = "datadonor.example/ledger";
const CPR: &str = "010190-1234";

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `SHA-256("datadonor/v1 test vectors" 0x00 label)`: every key and random value of the vectors.
pub fn seed(label: &str) -> [u8; 32] {
    let mut b = b"datadonor/v1 test vectors\0".to_vec();
    b.extend_from_slice(label.as_bytes());
    sha256(&b)
}

fn seed16(label: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&seed(label)[..16]);
    out
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("text vectors are UTF-8")
}

/// A deterministic "random" generator: the concatenation of `SHA-256(seed || u64 BE counter)` for
/// counter = 0, 1, 2, ... Its first 32 bytes are the `ikmE` of an HPKE seal.
pub struct DetRng {
    seed: [u8; 32],
    counter: u64,
    buf: Vec<u8>,
}

impl DetRng {
    /// The generator for a seed.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            counter: 0,
            buf: Vec::new(),
        }
    }
    /// The first `n` bytes the generator for `seed` yields.
    pub fn first_bytes(seed: [u8; 32], n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        Self::new(seed).fill_bytes(&mut v);
        v
    }
}

impl RngCore for DetRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_be_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_be_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            if self.buf.is_empty() {
                let mut block = self.seed.to_vec();
                block.extend_from_slice(&self.counter.to_be_bytes());
                self.counter += 1;
                self.buf = sha256(&block).iter().rev().copied().collect();
            }
            *d = self.buf.pop().expect("refilled above");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for DetRng {}

/// The VOPRF key's private scalar, 32 bytes little-endian.
fn oprf_private_key(k: &VoprfServer<Ristretto255>) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&k.serialize()[..32]);
    out
}

/// The VOPRF key's public element.
fn oprf_public_key(k: &VoprfServer<Ristretto255>) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Ristretto255::serialize_elem(k.get_public_key()));
    out
}

/// RFC 9497 `Evaluate(skS, input)`: the output the client's `Finalize` reaches.
fn voprf_output(k: &VoprfServer<Ristretto255>, input: &[u8]) -> OprfOutput {
    let mut y = [0u8; 64];
    y.copy_from_slice(&k.evaluate(input).expect("evaluate"));
    OprfOutput::from_bytes(y)
}

/// A scalar from a seed: 32 bytes little-endian with the top four bits cleared, so below 2^252
/// and hence canonical (less than the group order).
fn seed_scalar(label: &str) -> [u8; 32] {
    let mut b = seed(label);
    b[31] &= 0x0f;
    b
}

fn scalar(b: [u8; 32]) -> Scalar {
    Option::from(Scalar::from_canonical_bytes(b)).expect("canonical scalar")
}

fn point(b: &[u8]) -> RistrettoPoint {
    let b: [u8; 32] = b.try_into().expect("32 bytes");
    curve25519_dalek::ristretto::CompressedRistretto(b)
        .decompress()
        .expect("valid element")
}

/// The nonce `r` a DLEQ proof drawn from `DetRng::new(seed(label))` uses: RFC 9497
/// `RandomScalar` for ristretto255 reads 64 bytes and reduces them modulo the group order.
fn proof_nonce(label: &str) -> [u8; 32] {
    let wide: [u8; 64] = DetRng::first_bytes(seed(label), 64)
        .try_into()
        .expect("64 bytes");
    Scalar::from_bytes_mod_order_wide(&wide).to_bytes()
}

/// `BlindEvaluate` with a proof whose randomness comes from `seed(proof_label)`:
/// the evaluated element and the proof `c || s`.
fn voprf_evaluate(
    k: &VoprfServer<Ristretto255>,
    blinded: &[u8],
    proof_label: &str,
) -> ([u8; 32], Vec<u8>) {
    let b = BlindedElement::<Ristretto255>::deserialize(blinded).expect("blinded element");
    let r = k.blind_evaluate(&mut DetRng::new(seed(proof_label)), &b);
    let mut z = [0u8; 32];
    z.copy_from_slice(&r.message.serialize());
    (z, r.proof.serialize().to_vec())
}

fn signing_key(label: &str) -> SigningKey {
    SigningKey::from_seed(&seed(label)).expect("every seed is a key")
}

fn hpke_key(label: &str) -> HpkePrivateKey {
    HpkePrivateKey::from_bytes(&seed(label)).expect("every 32 bytes are an X25519 key")
}

fn ed_key_json(label: &str, k: &SigningKey) -> J {
    obj! {
        "seed_label" => label,
        "seed_hex" => h(k.seed()),
        "public_key_b64" => k.public_key().to_base64(),
        "public_key_hex" => h(&k.public_key().0),
    }
}

fn hpke_key_json(label: &str, k: &HpkePrivateKey) -> J {
    obj! {
        "seed_label" => label,
        "private_key_hex" => h(k.to_bytes()),
        "public_key_hex" => h(&k.public_key().0),
    }
}

fn sign_payload(ctx: Context, payload: Vec<u8>, key: &SigningKey) -> SignedObject {
    let signature = key.sign(ctx, &payload).to_vec();
    SignedObject {
        context: ctx.label().to_string(),
        payload,
        public_key: key.public_key(),
        signature,
    }
}

fn to_json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serialises")
}

/// Field-by-field annotation of a JSON body: each member's name, value and meaning, in wire
/// order. Panics if `meanings` does not name exactly the members of `body`.
fn annotate<T: serde::Serialize>(body: &T, meanings: &[(&str, &str)]) -> J {
    let v = serde_json::to_value(body).expect("plain data serialises");
    let map = v.as_object().expect("bodies are objects");
    assert_eq!(
        map.len(),
        meanings.len(),
        "annotations must cover every member: {:?}",
        map.keys().collect::<Vec<_>>()
    );
    J::Arr(
        meanings
            .iter()
            .map(|(name, meaning)| {
                let value = map.get(*name).unwrap_or_else(|| panic!("no member {name}"));
                obj! { "name" => *name, "value" => value.clone(), "meaning" => *meaning }
            })
            .collect(),
    )
}

/// A byte range of a binary encoding.
fn seg(offset: usize, bytes: &[u8], field: &str, meaning: &str) -> J {
    obj! {
        "offset" => offset,
        "len" => bytes.len(),
        "field" => field,
        "hex" => h(bytes),
        "meaning" => meaning,
    }
}

/// Builds a `layout` array from consecutive segments.
struct Layout {
    off: usize,
    segs: Vec<J>,
}

impl Layout {
    fn new() -> Self {
        Self {
            off: 0,
            segs: Vec::new(),
        }
    }
    fn add(&mut self, bytes: &[u8], field: &str, meaning: &str) -> &mut Self {
        self.segs.push(seg(self.off, bytes, field, meaning));
        self.off += bytes.len();
        self
    }
    fn done(&mut self) -> J {
        J::Arr(std::mem::take(&mut self.segs))
    }
}

enum Input {
    Text(String),
    Hex(Vec<u8>),
    Repeat(&'static str, usize),
}

/// A malformed vector.
fn mal(name: &str, decoder: &str, input: Input, expect: &str) -> J {
    let mut j = obj! { "name" => name, "decoder" => decoder };
    match input {
        Input::Text(t) => j.push("input_text", t),
        Input::Hex(b) => j.push("input_hex", h(&b)),
        Input::Repeat(t, n) => j.push("input_repeat", obj! { "text" => t, "count" => n }),
    }
    j.push("expect", expect);
    j
}

fn with(mut j: J, k: &str, v: impl Into<J>) -> J {
    j.push(k, v);
    j
}

fn file_head(format: &str, description: &str, protocol: &str) -> J {
    obj! {
        "format" => format,
        "description" => description,
        "protocol" => format!("PROTOCOL.md, section \"{protocol}\""),
        "generator" => GENERATOR,
        "seeds" => "every key and random value is SHA-256(\"datadonor/v1 test vectors\" 0x00 <seed_label>); HPKE ephemeral keys are DeriveKeyPair(ikm_e)",
    }
}

fn finish(mut head: J, extra: Vec<(&str, J)>, valid: Vec<J>, malformed: Vec<J>) -> J {
    for (k, v) in extra {
        head.push(k, v);
    }
    head.push("valid", valid);
    head.push("malformed", malformed);
    head
}

// ---------------------------------------------------------------------------------------------
// The shared story: one study, one donor, one donation, a small ledger.

/// Rows of the example study, one vector per column.
#[derive(Clone)]
struct Rows {
    donor: Vec<String>,
    period: Vec<String>,
    age_band: Vec<String>,
    sex: Vec<String>,
    region: Vec<String>,
    t2d: Vec<bool>,
    hba1c: Vec<Option<f64>>,
    bmi: Vec<Option<f64>>,
    systolic: Vec<Option<f64>>,
    diastolic: Vec<Option<f64>>,
    glucose: Vec<Option<f64>>,
}

impl Rows {
    fn columns(&self) -> Vec<ArrayRef> {
        let s = |v: &Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v.clone())) };
        let f = |v: &Vec<Option<f64>>| -> ArrayRef { Arc::new(Float64Array::from(v.clone())) };
        vec![
            s(&self.donor),
            s(&self.period),
            s(&self.age_band),
            s(&self.sex),
            s(&self.region),
            Arc::new(BooleanArray::from(self.t2d.clone())),
            f(&self.hba1c),
            f(&self.bmi),
            f(&self.systolic),
            f(&self.diastolic),
            f(&self.glucose),
        ]
    }
    fn batch(&self, schema: &SchemaRef) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), self.columns()).expect("rows match the schema")
    }
    fn json(&self) -> J {
        let num = |v: Option<f64>| -> J { v.map_or(J::Null, |x| J::Raw(Value::from(x))) };
        J::Arr(
            (0..self.donor.len())
                .map(|i| {
                    obj! {
                        "donor" => &self.donor[i],
                        "period" => &self.period[i],
                        "age_band" => &self.age_band[i],
                        "sex" => &self.sex[i],
                        "region" => &self.region[i],
                        "t2d" => self.t2d[i],
                        "hba1c" => num(self.hba1c[i]),
                        "bmi" => num(self.bmi[i]),
                        "systolic" => num(self.systolic[i]),
                        "diastolic" => num(self.diastolic[i]),
                        "glucose" => num(self.glucose[i]),
                    }
                })
                .collect(),
        )
    }
}

struct Fixture {
    steward: SigningKey,
    donor: SigningKey,
    mallory: SigningKey,
    ledger: SigningKey,
    approver: SigningKey,
    intake1: HpkePrivateKey,
    intake2: HpkePrivateKey,
    vault: HpkePrivateKey,
    oprf: VoprfServer<Ristretto255>,
    study: StudyDefinition,
    signed_study: SignedObject,
    study_sha: [u8; 32],
    pseudonym: Pseudonym,
    manifest: ConsentManifest,
    signed_manifest: SignedObject,
    rows: Rows,
    ipc: Vec<u8>,
    payload: DonationPayload,
    envelope: Vec<u8>,
    withdrawal: Withdrawal,
    signed_withdrawal: SignedObject,
    approval: QueryApproval,
    signed_approval: SignedObject,
    entries: Vec<LedgerEntry>,
    entry_bytes: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
}

const OPRF_INFO: &[u8] = b"datadonor/v1 test vectors";

impl Fixture {
    fn new() -> Self {
        let steward = signing_key("steward");
        let donor = signing_key("donor");
        let mallory = signing_key("mallory");
        let ledger = signing_key("ledger");
        let approver = signing_key("approver");
        let intake1 = hpke_key("intake hpke key 1");
        let intake2 = hpke_key("intake hpke key 2");
        let vault = hpke_key("vault");
        let oprf = VoprfServer::<Ristretto255>::new_from_seed(&seed("oprf key"), OPRF_INFO)
            .expect("oprf key");

        let study = StudyDefinition::from_toml(STUDY_TOML).expect("example study");
        let signed_study = SignedObject::sign(Context::StudyDefinition, &study, &steward);
        let study_sha = signed_study.payload_digest();

        let cpr = Cpr::parse(CPR).expect("vector CPR");
        let y = voprf_output(&oprf, &cpr.oprf_input());
        let pseudonym = y.study_pseudonym(study.id.as_str());

        let given_at = NOW - 3600;
        let manifest = ConsentManifest {
            format: 1,
            record_id: seed16("consent record id"),
            study_id: study.id.clone(),
            study_version: study.version,
            study_sha256: study_sha,
            controller: study.controller.clone(),
            purposes: vec!["t2d-epidemiology".into()],
            legal_basis: LEGAL_BASIS.into(),
            data_categories: study.fields.iter().map(|f| f.name.clone()).collect(),
            given_at,
            expires_at: given_at + 365 * DAY,
            withdrawal_method: "In the Datadonor app: `datadonor withdraw`".into(),
            notice_sha256: study.notice_sha256,
            donor_public_key: donor.public_key(),
            pseudonym,
        };
        let signed_manifest = manifest.sign(&donor);

        let p = pseudonym.to_hex();
        let rows = Rows {
            donor: vec![p.clone(), p.clone(), p],
            period: vec!["2024-01".into(), "2024-03".into(), "2024-06".into()],
            age_band: vec!["30-39".into(); 3],
            sex: vec!["female".into(); 3],
            region: vec!["syddanmark".into(); 3],
            t2d: vec![false, false, true],
            hba1c: vec![Some(6.1), None, Some(7.25)],
            bmi: vec![Some(27.4), Some(27.9), None],
            systolic: vec![Some(128.0), None, Some(135.0)],
            diastolic: vec![Some(82.0), None, Some(88.0)],
            glucose: vec![None, Some(6.3), None],
        };
        let ipc = rows_to_ipc(&rows.batch(&study.arrow_schema())).expect("ipc");
        let payload = DonationPayload {
            idempotency_key: seed16("idempotency key"),
            manifest: signed_manifest.to_bytes(),
            rows: ipc.clone(),
        };
        let envelope = payload
            .seal_with_rng(
                1,
                &intake1.public_key(),
                &mut DetRng::new(seed("envelope ephemeral")),
            )
            .expect("seal");

        let withdrawal = Withdrawal {
            format: 1,
            request_id: seed16("withdrawal request id"),
            study_id: study.id.clone(),
            pseudonym,
            consent_record_id: manifest.record_id,
            withdrawn_at: NOW + 30 * DAY,
            donor_public_key: donor.public_key(),
        };
        let signed_withdrawal = withdrawal.sign(&donor);

        let spec = QuerySpec::from_toml(QUERY_TOML).expect("example query");
        let approval = QueryApproval {
            format: 1,
            approval_id: seed16("approval id"),
            query_sha256: spec.hash(),
            study_id: spec.study.clone(),
            purpose: spec.purpose.clone(),
            researcher: spec.researcher.clone(),
            not_before: NOW - DAY,
            not_after: NOW + 90 * DAY,
            max_runs: 3,
            privacy: None,
        };
        let signed_approval = approval.sign(&approver);

        let batch_id = seed16("batch id 1");
        let entries = vec![
            LedgerEntry::consent_granted(&manifest, signed_manifest.payload_digest(), NOW),
            LedgerEntry::DonationAccepted {
                time: NOW,
                study_id: study.id.clone(),
                pseudonym,
                consent_record_id: manifest.record_id,
                idempotency_key: payload.idempotency_key,
                envelope_sha256: sha256(&envelope),
                rows: 3,
                batch_id: h(&batch_id),
            },
            LedgerEntry::KeyRotated {
                time: NOW + DAY,
                role: "hpke-transport".into(),
                key_id: 2,
                public_key_sha256: sha256(&intake2.public_key().0),
            },
            LedgerEntry::QueryRun {
                time: NOW + 2 * DAY,
                study_id: study.id.clone(),
                query_sha256: spec.hash(),
                approval_sha256: signed_approval.payload_digest(),
                researcher: spec.researcher.clone(),
                purpose: spec.purpose.clone(),
                donors_considered: 1,
                cells_published: 0,
                cells_suppressed: 12,
                privacy: None,
            },
            LedgerEntry::ConsentWithdrawn {
                time: withdrawal.withdrawn_at,
                study_id: study.id.clone(),
                pseudonym,
                consent_record_id: manifest.record_id,
                withdrawal_sha256: signed_withdrawal.payload_digest(),
            },
            LedgerEntry::ErasureDone {
                time: withdrawal.withdrawn_at + DAY,
                study_id: study.id.clone(),
                pseudonym,
                consent_record_id: Some(manifest.record_id),
                rows_erased: 3,
                batches_rewritten: vec![h(&batch_id)],
            },
        ];
        let entry_bytes: Vec<Vec<u8>> = entries.iter().map(LedgerEntry::to_bytes).collect();
        let leaves = entry_bytes.iter().map(|b| merkle::leaf_hash(b)).collect();

        Self {
            steward,
            donor,
            mallory,
            ledger,
            approver,
            intake1,
            intake2,
            vault,
            oprf,
            study,
            signed_study,
            study_sha,
            pseudonym,
            manifest,
            signed_manifest,
            rows,
            ipc,
            payload,
            envelope,
            withdrawal,
            signed_withdrawal,
            approval,
            signed_approval,
            entries,
            entry_bytes,
            leaves,
        }
    }

    fn study_payload_text(&self) -> String {
        utf8(&self.signed_study.payload)
    }

    /// The ledger key's signed checkpoint of the first `size` entries.
    fn checkpoint(&self, size: usize) -> String {
        let cp = Checkpoint::new(ORIGIN, size as u64, merkle::root(&self.leaves[..size]))
            .expect("origin is valid");
        checkpoint::sign(&cp, ORIGIN, self.ledger.key_pair()).expect("sign checkpoint")
    }

    fn vkey(&self) -> String {
        NoteVerifier::new(ORIGIN, self.ledger.public_key().0)
            .expect("valid key name")
            .to_vkey()
    }
}

// ---------------------------------------------------------------------------------------------
// signed-object.json

const SIGNED_OBJECT_FIELDS: [(&str, &str); 4] = [
    ("context", "the context label: which message type this is"),
    (
        "payload",
        "standard base64 (padded) of the exact JSON body bytes that were signed",
    ),
    (
        "public_key",
        "standard base64 of the signer's 32-byte Ed25519 public key",
    ),
    (
        "signature",
        "standard base64 of the 64-byte Ed25519 signature over the signed bytes",
    ),
];

fn signed_bytes_layout(ctx: Context, payload: &[u8]) -> J {
    Layout::new()
        .add(b"datadonor/v1", "prefix", "ASCII \"datadonor/v1\"")
        .add(&[0], "separator", "0x00")
        .add(ctx.label().as_bytes(), "context", "ASCII context label")
        .add(&[0], "separator", "0x00")
        .add(
            payload,
            "payload",
            "the payload bytes exactly as carried (base64-decoded)",
        )
        .done()
}

fn signed_object_vector(name: &str, obj: &SignedObject, wire: &str, signer: &str) -> J {
    let ctx = Context::ALL
        .into_iter()
        .find(|c| c.label() == obj.context)
        .expect("known context");
    obj! {
        "name" => name,
        "kind" => "signed-object",
        "signer" => signer,
        "context" => &obj.context,
        "payload_text" => utf8(&obj.payload),
        "payload_sha256_hex" => h(&obj.payload_digest()),
        "signed_bytes_hex" => h(&signed_bytes(ctx, &obj.payload)),
        "signed_bytes_layout" => signed_bytes_layout(ctx, &obj.payload),
        "public_key_b64" => obj.public_key.to_base64(),
        "signature_b64" => b64(&obj.signature),
        "wire_text" => wire,
        "wire_fields" => annotate(obj, &SIGNED_OBJECT_FIELDS),
    }
}

fn signed_object_file(fx: &Fixture) -> J {
    let mut valid = Vec::new();
    for ctx in Context::ALL {
        let payload = format!(
            "{{\"note\":\"signed-object vector\",\"context\":\"{}\"}}",
            ctx.label()
        );
        let o = sign_payload(ctx, payload.into_bytes(), &fx.steward);
        valid.push(signed_object_vector(
            &format!("context-{}", ctx.label()),
            &o,
            &utf8(&o.to_bytes()),
            "steward",
        ));
    }
    // The wrapper's member order and inner whitespace are not signed: a verifier that gets the
    // same four members in another layout verifies the same payload.
    let base = sign_payload(
        Context::ConsentManifest,
        b"{\"note\":\"signed-object vector\",\"context\":\"consent-manifest\"}".to_vec(),
        &fx.steward,
    );
    let reordered = format!(
        " {{ \"signature\" : \"{}\",\n \"public_key\":\"{}\", \"payload\":\"{}\", \"context\":\"{}\"}}",
        b64(&base.signature),
        base.public_key.to_base64(),
        b64(&base.payload),
        base.context
    );
    valid.push(signed_object_vector(
        "members-reordered-and-spaced",
        &base,
        &reordered,
        "steward",
    ));

    let wire = utf8(&base.to_bytes());
    let d = "SignedObject::from_bytes+verify";
    let m = |name: &str, input: Input, expect: &str| {
        with(mal(name, d, input, expect), "verify_as", "consent-manifest")
    };
    let json = "SignatureError::Malformed(WireError::Json)";
    let badsig = "SignatureError::BadSignature";
    let mut malformed = vec![
        m("empty-input", Input::Text(String::new()), json),
        m(
            "trailing-newline",
            Input::Text(format!("{wire}\n")),
            "SignatureError::Malformed(WireError::TrailingBytes)",
        ),
        m(
            "trailing-space",
            Input::Text(format!("{wire} ")),
            "SignatureError::Malformed(WireError::TrailingBytes)",
        ),
        m("trailing-garbage", Input::Text(format!("{wire}x")), json),
        m(
            "two-objects-concatenated",
            Input::Text(format!("{wire}{wire}")),
            json,
        ),
        m("json-array", Input::Text(format!("[{wire}]")), json),
        m(
            "utf8-bom-prefix",
            Input::Hex([&[0xef, 0xbb, 0xbf][..], wire.as_bytes()].concat()),
            json,
        ),
        m(
            "unknown-member",
            Input::Text(wire.replacen('{', "{\"extra\":1,", 1)),
            json,
        ),
        m(
            "member-name-capitalised",
            Input::Text(wire.replacen("\"context\"", "\"Context\"", 1)),
            json,
        ),
        m(
            "duplicate-member",
            Input::Text(wire.replacen('{', "{\"context\":\"consent-manifest\",", 1)),
            json,
        ),
        m(
            "missing-signature",
            Input::Text(format!(
                "{{\"context\":\"consent-manifest\",\"payload\":\"{}\",\"public_key\":\"{}\"}}",
                b64(&base.payload),
                base.public_key.to_base64()
            )),
            json,
        ),
        m(
            "context-not-a-string",
            Input::Text(wire.replacen("\"consent-manifest\"", "5", 1)),
            json,
        ),
        m(
            "payload-not-base64",
            Input::Text(wire.replacen(&b64(&base.payload), "!!!!", 1)),
            json,
        ),
        m(
            "public-key-31-bytes",
            Input::Text(wire.replacen(
                &base.public_key.to_base64(),
                &b64(&base.public_key.0[..31]),
                1,
            )),
            json,
        ),
        m(
            "signature-base64-unpadded",
            Input::Text(wire.replacen(
                &b64(&base.signature),
                b64(&base.signature).trim_end_matches('='),
                1,
            )),
            json,
        ),
        m(
            "signature-base64-noncanonical-trailing-bits",
            Input::Text(wire.replacen(
                &b64(&base.signature),
                &noncanonical_b64(&base.signature),
                1,
            )),
            json,
        ),
        m(
            "oversize",
            Input::Repeat("a", datadonor_schemas::signing::MAX_SIGNED_OBJECT_LEN + 1),
            "SignatureError::Malformed(WireError::TooLarge)",
        ),
    ];
    let mut flip_sig = base.clone();
    flip_sig.signature[0] ^= 0x01;
    let mut short_sig = base.clone();
    short_sig.signature.truncate(63);
    let mut hex_sig = base.clone();
    hex_sig.signature = STANDARD
        .decode(h(&base.signature))
        .expect("hex digits are base64");
    let mut flip_payload = base.clone();
    flip_payload.payload[2] ^= 0x01;
    let mut other_key = base.clone();
    other_key.public_key = fx.mallory.public_key();
    let as_withdrawal = sign_payload(Context::Withdrawal, base.payload.clone(), &fx.steward);
    let mut relabelled = as_withdrawal.clone();
    relabelled.context = "consent-manifest".into();
    let mut unknown_label = base.clone();
    unknown_label.context = "consent".into();
    let t = |o: &SignedObject| Input::Text(utf8(&o.to_bytes()));
    malformed.extend([
        m("signature-bit-flipped", t(&flip_sig), badsig),
        m("signature-63-bytes", t(&short_sig), badsig),
        m("signature-hex-digits-read-as-base64", t(&hex_sig), badsig),
        m("payload-bit-flipped", t(&flip_payload), badsig),
        m("public-key-of-another-signer", t(&other_key), badsig),
        m(
            "signed-as-withdrawal",
            t(&as_withdrawal),
            "SignatureError::WrongContext",
        ),
        m("withdrawal-signature-relabelled", t(&relabelled), badsig),
        m(
            "unknown-context-label",
            t(&unknown_label),
            "SignatureError::WrongContext",
        ),
    ]);
    let contexts: Vec<J> = Context::ALL
        .iter()
        .map(|c| J::Str(c.label().to_string()))
        .collect();
    finish(
        file_head(
            "signed-object",
            "The signed-object wrapper every signed message uses. Valid vectors: one per context, signed by the steward key, plus one wire layout that must verify identically. Malformed vectors are decoded with SignedObject::from_bytes then verify(verify_as).",
            "Signed objects",
        ),
        vec![
            ("keys", obj! { "steward" => ed_key_json("steward", &fx.steward), "mallory" => ed_key_json("mallory", &fx.mallory) }),
            ("contexts", J::Arr(contexts)),
        ],
        valid,
        malformed,
    )
}

/// The base64 of `b` with the unused low bits of the last symbol set (decoders must reject it).
fn noncanonical_b64(b: &[u8]) -> String {
    let s = b64(b);
    let trimmed = s.trim_end_matches('=');
    let pad = s.len() - trimmed.len();
    let last = trimmed.chars().last().expect("non-empty");
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let idx = ALPHABET.find(last).expect("base64 symbol");
    let bumped = ALPHABET.as_bytes()[idx | 1] as char;
    format!(
        "{}{}{}",
        &trimmed[..trimmed.len() - 1],
        bumped,
        "=".repeat(pad)
    )
}

// ---------------------------------------------------------------------------------------------
// study-definition.json

const STUDY_FIELDS: [(&str, &str); 14] = [
    ("format", "format version, must be 1"),
    ("id", "study id: 3-64 of [a-z0-9-], starting with a letter"),
    (
        "version",
        "study version, at least 1; a changed definition gets a higher one",
    ),
    ("title", "title shown to donors"),
    ("controller", "the data controller: {name, contact}"),
    (
        "purposes",
        "purposes a donor can choose among: [{code, text}], codes 1-64 of [a-z0-9-], distinct",
    ),
    (
        "period",
        "generalisation of observation dates: day | week | month",
    ),
    (
        "min_k",
        "minimum distinct donors behind any published cell, at least 2",
    ),
    (
        "retention_days",
        "retention of donated data, days from donation",
    ),
    (
        "max_consent_days",
        "largest consent expiry a donor may choose, days from consent, at least 1",
    ),
    (
        "notice_sha256",
        "SHA-256 of the consent notice text (examples/t2d-notice.md), lowercase hex",
    ),
    (
        "fields",
        "fields collected, in column order (after donor and period)",
    ),
    (
        "privacy",
        "differential privacy: {epsilon, delta} for the study, {researcher_epsilon, researcher_delta} per researcher, max_rows_per_cell (L), max_cells_per_donor (C); optional, the query service refuses a study without it",
    ),
    (
        "translations",
        "the donor-facing texts in other languages: [{language, title, purposes: {code: text}, notice_sha256}] (here Danish, notice examples/t2d-notice.da.md); optional, omitted when empty",
    ),
];

fn arrow_type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 => "utf8".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "bool".into(),
        other => format!("{other:?}"),
    }
}

fn study_file(fx: &Fixture) -> J {
    let study = &fx.study;
    let schema = study.arrow_schema();
    let columns: Vec<J> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut c = obj! {
                "name" => f.name().as_str(),
                "type" => arrow_type_name(f.data_type()),
                "nullable" => f.is_nullable(),
            };
            if let Some(spec) = study.field(f.name()) {
                match spec.field_type() {
                    FieldType::Number { min, max } => {
                        c.push("min", Value::from(min));
                        c.push("max", Value::from(max));
                    }
                    FieldType::Category(v) => c.push("values", strs(&v)),
                    FieldType::Flag => {}
                }
            } else if f.name() == "donor" {
                c.push("values", "64 lowercase hex digits: the per-study pseudonym");
            } else {
                c.push(
                    "values",
                    "a period of the study's granularity (month: YYYY-MM)",
                );
            }
            c
        })
        .collect();
    let mut study_vec = obj! {
        "name" => "t2d-dk",
        "kind" => "study",
        "toml_text" => STUDY_TOML,
        "json_text" => fx.study_payload_text(),
        "fields" => annotate(study, &STUDY_FIELDS),
        "notice_text" => NOTICE,
        "signed_by" => "steward",
        "signed_text" => utf8(&fx.signed_study.to_bytes()),
        "payload_sha256_hex" => h(&fx.study_sha),
        "arrow_schema" => J::Arr(columns),
    };
    study_vec.push(
        "note",
        "json_text is the compact serde_json form of the parsed TOML (f64 always with a fraction); study_sha256 in manifests is SHA-256 of these exact payload bytes",
    );

    let rows_vec = |name: &str, ipc: &[u8], rows: &Rows, note: &str| {
        obj! {
            "name" => name,
            "kind" => "rows",
            "note" => note,
            "ipc_hex" => h(ipc),
            "ipc_messages" => ipc_messages(ipc),
            "pseudonym" => fx.pseudonym.to_hex(),
            "rows" => rows.json(),
        }
    };
    let two_batches = {
        let schema = study.arrow_schema();
        let mut first = fx.rows.clone();
        let mut second = fx.rows.clone();
        keep_rows(&mut first, 0..2);
        keep_rows(&mut second, 2..3);
        let mut out = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).expect("ipc writer");
            w.write(&first.batch(&schema)).expect("write");
            w.write(&second.batch(&schema)).expect("write");
            w.finish().expect("finish");
        }
        out
    };
    let mut valid = vec![
        study_vec,
        rows_vec(
            "rows-three-months",
            &fx.ipc,
            &fx.rows,
            "one record batch; the rows of the envelope vector",
        ),
        rows_vec(
            "rows-two-record-batches",
            &two_batches,
            &fx.rows,
            "the same rows split over two record batches of one stream; decoders concatenate them",
        ),
    ];
    valid.push(obj! {
        "name" => "age-band-labels",
        "kind" => "age_band_labels",
        "cases" => J::Arr(vec![
            obj! { "years" => 10u8, "min_age" => 18u8, "top_age" => 90u8, "labels" => strs(&age_band_labels(10, 18, 90)) },
            obj! { "years" => 5u8, "min_age" => 0u8, "top_age" => 85u8, "labels" => strs(&age_band_labels(5, 0, 85)) },
            obj! { "years" => 10u8, "min_age" => 16u8, "top_age" => 65u8, "labels" => strs(&age_band_labels(10, 16, 65)) },
        ]),
    });
    let ages: Vec<J> = [17u8, 18, 19, 20, 29, 35, 89, 90, 91, 120]
        .into_iter()
        .map(|a| obj! { "age" => a, "years" => 10u8, "min_age" => 18u8, "top_age" => 90u8, "label" => age_band_label(a, 10, 18, 90) })
        .collect();
    valid.push(obj! { "name" => "age-band-of-age", "kind" => "age_band", "cases" => J::Arr(ages) });
    let dates = [
        ("2024-03-05", "month"),
        ("2024-03-05", "day"),
        ("2024-03-05", "week"),
        ("2024-12-30", "week"),
        ("2021-01-03", "week"),
        ("2020-12-31", "week"),
    ];
    let periods: Vec<J> = dates
        .iter()
        .map(|(d, g)| {
            let date: jiff::civil::Date = d.parse().expect("date");
            let gran = granularity(g);
            obj! { "date" => *d, "granularity" => *g, "period" => gran.period_of(date) }
        })
        .collect();
    valid.push(
        obj! { "name" => "period-of-date", "kind" => "period_of", "cases" => J::Arr(periods) },
    );
    let checks = [
        ("2024-02", "month", true),
        ("2024-12", "month", true),
        ("2024-13", "month", false),
        ("2024-00", "month", false),
        ("2024-3", "month", false),
        ("2024/03", "month", false),
        ("2024-02-29", "day", true),
        ("2023-02-29", "day", false),
        ("2024-02-30", "day", false),
        ("2020-W53", "week", true),
        ("2021-W53", "week", false),
        ("2024-W00", "week", false),
        ("2024-w10", "week", false),
        ("+024-03", "month", false),
    ];
    let checks: Vec<J> = checks
        .iter()
        .map(|(p, g, ok)| obj! { "period" => *p, "granularity" => *g, "valid" => *ok })
        .collect();
    valid.push(
        obj! { "name" => "period-validity", "kind" => "period_valid", "cases" => J::Arr(checks) },
    );
    let postcodes: Vec<J> = [
        "8000", "DK-5000", " 2100 ", "9000", "4000", "7400", "3700", "0800", "80000", "80a0",
    ]
    .into_iter()
    .map(|p| {
        let mu = datadonor_schemas::geo::municipality_of_postcode(p);
        obj! {
            "postcode" => p,
            "municipality" => mu.map(|m| m.code),
            "region" => mu.map(|m| m.region.label()),
        }
    })
    .collect();
    valid.push(obj! { "name" => "residence-of-postcode", "kind" => "residence", "cases" => J::Arr(postcodes) });

    // Malformed definitions.
    let json = fx.study_payload_text();
    let dj = "StudyDefinition::from_json";
    let inv = "StudyError::Invalid";
    let sj = |s: &StudyDefinition| Input::Text(utf8(&to_json_bytes(s)));
    let variant = |f: &dyn Fn(&mut StudyDefinition)| {
        let mut s = study.clone();
        f(&mut s);
        sj(&s)
    };
    let mut malformed = vec![
        mal(
            "json-unknown-member",
            dj,
            Input::Text(json.replacen('{', "{\"extra\":true,", 1)),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "json-trailing-newline",
            dj,
            Input::Text(format!("{json}\n")),
            "StudyError::Malformed(WireError::TrailingBytes)",
        ),
        mal(
            "json-notice-hash-uppercase",
            dj,
            Input::Text(json.replacen(
                &h(&study.notice_sha256),
                &h(&study.notice_sha256).to_uppercase(),
                1,
            )),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "json-notice-hash-31-bytes",
            dj,
            Input::Text(json.replacen(&h(&study.notice_sha256), &h(&study.notice_sha256[..31]), 1)),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "json-study-id-uppercase",
            dj,
            Input::Text(json.replacen("\"t2d-dk\"", "\"T2D-dk\"", 1)),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "json-unknown-source-kind",
            dj,
            Input::Text(json.replacen("\"kind\":\"sex\"", "\"kind\":\"gender\"", 1)),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "json-min-k-negative",
            dj,
            Input::Text(json.replacen("\"min_k\":5", "\"min_k\":-5", 1)),
            "StudyError::Malformed(WireError::Json)",
        ),
        mal(
            "oversize",
            dj,
            Input::Repeat(" ", datadonor_schemas::study::MAX_STUDY_LEN + 1),
            "StudyError::Malformed(WireError::TooLarge)",
        ),
        mal("format-2", dj, variant(&|s| s.format = 2), inv),
        mal("version-0", dj, variant(&|s| s.version = 0), inv),
        mal("no-purposes", dj, variant(&|s| s.purposes.clear()), inv),
        mal(
            "purpose-code-twice",
            dj,
            variant(&|s| {
                let p = s.purposes[0].clone();
                s.purposes.push(p);
            }),
            inv,
        ),
        mal(
            "purpose-code-uppercase",
            dj,
            variant(&|s| s.purposes[0].code = "T2D".into()),
            inv,
        ),
        mal("min-k-1", dj, variant(&|s| s.min_k = 1), inv),
        mal(
            "max-consent-days-0",
            dj,
            variant(&|s| s.max_consent_days = 0),
            inv,
        ),
        mal("no-measure", dj, variant(&|s| s.fields.truncate(4)), inv),
        mal(
            "field-named-twice",
            dj,
            variant(&|s| s.fields[1].name = "age_band".into()),
            inv,
        ),
        mal(
            "field-named-donor",
            dj,
            variant(&|s| s.fields[0].name = "donor".into()),
            inv,
        ),
        mal(
            "field-name-uppercase",
            dj,
            variant(&|s| s.fields[4].name = "HbA1c".into()),
            inv,
        ),
        mal(
            "observation-min-not-below-max",
            dj,
            variant(&|s| {
                if let datadonor_schemas::study::FieldSource::Observation { min, max, .. } =
                    &mut s.fields[4].source
                {
                    *min = *max;
                }
            }),
            inv,
        ),
        mal(
            "observation-conversion-factor-0",
            dj,
            variant(&|s| {
                if let datadonor_schemas::study::FieldSource::Observation { convert, .. } =
                    &mut s.fields[4].source
                {
                    convert[0].factor = 0.0;
                }
            }),
            inv,
        ),
        mal(
            "observation-as-dimension",
            dj,
            variant(&|s| s.fields[4].role = datadonor_schemas::study::Role::Dimension),
            inv,
        ),
        mal(
            "condition-as-measure",
            dj,
            variant(&|s| s.fields[3].role = datadonor_schemas::study::Role::Measure),
            inv,
        ),
        mal(
            "age-band-min-age-not-below-top-age",
            dj,
            variant(&|s| {
                if let datadonor_schemas::study::FieldSource::AgeBand {
                    min_age, top_age, ..
                } = &mut s.fields[0].source
                {
                    *min_age = *top_age;
                }
            }),
            inv,
        ),
        mal(
            "condition-without-codes",
            dj,
            variant(&|s| {
                if let datadonor_schemas::study::FieldSource::Condition { codes } =
                    &mut s.fields[3].source
                {
                    codes.clear();
                }
            }),
            inv,
        ),
        mal(
            "65-fields",
            dj,
            variant(&|s| {
                let f = s.fields[4].clone();
                s.fields = (0..65)
                    .map(|i| {
                        let mut g = f.clone();
                        g.name = format!("m{i}");
                        g
                    })
                    .collect();
            }),
            inv,
        ),
    ];
    let dt = "StudyDefinition::from_toml";
    malformed.extend([
        mal(
            "toml-syntax-error",
            dt,
            Input::Text(STUDY_TOML.replacen("format = 1", "format = ", 1)),
            "StudyError::Toml",
        ),
        mal(
            "toml-unknown-key",
            dt,
            Input::Text(STUDY_TOML.replacen("format = 1", "format = 1\nsponsor = \"x\"", 1)),
            "StudyError::Toml",
        ),
        mal(
            "toml-min-k-as-string",
            dt,
            Input::Text(STUDY_TOML.replacen("min_k = 5", "min_k = \"5\"", 1)),
            "StudyError::Toml",
        ),
        mal(
            "toml-period-quarter",
            dt,
            Input::Text(STUDY_TOML.replacen("period = \"month\"", "period = \"quarter\"", 1)),
            "StudyError::Toml",
        ),
        mal(
            "toml-valid-syntax-invalid-study",
            dt,
            Input::Text(STUDY_TOML.replacen("min_k = 5", "min_k = 1", 1)),
            inv,
        ),
        mal(
            "toml-oversize",
            dt,
            Input::Repeat("#", datadonor_schemas::study::MAX_STUDY_LEN + 1),
            "StudyError::Malformed(WireError::TooLarge)",
        ),
    ]);
    let ds = "signed-study";
    let as_approval = sign_payload(
        Context::QueryApproval,
        fx.signed_study.payload.clone(),
        &fx.steward,
    );
    let mut flipped = fx.signed_study.clone();
    let pos = flipped
        .payload
        .windows(7)
        .position(|w| w == b"\"min_k\"")
        .expect("min_k in payload")
        + 8;
    flipped.payload[pos] ^= 0x01;
    let invalid_signed = sign_payload(
        Context::StudyDefinition,
        utf8(&fx.signed_study.payload)
            .replacen("\"min_k\":5", "\"min_k\":1", 1)
            .into_bytes(),
        &fx.steward,
    );
    let t = |o: &SignedObject| Input::Text(utf8(&o.to_bytes()));
    malformed.extend([
        mal(
            "signed-as-query-approval",
            ds,
            t(&as_approval),
            "SignatureError::WrongContext",
        ),
        mal(
            "signed-min-k-digit-flipped",
            ds,
            t(&flipped),
            "SignatureError::BadSignature",
        ),
        mal("signed-by-steward-but-invalid", ds, t(&invalid_signed), inv),
    ]);

    // Malformed rows.
    let dr = "rows";
    let schema = study.arrow_schema();
    let rows_in = |r: &Rows| Input::Hex(rows_to_ipc(&r.batch(&schema)).expect("ipc"));
    let rv = |f: &dyn Fn(&mut Rows)| {
        let mut r = fx.rows.clone();
        f(&mut r);
        rows_in(&r)
    };
    let custom = |fields: Vec<Field>, cols: Vec<ArrayRef>| {
        let s = Arc::new(Schema::new(fields));
        Input::Hex(rows_to_ipc(&RecordBatch::try_new(s, cols).expect("batch")).expect("ipc"))
    };
    let base_fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let base_cols = fx.rows.columns();
    let replace = |i: usize, f: Field, c: ArrayRef| {
        let mut fs = base_fields.clone();
        let mut cs = base_cols.clone();
        fs[i] = f;
        cs[i] = c;
        custom(fs, cs)
    };
    let bad = |name: &str, input: Input, row: usize, field: &str| {
        with(
            mal(name, dr, input, "StudyError::BadValue"),
            "expect_detail",
            format!("row {row}, field {field}"),
        )
    };
    let mism = "StudyError::SchemaMismatch";
    let ipc_err = "StudyError::Ipc";
    let half = fx.ipc.len() / 2;
    let ipcm = |name: &str, input: Input, expect: &str| mal(name, dr, input, expect);
    let mut rows_mal = vec![
        ipcm("ipc-empty", Input::Hex(Vec::new()), ipc_err),
        ipcm(
            "ipc-parquet-magic",
            Input::Hex(b"PAR1\0\0\0\0".to_vec()),
            ipc_err,
        ),
        ipcm(
            "ipc-truncated-inside-schema",
            Input::Hex(fx.ipc[..40].to_vec()),
            ipc_err,
        ),
        ipcm(
            "ipc-truncated-inside-record-batch",
            Input::Hex(fx.ipc[..half].to_vec()),
            ipc_err,
        ),
        ipcm(
            "ipc-bad-continuation-marker",
            Input::Hex([&[0xfe][..], &fx.ipc[1..]].concat()),
            ipc_err,
        ),
        with(
            with(
                ipcm(
                    "ipc-compressed-lz4-frame",
                    Input::Hex(declare_compression(
                        &fx.ipc,
                        arrow::ipc::CompressionType::LZ4_FRAME,
                    )),
                    ipc_err,
                ),
                "expect_detail",
                "compressed batches are not accepted",
            ),
            "note",
            "the rows of rows-three-months with the record batch declaring LZ4_FRAME body compression (method BUFFER), every buffer stored behind the uncompressed-length prefix -1 (int64 LE): a valid compressed Arrow stream, refused because the batch declares compression",
        ),
        with(
            with(
                ipcm(
                    "ipc-compressed-zstd",
                    Input::Hex(declare_compression(&fx.ipc, arrow::ipc::CompressionType::ZSTD)),
                    ipc_err,
                ),
                "expect_detail",
                "compressed batches are not accepted",
            ),
            "note",
            "as ipc-compressed-lz4-frame with the codec ZSTD",
        ),
        with(
            with(
                ipcm(
                    "ipc-bytes-after-end-of-stream",
                    Input::Hex([fx.ipc.as_slice(), &[0u8; 8]].concat()),
                    ipc_err,
                ),
                "expect_detail",
                "bytes after the end-of-stream marker",
            ),
            "note",
            "the valid stream followed by eight zero bytes after its end-of-stream marker",
        ),
        ipcm(
            "column-missing",
            custom(base_fields[..10].to_vec(), base_cols[..10].to_vec()),
            mism,
        ),
        ipcm(
            "extra-column",
            {
                let mut fs = base_fields.clone();
                let mut cs = base_cols.clone();
                fs.push(Field::new("postcode", DataType::Utf8, false));
                cs.push(Arc::new(StringArray::from(vec!["5000"; 3])));
                custom(fs, cs)
            },
            mism,
        ),
        ipcm(
            "columns-swapped",
            {
                let mut fs = base_fields.clone();
                let mut cs = base_cols.clone();
                fs.swap(7, 8);
                cs.swap(7, 8);
                custom(fs, cs)
            },
            mism,
        ),
        ipcm(
            "hba1c-float32",
            replace(
                6,
                Field::new("hba1c", DataType::Float32, true),
                Arc::new(Float32Array::from(vec![Some(6.1f32), None, Some(7.25)])),
            ),
            mism,
        ),
        ipcm(
            "sex-nullable",
            replace(
                3,
                Field::new("sex", DataType::Utf8, true),
                base_cols[3].clone(),
            ),
            mism,
        ),
        ipcm(
            "hba1c-not-nullable",
            replace(
                6,
                Field::new("hba1c", DataType::Float64, false),
                Arc::new(Float64Array::from(vec![6.1, 6.2, 7.25])),
            ),
            mism,
        ),
        ipcm(
            "donor-large-utf8",
            replace(
                0,
                Field::new("donor", DataType::LargeUtf8, false),
                Arc::new(arrow::array::LargeStringArray::from(fx.rows.donor.clone())),
            ),
            mism,
        ),
        ipcm(
            "region-dictionary-encoded",
            replace(
                4,
                Field::new(
                    "region",
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    false,
                ),
                Arc::new(
                    fx.rows
                        .region
                        .iter()
                        .map(String::as_str)
                        .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
                ),
            ),
            mism,
        ),
        ipcm(
            "column-renamed",
            replace(
                7,
                Field::new("BMI", DataType::Float64, true),
                base_cols[7].clone(),
            ),
            mism,
        ),
        bad(
            "hba1c-above-max",
            rv(&|r| r.hba1c[2] = Some(20.5)),
            2,
            "hba1c",
        ),
        bad(
            "systolic-below-min",
            rv(&|r| r.systolic[0] = Some(49.0)),
            0,
            "systolic",
        ),
        bad(
            "hba1c-nan",
            rv(&|r| r.hba1c[0] = Some(f64::NAN)),
            0,
            "hba1c",
        ),
        bad(
            "bmi-infinite",
            rv(&|r| r.bmi[1] = Some(f64::INFINITY)),
            1,
            "bmi",
        ),
        bad(
            "region-capitalised",
            rv(&|r| r.region[1] = "Syddanmark".into()),
            1,
            "region",
        ),
        bad("sex-abbreviated", rv(&|r| r.sex[0] = "f".into()), 0, "sex"),
        bad(
            "age-band-not-a-band",
            rv(&|r| r.age_band[2] = "35-44".into()),
            2,
            "age_band",
        ),
        bad(
            "age-band-below-min-age",
            rv(&|r| r.age_band[0] = "10-17".into()),
            0,
            "age_band",
        ),
        bad(
            "period-month-13",
            rv(&|r| r.period[1] = "2024-13".into()),
            1,
            "period",
        ),
        bad(
            "period-day-in-month-study",
            rv(&|r| r.period[0] = "2024-01-15".into()),
            0,
            "period",
        ),
        bad(
            "donor-uppercase-hex",
            rv(&|r| r.donor[0] = r.donor[0].to_uppercase()),
            0,
            "donor",
        ),
        bad(
            "donor-63-digits",
            rv(&|r| r.donor[2].truncate(63)),
            2,
            "donor",
        ),
        bad(
            "donor-differs-from-pseudonym",
            rv(&|r| r.donor[1] = "0".repeat(64)),
            1,
            "donor",
        ),
        bad(
            "row-without-measure",
            rv(&|r| {
                r.glucose[1] = None;
                r.bmi[1] = None;
            }),
            1,
            "*",
        ),
        with(
            ipcm(
                "more-rows-than-the-limit",
                rows_in(&fx.rows),
                "StudyError::TooManyRows",
            ),
            "max_rows",
            2u32,
        ),
    ];
    for v in &mut rows_mal {
        v.push("pseudonym", fx.pseudonym.to_hex());
    }
    malformed.extend(rows_mal);

    finish(
        file_head(
            "study-definition",
            "Study definitions (TOML and JSON, signed), the Arrow schema of their rows, the rows encoding (Arrow IPC stream), and the generalisation tables. Rows decoders: rows_from_ipc(ipc, max_rows) then validate_rows(study t2d-dk, pseudonym).",
            "Study definitions",
        ),
        vec![
            ("keys", obj! { "steward" => ed_key_json("steward", &fx.steward) }),
            (
                "decoders",
                obj! {
                    "StudyDefinition::from_json" => "parse the JSON payload strictly, then validate",
                    "StudyDefinition::from_toml" => "parse the authored TOML, then validate",
                    "signed-study" => "SignedObject::from_bytes, verify(study-definition), StudyDefinition::from_json(payload)",
                    "rows" => "rows_from_ipc(input, max_rows, default 10000) then validate_rows against valid[0] with the given pseudonym",
                },
            ),
        ],
        valid,
        malformed,
    )
}

fn granularity(g: &str) -> Granularity {
    match g {
        "day" => Granularity::Day,
        "week" => Granularity::Week,
        _ => Granularity::Month,
    }
}

fn keep_rows(r: &mut Rows, range: std::ops::Range<usize>) {
    fn k<T: Clone>(v: &mut Vec<T>, range: &std::ops::Range<usize>) {
        *v = v[range.clone()].to_vec();
    }
    k(&mut r.donor, &range);
    k(&mut r.period, &range);
    k(&mut r.age_band, &range);
    k(&mut r.sex, &range);
    k(&mut r.region, &range);
    k(&mut r.t2d, &range);
    k(&mut r.hba1c, &range);
    k(&mut r.bmi, &range);
    k(&mut r.systolic, &range);
    k(&mut r.diastolic, &range);
    k(&mut r.glucose, &range);
}

/// The framing of an Arrow IPC stream: each encapsulated message and the end-of-stream marker.
fn ipc_messages(ipc: &[u8]) -> J {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 8 <= ipc.len() {
        let meta_len =
            u32::from_le_bytes(ipc[off + 4..off + 8].try_into().expect("4 bytes")) as usize;
        if meta_len == 0 {
            out.push(obj! {
                "offset" => off,
                "len" => 8usize,
                "kind" => "end of stream: 0xFFFFFFFF then int32 0",
            });
            off += 8;
            continue;
        }
        let msg = arrow::ipc::root_as_message(&ipc[off + 8..off + 8 + meta_len])
            .expect("flatbuffer message");
        let body = usize::try_from(msg.bodyLength()).expect("non-negative");
        let kind = match msg.header_type() {
            arrow::ipc::MessageHeader::Schema => "schema message",
            arrow::ipc::MessageHeader::RecordBatch => "record batch message",
            arrow::ipc::MessageHeader::DictionaryBatch => "dictionary batch message",
            _ => "other message",
        };
        out.push(obj! {
            "offset" => off,
            "len" => 8 + meta_len + body,
            "kind" => kind,
            "framing" => format!("0xFFFFFFFF, int32 LE metadata length {meta_len} (flatbuffer Message, padded to 8), then {body} body bytes"),
        });
        off += 8 + meta_len + body;
    }
    assert_eq!(off, ipc.len(), "IPC framing covers the stream");
    J::Arr(out)
}

/// The stream `ipc` with every record batch message re-framed to declare body compression
/// (`BodyCompression { codec, method: BUFFER }`), each non-empty buffer stored as the Arrow
/// format allows when compressing would not shrink it: the int64 LE uncompressed length `-1`,
/// then the buffer's bytes as they were (each buffer padded to 8 bytes). A reader with that
/// codec decodes the same rows; Datadonor refuses the stream because it declares compression.
fn declare_compression(ipc: &[u8], codec: arrow::ipc::CompressionType) -> Vec<u8> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 8 <= ipc.len() {
        let meta_len =
            u32::from_le_bytes(ipc[off + 4..off + 8].try_into().expect("4 bytes")) as usize;
        if meta_len == 0 {
            out.extend_from_slice(&ipc[off..off + 8]);
            off += 8;
            continue;
        }
        let meta = &ipc[off + 8..off + 8 + meta_len];
        let msg = arrow::ipc::root_as_message(meta).expect("flatbuffer message");
        let body_len = usize::try_from(msg.bodyLength()).expect("non-negative");
        let body = &ipc[off + 8 + meta_len..off + 8 + meta_len + body_len];
        let Some(rb) = msg.header_as_record_batch() else {
            out.extend_from_slice(&ipc[off..off + 8 + meta_len + body_len]);
            off += 8 + meta_len + body_len;
            continue;
        };
        let mut new_body = Vec::new();
        let mut buffers = Vec::new();
        for b in rb.buffers().expect("buffers").iter() {
            let start = usize::try_from(b.offset()).expect("offset");
            let raw = &body[start..start + usize::try_from(b.length()).expect("length")];
            let at = new_body.len();
            if !raw.is_empty() {
                new_body.extend_from_slice(&(-1i64).to_le_bytes());
                new_body.extend_from_slice(raw);
            }
            let len = new_body.len() - at;
            new_body.resize(new_body.len().div_ceil(8) * 8, 0);
            buffers.push(arrow::ipc::Buffer::new(at as i64, len as i64));
        }
        let nodes: Vec<arrow::ipc::FieldNode> =
            rb.nodes().expect("nodes").iter().copied().collect();
        let mut fbb = arrow::ipc::convert::IpcSchemaEncoder::new().schema_to_fb(&Schema::empty());
        fbb.reset();
        let nodes = fbb.create_vector(&nodes);
        let buffers = fbb.create_vector(&buffers);
        let compression = {
            let mut c = arrow::ipc::BodyCompressionBuilder::new(&mut fbb);
            c.add_codec(codec);
            c.add_method(arrow::ipc::BodyCompressionMethod::BUFFER);
            c.finish()
        };
        let batch = {
            let mut b = arrow::ipc::RecordBatchBuilder::new(&mut fbb);
            b.add_length(rb.length());
            b.add_nodes(nodes);
            b.add_buffers(buffers);
            b.add_compression(compression);
            b.finish().as_union_value()
        };
        let root = {
            let mut m = arrow::ipc::MessageBuilder::new(&mut fbb);
            m.add_version(msg.version());
            m.add_header_type(arrow::ipc::MessageHeader::RecordBatch);
            m.add_bodyLength(new_body.len() as i64);
            m.add_header(batch);
            m.finish()
        };
        fbb.finish(root, None);
        let mut new_meta = fbb.finished_data().to_vec();
        new_meta.resize(new_meta.len().div_ceil(8) * 8, 0);
        out.extend_from_slice(&[0xff; 4]);
        out.extend_from_slice(&(new_meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&new_meta);
        out.extend_from_slice(&new_body);
        off += 8 + meta_len + body_len;
    }
    assert_eq!(off, ipc.len(), "IPC framing covers the stream");
    out
}

// ---------------------------------------------------------------------------------------------
// consent-manifest.json and withdrawal.json

const MANIFEST_FIELDS: [(&str, &str); 15] = [
    ("format", "format version, must be 1"),
    (
        "record_id",
        "consent record id: 16 random bytes, 32 lowercase hex digits",
    ),
    ("study_id", "the study"),
    ("study_version", "the study version consented to"),
    (
        "study_sha256",
        "SHA-256 of the signed study's payload bytes, lowercase hex",
    ),
    ("controller", "the study's controller, verbatim"),
    (
        "purposes",
        "purpose codes chosen: non-empty, distinct, each one of the study's",
    ),
    ("legal_basis", "always \"gdpr-art-9-2-a\""),
    (
        "data_categories",
        "the study's field names, in the study's order",
    ),
    ("given_at", "when consent was given, Unix seconds"),
    (
        "expires_at",
        "when it lapses, Unix seconds; after given_at, at most max_consent_days later",
    ),
    (
        "withdrawal_method",
        "how to withdraw, as shown to the donor",
    ),
    (
        "notice_sha256",
        "SHA-256 of the notice text shown, equal to the study's",
    ),
    (
        "donor_public_key",
        "the donor's Ed25519 key (base64), which must sign this manifest",
    ),
    (
        "pseudonym",
        "the per-study pseudonym, 64 lowercase hex digits",
    ),
];

fn consent_file(fx: &Fixture) -> J {
    let mv = |name: &str, m: &ConsentManifest, now: i64, note: &str| {
        let o = m.sign(&fx.donor);
        obj! {
            "name" => name,
            "kind" => "manifest",
            "note" => note,
            "now" => now,
            "signed_by" => "donor",
            "payload_text" => utf8(&o.payload),
            "payload_sha256_hex" => h(&o.payload_digest()),
            "signed_text" => utf8(&o.to_bytes()),
            "fields" => annotate(m, &MANIFEST_FIELDS),
            "covers" => obj! { "t2d-epidemiology" => m.covers("t2d-epidemiology", now), "t2d-care-quality" => m.covers("t2d-care-quality", now) },
        }
    };
    let mut longest = fx.manifest.clone();
    longest.purposes = vec!["t2d-care-quality".into(), "t2d-epidemiology".into()];
    longest.expires_at = longest.given_at + i64::from(fx.study.max_consent_days) * DAY;
    let mut skewed = fx.manifest.clone();
    skewed.given_at = NOW + 300;
    skewed.expires_at = skewed.given_at + DAY;
    let valid = vec![
        mv(
            "manifest",
            &fx.manifest,
            NOW,
            "the manifest inside the envelope vector",
        ),
        mv(
            "two-purposes-longest-expiry",
            &longest,
            NOW,
            "expiry exactly max_consent_days after given_at is allowed",
        ),
        mv(
            "given-at-clock-skew-limit",
            &skewed,
            NOW,
            "given_at up to 300 s after the verifier's clock is tolerated",
        ),
    ];

    let d = "open_manifest+check_manifest";
    let signed = |m: &ConsentManifest| Input::Text(utf8(&m.sign(&fx.donor).to_bytes()));
    let mv2 = |f: &dyn Fn(&mut ConsentManifest)| {
        let mut m = fx.manifest.clone();
        f(&mut m);
        signed(&m)
    };
    let fm = |name: &str, input: Input, field: &str| {
        with(
            mal(name, d, input, "ConsentError::FieldMismatch"),
            "expect_detail",
            field,
        )
    };
    let json = "ConsentError::Signature(SignatureError::Malformed(WireError::Json))";
    let payload_text = utf8(&fx.signed_manifest.payload);
    let raw = |p: String| {
        Input::Text(utf8(
            &sign_payload(Context::ConsentManifest, p.into_bytes(), &fx.donor).to_bytes(),
        ))
    };
    let mut flipped = fx.signed_manifest.clone();
    flipped.signature[10] ^= 0x80;
    let mut malformed = vec![
        mal(
            "signed-as-withdrawal",
            d,
            Input::Text(utf8(
                &sign_payload(
                    Context::Withdrawal,
                    fx.signed_manifest.payload.clone(),
                    &fx.donor,
                )
                .to_bytes(),
            )),
            "ConsentError::Signature(SignatureError::WrongContext)",
        ),
        mal(
            "signer-is-not-the-donor-key",
            d,
            Input::Text(utf8(&fx.manifest.sign(&fx.mallory).to_bytes())),
            "ConsentError::SignerMismatch",
        ),
        mal(
            "signature-bit-flipped",
            d,
            Input::Text(utf8(&flipped.to_bytes())),
            "ConsentError::Signature(SignatureError::BadSignature)",
        ),
        mal(
            "wire-trailing-newline",
            d,
            Input::Text(format!("{}\n", utf8(&fx.signed_manifest.to_bytes()))),
            "ConsentError::Signature(SignatureError::Malformed(WireError::TrailingBytes))",
        ),
        mal(
            "payload-trailing-space-signed",
            d,
            raw(format!("{payload_text} ")),
            "ConsentError::Signature(SignatureError::Malformed(WireError::TrailingBytes))",
        ),
        mal(
            "payload-unknown-member",
            d,
            raw(payload_text.replacen('{', "{\"age\":34,", 1)),
            json,
        ),
        mal(
            "payload-missing-pseudonym",
            d,
            raw(payload_text.replacen(
                &format!(",\"pseudonym\":\"{}\"", fx.pseudonym.to_hex()),
                "",
                1,
            )),
            json,
        ),
        mal(
            "payload-pseudonym-uppercase",
            d,
            raw(payload_text.replacen(
                &fx.pseudonym.to_hex(),
                &fx.pseudonym.to_hex().to_uppercase(),
                1,
            )),
            json,
        ),
        mal(
            "payload-record-id-15-bytes",
            d,
            raw(payload_text.replacen(
                &h(&fx.manifest.record_id),
                &h(&fx.manifest.record_id[..15]),
                1,
            )),
            json,
        ),
        mal(
            "payload-given-at-float",
            d,
            raw(payload_text.replacen(
                &format!("\"given_at\":{}", fx.manifest.given_at),
                &format!("\"given_at\":{}.0", fx.manifest.given_at),
                1,
            )),
            json,
        ),
        mal(
            "study-version-2",
            d,
            mv2(&|m| m.study_version = 2),
            "ConsentError::StudyMismatch",
        ),
        mal(
            "other-study",
            d,
            mv2(&|m| {
                m.study_id = datadonor_schemas::study::StudyId::new("copd-dk").expect("study id")
            }),
            "ConsentError::StudyMismatch",
        ),
        fm("format-2", mv2(&|m| m.format = 2), "format"),
        fm(
            "study-sha256-of-another-payload",
            mv2(&|m| m.study_sha256[0] ^= 1),
            "study_sha256",
        ),
        fm(
            "controller-contact-differs",
            mv2(&|m| m.controller.contact = "privacy@datadonor.example".into()),
            "controller",
        ),
        fm(
            "notice-hash-differs",
            mv2(&|m| m.notice_sha256[31] ^= 1),
            "notice_sha256",
        ),
        fm(
            "legal-basis-art-6",
            mv2(&|m| m.legal_basis = "gdpr-art-6-1-a".into()),
            "legal_basis",
        ),
        fm(
            "data-categories-reordered",
            mv2(&|m| m.data_categories.swap(0, 1)),
            "data_categories",
        ),
        fm(
            "data-categories-missing-one",
            mv2(&|m| {
                m.data_categories.pop();
            }),
            "data_categories",
        ),
        mal(
            "no-purpose",
            d,
            mv2(&|m| m.purposes.clear()),
            "ConsentError::BadPurposes",
        ),
        mal(
            "purpose-twice",
            d,
            mv2(&|m| m.purposes.push("t2d-epidemiology".into())),
            "ConsentError::BadPurposes",
        ),
        with(
            mal(
                "purpose-not-in-study",
                d,
                mv2(&|m| m.purposes.push("marketing".into())),
                "ConsentError::UnknownPurpose",
            ),
            "expect_detail",
            "marketing",
        ),
        mal(
            "given-in-the-future",
            d,
            mv2(&|m| {
                m.given_at = NOW + 301;
                m.expires_at = m.given_at + DAY;
            }),
            "ConsentError::FromTheFuture",
        ),
        mal(
            "expired",
            d,
            mv2(&|m| m.expires_at = NOW),
            "ConsentError::Expired",
        ),
        mal(
            "expires-before-given",
            d,
            mv2(&|m| {
                m.given_at = NOW + 100;
                m.expires_at = NOW + 50;
            }),
            "ConsentError::Expired",
        ),
        mal(
            "expiry-one-second-beyond-maximum",
            d,
            mv2(&|m| m.expires_at = m.given_at + i64::from(fx.study.max_consent_days) * DAY + 1),
            "ConsentError::ExpiryTooLong",
        ),
    ];
    for v in &mut malformed {
        v.push("now", NOW);
    }
    finish(
        file_head(
            "consent-manifest",
            "Consent manifests signed by the donor key, checked against the study of study-definition.json (its payload is repeated here as study_payload_text). Decoder: open_manifest(input) then check_manifest(body, study, SHA-256(study payload), now).",
            "Consent manifest",
        ),
        vec![
            (
                "keys",
                obj! { "donor" => ed_key_json("donor", &fx.donor), "mallory" => ed_key_json("mallory", &fx.mallory) },
            ),
            ("study_payload_text", J::Str(fx.study_payload_text())),
        ],
        valid,
        malformed,
    )
}

const WITHDRAWAL_FIELDS: [(&str, &str); 7] = [
    ("format", "format version, must be 1"),
    (
        "request_id",
        "16 random bytes (idempotency of the request), lowercase hex",
    ),
    ("study_id", "the study"),
    ("pseudonym", "the donor's pseudonym in that study"),
    ("consent_record_id", "record_id of the consent withdrawn"),
    ("withdrawn_at", "when, Unix seconds"),
    (
        "donor_public_key",
        "the consent's donor key (base64), which must sign this",
    ),
];

fn withdrawal_file(fx: &Fixture) -> J {
    let o = &fx.signed_withdrawal;
    let valid = vec![obj! {
        "name" => "withdrawal",
        "kind" => "withdrawal",
        "signed_by" => "donor",
        "payload_text" => utf8(&o.payload),
        "payload_sha256_hex" => h(&o.payload_digest()),
        "signed_text" => utf8(&o.to_bytes()),
        "fields" => annotate(&fx.withdrawal, &WITHDRAWAL_FIELDS),
    }];
    let d = "open_withdrawal";
    let wv = |f: &dyn Fn(&mut Withdrawal)| {
        let mut w = fx.withdrawal.clone();
        f(&mut w);
        Input::Text(utf8(&w.sign(&fx.donor).to_bytes()))
    };
    let payload_text = utf8(&o.payload);
    let raw = |p: String| {
        Input::Text(utf8(
            &sign_payload(Context::Withdrawal, p.into_bytes(), &fx.donor).to_bytes(),
        ))
    };
    let json = "ConsentError::Signature(SignatureError::Malformed(WireError::Json))";
    let mut flipped = o.clone();
    flipped.payload[5] ^= 0x20;
    let malformed = vec![
        mal(
            "signer-is-not-the-donor-key",
            d,
            Input::Text(utf8(&fx.withdrawal.sign(&fx.mallory).to_bytes())),
            "ConsentError::SignerMismatch",
        ),
        mal(
            "donor-key-swapped-and-signed-by-it",
            d,
            wv(&|w| w.donor_public_key = fx.mallory.public_key()),
            "ConsentError::SignerMismatch",
        ),
        mal(
            "signed-as-consent-manifest",
            d,
            Input::Text(utf8(
                &sign_payload(Context::ConsentManifest, o.payload.clone(), &fx.donor).to_bytes(),
            )),
            "ConsentError::Signature(SignatureError::WrongContext)",
        ),
        mal(
            "payload-bit-flipped",
            d,
            Input::Text(utf8(&flipped.to_bytes())),
            "ConsentError::Signature(SignatureError::BadSignature)",
        ),
        with(
            mal(
                "format-2",
                d,
                wv(&|w| w.format = 2),
                "ConsentError::FieldMismatch",
            ),
            "expect_detail",
            "format",
        ),
        mal(
            "payload-unknown-member",
            d,
            raw(payload_text.replacen('{', "{\"reason\":\"moved\",", 1)),
            json,
        ),
        mal(
            "payload-consent-record-id-33-hex-digits",
            d,
            raw(payload_text.replacen(
                &h(&fx.withdrawal.consent_record_id),
                &format!("{}0", h(&fx.withdrawal.consent_record_id)),
                1,
            )),
            json,
        ),
        mal(
            "payload-withdrawn-at-string",
            d,
            raw(payload_text.replacen(
                &format!("\"withdrawn_at\":{}", fx.withdrawal.withdrawn_at),
                &format!("\"withdrawn_at\":\"{}\"", fx.withdrawal.withdrawn_at),
                1,
            )),
            json,
        ),
        mal(
            "wire-trailing-tab",
            d,
            Input::Text(format!("{}\t", utf8(&o.to_bytes()))),
            "ConsentError::Signature(SignatureError::Malformed(WireError::TrailingBytes))",
        ),
    ];
    finish(
        file_head(
            "withdrawal",
            "Withdrawals signed by the donor key. Decoder: open_withdrawal(input). That the key is the consent's donor key is the ledger's check (the intake answers 403 withdrawal-key-mismatch).",
            "Withdrawal",
        ),
        vec![(
            "keys",
            obj! { "donor" => ed_key_json("donor", &fx.donor), "mallory" => ed_key_json("mallory", &fx.mallory) },
        )],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// envelope.json

/// Seal arbitrary plaintext as an envelope (for envelopes whose payload is malformed), with the
/// header's suite ids, `info` and the AAD given explicitly.
fn seal_raw(
    key_id: u32,
    pk: &HpkePublicKey,
    plaintext: &[u8],
    info: &[u8],
    aad_len: usize,
    rng_label: &str,
) -> Vec<u8> {
    use hpke::{Deserializable, Serializable};
    type K = hpke::kem::X25519HkdfSha256;
    let mut header = b"DDE1".to_vec();
    header.extend_from_slice(&key_id.to_be_bytes());
    header.extend_from_slice(&[0x00, 0x20, 0x00, 0x01, 0x00, 0x02]);
    let pkr = <K as hpke::Kem>::PublicKey::from_bytes(&pk.0).expect("public key");
    let (enc, mut ctx) = hpke::setup_sender::<hpke::aead::AesGcm256, hpke::kdf::HkdfSha256, K, _>(
        &hpke::OpModeS::Base,
        &pkr,
        info,
        &mut DetRng::new(seed(rng_label)),
    )
    .expect("setup");
    header.extend_from_slice(&enc.to_bytes());
    let ct = ctx.seal(plaintext, &header[..aad_len]).expect("seal");
    header.extend_from_slice(&ct);
    header
}

fn payload_layout(p: &DonationPayload) -> J {
    Layout::new()
        .add(b"DDP1", "magic", "ASCII \"DDP1\"")
        .add(
            &p.idempotency_key,
            "idempotency_key",
            "16 bytes chosen by the client",
        )
        .add(
            &(p.manifest.len() as u32).to_be_bytes(),
            "manifest_len",
            "u32 BE length of the signed manifest, at most 65536",
        )
        .add(
            &p.manifest,
            "manifest",
            "the signed consent manifest (signed-object JSON)",
        )
        .add(
            &(p.rows.len() as u32).to_be_bytes(),
            "rows_len",
            "u32 BE length of the rows, at most 67108864",
        )
        .add(&p.rows, "rows", "one Arrow IPC stream")
        .done()
}

fn envelope_layout(env: &[u8]) -> J {
    Layout::new()
        .add(&env[0..4], "magic", "ASCII \"DDE1\"")
        .add(
            &env[4..8],
            "key_id",
            "u32 BE id of the intake HPKE key sealed to",
        )
        .add(&env[8..10], "kem_id", "0x0020 DHKEM(X25519, HKDF-SHA256)")
        .add(&env[10..12], "kdf_id", "0x0001 HKDF-SHA256")
        .add(&env[12..14], "aead_id", "0x0002 AES-256-GCM")
        .add(
            &env[14..46],
            "enc",
            "HPKE encapsulated key (ephemeral X25519 public key)",
        )
        .add(
            &env[46..],
            "ciphertext",
            "AES-256-GCM ciphertext of the payload, 16-byte tag last; aad = bytes 0..46",
        )
        .done()
}

fn envelope_file(fx: &Fixture) -> J {
    let env_vec = |name: &str, env: &[u8], p: &DonationPayload, rng: &str, key: u32| {
        obj! {
            "name" => name,
            "kind" => "envelope",
            "recipient_key_id" => key,
            "ikm_e_hex" => h(&DetRng::first_bytes(seed(rng), 32)),
            "ikm_e_seed_label" => rng,
            "info_text" => utf8(ENVELOPE_INFO),
            "aad_hex" => h(&env[..46]),
            "envelope_hex" => h(env),
            "envelope_sha256_hex" => h(&sha256(env)),
            "envelope_layout" => envelope_layout(env),
            "payload_hex" => h(&p.encode()),
            "payload_layout" => payload_layout(p),
            "payload_fields" => obj! {
                "idempotency_key_hex" => h(&p.idempotency_key),
                "manifest_text" => utf8(&p.manifest),
                "rows_hex" => h(&p.rows),
            },
        }
    };
    let minimal = DonationPayload {
        idempotency_key: seed16("minimal idempotency key"),
        manifest: b"{}".to_vec(),
        rows: Vec::new(),
    };
    let minimal_env = minimal
        .seal_with_rng(
            2,
            &fx.intake2.public_key(),
            &mut DetRng::new(seed("minimal envelope ephemeral")),
        )
        .expect("seal");
    // The base of the malformed envelopes: small, so that each mutated copy stays short.
    let small = DonationPayload {
        idempotency_key: seed16("small idempotency key"),
        manifest: b"{}".to_vec(),
        rows: vec![0x00, 0x01, 0x02],
    };
    let small_env = small
        .seal_with_rng(
            1,
            &fx.intake1.public_key(),
            &mut DetRng::new(seed("small envelope ephemeral")),
        )
        .expect("seal");
    let configs = HpkeConfigList {
        configs: vec![
            HpkeConfig::new(1, &fx.intake1.public_key()),
            HpkeConfig::new(2, &fx.intake2.public_key()),
        ],
    };
    let valid = vec![
        env_vec(
            "donation",
            &fx.envelope,
            &fx.payload,
            "envelope ephemeral",
            1,
        ),
        env_vec(
            "minimal-payload",
            &minimal_env,
            &minimal,
            "minimal envelope ephemeral",
            2,
        ),
        env_vec(
            "small-payload",
            &small_env,
            &small,
            "small envelope ephemeral",
            1,
        ),
        obj! {
            "name" => "hpke-config-list",
            "kind" => "hpke_config_list",
            "json_text" => utf8(&to_json_bytes(&configs)),
            "current_key_id" => 1u32,
            "current_public_key_hex" => h(&fx.intake1.public_key().0),
        },
    ];

    let env = &small_env;
    let de = "Envelope::parse+open";
    let trunc = |n: usize, field: &str| {
        with(
            mal(
                &format!("truncated-to-{n}-bytes"),
                de,
                Input::Hex(env[..n].to_vec()),
                "EnvelopeError::Malformed(WireError::Truncated)",
            ),
            "expect_detail",
            field,
        )
    };
    let patch = |name: &str, at: usize, bytes: &[u8], expect: &str| {
        let mut e = env.clone();
        e[at..at + bytes.len()].copy_from_slice(bytes);
        mal(name, de, Input::Hex(e), expect)
    };
    let xor = |name: &str, at: usize, mask: u8| {
        let mut e = env.clone();
        e[at] ^= mask;
        mal(name, de, Input::Hex(e), "EnvelopeError::Decrypt")
    };
    let pk1 = fx.intake1.public_key();
    let sealed = |name: &str, pt: &[u8], expect: &str, detail: Option<&str>| {
        let j = mal(
            name,
            de,
            Input::Hex(seal_raw(
                1,
                &pk1,
                pt,
                ENVELOPE_INFO,
                46,
                &format!("{name} ephemeral"),
            )),
            expect,
        );
        match detail {
            Some(d) => with(j, "expect_detail", d),
            None => j,
        }
    };
    let pt = small.encode().to_vec();
    let mut bad_magic_pt = pt.clone();
    bad_magic_pt[3] = b'2';
    let mut huge_manifest = pt.clone();
    huge_manifest[20..24].copy_from_slice(&65_537u32.to_be_bytes());
    let mut malformed = vec![
        trunc(0, "magic"),
        trunc(3, "magic"),
        trunc(4, "key_id"),
        trunc(7, "key_id"),
        trunc(8, "kem_id"),
        trunc(10, "kdf_id"),
        trunc(12, "aead_id"),
        trunc(14, "enc"),
        trunc(45, "enc"),
        trunc(46, "ciphertext"),
        trunc(61, "ciphertext"),
        mal(
            "truncated-by-one-byte",
            de,
            Input::Hex(env[..env.len() - 1].to_vec()),
            "EnvelopeError::Decrypt",
        ),
        with(
            patch(
                "bad-magic",
                0,
                b"DDE2",
                "EnvelopeError::Malformed(WireError::Unexpected)",
            ),
            "expect_detail",
            "magic",
        ),
        with(
            patch(
                "magic-lowercase",
                0,
                b"dde1",
                "EnvelopeError::Malformed(WireError::Unexpected)",
            ),
            "expect_detail",
            "magic",
        ),
        patch(
            "kem-p256",
            8,
            &[0x00, 0x10],
            "EnvelopeError::UnsupportedSuite",
        ),
        patch(
            "kdf-hkdf-sha384",
            10,
            &[0x00, 0x02],
            "EnvelopeError::UnsupportedSuite",
        ),
        patch(
            "aead-aes-128-gcm",
            12,
            &[0x00, 0x01],
            "EnvelopeError::UnsupportedSuite",
        ),
        patch(
            "aead-chacha20-poly1305",
            12,
            &[0x00, 0x03],
            "EnvelopeError::UnsupportedSuite",
        ),
        with(
            patch(
                "unknown-key-id",
                4,
                &3u32.to_be_bytes(),
                "EnvelopeError::UnknownKeyId",
            ),
            "expect_detail",
            "3",
        ),
        patch(
            "key-id-of-the-other-known-key",
            4,
            &2u32.to_be_bytes(),
            "EnvelopeError::Decrypt",
        ),
        xor("enc-bit-flipped", 20, 0x04),
        patch("enc-all-zero", 14, &[0u8; 32], "EnvelopeError::Decrypt"),
        xor("ciphertext-first-byte-flipped", 46, 0x01),
        xor(
            "ciphertext-middle-bit-flipped",
            46 + (env.len() - 46) / 2,
            0x10,
        ),
        xor("tag-last-byte-flipped", env.len() - 1, 0x80),
        mal(
            "byte-appended",
            de,
            Input::Hex([env.as_slice(), &[0]].concat()),
            "EnvelopeError::Decrypt",
        ),
        mal(
            "sealed-with-another-info",
            de,
            Input::Hex(seal_raw(
                1,
                &pk1,
                &pt,
                b"datadonor/v1 donation envelope\0",
                46,
                "wrong info ephemeral",
            )),
            "EnvelopeError::Decrypt",
        ),
        mal(
            "sealed-with-aad-excluding-enc",
            de,
            Input::Hex(seal_raw(
                1,
                &pk1,
                &pt,
                ENVELOPE_INFO,
                14,
                "short aad ephemeral",
            )),
            "EnvelopeError::Decrypt",
        ),
        mal(
            "sealed-to-key-2-labelled-key-1",
            de,
            Input::Hex(seal_raw(
                1,
                &fx.intake2.public_key(),
                &pt,
                ENVELOPE_INFO,
                46,
                "wrong key ephemeral",
            )),
            "EnvelopeError::Decrypt",
        ),
        sealed(
            "payload-bad-magic",
            &bad_magic_pt,
            "EnvelopeError::Malformed(WireError::Unexpected)",
            Some("magic"),
        ),
        sealed(
            "payload-trailing-byte",
            &[pt.as_slice(), &[0]].concat(),
            "EnvelopeError::Malformed(WireError::TrailingBytes)",
            None,
        ),
        sealed(
            "payload-manifest-length-over-limit",
            &huge_manifest,
            "EnvelopeError::Malformed(WireError::TooLarge)",
            Some("manifest"),
        ),
        sealed(
            "payload-truncated-in-rows",
            &pt[..pt.len() - 1],
            "EnvelopeError::Malformed(WireError::Truncated)",
            Some("rows"),
        ),
    ];

    let dp = "DonationPayload::decode";
    let m = small.manifest.len();
    let ptrunc = |n: usize, field: &str| {
        with(
            mal(
                &format!("payload-truncated-to-{n}-bytes"),
                dp,
                Input::Hex(pt[..n].to_vec()),
                "EnvelopeError::Malformed(WireError::Truncated)",
            ),
            "expect_detail",
            field,
        )
    };
    let mut huge_rows = minimal.encode().to_vec();
    let l = huge_rows.len();
    huge_rows[l - 4..].copy_from_slice(&(64u32 * 1024 * 1024 + 1).to_be_bytes());
    let mut bad_magic = minimal.encode().to_vec();
    bad_magic[0] = b'X';
    malformed.extend([
        ptrunc(0, "magic"),
        ptrunc(3, "magic"),
        ptrunc(4, "idempotency_key"),
        ptrunc(19, "idempotency_key"),
        ptrunc(20, "manifest"),
        ptrunc(23, "manifest"),
        ptrunc(24 + m - 1, "manifest"),
        ptrunc(24 + m, "rows"),
        ptrunc(24 + m + 3, "rows"),
        ptrunc(pt.len() - 1, "rows"),
        with(
            mal(
                "payload-magic-XDP1",
                dp,
                Input::Hex(bad_magic),
                "EnvelopeError::Malformed(WireError::Unexpected)",
            ),
            "expect_detail",
            "magic",
        ),
        with(
            mal(
                "payload-rows-length-over-limit",
                dp,
                Input::Hex(huge_rows),
                "EnvelopeError::Malformed(WireError::TooLarge)",
            ),
            "expect_detail",
            "rows",
        ),
        mal(
            "payload-trailing-bytes",
            dp,
            Input::Hex([minimal.encode().as_slice(), b"xyz"].concat()),
            "EnvelopeError::Malformed(WireError::TrailingBytes)",
        ),
    ]);

    let dc = "HpkeConfigList::from_json+current";
    let cj = utf8(&to_json_bytes(&configs));
    let mut unsupported = configs.clone();
    for c in &mut unsupported.configs {
        c.aead_id = 1;
    }
    let mut short_key = configs.clone();
    short_key.configs[0].public_key.truncate(31);
    malformed.extend([
        mal(
            "config-unknown-member",
            dc,
            Input::Text(cj.replacen("\"key_id\":1,", "\"key_id\":1,\"not_after\":0,", 1)),
            "EnvelopeError::Malformed(WireError::Json)",
        ),
        mal(
            "config-trailing-newline",
            dc,
            Input::Text(format!("{cj}\n")),
            "EnvelopeError::Malformed(WireError::TrailingBytes)",
        ),
        mal(
            "config-no-supported-suite",
            dc,
            Input::Text(utf8(&to_json_bytes(&unsupported))),
            "EnvelopeError::UnsupportedSuite",
        ),
        mal(
            "config-empty-list",
            dc,
            Input::Text("{\"configs\":[]}".into()),
            "EnvelopeError::UnsupportedSuite",
        ),
        mal(
            "config-public-key-31-bytes",
            dc,
            Input::Text(utf8(&to_json_bytes(&short_key))),
            "EnvelopeError::BadKey",
        ),
    ]);

    finish(
        file_head(
            "envelope",
            "Donation envelopes: HPKE (RFC 9180 mode Base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) seal of the donation payload. Envelope decoder: Envelope::parse; look key_id up in recipient_keys (absent: EnvelopeError::UnknownKeyId); Envelope::open with that key (HPKE open, then DonationPayload::decode).",
            "Donation envelope",
        ),
        vec![(
            "recipient_keys",
            J::Arr(vec![
                with(hpke_key_json("intake hpke key 1", &fx.intake1), "key_id", 1u32),
                with(hpke_key_json("intake hpke key 2", &fx.intake2), "key_id", 2u32),
            ]),
        )],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// pseudonym.json

fn pseudonym_file(fx: &Fixture) -> J {
    let cpr_ok = [
        ("010190-1234", "plain DDMMYY-SSSS"),
        ("0101901234", "without the dash"),
        (" 0101901234\n", "surrounding whitespace is trimmed"),
        ("\t010190-1234 ", "whitespace and dash"),
        ("2902004234", "29 Feb 2000: 7th digit 4, year 00 -> 2000"),
        ("2902961234", "29 Feb 1996: 7th digit 0-3 -> 1900s"),
        ("0101054234", "7th digit 4, year <= 36 -> 2000s"),
        ("0101374234", "7th digit 4, year > 36 -> 1900s"),
        ("0101369234", "7th digit 9, year <= 36 -> 2000s"),
        ("0101379234", "7th digit 9, year > 36 -> 1900s"),
        ("0101575234", "7th digit 5-8, year <= 57 -> 2000s"),
        ("0101585234", "7th digit 5-8, year > 57 -> 1800s"),
        ("3112998999", "31 Dec 1899"),
        ("0101900000", "sequence 0000 (no modulus-11 check)"),
    ];
    let mut valid: Vec<J> = cpr_ok
        .iter()
        .enumerate()
        .map(|(i, (input, note))| {
            let c = Cpr::parse(input).expect("valid CPR vector");
            let d = c.birth_date().expect("valid date");
            obj! {
                "name" => format!("cpr-valid-{i:02}"),
                "kind" => "cpr",
                "note" => *note,
                "input" => *input,
                "digits" => c.digits(),
                "birth_date" => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
                "oprf_input_hex" => h(&c.oprf_input()),
            }
        })
        .collect();

    let voprf_vec = |name: &str, cpr: &str, blind_label: &str, proof_label: &str| {
        let c = Cpr::parse(cpr).expect("cpr");
        let input = c.oprf_input();
        let blind_scalar = seed_scalar(blind_label);
        let blinded = threshold::blind_input_with_scalar(input.clone(), blind_scalar)
            .expect("blind")
            .blinded;
        let (evaluated, proof) = voprf_evaluate(&fx.oprf, &blinded, proof_label);
        // The client's RFC 9497 steps: the proof verifies against the public key, and Finalize
        // reaches the server's unblinded Evaluate(skS, input).
        let client = VoprfClient::<Ristretto255>::deterministic_blind_unchecked(
            &input,
            scalar(blind_scalar),
        )
        .expect("blind");
        assert_eq!(client.message.serialize().as_slice(), blinded, "blinding");
        let y = client
            .state
            .finalize(
                &input,
                &EvaluationElement::deserialize(&evaluated).expect("element"),
                &voprf::Proof::deserialize(&proof).expect("proof"),
                fx.oprf.get_public_key(),
            )
            .expect("proof verifies");
        let full = voprf_output(&fx.oprf, &input);
        assert_eq!(
            full.as_bytes().as_slice(),
            y.as_slice(),
            "VOPRF consistency"
        );
        obj! {
            "name" => name,
            "kind" => "voprf",
            "cpr_input" => cpr,
            "oprf_input_hex" => h(&input),
            "oprf_input_layout" => Layout::new()
                .add(OPRF_INPUT_PREFIX, "prefix", "ASCII \"datadonor/v1/cpr\" then 0x00")
                .add(c.digits().as_bytes(), "cpr", "the ten normalised ASCII digits")
                .done(),
            "blind_hex" => h(&blind_scalar),
            "blinded_element_hex" => h(&blinded),
            "proof_seed_label" => proof_label,
            "proof_nonce_hex" => h(&proof_nonce(proof_label)),
            "evaluated_element_hex" => h(&evaluated),
            "proof_hex" => h(&proof),
            "output_hex" => h(full.as_bytes()),
            "pseudonyms" => J::Arr(["t2d-dk", "copd-dk"].iter().map(|s| obj! {
                "study_id" => *s,
                "pseudonym_hex" => full.study_pseudonym(s).to_hex(),
            }).collect()),
        }
    };
    valid.push(voprf_vec(
        "voprf-vector-donor",
        CPR,
        "oprf blind 1",
        "voprf proof 1",
    ));
    valid.push(voprf_vec(
        "voprf-leap-day-2000",
        "290200-4234",
        "oprf blind 2",
        "voprf proof 2",
    ));

    let dc = "Cpr::parse";
    let fmt = "PseudonymError::CprFormat";
    let date = "PseudonymError::CprDate";
    let cpr_bad = [
        ("", fmt),
        ("010190123", fmt),
        ("01019012345", fmt),
        ("010190+1234", fmt),
        ("010190 1234", fmt),
        ("0101-901234", fmt),
        ("01019O1234", fmt),
        ("010190-123a", fmt),
        ("٠١٠١٩٠١٢٣٤", fmt),
        ("010190--1234", fmt),
        ("0000901234", date),
        ("3201901234", date),
        ("0100901234", date),
        ("0113901234", date),
        ("3102901234", date),
        ("2902001234", date),
        ("2902014234", date),
        ("2902585234", date),
    ];
    let mut malformed: Vec<J> = cpr_bad
        .iter()
        .map(|(input, e)| {
            mal(
                &format!("cpr-{}", if input.is_empty() { "empty" } else { input }),
                dc,
                Input::Text((*input).to_string()),
                e,
            )
        })
        .collect();
    let bl = "threshold::blind_input_with_scalar";
    let oprf = "ThresholdError::Oprf";
    let mut l_bytes = [0u8; 32];
    l_bytes.copy_from_slice(
        &hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .expect("hex"),
    );
    let ph = "Pseudonym::from_hex";
    let p = fx.pseudonym.to_hex();
    malformed.extend([
        mal("blind-zero-scalar", bl, Input::Hex(vec![0; 32]), oprf),
        mal(
            "blind-scalar-equal-to-group-order",
            bl,
            Input::Hex(l_bytes.to_vec()),
            oprf,
        ),
        mal(
            "blind-scalar-not-reduced",
            bl,
            Input::Hex(vec![0xff; 32]),
            oprf,
        ),
        mal(
            "pseudonym-uppercase-hex",
            ph,
            Input::Text(p.to_uppercase()),
            "None",
        ),
        mal(
            "pseudonym-63-digits",
            ph,
            Input::Text(p[..63].to_string()),
            "None",
        ),
        mal(
            "pseudonym-65-digits",
            ph,
            Input::Text(format!("{p}0")),
            "None",
        ),
        mal(
            "pseudonym-not-hex",
            ph,
            Input::Text(format!("{}g", &p[..63])),
            "None",
        ),
    ]);
    let (sk, pk) = (oprf_private_key(&fx.oprf), oprf_public_key(&fx.oprf));
    finish(
        file_head(
            "pseudonym",
            "CPR normalisation, the RFC 9497 VOPRF (ristretto255-SHA512, mode 0x01) under a single key and per-study pseudonyms; threshold-oprf.json shares the same key among pseudonymiser instances and reaches the same outputs. The key is DeriveKeyPair(seed, info) of RFC 9497 in mode 0x01. A VOPRF vector gives the blind, the blinded element (the crate's threshold::blind_input_with_scalar), the server's evaluated element and DLEQ proof (RFC 9497 BlindEvaluate, its random scalar given as proof_nonce_hex), the output y = Finalize(input, blind, evaluated) = Evaluate(skS, input) and the pseudonyms. Decoders: Cpr::parse(input_text); threshold::blind_input_with_scalar(any valid CPR, input as the blind); Pseudonym::from_hex(input_text), which refuses with None.",
            "Pseudonyms",
        ),
        vec![(
            "oprf_key",
            obj! {
                "seed_label" => "oprf key",
                "seed_hex" => h(&seed("oprf key")),
                "info_text" => utf8(OPRF_INFO),
                "private_key_hex" => h(&sk),
                "public_key_hex" => h(&pk),
                "suite" => "ristretto255-SHA512, mode 0x01 (VOPRF)",
                "pseudonym" => "HKDF-SHA256(salt = \"datadonor/v1/pseudonym\", ikm = output, info = study id, L = 32)",
            },
        )],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// threshold-oprf.json

/// The threshold and the number of pseudonymiser instances of the vectors.
const SHARE_T: u16 = 2;
const SHARE_N: u16 = 3;

/// `λ_i = Π_{j∈S, j≠i} j / (j − i)`, written out here rather than taken from the crate.
fn lagrange(i: u16, set: &[u16]) -> Scalar {
    let x = |v: u16| Scalar::from(u64::from(v));
    set.iter()
        .filter(|&&j| j != i)
        .fold(Scalar::ONE, |acc, &j| acc * x(j) * (x(j) - x(i)).invert())
}

fn index_list(set: &[u16]) -> J {
    J::Arr(set.iter().map(|&i| J::from(i)).collect())
}

/// `k` shared 2-of-3: instance i holds `k_i = f(i) = k + a·i`, with `K_i = k_i·G`.
fn share_servers(k: Scalar, a: Scalar) -> Vec<(u16, VoprfServer<Ristretto255>)> {
    let g = RISTRETTO_BASEPOINT_POINT;
    (1..=SHARE_N)
        .map(|i| {
            let ki = k + a * Scalar::from(u64::from(i));
            let s = VoprfServer::new_with_key(&ki.to_bytes()).expect("share");
            assert_eq!(oprf_public_key(&s), (ki * g).compress().to_bytes());
            (i, s)
        })
        .collect()
}

/// The configuration naming the shares of [`share_servers`].
fn share_config(
    config_id: &str,
    group: [u8; 32],
    servers: &[(u16, VoprfServer<Ristretto255>)],
) -> PseudonymiserConfig {
    PseudonymiserConfig {
        format: datadonor_schemas::PROTOCOL_VERSION,
        config_id: config_id.into(),
        version: 1,
        suite: threshold::SUITE.into(),
        mode: threshold::MODE.into(),
        threshold: SHARE_T,
        group_public_key: group,
        instances: servers
            .iter()
            .map(|(i, s)| InstanceInfo {
                index: *i,
                url: format!("https://pseudonymiser-{i}.example"),
                operator: format!("Test operator {i}"),
                public_share: oprf_public_key(s),
            })
            .collect(),
        credential_issuer: None,
    }
}

/// Every instance's answer to `B` as the vector files list it (each checked: `Z_i = k_i·B`).
fn share_answers_json(
    servers: &[(u16, VoprfServer<Ristretto255>)],
    answers: &[InstanceAnswer],
    b: RistrettoPoint,
    proof_label: &dyn Fn(u16) -> String,
) -> Vec<J> {
    answers
        .iter()
        .map(|x| {
            let ki = scalar(oprf_private_key(&servers[usize::from(x.index) - 1].1));
            assert_eq!(x.evaluated, (ki * b).compress().to_bytes(), "Z_i = k_i·B");
            obj! {
                "index" => x.index,
                "proof_seed_label" => proof_label(x.index),
                "proof_nonce_hex" => h(&proof_nonce(&proof_label(x.index))),
                "evaluated_element_hex" => h(&x.evaluated),
                "proof_hex" => h(&x.proof),
                "answer_json_text" => utf8(&to_json_bytes(x)),
            }
        })
        .collect()
}

/// The Lagrange combination of every pair of answers (each checked to be `k·B`).
fn share_combinations(answers: &[InstanceAnswer], kb: [u8; 32]) -> Vec<J> {
    [[1u16, 2], [1, 3], [2, 3]]
        .iter()
        .map(|set| {
            let z = set
                .iter()
                .map(|&i| lagrange(i, set) * point(&answers[usize::from(i) - 1].evaluated))
                .fold(RistrettoPoint::default(), |acc, p| acc + p)
                .compress()
                .to_bytes();
            assert_eq!(z, kb, "Σ λ_i·Z_i = k·B");
            let lambdas: Vec<String> = set
                .iter()
                .map(|&i| h(&lagrange(i, set).to_bytes()))
                .collect();
            obj! {
                "indexes" => index_list(set),
                "lagrange_hex" => strs(&lambdas),
                "combined_element_hex" => h(&z),
            }
        })
        .collect()
}

fn threshold_file(fx: &Fixture) -> J {
    let g = RISTRETTO_BASEPOINT_POINT;
    let sk = oprf_private_key(&fx.oprf);
    let k = scalar(sk);
    let group = oprf_public_key(&fx.oprf);
    let a_label = "threshold polynomial a1";
    let a = scalar(seed_scalar(a_label));
    let servers = share_servers(k, a);
    let server = |i: u16| &servers[usize::from(i) - 1].1;
    let config = share_config("dk-pseudonymiser-test", group, &servers);
    let config_text = utf8(&config.to_json());
    let config_vec = obj! {
        "name" => "config-2-of-3",
        "kind" => "pseudonymiser_config",
        "json_text" => config_text.clone(),
        "fields" => annotate(&config, &[
            ("format", "format version, must be 1"),
            ("config_id", "name of the service, 1-64 of [a-z0-9-]"),
            ("version", "version of this configuration, at least 1"),
            ("suite", "always \"ristretto255-SHA512\""),
            ("mode", "always \"voprf\" (RFC 9497 mode 0x01)"),
            ("threshold", "t: answers needed, 2 <= t <= n"),
            ("group_public_key", "K = k·G, base64 of the canonical encoding"),
            ("instances", "n instances by strictly increasing index: index i >= 1, https url without a trailing slash, operator, public_share K_i = k_i·G (base64)"),
        ]),
    };

    // The donor's evaluation: the same input and blind as pseudonym.json's voprf-vector-donor.
    let cpr = Cpr::parse(CPR).expect("cpr");
    let input = cpr.oprf_input();
    let blind_label = "oprf blind 1";
    let blind = seed_scalar(blind_label);
    let blinded = threshold::blind_input_with_scalar(input.clone(), blind)
        .expect("blind")
        .blinded;
    let b = point(&blinded);
    let proof_label = |i: u16| format!("threshold proof {i}");
    let answer = |i: u16, on: &[u8], label: &str| {
        let (evaluated, proof) = voprf_evaluate(server(i), on, label);
        InstanceAnswer {
            index: i,
            evaluated,
            proof,
        }
    };
    let answers: Vec<InstanceAnswer> = (1..=SHARE_N)
        .map(|i| answer(i, &blinded, &proof_label(i)))
        .collect();
    let ans = |i: u16| answers[usize::from(i) - 1].clone();
    let kb = (k * b).compress().to_bytes();
    let answer_json = share_answers_json(&servers, &answers, b, &proof_label);
    let combinations = share_combinations(&answers, kb);
    let y = voprf_output(&fx.oprf, &input);
    let forged = |index: u16, from: &InstanceAnswer| InstanceAnswer {
        index,
        ..from.clone()
    };
    let list = |v: &[InstanceAnswer]| utf8(&to_json_bytes(&v));
    let case =
        |note: &str, given: &[InstanceAnswer], used: &[u16], spare: &[u16], rejected: &[&str]| {
            obj! {
                "note" => note,
                "answers_json_text" => list(given),
                "used" => index_list(used),
                "spare" => index_list(spare),
                "rejected" => strs(rejected),
            }
        };
    let combine_cases = vec![
        case(
            "every instance answered: the first t by index are combined, the rest are spare",
            &[ans(1), ans(2), ans(3)],
            &[1, 2],
            &[3],
            &[],
        ),
        case(
            "answers in any order are combined by increasing index",
            &[ans(3), ans(1)],
            &[1, 3],
            &[],
            &[],
        ),
        case(
            "a wrong answer (instance 2's evaluation under index 1) is refused; t others suffice",
            &[forged(1, &ans(2)), ans(2), ans(3)],
            &[2, 3],
            &[],
            &["AnswerError::BadProof(1)"],
        ),
        case(
            "a second answer with an index already seen is refused, whatever it holds",
            &[ans(1), forged(1, &ans(2)), ans(2)],
            &[1, 2],
            &[],
            &["AnswerError::DuplicateIndex(1)"],
        ),
        case(
            "an index the configuration does not list is refused",
            &[forged(4, &ans(1)), ans(2), ans(3)],
            &[2, 3],
            &[],
            &["AnswerError::UnknownIndex(4)"],
        ),
    ];
    let eval_vec = obj! {
        "name" => "threshold-donor",
        "kind" => "threshold_evaluation",
        "config" => "config-2-of-3",
        "cpr_input" => CPR,
        "oprf_input_hex" => h(&input),
        "blind_seed_label" => blind_label,
        "blind_hex" => h(&blind),
        "blinded_element_hex" => h(&blinded),
        "request_json_text" => utf8(&to_json_bytes(&EvaluateRequest { blinded })),
        "answers" => answer_json,
        "combinations" => combinations,
        "single_key_evaluated_element_hex" => h(&kb),
        "combine_cases" => combine_cases,
        "output_hex" => h(y.as_bytes()),
        "pseudonyms" => J::Arr(["t2d-dk", "copd-dk"].iter().map(|s| obj! {
            "study_id" => *s,
            "pseudonym_hex" => y.study_pseudonym(s).to_hex(),
        }).collect()),
    };

    // Malformed answers, each checked alone against the configuration and the blind above.
    let da = "InstanceAnswer::from_json+ThresholdBlind::verify_answer";
    let answer_text = |x: &InstanceAnswer| Input::Text(utf8(&to_json_bytes(x)));
    let bad_answer = |name: &str, x: InstanceAnswer, e: &str, detail: u16, note: &str| {
        with(
            with(
                mal(name, da, answer_text(&x), e),
                "expect_detail",
                detail.to_string(),
            ),
            "note",
            note,
        )
    };
    let other_blind_label = "threshold other blind";
    let other_blinded =
        threshold::blind_input_with_scalar(input.clone(), seed_scalar(other_blind_label))
            .expect("blind")
            .blinded;
    let other = answer(1, &other_blinded, "threshold proof other");
    let other_key_label = "threshold another key share";
    let other_key =
        VoprfServer::<Ristretto255>::new_with_key(&seed_scalar(other_key_label)).expect("key");
    let (oz, op) = voprf_evaluate(&other_key, &blinded, "threshold proof another key");
    let with_proof = |proof: Vec<u8>| InstanceAnswer { proof, ..ans(1) };
    let with_element = |evaluated: [u8; 32]| InstanceAnswer {
        evaluated,
        ..ans(1)
    };
    let mut l_bytes = [0u8; 32];
    l_bytes.copy_from_slice(
        &hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .expect("hex"),
    );
    let mut p_bytes = [0xffu8; 32];
    p_bytes[0] = 0xed;
    p_bytes[31] = 0x7f;
    let mut negative = [0u8; 32];
    negative[0] = 1;
    let mut flipped = ans(1).proof;
    flipped[0] ^= 1;
    let bp = "AnswerError::BadProof";
    let be = "AnswerError::BadElement";
    let mp = "AnswerError::MalformedProof";
    let ui = "AnswerError::UnknownIndex";
    let a1_text = utf8(&to_json_bytes(&ans(1)));
    let mut malformed = vec![
        bad_answer(
            "answer-proof-for-another-blinded-element",
            InstanceAnswer {
                proof: other.proof.clone(),
                ..ans(1)
            },
            bp,
            1,
            "Z_1 = k_1·B with the proof instance 1 gave for another blinded element",
        ),
        with(
            bad_answer(
                "answer-for-another-blinded-element",
                other.clone(),
                bp,
                1,
                "instance 1's honest answer, proof included, for another blind of the same input",
            ),
            "other_blinded_element_hex",
            h(&other_blinded),
        ),
        bad_answer(
            "answer-share-2-under-index-1",
            forged(1, &ans(2)),
            bp,
            1,
            "instance 2's element and proof (Z = k_2·B) presented as instance 1's",
        ),
        bad_answer(
            "answer-share-1-under-index-2",
            forged(2, &ans(1)),
            bp,
            2,
            "instance 1's element and proof presented as instance 2's",
        ),
        with(
            bad_answer(
                "answer-share-of-another-key",
                InstanceAnswer {
                    index: 1,
                    evaluated: oz,
                    proof: op,
                },
                bp,
                1,
                "a correct VOPRF answer under a key that is not instance 1's share",
            ),
            "other_key_seed_label",
            other_key_label,
        ),
        bad_answer(
            "answer-proof-bit-flipped",
            with_proof(flipped),
            bp,
            1,
            "the lowest bit of c flipped",
        ),
        bad_answer(
            "answer-unknown-index-4",
            forged(4, &ans(1)),
            ui,
            4,
            "the configuration lists instances 1, 2 and 3",
        ),
        bad_answer(
            "answer-index-0",
            forged(0, &ans(1)),
            ui,
            0,
            "index 0 would be the key itself",
        ),
        bad_answer(
            "answer-evaluated-identity",
            with_element([0; 32]),
            be,
            1,
            "the identity element",
        ),
        bad_answer(
            "answer-evaluated-not-canonical",
            with_element(p_bytes),
            be,
            1,
            "the field element p = 2^255 - 19, not reduced",
        ),
        bad_answer(
            "answer-evaluated-negative",
            with_element(negative),
            be,
            1,
            "s = 1 is negative (odd): not a ristretto255 encoding",
        ),
        bad_answer(
            "answer-proof-63-bytes",
            with_proof(ans(1).proof[..63].to_vec()),
            mp,
            1,
            "a proof is c || s, 64 bytes",
        ),
        bad_answer(
            "answer-proof-c-equal-to-group-order",
            with_proof([l_bytes.as_slice(), &ans(1).proof[32..]].concat()),
            mp,
            1,
            "c is not a canonical scalar",
        ),
        bad_answer(
            "answer-proof-s-zero",
            with_proof([&ans(1).proof[..32], [0u8; 32].as_slice()].concat()),
            mp,
            1,
            "s = 0 is refused",
        ),
        mal(
            "answer-unknown-member",
            da,
            Input::Text(a1_text.replacen("\"index\":1,", "\"index\":1,\"instance\":\"x\",", 1)),
            "WireError::Json",
        ),
        mal(
            "answer-evaluated-31-bytes",
            da,
            Input::Text(format!(
                "{{\"index\":1,\"evaluated\":\"{}\",\"proof\":\"{}\"}}",
                b64(&ans(1).evaluated[..31]),
                b64(&ans(1).proof)
            )),
            "WireError::Json",
        ),
        mal(
            "answer-evaluated-noncanonical-base64",
            da,
            Input::Text(a1_text.replacen(
                &b64(&ans(1).evaluated),
                &noncanonical_b64(&ans(1).evaluated),
                1,
            )),
            "WireError::Json",
        ),
        mal(
            "answer-trailing-newline",
            da,
            Input::Text(format!("{a1_text}\n")),
            "WireError::TrailingBytes",
        ),
    ];

    let dc = "ThresholdBlind::combine";
    let ne = "ThresholdError::NotEnoughAnswers";
    let combine_bad = |name: &str, given: &[InstanceAnswer], detail: &str| {
        with(
            mal(name, dc, Input::Text(list(given)), ne),
            "expect_detail",
            detail,
        )
    };
    malformed.extend([
        combine_bad(
            "combine-t-minus-1-answers",
            &[ans(2)],
            "valid 1, needed 2, rejected []",
        ),
        combine_bad("combine-no-answers", &[], "valid 0, needed 2, rejected []"),
        combine_bad(
            "combine-duplicate-index",
            &[ans(1), ans(1)],
            "valid 1, needed 2, rejected [AnswerError::DuplicateIndex(1)]",
        ),
        combine_bad(
            "combine-one-valid-one-wrong",
            &[ans(1), forged(2, &ans(1))],
            "valid 1, needed 2, rejected [AnswerError::BadProof(2)]",
        ),
    ]);

    let dcfg = "PseudonymiserConfig::from_json";
    let inv = "ConfigError::Invalid";
    let cfg_bad = |name: &str, f: &dyn Fn(&mut PseudonymiserConfig), e: &str, detail: &str| {
        let mut c = config.clone();
        f(&mut c);
        with(
            mal(name, dcfg, Input::Text(utf8(&c.to_json())), e),
            "expect_detail",
            detail,
        )
    };
    let url_msg = "url must be https://host[:port] without a trailing slash";
    let off_polynomial = (point(&config.instances[2].public_share) + g)
        .compress()
        .to_bytes();
    let doubled_group = (point(&group) + point(&group)).compress().to_bytes();
    malformed.extend([
        cfg_bad(
            "config-threshold-1",
            &|c| c.threshold = 1,
            inv,
            "threshold 1 must be at least 2 and at most the 3 instances",
        ),
        cfg_bad(
            "config-threshold-above-n",
            &|c| c.threshold = 4,
            inv,
            "threshold 4 must be at least 2 and at most the 3 instances",
        ),
        cfg_bad(
            "config-duplicate-index",
            &|c| c.instances[1].index = 1,
            inv,
            "instances[1]: indexes must be distinct and increasing",
        ),
        cfg_bad(
            "config-decreasing-index",
            &|c| c.instances.swap(1, 2),
            inv,
            "instances[2]: indexes must be distinct and increasing",
        ),
        cfg_bad(
            "config-index-0",
            &|c| c.instances[0].index = 0,
            inv,
            "instances[0]: index 0 is not a share",
        ),
        cfg_bad(
            "config-http-url",
            &|c| c.instances[0].url = "http://pseudonymiser-1.example".into(),
            inv,
            &format!("instances[0]: {url_msg}"),
        ),
        cfg_bad(
            "config-url-trailing-slash",
            &|c| c.instances[1].url.push('/'),
            inv,
            &format!("instances[1]: {url_msg}"),
        ),
        cfg_bad(
            "config-public-share-identity",
            &|c| c.instances[2].public_share = [0; 32],
            inv,
            "instances[2]: public_share is not a valid non-identity element",
        ),
        cfg_bad(
            "config-public-share-off-the-polynomial",
            &|c| c.instances[2].public_share = off_polynomial,
            "ConfigError::InconsistentShare",
            "3",
        ),
        cfg_bad(
            "config-group-key-identity",
            &|c| c.group_public_key = [0; 32],
            inv,
            "group_public_key is not a valid non-identity element",
        ),
        cfg_bad(
            "config-group-key-not-of-the-shares",
            &|c| c.group_public_key = doubled_group,
            "ConfigError::InconsistentShare",
            "2",
        ),
        cfg_bad(
            "config-mode-oprf",
            &|c| c.mode = "oprf".into(),
            inv,
            "mode must be \"voprf\"",
        ),
        mal(
            "config-unknown-member",
            dcfg,
            Input::Text(config_text.replacen("\"version\":1,", "\"version\":1,\"expires\":0,", 1)),
            "ConfigError::Wire(WireError::Json)",
        ),
    ]);

    let dr = "EvaluateRequest::from_json";
    malformed.extend([
        mal(
            "request-blinded-31-bytes",
            dr,
            Input::Text(format!("{{\"blinded\":\"{}\"}}", b64(&blinded[..31]))),
            "WireError::Json",
        ),
        mal(
            "request-unknown-member",
            dr,
            Input::Text(format!(
                "{{\"blinded\":\"{}\",\"study\":\"t2d-dk\"}}",
                b64(&blinded)
            )),
            "WireError::Json",
        ),
    ]);

    let shares: Vec<J> = servers
        .iter()
        .map(|(i, s)| {
            obj! {
                "index" => *i,
                "secret_share_hex" => h(&oprf_private_key(s)),
                "public_share_hex" => h(&oprf_public_key(s)),
            }
        })
        .collect();
    finish(
        file_head(
            "threshold-oprf",
            "The RFC 9497 VOPRF (ristretto255-SHA512, mode 0x01) with pseudonym.json's key k Shamir-shared 2-of-3 among pseudonymiser instances: each instance i answers Z_i = k_i·B with a DLEQ proof against its public share K_i (RFC 9497 BlindEvaluate, random scalar given as proof_nonce_hex); the donor verifies every answer, combines t of them as Σ λ_i·Z_i = k·B and finalises to the same y as the single key. The vector threshold-rfc9497 shares the RFC 9497 vector key skSm (Appendix A.1.2) the same way, with its own polynomial, shares, configuration and answers, and reaches the RFC's Test Vector 1: B is its BlindedElement, every 2-subset combines to its EvaluationElement, and y is its Output. Decoders: InstanceAnswer::from_json then ThresholdBlind::verify_answer, with the configuration of config-2-of-3 and the blind of threshold-donor (threshold::blind_input_with_scalar); ThresholdBlind::combine(input as a JSON array of answers, no unavailable instances) with the same configuration and blind; PseudonymiserConfig::from_json; EvaluateRequest::from_json. AnswerError details are the instance index; NotEnoughAnswers details list the verified count, t and the refused answers in order.",
            "Threshold pseudonymisation",
        ),
        vec![
            (
                "group_key",
                obj! {
                    "note" => "the key of pseudonym.json's oprf_key",
                    "seed_label" => "oprf key",
                    "info_text" => utf8(OPRF_INFO),
                    "private_key_hex" => h(&sk),
                    "public_key_hex" => h(&group),
                },
            ),
            (
                "polynomial",
                obj! {
                    "threshold" => SHARE_T,
                    "instances" => SHARE_N,
                    "formula" => "f(x) = k + a1·x mod L; instance i holds k_i = f(i) and publishes K_i = k_i·G",
                    "a1_seed_label" => a_label,
                    "a1_hex" => h(&a.to_bytes()),
                },
            ),
            ("shares", J::Arr(shares)),
        ],
        vec![config_vec, eval_vec, threshold_rfc9497_vector()],
        malformed,
    )
}

/// RFC 9497 Appendix A.1.2 (ristretto255-SHA512, VOPRF mode 0x01): the key's derivation inputs
/// and public key, and Test Vector 1, as published
/// (`testdata/vectors/oprf/rfc9497-allVectors.json`).
const RFC9497_SEED: [u8; 32] = [0xa3; 32];
const RFC9497_KEY_INFO: &[u8] = b"test key";
const RFC9497_PK: &str = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e";
const RFC9497_INPUT: &[u8] = &[0x00];
const RFC9497_BLIND: &str = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706";
const RFC9497_BLINDED: &str = "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945";
const RFC9497_EVALUATED: &str = "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e";
const RFC9497_OUTPUT: &str = "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7da4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c";

/// The RFC 9497 vector key `skSm` shared 2-of-3, and the RFC's first mode 0x01 test vector
/// evaluated by the instances and combined: every 2-subset reaches the RFC's
/// EvaluationElement and the donor's finalisation the RFC's Output.
fn threshold_rfc9497_vector() -> J {
    let key = VoprfServer::<Ristretto255>::new_from_seed(&RFC9497_SEED, RFC9497_KEY_INFO)
        .expect("RFC 9497 key");
    let sk = oprf_private_key(&key);
    let group = oprf_public_key(&key);
    assert_eq!(h(&group), RFC9497_PK, "pkSm of RFC 9497 A.1.2");
    let k = scalar(sk);
    let a_label = "threshold rfc9497 polynomial a1";
    let a = scalar(seed_scalar(a_label));
    let servers = share_servers(k, a);
    let config = share_config("rfc9497-pseudonymiser-test", group, &servers);

    let input = zeroize::Zeroizing::new(RFC9497_INPUT.to_vec());
    let blind: [u8; 32] = hex::decode(RFC9497_BLIND)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let blinded = threshold::blind_input_with_scalar(input.clone(), blind)
        .expect("blind")
        .blinded;
    assert_eq!(
        h(&blinded),
        RFC9497_BLINDED,
        "B is the RFC's BlindedElement"
    );
    let b = point(&blinded);
    let proof_label = |i: u16| format!("threshold rfc9497 proof {i}");
    let answers: Vec<InstanceAnswer> = (1..=SHARE_N)
        .map(|i| {
            let (evaluated, proof) =
                voprf_evaluate(&servers[usize::from(i) - 1].1, &blinded, &proof_label(i));
            InstanceAnswer {
                index: i,
                evaluated,
                proof,
            }
        })
        .collect();
    let kb = (k * b).compress().to_bytes();
    assert_eq!(
        h(&kb),
        RFC9497_EVALUATED,
        "k·B is the RFC's EvaluationElement"
    );
    let answer_json = share_answers_json(&servers, &answers, b, &proof_label);
    // Every pair combines to k·B, which is the RFC's EvaluationElement (asserted above).
    let combinations = share_combinations(&answers, kb);
    // RFC 9497 Finalize(input, r, Z) on the combined element (mode-independent), which is the
    // key's unblinded Evaluate(skSm, input).
    let fin =
        voprf::OprfClient::<Ristretto255>::deterministic_blind_unchecked(&input, scalar(blind))
            .expect("blind");
    let y = fin
        .state
        .finalize(
            &input,
            &EvaluationElement::deserialize(&kb).expect("element"),
        )
        .expect("finalize");
    assert_eq!(h(&y), RFC9497_OUTPUT, "y is the RFC's Output");
    assert_eq!(
        voprf_output(&key, &input).as_bytes().as_slice(),
        y.as_slice()
    );
    let shares: Vec<J> = servers
        .iter()
        .map(|(i, s)| {
            obj! {
                "index" => *i,
                "secret_share_hex" => h(&oprf_private_key(s)),
                "public_share_hex" => h(&oprf_public_key(s)),
            }
        })
        .collect();
    obj! {
        "name" => "threshold-rfc9497",
        "kind" => "threshold_rfc9497_evaluation",
        "note" => "RFC 9497 Appendix A.1.2 (ristretto255-SHA512, VOPRF mode 0x01): its key skSm shared 2-of-3 and its Test Vector 1 evaluated by the instances; B is the RFC's BlindedElement, every 2-subset combines to the RFC's EvaluationElement and the donor's Finalize gives the RFC's Output. The answers' proofs are against the shares K_i, so they are not the RFC's Proof.",
        "group_key" => obj! {
            "note" => "RFC 9497 DeriveKeyPair(Seed, KeyInfo) in mode 0x01: skSm and pkSm",
            "seed_hex" => h(&RFC9497_SEED),
            "info_text" => utf8(RFC9497_KEY_INFO),
            "private_key_hex" => h(&sk),
            "public_key_hex" => h(&group),
        },
        "polynomial" => obj! {
            "threshold" => SHARE_T,
            "instances" => SHARE_N,
            "formula" => "f(x) = skSm + a1·x mod L; instance i holds k_i = f(i) and publishes K_i = k_i·G",
            "a1_seed_label" => a_label,
            "a1_hex" => h(&a.to_bytes()),
        },
        "shares" => J::Arr(shares),
        "config_json_text" => utf8(&config.to_json()),
        "input_hex" => h(RFC9497_INPUT),
        "blind_hex" => h(&blind),
        "blinded_element_hex" => h(&blinded),
        "request_json_text" => utf8(&to_json_bytes(&EvaluateRequest { blinded })),
        "answers" => answer_json,
        "combinations" => combinations,
        "evaluated_element_hex" => h(&kb),
        "output_hex" => h(&y),
    }
}

// ---------------------------------------------------------------------------------------------
// ledger-entry.json

fn entry_meanings(kind: &str) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("type", "entry type; first member"),
        (
            "time",
            "when the intake (or analytics) recorded it, Unix seconds",
        ),
    ];
    let rest: &[(&str, &str)] = match kind {
        "consent_granted" => &[
            ("study_id", "the study"),
            ("study_version", "the study version"),
            ("pseudonym", "the donor's pseudonym"),
            ("consent_record_id", "the manifest's record_id"),
            ("purposes", "the manifest's purposes"),
            ("given_at", "the manifest's given_at"),
            ("expires_at", "the manifest's expires_at"),
            ("manifest_sha256", "SHA-256 of the signed manifest payload"),
            (
                "donor_public_key",
                "the donor key that may withdraw (base64)",
            ),
        ],
        "donation_accepted" => &[
            ("study_id", "the study"),
            ("pseudonym", "the donor's pseudonym"),
            ("consent_record_id", "consent the donation was made under"),
            ("idempotency_key", "the payload's idempotency key, hex"),
            (
                "envelope_sha256",
                "SHA-256 of the envelope bytes as received",
            ),
            ("rows", "rows accepted (u32)"),
            ("batch_id", "hex id of the sealed batch holding them"),
        ],
        "consent_withdrawn" => &[
            ("study_id", "the study"),
            ("pseudonym", "the donor's pseudonym"),
            ("consent_record_id", "consent withdrawn"),
            (
                "withdrawal_sha256",
                "SHA-256 of the signed withdrawal payload",
            ),
        ],
        "erasure_done" => &[
            ("study_id", "the study"),
            ("pseudonym", "the withdrawn donor's pseudonym"),
            (
                "consent_record_id",
                "the withdrawn consent record whose rows were erased (hex16; absent in entries written before rows were matched to consent by record)",
            ),
            ("rows_erased", "rows removed (u64)"),
            ("batches_rewritten", "hex ids of the batches rewritten"),
        ],
        "query_run" => &[
            ("study_id", "the study"),
            ("query_sha256", "query hash of the spec run"),
            ("approval_sha256", "SHA-256 of the signed approval payload"),
            ("researcher", "researcher"),
            ("purpose", "purpose"),
            (
                "donors_considered",
                "distinct donors whose consent covered the query (u64)",
            ),
            ("cells_published", "cells published (u64)"),
            ("cells_suppressed", "cells suppressed (u64)"),
        ],
        _ => &[
            ("role", "hpke-transport | ledger | oprf | vault"),
            ("key_id", "new key id (u32)"),
            ("public_key_sha256", "SHA-256 of the new public key"),
        ],
    };
    v.extend_from_slice(rest);
    v
}

fn proof_hex(p: &[Hash]) -> J {
    J::Arr(p.iter().map(|x| J::Str(x.to_hex())).collect())
}

fn ledger_file(fx: &Fixture) -> J {
    let mut valid: Vec<J> = fx
        .entries
        .iter()
        .zip(&fx.entry_bytes)
        .enumerate()
        .map(|(i, (e, b))| {
            obj! {
                "name" => format!("entry-{i}-{}", e.kind()),
                "kind" => "entry",
                "index" => i,
                "entry_text" => utf8(b),
                "leaf_hash_hex" => merkle::leaf_hash(b).to_hex(),
                "leaf_hash_input" => "SHA-256(0x00 || entry bytes)",
                "fields" => annotate(e, &entry_meanings(e.kind())),
            }
        })
        .collect();
    let n = fx.leaves.len();
    let inclusion: Vec<J> = (0..n)
        .map(|i| {
            obj! {
                "index" => i,
                "proof" => proof_hex(&merkle::inclusion_proof(&fx.leaves, i as u64).expect("proof")),
            }
        })
        .collect();
    let roots: Vec<J> = (1..=n)
        .map(|s| obj! { "size" => s, "root_hex" => merkle::root(&fx.leaves[..s]).to_hex() })
        .collect();
    let consistency: Vec<J> = [(2usize, 5usize), (2, 6), (5, 6), (3, 6)]
        .iter()
        .map(|(a, b)| {
            obj! {
                "size1" => *a,
                "size2" => *b,
                "proof" => proof_hex(&merkle::consistency_proof(&fx.leaves[..*b], *a as u64).expect("proof")),
            }
        })
        .collect();
    valid.push(obj! {
        "name" => "tree-of-six-entries",
        "kind" => "tree",
        "leaf_hashes" => J::Arr(fx.leaves.iter().map(|l| J::Str(l.to_hex())).collect()),
        "roots" => J::Arr(roots),
        "inclusion_proofs_size_6" => J::Arr(inclusion),
        "consistency_proofs" => J::Arr(consistency),
    });
    let note = fx.checkpoint(n);
    let (body, sig_block) = note.split_once("\n\n").expect("note has a blank line");
    let body = format!("{body}\n");
    let sig_line = sig_block.trim_end_matches('\n');
    let raw_sig = STANDARD
        .decode(sig_line.rsplit(' ').next().expect("signature field"))
        .expect("base64");
    let verifier = NoteVerifier::new(ORIGIN, fx.ledger.public_key().0).expect("verifier");
    valid.push(obj! {
        "name" => "checkpoint-size-6",
        "kind" => "checkpoint",
        "origin" => ORIGIN,
        "key_name" => ORIGIN,
        "vkey" => fx.vkey(),
        "key_hash_hex" => h(&verifier.key_hash()),
        "key_hash_input_hex" => h(&[ORIGIN.as_bytes(), b"\n", &[0x01], &fx.ledger.public_key().0].concat()),
        "tree_size" => n,
        "root_hex" => merkle::root(&fx.leaves).to_hex(),
        "body_text" => body.clone(),
        "body_lines" => J::Arr(vec![
            obj! { "line" => ORIGIN, "meaning" => "origin" },
            obj! { "line" => n.to_string(), "meaning" => "tree size, canonical decimal" },
            obj! { "line" => b64(&merkle::root(&fx.leaves).0), "meaning" => "root hash, standard base64" },
        ]),
        "signature_line" => sig_line,
        "signature_field_layout" => Layout::new()
            .add(&raw_sig[..4], "key_hash", "SHA-256(key name || 0x0A || 0x01 || public key)[0..4]")
            .add(&raw_sig[4..], "signature", "Ed25519 signature over body_text")
            .done(),
        "note_text" => note.clone(),
    });
    let mut file = Vec::new();
    let mut records = Layout::new();
    for (b, l) in fx.entry_bytes.iter().zip(&fx.leaves) {
        let len = (b.len() as u32).to_be_bytes();
        records
            .add(&len, "length", "u32 BE entry length")
            .add(b, "entry", "entry bytes")
            .add(&l.0, "leaf_hash", "SHA-256(0x00 || entry)");
        file.extend_from_slice(&len);
        file.extend_from_slice(b);
        file.extend_from_slice(&l.0);
    }
    valid.push(obj! {
        "name" => "ledger-file-six-records",
        "kind" => "ledger_file",
        "note" => "the intake's append-only ledger file: one record per entry, u32 BE length || entry bytes || 32-byte leaf hash",
        "file_hex" => h(&file),
        "layout" => records.done(),
    });

    let de = "LedgerEntry::from_bytes";
    let json = "WireError::Json";
    let granted = utf8(&fx.entry_bytes[0]);
    let accepted = utf8(&fx.entry_bytes[1]);
    let mut malformed = vec![
        mal(
            "unknown-type",
            de,
            Input::Text(granted.replacen("consent_granted", "consent_revoked", 1)),
            json,
        ),
        mal(
            "type-missing",
            de,
            Input::Text(granted.replacen("\"type\":\"consent_granted\",", "", 1)),
            json,
        ),
        mal(
            "unknown-member",
            de,
            Input::Text(granted.replacen("\"time\"", "\"note\":\"x\",\"time\"", 1)),
            json,
        ),
        mal(
            "member-of-another-type",
            de,
            Input::Text(accepted.replacen("\"rows\":3", "\"rows\":3,\"rows_erased\":3", 1)),
            json,
        ),
        mal(
            "time-as-string",
            de,
            Input::Text(granted.replacen(
                &format!("\"time\":{NOW}"),
                &format!("\"time\":\"{NOW}\""),
                1,
            )),
            json,
        ),
        mal(
            "rows-negative",
            de,
            Input::Text(accepted.replacen("\"rows\":3", "\"rows\":-3", 1)),
            json,
        ),
        mal(
            "rows-above-u32",
            de,
            Input::Text(accepted.replacen("\"rows\":3", "\"rows\":4294967296", 1)),
            json,
        ),
        mal(
            "envelope-sha256-uppercase",
            de,
            Input::Text(accepted.replacen(
                &h(&sha256(&fx.envelope)),
                &h(&sha256(&fx.envelope)).to_uppercase(),
                1,
            )),
            json,
        ),
        mal(
            "pseudonym-63-digits",
            de,
            Input::Text(accepted.replacen(&fx.pseudonym.to_hex(), &fx.pseudonym.to_hex()[1..], 1)),
            json,
        ),
        mal(
            "study-id-too-short",
            de,
            Input::Text(accepted.replacen("\"t2d-dk\"", "\"t2\"", 1)),
            json,
        ),
        mal(
            "trailing-newline",
            de,
            Input::Text(format!("{accepted}\n")),
            "WireError::TrailingBytes",
        ),
        mal(
            "oversize",
            de,
            Input::Repeat(" ", datadonor_schemas::ledger::MAX_ENTRY_LEN + 1),
            "WireError::TooLarge",
        ),
    ];

    let dn = "checkpoint::open";
    let ce = |v: &str| format!("CheckpointError::{v}");
    let sign_text = |t: &str| checkpoint::sign_text(t, ORIGIN, fx.ledger.key_pair()).expect("sign");
    let root6 = b64(&merkle::root(&fx.leaves).0);
    let other_root = b64(&merkle::root(&fx.leaves[..5]).0);
    let mut sig_flipped = note.clone().into_bytes();
    let l = sig_flipped.len();
    sig_flipped[l - 6] = if sig_flipped[l - 6] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mallory_note = checkpoint::sign(
        &Checkpoint::new(ORIGIN, n as u64, merkle::root(&fx.leaves)).expect("cp"),
        ORIGIN,
        fx.mallory.key_pair(),
    )
    .expect("sign");
    let first_line_of_sig = note
        .split("\n\n")
        .nth(1)
        .expect("signature block")
        .to_string();
    malformed.extend([
        mal(
            "signature-changed",
            dn,
            Input::Text(utf8(&sig_flipped)),
            &ce("InvalidSignature"),
        ),
        mal(
            "tree-size-changed",
            dn,
            Input::Text(note.replacen("\n6\n", "\n7\n", 1)),
            &ce("InvalidSignature"),
        ),
        mal(
            "root-changed",
            dn,
            Input::Text(note.replacen(&root6, &other_root, 1)),
            &ce("InvalidSignature"),
        ),
        mal(
            "signed-by-another-key-same-name",
            dn,
            Input::Text(mallory_note),
            &ce("UnverifiedNote"),
        ),
        mal(
            "no-blank-line",
            dn,
            Input::Text(note.replacen("\n\n", "\n", 1)),
            &ce("MissingSignatureBlock"),
        ),
        mal(
            "no-final-newline",
            dn,
            Input::Text(note.trim_end_matches('\n').to_string()),
            &ce("MalformedSignatureBlock"),
        ),
        mal(
            "carriage-return-line-ends",
            dn,
            Input::Text(note.replace('\n', "\r\n")),
            &ce("ForbiddenCharacter"),
        ),
        mal(
            "hyphen-instead-of-em-dash",
            dn,
            Input::Text(note.replacen('\u{2014}', "-", 1)),
            &ce("MalformedSignatureLine"),
        ),
        mal(
            "signature-line-twice",
            dn,
            Input::Text(format!("{note}{first_line_of_sig}")),
            &ce("DuplicateSignature"),
        ),
        mal(
            "tree-size-leading-zero-signed",
            dn,
            Input::Text(sign_text(&body.replacen("\n6\n", "\n06\n", 1))),
            &ce("InvalidTreeSize"),
        ),
        mal(
            "root-base64-unpadded-signed",
            dn,
            Input::Text(sign_text(&body.replacen(
                &root6,
                root6.trim_end_matches('='),
                1,
            ))),
            &ce("InvalidRootHash"),
        ),
        mal(
            "two-line-body-signed",
            dn,
            Input::Text(sign_text(&format!("{ORIGIN}\n6\n"))),
            &ce("TooFewLines"),
        ),
        mal(
            "empty-extension-line-signed",
            dn,
            Input::Text(sign_text(&format!("{body}\n"))),
            &ce("EmptyExtensionLine"),
        ),
    ]);
    let dv = "NoteVerifier::parse_vkey";
    let vk = fx.vkey();
    let hash_hex = h(&verifier.key_hash());
    let mut wrong_hash = verifier.key_hash();
    wrong_hash[0] ^= 1;
    let key_b64 = b64(&[&[0x01][..], &fx.ledger.public_key().0].concat());
    malformed.extend([
        mal(
            "vkey-key-hash-mismatch",
            dv,
            Input::Text(vk.replacen(&hash_hex, &h(&wrong_hash), 1)),
            &ce("KeyHashMismatch"),
        ),
        mal(
            "vkey-key-hash-uppercase",
            dv,
            Input::Text(vk.replacen(&hash_hex, &hash_hex.to_uppercase(), 1)),
            &ce("MalformedVerifierKey"),
        ),
        mal(
            "vkey-type-0x02",
            dv,
            Input::Text(vk.replacen(
                &key_b64,
                &b64(&[&[0x02][..], &fx.ledger.public_key().0].concat()),
                1,
            )),
            &ce("UnsupportedKeyType"),
        ),
        mal(
            "vkey-missing-part",
            dv,
            Input::Text(format!("{ORIGIN}+{hash_hex}")),
            &ce("MalformedVerifierKey"),
        ),
        mal(
            "vkey-name-with-space",
            dv,
            Input::Text(format!("datadonor ledger+{hash_hex}+{key_b64}")),
            &ce("InvalidKeyName"),
        ),
    ]);
    let di = "merkle::verify_inclusion";
    let proof1 = merkle::inclusion_proof(&fx.leaves, 1).expect("proof");
    let root = merkle::root(&fx.leaves);
    let incl = |name: &str, index: u64, size: u64, leaf: &Hash, proof: &[Hash], expect: &str| {
        let mut j = obj! { "name" => name, "decoder" => di };
        j.push("leaf_index", index);
        j.push("tree_size", size);
        j.push("leaf_hash_hex", leaf.to_hex());
        j.push("proof", proof_hex(proof));
        j.push("root_hex", root.to_hex());
        j.push("expect", expect);
        j
    };
    let mut flipped_proof = proof1.clone();
    flipped_proof[1].0[0] ^= 1;
    malformed.extend([
        incl(
            "inclusion-proof-element-flipped",
            1,
            6,
            &fx.leaves[1],
            &flipped_proof,
            "MerkleError::RootMismatch",
        ),
        incl(
            "inclusion-proof-missing-element",
            1,
            6,
            &fx.leaves[1],
            &proof1[..2],
            "MerkleError::ProofLength",
        ),
        incl(
            "inclusion-wrong-index",
            2,
            6,
            &fx.leaves[1],
            &proof1,
            "MerkleError::RootMismatch",
        ),
        incl(
            "inclusion-index-equals-size",
            6,
            6,
            &fx.leaves[1],
            &proof1,
            "MerkleError::IndexOutOfRange",
        ),
        incl(
            "inclusion-leaf-of-another-entry",
            1,
            6,
            &fx.leaves[0],
            &proof1,
            "MerkleError::RootMismatch",
        ),
    ]);
    let dcons = "merkle::verify_consistency";
    let cons = |name: &str, s1: u64, s2: u64, proof: &[Hash], r1: &Hash, expect: &str| {
        obj! {
            "name" => name,
            "decoder" => dcons,
            "size1" => s1,
            "size2" => s2,
            "proof" => proof_hex(proof),
            "root1_hex" => r1.to_hex(),
            "root2_hex" => root.to_hex(),
            "expect" => expect,
        }
    };
    let p26 = merkle::consistency_proof(&fx.leaves, 2).expect("proof");
    malformed.extend([
        cons(
            "consistency-root1-of-another-size",
            3,
            6,
            &merkle::consistency_proof(&fx.leaves, 3).expect("proof"),
            &merkle::root(&fx.leaves[..2]),
            "MerkleError::Root1Mismatch",
        ),
        cons(
            "consistency-root1-wrong-power-of-two-size1",
            2,
            6,
            &p26,
            &merkle::root(&fx.leaves[..3]),
            "MerkleError::RootMismatch",
        ),
        cons(
            "consistency-from-empty-tree",
            0,
            6,
            &[],
            &merkle::empty_root(),
            "MerkleError::Size1Zero",
        ),
        cons(
            "consistency-size1-above-size2",
            7,
            6,
            &p26,
            &merkle::root(&fx.leaves[..2]),
            "MerkleError::Size1GreaterThanSize2",
        ),
    ]);
    finish(
        file_head(
            "ledger-entry",
            "Consent-ledger entries (leaf bytes = the entry's compact JSON), their RFC 9162 tree, a C2SP signed-note checkpoint signed by the ledger key, and the intake's ledger file records. Checkpoint decoder: checkpoint::open(input, [verifier of vkey]).",
            "Ledger entries",
        ),
        vec![("keys", obj! { "ledger" => ed_key_json("ledger", &fx.ledger), "mallory" => ed_key_json("mallory", &fx.mallory) })],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// receipt.json

const RECEIPT_FIELDS: [(&str, &str); 10] = [
    ("format", "format version, 1"),
    ("kind", "donation | withdrawal"),
    ("study_id", "the study"),
    ("pseudonym", "the donor's pseudonym"),
    ("consent_record_id", "the consent record"),
    ("request_sha256", "donation: SHA-256 of the envelope bytes; withdrawal: SHA-256 of the signed withdrawal's payload (equal to the entry's withdrawal_sha256)"),
    ("ledger_index", "index of the entry in the ledger"),
    ("entry_sha256", "RFC 9162 leaf hash of the entry: SHA-256(0x00 || entry bytes)"),
    ("checkpoint", "a signed checkpoint (signed-note text) of a tree containing the entry"),
    ("issued_at", "when issued, Unix seconds"),
];

fn receipt_for(fx: &Fixture, index: usize, size: usize, kind: ReceiptKind) -> Receipt {
    let (consent_record_id, request_sha256) = match &fx.entries[index] {
        LedgerEntry::DonationAccepted {
            consent_record_id,
            envelope_sha256,
            ..
        } => (*consent_record_id, *envelope_sha256),
        LedgerEntry::ConsentWithdrawn {
            consent_record_id,
            withdrawal_sha256,
            ..
        } => (*consent_record_id, *withdrawal_sha256),
        _ => unreachable!("receipts are for donations and withdrawals"),
    };
    Receipt {
        format: 1,
        kind,
        study_id: fx.study.id.clone(),
        pseudonym: fx.pseudonym,
        consent_record_id,
        request_sha256,
        ledger_index: index as u64,
        entry_sha256: fx.leaves[index].0,
        checkpoint: fx.checkpoint(size),
        issued_at: NOW,
    }
}

fn bundle(fx: &Fixture, r: &Receipt, key: &SigningKey, index: usize, size: usize) -> ReceiptBundle {
    ReceiptBundle {
        receipt: r.sign(key),
        entry: fx.entry_bytes[index].clone(),
        inclusion_proof: merkle::inclusion_proof(&fx.leaves[..size], index as u64)
            .expect("proof")
            .into_iter()
            .map(|x| HexHash(x.0))
            .collect(),
    }
}

fn receipt_file(fx: &Fixture) -> J {
    let rv = |name: &str, index: usize, size: usize, kind: ReceiptKind, note: &str| {
        let r = receipt_for(fx, index, size, kind);
        let b = bundle(fx, &r, &fx.ledger, index, size);
        obj! {
            "name" => name,
            "kind" => "receipt",
            "note" => note,
            "bundle_text" => utf8(&to_json_bytes(&b)),
            "bundle_fields" => J::Arr(vec![
                obj! { "name" => "receipt", "meaning" => "signed object, context \"receipt\", signed by the ledger key" },
                obj! { "name" => "entry", "meaning" => "standard base64 of the ledger entry bytes" },
                obj! { "name" => "inclusion_proof", "meaning" => "RFC 9162 inclusion proof of the entry under the receipt's checkpoint, lowercase hex hashes" },
            ]),
            "receipt_payload_text" => utf8(&b.receipt.payload),
            "receipt_fields" => annotate(&r, &RECEIPT_FIELDS),
            "entry_text" => utf8(&b.entry),
            "verified" => obj! {
                "tree_size" => size,
                "root_hex" => merkle::root(&fx.leaves[..size]).to_hex(),
                "entry_type" => fx.entries[index].kind(),
            },
        }
    };
    let valid = vec![
        rv(
            "donation-receipt",
            1,
            2,
            ReceiptKind::Donation,
            "receipt for the envelope vector; request_sha256 = SHA-256 of the envelope bytes; checkpoint of size 2",
        ),
        rv(
            "withdrawal-receipt",
            4,
            5,
            ReceiptKind::Withdrawal,
            "receipt for the withdrawal vector; request_sha256 = SHA-256 of the signed withdrawal payload as logged in the entry; checkpoint of size 5",
        ),
    ];

    let d = "ReceiptBundle::from_json+verify_receipt";
    let base = receipt_for(fx, 1, 2, ReceiptKind::Donation);
    let good = bundle(fx, &base, &fx.ledger, 1, 2);
    let text = |b: &ReceiptBundle| Input::Text(utf8(&to_json_bytes(b)));
    let with_receipt = |f: &dyn Fn(&mut Receipt)| {
        let mut r = base.clone();
        f(&mut r);
        let mut b = good.clone();
        b.receipt = r.sign(&fx.ledger);
        text(&b)
    };
    let mm = |name: &str, input: Input, detail: &str| {
        with(
            mal(name, d, input, "ReceiptError::Mismatch"),
            "expect_detail",
            detail,
        )
    };
    let good_text = utf8(&to_json_bytes(&good));
    let mut sig_flip = good.clone();
    sig_flip.receipt.signature[63] ^= 0x40;
    let mut wrong_ctx = good.clone();
    wrong_ctx.receipt = sign_payload(
        Context::Withdrawal,
        good.receipt.payload.clone(),
        &fx.ledger,
    );
    let mut entry_flip = good.clone();
    let pos = entry_flip
        .entry
        .windows(6)
        .position(|w| w == b"\"rows\"")
        .expect("rows member")
        + 7;
    entry_flip.entry[pos] = b'4';
    let mut proof_flip = good.clone();
    proof_flip.inclusion_proof[0].0[5] ^= 0x08;
    let mut proof_short = good.clone();
    proof_short.inclusion_proof.pop();
    let mut proof_long = good.clone();
    proof_long.inclusion_proof.push(HexHash([0; 32]));
    let other_checkpoint = checkpoint::sign(
        &Checkpoint::new(ORIGIN, 2, merkle::root(&fx.leaves[..2])).expect("cp"),
        ORIGIN,
        fx.mallory.key_pair(),
    )
    .expect("sign");
    let tampered_checkpoint = fx.checkpoint(2).replacen("\n2\n", "\n3\n", 1);
    let malformed = vec![
        mal(
            "receipt-signed-by-another-key",
            d,
            text(&bundle(fx, &base, &fx.mallory, 1, 2)),
            "ReceiptError::Signature(SignatureError::UnexpectedSigner)",
        ),
        mal(
            "receipt-signature-bit-flipped",
            d,
            text(&sig_flip),
            "ReceiptError::Signature(SignatureError::BadSignature)",
        ),
        mal(
            "receipt-signed-as-withdrawal",
            d,
            text(&wrong_ctx),
            "ReceiptError::Signature(SignatureError::WrongContext)",
        ),
        mal(
            "checkpoint-signed-by-another-key",
            d,
            with_receipt(&|r| r.checkpoint = other_checkpoint.clone()),
            "ReceiptError::Checkpoint(CheckpointError::UnverifiedNote)",
        ),
        mal(
            "checkpoint-size-altered",
            d,
            with_receipt(&|r| r.checkpoint = tampered_checkpoint.clone()),
            "ReceiptError::Checkpoint(CheckpointError::InvalidSignature)",
        ),
        mal(
            "checkpoint-not-a-note",
            d,
            with_receipt(&|r| r.checkpoint = "datadonor.example/ledger\n2\n".into()),
            "ReceiptError::Checkpoint(CheckpointError::MissingSignatureBlock)",
        ),
        mm("entry-rows-changed", text(&entry_flip), "entry_sha256"),
        mal(
            "inclusion-proof-element-flipped",
            d,
            text(&proof_flip),
            "ReceiptError::Inclusion(MerkleError::RootMismatch)",
        ),
        mal(
            "inclusion-proof-element-missing",
            d,
            text(&proof_short),
            "ReceiptError::Inclusion(MerkleError::ProofLength)",
        ),
        mal(
            "inclusion-proof-element-extra",
            d,
            text(&proof_long),
            "ReceiptError::Inclusion(MerkleError::ProofLength)",
        ),
        mal(
            "ledger-index-wrong",
            d,
            with_receipt(&|r| r.ledger_index = 0),
            "ReceiptError::Inclusion(MerkleError::RootMismatch)",
        ),
        mal(
            "ledger-index-beyond-checkpoint",
            d,
            with_receipt(&|r| r.ledger_index = 2),
            "ReceiptError::Inclusion(MerkleError::IndexOutOfRange)",
        ),
        mm(
            "kind-withdrawal-for-donation-entry",
            with_receipt(&|r| r.kind = ReceiptKind::Withdrawal),
            "entry type",
        ),
        mm(
            "pseudonym-differs-from-entry",
            with_receipt(&|r| r.pseudonym.0[0] ^= 1),
            "donation entry",
        ),
        mm(
            "consent-record-differs-from-entry",
            with_receipt(&|r| r.consent_record_id[15] ^= 1),
            "donation entry",
        ),
        mm(
            "request-sha256-differs-from-envelope",
            with_receipt(&|r| r.request_sha256[0] ^= 1),
            "envelope_sha256",
        ),
        mal(
            "bundle-unknown-member",
            d,
            Input::Text(good_text.replacen('{', "{\"status\":\"ok\",", 1)),
            "ReceiptError::Malformed(WireError::Json)",
        ),
        mal(
            "bundle-proof-hash-uppercase",
            d,
            Input::Text(good_text.replacen(
                &h(&good.inclusion_proof[0].0),
                &h(&good.inclusion_proof[0].0).to_uppercase(),
                1,
            )),
            "ReceiptError::Malformed(WireError::Json)",
        ),
        mal(
            "bundle-trailing-newline",
            d,
            Input::Text(format!("{good_text}\n")),
            "ReceiptError::Malformed(WireError::TrailingBytes)",
        ),
    ];
    finish(
        file_head(
            "receipt",
            "Receipt bundles as the intake returns them, over the ledger of ledger-entry.json. Decoder: ReceiptBundle::from_json then verify_receipt(bundle, ledger public key, verifier of vkey).",
            "Receipts",
        ),
        vec![
            ("keys", obj! { "ledger" => ed_key_json("ledger", &fx.ledger), "mallory" => ed_key_json("mallory", &fx.mallory) }),
            ("vkey", J::Str(fx.vkey())),
        ],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// query.json

const APPROVAL_FIELDS: [(&str, &str); 9] = [
    ("format", "format version, 1"),
    ("approval_id", "16 random bytes, lowercase hex"),
    ("query_sha256", "the query hash of the spec approved"),
    ("study_id", "must equal the spec's study"),
    ("purpose", "must equal the spec's purpose"),
    ("researcher", "must equal the spec's researcher"),
    ("not_before", "valid from (inclusive), Unix seconds"),
    ("not_after", "valid until (exclusive), Unix seconds"),
    ("max_runs", "runs allowed"),
];

const MINIMAL_QUERY: &str = "study = \"t2d-dk\"\npurpose = \"t2d-care-quality\"\nresearcher = \"researcher@sdu.example\"\n\n[[measures]]\nop = \"donors\"\n";

const FLOAT_QUERY: &str = r#"study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "Åse Ørsted <ase@sdu.example>"
title = "Blodtryk \"ældre\" \\ 60+\u0001"
k = 10
group_by = ["period", "sex"]

[filter]
all = [
  { cmp = { field = "hba1c", op = "ge", value = 7 } },
  { cmp = { field = "t2d", op = "eq", value = true } },
  { in = { field = "period", values = ["2024-01", "2024-02"] } },
]

[[measures]]
op = "quantile"
field = "systolic"
q = 0.25

[[measures]]
op = "std"
field = "diastolic"
"#;

fn query_file(fx: &Fixture) -> J {
    let qv = |name: &str, toml: &str, note: &str| {
        let s = QuerySpec::from_toml(toml).expect("query vector");
        s.validate(&fx.study).expect("valid query");
        let mut hashed = datadonor_schemas::query::QUERY_HASH_PREFIX.to_vec();
        hashed.extend_from_slice(&s.canonical_json());
        obj! {
            "name" => name,
            "kind" => "query",
            "note" => note,
            "toml_text" => toml,
            "canonical_json_text" => utf8(&s.canonical_json()),
            "hash_input_hex" => h(&hashed),
            "query_sha256_hex" => h(&s.hash()),
            "effective_k" => s.effective_k(&fx.study),
            "columns" => strs(&s.measures.iter().map(|m| m.column_name()).collect::<Vec<_>>()),
        }
    };
    let a = &fx.signed_approval;
    let valid = vec![
        qv("t2d-query", QUERY_TOML, "examples/t2d-query.toml"),
        qv(
            "minimal-with-defaults",
            MINIMAL_QUERY,
            "omitted members take their defaults and appear in the canonical form; filter is omitted when absent",
        ),
        qv(
            "numbers-strings-and-filters",
            FLOAT_QUERY,
            "integer 7 compared with a measure canonicalises as 7.0; non-ASCII is written as UTF-8, \\\" \\\\ and control characters escaped",
        ),
        obj! {
            "name" => "approval",
            "kind" => "approval",
            "query" => "t2d-query",
            "now" => NOW,
            "runs_so_far" => 0u32,
            "signed_by" => "approver",
            "payload_text" => utf8(&a.payload),
            "payload_sha256_hex" => h(&a.payload_digest()),
            "signed_text" => utf8(&a.to_bytes()),
            "fields" => annotate(&fx.approval, &APPROVAL_FIELDS),
        },
    ];

    let dt = "QuerySpec::from_toml";
    let dv = "QuerySpec::from_toml+validate";
    let toml = "QueryError::Toml";
    let inv = "QueryError::Invalid";
    let refused = "QueryError::Refused";
    let q = |old: &str, new: &str| Input::Text(QUERY_TOML.replacen(old, new, 1));
    let mut malformed = vec![
        mal("unknown-key", dt, q("k = 5", "k = 5\nepsilon = 1.0"), toml),
        mal(
            "no-measures",
            dt,
            Input::Text(
                "study = \"t2d-dk\"\npurpose = \"t2d-epidemiology\"\nresearcher = \"r\"\n".into(),
            ),
            toml,
        ),
        mal("syntax-error", dt, q("k = 5", "k = "), toml),
        mal("op-median", dt, q("op = \"mean\"", "op = \"median\""), toml),
        mal(
            "study-id-uppercase",
            dt,
            q("\"t2d-dk\"", "\"T2D-DK\""),
            toml,
        ),
        mal("k-negative", dt, q("k = 5", "k = -5"), toml),
        mal(
            "oversize",
            dt,
            Input::Repeat("#", datadonor_schemas::query::MAX_SPEC_LEN + 1),
            inv,
        ),
        mal(
            "measure-min",
            dv,
            q(
                "op = \"mean\"\nfield = \"hba1c\"",
                "op = \"min\"\nfield = \"hba1c\"",
            ),
            refused,
        ),
        mal(
            "measure-max",
            dv,
            q(
                "op = \"mean\"\nfield = \"hba1c\"",
                "op = \"max\"\nfield = \"hba1c\"",
            ),
            refused,
        ),
        mal(
            "group-by-donor",
            dv,
            q("group_by = [\"region\", \"t2d\"]", "group_by = [\"donor\"]"),
            refused,
        ),
        mal(
            "group-by-a-measure",
            dv,
            q("group_by = [\"region\", \"t2d\"]", "group_by = [\"hba1c\"]"),
            refused,
        ),
        mal(
            "five-group-by-dimensions",
            dv,
            q(
                "group_by = [\"region\", \"t2d\"]",
                "group_by = [\"region\", \"t2d\", \"sex\", \"age_band\", \"period\"]",
            ),
            refused,
        ),
        mal(
            "group-by-twice",
            dv,
            q(
                "group_by = [\"region\", \"t2d\"]",
                "group_by = [\"region\", \"region\"]",
            ),
            inv,
        ),
        mal(
            "purpose-not-in-study",
            dv,
            q("purpose = \"t2d-epidemiology\"", "purpose = \"marketing\""),
            inv,
        ),
        mal(
            "researcher-blank",
            dv,
            q("researcher@sdu.example", "  "),
            inv,
        ),
        mal("quantile-q-1", dv, q("q = 0.5", "q = 1.0"), inv),
        mal(
            "mean-of-a-dimension",
            dv,
            q(
                "op = \"mean\"\nfield = \"hba1c\"",
                "op = \"mean\"\nfield = \"region\"",
            ),
            inv,
        ),
        mal(
            "donors-with-field",
            dv,
            q("op = \"donors\"", "op = \"donors\"\nfield = \"bmi\""),
            inv,
        ),
        mal(
            "filter-unknown-field",
            dv,
            q("field = \"age_band\"", "field = \"birth_year\""),
            inv,
        ),
        mal(
            "filter-value-not-a-category",
            dv,
            q("\"18-19\"", "\"18-24\""),
            inv,
        ),
        mal(
            "filter-period-not-a-month",
            dv,
            q(
                "field = \"age_band\", values = [\"18-19\"",
                "field = \"period\", values = [\"2024-3\"",
            ),
            inv,
        ),
    ];

    let da = "check_approval";
    let approval_in = |o: &SignedObject| Input::Text(utf8(&o.to_bytes()));
    let av = |f: &dyn Fn(&mut QueryApproval)| {
        let mut a = fx.approval.clone();
        f(&mut a);
        approval_in(&a.sign(&fx.approver))
    };
    let na = "QueryError::NotApproved";
    let mut flipped = a.clone();
    flipped.signature[1] ^= 1;
    let mut approvals = vec![
        mal(
            "approver-not-trusted",
            da,
            approval_in(&fx.approval.sign(&fx.mallory)),
            na,
        ),
        with(
            mal("spec-changed-after-approval", da, approval_in(a), na),
            "spec_toml",
            QUERY_TOML.replacen("k = 5", "k = 6", 1),
        ),
        mal("not-yet-valid", da, av(&|x| x.not_before = NOW + 1), na),
        mal("expired-at-not-after", da, av(&|x| x.not_after = NOW), na),
        with(
            mal("runs-used-up", da, approval_in(a), na),
            "runs_so_far",
            3u32,
        ),
        mal(
            "researcher-differs",
            da,
            av(&|x| x.researcher = "someone@else.example".into()),
            na,
        ),
        mal(
            "purpose-differs",
            da,
            av(&|x| x.purpose = "t2d-care-quality".into()),
            na,
        ),
        mal(
            "signed-as-study-definition",
            da,
            approval_in(&sign_payload(
                Context::StudyDefinition,
                a.payload.clone(),
                &fx.approver,
            )),
            "QueryError::Signature(SignatureError::WrongContext)",
        ),
        mal(
            "signature-bit-flipped",
            da,
            approval_in(&flipped),
            "QueryError::Signature(SignatureError::BadSignature)",
        ),
    ];
    for v in &mut approvals {
        if let J::Obj(m) = v {
            if !m.iter().any(|(k, _)| k == "spec_toml") {
                m.push(("spec_toml".into(), J::Str(QUERY_TOML.into())));
            }
            if !m.iter().any(|(k, _)| k == "runs_so_far") {
                m.push(("runs_so_far".into(), J::Int(0)));
            }
            m.push(("now".into(), J::Int(i128::from(NOW))));
        }
    }
    malformed.extend(approvals);
    finish(
        file_head(
            "query",
            "Query specs (TOML) -> canonical JSON -> query hash, and stewards' signed approvals. Specs are validated against the study of study-definition.json (payload repeated as study_payload_text). check_approval decoder: SignedObject::from_bytes(input), check_approval(object, QuerySpec::from_toml(spec_toml), [approver key], now, runs_so_far).",
            "Query specs",
        ),
        vec![
            ("keys", obj! { "approver" => ed_key_json("approver", &fx.approver), "mallory" => ed_key_json("mallory", &fx.mallory) }),
            ("study_payload_text", J::Str(fx.study_payload_text())),
        ],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// batch-header.json

struct SealedBatch {
    header: BatchHeader,
    data_key: [u8; 32],
    bytes: Vec<u8>,
    header_len: usize,
}

fn seal_batch(fx: &Fixture, label: &str, created_at: i64, plaintext: &[u8]) -> SealedBatch {
    let header = BatchHeader {
        batch_id: seed16(&format!("{label} batch id")),
        study_id: fx.study.id.to_string(),
        created_at,
        vault_key_id: 1,
        enc: [0; 32],
        wrapped_key: [0; 48],
    };
    let data_key = seed(&format!("{label} data key"));
    let (header, bytes) = datadonor_schemas::batch::seal_with_key(
        header,
        &fx.vault.public_key(),
        &data_key,
        plaintext,
        &mut DetRng::new(seed(&format!("{label} wrap ephemeral"))),
    )
    .expect("seal");
    let header_len = header.encode().len();
    SealedBatch {
        header,
        data_key,
        bytes,
        header_len,
    }
}

const HEADER_FIELDS: &str = "magic, batch_id, study_id_len, study_id, created_at, vault_key_id, chunk_size, enc, wrapped_key";

fn header_layout(hd: &BatchHeader) -> J {
    let b = hd.encode();
    let n = hd.study_id.len();
    let mut l = Layout::new();
    l.add(&b[0..8], "magic", "ASCII \"DDBATCH1\"")
        .add(&b[8..24], "batch_id", "16 random bytes; lowercase hex is the file name stem")
        .add(&b[24..25], "study_id_len", "n, 3..=64")
        .add(&b[25..25 + n], "study_id", "ASCII study id")
        .add(&b[25 + n..33 + n], "created_at", "i64 BE Unix seconds")
        .add(&b[33 + n..37 + n], "vault_key_id", "u32 BE id of the vault key the data key is wrapped to")
        .add(&b[37 + n..41 + n], "chunk_size", "u32 BE, always 65536")
        .add(&b[41 + n..73 + n], "enc", "HPKE encapsulated key of the data-key wrap")
        .add(
            &b[73 + n..121 + n],
            "wrapped_key",
            "HPKE seal of the 32-byte data key: 32 bytes ciphertext || 16-byte tag; info \"datadonor/v1 batch key\", aad = header bytes 0..41+n",
        );
    l.done()
}

fn batch_file(fx: &Fixture) -> J {
    let small_pt = b"PAR1 not really Parquet: the sealed batch vector's plaintext PAR1".to_vec();
    let big_pt: Vec<u8> = (0..2 * CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
    let empty = seal_batch(fx, "empty", NOW, &[]);
    let small = seal_batch(fx, "small", NOW + 60, &small_pt);
    let big = seal_batch(fx, "two chunks", NOW + 120, &big_pt);

    let hv = |name: &str, s: &SealedBatch| {
        let hd = &s.header;
        obj! {
            "name" => name,
            "kind" => "header",
            "fields" => obj! {
                "batch_id_hex" => h(&hd.batch_id),
                "study_id" => &hd.study_id,
                "created_at" => hd.created_at,
                "vault_key_id" => hd.vault_key_id,
                "chunk_size" => CHUNK_SIZE,
                "enc_hex" => h(&hd.enc),
                "wrapped_key_hex" => h(&hd.wrapped_key),
            },
            "header_hex" => h(&hd.encode()),
            "header_len" => s.header_len,
            "layout" => header_layout(hd),
            "wrap_aad_hex" => h(&hd.wrap_aad()),
            "chunk_aad_hex" => h(&hd.chunk_aad()),
        }
    };
    let sv = |name: &str, s: &SealedBatch, pt: J, full: bool, label: &str| {
        let body = &s.bytes[s.header_len..];
        let mut chunks = Vec::new();
        let mut off = s.header_len;
        let count = body.len().div_ceil(CHUNK_SIZE + TAG_LEN).max(1);
        for i in 0..count {
            let len = (s.bytes.len() - off).min(CHUNK_SIZE + TAG_LEN);
            let last = i + 1 == count;
            chunks.push(obj! {
                "index" => i,
                "offset" => off,
                "len" => len,
                "nonce_hex" => h(&chunk_nonce(i as u64, last)),
                "tag_hex" => h(&s.bytes[off + len - TAG_LEN..off + len]),
            });
            off += len;
        }
        let mut j = obj! {
            "name" => name,
            "kind" => "sealed_batch",
            "seed_label" => label,
            "vault_key_id" => 1u32,
            "data_key_hex" => h(&s.data_key),
            "wrap_ikm_e_hex" => h(&DetRng::first_bytes(seed(&format!("{label} wrap ephemeral")), 32)),
            "header_hex" => h(&s.header.encode()),
            "plaintext" => pt,
            "file_len" => s.bytes.len(),
            "file_sha256_hex" => h(&sha256(&s.bytes)),
            "chunks" => J::Arr(chunks),
        };
        if full {
            j.push("file_hex", h(&s.bytes));
        }
        j
    };
    let nonces: Vec<J> = [
        (0u64, false),
        (0, true),
        (1, false),
        (1, true),
        (255, false),
        (256, true),
        (u64::from(u32::MAX) + 1, false),
        (u64::MAX, true),
    ]
    .iter()
    .map(|(c, last)| obj! { "counter" => *c, "last" => *last, "nonce_hex" => h(&chunk_nonce(*c, *last)) })
    .collect();
    let valid = vec![
        hv("header-small", &small),
        obj! {
            "name" => "chunk-nonces",
            "kind" => "nonces",
            "layout" => "bytes 0..11: chunk counter, 88-bit big-endian (bytes 0..3 always zero for a u64 counter); byte 11: 0x01 on the last chunk, else 0x00",
            "cases" => J::Arr(nonces),
        },
        sv(
            "sealed-empty-file",
            &empty,
            obj! { "hex" => "" },
            true,
            "empty",
        ),
        sv(
            "sealed-small-file",
            &small,
            obj! { "hex" => h(&small_pt) },
            true,
            "small",
        ),
        sv(
            "sealed-two-full-chunks",
            &big,
            obj! {
                "pattern" => "byte i = i mod 251, for i in 0..131072",
                "len" => big_pt.len(),
                "sha256_hex" => h(&sha256(&big_pt)),
            },
            false,
            "two chunks",
        ),
    ];

    let dh = "BatchHeader::parse";
    let hb = small.header.encode();
    let n = small.header.study_id.len();
    let trunc = |len: usize, field: &str| {
        with(
            mal(
                &format!("header-truncated-to-{len}-bytes"),
                dh,
                Input::Hex(hb[..len].to_vec()),
                "WireError::Truncated",
            ),
            "expect_detail",
            field,
        )
    };
    let patch = |name: &str, at: usize, bytes: &[u8], expect: &str, detail: &str| {
        let mut b = hb.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        with(
            mal(name, dh, Input::Hex(b), expect),
            "expect_detail",
            detail,
        )
    };
    let une = "WireError::Unexpected";
    let mut malformed = vec![
        trunc(0, "magic"),
        trunc(7, "magic"),
        trunc(8, "batch_id"),
        trunc(23, "batch_id"),
        trunc(24, "study_id_len"),
        trunc(25, "study_id"),
        trunc(25 + n - 1, "study_id"),
        trunc(25 + n, "created_at"),
        trunc(33 + n - 1, "created_at"),
        trunc(33 + n, "vault_key_id"),
        trunc(37 + n, "chunk_size"),
        trunc(41 + n, "enc"),
        trunc(73 + n - 1, "enc"),
        trunc(73 + n, "wrapped_key"),
        trunc(hb.len() - 1, "wrapped_key"),
        patch("bad-magic", 0, b"DDBATCH2", une, "magic"),
        patch("study-id-length-2", 24, &[2], une, "study_id_len"),
        patch("study-id-length-65", 24, &[65], une, "study_id_len"),
        patch("study-id-length-0", 24, &[0], une, "study_id_len"),
        patch(
            "study-id-uppercase",
            25,
            b"T",
            "WireError::Encoding",
            "study_id",
        ),
        patch(
            "study-id-not-utf8",
            25,
            &[0xff],
            "WireError::Encoding",
            "study_id",
        ),
        patch(
            "chunk-size-4096",
            37 + n,
            &4096u32.to_be_bytes(),
            une,
            "chunk_size",
        ),
    ];

    let ds = "sealed batch open";
    let mutate = |name: &str, base: &str, op: J, expect: &str| {
        obj! { "name" => name, "decoder" => ds, "base" => base, "mutation" => op, "expect" => expect }
    };
    let big_hl = big.header_len;
    let small_hl = small.header_len;
    let n_ = small.header.study_id.len();
    malformed.extend([
        mutate(
            "last-chunk-dropped",
            "sealed-two-full-chunks",
            obj! { "op" => "truncate", "len" => big_hl + CHUNK_SIZE + TAG_LEN },
            "chunk 0",
        ),
        mutate(
            "truncated-inside-last-chunk",
            "sealed-two-full-chunks",
            obj! { "op" => "truncate", "len" => big.bytes.len() - 10 },
            "chunk 1",
        ),
        mutate(
            "chunks-swapped",
            "sealed-two-full-chunks",
            obj! { "op" => "swap_chunks", "a" => 0u8, "b" => 1u8 },
            "chunk 0",
        ),
        mutate(
            "bit-flipped-in-chunk-1",
            "sealed-two-full-chunks",
            obj! { "op" => "xor", "offset" => big_hl + CHUNK_SIZE + TAG_LEN + 100, "mask" => 0x01u8 },
            "chunk 1",
        ),
        mutate(
            "byte-appended",
            "sealed-two-full-chunks",
            obj! { "op" => "append", "hex" => "00" },
            "chunk 1",
        ),
        mutate(
            "small-file-last-byte-dropped",
            "sealed-small-file",
            obj! { "op" => "truncate", "len" => small.bytes.len() - 1 },
            "chunk 0",
        ),
        mutate(
            "body-missing",
            "sealed-small-file",
            obj! { "op" => "truncate", "len" => small_hl },
            "chunk 0",
        ),
        mutate(
            "header-of-another-batch",
            "sealed-small-file",
            obj! { "op" => "replace_header", "from" => "sealed-empty-file" },
            "chunk 0",
        ),
        mutate(
            "created-at-changed",
            "sealed-small-file",
            obj! { "op" => "xor", "offset" => 25 + n_ + 7, "mask" => 0x01u8 },
            "unwrap",
        ),
        mutate(
            "wrapped-key-bit-flipped",
            "sealed-small-file",
            obj! { "op" => "xor", "offset" => 73 + n_ + 3, "mask" => 0x80u8 },
            "unwrap",
        ),
        mutate(
            "wrap-enc-bit-flipped",
            "sealed-small-file",
            obj! { "op" => "xor", "offset" => 41 + n_, "mask" => 0x02u8 },
            "unwrap",
        ),
    ]);
    finish(
        file_head(
            "batch-header",
            "Sealed batch files: header layout, data-key wrap to the vault key, STREAM chunk nonces, and whole sealed files. Header decoder: BatchHeader::parse (returns the header and its length; bytes after it are the body). \"sealed batch open\" is the reference opening procedure of PROTOCOL.md (parse header, unwrap the data key with the vault key, open chunks in order); its expect names where it must fail: \"unwrap\" or \"chunk N\" (the first chunk whose AES-256-GCM open fails; no plaintext of a file is released unless every chunk opens).",
            "Sealed batch file",
        ),
        vec![
            ("vault_key", with(hpke_key_json("vault", &fx.vault), "key_id", 1u32)),
            ("header_fields", J::Str(HEADER_FIELDS.into())),
            (
                "mutations",
                obj! {
                    "truncate" => "keep the first len bytes",
                    "xor" => "XOR the byte at offset with mask",
                    "append" => "append the hex bytes",
                    "swap_chunks" => "exchange the ciphertext chunks a and b (both full size)",
                    "replace_header" => "replace the header bytes with those of the named valid vector",
                },
            ),
        ],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// cosignature.json

/// Unix time of the witnesses' cosignatures in `cosignature.json`.
const COSIGN_TIME: u64 = 1_767_225_600;

fn witness_signer(label: &str, name: &str) -> WitnessSigner {
    WitnessSigner::new(name, signing_key(label)).expect("witness name is valid")
}

fn cosignature_layout(c: &Cosignature) -> J {
    Layout::new()
        .add(
            &c.key_hash,
            "key_id",
            "SHA-256(name || 0x0A || 0x04 || public key)[0..4]",
        )
        .add(
            &c.timestamp.to_be_bytes(),
            "timestamp",
            "u64 big-endian, Unix seconds",
        )
        .add(
            &c.signature,
            "signature",
            "Ed25519 over \"cosignature/v1\\ntime <timestamp>\\n\" || body",
        )
        .done()
}

/// A cosignature line with its decoded field re-encoded after `edit`.
fn edit_line(c: &Cosignature, edit: impl Fn(&mut Vec<u8>)) -> String {
    let mut raw = [&c.key_hash[..], &c.timestamp.to_be_bytes(), &c.signature].concat();
    edit(&mut raw);
    format!("\u{2014} {} {}\n", c.name, b64(&raw))
}

fn cosignature_file(fx: &Fixture) -> J {
    let labels = ["witness-1", "witness-2", "witness-3"];
    let names = [
        "w1.witness.example",
        "w2.witness.example",
        "w3.witness.example",
    ];
    let ws: Vec<WitnessSigner> = labels
        .iter()
        .zip(names)
        .map(|(l, n)| witness_signer(l, n))
        .collect();
    let outsider = witness_signer("witness-outsider", "outsider.witness.example");
    let n = fx.leaves.len();
    let note = fx.checkpoint(n);
    let body = Checkpoint::new(ORIGIN, n as u64, merkle::root(&fx.leaves))
        .expect("cp")
        .to_body();
    let cs: Vec<Cosignature> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| w.cosign(&body, COSIGN_TIME + i as u64).expect("cosign"))
        .collect();
    let witness_json = |i: usize| {
        let w = &ws[i];
        let c = &cs[i];
        obj! {
            "witness" => i,
            "name" => w.public().name(),
            "vkey" => w.public().to_vkey(),
            "key_hash_input_hex" => h(&[w.public().name().as_bytes(), b"\n", &[0x04], w.public().public_key()].concat()),
            "timestamp" => J::Int(i128::from(c.timestamp)),
            "signed_message_text" => utf8(&cosig::signed_message(&body, c.timestamp)),
            "signature_line" => c.to_line(),
            "signature_field_layout" => cosignature_layout(c),
        }
    };
    let two = cosig::append_cosignatures(&note, &cs[..2]);
    let outsider_line = outsider.cosign(&body, COSIGN_TIME).expect("cosign");
    let all = cosig::append_cosignatures(
        &note,
        &[cs[2].clone(), outsider_line, cs[0].clone(), cs[1].clone()],
    );
    let mut valid = vec![
        obj! {
            "name" => "cosigned-by-two-of-three",
            "kind" => "cosigned-checkpoint",
            "note_text" => two.clone(),
            "body_text" => body.clone(),
            "expect_witnesses" => J::Arr(vec![J::Int(0), J::Int(1)]),
            "cosignatures" => J::Arr(vec![witness_json(0), witness_json(1)]),
        },
        obj! {
            "name" => "cosigned-by-three-and-an-unknown-witness",
            "kind" => "cosigned-checkpoint",
            "note_text" => all,
            "body_text" => body.clone(),
            "expect_witnesses" => J::Arr(vec![J::Int(2), J::Int(0), J::Int(1)]),
            "cosignatures" => J::Arr(vec![witness_json(2), witness_json(0), witness_json(1)]),
        },
    ];
    let proof = merkle::consistency_proof(&fx.leaves, 2).expect("proof");
    let request = AddCheckpointRequest {
        old_size: 2,
        proof: proof.clone(),
        note: note.clone().into_bytes(),
    };
    valid.push(obj! {
        "name" => "add-checkpoint-from-size-2",
        "kind" => "add-checkpoint-request",
        "request_text" => utf8(&request.to_bytes()),
        "old_size" => 2u64,
        "proof" => proof_hex(&proof),
        "note_text" => note.clone(),
    });

    let dq = "cosignature::verify_quorum";
    let ce = |v: &str| format!("CosignatureError::{v}");
    let line = |c: &Cosignature| c.to_line();
    let with_lines = |lines: &[String]| format!("{note}{}", lines.concat());
    let l0 = line(&cs[0]);
    let l1 = line(&cs[1]);
    let mut other_body_cs = ws[1]
        .cosign(
            &fx.checkpoint(5)
                .split("\n\n")
                .next()
                .map(|b| format!("{b}\n"))
                .expect("body"),
            COSIGN_TIME,
        )
        .expect("cosign");
    other_body_cs.timestamp = COSIGN_TIME;
    let key_zero = signing_key("witness-2");
    let zero_sig = key_zero.sign_raw(&cosig::signed_message(&body, 0));
    let zero = Cosignature {
        signature: zero_sig,
        timestamp: 0,
        ..cs[1].clone()
    };
    let future = ws[1].cosign(&body, COSIGN_TIME + 3600).expect("cosign");
    let mut malformed = vec![
        mal(
            "bad-key-hash",
            dq,
            Input::Text(with_lines(&[l0.clone(), edit_line(&cs[1], |r| r[0] ^= 1)])),
            &ce("QuorumNotMet"),
        ),
        mal(
            "truncated-cosignature",
            dq,
            Input::Text(with_lines(&[
                l0.clone(),
                edit_line(&cs[1], |r| r.truncate(75)),
            ])),
            &ce("WrongLength"),
        ),
        mal(
            "note-signature-not-cosignature",
            dq,
            Input::Text(with_lines(&[
                l0.clone(),
                edit_line(&cs[1], |r| r.drain(4..12).for_each(drop)),
            ])),
            &ce("WrongLength"),
        ),
        mal(
            "timestamp-changed",
            dq,
            Input::Text(with_lines(&[l0.clone(), edit_line(&cs[1], |r| r[11] ^= 1)])),
            &ce("InvalidCosignature"),
        ),
        mal(
            "signature-over-another-body",
            dq,
            Input::Text(with_lines(&[l0.clone(), line(&other_body_cs)])),
            &ce("InvalidCosignature"),
        ),
        mal(
            "duplicated-witness",
            dq,
            Input::Text(with_lines(&[
                l0.clone(),
                l1.clone(),
                line(&ws[0].cosign(&body, COSIGN_TIME - 60).expect("cosign")),
            ])),
            &ce("DuplicateCosignature"),
        ),
        mal(
            "same-line-twice",
            dq,
            Input::Text(with_lines(&[l0.clone(), l1.clone(), l0.clone()])),
            &ce("DuplicateCosignature"),
        ),
        mal(
            "non-base64",
            dq,
            Input::Text(with_lines(&[l0.clone(), {
                let mut t = l1.clone();
                let i = t.rfind(' ').expect("space") + 1;
                t.replace_range(i..i + 1, "!");
                t
            }])),
            "CosignatureError::Checkpoint(CheckpointError::MalformedSignatureLine)",
        ),
        mal(
            "timestamp-zero",
            dq,
            Input::Text(with_lines(&[l0.clone(), line(&zero)])),
            &ce("TimestampOutOfRange"),
        ),
        mal(
            "timestamp-after-max-time",
            dq,
            Input::Text(with_lines(&[l0.clone(), line(&future)])),
            &ce("FutureTimestamp"),
        ),
        mal(
            "one-of-two",
            dq,
            Input::Text(with_lines(std::slice::from_ref(&l0))),
            &ce("QuorumNotMet"),
        ),
        mal(
            "no-log-signature",
            dq,
            Input::Text(format!("{body}\n{l0}{l1}")),
            "CosignatureError::Checkpoint(CheckpointError::UnverifiedNote)",
        ),
    ];
    let dv = "WitnessKey::parse_vkey";
    let w0 = ws[0].public();
    let note_vkey = NoteVerifier::new(w0.name(), *w0.public_key())
        .expect("vkey")
        .to_vkey();
    let wrong_id = note_vkey.replacen(
        &b64(&[&[0x01][..], w0.public_key()].concat()),
        &b64(&[&[0x04][..], w0.public_key()].concat()),
        1,
    );
    malformed.extend([
        mal(
            "vkey-type-0x01",
            dv,
            Input::Text(note_vkey),
            &ce("UnsupportedKeyType"),
        ),
        mal(
            "vkey-key-id-of-type-0x01",
            dv,
            Input::Text(wrong_id),
            &ce("KeyHashMismatch"),
        ),
    ]);
    let dr = "AddCheckpointRequest::parse";
    let ae = |v: &str| format!("AddCheckpointError::{v}");
    let req_text = utf8(&request.to_bytes());
    let first_proof = b64(&proof[0].0);
    malformed.extend([
        mal(
            "old-size-leading-zero",
            dr,
            Input::Text(req_text.replacen("old 2\n", "old 02\n", 1)),
            &ae("MalformedOldSize"),
        ),
        mal(
            "proof-line-unpadded",
            dr,
            Input::Text(req_text.replacen(&first_proof, first_proof.trim_end_matches('='), 1)),
            &ae("MalformedProofLine"),
        ),
        mal(
            "sixty-four-proof-lines",
            dr,
            Input::Text(format!(
                "old 2\n{}\n{note}",
                format!("{first_proof}\n").repeat(64)
            )),
            &ae("TooManyProofLines"),
        ),
        mal(
            "no-blank-line",
            dr,
            Input::Text(format!("old 2\n{first_proof}\n")),
            &ae("MissingBlankLine"),
        ),
    ]);
    finish(
        file_head(
            "cosignature",
            "Witness cosignatures of a ledger checkpoint (C2SP tlog-cosignature, Ed25519 cosignature/v1) and tlog-witness add-checkpoint request bodies. Decoder: cosignature::verify_quorum(input, verifier of vkey, witnesses, quorum, max_time).",
            "Witness cosignatures",
        ),
        vec![
            ("keys", obj! {
                "ledger" => ed_key_json("ledger", &fx.ledger),
                "witness-1" => ed_key_json("witness-1", &signing_key("witness-1")),
                "witness-2" => ed_key_json("witness-2", &signing_key("witness-2")),
                "witness-3" => ed_key_json("witness-3", &signing_key("witness-3")),
            }),
            ("vkey", J::Str(fx.vkey())),
            ("witnesses", J::Arr(ws.iter().map(|w| J::Str(w.public().to_vkey())).collect())),
            ("quorum", J::Int(2)),
            ("max_time", J::Int(i128::from(COSIGN_TIME + 60))),
        ],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// proof-answer.json

/// A proof answer's JSON as the intake writes it.
fn proof_answer_text(p: &[Hash]) -> String {
    utf8(&ProofAnswer { proof: p.to_vec() }.to_json())
}

fn proof_answer_file(fx: &Fixture) -> J {
    let leaves = &fx.leaves;
    let n = leaves.len();
    let incl =
        |i: usize, size: usize| merkle::inclusion_proof(&leaves[..size], i as u64).expect("proof");
    let cons =
        |a: usize, b: usize| merkle::consistency_proof(&leaves[..b], a as u64).expect("proof");
    let inclusion_vec = |name: &str, i: usize, size: usize, text: String, note: &str| {
        obj! {
            "name" => name,
            "kind" => "inclusion-answer",
            "note" => note,
            "request" => format!("GET /v1/ledger/inclusion?index={i}&size={size}"),
            "leaf_index" => i,
            "tree_size" => size,
            "leaf_hash_hex" => leaves[i].to_hex(),
            "root_hex" => merkle::root(&leaves[..size]).to_hex(),
            "answer_text" => text,
            "proof" => proof_hex(&incl(i, size)),
        }
    };
    let consistency_vec = |name: &str, a: usize, b: usize, text: String, note: &str| {
        obj! {
            "name" => name,
            "kind" => "consistency-answer",
            "note" => note,
            "request" => format!("GET /v1/ledger/consistency?from={a}&to={b}"),
            "size1" => a,
            "size2" => b,
            "root1_hex" => merkle::root(&leaves[..a]).to_hex(),
            "root2_hex" => merkle::root(&leaves[..b]).to_hex(),
            "answer_text" => text,
            "proof" => proof_hex(&cons(a, b)),
        }
    };
    let spaced = {
        let p = incl(5, n);
        let items: Vec<String> = p.iter().map(|h| format!("\"{}\"", h.to_hex())).collect();
        format!("{{ \"proof\" :\n  [ {} ] }}", items.join(" ,\n    "))
    };
    let valid = vec![
        inclusion_vec(
            "inclusion-index-2-size-6",
            2,
            n,
            proof_answer_text(&incl(2, n)),
            "three hashes: leaf 3, the subtree of leaves 0-1, the subtree of leaves 4-5",
        ),
        inclusion_vec(
            "inclusion-index-5-size-6-spaced",
            5,
            n,
            spaced,
            "whitespace between tokens is allowed; the intake writes compact JSON",
        ),
        inclusion_vec(
            "inclusion-index-0-size-1",
            0,
            1,
            proof_answer_text(&incl(0, 1)),
            "a one-leaf tree: the empty proof, the root is the leaf hash",
        ),
        consistency_vec(
            "consistency-3-to-6",
            3,
            n,
            proof_answer_text(&cons(3, n)),
            "size1 not a power of two: the proof starts with the hash of leaf 2",
        ),
        consistency_vec(
            "consistency-4-to-6",
            4,
            n,
            proof_answer_text(&cons(4, n)),
            "size1 a power of two: root1 itself starts the verification and is not sent",
        ),
        consistency_vec(
            "consistency-6-to-6",
            n,
            n,
            proof_answer_text(&cons(n, n)),
            "equal sizes: the empty proof, the roots must be equal",
        ),
    ];

    let di = "ProofAnswer::from_json+merkle::verify_inclusion";
    let dc = "ProofAnswer::from_json+merkle::verify_consistency";
    let at = |name: &str, decoder: &str, text: String, expect: &str| {
        let v = mal(name, decoder, Input::Text(text), expect);
        if decoder == di {
            with(with(v, "leaf_index", 2usize), "tree_size", n)
        } else {
            with(with(v, "size1", 3usize), "size2", n)
        }
    };
    let detail = |v: J, d: &str| with(v, "expect_detail", d);
    let p2 = incl(2, n);
    let good: Vec<String> = p2.iter().map(|h| h.to_hex()).collect();
    let edit = |i: usize, f: &dyn Fn(&str) -> String| -> String {
        let items: Vec<String> = good
            .iter()
            .enumerate()
            .map(|(j, h)| format!("\"{}\"", if i == j { f(h) } else { h.clone() }))
            .collect();
        format!("{{\"proof\":[{}]}}", items.join(","))
    };
    let ans = |p: &[Hash]| proof_answer_text(p);
    let bad_json = "ProofAnswerError::Malformed(WireError::Json)";
    let malformed = vec![
        detail(
            at(
                "hash-uppercase-hex",
                di,
                edit(1, &|h: &str| h.to_uppercase()),
                "ProofAnswerError::BadHex",
            ),
            "1",
        ),
        detail(
            at(
                "hash-non-hex-character",
                di,
                edit(0, &|h: &str| format!("g{}", &h[1..])),
                "ProofAnswerError::BadHex",
            ),
            "0",
        ),
        detail(
            at(
                "hash-0x-prefix",
                di,
                edit(2, &|h: &str| format!("0x{}", &h[2..])),
                "ProofAnswerError::BadHex",
            ),
            "2",
        ),
        detail(
            at(
                "hash-63-digits",
                di,
                edit(2, &|h: &str| h[..63].to_string()),
                "ProofAnswerError::WrongLength",
            ),
            "2",
        ),
        detail(
            at(
                "hash-62-digits",
                di,
                edit(0, &|h: &str| h[..62].to_string()),
                "ProofAnswerError::WrongLength",
            ),
            "0",
        ),
        detail(
            at(
                "hash-66-digits",
                di,
                edit(1, &|h: &str| format!("{h}00")),
                "ProofAnswerError::WrongLength",
            ),
            "1",
        ),
        detail(
            at(
                "hash-empty-string",
                di,
                edit(0, &|_: &str| String::new()),
                "ProofAnswerError::WrongLength",
            ),
            "0",
        ),
        at("hash-a-number", di, "{\"proof\":[1]}".into(), bad_json),
        at(
            "proof-a-string",
            di,
            format!("{{\"proof\":\"{}\"}}", good[0]),
            bad_json,
        ),
        at("proof-member-missing", di, "{}".into(), bad_json),
        at("proof-null", di, "{\"proof\":null}".into(), bad_json),
        at(
            "unknown-member",
            di,
            format!("{{\"proof\":[],\"size\":{n}}}"),
            bad_json,
        ),
        at(
            "duplicate-member",
            di,
            "{\"proof\":[],\"proof\":[]}".into(),
            bad_json,
        ),
        at(
            "top-level-array",
            di,
            format!("[\"{}\"]", good[0]),
            bad_json,
        ),
        at(
            "trailing-newline",
            di,
            format!("{}\n", ans(&p2)),
            "ProofAnswerError::Malformed(WireError::TrailingBytes)",
        ),
        detail(
            with(
                with(
                    mal(
                        "over-65536-bytes",
                        di,
                        Input::Repeat(" ", 65537),
                        "ProofAnswerError::Malformed(WireError::TooLarge)",
                    ),
                    "leaf_index",
                    2usize,
                ),
                "tree_size",
                n,
            ),
            "proof answer",
        ),
        at(
            "inclusion-one-hash-too-few",
            di,
            ans(&p2[..2]),
            "MerkleError::ProofLength",
        ),
        at(
            "inclusion-one-hash-too-many",
            di,
            ans(&[p2.clone(), vec![leaves[0]]].concat()),
            "MerkleError::ProofLength",
        ),
        at(
            "inclusion-empty-proof",
            di,
            ans(&[]),
            "MerkleError::ProofLength",
        ),
        at(
            "inclusion-proof-of-index-3",
            di,
            ans(&incl(3, n)),
            "MerkleError::RootMismatch",
        ),
        at(
            "inclusion-hashes-reordered",
            di,
            ans(&[p2[1], p2[0], p2[2]]),
            "MerkleError::RootMismatch",
        ),
        at(
            "consistency-one-hash-too-few",
            dc,
            ans(&cons(3, n)[1..]),
            "MerkleError::ProofLength",
        ),
        at(
            "consistency-proof-of-2-to-6",
            dc,
            ans(&cons(2, n)),
            "MerkleError::ProofLength",
        ),
        at(
            "consistency-last-hash-altered",
            dc,
            {
                let mut p = cons(3, n);
                let last = p.len() - 1;
                p[last].0[31] ^= 1;
                ans(&p)
            },
            "MerkleError::RootMismatch",
        ),
        at(
            "consistency-first-hash-altered",
            dc,
            {
                let mut p = cons(3, n);
                p[0].0[0] ^= 1;
                ans(&p)
            },
            "MerkleError::Root1Mismatch",
        ),
    ];

    finish(
        file_head(
            "proof-answer",
            "The JSON answers of the intake's public proof endpoints, GET /v1/ledger/inclusion and GET /v1/ledger/consistency: {\"proof\":[\"<64 lowercase hex digits>\",...]}, checked against the tree of the six ledger-entry.json entries.",
            "Proof answers",
        ),
        vec![
            (
                "tree",
                obj! {
                    "note" => "the leaf hashes of ledger-entry.json's six entries and the roots of the trees of their first 1..6 leaves",
                    "leaf_hashes" => J::Arr(leaves.iter().map(|l| J::Str(l.to_hex())).collect()),
                    "roots" => J::Arr((1..=n).map(|s| obj! { "size" => s, "root_hex" => merkle::root(&leaves[..s]).to_hex() }).collect()),
                },
            ),
            (
                "decoders",
                obj! {
                    di => "ProofAnswer::from_json(input), then merkle::verify_inclusion(leaf_index, tree_size, leaf hash leaf_index of the tree, proof, root of tree_size)",
                    dc => "ProofAnswer::from_json(input), then merkle::verify_consistency(size1, size2, proof, root of size1, root of size2)",
                },
            ),
        ],
        valid,
        malformed,
    )
}

// ---------------------------------------------------------------------------------------------
// study-bundle.json

const BUNDLE_FIELDS: [(&str, &str); 7] = [
    ("format", "format version, must be 1"),
    ("study_id", "the study's id"),
    ("study_version", "the study's version"),
    (
        "study_sha256",
        "SHA-256 of the signed study's payload (as consent manifests name it), lowercase hex",
    ),
    (
        "ledger_vkey",
        "the ledger's signed-note verifier key (type 0x01): name+key ID+base64(0x01 || key)",
    ),
    (
        "witnesses",
        "the witnesses' verifier keys (type 0x04), at most 16, distinct names",
    ),
    (
        "witness_quorum",
        "how many witnesses must cosign a checkpoint a donor accepts: 0 without witnesses, else 1 to their number",
    ),
];

fn bundle_file(fx: &Fixture) -> J {
    use datadonor_schemas::bundle::StudyBundle;
    let ledger_vkey = NoteVerifier::new(ORIGIN, fx.ledger.public_key().0)
        .expect("verifier")
        .to_vkey();
    let ws: Vec<WitnessSigner> = [
        ("witness-1", "w1.witness.example"),
        ("witness-2", "w2.witness.example"),
    ]
    .iter()
    .map(|(l, n)| witness_signer(l, n))
    .collect();
    let wv: Vec<String> = ws.iter().map(|w| w.public().to_vkey()).collect();
    let plain = StudyBundle::new(&fx.study, fx.study_sha, &ledger_vkey, Vec::new(), 0);
    let witnessed = StudyBundle::new(&fx.study, fx.study_sha, &ledger_vkey, wv.clone(), 2);
    let vector = |name: &str, b: &StudyBundle| {
        let o = b.sign(&fx.steward);
        obj! {
            "name" => name,
            "kind" => "study-bundle",
            "signed_by" => "steward",
            "payload_text" => utf8(&o.payload),
            "payload_sha256_hex" => h(&o.payload_digest()),
            "signed_text" => utf8(&o.to_bytes()),
            "witness_count" => b.witnesses.len(),
            "fields" => annotate(b, &BUNDLE_FIELDS),
        }
    };
    let valid = vec![
        vector("no-witnesses", &plain),
        vector("two-witnesses-both-required", &witnessed),
    ];
    let d = "StudyBundle::open";
    let dc = "StudyBundle::open+check_study+check_ledger";
    let bv = |f: &dyn Fn(&mut StudyBundle)| {
        let mut b = witnessed.clone();
        f(&mut b);
        Input::Text(utf8(&b.sign(&fx.steward).to_bytes()))
    };
    let payload_text = utf8(&witnessed.sign(&fx.steward).payload);
    let raw = |p: String| {
        Input::Text(utf8(
            &sign_payload(Context::StudyBundle, p.into_bytes(), &fx.steward).to_bytes(),
        ))
    };
    let mut flipped = witnessed.sign(&fx.steward);
    flipped.payload[5] ^= 0x20;
    let json = "BundleError::Signature(SignatureError::Malformed(WireError::Json))";
    let other_ledger = NoteVerifier::new(ORIGIN, fx.mallory.public_key().0)
        .expect("verifier")
        .to_vkey();
    let malformed = vec![
        mal(
            "signed-as-study-definition",
            d,
            Input::Text(utf8(
                &sign_payload(
                    Context::StudyDefinition,
                    witnessed.sign(&fx.steward).payload,
                    &fx.steward,
                )
                .to_bytes(),
            )),
            "BundleError::Signature(SignatureError::WrongContext)",
        ),
        mal(
            "payload-bit-flipped",
            d,
            Input::Text(utf8(&flipped.to_bytes())),
            "BundleError::Signature(SignatureError::BadSignature)",
        ),
        mal("format-2", d, bv(&|b| b.format = 2), "BundleError::Format"),
        mal(
            "ledger-vkey-is-a-witness-key",
            d,
            bv(&|b| b.ledger_vkey = wv[0].clone()),
            "BundleError::LedgerKey",
        ),
        mal(
            "witness-vkey-is-a-note-key",
            d,
            bv(&|b| b.witnesses[1] = ledger_vkey.clone()),
            "BundleError::Witness",
        ),
        mal(
            "witness-twice",
            d,
            bv(&|b| b.witnesses[1] = b.witnesses[0].clone()),
            "BundleError::Witness",
        ),
        mal(
            "quorum-zero-with-witnesses",
            d,
            bv(&|b| b.witness_quorum = 0),
            "BundleError::Quorum",
        ),
        mal(
            "quorum-three-of-two",
            d,
            bv(&|b| b.witness_quorum = 3),
            "BundleError::Quorum",
        ),
        mal(
            "quorum-one-without-witnesses",
            d,
            bv(&|b| {
                b.witnesses.clear();
                b.witness_quorum = 1;
            }),
            "BundleError::Quorum",
        ),
        mal(
            "seventeen-witnesses",
            d,
            bv(&|b| {
                b.witnesses = (0..17)
                    .map(|i| {
                        witness_signer(
                            &format!("witness-many-{i}"),
                            &format!("m{i}.witness.example"),
                        )
                        .public()
                        .to_vkey()
                    })
                    .collect();
                b.witness_quorum = 1;
            }),
            "BundleError::Quorum",
        ),
        mal(
            "payload-unknown-member",
            d,
            raw(payload_text.replacen('{', "{\"notices\":[],", 1)),
            json,
        ),
        mal(
            "payload-study-sha256-uppercase",
            d,
            raw(payload_text.replacen(&h(&fx.study_sha), &h(&fx.study_sha).to_uppercase(), 1)),
            json,
        ),
        mal(
            "payload-quorum-negative",
            d,
            raw(payload_text.replacen("\"witness_quorum\":2", "\"witness_quorum\":-2", 1)),
            json,
        ),
        mal(
            "wire-trailing-newline",
            d,
            Input::Text(format!(
                "{}\n",
                utf8(&witnessed.sign(&fx.steward).to_bytes())
            )),
            "BundleError::Signature(SignatureError::Malformed(WireError::TrailingBytes))",
        ),
        mal(
            "for-another-study-digest",
            dc,
            bv(&|b| b.study_sha256[0] ^= 1),
            "BundleError::StudyMismatch",
        ),
        mal(
            "for-another-study-version",
            dc,
            bv(&|b| b.study_version += 1),
            "BundleError::StudyMismatch",
        ),
        mal(
            "signed-by-another-key-than-the-study",
            dc,
            Input::Text(utf8(&witnessed.sign(&fx.mallory).to_bytes())),
            "BundleError::SignerMismatch",
        ),
        mal(
            "another-ledger-key",
            dc,
            bv(&|b| b.ledger_vkey = other_ledger.clone()),
            "BundleError::LedgerMismatch",
        ),
    ];
    finish(
        file_head(
            "study-bundle",
            "Study bundles signed by the steward: the ledger key and the witnesses a donor pins with the study. Decoders: StudyBundle::open(input) (signature, format, keys, quorum); StudyBundle::open+check_study+check_ledger also checks the bundle against the study of study-definition.json (signed by the steward) and the ledger key below.",
            "Study bundles and notices",
        ),
        vec![
            (
                "keys",
                obj! {
                    "steward" => ed_key_json("steward", &fx.steward),
                    "mallory" => ed_key_json("mallory", &fx.mallory),
                    "ledger" => ed_key_json("ledger", &fx.ledger),
                },
            ),
            ("study_payload_text", J::from(utf8(&fx.signed_study.payload))),
            ("ledger_vkey", J::from(ledger_vkey.clone())),
        ],
        valid,
        malformed,
    )
}
