//! The key ceremony: a distributed key generation among the `n` instances, so that no dealer
//! ever holds the OPRF key `k`. It is the FROST DKG (Pedersen's DKG with proofs of knowledge,
//! as `frost-ristretto255` implements it for ristretto255, the OPRF's group); each instance ends
//! with its share `k_i = f(i)` of a random degree `t − 1` polynomial `f` with `f(0) = k`, and
//! every instance learns every public share `K_j = k_j·G` and `K = k·G`.
//!
//! Three steps, each run by every instance on its own machine; messages travel as files (or any
//! channel) between them:
//!
//! 1. [`round1`]: a fresh Ed25519 identity key and X25519 transport key, and FROST part 1. The
//!    round-1 message (commitments, proof of knowledge, transport key) is signed with the
//!    identity key and sent to every other instance. The operators compare identity key
//!    fingerprints out of band before going on.
//! 2. [`round2`]: with all `n` round-1 messages, FROST part 2; the secret share meant for
//!    instance `j` is sealed with HPKE (RFC 9180, the protocol's suite) to `j`'s transport key,
//!    with the SHA-256 of all round-1 messages as associated data (so an instance shown another
//!    set of round-1 messages cannot open it), and the sealed message is signed.
//! 3. [`finish`]: with the round-2 messages addressed to it, FROST part 3 verifies every
//!    received share against its sender's commitments and yields the key share. The instance
//!    publishes the resulting public key package ([`PublicResult`]); the steward checks that all
//!    `n` agree and assembles the pseudonymiser configuration ([`assemble_config`]).
//!
//! [`run_local`] runs the same three steps for `n` participants inside one process: the
//! embedded demo and tests use it. One process then sees every share for a moment, so a
//! deployment runs the steps on the instances' own machines instead.

use std::collections::BTreeMap;

use datadonor_schemas::envelope::{hpke_open, hpke_seal, HpkePrivateKey, HpkePublicKey};
use datadonor_schemas::signing::{Context, PublicKey, SignedObject, SigningKey};
use datadonor_schemas::threshold::{InstanceInfo, PseudonymiserConfig, MODE, SUITE};
use frost_ristretto255 as frost;
use frost_ristretto255::keys::dkg;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::share::KeyShare;

/// HPKE `info` of a sealed round-2 share.
pub const ROUND2_INFO: &[u8] = b"datadonor/v1 dkg round2";

/// Why a ceremony step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkgError {
    /// The parameters are out of range.
    #[error("ceremony parameters: {0}")]
    Parameters(String),
    /// A message does not parse, is signed by the wrong key, or is for another ceremony.
    #[error("ceremony message from instance {from}: {reason}")]
    BadMessage {
        /// The sender as the message names it (0 if unknown).
        from: u16,
        /// What is wrong.
        reason: String,
    },
    /// The set of messages is incomplete or has duplicates.
    #[error("ceremony messages: {0}")]
    Messages(String),
    /// FROST refused (a share that does not match its sender's commitments, for one).
    #[error("key generation: {0}")]
    Frost(String),
    /// A saved state does not parse.
    #[error("ceremony state: {0}")]
    State(String),
}

/// The ceremony's parameters, the same at every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceremony {
    /// The service's `config_id`.
    pub config_id: String,
    /// This instance's index (1 ..= n).
    pub index: u16,
    /// `n`.
    pub instances: u16,
    /// `t`.
    pub threshold: u16,
}

impl Ceremony {
    fn check(&self) -> Result<(), DkgError> {
        if self.threshold < 2 || self.threshold > self.instances || self.instances > 16 {
            return Err(DkgError::Parameters(format!(
                "need 2 <= threshold ({}) <= instances ({}) <= 16",
                self.threshold, self.instances
            )));
        }
        if self.index == 0 || self.index > self.instances {
            return Err(DkgError::Parameters(format!(
                "index {} is not in 1..={}",
                self.index, self.instances
            )));
        }
        Ok(())
    }
}

use crate::b64::{decode as unb64, decode_32 as unb64_32, encode as b64};
fn frost_err<E: std::fmt::Display>(e: E) -> DkgError {
    DkgError::Frost(e.to_string())
}
fn ident(i: u16) -> Result<frost::Identifier, DkgError> {
    frost::Identifier::try_from(i).map_err(frost_err)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Round1Body {
    format: u32,
    round: u8,
    config_id: String,
    from: u16,
    instances: u16,
    threshold: u16,
    transport_public_key: String,
    package: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Round2Body {
    format: u32,
    round: u8,
    config_id: String,
    from: u16,
    to: u16,
    transcript_sha256: String,
    enc: String,
    ciphertext: String,
}

/// What an instance keeps between round 1 and round 2 (secret; the CLI stores it 0600).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round1State {
    ceremony: Ceremony,
    identity_seed: String,
    transport_key: String,
    frost_secret: String,
}

/// What an instance keeps between round 2 and finishing (secret).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round2State {
    ceremony: Ceremony,
    transport_key: String,
    frost_secret: String,
    /// Every round-1 message, base64, by index.
    round1: Vec<String>,
}

