//! Property tests of the wire formats: encode → decode round trips, tamper evidence (any
//! single-byte change is rejected, or for the JSON wrapper decodes to the identical verified
//! body), context separation of signatures, and decoders that never panic on arbitrary bytes.
//!
//! Case counts are modest (256 by default, fewer where each case does public-key work) so the
//! file runs in seconds.

use datadonor_schemas::batch::{BatchHeader, WRAPPED_KEY_LEN};
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::consent::{ConsentManifest, Withdrawal};
use datadonor_schemas::envelope::{DonationPayload, Envelope, HpkePrivateKey};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::Hash;
use datadonor_schemas::pseudonym::{Cpr, Pseudonym};
use datadonor_schemas::query::{
    CmpOp, Contribution, Filter, Literal, Measure, MeasureOp, QueryApproval, QuerySpec,
};
use datadonor_schemas::receipt::{Receipt, ReceiptKind};
use datadonor_schemas::signing::{Context, PublicKey, SignatureError, SignedObject, SigningKey};
use datadonor_schemas::study::{rows_from_ipc, Controller, StudyDefinition, StudyId};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;

const STUDY_TOML: &str = include_str!("../../examples/t2d-study.toml");
const QUERY_TOML: &str = include_str!("../../examples/t2d-query.toml");

fn key(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_seed(&seed).expect("every seed is a key")
}

fn example_study() -> StudyDefinition {
    StudyDefinition::from_toml(STUDY_TOML).expect("example study")
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn study_id() -> impl Strategy<Value = StudyId> {
    "[a-z][a-z0-9-]{2,30}".prop_map(|s| StudyId::new(&s).expect("matches the id syntax"))
}

fn pseudonym() -> impl Strategy<Value = Pseudonym> {
    any::<[u8; 32]>().prop_map(Pseudonym)
}

fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn manifest() -> impl Strategy<Value = ConsentManifest> {
    (
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            study_id(),
            any::<u32>(),
            any::<[u8; 32]>(),
        ),
        (text(), text(), vec(text(), 0..4), text(), vec(text(), 0..4)),
        (
            any::<i64>(),
            any::<i64>(),
            text(),
            any::<[u8; 32]>(),
            public_key(),
            pseudonym(),
        ),
    )
        .prop_map(
            |(
                (format, record_id, study_id, study_version, study_sha256),
                (name, contact, purposes, legal_basis, data_categories),
                (
                    given_at,
                    expires_at,
                    withdrawal_method,
                    notice_sha256,
                    donor_public_key,
                    pseudonym,
                ),
            )| ConsentManifest {
                format,
                record_id,
                study_id,
                study_version,
                study_sha256,
                controller: Controller { name, contact },
                purposes,
                legal_basis,
                data_categories,
                given_at,
                expires_at,
                withdrawal_method,
                notice_sha256,
                donor_public_key,
                pseudonym,
            },
        )
}

fn withdrawal() -> impl Strategy<Value = Withdrawal> {
    (
        any::<u32>(),
        any::<[u8; 16]>(),
        study_id(),
        pseudonym(),
        any::<[u8; 16]>(),
        any::<i64>(),
        public_key(),
    )
        .prop_map(
            |(format, request_id, study_id, pseudonym, consent_record_id, withdrawn_at, key)| {
                Withdrawal {
                    format,
                    request_id,
                    study_id,
                    pseudonym,
                    consent_record_id,
                    withdrawn_at,
                    donor_public_key: key,
                }
            },
        )
}

fn receipt() -> impl Strategy<Value = Receipt> {
    (
        (
            any::<u32>(),
            any::<bool>(),
            study_id(),
            pseudonym(),
            any::<[u8; 16]>(),
        ),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            ".{0,200}",
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (format, donation, study_id, pseudonym, consent_record_id),
                (request_sha256, ledger_index, entry_sha256, checkpoint, issued_at),
            )| Receipt {
                format,
                kind: if donation {
                    ReceiptKind::Donation
                } else {
                    ReceiptKind::Withdrawal
                },
                study_id,
                pseudonym,
                consent_record_id,
                request_sha256,
                ledger_index,
                entry_sha256,
                checkpoint,
                issued_at,
            },
        )
}

