//! Synthetic rows, sealed batches and ledger entries for tests, the benchmark and demos.
//!
//! Deterministic (a seeded xorshift generator), valid against the study's schema, and never
//! derived from real data.

use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::study::{
    FieldType, Granularity, StudyDefinition, CONSENT_COLUMN, DONOR_COLUMN, PERIOD_COLUMN,
};
use datadonor_schemas::time::UnixSeconds;
use polars::prelude::*;

use crate::sealed::seal_batch;
use crate::store::BatchStore;
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The pseudonym of synthetic donor `i`.
pub fn donor(i: u32) -> Pseudonym {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[31] = 0x5a;
    Pseudonym(b)
}

/// The consent record id of the synthetic donor with pseudonym `p` ([`grant`], [`withdraw`]
/// and the `consent` column of [`synthetic_frame`]): the pseudonym's first 16 bytes.
pub fn record_id(p: Pseudonym) -> [u8; 16] {
    let mut r = [0u8; 16];
    r.copy_from_slice(&p.0[..16]);
    r
}

/// [`record_id`] as the `consent` column holds it (32 lowercase hex digits).
pub fn record_hex(p: Pseudonym) -> String {
    hex::encode(record_id(p))
}

/// The consent column value of rows of the donor with hex pseudonym `donor`: its
/// [`record_hex`], or 32 zeros when `donor` is not a pseudonym.
fn record_of_donor_hex(donor: &str) -> String {
    Pseudonym::from_hex(donor).map_or_else(|| "0".repeat(32), record_hex)
}

/// Set every row's `consent` column to `record` (rows donated under another consent record).
pub fn set_consent(df: &mut DataFrame, record: [u8; 16]) -> Result<(), AnalyticsError> {
    let hex = hex::encode(record);
    let c = StringChunked::from_iter_values(
        CONSENT_COLUMN.into(),
        std::iter::repeat_n(hex.as_str(), df.height()),
    );
    df.with_column(c.into_series().into())?;
    Ok(())
}

