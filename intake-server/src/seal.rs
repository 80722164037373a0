//! Sealing a commit group's rows into a batch file (format: `datadonor_schemas::batch`).
//!
//! 1. The rows (Arrow record batches of one study) are written as one Parquet file, ZSTD
//!    compressed, into memory ([`rows_to_parquet`]).
//! 2. A fresh random AES-256 data key is drawn, wrapped with HPKE to the vault public key
//!    (`info = WRAP_INFO`, `aad = header bytes before enc`), and the Parquet bytes are sealed
//!    in 64 KiB STREAM chunks under it ([`seal_batch`]). The data key and the Parquet plaintext
//!    are zeroized as soon as the batch is sealed.
//!
//! **Architecture invariant:** this crate contains no code that opens a batch. Only the vault
//! key (held by the steward and `analytics`) unwraps a data key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datadonor_schemas::batch::{chunk_nonce, BatchHeader, CHUNK_SIZE, WRAPPED_KEY_LEN, WRAP_INFO};
use datadonor_schemas::envelope::{hpke_seal, HpkePublicKey};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Errors sealing a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Parquet encoding.
    #[error("parquet: {0}")]
    Parquet(String),
    /// Wrapping the data key.
    #[error("wrapping the data key to the vault key failed")]
    Wrap,
    /// AEAD.
    #[error("chunk encryption failed")]
    Aead,
    /// The study id does not fit the header.
    #[error("study id length out of range")]
    StudyId,
}

/// Write record batches (one schema) as a ZSTD-compressed Parquet file in memory.
pub fn rows_to_parquet(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
        .map_err(|e| SealError::Parquet(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| SealError::Parquet(e.to_string()))?;
    }
    let out = w
        .into_inner()
        .map_err(|e| SealError::Parquet(e.to_string()))?;
    Ok(Zeroizing::new(out))
}

/// The public key a batch is sealed to.
#[derive(Debug, Clone, Copy)]
pub struct VaultKey {
    /// Vault key id written into the header.
    pub key_id: u32,
    /// The public key.
    pub public_key: HpkePublicKey,
}

/// Seal `plaintext` (a Parquet file) as a batch of `study_id`.
pub fn seal_batch(
    study_id: &str,
    batch_id: [u8; 16],
    created_at: i64,
    vault: &VaultKey,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    if !(3..=64).contains(&study_id.len()) {
        return Err(SealError::StudyId);
    }
    let mut header = BatchHeader {
        batch_id,
        study_id: study_id.to_string(),
        created_at,
        vault_key_id: vault.key_id,
        enc: [0u8; 32],
        wrapped_key: [0u8; WRAPPED_KEY_LEN],
    };
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(data_key.as_mut());
    let (enc, wrapped) = hpke_seal(
        &vault.public_key,
        WRAP_INFO,
        &header.wrap_aad(),
        data_key.as_ref(),
    )
    .map_err(|_| SealError::Wrap)?;
    header.enc = enc;
    header.wrapped_key = wrapped.try_into().map_err(|_| SealError::Wrap)?;
    let aad = header.chunk_aad();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key.as_ref()));
    drop(data_key);

    let mut out = header.encode();
    out.reserve(plaintext.len() + (plaintext.len() / CHUNK_SIZE + 1) * 16);
    let n_chunks = plaintext.len().div_ceil(CHUNK_SIZE).max(1);
    for i in 0..n_chunks {
        let start = i * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(plaintext.len());
        let chunk = plaintext.get(start..end).unwrap_or_default();
        let last = i + 1 == n_chunks;
        let nonce = chunk_nonce(i as u64, last);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: chunk,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Aead)?;
        out.extend_from_slice(&ct);
    }
    Ok(out)
}
