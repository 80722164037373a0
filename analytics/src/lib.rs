//! Datadonor analytics: the researcher's, steward's and auditor's side of Datadonor.
//!
//! This crate is the only one that holds the vault private key and the only one that depends on
//! polars. It opens sealed batches in memory, runs approved aggregate queries over the rows of
//! donors whose consent covers the query's purpose, enforces k-anonymity with primary and
//! secondary cell suppression, logs every run to the consent ledger, verifies that ledger
//! against signed checkpoints, and compacts withdrawn donors out of the sealed batches.
//!
//! | module | what it owns |
//! |---|---|
//! | [`vault`] | the vault key files |
//! | [`keys`] | steward signing keys and the trusted-approvers list |
//! | [`sealed`] | opening (and re-sealing) sealed batch files, in memory only |
//! | [`store`] | the directory of a study's sealed batches, atomic replacement with a journal |
//! | [`ledger`] | ledger sources and sinks, checkpoint and Merkle verification |
//! | [`ledger_http`] | the intake's auditor and ledger-event endpoints over HTTPS |
//! | [`engine`] | the polars query engine: batch-by-batch mergeable partial aggregates |
//! | [`disclosure`] | k-anonymity: primary and secondary suppression |
//! | [`query`] | one approved run: approval, consent, engine, disclosure, ledger entry |
//! | [`output`] | the result table as text, CSV, JSON, Parquet and an SVG bar chart |
//! | [`compact`] | rewriting batches without the rows of withdrawn consent records |
//! | [`audit`] | the auditor's checks of the ledger, receipts, consents, query runs and batches |
//! | [`testkit`] | synthetic rows and ledger entries for tests and the benchmark |
//!
//! **Architecture invariant:** plaintext rows exist only in memory. No function of this crate
//! writes an opened batch to disk; the only files written are sealed batches, result tables
//! (after disclosure control) and the verified-checkpoint state.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod compact;
pub mod disclosure;
pub mod engine;
pub mod keys;
pub mod ledger;
pub mod ledger_http;
pub mod ledger_index;
pub mod output;
pub mod plain;
pub mod private;
pub mod query;
pub mod sealed;
pub mod service;
pub mod store;
pub mod store_s3;
pub mod testkit;
pub mod vault;

use std::path::PathBuf;

/// Errors of the analytics library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// A key file is missing or malformed.
    #[error("key file {}: {detail}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A sealed batch could not be opened or written.
    #[error(transparent)]
    Batch(#[from] sealed::BatchError),
    /// The ledger could not be read, verified or appended to.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// The query spec or approval was refused.
    #[error("{0}")]
    Refused(String),
    /// The query engine failed.
    #[error("query engine: {0}")]
    Engine(String),
    /// Writing an output failed.
    #[error("output {}: {detail}", path.display())]
    Output {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// An input file (receipt, approval) could not be read or parsed.
    #[error("{}: {detail}", path.display())]
    Input {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An audit found violations.
    #[error("audit: {0}")]
    AuditFailed(String),
    /// The batch store (a directory or a bucket prefix) could not be read or updated.
    #[error("batch store {}: {detail}", path.display())]
    Store {
        /// The directory or file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl From<polars::prelude::PolarsError> for AnalyticsError {
    fn from(e: polars::prelude::PolarsError) -> Self {
        AnalyticsError::Engine(e.to_string())
    }
}
