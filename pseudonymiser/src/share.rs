//! One instance's key share and its evaluation: `Z_i = k_i·B` with an RFC 9497 VOPRF
//! (mode 0x01) DLEQ proof against the public share `K_i = k_i·G`.
//!
//! The share file (`share.json`, mode 0600) is written by the key ceremony ([`crate::dkg`]):
//!
//! ```json
//! {"format":1,"config_id":"dk-pseudonymiser","index":1,"threshold":2,
//!  "secret_share":"<b64 32-byte LE scalar>","group_public_key":"<b64>",
//!  "public_shares":[{"index":1,"public_share":"<b64>"},...]}
//! ```

use std::path::Path;

use datadonor_schemas::pseudonym::ELEMENT_LEN;
use datadonor_schemas::threshold::InstanceAnswer;
use rand_core::{CryptoRng, OsRng, RngCore};
use serde::{Deserialize, Serialize};
use voprf::{BlindedElement, Group, Ristretto255, VoprfServer};
use zeroize::{Zeroize, Zeroizing};

/// Why a share cannot be used or an element not evaluated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// Reading or writing the share file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The share file does not parse or its fields are inconsistent.
    #[error("{0}: not a share file: {1}")]
    Invalid(String, String),
    /// The blinded element is not a canonical non-identity ristretto255 encoding.
    #[error("invalid blinded element")]
    BadElement,
}

/// A public share as the share file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicShare {
    /// Shamir index.
    pub index: u16,
    /// `K_i`, base64.
    pub public_share: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareFile {
    format: u32,
    config_id: String,
    index: u16,
    threshold: u16,
    secret_share: String,
    group_public_key: String,
    public_shares: Vec<PublicShare>,
}

impl Drop for ShareFile {
    fn drop(&mut self) {
        self.secret_share.zeroize();
    }
}

/// An instance's share of the OPRF key. Zeroized by the library on drop; never printed.
pub struct KeyShare {
    /// The `config_id` of the service this share belongs to.
    pub config_id: String,
    /// This instance's Shamir index.
    pub index: u16,
    /// The threshold `t`.
    pub threshold: u16,
    /// `K = k·G`.
    pub group_public_key: [u8; 32],
    /// Every instance's public share, by index.
    pub public_shares: Vec<(u16, [u8; 32])>,
    server: VoprfServer<Ristretto255>,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShare")
            .field("config_id", &self.config_id)
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .field("secret_share", &"<redacted>")
            .finish()
    }
}

use crate::b64::{decode_32 as unb64_32, encode as b64};

impl KeyShare {
    /// A share from its parts; the secret is a 32-byte little-endian canonical non-zero scalar.
    pub fn new(
        config_id: &str,
        index: u16,
        threshold: u16,
        secret: &[u8],
        group_public_key: [u8; 32],
        public_shares: Vec<(u16, [u8; 32])>,
    ) -> Result<Self, ShareError> {
        let inv = |m: &str| ShareError::Invalid("share".into(), m.into());
        let server = VoprfServer::<Ristretto255>::new_with_key(secret)
            .map_err(|_| inv("secret_share is not a non-zero canonical scalar"))?;
        let own: [u8; 32] = <Ristretto255 as Group>::serialize_elem(server.get_public_key()).into();
        match public_shares.iter().find(|(i, _)| *i == index) {
            Some((_, p)) if *p == own => {}
            _ => return Err(inv("public_shares does not list this share's public key")),
        }
        if index == 0 || threshold < 2 || usize::from(threshold) > public_shares.len() {
            return Err(inv("index, threshold and public_shares are inconsistent"));
        }
        Ok(Self {
            config_id: config_id.to_string(),
            index,
            threshold,
            group_public_key,
            public_shares,
            server,
        })
    }

    /// `K_i`.
    pub fn public_share(&self) -> [u8; 32] {
        <Ristretto255 as Group>::serialize_elem(self.server.get_public_key()).into()
    }

    /// Evaluate a blinded element: `Z_i` and a fresh DLEQ proof.
    pub fn evaluate(&self, blinded: &[u8]) -> Result<InstanceAnswer, ShareError> {
        self.evaluate_with_rng(blinded, &mut OsRng)
    }

    /// [`KeyShare::evaluate`] with the caller's randomness for the proof (vectors only).
    pub fn evaluate_with_rng<R: RngCore + CryptoRng>(
        &self,
        blinded: &[u8],
        rng: &mut R,
    ) -> Result<InstanceAnswer, ShareError> {
        if blinded.len() != ELEMENT_LEN {
            return Err(ShareError::BadElement);
        }
        let b = BlindedElement::<Ristretto255>::deserialize(blinded)
            .map_err(|_| ShareError::BadElement)?;
        let r = self.server.blind_evaluate(rng, &b);
        let mut evaluated = [0u8; 32];
        evaluated.copy_from_slice(&r.message.serialize());
        Ok(InstanceAnswer {
            index: self.index,
            evaluated,
            proof: r.proof.serialize().to_vec(),
        })
    }

    /// The share file's JSON (holds the secret).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&self.server.serialize()[..32]);
        let f = ShareFile {
            format: datadonor_schemas::PROTOCOL_VERSION,
            config_id: self.config_id.clone(),
            index: self.index,
            threshold: self.threshold,
            secret_share: b64(secret.as_ref()),
            group_public_key: b64(&self.group_public_key),
            public_shares: self
                .public_shares
                .iter()
                .map(|(i, p)| PublicShare {
                    index: *i,
                    public_share: b64(p),
                })
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&f).unwrap_or_default();
        out.push(b'\n');
        Zeroizing::new(out)
    }

    /// Parse a share file.
    pub fn from_json(bytes: &[u8], name: &str) -> Result<Self, ShareError> {
        let inv = |m: String| ShareError::Invalid(name.to_string(), m);
        let f: ShareFile = serde_json::from_slice(bytes).map_err(|e| inv(e.to_string()))?;
        let secret_b64 = Zeroizing::new(f.secret_share.clone());
        if f.format != datadonor_schemas::PROTOCOL_VERSION {
            return Err(inv(format!("format {} is not supported", f.format)));
        }
        let secret = Zeroizing::new(
            unb64_32(&secret_b64).ok_or_else(|| inv("secret_share is not 32 bytes".into()))?,
        );
        let group = unb64_32(&f.group_public_key)
            .ok_or_else(|| inv("group_public_key is not 32 bytes".into()))?;
        let mut shares = Vec::new();
        for p in &f.public_shares {
            let k = unb64_32(&p.public_share)
                .ok_or_else(|| inv(format!("public share {} is not 32 bytes", p.index)))?;
            shares.push((p.index, k));
        }
        Self::new(
            &f.config_id,
            f.index,
            f.threshold,
            secret.as_ref(),
            group,
            shares,
        )
        .map_err(|e| match e {
            ShareError::Invalid(_, m) => inv(m),
            other => other,
        })
    }

    /// Write the share file with mode 0600 (atomically: temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), ShareError> {
        crate::files::write_secret(path, &self.to_json())
    }

    /// Read a share file.
    pub fn read(path: &Path) -> Result<Self, ShareError> {
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|e| ShareError::Io(path.display().to_string(), e))?,
        );
        Self::from_json(&bytes, &path.display().to_string())
    }
}
