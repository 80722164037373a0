//! Witness cosignatures of checkpoints, exactly as C2SP
//! [tlog-cosignature](https://c2sp.org/tlog-cosignature) (Ed25519, `cosignature/v1`) and the
//! request and response bodies of C2SP [tlog-witness](https://c2sp.org/tlog-witness)
//! `add-checkpoint`.
//!
//! These are not Datadonor signed objects: they do not use the `"datadonor/v1" 0x00 <context>`
//! prefix, so that any C2SP witness can cosign the ledger's checkpoints and any C2SP client can
//! check the cosignatures.
//!
//! * signed message: `"cosignature/v1\n" || "time " || decimal(timestamp) || "\n" || body`, where
//!   body is the checkpoint note text (with its final newline, without the signature lines);
//! * signature line: `— <witness name> base64(key ID || u64 BE timestamp || 64-byte Ed25519)\n`;
//! * key ID: `SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]`;
//! * verifier key ("vkey"): `<name>+<8 lowercase hex key ID>+<base64(0x04 || public key)>`.
//!
//! Nothing here reads a clock: the caller passes the time to sign at and the latest
//! timestamp it accepts. Every parser is total: it returns a typed error, never panics.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::checkpoint::{
    self, is_valid_key_name, parse_signature_line, Checkpoint, CheckpointError, NoteSignature,
    NoteVerifier, MAX_NOTE_SIZE,
};
use crate::merkle::{Hash, HASH_LEN};
use crate::signing::SigningKey;

/// Signature type identifier byte of timestamped Ed25519 cosignatures (signed-note spec).
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;

/// First line of the message a `cosignature/v1` signature covers.
pub const COSIGNATURE_V1_HEADER: &str = "cosignature/v1";

/// Largest timestamp a cosignature may carry (`2^63 - 1`).
pub const MAX_COSIGNATURE_TIME: u64 = (1 << 63) - 1;

/// Length of a decoded Ed25519 cosignature: key ID, timestamp, signature.
pub const COSIGNATURE_LEN: usize = 4 + 8 + 64;

/// Most consistency proof lines an `add-checkpoint` request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;

/// Largest `add-checkpoint` request body [`AddCheckpointRequest::parse`] accepts.
pub const MAX_REQUEST_SIZE: usize = MAX_NOTE_SIZE + 4096;

