//! Witness cosignatures (`schemas::cosignature`) against published data.
//!
//! The files are the reference implementations' own tests, copied unchanged into
//! `testdata/vectors/tlog-witness/` (sources in `testdata/SOURCES.md`); this test reads the
//! literals out of them:
//!
//! * `transparency-dev-formats-note_cosigv1_test.go` (transparency-dev/formats `note/`): a deployed
//!   witness's `cosignature/v1` verifier key (type 0x04), whose key ID this crate must recompute,
//!   an Ed25519 note vkey (type 0x01) that is not a witness key, and a published cosignature whose
//!   timestamp must decode to the value the test states;
//! * `transparency-dev-witness-witness_test.go` (transparency-dev/witness): a log key, two signed
//!   checkpoints of sizes 5 and 8 and the consistency proof between them, and a witness's
//!   private key, which must open, verify and make an `add-checkpoint` request that parses back.

use std::path::{Path, PathBuf};

use datadonor_schemas::checkpoint::{self, CheckpointError, NoteVerifier};
use datadonor_schemas::cosignature::{
    cosignature_key_hash, verify_quorum, AddCheckpointRequest, Cosignature, CosignatureError,
    WitnessKey, WitnessSigner,
};
use datadonor_schemas::merkle::{self, Hash};
use datadonor_schemas::signing::SigningKey;

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// Reads `vectors/<rel>` and checks it against `testdata/SHA256SUMS`.
fn read_vector(rel: &str) -> String {
    let dir = testdata_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("testdata/SHA256SUMS");
    let listed = format!("vectors/{rel}");
    let want = sums
        .lines()
        .filter_map(|l| l.split_once("  "))
        .find(|(_, p)| *p == listed)
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| panic!("{listed} is not in SHA256SUMS"));
    let path = dir.join(&listed);
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
    assert_eq!(
        hex::encode(datadonor_schemas::sha256(&bytes)),
        want,
        "{listed}"
    );
    String::from_utf8(bytes).expect("UTF-8")
}

/// The Go string literal that starts at the first `"` at or after `from` (escapes `\n`, `\\`,
/// `\"` only, which is all these files use).
fn go_string_at(src: &str, from: usize) -> String {
    let start = from + src[from..].find('"').expect("a string literal") + 1;
    let mut out = String::new();
    let mut chars = src[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return out,
            '\\' => match chars.next().expect("escape") {
                'n' => out.push('\n'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                other => panic!("unexpected escape \\{other}"),
            },
            c => out.push(c),
        }
    }
    panic!("unterminated string literal")
}

