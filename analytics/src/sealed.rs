//! Opening and sealing batch files (format: `datadonor_schemas::batch`, `PROTOCOL.md`).
//!
//! A sealed batch is a header followed by the Parquet file in AES-256-GCM chunks of
//! [`CHUNK_SIZE`] plaintext bytes (the STREAM construction: counter and last-chunk flag in the
//! nonce, SHA-256 of the header as every chunk's AAD). The data key is wrapped to the vault key
//! with HPKE. Opening happens only in memory: the plaintext is returned in a [`Zeroizing`]
//! buffer and never written anywhere.
//!
//! What each kind of damage gives (pinned by this module's tests):
//!
//! | damage | error |
//! |---|---|
//! | magic, study-id length, chunk size, short header | [`BatchErrorKind::Header`] |
//! | header written for another vault key id | [`BatchErrorKind::VaultKeyId`] |
//! | any other header byte, `enc`, wrapped key, or the right id but another key | [`BatchErrorKind::KeyUnwrap`] |
//! | body cut at a chunk boundary (final chunk missing) | [`BatchErrorKind::Truncated`] |
//! | body cut to less than a tag inside the final segment | [`BatchErrorKind::TruncatedChunk`] |
//! | body cut inside a chunk, or the final chunk modified | [`BatchErrorKind::FinalChunkInvalid`] |
//! | a non-final chunk modified | [`BatchErrorKind::ChunkModified`] |
//! | chunks swapped or moved | [`BatchErrorKind::Reordered`] |
//! | header moved onto another batch's body | [`BatchErrorKind::BodyMismatch`] |
//!
//! The diagnosis of reordering and body swaps runs only after a chunk failed to authenticate:
//! it re-tries the failing chunk under other counters and checks whether any other chunk
//! authenticates, which is bounded by [`MAX_DIAGNOSIS_TRIES`].

use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use datadonor_schemas::batch::{
    self, chunk_nonce, BatchHeader, CHUNK_SIZE, TAG_LEN, WRAPPED_KEY_LEN, WRAP_INFO,
};
use datadonor_schemas::envelope::hpke_open;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::UnixSeconds;
use datadonor_schemas::WireError;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::vault::{VaultKey, VaultPublicKey};

/// Ciphertext bytes of a full chunk.
pub const SEGMENT_LEN: usize = CHUNK_SIZE + TAG_LEN;
/// Upper bound on trial decryptions spent diagnosing one damaged batch.
pub const MAX_DIAGNOSIS_TRIES: u64 = 1 << 14;

/// An error opening or sealing a batch; always names the file.
#[derive(Debug, thiserror::Error)]
#[error("batch {}: {kind}", file.display())]
pub struct BatchError {
    /// The batch file (or a label for in-memory batches).
    pub file: PathBuf,
    /// What went wrong.
    pub kind: BatchErrorKind,
}

