//! Donation envelopes: the HPKE configuration the intake publishes, the sealed envelope, and the
//! donation payload inside it.
//!
//! HPKE suite (RFC 9180), mode Base: DHKEM(X25519, HKDF-SHA256) `0x0020`, HKDF-SHA256 `0x0001`,
//! AES-256-GCM `0x0002`. The same suite wraps the per-batch data keys to the vault key
//! ([`hpke_seal`], [`hpke_open`]).
//!
//! Envelope (`application/vnd.datadonor.envelope.v1`), big-endian integers:
//!
//! ```text
//! 0   4   magic "DDE1"
//! 4   4   key id (u32) of the intake HPKE key sealed to
//! 8   2   kem id  0x0020
//! 10  2   kdf id  0x0001
//! 12  2   aead id 0x0002
//! 14  32  enc: the encapsulated X25519 public key
//! 46  ..  ciphertext of the payload (AES-256-GCM, 16-byte tag at the end)
//! ```
//!
//! `info = "datadonor/v1 donation envelope"`, `aad = bytes 0..46` (so the key id and suite are
//! authenticated).
//!
//! Payload (the plaintext):
//!
//! ```text
//! 0   4   magic "DDP1"
//! 4   16  idempotency key
//! 20  4   manifest length m (u32, at most 64 KiB)
//! 24  m   the signed consent manifest (signed-object JSON)
//! ..  4   rows length r (u32)
//! ..  r   the rows: one Arrow IPC stream, schema = the study's
//! ```
//!
//! No bytes may follow the rows.

use hpke::{
    aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem, OpModeR, OpModeS,
    Serializable,
};
use rand_core::{CryptoRng, OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::wire::{b64, parse_json, Reader, WireError};

/// HPKE KEM id: DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// HPKE KDF id: HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// HPKE AEAD id: AES-256-GCM.
pub const AEAD_ID: u16 = 0x0002;
/// Envelope magic.
pub const ENVELOPE_MAGIC: &[u8; 4] = b"DDE1";
/// Payload magic.
pub const PAYLOAD_MAGIC: &[u8; 4] = b"DDP1";
/// HPKE info of donation envelopes.
pub const ENVELOPE_INFO: &[u8] = b"datadonor/v1 donation envelope";
/// Length of the authenticated envelope header (through `enc`).
pub const ENVELOPE_HEADER_LEN: usize = 46;
/// Largest manifest inside a payload.
pub const MAX_MANIFEST_LEN: usize = 64 * 1024;
/// Largest rows section the format allows (deployments set lower limits).
pub const MAX_ROWS_LEN: usize = 64 * 1024 * 1024;

/// Errors sealing or opening envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes do not follow the format.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The envelope names a key id the intake does not hold (unknown or retired).
    #[error("unknown or retired key id {0}")]
    UnknownKeyId(u32),
    /// An HPKE suite other than the one Datadonor uses.
    #[error("unsupported HPKE suite")]
    UnsupportedSuite,
    /// Decryption failed: wrong key, or the envelope was modified.
    #[error("envelope does not decrypt (modified, or sealed to another key)")]
    Decrypt,
    /// A key did not decode.
    #[error("invalid HPKE key")]
    BadKey,
}

/// An X25519 HPKE public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HpkePublicKey(pub [u8; 32]);

impl std::fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HpkePublicKey({})", hex::encode(self.0))
    }
}

/// An X25519 HPKE private key: zeroized on drop, never printed.
pub struct HpkePrivateKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for HpkePrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HpkePrivateKey(<redacted>)")
    }
}

impl HpkePrivateKey {
    /// A fresh key pair.
    pub fn generate() -> (Self, HpkePublicKey) {
        let (sk, pk) = X25519HkdfSha256::gen_keypair(&mut OsRng);
        let mut s = [0u8; 32];
        s.copy_from_slice(&sk.to_bytes());
        let mut p = [0u8; 32];
        p.copy_from_slice(&pk.to_bytes());
        (Self(Zeroizing::new(s)), HpkePublicKey(p))
    }
    /// Load 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, EnvelopeError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| EnvelopeError::BadKey)?;
        <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&arr)
            .map_err(|_| EnvelopeError::BadKey)?;
        Ok(Self(Zeroizing::new(arr)))
    }
    /// The bytes, for storing the key.
    pub fn to_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The public half.
    pub fn public_key(&self) -> HpkePublicKey {
        match <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(self.0.as_ref()) {
            Ok(sk) => {
                let pk = <X25519HkdfSha256 as Kem>::sk_to_pk(&sk);
                let mut p = [0u8; 32];
                p.copy_from_slice(&pk.to_bytes());
                HpkePublicKey(p)
            }
            // from_bytes was checked at construction; X25519 accepts every 32-byte string.
            Err(_) => HpkePublicKey([0u8; 32]),
        }
    }
}

