//! What the intake's disk holds: no plaintext health data or identifiers, and nothing its own
//! keys can open. Only the vault private key (in `vault-private/`, which the intake never reads;
//! read here by the test alone) unwraps a batch's data key.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use arrow::array::{Array, Float64Array, StringArray};
use base64::Engine as _;
use common::{all_files, batch_files, Env};
use datadonor_intake::keys::VaultPrivateKeyFile;
use datadonor_schemas::batch::{chunk_nonce, BatchHeader, CHUNK_SIZE, TAG_LEN, WRAP_INFO};
use datadonor_schemas::envelope::{hpke_open, HpkePrivateKey};
use http::StatusCode;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_intakes_disk_holds_no_plaintext() {
    let mut env = Env::new();
    let mut health: Vec<Vec<u8>> = Vec::new();
    let mut pseudonyms: Vec<Vec<u8>> = Vec::new();
    for _ in 0..3 {
        let mut b = env.builder();
        b.n_rows = 5;
        let d = b.build().unwrap();
        assert_eq!(env.donate(d.envelope.clone()).await.0, StatusCode::OK);
        pseudonyms.push(d.manifest.pseudonym.to_hex().into_bytes());
        pseudonyms.push(d.manifest.pseudonym.0.to_vec());
        let rows = &d.rows;
        for (i, field) in rows.schema().fields().iter().enumerate().skip(1) {
            let col = rows.column(i);
            if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                for v in a.iter().flatten() {
                    health.push(format!("{v}").into_bytes());
                    health.push(v.to_le_bytes().to_vec());
                    health.push(v.to_be_bytes().to_vec());
                }
            } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                for j in 0..a.len() {
                    let s = a.value(j);
                    assert!(
                        s.len() >= 5,
                        "needle {s:?} of {} too short to be meaningful",
                        field.name()
                    );
                    health.push(s.as_bytes().to_vec());
                }
            }
        }
    }
    // Flush and release everything.
    env.stop();
    assert!(!batch_files(env.path()).is_empty());
    health.sort();
    health.dedup();
    for f in all_files(env.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for n in &health {
            assert!(
                !contains(&bytes, n),
                "{} contains the health value {:?}",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
        // The ledger holds pseudonyms by design, and so does its index (derived from it, nothing
        // else); no other file may.
        if !f.ends_with("ledger/ledger.log") && !f.ends_with("ledger/index.redb") {
            for n in &pseudonyms {
                assert!(!contains(&bytes, n), "{} contains a pseudonym", f.display());
            }
        }
    }
}

fn private_keys_in_data_dir(env: &Env) -> Vec<(String, HpkePrivateKey)> {
    let mut out = Vec::new();
    for f in all_files(env.path()) {
        if f.starts_with(env.path().join("vault-private")) {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        // Any 32-byte file, and the hex/base64 forms, as an X25519 key.
        let mut candidates = vec![bytes.clone()];
        if let Ok(s) = std::str::from_utf8(&bytes) {
            if let Ok(h) = hex::decode(s.trim()) {
                candidates.push(h);
            }
            if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s.trim()) {
                candidates.push(b);
            }
        }
        for c in candidates {
            if c.len() == 32 {
                if let Ok(k) = HpkePrivateKey::from_bytes(&c) {
                    out.push((f.display().to_string(), k));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_intakes_keys_cannot_open_a_batch() {
    let mut env = Env::new();
    let d = env.builder().build().unwrap();
    assert_eq!(env.donate(d.envelope).await.0, StatusCode::OK);
    env.stop();
    let file = batch_files(env.path()).pop().unwrap();
    let sealed = std::fs::read(&file).unwrap();
    let (header, hlen) = BatchHeader::parse(&sealed).unwrap();
    let aad = header.wrap_aad();

    let keys = private_keys_in_data_dir(&env);
    let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["transport-1.key", "ledger.key", "steward.key"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} not tried: {names:?}"
        );
    }
    for (name, k) in &keys {
        assert!(
            hpke_open(k, &header.enc, WRAP_INFO, &aad, &header.wrapped_key).is_err(),
            "{name} unwrapped a batch key"
        );
    }

    // The vault key does.
    let vf: VaultPrivateKeyFile =
        serde_json::from_slice(&std::fs::read(env.path().join("vault-private/vault.key")).unwrap())
            .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&vf.private_key)
        .unwrap();
    let vault = HpkePrivateKey::from_bytes(&raw).unwrap();
    let data_key = hpke_open(&vault, &header.enc, WRAP_INFO, &aad, &header.wrapped_key).unwrap();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key));
    let body = &sealed[hlen..];
    let chunk_aad = header.chunk_aad();
    let mut plain = Vec::new();
    let chunks: Vec<&[u8]> = body.chunks(CHUNK_SIZE + TAG_LEN).collect();
    for (i, c) in chunks.iter().enumerate() {
        let nonce = chunk_nonce(i as u64, i + 1 == chunks.len());
        plain.extend(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: c,
                        aad: &chunk_aad,
                    },
                )
                .unwrap(),
        );
    }
    assert_eq!(&plain[..4], b"PAR1", "a Parquet file");
    assert_eq!(&plain[plain.len() - 4..], b"PAR1");
    // Truncating the last chunk is detected.
    let last = chunks.len() - 1;
    let nonce = chunk_nonce(last as u64, false);
    assert!(cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: chunks[last],
                aad: &chunk_aad
            }
        )
        .is_err());
}
