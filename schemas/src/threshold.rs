//! Threshold pseudonymisation: the client's half of an RFC 9497 VOPRF (mode 0x01,
//! ristretto255-SHA512) whose key `k` is Shamir-shared among `n` independent pseudonymiser
//! instances, any `t` of which are needed.
//!
//! ```text
//! input     = "datadonor/v1/cpr" 0x00 <10 ASCII digits>
//! B         = Blind(input, r)                          VOPRF mode: HashToGroup DST names mode 0x01
//! Z_i, π_i  = k_i·B, DLEQ proof that log_G(K_i) = log_B(Z_i)         (instance i, K_i = k_i·G)
//! check     = every π_i against the configuration's public share K_i (RFC 9497 VerifyProof)
//! Z         = Σ_{i∈S} λ_i·Z_i, |S| = t, λ_i = Π_{j∈S, j≠i} j / (j − i)   (= k·B)
//! y         = Finalize(input, r, Z)                    RFC 9497 Finalize (unchanged)
//! pseudonym = HKDF-SHA256(salt = "datadonor/v1/pseudonym", IKM = y, info = study id, L = 32)
//! ```
//!
//! This module holds only what a donor's device runs: blinding, proof verification, Lagrange
//! combination and finalisation, and the signed configuration that names the instances and
//! their public shares. Evaluation with a key share lives in the `datadonor-pseudonymiser`
//! crate, which nothing that reads the ledger or the batches links.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand_core::{CryptoRng, OsRng, RngCore};
use serde::{Deserialize, Serialize};
use voprf::{EvaluationElement, OprfClient, Proof, Ristretto255, VoprfClient};
use zeroize::Zeroizing;

use crate::pseudonym::{Cpr, OprfOutput, ELEMENT_LEN};
use crate::signing::PublicKey;
use crate::wire::{parse_json, WireError};

/// Length of a DLEQ proof on the wire (two scalars, `c` then `s`).
pub const PROOF_LEN: usize = 64;
/// Most instances a configuration may name.
pub const MAX_INSTANCES: usize = 16;
/// Largest configuration or answer accepted.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;
/// The ciphersuite every configuration names.
pub const SUITE: &str = "ristretto255-SHA512";
/// The RFC 9497 mode every configuration names (mode 0x01).
pub const MODE: &str = "voprf";
/// Largest answer body accepted from an instance.
pub const MAX_ANSWER_LEN: usize = 1024;

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not the JSON form.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A field is out of its range; the text names it.
    #[error("pseudonymiser configuration: {0}")]
    Invalid(String),
    /// The public shares do not all lie on one polynomial of degree `t − 1` through the group
    /// key: an instance was given a share of another key.
    #[error("pseudonymiser configuration: the public share of instance {0} is not a share of the group key")]
    InconsistentShare(u16),
}

/// Why one instance's answer was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// The answer names an index the configuration does not list.
    #[error("instance index {0} is not in the configuration")]
    UnknownIndex(u16),
    /// An answer with this index was already verified and accepted.
    #[error("a second answer for instance {0}")]
    DuplicateIndex(u16),
    /// The evaluated element is not a canonical ristretto255 encoding, or is the identity.
    #[error("instance {0} answered with an invalid element")]
    BadElement(u16),
    /// The proof does not decode.
    #[error("instance {0} answered with a malformed proof")]
    MalformedProof(u16),
    /// The DLEQ proof does not verify against the instance's public share.
    #[error("instance {0}'s proof does not verify against its public share")]
    BadProof(u16),
    /// The answer body is not the JSON form.
    #[error("instance {index}'s answer does not parse: {detail}")]
    Malformed {
        /// The instance the answer came from (by configuration position).
        index: u16,
        /// What was wrong.
        detail: String,
    },
    /// The instance could not be reached or refused (transport, HTTP status).
    #[error("instance {index} did not answer: {detail}")]
    Unavailable {
        /// The instance.
        index: u16,
        /// What happened.
        detail: String,
    },
}

impl AnswerError {
    /// The instance the error concerns.
    pub fn index(&self) -> u16 {
        match self {
            AnswerError::UnknownIndex(i)
            | AnswerError::DuplicateIndex(i)
            | AnswerError::BadElement(i)
            | AnswerError::MalformedProof(i)
            | AnswerError::BadProof(i)
            | AnswerError::Malformed { index: i, .. }
            | AnswerError::Unavailable { index: i, .. } => *i,
        }
    }
}

