//! Test support, for this crate's tests and other crates' (donor client, end-to-end): set up a
//! data directory, and build valid (or deliberately broken) donations and withdrawals for a
//! study with the `schemas` types. Holds no deployment secrets and no code that opens a batch;
//! not meant for production use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use datadonor_intake::testkit;
//! let dir = tempfile::tempdir()?;
//! let config = testkit::init_test_dir(dir.path())?;          // init + test-friendly config
//! let intake = datadonor_intake::start(config).await?;       // https://localhost:<port>
//! let study = testkit::load_study(dir.path(), "t2d-dk")?;
//! let hpke = testkit::current_hpke_key(dir.path())?;
//! let d = testkit::DonationBuilder::new(&study, hpke).build()?; // d.envelope: bytes to POST
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use datadonor_schemas::consent::{ConsentManifest, Withdrawal, LEGAL_BASIS};
use datadonor_schemas::envelope::{DonationPayload, HpkePublicKey};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::{SignedObject, SigningKey};
use datadonor_schemas::study::{rows_to_ipc, FieldType, Granularity, StudyDefinition};
use datadonor_schemas::time::{Clock, SystemClock, UnixSeconds};
use rand_core::{OsRng, RngCore};

use crate::config::Config;
use crate::studies::{LoadedStudy, StudyRegistry};
use crate::Error;

/// `init` a directory and return a configuration for tests: port 0, short group window.
pub fn init_test_dir(dir: &Path) -> Result<Config, Error> {
    init_test_dir_with(dir, None)
}

/// [`init_test_dir`] with the example study naming a pseudonymisation service.
pub fn init_test_dir_with(
    dir: &Path,
    pseudonymiser: Option<&datadonor_schemas::threshold::PseudonymiserConfig>,
) -> Result<Config, Error> {
    crate::init::init_with(
        dir,
        crate::init::InitOptions {
            pseudonymiser,
            ..Default::default()
        },
        SystemClock.now(),
    )?;
    let mut c = Config::load_dir(dir)?;
    c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.commit.group_window_ms = 2;
    c.server.drain_timeout_ms = 5_000;
    // Every test client reads from 127.0.0.1: one address, many donors.
    c.limits.public_read_burst = 1_000_000;
    c.limits.public_reads_per_second = 1_000_000.0;
    Ok(c)
}

/// A study of a data directory, as the intake loads it.
pub fn load_study(dir: &Path, id: &str) -> Result<Arc<LoadedStudy>, Error> {
    let c = Config::load_dir(dir)?;
    let reg = StudyRegistry::load(&dir.join("studies"), &c.studies.trusted_signers)?;
    reg.get(id)
        .cloned()
        .ok_or_else(|| Error::Init(format!("no study {id}")))
}

/// The current transport key id and public key of a data directory.
pub fn current_hpke_key(dir: &Path) -> Result<(u32, HpkePublicKey), Error> {
    let c = Config::load_dir(dir)?;
    let keys =
        crate::keys::TransportKeys::load(dir, c.keys.transport_key_grace_secs, SystemClock.now())?;
    let k = keys
        .accepted(SystemClock.now())
        .next()
        .ok_or(crate::keys::KeyError::NoTransportKey)?;
    Ok((k.info.key_id, k.public_key))
}

/// A random 32-byte pseudonym.
pub fn random_pseudonym() -> Pseudonym {
    let mut p = [0u8; 32];
    OsRng.fill_bytes(&mut p);
    Pseudonym(p)
}

/// A distinctive in-range value for a numeric field (so that tests can search for it).
pub fn sample_number(min: f64, max: f64, row: usize) -> f64 {
    min + (max - min) * (0.3137 + 0.0101 * (row % 7) as f64) + 0.000_123_4
}

/// A period of the study's granularity for row `row`.
pub fn sample_period(g: Granularity, row: usize) -> String {
    let month = (row % 12) + 1;
    match g {
        Granularity::Month => format!("2023-{month:02}"),
        Granularity::Day => format!("2023-{month:02}-15"),
        Granularity::Week => format!("2023-W{:02}", (row % 52) + 1),
    }
}

