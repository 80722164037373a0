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
    aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem, OpModeS,
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

/// An X25519 HPKE private key: zeroized on drop, never printed. Its public half is derived once,
/// when the key is loaded or generated, and kept beside it: every open needs it (RFC 9180
/// `kem_context = enc || pkRm`), and deriving it costs a scalar multiplication as long as the
/// Diffie-Hellman itself.
pub struct HpkePrivateKey {
    secret: Zeroizing<[u8; 32]>,
    public: HpkePublicKey,
}

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
        let public = HpkePublicKey(p);
        (
            Self {
                secret: Zeroizing::new(s),
                public,
            },
            public,
        )
    }
    /// Load 32 bytes; derives the public half.
    pub fn from_bytes(b: &[u8]) -> Result<Self, EnvelopeError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| EnvelopeError::BadKey)?;
        let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&arr)
            .map_err(|_| EnvelopeError::BadKey)?;
        let pk = <X25519HkdfSha256 as Kem>::sk_to_pk(&sk);
        let mut p = [0u8; 32];
        p.copy_from_slice(&pk.to_bytes());
        Ok(Self {
            secret: Zeroizing::new(arr),
            public: HpkePublicKey(p),
        })
    }
    /// The bytes, for storing the key.
    pub fn to_bytes(&self) -> &[u8; 32] {
        &self.secret
    }
    /// The public half (derived when the key was loaded).
    pub fn public_key(&self) -> HpkePublicKey {
        self.public
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

/// Single-shot HPKE open in the Datadonor suite: RFC 9180 mode Base, `Decap`, `KeyScheduleR` and
/// `Open` with sequence number 0. The recipient's public key in the KEM context is the one `sk`
/// carries (derived once, when the key was loaded), so an open costs one X25519 scalar
/// multiplication, not two. Interoperates with [`hpke_seal`] and with every RFC 9180
/// implementation of this suite (`tests/published_vectors.rs` checks the RFC's vectors).
pub fn hpke_open(
    sk: &HpkePrivateKey,
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use subtle::ConstantTimeEq;
    // Decap: dh = DH(skR, pkE); an all-zero result (a small-order `enc`) is an error
    // (RFC 9180 §7.1.4).
    let dh = Zeroizing::new(
        curve25519_dalek::montgomery::MontgomeryPoint(*enc)
            .mul_clamped(*sk.secret)
            .to_bytes(),
    );
    if bool::from(dh.ct_eq(&[0u8; 32])) {
        return Err(EnvelopeError::Decrypt);
    }
    // shared_secret = ExtractAndExpand(dh, kem_context = enc || pkRm)
    let kem_suite = [b'K', b'E', b'M', (KEM_ID >> 8) as u8, KEM_ID as u8];
    let eae_prk = labeled_extract(&[], &kem_suite, b"eae_prk", &dh[..]);
    let shared_secret: Zeroizing<[u8; 32]> = labeled_expand(
        &eae_prk,
        &kem_suite,
        b"shared_secret",
        &[enc.as_slice(), sk.public.0.as_slice()],
    );
    // KeySchedule, mode Base (0x00), no PSK.
    let suite = hpke_suite_id();
    let psk_id_hash = labeled_extract(&[], &suite, b"psk_id_hash", &[]);
    let info_hash = labeled_extract(&[], &suite, b"info_hash", info);
    let mut context = [0u8; 65];
    context[1..33].copy_from_slice(&psk_id_hash[..]);
    context[33..].copy_from_slice(&info_hash[..]);
    let secret = labeled_extract(&shared_secret[..], &suite, b"secret", &[]);
    let key: Zeroizing<[u8; 32]> = labeled_expand(&secret, &suite, b"key", &[&context]);
    let nonce: Zeroizing<[u8; 12]> = labeled_expand(&secret, &suite, b"base_nonce", &[&context]);
    // Open with sequence number 0: the nonce is the base nonce.
    let tag_at = ciphertext
        .len()
        .checked_sub(16)
        .ok_or(EnvelopeError::Decrypt)?;
    let mut plaintext = Zeroizing::new(ciphertext[..tag_at].to_vec());
    aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(&key[..]))
        .decrypt_in_place_detached(
            aes_gcm::Nonce::from_slice(&nonce[..]),
            aad,
            &mut plaintext,
            aes_gcm::Tag::from_slice(&ciphertext[tag_at..]),
        )
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok(plaintext)
}

/// `"HPKE" || kem_id || kdf_id || aead_id` (RFC 9180 §5.1).
fn hpke_suite_id() -> [u8; 10] {
    let mut id = *b"HPKE\0\0\0\0\0\0";
    id[4..6].copy_from_slice(&KEM_ID.to_be_bytes());
    id[6..8].copy_from_slice(&KDF_ID.to_be_bytes());
    id[8..10].copy_from_slice(&AEAD_ID.to_be_bytes());
    id
}

