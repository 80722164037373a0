//! The Datadonor intake: the HTTPS service that accepts sealed donations and withdrawals, keeps
//! the consent ledger, and writes sealed Parquet batches that it cannot open itself.
//!
//! Map of the modules:
//!
//! | module | what it owns |
//! |---|---|
//! | [`config`] | the configuration file, its defaults and limits |
//! | [`init`] | `datadonor-intake init`: keys, dev TLS, config, the example study, a demo vault key |
//! | [`keys`] | key files in the data directory (transport, ledger, auditor, vault public); no OPRF key material |
//! | [`studies`] | signed study definitions served and checked against |
//! | [`validate`] | stateless validation of donations and withdrawals, in protocol order |
//! | [`commit`] | the committer: group commit = sealing + ledger fsync, and crash recovery |
//! | [`seal`] | rows → Parquet → sealed batch (no code here opens one) |
//! | [`store`] | `BatchStore` / `LedgerStore` traits, local and in-memory backends, conformance suite |
//! | [`store_pg`] | the ledger in PostgreSQL: one transaction per append, synchronous commit, a unique index |
//! | [`store_s3`] | sealed batches in S3-compatible object storage, conditional puts |
//! | [`ledger`] | Merkle log, indexes, checkpoints, receipts |
//! | [`app`] | the axum router and handlers |
//! | [`server`] | `start`: TLS 1.3 accept loop, limits, graceful shutdown; `rotate_transport_key` |
//! | [`problem`] | RFC 7807 problem documents and their slugs |
//! | [`metrics`] | Prometheus text metrics |
//! | [`witnessing`] | asking the configured witnesses to cosign each published checkpoint (C2SP tlog-witness) |
//! | [`testkit`] | helpers for tests of this and other crates: build valid donations |
//!
//! **Architecture invariants:** the intake never holds a key that opens a stored batch (only
//! the vault *public* key); plaintext rows exist only in memory between validation and sealing;
//! a refused request writes nothing; a receipt is sent only after its batch and ledger entries
//! are fsynced.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod init;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod migrate;
pub mod problem;
pub mod seal;
pub mod server;
pub mod store;
pub mod store_index;
pub mod store_pg;
pub mod store_s3;
pub mod studies;
pub mod testkit;
pub mod validate;
pub mod witnessing;

pub use app::{app, AppState};
pub use config::Config;
pub use problem::Problem;
pub use server::{rotate_transport_key, start, start_with_clock, Intake, RunningIntake};

/// Errors of the intake library (startup, CLI commands).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Key material.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Ledger.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// Studies.
    #[error(transparent)]
    Studies(#[from] studies::StudyLoadError),
    /// TLS configuration.
    #[error("tls: {0}")]
    Tls(String),
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another process (a running intake, or a key rotation) holds the data directory.
    #[error("data directory {0} is in use by another datadonor-intake process")]
    Locked(std::path::PathBuf),
    /// `init` refused (for example: the directory already holds an intake).
    #[error("init: {0}")]
    Init(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
