//! Several intakes, one sequencer (`[cluster]`; ARCHITECTURE.md, "Several intakes").
//!
//! A **frontend** terminates the donors' TLS, opens each envelope with the transport key (HPKE)
//! and forwards the opened payload to a **sequencer** over HTTPS
//! (`POST /v1/internal/donations`, [`FORWARDED_CONTENT_TYPE`], authenticated with the frontend
//! token). The sequencer checks the payload again (manifest signature, study, rows), decides it
//! against the ledger, seals, writes the batch and the ledger entries, signs the checkpoint and
//! the receipt, and answers; the frontend relays that answer unchanged. Withdrawals, ledger
//! events and every ledger read are relayed to the sequencer as they came. A frontend holds no
//! ledger key, no vault key and no store: nothing it has can sign a checkpoint, open a batch or
//! change the ledger.
//!
//! The sequencers are tried in the configured order, starting from the one that answered last.
//! Only a connection that could not be made moves on to the next one, so a request a sequencer
//! may have received is never sent twice by the frontend; the donor's retry (same idempotency
//! key) is what makes a lost answer safe.

use std::time::Duration;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use datadonor_schemas::envelope::DonationPayload;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::Config;
use crate::problem::Problem;
use crate::Error;

/// Media type of a forwarded donation: the SHA-256 of the envelope as the donor sent it (32
/// bytes), then the envelope's plaintext payload, encoded as inside the envelope (`DDP1`…).
pub const FORWARDED_CONTENT_TYPE: &str = "application/vnd.datadonor.forwarded-donation.v1";

/// Path of the sequencer's endpoint for forwarded donations.
pub const FORWARD_PATH: &str = "/v1/internal/donations";

/// How long a frontend waits for a sequencer's answer (a group commit, a batch write and a
/// durable ledger append).
pub const SEQUENCER_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers of a sequencer's answer that a frontend relays.
const RELAYED: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

/// The body of a forwarded donation.
pub fn forwarded_body(envelope_sha256: &[u8; 32], payload: &DonationPayload) -> Vec<u8> {
    let encoded = payload.encode();
    let mut out = Vec::with_capacity(32 + encoded.len());
    out.extend_from_slice(envelope_sha256);
    out.extend_from_slice(&encoded);
    out
}

/// Parse a forwarded donation body; a malformed one is `400 malformed-envelope`.
pub fn parse_forwarded(body: &[u8]) -> Result<([u8; 32], DonationPayload), Problem> {
    let (sha, rest) = body
        .split_first_chunk::<32>()
        .ok_or(Problem::MalformedEnvelope)?;
    let payload = DonationPayload::decode(rest).map_err(|_| Problem::MalformedEnvelope)?;
    Ok((*sha, payload))
}

