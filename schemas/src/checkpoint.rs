//! Signed tree heads of the Datadonor transparency log: C2SP
//! [tlog-checkpoint](https://c2sp.org/tlog-checkpoint) bodies inside C2SP
//! [signed notes](https://c2sp.org/signed-note) signed with Ed25519.
//!
//! Byte-exact with `golang.org/x/mod/sumdb/note` and the C2SP specs:
//!
//! * checkpoint body: `<origin>\n<tree size, decimal>\n<base64 root>\n`
//!   followed by optional non-empty extension lines, each ending in `\n`;
//! * signed note: body, a blank line, then one or more lines
//!   `— <key name> <base64(4-byte key ID || signature)>\n` (em dash U+2014,
//!   space); the Ed25519 signature covers the body exactly (including its final
//!   newline, excluding the blank separator line);
//! * key ID: first 4 bytes of `SHA-256(key name || 0x0A || 0x01 || public key)`;
//! * verifier key ("vkey"): `<name>+<8 lowercase hex key ID>+<base64(0x01 || public key)>`.
//!
//! Parsing is strict: canonical decimal and canonical base64 only, no ASCII
//! control characters other than newline, no empty lines in the body, and
//! limits on note size ([`MAX_NOTE_SIZE`]) and signature count
//! ([`MAX_SIGNATURES`]). [`open`] never panics on arbitrary input. A note is
//! accepted only if at least one signature by a known verifier is valid and
//! every signature by a known verifier is valid; signatures by unknown keys
//! are ignored (kept as unverified), as the signed-note spec requires. Two
//! signatures by the same known key are rejected.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use crate::merkle::{Hash, HASH_LEN};

/// Largest signed note [`open`] accepts, in bytes (1 MiB).
pub const MAX_NOTE_SIZE: usize = 1 << 20;

/// Largest number of signature lines [`open`] accepts in one note.
pub const MAX_SIGNATURES: usize = 100;

/// Signature type identifier byte of Ed25519 note signatures (signed-note spec).
pub const SIG_TYPE_ED25519: u8 = 0x01;

/// Prefix of every signature line: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Length of an Ed25519 signature in bytes.
const ED25519_SIG_LEN: usize = 64;

/// Errors from building, parsing, signing and opening checkpoints.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note (or body) is larger than [`MAX_NOTE_SIZE`].
    #[error("note is {size} bytes, the limit is {max}")]
    NoteTooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit, [`MAX_NOTE_SIZE`].
        max: usize,
    },
    /// The input is not valid UTF-8.
    #[error("note is not valid UTF-8")]
    NotUtf8,
    /// The input contains an ASCII control character other than newline,
    /// or a line of the body contains a control character.
    #[error("forbidden control character")]
    ForbiddenCharacter,
    /// The note has no blank line separating the text from the signatures.
    #[error("note has no signature block (missing blank line)")]
    MissingSignatureBlock,
    /// The signature block is empty or does not end with a newline.
    #[error("signature block is empty or lacks its final newline")]
    MalformedSignatureBlock,
    /// A signature line is not `— <name> <base64>` with a decodable
    /// signature of at least 5 bytes.
    #[error("malformed signature line {line}")]
    MalformedSignatureLine {
        /// 1-based index of the line within the signature block.
        line: usize,
    },
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signatures")]
    TooManySignatures {
        /// The limit, [`MAX_SIGNATURES`].
        max: usize,
    },
    /// A key name is empty or contains whitespace, `+` or a control character.
    #[error("invalid key name")]
    InvalidKeyName,
    /// A signature by a known key does not verify.
    #[error("invalid signature by known key {name}+{}", hex::encode(.key_hash))]
    InvalidSignature {
        /// Key name of the failing signature.
        name: String,
        /// Key ID of the failing signature.
        key_hash: [u8; 4],
    },
    /// The note carries two signatures by the same known key.
    #[error("duplicate signature by known key {name}+{}", hex::encode(.key_hash))]
    DuplicateSignature {
        /// Key name of the repeated signature.
        name: String,
        /// Key ID of the repeated signature.
        key_hash: [u8; 4],
    },
    /// Several verifiers with different public keys share a key name and ID.
    #[error("ambiguous verifiers for key {name}+{}", hex::encode(.key_hash))]
    AmbiguousVerifier {
        /// The shared key name.
        name: String,
        /// The shared key ID.
        key_hash: [u8; 4],
    },
    /// No signature in the note is by a known verifier.
    #[error("note has no signature by a known key")]
    UnverifiedNote,
    /// The checkpoint body does not end with a newline.
    #[error("checkpoint body does not end with a newline")]
    MissingTrailingNewline,
    /// The checkpoint body has fewer than three lines.
    #[error("checkpoint body has fewer than three lines")]
    TooFewLines,
    /// The origin line is empty.
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    /// The tree size is not canonical ASCII decimal (digits only, no leading
    /// zero unless it is `0`) or does not fit in a `u64`.
    #[error("tree size is not a canonical decimal u64")]
    InvalidTreeSize,
    /// The root hash is not canonical standard base64 of exactly 32 bytes.
    #[error("root hash is not canonical base64 of 32 bytes")]
    InvalidRootHash,
    /// An extension line is empty.
    #[error("empty extension line")]
    EmptyExtensionLine,
    /// A verifier key is not `<name>+<8 lowercase hex>+<base64>`.
    #[error("malformed verifier key")]
    MalformedVerifierKey,
    /// A verifier key names a signature type other than Ed25519 (0x01), or
    /// its public key is not 32 bytes.
    #[error("unsupported verifier key type {0:#04x} or key length")]
    UnsupportedKeyType(u8),
    /// A verifier key's key ID does not match its name and public key.
    #[error("verifier key ID does not match its name and public key")]
    KeyHashMismatch,
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Why a vkey's text does not split into its parts (each caller maps it to its own error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VkeyError {
    /// Not `<name>+<8 lowercase hex>+<base64>`, or the key is not 32 bytes after its type.
    Malformed,
    /// The name is not a valid key name.
    InvalidKeyName,
    /// The key's type byte is not the one expected (or the key has the wrong length for it).
    UnsupportedKeyType(u8),
}