/// The literal assigned to `ident` (`ident<spaces>= "…"` or `= []byte("…")`).
fn go_var(src: &str, ident: &str) -> String {
    let at = src
        .lines()
        .scan(0usize, |off, l| {
            let here = *off;
            *off += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| {
            let t = l.trim_start();
            t.strip_prefix(ident)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|(o, _)| o)
        .unwrap_or_else(|| panic!("no assignment to {ident}"));
    go_string_at(src, at)
}

/// The first string literal after the first `marker` at or after `from`.
fn string_after(src: &str, from: usize, marker: &str) -> String {
    let at = from + pos(&src[from..], marker) + marker.len();
    go_string_at(src, at)
}

fn pos(src: &str, needle: &str) -> usize {
    src.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"))
}

#[test]
fn formats_cosignature_v1_vectors() {
    let src = read_vector("tlog-witness/transparency-dev-formats-note_cosigv1_test.go");

    // A deployed witness's cosignature/v1 vkey: the key ID is SHA-256(name || 0x0A || 0x04 || key)[:4].
    let remora = string_after(
        &src,
        pos(&src, "native algEd25519CosignatureV1 verifier"),
        "pubK:",
    );
    assert!(remora.starts_with("remora.n621.de+da77ade7+"), "{remora}");
    let key = WitnessKey::parse_vkey(&remora).expect("published witness vkey");
    assert_eq!(key.name(), "remora.n621.de");
    assert_eq!(hex::encode(key.key_hash()), "da77ade7");
    assert_eq!(
        cosignature_key_hash("remora.n621.de", key.public_key()),
        [0xda, 0x77, 0xad, 0xe7]
    );
    assert_eq!(key.to_vkey(), remora, "vkey re-encodes byte for byte");
    // The same key is not a log (type 0x01) key.
    assert_eq!(
        NoteVerifier::parse_vkey(&remora),
        Err(CheckpointError::UnsupportedKeyType(0x04))
    );

    // An Ed25519 note key (type 0x01) is not a witness key.
    let note_key = string_after(&src, pos(&src, "works: convert from algEd25519"), "pubK:");
    assert!(note_key.starts_with("TEST+7997405c+"), "{note_key}");
    assert_eq!(
        WitnessKey::parse_vkey(&note_key),
        Err(CosignatureError::UnsupportedKeyType(0x01))
    );
    // Their malformed vkeys are malformed here too.
    for (label, want) in [
        (
            "wrong number of parts",
            CosignatureError::MalformedVerifierKey,
        ),
        ("invalid base64", CosignatureError::MalformedVerifierKey),
        ("invalid algo", CosignatureError::UnsupportedKeyType(0x03)),
    ] {
        let at = pos(&src, &format!("name:    \"{label}\""));
        let vkey = string_after(&src, at, "pubK:");
        assert_eq!(WitnessKey::parse_vkey(&vkey), Err(want), "{label}: {vkey}");
    }

    // A published cosignature: key ID || u64 BE timestamp || signature, time 1727964367.
    let t = pos(&src, "func TestCoSigV1Timestamp");
    let works = go_string_at(&src, t + src[t..].find("Base64:").expect("Base64"));
    let unix = t + src[t..].find("time.Unix(").expect("time.Unix") + "time.Unix(".len();
    let want_time: u64 = src[unix..]
        .split(',')
        .next()
        .expect("seconds")
        .parse()
        .expect("decimal");
    assert_eq!(want_time, 1_727_964_367);
    let c = Cosignature::parse_line(&format!("\u{2014} w.example {works}")).expect("cosignature");
    assert_eq!(c.timestamp, want_time);
    assert_eq!(
        c.to_line(),
        format!("\u{2014} w.example {works}\n"),
        "re-encodes byte for byte"
    );
    // Their "wrong type of signature" (a 68-byte note signature) is not a cosignature.
    let wrong_at = t + src[t..].find("wrong type of signature").expect("case");
    let wrong = go_string_at(
        &src,
        wrong_at + src[wrong_at..].find("Base64:").expect("Base64"),
    );
    assert_eq!(
        Cosignature::parse_line(&format!("\u{2014} w.example {wrong}")),
        Err(CosignatureError::WrongLength {
            name: "w.example".into(),
            len: 68
        })
    );
}

#[test]
fn witness_reference_checkpoints() {
    let src = read_vector("tlog-witness/transparency-dev-witness-witness_test.go");
    let log = NoteVerifier::parse_vkey(&go_var(&src, "mPK")).expect("log vkey");
    let init = go_var(&src, "mInit");
    let next = go_var(&src, "mNext");
    let old = checkpoint::open(init.as_bytes(), std::slice::from_ref(&log)).expect("mInit");
    let new = checkpoint::open(next.as_bytes(), std::slice::from_ref(&log)).expect("mNext");
    assert_eq!((old.checkpoint.size, new.checkpoint.size), (5, 8));
    let block = &src[pos(&src, "consProof = [][]byte{")..];
    let block = &block[..pos(block, "}")];
    let proof: Vec<Hash> = block
        .match_indices("dh(")
        .map(|(i, _)| {
            Hash::from_slice(&hex::decode(go_string_at(block, i)).expect("hex")).expect("32")
        })
        .collect();
    assert_eq!(proof.len(), 4);
    merkle::verify_consistency(5, 8, &proof, &old.checkpoint.root.0, &new.checkpoint.root.0)
        .expect("the published proof is consistent");

    // The add-checkpoint request for it parses back to the same values.
    let req = AddCheckpointRequest {
        old_size: 5,
        proof: proof.clone(),
        note: next.clone().into_bytes(),
    };
    assert_eq!(AddCheckpointRequest::parse(&req.to_bytes()), Ok(req));

    // Their witness's private key (a note key, type 0x01, key ID f13a86db): cosignatures by it
    // carry the type-0x04 key ID of the same name and key.
    let sk = go_var(&src, "wSK");
    let b64 = sk.rsplit('+').next().expect("key");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    assert_eq!(raw[0], 0x01);
    let seed: [u8; 32] = raw[1..].try_into().expect("32-byte seed");
    let key = SigningKey::from_seed(&seed).expect("seed");
    let pk = key.public_key().0;
    assert_eq!(
        hex::encode(checkpoint::key_hash("witness", &pk)),
        "f13a86db"
    );
    let signer = WitnessSigner::new("witness", key).expect("signer");
    assert_ne!(signer.public().key_hash(), [0xf1, 0x3a, 0x86, 0xdb]);
    let body = new.checkpoint.to_body();
    let line = signer
        .cosign(&body, 1_700_000_000)
        .expect("cosign")
        .to_line();
    let cosigned = format!("{next}{line}");
    let (cp, found) = verify_quorum(
        cosigned.as_bytes(),
        &log,
        std::slice::from_ref(signer.public()),
        1,
        1_700_000_000,
    )
    .expect("quorum of one");
    assert_eq!((cp.size, found.len()), (8, 1));
}
