//! Where a study's sealed batches are read from, and where compaction replaces them: the
//! intake's local batch directory (the embedded default) or a prefix of an S3-compatible bucket
//! (`s3://bucket/prefix`, the intake's `[storage] batches = "s3"`; [`crate::store_s3`]).
//!
//! The directory is one study's directory of the intake's batch tree, `batches/<study>/`. A batch
//! written by the intake's group commit is named `<32 hex batch id>.ddb`; a batch written here
//! (by compaction) is named `<32 hex batch id>.ddc`, a name the intake's recovery never touches
//! (it deletes `.ddb` files no ledger entry names). Other names are ignored. Replacement is
//! crash-safe through a journal (`compact.journal`): the new batches are written as `.tmp`
//! files and synced, then the journal naming the old and the new files is written and synced,
//! then the new files are renamed into place and the old ones removed, and the journal is
//! deleted last. [`BatchStore::open`] rolls an interrupted replacement forward (when the
//! journal exists) or discards its `.tmp` files (when it does not), so a crash never leaves a
//! donor's rows both in an old and a new batch, and never loses rows.
//!
//! Runs and compaction read only the batches the ledger accounts for ([`BatchStore::readable`]):
//! every compacted batch, and every intake batch a `donation_accepted` entry names. An intake
//! batch whose group never reached the ledger (written, then the append failed) is left unread
//! until the intake's sweep deletes it, so a donation retried into another group is never
//! counted twice.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use datadonor_schemas::batch::BatchHeader;
use datadonor_schemas::study::StudyId;
use serde::{Deserialize, Serialize};

use crate::sealed::{
    check_name, open_batch, open_batch_file, read_header, BatchError, OpenedBatch,
};
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// File extension of the batches this store writes (compaction output).
pub const BATCH_EXT: &str = "ddc";
/// File extension of the batches the intake writes.
pub const INTAKE_BATCH_EXT: &str = "ddb";
/// The compaction journal's file name.
pub const JOURNAL: &str = "compact.journal";
/// Ciphertext a bucket's reader fetches ahead of the batch being opened (half in flight, half
/// waiting).
pub const READ_AHEAD_BYTES: u64 = 64 << 20;
/// Largest possible header.
pub(crate) const MAX_HEADER_LEN: usize = 8 + 16 + 1 + 64 + 8 + 4 + 4 + 32 + 48;

/// A batch file found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFile {
    /// Its path.
    pub path: PathBuf,
    /// Its header.
    pub header: BatchHeader,
    /// Its size in bytes.
    pub len: u64,
}

/// A study's sealed batches: a local directory or a bucket prefix.
#[derive(Debug)]
pub struct BatchStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Dir(Dir),
    Bucket(crate::store_s3::Bucket),
}

/// The batches a run or a compaction reads, and the intake batches left unread.
#[derive(Debug, Clone, Default)]
pub struct Readable {
    /// Compacted batches and intake batches the ledger names, as [`BatchStore::list`] orders them.
    pub files: Vec<BatchFile>,
    /// Intake batches no `donation_accepted` entry names (their group's ledger append failed).
    pub unnamed: Vec<BatchFile>,
}

/// A replacement in progress: `compact.journal`'s JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Names of the batches it removes.
    pub remove: Vec<String>,
    /// Names of the batches it adds.
    pub add: Vec<String>,
}

impl Journal {
    /// Whether every batch the replacement adds is among `names` (object names and sizes):
    /// the replacement has taken effect.
    pub(crate) fn written(&self, names: &[(String, u64)]) -> bool {
        let present: std::collections::HashSet<&str> =
            names.iter().map(|(n, _)| n.as_str()).collect();
        self.add.iter().all(|a| present.contains(a.as_str()))
    }
}