/// Media type of the `409 Conflict` answer to `add-checkpoint`: the witness's size and `\n`.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// Prefix of every signature line: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Errors from cosigning, parsing cosignatures and verifying a quorum.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    /// The log's signed note (or the checkpoint body) is not valid.
    #[error("log checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A key name is empty or contains whitespace, `+` or a control character.
    #[error("invalid witness key name")]
    InvalidKeyName,
    /// A witness vkey is not `<name>+<8 lowercase hex>+<base64>`.
    #[error("malformed witness verifier key")]
    MalformedVerifierKey,
    /// A witness vkey names a signature type other than 0x04, or its key is not 32 bytes.
    #[error("unsupported witness key type {0:#04x} or key length")]
    UnsupportedKeyType(u8),
    /// A witness vkey's key ID does not match its name and public key.
    #[error("witness key ID does not match its name and public key")]
    KeyHashMismatch,
    /// A line is not `— <name> <base64>` with a decodable signature.
    #[error("malformed cosignature line")]
    MalformedLine,
    /// A line by a known witness does not decode to 76 bytes (key ID, timestamp, signature).
    #[error("cosignature by {name} is {len} bytes, expected 76")]
    WrongLength {
        /// The witness's name.
        name: String,
        /// Decoded length of the line's signature field.
        len: usize,
    },
    /// The timestamp is zero or above `2^63 - 1`.
    #[error("cosignature by {name} has timestamp {timestamp}, out of range")]
    TimestampOutOfRange {
        /// The witness's name.
        name: String,
        /// The timestamp carried.
        timestamp: u64,
    },
    /// The timestamp is later than the latest the verifier accepts.
    #[error("cosignature by {name} is dated {timestamp}, after {max}")]
    FutureTimestamp {
        /// The witness's name.
        name: String,
        /// The timestamp carried.
        timestamp: u64,
        /// The latest timestamp accepted.
        max: u64,
    },
    /// A cosignature by a known witness does not verify over this checkpoint.
    #[error("invalid cosignature by {name}")]
    InvalidCosignature {
        /// The witness's name.
        name: String,
    },
    /// Two cosignature lines by the same known witness.
    #[error("two cosignatures by {name}")]
    DuplicateCosignature {
        /// The witness's name.
        name: String,
    },
    /// Two configured witness keys share a name and key ID but differ.
    #[error("two witness keys share the name and key ID of {name}")]
    AmbiguousWitnessKey {
        /// The shared name.
        name: String,
    },
    /// Fewer known witnesses cosigned than the quorum requires.
    #[error("{valid} valid witness cosignatures, the quorum is {quorum}")]
    QuorumNotMet {
        /// Distinct known witnesses whose cosignature verified.
        valid: usize,
        /// The quorum.
        quorum: usize,
    },
    /// The quorum is zero or larger than the number of witnesses.
    #[error("quorum {quorum} cannot be met by {witnesses} witnesses")]
    QuorumUnreachable {
        /// The quorum asked for.
        quorum: usize,
        /// The number of witness keys given.
        witnesses: usize,
    },
    /// A witness's answer holds no cosignature by that witness.
    #[error("the answer holds no cosignature by {name}")]
    NoCosignature {
        /// The witness's name.
        name: String,
    },
}

/// Errors from parsing an `add-checkpoint` request body.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddCheckpointError {
    /// The body is larger than [`MAX_REQUEST_SIZE`].
    #[error("request is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The first line is not `old <canonical decimal>`.
    #[error("malformed old size line")]
    MalformedOldSize,
    /// A proof line is not canonical base64 of 32 bytes.
    #[error("malformed consistency proof line {line}")]
    MalformedProofLine {
        /// 1-based index of the proof line.
        line: usize,
    },
    /// More than [`MAX_PROOF_LINES`] proof lines.
    #[error("more than {max} consistency proof lines")]
    TooManyProofLines {
        /// The limit.
        max: usize,
    },
    /// No empty line separates the proof from the checkpoint.
    #[error("no empty line before the checkpoint")]
    MissingBlankLine,
}

/// Key ID of a `cosignature/v1` witness key:
/// `SHA-256(name || 0x0A || 0x04 || public key)[:4]`.
pub fn cosignature_key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[SIG_TYPE_COSIGNATURE_V1]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut out = [0u8; 4];
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

/// The exact bytes a `cosignature/v1` signature covers:
/// `"cosignature/v1\ntime <timestamp>\n" || body`.
pub fn signed_message(body: &str, timestamp: u64) -> Vec<u8> {
    format!("{COSIGNATURE_V1_HEADER}\ntime {timestamp}\n{body}").into_bytes()
}

/// A witness's public key: its name, key ID and Ed25519 key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WitnessKey {
    name: String,
    key_hash: [u8; 4],
    public_key: [u8; 32],
}

