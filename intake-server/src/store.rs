//! Storage backends: where sealed batches and ledger records live.
//!
//! Both sit behind traits so that the embedded default (a local directory) and the remote
//! backends (PostgreSQL for the ledger, [`crate::store_pg`]; S3-compatible object storage for
//! batches, [`crate::store_s3`]) are interchangeable, and all run the one conformance suite in
//! [`conformance`].
//!
//! Contracts every backend keeps:
//!
//! * [`BatchStore::put`] returns only once the batch is durable, and a batch is either wholly
//!   visible under its name or not at all (local: temporary file, fsync, rename, fsync of the
//!   directory);
//! * [`LedgerStore::append`] returns only once every record of the call is durable (local: one
//!   `write` and one `fsync` per call — the group commit);
//! * [`LedgerStore::recover`] returns exactly the records of completed appends, in order, and
//!   removes a torn tail left by a crash during an append.
//!
//! Local ledger file format (`ledger/ledger.log`): a sequence of records
//! `u32 BE length || entry bytes || 32-byte RFC 9162 leaf hash of the entry`. Recovery stops at
//! the first record that is short or whose hash does not match, and truncates the file there.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datadonor_schemas::ledger::ConsentState;
use datadonor_schemas::merkle::{leaf_hash, Frontier, Hash, NodeId};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::StudyId;

use crate::ledger::{DonationRecord, WithdrawalRecord};

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A lock was poisoned by a panic in another thread.
    #[error("storage lock poisoned")]
    Poisoned,
    /// The named batch does not exist.
    #[error("no such batch")]
    NotFound,
    /// A write would replace what another writer stored (a ledger index or a batch name that
    /// exists): two writers never both succeed.
    #[error("{0}: already written by another writer")]
    Conflict(String),
    /// Another process holds the storage.
    #[error("{0} is in use by another intake")]
    Locked(String),
    /// A remote backend (database, object store) failed; the message names no secret.
    #[error("{backend}: {message}")]
    Remote {
        /// `postgres` or `s3`.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// Stored data that does not have the shape this backend writes.
    #[error("{0}")]
    Corrupt(String),
}

/// The private runtime a remote backend runs its client on
/// ([`datadonor_service::blocking::BlockingRuntime`]). The traits are synchronous (the committer
/// is a thread of its own); each call works from any thread, inside another runtime's worker too
/// (recovery at startup).
#[derive(Debug)]
pub(crate) struct BackendRuntime(datadonor_service::blocking::BlockingRuntime);

impl BackendRuntime {
    pub(crate) fn new(name: &str) -> Result<Self, StoreError> {
        datadonor_service::blocking::BlockingRuntime::new(name)
            .map(Self)
            .map_err(|e| StoreError::Remote {
                backend: "runtime",
                message: e.to_string(),
            })
    }

    /// Run `f` on the backend's runtime and wait for its result.
    pub(crate) fn run<F>(&self, f: F) -> Result<F::Output, StoreError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.run(f).map_err(|_| StoreError::Poisoned)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Names a stored batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchRef {
    /// Study id.
    pub study: String,
    /// Batch id.
    pub batch_id: [u8; 16],
}

impl BatchRef {
    /// Hex batch id.
    pub fn id_hex(&self) -> String {
        hex::encode(self.batch_id)
    }

    /// Its file or object name in the study's directory or prefix: `<32 hex>.<ext>`.
    pub fn file_name(&self, ext: &str) -> String {
        format!("{}.{ext}", self.id_hex())
    }

