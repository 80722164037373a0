//! Steward key files and the trusted-approvers list.
//!
//! * Steward signing key (`PROTOCOL.md`, "Key files"): the 32-byte RFC 8032 seed as 64
//!   lowercase hex digits and a newline, mode 0600. Its public half is `<file>.pub`: the base64
//!   Ed25519 public key and a newline. `datadonor-intake init` writes its demo steward key in
//!   the same form.
//! * Approvers file: one base64 Ed25519 public key per line; `#` starts a comment; blank lines
//!   are ignored. `cat steward.key.pub >> approvers` adds a steward.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use datadonor_schemas::signing::{PublicKey, SigningKey};
use zeroize::Zeroizing;

use crate::AnalyticsError;

/// `<path>.pub`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// Create `path` with mode 0600 (failing if it exists) and write `bytes`.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), AnalyticsError> {
    let err = |e: std::io::Error| AnalyticsError::KeyFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Generate a steward key and write it (0600) and its `.pub`.
pub fn generate_steward_key(path: &Path) -> Result<PublicKey, AnalyticsError> {
    let key = SigningKey::generate().map_err(|e| AnalyticsError::KeyFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_secret_file(path, key.to_key_file().as_bytes())?;
    let pk = key.public_key();
    let pub_file = pub_path(path);
    std::fs::write(&pub_file, format!("{}\n", pk.to_base64())).map_err(|e| {
        AnalyticsError::KeyFile {
            path: pub_file.clone(),
            detail: e.to_string(),
        }
    })?;
    Ok(pk)
}

/// Load a steward signing key.
pub fn load_steward_key(path: &Path) -> Result<SigningKey, AnalyticsError> {
    let bad = |detail: String| AnalyticsError::KeyFile {
        path: path.to_path_buf(),
        detail,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    SigningKey::from_key_file(&text)
        .map_err(|_| bad("expected 64 hex digits (an Ed25519 seed)".into()))
}

/// Parse an approvers file's text.
pub fn parse_approvers(text: &str, path: &Path) -> Result<Vec<PublicKey>, AnalyticsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let pk = PublicKey::from_base64(line).map_err(|_| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail: format!("line {}: not a base64 Ed25519 public key", i + 1),
        })?;
        out.push(pk);
    }
    if out.is_empty() {
        return Err(AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail: "no approver keys".into(),
        });
    }
    Ok(out)
}

/// Load an approvers file.
pub fn load_approvers(path: &Path) -> Result<Vec<PublicKey>, AnalyticsError> {
    let text = std::fs::read_to_string(path).map_err(|e| AnalyticsError::KeyFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    parse_approvers(&text, path)
}