fn approval() -> impl Strategy<Value = QueryApproval> {
    (
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            study_id(),
        ),
        (text(), text(), any::<i64>(), any::<i64>(), any::<u32>()),
    )
        .prop_map(
            |(
                (format, approval_id, query_sha256, study_id),
                (purpose, researcher, not_before, not_after, max_runs),
            )| QueryApproval {
                format,
                approval_id,
                query_sha256,
                study_id,
                purpose,
                researcher,
                not_before,
                not_after,
                max_runs,
                privacy: None,
            },
        )
}

/// The example study with its free-form values varied (the structure is covered by vectors).
fn study() -> impl Strategy<Value = StudyDefinition> {
    (
        text(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        vec(text(), 1..3),
        any::<[u8; 32]>(),
    )
        .prop_map(|(title, version, min_k, retention_days, texts, notice)| {
            let mut s = example_study();
            s.title = title;
            s.version = version;
            s.min_k = min_k;
            s.retention_days = retention_days;
            s.notice_sha256 = notice;
            for (p, t) in s.purposes.iter_mut().zip(texts) {
                p.text = t;
            }
            s
        })
}

fn ledger_entry() -> impl Strategy<Value = LedgerEntry> {
    let t = any::<i64>();
    prop_oneof![
        (
            (t, study_id(), any::<u32>(), pseudonym(), any::<[u8; 16]>()),
            (
                vec(text(), 0..3),
                any::<i64>(),
                any::<i64>(),
                any::<[u8; 32]>(),
                public_key()
            ),
        )
            .prop_map(
                |(
                    (time, study_id, study_version, pseudonym, consent_record_id),
                    (purposes, given_at, expires_at, manifest_sha256, donor_public_key),
                )| LedgerEntry::ConsentGranted {
                    time,
                    study_id,
                    study_version,
                    pseudonym,
                    consent_record_id,
                    purposes,
                    given_at,
                    expires_at,
                    manifest_sha256,
                    donor_public_key,
                }
            ),
        (
            t,
            study_id(),
            pseudonym(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            "[0-9a-f]{32}",
        )
            .prop_map(
                |(
                    time,
                    study_id,
                    pseudonym,
                    consent_record_id,
                    idempotency_key,
                    envelope_sha256,
                    rows,
                    batch_id,
                )| {
                    LedgerEntry::DonationAccepted {
                        time,
                        study_id,
                        pseudonym,
                        consent_record_id,
                        idempotency_key,
                        envelope_sha256,
                        rows,
                        batch_id,
                    }
                }
            ),
        (
            t,
            study_id(),
            pseudonym(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(time, study_id, pseudonym, consent_record_id, withdrawal_sha256)| {
                    LedgerEntry::ConsentWithdrawn {
                        time,
                        study_id,
                        pseudonym,
                        consent_record_id,
                        withdrawal_sha256,
                    }
                }
            ),
        (
            t,
            study_id(),
            pseudonym(),
            proptest::option::of(any::<[u8; 16]>()),
            any::<u64>(),
            vec("[0-9a-f]{32}", 0..3)
        )
            .prop_map(
                |(time, study_id, pseudonym, consent_record_id, rows_erased, batches_rewritten)| {
                    LedgerEntry::ErasureDone {
                        time,
                        study_id,
                        pseudonym,
                        consent_record_id,
                        rows_erased,
                        batches_rewritten,
                    }
                }
            ),
        (
            (t, study_id(), any::<[u8; 32]>(), any::<[u8; 32]>(), text()),
            (text(), any::<u64>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |(
                    (time, study_id, query_sha256, approval_sha256, researcher),
                    (purpose, donors_considered, cells_published, cells_suppressed),
                )| LedgerEntry::QueryRun {
                    time,
                    study_id,
                    query_sha256,
                    approval_sha256,
                    researcher,
                    purpose,
                    donors_considered,
                    cells_published,
                    cells_suppressed,
                    privacy: None,
                }
            ),
        (t, text(), any::<u32>(), any::<[u8; 32]>()).prop_map(
            |(time, role, key_id, public_key_sha256)| LedgerEntry::KeyRotated {
                time,
                role,
                key_id,
                public_key_sha256,
            }
        ),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}"
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![-1e6f64..1e6, (-1000i32..1000).prop_map(f64::from)]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<bool>().prop_map(Literal::Bool),
        finite().prop_map(Literal::Number),
        text().prop_map(Literal::Text),
    ]
}

fn cmp_op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge),
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        (field_name(), cmp_op(), literal()).prop_map(|(field, op, value)| Filter::Cmp {
            field,
            op,
            value
        }),
        (field_name(), vec(text(), 0..3)).prop_map(|(field, values)| Filter::In { field, values }),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Filter::All),
            vec(inner.clone(), 0..3).prop_map(Filter::Any),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

fn measure() -> impl Strategy<Value = Measure> {
    let op = prop_oneof![
        Just(MeasureOp::Donors),
        Just(MeasureOp::Rows),
        Just(MeasureOp::Sum),
        Just(MeasureOp::Mean),
        Just(MeasureOp::Std),
        Just(MeasureOp::Quantile),
        Just(MeasureOp::Min),
        Just(MeasureOp::Max),
    ];
    (
        op,
        proptest::option::of(field_name()),
        proptest::option::of(0.0f64..1.0),
    )
        .prop_map(|(op, field, q)| Measure { op, field, q })
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        (study_id(), text(), text(), text(), any::<u32>()),
        (
            vec(field_name(), 0..4),
            proptest::option::of(filter()),
            vec(measure(), 1..4),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (study, purpose, researcher, title, k),
                (group_by, filter, measures, mean, totals),
            )| {
                QuerySpec {
                    study,
                    purpose,
                    researcher,
                    title,
                    k,
                    group_by,
                    filter,
                    measures,
                    contribution: if mean {
                        Contribution::DonorMean
                    } else {
                        Contribution::AllRows
                    },
                    totals,
                }
            },
        )
}