impl Drop for Round1State {
    fn drop(&mut self) {
        self.identity_seed.zeroize();
        self.transport_key.zeroize();
        self.frost_secret.zeroize();
    }
}
impl Drop for Round2State {
    fn drop(&mut self) {
        self.transport_key.zeroize();
        self.frost_secret.zeroize();
    }
}

macro_rules! state_io {
    ($t:ty) => {
        impl $t {
            /// The JSON form (holds secrets).
            pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
                Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
            }
            /// Parse the JSON form.
            pub fn from_json(b: &[u8]) -> Result<Self, DkgError> {
                serde_json::from_slice(b).map_err(|e| DkgError::State(e.to_string()))
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?}, <redacted>)", stringify!($t), self.ceremony)
            }
        }
    };
}
state_io!(Round1State);

impl Round1State {
    /// This instance's index.
    pub fn index(&self) -> u16 {
        self.ceremony.index
    }
}
state_io!(Round2State);

/// The public outcome of the ceremony at one instance: what the steward compares across
/// instances and turns into the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicResult {
    /// The service.
    pub config_id: String,
    /// The instance that reports it.
    pub index: u16,
    /// `t`.
    pub threshold: u16,
    /// `K`, base64.
    pub group_public_key: String,
    /// Every `K_j`, base64, by index.
    pub public_shares: Vec<crate::share::PublicShare>,
}

/// Step 1: keys and FROST part 1. Returns the state to keep and the signed round-1 message.
pub fn round1(ceremony: &Ceremony) -> Result<(Round1State, Vec<u8>), DkgError> {
    ceremony.check()?;
    let identity = SigningKey::generate().map_err(|e| DkgError::Frost(e.to_string()))?;
    let (transport, transport_pk) = HpkePrivateKey::generate();
    let (secret, package) = dkg::part1(
        ident(ceremony.index)?,
        ceremony.instances,
        ceremony.threshold,
        OsRng,
    )
    .map_err(frost_err)?;
    let body = Round1Body {
        format: datadonor_schemas::PROTOCOL_VERSION,
        round: 1,
        config_id: ceremony.config_id.clone(),
        from: ceremony.index,
        instances: ceremony.instances,
        threshold: ceremony.threshold,
        transport_public_key: b64(&transport_pk.0),
        package: b64(&package.serialize().map_err(frost_err)?),
    };
    let msg = SignedObject::sign(Context::DkgMessage, &body, &identity).to_bytes();
    let secret_bytes = Zeroizing::new(secret.serialize().map_err(frost_err)?);
    Ok((
        Round1State {
            ceremony: ceremony.clone(),
            identity_seed: b64(identity.seed()),
            transport_key: b64(transport.to_bytes()),
            frost_secret: b64(&secret_bytes),
        },
        msg,
    ))
}

/// The fingerprint operators compare out of band: SHA-256 of the identity public key that
/// signed a round-1 message, in hex.
pub fn identity_fingerprint(round1_message: &[u8]) -> Result<String, DkgError> {
    let o = SignedObject::from_bytes(round1_message).map_err(|e| DkgError::BadMessage {
        from: 0,
        reason: e.to_string(),
    })?;
    Ok(hex::encode(sha256(&o.public_key.0)))
}

fn sha256(b: &[u8]) -> [u8; 32] {
    datadonor_schemas::sha256(b)
}

struct Round1Parsed {
    from: u16,
    signer: PublicKey,
    transport: HpkePublicKey,
    package: dkg::round1::Package,
}