/// What is wrong with a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchErrorKind {
    /// The file could not be read or written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The object could not be read from object storage.
    #[error("object storage: {0}")]
    Remote(String),
    /// The header does not parse.
    #[error("malformed header: {0}")]
    Header(#[from] WireError),
    /// The file name's stem is not the header's batch id.
    #[error("file name says batch {stem}, header says {batch_id}")]
    FileNameMismatch {
        /// The file stem.
        stem: String,
        /// The header's id.
        batch_id: String,
    },
    /// The header names a vault key id other than ours.
    #[error("sealed to vault key id {header}, this vault key has id {ours}")]
    VaultKeyId {
        /// Id in the header.
        header: u32,
        /// Id of the key we hold.
        ours: u32,
    },
    /// The data key does not unwrap.
    #[error("the data key does not unwrap: the header was modified, or the batch is sealed to another vault key")]
    KeyUnwrap,
    /// The body ends at a chunk boundary without its final chunk.
    #[error("truncated: the body ends after {chunks} chunks without the final chunk")]
    Truncated {
        /// Chunks present.
        chunks: u64,
    },
    /// The body ends inside a chunk, before even a tag.
    #[error("truncated inside chunk {chunk}")]
    TruncatedChunk {
        /// Index of the partial chunk.
        chunk: u64,
    },
    /// The final chunk does not authenticate.
    #[error(
        "final chunk {chunk} does not authenticate: the file is cut inside it, or it was modified"
    )]
    FinalChunkInvalid {
        /// Index of the final chunk.
        chunk: u64,
    },
    /// A non-final chunk does not authenticate under any position.
    #[error("chunk {chunk} was modified")]
    ChunkModified {
        /// Its index.
        chunk: u64,
    },
    /// A chunk authenticates, but at another position.
    #[error("chunks reordered: the chunk at position {position} belongs at position {belongs_at}")]
    Reordered {
        /// Where it is.
        position: u64,
        /// Where it belongs.
        belongs_at: u64,
    },
    /// No chunk of the body authenticates under this header.
    #[error("the body does not belong to this header (header moved from another batch)")]
    BodyMismatch,
    /// The study in the header is not the study asked for.
    #[error("batch belongs to study {found}, expected {expected}")]
    WrongStudy {
        /// Expected study.
        expected: String,
        /// Study in the header.
        found: String,
    },
    /// Sealing failed.
    #[error("seal failed: {0}")]
    Seal(String),
    /// The plaintext is not a Parquet file of the study's schema.
    #[error("plaintext is not a valid Parquet file of the study: {0}")]
    Content(String),
}

impl BatchError {
    pub(crate) fn new(file: &Path, kind: impl Into<BatchErrorKind>) -> Self {
        Self {
            file: file.to_path_buf(),
            kind: kind.into(),
        }
    }
}

/// An opened batch: its header and the plaintext Parquet bytes, only in memory.
pub struct OpenedBatch {
    /// The header.
    pub header: BatchHeader,
    /// The Parquet file; zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for OpenedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OpenedBatch(batch {}, study {}, {} plaintext bytes)",
            self.header.batch_id_hex(),
            self.header.study_id,
            self.plaintext.len()
        )
    }
}

/// The number of chunks a body of `body_len` bytes consists of (the last one possibly short).
fn segment_count(body_len: usize) -> usize {
    body_len.div_ceil(SEGMENT_LEN)
}

fn try_open(cipher: &Aes256Gcm, aad: &[u8], counter: u64, last: bool, seg: &[u8]) -> bool {
    let Some(split) = seg.len().checked_sub(TAG_LEN) else {
        return false;
    };
    let (ct, tag) = seg.split_at(split);
    let mut buf = ct.to_vec();
    let nonce = chunk_nonce(counter, last);
    let ok = cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .is_ok();
    zeroize::Zeroize::zeroize(&mut buf);
    ok
}

/// Open sealed batch bytes in memory. `file` only labels errors.
pub fn open_batch(file: &Path, bytes: &[u8], vault: &VaultKey) -> Result<OpenedBatch, BatchError> {
    let err = |k: BatchErrorKind| BatchError::new(file, k);
    let (header, header_len) = BatchHeader::parse(bytes).map_err(|e| err(e.into()))?;
    if header.vault_key_id != vault.key_id() {
        return Err(err(BatchErrorKind::VaultKeyId {
            header: header.vault_key_id,
            ours: vault.key_id(),
        }));
    }
    let data_key = hpke_open(
        vault.secret(),
        &header.enc,
        WRAP_INFO,
        &header.wrap_aad(),
        &header.wrapped_key,
    )
    .map_err(|_| err(BatchErrorKind::KeyUnwrap))?;
    if data_key.len() != 32 {
        return Err(err(BatchErrorKind::KeyUnwrap));
    }
    let cipher =
        Aes256Gcm::new_from_slice(&data_key).map_err(|_| err(BatchErrorKind::KeyUnwrap))?;
    drop(data_key);
    let aad = header.chunk_aad();
    let body = bytes.get(header_len..).unwrap_or_default();
    let n = segment_count(body.len());
    if n == 0 {
        return Err(err(BatchErrorKind::Truncated { chunks: 0 }));
    }
    let mut plaintext = Zeroizing::new(Vec::with_capacity(body.len()));
    for (i, seg) in body.chunks(SEGMENT_LEN).enumerate() {
        let counter = i as u64;
        let last = i + 1 == n;
        let Some(split) = seg.len().checked_sub(TAG_LEN) else {
            return Err(err(BatchErrorKind::TruncatedChunk { chunk: counter }));
        };
        let (ct, tag) = seg.split_at(split);
        let start = plaintext.len();
        plaintext.extend_from_slice(ct);
        let nonce = chunk_nonce(counter, last);
        let res = cipher.decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad,
            &mut plaintext[start..],
            Tag::from_slice(tag),
        );
        if res.is_err() {
            plaintext.truncate(start);
            return Err(err(diagnose(&cipher, &aad, body, counter, last)));
        }
    }
    Ok(OpenedBatch { header, plaintext })
}