/// Whether a file name is a batch's: 32 lowercase hex digits and `.ddb` or `.ddc`.
pub(crate) fn is_batch_name(name: &str) -> bool {
    name.strip_suffix(".ddc")
        .or_else(|| name.strip_suffix(".ddb"))
        .is_some_and(|stem| {
            stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Order batches by creation time, then id.
pub(crate) fn sort_batches(files: &mut [BatchFile]) {
    files.sort_by(|a, b| {
        (a.header.created_at, a.header.batch_id).cmp(&(b.header.created_at, b.header.batch_id))
    });
}

pub(crate) fn store_err(path: &Path, e: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Store {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), AnalyticsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store_err(dir, e))
}

impl BatchStore {
    /// Open a local batch directory, finishing or discarding an interrupted replacement.
    pub fn open(dir: &Path) -> Result<Self, AnalyticsError> {
        if !dir.is_dir() {
            return Err(store_err(dir, "not a directory"));
        }
        let s = Dir {
            dir: dir.to_path_buf(),
        };
        s.recover()?;
        Ok(Self {
            backend: Backend::Dir(s),
        })
    }

    /// Open `location`: `s3://bucket/prefix` (the bucket's endpoint, region and credentials
    /// from the `AWS_*` environment variables, [`crate::store_s3`]) or a local directory.
    pub fn open_location(location: &str) -> Result<Self, AnalyticsError> {
        Self::open_location_with(location, &[])
    }

    /// [`BatchStore::open_location`] with a bucket's settings given as object_store's S3
    /// configuration keys (`aws_endpoint`, `aws_access_key_id`, ...) over the environment's.
    pub fn open_location_with(
        location: &str,
        options: &[(&str, &str)],
    ) -> Result<Self, AnalyticsError> {
        if location.starts_with("s3://") {
            Ok(Self {
                backend: Backend::Bucket(crate::store_s3::Bucket::open(location, options)?),
            })
        } else {
            Self::open(Path::new(location))
        }
    }

    /// Where the batches are: the directory, or the bucket's `s3://` URL.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Dir(d) => d.dir.display().to_string(),
            Backend::Bucket(b) => b.url().to_string(),
        }
    }

    /// Every batch in the store with its header (headers only; nothing is decrypted).
    fn all(&self) -> Result<Vec<BatchFile>, AnalyticsError> {
        match &self.backend {
            Backend::Dir(d) => d.all(),
            Backend::Bucket(b) => b.all(),
        }
    }

    /// The batches of `study`, sorted by creation time then id (headers only; nothing is
    /// decrypted).
    pub fn list(&self, study: &StudyId) -> Result<Vec<BatchFile>, AnalyticsError> {
        let mut out: Vec<BatchFile> = self
            .all()?
            .into_iter()
            .filter(|b| b.header.study_id == study.as_str())
            .collect();
        sort_batches(&mut out);
        Ok(out)
    }

    /// The batches of `study` a run or a compaction reads: every compacted batch (`.ddc`) and
    /// every intake batch (`.ddb`) a `donation_accepted` entry of `ledger` names.
    pub fn readable(
        &self,
        study: &StudyId,
        ledger: &crate::ledger::LedgerIndex,
    ) -> Result<Readable, AnalyticsError> {
        let mut out = Readable::default();
        for f in self.list(study)? {
            let intake = f.path.extension().is_some_and(|e| e == INTAKE_BATCH_EXT);
            if intake && !ledger.names_batch(study, &f.header.batch_id) {
                out.unnamed.push(f);
            } else {
                out.files.push(f);
            }
        }
        Ok(out)
    }

    /// Study ids of every batch in the store.
    pub fn studies(&self) -> Result<Vec<StudyId>, AnalyticsError> {
        let mut ids: Vec<StudyId> = Vec::new();
        for b in self.all()? {
            let id = StudyId::new(&b.header.study_id).map_err(|e| store_err(&b.path, e))?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Read and open one batch in memory; checks that its name is the header's batch id.
    pub fn open_batch(&self, f: &BatchFile, vault: &VaultKey) -> Result<OpenedBatch, BatchError> {
        match &self.backend {
            Backend::Dir(_) => open_batch_file(&f.path, vault),
            Backend::Bucket(b) => {
                let bytes = b.read(&f.path)?;
                let opened = open_batch(&f.path, &bytes, vault)?;
                check_name(&f.path, opened)
            }
        }
    }

    /// Read and open `files` in order, one at a time as the iterator is driven; from a bucket
    /// the next batches' `GET`s are already under way (at most [`READ_AHEAD_BYTES`] of them, and
    /// 16 objects, counting by the largest), so a run over many small batches is not a
    /// sequence of round trips. Each item is checked as [`BatchStore::open_batch`] checks it.
    pub fn open_batches<'a>(
        &'a self,
        files: Vec<BatchFile>,
        vault: &'a VaultKey,
    ) -> Box<dyn Iterator<Item = Result<(BatchFile, OpenedBatch), BatchError>> + 'a> {
        match &self.backend {
            Backend::Dir(_) => Box::new(
                files
                    .into_iter()
                    .map(move |f| open_batch_file(&f.path, vault).map(|o| (f, o))),
            ),
            Backend::Bucket(b) => {
                let largest = files.iter().map(|f| f.len).max().unwrap_or(1).max(1);
                let in_flight = (READ_AHEAD_BYTES / largest).clamp(1, 32) as usize;
                let paths = files.iter().map(|f| f.path.clone()).collect();
                let reads = b.read_ahead(paths, in_flight);
                Box::new(files.into_iter().zip(reads).map(move |(f, (_, got))| {
                    let bytes = got?;
                    let opened = open_batch(&f.path, &bytes, vault)?;
                    check_name(&f.path, opened).map(|o| (f, o))
                }))
            }
        }
    }

    /// Write one new batch atomically.
    pub fn write(&self, header: &BatchHeader, bytes: &[u8]) -> Result<PathBuf, AnalyticsError> {
        match &self.backend {
            Backend::Dir(d) => d.write(header, bytes),
            Backend::Bucket(b) => b.write(header, bytes),
        }
    }

    /// Replace the batches `remove` by the new sealed batches `add`, crash-safely.
    pub fn replace(
        &self,
        remove: &[PathBuf],
        add: &[(BatchHeader, Vec<u8>)],
    ) -> Result<Vec<PathBuf>, AnalyticsError> {
        match &self.backend {
            Backend::Dir(d) => d.replace(remove, add),
            Backend::Bucket(b) => b.replace(remove, add),
        }
    }

    /// The bucket backend (tests drive an interrupted replacement through it).
    #[doc(hidden)]
    pub fn bucket(&self) -> Option<&crate::store_s3::Bucket> {
        match &self.backend {
            Backend::Bucket(b) => Some(b),
            Backend::Dir(_) => None,
        }
    }

    /// Roll back a bucket replacement that was interrupted before all its new batches were
    /// written (its journal stays until then, and blocks the next compaction, because S3
    /// cannot tell a running compaction from a dead one). Returns whether there was one. A
    /// directory needs no such step: opening it finishes or discards an interrupted one.
    pub fn abandon_interrupted(&self) -> Result<bool, AnalyticsError> {
        match &self.backend {
            Backend::Dir(_) => Ok(false),
            Backend::Bucket(b) => b.abandon_interrupted(),
        }
    }
}

