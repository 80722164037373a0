//! Sealing a commit group's rows into a batch file (format: `datadonor_schemas::batch`).
//!
//! 1. The rows (Arrow record batches of one study) are written as one Parquet file, ZSTD
//!    compressed, into memory ([`rows_to_parquet`]).
//! 2. A fresh random AES-256 data key is drawn, wrapped with HPKE to the vault public key
//!    (`info = WRAP_INFO`, `aad = header bytes before enc`), and the Parquet bytes are sealed
//!    in 64 KiB STREAM chunks under it ([`seal_batch`], through the protocol crate's
//!    `batch::seal`). The data key and the Parquet plaintext are zeroized as soon as the batch is
//!    sealed.
//!
//! **Architecture invariant:** this crate contains no code that opens a batch. Only the vault
//! key (held by the steward and `analytics`) unwraps a data key.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datadonor_schemas::batch::{self, BatchHeader, WRAPPED_KEY_LEN};
use datadonor_schemas::envelope::HpkePublicKey;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
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

/// Seal `plaintext` (a Parquet file) as a batch of `study_id` (see [`batch::seal`]).
pub fn seal_batch(
    study_id: &str,
    batch_id: [u8; 16],
    created_at: i64,
    vault: &VaultKey,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let header = BatchHeader {
        batch_id,
        study_id: study_id.to_string(),
        created_at,
        vault_key_id: vault.key_id,
        enc: [0u8; 32],
        wrapped_key: [0u8; WRAPPED_KEY_LEN],
    };
    let (_, bytes) = batch::seal(header, &vault.public_key, plaintext).map_err(|e| match e {
        batch::SealError::StudyId => SealError::StudyId,
        batch::SealError::Wrap => SealError::Wrap,
        batch::SealError::Encrypt => SealError::Aead,
    })?;
    Ok(bytes)
}