/// Single-shot HPKE seal in the Datadonor suite. Returns `(enc, ciphertext)`.
pub fn hpke_seal(
    pk: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>), EnvelopeError> {
    hpke_seal_with_rng(pk, info, aad, plaintext, &mut OsRng)
}

/// [`hpke_seal`] with the caller's random number generator, which supplies the 32 bytes of
/// `ikmE` the ephemeral key is derived from (RFC 9180 `DeriveKeyPair`). Production code uses
/// [`hpke_seal`]; a deterministic generator is only for reproducible test vectors.
pub fn hpke_seal_with_rng<R: RngCore + CryptoRng>(
    pk: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<([u8; 32], Vec<u8>), EnvelopeError> {
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&pk.0)
        .map_err(|_| EnvelopeError::BadKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        rng,
    )
    .map_err(|_| EnvelopeError::Decrypt)?;
    let mut e = [0u8; 32];
    e.copy_from_slice(&enc.to_bytes());
    Ok((e, ct))
}

/// Single-shot HPKE open in the Datadonor suite.
pub fn hpke_open(
    sk: &HpkePrivateKey,
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(sk.0.as_ref())
        .map_err(|_| EnvelopeError::BadKey)?;
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| EnvelopeError::Decrypt)?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ciphertext,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| EnvelopeError::Decrypt)
}

/// One HPKE configuration the intake publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HpkeConfig {
    /// Key id to put in envelopes.
    pub key_id: u32,
    /// Always [`KEM_ID`].
    pub kem_id: u16,
    /// Always [`KDF_ID`].
    pub kdf_id: u16,
    /// Always [`AEAD_ID`].
    pub aead_id: u16,
    /// The X25519 public key.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
}

/// The intake's HPKE configurations: the first is current, later ones are in their grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HpkeConfigList {
    /// Configurations, current first.
    pub configs: Vec<HpkeConfig>,
}

impl HpkeConfigList {
    /// Parse strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(parse_json(bytes, "hpke config list", 64 * 1024)?)
    }
    /// The configuration to seal to: the first with the supported suite.
    pub fn current(&self) -> Result<(u32, HpkePublicKey), EnvelopeError> {
        let c = self
            .configs
            .iter()
            .find(|c| c.kem_id == KEM_ID && c.kdf_id == KDF_ID && c.aead_id == AEAD_ID)
            .ok_or(EnvelopeError::UnsupportedSuite)?;
        let pk: [u8; 32] = c
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::BadKey)?;
        Ok((c.key_id, HpkePublicKey(pk)))
    }
}

impl HpkeConfig {
    /// The configuration for a key.
    pub fn new(key_id: u32, pk: &HpkePublicKey) -> Self {
        Self {
            key_id,
            kem_id: KEM_ID,
            kdf_id: KDF_ID,
            aead_id: AEAD_ID,
            public_key: pk.0.to_vec(),
        }
    }
}

/// The plaintext of an envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct DonationPayload {
    /// Idempotency key chosen by the client for this donation.
    pub idempotency_key: [u8; 16],
    /// The signed consent manifest (signed-object bytes).
    pub manifest: Vec<u8>,
    /// The rows as an Arrow IPC stream.
    pub rows: Vec<u8>,
}

impl std::fmt::Debug for DonationPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DonationPayload(idempotency_key: {}, manifest: {} bytes, rows: {} bytes)",
            hex::encode(self.idempotency_key),
            self.manifest.len(),
            self.rows.len()
        )
    }
}

