//! Ed25519 keys and the signed-object wrapper shared by every signed message.
//!
//! Every signature in Datadonor is made over domain-separated bytes:
//!
//! ```text
//! "datadonor/v1" 0x00 <context label> 0x00 <payload bytes>
//! ```
//!
//! where the context label names the message type (see [`Context`]). A signature made for one
//! message type therefore never verifies as another. The payload is the exact JSON body that was
//! signed; verifiers check the signature over the received bytes and only then parse them, so no
//! canonicalisation is ever needed to check a signature.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::wire::{b64, parse_json, WireError};

/// Largest signed object accepted by [`SignedObject::from_bytes`].
pub const MAX_SIGNED_OBJECT_LEN: usize = 256 * 1024;

/// Prefix of every signed message.
pub const SIGNATURE_PREFIX: &[u8] = b"datadonor/v1";

/// The message types that carry a signature. Each has its own context label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Context {
    /// A study definition, signed by a steward.
    StudyDefinition,
    /// A consent manifest, signed by the donor.
    ConsentManifest,
    /// A withdrawal, signed by the donor.
    Withdrawal,
    /// A receipt, signed by the intake's ledger key.
    Receipt,
    /// A query approval, signed by a steward.
    QueryApproval,
    /// A donor credential, signed by a study's enrolment service.
    DonorCredential,
    /// A message of the pseudonymisers' key ceremony, signed by the sending instance.
    DkgMessage,
    /// A researcher's request to the steward's query service, signed by the researcher.
    QueryRequest,
    /// A study bundle (ledger and witness keys a donor pins), signed by a steward.
    StudyBundle,
}

impl Context {
    /// All contexts, for tests and documentation.
    pub const ALL: [Context; 9] = [
        Context::StudyDefinition,
        Context::ConsentManifest,
        Context::Withdrawal,
        Context::Receipt,
        Context::QueryApproval,
        Context::DonorCredential,
        Context::DkgMessage,
        Context::QueryRequest,
        Context::StudyBundle,
    ];

    /// The label that goes into the signed bytes and the `context` field.
    pub fn label(self) -> &'static str {
        match self {
            Context::StudyDefinition => "study-definition",
            Context::ConsentManifest => "consent-manifest",
            Context::Withdrawal => "withdrawal",
            Context::Receipt => "receipt",
            Context::QueryApproval => "query-approval",
            Context::DonorCredential => "donor-credential",
            Context::DkgMessage => "dkg-message",
            Context::QueryRequest => "query-request",
            Context::StudyBundle => "study-bundle",
        }
    }
}

/// Errors from keys and signed objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signed object or its payload does not parse.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The object was signed for another message type.
    #[error("signature context is `{found}`, expected `{expected}`")]
    WrongContext {
        /// The context the verifier asked for.
        expected: &'static str,
        /// The context in the object.
        found: String,
    },
    /// The public key is not 32 bytes.
    #[error("public key must be 32 bytes")]
    BadPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The signer is not the key the verifier expected.
    #[error("signed by an unexpected key")]
    UnexpectedSigner,
    /// Key generation or import failed.
    #[error("invalid Ed25519 key material")]
    BadKey,
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl PublicKey {
    /// Parse 32 raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SignatureError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SignatureError::BadPublicKey)?;
        Ok(Self(arr))
    }

    /// Verify `signature` over `message` exactly as given (no context added).
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| SignatureError::BadSignature)
    }

    /// Verify a signature made with [`SigningKey::sign`] under `context`.
    pub fn verify(
        &self,
        context: Context,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        self.verify_raw(&signed_bytes(context, payload), signature)
    }

    /// Standard base64 of the key, as carried in JSON.
    pub fn to_base64(&self) -> String {
        b64::encode(&self.0)
    }

    /// Parse the base64 form.
    pub fn from_base64(s: &str) -> Result<Self, SignatureError> {
        let bytes = b64::decode(s).ok_or(SignatureError::BadPublicKey)?;
        Self::from_slice(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(|_| serde::de::Error::custom("invalid Ed25519 public key"))
    }
}

