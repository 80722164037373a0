//! The intake's key material on disk: what each file is, how it is written, and how it is read.
//!
//! Layout inside the data directory (secrets are mode 0600, written to a temporary file, fsynced
//! and renamed into place):
//!
//! | file | content | secret |
//! |---|---|---|
//! | `keys/transport.json` | transport key ids, creation and supersession times | no |
//! | `keys/transport-<id>.key` | 32-byte X25519 HPKE private key | yes |
//! | `keys/ledger.key` | 32-byte Ed25519 seed of the ledger key | yes |
//! | `keys/auditor.sha256` | hex SHA-256 of the auditor token (the token itself is not kept) | no |
//! | `vault.pub` | `{"key_id":u32,"public_key":"<b64>"}`: the vault key's public half | no |
//!
//! **Architecture invariant:** the vault *private* key never lives where `serve` reads.
//! `init` writes a demo vault key pair's private half to `vault-private/vault.key` for the
//! steward to move away; nothing in this crate outside `init` (and its tests) touches that
//! directory, and the steward's study-signing key in `steward/` likewise is never read by `serve`.

use std::path::{Path, PathBuf};

use datadonor_schemas::envelope::{HpkePrivateKey, HpkePublicKey};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::UnixSeconds;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Errors reading or writing key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file has the wrong content.
    #[error("{0}: invalid key material")]
    Invalid(PathBuf),
    /// No usable transport key.
    #[error("no transport key in keys/transport.json")]
    NoTransportKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file atomically (temporary file, fsync, rename, fsync of the directory) with `mode`:
/// [`datadonor_service::write_atomic`], the one crash-safe write the services share.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    datadonor_service::write_atomic(path, bytes, mode).map_err(|e| KeyError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Write a secret (mode 0600).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    write_atomic(path, bytes, 0o600)
}

fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    std::fs::read(path).map(Zeroizing::new).map_err(io(path))
}

fn read_32(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let v = read_secret(path)?;
    let mut out = Zeroizing::new([0u8; 32]);
    if v.len() != 32 {
        return Err(KeyError::Invalid(path.to_path_buf()));
    }
    out.copy_from_slice(&v);
    Ok(out)
}

/// Metadata of one transport key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportKeyInfo {
    /// Key id carried in envelopes.
    pub key_id: u32,
    /// When created.
    pub created_at: UnixSeconds,
    /// When a newer key replaced it (its grace period starts then).
    pub superseded_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportIndex {
    keys: Vec<TransportKeyInfo>,
}

/// One transport key with its private half.
#[derive(Debug)]
pub struct TransportKey {
    /// Metadata.
    pub info: TransportKeyInfo,
    /// The private key.
    pub private_key: HpkePrivateKey,
    /// The public key.
    pub public_key: HpkePublicKey,
}

/// The transport keys: the current one (the only one not superseded) and those in grace.
#[derive(Debug)]
pub struct TransportKeys {
    keys: Vec<TransportKey>,
    grace_secs: i64,
}

fn transport_index_path(dir: &Path) -> PathBuf {
    dir.join("keys/transport.json")
}

fn transport_key_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("keys/transport-{id}.key"))
}

impl TransportKeys {
    /// Load every transport key whose grace has not ended at `now`; delete the private halves of
    /// expired ones (forward secrecy for envelopes captured in transit).
    pub fn load(dir: &Path, grace_secs: u64, now: UnixSeconds) -> Result<Self, KeyError> {
        let grace_secs = i64::try_from(grace_secs).unwrap_or(i64::MAX);
        let path = transport_index_path(dir);
        let text = std::fs::read(&path).map_err(io(&path))?;
        let index: TransportIndex =
            serde_json::from_slice(&text).map_err(|_| KeyError::Invalid(path.clone()))?;
        let mut keys = Vec::new();
        for info in index.keys {
            let kp = transport_key_path(dir, info.key_id);
            if info
                .superseded_at
                .is_some_and(|s| now >= s.saturating_add(grace_secs))
            {
                match std::fs::remove_file(&kp) {
                    Ok(()) => tracing::info!(key_id = info.key_id, "deleted expired transport key"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&kp)(e)),
                }
                continue;
            }
            let raw = read_32(&kp)?;
            let private_key =
                HpkePrivateKey::from_bytes(raw.as_ref()).map_err(|_| KeyError::Invalid(kp))?;
            let public_key = private_key.public_key();
            keys.push(TransportKey {
                info,
                private_key,
                public_key,
            });
        }
        // Current key first, then by newest supersession.
        keys.sort_by_key(|k| std::cmp::Reverse((k.info.superseded_at.is_none(), k.info.key_id)));
        if keys.first().is_none_or(|k| k.info.superseded_at.is_some()) {
            return Err(KeyError::NoTransportKey);
        }
        Ok(Self { keys, grace_secs })
    }

    /// Keys accepted at `now`, current first.
    pub fn accepted(&self, now: UnixSeconds) -> impl Iterator<Item = &TransportKey> {
        let grace = self.grace_secs;
        self.keys.iter().filter(move |k| {
            k.info
                .superseded_at
                .is_none_or(|s| now < s.saturating_add(grace))
        })
    }

    /// The private key for an envelope's key id, if accepted at `now`.
    pub fn lookup(&self, key_id: u32, now: UnixSeconds) -> Option<&TransportKey> {
        self.accepted(now).find(|k| k.info.key_id == key_id)
    }

    /// Every loaded key (including ones whose grace ended after loading), for tests.
    pub fn all(&self) -> &[TransportKey] {
        &self.keys
    }
}