fn parse_round1(ceremony: &Ceremony, bytes: &[u8]) -> Result<Round1Parsed, DkgError> {
    let bad = |from: u16, r: String| DkgError::BadMessage { from, reason: r };
    let o = SignedObject::from_bytes(bytes).map_err(|e| bad(0, e.to_string()))?;
    let s = o
        .open::<Round1Body>(Context::DkgMessage, "dkg round-1 message")
        .map_err(|e| bad(0, e.to_string()))?;
    let b = &s.body;
    if b.round != 1 || b.format != datadonor_schemas::PROTOCOL_VERSION {
        return Err(bad(b.from, "not a round-1 message".into()));
    }
    if b.config_id != ceremony.config_id
        || b.instances != ceremony.instances
        || b.threshold != ceremony.threshold
    {
        return Err(bad(
            b.from,
            "made for another ceremony (config_id, instances or threshold differ)".into(),
        ));
    }
    let tpk = unb64_32(&b.transport_public_key)
        .ok_or_else(|| bad(b.from, "transport_public_key is not 32 bytes".into()))?;
    let package = unb64(&b.package)
        .and_then(|v| dkg::round1::Package::deserialize(&v).ok())
        .ok_or_else(|| bad(b.from, "package does not decode".into()))?;
    Ok(Round1Parsed {
        from: b.from,
        signer: s.signer,
        transport: HpkePublicKey(tpk),
        package,
    })
}

/// Parse all `n` round-1 messages: one per index, all for this ceremony, ordered by index.
fn parse_all_round1(
    ceremony: &Ceremony,
    messages: &[Vec<u8>],
) -> Result<(Vec<Round1Parsed>, [u8; 32]), DkgError> {
    let mut parsed: Vec<(Round1Parsed, &Vec<u8>)> = Vec::new();
    for m in messages {
        let p = parse_round1(ceremony, m)?;
        if parsed.iter().any(|(q, _)| q.from == p.from) {
            return Err(DkgError::Messages(format!(
                "two round-1 messages from instance {}",
                p.from
            )));
        }
        parsed.push((p, m));
    }
    parsed.sort_by_key(|(p, _)| p.from);
    let want: Vec<u16> = (1..=ceremony.instances).collect();
    let got: Vec<u16> = parsed.iter().map(|(p, _)| p.from).collect();
    if got != want {
        return Err(DkgError::Messages(format!(
            "round-1 messages from instances {got:?}; need exactly {want:?}"
        )));
    }
    let mut transcript = Vec::new();
    for (_, m) in &parsed {
        transcript.extend_from_slice(&(m.len() as u64).to_be_bytes());
        transcript.extend_from_slice(m);
    }
    Ok((
        parsed.into_iter().map(|(p, _)| p).collect(),
        sha256(&transcript),
    ))
}

/// Signed round-2 messages, each with the index of the instance it is for.
pub type Outgoing = Vec<(u16, Vec<u8>)>;

/// Step 2: FROST part 2 over all `n` round-1 messages (this instance's own included). Returns
/// the state to keep and one signed round-2 message per other instance.
pub fn round2(
    state: Round1State,
    round1_messages: &[Vec<u8>],
) -> Result<(Round2State, Outgoing), DkgError> {
    let c = state.ceremony.clone();
    let (parsed, transcript) = parse_all_round1(&c, round1_messages)?;
    let seed = Zeroizing::new(
        unb64_32(&state.identity_seed).ok_or_else(|| DkgError::State("identity seed".into()))?,
    );
    let identity = SigningKey::from_seed(&seed).map_err(|e| DkgError::State(e.to_string()))?;
    let own = parsed.iter().find(|p| p.from == c.index).ok_or_else(|| {
        DkgError::Messages("this instance's own round-1 message is missing".into())
    })?;
    if own.signer != identity.public_key() {
        return Err(DkgError::Messages(
            "the round-1 message for this instance's index was not made by it".into(),
        ));
    }
    let secret_bytes = Zeroizing::new(
        unb64(&state.frost_secret).ok_or_else(|| DkgError::State("round-1 secret".into()))?,
    );
    let secret = dkg::round1::SecretPackage::deserialize(&secret_bytes).map_err(frost_err)?;
    let mut others = BTreeMap::new();
    for p in parsed.iter().filter(|p| p.from != c.index) {
        others.insert(ident(p.from)?, p.package.clone());
    }
    let (secret2, outgoing) = dkg::part2(secret, &others).map_err(frost_err)?;
    let mut messages = Vec::new();
    for p in parsed.iter().filter(|p| p.from != c.index) {
        let pkg = outgoing
            .get(&ident(p.from)?)
            .ok_or_else(|| DkgError::Frost(format!("no share for instance {}", p.from)))?;
        let plain = Zeroizing::new(pkg.serialize().map_err(frost_err)?);
        let (enc, ct) = hpke_seal(
            &p.transport,
            &round2_info(&c.config_id, c.index, p.from),
            &transcript,
            &plain,
        )
        .map_err(|e| DkgError::Frost(e.to_string()))?;
        let body = Round2Body {
            format: datadonor_schemas::PROTOCOL_VERSION,
            round: 2,
            config_id: c.config_id.clone(),
            from: c.index,
            to: p.from,
            transcript_sha256: hex::encode(transcript),
            enc: b64(&enc),
            ciphertext: b64(&ct),
        };
        messages.push((
            p.from,
            SignedObject::sign(Context::DkgMessage, &body, &identity).to_bytes(),
        ));
    }
    let secret2_bytes = Zeroizing::new(secret2.serialize().map_err(frost_err)?);
    Ok((
        Round2State {
            ceremony: c,
            transport_key: state.transport_key.clone(),
            frost_secret: b64(&secret2_bytes),
            round1: round1_messages.iter().map(|m| b64(m)).collect(),
        },
        messages,
    ))
}

