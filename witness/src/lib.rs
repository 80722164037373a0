//! `datadonor-witness`: a C2SP [tlog-witness](https://c2sp.org/tlog-witness) for the consent
//! ledger (and any other C2SP log it is configured with).
//!
//! For each known log (origin and the log's verifier key) it keeps the last checkpoint it
//! cosigned, in a state file written crash-safely. `POST /add-checkpoint` checks the log's
//! signature and a consistency proof from that checkpoint to the new one, and only then persists
//! the new checkpoint and answers with its cosignature (C2SP
//! [tlog-cosignature](https://c2sp.org/tlog-cosignature), Ed25519 `cosignature/v1`).
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the configuration file (`deny_unknown_fields`) |
//! | [`state`] | one state file per log: the last cosigned checkpoint; evidence of refused heads |
//! | [`witness`] | the decision: every check of tlog-witness, in order, under one lock with the write |
//! | [`server`] | the HTTPS router: `POST /add-checkpoint`, `GET /<origin hash>/checkpoint`, problems |
//!
//! **Invariant:** the witness never cosigns a checkpoint inconsistent with one it cosigned: the
//! stored size only grows, each step is proved consistent (RFC 9162) before it is stored, and
//! it is stored (fsynced) before the cosignature leaves.
#![forbid(unsafe_code)]

pub mod config;
pub mod server;
pub mod state;
pub mod witness;

pub use config::WitnessConfig;
pub use witness::{Refusal, Witness};
