//! Signed checkpoints: round trips, interoperability vectors from
//! golang.org/x/mod/sumdb/note and the C2SP specs, tamper resistance, strict
//! parsing, and never panicking on arbitrary input.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datadonor_schemas::checkpoint::{
    key_hash, open, open_text, sign, sign_text, Checkpoint, CheckpointError, NoteVerifier,
    MAX_NOTE_SIZE, MAX_SIGNATURES,
};
use datadonor_schemas::merkle::{leaf_hash, Hash};
use proptest::prelude::*;
use ring::signature::Ed25519KeyPair;

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
}

fn sample_checkpoint() -> Checkpoint {
    Checkpoint::new("datadonor.example/log", 1_234_567, leaf_hash(b"root"))
        .unwrap()
        .with_extensions(vec!["ext one".to_owned(), "ext-two".to_owned()])
        .unwrap()
}

const ORIGIN: &str = "datadonor.example/log";

// ---------------------------------------------------------------------------
// Interoperability vectors.

/// golang.org/x/mod/sumdb/note, note.go package doc and note_test.go.
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                          then you don't know what your problem is.\n";
const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
    then you don't know what your problem is.\n\
    \n\
    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

/// c2sp.org/signed-note, "Verifier keys / Example".
const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const C2SP_NOTE: &str = "This is an example message.\n\
    \n\
    \u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

/// c2sp.org/tlog-checkpoint example (its key is not published).
const C2SP_CHECKPOINT: &str = "example.com/behind-the-sofa\n\
    20852163\n\
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
    \n\
    \u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

fn peter_key() -> Ed25519KeyPair {
    let encoded = PETER_SKEY.splitn(5, '+').nth(4).unwrap();
    let raw = STANDARD.decode(encoded).unwrap();
    assert_eq!(raw[0], 0x01);
    Ed25519KeyPair::from_seed_unchecked(&raw[1..]).unwrap()
}

#[test]
fn go_note_vector_opens_and_signs_byte_exactly() {
    let verifier = NoteVerifier::parse_vkey(PETER_VKEY).unwrap();
    assert_eq!(verifier.name(), "PeterNeumann");
    assert_eq!(verifier.key_hash(), [0xc7, 0x4f, 0x20, 0xa3]);
    assert_eq!(verifier.to_vkey(), PETER_VKEY);
    assert_eq!(
        key_hash("PeterNeumann", verifier.public_key()),
        verifier.key_hash()
    );

    let (text, sigs) = open_text(PETER_NOTE.as_bytes(), std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(text, PETER_TEXT);
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].name, "PeterNeumann");
    assert_eq!(sigs[0].key_hash, [0xc7, 0x4f, 0x20, 0xa3]);

    // The private key reproduces the Go output byte for byte (Ed25519 is deterministic).
    let key = peter_key();
    assert_eq!(
        NoteVerifier::from_key_pair("PeterNeumann", &key).unwrap(),
        verifier
    );
    assert_eq!(
        sign_text(PETER_TEXT, "PeterNeumann", &key).unwrap(),
        PETER_NOTE
    );

    // Not a checkpoint: `open` verifies the signature, then rejects the body.
    assert_eq!(
        open(PETER_NOTE.as_bytes(), &[verifier]),
        Err(CheckpointError::TooFewLines)
    );
}

#[test]
fn go_vkey_manglings_are_rejected() {
    // note_test.go TestNewVerifier: every proper substring and every byte + 1.
    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let s = std::str::from_utf8(&b[i..j]).unwrap();
            assert!(NoteVerifier::parse_vkey(s).is_err(), "accepted {s:?}");
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] = m[i].wrapping_add(1);
        if let Ok(s) = std::str::from_utf8(&m) {
            assert!(NoteVerifier::parse_vkey(s).is_err(), "accepted {s:?}");
        }
    }
    // Wrong key length and unknown algorithm, each with an adjusted key hash.
    assert!(NoteVerifier::parse_vkey(
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
    )
    .is_err());
    assert_eq!(
        NoteVerifier::parse_vkey(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        ),
        Err(CheckpointError::UnsupportedKeyType(0x65))
    );
    // Uppercase hex key ID is not canonical.
    assert!(NoteVerifier::parse_vkey(
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    )
    .is_err());
}

