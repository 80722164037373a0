//! The vault key: the HPKE (RFC 9180) key pair whose private half unwraps every batch's data key.
//!
//! Analytics is the only crate that ever holds the private half. On disk it is a small JSON file
//! written with mode 0600:
//!
//! ```json
//! {"key_id":1,"private_key":"<base64 of 32 bytes>"}
//! ```
//!
//! and the public half, which the intake is configured with, is `<file>.pub`:
//!
//! ```json
//! {"key_id":1,"public_key":"<base64 of 32 bytes>"}
//! ```

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datadonor_schemas::envelope::{HpkePrivateKey, HpkePublicKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::AnalyticsError;

/// The vault private key with its key id. Zeroized on drop (through [`HpkePrivateKey`]); its
/// `Debug` prints only the key id and public key.
pub struct VaultKey {
    key_id: u32,
    secret: HpkePrivateKey,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VaultKey(key_id: {}, public: {}, secret: <redacted>)",
            self.key_id,
            hex::encode(self.public_key().0)
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultKeyFile {
    key_id: u32,
    private_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultPublicFile {
    key_id: u32,
    public_key: String,
}

/// The public half of a vault key, as the intake is configured with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultPublicKey {
    /// Key id written into batch headers.
    pub key_id: u32,
    /// The X25519 public key.
    pub public_key: HpkePublicKey,
}

impl VaultKey {
    /// A fresh vault key.
    pub fn generate(key_id: u32) -> Self {
        let (secret, _) = HpkePrivateKey::generate();
        Self { key_id, secret }
    }

    /// From a key id and an HPKE private key.
    pub fn new(key_id: u32, secret: HpkePrivateKey) -> Self {
        Self { key_id, secret }
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The HPKE private key.
    pub fn secret(&self) -> &HpkePrivateKey {
        &self.secret
    }

    /// The public half.
    pub fn public_key(&self) -> HpkePublicKey {
        self.secret.public_key()
    }

    /// The public half with its id.
    pub fn public(&self) -> VaultPublicKey {
        VaultPublicKey {
            key_id: self.key_id,
            public_key: self.public_key(),
        }
    }

    /// Parse the key file's bytes.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, AnalyticsError> {
        let bad = |detail: String| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail,
        };
        let f: VaultKeyFile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a vault key file: {e}")))?;
        let raw = Zeroizing::new(
            STANDARD
                .decode(f.private_key.as_bytes())
                .map_err(|_| bad("private_key is not base64".into()))?,
        );
        let secret = HpkePrivateKey::from_bytes(&raw)
            .map_err(|_| bad("private_key is not a 32-byte X25519 key".into()))?;
        let mut f = f;
        zeroize::Zeroize::zeroize(&mut f.private_key);
        Ok(Self {
            key_id: f.key_id,
            secret,
        })
    }

    /// Load from a file.
    pub fn load(path: &Path) -> Result<Self, AnalyticsError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?);
        Self::from_json(&bytes, path)
    }

    /// Write the key file (mode 0600) and `<path>.pub`.
    pub fn save(&self, path: &Path) -> Result<(), AnalyticsError> {
        let private = Zeroizing::new(
            serde_json::to_vec(&VaultKeyFile {
                key_id: self.key_id,
                private_key: STANDARD.encode(self.secret.to_bytes()),
            })
            .map_err(|e| AnalyticsError::KeyFile {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?,
        );
        crate::keys::write_secret_file(path, &private)?;
        let public = serde_json::to_vec(&VaultPublicFile {
            key_id: self.key_id,
            public_key: STANDARD.encode(self.public_key().0),
        })
        .map_err(|e| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let pub_path = crate::keys::pub_path(path);
        std::fs::write(&pub_path, public).map_err(|e| AnalyticsError::KeyFile {
            path: pub_path.clone(),
            detail: e.to_string(),
        })
    }
}

impl VaultPublicKey {
    /// Load a `.pub` file.
    pub fn load(path: &Path) -> Result<Self, AnalyticsError> {
        let bad = |detail: String| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let f: VaultPublicFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a vault public key file: {e}")))?;
        let raw = STANDARD
            .decode(f.public_key.as_bytes())
            .map_err(|_| bad("public_key is not base64".into()))?;
        let pk: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| bad("public_key is not 32 bytes".into()))?;
        Ok(Self {
            key_id: f.key_id,
            public_key: HpkePublicKey(pk),
        })
    }
}