/// An Ed25519 signing key. The 32-byte seed is zeroized on drop and never printed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey(public: {}, secret: <redacted>)",
            hex::encode(self.public_key().0)
        )
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
            .map_err(|_| SignatureError::BadKey)?;
        Self::from_seed(&seed)
    }

    /// The key for a 32-byte RFC 8032 seed (the "private key" of RFC 8032).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SignatureError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SignatureError::BadKey)?;
        Ok(Self {
            pair,
            seed: Zeroizing::new(*seed),
        })
    }

    /// The seed, for storing the key. Handle with care.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The key as a signing-key file (`PROTOCOL.md`, "Key files"): the seed as 64 lowercase
    /// hex digits and a newline.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(hex::encode(self.seed.as_ref()));
        text.push('\n');
        text
    }

    /// Parse a signing-key file: 64 hex digits, surrounding whitespace ignored.
    pub fn from_key_file(text: &str) -> Result<Self, SignatureError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| SignatureError::BadKey)?;
        Self::from_seed(&seed)
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(out)
    }

    /// Sign `message` exactly as given (no context). Used for the signed-note format, whose
    /// own specification fixes the signed bytes.
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }

    /// Sign `payload` under `context`.
    pub fn sign(&self, context: Context, payload: &[u8]) -> [u8; 64] {
        self.sign_raw(&signed_bytes(context, payload))
    }

    /// The ring key pair, for APIs that want one.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}

/// The exact bytes a signature under `context` covers.
pub fn signed_bytes(context: Context, payload: &[u8]) -> Vec<u8> {
    let label = context.label().as_bytes();
    let mut out = Vec::with_capacity(SIGNATURE_PREFIX.len() + label.len() + payload.len() + 2);
    out.extend_from_slice(SIGNATURE_PREFIX);
    out.push(0);
    out.extend_from_slice(label);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// The wire form of every signed message: a JSON object with four fields, exactly.
///
/// ```json
/// {"context":"consent-manifest","payload":"<base64 JSON body>","public_key":"<base64>","signature":"<base64>"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedObject {
    /// The context label (see [`Context::label`]).
    pub context: String,
    /// The signed JSON body.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// The signer's Ed25519 public key.
    pub public_key: PublicKey,
    /// The 64-byte Ed25519 signature over [`signed_bytes`].
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

impl SignedObject {
    /// Serialise `body` as compact JSON and sign it.
    pub fn sign<T: Serialize>(context: Context, body: &T, key: &SigningKey) -> Self {
        // Serialising our own plain data types to a Vec cannot fail: they contain no maps with
        // non-string keys and no custom serialisers that error.
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let signature = key.sign(context, &payload).to_vec();
        Self {
            context: context.label().to_string(),
            payload,
            public_key: key.public_key(),
            signature,
        }
    }

    /// The wire bytes (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse the wire bytes strictly. Does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        Ok(parse_json(bytes, "signed object", MAX_SIGNED_OBJECT_LEN)?)
    }

    /// Check the context and the signature; returns the signer.
    pub fn verify(&self, context: Context) -> Result<PublicKey, SignatureError> {
        if self.context != context.label() {
            return Err(SignatureError::WrongContext {
                expected: context.label(),
                found: self.context.clone(),
            });
        }
        self.public_key
            .verify(context, &self.payload, &self.signature)?;
        Ok(self.public_key)
    }

    /// Verify, then parse the payload as `T`.
    pub fn open<T: DeserializeOwned>(
        &self,
        context: Context,
        message: &'static str,
    ) -> Result<Signed<T>, SignatureError> {
        let signer = self.verify(context)?;
        let body = parse_json(&self.payload, message, MAX_SIGNED_OBJECT_LEN)?;
        Ok(Signed {
            body,
            signer,
            object: self.clone(),
        })
    }

    /// SHA-256 of the payload: how other messages refer to this one.
    pub fn payload_digest(&self) -> [u8; 32] {
        crate::wire::sha256(&self.payload)
    }
}

/// A verified signed message: the parsed body, who signed it, and the object as received.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    /// The parsed body.
    pub body: T,
    /// The verified signer.
    pub signer: PublicKey,
    /// The object exactly as received, for storing and re-sending.
    pub object: SignedObject,
}

impl<T> Signed<T> {
    /// SHA-256 of the signed payload.
    pub fn digest(&self) -> [u8; 32] {
        self.object.payload_digest()
    }
}