/// The embedded default: one study's local batch directory.
#[derive(Debug)]
struct Dir {
    dir: PathBuf,
}

impl Dir {
    fn recover(&self) -> Result<(), AnalyticsError> {
        let jpath = self.dir.join(JOURNAL);
        match std::fs::read(&jpath) {
            Ok(bytes) => {
                let j: Journal =
                    serde_json::from_slice(&bytes).map_err(|e| store_err(&jpath, e))?;
                self.roll_forward(&j)?;
                std::fs::remove_file(&jpath).map_err(|e| store_err(&jpath, e))?;
                sync_dir(&self.dir)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                for entry in std::fs::read_dir(&self.dir).map_err(|e| store_err(&self.dir, e))? {
                    let entry = entry.map_err(|e| store_err(&self.dir, e))?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.strip_suffix(".tmp").is_some_and(is_batch_name) {
                        std::fs::remove_file(entry.path())
                            .map_err(|e| store_err(&entry.path(), e))?;
                    }
                }
            }
            Err(e) => return Err(store_err(&jpath, e)),
        }
        Ok(())
    }

    fn roll_forward(&self, j: &Journal) -> Result<(), AnalyticsError> {
        for name in &j.add {
            let tmp = self.dir.join(format!("{name}.tmp"));
            if tmp.exists() {
                std::fs::rename(&tmp, self.dir.join(name)).map_err(|e| store_err(&tmp, e))?;
            }
        }
        sync_dir(&self.dir)?;
        for name in &j.remove {
            let p = self.dir.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(store_err(&p, e)),
            }
        }
        Ok(())
    }

    /// Every batch file in the store with its header (headers only; nothing is decrypted).
    fn all(&self) -> Result<Vec<BatchFile>, AnalyticsError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| store_err(&self.dir, e))? {
            let entry = entry.map_err(|e| store_err(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !is_batch_name(&name) {
                continue;
            }
            let path = entry.path();
            let mut f = std::fs::File::open(&path).map_err(|e| BatchError::new(&path, e))?;
            let len = f.metadata().map_err(|e| BatchError::new(&path, e))?.len();
            let mut head = Vec::with_capacity(MAX_HEADER_LEN);
            std::io::Read::by_ref(&mut f)
                .take(MAX_HEADER_LEN as u64)
                .read_to_end(&mut head)
                .map_err(|e| BatchError::new(&path, e))?;
            let header = read_header(&path, &head)?;
            out.push(BatchFile { path, header, len });
        }
        Ok(out)
    }

    /// Write one new batch atomically (tmp file, sync, rename, sync directory).
    fn write(&self, header: &BatchHeader, bytes: &[u8]) -> Result<PathBuf, AnalyticsError> {
        let name = format!("{}.{BATCH_EXT}", header.batch_id_hex());
        let tmp = self.write_tmp(&name, bytes)?;
        let path = self.dir.join(&name);
        std::fs::rename(&tmp, &path).map_err(|e| store_err(&tmp, e))?;
        sync_dir(&self.dir)?;
        Ok(path)
    }

    fn write_tmp(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, AnalyticsError> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(|e| store_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| store_err(&tmp, e))?;
        f.sync_all().map_err(|e| store_err(&tmp, e))?;
        Ok(tmp)
    }

    fn replace(
        &self,
        remove: &[PathBuf],
        add: &[(BatchHeader, Vec<u8>)],
    ) -> Result<Vec<PathBuf>, AnalyticsError> {
        let mut added = Vec::new();
        for (h, bytes) in add {
            let name = format!("{}.{BATCH_EXT}", h.batch_id_hex());
            self.write_tmp(&name, bytes)?;
            added.push(name);
        }
        let journal = Journal {
            remove: remove
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect(),
            add: added.clone(),
        };
        let jbytes = serde_json::to_vec(&journal).map_err(|e| store_err(&self.dir, e))?;
        let jtmp = self.dir.join(format!("{JOURNAL}.tmp"));
        {
            let mut f = std::fs::File::create(&jtmp).map_err(|e| store_err(&jtmp, e))?;
            f.write_all(&jbytes).map_err(|e| store_err(&jtmp, e))?;
            f.sync_all().map_err(|e| store_err(&jtmp, e))?;
        }
        let jpath = self.dir.join(JOURNAL);
        std::fs::rename(&jtmp, &jpath).map_err(|e| store_err(&jtmp, e))?;
        sync_dir(&self.dir)?;
        self.roll_forward(&journal)?;
        std::fs::remove_file(&jpath).map_err(|e| store_err(&jpath, e))?;
        sync_dir(&self.dir)?;
        Ok(added.into_iter().map(|n| self.dir.join(n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::seal_batch;

    #[test]
    fn interrupted_replacement_rolls_forward_or_back() {
        let dir = tempfile::tempdir().expect("dir");
        let store = BatchStore::open(dir.path()).expect("store");
        let vault = VaultKey::generate(1);
        let study = StudyId::new("t2d-dk").expect("id");
        let (h1, b1) = seal_batch(b"one", &study, 1, &vault.public()).expect("seal");
        let old = store.write(&h1, &b1).expect("write");
        let (h2, b2) = seal_batch(b"two", &study, 2, &vault.public()).expect("seal");
        let raw = Dir {
            dir: dir.path().to_path_buf(),
        };
        // Crash after the tmp file, before the journal: the tmp file is discarded.
        raw.write_tmp(&format!("{}.{BATCH_EXT}", h2.batch_id_hex()), &b2)
            .expect("tmp");
        let store = BatchStore::open(dir.path()).expect("recovers");
        assert_eq!(store.list(&study).expect("list").len(), 1);
        // Crash after the journal: rolled forward.
        let name = format!("{}.{BATCH_EXT}", h2.batch_id_hex());
        raw.write_tmp(&name, &b2).expect("tmp");
        let j = Journal {
            remove: vec![old.file_name().expect("name").to_string_lossy().to_string()],
            add: vec![name],
        };
        std::fs::write(
            dir.path().join(JOURNAL),
            serde_json::to_vec(&j).expect("json"),
        )
        .expect("journal");
        let store = BatchStore::open(dir.path()).expect("recovers");
        let list = store.list(&study).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].header, h2);
        assert!(!dir.path().join(JOURNAL).exists());
    }
}