    /// The batch a `<32 hex>.<ext>` name in `study`'s directory or prefix stands for; `None`
    /// for any other name.
    pub fn from_file_name(study: &str, name: &str, ext: &str) -> Option<Self> {
        let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
        let mut batch_id = [0u8; 16];
        (stem.len() == 32 && hex::decode_to_slice(stem, &mut batch_id).is_ok()).then(|| Self {
            study: study.to_string(),
            batch_id,
        })
    }
}

/// Where sealed batches are kept.
pub trait BatchStore: Send + Sync + std::fmt::Debug {
    /// Store a sealed batch durably and atomically.
    fn put(&self, batch: &BatchRef, sealed: &[u8]) -> Result<(), StoreError>;
    /// Read a stored batch (sealed bytes).
    fn get(&self, batch: &BatchRef) -> Result<Vec<u8>, StoreError>;
    /// Every stored batch.
    fn list(&self) -> Result<Vec<BatchRef>, StoreError>;
    /// Delete a batch (recovery removes unacknowledged ones).
    fn delete(&self, batch: &BatchRef) -> Result<(), StoreError>;
    /// Remove leftovers of interrupted writes; returns how many.
    fn clean_temporaries(&self) -> Result<usize, StoreError>;

    /// The steward's compacted batches (`<32 hex>.ddc`, written by `datadonor-analytics
    /// compact` beside the intake's own): the intake never reads, writes or deletes them while
    /// serving; `migrate` moves them with the rest. A backend that keeps none answers none.
    fn list_compacted(&self) -> Result<Vec<BatchRef>, StoreError> {
        Ok(Vec::new())
    }
    /// A compacted batch's bytes.
    fn get_compacted(&self, _batch: &BatchRef) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NotFound)
    }
    /// Store a compacted batch (never over an existing one).
    fn put_compacted(&self, _batch: &BatchRef, _sealed: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Corrupt(
            "this batch store keeps no compacted batches".into(),
        ))
    }
    /// Delete a compacted batch (idempotent).
    fn delete_compacted(&self, _batch: &BatchRef) -> Result<(), StoreError> {
        Ok(())
    }
    /// The studies whose compaction journal (`compact.journal`) exists: a compaction under way
    /// or interrupted, which must be finished before the batches move.
    fn compaction_journals(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// Durable ledger records (entry bytes), in order, each with its RFC 9162 leaf hash.
///
/// Each hash is always the leaf hash of its entry's bytes: either computed here
/// ([`LedgerRecords::new`]), or the hash the ledger file decoder computed from the bytes and
/// found equal to the one stored in the record, so that recovery hashes each entry once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerRecords {
    entries: Vec<Vec<u8>>,
    leaf_hashes: Vec<Hash>,
}

impl LedgerRecords {
    /// Records of `entries`, hashing each.
    pub fn new(entries: Vec<Vec<u8>>) -> Self {
        let leaf_hashes = entries.iter().map(|e| leaf_hash(e)).collect();
        Self {
            entries,
            leaf_hashes,
        }
    }
    /// Append an entry whose leaf hash the caller has just computed from these very bytes.
    fn push_hashed(&mut self, entry: Vec<u8>, leaf: Hash) {
        self.entries.push(entry);
        self.leaf_hashes.push(leaf);
    }
    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The entry bytes, in order.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }
    /// The leaf hash of each entry, in the same order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        &self.leaf_hashes
    }
    /// The entry bytes and their leaf hashes (same length, same order).
    pub fn into_parts(self) -> (Vec<Vec<u8>>, Vec<Hash>) {
        (self.entries, self.leaf_hashes)
    }
}

