//! Pseudonyms: the Danish CPR number as the national identifier, its OPRF input, the RFC 9497
//! output `y` that the threshold evaluation ([`crate::threshold`]) yields without any
//! pseudonymiser instance seeing the number, and the per-study pseudonym derived from `y` so that
//! two studies' rows cannot be joined.
//!
//! ```text
//! input      = "datadonor/v1/cpr" 0x00 <10 ASCII digits DDMMYYSSSS>
//! y          = the VOPRF output of input under the shared key (64 bytes, never sent)
//! pseudonym  = HKDF-SHA256(salt = "datadonor/v1/pseudonym", ikm = y, info = study id, L = 32)
//! ```
//!
//! Nothing here holds or uses OPRF key material: evaluation with a key share lives in the
//! `datadonor-pseudonymiser` crate only.

use zeroize::Zeroizing;

/// Domain-separation prefix of the OPRF input.
pub const OPRF_INPUT_PREFIX: &[u8] = b"datadonor/v1/cpr\0";
/// HKDF salt of the per-study pseudonym.
pub const PSEUDONYM_SALT: &[u8] = b"datadonor/v1/pseudonym";
/// Length of a blinded or evaluated element on the wire.
pub const ELEMENT_LEN: usize = 32;

/// Errors from CPR parsing and the OPRF steps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PseudonymError {
    /// Not ten digits (an optional dash after the sixth allowed).
    #[error("a CPR number is ten digits, DDMMYY-SSSS")]
    CprFormat,
    /// The date part is not a real date.
    #[error("the CPR number's date part is not a valid date")]
    CprDate,
    /// A group element or scalar did not decode.
    #[error("invalid OPRF element")]
    BadElement,
    /// The OPRF library refused the input.
    #[error("OPRF failure")]
    Oprf,
}

/// A validated, normalised CPR number (ten ASCII digits). Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Cpr(Zeroizing<String>);

impl std::fmt::Debug for Cpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cpr(<redacted>)")
    }
}

impl Cpr {
    /// Normalise and validate: `DDMMYYSSSS` or `DDMMYY-SSSS` with optional surrounding
    /// whitespace; the date part must be a real date in the century the seventh digit gives.
    /// The modulus-11 check is not applied (CPR numbers issued since 2007 need not satisfy it).
    pub fn parse(s: &str) -> Result<Self, PseudonymError> {
        let t = s.trim();
        let digits: String = match t.len() {
            10 => t.to_string(),
            11 if t.as_bytes().get(6) == Some(&b'-') => {
                let mut d = String::with_capacity(10);
                d.push_str(t.get(..6).ok_or(PseudonymError::CprFormat)?);
                d.push_str(t.get(7..).ok_or(PseudonymError::CprFormat)?);
                d
            }
            _ => return Err(PseudonymError::CprFormat),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PseudonymError::CprFormat);
        }
        let cpr = Cpr(Zeroizing::new(digits));
        cpr.birth_date().ok_or(PseudonymError::CprDate)?;
        Ok(cpr)
    }

    /// The ten digits.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The birth date encoded in the number (century from the seventh digit, per the CPR
    /// office's table).
    pub fn birth_date(&self) -> Option<jiff::civil::Date> {
        let n = |r: std::ops::Range<usize>| self.0.get(r).and_then(|x| x.parse::<i16>().ok());
        let (dd, mm, yy, c) = (n(0..2)?, n(2..4)?, n(4..6)?, n(6..7)?);
        let century = match c {
            0..=3 => 1900,
            4 | 9 => {
                if yy <= 36 {
                    2000
                } else {
                    1900
                }
            }
            5..=8 => {
                if yy <= 57 {
                    2000
                } else {
                    1800
                }
            }
            _ => return None,
        };
        jiff::civil::Date::new(century + yy, mm as i8, dd as i8).ok()
    }

    /// The OPRF input for this number.
    pub fn oprf_input(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Vec::with_capacity(OPRF_INPUT_PREFIX.len() + 10);
        v.extend_from_slice(OPRF_INPUT_PREFIX);
        v.extend_from_slice(self.0.as_bytes());
        Zeroizing::new(v)
    }
}

/// The 64-byte OPRF output for a donor. Zeroized on drop; never printed.
pub struct OprfOutput(Zeroizing<[u8; 64]>);

impl std::fmt::Debug for OprfOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OprfOutput(<redacted>)")
    }
}

impl OprfOutput {
    /// Wrap raw output bytes (for tests against vectors).
    pub fn from_bytes(b: [u8; 64]) -> Self {
        Self(Zeroizing::new(b))
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// The per-study pseudonym.
    pub fn study_pseudonym(&self, study_id: &str) -> Pseudonym {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, PSEUDONYM_SALT).extract(self.0.as_ref());
        let mut out = [0u8; 32];
        // `expand` and `fill` fail only when the requested length exceeds 255 * 32 bytes; 32 is
        // a constant far below it.
        if let Ok(okm) = prk.expand(&[study_id.as_bytes()], Len32) {
            let _ = okm.fill(&mut out);
        }
        Pseudonym(out)
    }
}

/// A per-study pseudonym: 32 bytes, written as 64 lowercase hex digits in rows and manifests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(pub [u8; 32]);

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pseudonyms are personal data under GDPR; debug output shows a prefix only.
        write!(f, "Pseudonym({}…)", hex::encode(&self.0[..4]))
    }
}

impl Pseudonym {
    /// The hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if !is_pseudonym_hex(s) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl serde::Serialize for Pseudonym {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Pseudonym {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("pseudonym must be 64 lowercase hex digits"))
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_pseudonym_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpr_parsing() {
        assert!(Cpr::parse("010190-1234").is_ok());
        assert_eq!(
            Cpr::parse(" 0101901234 ").map(|c| c.digits().to_string()),
            Ok("0101901234".into())
        );
        assert_eq!(Cpr::parse("3102901234"), Err(PseudonymError::CprDate));
        assert_eq!(Cpr::parse("010190+1234"), Err(PseudonymError::CprFormat));
        assert_eq!(Cpr::parse("01019012345"), Err(PseudonymError::CprFormat));
        assert_eq!(Cpr::parse("01019O1234"), Err(PseudonymError::CprFormat));
        assert_eq!(
            Cpr::parse("0101901234")
                .ok()
                .and_then(|c| c.birth_date())
                .map(|d| d.year()),
            Some(1990)
        );
        assert_eq!(
            Cpr::parse("0101054234")
                .ok()
                .and_then(|c| c.birth_date())
                .map(|d| d.year()),
            Some(2005)
        );
        assert_eq!(
            Cpr::parse("0101605234")
                .ok()
                .and_then(|c| c.birth_date())
                .map(|d| d.year()),
            Some(1860)
        );
        assert_eq!(
            Cpr::parse("2902004234")
                .ok()
                .and_then(|c| c.birth_date())
                .map(|d| d.day()),
            Some(29)
        );
        assert!(format!("{:?}", Cpr::parse("0101901234")).contains("redacted"));
    }
}