impl WitnessKey {
    /// The key `public_key` under `name`; computes the key ID.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, CosignatureError> {
        if !is_valid_key_name(name) {
            return Err(CosignatureError::InvalidKeyName);
        }
        Ok(WitnessKey {
            name: name.to_owned(),
            key_hash: cosignature_key_hash(name, &public_key),
            public_key,
        })
    }

    /// Parses a vkey `<name>+<8 lowercase hex key ID>+<base64(0x04 || key)>`, checking the key ID.
    pub fn parse_vkey(vkey: &str) -> Result<Self, CosignatureError> {
        let parts = checkpoint::split_vkey(vkey, SIG_TYPE_COSIGNATURE_V1).map_err(|e| match e {
            checkpoint::VkeyError::Malformed => CosignatureError::MalformedVerifierKey,
            checkpoint::VkeyError::InvalidKeyName => CosignatureError::InvalidKeyName,
            checkpoint::VkeyError::UnsupportedKeyType(t) => CosignatureError::UnsupportedKeyType(t),
        })?;
        let key = Self::new(parts.name, parts.public_key)?;
        if key.key_hash != parts.key_hash {
            return Err(CosignatureError::KeyHashMismatch);
        }
        Ok(key)
    }

    /// The vkey text, inverse of [`WitnessKey::parse_vkey`].
    pub fn to_vkey(&self) -> String {
        checkpoint::format_vkey(
            &self.name,
            self.key_hash,
            SIG_TYPE_COSIGNATURE_V1,
            &self.public_key,
        )
    }

    /// The witness's name.
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

    /// Whether a signature line names this key (name and key ID both match).
    pub fn names(&self, name: &str, key_hash: [u8; 4]) -> bool {
        self.name == name && self.key_hash == key_hash
    }

    /// Checks `cosignature` over the checkpoint note text `body`: it must name this key,
    /// carry a timestamp in `1..=max_time` (and `<= 2^63 - 1`), and verify.
    pub fn verify(
        &self,
        body: &str,
        cosignature: &Cosignature,
        max_time: u64,
    ) -> Result<(), CosignatureError> {
        if !self.names(&cosignature.name, cosignature.key_hash) {
            return Err(CosignatureError::InvalidCosignature {
                name: self.name.clone(),
            });
        }
        let timestamp = cosignature.timestamp;
        if timestamp == 0 || timestamp > MAX_COSIGNATURE_TIME {
            return Err(CosignatureError::TimestampOutOfRange {
                name: self.name.clone(),
                timestamp,
            });
        }
        if timestamp > max_time {
            return Err(CosignatureError::FutureTimestamp {
                name: self.name.clone(),
                timestamp,
                max: max_time,
            });
        }
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(body, timestamp), &cosignature.signature)
            .map_err(|_| CosignatureError::InvalidCosignature {
                name: self.name.clone(),
            })
    }
}

impl fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WitnessKey({})", self.to_vkey())
    }
}

/// One decoded `cosignature/v1` signature line.
#[derive(Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's name.
    pub name: String,
    /// The key ID.
    pub key_hash: [u8; 4],
    /// When the witness signed, Unix seconds.
    pub timestamp: u64,
    /// The Ed25519 signature over [`signed_message`].
    pub signature: [u8; 64],
}

impl Cosignature {
    /// Reads a note signature as a cosignature: its field must be 76 bytes.
    pub fn from_note_signature(sig: &NoteSignature) -> Result<Self, CosignatureError> {
        let wrong = || CosignatureError::WrongLength {
            name: sig.name.clone(),
            len: 4 + sig.signature.len(),
        };
        let (ts, signature) = sig.signature.split_at_checked(8).ok_or_else(wrong)?;
        let ts = <[u8; 8]>::try_from(ts).map_err(|_| wrong())?;
        let signature = <[u8; 64]>::try_from(signature).map_err(|_| wrong())?;
        Ok(Cosignature {
            name: sig.name.clone(),
            key_hash: sig.key_hash,
            timestamp: u64::from_be_bytes(ts),
            signature,
        })
    }

    /// Parses one signature line, with or without its final newline.
    pub fn parse_line(line: &str) -> Result<Self, CosignatureError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.contains('\n') {
            return Err(CosignatureError::MalformedLine);
        }
        let sig = parse_signature_line(line, 1).map_err(|_| CosignatureError::MalformedLine)?;
        Self::from_note_signature(&sig)
    }

    /// The signature line, `— <name> base64(key ID || timestamp || signature)\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(COSIGNATURE_LEN);
        raw.extend_from_slice(&self.key_hash);
        raw.extend_from_slice(&self.timestamp.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }
}

