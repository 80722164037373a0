//! Reading, verifying and appending to the consent ledger.
//!
//! [`LedgerSource`] gives entries, the latest signed checkpoint and consistency proofs;
//! [`LedgerSink`] appends `query_run` and `erasure_done` entries. Implementations:
//!
//! * [`crate::ledger_http::HttpLedger`]: the intake's auditor endpoints and `POST /v1/ledger/events`;
//! * [`LocalLedgerFile`]: the intake's ledger file, read directly in the embedded single-machine
//!   setup (records `u32 BE length || entry bytes || 32-byte RFC 9162 leaf hash`; a torn tail
//!   record is ignored);
//! * [`MemoryLedger`]: an in-memory log that signs its own checkpoints, for tests.
//!
//! [`verify_ledger`] reads the entries covered by the latest checkpoint, recomputes their
//! Merkle root and checks it against the checkpoint's signature and root, then checks that the
//! checkpoint is consistent (RFC 9162 consistency proof) with the last one verified, which it
//! keeps in a state directory. Entries appended after the checkpoint (the "tail") are read too
//! but are not covered by a signature; [`LedgerView`] uses them only in the conservative
//! direction (withdrawals and query runs count, new consents do not).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use datadonor_schemas::checkpoint::{self, Checkpoint, CheckpointError, NoteVerifier};
use datadonor_schemas::ledger::{consent_states, ConsentState, LedgerEntry};
use datadonor_schemas::merkle::{self, Hash, MerkleError, MerkleLog};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::UnixSeconds;

pub use crate::ledger_index::LedgerIndex;
use datadonor_schemas::WireError;

/// Entries fetched per request.
pub const PAGE: u64 = 1000;

/// Errors reading, verifying or appending to the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A local file could not be read or written.
    #[error("ledger file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A request to the intake failed.
    #[error("ledger request {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong (status and problem slug, or transport error).
        detail: String,
    },
    /// A response or record did not parse.
    #[error("ledger: malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// Why.
        detail: String,
    },
    /// An entry did not parse.
    #[error("ledger entry {index}: {source}")]
    Entry {
        /// Its index.
        index: u64,
        /// The parse error.
        source: WireError,
    },
    /// A local record's stored leaf hash is not the hash of its bytes.
    #[error("ledger record {index}: stored leaf hash does not match its bytes")]
    LeafHashMismatch {
        /// The record index.
        index: u64,
    },
    /// No signed checkpoint is available.
    #[error("no signed checkpoint available")]
    NoCheckpoint,
    /// The checkpoint does not open with the ledger key.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The source returned fewer entries than the checkpoint covers.
    #[error("ledger has {got} entries, the checkpoint covers {size}")]
    MissingEntries {
        /// Entries obtained.
        got: u64,
        /// Checkpoint size.
        size: u64,
    },
    /// The root of the entries read differs from the signed root.
    #[error("the entries' Merkle root differs from the signed checkpoint at size {size}")]
    RootMismatch {
        /// Checkpoint size.
        size: u64,
    },
    /// The new checkpoint is smaller than the last verified one.
    #[error("ledger rolled back: last verified size {old}, new checkpoint size {new}")]
    Rollback {
        /// Last verified size.
        old: u64,
        /// New size.
        new: u64,
    },
    /// The new checkpoint is not an extension of the last verified one.
    #[error("ledger is not append-only: checkpoint at size {new} is not consistent with the verified one at size {old}: {source}")]
    Inconsistent {
        /// Last verified size.
        old: u64,
        /// New size.
        new: u64,
        /// The proof failure.
        source: MerkleError,
    },
    /// The checkpoint names another log.
    #[error("checkpoint origin {found:?}, expected {expected:?}")]
    Origin {
        /// Expected origin.
        expected: String,
        /// Origin found.
        found: String,
    },
    /// The verified-checkpoint state could not be read or written.
    #[error("ledger state {}: {detail}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The sink refused an entry.
    #[error("ledger append refused: {0}")]
    Append(String),
    /// The checkpoint does not carry the witness quorum required (too few valid cosignatures by
    /// the required witnesses, or an invalid one).
    #[error("checkpoint witnesses: {0}")]
    Witnesses(datadonor_schemas::cosignature::CosignatureError),
}

/// Where ledger entries come from.
pub trait LedgerSource {
    /// The latest signed checkpoint (signed-note text).
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError>;
    /// Entry bytes with indices in `start..end`, in order; may return fewer when the log is
    /// shorter.
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError>;
    /// RFC 9162 consistency proof between tree sizes `from` and `to`.
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError>;
}

/// What an append returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Index of the new entry.
    pub index: u64,
}

/// Where `query_run` and `erasure_done` entries go.
pub trait LedgerSink {
    /// Append one entry.
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError>;
}

/// The ledger as the query service uses it: a view verified against the source's signed
/// checkpoint (consistent with the last verified one) on every read, and appends.
pub trait ServiceLedger {
    /// Read and verify the whole ledger, folding it as it streams ([`verify_ledger_index`]).
    fn verified_index(&self) -> Result<LedgerIndex, LedgerError>;
    /// Append one entry.
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError>;
}

/// A [`ServiceLedger`] over any source and sink, keeping the last verified checkpoint in a
/// state directory.
#[derive(Debug)]
pub struct VerifiedLedger<S> {
    /// Where entries come from and go to.
    pub source: S,
    /// The checkpoint verifiers.
    pub verifiers: Vec<NoteVerifier>,
    /// Where the last verified checkpoint is kept.
    pub state_dir: std::path::PathBuf,
}