/// A valid period label of the study's granularity, `i` steps from January 2024.
pub fn period(g: Granularity, i: usize) -> String {
    match g {
        Granularity::Month => format!("2024-{:02}", i % 12 + 1),
        Granularity::Week => format!("2024-W{:02}", i % 52 + 1),
        Granularity::Day => format!("2024-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
    }
}

/// `rows` synthetic rows of donors chosen uniformly from `donors` (hex pseudonyms), in the
/// study's batch schema: each row's `consent` column is its donor's [`record_hex`].
pub fn synthetic_frame(
    study: &StudyDefinition,
    donors: &[String],
    rows: usize,
    rng: &mut Rng,
) -> Result<DataFrame, AnalyticsError> {
    let picks: Vec<usize> = (0..rows).map(|_| rng.below(donors.len())).collect();
    let mut cols: Vec<Column> = Vec::new();
    cols.push(
        StringChunked::from_iter_values(
            DONOR_COLUMN.into(),
            picks.iter().map(|i| donors[*i].as_str()),
        )
        .into_series()
        .into(),
    );
    let periods: Vec<String> = (0..12).map(|i| period(study.period, i)).collect();
    cols.push(
        StringChunked::from_iter_values(
            PERIOD_COLUMN.into(),
            (0..rows).map(|_| periods[rng.below(periods.len())].as_str()),
        )
        .into_series()
        .into(),
    );
    for f in &study.fields {
        let c: Column = match f.field_type() {
            FieldType::Category(labels) => StringChunked::from_iter_values(
                f.name.as_str().into(),
                (0..rows).map(|_| labels[rng.below(labels.len())].as_str()),
            )
            .into_series()
            .into(),
            FieldType::Flag => {
                let v: Vec<bool> = (0..rows).map(|_| rng.below(4) == 0).collect();
                Column::new(f.name.as_str().into(), v)
            }
            FieldType::Number { min, max } => {
                let v: Vec<Option<f64>> = (0..rows)
                    .map(|_| {
                        (rng.below(10) != 0).then(|| {
                            let x = min + (max - min) * (0.3 + 0.4 * rng.unit());
                            (x * 10.0).round() / 10.0
                        })
                    })
                    .collect();
                Column::new(f.name.as_str().into(), v)
            }
        };
        cols.push(c);
    }
    let records: Vec<String> = donors.iter().map(|d| record_of_donor_hex(d)).collect();
    cols.push(
        StringChunked::from_iter_values(
            CONSENT_COLUMN.into(),
            picks.iter().map(|i| records[*i].as_str()),
        )
        .into_series()
        .into(),
    );
    Ok(DataFrame::new(rows, cols)?)
}

/// Parquet bytes of a frame.
pub fn parquet_bytes(df: &mut DataFrame) -> Result<Vec<u8>, AnalyticsError> {
    let mut out = Vec::new();
    ParquetWriter::new(&mut out).finish(df)?;
    Ok(out)
}

/// Seal a frame as a new batch of the study into the store.
pub fn store_frame(
    store: &BatchStore,
    study: &StudyDefinition,
    vault: &VaultKey,
    df: &mut DataFrame,
    created_at: UnixSeconds,
) -> Result<std::path::PathBuf, AnalyticsError> {
    let bytes = parquet_bytes(df)?;
    let (h, sealed) = seal_batch(&bytes, &study.id, created_at, &vault.public())?;
    store.write(&h, &sealed)
}

/// A `consent_granted` entry.
pub fn grant(
    study: &StudyDefinition,
    p: Pseudonym,
    purposes: &[&str],
    expires_at: UnixSeconds,
) -> LedgerEntry {
    LedgerEntry::ConsentGranted {
        time: 1_700_000_000,
        study_id: study.id.clone(),
        study_version: study.version,
        pseudonym: p,
        consent_record_id: record_id(p),
        purposes: purposes.iter().map(|s| s.to_string()).collect(),
        given_at: 1_700_000_000,
        expires_at,
        manifest_sha256: [0; 32],
        donor_public_key: PublicKey(p.0),
    }
}

/// A `donation_accepted` entry of donor `p` (under [`record_id`]) naming the intake batch
/// `batch_id` (hex).
pub fn accepted(study: &StudyDefinition, p: Pseudonym, batch_id: &str, rows: u32) -> LedgerEntry {
    LedgerEntry::DonationAccepted {
        time: 1_700_000_000,
        study_id: study.id.clone(),
        pseudonym: p,
        consent_record_id: record_id(p),
        idempotency_key: record_id(p),
        envelope_sha256: [0; 32],
        rows,
        batch_id: batch_id.to_string(),
    }
}

/// A `consent_withdrawn` entry.
pub fn withdraw(study: &StudyDefinition, p: Pseudonym, time: UnixSeconds) -> LedgerEntry {
    LedgerEntry::ConsentWithdrawn {
        time,
        study_id: study.id.clone(),
        pseudonym: p,
        consent_record_id: record_id(p),
        withdrawal_sha256: [1; 32],
    }
}

/// An approval of query `[id; 32]` under approval id `[id; 16]`, for the study's
/// `t2d-epidemiology` purpose and researcher `r@sdu.example`, valid from `now - 100` to
/// `now + 1000`.
pub fn approval(study: &StudyDefinition, id: u8, max_runs: u32, now: UnixSeconds) -> QueryApproval {
    QueryApproval {
        format: 1,
        approval_id: [id; 16],
        query_sha256: [id; 32],
        study_id: study.id.clone(),
        purpose: "t2d-epidemiology".into(),
        researcher: "r@sdu.example".into(),
        not_before: now - 100,
        not_after: now + 1000,
        max_runs,
        privacy: None,
    }
}

/// An approval of `spec` as written (its hash, study, purpose and researcher), approval id
/// `[id; 16]`, valid from `now - 10` to `now + 86_400`, for `max_runs` runs, with no privacy
/// spend.
pub fn approval_of(spec: &QuerySpec, id: u8, now: UnixSeconds, max_runs: u32) -> QueryApproval {
    QueryApproval {
        format: 1,
        approval_id: [id; 16],
        query_sha256: spec.hash(),
        study_id: spec.study.clone(),
        purpose: spec.purpose.clone(),
        researcher: spec.researcher.clone(),
        not_before: now - 10,
        not_after: now + 86_400,
        max_runs,
        privacy: None,
    }
}

/// A `query_run` entry of `approval` (whose signed form digests to `approval_sha256`): 40 donors
/// considered, 6 cells published, 2 suppressed.
pub fn query_run(
    study: &StudyDefinition,
    approval: &QueryApproval,
    approval_sha256: [u8; 32],
    time: UnixSeconds,
) -> LedgerEntry {
    LedgerEntry::QueryRun {
        time,
        study_id: study.id.clone(),
        query_sha256: approval.query_sha256,
        approval_sha256,
        researcher: approval.researcher.clone(),
        purpose: approval.purpose.clone(),
        donors_considered: 40,
        cells_published: 6,
        cells_suppressed: 2,
        privacy: None,
    }
}
