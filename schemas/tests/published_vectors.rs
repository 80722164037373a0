//! Conformance of the crypto Datadonor composes against published test vectors.
//!
//! The vectors live in the repository's `testdata/vectors/` (sources and licences in
//! `testdata/SOURCES.md`): RFC 9180 HPKE, RFC 9497 OPRF, RFC 8032 / SUPERCOP Ed25519, NIST CAVP
//! AES-GCM, RFC 7748 X25519 and Wycheproof (AES-GCM, Ed25519, X25519, HKDF-SHA256,
//! HMAC-SHA256). A missing vector makes its test FAIL with the path, never skip; every file is
//! checked against `testdata/SHA256SUMS` first.
//!
//! Each family is one test that asserts the exact number of cases it processed (counted from the
//! files), so a parser that silently yields nothing fails, and that every case, including every
//! case that is expected to fail, behaves as the file says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::consts::{U12, U13, U14, U15, U16};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::aes::{Aes128, Aes192, Aes256};
use aes_gcm::AesGcm;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use datadonor_schemas::envelope::{hpke_open, hpke_seal, HpkePrivateKey, HpkePublicKey};
use datadonor_schemas::pseudonym::{OprfOutput, PSEUDONYM_SALT};
use datadonor_schemas::signing::{PublicKey, SigningKey};
use datadonor_schemas::threshold::{
    blind_input_with_scalar, combine_points, AnswerError, InstanceAnswer, InstanceInfo,
    PseudonymiserConfig, ThresholdError,
};
use hpke::aead::{AesGcm128, AesGcm256};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, HpkeError, Kem, OpModeR, OpModeS, PskBundle, Serializable};
use rand_core::{CryptoRng, OsRng, RngCore};
use serde::Deserialize;
use voprf::{
    BlindedElement, EvaluationElement, Group, OprfClient, OprfServer, PoprfClient, PoprfServer,
    Proof, Ristretto255, VoprfClient, VoprfServer,
};
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------------------------
// Locating, verifying and decoding the vectors
// ---------------------------------------------------------------------------------------------

/// The repository's `testdata/` directory.
fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// Read `rel` (relative to `testdata/vectors`) and check it against `testdata/SHA256SUMS`.
fn read_vector(rel: &str) -> Vec<u8> {
    let dir = testdata_dir();
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", sums_path.display()));
    let listed = format!("vectors/{rel}");
    let expected = sums
        .lines()
        .filter_map(|l| l.split_once("  "))
        .find(|(_, p)| *p == listed)
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| panic!("{listed} is not listed in {}", sums_path.display()));
    let path = dir.join(&listed);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "published test vector {} missing or unreadable ({e}); these tests must not be \
             skipped",
            path.display()
        )
    });
    let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    assert_eq!(
        got,
        expected,
        "{}: SHA-256 differs from SHA256SUMS",
        path.display()
    );
    bytes
}

fn read_text(rel: &str) -> String {
    String::from_utf8(read_vector(rel)).unwrap_or_else(|e| panic!("{rel} is not UTF-8: {e}"))
}

fn read_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    serde_json::from_slice(&read_vector(rel)).unwrap_or_else(|e| panic!("{rel}: bad JSON: {e}"))
}

fn hx(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn arr32(b: &[u8], what: &str) -> [u8; 32] {
    b.try_into()
        .unwrap_or_else(|_| panic!("{what}: expected 32 bytes, got {}", b.len()))
}

fn flip_bit(b: &[u8], byte: usize, bit: u8) -> Vec<u8> {
    let mut v = b.to_vec();
    if let Some(x) = v.get_mut(byte) {
        *x ^= 1 << (bit % 8);
    }
    v
}

/// An RNG that replays fixed bytes (the vectors' "random" values) and fails the test if it is
/// asked for more than it holds.
struct ReplayRng {
    bytes: Vec<u8>,
    pos: usize,
}

impl ReplayRng {
    fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, pos: 0 }
    }
    fn fully_consumed(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

impl RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let end = self.pos + dest.len();
        let src = self.bytes.get(self.pos..end).unwrap_or_else(|| {
            panic!(
                "ReplayRng asked for {} bytes at offset {} but holds {}",
                dest.len(),
                self.pos,
                self.bytes.len()
            )
        });
        dest.copy_from_slice(src);
        self.pos = end;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ReplayRng {}

/// Wycheproof file layout shared by all families.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wycheproof<G> {
    number_of_tests: usize,
    test_groups: Vec<G>,
}

// ---------------------------------------------------------------------------------------------
// 1. HPKE (RFC 9180)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct HpkeEntry {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: String,
    #[serde(rename = "ikmR")]
    ikm_r: String,
    #[serde(rename = "ikmE")]
    ikm_e: String,
    #[serde(rename = "ikmS")]
    ikm_s: Option<String>,
    #[serde(rename = "skRm")]
    sk_rm: String,
    #[serde(rename = "pkRm")]
    pk_rm: String,
    #[serde(rename = "skEm")]
    sk_em: String,
    #[serde(rename = "pkEm")]
    pk_em: String,
    #[serde(rename = "skSm")]
    sk_sm: Option<String>,
    #[serde(rename = "pkSm")]
    pk_sm: Option<String>,
    enc: String,
    psk: Option<String>,
    psk_id: Option<String>,
    encryptions: Vec<HpkeEncryption>,
    exports: Vec<HpkeExport>,
}

#[derive(Deserialize)]
struct HpkeEncryption {
    aad: String,
    ct: String,
    pt: String,
}

#[derive(Deserialize)]
struct HpkeExport {
    exporter_context: String,
    #[serde(rename = "L")]
    len: usize,
    exported_value: String,
}

#[derive(Default, Debug, PartialEq, Eq)]
struct HpkeCounts {
    entries: usize,
    opened: usize,
    sealed: usize,
    exports_receiver: usize,
    exports_sender: usize,
    rejected_tampered: usize,
    wrapper_opened: usize,
    wrapper_rejected: usize,
}