/// The parts of a signed-note verifier key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VkeyParts<'a> {
    pub(crate) name: &'a str,
    pub(crate) key_hash: [u8; 4],
    pub(crate) public_key: [u8; 32],
}

/// Split a vkey `<name>+<8 lowercase hex key ID>+<base64(alg || 32-byte key)>` whose type byte
/// must be `alg` (the key ID is returned, not checked: it depends on the key type's hash rule).
pub(crate) fn split_vkey(vkey: &str, alg: u8) -> Result<VkeyParts<'_>, VkeyError> {
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(hash_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(VkeyError::Malformed);
    };
    if !is_valid_key_name(name) {
        return Err(VkeyError::InvalidKeyName);
    }
    let lower_hex = hash_hex.len() == 8
        && hash_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex {
        return Err(VkeyError::Malformed);
    }
    let mut key_hash = [0u8; 4];
    hex::decode_to_slice(hash_hex, &mut key_hash).map_err(|_| VkeyError::Malformed)?;
    let key = STANDARD.decode(key_b64).map_err(|_| VkeyError::Malformed)?;
    let Some((&found, public_key)) = key.split_first() else {
        return Err(VkeyError::Malformed);
    };
    if found != alg {
        return Err(VkeyError::UnsupportedKeyType(found));
    }
    let public_key =
        <[u8; 32]>::try_from(public_key).map_err(|_| VkeyError::UnsupportedKeyType(found))?;
    Ok(VkeyParts {
        name,
        key_hash,
        public_key,
    })
}

/// The vkey text `<name>+<hex key ID>+<base64(alg || key)>`, inverse of [`split_vkey`].
pub(crate) fn format_vkey(name: &str, key_hash: [u8; 4], alg: u8, public_key: &[u8; 32]) -> String {
    let mut key = Vec::with_capacity(33);
    key.push(alg);
    key.extend_from_slice(public_key);
    format!("{name}+{}+{}", hex::encode(key_hash), STANDARD.encode(key))
}

/// Whether `name` is a valid key name: non-empty, no Unicode whitespace, no
/// `+` and no control character.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Key ID of an Ed25519 note key:
/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
pub fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[SIG_TYPE_ED25519]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut out = [0u8; 4];
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