impl<S: LedgerSource + LedgerSink> ServiceLedger for VerifiedLedger<S> {
    fn verified_index(&self) -> Result<LedgerIndex, LedgerError> {
        verify_ledger_index(&self.source, &self.verifiers, Some(&self.state_dir))
    }
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        self.source.append(entry)
    }
}

/// The time to log an entry with at the end of a run that started at `now` (taken at `since`):
/// `now` advanced by the run's duration. A long compaction or query logs the time it finishes,
/// which the intake checks against its own clock (`PROTOCOL.md`: within 5 minutes).
pub fn logged_at(now: UnixSeconds, since: std::time::Instant) -> UnixSeconds {
    now.saturating_add(i64::try_from(since.elapsed().as_secs()).unwrap_or(i64::MAX))
}

/// Ledger entries as read for one run: the verified prefix and the unverified tail.
#[derive(Debug, Clone, Default)]
pub struct LedgerView {
    /// Entries covered by a verified signed checkpoint (or, for an explicitly unverified view,
    /// every entry).
    pub verified: Vec<LedgerEntry>,
    /// Entries after the checkpoint.
    pub tail: Vec<LedgerEntry>,
    /// Size of the verified checkpoint, when there is one.
    pub checkpoint_size: Option<u64>,
}

impl LedgerView {
    /// A view over entries that were not checked against any checkpoint.
    pub fn unverified(entries: Vec<LedgerEntry>) -> Self {
        Self {
            verified: entries,
            tail: Vec::new(),
            checkpoint_size: None,
        }
    }

    /// The view of what `stream` hands out (each entry with whether a verified checkpoint
    /// covers it, in log order; the checkpoint's size, if any).
    pub fn collect<E>(
        stream: impl FnOnce(&mut dyn FnMut(LedgerEntry, bool)) -> Result<Option<u64>, E>,
    ) -> Result<Self, E> {
        let (mut verified, mut tail) = (Vec::new(), Vec::new());
        let checkpoint_size = stream(&mut |e, is_verified| {
            if is_verified {
                verified.push(e);
            } else {
                tail.push(e);
            }
        })?;
        Ok(Self {
            verified,
            tail,
            checkpoint_size,
        })
    }

    /// Every entry, verified first.
    pub fn all(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.verified.iter().chain(self.tail.iter())
    }

    /// This view's entries folded into a [`LedgerIndex`] (what runs and compaction use; the
    /// query service builds one while it streams the ledger, without a view).
    pub fn index(&self) -> LedgerIndex {
        let mut index = LedgerIndex::new();
        for e in &self.verified {
            index.add(e, true);
        }
        for e in &self.tail {
            index.add(e, false);
        }
        index.checkpoint_size = self.checkpoint_size;
        index.finish();
        index
    }

    /// The intake batches (hex batch ids) a `donation_accepted` entry of the verified prefix
    /// names for `study`: the batches whose group reached the ledger. An intake batch no entry
    /// names was written by a group whose ledger append failed; nothing reads it.
    pub fn named_batches(&self, study: &StudyId) -> HashSet<String> {
        self.index().named_batches(study)
    }