/// Why a threshold evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// Fewer than `t` answers verified.
    #[error("{valid} of the {needed} pseudonymiser answers needed verified{}", rejected_text(.rejected))]
    NotEnoughAnswers {
        /// Answers that verified.
        valid: usize,
        /// The threshold.
        needed: usize,
        /// Every answer that was not used, and why.
        rejected: Vec<AnswerError>,
    },
    /// The OPRF library refused the input or a step.
    #[error("OPRF failure")]
    Oprf,
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn rejected_text(r: &[AnswerError]) -> String {
    if r.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = r.iter().map(|e| e.to_string()).collect();
    format!(" ({})", parts.join("; "))
}

/// Serde helpers for 32-byte values carried as standard base64 in JSON.
mod b64_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::wire::b64::encode(v))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        crate::wire::b64::decode(&s)
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| serde::de::Error::custom("expected base64 of 32 bytes"))
    }
}

/// One pseudonymiser instance as a configuration names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance's Shamir index `i` (1 ..= 65535): its share is `f(i)`.
    pub index: u16,
    /// Base URL of the instance (`https://host:port`); `POST {url}/v1/evaluate`.
    pub url: String,
    /// Who runs it (shown to donors and auditors).
    pub operator: String,
    /// `K_i = k_i·G`, the canonical ristretto255 encoding.
    #[serde(with = "b64_32")]
    pub public_share: [u8; 32],
}

/// The pseudonymisation service a study uses: its instances, their public shares and the
/// group key. A study carries it inside its signed definition, so the steward's signature
/// covers it; a changed key is a new study version (new pseudonyms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymiserConfig {
    /// Format version; must be [`crate::PROTOCOL_VERSION`].
    pub format: u32,
    /// Name of the service (1–64 of `[a-z0-9-]`).
    pub config_id: String,
    /// Version of this configuration; a new key generation or a changed instance list is a new
    /// version.
    pub version: u32,
    /// Always [`SUITE`].
    pub suite: String,
    /// Always [`MODE`].
    pub mode: String,
    /// How many instances must answer (`t`, at least 2).
    pub threshold: u16,
    /// `K = k·G`.
    #[serde(with = "b64_32")]
    pub group_public_key: [u8; 32],
    /// The `n` instances, by increasing index.
    pub instances: Vec<InstanceInfo>,
    /// The study enrolment's Ed25519 key that signs donor credentials, when instances require a
    /// credential before they evaluate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_issuer: Option<PublicKey>,
}

fn decode_point(b: &[u8; 32]) -> Option<RistrettoPoint> {
    let p = CompressedRistretto(*b).decompress()?;
    if p == RistrettoPoint::identity() {
        return None;
    }
    Some(p)
}

/// The Lagrange coefficient at 0 of `index` within `set` (all distinct, non-zero).
pub fn lagrange_at_zero(index: u16, set: &[u16]) -> Scalar {
    let xi = Scalar::from(u64::from(index));
    let mut num = Scalar::ONE;
    let mut den = Scalar::ONE;
    for &j in set {
        if j == index {
            continue;
        }
        let xj = Scalar::from(u64::from(j));
        num *= xj;
        den *= xj - xi;
    }
    num * den.invert()
}

/// `Σ λ_i·P_i` over distinct indexes: the polynomial's value at 0 in the exponent.
pub fn combine_points(points: &[(u16, RistrettoPoint)]) -> RistrettoPoint {
    let set: Vec<u16> = points.iter().map(|(i, _)| *i).collect();
    points
        .iter()
        .map(|(i, p)| lagrange_at_zero(*i, &set) * p)
        .fold(RistrettoPoint::identity(), |a, b| a + b)
}