impl fmt::Debug for Cosignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosignature")
            .field("name", &self.name)
            .field("key_hash", &hex::encode(self.key_hash))
            .field("timestamp", &self.timestamp)
            .field("signature", &hex::encode(self.signature))
            .finish()
    }
}

/// A witness's signing key and its name.
#[derive(Debug)]
pub struct WitnessSigner {
    key: SigningKey,
    public: WitnessKey,
}

impl WitnessSigner {
    /// The witness `name` signing with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CosignatureError> {
        let public = WitnessKey::new(name, key.public_key().0)?;
        Ok(WitnessSigner { key, public })
    }

    /// The public key, to give to logs and clients.
    pub fn public(&self) -> &WitnessKey {
        &self.public
    }

    /// Cosigns the checkpoint note text `body` at `timestamp` (Unix seconds, `1..=2^63-1`).
    /// The body must be a canonical checkpoint body.
    pub fn cosign(&self, body: &str, timestamp: u64) -> Result<Cosignature, CosignatureError> {
        Checkpoint::parse_body(body)?;
        if timestamp == 0 || timestamp > MAX_COSIGNATURE_TIME {
            return Err(CosignatureError::TimestampOutOfRange {
                name: self.public.name.clone(),
                timestamp,
            });
        }
        Ok(Cosignature {
            name: self.public.name.clone(),
            key_hash: self.public.key_hash,
            timestamp,
            signature: self.key.sign_raw(&signed_message(body, timestamp)),
        })
    }
}

/// Cosigns `checkpoint_body` at `timestamp` and returns the signature line (with `\n`).
pub fn cosign(
    checkpoint_body: &str,
    timestamp: u64,
    signer: &WitnessSigner,
) -> Result<String, CosignatureError> {
    Ok(signer.cosign(checkpoint_body, timestamp)?.to_line())
}

/// A verified witness cosignature: which witness (index into the keys given) and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WitnessCosignature {
    /// Index of the witness in the slice of keys given to the verifier.
    pub witness: usize,
    /// The cosignature's timestamp.
    pub timestamp: u64,
}