fn hpke_entry<A: hpke::aead::Aead>(e: &HpkeEntry, c: &mut HpkeCounts) {
    type K = X25519HkdfSha256;
    let id = format!("HPKE mode {} aead {}", e.mode, e.aead_id);
    assert_eq!((e.kem_id, e.kdf_id), (0x20, 1), "{id}: unexpected suite");

    // DeriveKeyPair for every key in the entry.
    let (sk_r, pk_r) = K::derive_keypair(&hx(&e.ikm_r));
    assert_eq!(sk_r.to_bytes().as_slice(), hx(&e.sk_rm), "{id}: skRm");
    assert_eq!(pk_r.to_bytes().as_slice(), hx(&e.pk_rm), "{id}: pkRm");
    let (sk_e, pk_e) = K::derive_keypair(&hx(&e.ikm_e));
    assert_eq!(sk_e.to_bytes().as_slice(), hx(&e.sk_em), "{id}: skEm");
    assert_eq!(pk_e.to_bytes().as_slice(), hx(&e.pk_em), "{id}: pkEm");
    let sender = e.ikm_s.as_ref().map(|ikm| {
        let (sk_s, pk_s) = K::derive_keypair(&hx(ikm));
        let want_sk = e.sk_sm.as_deref().map(hx);
        let want_pk = e.pk_sm.as_deref().map(hx);
        assert_eq!(Some(sk_s.to_bytes().to_vec()), want_sk, "{id}: skSm");
        assert_eq!(Some(pk_s.to_bytes().to_vec()), want_pk, "{id}: pkSm");
        (sk_s, pk_s)
    });
    let psk = e.psk.as_deref().map(hx);
    let psk_id = e.psk_id.as_deref().map(hx);
    let bundle = match (&psk, &psk_id) {
        (Some(psk), Some(psk_id)) => Some(PskBundle { psk, psk_id }),
        (None, None) => None,
        _ => panic!("{id}: psk without psk_id or vice versa"),
    };
    let mode_r: OpModeR<'_, K> = match (e.mode, bundle, &sender) {
        (0, None, None) => OpModeR::Base,
        (1, Some(b), None) => OpModeR::Psk(b),
        (2, None, Some((_, pk_s))) => OpModeR::Auth(pk_s.clone()),
        (3, Some(b), Some((_, pk_s))) => OpModeR::AuthPsk(pk_s.clone(), b),
        _ => panic!("{id}: mode and psk/sender fields disagree"),
    };
    let mode_s: OpModeS<'_, K> = match (e.mode, bundle, &sender) {
        (0, None, None) => OpModeS::Base,
        (1, Some(b), None) => OpModeS::Psk(b),
        (2, None, Some(kp)) => OpModeS::Auth(kp.clone()),
        (3, Some(b), Some(kp)) => OpModeS::AuthPsk(kp.clone(), b),
        _ => panic!("{id}: mode and psk/sender fields disagree"),
    };
    let info = hx(&e.info);
    let enc_bytes = hx(&e.enc);
    let enc = <K as Kem>::EncappedKey::from_bytes(&enc_bytes)
        .unwrap_or_else(|err| panic!("{id}: enc does not decode: {err:?}"));

    // Receiver: open every encryption in order (the sequence number advances per open).
    let mut rctx = hpke::setup_receiver::<A, HkdfSha256, K>(&mode_r, &sk_r, &enc, &info)
        .unwrap_or_else(|err| panic!("{id}: setup_receiver failed: {err:?}"));
    for (seq, x) in e.encryptions.iter().enumerate() {
        let pt = rctx
            .open(&hx(&x.ct), &hx(&x.aad))
            .unwrap_or_else(|err| panic!("{id}: open of sequence {seq} failed: {err:?}"));
        assert_eq!(pt, hx(&x.pt), "{id}: plaintext of sequence {seq}");
        c.opened += 1;
    }
    for (i, x) in e.exports.iter().enumerate() {
        let mut out = vec![0u8; x.len];
        rctx.export(&hx(&x.exporter_context), &mut out)
            .unwrap_or_else(|err| panic!("{id}: receiver export {i} failed: {err:?}"));
        assert_eq!(out, hx(&x.exported_value), "{id}: receiver export {i}");
        c.exports_receiver += 1;
    }

    // Receiver negatives: a message out of order, and a modified ciphertext, are refused.
    let (first, second) = match e.encryptions.as_slice() {
        [a, b, ..] => (a, b),
        _ => panic!("{id}: fewer than two encryptions"),
    };
    let mut fresh = hpke::setup_receiver::<A, HkdfSha256, K>(&mode_r, &sk_r, &enc, &info)
        .unwrap_or_else(|err| panic!("{id}: setup_receiver failed: {err:?}"));
    assert_eq!(
        fresh.open(&hx(&second.ct), &hx(&second.aad)),
        Err(HpkeError::OpenError),
        "{id}: sequence-1 ciphertext opened at sequence 0"
    );
    let ct0 = hx(&first.ct);
    let mut fresh = hpke::setup_receiver::<A, HkdfSha256, K>(&mode_r, &sk_r, &enc, &info)
        .unwrap_or_else(|err| panic!("{id}: setup_receiver failed: {err:?}"));
    assert_eq!(
        fresh.open(&flip_bit(&ct0, ct0.len() - 1, 0), &hx(&first.aad)),
        Err(HpkeError::OpenError),
        "{id}: modified ciphertext opened"
    );
    c.rejected_tampered += 2;

    // Sender: gen_keypair draws ikmE from the RNG, so replaying ikmE makes setup deterministic.
    let mut rng = ReplayRng::new(hx(&e.ikm_e));
    let (enc_s, mut sctx) =
        hpke::setup_sender::<A, HkdfSha256, K, _>(&mode_s, &pk_r, &info, &mut rng)
            .unwrap_or_else(|err| panic!("{id}: setup_sender failed: {err:?}"));
    assert!(
        rng.fully_consumed(),
        "{id}: sender did not draw exactly ikmE"
    );
    assert_eq!(enc_s.to_bytes().as_slice(), enc_bytes, "{id}: enc");
    for (seq, x) in e.encryptions.iter().enumerate() {
        let ct = sctx
            .seal(&hx(&x.pt), &hx(&x.aad))
            .unwrap_or_else(|err| panic!("{id}: seal of sequence {seq} failed: {err:?}"));
        assert_eq!(ct, hx(&x.ct), "{id}: ciphertext of sequence {seq}");
        c.sealed += 1;
    }
    for (i, x) in e.exports.iter().enumerate() {
        let mut out = vec![0u8; x.len];
        sctx.export(&hx(&x.exporter_context), &mut out)
            .unwrap_or_else(|err| panic!("{id}: sender export {i} failed: {err:?}"));
        assert_eq!(out, hx(&x.exported_value), "{id}: sender export {i}");
        c.exports_sender += 1;
    }

    // The crate's own wrapper, for its suite (Base mode, AES-256-GCM).
    if e.mode == 0 && e.aead_id == 2 {
        let sk = HpkePrivateKey::from_bytes(&hx(&e.sk_rm))
            .unwrap_or_else(|err| panic!("{id}: HpkePrivateKey::from_bytes: {err}"));
        assert_eq!(sk.public_key().0.to_vec(), hx(&e.pk_rm), "{id}: wrapper pk");
        let enc32 = arr32(&enc_bytes, "enc");
        let pt = hpke_open(&sk, &enc32, &info, &hx(&first.aad), &ct0)
            .unwrap_or_else(|err| panic!("{id}: hpke_open failed: {err}"));
        assert_eq!(pt.as_slice(), hx(&first.pt), "{id}: hpke_open plaintext");
        c.wrapper_opened += 1;
        assert!(
            hpke_open(&sk, &enc32, &info, &hx(&first.aad), &flip_bit(&ct0, 0, 0)).is_err(),
            "{id}: hpke_open accepted a modified ciphertext"
        );
        assert!(
            hpke_open(&sk, &enc32, b"other info", &hx(&first.aad), &ct0).is_err(),
            "{id}: hpke_open accepted the wrong info"
        );
        c.wrapper_rejected += 2;
    }
    c.entries += 1;
}

#[test]
fn hpke_rfc9180() {
    let entries: Vec<HpkeEntry> = read_json("hpke/rfc9180-x25519-sha256-aesgcm.json");
    let mut c = HpkeCounts::default();
    let mut seen = Vec::new();
    for e in &entries {
        match e.aead_id {
            1 => hpke_entry::<AesGcm128>(e, &mut c),
            2 => hpke_entry::<AesGcm256>(e, &mut c),
            other => panic!("unexpected aead_id {other}"),
        }
        seen.push((e.mode, e.aead_id));
    }
    seen.sort_unstable();
    let want: Vec<(u8, u16)> = (0..4u8).flat_map(|m| [(m, 1), (m, 2)]).collect();
    assert_eq!(seen, want, "modes 0-3 x AES-128/256-GCM, each once");
    // 8 entries, 257 encryptions and 3 exports each.
    assert_eq!(
        c,
        HpkeCounts {
            entries: 8,
            opened: 8 * 257,
            sealed: 8 * 257,
            exports_receiver: 8 * 3,
            exports_sender: 8 * 3,
            rejected_tampered: 8 * 2,
            wrapper_opened: 1,
            wrapper_rejected: 2,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// 2. OPRF (RFC 9497), ristretto255-SHA512
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct OprfSuite {
    identifier: String,
    mode: u8,
    seed: String,
    #[serde(rename = "keyInfo")]
    key_info: String,
    #[serde(rename = "skSm")]
    sk_sm: String,
    #[serde(rename = "pkSm")]
    pk_sm: Option<String>,
    vectors: Vec<OprfVector>,
}

#[derive(Deserialize)]
struct OprfVector {
    #[serde(rename = "Batch")]
    batch: usize,
    #[serde(rename = "Blind")]
    blind: String,
    #[serde(rename = "BlindedElement")]
    blinded_element: String,
    #[serde(rename = "EvaluationElement")]
    evaluation_element: String,
    #[serde(rename = "Input")]
    input: String,
    #[serde(rename = "Output")]
    output: String,
    #[serde(rename = "Info")]
    info: Option<String>,
    #[serde(rename = "Proof")]
    proof: Option<OprfProof>,
}

#[derive(Deserialize)]
struct OprfProof {
    proof: String,
    r: String,
}

/// The per-item values of a (possibly batched) vector.
struct OprfItems {
    blinds: Vec<<Ristretto255 as Group>::Scalar>,
    blinded: Vec<Vec<u8>>,
    evaluated: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
}

fn oprf_items(v: &OprfVector, id: &str) -> OprfItems {
    let split = |s: &str| -> Vec<Vec<u8>> { s.split(',').map(hx).collect() };
    let items = OprfItems {
        blinds: split(&v.blind)
            .iter()
            .map(|b| {
                <Ristretto255 as Group>::deserialize_scalar(b)
                    .unwrap_or_else(|e| panic!("{id}: blind does not decode: {e:?}"))
            })
            .collect(),
        blinded: split(&v.blinded_element),
        evaluated: split(&v.evaluation_element),
        inputs: split(&v.input),
        outputs: split(&v.output),
    };
    for (what, n) in [
        ("Blind", items.blinds.len()),
        ("BlindedElement", items.blinded.len()),
        ("EvaluationElement", items.evaluated.len()),
        ("Input", items.inputs.len()),
        ("Output", items.outputs.len()),
    ] {
        assert_eq!(
            n, v.batch,
            "{id}: {what} has {n} values for Batch {}",
            v.batch
        );
    }
    items
}

/// The proof's random scalar r as RNG output: ristretto255 draws 64 bytes and reduces them
/// mod L, so `r || 0^32` yields exactly r.
fn proof_rng(p: &OprfProof) -> ReplayRng {
    let mut bytes = hx(&p.r);
    bytes.resize(64, 0);
    ReplayRng::new(bytes)
}

/// RFC 5869 HKDF-SHA256 with L = 32 (one block), written out with HMAC, to check
/// `OprfOutput::study_pseudonym` independently of `ring::hkdf`.
fn hkdf_sha256_32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    use ring::hmac;
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut t1_input = info.to_vec();
    t1_input.push(1);
    let t1 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &t1_input);
    arr32(t1.as_ref(), "HMAC-SHA256")
}

#[derive(Default, Debug, PartialEq, Eq)]
struct OprfCounts {
    /// Mode 0 vectors and the items in them.
    oprf_vectors: usize,
    oprf_items: usize,
    /// Mode 1 (VOPRF) vectors, items, proofs reproduced, tampered proofs refused.
    voprf_vectors: usize,
    voprf_items: usize,
    voprf_proofs: usize,
    voprf_bad_proofs_rejected: usize,
    /// Mode 2 (POPRF) likewise.
    poprf_vectors: usize,
    poprf_items: usize,
    poprf_proofs: usize,
    poprf_bad_proofs_rejected: usize,
    /// Keys derived from (seed, keyInfo).
    keys: usize,
}

fn oprf_mode0(s: &OprfSuite, c: &mut OprfCounts) {
    let id = "ristretto255 mode 0";
    let key = OprfServer::<Ristretto255>::new_from_seed(&hx(&s.seed), &hx(&s.key_info))
        .unwrap_or_else(|e| panic!("{id}: OprfServer::new_from_seed: {e:?}"));
    assert_eq!(key.serialize().as_slice(), hx(&s.sk_sm), "{id}: skSm");
    let loaded = OprfServer::<Ristretto255>::new_with_key(&hx(&s.sk_sm))
        .unwrap_or_else(|e| panic!("{id}: new_with_key: {e:?}"));
    c.keys += 1;
    for (n, v) in s.vectors.iter().enumerate() {
        let id = format!("{id} vector {n}");
        let it = oprf_items(v, &id);
        for i in 0..v.batch {
            let input = &it.inputs[i];
            let blind =
                OprfClient::<Ristretto255>::deterministic_blind_unchecked(input, it.blinds[i])
                    .unwrap_or_else(|e| panic!("{id}[{i}]: blind: {e:?}"));
            assert_eq!(
                blind.message.serialize().as_slice(),
                it.blinded[i],
                "{id}[{i}]: BlindedElement"
            );
            let blinded = BlindedElement::<Ristretto255>::deserialize(&it.blinded[i])
                .unwrap_or_else(|e| panic!("{id}[{i}]: BlindedElement: {e:?}"));
            let ev = key.blind_evaluate(&blinded).serialize();
            assert_eq!(
                ev.as_slice(),
                it.evaluated[i],
                "{id}[{i}]: EvaluationElement"
            );
            let ev2 = loaded.blind_evaluate(&blinded).serialize();
            assert_eq!(ev2, ev, "{id}[{i}]: the skSm key evaluates differently");
            let ev_elem = EvaluationElement::<Ristretto255>::deserialize(&it.evaluated[i])
                .unwrap_or_else(|e| panic!("{id}[{i}]: EvaluationElement: {e:?}"));
            let out = blind
                .state
                .finalize(input, &ev_elem)
                .unwrap_or_else(|e| panic!("{id}[{i}]: finalize: {e:?}"));
            assert_eq!(out.as_slice(), it.outputs[i], "{id}[{i}]: Output");
            let direct = key
                .evaluate(input)
                .unwrap_or_else(|e| panic!("{id}[{i}]: server-side evaluate: {e:?}"));
            assert_eq!(
                direct.as_slice(),
                it.outputs[i],
                "{id}[{i}]: server-side Output"
            );
            // The per-study pseudonym is HKDF-SHA256 over the 64-byte output.
            let out64: [u8; 64] = out
                .as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("{id}[{i}]: Output is not 64 bytes"));
            let pseudonym = OprfOutput::from_bytes(out64).study_pseudonym("study-a");
            assert_eq!(
                pseudonym.0,
                hkdf_sha256_32(PSEUDONYM_SALT, &out64, b"study-a"),
                "{id}[{i}]: study_pseudonym"
            );
            assert_ne!(
                pseudonym,
                OprfOutput::from_bytes(out64).study_pseudonym("study-b"),
                "{id}[{i}]: two studies share a pseudonym"
            );
            c.oprf_items += 1;
        }
        c.oprf_vectors += 1;
    }
}