impl PseudonymiserConfig {
    /// Parse the JSON form strictly and validate it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let c: Self = parse_json(bytes, "pseudonymiser configuration", MAX_CONFIG_LEN)?;
        c.validate()?;
        Ok(c)
    }

    /// The compact JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Check every field, and that the public shares are shares of the group key: the first
    /// `t` combine to `K`, and so does every other instance with the first `t − 1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.format != crate::PROTOCOL_VERSION {
            return bad(format!("format {} is not supported", self.format));
        }
        if self.config_id.is_empty()
            || self.config_id.len() > 64
            || !self
                .config_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("config_id must be 1-64 of [a-z0-9-]".into());
        }
        if self.version == 0 {
            return bad("version must be at least 1".into());
        }
        if self.suite != SUITE {
            return bad(format!("suite must be {SUITE:?}"));
        }
        if self.mode != MODE {
            return bad(format!("mode must be {MODE:?}"));
        }
        let n = self.instances.len();
        if n > MAX_INSTANCES {
            return bad(format!("at most {MAX_INSTANCES} instances"));
        }
        let t = usize::from(self.threshold);
        if t < 2 || t > n {
            return bad(format!(
                "threshold {t} must be at least 2 and at most the {n} instances"
            ));
        }
        let mut points = Vec::with_capacity(n);
        for (pos, inst) in self.instances.iter().enumerate() {
            if inst.index == 0 {
                return bad(format!("instances[{pos}]: index 0 is not a share"));
            }
            if pos > 0 && self.instances[pos - 1].index >= inst.index {
                return bad(format!(
                    "instances[{pos}]: indexes must be distinct and increasing"
                ));
            }
            if !inst.url.starts_with("https://")
                || inst.url.len() > 256
                || inst.url.ends_with('/')
                || inst
                    .url
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return bad(format!(
                    "instances[{pos}]: url must be https://host[:port] without a trailing slash"
                ));
            }
            if inst.operator.is_empty()
                || inst.operator.len() > 128
                || inst.operator.chars().any(char::is_control)
            {
                return bad(format!(
                    "instances[{pos}]: operator must be 1-128 characters"
                ));
            }
            let p = decode_point(&inst.public_share).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "instances[{pos}]: public_share is not a valid non-identity element"
                ))
            })?;
            points.push((inst.index, p));
        }
        let group = decode_point(&self.group_public_key).ok_or_else(|| {
            ConfigError::Invalid("group_public_key is not a valid non-identity element".into())
        })?;
        let base: Vec<(u16, RistrettoPoint)> = points.iter().take(t).copied().collect();
        if combine_points(&base) != group {
            return Err(ConfigError::InconsistentShare(base[t - 1].0));
        }
        for other in points.iter().skip(t) {
            let mut set: Vec<(u16, RistrettoPoint)> = points.iter().take(t - 1).copied().collect();
            set.push(*other);
            if combine_points(&set) != group {
                return Err(ConfigError::InconsistentShare(other.0));
            }
        }
        Ok(())
    }

    /// The instance with this index.
    pub fn instance(&self, index: u16) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| i.index == index)
    }
}

/// `POST /v1/evaluate` body: the blinded element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The blinded element `B`.
    #[serde(with = "b64_32")]
    pub blinded: [u8; 32],
}

impl EvaluateRequest {
    /// Parse strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        parse_json(bytes, "evaluate request", MAX_ANSWER_LEN)
    }
}

/// One instance's answer: its index, `Z_i = k_i·B` and the DLEQ proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAnswer {
    /// The answering instance's Shamir index.
    pub index: u16,
    /// `Z_i`.
    #[serde(with = "b64_32")]
    pub evaluated: [u8; 32],
    /// The proof, `c || s` (two 32-byte little-endian scalars).
    #[serde(with = "crate::wire::b64")]
    pub proof: Vec<u8>,
}

impl InstanceAnswer {
    /// Parse strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        parse_json(bytes, "instance answer", MAX_ANSWER_LEN)
    }
}

/// The client's state between blinding and combining. Zeroized on drop; never printed.
pub struct ThresholdBlind {
    client: VoprfClient<Ristretto255>,
    blind: Zeroizing<Scalar>,
    input: Zeroizing<Vec<u8>>,
    /// `B`, to send to every instance.
    pub blinded: [u8; ELEMENT_LEN],
}

impl std::fmt::Debug for ThresholdBlind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ThresholdBlind(blinded: {}, state: <redacted>)",
            hex::encode(self.blinded)
        )
    }
}

/// The outcome of a threshold evaluation.
pub struct Combined {
    /// `y`, the RFC 9497 output.
    pub output: OprfOutput,
    /// The indexes whose answers were combined, increasing.
    pub used: Vec<u16>,
    /// Answers that verified but were not needed.
    pub spare: Vec<u16>,
    /// Answers that were refused, and why.
    pub rejected: Vec<AnswerError>,
}

impl std::fmt::Debug for Combined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combined")
            .field("output", &self.output)
            .field("used", &self.used)
            .field("spare", &self.spare)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// Blind a CPR number for the instances.
pub fn blind(cpr: &Cpr) -> Result<ThresholdBlind, ThresholdError> {
    blind_input_with_rng(cpr.oprf_input(), &mut OsRng)
}