/// Work out why chunk `failed` did not authenticate.
fn diagnose(
    cipher: &Aes256Gcm,
    aad: &[u8],
    body: &[u8],
    failed: u64,
    last: bool,
) -> BatchErrorKind {
    let segs: Vec<&[u8]> = body.chunks(SEGMENT_LEN).collect();
    let n = segs.len() as u64;
    let Some(seg) = segs.get(failed as usize) else {
        return BatchErrorKind::ChunkModified { chunk: failed };
    };
    // A full chunk that authenticates as non-final in the final position: cut at a boundary.
    if last && seg.len() == SEGMENT_LEN && try_open(cipher, aad, failed, false, seg) {
        return BatchErrorKind::Truncated { chunks: n };
    }
    // Does it belong elsewhere?
    for j in 0..n.saturating_add(1).min(MAX_DIAGNOSIS_TRIES) {
        if j == failed {
            continue;
        }
        for flag in [false, true] {
            if try_open(cipher, aad, j, flag, seg) {
                return BatchErrorKind::Reordered {
                    position: failed,
                    belongs_at: j,
                };
            }
        }
    }
    // Does any other chunk authenticate at its own position? If none does, the body is not
    // this header's.
    let any_other = segs.iter().enumerate().any(|(i, s)| {
        let i = i as u64;
        i != failed && try_open(cipher, aad, i, i + 1 == n, s)
    });
    if !any_other && n > 1 {
        return BatchErrorKind::BodyMismatch;
    }
    if last {
        BatchErrorKind::FinalChunkInvalid { chunk: failed }
    } else {
        BatchErrorKind::ChunkModified { chunk: failed }
    }
}

/// Read and open a batch file; checks that its stem is the header's batch id.
pub fn open_batch_file(path: &Path, vault: &VaultKey) -> Result<OpenedBatch, BatchError> {
    let bytes = std::fs::read(path).map_err(|e| BatchError::new(path, e))?;
    check_name(path, open_batch(path, &bytes, vault)?)
}

/// Check that an opened batch's file (or object) name is its header's batch id.
pub fn check_name(path: &Path, opened: OpenedBatch) -> Result<OpenedBatch, BatchError> {
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        if stem != opened.header.batch_id_hex() {
            return Err(BatchError::new(
                path,
                BatchErrorKind::FileNameMismatch {
                    stem: stem.to_string(),
                    batch_id: opened.header.batch_id_hex(),
                },
            ));
        }
    }
    Ok(opened)
}

/// Parse only the header of batch bytes (no key needed).
pub fn read_header(file: &Path, bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    BatchHeader::parse(bytes)
        .map(|(h, _)| h)
        .map_err(|e| BatchError::new(file, e))
}