fn oprf_mode1(s: &OprfSuite, c: &mut OprfCounts) {
    let id = "ristretto255 mode 1";
    let server = VoprfServer::<Ristretto255>::new_from_seed(&hx(&s.seed), &hx(&s.key_info))
        .unwrap_or_else(|e| panic!("{id}: new_from_seed: {e:?}"));
    let pk_bytes = hx(s
        .pk_sm
        .as_deref()
        .unwrap_or_else(|| panic!("{id}: no pkSm")));
    let mut sk_pk = hx(&s.sk_sm);
    sk_pk.extend_from_slice(&pk_bytes);
    assert_eq!(server.serialize().as_slice(), sk_pk, "{id}: skSm || pkSm");
    let pk = <Ristretto255 as Group>::deserialize_elem(&pk_bytes)
        .unwrap_or_else(|e| panic!("{id}: pkSm: {e:?}"));
    c.keys += 1;
    for (n, v) in s.vectors.iter().enumerate() {
        let id = format!("{id} vector {n}");
        let it = oprf_items(v, &id);
        let p = v.proof.as_ref().unwrap_or_else(|| panic!("{id}: no Proof"));
        let mut clients = Vec::new();
        let mut blinded = Vec::new();
        for i in 0..v.batch {
            let r = VoprfClient::<Ristretto255>::deterministic_blind_unchecked(
                &it.inputs[i],
                it.blinds[i],
            )
            .unwrap_or_else(|e| panic!("{id}[{i}]: blind: {e:?}"));
            assert_eq!(
                r.message.serialize().as_slice(),
                it.blinded[i],
                "{id}[{i}]: BlindedElement"
            );
            clients.push(r.state);
            blinded.push(r.message);
        }
        // Server: evaluation elements and the proof, with r replayed.
        let mut rng = proof_rng(p);
        let res = server
            .batch_blind_evaluate(&mut rng, &blinded)
            .unwrap_or_else(|e| panic!("{id}: batch_blind_evaluate: {e:?}"));
        assert!(rng.fully_consumed(), "{id}: proof did not draw exactly r");
        if v.batch == 1 {
            let mut rng = proof_rng(p);
            let single = server.blind_evaluate(&mut rng, &blinded[0]);
            assert_eq!(
                single.message.serialize(),
                res.messages[0].serialize(),
                "{id}: single"
            );
            assert_eq!(
                single.proof.serialize(),
                res.proof.serialize(),
                "{id}: single proof"
            );
        }
        for (i, m) in res.messages.iter().enumerate() {
            assert_eq!(
                m.serialize().as_slice(),
                it.evaluated[i],
                "{id}[{i}]: EvaluationElement"
            );
        }
        assert_eq!(
            res.proof.serialize().as_slice(),
            hx(&p.proof),
            "{id}: Proof"
        );
        c.voprf_proofs += 1;
        // Client: finalize from the vector's own evaluation elements and proof.
        let messages: Vec<EvaluationElement<Ristretto255>> = it
            .evaluated
            .iter()
            .map(|b| {
                EvaluationElement::deserialize(b)
                    .unwrap_or_else(|e| panic!("{id}: EvaluationElement: {e:?}"))
            })
            .collect();
        let proof = Proof::<Ristretto255>::deserialize(&hx(&p.proof))
            .unwrap_or_else(|e| panic!("{id}: Proof: {e:?}"));
        let outs = VoprfClient::batch_finalize(&it.inputs, &clients, &messages, &proof, pk)
            .unwrap_or_else(|e| panic!("{id}: batch_finalize: {e:?}"));
        let mut k = 0;
        for (i, out) in outs.enumerate() {
            let out = out.unwrap_or_else(|e| panic!("{id}[{i}]: finalize: {e:?}"));
            assert_eq!(out.as_slice(), it.outputs[i], "{id}[{i}]: Output");
            let direct = server
                .evaluate(&it.inputs[i])
                .unwrap_or_else(|e| panic!("{id}[{i}]: server-side evaluate: {e:?}"));
            assert_eq!(
                direct.as_slice(),
                it.outputs[i],
                "{id}[{i}]: server-side Output"
            );
            k += 1;
        }
        assert_eq!(k, v.batch, "{id}: finalize yielded {k} outputs");
        c.voprf_items += k;
        // A proof with one bit flipped is refused (at decoding or at verification).
        let bad = flip_bit(&hx(&p.proof), 0, 0);
        let refused = match Proof::<Ristretto255>::deserialize(&bad) {
            Err(_) => true,
            Ok(bad) => {
                VoprfClient::batch_finalize(&it.inputs, &clients, &messages, &bad, pk).is_err()
            }
        };
        assert!(refused, "{id}: tampered proof accepted");
        c.voprf_bad_proofs_rejected += 1;
        c.voprf_vectors += 1;
    }
}