/// Where ledger records are kept.
pub trait LedgerStore: Send + Sync + std::fmt::Debug {
    /// Every durable record in order, after removing a torn tail. Call this or
    /// [`LedgerStore::recover_records`] once, before appending.
    fn recover(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// [`LedgerStore::recover`], each record with its leaf hash. A backend that checks stored
    /// leaf hashes while reading (the local file) returns the hashes it checked; the default
    /// hashes each record once.
    fn recover_records(&self) -> Result<LedgerRecords, StoreError> {
        Ok(LedgerRecords::new(self.recover()?))
    }
    /// Append records durably (one durability barrier for the whole call).
    fn append(&self, entries: &[Vec<u8>]) -> Result<(), StoreError>;
    /// The indexes and Merkle nodes this backend keeps beside the records, if it keeps them
    /// (PostgreSQL): the intake then holds none of them in memory.
    fn as_indexed(&self) -> Option<&dyn IndexedLedger> {
        None
    }
    /// After `migrate` has moved this ledger to another store: put it out of reach of a
    /// configuration that still names it, where the backend can (PostgreSQL renames its tables;
    /// `migrate` renames a local ledger's directory itself). Returns its new name.
    fn retire(&self, _now: i64) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// What the committer asks an indexed ledger about the jobs of one group, in one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Idempotency keys of the group's donations.
    pub donations: Vec<[u8; 16]>,
    /// (study, consent record id) of the group's donations.
    pub consent_records: Vec<RecordKey>,
    /// (study, pseudonym) of the group's donations and withdrawals.
    pub consents: Vec<(StudyId, Pseudonym)>,
    /// SHA-256 of the group's signed withdrawals.
    pub withdrawals: Vec<[u8; 32]>,
}

/// A consent record: (study, record id).
pub type RecordKey = (StudyId, [u8; 16]);

/// What an indexed ledger knows of a [`Lookup`]'s keys (absent keys are unknown).
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Donations by idempotency key.
    pub donations: Vec<([u8; 16], DonationRecord)>,
    /// Manifest SHA-256 by (study, consent record id).
    pub consent_records: Vec<(RecordKey, [u8; 32])>,
    /// Latest consent by (study, pseudonym).
    pub consents: Vec<((StudyId, Pseudonym), ConsentState)>,
    /// Withdrawals by the SHA-256 of the signed withdrawal.
    pub withdrawals: Vec<([u8; 32], WithdrawalRecord)>,
}

/// A ledger store that keeps, in the same transaction as each append, the ledger's indexes
/// (idempotency keys, consent records, latest consents, withdrawals, batches named) and the
/// roots of its perfect Merkle subtrees, and answers from them.
pub trait IndexedLedger: Send + Sync + std::fmt::Debug {
    /// Records durably stored.
    fn size(&self) -> Result<u64, StoreError>;
    /// The indexes' answers for one group's keys.
    fn lookup(&self, q: &Lookup) -> Result<Found, StoreError>;
    /// Records `[start, end)`.
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Stored perfect-subtree roots (missing ids are absent from the answer).
    fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError>;
    /// Whether a `DonationAccepted` entry names the batch.
    fn names_batch(&self, study: &str, batch_hex: &str) -> Result<bool, StoreError>;
}

/// What one append adds to a ledger's indexes, derived from its records: the perfect Merkle
/// subtrees its leaves complete, and the index rows of the records that parse as ledger
/// entries (a record that does not gets a leaf and nothing else). Backends that keep indexes
/// (PostgreSQL, the local index) write exactly this, in the append's own transaction.
#[derive(Debug, Clone)]
pub struct Derived {
    /// Perfect-subtree roots completed, leaves included.
    pub nodes: Vec<(NodeId, Hash)>,
    /// (idempotency key, envelope SHA-256, ledger index).
    pub donations: Vec<([u8; 16], [u8; 32], u64)>,
    /// (study, consent record id, manifest SHA-256).
    pub consent_records: Vec<(String, [u8; 16], [u8; 32])>,
    /// The last consent granted per (study, pseudonym) in this append, with the withdrawals of
    /// this append applied to it.
    pub grants: HashMap<(StudyId, Pseudonym), ConsentState>,
    /// Withdrawals of consents granted before this append: (study, pseudonym, record, time).
    pub withdraw_earlier: Vec<(String, [u8; 32], [u8; 16], i64)>,
    /// (signed-withdrawal SHA-256, ledger index).
    pub withdrawals: Vec<([u8; 32], u64)>,
    /// (study, batch id hex) named by `DonationAccepted` entries.
    pub batches: std::collections::BTreeSet<(String, String)>,
    /// The tree size after the append: what receipts of its donations and withdrawals are
    /// issued under.
    pub receipt_size: u64,
    /// The tree's right edge after the append.
    pub frontier: Frontier,
}