fn check_witness_keys(witnesses: &[WitnessKey]) -> Result<(), CosignatureError> {
    for (i, a) in witnesses.iter().enumerate() {
        for b in witnesses.iter().skip(i + 1) {
            if a.names(&b.name, b.key_hash) && a.public_key != b.public_key {
                return Err(CosignatureError::AmbiguousWitnessKey {
                    name: a.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Opens a cosigned checkpoint note: the log's signature must verify (as [`checkpoint::open`]),
/// and every line by a known witness (name and key ID) must be a valid cosignature dated no
/// later than `max_time`, one per witness. Lines by unknown keys are ignored. Returns the
/// checkpoint and the witnesses that cosigned it, in note order.
pub fn verify_cosignatures(
    note: &[u8],
    log: &NoteVerifier,
    witnesses: &[WitnessKey],
    max_time: u64,
) -> Result<(Checkpoint, Vec<WitnessCosignature>), CosignatureError> {
    check_witness_keys(witnesses)?;
    let opened = checkpoint::open(note, std::slice::from_ref(log))?;
    // `open` accepted the note: UTF-8, a last "\n\n", a signature block ending in "\n", and
    // every line well formed.
    let text = std::str::from_utf8(note).map_err(|_| CheckpointError::NotUtf8)?;
    let split = text
        .rfind("\n\n")
        .ok_or(CheckpointError::MissingSignatureBlock)?;
    let (Some(body), Some(block)) = (text.get(..split + 1), text.get(split + 2..)) else {
        return Err(CheckpointError::MissingSignatureBlock.into());
    };
    let block = block
        .strip_suffix('\n')
        .ok_or(CheckpointError::MalformedSignatureBlock)?;
    let mut found: Vec<WitnessCosignature> = Vec::new();
    for (i, line) in block.split('\n').enumerate() {
        let sig = parse_signature_line(line, i + 1)?;
        let Some(index) = witnesses
            .iter()
            .position(|w| w.names(&sig.name, sig.key_hash))
        else {
            continue;
        };
        let witness = &witnesses[index];
        if found
            .iter()
            .any(|f| witnesses[f.witness].names(&sig.name, sig.key_hash))
        {
            return Err(CosignatureError::DuplicateCosignature {
                name: witness.name.clone(),
            });
        }
        let cosignature = Cosignature::from_note_signature(&sig)?;
        witness.verify(body, &cosignature, max_time)?;
        found.push(WitnessCosignature {
            witness: index,
            timestamp: cosignature.timestamp,
        });
    }
    Ok((opened.checkpoint, found))
}

/// [`verify_cosignatures`], then requires cosignatures by at least `quorum` distinct witnesses
/// (`1 <= quorum <= witnesses.len()`).
pub fn verify_quorum(
    note: &[u8],
    log: &NoteVerifier,
    witnesses: &[WitnessKey],
    quorum: usize,
    max_time: u64,
) -> Result<(Checkpoint, Vec<WitnessCosignature>), CosignatureError> {
    if quorum == 0 || quorum > witnesses.len() {
        return Err(CosignatureError::QuorumUnreachable {
            quorum,
            witnesses: witnesses.len(),
        });
    }
    let (checkpoint, found) = verify_cosignatures(note, log, witnesses, max_time)?;
    if found.len() < quorum {
        return Err(CosignatureError::QuorumNotMet {
            valid: found.len(),
            quorum,
        });
    }
    Ok((checkpoint, found))
}

/// Reads a witness's `200` answer to `add-checkpoint` (one or more signature lines, each
/// ending in `\n`) and returns the one cosignature by `witness` over `body`, verified.
/// Lines by other keys are ignored.
pub fn verify_response(
    body: &str,
    response: &[u8],
    witness: &WitnessKey,
    max_time: u64,
) -> Result<Cosignature, CosignatureError> {
    if response.len() > MAX_NOTE_SIZE {
        return Err(CosignatureError::MalformedLine);
    }
    let text = std::str::from_utf8(response).map_err(|_| CosignatureError::MalformedLine)?;
    let lines = text
        .strip_suffix('\n')
        .ok_or(CosignatureError::MalformedLine)?;
    let mut mine: Option<Cosignature> = None;
    for (i, line) in lines.split('\n').enumerate() {
        if i >= checkpoint::MAX_SIGNATURES {
            return Err(CosignatureError::MalformedLine);
        }
        if line.chars().any(char::is_control) {
            return Err(CosignatureError::MalformedLine);
        }
        let sig = parse_signature_line(line, i + 1).map_err(|_| CosignatureError::MalformedLine)?;
        if !witness.names(&sig.name, sig.key_hash) {
            continue;
        }
        if mine.is_some() {
            return Err(CosignatureError::DuplicateCosignature {
                name: witness.name.clone(),
            });
        }
        let cosignature = Cosignature::from_note_signature(&sig)?;
        witness.verify(body, &cosignature, max_time)?;
        mine = Some(cosignature);
    }
    mine.ok_or_else(|| CosignatureError::NoCosignature {
        name: witness.name.clone(),
    })
}

/// Appends cosignature lines to a signed note (which ends with its last signature line).
pub fn append_cosignatures(note: &str, cosignatures: &[Cosignature]) -> String {
    let mut out = note.to_owned();
    for c in cosignatures {
        out.push_str(&c.to_line());
    }
    out
}

/// Parses the body of a `409 Conflict` answer: the witness's size in decimal and `\n`.
pub fn parse_conflict_size(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    checkpoint::parse_decimal(text.strip_suffix('\n')?).ok()
}

/// An `add-checkpoint` request: the size the client believes the witness has, a consistency
/// proof from it to the checkpoint's size, and the signed checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpointRequest {
    /// The old size (the latest size the witness cosigned, or 0).
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size (empty if `old_size` is 0).
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, bytes as received.
    pub note: Vec<u8>,
}

impl AddCheckpointRequest {
    /// The request body: `old <size>\n`, one base64 hash a line, `\n`, the note.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old_size).into_bytes();
        for h in &self.proof {
            out.extend_from_slice(STANDARD.encode(h.0).as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.note);
        out
    }

    /// Parses a request body strictly: canonical decimal, canonical base64 of 32 bytes, at most
    /// [`MAX_PROOF_LINES`] proof lines. The note is not checked here.
    pub fn parse(body: &[u8]) -> Result<Self, AddCheckpointError> {
        if body.len() > MAX_REQUEST_SIZE {
            return Err(AddCheckpointError::TooLarge {
                size: body.len(),
                max: MAX_REQUEST_SIZE,
            });
        }
        let mut rest = body;
        let next_line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let (line, tail) = rest.split_at(end);
            *rest = tail.get(1..).unwrap_or_default();
            Some(line.to_vec())
        };
        let old = next_line(&mut rest).ok_or(AddCheckpointError::MalformedOldSize)?;
        let old_size = std::str::from_utf8(&old)
            .ok()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(|d| checkpoint::parse_decimal(d).ok())
            .ok_or(AddCheckpointError::MalformedOldSize)?;
        let mut proof = Vec::new();
        loop {
            let line = next_line(&mut rest).ok_or(AddCheckpointError::MissingBlankLine)?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(AddCheckpointError::TooManyProofLines {
                    max: MAX_PROOF_LINES,
                });
            }
            let malformed = AddCheckpointError::MalformedProofLine {
                line: proof.len() + 1,
            };
            let bytes = STANDARD.decode(&line).map_err(|_| malformed.clone())?;
            let hash =
                <[u8; HASH_LEN]>::try_from(bytes.as_slice()).map_err(|_| malformed.clone())?;
            if STANDARD.encode(hash).as_bytes() != line.as_slice() {
                return Err(malformed);
            }
            proof.push(Hash(hash));
        }
        Ok(AddCheckpointRequest {
            old_size,
            proof,
            note: rest.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    fn ledger() -> (SigningKey, NoteVerifier) {
        let key = SigningKey::from_seed(&[7; 32]).expect("key");
        let v = NoteVerifier::new("example.org/log", key.public_key().0).expect("verifier");
        (key, v)
    }

    fn witness(n: u8) -> WitnessSigner {
        let key = SigningKey::from_seed(&[n; 32]).expect("key");
        WitnessSigner::new(&format!("witness.example/{n}"), key).expect("signer")
    }

    fn signed_note(size: u64) -> (String, String) {
        let (key, _) = ledger();
        let leaves: Vec<Hash> = (0..size)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        let cp = Checkpoint::new("example.org/log", size, merkle::root(&leaves)).expect("cp");
        let note = checkpoint::sign(&cp, "example.org/log", key.key_pair()).expect("sign");
        (cp.to_body(), note)
    }

    #[test]
    fn cosign_and_verify_quorum() {
        let (_, log) = ledger();
        let (body, note) = signed_note(5);
        let ws: Vec<WitnessSigner> = (1..=3).map(witness).collect();
        let keys: Vec<WitnessKey> = ws.iter().map(|w| w.public().clone()).collect();
        let cosigs: Vec<Cosignature> = ws[..2]
            .iter()
            .map(|w| w.cosign(&body, 1_700_000_000).expect("cosign"))
            .collect();
        let full = append_cosignatures(&note, &cosigs);
        let (cp, found) =
            verify_quorum(full.as_bytes(), &log, &keys, 2, 1_700_000_000).expect("quorum");
        assert_eq!(cp.size, 5);
        assert_eq!(found.iter().map(|f| f.witness).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            verify_quorum(full.as_bytes(), &log, &keys, 3, 1_700_000_000),
            Err(CosignatureError::QuorumNotMet {
                valid: 2,
                quorum: 3
            })
        );
        assert!(matches!(
            verify_quorum(full.as_bytes(), &log, &keys, 2, 1_699_999_999),
            Err(CosignatureError::FutureTimestamp { .. })
        ));
        // The same witness twice.
        let twice = append_cosignatures(
            &full,
            &[ws[0].cosign(&body, 1_600_000_000).expect("cosign")],
        );
        assert!(matches!(
            verify_quorum(twice.as_bytes(), &log, &keys, 1, u64::MAX),
            Err(CosignatureError::DuplicateCosignature { .. })
        ));
        // A cosignature of another checkpoint.
        let (other_body, _) = signed_note(6);
        let stray = append_cosignatures(
            &note,
            &[ws[2].cosign(&other_body, 1_600_000_000).expect("cosign")],
        );
        assert!(matches!(
            verify_quorum(stray.as_bytes(), &log, &keys, 1, u64::MAX),
            Err(CosignatureError::InvalidCosignature { .. })
        ));
    }

    #[test]
    fn line_roundtrip_and_vkey() {
        let w = witness(9);
        let (body, _) = signed_note(3);
        let c = w.cosign(&body, 42).expect("cosign");
        let line = c.to_line();
        assert_eq!(Cosignature::parse_line(&line).expect("parse"), c);
        let vkey = w.public().to_vkey();
        assert_eq!(WitnessKey::parse_vkey(&vkey).expect("vkey"), *w.public());
        let resp = verify_response(&body, line.as_bytes(), w.public(), 42).expect("response");
        assert_eq!(resp, c);
        assert_eq!(
            w.cosign(&body, 0),
            Err(CosignatureError::TimestampOutOfRange {
                name: "witness.example/9".into(),
                timestamp: 0
            })
        );
    }

    #[test]
    fn request_roundtrip() {
        let (_, note) = signed_note(8);
        let req = AddCheckpointRequest {
            old_size: 5,
            proof: vec![merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b")],
            note: note.into_bytes(),
        };
        assert_eq!(AddCheckpointRequest::parse(&req.to_bytes()), Ok(req));
        assert_eq!(
            AddCheckpointRequest::parse(b"old 05\n\nx"),
            Err(AddCheckpointError::MalformedOldSize)
        );
        assert_eq!(
            AddCheckpointRequest::parse(b"old 5\nAAAA\n\nx"),
            Err(AddCheckpointError::MalformedProofLine { line: 1 })
        );
        assert_eq!(
            AddCheckpointRequest::parse(b"old 5\n"),
            Err(AddCheckpointError::MissingBlankLine)
        );
        assert_eq!(parse_conflict_size(b"3\n"), Some(3));
        assert_eq!(parse_conflict_size(b"03\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let (_, log) = ledger();
            let keys = [witness(1).public().clone()];
            let _ = verify_quorum(&bytes, &log, &keys, 1, u64::MAX);
            let _ = AddCheckpointRequest::parse(&bytes);
            let _ = verify_response("a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", &bytes, &keys[0], u64::MAX);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = Cosignature::parse_line(s);
                let _ = WitnessKey::parse_vkey(s);
            }
        }

        #[test]
        fn tampered_cosigned_notes_never_panic(pos in 0usize..2000, byte in proptest::prelude::any::<u8>()) {
            let (_, log) = ledger();
            let (body, note) = signed_note(4);
            let w = witness(2);
            let full = append_cosignatures(&note, &[w.cosign(&body, 10).expect("cosign")]);
            let mut bytes = full.into_bytes();
            let i = pos % bytes.len();
            let changed = bytes[i] != byte;
            bytes[i] = byte;
            let r = verify_quorum(&bytes, &log, &[w.public().clone()], 1, 10);
            // Changing any byte of the body, the log's line or the witness's line never leaves
            // a valid quorum (a changed byte may still decode to the same line only if unchanged).
            proptest::prop_assert!(r.is_err() || !changed);
        }
    }
}