/// A transparency log checkpoint (signed tree head body).
///
/// The fields are public for convenience; [`Checkpoint::new`],
/// [`Checkpoint::with_extensions`] and [`Checkpoint::parse_body`] only build
/// valid values, and [`sign`] re-checks them with [`Checkpoint::validate`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// The log origin (first line): non-empty, no control characters.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The root hash of the tree at `size`.
    pub root: Hash,
    /// Extension lines, without their newlines: each non-empty, no control
    /// characters.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines. The origin must be non-empty and
    /// free of newlines and control characters.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        validate_origin(&origin)?;
        Ok(Checkpoint {
            origin,
            size,
            root,
            extensions: Vec::new(),
        })
    }

    /// Replaces the extension lines; each must be non-empty and free of
    /// newlines and control characters.
    pub fn with_extensions(mut self, extensions: Vec<String>) -> Result<Self, CheckpointError> {
        for ext in &extensions {
            validate_extension(ext)?;
        }
        self.extensions = extensions;
        Ok(self)
    }

    /// Checks the origin and extension lines (non-empty, no newline or other
    /// control character), i.e. that [`Checkpoint::to_body`] is canonical.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        validate_origin(&self.origin)?;
        for ext in &self.extensions {
            validate_extension(ext)?;
        }
        Ok(())
    }

    /// The note text: `origin\nsize\nbase64(root)\n` then each extension line
    /// followed by `\n`. Canonical for a checkpoint that passes
    /// [`Checkpoint::validate`].
    pub fn to_body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root.0)
        );
        for ext in &self.extensions {
            body.push_str(ext);
            body.push('\n');
        }
        body
    }

    /// Strictly parses a checkpoint body (the note text, with its final
    /// newline): exactly the canonical encoding produced by
    /// [`Checkpoint::to_body`] is accepted.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        if body.len() > MAX_NOTE_SIZE {
            return Err(CheckpointError::NoteTooLarge {
                size: body.len(),
                max: MAX_NOTE_SIZE,
            });
        }
        let Some(content) = body.strip_suffix('\n') else {
            return Err(CheckpointError::MissingTrailingNewline);
        };
        let mut lines = content.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::TooFewLines);
        };
        validate_origin(origin)?;
        let size = parse_decimal(size)?;
        let root = parse_root(root)?;
        let mut extensions = Vec::new();
        for ext in lines {
            validate_extension(ext)?;
            extensions.push(ext.to_owned());
        }
        let checkpoint = Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        };
        // Belt and braces: only the canonical encoding is accepted.
        if checkpoint.to_body() != body {
            return Err(CheckpointError::InvalidRootHash);
        }
        Ok(checkpoint)
    }
}

fn validate_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() {
        return Err(CheckpointError::EmptyOrigin);
    }
    if has_control(origin) {
        return Err(CheckpointError::ForbiddenCharacter);
    }
    Ok(())
}

fn validate_extension(ext: &str) -> Result<(), CheckpointError> {
    if ext.is_empty() {
        return Err(CheckpointError::EmptyExtensionLine);
    }
    if has_control(ext) {
        return Err(CheckpointError::ForbiddenCharacter);
    }
    Ok(())
}

pub(crate) fn parse_decimal(s: &str) -> Result<u64, CheckpointError> {
    let canonical = match s.as_bytes() {
        [] => false,
        [b'0'] => true,
        [b'0', ..] => false,
        digits => digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return Err(CheckpointError::InvalidTreeSize);
    }
    s.parse::<u64>()
        .map_err(|_| CheckpointError::InvalidTreeSize)
}

fn parse_root(s: &str) -> Result<Hash, CheckpointError> {
    let bytes = STANDARD
        .decode(s)
        .map_err(|_| CheckpointError::InvalidRootHash)?;
    let array = <[u8; HASH_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| CheckpointError::InvalidRootHash)?;
    if STANDARD.encode(array) != s {
        return Err(CheckpointError::InvalidRootHash);
    }
    Ok(Hash(array))
}

/// One signature line of a signed note.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (first 4 bytes of the decoded signature field).
    pub key_hash: [u8; 4],
    /// The signature bytes after the key ID (64 bytes for Ed25519).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, `— <name> <base64(key ID || signature)>\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_hash);
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }
}

impl fmt::Debug for NoteSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSignature")
            .field("name", &self.name)
            .field("key_hash", &hex::encode(self.key_hash))
            .field("signature", &hex::encode(&self.signature))
            .finish()
    }
}

/// A checkpoint note as returned by [`open`]: at least one signature by a
/// known verifier checked out.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedCheckpoint {
    /// The verified checkpoint.
    pub checkpoint: Checkpoint,
    /// Signatures by known verifiers, all verified, in note order.
    pub signatures: Vec<NoteSignature>,
    /// Signatures by keys not among the verifiers (not checked), in note
    /// order, identical lines once.
    pub unverified_signatures: Vec<NoteSignature>,
}