/// Seal `plaintext` (a Parquet file) as a new batch of `study` under a fresh random data key
/// wrapped to `vault`. Returns the header and the whole file's bytes.
pub fn seal_batch(
    plaintext: &[u8],
    study: &StudyId,
    created_at: UnixSeconds,
    vault: &VaultPublicKey,
) -> Result<(BatchHeader, Vec<u8>), BatchError> {
    let label = PathBuf::from(format!("<new batch of {study}>"));
    let err = |m: String| BatchError::new(&label, BatchErrorKind::Seal(m));
    let mut batch_id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut batch_id)
        .map_err(|_| err("no randomness".into()))?;
    let header = BatchHeader {
        batch_id,
        study_id: study.as_str().to_string(),
        created_at,
        vault_key_id: vault.key_id,
        enc: [0u8; 32],
        wrapped_key: [0u8; WRAPPED_KEY_LEN],
    };
    batch::seal(header, &vault.public_key, plaintext).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study() -> StudyId {
        StudyId::new("t2d-dk").expect("valid id")
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sealed(len: usize, vault: &VaultKey) -> (BatchHeader, Vec<u8>) {
        seal_batch(&payload(len), &study(), 1_700_000_000, &vault.public()).expect("seal")
    }

    fn kind(r: Result<OpenedBatch, BatchError>) -> BatchErrorKind {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => {
                assert_eq!(e.file, PathBuf::from("x.batch"), "error names the file");
                e.kind
            }
        }
    }

    fn open(bytes: &[u8], vault: &VaultKey) -> Result<OpenedBatch, BatchError> {
        open_batch(Path::new("x.batch"), bytes, vault)
    }

    #[test]
    fn round_trip_sizes_and_header_fields() {
        let vault = VaultKey::generate(7);
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 5,
        ] {
            let (h, bytes) = sealed(len, &vault);
            let o = open(&bytes, &vault).expect("opens");
            assert_eq!(o.plaintext.as_slice(), payload(len).as_slice());
            assert_eq!(o.header, h);
            assert_eq!(o.header.study_id, "t2d-dk");
            assert_eq!(o.header.created_at, 1_700_000_000);
            assert_eq!(o.header.vault_key_id, 7);
            // Header bytes round-trip byte for byte.
            assert_eq!(&bytes[..h.encode().len()], h.encode().as_slice());
            let expected_len = h.encode().len() + len + len.div_ceil(CHUNK_SIZE).max(1) * TAG_LEN;
            assert_eq!(bytes.len(), expected_len);
        }
    }

    #[test]
    fn bit_flips_by_position_class() {
        let vault = VaultKey::generate(1);
        let (h, bytes) = sealed(2 * CHUNK_SIZE + 100, &vault);
        let hl = h.encode().len();
        let flip = |pos: usize| {
            let mut b = bytes.clone();
            b[pos] ^= 0x01;
            kind(open(&b, &vault))
        };
        // magic
        assert!(matches!(flip(0), BatchErrorKind::Header(_)));
        // batch id, study id, created_at: the wrap AAD changes
        assert!(matches!(flip(10), BatchErrorKind::KeyUnwrap));
        assert!(matches!(flip(26), BatchErrorKind::KeyUnwrap));
        assert!(matches!(flip(25 + 6 + 3), BatchErrorKind::KeyUnwrap));
        // vault key id
        assert!(matches!(
            flip(25 + 6 + 8 + 3),
            BatchErrorKind::VaultKeyId { .. }
        ));
        // chunk size
        assert!(matches!(flip(25 + 6 + 12 + 2), BatchErrorKind::Header(_)));
        // enc and wrapped key
        assert!(matches!(flip(hl - 48 - 5), BatchErrorKind::KeyUnwrap));
        assert!(matches!(flip(hl - 3), BatchErrorKind::KeyUnwrap));
        // body of chunk 0, tag of chunk 1
        assert!(matches!(
            flip(hl + 5),
            BatchErrorKind::ChunkModified { chunk: 0 }
        ));
        assert!(matches!(
            flip(hl + 2 * SEGMENT_LEN - 1),
            BatchErrorKind::ChunkModified { chunk: 1 }
        ));
        // final chunk body and tag
        assert!(matches!(
            flip(hl + 2 * SEGMENT_LEN + 3),
            BatchErrorKind::FinalChunkInvalid { chunk: 2 }
        ));
        assert!(matches!(
            flip(bytes.len() - 1),
            BatchErrorKind::FinalChunkInvalid { chunk: 2 }
        ));
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let vault = VaultKey::generate(1);
        let (_, bytes) = sealed(300, &vault);
        for pos in 0..bytes.len() {
            let mut b = bytes.clone();
            b[pos] ^= 0x80;
            assert!(open(&b, &vault).is_err(), "flip at {pos} undetected");
        }
    }

    #[test]
    fn truncation_at_boundary_and_inside_a_chunk() {
        let vault = VaultKey::generate(1);
        let (h, bytes) = sealed(3 * CHUNK_SIZE + 10, &vault);
        let hl = h.encode().len();
        assert!(matches!(
            kind(open(&bytes[..hl + 2 * SEGMENT_LEN], &vault)),
            BatchErrorKind::Truncated { chunks: 2 }
        ));
        assert!(matches!(
            kind(open(&bytes[..hl], &vault)),
            BatchErrorKind::Truncated { chunks: 0 }
        ));
        assert!(matches!(
            kind(open(&bytes[..hl + SEGMENT_LEN + 1000], &vault)),
            BatchErrorKind::FinalChunkInvalid { chunk: 1 }
        ));
        assert!(matches!(
            kind(open(&bytes[..hl + SEGMENT_LEN + 5], &vault)),
            BatchErrorKind::TruncatedChunk { chunk: 1 }
        ));
        // header cut short
        assert!(matches!(
            kind(open(&bytes[..hl - 1], &vault)),
            BatchErrorKind::Header(_)
        ));
    }

    #[test]
    fn swapped_chunks_are_reported_as_reordered() {
        let vault = VaultKey::generate(1);
        let (h, bytes) = sealed(3 * CHUNK_SIZE + 10, &vault);
        let hl = h.encode().len();
        let mut b = bytes.clone();
        let (c0, c1) = (hl, hl + SEGMENT_LEN);
        let first = bytes[c0..c1].to_vec();
        let second = bytes[c1..c1 + SEGMENT_LEN].to_vec();
        b[c0..c1].copy_from_slice(&second);
        b[c1..c1 + SEGMENT_LEN].copy_from_slice(&first);
        assert!(matches!(
            kind(open(&b, &vault)),
            BatchErrorKind::Reordered {
                position: 0,
                belongs_at: 1
            }
        ));
    }

    #[test]
    fn header_moved_onto_another_body() {
        let vault = VaultKey::generate(1);
        let (h1, b1) = sealed(2 * CHUNK_SIZE + 10, &vault);
        let (h2, b2) = sealed(2 * CHUNK_SIZE + 10, &vault);
        let mut mixed = h1.encode();
        mixed.extend_from_slice(&b2[h2.encode().len()..]);
        let _ = b1;
        assert!(matches!(
            kind(open(&mixed, &vault)),
            BatchErrorKind::BodyMismatch
        ));
    }

    #[test]
    fn wrong_vault_key() {
        let vault = VaultKey::generate(1);
        let (_, bytes) = sealed(100, &vault);
        assert!(matches!(
            kind(open(&bytes, &VaultKey::generate(2))),
            BatchErrorKind::VaultKeyId { header: 1, ours: 2 }
        ));
        assert!(matches!(
            kind(open(&bytes, &VaultKey::generate(1))),
            BatchErrorKind::KeyUnwrap
        ));
    }

    #[test]
    fn file_name_must_match_batch_id() {
        let vault = VaultKey::generate(1);
        let (h, bytes) = sealed(100, &vault);
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join(format!("{}.batch", h.batch_id_hex()));
        std::fs::write(&good, &bytes).expect("write");
        assert!(open_batch_file(&good, &vault).is_ok());
        let bad = dir.path().join("00000000000000000000000000000000.batch");
        std::fs::write(&bad, &bytes).expect("write");
        let e = open_batch_file(&bad, &vault).expect_err("renamed file");
        assert!(matches!(e.kind, BatchErrorKind::FileNameMismatch { .. }));
        assert!(e
            .to_string()
            .contains("00000000000000000000000000000000.batch"));
    }
}