impl Derived {
    /// Rows for `records` at indexes `first..`, the tree advanced from `frontier`.
    pub fn new(records: &[Vec<u8>], first: u64, receipt_size: u64, mut frontier: Frontier) -> Self {
        use datadonor_schemas::ledger::LedgerEntry;
        let mut r = Self {
            nodes: Vec::with_capacity(records.len() * 2),
            donations: Vec::new(),
            consent_records: Vec::new(),
            grants: HashMap::new(),
            withdraw_earlier: Vec::new(),
            withdrawals: Vec::new(),
            batches: Default::default(),
            receipt_size,
            frontier: Frontier::new(),
        };
        for (i, record) in records.iter().enumerate() {
            let (_, done) = frontier.push(leaf_hash(record));
            r.nodes.extend(done);
            let idx = first + i as u64;
            let Ok(entry) = LedgerEntry::from_bytes(record) else {
                continue;
            };
            match &entry {
                LedgerEntry::ConsentGranted {
                    study_id,
                    consent_record_id,
                    manifest_sha256,
                    ..
                } => {
                    r.consent_records.push((
                        study_id.as_str().to_string(),
                        *consent_record_id,
                        *manifest_sha256,
                    ));
                    ConsentState::apply(&mut r.grants, &entry);
                }
                LedgerEntry::DonationAccepted {
                    study_id,
                    idempotency_key,
                    envelope_sha256,
                    batch_id,
                    ..
                } => {
                    r.donations.push((*idempotency_key, *envelope_sha256, idx));
                    r.batches
                        .insert((study_id.as_str().to_string(), batch_id.clone()));
                }
                LedgerEntry::ConsentWithdrawn {
                    time,
                    study_id,
                    pseudonym,
                    consent_record_id,
                    withdrawal_sha256,
                } => {
                    r.withdrawals.push((*withdrawal_sha256, idx));
                    if r.grants.contains_key(&(study_id.clone(), *pseudonym)) {
                        ConsentState::apply(&mut r.grants, &entry);
                    } else {
                        r.withdraw_earlier.push((
                            study_id.as_str().to_string(),
                            pseudonym.0,
                            *consent_record_id,
                            *time,
                        ));
                    }
                }
                _ => {}
            }
        }
        r.frontier = frontier;
        r
    }
}

/// Batches in `<root>/<study>/<batch id hex>.ddb`.
#[derive(Debug)]
pub struct LocalBatchStore {
    root: PathBuf,
}

/// Extension of the intake's sealed batches.
pub const BATCH_EXT: &str = "ddb";
/// Extension of the steward's compacted batches.
pub const COMPACTED_EXT: &str = "ddc";
/// A study's compaction journal (PROTOCOL.md, "Where sealed batches live").
pub const COMPACTION_JOURNAL: &str = "compact.journal";
const TMP_PREFIX: &str = ".tmp-";