/// A frontend's connection to the sequencers.
pub struct SequencerClient {
    client: reqwest::Client,
    urls: Vec<String>,
    token: zeroize::Zeroizing<String>,
    /// The sequencer that answered last: tried first next time.
    current: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for SequencerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequencerClient")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl SequencerClient {
    /// From `[cluster]` (a frontend's configuration, already validated).
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let c = &config.cluster;
        let missing = |what: &str| {
            Error::Config(crate::config::ConfigError::Invalid(format!(
                "a frontend needs cluster.{what}"
            )))
        };
        let ca_path = config.path(c.ca_cert.as_ref().ok_or_else(|| missing("ca_cert"))?);
        let token_path = config.path(c.token_file.as_ref().ok_or_else(|| missing("token_file"))?);
        let token = zeroize::Zeroizing::new(
            std::fs::read_to_string(&token_path)
                .map_err(Error::io(format!(
                    "reading the frontend token {}",
                    token_path.display()
                )))?
                .trim()
                .to_string(),
        );
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(crate::config::ConfigError::Invalid(format!(
                "{}: not a token",
                token_path.display()
            ))));
        }
        let client = crate::witnessing::pinned_client(
            &ca_path,
            "sequencer",
            reqwest::Client::builder()
                .timeout(SEQUENCER_TIMEOUT)
                .connect_timeout(Duration::from_secs(3)),
        )?;
        Ok(Self {
            client,
            urls: c
                .sequencers
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            token,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Send a request to the first sequencer that accepts a connection and relay its answer.
    /// `authorization` is the header to send (the client's own for relayed reads, the
    /// frontend's token for forwarded donations). No sequencer reachable: `503 unavailable`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        authorization: Option<HeaderValue>,
        content_type: Option<HeaderValue>,
        body: Bytes,
    ) -> Response {
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        for i in (0..self.urls.len()).map(|k| (first + k) % self.urls.len()) {
            let base = &self.urls[i];
            let mut req = self
                .client
                .request(method.clone(), format!("{base}{path_and_query}"));
            if let Some(a) = &authorization {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            if let Some(t) = &content_type {
                req = req.header(header::CONTENT_TYPE, t.clone());
            }
            if method == Method::POST {
                req = req.body(body.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    if i != first {
                        tracing::warn!(sequencer = %base, "now forwarding to this sequencer");
                        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    return relay(resp).await;
                }
                Err(e) if e.is_connect() => {
                    tracing::debug!(sequencer = %base, "sequencer unreachable; trying the next");
                    continue;
                }
                Err(e) => {
                    tracing::error!(sequencer = %base, error = %e, "sequencer request failed");
                    return Problem::Unavailable.into_response();
                }
            }
        }
        Problem::Unavailable.into_response()
    }

    /// Forward an opened donation with the frontend token.
    pub async fn forward_donation(
        &self,
        envelope_sha256: &[u8; 32],
        payload: &DonationPayload,
    ) -> Response {
        let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", self.token.as_str())) else {
            return Problem::Internal.into_response();
        };
        let body = Bytes::from(forwarded_body(envelope_sha256, payload));
        self.send(
            Method::POST,
            FORWARD_PATH,
            Some(auth),
            Some(HeaderValue::from_static(FORWARDED_CONTENT_TYPE)),
            body,
        )
        .await
    }
}

/// The sequencer's answer as the frontend's own: status, the relayed headers, the body.
async fn relay(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for h in RELAYED {
        if let Some(v) = resp.headers().get(h.as_str()) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.insert(h, v);
            }
        }
    }
    match resp.bytes().await {
        Ok(body) => (status, headers, body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a sequencer's answer failed");
            Problem::Unavailable.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md, "Forwarded donations": the body is the envelope's SHA-256, then the payload
    /// bytes; checked on the published envelope vectors.
    #[test]
    fn forwarded_bodies_of_the_envelope_vectors() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/vectors/envelope.json")).unwrap();
        let valid: Vec<&serde_json::Value> = file["valid"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["payload_hex"].is_string() && v["envelope_sha256_hex"].is_string())
            .collect();
        assert!(!valid.is_empty());
        for v in valid {
            let hex_of = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
            let (sha, payload_bytes) = (hex_of("envelope_sha256_hex"), hex_of("payload_hex"));
            let body = [sha.as_slice(), payload_bytes.as_slice()].concat();
            let (got_sha, payload) = parse_forwarded(&body).unwrap();
            assert_eq!(got_sha.as_slice(), sha.as_slice());
            assert_eq!(payload, DonationPayload::decode(&payload_bytes).unwrap());
            assert_eq!(forwarded_body(&got_sha, &payload), body);
        }
    }

    #[test]
    fn forwarded_bodies_round_trip_and_refuse_damage() {
        let payload = DonationPayload {
            idempotency_key: [7; 16],
            manifest: b"{\"m\":1}".to_vec(),
            rows: vec![1, 2, 3],
        };
        let body = forwarded_body(&[9; 32], &payload);
        let (sha, back) = parse_forwarded(&body).unwrap();
        assert_eq!((sha, back), ([9; 32], payload));
        for cut in [0, 31, 32, 40, body.len() - 1] {
            assert_eq!(
                parse_forwarded(&body[..cut]).err(),
                Some(Problem::MalformedEnvelope),
                "cut at {cut}"
            );
        }
        let mut extra = body.clone();
        extra.push(0);
        assert_eq!(
            parse_forwarded(&extra).err(),
            Some(Problem::MalformedEnvelope)
        );
    }
}