/// Blind an arbitrary input with a blinding scalar drawn from `rng`.
pub fn blind_input_with_rng<R: RngCore + CryptoRng>(
    input: Zeroizing<Vec<u8>>,
    rng: &mut R,
) -> Result<ThresholdBlind, ThresholdError> {
    loop {
        let r = Scalar::random(rng);
        if r != Scalar::ZERO {
            return blind_input_with_scalar(input, r.to_bytes());
        }
    }
}

/// Blind with a given canonical, non-zero scalar (32 bytes little-endian): for the vectors.
pub fn blind_input_with_scalar(
    input: Zeroizing<Vec<u8>>,
    scalar: [u8; 32],
) -> Result<ThresholdBlind, ThresholdError> {
    let r: Option<Scalar> = Scalar::from_canonical_bytes(scalar).into();
    let r = r
        .filter(|r| *r != Scalar::ZERO)
        .ok_or(ThresholdError::Oprf)?;
    let res = VoprfClient::<Ristretto255>::deterministic_blind_unchecked(&input, r)
        .map_err(|_| ThresholdError::Oprf)?;
    let mut blinded = [0u8; ELEMENT_LEN];
    blinded.copy_from_slice(&res.message.serialize());
    Ok(ThresholdBlind {
        client: res.state,
        blind: Zeroizing::new(r),
        input,
        blinded,
    })
}

impl ThresholdBlind {
    /// Check one answer against the configuration: known index, valid non-identity element,
    /// and a DLEQ proof that verifies against the instance's public share for this `B`.
    /// Returns `Z_i`.
    pub fn verify_answer(
        &self,
        config: &PseudonymiserConfig,
        answer: &InstanceAnswer,
    ) -> Result<RistrettoPoint, AnswerError> {
        let i = answer.index;
        let inst = config.instance(i).ok_or(AnswerError::UnknownIndex(i))?;
        let z = decode_point(&answer.evaluated).ok_or(AnswerError::BadElement(i))?;
        let pk = decode_point(&inst.public_share).ok_or(AnswerError::BadElement(i))?;
        if answer.proof.len() != PROOF_LEN {
            return Err(AnswerError::MalformedProof(i));
        }
        let proof = Proof::<Ristretto255>::deserialize(&answer.proof)
            .map_err(|_| AnswerError::MalformedProof(i))?;
        let ev = EvaluationElement::<Ristretto255>::deserialize(&answer.evaluated)
            .map_err(|_| AnswerError::BadElement(i))?;
        // RFC 9497 VerifyProof, as the library's Finalize runs it; its output (the
        // finalisation under the share alone) is discarded.
        self.client
            .finalize(&self.input, &ev, &proof, pk)
            .map_err(|_| AnswerError::BadProof(i))?;
        Ok(z)
    }

    /// Verify every answer, combine the first `t` that verify (by increasing index) and
    /// finalise. Up to `n − t` wrong, duplicate or missing answers are tolerated; fewer than
    /// `t` valid answers is [`ThresholdError::NotEnoughAnswers`].
    pub fn combine(
        self,
        config: &PseudonymiserConfig,
        answers: &[InstanceAnswer],
        unavailable: Vec<AnswerError>,
    ) -> Result<Combined, ThresholdError> {
        let t = usize::from(config.threshold);
        let mut good: Vec<(u16, RistrettoPoint)> = Vec::new();
        let mut rejected = unavailable;
        let mut seen: Vec<u16> = Vec::new();
        for a in answers {
            // Only a verified answer claims its index, so a forged answer labelled with an
            // honest instance's index cannot crowd out that instance's real answer.
            if seen.contains(&a.index) {
                rejected.push(AnswerError::DuplicateIndex(a.index));
                continue;
            }
            match self.verify_answer(config, a) {
                Ok(z) => {
                    seen.push(a.index);
                    good.push((a.index, z));
                }
                Err(e) => rejected.push(e),
            }
        }
        if good.len() < t {
            return Err(ThresholdError::NotEnoughAnswers {
                valid: good.len(),
                needed: t,
                rejected,
            });
        }
        good.sort_by_key(|(i, _)| *i);
        let spare: Vec<u16> = good.iter().skip(t).map(|(i, _)| *i).collect();
        good.truncate(t);
        let z = combine_points(&good);
        let output = self.finalize_combined(&z)?;
        Ok(Combined {
            output,
            used: good.iter().map(|(i, _)| *i).collect(),
            spare,
            rejected,
        })
    }