impl SignedCheckpoint {
    /// Re-encodes the signed note: body, blank line, verified signatures,
    /// then unverified ones.
    pub fn to_note(&self) -> String {
        let mut note = self.checkpoint.to_body();
        note.push('\n');
        for sig in self.signatures.iter().chain(&self.unverified_signatures) {
            note.push_str(&sig.to_line());
        }
        note
    }
}

/// An Ed25519 note verifier key: key name, key ID and public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NoteVerifier {
    name: String,
    key_hash: [u8; 4],
    public_key: [u8; 32],
}

impl NoteVerifier {
    /// A verifier for `public_key` under `name`; computes the key ID.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, CheckpointError> {
        if !is_valid_key_name(name) {
            return Err(CheckpointError::InvalidKeyName);
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_hash: key_hash(name, &public_key),
            public_key,
        })
    }

    /// The verifier matching a signing key pair.
    pub fn from_key_pair(name: &str, key: &Ed25519KeyPair) -> Result<Self, CheckpointError> {
        let public_key = <[u8; 32]>::try_from(key.public_key().as_ref())
            .map_err(|_| CheckpointError::UnsupportedKeyType(SIG_TYPE_ED25519))?;
        Self::new(name, public_key)
    }

    /// Parses a vkey `<name>+<8 lowercase hex key ID>+<base64(0x01 || key)>`,
    /// checking that the key ID matches the name and key.
    pub fn parse_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        let parts = split_vkey(vkey, SIG_TYPE_ED25519).map_err(|e| match e {
            VkeyError::Malformed => CheckpointError::MalformedVerifierKey,
            VkeyError::InvalidKeyName => CheckpointError::InvalidKeyName,
            VkeyError::UnsupportedKeyType(t) => CheckpointError::UnsupportedKeyType(t),
        })?;
        let verifier = Self::new(parts.name, parts.public_key)?;
        if verifier.key_hash != parts.key_hash {
            return Err(CheckpointError::KeyHashMismatch);
        }
        Ok(verifier)
    }

    /// The vkey text encoding, inverse of [`NoteVerifier::parse_vkey`].
    pub fn to_vkey(&self) -> String {
        format_vkey(
            &self.name,
            self.key_hash,
            SIG_TYPE_ED25519,
            &self.public_key,
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key ID.
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_hash
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature.len() == ED25519_SIG_LEN
            && UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(message, signature)
                .is_ok()
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({})", self.to_vkey())
    }
}

/// Signs `checkpoint` with `key` under `key_name` and returns the signed note
/// text (body, blank line, one signature line).
pub fn sign(
    checkpoint: &Checkpoint,
    key_name: &str,
    key: &Ed25519KeyPair,
) -> Result<String, CheckpointError> {
    checkpoint.validate()?;
    sign_text(&checkpoint.to_body(), key_name, key)
}

/// Signs an arbitrary note text (which must end with a newline and contain
/// no control character other than newline) and returns the signed note.
pub fn sign_text(
    text: &str,
    key_name: &str,
    key: &Ed25519KeyPair,
) -> Result<String, CheckpointError> {
    if !text.ends_with('\n') {
        return Err(CheckpointError::MissingTrailingNewline);
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(CheckpointError::ForbiddenCharacter);
    }
    let verifier = NoteVerifier::from_key_pair(key_name, key)?;
    let signature = key.sign(text.as_bytes());
    let line = NoteSignature {
        name: verifier.name,
        key_hash: verifier.key_hash,
        signature: signature.as_ref().to_vec(),
    }
    .to_line();
    let mut note = String::with_capacity(text.len() + 1 + line.len());
    note.push_str(text);
    note.push('\n');
    note.push_str(&line);
    if note.len() > MAX_NOTE_SIZE {
        return Err(CheckpointError::NoteTooLarge {
            size: note.len(),
            max: MAX_NOTE_SIZE,
        });
    }
    Ok(note)
}

