//! The Datadonor donor client: what a citizen's app links to import the citizen's own health
//! export, keep only what a study asks for, pseudonymise the CPR number with the intake's OPRF
//! (the number itself never leaves the device), show the donor exactly what would leave, sign
//! consent, seal the donation to the intake and verify the signed receipt.
//!
//! Map of the modules:
//!
//! | module | what it owns |
//! |---|---|
//! | [`import`] | streaming importers (FHIR R4 JSON/NDJSON, Synthea CSV, Apple Health) |
//! | [`minimise`] | items → the study's rows; the drop report |
//! | [`preview`] | the rows and fields that would leave, as a table or JSON |
//! | [`donation`] | consent manifest, sealed envelope, signed withdrawal (no I/O) |
//! | [`client`] | the intake's HTTP API over rustls (TLS 1.3), retries, receipt checks |
//! | [`tls`] | the rustls client configuration and its one dangerous switch |
//! | [`keystore`] | the donor key at rest, stored receipts, pinned ledger key, last checkpoint |
//! | [`pins`] | the steward key and study bundle pinned on first use of a study |
//! | [`session`] | the end-to-end flow for apps and many-donor simulations |
//! | [`app`] | `datadonor app`: the citizen's app as a local web application over this library |
//!
//! **Architecture invariant**: identifying strings from the export (names, addresses,
//! identifier values, the source's patient key, free text, source and device names) are read by
//! [`import`] and counted by [`minimise`]; no other module ever sees them, and no structure that
//! is serialised or sent holds them. The CPR number goes into [`datadonor_schemas::pseudonym::blind`]
//! and nowhere else.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod client;
pub mod donation;
pub mod import;
pub mod keystore;
pub mod minimise;
pub mod pins;
pub mod preview;
pub mod session;
pub mod tls;

pub use client::{Intake, IntakeConfig, PublishedStudy, RetryPolicy};
pub use donation::ConsentChoice;
pub use minimise::{MinimiseOptions, MinimiseReport, MinimisedRows};
pub use preview::Preview;
pub use session::{IntakeSession, SessionError};
pub use tls::TrustAnchors;
