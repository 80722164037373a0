//! Pseudonyms: the Danish CPR number as the national identifier, the RFC 9497 OPRF
//! (ristretto255-SHA512, mode 0x00) that turns it into an unlinkable secret without the
//! pseudonymisation service ever seeing it, and the per-study pseudonym derived from the OPRF
//! output so that two studies' rows cannot be joined.
//!
//! ```text
//! input      = "datadonor/v1/cpr" 0x00 <10 ASCII digits DDMMYYSSSS>
//! blinded    = Blind(input)                        (client; 32 bytes on the wire)
//! evaluated  = BlindEvaluate(skS, blinded)         (server; 32 bytes on the wire)
//! y          = Finalize(input, blind, evaluated)   (client; 64 bytes, never sent)
//! pseudonym  = HKDF-SHA256(salt = "datadonor/v1/pseudonym", ikm = y, info = study id, L = 32)
//! ```

use rand_core::OsRng;
use voprf::{BlindedElement, EvaluationElement, OprfClient, OprfServer, Ristretto255};
use zeroize::{Zeroize, Zeroizing};

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

/// The client's state between blinding and finalising.
pub struct OprfBlind {
    state: OprfClient<Ristretto255>,
    input: Zeroizing<Vec<u8>>,
    /// The blinded element to send to the server.
    pub blinded: [u8; ELEMENT_LEN],
}

impl std::fmt::Debug for OprfBlind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OprfBlind(blinded: {}, state: <redacted>)",
            hex::encode(self.blinded)
        )
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

/// Blind a CPR number for the OPRF server.
pub fn blind(cpr: &Cpr) -> Result<OprfBlind, PseudonymError> {
    blind_input(cpr.oprf_input())
}

/// Blind an arbitrary OPRF input (the CPR path is [`blind`]).
pub fn blind_input(input: Zeroizing<Vec<u8>>) -> Result<OprfBlind, PseudonymError> {
    let r =
        OprfClient::<Ristretto255>::blind(&input, &mut OsRng).map_err(|_| PseudonymError::Oprf)?;
    let mut blinded = [0u8; ELEMENT_LEN];
    blinded.copy_from_slice(&r.message.serialize());
    Ok(OprfBlind {
        state: r.state,
        input,
        blinded,
    })
}

impl OprfBlind {
    /// Unblind the server's evaluated element into the OPRF output.
    pub fn finalize(self, evaluated: &[u8]) -> Result<OprfOutput, PseudonymError> {
        let ev = EvaluationElement::<Ristretto255>::deserialize(evaluated)
            .map_err(|_| PseudonymError::BadElement)?;
        let out = self
            .state
            .finalize(&self.input, &ev)
            .map_err(|_| PseudonymError::Oprf)?;
        let mut b = [0u8; 64];
        b.copy_from_slice(&out);
        Ok(OprfOutput(Zeroizing::new(b)))
    }
}

/// The pseudonymisation service's OPRF key. Never printed; zeroized by the library on drop.
pub struct OprfServerKey {
    server: OprfServer<Ristretto255>,
}

impl std::fmt::Debug for OprfServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OprfServerKey(<redacted>)")
    }
}

impl OprfServerKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, PseudonymError> {
        let server =
            OprfServer::<Ristretto255>::new(&mut OsRng).map_err(|_| PseudonymError::Oprf)?;
        Ok(Self { server })
    }
    /// The key derived from a seed as RFC 9497 DeriveKeyPair does.
    pub fn from_seed(seed: &[u8], info: &[u8]) -> Result<Self, PseudonymError> {
        let server = OprfServer::<Ristretto255>::new_from_seed(seed, info)
            .map_err(|_| PseudonymError::Oprf)?;
        Ok(Self { server })
    }
    /// Load a 32-byte scalar.
    pub fn from_bytes(sk: &[u8]) -> Result<Self, PseudonymError> {
        let server =
            OprfServer::<Ristretto255>::new_with_key(sk).map_err(|_| PseudonymError::BadElement)?;
        Ok(Self { server })
    }
    /// The 32-byte scalar, for storing the key.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut s = self.server.serialize().to_vec();
        let out = Zeroizing::new(s.clone());
        s.zeroize();
        out
    }
    /// The full (unblinded) RFC 9497 `Evaluate(skS, input)`: the 64-byte OPRF output for an
    /// input the server sees in the clear.
    ///
    /// Only for computing test vectors: production servers never see inputs (they receive
    /// blinded elements, [`OprfServerKey::evaluate`]), and no server code path calls this.
    pub fn evaluate_unblinded_for_vectors(
        &self,
        input: &[u8],
    ) -> Result<OprfOutput, PseudonymError> {
        let out = self
            .server
            .evaluate(input)
            .map_err(|_| PseudonymError::Oprf)?;
        let mut b = [0u8; 64];
        b.copy_from_slice(&out);
        Ok(OprfOutput(Zeroizing::new(b)))
    }

    /// BlindEvaluate one blinded element from a client.
    pub fn evaluate(&self, blinded: &[u8]) -> Result<[u8; ELEMENT_LEN], PseudonymError> {
        if blinded.len() != ELEMENT_LEN {
            return Err(PseudonymError::BadElement);
        }
        let b = BlindedElement::<Ristretto255>::deserialize(blinded)
            .map_err(|_| PseudonymError::BadElement)?;
        let ev = self.server.blind_evaluate(&b);
        let mut out = [0u8; ELEMENT_LEN];
        out.copy_from_slice(&ev.serialize());
        Ok(out)
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

    #[test]
    fn oprf_round_trip_and_study_separation() {
        let key = OprfServerKey::generate().unwrap();
        let cpr = Cpr::parse("0101901234").unwrap();
        let b1 = blind(&cpr).unwrap();
        let b2 = blind(&cpr).unwrap();
        assert_ne!(b1.blinded, b2.blinded, "blinding must be randomised");
        let e1 = key.evaluate(&b1.blinded).unwrap();
        let e2 = key.evaluate(&b2.blinded).unwrap();
        let y1 = b1.finalize(&e1).unwrap();
        let y2 = b2.finalize(&e2).unwrap();
        assert_eq!(y1.as_bytes(), y2.as_bytes());
        assert_ne!(y1.study_pseudonym("study-a"), y1.study_pseudonym("study-b"));
        let other = OprfServerKey::generate().unwrap();
        let b3 = blind(&cpr).unwrap();
        let e3 = other.evaluate(&b3.blinded).unwrap();
        assert_ne!(b3.finalize(&e3).unwrap().as_bytes(), y1.as_bytes());
        assert_eq!(key.evaluate(&[0u8; 31]), Err(PseudonymError::BadElement));
        assert!(key.evaluate(&[0xffu8; 32]).is_err());
    }
}