impl DonationPayload {
    /// Encode.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Vec::with_capacity(28 + self.manifest.len() + self.rows.len());
        out.extend_from_slice(PAYLOAD_MAGIC);
        out.extend_from_slice(&self.idempotency_key);
        out.extend_from_slice(&(self.manifest.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.manifest);
        out.extend_from_slice(&(self.rows.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.rows);
        Zeroizing::new(out)
    }

    /// Decode strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>("magic")?;
        if &magic != PAYLOAD_MAGIC {
            return Err(WireError::Unexpected {
                field: "magic",
                expected: "DDP1".into(),
                found: hex::encode(magic),
            }
            .into());
        }
        let idempotency_key = r.array::<16>("idempotency_key")?;
        let manifest = r.vec32("manifest", MAX_MANIFEST_LEN)?.to_vec();
        let rows = r.vec32("rows", MAX_ROWS_LEN)?.to_vec();
        r.finish()?;
        Ok(Self {
            idempotency_key,
            manifest,
            rows,
        })
    }

    /// Seal to an intake key, producing envelope bytes.
    pub fn seal(&self, key_id: u32, pk: &HpkePublicKey) -> Result<Vec<u8>, EnvelopeError> {
        self.seal_with_rng(key_id, pk, &mut OsRng)
    }

    /// [`DonationPayload::seal`] with the caller's random number generator, which supplies the
    /// 32 bytes of `ikmE` the ephemeral key is derived from (RFC 9180 `DeriveKeyPair`). Clients
    /// use [`DonationPayload::seal`]; a deterministic generator is only for reproducible test
    /// vectors (a repeated ephemeral key would link envelopes).
    pub fn seal_with_rng<R: RngCore + CryptoRng>(
        &self,
        key_id: u32,
        pk: &HpkePublicKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut header = Vec::with_capacity(ENVELOPE_HEADER_LEN);
        header.extend_from_slice(ENVELOPE_MAGIC);
        header.extend_from_slice(&key_id.to_be_bytes());
        header.extend_from_slice(&KEM_ID.to_be_bytes());
        header.extend_from_slice(&KDF_ID.to_be_bytes());
        header.extend_from_slice(&AEAD_ID.to_be_bytes());
        // The encapsulated key is produced by the seal itself; the AAD covers the fixed part and
        // `enc` both, so seal with a context set up first.
        let pkr = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&pk.0)
            .map_err(|_| EnvelopeError::BadKey)?;
        let (enc, mut ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &pkr,
            ENVELOPE_INFO,
            rng,
        )
        .map_err(|_| EnvelopeError::BadKey)?;
        header.extend_from_slice(&enc.to_bytes());
        let ct = ctx
            .seal(&self.encode(), &header)
            .map_err(|_| EnvelopeError::Decrypt)?;
        header.extend_from_slice(&ct);
        Ok(header)
    }
}

/// The parsed, still-sealed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Key id.
    pub key_id: u32,
    /// Encapsulated key.
    pub enc: [u8; 32],
    /// Authenticated header bytes.
    pub header: &'a [u8],
    /// Ciphertext.
    pub ciphertext: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parse the header of envelope bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>("magic")?;
        if &magic != ENVELOPE_MAGIC {
            return Err(WireError::Unexpected {
                field: "magic",
                expected: "DDE1".into(),
                found: hex::encode(magic),
            }
            .into());
        }
        let key_id = r.u32("key_id")?;
        let (kem, kdf, aead) = (r.u16("kem_id")?, r.u16("kdf_id")?, r.u16("aead_id")?);
        if (kem, kdf, aead) != (KEM_ID, KDF_ID, AEAD_ID) {
            return Err(EnvelopeError::UnsupportedSuite);
        }
        let enc = r.array::<32>("enc")?;
        let ciphertext = r.rest();
        if ciphertext.len() < 16 {
            return Err(WireError::Truncated("ciphertext").into());
        }
        let header = bytes
            .get(..ENVELOPE_HEADER_LEN)
            .ok_or(WireError::Truncated("enc"))?;
        Ok(Self {
            key_id,
            enc,
            header,
            ciphertext,
        })
    }

    /// Open with the private key for [`Envelope::key_id`] and decode the payload.
    pub fn open(&self, sk: &HpkePrivateKey) -> Result<DonationPayload, EnvelopeError> {
        let pt = hpke_open(sk, &self.enc, ENVELOPE_INFO, self.header, self.ciphertext)?;
        DonationPayload::decode(&pt)
    }
}
