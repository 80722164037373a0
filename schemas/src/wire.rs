//! Byte-level reading helpers shared by the binary formats: a cursor that never panics and
//! reports exactly which field was short, and the strict JSON body parser.

use serde::de::DeserializeOwned;

/// What was wrong with a byte string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside the named field.
    #[error("truncated: input ends inside field `{0}`")]
    Truncated(&'static str),
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes after the last field")]
    TrailingBytes(usize),
    /// A magic number or version did not match.
    #[error("field `{field}`: expected {expected}, found {found}")]
    Unexpected {
        /// The field.
        field: &'static str,
        /// What the format requires.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A length or value exceeds a protocol limit.
    #[error("field `{field}` is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A JSON body did not parse into the expected message.
    #[error("malformed {message}: {detail}")]
    Json {
        /// The message type.
        message: &'static str,
        /// The parser's explanation (position and field).
        detail: String,
    },
    /// Base64 or hex text did not decode.
    #[error("field `{0}` is not valid base64/hex of the right length")]
    Encoding(&'static str),
}

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated(field))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError::Truncated(field))?;
        self.pos = end;
        Ok(out)
    }
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    /// A u32 big-endian length followed by that many bytes, at most `limit`.
    pub(crate) fn vec32(
        &mut self,
        field: &'static str,
        limit: usize,
    ) -> Result<&'a [u8], WireError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(WireError::TooLarge { field, len, limit });
        }
        self.take(len, field)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }
    pub(crate) fn finish(self) -> Result<(), WireError> {
        let left = self.buf.len().saturating_sub(self.pos);
        if left == 0 {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(left))
        }
    }
}

/// Parse a JSON message body strictly: the whole input must be one JSON value (no trailing bytes,
/// not even whitespace), unknown fields are rejected by the types' `deny_unknown_fields`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    message: &'static str,
    limit: usize,
) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            field: message,
            len: bytes.len(),
            limit,
        });
    }
    if bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        return Err(WireError::TrailingBytes(1));
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Json {
        message,
        detail: e.to_string(),
    })
}

/// Serde helpers for byte fields carried as standard base64 in JSON.
pub(crate) mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
    pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    }
    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| serde::de::Error::custom("invalid base64"))
    }
}

/// Serde helpers for 32-byte digests carried as lowercase hex in JSON.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom("expected 64 lowercase hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Serde helpers for 16-byte identifiers carried as lowercase hex in JSON.
pub(crate) mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom("expected 32 lowercase hex digits"));
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Serde helpers for optional 16-byte identifiers carried as lowercase hex in JSON (use with
/// `default` and `skip_serializing_if = "Option::is_none"`: absent is `None`).
pub(crate) mod opt_hex16 {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<[u8; 16]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => super::hex16::serialize(b, s),
            None => s.serialize_none(),
        }
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 16]>, D::Error> {
        super::hex16::deserialize(d).map(Some)
    }
}

/// SHA-256 of a byte string.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
