//! A pseudonymiser instance: one of the `n` independent holders of a Shamir share of the OPRF
//! key, any `t` of which a donor's device needs to turn a CPR number into a study pseudonym.
//!
//! It evaluates the OPRF and nothing else. It links no code that reads the consent ledger, the
//! sealed batches or donations, and nothing that reads those links it: the intake and analytics
//! crates do not depend on this one (a test over `cargo metadata` holds them to it).
//!
//! | module | owns |
//! |---|---|
//! | [`share`] | the key share, its file, `Z_i = k_i·B` with a VOPRF DLEQ proof |
//! | [`dkg`] | the key ceremony (FROST DKG among the instances, no dealer) and the configuration it yields |
//! | [`server`] | the HTTPS service: `POST /v1/evaluate`, rate limits, donor credentials |
//! | [`ratelimit`] | token buckets per address and per credential |
//! | [`tls`] | a development CA for instances on one machine |
//! | [`files`] | crash-safe writes of key and public files |
//! | [`local`] | n instances on one machine: ceremony, directories, start, configuration |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod b64;
pub mod dkg;
pub mod files;
pub mod local;
/// Token buckets, shared with the intake.
pub use datadonor_service::ratelimit;
pub mod server;
pub mod share;
pub mod tls;

pub use server::{start, InstanceConfig, RunningInstance};
pub use share::KeyShare;
