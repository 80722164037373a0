//! The donor's local key store: the Ed25519 donor key, the receipts the intake gave, and per
//! intake the pinned ledger key, the witnesses required on its checkpoints and the last
//! checkpoint the client verified.
//!
//! Layout of the directory (created `0700` on first use; every file written `0600`, atomically
//! through a temporary file and a rename):
//!
//! ```text
//! donor-key.json                              the donor key (seed plain or encrypted)
//! intakes/<intake>/ledger-key.json            the ledger key pinned on first use
//! intakes/<intake>/witnesses.json             witness vkeys and quorum required (absent: none)
//! intakes/<intake>/checkpoint                 last verified signed checkpoint (signed-note text)
//! receipts/<intake>/<study>/<kind>-<index>.json   stored receipts
//! ```
//!
//! `<intake>` is the intake URL's host and port with every character outside `[a-z0-9.-]`
//! replaced by `_`.
//!
//! # The donor key at rest
//!
//! Without a passphrase the 32-byte Ed25519 seed is stored as base64, protected only by the file
//! mode. With a passphrase it is encrypted with AES-256-GCM (NIST SP 800-38D) under a key derived
//! with PBKDF2-HMAC-SHA256 (RFC 8018) from the passphrase and a random 16-byte salt, with
//! [`PBKDF2_ITERATIONS`] iterations (OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256 is
//! 600 000); the 12-byte nonce is random, and the associated data is
//! `"datadonor/v1 donor key" || public key`, so a ciphertext cannot be moved to another key file.
//! A wrong passphrase and a modified file give the same error.

use std::fs;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use datadonor_schemas::receipt::{ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::{PublicKey, SigningKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// PBKDF2-HMAC-SHA256 iterations for a passphrase-protected donor key.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Associated-data prefix of the encrypted seed.
const KEY_AAD: &[u8] = b"datadonor/v1 donor key";
const KEY_FILE: &str = "donor-key.json";

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path}: malformed: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The donor key is encrypted and no passphrase was given.
    #[error("{0}: the donor key is protected by a passphrase; give it with --passphrase-file or DATADONOR_PASSPHRASE")]
    PassphraseRequired(String),
    /// Wrong passphrase, or the key file was modified.
    #[error("{0}: wrong passphrase, or the key file was modified")]
    WrongPassphrase(String),
    /// Randomness was unavailable.
    #[error("the system random number generator failed")]
    Random,
    /// No receipt matches.
    #[error("no stored donation receipt for study {0}")]
    NoReceipt(String),
}

/// A passphrase: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wrap a passphrase.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// Whether it is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a stored donor key is protected (see [`Keystore::key_protection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProtection {
    /// The seed is stored as it is, protected only by the file's mode.
    None,
    /// The seed is encrypted under a passphrase.
    Passphrase,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    public_key: PublicKey,
    /// `none` or `pbkdf2-hmac-sha256+aes-256-gcm`.
    protection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// Base64 seed (`none`) or ciphertext with tag.
    secret: String,
}

/// The intake's ledger key as pinned on first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerKeyInfo {
    /// Ed25519 public key (base64).
    pub public_key: PublicKey,
    /// Signed-note verifier key.
    pub vkey: String,
    /// Checkpoint origin.
    pub origin: String,
}

/// The witnesses a donor requires on an intake's checkpoints, as pinned in the key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessPin {
    /// Witness verifier keys (`<name>+<key ID>+<base64(0x04 || key)>`).
    pub witnesses: Vec<String>,
    /// How many of them must have cosigned every checkpoint accepted.
    pub quorum: usize,
}

/// A receipt as stored on the device, with what the donor needs to check or withdraw later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredReceipt {
    /// Format version (1).
    pub format: u32,
    /// Base URL of the intake.
    pub intake: String,
    /// Donation or withdrawal.
    pub kind: ReceiptKind,
    /// Study id.
    pub study_id: String,
    /// The donor's pseudonym in the study (hex).
    pub pseudonym: String,
    /// Consent record id (hex).
    pub consent_record_id: String,
    /// Ledger index of the entry.
    pub ledger_index: u64,
    /// When stored (Unix seconds).
    pub stored_at: i64,
    /// The bundle exactly as the intake sent it.
    pub bundle: ReceiptBundle,
}

/// The key store directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory name of an intake: host and port, sanitised.
pub fn intake_dir_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn kdf(passphrase: &Passphrase, salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    let iters = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        salt,
        passphrase.0.as_bytes(),
        key.as_mut(),
    );
    key
}