fn flip(bytes: &[u8], at: Index, mask: u8) -> Vec<u8> {
    let mut m = bytes.to_vec();
    let i = at.index(m.len());
    m[i] ^= mask;
    m
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn signed_round_trip<T>(ctx: Context, body: &T, seed: [u8; 32])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let k = key(seed);
    let obj = SignedObject::sign(ctx, body, &k);
    let wire = obj.to_bytes();
    let back = SignedObject::from_bytes(&wire).expect("wire form parses");
    assert_eq!(back, obj);
    let opened = back.open::<T>(ctx, "body").expect("verifies and parses");
    assert_eq!(&opened.body, body);
    assert_eq!(opened.signer, k.public_key());
    assert_eq!(back.to_bytes(), wire, "re-encoding is stable");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn donation_payload_round_trips(
        idempotency_key in any::<[u8; 16]>(),
        manifest in vec(any::<u8>(), 0..2048),
        rows in vec(any::<u8>(), 0..4096),
    ) {
        let p = DonationPayload { idempotency_key, manifest, rows };
        let bytes = p.encode();
        prop_assert_eq!(bytes.len(), 28 + p.manifest.len() + p.rows.len());
        prop_assert_eq!(DonationPayload::decode(&bytes).expect("decodes"), p);
    }

    #[test]
    fn batch_header_round_trips(
        batch_id in any::<[u8; 16]>(),
        study_id in "[a-z0-9-]{3,64}",
        created_at in any::<i64>(),
        vault_key_id in any::<u32>(),
        enc in any::<[u8; 32]>(),
        wrapped in vec(any::<u8>(), WRAPPED_KEY_LEN),
        body in vec(any::<u8>(), 0..64),
    ) {
        let mut wrapped_key = [0u8; WRAPPED_KEY_LEN];
        wrapped_key.copy_from_slice(&wrapped);
        let h = BatchHeader { batch_id, study_id, created_at, vault_key_id, enc, wrapped_key };
        let bytes = h.encode();
        let mut file = bytes.clone();
        file.extend_from_slice(&body);
        let (back, len) = BatchHeader::parse(&file).expect("parses");
        prop_assert_eq!(len, bytes.len());
        prop_assert_eq!(&back, &h);
        prop_assert_eq!(back.encode(), bytes);
        prop_assert_eq!(&h.wrap_aad()[..], &file[..len - 80]);
    }

    #[test]
    fn ledger_entry_round_trips(e in ledger_entry()) {
        let bytes = e.to_bytes();
        let prefix = format!("{{\"type\":\"{}\"", e.kind());
        prop_assert!(bytes.starts_with(prefix.as_bytes()), "type is the first member");
        let back = LedgerEntry::from_bytes(&bytes).expect("parses");
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn query_spec_toml_and_canonical_json_are_stable(spec in query_spec()) {
        let toml_text = toml::to_string(&spec).expect("specs serialise to TOML");
        let parsed = QuerySpec::from_toml(&toml_text).expect("the TOML parses back");
        let canon = spec.canonical_json();
        prop_assert_eq!(&parsed, &spec);
        prop_assert_eq!(parsed.canonical_json(), canon.clone());
        let from_canon: QuerySpec = serde_json::from_slice(&canon).expect("canonical JSON parses");
        prop_assert_eq!(from_canon.canonical_json(), canon.clone(), "canonical form is a fixed point");
        prop_assert_eq!(from_canon.hash(), spec.hash());
        // Canonical: compact, keys sorted at every level.
        let v: serde_json::Value = serde_json::from_slice(&canon).expect("JSON");
        prop_assert_eq!(serde_json::to_vec(&v).expect("json"), canon);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signed_manifests_round_trip(m in manifest(), seed in any::<[u8; 32]>()) {
        signed_round_trip(Context::ConsentManifest, &m, seed);
    }

    #[test]
    fn signed_withdrawals_round_trip(w in withdrawal(), seed in any::<[u8; 32]>()) {
        signed_round_trip(Context::Withdrawal, &w, seed);
    }

    #[test]
    fn signed_receipts_round_trip(r in receipt(), seed in any::<[u8; 32]>()) {
        signed_round_trip(Context::Receipt, &r, seed);
    }

    #[test]
    fn signed_approvals_round_trip(a in approval(), seed in any::<[u8; 32]>()) {
        signed_round_trip(Context::QueryApproval, &a, seed);
    }

    #[test]
    fn signed_studies_round_trip(s in study(), seed in any::<[u8; 32]>()) {
        signed_round_trip(Context::StudyDefinition, &s, seed);
    }

    #[test]
    fn signatures_never_cross_contexts(payload in vec(any::<u8>(), 0..256), seed in any::<[u8; 32]>()) {
        let k = key(seed);
        for a in Context::ALL {
            let obj = SignedObject {
                context: a.label().to_string(),
                payload: payload.clone(),
                public_key: k.public_key(),
                signature: k.sign(a, &payload).to_vec(),
            };
            prop_assert!(obj.verify(a).is_ok());
            for b in Context::ALL {
                if a == b {
                    continue;
                }
                prop_assert_eq!(
                    k.public_key().verify(b, &payload, &obj.signature),
                    Err(SignatureError::BadSignature)
                );
                let is_wrong_context = matches!(obj.verify(b), Err(SignatureError::WrongContext { .. }));
                prop_assert!(is_wrong_context);
                let mut relabelled = obj.clone();
                relabelled.context = b.label().to_string();
                prop_assert_eq!(relabelled.verify(b), Err(SignatureError::BadSignature));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tamper evidence: every single-byte change.

struct Fixtures {
    manifest: ConsentManifest,
    manifest_wire: Vec<u8>,
    study: StudyDefinition,
    study_wire: Vec<u8>,
    hpke_key: HpkePrivateKey,
    envelope: Vec<u8>,
    note: Vec<u8>,
    verifier: NoteVerifier,
    ipc: Vec<u8>,
}

fn fixtures() -> &'static Fixtures {
    static F: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let donor = key([7; 32]);
        let study = example_study();
        let manifest = ConsentManifest {
            format: 1,
            record_id: [1; 16],
            study_id: study.id.clone(),
            study_version: 1,
            study_sha256: [2; 32],
            controller: study.controller.clone(),
            purposes: vec!["t2d-epidemiology".into()],
            legal_basis: "gdpr-art-9-2-a".into(),
            data_categories: study.fields.iter().map(|f| f.name.clone()).collect(),
            given_at: 1_735_686_000,
            expires_at: 1_767_222_000,
            withdrawal_method: "datadonor withdraw".into(),
            notice_sha256: study.notice_sha256,
            donor_public_key: donor.public_key(),
            pseudonym: Pseudonym([3; 32]),
        };
        let manifest_wire = manifest.sign(&donor).to_bytes();
        let steward = key([8; 32]);
        let study_wire = SignedObject::sign(Context::StudyDefinition, &study, &steward).to_bytes();
        let hpke_key = HpkePrivateKey::from_bytes(&[9; 32]).expect("key");
        let payload = DonationPayload {
            idempotency_key: [4; 16],
            manifest: manifest_wire.clone(),
            rows: vec![5; 64],
        };
        let envelope = payload.seal(1, &hpke_key.public_key()).expect("seal");
        let ledger = key([10; 32]);
        let cp = Checkpoint::new("datadonor.example/ledger", 42, Hash([6; 32])).expect("cp");
        let note = checkpoint::sign(&cp, "datadonor.example/ledger", ledger.key_pair())
            .expect("sign")
            .into_bytes();
        let verifier =
            NoteVerifier::new("datadonor.example/ledger", ledger.public_key().0).expect("verifier");
        let ipc = {
            use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
            use std::sync::Arc;
            let s = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; 2])) };
            let f = || -> ArrayRef { Arc::new(Float64Array::from(vec![Some(6.0), None])) };
            let cols: Vec<ArrayRef> = vec![
                s(&"a".repeat(64)),
                s("2024-01"),
                s("30-39"),
                s("male"),
                s("sjaelland"),
                Arc::new(BooleanArray::from(vec![true, false])),
                f(),
                Arc::new(Float64Array::from(vec![Some(25.0), Some(26.0)])),
                f(),
                f(),
                f(),
            ];
            let batch = RecordBatch::try_new(study.arrow_schema(), cols).expect("batch");
            datadonor_schemas::study::rows_to_ipc(&batch).expect("ipc")
        };
        Fixtures {
            manifest,
            manifest_wire,
            study,
            study_wire,
            hpke_key,
            envelope,
            note,
            verifier,
            ipc,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A changed byte in the JSON wrapper is rejected, or (the wrapper is not signed, only its
    /// payload) decodes to the identical verified body, payload and signer.
    #[test]
    fn single_byte_changes_to_a_signed_manifest(at in any::<Index>(), mask in 1u8..) {
        let f = fixtures();
        let m = flip(&f.manifest_wire, at, mask);
        let r = SignedObject::from_bytes(&m)
            .and_then(|o| o.open::<ConsentManifest>(Context::ConsentManifest, "manifest"));
        if let Ok(s) = r {
            let original = SignedObject::from_bytes(&f.manifest_wire).expect("original");
            prop_assert_eq!(&s.body, &f.manifest);
            prop_assert_eq!(&s.object.payload, &original.payload);
            prop_assert_eq!(s.signer, original.public_key);
        }
    }

    #[test]
    fn single_byte_changes_to_a_signed_study(at in any::<Index>(), mask in 1u8..) {
        let f = fixtures();
        let m = flip(&f.study_wire, at, mask);
        let r = SignedObject::from_bytes(&m)
            .and_then(|o| o.open::<StudyDefinition>(Context::StudyDefinition, "study"));
        if let Ok(s) = r {
            prop_assert_eq!(&s.body, &f.study);
        }
    }

    #[test]
    fn single_byte_changes_to_an_envelope_are_rejected(at in any::<Index>(), mask in 1u8..) {
        let f = fixtures();
        let m = flip(&f.envelope, at, mask);
        // The key is looked up by key id; opening with the one key is what a lookup that
        // (wrongly) ignored the id would do, so this is the harder case.
        let r = Envelope::parse(&m).and_then(|e| e.open(&f.hpke_key));
        prop_assert!(r.is_err());
    }

    #[test]
    fn single_byte_changes_to_a_checkpoint_are_rejected(at in any::<Index>(), mask in 1u8..) {
        let f = fixtures();
        let m = flip(&f.note, at, mask);
        prop_assert!(checkpoint::open(&m, std::slice::from_ref(&f.verifier)).is_err());
    }

    #[test]
    fn truncated_envelopes_and_checkpoints_are_rejected(at in any::<Index>()) {
        let f = fixtures();
        let e = &f.envelope[..at.index(f.envelope.len())];
        prop_assert!(Envelope::parse(e).and_then(|e| e.open(&f.hpke_key)).is_err());
        let n = &f.note[..at.index(f.note.len())];
        prop_assert!(checkpoint::open(n, std::slice::from_ref(&f.verifier)).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders never panic.

fn no_panic_on(bytes: &[u8]) {
    let _ = SignedObject::from_bytes(bytes);
    if let Ok(e) = Envelope::parse(bytes) {
        let _ = e.open(&fixtures().hpke_key);
    }
    let _ = DonationPayload::decode(bytes);
    let _ = BatchHeader::parse(bytes);
    let _ = LedgerEntry::from_bytes(bytes);
    let _ = StudyDefinition::from_json(bytes);
    let _ = checkpoint::open(bytes, std::slice::from_ref(&fixtures().verifier));
    if let Ok(b) = rows_from_ipc(bytes, 1000) {
        let _ = fixtures().study.validate_rows(&b, None);
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = QuerySpec::from_toml(&text);
    let _ = StudyDefinition::from_toml(&text);
    let _ = Cpr::parse(&text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        no_panic_on(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_text(s in any::<String>()) {
        no_panic_on(s.as_bytes());
        let _ = Cpr::parse(&s);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_inputs(
        which in 0usize..6,
        edits in vec((any::<Index>(), any::<u8>()), 1..8),
        cut in any::<Index>(),
    ) {
        let f = fixtures();
        let base: Vec<u8> = match which {
            0 => f.manifest_wire.clone(),
            1 => f.envelope.clone(),
            2 => f.note.clone(),
            3 => f.ipc.clone(),
            4 => STUDY_TOML.as_bytes().to_vec(),
            _ => QUERY_TOML.as_bytes().to_vec(),
        };
        let mut m = base;
        for (at, b) in edits {
            let i = at.index(m.len());
            m[i] = b;
        }
        no_panic_on(&m);
        no_panic_on(&m[..cut.index(m.len() + 1)]);
    }

    #[test]
    fn cpr_parse_accepts_only_normalisable_numbers(s in "[ \t]{0,2}[0-9]{6}-?[0-9]{4}[ \t]{0,2}|.{0,14}") {
        if let Ok(c) = Cpr::parse(&s) {
            prop_assert_eq!(c.digits().len(), 10);
            prop_assert!(c.digits().bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(c.digits(), s.trim().replace('-', ""));
            prop_assert!(c.birth_date().is_some());
        }
    }
}

/// Age-band labels as the definition states them: the label of every age from `min_age` to
/// `top_age`, consecutive duplicates removed.
fn age_band_labels_by_age(years: u8, min_age: u8, top_age: u8) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for age in min_age..=top_age {
        if let Some(l) = datadonor_schemas::study::age_band_label(age, years, min_age, top_age) {
            if out.last() != Some(&l) {
                out.push(l);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn age_band_labels_are_the_labels_of_every_age(
        years in 0u8..=30,
        min_age in 0u8..=130,
        top_age in 0u8..=255,
    ) {
        prop_assert_eq!(
            datadonor_schemas::study::age_band_labels(years, min_age, top_age),
            age_band_labels_by_age(years, min_age, top_age)
        );
    }
}
