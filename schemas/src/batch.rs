//! The sealed batch file: header layout and the STREAM nonce construction.
//!
//! This module holds the format and the one sealing routine ([`seal`], used by the intake for new
//! batches and by analytics when compaction rewrites them). Opening lives in analytics alone, so
//! that the intake never links code that opens a batch.
//!
//! ```text
//! header (big-endian integers)
//!   0   8   magic "DDBATCH1"
//!   8   16  batch id (random)
//!   24  1   n = length of the study id (3..=64)
//!   25  n   study id (ASCII)
//!   ..  8   created_at (i64 Unix seconds)
//!   ..  4   vault key id (u32)
//!   ..  4   chunk size (u32, always 65536)
//!   ..  32  enc: HPKE encapsulated key of the data-key wrap
//!   ..  48  wrapped data key: HPKE (Datadonor suite) seal of the 32-byte AES-256 data key to the
//!           vault public key, info "datadonor/v1 batch key", aad = header bytes before `enc`
//! body: the Parquet file in chunks of 65536 plaintext bytes (the last may be shorter, and is
//!   empty only when the whole file is), each AES-256-GCM sealed under the data key with
//!   nonce = 11-byte big-endian chunk counter || 1-byte last-chunk flag (0x01 on the last chunk)
//!   aad   = SHA-256(header bytes)
//! ```
//!
//! The counter detects reordering and dropped chunks, the last-chunk flag detects truncation at a
//! chunk boundary, the header hash in every chunk's AAD binds header and body (a header moved onto
//! another batch's body fails on the first chunk), and the wrap's AAD binds the data key to the
//! batch id, study and time.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{CryptoRng, OsRng, RngCore};
use zeroize::Zeroizing;

use crate::envelope::{hpke_seal_with_rng, HpkePublicKey};
use crate::wire::{sha256, Reader, WireError};

/// File magic.
pub const BATCH_MAGIC: &[u8; 8] = b"DDBATCH1";
/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// HPKE info of the data-key wrap.
pub const WRAP_INFO: &[u8] = b"datadonor/v1 batch key";
/// Length of the wrapped data key.
pub const WRAPPED_KEY_LEN: usize = 32 + TAG_LEN;

/// A sealed batch's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// Batch id.
    pub batch_id: [u8; 16],
    /// Study id.
    pub study_id: String,
    /// Creation time.
    pub created_at: i64,
    /// Vault key id the data key is wrapped to.
    pub vault_key_id: u32,
    /// Encapsulated key of the wrap.
    pub enc: [u8; 32],
    /// The wrapped data key.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
}

impl BatchHeader {
    /// The header bytes before `enc`: the AAD of the data-key wrap.
    pub fn wrap_aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.study_id.len());
        out.extend_from_slice(BATCH_MAGIC);
        out.extend_from_slice(&self.batch_id);
        out.push(self.study_id.len() as u8);
        out.extend_from_slice(self.study_id.as_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.vault_key_id.to_be_bytes());
        out.extend_from_slice(&(CHUNK_SIZE as u32).to_be_bytes());
        out
    }

    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.wrap_aad();
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&self.wrapped_key);
        out
    }

    /// Parse a header from the start of a file; returns it and its length.
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), WireError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<8>("magic")?;
        if &magic != BATCH_MAGIC {
            return Err(WireError::Unexpected {
                field: "magic",
                expected: "DDBATCH1".into(),
                found: hex::encode(magic),
            });
        }
        let batch_id = r.array::<16>("batch_id")?;
        let n = r.array::<1>("study_id_len")?[0] as usize;
        if !(3..=64).contains(&n) {
            return Err(WireError::Unexpected {
                field: "study_id_len",
                expected: "3..=64".into(),
                found: n.to_string(),
            });
        }
        let sid = r.take(n, "study_id")?;
        let study_id = std::str::from_utf8(sid)
            .ok()
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .ok_or(WireError::Encoding("study_id"))?
            .to_string();
        let created_at = i64::from_be_bytes(r.array::<8>("created_at")?);
        let vault_key_id = r.u32("vault_key_id")?;
        let chunk = r.u32("chunk_size")?;
        if chunk as usize != CHUNK_SIZE {
            return Err(WireError::Unexpected {
                field: "chunk_size",
                expected: CHUNK_SIZE.to_string(),
                found: chunk.to_string(),
            });
        }
        let enc = r.array::<32>("enc")?;
        let wrapped_key = r.array::<WRAPPED_KEY_LEN>("wrapped_key")?;
        let len = 8 + 16 + 1 + n + 8 + 4 + 4 + 32 + WRAPPED_KEY_LEN;
        Ok((
            Self {
                batch_id,
                study_id,
                created_at,
                vault_key_id,
                enc,
                wrapped_key,
            },
            len,
        ))
    }

    /// The AAD of every chunk: SHA-256 of the encoded header.
    pub fn chunk_aad(&self) -> [u8; 32] {
        sha256(&self.encode())
    }

    /// Batch id as lowercase hex (the file name stem).
    pub fn batch_id_hex(&self) -> String {
        hex::encode(self.batch_id)
    }
}