/// RFC 9180 §4 `LabeledExtract(salt, label, ikm)` with HKDF-SHA256:
/// `HMAC-SHA256(salt, "HPKE-v1" || suite_id || label || ikm)`.
fn labeled_extract(salt: &[u8], suite_id: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut ctx =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt));
    ctx.update(b"HPKE-v1");
    ctx.update(suite_id);
    ctx.update(label);
    ctx.update(ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// RFC 9180 §4 `LabeledExpand(prk, label, info, L)` with HKDF-SHA256, for `L` <= 32 (one HKDF
/// block): the first `L` bytes of
/// `HMAC-SHA256(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info || 0x01)`.
fn labeled_expand<const L: usize>(
    prk: &[u8; 32],
    suite_id: &[u8],
    label: &[u8],
    info: &[&[u8]],
) -> Zeroizing<[u8; L]> {
    const { assert!(L <= 32) };
    let mut ctx =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, prk));
    ctx.update(&(L as u16).to_be_bytes());
    ctx.update(b"HPKE-v1");
    ctx.update(suite_id);
    ctx.update(label);
    for part in info {
        ctx.update(part);
    }
    ctx.update(&[1]);
    let mut out = Zeroizing::new([0u8; L]);
    out.copy_from_slice(&ctx.sign().as_ref()[..L]);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the `hpke` crate's own single-shot open.
    fn reference_open(
        sk: &HpkePrivateKey,
        enc: &[u8; 32],
        info: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Option<Vec<u8>> {
        let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(sk.to_bytes()).ok()?;
        let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc).ok()?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            info,
            ct,
            aad,
        )
        .ok()
    }

    #[test]
    fn open_agrees_with_the_hpke_crate() {
        let mut rng = rand_core::OsRng;
        for round in 0..40usize {
            let (sk, pk) = HpkePrivateKey::generate();
            let mut info = vec![0u8; round % 7 * 5];
            let mut aad = vec![0u8; round % 5 * 9];
            let mut pt = vec![0u8; [0, 1, 15, 16, 17, 1000, 70_000][round % 7]];
            rng.fill_bytes(&mut info);
            rng.fill_bytes(&mut aad);
            rng.fill_bytes(&mut pt);
            let (enc, ct) = hpke_seal(&pk, &info, &aad, &pt).expect("seal");
            let ours = hpke_open(&sk, &enc, &info, &aad, &ct).expect("open");
            assert_eq!(ours.as_slice(), pt.as_slice());
            assert_eq!(
                reference_open(&sk, &enc, &info, &aad, &ct).as_deref(),
                Some(pt.as_slice())
            );
        }
    }

    #[test]
    fn any_change_fails_to_open() {
        let (sk, pk) = HpkePrivateKey::generate();
        let (info, aad, pt) = (
            b"info".as_slice(),
            b"aad".as_slice(),
            b"plaintext".as_slice(),
        );
        let (enc, ct) = hpke_seal(&pk, info, aad, pt).expect("seal");
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert_eq!(
                hpke_open(&sk, &enc, info, aad, &bad).err(),
                Some(EnvelopeError::Decrypt),
                "ciphertext byte {i}"
            );
        }
        let mut bad_enc = enc;
        bad_enc[3] ^= 1;
        assert!(hpke_open(&sk, &bad_enc, info, aad, &ct).is_err());
        assert!(hpke_open(&sk, &enc, b"infp", aad, &ct).is_err());
        assert!(hpke_open(&sk, &enc, info, b"aae", &ct).is_err());
        assert!(hpke_open(&sk, &enc, info, aad, &ct[..ct.len() - 1]).is_err());
        assert!(hpke_open(&sk, &enc, info, aad, &ct[..15]).is_err());
        assert!(hpke_open(&sk, &enc, info, aad, &[]).is_err());
        let (other, _) = HpkePrivateKey::generate();
        assert!(hpke_open(&other, &enc, info, aad, &ct).is_err());
    }

    #[test]
    fn small_order_enc_is_refused() {
        let (sk, _) = HpkePrivateKey::generate();
        // u = 0 (order 2), u = 1 (order 4) and a point of order 8: the clamped scalar is a multiple
        // of 8, so each gives the all-zero shared secret.
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut order8 = [0u8; 32];
        hex::decode_to_slice(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            &mut order8,
        )
        .expect("hex");
        for enc in [[0u8; 32], one, order8] {
            assert_eq!(
                hpke_open(&sk, &enc, b"", b"", &[0u8; 32]).err(),
                Some(EnvelopeError::Decrypt)
            );
        }
    }

    #[test]
    fn the_public_half_is_derived_once_and_used() {
        let (sk, pk) = HpkePrivateKey::generate();
        let loaded = HpkePrivateKey::from_bytes(sk.to_bytes()).expect("load");
        assert_eq!(loaded.public_key(), pk);
        let (enc, ct) = hpke_seal(&pk, b"i", b"a", b"p").expect("seal");
        assert_eq!(
            hpke_open(&loaded, &enc, b"i", b"a", &ct)
                .expect("open")
                .as_slice(),
            b"p"
        );
        // The open takes the recipient's public key from the key, not from a fresh derivation: the
        // same secret with another public half computes another KEM context and fails.
        let (_, other_pk) = HpkePrivateKey::generate();
        let mismatched = HpkePrivateKey {
            secret: Zeroizing::new(*sk.to_bytes()),
            public: other_pk,
        };
        assert_eq!(
            hpke_open(&mismatched, &enc, b"i", b"a", &ct).err(),
            Some(EnvelopeError::Decrypt)
        );
    }
}