fn oprf_mode2(s: &OprfSuite, c: &mut OprfCounts) {
    let id = "ristretto255 mode 2";
    let server = PoprfServer::<Ristretto255>::new_from_seed(&hx(&s.seed), &hx(&s.key_info))
        .unwrap_or_else(|e| panic!("{id}: new_from_seed: {e:?}"));
    let pk_bytes = hx(s
        .pk_sm
        .as_deref()
        .unwrap_or_else(|| panic!("{id}: no pkSm")));
    let mut sk_pk = hx(&s.sk_sm);
    sk_pk.extend_from_slice(&pk_bytes);
    assert_eq!(server.serialize().as_slice(), sk_pk, "{id}: skSm || pkSm");
    let pk = <Ristretto255 as Group>::deserialize_elem(&pk_bytes)
        .unwrap_or_else(|e| panic!("{id}: pkSm: {e:?}"));
    c.keys += 1;
    for (n, v) in s.vectors.iter().enumerate() {
        let id = format!("{id} vector {n}");
        let it = oprf_items(v, &id);
        let p = v.proof.as_ref().unwrap_or_else(|| panic!("{id}: no Proof"));
        let info = hx(v.info.as_deref().unwrap_or_else(|| panic!("{id}: no Info")));
        let mut clients = Vec::new();
        let mut blinded = Vec::new();
        for i in 0..v.batch {
            let r = PoprfClient::<Ristretto255>::deterministic_blind_unchecked(
                &it.inputs[i],
                it.blinds[i],
            )
            .unwrap_or_else(|e| panic!("{id}[{i}]: blind: {e:?}"));
            assert_eq!(
                r.message.serialize().as_slice(),
                it.blinded[i],
                "{id}[{i}]: BlindedElement"
            );
            clients.push(r.state);
            blinded.push(r.message);
        }
        let mut rng = proof_rng(p);
        let res = server
            .batch_blind_evaluate(&mut rng, &blinded, Some(&info))
            .unwrap_or_else(|e| panic!("{id}: batch_blind_evaluate: {e:?}"));
        assert!(rng.fully_consumed(), "{id}: proof did not draw exactly r");
        if v.batch == 1 {
            let mut rng = proof_rng(p);
            let single = server
                .blind_evaluate(&mut rng, &blinded[0], Some(&info))
                .unwrap_or_else(|e| panic!("{id}: blind_evaluate: {e:?}"));
            assert_eq!(
                single.message.serialize(),
                res.messages[0].serialize(),
                "{id}: single"
            );
            assert_eq!(
                single.proof.serialize(),
                res.proof.serialize(),
                "{id}: single proof"
            );
        }
        for (i, m) in res.messages.iter().enumerate() {
            assert_eq!(
                m.serialize().as_slice(),
                it.evaluated[i],
                "{id}[{i}]: EvaluationElement"
            );
        }
        assert_eq!(
            res.proof.serialize().as_slice(),
            hx(&p.proof),
            "{id}: Proof"
        );
        c.poprf_proofs += 1;
        let messages: Vec<EvaluationElement<Ristretto255>> = it
            .evaluated
            .iter()
            .map(|b| {
                EvaluationElement::deserialize(b)
                    .unwrap_or_else(|e| panic!("{id}: EvaluationElement: {e:?}"))
            })
            .collect();
        let proof = Proof::<Ristretto255>::deserialize(&hx(&p.proof))
            .unwrap_or_else(|e| panic!("{id}: Proof: {e:?}"));
        let outs = PoprfClient::batch_finalize(
            it.inputs.iter().map(Vec::as_slice),
            &clients,
            &messages,
            &proof,
            pk,
            Some(&info),
        )
        .unwrap_or_else(|e| panic!("{id}: batch_finalize: {e:?}"));
        let mut k = 0;
        for (i, out) in outs.enumerate() {
            let out = out.unwrap_or_else(|e| panic!("{id}[{i}]: finalize: {e:?}"));
            assert_eq!(out.as_slice(), it.outputs[i], "{id}[{i}]: Output");
            let direct = server
                .evaluate(&it.inputs[i], Some(&info))
                .unwrap_or_else(|e| panic!("{id}[{i}]: server-side evaluate: {e:?}"));
            assert_eq!(
                direct.as_slice(),
                it.outputs[i],
                "{id}[{i}]: server-side Output"
            );
            k += 1;
        }
        assert_eq!(k, v.batch, "{id}: finalize yielded {k} outputs");
        c.poprf_items += k;
        let bad = flip_bit(&hx(&p.proof), 0, 0);
        let refused = match Proof::<Ristretto255>::deserialize(&bad) {
            Err(_) => true,
            Ok(bad) => PoprfClient::batch_finalize(
                it.inputs.iter().map(Vec::as_slice),
                &clients,
                &messages,
                &bad,
                pk,
                Some(&info),
            )
            .is_err(),
        };
        assert!(refused, "{id}: tampered proof accepted");
        c.poprf_bad_proofs_rejected += 1;
        c.poprf_vectors += 1;
    }
}