impl LocalBatchStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The file of a batch.
    pub fn path_of(&self, b: &BatchRef) -> PathBuf {
        self.path_ext(b, BATCH_EXT)
    }

    fn path_ext(&self, b: &BatchRef, ext: &str) -> PathBuf {
        self.root.join(&b.study).join(b.file_name(ext))
    }

    /// Write `sealed` as `b` with extension `ext`: a temporary file, synced, renamed, the
    /// directory synced; an existing file is never replaced.
    fn put_ext(&self, b: &BatchRef, sealed: &[u8], ext: &str) -> Result<(), StoreError> {
        let dir = self.root.join(&b.study);
        let fresh_dir = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if fresh_dir {
            fsync_dir(&self.root)?;
        }
        let dst = self.path_ext(b, ext);
        if dst.exists() {
            return Err(StoreError::Conflict(dst.display().to_string()));
        }
        let tmp = dir.join(format!("{TMP_PREFIX}{}", b.id_hex()));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(sealed).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        fsync_dir(&dir)
    }

    fn get_ext(&self, b: &BatchRef, ext: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.path_ext(b, ext);
        match std::fs::read(&p) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Every `<study>/<32 hex>.<ext>` file.
    fn list_ext(&self, ext: &str) -> Result<Vec<BatchRef>, StoreError> {
        let mut out = Vec::new();
        for study in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let study = study.map_err(io(&self.root))?;
            if !study.file_type().map_err(io(&self.root))?.is_dir() {
                continue;
            }
            let name = study.file_name().to_string_lossy().into_owned();
            let sdir = study.path();
            for f in std::fs::read_dir(&sdir).map_err(io(&sdir))? {
                let f = f.map_err(io(&sdir))?;
                let fname = f.file_name().to_string_lossy().into_owned();
                out.extend(BatchRef::from_file_name(&name, &fname, ext));
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete_ext(&self, b: &BatchRef, ext: &str) -> Result<(), StoreError> {
        let p = self.path_ext(b, ext);
        match std::fs::remove_file(&p) {
            Ok(()) => fsync_dir(&self.root.join(&b.study)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

/// Make a directory's entries durable (after a create, rename or remove in it).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl BatchStore for LocalBatchStore {
    fn put(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_ext(b, sealed, BATCH_EXT)
    }

    fn get(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        self.get_ext(b, BATCH_EXT)
    }

    fn list(&self) -> Result<Vec<BatchRef>, StoreError> {
        self.list_ext(BATCH_EXT)
    }

    fn delete(&self, b: &BatchRef) -> Result<(), StoreError> {
        self.delete_ext(b, BATCH_EXT)
    }

    fn list_compacted(&self) -> Result<Vec<BatchRef>, StoreError> {
        self.list_ext(COMPACTED_EXT)
    }

    fn get_compacted(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        self.get_ext(b, COMPACTED_EXT)
    }

    fn put_compacted(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_ext(b, sealed, COMPACTED_EXT)
    }

    fn delete_compacted(&self, b: &BatchRef) -> Result<(), StoreError> {
        self.delete_ext(b, COMPACTED_EXT)
    }

    fn compaction_journals(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for study in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let study = study.map_err(io(&self.root))?;
            if study.path().join(COMPACTION_JOURNAL).exists() {
                out.push(study.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn clean_temporaries(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for study in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let study = study.map_err(io(&self.root))?;
            let sdir = study.path();
            if !sdir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sdir).map_err(io(&sdir))? {
                let f = f.map_err(io(&sdir))?;
                if f.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let p = f.path();
                    std::fs::remove_file(&p).map_err(io(&p))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// The ledger in one append-only file.
#[derive(Debug)]
pub struct LocalLedgerStore {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl LocalLedgerStore {
    /// Open (creating) the ledger file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path))?;
        if !existed {
            file.sync_all().map_err(io(path))?;
            if let Some(dir) = path.parent() {
                fsync_dir(dir)?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }
}

/// Encode one ledger record (the format is [`datadonor_schemas::ledger::encode_ledger_record`]).
pub fn encode_record(entry: &[u8], out: &mut Vec<u8>) {
    datadonor_schemas::ledger::encode_ledger_record(entry, out);
}

/// Decode records; returns them and the length of the valid prefix (a torn or damaged tail is
/// cut off there).
pub fn decode_records(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let r = datadonor_schemas::ledger::decode_ledger_records(bytes);
    (
        r.entries.into_iter().map(<[u8]>::to_vec).collect(),
        r.valid_len,
    )
}

/// How much of the ledger file recovery reads at a time.
const READ_CHUNK: usize = 1 << 20;

/// Read and decode the records of a ledger file from `r`, `chunk` bytes at a time, so that only
/// the records (not also the whole file) are held in memory. Returns the intact records with
/// the leaf hashes the decoder checked, the length of the intact prefix, and the length read.
/// Decides exactly as [`decode_records`] on the whole file: a record cut by a chunk boundary is
/// completed by the next chunk before it is judged, and every record is hashed once.
pub(crate) fn read_records(
    r: &mut impl Read,
    chunk: usize,
) -> std::io::Result<(LedgerRecords, u64, u64)> {
    use datadonor_schemas::ledger::{decode_ledger_records, RecordTail};
    let chunk = chunk.max(1);
    let mut records = LedgerRecords::default();
    // Bytes read but not yet decoded, starting at file offset `start`.
    let mut buf = Vec::new();
    let mut start = 0u64;
    loop {
        // Room for the whole chunk up front, so the buffer does not grow while reading it.
        buf.reserve(chunk);
        let n = r.by_ref().take(chunk as u64).read_to_end(&mut buf)?;
        let eof = n < chunk;
        let d = decode_ledger_records(&buf);
        for (e, h) in d.entries.iter().zip(&d.leaf_hashes) {
            records.push_hashed(e.to_vec(), *h);
        }
        let valid = d.valid_len;
        let tail = d.tail;
        if matches!(tail, RecordTail::Corrupt { .. }) {
            // Damage is damage whatever follows it: nothing after it is read as records.
            let rest = std::io::copy(r, &mut std::io::sink())?;
            return Ok((
                records,
                start + valid as u64,
                start + buf.len() as u64 + rest,
            ));
        }
        if eof {
            return Ok((records, start + valid as u64, start + buf.len() as u64));
        }
        // Clean so far, or a record that the next chunk completes.
        buf.drain(..valid);
        start += valid as u64;
    }
}

impl LocalLedgerStore {
    /// Cut the file to `len` bytes (a torn tail found past an index) and sync it.
    pub(crate) fn truncate(&self, len: u64) -> Result<(), StoreError> {
        let f = self.file.lock().map_err(|_| StoreError::Poisoned)?;
        f.set_len(len).map_err(io(&self.path))?;
        f.sync_all().map_err(io(&self.path))
    }
}

impl LedgerStore for LocalLedgerStore {
    fn recover(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.recover_records()?.into_parts().0)
    }

    fn recover_records(&self) -> Result<LedgerRecords, StoreError> {
        let mut f = self.file.lock().map_err(|_| StoreError::Poisoned)?;
        f.seek(SeekFrom::Start(0)).map_err(io(&self.path))?;
        let (records, valid, len) = read_records(&mut *f, READ_CHUNK).map_err(io(&self.path))?;
        if valid < len {
            tracing::warn!(
                dropped_bytes = len - valid,
                records = records.len(),
                "ledger: truncating a torn or corrupt tail"
            );
            f.set_len(valid).map_err(io(&self.path))?;
            f.sync_all().map_err(io(&self.path))?;
        }
        Ok(records)
    }

    fn append(&self, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for e in entries {
            encode_record(e, &mut buf);
        }
        let mut f = self.file.lock().map_err(|_| StoreError::Poisoned)?;
        f.write_all(&buf).map_err(io(&self.path))?;
        f.sync_data().map_err(io(&self.path))
    }
}

/// In-memory batches (tests; a model of an object store). Clones share the storage.
#[derive(Debug, Default, Clone)]
pub struct MemBatchStore {
    inner: Arc<Mutex<BTreeMap<BatchRef, Vec<u8>>>>,
}

impl BatchStore for MemBatchStore {
    fn put(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        let mut m = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        m.insert(b.clone(), sealed.to_vec());
        Ok(())
    }
    fn get(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        m.get(b).cloned().ok_or(StoreError::NotFound)
    }
    fn list(&self) -> Result<Vec<BatchRef>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(m.keys().cloned().collect())
    }
    fn delete(&self, b: &BatchRef) -> Result<(), StoreError> {
        let mut m = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        m.remove(b);
        Ok(())
    }
    fn clean_temporaries(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// In-memory ledger (tests; a model of a database). Clones share the storage.
#[derive(Debug, Default, Clone)]
pub struct MemLedgerStore {
    inner: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl LedgerStore for MemLedgerStore {
    fn recover(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.inner.lock().map_err(|_| StoreError::Poisoned)?.clone())
    }
    fn append(&self, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .extend(entries.iter().cloned());
        Ok(())
    }
}

/// The conformance suite every backend pair must pass.
pub mod conformance {
    use super::{BatchRef, BatchStore, LedgerStore, StoreError};

    /// A backend under test: `open()` opens (or re-opens, as after a restart) the same
    /// underlying storage, which starts empty.
    pub trait Backend {
        /// Open the stores.
        fn open(&self) -> (Box<dyn LedgerStore>, Box<dyn BatchStore>);
    }

    /// Run every check; panics (it is a test) with the name of the failing check.
    pub fn run(backend: &dyn Backend) -> Result<(), StoreError> {
        let (ledger, batches) = backend.open();
        assert!(ledger.recover()?.is_empty(), "fresh ledger is empty");
        assert!(batches.list()?.is_empty(), "fresh batch store is empty");
        let e1 = br#"{"type":"key_rotated","n":1}"#.to_vec();
        let e2 = vec![7u8; 1000];
        let e3 = b"third".to_vec();
        ledger.append(&[e1.clone(), e2.clone()])?;
        ledger.append(std::slice::from_ref(&e3))?;
        ledger.append(&[])?;
        let a = BatchRef {
            study: "t2d-dk".into(),
            batch_id: [1; 16],
        };
        let b = BatchRef {
            study: "other-study".into(),
            batch_id: [2; 16],
        };
        batches.put(&a, b"sealed-a")?;
        batches.put(&b, &vec![9u8; 200_000])?;
        assert_eq!(batches.get(&a)?, b"sealed-a", "get returns what put stored");
        drop((ledger, batches));

        // Re-open: everything durable is there, in order.
        let (ledger, batches) = backend.open();
        assert_eq!(
            ledger.recover()?,
            vec![e1.clone(), e2.clone(), e3.clone()],
            "recover returns appended records in order"
        );
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(batches.list()?, want, "list returns every stored batch");
        batches.delete(&a)?;
        batches.delete(&a)?; // deleting twice is not an error
        assert!(
            matches!(batches.get(&a), Err(StoreError::NotFound)),
            "deleted batch is gone"
        );
        assert_eq!(batches.list()?, vec![b.clone()]);
        batches.clean_temporaries()?;
        ledger.append(&[b"fourth".to_vec()])?;
        drop((ledger, batches));
        let (ledger, _batches) = backend.open();
        assert_eq!(ledger.recover()?.len(), 4, "append after recover persists");
        drop(ledger);

        // Records with leaf hashes: the same records, each with the leaf hash of its bytes.
        let (ledger, _batches) = backend.open();
        let records = ledger.recover_records()?;
        assert_eq!(
            records.entries(),
            [e1, e2, e3, b"fourth".to_vec()],
            "recover_records returns the records recover returns"
        );
        assert_eq!(records.leaf_hashes().len(), records.len());
        for (e, h) in records.entries().iter().zip(records.leaf_hashes()) {
            assert_eq!(
                *h,
                datadonor_schemas::merkle::leaf_hash(e),
                "each record carries its own leaf hash"
            );
        }
        Ok(())
    }

    /// The checks of a store that keeps the steward's compacted batches beside the intake's
    /// (the directory and the bucket; `migrate` moves them), on an empty store: they are listed
    /// apart from the intake's batches, read back, never written over (nor is an intake batch),
    /// and deleted idempotently.
    pub fn compacted(batches: &dyn BatchStore) -> Result<(), StoreError> {
        assert!(batches.list_compacted()?.is_empty(), "fresh store has none");
        let c = BatchRef {
            study: "t2d-dk".into(),
            batch_id: [3; 16],
        };
        let i = BatchRef {
            study: "t2d-dk".into(),
            batch_id: [4; 16],
        };
        batches.put_compacted(&c, b"compacted")?;
        batches.put(&i, b"intake")?;
        assert_eq!(
            batches.list_compacted()?,
            vec![c.clone()],
            "compacted listed"
        );
        assert_eq!(batches.list()?, vec![i.clone()], "apart from the intake's");
        assert_eq!(batches.get_compacted(&c)?, b"compacted");
        assert!(
            matches!(
                batches.put_compacted(&c, b"other"),
                Err(StoreError::Conflict(_))
            ),
            "a compacted batch is never written over"
        );
        assert!(
            matches!(batches.put(&i, b"other"), Err(StoreError::Conflict(_))),
            "an intake batch is never written over"
        );
        assert_eq!(
            batches.get_compacted(&c)?,
            b"compacted",
            "still the first bytes"
        );
        assert!(batches.compaction_journals()?.is_empty());
        batches.delete_compacted(&c)?;
        batches.delete_compacted(&c)?;
        assert!(matches!(
            batches.get_compacted(&c),
            Err(StoreError::NotFound)
        ));
        assert!(batches.list_compacted()?.is_empty());
        assert_eq!(batches.list()?, vec![i], "the intake's batch stays");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of assorted lengths and the ledger file holding them.
    fn ledger_file() -> (Vec<Vec<u8>>, Vec<u8>) {
        let records: Vec<Vec<u8>> = [1usize, 7, 40, 3, 100, 33]
            .iter()
            .zip(b'a'..)
            .map(|(len, c)| vec![c; *len])
            .collect();
        let mut file = Vec::new();
        for r in &records {
            encode_record(r, &mut file);
        }
        (records, file)
    }

    /// Reading `bytes` in chunks of many sizes decides exactly as decoding the whole file, and
    /// every record comes with its own leaf hash.
    fn read_in_chunks(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (want, want_valid) = decode_records(bytes);
        for chunk in [
            1,
            2,
            3,
            5,
            8,
            13,
            43,
            44,
            64,
            bytes.len().max(1),
            READ_CHUNK,
        ] {
            let (got, valid, len) = read_records(&mut &bytes[..], chunk).unwrap();
            assert_eq!(got.leaf_hashes().len(), got.len(), "chunk {chunk}");
            for (e, h) in got.entries().iter().zip(got.leaf_hashes()) {
                assert_eq!(*h, leaf_hash(e), "chunk {chunk}");
            }
            let got = got.into_parts().0;
            assert_eq!(
                (&got, valid, len),
                (&want, want_valid as u64, bytes.len() as u64),
                "chunk {chunk}"
            );
        }
        want
    }

    #[test]
    fn chunked_recovery_keeps_exactly_the_intact_prefix() {
        let (records, file) = ledger_file();
        assert_eq!(read_in_chunks(&file), records);
        assert!(read_in_chunks(&[]).is_empty());
        // Torn tails: every cut keeps the records wholly before it.
        let mut ends = Vec::new();
        let mut end = 0;
        for r in &records {
            end += 4 + r.len() + 32;
            ends.push(end);
        }
        for cut in 0..file.len() {
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(read_in_chunks(&file[..cut]), records[..whole], "cut {cut}");
        }
    }

    #[test]
    fn a_damaged_record_is_never_recovered() {
        let (records, file) = ledger_file();
        let mut start = 0;
        for (k, r) in records.iter().enumerate() {
            let end = start + 4 + r.len() + 32;
            // Any flipped bit in record k (length, entry or stored hash) ends recovery at or
            // before record k: it and everything after it are dropped.
            for i in start..end {
                for bit in [0x01, 0x80] {
                    let mut damaged = file.clone();
                    damaged[i] ^= bit;
                    let got = read_in_chunks(&damaged);
                    assert!(
                        got.len() <= k,
                        "byte {i} bit {bit:#x}: record {k} recovered"
                    );
                    assert_eq!(got, records[..got.len()], "byte {i} bit {bit:#x}");
                }
            }
            start = end;
        }
    }
}
