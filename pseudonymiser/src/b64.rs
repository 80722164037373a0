//! Standard (padded) base64, as every pseudonymiser file and ceremony message carries bytes.

use base64::Engine as _;

/// Encode.
pub(crate) fn encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decode, or `None`.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Decode exactly 32 bytes, or `None`.
pub(crate) fn decode_32(s: &str) -> Option<[u8; 32]> {
    decode(s).and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}