#[test]
fn c2sp_vectors() {
    let verifier = NoteVerifier::parse_vkey(C2SP_VKEY).unwrap();
    assert_eq!(verifier.to_vkey(), C2SP_VKEY);
    let (text, sigs) = open_text(C2SP_NOTE.as_bytes(), std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(text, "This is an example message.\n");
    assert_eq!(sigs[0].name, "example.com/foo");

    // The checkpoint example parses canonically; its key is unknown here.
    let body_end = C2SP_CHECKPOINT.find("\n\n").unwrap() + 1;
    let body = &C2SP_CHECKPOINT[..body_end];
    let cp = Checkpoint::parse_body(body).unwrap();
    assert_eq!(cp.origin, "example.com/behind-the-sofa");
    assert_eq!(cp.size, 20_852_163);
    assert!(cp.extensions.is_empty());
    assert_eq!(cp.to_body(), body);
    assert_eq!(
        open(C2SP_CHECKPOINT.as_bytes(), &[verifier]),
        Err(CheckpointError::UnverifiedNote)
    );
}

// ---------------------------------------------------------------------------
// Round trips and signature policy.

#[test]
fn sign_open_round_trip() {
    let key = key(7);
    let verifier = NoteVerifier::from_key_pair(ORIGIN, &key).unwrap();
    let vkey = verifier.to_vkey();
    assert_eq!(NoteVerifier::parse_vkey(&vkey).unwrap(), verifier);

    let cp = sample_checkpoint();
    let note = sign(&cp, ORIGIN, &key).unwrap();
    assert!(note.starts_with(&format!("{ORIGIN}\n1234567\n")));
    assert!(note.contains("\next one\next-two\n\n\u{2014} datadonor.example/log "));
    let opened = open(note.as_bytes(), std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(&opened.checkpoint, &cp);
    assert_eq!(opened.signatures.len(), 1);
    assert_eq!(opened.signatures[0].key_hash, verifier.key_hash());
    assert_eq!(opened.signatures[0].signature.len(), 64);
    assert!(opened.unverified_signatures.is_empty());
    assert_eq!(opened.to_note(), note);

    // Empty tree, no extensions.
    let empty = Checkpoint::new(ORIGIN, 0, datadonor_schemas::merkle::empty_root()).unwrap();
    let note = sign(&empty, ORIGIN, &key).unwrap();
    assert!(note.starts_with(&format!(
        "{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n"
    )));
    assert_eq!(
        open(note.as_bytes(), &[verifier]).unwrap().checkpoint,
        empty
    );
}

fn second_signature_line(cp: &Checkpoint, name: &str, seed: u8) -> String {
    let note = sign(cp, name, &key(seed)).unwrap();
    let start = note.rfind("\n\n").unwrap() + 2;
    note[start..].to_owned()
}

#[test]
fn signature_policy() {
    let cp = sample_checkpoint();
    let k1 = key(1);
    let v1 = NoteVerifier::from_key_pair(ORIGIN, &k1).unwrap();
    let v2 = NoteVerifier::from_key_pair("witness.example", &key(2)).unwrap();
    let note = sign(&cp, ORIGIN, &k1).unwrap();
    let witness_line = second_signature_line(&cp, "witness.example", 2);

    // No known verifier, or a known name with another key ID: unverified.
    assert_eq!(
        open(note.as_bytes(), &[]),
        Err(CheckpointError::UnverifiedNote)
    );
    assert_eq!(
        open(note.as_bytes(), std::slice::from_ref(&v2)),
        Err(CheckpointError::UnverifiedNote)
    );
    let other_key_same_name = NoteVerifier::from_key_pair(ORIGIN, &key(3)).unwrap();
    assert_eq!(
        open(note.as_bytes(), &[other_key_same_name]),
        Err(CheckpointError::UnverifiedNote)
    );

    // Cosigned: both verify; with only one known, the other is kept unverified.
    let cosigned = format!("{note}{witness_line}");
    let both = open(cosigned.as_bytes(), &[v1.clone(), v2.clone()]).unwrap();
    assert_eq!(both.signatures.len(), 2);
    let one = open(cosigned.as_bytes(), std::slice::from_ref(&v1)).unwrap();
    assert_eq!(one.signatures.len(), 1);
    assert_eq!(one.unverified_signatures.len(), 1);
    assert_eq!(one.unverified_signatures[0].name, "witness.example");
    assert_eq!(one.to_note(), cosigned);

    // A bad signature by a known key rejects the note even if another verifies.
    let other_cp = Checkpoint::new(ORIGIN, 1, cp.root).unwrap();
    let wrong_line = second_signature_line(&other_cp, "witness.example", 2);
    let bad = format!("{note}{wrong_line}");
    assert!(matches!(
        open(bad.as_bytes(), &[v1.clone(), v2.clone()]),
        Err(CheckpointError::InvalidSignature { .. })
    ));
    // ...but is ignored when that key is unknown.
    assert!(open(bad.as_bytes(), std::slice::from_ref(&v1)).is_ok());

    // Duplicate signatures by a known key.
    let line1 = second_signature_line(&cp, ORIGIN, 1);
    let dup = format!("{note}{line1}");
    assert!(matches!(
        open(dup.as_bytes(), std::slice::from_ref(&v1)),
        Err(CheckpointError::DuplicateSignature { .. })
    ));

    // Signature count limit: 100 lines pass, 101 fail.
    let unknown = second_signature_line(&cp, "unknown.example", 9);
    let mut many = note.clone();
    for _ in 1..MAX_SIGNATURES {
        many.push_str(&unknown);
    }
    let opened = open(many.as_bytes(), std::slice::from_ref(&v1)).unwrap();
    assert_eq!(opened.unverified_signatures.len(), 1);
    many.push_str(&unknown);
    assert_eq!(
        open(many.as_bytes(), std::slice::from_ref(&v1)),
        Err(CheckpointError::TooManySignatures {
            max: MAX_SIGNATURES
        })
    );
}

#[test]
fn malformed_notes_are_rejected() {
    let cp = sample_checkpoint();
    let k = key(1);
    let v = [NoteVerifier::from_key_pair(ORIGIN, &k).unwrap()];
    let note = sign(&cp, ORIGIN, &k).unwrap();
    let split = note.rfind("\n\n").unwrap();

    let cases: Vec<(Vec<u8>, CheckpointError)> = vec![
        (Vec::new(), CheckpointError::MissingSignatureBlock),
        (
            note.trim_end_matches('\n').as_bytes().to_vec(),
            CheckpointError::MalformedSignatureBlock,
        ),
        (
            format!("{}\n", &note[..split + 1]).into_bytes(),
            CheckpointError::MalformedSignatureBlock,
        ),
        (
            note.replacen("\n\n", "\n", 1).into_bytes(),
            CheckpointError::MissingSignatureBlock,
        ),
        (
            note.replace('\u{2014}', "-").into_bytes(),
            CheckpointError::MalformedSignatureLine { line: 1 },
        ),
        (
            note.replace("ext one", "ext\tone").into_bytes(),
            CheckpointError::ForbiddenCharacter,
        ),
        (
            note.replace('\n', "\r\n").into_bytes(),
            CheckpointError::ForbiddenCharacter,
        ),
        (
            [note.as_bytes(), &[0xffu8][..]].concat(),
            CheckpointError::NotUtf8,
        ),
        (
            format!("{note}\u{2014} x AAAA\n").into_bytes(),
            CheckpointError::MalformedSignatureLine { line: 2 },
        ),
        (
            format!("{note}\u{2014} a+b AAAAAAA=\n").into_bytes(),
            CheckpointError::InvalidKeyName,
        ),
        (
            format!("{note}\u{2014} x\n").into_bytes(),
            CheckpointError::MalformedSignatureLine { line: 2 },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            open(&input, &v),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(&input)
        );
    }

    // Size limit.
    let mut big = note.clone().into_bytes();
    big.resize(MAX_NOTE_SIZE + 1, b'a');
    assert!(matches!(
        open(&big, &v),
        Err(CheckpointError::NoteTooLarge { .. })
    ));
    let huge_ext = "x".repeat(MAX_NOTE_SIZE);
    let huge = cp.clone().with_extensions(vec![huge_ext]).unwrap();
    assert!(matches!(
        sign(&huge, ORIGIN, &k),
        Err(CheckpointError::NoteTooLarge { .. })
    ));

    // Invalid signer key names.
    for name in ["", "a b", "a+b", "a\u{a0}b", "a\nb", "a\u{2003}b"] {
        assert_eq!(
            sign(&cp, name, &k),
            Err(CheckpointError::InvalidKeyName),
            "{name:?}"
        );
        assert!(NoteVerifier::new(name, [0; 32]).is_err());
    }
}

#[test]
fn strict_body_parsing() {
    let root = STANDARD.encode(leaf_hash(b"x").0);
    let ok = |body: &str| Checkpoint::parse_body(body);
    assert!(ok(&format!("o\n0\n{root}\n")).is_ok());
    assert!(ok(&format!("o p\n18446744073709551615\n{root}\nextension\n")).is_ok());

    let bad: Vec<(String, CheckpointError)> = vec![
        (
            format!("o\n0\n{root}"),
            CheckpointError::MissingTrailingNewline,
        ),
        ("o\n0\n".to_owned(), CheckpointError::TooFewLines),
        (String::new(), CheckpointError::MissingTrailingNewline),
        (format!("\n0\n{root}\n"), CheckpointError::EmptyOrigin),
        (
            format!("o\x7f\n0\n{root}\n"),
            CheckpointError::ForbiddenCharacter,
        ),
        (
            format!("o\r\n0\n{root}\n"),
            CheckpointError::ForbiddenCharacter,
        ),
        (format!("o\n00\n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n01\n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n+1\n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n-1\n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n 1\n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n1 \n{root}\n"), CheckpointError::InvalidTreeSize),
        (format!("o\n\n{root}\n"), CheckpointError::InvalidTreeSize),
        (
            format!("o\n0x1\n{root}\n"),
            CheckpointError::InvalidTreeSize,
        ),
        (
            format!("o\n\u{661}\n{root}\n"),
            CheckpointError::InvalidTreeSize,
        ),
        (
            format!("o\n18446744073709551616\n{root}\n"),
            CheckpointError::InvalidTreeSize,
        ),
        ("o\n1\n\n".to_owned(), CheckpointError::InvalidRootHash),
        (
            format!("o\n1\n{}\n", STANDARD.encode([0u8; 31])),
            CheckpointError::InvalidRootHash,
        ),
        (
            format!("o\n1\n{}\n", STANDARD.encode([0u8; 33])),
            CheckpointError::InvalidRootHash,
        ),
        (
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            CheckpointError::InvalidRootHash,
        ),
        (
            // Non-canonical trailing bits: ...B= instead of ...A=.
            format!("o\n1\n{}B=\n", "A".repeat(42)),
            CheckpointError::InvalidRootHash,
        ),
        (format!("o\n1\n {root}\n"), CheckpointError::InvalidRootHash),
        (
            format!("o\n1\n{root}\n\n"),
            CheckpointError::EmptyExtensionLine,
        ),
        (
            format!("o\n1\n{root}\next\n\nmore\n"),
            CheckpointError::EmptyExtensionLine,
        ),
        (
            format!("o\n1\n{root}\next\u{85}\n"),
            CheckpointError::ForbiddenCharacter,
        ),
    ];
    for (body, want) in bad {
        assert_eq!(ok(&body), Err(want), "{body:?}");
    }

    assert_eq!(
        Checkpoint::new("", 0, Hash([0; 32])),
        Err(CheckpointError::EmptyOrigin)
    );
    assert_eq!(
        Checkpoint::new("a\nb", 0, Hash([0; 32])),
        Err(CheckpointError::ForbiddenCharacter)
    );
    let cp = Checkpoint::new("a", 0, Hash([0; 32])).unwrap();
    assert_eq!(
        cp.clone().with_extensions(vec![String::new()]),
        Err(CheckpointError::EmptyExtensionLine)
    );
    assert_eq!(
        cp.with_extensions(vec!["a\nb".to_owned()]),
        Err(CheckpointError::ForbiddenCharacter)
    );
}

/// Every single-byte modification of a signed, cosigned note is rejected,
/// unless it falls in the signature line of a key the verifier does not know
/// and leaves the known signature and the checkpoint intact.
#[test]
fn every_single_byte_modification_is_rejected() {
    let cp = sample_checkpoint();
    let k = key(1);
    let verifiers = [NoteVerifier::from_key_pair(ORIGIN, &k).unwrap()];
    let known_note = sign(&cp, ORIGIN, &k).unwrap();
    let unknown_line = second_signature_line(&cp, "witness.example", 2);
    let note = format!("{known_note}{unknown_line}");
    let unknown_range = known_note.len()..note.len() - 1; // excludes the final '\n'
    let original = open(note.as_bytes(), &verifiers).unwrap();
    let bytes = note.as_bytes();

    let mut accepted = 0usize;
    let mut tried = 0usize;
    for pos in 0..bytes.len() {
        for value in 0..=255u8 {
            if value == bytes[pos] {
                continue;
            }
            let mut m = bytes.to_vec();
            m[pos] = value;
            tried += 1;
            if let Ok(opened) = open(&m, &verifiers) {
                accepted += 1;
                assert!(
                    unknown_range.contains(&pos),
                    "modification at {pos} to {value:#04x} accepted"
                );
                assert_eq!(opened.checkpoint, original.checkpoint);
                assert_eq!(&opened.signatures, &original.signatures);
            }
        }
        // Deleting the byte is rejected too (unless in the unknown line).
        let mut d = bytes.to_vec();
        d.remove(pos);
        if let Ok(opened) = open(&d, &verifiers) {
            assert!(unknown_range.contains(&pos), "deletion at {pos} accepted");
            assert_eq!(opened.checkpoint, original.checkpoint);
        }
    }
    assert_eq!(tried, bytes.len() * 255);
    // Some modifications of the unknown line (e.g. in its key name) must pass.
    assert!(accepted > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn open_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let v = [NoteVerifier::from_key_pair(ORIGIN, &key(1)).unwrap()];
        let _ = open(&data, &v);
        let _ = open_text(&data, &v);
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = Checkpoint::parse_body(s);
            let _ = NoteVerifier::parse_vkey(s);
        }
    }

    #[test]
    fn open_never_panics_on_note_like_text(
        lines in proptest::collection::vec(
            prop_oneof![
                Just(String::new()),
                Just("\u{2014} ".to_owned()),
                "[a-z0-9./+ ]{0,20}",
                "\u{2014} [a-z.]{1,10} [A-Za-z0-9+/=]{0,100}",
                "[0-9]{1,25}",
                "[A-Za-z0-9+/]{43}=",
                any::<String>(),
            ],
            0..12,
        ),
        trailing in any::<bool>(),
    ) {
        let v = [NoteVerifier::from_key_pair(ORIGIN, &key(1)).unwrap()];
        let mut text = lines.join("\n");
        if trailing {
            text.push('\n');
        }
        let _ = open(text.as_bytes(), &v);
        let _ = Checkpoint::parse_body(&text);
    }

    #[test]
    fn open_never_panics_on_mutated_notes(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let cp = sample_checkpoint();
        let k = key(1);
        let v = [NoteVerifier::from_key_pair(ORIGIN, &k).unwrap()];
        let mut note = sign(&cp, ORIGIN, &k).unwrap().into_bytes();
        for (pos, byte, op) in edits {
            let at = pos % (note.len() + 1);
            match op {
                0 if at < note.len() => note[at] = byte,
                1 => note.insert(at, byte),
                _ if at < note.len() => { note.remove(at); }
                _ => {}
            }
        }
        if let Ok(opened) = open(&note, &v) {
            // Anything accepted must carry the signed content.
            prop_assert_eq!(&opened.checkpoint, &cp);
        }
    }

    #[test]
    fn random_checkpoints_round_trip(
        origin in "[a-z0-9.]{1,20}(/[a-z0-9 +]{1,10})?",
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        extensions in proptest::collection::vec("[ -~]{1,30}", 0..3),
        seed in any::<u8>(),
    ) {
        let cp = Checkpoint::new(origin.clone(), size, Hash(root))
            .unwrap()
            .with_extensions(extensions)
            .unwrap();
        let body = cp.to_body();
        prop_assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp.clone());
        let k = key(seed);
        let name = "signer.example";
        let note = sign(&cp, name, &k).unwrap();
        let v = [NoteVerifier::from_key_pair(name, &k).unwrap()];
        let opened = open(note.as_bytes(), &v).unwrap();
        prop_assert_eq!(&opened.checkpoint, &cp);
        prop_assert_eq!(opened.to_note(), note);
    }
}