#[test]
fn oprf_rfc9497_ristretto255() {
    let suites: Vec<OprfSuite> = read_json("oprf/rfc9497-allVectors.json");
    assert_eq!(suites.len(), 15, "5 suites x 3 modes");
    let mut c = OprfCounts::default();
    let mut modes = Vec::new();
    for s in suites
        .iter()
        .filter(|s| s.identifier == "ristretto255-SHA512")
    {
        match s.mode {
            0 => oprf_mode0(s, &mut c),
            1 => oprf_mode1(s, &mut c),
            2 => oprf_mode2(s, &mut c),
            m => panic!("unknown mode {m}"),
        }
        modes.push(s.mode);
    }
    assert_eq!(modes, [0, 1, 2], "one ristretto255 suite per mode");
    // Mode 0: 2 vectors of batch 1. Modes 1 and 2: 3 vectors each (batch 1, 1, 2).
    assert_eq!(
        c,
        OprfCounts {
            oprf_vectors: 2,
            oprf_items: 2,
            voprf_vectors: 3,
            voprf_items: 4,
            voprf_proofs: 3,
            voprf_bad_proofs_rejected: 3,
            poprf_vectors: 3,
            poprf_items: 4,
            poprf_proofs: 3,
            poprf_bad_proofs_rejected: 3,
            keys: 3,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// 2b. The same VOPRF (mode 0x01) with its key Shamir-shared among pseudonymiser instances
// ---------------------------------------------------------------------------------------------

/// A fixed "random" scalar: SHA-512 of a label, reduced modulo the group order.
fn fixed_scalar(label: &str) -> Scalar {
    let d = ring::digest::digest(&ring::digest::SHA512, label.as_bytes());
    let mut wide = [0u8; 64];
    wide.copy_from_slice(d.as_ref());
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Shamir shares `(i, f(i))`, `i = 1..=n`, of `secret` under the fixed polynomial of degree
/// `t − 1` whose other coefficients come from `label`.
fn shamir(secret: Scalar, t: u16, n: u16, label: &str) -> Vec<(u16, Scalar)> {
    let coefficients: Vec<Scalar> = std::iter::once(secret)
        .chain((1..t).map(|j| fixed_scalar(&format!("{label} a{j}"))))
        .collect();
    (1..=n)
        .map(|i| {
            let x = Scalar::from(u64::from(i));
            let y = coefficients
                .iter()
                .rev()
                .fold(Scalar::ZERO, |acc, c| acc * x + c);
            (i, y)
        })
        .collect()
}

/// Every `t`-element subset of `1..=n`, in lexicographic order.
fn subsets(n: u16, t: usize) -> Vec<Vec<u16>> {
    fn walk(from: u16, n: u16, t: usize, cur: &mut Vec<u16>, out: &mut Vec<Vec<u16>>) {
        if cur.len() == t {
            out.push(cur.clone());
            return;
        }
        for i in from..=n {
            cur.push(i);
            walk(i + 1, n, t, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    walk(1, n, t, &mut Vec::new(), &mut out);
    out
}

/// What a pseudonymiser instance holding `share` answers: `Z_i` and a fresh DLEQ proof.
fn share_answer(
    index: u16,
    share: &Scalar,
    blinded: &BlindedElement<Ristretto255>,
) -> InstanceAnswer {
    let server = VoprfServer::<Ristretto255>::new_with_key(&share.to_bytes())
        .unwrap_or_else(|e| panic!("share {index}: {e:?}"));
    let r = server.blind_evaluate(&mut OsRng, blinded);
    InstanceAnswer {
        index,
        evaluated: arr32(&r.message.serialize(), "evaluated element"),
        proof: r.proof.serialize().to_vec(),
    }
}

fn public_share(share: &Scalar) -> [u8; 32] {
    (share * RISTRETTO_BASEPOINT_POINT).compress().to_bytes()
}

#[derive(Default, Debug, PartialEq, Eq)]
struct ThresholdCounts {
    /// Sharings of skSm (2-of-3, 3-of-5).
    sharings: usize,
    /// Vector items (inputs) evaluated under each sharing.
    items: usize,
    /// Answers whose proof verified against their public share.
    answers_verified: usize,
    /// t-subsets combined to EvaluationElement and finalised to Output.
    combinations: usize,
    /// t − 1 answers refused with NotEnoughAnswers.
    too_few_refused: usize,
    /// Answers from a share of another key refused with BadProof.
    other_key_refused: usize,
}

#[test]
fn threshold_voprf_rfc9497_ristretto255() {
    let suites: Vec<OprfSuite> = read_json("oprf/rfc9497-allVectors.json");
    let s = suites
        .iter()
        .find(|s| s.identifier == "ristretto255-SHA512" && s.mode == 1)
        .expect("the ristretto255-SHA512 VOPRF suite");
    let id = "ristretto255 mode 1";
    let sk: Scalar = Option::from(Scalar::from_canonical_bytes(arr32(&hx(&s.sk_sm), "skSm")))
        .unwrap_or_else(|| panic!("{id}: skSm is not a canonical scalar"));
    let pk = arr32(
        &hx(s
            .pk_sm
            .as_deref()
            .unwrap_or_else(|| panic!("{id}: no pkSm"))),
        "pkSm",
    );
    assert_eq!(public_share(&sk), pk, "{id}: pkSm = skSm·G");
    let mut c = ThresholdCounts::default();
    for (t, n) in [(2u16, 3u16), (3, 5)] {
        let id = format!("{id}, skSm shared {t}-of-{n}");
        let shares = shamir(sk, t, n, &format!("datadonor/v1 threshold test {t}-of-{n}"));
        let config = PseudonymiserConfig {
            format: datadonor_schemas::PROTOCOL_VERSION,
            config_id: "rfc9497-test".into(),
            version: 1,
            suite: datadonor_schemas::threshold::SUITE.into(),
            mode: datadonor_schemas::threshold::MODE.into(),
            threshold: t,
            group_public_key: pk,
            instances: shares
                .iter()
                .map(|(i, k)| InstanceInfo {
                    index: *i,
                    url: format!("https://pseudonymiser-{i}.example"),
                    operator: format!("operator {i}"),
                    public_share: public_share(k),
                })
                .collect(),
            credential_issuer: None,
        };
        let config = PseudonymiserConfig::from_json(&config.to_json())
            .unwrap_or_else(|e| panic!("{id}: configuration: {e}"));
        // A share of another key, presented as instance 1's.
        let other = shamir(fixed_scalar("another key"), t, n, "another key")[0].1;
        let t_us = usize::from(t);
        c.sharings += 1;
        for (vn, v) in s.vectors.iter().enumerate() {
            let it = oprf_items(v, &id);
            for i in 0..v.batch {
                let id = format!("{id}, vector {vn}[{i}]");
                let blind = || {
                    blind_input_with_scalar(
                        Zeroizing::new(it.inputs[i].clone()),
                        it.blinds[i].to_bytes(),
                    )
                    .unwrap_or_else(|e| panic!("{id}: blind: {e}"))
                };
                let b = blind();
                assert_eq!(b.blinded.as_slice(), it.blinded[i], "{id}: BlindedElement");
                let be = BlindedElement::<Ristretto255>::deserialize(&it.blinded[i])
                    .unwrap_or_else(|e| panic!("{id}: BlindedElement: {e:?}"));
                // Every instance evaluates once; every t of them are combined.
                let answers: Vec<InstanceAnswer> = shares
                    .iter()
                    .map(|(j, k)| share_answer(*j, k, &be))
                    .collect();
                for subset in subsets(n, t_us) {
                    let chosen: Vec<InstanceAnswer> = subset
                        .iter()
                        .map(|j| answers[usize::from(*j) - 1].clone())
                        .collect();
                    let points: Vec<(u16, RistrettoPoint)> = chosen
                        .iter()
                        .map(|a| {
                            let z = b.verify_answer(&config, a).unwrap_or_else(|e| {
                                panic!("{id}: answer {} of {subset:?}: {e}", a.index)
                            });
                            (a.index, z)
                        })
                        .collect();
                    c.answers_verified += points.len();
                    assert_eq!(
                        combine_points(&points).compress().as_bytes().as_slice(),
                        it.evaluated[i],
                        "{id}: {subset:?} combine to EvaluationElement"
                    );
                    let out = blind()
                        .combine(&config, &chosen, Vec::new())
                        .unwrap_or_else(|e| panic!("{id}: combine {subset:?}: {e}"));
                    assert_eq!(
                        out.output.as_bytes().as_slice(),
                        it.outputs[i],
                        "{id}: {subset:?} Output"
                    );
                    assert_eq!(out.used, subset, "{id}: answers used");
                    assert!(out.rejected.is_empty() && out.spare.is_empty());
                    c.combinations += 1;
                }
                // t − 1 answers are not enough.
                match blind().combine(&config, &answers[..t_us - 1], Vec::new()) {
                    Err(ThresholdError::NotEnoughAnswers {
                        valid,
                        needed,
                        rejected,
                    }) if valid == t_us - 1 && needed == t_us && rejected.is_empty() => {}
                    other => panic!("{id}: {} answers: {other:?}", t_us - 1),
                }
                c.too_few_refused += 1;
                // A share of another key does not verify as instance 1's, and does not count
                // towards t.
                let forged = share_answer(1, &other, &be);
                assert_eq!(
                    b.verify_answer(&config, &forged),
                    Err(AnswerError::BadProof(1)),
                    "{id}: share of another key"
                );
                let mut mixed = vec![forged];
                mixed.extend_from_slice(&answers[1..t_us]);
                match blind().combine(&config, &mixed, Vec::new()) {
                    Err(ThresholdError::NotEnoughAnswers {
                        valid, rejected, ..
                    }) if valid == t_us - 1 && rejected == [AnswerError::BadProof(1)] => {}
                    other => panic!("{id}: forged answer and t − 1 honest ones: {other:?}"),
                }
                c.other_key_refused += 1;
                c.items += 1;
            }
        }
    }
    // 3 vectors of batch 1, 1, 2: 4 inputs per sharing. 2-of-3: 3 subsets of 2 answers;
    // 3-of-5: 10 subsets of 3 answers.
    assert_eq!(
        c,
        ThresholdCounts {
            sharings: 2,
            items: 8,
            answers_verified: 4 * (3 * 2 + 10 * 3),
            combinations: 4 * (3 + 10),
            too_few_refused: 8,
            other_key_refused: 8,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Ed25519 (RFC 8032, SUPERCOP, Wycheproof)
// ---------------------------------------------------------------------------------------------

struct Ed25519Case {
    seed: [u8; 32],
    pk: [u8; 32],
    msg: Vec<u8>,
    sig: Vec<u8>,
}

/// Sign and verify one known-answer case through the crate's wrappers; also check that a
/// modified message and a modified signature are refused. Returns the number of rejections.
fn ed25519_known_answer(c: &Ed25519Case, n: usize, id: &str) -> usize {
    let key = SigningKey::from_seed(&c.seed).unwrap_or_else(|e| panic!("{id}: from_seed: {e}"));
    assert_eq!(key.public_key().0, c.pk, "{id}: public key");
    assert_eq!(key.sign_raw(&c.msg).to_vec(), c.sig, "{id}: signature");
    let pk = PublicKey(c.pk);
    assert_eq!(pk.verify_raw(&c.msg, &c.sig), Ok(()), "{id}: verify");
    // The message with one bit flipped (the one empty message gets one byte appended).
    let bad_msg = if c.msg.is_empty() {
        vec![0u8]
    } else {
        flip_bit(&c.msg, n % c.msg.len(), (n % 8) as u8)
    };
    assert!(
        pk.verify_raw(&bad_msg, &c.sig).is_err(),
        "{id}: modified message verifies"
    );
    let bad_sig = flip_bit(&c.sig, n % 64, (n / 64 % 8) as u8);
    assert!(
        pk.verify_raw(&c.msg, &bad_sig).is_err(),
        "{id}: modified signature verifies"
    );
    2
}

#[derive(Deserialize)]
struct Rfc8032 {
    vectors: Vec<Rfc8032Vector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rfc8032Vector {
    name: String,
    source: String,
    secret_key_seed: String,
    public_key: String,
    message: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EddsaGroup {
    public_key: EddsaKey,
    tests: Vec<EddsaTest>,
}

#[derive(Deserialize)]
struct EddsaKey {
    pk: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EddsaTest {
    tc_id: u32,
    msg: String,
    sig: String,
    result: String,
}

/// Wycheproof Ed25519 cases marked `invalid` that ring 0.17 accepts. Must be exact. Checked
/// with ring 0.17.14: none (ring enforces s < L, decodes R strictly and compares R bytewise,
/// so the malleability, non-canonical-R and truncated/padded cases are all refused).
const RING_ACCEPTS_INVALID_ED25519: &[u32] = &[];

#[test]
fn ed25519_djb_rfc8032_wycheproof() {
    // SUPERCOP sign.input: `seed||pk : pk : msg : sig||msg :`, 1024 lines.
    let text = read_text("ed25519/djb-sign.input");
    let mut djb = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = format!("djb-sign.input line {}", n + 1);
        let f: Vec<&str> = line.split(':').collect();
        let [sk, pk, msg, sm, ""] = f.as_slice() else {
            panic!("{id}: expected 4 fields and a trailing ':'")
        };
        let (sk, pk, msg, sm) = (hx(sk), hx(pk), hx(msg), hx(sm));
        assert_eq!(sk.len(), 64, "{id}: seed||pk length");
        assert_eq!(sk[32..], pk[..], "{id}: pk in field 1 and field 2 differ");
        assert_eq!(sm.len(), 64 + msg.len(), "{id}: sig||msg length");
        assert_eq!(
            sm[64..],
            msg[..],
            "{id}: message after the signature differs"
        );
        djb.push(Ed25519Case {
            seed: arr32(&sk[..32], &id),
            pk: arr32(&pk, &id),
            msg,
            sig: sm[..64].to_vec(),
        });
    }
    let mut djb_ok = 0;
    let mut djb_rejected = 0;
    for (n, c) in djb.iter().enumerate() {
        djb_rejected += ed25519_known_answer(c, n, &format!("djb-sign.input line {}", n + 1));
        djb_ok += 1;
    }
    assert_eq!((djb_ok, djb_rejected), (1024, 2048), "djb-sign.input cases");

    // RFC 8032 section 7.1: TEST 1, 2, 3 and 1024, which are also lines of sign.input.
    let rfc: Rfc8032 = read_json("ed25519/rfc8032-ed25519.json");
    let mut rfc_ok = 0;
    for (n, v) in rfc.vectors.iter().enumerate() {
        let c = Ed25519Case {
            seed: arr32(&hx(&v.secret_key_seed), &v.name),
            pk: arr32(&hx(&v.public_key), &v.name),
            msg: hx(&v.message),
            sig: hx(&v.signature),
        };
        ed25519_known_answer(&c, n, &v.name);
        let line: usize = v
            .source
            .strip_prefix("djb-sign.input line ")
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{}: unexpected source {:?}", v.name, v.source));
        let d = &djb[line - 1];
        assert_eq!(
            (d.seed, d.pk, &d.msg, &d.sig),
            (c.seed, c.pk, &c.msg, &c.sig),
            "{}: differs from {}",
            v.name,
            v.source
        );
        rfc_ok += 1;
    }
    assert_eq!(rfc_ok, 4, "RFC 8032 TEST 1, 2, 3, 1024");

    // Wycheproof: every valid signature verifies, every invalid one is refused.
    let w: Wycheproof<EddsaGroup> = read_json("wycheproof/ed25519_test.json");
    let (mut valid, mut invalid_rejected) = (0, 0);
    let mut accepted_invalid = Vec::new();
    for g in &w.test_groups {
        let pk = PublicKey::from_slice(&hx(&g.public_key.pk))
            .unwrap_or_else(|e| panic!("Wycheproof Ed25519 key: {e}"));
        for t in &g.tests {
            let ok = pk.verify_raw(&hx(&t.msg), &hx(&t.sig)).is_ok();
            match t.result.as_str() {
                "valid" => {
                    assert!(
                        ok,
                        "Wycheproof Ed25519 tcId {}: valid signature refused",
                        t.tc_id
                    );
                    valid += 1;
                }
                "invalid" if ok => accepted_invalid.push(t.tc_id),
                "invalid" => invalid_rejected += 1,
                r => panic!("Wycheproof Ed25519 tcId {}: unexpected result {r}", t.tc_id),
            }
        }
    }
    assert_eq!(
        accepted_invalid, RING_ACCEPTS_INVALID_ED25519,
        "Wycheproof Ed25519 invalid cases that ring accepts"
    );
    assert_eq!(
        valid + invalid_rejected + accepted_invalid.len(),
        w.number_of_tests
    );
    assert_eq!(
        (valid, invalid_rejected + RING_ACCEPTS_INVALID_ED25519.len()),
        (88, 63),
        "Wycheproof Ed25519 valid / invalid"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. AES-GCM (NIST CAVP, Wycheproof)
// ---------------------------------------------------------------------------------------------

/// A 96-bit nonce, or `None`: the AES-GCM API here takes only 12-byte nonces.
fn nonce12(iv: &[u8]) -> Option<aes_gcm::Nonce<U12>> {
    aes_gcm::Nonce::<U12>::from_exact_iter(iv.iter().copied())
}

fn gcm_seal<C: KeyInit + Aead + AeadCore<NonceSize = U12>>(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Vec<u8> {
    let cipher = C::new_from_slice(key).unwrap_or_else(|e| panic!("AES-GCM key: {e}"));
    let nonce = nonce12(iv).unwrap_or_else(|| panic!("AES-GCM: nonce is not 96 bits"));
    cipher
        .encrypt(&nonce, Payload { msg: pt, aad })
        .unwrap_or_else(|e| panic!("AES-GCM encrypt: {e}"))
}

fn gcm_open<C: KeyInit + Aead + AeadCore<NonceSize = U12>>(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    ct_tag: &[u8],
) -> Option<Vec<u8>> {
    let cipher = C::new_from_slice(key).unwrap_or_else(|e| panic!("AES-GCM key: {e}"));
    let nonce = nonce12(iv).unwrap_or_else(|| panic!("AES-GCM: nonce is not 96 bits"));
    cipher.decrypt(&nonce, Payload { msg: ct_tag, aad }).ok()
}

/// Run `$f::<AesGcm<Aes, U12, Tag>>(args)` for the key and tag length, or `None` when the
/// aes-gcm crate has no such instance (tags shorter than 12 bytes).
macro_rules! gcm_dispatch {
    ($key_len:expr, $tag_len:expr, $f:ident ( $($arg:expr),* )) => {
        match ($key_len, $tag_len) {
            (16, 16) => Some($f::<AesGcm<Aes128, U12, U16>>($($arg),*)),
            (16, 15) => Some($f::<AesGcm<Aes128, U12, U15>>($($arg),*)),
            (16, 14) => Some($f::<AesGcm<Aes128, U12, U14>>($($arg),*)),
            (16, 13) => Some($f::<AesGcm<Aes128, U12, U13>>($($arg),*)),
            (16, 12) => Some($f::<AesGcm<Aes128, U12, U12>>($($arg),*)),
            (24, 16) => Some($f::<AesGcm<Aes192, U12, U16>>($($arg),*)),
            (24, 15) => Some($f::<AesGcm<Aes192, U12, U15>>($($arg),*)),
            (24, 14) => Some($f::<AesGcm<Aes192, U12, U14>>($($arg),*)),
            (24, 13) => Some($f::<AesGcm<Aes192, U12, U13>>($($arg),*)),
            (24, 12) => Some($f::<AesGcm<Aes192, U12, U12>>($($arg),*)),
            (32, 16) => Some($f::<AesGcm<Aes256, U12, U16>>($($arg),*)),
            (32, 15) => Some($f::<AesGcm<Aes256, U12, U15>>($($arg),*)),
            (32, 14) => Some($f::<AesGcm<Aes256, U12, U14>>($($arg),*)),
            (32, 13) => Some($f::<AesGcm<Aes256, U12, U13>>($($arg),*)),
            (32, 12) => Some($f::<AesGcm<Aes256, U12, U12>>($($arg),*)),
            _ => None,
        }
    };
}

/// One NIST CAVP GCM case (encrypt: `pt` is given; decrypt: `pt` is given unless `fail`).
struct CavpCase {
    id: String,
    params: BTreeMap<String, usize>,
    key: Vec<u8>,
    iv: Vec<u8>,
    aad: Vec<u8>,
    ct: Vec<u8>,
    tag: Vec<u8>,
    pt: Option<Vec<u8>>,
    fail: bool,
}

fn parse_rsp(rel: &str) -> Vec<CavpCase> {
    let text = read_text(rel);
    let mut params = BTreeMap::new();
    let mut cases = Vec::new();
    let mut cur: Option<BTreeMap<String, String>> = None;
    let finish = |fields: BTreeMap<String, String>, params: &BTreeMap<String, usize>| {
        let get = |k: &str| {
            hx(fields
                .get(k)
                .unwrap_or_else(|| panic!("{rel}: case {fields:?} has no {k}")))
        };
        let fail = fields.contains_key("FAIL");
        let pt = fields.get("PT").map(|s| hx(s));
        assert!(
            fail != pt.is_some(),
            "{rel}: case {fields:?}: exactly one of PT / FAIL"
        );
        CavpCase {
            id: format!(
                "{rel} {params:?} Count {}",
                fields.get("Count").map_or("?", |s| s)
            ),
            params: params.clone(),
            key: get("Key"),
            iv: get("IV"),
            aad: get("AAD"),
            ct: get("CT"),
            tag: get("Tag"),
            pt,
            fail,
        }
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(done) = cur.take() {
                cases.push(finish(done, &params));
            }
            let (k, v) = inner
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: bad section {line:?}"));
            let v: usize = v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{rel}: bad section {line:?}: {e}"));
            params.insert(k.trim().to_string(), v);
            continue;
        }
        if line.starts_with("Count") {
            if let Some(done) = cur.take() {
                cases.push(finish(done, &params));
            }
            cur = Some(BTreeMap::new());
        }
        let fields = cur
            .as_mut()
            .unwrap_or_else(|| panic!("{rel}: {line:?} outside a case"));
        if line == "FAIL" {
            fields.insert("FAIL".into(), String::new());
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: bad line {line:?}"));
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if let Some(done) = cur.take() {
        cases.push(finish(done, &params));
    }
    cases
}

#[derive(Deserialize)]
struct CavpJson {
    groups: Vec<CavpJsonGroup>,
}

#[derive(Deserialize)]
struct CavpJsonGroup {
    params: BTreeMap<String, usize>,
    tests: Vec<CavpJsonTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CavpJsonTest {
    count: u32,
    key: String,
    #[serde(rename = "IV")]
    iv: String,
    #[serde(rename = "AAD")]
    aad: String,
    #[serde(rename = "CT")]
    ct: String,
    tag: String,
    #[serde(rename = "PT")]
    pt: Option<String>,
    #[serde(rename = "FAIL", default)]
    fail: bool,
}

fn parse_cavp_json(rel: &str) -> Vec<CavpCase> {
    let j: CavpJson = read_json(rel);
    let mut out = Vec::new();
    for g in j.groups {
        for t in g.tests {
            assert!(
                t.fail != t.pt.is_some(),
                "{rel} Count {}: exactly one of PT / FAIL",
                t.count
            );
            out.push(CavpCase {
                id: format!("{rel} {:?} Count {}", g.params, t.count),
                params: g.params.clone(),
                key: hx(&t.key),
                iv: hx(&t.iv),
                aad: hx(&t.aad),
                ct: hx(&t.ct),
                tag: hx(&t.tag),
                pt: t.pt.as_deref().map(hx),
                fail: t.fail,
            });
        }
    }
    out
}

#[derive(Default, Debug, PartialEq, Eq)]
struct CavpCounts {
    encrypt_aead: usize,
    encrypt_truncated_by_hand: usize,
    decrypt_ok_aead: usize,
    decrypt_fail_aead: usize,
    decrypt_ok_by_hand: usize,
    decrypt_fail_by_hand: usize,
}

impl CavpCounts {
    fn total(&self) -> usize {
        self.encrypt_aead
            + self.encrypt_truncated_by_hand
            + self.decrypt_ok_aead
            + self.decrypt_fail_aead
            + self.decrypt_ok_by_hand
            + self.decrypt_fail_by_hand
    }
}

fn check_cavp(c: &CavpCase, encrypt: bool, n: &mut CavpCounts) {
    let id = &c.id;
    let p = |k: &str| {
        *c.params
            .get(k)
            .unwrap_or_else(|| panic!("{id}: no [{k}] section"))
    };
    assert_eq!(c.key.len() * 8, p("Keylen"), "{id}: Keylen");
    assert_eq!(c.iv.len() * 8, p("IVlen"), "{id}: IVlen");
    assert_eq!(c.ct.len() * 8, p("PTlen"), "{id}: PTlen");
    assert_eq!(c.aad.len() * 8, p("AADlen"), "{id}: AADlen");
    assert_eq!(c.tag.len() * 8, p("Taglen"), "{id}: Taglen");
    if let Some(pt) = &c.pt {
        assert_eq!(pt.len(), c.ct.len(), "{id}: PT and CT lengths differ");
    }
    let mut ct_tag = c.ct.clone();
    ct_tag.extend_from_slice(&c.tag);
    let (key, iv, aad, tl) = (&c.key[..], &c.iv[..], &c.aad[..], c.tag.len());
    if encrypt {
        assert!(!c.fail, "{id}: FAIL in an encrypt file");
        let pt = c.pt.as_deref().unwrap_or_else(|| panic!("{id}: no PT"));
        if let Some(out) = gcm_dispatch!(key.len(), tl, gcm_seal(key, iv, aad, pt)) {
            assert_eq!(hex::encode(out), hex::encode(&ct_tag), "{id}: CT||Tag");
            let back = gcm_dispatch!(key.len(), tl, gcm_open(key, iv, aad, &ct_tag)).flatten();
            assert_eq!(back.as_deref(), Some(pt), "{id}: round trip");
            n.encrypt_aead += 1;
        } else {
            // 32- and 64-bit tags: no aes-gcm instance; the tag is the leading bytes of the
            // full 128-bit tag (SP 800-38D section 5.2.1.2).
            let full = gcm_dispatch!(key.len(), 16, gcm_seal(key, iv, aad, pt))
                .unwrap_or_else(|| panic!("{id}: key length {}", key.len()));
            assert_eq!(
                hex::encode(&full[..c.ct.len() + tl]),
                hex::encode(&ct_tag),
                "{id}"
            );
            n.encrypt_truncated_by_hand += 1;
        }
    } else if let Some(res) = gcm_dispatch!(key.len(), tl, gcm_open(key, iv, aad, &ct_tag)) {
        if c.fail {
            assert!(res.is_none(), "{id}: FAIL case decrypted");
            n.decrypt_fail_aead += 1;
        } else {
            assert_eq!(res.as_deref(), c.pt.as_deref(), "{id}: decrypt");
            n.decrypt_ok_aead += 1;
        }
    } else {
        // Short tags, by hand: CTR-decrypt (GCM encryption of CT yields PT), re-encrypt to get
        // the full tag over (AAD, CT), and compare its leading bytes.
        let pt = gcm_dispatch!(key.len(), 16, gcm_seal(key, iv, &[], &c.ct))
            .unwrap_or_else(|| panic!("{id}: key length {}", key.len()));
        let pt = &pt[..c.ct.len()];
        let full = gcm_dispatch!(key.len(), 16, gcm_seal(key, iv, aad, pt))
            .unwrap_or_else(|| panic!("{id}: key length {}", key.len()));
        assert_eq!(full[..c.ct.len()], c.ct[..], "{id}: CTR round trip");
        let tag_ok = full[c.ct.len()..c.ct.len() + tl] == c.tag[..];
        assert_eq!(
            tag_ok, !c.fail,
            "{id}: truncated tag check disagrees with the file"
        );
        if c.fail {
            n.decrypt_fail_by_hand += 1;
        } else {
            assert_eq!(Some(pt), c.pt.as_deref(), "{id}: decrypt");
            n.decrypt_ok_by_hand += 1;
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AeadGroup {
    iv_size: usize,
    key_size: usize,
    tag_size: usize,
    tests: Vec<AeadTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AeadTest {
    tc_id: u32,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: String,
}

#[test]
fn aes_gcm_nist_cavp_and_wycheproof() {
    // NIST CAVP .rsp, all tag lengths.
    let mut rsp = CavpCounts::default();
    for (rel, encrypt) in [
        ("aes-gcm-nist-cavp/gcmEncryptExtIV128-IV96.rsp", true),
        ("aes-gcm-nist-cavp/gcmEncryptExtIV256-IV96.rsp", true),
        ("aes-gcm-nist-cavp/gcmDecrypt128-IV96.rsp", false),
        ("aes-gcm-nist-cavp/gcmDecrypt256-IV96.rsp", false),
    ] {
        let cases = parse_rsp(rel);
        assert_eq!(cases.len(), 2625, "{rel}: case count");
        for c in &cases {
            check_cavp(c, encrypt, &mut rsp);
        }
    }
    // 7 tag lengths x 375 cases per file; 12..=16-byte tags through the AEAD, 4 and 8 by hand.
    assert_eq!(
        rsp,
        CavpCounts {
            encrypt_aead: 2 * 5 * 375,
            encrypt_truncated_by_hand: 2 * 2 * 375,
            decrypt_ok_aead: 5 * 2 * 375
                - (196 + 210 + 188 + 207 + 186)
                - (191 + 182 + 180 + 182 + 195),
            decrypt_fail_aead: (196 + 210 + 188 + 207 + 186) + (191 + 182 + 180 + 182 + 195),
            decrypt_ok_by_hand: 2 * 2 * 375 - (181 + 195) - (194 + 193),
            decrypt_fail_by_hand: (181 + 195) + (194 + 193),
        }
    );
    assert_eq!(rsp.total(), 4 * 2625);
    assert_eq!(
        rsp.decrypt_fail_aead + rsp.decrypt_fail_by_hand,
        1363 + 1317
    );

    // The 128-bit-tag JSON subsets.
    let mut js = CavpCounts::default();
    for (rel, encrypt) in [
        (
            "aes-gcm-nist-cavp/gcmEncryptExtIV128-IV96-Tag128.json",
            true,
        ),
        (
            "aes-gcm-nist-cavp/gcmEncryptExtIV256-IV96-Tag128.json",
            true,
        ),
        ("aes-gcm-nist-cavp/gcmDecrypt128-IV96-Tag128.json", false),
        ("aes-gcm-nist-cavp/gcmDecrypt256-IV96-Tag128.json", false),
    ] {
        let cases = parse_cavp_json(rel);
        assert_eq!(cases.len(), 375, "{rel}: case count");
        for c in &cases {
            check_cavp(c, encrypt, &mut js);
        }
    }
    assert_eq!(
        js,
        CavpCounts {
            encrypt_aead: 750,
            decrypt_ok_aead: 750 - 196 - 191,
            decrypt_fail_aead: 196 + 191,
            ..CavpCounts::default()
        }
    );

    // Wycheproof: 96-bit IVs as specified; every other IV size is refused by the 12-byte
    // nonce type before any key is touched.
    let w: Wycheproof<AeadGroup> = read_json("wycheproof/aes_gcm_test.json");
    let (mut valid, mut invalid_rejected, mut iv_refused) = (0, 0, 0);
    for g in &w.test_groups {
        assert_eq!(g.tag_size, 128, "Wycheproof AES-GCM tag size");
        for t in &g.tests {
            let id = format!("Wycheproof AES-GCM tcId {}", t.tc_id);
            let (key, iv, aad, msg) = (hx(&t.key), hx(&t.iv), hx(&t.aad), hx(&t.msg));
            assert_eq!(
                (key.len() * 8, iv.len() * 8),
                (g.key_size, g.iv_size),
                "{id}"
            );
            let mut ct_tag = hx(&t.ct);
            ct_tag.extend_from_slice(&hx(&t.tag));
            if g.iv_size != 96 {
                assert!(
                    nonce12(&iv).is_none(),
                    "{id}: {}-bit IV accepted",
                    g.iv_size
                );
                iv_refused += 1;
                continue;
            }
            let kl = key.len();
            let opened = gcm_dispatch!(kl, 16, gcm_open(&key, &iv, &aad, &ct_tag))
                .unwrap_or_else(|| panic!("{id}: key size {}", g.key_size));
            match t.result.as_str() {
                "valid" => {
                    let sealed = gcm_dispatch!(kl, 16, gcm_seal(&key, &iv, &aad, &msg))
                        .unwrap_or_else(|| panic!("{id}: key size {}", g.key_size));
                    assert_eq!(hex::encode(sealed), hex::encode(&ct_tag), "{id}: ct||tag");
                    assert_eq!(opened, Some(msg), "{id}: decrypt");
                    valid += 1;
                }
                "invalid" => {
                    assert_eq!(opened, None, "{id}: invalid case decrypted");
                    invalid_rejected += 1;
                }
                r => panic!("{id}: unexpected result {r}"),
            }
        }
    }
    assert_eq!(valid + invalid_rejected + iv_refused, w.number_of_tests);
    assert_eq!((valid, invalid_rejected, iv_refused), (116, 81, 119));
}

// ---------------------------------------------------------------------------------------------
// 5. X25519 (RFC 7748, Wycheproof)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Rfc7748 {
    vectors: Vec<Rfc7748Vector>,
}

#[derive(Deserialize, PartialEq, Debug)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Rfc7748Vector {
    count: String,
    input_scalar: String,
    input_u: String,
    output_u: String,
}

#[derive(Deserialize)]
struct XdhGroup {
    curve: String,
    tests: Vec<XdhTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct XdhTest {
    tc_id: u32,
    flags: Vec<String>,
    public: String,
    private: String,
    shared: String,
    result: String,
}

/// The crate's HPKE layer must refuse a recipient or encapsulated key whose DH is all-zero.
fn hpke_refuses_low_order(public: [u8; 32], private: [u8; 32], id: &str) {
    type K = X25519HkdfSha256;
    let pk = <K as Kem>::PublicKey::from_bytes(&public)
        .unwrap_or_else(|e| panic!("{id}: hpke PublicKey::from_bytes: {e:?}"));
    let sealed = hpke::single_shot_seal::<AesGcm256, HkdfSha256, K, _>(
        &OpModeS::Base,
        &pk,
        b"info",
        b"plaintext",
        b"aad",
        &mut OsRng,
    );
    assert!(
        matches!(sealed, Err(HpkeError::EncapError)),
        "{id}: single_shot_seal to a low-order key did not fail with EncapError"
    );
    assert!(
        hpke_seal(&HpkePublicKey(public), b"info", b"aad", b"plaintext").is_err(),
        "{id}: the crate's hpke_seal sealed to a low-order key"
    );
    // Receiver side: a low-order point as `enc`.
    let sk = <K as Kem>::PrivateKey::from_bytes(&private)
        .unwrap_or_else(|e| panic!("{id}: hpke PrivateKey::from_bytes: {e:?}"));
    let enc = <K as Kem>::EncappedKey::from_bytes(&public)
        .unwrap_or_else(|e| panic!("{id}: hpke EncappedKey::from_bytes: {e:?}"));
    let ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, K>(&OpModeR::Base, &sk, &enc, b"i");
    assert!(
        matches!(ctx, Err(HpkeError::DecapError)),
        "{id}: setup_receiver with a low-order enc did not fail with DecapError"
    );
    let wrapper_sk = HpkePrivateKey::from_bytes(&private)
        .unwrap_or_else(|e| panic!("{id}: HpkePrivateKey::from_bytes: {e}"));
    assert!(
        hpke_open(&wrapper_sk, &public, b"info", b"aad", &[0u8; 32]).is_err(),
        "{id}: the crate's hpke_open accepted a low-order enc"
    );
}

#[test]
fn x25519_rfc7748_wycheproof() {
    // RFC 7748 section 5.2; the JSON must agree with the text file it came from.
    let rfc: Rfc7748 = read_json("x25519/rfc7748-section5.2.json");
    let txt = read_text("x25519/rfc7748-section5.2.txt");
    let mut from_txt = Vec::new();
    let mut fields = BTreeMap::new();
    for line in txt.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once(" = ") {
            fields.insert(k.to_string(), v.to_string());
        }
        if fields.len() == 4 {
            let mut take = |k: &str| fields.remove(k).unwrap_or_else(|| panic!("no {k}"));
            from_txt.push(Rfc7748Vector {
                count: take("COUNT"),
                input_scalar: take("INPUT_SCALAR"),
                input_u: take("INPUT_U"),
                output_u: take("OUTPUT_U"),
            });
        }
    }
    assert_eq!(from_txt, rfc.vectors, "RFC 7748 .txt and .json disagree");
    let mut rfc_ok = 0;
    for v in &rfc.vectors {
        let id = format!("RFC 7748 COUNT {}", v.count);
        let k = arr32(&hx(&v.input_scalar), &id);
        let u = arr32(&hx(&v.input_u), &id);
        let want = hx(&v.output_u);
        assert_eq!(x25519_dalek::x25519(k, u).to_vec(), want, "{id}: x25519");
        let secret = x25519_dalek::StaticSecret::from(k);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(u));
        assert_eq!(shared.as_bytes().to_vec(), want, "{id}: StaticSecret");
        rfc_ok += 1;
    }
    assert_eq!(rfc_ok, 3, "RFC 7748 section 5.2 vectors");

    // Wycheproof: the shared secret as given for valid and acceptable cases; the all-zero
    // results (low-order public keys) are refused by the HPKE layer.
    let w: Wycheproof<XdhGroup> = read_json("wycheproof/x25519_test.json");
    let (mut valid, mut acceptable, mut zero) = (0, 0, 0);
    for g in &w.test_groups {
        assert_eq!(g.curve, "curve25519");
        for t in &g.tests {
            let id = format!("Wycheproof X25519 tcId {}", t.tc_id);
            let public = arr32(&hx(&t.public), &id);
            let private = arr32(&hx(&t.private), &id);
            let shared = x25519_dalek::x25519(private, public);
            assert_eq!(shared.to_vec(), hx(&t.shared), "{id}: shared secret");
            let via_secret = x25519_dalek::StaticSecret::from(private)
                .diffie_hellman(&x25519_dalek::PublicKey::from(public));
            assert_eq!(via_secret.as_bytes(), &shared, "{id}: StaticSecret");
            let is_zero = shared == [0u8; 32];
            let flagged = t.flags.iter().any(|f| f == "ZeroSharedSecret");
            assert_eq!(
                is_zero, flagged,
                "{id}: ZeroSharedSecret flag vs all-zero output"
            );
            if t.flags.iter().any(|f| f == "LowOrderPublic") {
                assert!(
                    is_zero,
                    "{id}: low-order public key with a non-zero shared secret"
                );
            }
            assert_eq!(
                via_secret.was_contributory(),
                !is_zero,
                "{id}: was_contributory"
            );
            if is_zero {
                hpke_refuses_low_order(public, private, &id);
                zero += 1;
            }
            match t.result.as_str() {
                "valid" => valid += 1,
                "acceptable" => acceptable += 1,
                r => panic!("{id}: unexpected result {r}"),
            }
        }
    }
    assert_eq!(valid + acceptable, w.number_of_tests);
    assert_eq!((valid, acceptable, zero), (264, 254, 31));
}

// ---------------------------------------------------------------------------------------------
// 6. HKDF-SHA256 and HMAC-SHA256 (Wycheproof)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct HkdfGroup {
    tests: Vec<HkdfTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HkdfTest {
    tc_id: u32,
    ikm: String,
    salt: String,
    info: String,
    size: usize,
    okm: String,
    result: String,
}

struct OkmLen(usize);

impl ring::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MacGroup {
    key_size: usize,
    tag_size: usize,
    tests: Vec<MacTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MacTest {
    tc_id: u32,
    key: String,
    msg: String,
    tag: String,
    result: String,
}

#[test]
fn hkdf_hmac_sha256_wycheproof() {
    use ring::{hkdf, hmac};

    let w: Wycheproof<HkdfGroup> = read_json("wycheproof/hkdf_sha256_test.json");
    let (mut valid, mut too_large_rejected) = (0, 0);
    for g in &w.test_groups {
        for t in &g.tests {
            let id = format!("Wycheproof HKDF-SHA256 tcId {}", t.tc_id);
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &hx(&t.salt)).extract(&hx(&t.ikm));
            let info = hx(&t.info);
            let info_parts = [info.as_slice()];
            let mut out = vec![0u8; t.size];
            let res = prk
                .expand(&info_parts, OkmLen(t.size))
                .and_then(|okm| okm.fill(&mut out));
            match t.result.as_str() {
                "valid" => {
                    assert!(t.size <= 255 * 32, "{id}: valid case above 255*HashLen");
                    assert_eq!(res, Ok(()), "{id}: expand");
                    assert_eq!(hex::encode(&out), t.okm, "{id}: okm");
                    valid += 1;
                }
                "invalid" => {
                    assert!(t.size > 255 * 32, "{id}: invalid case for another reason");
                    assert!(res.is_err(), "{id}: output of {} bytes produced", t.size);
                    too_large_rejected += 1;
                }
                r => panic!("{id}: unexpected result {r}"),
            }
        }
    }
    assert_eq!(valid + too_large_rejected, w.number_of_tests);
    assert_eq!((valid, too_large_rejected), (83, 3));

    let w: Wycheproof<MacGroup> = read_json("wycheproof/hmac_sha256_test.json");
    let (mut valid, mut invalid_rejected, mut truncated) = (0, 0, 0);
    for g in &w.test_groups {
        assert!(
            g.tag_size % 8 == 0 && g.tag_size <= 256,
            "tag size {}",
            g.tag_size
        );
        for t in &g.tests {
            let id = format!(
                "Wycheproof HMAC-SHA256 tcId {} (tag {})",
                t.tc_id, g.tag_size
            );
            let raw_key = hx(&t.key);
            assert_eq!(raw_key.len() * 8, g.key_size, "{id}: key size");
            let key = hmac::Key::new(hmac::HMAC_SHA256, &raw_key);
            let (msg, tag) = (hx(&t.msg), hx(&t.tag));
            let full = hmac::sign(&key, &msg);
            let n = g.tag_size / 8;
            let matches = tag.len() == n && full.as_ref().get(..n) == Some(tag.as_slice());
            if n == 32 {
                assert_eq!(
                    hmac::verify(&key, &msg, &tag).is_ok(),
                    matches,
                    "{id}: hmac::verify and the comparison disagree"
                );
            } else {
                truncated += 1;
            }
            match t.result.as_str() {
                "valid" => {
                    assert!(matches, "{id}: valid tag does not match");
                    valid += 1;
                }
                "invalid" => {
                    assert!(!matches, "{id}: invalid tag matches");
                    invalid_rejected += 1;
                }
                r => panic!("{id}: unexpected result {r}"),
            }
        }
    }
    assert_eq!(valid + invalid_rejected, w.number_of_tests);
    assert_eq!((valid, invalid_rejected, truncated), (66, 108, 87));
}
