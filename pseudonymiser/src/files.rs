//! Crash-safe file writes: temporary file, fsync, rename, fsync of the directory.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::share::ShareError;

fn io(p: &Path) -> impl Fn(std::io::Error) -> ShareError + '_ {
    move |e| ShareError::Io(p.display().to_string(), e)
}

/// Write `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ShareError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Write a secret (mode 0600).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ShareError> {
    write_atomic(path, bytes, 0o600)
}

/// Write a public file (mode 0644).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), ShareError> {
    write_atomic(path, bytes, 0o644)
}