    /// Consent states of a study: grants from the verified prefix; withdrawals from anywhere.
    pub fn consent_states(&self, study: &StudyId) -> HashMap<Pseudonym, ConsentState> {
        let mut states = consent_states(study, self.verified.iter());
        for e in &self.tail {
            if let LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                time,
                ..
            } = e
            {
                if study_id == study {
                    if let Some(s) = states.get_mut(pseudonym) {
                        s.withdrawn_at.get_or_insert(*time);
                    }
                }
            }
        }
        states
    }

    /// The state of every consent record of a study, by record id: grants from the verified
    /// prefix; withdrawals (of the record they name) from anywhere.
    pub fn record_states(&self, study: &StudyId) -> HashMap<[u8; 16], RecordState> {
        self.index().record_states(study)
    }

    /// Consent records whose rows count for `purpose` at `now`: granted (in the verified
    /// prefix), not withdrawn, not expired, and consenting to the purpose.
    pub fn allowed_records(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashSet<[u8; 16]> {
        self.index().allowed_records(study, purpose, now)
    }

    /// [`LedgerView::allowed_records`] with the pseudonym each record was granted to: the donor
    /// the query engine counts a row under.
    pub fn allowed_record_donors(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashMap<[u8; 16], Pseudonym> {
        self.index().allowed_record_donors(study, purpose, now)
    }

    /// Pseudonyms with at least one consent record that covers `purpose` at `now`.
    pub fn allowed_donors(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashSet<Pseudonym> {
        self.index().allowed_donors(study, purpose, now)
    }

    /// Runs logged under an approval (by SHA-256 of its signed payload), anywhere in the log.
    pub fn runs_of(&self, approval_sha256: &[u8; 32]) -> u64 {
        self.index().runs_of(approval_sha256)
    }

    /// Withdrawn consent records of a study with no `erasure_done` entry yet, as (pseudonym,
    /// record id), sorted. A withdrawal counts wherever it is in the log (also when the
    /// record's grant is in the unverified tail). An `erasure_done` entry names the record it
    /// erased; one without a record (written before rows were matched to consent by record)
    /// covers every record of its pseudonym withdrawn before it.
    pub fn pending_erasures(&self, study: &StudyId) -> Vec<(Pseudonym, [u8; 16])> {
        self.index().pending_erasures(study)
    }
}

/// The state of one consent record, folded from its `consent_granted` entry and any
/// `consent_withdrawn` entry naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    /// The donor who consented.
    pub pseudonym: Pseudonym,
    /// Purposes consented to.
    pub purposes: Vec<String>,
    /// Expiry.
    pub expires_at: UnixSeconds,
    /// When withdrawn, if withdrawn.
    pub withdrawn_at: Option<UnixSeconds>,
    /// The time of the (last) `consent_granted` entry of the record.
    pub granted_at: UnixSeconds,
}

impl RecordState {
    /// Whether rows donated under this record count for `purpose` at time `t`.
    pub fn covers(&self, purpose: &str, t: UnixSeconds) -> bool {
        self.withdrawn_at.is_none()
            && t < self.expires_at
            && self.purposes.iter().any(|p| p == purpose)
    }
}

/// Read every entry from `source`, verify the prefix covered by its latest checkpoint, and
/// check consistency with the checkpoint last verified (kept in `state_dir`, when given). Every
/// entry is kept: the auditor's reports read them; runs and compaction need only
/// [`verify_ledger_index`].
pub fn verify_ledger(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: Option<&Path>,
) -> Result<LedgerView, LedgerError> {
    LedgerView::collect(|each| verify_ledger_with(source, verifiers, state_dir, each).map(Some))
}

/// [`verify_ledger`] folding each entry into a [`LedgerIndex`] as it streams past: no entry
/// is kept (what the query service and compaction use).
pub fn verify_ledger_index(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: Option<&Path>,
) -> Result<LedgerIndex, LedgerError> {
    LedgerIndex::fold(|each| verify_ledger_with(source, verifiers, state_dir, each).map(Some))
}

/// The verification itself, streaming: pages of [`PAGE`] entries are hashed into the tree's
/// right edge ([`merkle::Frontier`]) and parsed, each entry handed to `each` with whether the
/// checkpoint covers it, in log order, then dropped; only one page of entry bytes and O(log n)
/// hashes are held. The verdict comes after the last entry, so `each` may have seen entries of
/// a ledger that is then refused: a caller keeps nothing of an `Err`. Errors are reported in the
/// order a whole-log check finds them: the checkpoint's signature, missing entries, the root,
/// the stored checkpoint (origin, rollback, consistency), then an entry that does not parse.
/// Returns the checkpoint's size.
pub fn verify_ledger_with(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: Option<&Path>,
    each: &mut dyn FnMut(LedgerEntry, bool),
) -> Result<u64, LedgerError> {
    let note = source.checkpoint()?;
    let signed = checkpoint::open(&note, verifiers)?;
    let cp = signed.checkpoint;
    let size = cp.size;
    // The head verified before, read first so that the stream can keep the root at its size.
    let stored = state_dir.map(|dir| stored_checkpoint(dir, verifiers));
    let old_size = match &stored {
        Some(Ok(Some(old))) => Some(old.size),
        _ => None,
    };
    let mut frontier = merkle::Frontier::new();
    let mut root_at_old = (old_size == Some(0)).then(|| frontier.root());
    let mut bad_entry: Option<LedgerError> = None;
    let mut start = 0u64;
    while start < size {
        let end = (start + PAGE).min(size);
        let page = source.entries(start, end)?;
        if page.is_empty() {
            break;
        }
        for (i, bytes) in page.into_iter().enumerate() {
            let index = start + i as u64;
            if index >= size {
                break;
            }
            frontier.push(merkle::leaf_hash(&bytes));
            if Some(frontier.size()) == old_size {
                root_at_old = Some(frontier.root());
            }
            if bad_entry.is_none() {
                match LedgerEntry::from_bytes(&bytes) {
                    Ok(e) => each(e, true),
                    Err(source) => bad_entry = Some(LedgerError::Entry { index, source }),
                }
            }
        }
        start = frontier.size();
    }
    if frontier.size() != size {
        return Err(LedgerError::MissingEntries {
            got: frontier.size(),
            size,
        });
    }
    if frontier.root() != cp.root {
        return Err(LedgerError::RootMismatch { size });
    }
    if let (Some(dir), Some(stored)) = (state_dir, stored) {
        if let Some(old) = stored? {
            check_against_state(source, root_at_old, &old, &cp)?;
        }
        save_state(dir, &note)?;
    }
    if let Some(e) = bad_entry {
        return Err(e);
    }
    // The unverified tail: an entry that does not parse is an error; a source that cannot
    // give it ends it.
    match stream_entries(source, size, &mut |e| each(e, false)) {
        Ok(_) => {}
        Err(e @ LedgerError::Entry { .. }) => return Err(e),
        Err(e) => tracing::warn!("ledger entries after the checkpoint not readable: {e}"),
    }
    Ok(size)
}

/// Hand every entry of `source` from index `start` on to `each`, parsed, a page of [`PAGE`] at
/// a time, no signature checked; the index after the last. An entry that does not parse is
/// [`LedgerError::Entry`] naming its index.
pub fn stream_entries(
    source: &dyn LedgerSource,
    start: u64,
    each: &mut dyn FnMut(LedgerEntry),
) -> Result<u64, LedgerError> {
    let mut start = start;
    loop {
        let page = source.entries(start, start + PAGE)?;
        if page.is_empty() {
            return Ok(start);
        }
        for (i, bytes) in page.iter().enumerate() {
            let e = LedgerEntry::from_bytes(bytes).map_err(|source| LedgerError::Entry {
                index: start + i as u64,
                source,
            })?;
            each(e);
        }
        start += page.len() as u64;
    }
}

/// Name of the file in a state directory holding the last verified signed checkpoint.
pub const STATE_FILE: &str = "verified-checkpoint";

/// The checkpoint kept in `dir`, opened with `verifiers` (`None` when there is none yet).
fn stored_checkpoint(
    dir: &Path,
    verifiers: &[NoteVerifier],
) -> Result<Option<Checkpoint>, LedgerError> {
    let path = dir.join(STATE_FILE);
    let old_note = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LedgerError::State {
                path,
                detail: e.to_string(),
            })
        }
    };
    checkpoint::open(&old_note, verifiers)
        .map(|s| Some(s.checkpoint))
        .map_err(|e| LedgerError::State {
            path,
            detail: format!("stored checkpoint does not open: {e}"),
        })
}