fn round2_info(config_id: &str, from: u16, to: u16) -> Vec<u8> {
    let mut v = ROUND2_INFO.to_vec();
    v.push(0);
    v.extend_from_slice(config_id.as_bytes());
    v.push(0);
    v.extend_from_slice(&from.to_be_bytes());
    v.extend_from_slice(&to.to_be_bytes());
    v
}

/// Step 3: open the round-2 messages addressed to this instance, run FROST part 3 (which
/// checks each received share against its sender's commitments) and return the key share and
/// the public result to publish.
pub fn finish(
    state: Round2State,
    round2_messages: &[Vec<u8>],
) -> Result<(KeyShare, PublicResult), DkgError> {
    let c = state.ceremony.clone();
    let round1: Vec<Vec<u8>> = state
        .round1
        .iter()
        .map(|m| unb64(m).ok_or_else(|| DkgError::State("round-1 messages".into())))
        .collect::<Result<_, _>>()?;
    let (parsed, transcript) = parse_all_round1(&c, &round1)?;
    let tk = Zeroizing::new(
        unb64(&state.transport_key).ok_or_else(|| DkgError::State("transport key".into()))?,
    );
    let transport = HpkePrivateKey::from_bytes(&tk).map_err(|e| DkgError::State(e.to_string()))?;
    let mut received = BTreeMap::new();
    for m in round2_messages {
        let bad = |from: u16, r: String| DkgError::BadMessage { from, reason: r };
        let o = SignedObject::from_bytes(m).map_err(|e| bad(0, e.to_string()))?;
        let s = o
            .open::<Round2Body>(Context::DkgMessage, "dkg round-2 message")
            .map_err(|e| bad(0, e.to_string()))?;
        let b = &s.body;
        if b.round != 2 || b.config_id != c.config_id {
            return Err(bad(b.from, "not a round-2 message of this ceremony".into()));
        }
        if b.to != c.index {
            return Err(bad(b.from, format!("addressed to instance {}", b.to)));
        }
        let sender = parsed
            .iter()
            .find(|p| p.from == b.from && b.from != c.index)
            .ok_or_else(|| bad(b.from, "unknown sender".into()))?;
        if sender.signer != s.signer {
            return Err(bad(
                b.from,
                "not signed by the key that signed the sender's round-1 message".into(),
            ));
        }
        if b.transcript_sha256 != hex::encode(transcript) {
            return Err(bad(
                b.from,
                "made over a different set of round-1 messages".into(),
            ));
        }
        let enc = unb64_32(&b.enc).ok_or_else(|| bad(b.from, "enc is not 32 bytes".into()))?;
        let ct = unb64(&b.ciphertext).ok_or_else(|| bad(b.from, "ciphertext".into()))?;
        let plain = hpke_open(
            &transport,
            &enc,
            &round2_info(&c.config_id, b.from, c.index),
            &transcript,
            &ct,
        )
        .map_err(|_| bad(b.from, "the sealed share does not open".into()))?;
        let pkg = dkg::round2::Package::deserialize(&plain)
            .map_err(|_| bad(b.from, "the share does not decode".into()))?;
        if received.insert(ident(b.from)?, pkg).is_some() {
            return Err(DkgError::Messages(format!(
                "two round-2 messages from instance {}",
                b.from
            )));
        }
    }
    let mut others = BTreeMap::new();
    for p in parsed.iter().filter(|p| p.from != c.index) {
        others.insert(ident(p.from)?, p.package.clone());
    }
    let secret_bytes = Zeroizing::new(
        unb64(&state.frost_secret).ok_or_else(|| DkgError::State("round-2 secret".into()))?,
    );
    let secret = dkg::round2::SecretPackage::deserialize(&secret_bytes).map_err(frost_err)?;
    let (key_package, public) = dkg::part3(&secret, &others, &received).map_err(frost_err)?;
    let group: [u8; 32] = public
        .verifying_key()
        .serialize()
        .map_err(frost_err)?
        .try_into()
        .map_err(|_| DkgError::Frost("group key length".into()))?;
    let mut shares = Vec::new();
    for i in 1..=c.instances {
        let vs = public
            .verifying_shares()
            .get(&ident(i)?)
            .ok_or_else(|| DkgError::Frost(format!("no public share for {i}")))?;
        let b: [u8; 32] = vs
            .serialize()
            .map_err(frost_err)?
            .try_into()
            .map_err(|_| DkgError::Frost("public share length".into()))?;
        shares.push((i, b));
    }
    let secret_share = Zeroizing::new(key_package.signing_share().serialize());
    let share = KeyShare::new(
        &c.config_id,
        c.index,
        c.threshold,
        &secret_share,
        group,
        shares.clone(),
    )
    .map_err(|e| DkgError::Frost(e.to_string()))?;
    let result = PublicResult {
        config_id: c.config_id.clone(),
        index: c.index,
        threshold: c.threshold,
        group_public_key: b64(&group),
        public_shares: shares
            .iter()
            .map(|(i, p)| crate::share::PublicShare {
                index: *i,
                public_share: b64(p),
            })
            .collect(),
    };
    Ok((share, result))
}

