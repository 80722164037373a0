//! The directory of sealed batches (embedded storage): listing a study's batches and replacing
//! a set of batches atomically during compaction.
//!
//! The store is one study's directory of the intake's batch tree, `batches/<study>/`. A batch
//! written by the intake's group commit is named `<32 hex batch id>.ddb`; a batch written here
//! (by compaction) is named `<32 hex batch id>.ddc`, a name the intake's recovery never touches
//! (it deletes `.ddb` files no ledger entry names). Other names are ignored. Replacement is
//! crash-safe through a journal (`compact.journal`): the new batches are written as `.tmp`
//! files and synced, then the journal naming the old and the new files is written and synced,
//! then the new files are renamed into place and the old ones removed, and the journal is
//! deleted last. [`BatchStore::open`] rolls an interrupted replacement forward (when the
//! journal exists) or discards its `.tmp` files (when it does not), so a crash never leaves a
//! donor's rows both in an old and a new batch, and never loses rows.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use datadonor_schemas::batch::BatchHeader;
use datadonor_schemas::study::StudyId;
use serde::{Deserialize, Serialize};

use crate::sealed::{read_header, BatchError};
use crate::AnalyticsError;

/// File extension of the batches this store writes (compaction output).
pub const BATCH_EXT: &str = "ddc";
/// File extension of the batches the intake writes.
pub const INTAKE_BATCH_EXT: &str = "ddb";
/// The compaction journal's file name.
pub const JOURNAL: &str = "compact.journal";
/// Largest possible header.
const MAX_HEADER_LEN: usize = 8 + 16 + 1 + 64 + 8 + 4 + 4 + 32 + 48;

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

/// A directory of sealed batches.
#[derive(Debug, Clone)]
pub struct BatchStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    remove: Vec<String>,
    add: Vec<String>,
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Store {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn is_batch_name(name: &str) -> bool {
    name.strip_suffix(".ddc")
        .or_else(|| name.strip_suffix(".ddb"))
        .is_some_and(|stem| {
            stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

fn sync_dir(dir: &Path) -> Result<(), AnalyticsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store_err(dir, e))
}

impl BatchStore {
    /// Open a store, finishing or discarding an interrupted replacement.
    pub fn open(dir: &Path) -> Result<Self, AnalyticsError> {
        if !dir.is_dir() {
            return Err(store_err(dir, "not a directory"));
        }
        let s = Self {
            dir: dir.to_path_buf(),
        };
        s.recover()?;
        Ok(s)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

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

    /// The batches of `study`, sorted by creation time then id (headers only; nothing is
    /// decrypted).
    pub fn list(&self, study: &StudyId) -> Result<Vec<BatchFile>, AnalyticsError> {
        let mut out: Vec<BatchFile> = self
            .all()?
            .into_iter()
            .filter(|b| b.header.study_id == study.as_str())
            .collect();
        out.sort_by(|a, b| {
            (a.header.created_at, a.header.batch_id).cmp(&(b.header.created_at, b.header.batch_id))
        });
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

    /// Write one new batch atomically (tmp file, sync, rename, sync directory).
    pub fn write(&self, header: &BatchHeader, bytes: &[u8]) -> Result<PathBuf, AnalyticsError> {
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

    /// Replace the batches `remove` by the new sealed batches `add`, crash-safely.
    pub fn replace(
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
    use crate::vault::VaultKey;

    #[test]
    fn interrupted_replacement_rolls_forward_or_back() {
        let dir = tempfile::tempdir().expect("dir");
        let store = BatchStore::open(dir.path()).expect("store");
        let vault = VaultKey::generate(1);
        let study = StudyId::new("t2d-dk").expect("id");
        let (h1, b1) = seal_batch(b"one", &study, 1, &vault.public()).expect("seal");
        let old = store.write(&h1, &b1).expect("write");
        let (h2, b2) = seal_batch(b"two", &study, 2, &vault.public()).expect("seal");
        // Crash after the tmp file, before the journal: the tmp file is discarded.
        store
            .write_tmp(&format!("{}.{BATCH_EXT}", h2.batch_id_hex()), &b2)
            .expect("tmp");
        let store = BatchStore::open(dir.path()).expect("recovers");
        assert_eq!(store.list(&study).expect("list").len(), 1);
        // Crash after the journal: rolled forward.
        let name = format!("{}.{BATCH_EXT}", h2.batch_id_hex());
        store.write_tmp(&name, &b2).expect("tmp");
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