    /// RFC 9497 `Finalize(input, r, Z)` on the combined element, through the library's own
    /// Finalize (which does not depend on the mode).
    fn finalize_combined(&self, z: &RistrettoPoint) -> Result<OprfOutput, ThresholdError> {
        let ev = EvaluationElement::<Ristretto255>::deserialize(z.compress().as_bytes())
            .map_err(|_| ThresholdError::Oprf)?;
        // An OprfClient is its blind alone (32 bytes): rebuilt from it, without blinding the
        // input again.
        let blind_bytes = Zeroizing::new(self.blind.to_bytes());
        let fin = OprfClient::<Ristretto255>::deserialize(blind_bytes.as_ref())
            .map_err(|_| ThresholdError::Oprf)?;
        let out = fin
            .finalize(&self.input, &ev)
            .map_err(|_| ThresholdError::Oprf)?;
        let mut b = [0u8; 64];
        b.copy_from_slice(&out);
        Ok(OprfOutput::from_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagrange_reconstructs_a_polynomial_at_zero() {
        // f(x) = 7 + 3x + 5x^2 in the exponent.
        let g = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        let f = |x: u64| Scalar::from(7u64) + Scalar::from(3u64 * x) + Scalar::from(5 * x * x);
        let pts: Vec<(u16, RistrettoPoint)> = [1u16, 4, 9]
            .iter()
            .map(|&i| (i, f(u64::from(i)) * g))
            .collect();
        assert_eq!(combine_points(&pts), Scalar::from(7u64) * g);
        // Two points of a degree-2 polynomial do not give f(0).
        assert_ne!(combine_points(&pts[..2]), Scalar::from(7u64) * g);
    }
}

/// Why a donor credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Not `Bearer <base64url of a signed object>`.
    #[error("the credential is not a bearer token of a signed object")]
    Malformed,
    /// The signature does not verify, or another key signed it.
    #[error("the credential is not signed by the configured enrolment key")]
    BadSignature,
    /// Issued for another pseudonymisation service.
    #[error("the credential is for another pseudonymisation service")]
    WrongService,
    /// Past its `not_after`.
    #[error("the credential has expired")]
    Expired,
}

/// A donor credential: the study's enrolment service (where a donor logs in with a national
/// e-ID) signs one per enrolled donor; instances that require credentials evaluate only for a
/// valid one, and rate-limit per `subject`. The subject is random and carries no identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonorCredential {
    /// Format version; must be [`crate::PROTOCOL_VERSION`].
    pub format: u32,
    /// The `config_id` of the pseudonymisation service it is for.
    pub config_id: String,
    /// An opaque random handle for the enrolled donor.
    #[serde(with = "crate::wire::hex16")]
    pub subject: [u8; 16],
    /// Last second of validity (Unix seconds).
    pub not_after: crate::time::UnixSeconds,
}

impl DonorCredential {
    /// The `Authorization` header value: `Bearer ` and the base64url (no padding) of the
    /// signed object's JSON bytes.
    pub fn bearer(signed: &crate::signing::SignedObject) -> String {
        use base64::Engine as _;
        format!(
            "Bearer {}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed.to_bytes())
        )
    }

    /// Check an `Authorization` header value: signed by `issuer` under the
    /// `donor-credential` context, for `config_id`, not expired at `now`. Returns the subject.
    pub fn verify_bearer(
        header: &str,
        issuer: &PublicKey,
        config_id: &str,
        now: crate::time::UnixSeconds,
    ) -> Result<[u8; 16], CredentialError> {
        use base64::Engine as _;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(CredentialError::Malformed)?;
        if token.len() > 4096 {
            return Err(CredentialError::Malformed);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| CredentialError::Malformed)?;
        let obj = crate::signing::SignedObject::from_bytes(&bytes)
            .map_err(|_| CredentialError::Malformed)?;
        if &obj.public_key != issuer {
            return Err(CredentialError::BadSignature);
        }
        let signed = obj
            .open::<DonorCredential>(crate::signing::Context::DonorCredential, "donor credential")
            .map_err(|e| match e {
                crate::signing::SignatureError::Malformed(_) => CredentialError::Malformed,
                _ => CredentialError::BadSignature,
            })?;
        let c = signed.body;
        if c.format != crate::PROTOCOL_VERSION {
            return Err(CredentialError::Malformed);
        }
        if c.config_id != config_id {
            return Err(CredentialError::WrongService);
        }
        if c.not_after < now {
            return Err(CredentialError::Expired);
        }
        Ok(c.subject)
    }
}