/// Run the whole ceremony for `n` participants in this process (demo and tests).
pub fn run_local(
    config_id: &str,
    instances: u16,
    threshold: u16,
) -> Result<(Vec<KeyShare>, PublicResult), DkgError> {
    let mut states = Vec::new();
    let mut r1 = Vec::new();
    for index in 1..=instances {
        let (s, m) = round1(&Ceremony {
            config_id: config_id.into(),
            index,
            instances,
            threshold,
        })?;
        states.push(s);
        r1.push(m);
    }
    let mut states2 = Vec::new();
    let mut mail: Vec<(u16, Vec<u8>)> = Vec::new();
    for s in states {
        let (s2, out) = round2(s, &r1)?;
        states2.push(s2);
        mail.extend(out);
    }
    let mut shares = Vec::new();
    let mut results = Vec::new();
    for s2 in states2 {
        let me = s2.ceremony.index;
        let mine: Vec<Vec<u8>> = mail
            .iter()
            .filter(|(to, _)| *to == me)
            .map(|(_, m)| m.clone())
            .collect();
        let (share, result) = finish(s2, &mine)?;
        shares.push(share);
        results.push(result);
    }
    let first = results
        .first()
        .cloned()
        .ok_or_else(|| DkgError::Parameters("no instances".into()))?;
    check_agreement(&results)?;
    Ok((shares, first))
}

/// Check that every instance reported the same group key and public shares.
pub fn check_agreement(results: &[PublicResult]) -> Result<(), DkgError> {
    let Some(first) = results.first() else {
        return Err(DkgError::Messages("no public results".into()));
    };
    for r in results {
        if r.group_public_key != first.group_public_key
            || r.public_shares != first.public_shares
            || r.threshold != first.threshold
            || r.config_id != first.config_id
        {
            return Err(DkgError::Messages(format!(
                "instance {} reports another group key or other public shares than instance {}",
                r.index, first.index
            )));
        }
    }
    Ok(())
}

/// One instance's place in the configuration: where it answers and who runs it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Shamir index.
    pub index: u16,
    /// `https://host:port`.
    pub url: String,
    /// Operator name.
    pub operator: String,
}

/// Build and validate the configuration from the agreed public result.
pub fn assemble_config(
    result: &PublicResult,
    version: u32,
    endpoints: &[Endpoint],
    credential_issuer: Option<PublicKey>,
) -> Result<PseudonymiserConfig, DkgError> {
    let dec = |s: &str| {
        unb64_32(s)
            .ok_or_else(|| DkgError::Messages("a public key is not 32 bytes of base64".into()))
    };
    let mut instances = Vec::new();
    for p in &result.public_shares {
        let e = endpoints
            .iter()
            .find(|e| e.index == p.index)
            .ok_or_else(|| DkgError::Parameters(format!("no URL for instance {}", p.index)))?;
        instances.push(InstanceInfo {
            index: p.index,
            url: e.url.clone(),
            operator: e.operator.clone(),
            public_share: dec(&p.public_share)?,
        });
    }
    let config = PseudonymiserConfig {
        format: datadonor_schemas::PROTOCOL_VERSION,
        config_id: result.config_id.clone(),
        version,
        suite: SUITE.into(),
        mode: MODE.into(),
        threshold: result.threshold,
        group_public_key: dec(&result.group_public_key)?,
        instances,
        credential_issuer,
    };
    config
        .validate()
        .map_err(|e| DkgError::Parameters(e.to_string()))?;
    Ok(config)
}
