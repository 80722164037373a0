//! The witness's durable state: per log, the last checkpoint it cosigned.
//!
//! `state_dir/<hex SHA-256 of the origin>.json` holds
//! `{"origin", "size", "root_hex", "note"}`, where `note` is the cosigned checkpoint: the body, the
//! log's verified signature lines and the witness's own cosignature line. It is replaced
//! crash-safely (temporary file, fsync, rename, fsync of the directory), so after a crash it is
//! either the old or the new state, never a mix. `state_dir/evidence/` keeps the requests the
//! witness refused although the log had signed them (a fork or an inconsistent head).

use std::path::{Path, PathBuf};

use datadonor_schemas::merkle::Hash;
use serde::{Deserialize, Serialize};

/// The last checkpoint cosigned for one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    /// The log's origin.
    pub origin: String,
    /// Its tree size.
    pub size: u64,
    /// Its root hash, lowercase hex.
    pub root_hex: String,
    /// The cosigned note (body, the log's signature lines, the witness's line).
    pub note: String,
}

impl LogState {
    /// The root hash.
    pub fn root(&self) -> Result<Hash, StateError> {
        let bytes = hex::decode(&self.root_hex).map_err(|_| StateError::Corrupt)?;
        Hash::from_slice(&bytes).map_err(|_| StateError::Corrupt)
    }
}

/// A state file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A state file is not what this witness writes.
    #[error("a state file is corrupt")]
    Corrupt,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` with `mode`: temporary file, fsync, rename, fsync of the directory
/// (`datadonor_service::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    datadonor_service::write_atomic(path, bytes, mode).map_err(|e| StateError::Io {
        path: e.path.display().to_string(),
        source: e.source,
    })
}

/// Lowercase hex of SHA-256 of the origin: the state file's name and the monitoring path.
pub fn origin_hash(origin: &str) -> String {
    hex::encode(datadonor_schemas::sha256(origin.as_bytes()))
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory and removes temporary files a crash left.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, origin: &str) -> PathBuf {
        self.dir.join(format!("{}.json", origin_hash(origin)))
    }

    /// The stored state of `origin`, if it was ever cosigned.
    pub fn load(&self, origin: &str) -> Result<Option<LogState>, StateError> {
        let path = self.path(origin);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let state: LogState = serde_json::from_slice(&bytes).map_err(|_| StateError::Corrupt)?;
        if state.origin != origin {
            return Err(StateError::Corrupt);
        }
        state.root()?;
        Ok(Some(state))
    }

    /// Replaces the state of `state.origin`, durably.
    pub fn store(&self, state: &LogState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|_| StateError::Corrupt)?;
        write_atomic(&self.path(&state.origin), &bytes, 0o644)
    }

    /// Keeps a refused request as evidence (`evidence/<origin hash>-<time>-<n>.txt`).
    pub fn keep_evidence(&self, origin: &str, time: i64, request: &[u8]) -> Result<(), StateError> {
        let dir = self.dir.join("evidence");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let stem = format!("{}-{time}", origin_hash(origin));
        let mut n = 0u32;
        loop {
            let path = dir.join(format!("{stem}-{n}.txt"));
            if !path.exists() {
                return write_atomic(&path, request, 0o644);
            }
            n += 1;
        }
    }

    /// The evidence files kept so far.
    pub fn evidence(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.dir.join("evidence"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}