/// The nonce of chunk `counter`.
pub fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    // 11-byte big-endian counter: the top 3 bytes stay zero for any u64 below 2^64 that fits in
    // 88 bits, which every u64 does.
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Why sealing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The header's study id is not 3 to 64 bytes.
    #[error("study id must be 3 to 64 bytes")]
    StudyId,
    /// Wrapping the data key to the vault key failed.
    #[error("HPKE wrap of the data key failed")]
    Wrap,
    /// Encrypting a chunk failed.
    #[error("chunk encryption failed")]
    Encrypt,
}

/// Seal `plaintext` as a batch under a fresh random data key (zeroized after use), wrapped to
/// `vault`. `header` gives the batch id, study, time and vault key id; its `enc` and
/// `wrapped_key` are filled in. Returns the header and the whole file.
pub fn seal(
    header: BatchHeader,
    vault: &HpkePublicKey,
    plaintext: &[u8],
) -> Result<(BatchHeader, Vec<u8>), SealError> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(data_key.as_mut());
    seal_with_key(header, vault, &data_key, plaintext, &mut OsRng)
}

/// [`seal`] under a given data key, with `rng` for the wrap's ephemeral key (test vectors use a
/// deterministic one).
pub fn seal_with_key<R: RngCore + CryptoRng>(
    mut header: BatchHeader,
    vault: &HpkePublicKey,
    data_key: &[u8; 32],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<(BatchHeader, Vec<u8>), SealError> {
    if !(3..=64).contains(&header.study_id.len()) {
        return Err(SealError::StudyId);
    }
    let (enc, wrapped) = hpke_seal_with_rng(vault, WRAP_INFO, &header.wrap_aad(), data_key, rng)
        .map_err(|_| SealError::Wrap)?;
    header.enc = enc;
    header.wrapped_key = wrapped.as_slice().try_into().map_err(|_| SealError::Wrap)?;
    let cipher = Aes256Gcm::new_from_slice(data_key).map_err(|_| SealError::Encrypt)?;
    let aad = header.chunk_aad();
    let mut out = header.encode();
    let n = plaintext.len().div_ceil(CHUNK_SIZE).max(1);
    out.reserve(plaintext.len() + n * TAG_LEN);
    for i in 0..n {
        let start = i * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(plaintext.len());
        let chunk = plaintext.get(start..end).unwrap_or_default();
        let at = out.len();
        out.extend_from_slice(chunk);
        let nonce = chunk_nonce(i as u64, i + 1 == n);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[at..])
            .map_err(|_| SealError::Encrypt)?;
        out.extend_from_slice(&tag);
    }
    Ok((header, out))
}