/// `cp` against the head `old` verified before: same origin, no smaller, consistent by the
/// source's proof, and the entries just read reproduce its root (`local_old`, the root the
/// stream saw at `old.size`).
fn check_against_state(
    source: &dyn LedgerSource,
    local_old: Option<Hash>,
    old: &Checkpoint,
    cp: &Checkpoint,
) -> Result<(), LedgerError> {
    if old.origin != cp.origin {
        return Err(LedgerError::Origin {
            expected: old.origin.clone(),
            found: cp.origin.clone(),
        });
    }
    if old.size > cp.size {
        return Err(LedgerError::Rollback {
            old: old.size,
            new: cp.size,
        });
    }
    if old.size == 0 {
        return Ok(());
    }
    let proof = if old.size == cp.size {
        Vec::new()
    } else {
        source.consistency_proof(old.size, cp.size)?
    };
    merkle::verify_consistency(
        old.size,
        cp.size,
        &proof,
        old.root.as_bytes(),
        cp.root.as_bytes(),
    )
    .map_err(|source| LedgerError::Inconsistent {
        old: old.size,
        new: cp.size,
        source,
    })?;
    // The entries we read must also reproduce the old root.
    if local_old != Some(old.root) {
        return Err(LedgerError::Inconsistent {
            old: old.size,
            new: cp.size,
            source: MerkleError::Root1Mismatch,
        });
    }
    Ok(())
}

fn save_state(dir: &Path, note: &[u8]) -> Result<(), LedgerError> {
    let err = |detail: String| LedgerError::State {
        path: dir.join(STATE_FILE),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    f.write_all(note).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(|e| err(e.to_string()))
}

/// Encode one ledger-file record (the format is
/// [`datadonor_schemas::ledger::encode_ledger_record`]).
pub fn encode_record(entry_bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry_bytes.len() + 36);
    datadonor_schemas::ledger::encode_ledger_record(entry_bytes, &mut out);
    out
}

/// Decode ledger-file records, stopping at a torn tail (a write that never finished). A record
/// with an impossible length or a wrong leaf hash is an error. Returns the entries' bytes.
pub fn decode_records(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>, LedgerError> {
    let r = datadonor_schemas::ledger::decode_ledger_records(bytes);
    check_tail(bytes, &r, path, 0)?;
    Ok(r.entries.into_iter().map(<[u8]>::to_vec).collect())
}

/// The error for a damaged record in `r` (decoded from `bytes`, whose first record is record
/// `first` of the file); a torn tail is not an error.
fn check_tail(
    bytes: &[u8],
    r: &datadonor_schemas::ledger::LedgerRecords<'_>,
    path: &Path,
    first: u64,
) -> Result<(), LedgerError> {
    if let datadonor_schemas::ledger::RecordTail::Corrupt { index } = r.tail {
        let index = first + index;
        let bad_length = bytes
            .get(r.valid_len..r.valid_len + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .is_some_and(|len| len == 0 || len as usize > datadonor_schemas::ledger::MAX_ENTRY_LEN);
        return Err(if bad_length {
            LedgerError::Malformed {
                what: format!("record {index} of {}", path.display()),
                detail: "length is zero or exceeds the entry limit".into(),
            }
        } else {
            LedgerError::LeafHashMismatch { index }
        });
    }
    Ok(())
}

/// Bytes read from a ledger file at a time.
const FILE_CHUNK: usize = 1 << 20;

/// The intake's ledger file, read directly (embedded single-machine setup).
///
/// Appending (as a [`LedgerSink`]) writes whole records with one `write` on a file opened for
/// appending and syncs it; it is meant for the embedded setup where the intake does not run
/// concurrently, or for a ledger file that analytics owns. With a running intake use
/// [`crate::ledger_http::HttpLedger`].
#[derive(Debug)]
pub struct LocalLedgerFile {
    path: PathBuf,
    checkpoint_path: Option<PathBuf>,
    /// Where the last read stopped: (record index, byte offset of that record), so that pages
    /// read in order cost one pass over the file.
    cursor: Mutex<(u64, u64)>,
}

impl LocalLedgerFile {
    /// A ledger file; `checkpoint_path` holds the intake's latest signed checkpoint, if any.
    pub fn new(path: &Path, checkpoint_path: Option<&Path>) -> Self {
        Self {
            path: path.to_path_buf(),
            checkpoint_path: checkpoint_path.map(Path::to_path_buf),
            cursor: Mutex::new((0, 0)),
        }
    }

    /// Records `start..end` (fewer when the file is shorter; a torn last record ends it),
    /// read in chunks from the last read's position when `start` is at or beyond it, else from
    /// the beginning; `None` for `end` reads to the end. Entries before `start` are skipped
    /// without being copied; with `keep` false, nothing is copied (counting).
    fn read_range(
        &self,
        start: u64,
        end: Option<u64>,
        keep: bool,
    ) -> Result<(Vec<Vec<u8>>, u64), LedgerError> {
        use std::io::{Read as _, Seek as _};
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io(e)),
        };
        let cursor = *self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let (mut index, mut offset) = if cursor.0 <= start { cursor } else { (0, 0) };
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut buf: Vec<u8> = Vec::with_capacity(FILE_CHUNK);
        let mut out = Vec::new();
        let mut eof = false;
        while !eof && end.is_none_or(|e| index < e) {
            let have = buf.len();
            buf.resize(have + FILE_CHUNK, 0);
            let n = f.read(&mut buf[have..]).map_err(io)?;
            buf.truncate(have + n);
            eof = n == 0;
            let r = datadonor_schemas::ledger::decode_ledger_records(&buf);
            check_tail(&buf, &r, &self.path, index)?;
            let mut used = 0usize;
            for e in &r.entries {
                if end.is_some_and(|end| index >= end) {
                    break;
                }
                if keep && index >= start {
                    out.push(e.to_vec());
                }
                index += 1;
                used += 4 + e.len() + 32;
            }
            offset += used as u64;
            buf.drain(..used);
        }
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = (index, offset);
        Ok((out, index))
    }

    /// Every entry's bytes.
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>, LedgerError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(LedgerError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        decode_records(&bytes, &self.path)
    }

    /// Every entry, parsed, unverified.
    pub fn unverified_view(&self) -> Result<LedgerView, LedgerError> {
        LedgerView::collect(|each| stream_entries(self, 0, &mut |e| each(e, true)).map(|_| None))
    }
}