/// `n` valid rows of `study` for `pseudonym`.
pub fn sample_rows(study: &StudyDefinition, pseudonym: &Pseudonym, n: usize) -> RecordBatch {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![pseudonym.to_hex(); n])),
        Arc::new(StringArray::from(
            (0..n)
                .map(|r| sample_period(study.period, r))
                .collect::<Vec<_>>(),
        )),
    ];
    for f in &study.fields {
        let col: ArrayRef = match f.field_type() {
            FieldType::Number { min, max } => Arc::new(Float64Array::from(
                (0..n)
                    .map(|r| Some(sample_number(min, max, r)))
                    .collect::<Vec<_>>(),
            )),
            FieldType::Flag => Arc::new(BooleanArray::from(vec![true; n])),
            FieldType::Category(vals) => {
                let v = vals.get(vals.len() / 2).cloned().unwrap_or_default();
                Arc::new(StringArray::from(vec![v; n]))
            }
        };
        cols.push(col);
    }
    // The columns are built from the study's own schema, so this cannot fail.
    RecordBatch::try_new(study.arrow_schema(), cols)
        .unwrap_or_else(|_| RecordBatch::new_empty(study.arrow_schema()))
}

/// A valid consent manifest for `study`.
pub fn manifest_for(
    study: &LoadedStudy,
    donor: &SigningKey,
    pseudonym: Pseudonym,
    now: UnixSeconds,
) -> ConsentManifest {
    let d = &study.definition;
    let mut record_id = [0u8; 16];
    OsRng.fill_bytes(&mut record_id);
    ConsentManifest {
        format: datadonor_schemas::PROTOCOL_VERSION,
        record_id,
        study_id: d.id.clone(),
        study_version: d.version,
        study_sha256: study.sha256,
        controller: d.controller.clone(),
        purposes: d.purpose_codes().take(1).map(str::to_string).collect(),
        legal_basis: LEGAL_BASIS.to_string(),
        data_categories: d.fields.iter().map(|f| f.name.clone()).collect(),
        given_at: now,
        expires_at: now + 365 * 86_400,
        withdrawal_method: "datadonor withdraw".into(),
        notice_sha256: d.notice_sha256,
        donor_public_key: donor.public_key(),
        pseudonym,
    }
}

/// Seal a payload into envelope bytes.
pub fn seal_envelope(
    hpke: (u32, HpkePublicKey),
    idempotency_key: [u8; 16],
    manifest: &[u8],
    rows_ipc: &[u8],
) -> Vec<u8> {
    DonationPayload {
        idempotency_key,
        manifest: manifest.to_vec(),
        rows: rows_ipc.to_vec(),
    }
    .seal(hpke.0, &hpke.1)
    .unwrap_or_default()
}

/// A donation ready to POST, with everything a test needs to check or withdraw it.
#[derive(Debug)]
pub struct Donation {
    /// Envelope bytes (`application/vnd.datadonor.envelope.v1`).
    pub envelope: Vec<u8>,
    /// Idempotency key.
    pub idempotency_key: [u8; 16],
    /// The manifest.
    pub manifest: ConsentManifest,
    /// The donor key.
    pub donor_key: SigningKey,
    /// The rows.
    pub rows: RecordBatch,
}

impl Donation {
    /// A signed withdrawal of this donation's consent, signed by `key` (the donor's, or another
    /// to test forgery).
    pub fn withdrawal_signed_by(&self, key: &SigningKey, now: UnixSeconds) -> Vec<u8> {
        let mut request_id = [0u8; 16];
        OsRng.fill_bytes(&mut request_id);
        Withdrawal {
            format: datadonor_schemas::PROTOCOL_VERSION,
            request_id,
            study_id: self.manifest.study_id.clone(),
            pseudonym: self.manifest.pseudonym,
            consent_record_id: self.manifest.record_id,
            withdrawn_at: now,
            donor_public_key: key.public_key(),
        }
        .sign(key)
        .to_bytes()
    }
    /// A withdrawal signed by the donor.
    pub fn withdrawal(&self, now: UnixSeconds) -> Vec<u8> {
        self.withdrawal_signed_by(&self.donor_key, now)
    }
}