/// Parses a signed note's signature line (without its newline).
pub(crate) fn parse_signature_line(
    line: &str,
    line_no: usize,
) -> Result<NoteSignature, CheckpointError> {
    let malformed = CheckpointError::MalformedSignatureLine { line: line_no };
    let rest = line.strip_prefix(SIG_PREFIX).ok_or(malformed.clone())?;
    let (name, b64) = rest.split_once(' ').ok_or(malformed.clone())?;
    if !is_valid_key_name(name) {
        return Err(CheckpointError::InvalidKeyName);
    }
    let raw = STANDARD.decode(b64).map_err(|_| malformed.clone())?;
    match raw.as_slice() {
        [a, b, c, d, signature @ ..] if !signature.is_empty() => Ok(NoteSignature {
            name: name.to_owned(),
            key_hash: [*a, *b, *c, *d],
            signature: signature.to_vec(),
        }),
        _ => Err(malformed),
    }
}

/// Splits a signed note into its text (with final newline) and verified /
/// unverified signatures.
fn open_note<'a>(
    note: &'a [u8],
    verifiers: &[NoteVerifier],
) -> Result<(&'a str, Vec<NoteSignature>, Vec<NoteSignature>), CheckpointError> {
    if note.len() > MAX_NOTE_SIZE {
        return Err(CheckpointError::NoteTooLarge {
            size: note.len(),
            max: MAX_NOTE_SIZE,
        });
    }
    let text = std::str::from_utf8(note).map_err(|_| CheckpointError::NotUtf8)?;
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(CheckpointError::ForbiddenCharacter);
    }
    let split = text
        .rfind("\n\n")
        .ok_or(CheckpointError::MissingSignatureBlock)?;
    // `split` is a char boundary ('\n' is ASCII), so are split + 1 and split + 2.
    let (Some(body), Some(block)) = (text.get(..split + 1), text.get(split + 2..)) else {
        return Err(CheckpointError::MissingSignatureBlock);
    };
    let Some(block) = block.strip_suffix('\n') else {
        return Err(CheckpointError::MalformedSignatureBlock);
    };

    let mut verified: Vec<NoteSignature> = Vec::new();
    let mut unverified: Vec<NoteSignature> = Vec::new();
    for (i, line) in block.split('\n').enumerate() {
        let line_no = i + 1;
        if line_no > MAX_SIGNATURES {
            return Err(CheckpointError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        let sig = parse_signature_line(line, line_no)?;
        let mut matching = verifiers
            .iter()
            .filter(|v| v.name == sig.name && v.key_hash == sig.key_hash);
        let Some(verifier) = matching.next() else {
            if !unverified.contains(&sig) {
                unverified.push(sig);
            }
            continue;
        };
        if matching.any(|other| other.public_key != verifier.public_key) {
            return Err(CheckpointError::AmbiguousVerifier {
                name: sig.name,
                key_hash: sig.key_hash,
            });
        }
        if verified
            .iter()
            .any(|v| v.name == sig.name && v.key_hash == sig.key_hash)
        {
            return Err(CheckpointError::DuplicateSignature {
                name: sig.name,
                key_hash: sig.key_hash,
            });
        }
        if !verifier.verify(body.as_bytes(), &sig.signature) {
            return Err(CheckpointError::InvalidSignature {
                name: sig.name,
                key_hash: sig.key_hash,
            });
        }
        verified.push(sig);
    }
    if verified.is_empty() {
        return Err(CheckpointError::UnverifiedNote);
    }
    Ok((body, verified, unverified))
}

/// Opens a signed checkpoint note.
///
/// Requires valid UTF-8 without control characters other than newline, at
/// most [`MAX_NOTE_SIZE`] bytes and [`MAX_SIGNATURES`] signature lines, every
/// signature line well formed, every signature by a known verifier valid
/// (at most one per key), at least one such signature, and a strictly
/// canonical checkpoint body. Signatures by unknown keys are ignored and
/// returned as unverified.
pub fn open(
    note_text: &[u8],
    verifiers: &[NoteVerifier],
) -> Result<SignedCheckpoint, CheckpointError> {
    let (body, signatures, unverified_signatures) = open_note(note_text, verifiers)?;
    let checkpoint = Checkpoint::parse_body(body)?;
    Ok(SignedCheckpoint {
        checkpoint,
        signatures,
        unverified_signatures,
    })
}

/// Opens a generic signed note (any text, not only a checkpoint) with the
/// same rules as [`open`], returning the verified text (with its final
/// newline) and the verified signatures.
pub fn open_text<'a>(
    note_text: &'a [u8],
    verifiers: &[NoteVerifier],
) -> Result<(&'a str, Vec<NoteSignature>), CheckpointError> {
    let (body, signatures, _) = open_note(note_text, verifiers)?;
    Ok((body, signatures))
}