impl LedgerSource for LocalLedgerFile {
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        let p = self
            .checkpoint_path
            .as_ref()
            .ok_or(LedgerError::NoCheckpoint)?;
        std::fs::read(p).map_err(|source| LedgerError::Io {
            path: p.clone(),
            source,
        })
    }
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        Ok(self.read_range(start, Some(end), true)?.0)
    }
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        let log = MerkleLog::from_leaves(self.read_all()?.iter().map(|b| merkle::leaf_hash(b)));
        log.consistency_proof(from, to)
            .map_err(|e| LedgerError::Malformed {
                what: "consistency proof request".into(),
                detail: e.to_string(),
            })
    }
}

impl LedgerSink for LocalLedgerFile {
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        let index = self.read_range(u64::MAX, None, false)?.1;
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(&encode_record(&entry.to_bytes())).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Appended { index })
    }
}

/// An in-memory ledger that signs its own checkpoints: for tests and demos.
pub struct MemoryLedger {
    entries: Mutex<Vec<Vec<u8>>>,
    key: SigningKey,
    origin: String,
    key_name: String,
}

impl std::fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryLedger({})", self.origin)
    }
}

impl MemoryLedger {
    /// An empty ledger with a fresh checkpoint key.
    pub fn new(origin: &str) -> Result<Self, LedgerError> {
        let key = SigningKey::generate().map_err(|e| LedgerError::Append(e.to_string()))?;
        Ok(Self {
            entries: Mutex::new(Vec::new()),
            key,
            origin: origin.to_string(),
            key_name: origin.to_string(),
        })
    }

    /// The verifier of its checkpoints.
    pub fn verifier(&self) -> Result<NoteVerifier, LedgerError> {
        Ok(NoteVerifier::from_key_pair(
            &self.key_name,
            self.key.key_pair(),
        )?)
    }

    /// Append any entry (tests use this to record consents and withdrawals).
    pub fn push(&self, entry: &LedgerEntry) -> u64 {
        self.push_bytes(entry.to_bytes())
    }

    /// Append raw entry bytes.
    pub fn push_bytes(&self, bytes: Vec<u8>) -> u64 {
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        g.push(bytes);
        g.len() as u64 - 1
    }

    /// Every entry, parsed.
    pub fn parsed(&self) -> Vec<LedgerEntry> {
        let g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter_map(|b| LedgerEntry::from_bytes(b).ok())
            .collect()
    }

    /// Replace an entry's bytes (tests of tampering).
    pub fn tamper(&self, index: usize, bytes: Vec<u8>) {
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = g.get_mut(index) {
            *slot = bytes;
        }
    }

    fn log(&self) -> MerkleLog {
        let g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        MerkleLog::from_leaves(g.iter().map(|b| merkle::leaf_hash(b)))
    }

    /// A signed checkpoint over the first `size` entries.
    pub fn checkpoint_at(&self, size: u64) -> Result<Vec<u8>, LedgerError> {
        let root = self
            .log()
            .root_at(size)
            .map_err(|e| LedgerError::Malformed {
                what: "checkpoint size".into(),
                detail: e.to_string(),
            })?;
        let cp = Checkpoint::new(self.origin.clone(), size, root)?;
        Ok(checkpoint::sign(&cp, &self.key_name, self.key.key_pair())?.into_bytes())
    }
}

