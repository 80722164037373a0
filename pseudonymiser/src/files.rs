//! Crash-safe file writes: temporary file, fsync, rename, fsync of the directory.

use std::path::Path;

use crate::share::ShareError;

/// Write `bytes` to `path` atomically with `mode` (`datadonor_service::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ShareError> {
    datadonor_service::write_atomic(path, bytes, mode)
        .map_err(|e| ShareError::Io(e.path.display().to_string(), e.source))
}

/// Write a secret (mode 0600).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ShareError> {
    write_atomic(path, bytes, 0o600)
}

/// Write a public file (mode 0644).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), ShareError> {
    write_atomic(path, bytes, 0o644)
}