/// An edit applied to the manifest before it is signed.
pub type ManifestEdit<'a> = Box<dyn FnOnce(&mut ConsentManifest) + 'a>;

/// Builds a [`Donation`]; every part can be overridden to make it invalid in one way.
pub struct DonationBuilder<'a> {
    study: &'a LoadedStudy,
    hpke: (u32, HpkePublicKey),
    /// Number of rows.
    pub n_rows: usize,
    /// Time of consent.
    pub now: UnixSeconds,
    /// The donor key (fresh by default).
    pub donor_key: Option<SigningKey>,
    /// The pseudonym (random by default).
    pub pseudonym: Pseudonym,
    /// Idempotency key (random by default).
    pub idempotency_key: [u8; 16],
    /// Change the manifest before signing.
    pub edit_manifest: Option<ManifestEdit<'a>>,
    /// Replace the rows.
    pub rows: Option<RecordBatch>,
    /// Replace the signed manifest bytes.
    pub manifest_bytes: Option<Vec<u8>>,
    /// Replace the rows bytes.
    pub rows_bytes: Option<Vec<u8>>,
    /// Reuse a previous donation's manifest (same consent record) and donor key.
    pub reuse: Option<(&'a ConsentManifest, &'a SigningKey)>,
}

impl<'a> DonationBuilder<'a> {
    /// A builder for a valid donation to `study`, sealed to `hpke` (key id, public key).
    pub fn new(study: &'a LoadedStudy, hpke: (u32, HpkePublicKey)) -> Self {
        let mut idempotency_key = [0u8; 16];
        OsRng.fill_bytes(&mut idempotency_key);
        Self {
            study,
            hpke,
            n_rows: 3,
            now: SystemClock.now(),
            donor_key: None,
            pseudonym: random_pseudonym(),
            idempotency_key,
            edit_manifest: None,
            rows: None,
            manifest_bytes: None,
            rows_bytes: None,
            reuse: None,
        }
    }

    /// Build it.
    pub fn build(self) -> Result<Donation, Error> {
        let bad = |m: &str| Error::Init(format!("testkit: {m}"));
        let (donor_key, mut manifest) = match self.reuse {
            Some((m, k)) => (
                SigningKey::from_seed(k.seed()).map_err(|_| bad("key"))?,
                m.clone(),
            ),
            None => {
                let k = match self.donor_key {
                    Some(k) => k,
                    None => SigningKey::generate().map_err(|_| bad("key"))?,
                };
                let m = manifest_for(self.study, &k, self.pseudonym, self.now);
                (k, m)
            }
        };
        if let Some(edit) = self.edit_manifest {
            edit(&mut manifest);
        }
        let signed: SignedObject = manifest.sign(&donor_key);
        let manifest_bytes = self.manifest_bytes.unwrap_or_else(|| signed.to_bytes());
        let rows = self.rows.unwrap_or_else(|| {
            sample_rows(&self.study.definition, &manifest.pseudonym, self.n_rows)
        });
        let rows_bytes = match self.rows_bytes {
            Some(b) => b,
            None => rows_to_ipc(&rows).map_err(|e| bad(&e.to_string()))?,
        };
        let envelope = seal_envelope(
            self.hpke,
            self.idempotency_key,
            &manifest_bytes,
            &rows_bytes,
        );
        Ok(Donation {
            envelope,
            idempotency_key: self.idempotency_key,
            manifest,
            donor_key,
            rows,
        })
    }
}

/// Every file under a directory, sorted (tests check what an intake wrote, or did not).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// An HTTPS client that trusts only the CAs in `ca_pem` and speaks TLS 1.3 with the same ring
/// provider as the intake (the benchmarks' load generators). `timeout` bounds each request.
pub fn https_client(
    ca_pem: &[u8],
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, Error> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| Error::Tls(e);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut b = reqwest::Client::builder().use_preconfigured_tls(cfg);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| bad(e.to_string()))
}