impl Keystore {
    /// Open (and create, `0700`) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeystoreError> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// The default directory: `$DATADONOR_HOME`, else `$HOME/.datadonor`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("DATADONOR_HOME") {
            return PathBuf::from(d);
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".datadonor")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the donor key.
    pub fn donor_key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// How the donor key is protected; `None` before it is created.
    pub fn key_protection(&self) -> Result<Option<KeyProtection>, KeystoreError> {
        let path = self.donor_key_path();
        let Some(file) = read_json_opt::<KeyFile>(&path)? else {
            return Ok(None);
        };
        match file.protection.as_str() {
            "none" => Ok(Some(KeyProtection::None)),
            "pbkdf2-hmac-sha256+aes-256-gcm" => Ok(Some(KeyProtection::Passphrase)),
            _ => Err(KeystoreError::Malformed {
                path: path.display().to_string(),
                detail: "unknown protection".into(),
            }),
        }
    }

    /// Load the donor key, creating it on first use (encrypted when a passphrase is given).
    pub fn donor_key(&self, passphrase: Option<&Passphrase>) -> Result<SigningKey, KeystoreError> {
        let path = self.dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let malformed = |detail: &str| KeystoreError::Malformed {
            path: shown.clone(),
            detail: detail.to_string(),
        };
        if !path.exists() {
            let key = SigningKey::generate().map_err(|_| KeystoreError::Random)?;
            self.write_key(&path, &key, passphrase)?;
            return Ok(key);
        }
        let text = fs::read(&path).map_err(io_err(&path))?;
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| malformed(&e.to_string()))?;
        let decode = |s: &str| B64.decode(s).map_err(|_| malformed("bad base64"));
        let seed: Zeroizing<Vec<u8>> = match file.protection.as_str() {
            "none" => Zeroizing::new(decode(&file.secret)?),
            "pbkdf2-hmac-sha256+aes-256-gcm" => {
                let pass =
                    passphrase.ok_or_else(|| KeystoreError::PassphraseRequired(shown.clone()))?;
                let salt = decode(file.salt.as_deref().unwrap_or_default())?;
                let nonce = decode(file.nonce.as_deref().unwrap_or_default())?;
                if nonce.len() != 12 {
                    return Err(malformed("nonce must be 12 bytes"));
                }
                let iterations = file.iterations.unwrap_or(0);
                if iterations < PBKDF2_ITERATIONS {
                    return Err(malformed("too few PBKDF2 iterations"));
                }
                let key = kdf(pass, &salt, iterations);
                let cipher =
                    Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| malformed("key length"))?;
                let mut aad = KEY_AAD.to_vec();
                aad.extend_from_slice(&file.public_key.0);
                let ct = decode(&file.secret)?;
                Zeroizing::new(
                    cipher
                        .decrypt(
                            Nonce::from_slice(&nonce),
                            Payload {
                                msg: &ct,
                                aad: &aad,
                            },
                        )
                        .map_err(|_| KeystoreError::WrongPassphrase(shown.clone()))?,
                )
            }
            _ => return Err(malformed("unknown protection")),
        };
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| malformed("seed must be 32 bytes"))?;
        let seed = Zeroizing::new(seed);
        let key = SigningKey::from_seed(&seed).map_err(|_| malformed("bad seed"))?;
        if key.public_key() != file.public_key {
            return Err(malformed("public key does not match the seed"));
        }
        Ok(key)
    }

    fn write_key(
        &self,
        path: &Path,
        key: &SigningKey,
        passphrase: Option<&Passphrase>,
    ) -> Result<(), KeystoreError> {
        let file = match passphrase {
            None => KeyFile {
                format: 1,
                public_key: key.public_key(),
                protection: "none".into(),
                iterations: None,
                salt: None,
                nonce: None,
                secret: B64.encode(key.seed()),
            },
            Some(pass) => {
                let rng = SystemRandom::new();
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 12];
                rng.fill(&mut salt).map_err(|_| KeystoreError::Random)?;
                rng.fill(&mut nonce).map_err(|_| KeystoreError::Random)?;
                let k = kdf(pass, &salt, PBKDF2_ITERATIONS);
                let cipher =
                    Aes256Gcm::new_from_slice(k.as_ref()).map_err(|_| KeystoreError::Random)?;
                let mut aad = KEY_AAD.to_vec();
                aad.extend_from_slice(&key.public_key().0);
                let ct = cipher
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: key.seed(),
                            aad: &aad,
                        },
                    )
                    .map_err(|_| KeystoreError::Random)?;
                KeyFile {
                    format: 1,
                    public_key: key.public_key(),
                    protection: "pbkdf2-hmac-sha256+aes-256-gcm".into(),
                    iterations: Some(PBKDF2_ITERATIONS),
                    salt: Some(B64.encode(salt)),
                    nonce: Some(B64.encode(nonce)),
                    secret: B64.encode(ct),
                }
            }
        };
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default());
        write_private(path, &bytes)
    }

    pub(crate) fn intake_dir(&self, intake: &str) -> Result<PathBuf, KeystoreError> {
        let d = self.dir.join("intakes").join(intake_dir_name(intake));
        create_private_dir(&d)?;
        Ok(d)
    }

    /// The pinned ledger key of an intake, if any.
    pub fn pinned_ledger_key(&self, intake: &str) -> Result<Option<LedgerKeyInfo>, KeystoreError> {
        let path = self.intake_dir(intake)?.join("ledger-key.json");
        read_json_opt(&path)
    }

    /// Pin an intake's ledger key.
    pub fn pin_ledger_key(&self, intake: &str, info: &LedgerKeyInfo) -> Result<(), KeystoreError> {
        let path = self.intake_dir(intake)?.join("ledger-key.json");
        write_private(&path, &serde_json::to_vec_pretty(info).unwrap_or_default())
    }

    /// The witnesses pinned for an intake, if any (none: checkpoints need only the ledger's
    /// signature).
    pub fn pinned_witnesses(&self, intake: &str) -> Result<Option<WitnessPin>, KeystoreError> {
        let path = self.intake_dir(intake)?.join("witnesses.json");
        read_json_opt(&path)
    }

    /// Pin the witnesses required on an intake's checkpoints (replacing any pinned before).
    pub fn pin_witnesses(&self, intake: &str, pin: &WitnessPin) -> Result<(), KeystoreError> {
        let path = self.intake_dir(intake)?.join("witnesses.json");
        write_private(&path, &serde_json::to_vec_pretty(pin).unwrap_or_default())
    }

    /// The last checkpoint verified for an intake (signed-note text).
    pub fn last_checkpoint(&self, intake: &str) -> Result<Option<String>, KeystoreError> {
        let path = self.intake_dir(intake)?.join("checkpoint");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Store the last verified checkpoint of an intake.
    pub fn store_checkpoint(&self, intake: &str, note: &str) -> Result<(), KeystoreError> {
        let path = self.intake_dir(intake)?.join("checkpoint");
        write_private(&path, note.as_bytes())
    }

    /// Store a receipt; returns its path.
    pub fn store_receipt(&self, r: &StoredReceipt) -> Result<PathBuf, KeystoreError> {
        let d = self
            .dir
            .join("receipts")
            .join(intake_dir_name(&r.intake))
            .join(&r.study_id);
        create_private_dir(&d)?;
        let kind = match r.kind {
            ReceiptKind::Donation => "donation",
            ReceiptKind::Withdrawal => "withdrawal",
        };
        let path = d.join(format!("{kind}-{}.json", r.ledger_index));
        write_private(&path, &serde_json::to_vec_pretty(r).unwrap_or_default())?;
        Ok(path)
    }

    /// Every stored receipt, oldest first.
    pub fn receipts(&self) -> Result<Vec<(PathBuf, StoredReceipt)>, KeystoreError> {
        let mut out = Vec::new();
        let root = self.dir.join("receipts");
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            for e in entries {
                let p = e.map_err(io_err(&d))?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    if let Some(r) = read_json_opt::<StoredReceipt>(&p)? {
                        out.push((p, r));
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.1.stored_at, &a.0).cmp(&(b.1.stored_at, &b.0)));
        Ok(out)
    }

    /// The latest donation receipt for a study (at any intake, or the given one).
    pub fn latest_donation(
        &self,
        study: &str,
        intake: Option<&str>,
    ) -> Result<StoredReceipt, KeystoreError> {
        self.receipts()?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| {
                r.kind == ReceiptKind::Donation
                    && r.study_id == study
                    && intake.is_none_or(|i| intake_dir_name(i) == intake_dir_name(&r.intake))
            })
            .max_by_key(|r| (r.stored_at, r.ledger_index))
            .ok_or_else(|| KeystoreError::NoReceipt(study.to_string()))
    }
}

/// Read a stored receipt file.
pub fn read_receipt(path: &Path) -> Result<StoredReceipt, KeystoreError> {
    read_json_opt(path)?.ok_or_else(|| KeystoreError::Io {
        path: path.display().to_string(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

pub(crate) fn read_json_opt<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, KeystoreError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| KeystoreError::Malformed {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), KeystoreError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Write a file with mode `0600` atomically (temporary file, fsync, rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}