impl LedgerSource for MemoryLedger {
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        let size = self.log().size();
        self.checkpoint_at(size)
    }
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.iter()
            .skip(start as usize)
            .take(end.saturating_sub(start) as usize)
            .cloned()
            .collect())
    }
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        self.log()
            .consistency_proof(from, to)
            .map_err(|e| LedgerError::Malformed {
                what: "consistency proof request".into(),
                detail: e.to_string(),
            })
    }
}

impl LedgerSink for MemoryLedger {
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        if !matches!(
            entry,
            LedgerEntry::QueryRun { .. } | LedgerEntry::ErasureDone { .. }
        ) {
            return Err(LedgerError::Append(format!(
                "entry type {} is not allowed from analytics",
                entry.kind()
            )));
        }
        Ok(Appended {
            index: self.push(entry),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datadonor_schemas::signing::PublicKey;

    fn grant(study: &str, p: u8, expires: i64) -> LedgerEntry {
        LedgerEntry::ConsentGranted {
            time: 10,
            study_id: StudyId::new(study).expect("id"),
            study_version: 1,
            pseudonym: Pseudonym([p; 32]),
            consent_record_id: [p; 16],
            purposes: vec!["a".into()],
            given_at: 10,
            expires_at: expires,
            manifest_sha256: [0; 32],
            donor_public_key: PublicKey([p; 32]),
        }
    }

    #[test]
    fn verifies_and_detects_tampering_and_rollback() {
        let l = MemoryLedger::new("datadonor.test/log").expect("ledger");
        let v = vec![l.verifier().expect("verifier")];
        for i in 0..5 {
            l.push(&grant("study-a", i, 100));
        }
        let dir = tempfile::tempdir().expect("dir");
        let view = verify_ledger(&l, &v, Some(dir.path())).expect("verifies");
        assert_eq!(view.verified.len(), 5);
        for i in 5..2100 {
            l.push(&grant("study-a", (i % 250) as u8, 100));
        }
        let view = verify_ledger(&l, &v, Some(dir.path())).expect("extension verifies");
        assert_eq!(view.verified.len(), 2100);
        // Rewriting history is caught by the signed root.
        l.tamper(3, grant("study-a", 99, 100).to_bytes());
        assert!(verify_ledger(&l, &v, Some(dir.path())).is_err());
        // A fresh log signed by the same key (history rewritten, re-signed) is inconsistent.
        l.tamper(3, grant("study-a", 3, 100).to_bytes());
        let forked = MemoryLedger {
            entries: Mutex::new(Vec::new()),
            key: SigningKey::from_seed(l.key.seed()).expect("key"),
            origin: l.origin.clone(),
            key_name: l.key_name.clone(),
        };
        for i in 0..2200u32 {
            forked.push(&grant("study-a", (i % 200) as u8 + 1, 100));
        }
        assert!(matches!(
            verify_ledger(&forked, &v, Some(dir.path())),
            Err(LedgerError::Inconsistent { .. })
        ));
        let short = MemoryLedger {
            entries: Mutex::new(Vec::new()),
            key: SigningKey::from_seed(l.key.seed()).expect("key"),
            origin: l.origin.clone(),
            key_name: l.key_name.clone(),
        };
        short.push(&grant("study-a", 1, 100));
        assert!(matches!(
            verify_ledger(&short, &v, Some(dir.path())),
            Err(LedgerError::Rollback { .. })
        ));
        // A checkpoint by another key is refused.
        let other = MemoryLedger::new("datadonor.test/log").expect("ledger");
        assert!(matches!(
            verify_ledger(&other, &v, None),
            Err(LedgerError::Checkpoint(_))
        ));
    }

    fn run(study: &str, approval: u8, researcher: &str, epsilon: f64) -> LedgerEntry {
        LedgerEntry::QueryRun {
            time: 30,
            study_id: StudyId::new(study).expect("id"),
            query_sha256: [0; 32],
            approval_sha256: [approval; 32],
            researcher: researcher.into(),
            purpose: "a".into(),
            donors_considered: 1,
            cells_published: 1,
            cells_suppressed: 0,
            privacy: Some(datadonor_schemas::privacy::RunPrivacy {
                epsilon,
                delta: 1e-7,
                study_epsilon_left: 0.0,
                study_delta_left: 0.0,
                researcher_epsilon_left: 0.0,
                researcher_delta_left: 0.0,
            }),
        }
    }

    fn accepted(study: &str, p: u8, batch_id: &str) -> LedgerEntry {
        LedgerEntry::DonationAccepted {
            time: 11,
            study_id: StudyId::new(study).expect("id"),
            pseudonym: Pseudonym([p; 32]),
            consent_record_id: [p; 16],
            idempotency_key: [p; 16],
            envelope_sha256: [0; 32],
            rows: 1,
            batch_id: batch_id.into(),
        }
    }

    #[test]
    fn the_streamed_index_answers_as_the_view_and_keeps_no_entry() {
        let l = MemoryLedger::new("datadonor.test/log").expect("ledger");
        let v = vec![l.verifier().expect("verifier")];
        let study = StudyId::new("study-a").expect("id");
        let batch = hex::encode([7u8; 16]);
        for i in 0..40u8 {
            l.push(&grant(
                if i % 4 == 0 { "study-b" } else { "study-a" },
                i,
                100,
            ));
            l.push(&accepted("study-a", i, &batch));
        }
        // An upper-case id names no batch (object names are lower case).
        l.push(&accepted("study-a", 1, &hex::encode_upper([0xab; 16])));
        l.push(&LedgerEntry::ConsentWithdrawn {
            time: 20,
            study_id: study.clone(),
            pseudonym: Pseudonym([5; 32]),
            consent_record_id: [5; 16],
            withdrawal_sha256: [0; 32],
        });
        for (a, r, e) in [(1, "r1", 0.1), (1, "r2", 0.2), (2, "r1", 0.3)] {
            l.push(&run("study-a", a, r, e));
        }
        let view = verify_ledger(&l, &v, None).expect("view");
        let index = verify_ledger_index(&l, &v, None).expect("index");
        let folded = view.index();
        assert_eq!(index.entries(), 85);
        assert_eq!(index.records(), 40);
        assert_eq!(index.checkpoint_size, Some(85));
        for i in [&index, &folded] {
            assert_eq!(i.record_states(&study), view.record_states(&study));
            assert_eq!(i.record_states(&study).len(), 30);
            assert_eq!(i.record_states(&study)[&[5; 16]].withdrawn_at, Some(20));
            assert_eq!(i.allowed_record_donors(&study, "a", 50).len(), 29);
            assert!(i.allowed_record_donors(&study, "b", 50).is_empty());
            assert!(i.allowed_record_donors(&study, "a", 100).is_empty());
            assert_eq!(
                i.pending_erasures(&study),
                vec![(Pseudonym([5; 32]), [5; 16])]
            );
            assert_eq!(
                (
                    i.runs_of(&[1; 32]),
                    i.runs_of(&[2; 32]),
                    i.runs_of(&[3; 32])
                ),
                (2, 1, 0)
            );
            let all = i.spent(&study, None);
            assert!((all.epsilon - 0.6).abs() < 1e-12 && (all.delta - 3e-7).abs() < 1e-18);
            assert!((i.spent(&study, Some("r1")).epsilon - 0.4).abs() < 1e-12);
            assert_eq!(
                i.spent(&StudyId::new("study-b").expect("id"), None).epsilon,
                0.0
            );
            assert_eq!(i.named_batches(&study), HashSet::from([batch.clone()]));
            assert!(i.names_batch(&study, &[7; 16]) && !i.names_batch(&study, &[0xab; 16]));
        }
    }

    #[test]
    fn streaming_reports_errors_in_the_order_a_whole_log_check_does() {
        let l = MemoryLedger::new("datadonor.test/log").expect("ledger");
        let v = vec![l.verifier().expect("verifier")];
        for i in 0..1500u32 {
            l.push(&grant("study-a", (i % 200) as u8, 100));
        }
        // An entry that does not parse, under a root that commits to it: named by index.
        l.push_bytes(b"{not an entry".to_vec());
        l.push(&grant("study-a", 1, 100));
        assert!(matches!(
            verify_ledger_index(&l, &v, None),
            Err(LedgerError::Entry { index: 1500, .. })
        ));
        // The same entry under a root it does not match: the root is what is wrong.
        let cp = l.checkpoint().expect("checkpoint");
        let tampered = MemoryLedger {
            entries: Mutex::new(l.entries.lock().expect("lock").clone()),
            key: SigningKey::from_seed(l.key.seed()).expect("key"),
            origin: l.origin.clone(),
            key_name: l.key_name.clone(),
        };
        tampered.tamper(3, b"{also not an entry".to_vec());
        struct Fixed<'a>(&'a MemoryLedger, Vec<u8>);
        impl LedgerSource for Fixed<'_> {
            fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
                Ok(self.1.clone())
            }
            fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
                self.0.entries(start, end)
            }
            fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
                self.0.consistency_proof(from, to)
            }
        }
        assert!(matches!(
            verify_ledger_index(&Fixed(&tampered, cp), &v, None),
            Err(LedgerError::RootMismatch { size: 1502 })
        ));
        // A source that stops short of its checkpoint.
        struct Short<'a>(&'a MemoryLedger);
        impl LedgerSource for Short<'_> {
            fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
                self.0.checkpoint()
            }
            fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
                self.0.entries(start, end.min(1200))
            }
            fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
                self.0.consistency_proof(from, to)
            }
        }
        assert!(matches!(
            verify_ledger_index(&Short(&l), &v, None),
            Err(LedgerError::MissingEntries {
                got: 1200,
                size: 1502
            })
        ));
    }

    #[test]
    fn file_pages_read_in_one_pass_match_the_whole_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.log");
        let mut bytes = Vec::new();
        // About 2.5 chunks of records, so pages cross chunk boundaries.
        let all: Vec<Vec<u8>> = (0..8000u32)
            .map(|i| grant("study-a", (i % 251) as u8, i64::from(i)).to_bytes())
            .collect();
        for e in &all {
            bytes.extend(encode_record(e));
        }
        assert!(bytes.len() > 2 * FILE_CHUNK);
        let torn = encode_record(&all[0]);
        bytes.extend(&torn[..torn.len() - 5]);
        std::fs::write(&path, &bytes).expect("write");
        let f = LocalLedgerFile::new(&path, None);
        let mut paged = Vec::new();
        let mut start = 0;
        loop {
            let page = f.entries(start, start + 777).expect("page");
            if page.is_empty() {
                break;
            }
            start += page.len() as u64;
            paged.extend(page);
        }
        assert_eq!(paged, all);
        // Backwards and overlapping reads start again and agree.
        assert_eq!(f.entries(10, 12).expect("page"), all[10..12].to_vec());
        assert_eq!(f.entries(7990, 9000).expect("page"), all[7990..].to_vec());
        assert_eq!(f.read_range(u64::MAX, None, false).expect("count").1, 8000);
        // Damage in the third chunk is reported with the record's index in the file.
        let third = 2 * FILE_CHUNK + 100;
        let mut damaged = bytes.clone();
        damaged[third] ^= 0x55;
        std::fs::write(&path, &damaged).expect("write");
        let f = LocalLedgerFile::new(&path, None);
        let err = (0..8000u64)
            .step_by(1000)
            .find_map(|s| f.entries(s, s + 1000).err())
            .expect("found");
        let whole = decode_records(&damaged, &path).expect_err("whole file");
        assert_eq!(err.to_string(), whole.to_string());
        match err {
            LedgerError::LeafHashMismatch { index } => assert!(index > 4000, "{index}"),
            LedgerError::Malformed { what, .. } => assert!(what.starts_with("record "), "{what}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn file_records_round_trip_and_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.log");
        let f = LocalLedgerFile::new(&path, None);
        let mut bytes = Vec::new();
        for i in 0..3 {
            bytes.extend(encode_record(&grant("study-a", i, 100).to_bytes()));
        }
        let full = bytes.len();
        bytes.extend(&encode_record(&grant("study-a", 9, 100).to_bytes())[..20]);
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(f.read_all().expect("reads").len(), 3);
        // A flipped byte inside a complete record is an error, not a silent drop.
        let mut bad = bytes[..full].to_vec();
        bad[10] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        assert!(matches!(
            f.read_all(),
            Err(LedgerError::LeafHashMismatch { index: 0 })
        ));
    }

    #[test]
    fn tail_withdrawals_count_but_tail_grants_do_not() {
        let study = StudyId::new("study-a").expect("id");
        let view = LedgerView {
            verified: vec![grant("study-a", 1, 100), grant("study-a", 2, 100)],
            tail: vec![
                grant("study-a", 3, 100),
                LedgerEntry::ConsentWithdrawn {
                    time: 20,
                    study_id: study.clone(),
                    pseudonym: Pseudonym([2; 32]),
                    consent_record_id: [2; 16],
                    withdrawal_sha256: [0; 32],
                },
            ],
            checkpoint_size: Some(2),
        };
        let allowed = view.allowed_donors(&study, "a", 50);
        assert_eq!(allowed, HashSet::from([Pseudonym([1; 32])]));
        assert_eq!(
            view.allowed_records(&study, "a", 50),
            HashSet::from([[1; 16]])
        );
        assert_eq!(
            view.pending_erasures(&study),
            vec![(Pseudonym([2; 32]), [2; 16])]
        );
    }

    #[test]
    fn consent_is_per_record_and_erasures_name_their_record() {
        let study = StudyId::new("study-a").expect("id");
        let p = Pseudonym([1; 32]);
        let granted = |record: u8, t: i64| LedgerEntry::ConsentGranted {
            time: t,
            study_id: study.clone(),
            study_version: 1,
            pseudonym: p,
            consent_record_id: [record; 16],
            purposes: vec!["a".into()],
            given_at: t,
            expires_at: 1000,
            manifest_sha256: [0; 32],
            donor_public_key: PublicKey([1; 32]),
        };
        let withdrawn = |record: u8, t: i64| LedgerEntry::ConsentWithdrawn {
            time: t,
            study_id: study.clone(),
            pseudonym: p,
            consent_record_id: [record; 16],
            withdrawal_sha256: [0; 32],
        };
        let erased = |record: Option<u8>, t: i64| LedgerEntry::ErasureDone {
            time: t,
            study_id: study.clone(),
            pseudonym: p,
            consent_record_id: record.map(|r| [r; 16]),
            rows_erased: 1,
            batches_rewritten: Vec::new(),
        };
        // Record A withdrawn, the donor consents again under B.
        let mut view =
            LedgerView::unverified(vec![granted(0xa, 10), withdrawn(0xa, 20), granted(0xb, 30)]);
        let states = view.record_states(&study);
        assert_eq!(states[&[0xa; 16]].withdrawn_at, Some(20));
        assert_eq!(states[&[0xb; 16]].withdrawn_at, None);
        assert_eq!(
            view.allowed_records(&study, "a", 40),
            HashSet::from([[0xb; 16]])
        );
        assert_eq!(
            view.allowed_record_donors(&study, "a", 40),
            HashMap::from([([0xb; 16], p)])
        );
        assert_eq!(view.allowed_donors(&study, "a", 40), HashSet::from([p]));
        assert_eq!(view.allowed_records(&study, "b", 40), HashSet::new());
        assert_eq!(view.allowed_records(&study, "a", 1000), HashSet::new());
        // A's rows still await erasure although the donor is active again.
        assert_eq!(view.pending_erasures(&study), vec![(p, [0xa; 16])]);
        view.verified.push(erased(Some(0xb), 50));
        assert_eq!(view.pending_erasures(&study), vec![(p, [0xa; 16])]);
        view.verified.push(erased(Some(0xa), 60));
        assert!(view.pending_erasures(&study).is_empty());
        // An older entry without a record erased every record withdrawn before it.
        let view = LedgerView::unverified(vec![
            granted(0xa, 10),
            withdrawn(0xa, 20),
            erased(None, 25),
            granted(0xb, 30),
            withdrawn(0xb, 35),
        ]);
        assert_eq!(view.pending_erasures(&study), vec![(p, [0xb; 16])]);
    }
}