/// Create a fresh transport key, mark the previous current key superseded at `now`; returns
/// the new key id and public key. The caller appends the `KeyRotated` ledger entry.
pub fn create_transport_key(
    dir: &Path,
    now: UnixSeconds,
) -> Result<(u32, HpkePublicKey), KeyError> {
    let path = transport_index_path(dir);
    let mut index: TransportIndex = match std::fs::read(&path) {
        Ok(t) => serde_json::from_slice(&t).map_err(|_| KeyError::Invalid(path.clone()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TransportIndex::default(),
        Err(e) => return Err(io(&path)(e)),
    };
    let id = index
        .keys
        .iter()
        .map(|k| k.key_id)
        .max()
        .map_or(1, |m| m.saturating_add(1));
    let (sk, pk) = HpkePrivateKey::generate();
    write_secret(&transport_key_path(dir, id), sk.to_bytes())?;
    for k in &mut index.keys {
        if k.superseded_at.is_none() {
            k.superseded_at = Some(now);
        }
    }
    index.keys.push(TransportKeyInfo {
        key_id: id,
        created_at: now,
        superseded_at: None,
    });
    let text = serde_json::to_vec_pretty(&index).unwrap_or_default();
    write_atomic(&path, &text, 0o644)?;
    Ok((id, pk))
}

/// Path of the ledger key seed.
pub fn ledger_key_path(dir: &Path) -> PathBuf {
    dir.join("keys/ledger.key")
}

/// Path of the analytics token hash (the credential for `POST /v1/ledger/events`).
pub fn analytics_hash_path(dir: &Path) -> PathBuf {
    dir.join("keys/analytics.sha256")
}

/// Path of the frontend token hash (the credential of `POST /v1/internal/donations`).
pub fn frontend_hash_path(dir: &Path) -> PathBuf {
    dir.join("keys/frontend.sha256")
}

/// Path of the auditor token hash.
pub fn auditor_hash_path(dir: &Path) -> PathBuf {
    dir.join("keys/auditor.sha256")
}

/// Load the ledger signing key.
pub fn load_ledger_key(dir: &Path) -> Result<SigningKey, KeyError> {
    let p = ledger_key_path(dir);
    let seed = read_32(&p)?;
    SigningKey::from_seed(&seed).map_err(|_| KeyError::Invalid(p))
}

/// The SHA-256 of the auditor token (what the intake keeps).
#[derive(Clone, PartialEq, Eq)]
pub struct AuditorTokenHash(pub [u8; 32]);

impl std::fmt::Debug for AuditorTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditorTokenHash(<redacted>)")
    }
}

impl AuditorTokenHash {
    /// Hash of a token as sent (the 64 hex characters).
    pub fn of_token(token: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
    /// Constant-time check of a presented token.
    pub fn matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        Self::of_token(token).0.ct_eq(&self.0).into()
    }
    /// Load from `keys/auditor.sha256`.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        Self::load_from(&auditor_hash_path(dir))
    }
    /// Load a token hash file.
    pub fn load_from(p: &Path) -> Result<Self, KeyError> {
        let p = p.to_path_buf();
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| KeyError::Invalid(p))?;
        Ok(Self(out))
    }
}

/// The vault key's public half as stored in `vault.pub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPublicKey {
    /// The vault key id written into batch headers.
    pub key_id: u32,
    /// X25519 public key, base64.
    pub public_key: String,
}

impl VaultPublicKey {
    /// Build from a key.
    pub fn new(key_id: u32, pk: &HpkePublicKey) -> Self {
        use base64::Engine as _;
        Self {
            key_id,
            public_key: base64::engine::general_purpose::STANDARD.encode(pk.0),
        }
    }
    /// The key.
    pub fn key(&self) -> Option<HpkePublicKey> {
        use base64::Engine as _;
        let v = base64::engine::general_purpose::STANDARD
            .decode(&self.public_key)
            .ok()?;
        Some(HpkePublicKey(v.try_into().ok()?))
    }
    /// Parse the JSON form.
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let v: Self = serde_json::from_slice(bytes).ok()?;
        v.key()?;
        Some(v)
    }
    /// Load `vault.pub`.
    pub fn load(dir: &Path) -> Result<(Self, HpkePublicKey), KeyError> {
        let p = dir.join("vault.pub");
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        let v = Self::from_json(&bytes).ok_or_else(|| KeyError::Invalid(p.clone()))?;
        let k = v.key().ok_or(KeyError::Invalid(p))?;
        Ok((v, k))
    }
}

/// The vault key pair file written by `init` into `vault-private/vault.key` (for the steward).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPrivateKeyFile {
    /// Vault key id.
    pub key_id: u32,
    /// X25519 private key, base64.
    pub private_key: String,
}

impl std::fmt::Debug for VaultPrivateKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VaultPrivateKeyFile(key_id: {}, <redacted>)",
            self.key_id
        )
    }
}

impl Drop for VaultPrivateKeyFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.private_key.zeroize();
    }
}
